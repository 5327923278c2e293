//! One packet = the hops of one skb from its first matching hop until it is freed (or goes
//! quiet: then its end was not observed).

use std::collections::HashMap;

use tracer_common::HopKind;

use crate::events::Hop;

/// The hops of one skb, in time order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub skb: u64,
    pub hops: Vec<Hop>,
    /// Ended with a drop or consume event, or the kernel saw its memory reused (as opposed to
    /// idling out or the trace stopping).
    pub freed: bool,
}

impl Packet {
    pub fn first_ts(&self) -> u64 {
        self.hops.first().map_or(0, |h| h.ts_ns)
    }
}

/// How long a packet last seen on a receive may stay quiet before it is finished: longer than
/// ARP's default resolution attempts (3 probes, 1 s apart).
pub const QUEUED_GRACE_NS: u64 = 4_000_000_000;

/// Live packets keyed by skb address. Bounded: past `max_live` the quietest packet is
/// finished early rather than growing without limit.
pub struct PacketTracker {
    live: HashMap<u64, Packet>,
    idle_ns: u64,
    max_live: usize,
}

impl PacketTracker {
    pub fn new(idle_ns: u64, max_live: usize) -> Self {
        Self {
            live: HashMap::new(),
            idle_ns,
            max_live: max_live.max(1),
        }
    }

    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// Adds a hop; returns packets that are finished: this one when the hop frees its skb,
    /// the evicted one when the table is full, and the previous one at this address when the
    /// fingerprint shows the skb was freed unseen (no tracepoint on that path) and reused.
    pub fn push(&mut self, hop: Hop, finished: &mut Vec<Packet>) {
        if hop.kind == HopKind::FreedUnseen {
            // Not a hop: the kernel saw this address hold another packet. The one here ended
            // without a tracepoint, which drops never do (they all pass kfree_skb).
            self.finish(hop.skb, true, finished);
            return;
        }
        let reused = self.live.get(&hop.skb).is_some_and(|p| {
            let old = p
                .hops
                .iter()
                .rev()
                .find_map(|h| (h.fingerprint != 0).then_some(h.fingerprint));
            matches!(old, Some(fp) if hop.fingerprint != 0 && fp != hop.fingerprint)
        });
        if reused {
            self.finish(hop.skb, false, finished);
        }
        if !self.live.contains_key(&hop.skb)
            && self.live.len() >= self.max_live
            && let Some(oldest) = self.live.values().min_by_key(|p| last_ts(p)).map(|p| p.skb)
        {
            self.finish(oldest, false, finished);
        }
        let packet = self.live.entry(hop.skb).or_insert_with(|| Packet {
            skb: hop.skb,
            hops: Vec::with_capacity(8),
            freed: false,
        });
        packet.hops.push(hop);
        if hop.frees() {
            self.finish(hop.skb, true, finished);
        }
    }

    /// Moves the packet at `skb`, if one is live, to `finished`, its hops in time order.
    fn finish(&mut self, skb: u64, freed: bool, finished: &mut Vec<Packet>) {
        if let Some(mut p) = self.live.remove(&skb) {
            p.hops.sort_by_key(|h| h.ts_ns);
            p.freed = freed;
            finished.push(p);
        }
    }

    /// Finishes packets with no hop for the idle period before `now_ns` (CLOCK_MONOTONIC).
    ///
    /// A packet last seen inside the stack (a receive, a netfilter hook, a bridge decision)
    /// gets [`QUEUED_GRACE_NS`] instead: it may be waiting in a neighbour queue for ARP (up to
    /// ~3 s before NEIGH_FAILED), and finishing it early would call it delivered or unknown
    /// before the kernel decides.
    pub fn expire(&mut self, now_ns: u64, finished: &mut Vec<Packet>) {
        let idle = self.idle_ns;
        let grace = idle.max(QUEUED_GRACE_NS);
        let stale: Vec<u64> = self
            .live
            .values()
            .filter(|p| {
                let waited = now_ns.saturating_sub(last_ts(p));
                let in_stack = p.hops.last().is_some_and(|h| still_in_stack(h.kind));
                waited >= if in_stack { grace } else { idle }
            })
            .map(|p| p.skb)
            .collect();
        for skb in stale {
            self.finish(skb, false, finished);
        }
        finished.sort_by_key(Packet::first_ts);
    }

    /// Finishes everything (the trace is stopping).
    pub fn drain(&mut self, finished: &mut Vec<Packet>) {
        self.expire(u64::MAX, finished);
    }
}

/// After these hops the kernel still holds the skb and may queue it (a neighbour queue sits
/// behind POSTROUTING); after a transmit it belongs to a device, whose free may go unseen.
fn still_in_stack(kind: tracer_common::HopKind) -> bool {
    use tracer_common::HopKind::*;
    matches!(kind, Receive | NetfilterHook | BridgeForward)
}

fn last_ts(p: &Packet) -> u64 {
    p.hops.last().map_or(0, |h| h.ts_ns)
}

#[cfg(test)]
mod tests {
    use crate::net::TcpFlags;
    use tracer_common::{HopEvent, HopKind};

    use super::*;
    use crate::events::fixture::*;

    #[test]
    fn a_freed_skb_finishes_its_packet() {
        let mut t = PacketTracker::new(1_000_000, 100);
        let mut done = Vec::new();
        let hops = forwarding_off_syn();
        for h in &hops[..2] {
            t.push(*h, &mut done);
        }
        assert!(done.is_empty());
        t.push(hops[2], &mut done);
        assert_eq!(done.len(), 1);
        assert!(done[0].freed);
        assert_eq!(done[0].hops.len(), 3);
        assert_eq!(t.live(), 0);
    }

    #[test]
    fn reused_skb_address_starts_a_new_packet() {
        let mut t = PacketTracker::new(1_000_000, 100);
        let mut done = Vec::new();
        for h in forwarding_off_syn() {
            t.push(h, &mut done);
        }
        t.push(hop(ev(HopKind::Receive, 50_000, HOST_NS, 2)), &mut done);
        assert_eq!(done.len(), 1);
        assert_eq!(t.live(), 1);
    }

    #[test]
    fn a_packet_last_seen_on_a_receive_waits_for_arp() {
        let mut t = PacketTracker::new(500_000_000, 100);
        let mut done = Vec::new();
        t.push(hop(ev(HopKind::Receive, 1_000, HOST_NS, 2)), &mut done);
        t.expire(1_000 + 1_000_000_000, &mut done);
        assert!(done.is_empty(), "may be queued for ARP");
        t.expire(1_000 + QUEUED_GRACE_NS, &mut done);
        assert_eq!(done.len(), 1);
    }

    #[test]
    fn a_packet_last_seen_leaving_postrouting_waits_for_arp() {
        // The kprobe/fentry backends see POSTROUTING accept, then nothing until the neighbour
        // queue gives up (NEIGH_FAILED) seconds later.
        let mut t = PacketTracker::new(500_000_000, 100);
        let mut done = Vec::new();
        t.push(hop(ev(HopKind::Receive, 1_000, HOST_NS, 2)), &mut done);
        t.push(
            hop(ev(HopKind::NetfilterHook, 2_000, HOST_NS, 3)),
            &mut done,
        );
        t.expire(2_000 + 3_000_000_000, &mut done);
        assert!(done.is_empty(), "may be queued for ARP");
        let mut drop = ev(HopKind::Drop, 2_000 + 3_100_000_000, HOST_NS, 3);
        drop.drop_reason = 73;
        t.push(hop(drop), &mut done);
        assert_eq!(done.len(), 1);
        assert!(done[0].freed);
        assert_eq!(done[0].hops.len(), 3);
        // A packet last seen on a transmit finishes after the ordinary idle period.
        t.push(hop(ev(HopKind::Transmit, 10_000, HOST_NS, 3)), &mut done);
        t.expire(10_000 + 500_000_000, &mut done);
        assert_eq!(done.len(), 2);
        assert!(!done[1].freed);
    }

    #[test]
    fn an_address_reused_by_another_packet_splits() {
        let mut t = PacketTracker::new(1_000_000, 100);
        let mut done = Vec::new();
        // A SYN-ACK received and freed by a path without a tracepoint ...
        let mut synack = ev(HopKind::Receive, 1_000, OUT_NS, 2);
        synack.tcp_flags = 0x12;
        synack.fingerprint = 0xaaaa_0001;
        t.push(hop(synack), &mut done);
        // ... then the client's ACK, allocated at the same address.
        let mut ack = ev(HopKind::Transmit, 2_000, OUT_NS, 2);
        ack.tcp_flags = 0x10;
        ack.fingerprint = 0xbbbb_0001;
        t.push(hop(ack), &mut done);
        assert_eq!(done.len(), 1, "the SYN-ACK is finished on its own");
        assert_eq!(done[0].hops.len(), 1);
        assert!(!done[0].freed);
        assert_eq!(t.live(), 1);
        // Unknown fingerprints (0) never split.
        let mut unknown = ev(HopKind::Transmit, 3_000, HOST_NS, 3);
        unknown.fingerprint = 0;
        t.push(hop(unknown), &mut done);
        assert_eq!(done.len(), 1);
    }

    #[test]
    fn the_kernel_saying_an_address_was_reused_ends_its_packet_at_once() {
        let mut t = PacketTracker::new(500_000_000, 100);
        let mut done = Vec::new();
        // A SYN-ACK received by the client, whose TCP frees it with __kfree_skb (no
        // tracepoint); an ARP reply then lands at its address, and the kernel says so.
        let mut synack = ev(HopKind::Receive, 1_000, OUT_NS, 2);
        synack.tcp_flags = 0x12;
        t.push(hop(synack), &mut done);
        let mut reused = HopEvent::zeroed();
        reused.kind = HopKind::FreedUnseen as u8;
        reused.skb = SKB;
        reused.ts_ns = 2_000;
        t.push(hop(reused), &mut done);
        assert_eq!(done.len(), 1, "no waiting out the ARP grace period");
        assert!(done[0].freed);
        assert_eq!(done[0].hops.len(), 1, "the marker is not a hop");
        assert_eq!(done[0].hops[0].tcp_flags, TcpFlags::SYN | TcpFlags::ACK);
        assert_eq!(t.live(), 0);
        // A marker for an address nobody follows (any more) changes nothing.
        t.push(hop(reused), &mut done);
        assert_eq!((done.len(), t.live()), (1, 0));
    }

    #[test]
    fn idle_packets_expire_unfreed_and_table_is_bounded() {
        let mut t = PacketTracker::new(1_000, 2);
        let mut done = Vec::new();
        let mut a = ev(HopKind::Transmit, 100, HOST_NS, 2);
        t.push(hop(a), &mut done);
        a.skb += 1;
        a.ts_ns = 5_000;
        t.push(hop(a), &mut done);
        t.expire(5_500, &mut done);
        assert_eq!(done.len(), 1);
        assert!(!done[0].freed);
        assert_eq!(done[0].skb, SKB);
        // Fill to the bound: a third skb evicts the quietest.
        a.skb += 1;
        a.ts_ns = 6_000;
        t.push(hop(a), &mut done);
        a.skb += 1;
        a.ts_ns = 7_000;
        t.push(hop(a), &mut done);
        assert_eq!(t.live(), 2);
        assert_eq!(done.len(), 2);
        assert_eq!(done[1].skb, SKB + 1);
    }
}
