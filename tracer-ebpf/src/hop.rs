//! The one code path every hook point shares: filter or look up the skb, then emit an event.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use tracer_common::{
    HopEvent, HopKind,
    config::{follow, have},
    event::Addr,
    event::{
        FLAG_CONNTRACK, FLAG_ENTERED, FLAG_FOLLOWED, FLAG_IPV4, FLAG_IPV6, FLAG_L4, FLAG_MATCHED,
        FLAG_QUOTED,
    },
    flood::{DropKey, SummaryKey},
};

use crate::site::Site;
use crate::{
    flood::{self, Walk},
    maps::{
        EventBuf, Followed, Scratch, count_drop, end, filter, floods, forget, is_reply,
        learn_reply, off, output, remembered, replying, revive, summarise, track,
    },
    skb::{
        ByConntrack, CtHold, Headers, by_conntrack, ct_hold, ct_view, device, entered, field,
        foreign, headers, passes, quote, read, reply_key,
    },
};

/// Filters the skb at this hop and emits a [`HopEvent`] when it matches or is already tracked;
/// `buf`: the calling program's [`Scratch`].
#[inline(always)]
pub fn record(skb: u64, site: Site, buf: &Scratch) {
    if let Some(ev) = build(skb, site, buf) {
        emit(ev);
    }
}

/// Builds the event for this hop in `buf` without emitting it (netfilter hops are completed
/// with their verdict when the hook returns); the event when it did. Tracks or forgets the
/// skb as the site says.
#[inline(always)]
pub fn build<B: EventBuf>(skb: u64, site: Site, buf: &B) -> Option<&mut HopEvent> {
    if skb == 0 || off!(skb_head) == 0 {
        return None; // not configured by the loader: emit nothing rather than garbage
    }
    let entry = remembered(skb);
    // With floods summarised, a freed packet's entry stays for the next packet at its
    // address (`maps::end`): an ended one follows nothing, but is written in place. (A
    // constant: without floods the verifier walks none of this.)
    // SAFETY: a map value pointer, valid for this program run.
    let slot = entry.filter(|&p| !floods() || unsafe { (*p).ended } == 0);
    let spare = if floods() { entry } else { None };
    // SAFETY: as above.
    let remembered = slot.map(|p| unsafe { (*p).follow });
    let mut followed = false;
    if remembered.is_none() {
        // Nobody follows this skb: only the filter can make it interesting, and for most
        // packets it says no after a load or two. Stop here then, before any header is read
        // in full; a packet that passes has its headers read again below, which costs a
        // handful of loads on a path that is about to write an event anyway.
        // No closure here: LLVM outlines one that captures `site`, which then lives on the
        // stack, and the verifier loses the type of the device pointers read back from it.
        let f = filter()?;
        if site.only_tracked {
            return None;
        }
        if !passes(skb, site.l3_at_data, site.access, f) {
            // A drop after DNAT still matches a filter on the published address and port, by
            // the header conntrack says it entered with; a drop traced alone (nothing followed
            // before it) is matched by the connection it answers.
            let ct = if site.kind == HopKind::Drop {
                by_conntrack(skb, site.access, f)
            } else {
                ByConntrack::No
            };
            // A reply to a followed packet, or an ICMP error about one, is traced from its
            // first hop even though the filter (stateless) does not match it. The lookup is
            // paid only while some flow is followed.
            if ct == ByConntrack::Answers
                || (ct == ByConntrack::No
                    && replying()
                    && reply_key(skb, site.l3_at_data, site.access).is_some_and(|k| is_reply(&k)))
            {
                followed = true;
            } else if ct == ByConntrack::No {
                return None;
            }
        }
    }
    // A quiet packet's end (consume_skb) is the packet its last hop saw while the skb holds
    // that hop's buffer, which the kernel's free reads anyway: its header is not read then.
    // The socket that took the packet's bytes left that line in another CPU's cache, and the
    // miss cost a consume under a flood a fifth of its time. (Another packet freed here unseen,
    // given the same buffer and ending without a traced hop on its way, would be counted in
    // the flood: the price of not reading it.) A constant `false` in every other program.
    let quiet_end = site.frees
        && site.kind != HopKind::Drop
        && floods()
        // SAFETY: as above.
        && slot.is_some_and(|p| unsafe { (*p).quiet != 0 && (*p).head != 0 })
        // SAFETY: as above.
        && slot.map(|p| unsafe { (*p).head }) == field::<u64>(skb, off!(skb_head), site.access);
    let mut h = if quiet_end {
        Headers::default()
    } else {
        headers(skb, site.l3_at_data, site.access)
    };
    let mut fp = h.fingerprint();
    let tracked = quiet_end
        || match remembered {
            // An unreadable IPv4 header (0) proves nothing either way: keep following. Another
            // protocol does: ARP, IPv6 or a socket's buffer now lives at this address.
            Some(v) => {
                let was = follow::fingerprint(v);
                was == fp || ((was == 0 || fp == 0) && !foreign(skb, site.access))
            }
            None => false,
        };
    if !tracked && let Some(p) = slot {
        // The packet followed here was freed where no tracepoint fires: say so now, or it
        // would wait for its idle timeout (or swallow the next packet at this address). A
        // quiet one is counted where it got to.
        // SAFETY: as above.
        if floods() && unsafe { (*p).quiet } != 0 {
            // SAFETY: as above.
            let (key, len, seen) = unsafe {
                (
                    SummaryKey {
                        flow: (*p).flow,
                        path: (*p).path,
                    },
                    (*p).len,
                    (*p).first_ts,
                )
            };
            summarise(&key, true, len, seen);
        } else {
            freed_unseen(skb, buf);
        }
    }
    if site.only_tracked && !tracked {
        stop_following(skb, slot);
        return None;
    }
    // Untracked skbs passed the filter above.
    let mut matched = remembered.is_none() || matches(&h);
    if !tracked && !matched {
        // The address now holds another packet: forget the one we followed.
        stop_following(skb, slot);
        return None;
    }
    // Conntrack's view is shown where it changed since this packet's last hop (attached,
    // NAT done, confirmed, or gone with a namespace crossing) and at a drop.
    let was = if tracked { remembered } else { None };
    // The entry in place, kept only while floods are summarised: without them a load keeps
    // no map pointer alive through the rest (a 6.1 verifier walked the function programs
    // twice to three times over with one).
    let prior = if tracked && floods() { slot } else { None };
    // A quiet packet's netfilter hop shows nothing and is no part of its signature: done here,
    // before anything else is read, so the rest of that program never branches on quiet.
    if site.kind == HopKind::NetfilterHook
        && let Some(p) = prior
        // SAFETY: as above.
        && unsafe { (*p).quiet } != 0
    {
        return None;
    }
    // A normal free (consume_skb, the hottest hook) neither shows nor remembers it: not read.
    // Nor is an IPv6 packet's yet: the view's tuples are IPv4's (issue 25).
    let hold = if (site.frees && site.kind != HopKind::Drop) || h.ipv6 {
        CtHold::NONE
    } else {
        ct_hold(skb, site.access)
    };
    let ct_shown = was.map_or(0, follow::conntrack);
    let show_ct = hold.signature != 0
        && (site.kind == HopKind::Drop || (!site.frees && hold.signature != ct_shown));
    let walk = if floods() {
        flood::hop(skb, site, &h, hold.signature, prior, buf)
    } else {
        Walk::OFF
    };

    if site.frees {
        if site.kind == HopKind::Drop {
            // Every drop, quiet or shown, in the kernel's own count.
            let (ifindex, netns) = device(site.device(skb), site.access);
            count_drop(&DropKey {
                location: site.location,
                reason: site.drop_reason,
                ifindex,
                netns,
                _pad: 0,
            });
        }
        if remembered.is_some() {
            stop_following(skb, slot);
        }
    } else {
        // A header not seen before on this packet (its first hop, or a NAT rewrite): follow
        // the replies it will get, as they look at this point of the way back. A quiet
        // packet's replies are not: its flow's loud ones already show them.
        let key = h.key();
        let th = key.hash32();
        let new_tuple = was.is_none_or(|v| !follow::same_tuple(v, th));
        let value = follow::remember(fp, th, hold.signature);
        let head = if floods() {
            field::<u64>(skb, off!(skb_head), site.access).unwrap_or(0)
        } else {
            0
        };
        match prior {
            // SAFETY: the map value this run looked up; written in place, no helper call.
            Some(p) => unsafe {
                (*p).follow = value;
                (*p).head = head;
                (*p).path = walk.path;
                (*p).hops = walk.hops;
                (*p).quiet = walk.quiet as u8;
            },
            None if new_tuple || hold.signature != ct_shown || walk.flow != 0 => {
                // Written field by field into the entry: a whole `Followed` built on the stack
                // cost the kprobe programs' frames the bytes a 6.1 verifier no longer had.
                let entry = match spare {
                    Some(p) => {
                        revive(p);
                        Some(p)
                    }
                    None => track(skb, remembered.is_none()),
                };
                if let Some(p) = entry {
                    // SAFETY: the map value just looked up or inserted, valid for this run.
                    unsafe {
                        (*p).follow = value;
                        (*p).first_ts = walk.first_ts;
                        (*p).flow = walk.flow;
                        (*p).path = walk.path;
                        (*p).len = walk.len;
                        (*p).hops = walk.hops;
                        (*p).quiet = walk.quiet as u8;
                        (*p).state = walk.state;
                        (*p).head = head;
                    }
                }
            }
            None => {}
        }
        if new_tuple
            && h.ipv4
            && !walk.quiet
            && let Some(reply) = key.reply_to_learn(was, h.l4)
            && let Some(f) = filter()
            && f.reply_secs != 0
        {
            learn_reply(&reply, f.reply_secs);
        }
    }
    if walk.quiet {
        return None;
    }
    // A quiet end that parted from its flow's way is shown: its header is read now (into the
    // same slots: a second copy would take stack the kprobe programs' frames on a 6.1 kernel
    // do not have).
    if quiet_end {
        h = headers(skb, site.l3_at_data, site.access);
        fp = h.fingerprint();
        matched = matches(&h);
    }

    let site = site.completed();
    let (ifindex, netns) = device(site.device(skb), site.access);
    let (peer_ifindex, peer_netns) = device(site.peer_dev, site.access);

    // Zeroed in place, word by word: LLVM turns a plain zeroing into a call of its `memset`
    // subprogram, a byte loop the verifier walks once per byte for every state that reaches it
    // (a 6.1 kernel gave up on the kprobe programs at its million-instruction limit).
    const WORDS: usize = core::mem::size_of::<HopEvent>() / 8;
    const _: () = assert!(
        core::mem::size_of::<HopEvent>().is_multiple_of(8)
            && core::mem::align_of::<HopEvent>() == 8
    );
    let out = buf.event()?;
    let words = out.as_mut_ptr().cast::<u64>();
    for i in 0..WORDS {
        // SAFETY: `i` words into a HopEvent-sized, 8-aligned buffer.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    // SAFETY: all-zero bytes are a valid HopEvent (`HopEvent::zeroed`).
    let ev = unsafe { out.assume_init_mut() };
    // SAFETY: helper without preconditions. Read again rather than kept across the map
    // calls above, where every value kept is a stack slot in a frame near its limit.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.skb = skb;
    ev.location = site.location;
    ev.netns = netns;
    ev.ifindex = ifindex;
    if h.ipv6 {
        // Read straight into the event: no room for them on the stack.
        // SAFETY: `saddr` and `daddr` lie next to each other, two `Addr`s (see the layout
        // test of `HopEvent`).
        h.addrs6_into(unsafe { &mut *(&raw mut ev.saddr).cast::<[Addr; 2]>() });
    } else {
        // Into the zeroed event, a word each: a whole `Addr` written would zero its other 12
        // bytes with a `memset` call.
        // SAFETY: `Addr` is 8-aligned, so its first 4 bytes take a u32.
        unsafe {
            (&raw mut ev.saddr)
                .cast::<u32>()
                .write(u32::from_ne_bytes(h.saddr));
            (&raw mut ev.daddr)
                .cast::<u32>()
                .write(u32::from_ne_bytes(h.daddr));
        }
    }
    ev.sport = h.sport;
    ev.dport = h.dport;
    ev.len = field::<u32>(skb, off!(skb_len), site.access).unwrap_or(0);
    ev.drop_reason = site.drop_reason;
    ev.peer_ifindex = peer_ifindex;
    ev.peer_netns = peer_netns;
    ev.kind = site.kind as u8;
    ev.proto = h.proto;
    ev.tcp_flags = h.tcp_flags;
    ev.nf_hook = site.nf_hook;
    ev.nf_family = site.nf_family;
    ev.fingerprint = fp;
    ev.flags = (if h.ipv4 { FLAG_IPV4 } else { 0 })
        | (if h.ipv6 { FLAG_IPV6 } else { 0 })
        | (if h.l4 { FLAG_L4 } else { 0 })
        | (if matched && !followed {
            FLAG_MATCHED
        } else {
            0
        })
        | (if followed { FLAG_FOLLOWED } else { 0 });
    // An ICMP error says what it is about: the flow it belongs to is the quoted packet's.
    if h.icmp_at != 0
        && let Some(q) = quote(h.icmp_at)
    {
        ev.icmp_type = q.icmp_type;
        ev.icmp_code = q.icmp_code;
        ev.quoted = q.inner;
        ev.flags |= FLAG_QUOTED;
    }
    // A drop also says where the packet came in and the header it entered this namespace
    // with (conntrack's), so a drop traced alone still names the input interface and the
    // published port it was sent to.
    if show_ct {
        ct_view(hold, &mut ev.ct);
        ev.flags |= FLAG_CONNTRACK;
    }
    if site.kind == HopKind::Drop {
        ev.in_ifindex = field::<u32>(skb, off!(skb_iif), site.access).unwrap_or(0);
        ev.skb_mark = field::<u32>(skb, off!(skb_mark), site.access).unwrap_or(0);
        if let Some((daddr, dport)) = entered(skb, site.access).filter(|_| h.ipv4) {
            ev.entered_daddr = daddr;
            ev.entered_dport = if h.l4 { dport } else { 0 };
            ev.flags |= FLAG_ENTERED;
        }
    }
    Some(ev)
}

/// Whether the header `h` passes the filter (none set: no).
#[inline(always)]
fn matches(h: &Headers) -> bool {
    filter().is_some_and(|f| h.passes(f))
}

/// Stops following the packet at `skb`: ends its entry in place while floods are summarised
/// (`slot`: its entry, when it is followed), else removes it.
#[inline(always)]
fn stop_following(skb: u64, slot: Option<*mut Followed>) {
    if floods() {
        if let Some(p) = slot {
            end(p);
        }
    } else {
        forget(skb);
    }
}

/// Ends the packet followed at `skb`: its memory holds another packet now. The record is
/// written word by word into `buf` (which the hop's event overwrites after): built whole on
/// the stack, LLVM zeroes it with a `memset` call, a third frame the 6.1 verifier adds to the
/// kprobe programs' and finds over its 512 bytes.
#[inline(always)]
fn freed_unseen<B: EventBuf>(skb: u64, buf: &B) {
    const WORDS: usize = HopEvent::HEAD_LEN / 8;
    let Some(out) = buf.event() else {
        return;
    };
    // SAFETY: helper without preconditions.
    let record = HopEvent::freed_unseen(unsafe { bpf_ktime_get_ns() }, skb);
    let words = out.as_mut_ptr().cast::<u64>();
    for (i, w) in record.iter().enumerate().take(WORDS) {
        // SAFETY: `i` words into a HopEvent-sized, 8-aligned buffer.
        unsafe { core::ptr::write_volatile(words.add(i), *w) };
    }
    // SAFETY: the head's words were just written.
    output(unsafe { core::slice::from_raw_parts(words.cast::<u8>(), HopEvent::HEAD_LEN) });
}

/// Writes one event to the ring buffer, counting it as emitted or lost.
#[inline(always)]
pub fn emit(ev: &HopEvent) {
    // Only a drop's record and an ICMP error's carry the tail (input interface, conntrack's
    // header, the quoted header).
    let len = HopEvent::record_len(ev.kind, ev.flags);
    // SAFETY: `len` is at most the size of `*ev`, which is fully initialised.
    output(unsafe { core::slice::from_raw_parts((ev as *const HopEvent).cast::<u8>(), len) });
}

/// `br_forward(to, skb, ...)`: the bridge forwards `skb` out of port `to`.
#[inline(always)]
pub fn bridge_forward(port: u64, skb: u64, buf: &Scratch) {
    let egress = if off!(have) & have::BRIDGE_PORT != 0 {
        read::<u64>(port, off!(brport_dev)).unwrap_or(0)
    } else {
        0
    };
    record(
        skb,
        Site {
            peer_dev: egress,
            ..Site::new(HopKind::BridgeForward)
        },
        buf,
    );
}

/// `veth_xmit(skb, dev)`: a veth hands `skb` to its peer.
#[inline(always)]
pub fn veth_transmit(skb: u64, dev: u64, buf: &Scratch) {
    let peer = if off!(have) & have::VETH_PEER != 0 && dev != 0 {
        read::<u64>(dev + off!(netdev_priv) as u64, off!(veth_priv_peer)).unwrap_or(0)
    } else {
        0
    };
    record(
        skb,
        Site {
            dev,
            peer_dev: peer,
            ..Site::new(HopKind::VethTransmit)
        },
        buf,
    );
}
