//! The maps shared with userspace, and the globals the loader patches.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
};
use core::{mem::MaybeUninit, sync::atomic::AtomicI64};

use aya_ebpf::helpers::bpf_ktime_get_ns;
use tracer_common::{
    Filter, HopEvent, KernelOffsets,
    config::FlowKey,
    counter,
    event::ring,
    flood::{DropKey, FlowState, SummaryCount, SummaryKey},
};

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
static TRACKED: LruHashMap<u64, Followed> = LruHashMap::with_max_entries(16384, 0);

/// What is remembered of a followed skb.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Followed {
    /// `follow::remember`: fingerprint, tuple hash, conntrack's signature last shown.
    pub follow: u64,
    /// Its first hop's time: names the packet when its flow's quiet packets repeat it.
    pub first_ts: u64,
    /// `tracer_common::flood`: the flow, the running signature of the hops so far and their
    /// number (all 0 while floods are not summarised), `skb->len` at the first hop.
    pub flow: u32,
    pub path: u32,
    pub len: u32,
    pub hops: u8,
    /// Nonzero: a quiet packet, counted rather than emitted while it keeps its flow's way.
    pub quiet: u8,
    /// Nonzero: the packet was freed; the entry waits for the next packet at this address
    /// (see [`end`]). Only while floods are summarised.
    pub ended: u8,
    pub _pad: u8,
    /// Its `FLOWS` key (`flood::state_key`).
    pub state: u32,
    pub _pad2: u32,
    /// `skb->head` at its last hop (floods only): a quiet packet whose end finds the same
    /// buffer is the one followed, its header not read again (`hop::build`). Whole: the
    /// verifier takes the field for a pointer, which it lets no one cut in half.
    pub head: u64,
}

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

/// What is remembered of a tracked skb, in place in the map (valid for this program run).
#[inline(always)]
pub fn remembered(skb: u64) -> Option<*mut Followed> {
    // A plain load: atomic loads do not lower for the generic BPF CPU, and a racy read is
    // fine here (a missed just-inserted entry is the next hop's to find).
    // SAFETY: an aligned read of a static.
    if unsafe { core::ptr::read_volatile(TRACKED_LIVE.as_ptr()) } <= 0 {
        return None;
    }
    TRACKED.get_ptr_mut(&skb)
}

/// Follows `skb` in a fresh entry (`new`: it was not followed before), which the caller fills
/// in place: inserted from global data, so no whole value is built on a stack near its limit.
#[inline(always)]
pub fn track(skb: u64, new: bool) -> Option<*mut Followed> {
    match TRACKED.insert(&skb, &EMPTY_FOLLOWED, 0) {
        Ok(()) if new => {
            add_live(1);
        }
        Ok(()) => {}
        Err(_) => {
            bump(counter::TRACK_FAILED);
            return None;
        }
    }
    TRACKED.get_ptr_mut(&skb)
}

static EMPTY_FOLLOWED: Followed = Followed {
    follow: 0,
    first_ts: 0,
    flow: 0,
    path: 0,
    len: 0,
    hops: 0,
    quiet: 0,
    ended: 0,
    _pad: 0,
    state: 0,
    _pad2: 0,
    head: 0,
};

/// Stops following `skb`.
#[inline(always)]
pub fn forget(skb: u64) {
    if TRACKED.remove(&skb).is_ok() {
        add_live(-1);
    }
}

/// Stops following the packet whose entry `p` is, leaving the entry for the next packet at
/// its address ([`revive`]). A flood's packets come and go at a few addresses the kernel hands
/// round: an LRU insert and delete per packet take the map's locks, a write in place none.
#[inline(always)]
pub fn end(p: *mut Followed) {
    // SAFETY: a map value pointer, valid for this program run.
    unsafe {
        if (*p).ended == 0 {
            (*p).ended = 1;
            add_live(-1);
        }
    }
}

/// Follows a new packet in the entry `p` another packet at its address left ([`end`]ed, or
/// freed unseen); the caller fills it in place.
#[inline(always)]
pub fn revive(p: *mut Followed) {
    // SAFETY: a map value pointer, valid for this program run.
    unsafe {
        if (*p).ended != 0 {
            (*p).ended = 0;
            add_live(1);
        }
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

/// Each summarised flow's budget and reference path (`tracer_common::flood`). LRU: a flow
/// pushed out starts over with full packets, which costs events, never counts.
#[map]
static FLOWS: LruHashMap<u32, FlowState> = LruHashMap::with_max_entries(4096, 0);

/// The flow's state, created empty on its first packet; `None` when the map refused it.
#[inline(always)]
pub fn flow_state(flow: u32, create: bool) -> Option<*mut FlowState> {
    if let Some(p) = FLOWS.get_ptr_mut(&flow) {
        return Some(p);
    }
    if !create {
        return None;
    }
    FLOWS.insert(&flow, &EMPTY_FLOW, 0).ok()?;
    FLOWS.get_ptr_mut(&flow)
}

/// Inserted from global data, not the stack: an 80-byte zero value there would cost the drop
/// hook's frame, which is near the verifier's limit.
static EMPTY_FLOW: FlowState = FlowState::ZERO;
static EMPTY_SUMMARY: SummaryCount = SummaryCount {
    packets: 0,
    bytes: 0,
    first_ns: 0,
    last_ns: 0,
    reference: 0,
};

/// Quiet packets counted per flow and way they ended, cumulative. Not LRU: an entry is never
/// pushed out with its counts; userspace deletes one idle long after it read its last count.
#[map]
static SUMMARIES: HashMap<SummaryKey, SummaryCount> = HashMap::with_max_entries(4096, 0);

/// `BPF_NOEXIST`: a racing CPU's insert is kept, and found by the lookup after.
const NOEXIST: u64 = 1;

/// The summary of `key`, made (first seen at `seen`, a packet's first-hop time) when there is
/// none.
#[inline(always)]
fn summary(key: &SummaryKey, seen: u64) -> Option<*mut SummaryCount> {
    if let Some(p) = SUMMARIES.get_ptr_mut(key) {
        return Some(p);
    }
    let _ = SUMMARIES.insert(key, &EMPTY_SUMMARY, NOEXIST);
    let p = SUMMARIES.get_ptr_mut(key)?;
    // SAFETY: a map value pointer, valid for this run; a racing CPU writes a time as close.
    unsafe {
        if (*p).first_ns == 0 {
            (*p).first_ns = seen;
        }
    }
    Some(p)
}

/// Counts a quiet packet first seen at `seen` that ended a way its flow's summary already
/// holds: `false` when it holds none (the way is then checked against the flow's reference and
/// counted with [`summarise`]). An entry exists only for a way a full packet of the flow
/// ended, or a quiet one counted, so a way found here is one told before.
#[inline(always)]
pub fn count_known(key: &SummaryKey, len: u32, seen: u64) -> bool {
    let Some(p) = SUMMARIES.get_ptr_mut(key) else {
        return false;
    };
    count_quiet(p, len, seen);
    true
}

/// One quiet packet more in the summary entry `p`.
#[inline(always)]
fn count_quiet(p: *mut SummaryCount, len: u32, seen: u64) {
    // SAFETY: a map value pointer, valid for this run; other CPUs add concurrently.
    unsafe {
        atomic_add(&raw mut (*p).packets, 1);
        atomic_add(&raw mut (*p).bytes, u64::from(len));
        (*p).last_ns = seen;
    }
    bump(counter::SUMMARISED);
}

/// A packet of a flood, first seen at `seen` (`len` long then), ended the way `key` says: a
/// quiet one (`quiet`) is counted, or counted as uncounted; a loud one names the story the
/// quiet ones repeat. A subprogram: its branches end inside it.
#[inline(always)]
pub fn summarise(key: &SummaryKey, quiet: bool, len: u32, seen: u64) {
    let Some(p) = summary(key, seen) else {
        if quiet {
            bump(counter::UNCOUNTED);
        }
        return;
    };
    if quiet {
        count_quiet(p, len, seen);
    } else {
        // SAFETY: a map value pointer, valid for this run; a racing reference writer leaves
        // one of two loud packets, both of which ended this way.
        unsafe { (*p).reference = seen };
    }
}

/// Every traced drop, counted by reason, place, device and namespace. Not LRU: a count is
/// never pushed out; a full map counts the drop in `DROPS_UNCOUNTED` instead.
#[map]
static DROPS: HashMap<DropKey, u64> = HashMap::with_max_entries(4096, 0);

static ZERO: u64 = 0;

/// Counts one drop under `key`.
#[inline(always)]
pub fn count_drop(key: &DropKey) {
    let slot = match DROPS.get_ptr_mut(key) {
        Some(p) => Some(p),
        None => {
            let _ = DROPS.insert(key, &ZERO, NOEXIST);
            DROPS.get_ptr_mut(key)
        }
    };
    match slot {
        Some(p) => atomic_add(p, 1),
        None => bump(counter::DROPS_UNCOUNTED),
    }
}

#[inline(always)]
fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: an aligned u64 in a map value; the one atomic instruction BPF has.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        );
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

/// Nonzero: floods are summarised (`tracer_common::flood`). Set by the loader, frozen: where it
/// is zero the verifier knows it and skips every branch of the summarising, which the
/// function backends' programs need to stay within a 6.1 verifier's million instructions.
#[unsafe(no_mangle)]
pub static FLOODS: u32 = 0;

/// Whether floods are summarised in this load ([`FLOODS`]).
#[inline(always)]
pub fn floods() -> bool {
    // SAFETY: a plain read of a static the loader patched before load.
    unsafe { core::ptr::read_volatile(&FLOODS) != 0 }
}

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

/// Bytes past `WAKEUP_BYTES` within which an event still wakes the reader: four records
/// (an event, at its longest, plus the ring's 8-byte header).
const WAKEUP_WINDOW: u64 = 4 * (core::mem::size_of::<HopEvent>() as u64 + 8);

/// Writes one record to the ring buffer, counting it as emitted or lost.
#[inline(always)]
pub fn output(record: &[u8]) {
    // SAFETY: a plain read of a static the loader patched before load.
    let threshold = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    // Two wakeups, no more: while the reader sleeps (an idle ring: it said so in READER), the
    // event wakes it; while it polls on its timer (`trace::DRAIN_EVERY`), only the backlog
    // crossing the threshold does (a window of a few records, since CPUs produce
    // concurrently). Waking on every event would cost an irq_work per event exactly when the
    // reader is busiest; so would the kernel's own default (wake when the reader had caught
    // up) whenever a fast reader keeps pace.
    let pending = EVENTS.query(ring::AVAIL_DATA);
    let flags = if reader_asleep() || (pending >= threshold && pending < threshold + WAKEUP_WINDOW)
    {
        ring::FORCE_WAKEUP
    } else {
        ring::NO_WAKEUP
    };
    match EVENTS.output::<[u8]>(record, flags) {
        Ok(()) => bump(counter::EMITTED),
        Err(_) => bump(counter::LOST),
    }
}

/// Where one program builds its events: a per-CPU map value, one map per program (see
/// [`EventBuf`]).
pub type Scratch = PerCpuArray<HopEvent>;

/// The memory a hop's event is built in, asked for only once there is something to write: a
/// packet nobody follows never touches it. Not the stack: an event there took a third of the
/// 512 bytes a 6.1 verifier allows the function programs, which left no room for anything a
/// packet's headers grow by.
pub trait EventBuf {
    fn event(&self) -> Option<&mut MaybeUninit<HopEvent>>;
}

/// A program's own [`Scratch`]. One map per program, because programs nest on a CPU (a
/// softirq's receive inside a process's free) while one program never does (the kernel skips
/// a program's run inside its own: a tracepoint's, a trampoline's and a kprobe's recursion
/// guard), so nothing clobbers the buffer midway.
impl EventBuf for Scratch {
    #[inline(always)]
    fn event(&self) -> Option<&mut MaybeUninit<HopEvent>> {
        // SAFETY: this CPU's value of a one-entry map, valid for the program run and used by
        // this program alone (see above); viewed as the uninitialised memory it is to `build`.
        self.get_ptr_mut(0)
            .map(|p| unsafe { &mut *p.cast::<MaybeUninit<HopEvent>>() })
    }
}

/// An event buffer already at hand: a map value that outlives the program run.
pub struct Held(pub *mut HopEvent);

impl EventBuf for Held {
    #[inline(always)]
    fn event(&self) -> Option<&mut MaybeUninit<HopEvent>> {
        // SAFETY: the map value the caller looked up for this run (`netfilter::enter`).
        Some(unsafe { &mut *self.0.cast::<MaybeUninit<HopEvent>>() })
    }
}
