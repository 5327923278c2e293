//! Netfilter hook traversal at `nf_hook_slow`: the hop is built on entry (the skb may be freed
//! before the function returns) and emitted on return with the verdict.

use core::ptr::addr_of_mut;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use tracer_common::{HopEvent, HopKind, config::have, event::nf_verdict};

use crate::{
    hop::{build, emit},
    maps::{Held, off},
    site::Site,
    skb::Access,
};

/// A hop waiting for its hook's verdict.
#[derive(Clone, Copy)]
#[repr(C)]
struct Pending {
    ev: HopEvent,
    /// Calls of `nf_hook_slow` nested inside this one for packets we do not follow (a
    /// `reject` sends its ICMP error through OUTPUT from inside FORWARD): with kprobes the
    /// returns are matched by task, and those inner returns are not this hop's verdict.
    nested: u32,
    _pad: u32,
}

/// Hops waiting for their hook's verdict, keyed by skb (fentry) or by CPU and task (kprobe).
/// With kprobes a followed packet's call nested inside another's (the ICMP error a `reject`
/// sends from inside FORWARD, which is followed as an answer) sets the outer hop aside under
/// the key with [`OUTER`] set until the inner one is done.
#[map]
static NF_PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(4096, 0);

/// Where `enter` builds a hop before it waits in [`NF_PENDING`]: a 160-byte value on the
/// stack would leave the kprobe program too little of the verifier's 512 bytes. Per CPU and
/// used only by the entry programs, which do not nest on one CPU (a kprobe never runs inside
/// another; a trampoline skips its own program's recursion), so nothing clobbers it midway.
#[map]
static NF_SCRATCH: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// `nf_hook_slow(skb, state, ...)` entry. `by_task`: `key` names the task, not the skb, so a
/// nested call can share it (kprobes); otherwise (fentry) the arguments are BTF-typed and
/// their fields are plain loads.
#[inline(always)]
pub fn enter(key: u64, skb: u64, state: u64, by_task: bool) {
    if off!(have) & have::NF_HOOK_STATE == 0 || state == 0 {
        return;
    }
    let site = Site {
        nf_state: state,
        access: if by_task {
            Access::Probe
        } else {
            Access::Direct
        },
        ..Site::new(HopKind::NetfilterHook)
    };
    let Some(pending) = NF_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a field of this CPU's scratch value.
    let ev = Held(unsafe { addr_of_mut!((*pending).ev) });
    match build(skb, site, &ev) {
        Some(_) => {
            if by_task && let Some(outer) = NF_PENDING.get_ptr(&key) {
                // SAFETY: a map value pointer, valid while the entry exists; the insert copies
                // it (no stack copy: the kprobe programs' frames are near the limit).
                let _ = NF_PENDING.insert(&(key ^ OUTER), unsafe { &*outer }, 0);
            }
            // SAFETY: `build` wrote the event; the other fields are written here.
            let pending = unsafe {
                addr_of_mut!((*pending).nested).write(0);
                addr_of_mut!((*pending)._pad).write(0);
                &*pending
            };
            let _ = NF_PENDING.insert(&key, pending, 0);
        }
        None if by_task => {
            if let Some(outer) = NF_PENDING.get_ptr_mut(&key) {
                // SAFETY: a map value pointer, valid until the entry is removed; this CPU is
                // the only one using this task's key.
                unsafe { (*outer).nested += 1 };
            }
        }
        None => {}
    }
}

/// Marks the key of an outer hop set aside for a nested one (task keys never have it: the pid
/// and tgid halves are below 2^22 and the CPU sits at bit 48).
const OUTER: u64 = 1 << 63;

/// The inner hop at `key` (a task key: an skb's is a pointer, which the verifier lets no
/// arithmetic touch) is done: the outer one set aside for it waits again.
#[inline(always)]
fn restore_outer(key: u64) {
    if let Some(outer) = NF_PENDING.get_ptr(&(key ^ OUTER)) {
        // SAFETY: as in `enter`.
        let _ = NF_PENDING.insert(&key, unsafe { &*outer }, 0);
        let _ = NF_PENDING.remove(&(key ^ OUTER));
    }
}

/// The key kprobes pair entry and return by: CPU and task (softirqs on different CPUs all
/// run as pid 0). Calls nested on the same task for packets we do not follow are counted in
/// the stash and skipped on return (see [`Pending`]).
#[inline(always)]
pub fn task_key() -> u64 {
    // SAFETY: helpers without preconditions.
    let (task, cpu) = unsafe { (bpf_get_current_pid_tgid(), bpf_get_smp_processor_id()) };
    task ^ (u64::from(cpu) << 48)
}

/// A drop inside `nf_hook_slow` frees the skb before the hook returns, and the packet ends
/// with that free. The hop waiting for the return is emitted now, with its drop verdict, so it
/// stays part of its packet and names the hook. Called only for skbs we follow.
#[inline(always)]
pub fn drop_inside_hook(skb: u64) {
    for (key, by_task) in [(skb, false), (task_key(), true)] {
        let Some(pending) = NF_PENDING.get_ptr_mut(&key) else {
            continue;
        };
        // SAFETY: as in `enter`. Emitted from the map value, before the entry is removed:
        // a copy on the stack would cost the drop hook's frame a whole event.
        unsafe {
            if (*pending).ev.skb != skb || (*pending).nested != 0 {
                continue;
            }
            (*pending).ev.nf_verdict = nf_verdict::DROP;
            emit(&(*pending).ev);
        }
        let _ = NF_PENDING.remove(&key);
        if by_task {
            restore_outer(key);
        }
        return;
    }
}

/// `nf_hook_slow` return: 1 accepted, 0 stolen or queued, negative dropped. `by_task` as in
/// [`enter`].
#[inline(always)]
pub fn exit(key: u64, ret: i64, by_task: bool) {
    let Some(pending) = NF_PENDING.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: as in `enter`; emitted from the map value before the entry is removed.
    unsafe {
        if (*pending).nested > 0 {
            (*pending).nested -= 1; // an inner call's return, not ours
            return;
        }
        (*pending).ev.nf_verdict = match ret {
            1 => nf_verdict::ACCEPT,
            0 => nf_verdict::STOLEN,
            _ => nf_verdict::DROP,
        };
        emit(&(*pending).ev);
    }
    let _ = NF_PENDING.remove(&key);
    if by_task {
        restore_outer(key);
    }
}
