//! Netfilter hook traversal at `nf_hook_slow`: the hop is built on entry (the skb may be freed
//! before the function returns) and emitted on return with the verdict.

use aya_ebpf::{macros::map, maps::LruHashMap};
use tracer_common::{HopEvent, HopKind, config::have, event::nf_verdict};

use crate::{
    hop::{Site, build, emit},
    maps::off,
    skb::read,
};

/// Hops waiting for their hook's verdict, keyed by skb (fentry) or by task (kprobe).
#[map]
static NF_PENDING: LruHashMap<u64, HopEvent> = LruHashMap::with_max_entries(4096, 0);

const NF_INET_LOCAL_OUT: u8 = 3;
const NF_INET_POST_ROUTING: u8 = 4;
const NF_INET_FORWARD: u8 = 2;

/// `nf_hook_slow(skb, state, ...)` entry.
#[inline(always)]
pub fn enter(key: u64, skb: u64, state: u64) {
    if off!(have) & have::NF_HOOK_STATE == 0 || state == 0 {
        return;
    }
    let hook = read::<u8>(state, off!(nf_state_hook)).unwrap_or(0);
    let pf = read::<u8>(state, off!(nf_state_pf)).unwrap_or(0);
    let input = read::<u64>(state, off!(nf_state_in)).unwrap_or(0);
    let output = read::<u64>(state, off!(nf_state_out)).unwrap_or(0);
    let (dev, peer) = match hook {
        NF_INET_LOCAL_OUT | NF_INET_POST_ROUTING => (output, 0),
        NF_INET_FORWARD => (input, output),
        _ => (input, 0),
    };
    let site = Site {
        dev,
        peer_dev: peer,
        nf_hook: hook,
        nf_family: pf,
        ..Site::new(HopKind::NetfilterHook)
    };
    if let Some(ev) = build(skb, site) {
        let _ = NF_PENDING.insert(&key, &ev, 0);
    }
}

/// `nf_hook_slow` return: 1 accepted, 0 stolen or queued, negative dropped.
#[inline(always)]
pub fn exit(key: u64, ret: i64) {
    // SAFETY: the value is copied out before the map is touched again.
    let Some(pending) = (unsafe { NF_PENDING.get(&key) }) else {
        return;
    };
    let mut ev = *pending;
    let _ = NF_PENDING.remove(&key);
    ev.nf_verdict = match ret {
        1 => nf_verdict::ACCEPT,
        0 => nf_verdict::STOLEN,
        _ => nf_verdict::DROP,
    };
    emit(&ev);
}
