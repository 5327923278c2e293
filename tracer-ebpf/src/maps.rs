//! The maps shared with userspace, and the globals the loader patches.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf, StackTrace},
};
use core::sync::atomic::AtomicI64;

use aya_ebpf::helpers::bpf_ktime_get_ns;
use tracer_common::{Filter, KernelOffsets, config::FlowKey, counter};

/// Every hop event, in order per CPU. Size is set by userspace at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Kernel stacks of drops traced with `--stack` (`option::STACK`), by id: the same stack is
/// stored once. Userspace reads an id once and keeps its symbols; a full map gives no id.
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(1024, 0);

/// Skbs that matched the filter once, keyed by address, so they stay traced after NAT rewrites
/// their headers. The value is the packet's fingerprint and a hash of the tuple it last showed
/// (`tracer_common::config::follow`): a new tuple is a NAT rewrite, whose reply is learned. Removed when the skb is freed; a different fingerprint at the same address means
/// the skb was freed unseen and reused; LRU so leaks age out.
#[map]
static TRACKED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Entries in [`TRACKED`], counted on a new insert and on a successful remove. LRU evictions
/// go unseen, so it can only run above the truth; zero therefore proves nothing is tracked, and
/// then the non-matching path skips the hash lookup (a helper call on every packet).
static TRACKED_LIVE: AtomicI64 = AtomicI64::new(0);

/// The BPF target has no `fetch_add` on atomics; the intrinsic with its result unused lowers
/// to the one atomic instruction BPF has (`lock xadd`).
#[inline(always)]
fn add_live(delta: i64) {
    // SAFETY: an atomic add on a static; concurrent adds from other CPUs are what it is for.
    unsafe {
        core::intrinsics::atomic_xadd::<i64, i64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            TRACKED_LIVE.as_ptr(),
            delta,
        );
    }
}

/// What is remembered of a tracked skb: its fingerprint and the hash of its last tuple.
#[inline(always)]
pub fn remembered(skb: u64) -> Option<u64> {
    // A plain load: atomic loads do not lower for the generic BPF CPU, and a racy read is
    // fine here (a missed just-inserted entry is the next hop's to find).
    // SAFETY: an aligned read of a static.
    if unsafe { core::ptr::read_volatile(TRACKED_LIVE.as_ptr()) } <= 0 {
        return None;
    }
    // SAFETY: a map lookup; the value is copied out at once.
    unsafe { TRACKED.get(&skb).copied() }
}

/// Remembers `skb` with `value` (`follow::remember`); `new` when it was not tracked before.
#[inline(always)]
pub fn track(skb: u64, value: u64, new: bool) {
    match TRACKED.insert(&skb, &value, 0) {
        Ok(()) if new => {
            add_live(1);
        }
        Ok(()) => {}
        Err(_) => bump(counter::TRACK_FAILED),
    }
}

/// Stops following `skb`.
#[inline(always)]
pub fn forget(skb: u64) {
    if TRACKED.remove(&skb).is_ok() {
        add_live(-1);
    }
}

/// Replies the kernel follows: the reversed tuple of every header a followed TCP or UDP packet
/// showed (before and after each NAT), valued by when it stops being followed
/// (`bpf_ktime_get_ns`). A packet failing the filter whose own tuple, or whose quoted header
/// reversed (an ICMP error), is here and not expired is traced as a reply. LRU: a flood of
/// flows evicts the oldest; userspace deletes expired entries (`Probes::sweep_replies`).
#[map]
static REPLIES: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(8192, 0);

/// Entry 0 is nonzero while [`REPLIES`] may hold an entry: set here on every insert, cleared
/// by userspace's sweep when it finds the map empty (then checked again). While it is zero a
/// packet failing the filter costs no lookup.
#[map]
static REPLYING: Array<u32> = Array::with_max_entries(1, 0);

/// Whether replies are being followed at all.
#[inline(always)]
pub fn replying() -> bool {
    REPLYING.get(0).is_some_and(|v| *v != 0)
}

/// Whether `key` is the tuple of a reply being followed (not expired).
#[inline(always)]
pub fn is_reply(key: &FlowKey) -> bool {
    // SAFETY: a map lookup; the value is copied out at once.
    match unsafe { REPLIES.get(key).copied() } {
        // SAFETY: helper without preconditions.
        Some(until) => until > unsafe { bpf_ktime_get_ns() },
        None => false,
    }
}

/// Follows the replies to a packet whose header is `key` reversed, for `secs` from now. A
/// lookup first: an entry with more than half its life left is not written again, so a
/// followed flood costs a lookup per packet, not a locked update.
#[inline(always)]
pub fn learn_reply(key: &FlowKey, secs: u16) {
    let life = secs as u64 * 1_000_000_000;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a map lookup; the value is copied out at once.
    if let Some(until) = unsafe { REPLIES.get(key).copied() }
        && until > now + life / 2
    {
        return;
    }
    if REPLIES.insert(key, &(now + life), 0).is_err() {
        return;
    }
    // Inserted first, flagged second: a sweep that cleared the flag then finds the entry.
    if let Some(on) = REPLYING.get_ptr_mut(0) {
        // SAFETY: an aligned u32 in an array map; a racing clear is what the sweep re-checks.
        unsafe {
            if core::ptr::read_volatile(on) == 0 {
                core::ptr::write_volatile(on, 1);
            }
        }
    }
}

/// Per-CPU event counters (`tracer_common::counter`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// The packet filter, one entry. A map rather than a constant so a daemon can change it on
/// SIGHUP without detaching anything.
#[map]
pub static FILTERS: Array<Filter> = Array::with_max_entries(1, 0);

/// Entry 0 is nonzero while the reader sleeps until an event wakes it; zero while it polls
/// the ring on its own timer and wants no wakeup per event. Written by userspace.
#[map]
static READER: Array<u32> = Array::with_max_entries(1, 0);

/// Whether the reader asked to be woken by the next event.
#[inline(always)]
pub fn reader_asleep() -> bool {
    READER.get(0).is_some_and(|v| *v != 0)
}

/// Bytes waiting in [`EVENTS`] before an event wakes the reader; below that the reader finds
/// the events on its own timer. Set by the loader from the ring size; one wakeup per event
/// would cost a context switch per event under load.
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: u64 = 0;

/// Set by the loader from the running kernel's BTF.
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets::unset();

/// The current filter; matches nothing until userspace has written one. A reference into the
/// map, not a copy: a copy loads every field (eight alternative ports included) on every packet,
/// a third of what a packet nobody asked for costs; through the reference only the fields the
/// filter's checks reach are loaded.
#[inline(always)]
pub fn filter() -> Option<&'static Filter> {
    FILTERS.get(0)
}

/// One field of [`OFFSETS`], read where it is used. The volatile read keeps LLVM from folding
/// the compiled-in zeros; reading the field straight from the frozen `.rodata` map (not from a
/// stack copy) lets the verifier treat it as a known constant, which direct BTF loads need.
macro_rules! off {
    ($field:ident) => {
        // SAFETY: a plain read of a static the loader patched before load.
        unsafe { core::ptr::read_volatile(&$crate::maps::OFFSETS.$field) }
    };
}
pub(crate) use off;

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}
