//! The one code path every hook point shares: filter or look up the skb, then emit an event.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use tracer_common::{
    HopEvent, HopKind, counter,
    event::{FLAG_IPV4, FLAG_L4, FLAG_MATCHED},
};

use crate::{
    maps::{EVENTS, TRACKED, bump, filter, offsets},
    skb::{device, headers, read},
};

/// What the entry point knows about the hook it runs at.
#[derive(Clone, Copy)]
pub struct Site {
    pub kind: HopKind,
    /// The device argument, when the hook has one; otherwise `skb->dev` is used.
    pub dev: u64,
    /// Kernel address that freed the skb (drops and consumes).
    pub location: u64,
    pub drop_reason: u32,
    /// `skb->data` points at the L3 header here.
    pub l3_at_data: bool,
    /// The skb is freed at this hook: forget it after emitting.
    pub frees: bool,
    /// Emit only for skbs already tracked: a hook this hot (consume_skb) must not pay for
    /// header reads, and a packet first seen as it is freed normally tells nothing.
    pub only_tracked: bool,
}

impl Default for Site {
    fn default() -> Self {
        Self {
            kind: HopKind::Receive,
            dev: 0,
            location: 0,
            drop_reason: 0,
            l3_at_data: false,
            frees: false,
            only_tracked: false,
        }
    }
}

/// Filters the skb at this hop and emits a [`HopEvent`] when it matches or is already tracked.
#[inline(always)]
pub fn record(skb: u64, site: Site) {
    let off = offsets();
    if skb == 0 || off.skb_head == 0 {
        return; // not configured by the loader: emit nothing rather than garbage
    }
    // SAFETY: a map lookup; the value is not held across helper calls.
    let tracked = unsafe { TRACKED.get(&skb).is_some() };
    if site.only_tracked && !tracked {
        return;
    }
    let h = headers(skb, &off, site.l3_at_data);
    let matched = h.ipv4 && filter().matches(h.saddr, h.daddr, h.proto, h.l4, h.sport, h.dport);
    if !tracked && !matched {
        return;
    }
    if site.frees {
        if tracked {
            let _ = TRACKED.remove(&skb);
        }
    } else if !tracked && TRACKED.insert(&skb, &1, 0).is_err() {
        bump(counter::TRACK_FAILED);
    }

    let dev = if site.dev != 0 {
        site.dev
    } else {
        read::<u64>(skb, off.skb_dev).unwrap_or(0)
    };
    let (ifindex, netns) = device(dev, &off);

    let Some(mut entry) = EVENTS.reserve::<HopEvent>(0) else {
        bump(counter::LOST);
        return;
    };
    let mut ev = HopEvent::zeroed();
    // SAFETY: helper without preconditions.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.skb = skb;
    ev.location = site.location;
    ev.netns = netns;
    ev.ifindex = ifindex;
    ev.saddr = h.saddr;
    ev.daddr = h.daddr;
    ev.sport = h.sport;
    ev.dport = h.dport;
    ev.len = read::<u32>(skb, off.skb_len).unwrap_or(0);
    ev.drop_reason = site.drop_reason;
    ev.kind = site.kind as u8;
    ev.proto = h.proto;
    ev.tcp_flags = h.tcp_flags;
    ev.flags = (if h.ipv4 { FLAG_IPV4 } else { 0 })
        | (if h.l4 { FLAG_L4 } else { 0 })
        | (if matched { FLAG_MATCHED } else { 0 });
    entry.write(ev);
    entry.submit(0);
    bump(counter::EMITTED);
}
