//! The maps shared with userspace, and the globals the loader patches.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{Filter, KernelOffsets, counter};

/// Every hop event, in order per CPU. Size is set by userspace at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Skbs that matched the filter once, keyed by address, valued by the packet's fingerprint, so
/// they stay traced after NAT rewrites their headers. Removed when the skb is freed; a
/// different fingerprint at the same address means the skb was freed unseen and reused; LRU
/// so leaks age out.
#[map]
pub static TRACKED: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

/// Per-CPU event counters (`tracer_common::counter`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// The packet filter, one entry. A map rather than a constant so a daemon can change it on
/// SIGHUP without detaching anything.
#[map]
pub static FILTERS: Array<Filter> = Array::with_max_entries(1, 0);

/// Set by the loader from the running kernel's BTF.
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets::unset();

/// The current filter; matches nothing until userspace has written one.
#[inline(always)]
pub fn filter() -> Option<Filter> {
    FILTERS.get(0).copied()
}

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}
