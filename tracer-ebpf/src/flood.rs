//! Floods summarised in place (`tracer_common::flood`): which hops of a followed packet are
//! emitted, and where a quiet one is counted instead.

use core::mem::MaybeUninit;

use tracer_common::{
    HopEvent,
    flood::{HopShape, REF_HOPS, SummaryKey, WINDOW_SHIFT, flow_id, hop_code, step},
};

use crate::{
    hop::output,
    maps::{Followed, count_quiet, filter, flow_state, note_reference},
    skb::Headers,
};

/// This hop's place in its flow's flood: the flow (0: not summarising), the running
/// signature, hops so far, and whether the packet is quiet (nothing emitted for this hop).
pub struct Walk {
    pub flow: u32,
    pub path: u32,
    pub hops: u8,
    pub quiet: bool,
}

/// Decides whether this hop of the packet at `skb` is emitted. `prior`: what its earlier hops
/// left (`None` on its first); `len` its length now. A quiet packet that parts from its flow's
/// way here gets a `Resumed` record (written through `out`, which the hop's event overwrites
/// after), and one that is freed here is counted.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn walk(
    skb: u64,
    prior: Option<*mut Followed>,
    shape: &HopShape,
    h: &Headers,
    len: u32,
    now: u64,
    frees: bool,
    out: &mut MaybeUninit<HopEvent>,
) -> Walk {
    let budget = filter().map_or(0, |f| f.flood_budget);
    if budget == 0 {
        return Walk {
            flow: 0,
            path: 0,
            hops: 0,
            quiet: false,
        };
    }
    let code = hop_code(shape);
    // SAFETY: a map value pointer, valid for this program run.
    let (flow, path, at, mut quiet, first_ts, first_len) = match prior {
        Some(p) => unsafe {
            (
                (*p).flow,
                step((*p).path, code),
                (*p).hops,
                (*p).quiet != 0,
                (*p).first_ts,
                (*p).len,
            )
        },
        None => (
            flow_id(h.saddr, h.daddr, h.proto, h.dport),
            step(0, code),
            0,
            false,
            now,
            len,
        ),
    };
    let i = at as usize;
    match flow_state(flow, prior.is_none()) {
        // SAFETY: a map value pointer, valid for this run; racing CPUs at worst let one
        // packet more or less through the budget, or make a quiet one loud.
        Some(st) => unsafe {
            if prior.is_none() {
                let window = now >> WINDOW_SHIFT;
                if (*st).window != window {
                    (*st).window = window;
                    (*st).full = 0;
                }
                if (*st).full >= u32::from(budget) && (*st).path[0] == path {
                    quiet = true;
                } else {
                    (*st).full += 1;
                }
            } else if quiet && !(i < REF_HOPS && (*st).path.get(i).is_some_and(|p| *p == path)) {
                resumed(skb, flow, at, now, out);
                quiet = false;
            }
            if !quiet && let Some(slot) = (*st).path.get_mut(i) {
                *slot = path;
            }
        },
        None if quiet => {
            resumed(skb, flow, at, now, out);
            quiet = false;
        }
        None => {}
    }
    if frees {
        let key = SummaryKey { flow, path };
        if quiet {
            count_quiet(&key, first_len, now);
        } else {
            note_reference(&key, first_ts, now);
        }
    }
    Walk {
        flow,
        path,
        hops: at.saturating_add(1),
        quiet,
    }
}

/// Emits the `Resumed` record for a quiet packet that took `hops` hops the flow's way.
#[inline(always)]
fn resumed(skb: u64, flow: u32, hops: u8, now: u64, out: &mut MaybeUninit<HopEvent>) {
    const WORDS: usize = HopEvent::HEAD_LEN / 8;
    let record = HopEvent::resumed(now, skb, flow, u32::from(hops));
    let words = out.as_mut_ptr().cast::<u64>();
    for (i, w) in record.iter().enumerate().take(WORDS) {
        // SAFETY: `i` words into a HopEvent-sized, 8-aligned buffer.
        unsafe { core::ptr::write_volatile(words.add(i), *w) };
    }
    // SAFETY: the head's words were just written.
    output(unsafe { core::slice::from_raw_parts(words.cast::<u8>(), HopEvent::HEAD_LEN) });
    crate::maps::bump(tracer_common::counter::RESUMED);
}
