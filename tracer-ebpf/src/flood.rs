//! Floods summarised in place (`tracer_common::flood`): which hops of a followed packet are
//! emitted, and where a quiet one is counted instead.

use tracer_common::{
    HopEvent, HopKind,
    flood::{HopShape, REF_HOPS, SummaryKey, WINDOW_SHIFT, flow_id, hop_code, state_key, step},
};

use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::{
    maps::{EventBuf, Followed, count_known, filter, floods, flow_state, off, output, summarise},
    site::Site,
    skb::{Headers, device, field},
};

/// This hop's place in its flow's flood: the flow (0: not summarising), the running
/// signature, hops so far, and whether the packet is quiet (nothing emitted for this hop).
pub struct Walk {
    pub flow: u32,
    pub state: u32,
    pub path: u32,
    pub hops: u8,
    pub quiet: bool,
    /// The packet's first hop: its time and `skb->len` (0 past it: kept in `Followed`).
    pub first_ts: u64,
    pub len: u32,
}

impl Walk {
    pub const OFF: Self = Self {
        flow: 0,
        state: 0,
        path: 0,
        hops: 0,
        quiet: false,
        first_ts: 0,
        len: 0,
    };
}

/// This hop's place in its flow's flood ([`walk`]), from what the hop is (`flood::HopShape`).
/// A netfilter hop is not part of a flood's signature: a drop inside the hook is the next hop
/// (kfree_skb), a NAT shows in the next hop's tuple, and leaving the walk out of
/// `nf_hook_slow`'s program keeps it within a 6.1 verifier's million instructions. A quiet
/// packet stays quiet through it. (`site.kind` is a constant per entry point: the branch is
/// folded away.) Called only while floods are summarised: the device reads here are not
/// kept for the event, so a load without floods keeps nothing more alive across the map
/// calls that follow.
#[inline(always)]
pub fn hop<B: EventBuf>(
    skb: u64,
    site: Site,
    h: &Headers,
    conntrack: u8,
    prior: Option<*mut Followed>,
    buf: &B,
) -> Walk {
    if site.kind == HopKind::NetfilterHook {
        return carry(prior);
    }
    let (ifindex, netns) = device(site.device(skb), site.access);
    let (peer_ifindex, _) = device(site.peer_dev, site.access);
    // The header as a flow is: without the source port, so a SYN flood from ephemeral ports
    // takes one way; a NAT of either address or the destination port still shows. Where a
    // followed packet ends, its way is told by where and why alone: its header is the one its
    // last hop folded in, and a quiet one's is not read there (`hop::build`).
    let ends = site.frees && prior.is_some();
    let tuple = flow_id(h.saddr, h.daddr, h.proto, h.dport);
    let shape = HopShape {
        kind: site.kind as u8,
        ifindex,
        netns,
        peer_ifindex,
        nf_hook: site.nf_hook,
        nf_family: site.nf_family,
        tcp_flags: if ends { 0 } else { h.tcp_flags },
        conntrack,
        tuple: if ends { 0 } else { tuple },
        drop_reason: site.drop_reason,
        location: if site.kind == HopKind::Drop {
            site.location
        } else {
            0
        },
    };
    let len = if prior.is_none() {
        field::<u32>(skb, off!(skb_len), site.access).unwrap_or(0)
    } else {
        0
    };
    walk(skb, prior, hop_code(&shape), site.frees, (tuple, len), buf)
}

/// Decides whether this hop of the packet at `skb` is emitted. `prior`: what its earlier hops
/// left (`None` on its first); `code` the hop's (`flood::hop_code`); `first`: the flow its
/// header names and its length, for a first hop. A quiet packet that parts from its flow's
/// way here gets a `Resumed` record (written in `buf`, which the hop's event overwrites
/// after), and one that is freed here is counted.
#[inline(always)]
pub fn walk<B: EventBuf>(
    skb: u64,
    prior: Option<*mut Followed>,
    code: u32,
    frees: bool,
    first: (u32, u32),
    buf: &B,
) -> Walk {
    if !floods() {
        return Walk::OFF;
    }
    let budget = filter().map_or(0, |f| f.flood_budget);
    if budget == 0 {
        return Walk::OFF;
    }
    // The clock is read at a packet's first hop only (its budget's window); where it ends it
    // is counted at that time (`first_ts`), not the clock's again: a helper call less on every
    // packet of a flood.
    let now = if prior.is_none() {
        // SAFETY: helper without preconditions.
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    // SAFETY: a map value pointer, valid for this program run.
    let (flow, state, path, at, was_quiet, first_ts, first_len) = match prior {
        Some(p) => unsafe {
            (
                (*p).flow,
                (*p).state,
                step((*p).path, code),
                (*p).hops,
                (*p).quiet != 0,
                (*p).first_ts,
                (*p).len,
            )
        },
        None => (
            first.0,
            state_key(first.0, step(0, code)),
            step(0, code),
            0,
            false,
            now,
            first.1,
        ),
    };
    // A quiet packet freed the way its flow's counted or full packets ended is counted
    // there at once: its flow's reference need not be looked up.
    if frees && was_quiet && count_known(&SummaryKey { flow, path }, first_len, first_ts) {
        return Walk {
            flow,
            state,
            path,
            hops: at.saturating_add(1),
            quiet: true,
            first_ts,
            len: first_len,
        };
    }
    // The index masked where it is used, and through `black_box` so LLVM keeps the mask: a
    // 6.1 verifier walks the branch below where an earlier check said `at >= REF_HOPS` and a
    // later one `at < REF_HOPS` (an impossible range it does not prune), and refuses an
    // unmasked index there.
    let within = (at as usize) < REF_HOPS;
    let i = (core::hint::black_box(at) as usize) & (REF_HOPS - 1);
    // Whether this flow spent its budget in this window: only then may quiet packets follow,
    // so only then does a loud packet's end name the story they repeat (a summary entry per
    // flow that never floods would fill the map on a busy host).
    let mut flooding = false;
    let mut quiet = false;
    // Flags, not calls, in the branches: each call is made once below, so the verifier
    // walks it once per state rather than once per branch.
    if let Some(st) = flow_state(state, prior.is_none()) {
        // SAFETY: a map value pointer, valid for this run; racing CPUs at worst let one
        // packet more or less through the budget, or make a quiet one loud.
        unsafe {
            if prior.is_none() {
                let window = now >> WINDOW_SHIFT;
                if (*st).window != window {
                    (*st).window = window;
                    (*st).full = 0;
                }
                let known = (*st).path[0];
                if (*st).full >= u32::from(budget) && (known[0] == path || known[1] == path) {
                    quiet = true;
                } else {
                    (*st).full += 1;
                }
            } else if was_quiet {
                let known = (*st).path[i];
                quiet = within && (known[0] == path || known[1] == path);
            }
            // The reference is the two latest ways the flow's full packets took at this hop.
            // A quiet packet that parts from them here is shown in full (`Resumed`) and its
            // way joins them: the next packet like it is counted. Left out, a flood that ends
            // two ways by turns (a socket buffer full a tenth of the time) was shown in full
            // every time its budgeted packets, all sent in one instant at the window's start,
            // happened not to meet the rarer way.
            if !quiet && within {
                let known = &mut (*st).path[i];
                if known[0] != path {
                    known[1] = known[0];
                    known[0] = path;
                }
            }
            flooding = (*st).full >= u32::from(budget);
        }
    }
    if was_quiet && !quiet {
        resumed(skb, flow, at, first_ts, buf);
    }
    if frees && (quiet || flooding) {
        summarise(&SummaryKey { flow, path }, quiet, first_len, first_ts);
    }
    Walk {
        flow,
        state,
        path,
        hops: at.saturating_add(1),
        quiet,
        first_ts,
        len: first_len,
    }
}

/// A hop that is not part of the signature (a netfilter hook's) of a packet that is not quiet
/// (`hop::build` returned before for a quiet one): the packet keeps what it had.
#[inline(always)]
pub fn carry(prior: Option<*mut Followed>) -> Walk {
    match prior {
        // SAFETY: a map value pointer, valid for this program run.
        Some(p) => unsafe {
            Walk {
                flow: (*p).flow,
                state: (*p).state,
                path: (*p).path,
                hops: (*p).hops,
                quiet: false,
                first_ts: 0,
                len: 0,
            }
        },
        None => Walk::OFF,
    }
}

/// Emits the `Resumed` record for a quiet packet that took `hops` hops the flow's way, first
/// seen at `first_ts`.
#[inline(always)]
fn resumed<B: EventBuf>(skb: u64, flow: u32, hops: u8, first_ts: u64, buf: &B) {
    const WORDS: usize = HopEvent::HEAD_LEN / 8;
    let Some(out) = buf.event() else {
        return;
    };
    let record = HopEvent::resumed(first_ts, skb, flow, u32::from(hops));
    let words = out.as_mut_ptr().cast::<u64>();
    for (i, w) in record.iter().enumerate().take(WORDS) {
        // SAFETY: `i` words into a HopEvent-sized, 8-aligned buffer.
        unsafe { core::ptr::write_volatile(words.add(i), *w) };
    }
    // SAFETY: the head's words were just written.
    output(unsafe { core::slice::from_raw_parts(words.cast::<u8>(), HopEvent::HEAD_LEN) });
    crate::maps::bump(tracer_common::counter::RESUMED);
}
