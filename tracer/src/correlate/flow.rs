//! Flows: packets grouped by 5-tuple, NAT-aware. A packet whose tuple changes between hops
//! records the rewrite (DNAT, SNAT); replies are recognised by the reverse of the translated
//! tuple, as conntrack does.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use super::Packet;
use crate::events::Tuple;

/// What a NAT rewrite changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RewriteKind {
    Dnat,
    Snat,
    /// Both source and destination changed between two observed hops.
    Nat,
}

/// A change of the packet's tuple between two consecutive hops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Rewrite {
    /// Index of the first hop that shows the new tuple.
    pub hop: usize,
    pub kind: RewriteKind,
    pub from: Tuple,
    pub to: Tuple,
}

/// Tuple changes along a packet's hops.
pub fn rewrites(packet: &Packet) -> Vec<Rewrite> {
    let mut out = Vec::new();
    let mut prev: Option<Tuple> = None;
    for (i, hop) in packet.hops.iter().enumerate() {
        let Some(t) = hop.tuple else { continue };
        if let Some(p) = prev.filter(|p| *p != t) {
            let src = (p.src, p.sport) != (t.src, t.sport);
            let dst = (p.dst, p.dport) != (t.dst, t.dport);
            let kind = match (src, dst) {
                (false, true) => RewriteKind::Dnat,
                (true, false) => RewriteKind::Snat,
                _ => RewriteKind::Nat,
            };
            out.push(Rewrite {
                hop: i,
                kind,
                from: p,
                to: t,
            });
        }
        prev = Some(t);
    }
    out
}

/// Which way a packet went relative to its flow's first packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Original,
    Reply,
    /// An ICMP error about one of the flow's packets (conntrack's RELATED): joined by the
    /// header it quotes.
    Related,
}

/// A packet's place in its flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowView {
    pub id: u64,
    pub direction: Direction,
    /// Tuple of the flow's first packet as first seen.
    pub original: Tuple,
    /// That packet's tuple after NAT (equal to `original` without NAT).
    pub translated: Tuple,
    /// This packet's rewrites.
    pub rewrites: Vec<Rewrite>,
    /// Packets seen in this flow so far, this one included.
    pub packets: u64,
}

struct Flow {
    original: Tuple,
    translated: Tuple,
    packets: u64,
}

/// Flows by tuple; bounded by evicting the oldest flow.
pub struct FlowTable {
    flows: HashMap<u64, Flow>,
    /// Original tuple and reversed translated tuple → flow id.
    index: HashMap<Tuple, (u64, Direction)>,
    order: VecDeque<u64>,
    next_id: u64,
    max_flows: usize,
}

impl FlowTable {
    pub fn new(max_flows: usize) -> Self {
        Self {
            flows: HashMap::new(),
            index: HashMap::new(),
            order: VecDeque::new(),
            next_id: 1,
            max_flows: max_flows.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Places a finished packet in its flow; `None` for packets without an IPv4 tuple.
    pub fn observe(&mut self, packet: &Packet) -> Option<FlowView> {
        let first = packet.hops.iter().find_map(|h| h.tuple)?;
        let last = packet
            .hops
            .iter()
            .rev()
            .find_map(|h| h.tuple)
            .unwrap_or(first);
        let rewrites = rewrites(packet);
        let related = packet.hops.iter().find_map(|h| h.quoted).and_then(|q| {
            // The quote is the packet as its sender saw it: either direction, before or
            // after NAT, so both it and its reverse are looked up.
            let by = |t: Tuple| self.index.get(&t).map(|&(id, _)| (id, Direction::Related));
            by(q.tuple).or_else(|| by(q.tuple.reversed()))
        });
        let (id, direction) = match related.or_else(|| self.index.get(&first).copied()) {
            Some(found) => found,
            // The kernel followed it as the answer to a packet this table never saw (a drop
            // traced alone, matched by its conntrack entry): the flow is the one it answers.
            None if packet.hops.iter().any(|h| h.followed) => {
                let id = self.insert(last.reversed(), first.reversed());
                (id, Direction::Reply)
            }
            None => {
                let id = self.insert(first, last);
                (id, Direction::Original)
            }
        };
        let flow = self.flows.get_mut(&id)?;
        flow.packets += 1;
        if direction == Direction::Original && flow.translated == flow.original && last != first {
            // A later packet showed the NAT the first one did not reach.
            flow.translated = last;
            let reply = last.reversed();
            self.index.insert(reply, (id, Direction::Reply));
        }
        Some(FlowView {
            id,
            direction,
            original: flow.original,
            translated: flow.translated,
            rewrites,
            packets: flow.packets,
        })
    }

    fn insert(&mut self, original: Tuple, translated: Tuple) -> u64 {
        while self.flows.len() >= self.max_flows {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(f) = self.flows.remove(&old) {
                self.index.remove(&f.original);
                self.index.remove(&f.translated.reversed());
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.flows.insert(
            id,
            Flow {
                original,
                translated,
                packets: 0,
            },
        );
        self.order.push_back(id);
        self.index.insert(original, (id, Direction::Original));
        self.index
            .insert(translated.reversed(), (id, Direction::Reply));
        id
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tracer_common::HopKind;

    use super::*;
    use crate::events::fixture::*;

    fn packet(hops: Vec<crate::events::Hop>) -> Packet {
        Packet {
            skb: SKB,
            hops,
            freed: true,
        }
    }

    #[test]
    fn dnat_is_recorded_at_the_hop_that_shows_it() {
        let p = packet(healthy_syn());
        let rw = rewrites(&p);
        assert_eq!(rw.len(), 1);
        assert_eq!(rw[0].kind, RewriteKind::Dnat);
        assert_eq!(rw[0].hop, 2);
        assert_eq!(rw[0].to.dst, Ipv4Addr::new(172, 17, 0, 2));
        assert_eq!(rw[0].to.dport, 80);
    }

    #[test]
    fn reply_joins_the_flow_through_the_translated_tuple() {
        let mut flows = FlowTable::new(16);
        let syn = flows.observe(&packet(healthy_syn())).expect("ipv4");
        assert_eq!(syn.direction, Direction::Original);
        // SYN-ACK from the container: 172.17.0.2:80 → 203.0.113.2:40000, un-DNATed on the way.
        let reply = syn_ack_ev(HopKind::Transmit, 10_000, CTR_NS, 2);
        let mut out = reply;
        out.saddr = tracer_common::event::Addr::v4([203, 0, 113, 1]);
        out.sport = 10001;
        out.ts_ns = 12_000;
        let view = flows
            .observe(&packet(vec![hop(reply), hop(out)]))
            .expect("ipv4");
        assert_eq!(view.id, syn.id);
        assert_eq!(view.direction, Direction::Reply);
        assert_eq!(view.rewrites[0].kind, RewriteKind::Snat);
        assert_eq!(view.packets, 2);
    }

    #[test]
    fn an_icmp_error_joins_the_flow_of_the_packet_it_quotes() {
        let mut flows = FlowTable::new(16);
        let syn = flows.observe(&packet(healthy_syn())).expect("ipv4");
        // Port unreachable from the host, about the SYN after DNAT (as a REJECT in FORWARD
        // sends it), and one about the SYN as the client sent it (after conntrack translated
        // the quote back).
        for quoted in [syn.translated, syn.original] {
            let mut e = ev(HopKind::Receive, 20_000, HOST_NS, 2);
            e.saddr = tracer_common::event::Addr::v4([203, 0, 113, 1]);
            e.daddr = tracer_common::event::Addr::v4([203, 0, 113, 2]);
            e.proto = 1;
            e.flags &= !tracer_common::event::FLAG_L4;
            let mut h = hop(e);
            h.quoted = Some(crate::events::Quoted {
                error: crate::net::IcmpError { kind: 3, code: 3 },
                tuple: quoted,
            });
            let view = flows.observe(&packet(vec![h])).expect("ipv4");
            assert_eq!((view.id, view.direction), (syn.id, Direction::Related));
        }
        assert_eq!(flows.len(), 1, "no flow of its own");
    }

    #[test]
    fn a_followed_packet_seen_alone_is_the_reply_of_the_flow_it_answers() {
        let mut flows = FlowTable::new(16);
        let mut e = syn_ack_ev(HopKind::Drop, 5_000, HOST_NS, 4);
        e.flags |= tracer_common::event::FLAG_FOLLOWED;
        let view = flows.observe(&packet(vec![hop(e)])).expect("ipv4");
        assert_eq!(view.direction, Direction::Reply);
        assert_eq!(view.original.sport, 40000, "{view:?}");
        assert_eq!(view.original.src, Ipv4Addr::new(203, 0, 113, 2));
        // The client's next packet joins it as the original direction.
        let mut ack = ev(HopKind::Receive, 9_000, CTR_NS, 2);
        ack.daddr = tracer_common::event::Addr::v4([172, 17, 0, 2]);
        ack.dport = 80;
        ack.tcp_flags = 0x10;
        let next = flows.observe(&packet(vec![hop(ack)])).expect("ipv4");
        assert_eq!((next.id, next.direction), (view.id, Direction::Original));
    }

    #[test]
    fn table_is_bounded() {
        let mut flows = FlowTable::new(2);
        for port in 0..5u16 {
            let mut e = ev(HopKind::Receive, 1, HOST_NS, 2);
            e.sport = 1000 + port;
            flows.observe(&packet(vec![hop(e)]));
        }
        assert_eq!(flows.len(), 2);
    }
}
