//! The connection view: per flow (a TCP connection, a UDP conversation) one story of how far
//! it got, built from the packets' reports. The symptom a person has is "the port does not
//! answer", and the handshake can die either way: this says which packet died, where, and
//! which packet's diagnosis explains it, and folds retransmissions of one segment into a count
//! instead of a new story each.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::{
    clock::WallTime,
    correlate::flow::Direction,
    diagnose::{Diagnosis, Unanswered},
    events::Tuple,
    report::Report,
    verdict::Outcome,
};

/// Steps kept per connection: the handshake, a drop or two, and the first data each way.
const MAX_STEPS: usize = 8;

/// One packet of the story: the first of its kind in its direction, or one that ended
/// differently from the step before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    pub direction: Direction,
    /// `SYN`, `SYN-ACK`, `ACK`, `RST`, `FIN`, `udp`, `ICMP port unreachable`.
    pub packet: String,
    pub outcome: Outcome,
    /// Where it ended, in words: `to web-1:80`, `in netns host at filter/FORWARD rule 1`.
    pub place: String,
    /// The diagnosis code of its verdict, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// The same segment sent again (same sequence number and flags), counted here.
    pub retransmissions: u32,
    /// The first such packet's skb, to find its timeline.
    pub skb: crate::report::SkbAddr,
    #[serde(skip)]
    fingerprint: u32,
    /// Delivered: where and as what a socket took it.
    #[serde(skip)]
    taken: Option<Unanswered>,
}

/// How far a connection got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// TCP: SYN, SYN-ACK and ACK each delivered.
    Established,
    /// Something answered the first packet (UDP, or a TCP handshake not yet complete).
    Answered,
    /// A packet of the first direction was dropped.
    Dropped,
    /// The first direction got through, a reply died on its way back.
    ReplyDropped,
    /// The first direction got through and no reply was seen.
    NoReply,
    /// Answered with a reset or an ICMP error.
    Refused,
}

impl State {
    fn words(self) -> &'static str {
        match self {
            Self::Established => "established",
            Self::Answered => "answered",
            Self::Dropped => "dropped",
            Self::ReplyDropped => "reply dropped",
            Self::NoReply => "no reply",
            Self::Refused => "refused",
        }
    }
}

/// `{"kind":"flow", ...}`: one connection's story (docs/json.md).
#[derive(Clone, Debug, Serialize)]
pub struct Connection {
    pub id: u64,
    /// When its first packet was seen.
    pub time: WallTime,
    /// The first packet's header as first seen, and after NAT.
    pub tuple: Tuple,
    pub translated: Tuple,
    pub state: State,
    pub steps: Vec<Step>,
    /// Packets seen each way: `[original, reply]` (ICMP errors count with the reply).
    pub packets: [u64; 2],
    /// Packets that were not shown as a step of their own (beyond [`MAX_STEPS`]).
    pub more: u64,
    /// Which step's diagnosis explains how far it got: the first drop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explained_by: Option<usize>,
    /// What explains a connection no single packet does: a first packet taken by a socket
    /// that never answered because it has no route back (`diagnose::routing::no_route_back`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Diagnosis>,
    pub summary: String,
    #[serde(skip)]
    first_ns: u64,
    #[serde(skip)]
    last_ns: u64,
    /// TCP: a FIN or RST was seen; the story ends soon after its last packet.
    #[serde(skip)]
    closing: bool,
}

impl Connection {
    fn new(id: u64, r: &Report, tuple: Tuple, translated: Tuple) -> Self {
        let ts = r.packet.first_ts();
        Self {
            id,
            time: WallTime(ts),
            tuple,
            translated,
            state: State::NoReply,
            steps: Vec::new(),
            packets: [0, 0],
            more: 0,
            explained_by: None,
            diagnosis: None,
            summary: String::new(),
            first_ns: ts,
            last_ns: ts,
            closing: false,
        }
    }

    /// Adds a packet; its retransmission number when it repeats a step's segment.
    fn add(&mut self, r: &Report, direction: Direction) -> Option<u32> {
        let first = r.packet.hops.first()?;
        self.last_ns = self
            .last_ns
            .max(r.packet.hops.last().map_or(0, |h| h.ts_ns));
        self.packets[usize::from(direction != Direction::Original)] += 1;
        let flags = first.tcp_flags;
        if flags.contains(crate::net::TcpFlags::FIN) || flags.contains(crate::net::TcpFlags::RST) {
            self.closing = true;
        }
        // Only TCP says a packet is the same segment again (its sequence number): an IP id
        // repeats across UDP datagrams and ICMP errors sent with DF.
        let fp = first.fingerprint;
        let tcp = first
            .tuple
            .is_some_and(|t| t.proto == crate::net::Proto::TCP);
        if tcp
            && fp != 0
            && direction != Direction::Related
            && let Some(step) = self
                .steps
                .iter_mut()
                .find(|s| s.direction == direction && s.fingerprint == fp)
        {
            step.retransmissions += 1;
            return Some(step.retransmissions);
        }
        let step = step_of(r, direction);
        // A new kind of packet, or the same kind ending otherwise than before: a step. The
        // rest of a long conversation is counted.
        let told = self.steps.iter().any(|s| {
            s.direction == step.direction
                && s.packet == step.packet
                && s.outcome == step.outcome
                && s.place == step.place
        });
        if told || self.steps.len() >= MAX_STEPS {
            self.more += 1;
        } else {
            self.steps.push(step);
        }
        None
    }

    /// Decides the state and writes the summary: called once, as the story ends.
    fn finish(&mut self) {
        let dropped = |d: Direction| {
            self.steps
                .iter()
                .any(|s| s.direction == d && s.outcome == Outcome::Dropped)
        };
        let delivered = |d: Direction, packet: &str| {
            self.steps
                .iter()
                .any(|s| s.direction == d && s.packet == packet && s.outcome == Outcome::Delivered)
        };
        let refused = self.steps.iter().any(|s| {
            s.direction != Direction::Original
                && (s.packet == "RST" || s.packet.starts_with("ICMP"))
        });
        self.state = if dropped(Direction::Original) {
            State::Dropped
        } else if dropped(Direction::Reply) {
            State::ReplyDropped
        } else if refused {
            State::Refused
        } else if delivered(Direction::Original, "SYN")
            && delivered(Direction::Reply, "SYN-ACK")
            && delivered(Direction::Original, "ACK")
        {
            State::Established
        } else if self.packets[1] > 0 {
            State::Answered
        } else {
            State::NoReply
        };
        self.explained_by = self
            .steps
            .iter()
            .position(|s| s.outcome == Outcome::Dropped && s.code.is_some())
            .or_else(|| {
                self.steps
                    .iter()
                    .position(|s| s.outcome == Outcome::Dropped)
            });
        self.summary = self.words();
    }

    /// The first packet taken by a socket, when nothing came back: what the connection-level
    /// check looks at (the step's packet name, and where it was taken).
    pub fn unanswered(&self) -> Option<(&str, Unanswered)> {
        if self.state != State::NoReply {
            return None;
        }
        self.steps
            .iter()
            .filter(|s| s.direction == Direction::Original)
            .find_map(|s| Some((s.packet.as_str(), s.taken?)))
    }

    /// `SYN delivered to web-1:80; SYN-ACK dropped in netns host at filter/FORWARD rule 1;
    /// the SYN-ACK was retransmitted 3 times`.
    fn words(&self) -> String {
        let mut parts: Vec<String> = self
            .steps
            .iter()
            .map(|s| format!("{} {} {}", s.packet, outcome_word(s.outcome), s.place))
            .collect();
        for s in self.steps.iter().filter(|s| s.retransmissions > 0) {
            let who = match s.direction {
                Direction::Original => "the client",
                _ => "the server",
            };
            parts.push(format!(
                "{who} retransmitted the {} {}",
                s.packet,
                times(s.retransmissions)
            ));
        }
        if parts.is_empty() {
            return self.state.words().to_owned();
        }
        let mut text = parts.join("; ");
        if self.more > 0 {
            text.push_str(&format!(" (+{} more packets)", self.more));
        }
        text
    }
}

fn times(n: u32) -> String {
    if n == 1 {
        "once".into()
    } else {
        format!("{n} times")
    }
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Delivered => "delivered",
        Outcome::Dropped => "dropped",
        Outcome::Ended => "ended",
        Outcome::Unknown => "lost sight of",
    }
}

/// The step a packet tells: what it is, how and where it ended.
fn step_of(r: &Report, direction: Direction) -> Step {
    let first = r.packet.hops.first();
    let quoted = r.packet.hops.iter().find_map(|h| h.quoted);
    let packet = match (quoted, first.map(|h| h.tcp_flags.handshake().name())) {
        (Some(q), _) => format!("ICMP {}", q.error.name()),
        (None, Some("SYN")) => "SYN".into(),
        (None, Some("SYN|ACK")) => "SYN-ACK".into(),
        (None, Some(f)) if f.contains("RST") => "RST".into(),
        (None, Some(f)) if f.contains("FIN") => "FIN".into(),
        (None, Some(f)) if !f.is_empty() => "ACK".into(),
        _ => r
            .first_tuple()
            .map_or_else(|| "packet".to_owned(), |t| t.proto.name().to_owned()),
    };
    Step {
        direction,
        packet,
        outcome: r.verdict.outcome,
        place: place(r),
        code: r.diagnosis.as_ref().map(|d| d.code),
        // The fix of what died: a delivered packet's diagnosis (rare) fixes nothing here.
        fix: (r.verdict.outcome == Outcome::Dropped)
            .then(|| r.diagnosis.as_ref().and_then(|d| d.fix.clone()))
            .flatten(),
        retransmissions: 0,
        skb: crate::report::SkbAddr(r.packet.skb),
        fingerprint: first.map_or(0, |h| h.fingerprint),
        taken: (r.verdict.outcome == Outcome::Delivered)
            .then(|| taken(r))
            .flatten(),
    }
}

/// Where a delivered packet was taken: the last hop on a device, and the namespace before it.
fn taken(r: &Report) -> Option<Unanswered> {
    let hops = &r.packet.hops;
    let i = hops
        .iter()
        .rposition(|h| h.netns != 0 && h.ifindex != 0 && h.tuple.is_some())?;
    let at = &hops[i];
    Some(Unanswered {
        netns: at.netns,
        ifindex: at.ifindex,
        tuple: at.tuple?,
        via_netns: hops[..i]
            .iter()
            .rev()
            .find(|h| h.netns != 0 && h.netns != at.netns)
            .map(|h| h.netns),
    })
}

/// Where a packet ended, in words.
fn place(r: &Report) -> String {
    let last = r.last_hop();
    let netns = last.map_or("?", |h| h.netns_name.as_str());
    match r.verdict.outcome {
        Outcome::Delivered => {
            let port = last.and_then(|h| h.dport).map(|p| format!(":{p}"));
            let to = match last.and_then(|h| h.container.as_ref()) {
                Some(c) => format!("{}{}", c.name, port.unwrap_or_default()),
                None => match last.and_then(|h| h.dst) {
                    Some(dst) => format!("{dst}{} (netns {netns})", port.unwrap_or_default()),
                    None => format!("netns {netns}"),
                },
            };
            format!("to {to}")
        }
        Outcome::Dropped | Outcome::Ended => {
            let rule = r
                .diagnosis
                .as_ref()
                .and_then(|d| d.rule.as_ref())
                .map(|r| match r.index {
                    Some(i) => format!("{}/{} rule {i}", r.table, r.chain),
                    None => format!("{}/{} policy", r.table, r.chain),
                });
            if let Some(rule) = rule {
                return format!("in netns {netns} at {rule}");
            }
            let d = r
                .verdict
                .drop
                .as_ref()
                .or(r.verdict.freed.as_ref().map(|f| &f.0));
            match d {
                Some(d) => match &d.location {
                    Some(s) => format!("in netns {netns} at {} ({})", s.name, d.reason),
                    None => format!("in netns {netns} ({})", d.reason),
                },
                None => format!("in netns {netns}"),
            }
        }
        Outcome::Unknown => format!("in netns {netns}"),
    }
}

/// Open connections, by flow id; bounded, the oldest finished early when full.
pub struct Connections {
    open: HashMap<u64, Connection>,
    order: VecDeque<u64>,
    max: usize,
    /// No open connection is due before this (a lower bound; `u64::MAX` when none is open):
    /// the tick's check costs nothing until then, instead of a walk of every connection.
    due_ns: u64,
}

/// A connection with no packet for this long is told.
pub const IDLE_NS: u64 = 10_000_000_000;
/// A closing one (FIN, RST) this long after its last packet.
const CLOSED_NS: u64 = 1_000_000_000;

impl Connections {
    pub fn new(max: usize) -> Self {
        Self {
            open: HashMap::new(),
            order: VecDeque::new(),
            max: max.max(1),
            due_ns: u64::MAX,
        }
    }

    /// Adds a reported packet to its connection; returns the retransmission number when it
    /// repeats a segment already told, and a connection pushed out by the bound.
    pub fn add(&mut self, r: &Report) -> (Option<u32>, Option<Connection>) {
        let Some(flow) = r.flow.as_ref() else {
            return (None, None);
        };
        let mut evicted = None;
        if !self.open.contains_key(&flow.id) {
            if self.open.len() >= self.max {
                evicted = self.pop_oldest();
            }
            self.open.insert(
                flow.id,
                Connection::new(flow.id, r, flow.original, flow.translated),
            );
            self.order.push_back(flow.id);
        }
        let conn = self.open.get_mut(&flow.id);
        let again = conn.and_then(|c| {
            c.translated = flow.translated;
            let again = c.add(r, flow.direction);
            // A FIN or RST brings its end closer; a packet only pushes it later, so the
            // bound stays a bound.
            self.due_ns = self.due_ns.min(c.due_ns());
            again
        });
        (again, evicted)
    }

    fn pop_oldest(&mut self) -> Option<Connection> {
        while let Some(id) = self.order.pop_front() {
            if let Some(mut c) = self.open.remove(&id) {
                c.finish();
                return Some(c);
            }
        }
        None
    }

    /// The connections whose story ended by `now_ns` (idle, or closed), or all (`None`), in
    /// the order they began.
    pub fn finished(&mut self, now_ns: Option<u64>) -> Vec<Connection> {
        if now_ns.is_some_and(|now| now < self.due_ns) {
            return Vec::new();
        }
        let done: Vec<u64> = self
            .order
            .iter()
            .copied()
            .filter(|id| {
                self.open.get(id).is_some_and(|c| {
                    now_ns.is_none_or(|now| {
                        let quiet = now.saturating_sub(c.last_ns);
                        quiet >= IDLE_NS || (c.closing && quiet >= CLOSED_NS)
                    })
                })
            })
            .collect();
        let mut out = Vec::with_capacity(done.len());
        for id in done {
            if let Some(mut c) = self.open.remove(&id) {
                c.finish();
                out.push(c);
            }
        }
        self.order.retain(|id| self.open.contains_key(id));
        self.due_ns = self
            .open
            .values()
            .map(Connection::due_ns)
            .min()
            .unwrap_or(u64::MAX);
        out
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

impl Connection {
    /// When its story is told unless another packet comes: idle, or a closing one's grace.
    fn due_ns(&self) -> u64 {
        self.last_ns
            .saturating_add(if self.closing { CLOSED_NS } else { IDLE_NS })
    }

    /// How long the story took, first packet to last.
    pub fn duration_ns(&self) -> u64 {
        self.last_ns - self.first_ns
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::HopKind;

    use super::*;
    use crate::{
        correlate::{FlowTable, Packet},
        events::{Hop, fixture::*},
        host::fixture::FakeHost,
        probes::{DropReasons, HookSet},
    };

    const NETFILTER_DROP: i64 = 10;

    /// The SYN-ACK leaving the container (fingerprint `fp`), dying on the host's veth.
    fn syn_ack(skb: u64, fp: u32, t0: u64) -> Vec<Hop> {
        let mk = |kind, ts, ns, idx| {
            let mut e = syn_ack_ev(kind, t0 + ts, ns, idx);
            e.skb = skb;
            e.fingerprint = fp;
            e
        };
        let mut drop = mk(HopKind::Drop, 3_000, HOST_NS, 4);
        drop.drop_reason = NETFILTER_DROP as u32;
        let mut rx = hop(mk(HopKind::Receive, 2_000, HOST_NS, 4));
        rx.followed = true;
        vec![hop(mk(HopKind::Transmit, 1_000, CTR_NS, 2)), rx, hop(drop)]
    }

    struct Run {
        flows: FlowTable,
        host: FakeHost,
        reasons: DropReasons,
        conns: Connections,
    }

    impl Run {
        fn new(max: usize) -> Self {
            Self {
                flows: FlowTable::new(16),
                host: FakeHost::lab(),
                reasons: DropReasons::from_pairs([(
                    "SKB_DROP_REASON_NETFILTER_DROP".to_owned(),
                    NETFILTER_DROP,
                )]),
                conns: Connections::new(max),
            }
        }

        fn add(&mut self, skb: u64, hops: Vec<Hop>) -> (Option<u32>, Option<Connection>) {
            let packet = Packet {
                skb,
                hops,
                freed: true,
            };
            let flow = self.flows.observe(&packet);
            let r = Report::build(packet, flow, &mut self.host, &self.reasons, HookSet::Path);
            self.conns.add(&r)
        }
    }

    #[test]
    fn a_reply_dropped_on_its_way_back_is_the_connections_story() {
        let mut run = Run::new(8);
        let (again, pushed) = run.add(SKB, healthy_syn());
        assert!(again.is_none() && pushed.is_none());
        assert_eq!(run.add(0xa1, syn_ack(0xa1, 0x5151, 10_000)).0, None);
        // The container sends its SYN-ACK again, and again: the same segment.
        assert_eq!(run.add(0xa2, syn_ack(0xa2, 0x5151, 1_000_000)).0, Some(1));
        assert_eq!(run.add(0xa3, syn_ack(0xa3, 0x5151, 3_000_000)).0, Some(2));
        // The client's SYN retransmitted, delivered again.
        assert_eq!(run.add(SKB, healthy_syn()).0, Some(1));
        assert!(
            run.conns.finished(Some(4_000_000)).is_empty(),
            "not idle yet"
        );
        let told = run.conns.finished(None);
        let [c] = &told[..] else {
            panic!("one connection: {told:#?}")
        };
        assert_eq!(c.state, State::ReplyDropped);
        assert_eq!(c.packets, [2, 3]);
        assert_eq!(c.steps.len(), 2, "{:#?}", c.steps);
        assert_eq!(c.explained_by, Some(1));
        assert_eq!(c.steps[1].packet, "SYN-ACK");
        assert_eq!(c.steps[1].retransmissions, 2);
        assert_eq!(c.steps[1].code, Some("netfilter_drop"));
        assert_eq!(
            c.summary,
            "SYN delivered to 172.17.0.2:80 (netns lab-ctr); SYN-ACK dropped in netns lab-host \
             (NETFILTER_DROP); the client retransmitted the SYN once; the server retransmitted \
             the SYN-ACK 2 times"
        );
        assert!(run.conns.is_empty());
    }

    /// A SYN a socket took, and nothing back: the connection says where it was taken, and
    /// the connection-level check finds the container has no route to the client, with the
    /// bridge's address as the way back. With a route, nothing is claimed.
    #[test]
    fn a_syn_taken_without_a_route_back_is_explained_by_the_containers_routing() {
        let mut run = Run::new(8);
        run.add(SKB, healthy_syn());
        let told = run.conns.finished(None);
        let [c] = &told[..] else {
            panic!("one connection: {told:#?}")
        };
        assert_eq!(c.state, State::NoReply);
        let (packet, u) = c.unanswered().expect("a SYN taken by a socket");
        assert_eq!(packet, "SYN");
        assert_eq!(
            (u.netns, u.ifindex, u.via_netns),
            (CTR_NS, 2, Some(HOST_NS))
        );
        assert_eq!(u.tuple.to_string(), "203.0.113.2:40000 → 172.17.0.2:80");

        let client = std::net::Ipv4Addr::new(203, 0, 113, 2);
        let host = &mut run.host;
        host.routes.insert(
            (CTR_NS, client),
            crate::host::RouteLookup::Unreachable("Network is unreachable".into()),
        );
        let d = crate::diagnose::no_route_back(host, &u, packet).expect("diagnosed");
        assert_eq!(d.code, crate::diagnose::NO_ROUTE_BACK);
        assert!(
            d.summary.contains(
                "reached netns lab-ctr at 172.17.0.2:80 and was taken by a socket, but netns lab-ctr has no route back to 203.0.113.2: its SYN-ACK was never built"
            ),
            "{}",
            d.summary
        );
        assert_eq!(
            d.fix.as_deref(),
            Some("ip netns exec lab-ctr ip route add default via 172.17.0.1 dev eth0")
        );
        assert!(
            d.evidence
                .iter()
                .any(|e| e == "ip route get 203.0.113.2 from 172.17.0.2 in netns lab-ctr: Network is unreachable"),
            "{:#?}",
            d.evidence
        );
        let mut explained = c.clone();
        explained.diagnosis = Some(d);
        let line = crate::output::human::connection_line(&explained);
        assert!(line.contains("no reply — SYN delivered"), "{line}");
        assert!(line.contains("diagnosis [no_route_back]:"), "{line}");
        let json = serde_json::to_value(&explained).expect("json");
        assert_eq!(json["diagnosis"]["code"], "no_route_back");
        host.routes.insert(
            (CTR_NS, client),
            crate::host::RouteLookup::Via {
                dev: "eth0".into(),
                gateway: Some(std::net::Ipv4Addr::new(172, 17, 0, 1)),
            },
        );
        assert!(crate::diagnose::no_route_back(host, &u, packet).is_none());
    }

    #[test]
    fn a_connection_is_told_once_idle_or_soon_after_it_closes() {
        let mut run = Run::new(8);
        run.add(SKB, healthy_syn());
        assert!(run.conns.finished(Some(9_000 + IDLE_NS - 1)).is_empty());
        assert_eq!(run.conns.finished(Some(9_000 + IDLE_NS)).len(), 1);
        // A reset closes it: told a second after its last packet.
        run.add(SKB, healthy_syn());
        let mut rst = syn_ack(0xb1, 0x7777, 20_000);
        for h in &mut rst {
            h.tcp_flags = crate::net::TcpFlags::RST | crate::net::TcpFlags::ACK;
        }
        run.add(0xb1, rst);
        assert!(run.conns.finished(Some(23_000 + CLOSED_NS - 1)).is_empty());
        let told = run.conns.finished(Some(23_000 + CLOSED_NS));
        assert_eq!(told.len(), 1);
        assert_eq!(told[0].steps[1].packet, "RST");
    }

    #[test]
    fn the_oldest_connection_is_told_when_the_table_is_full() {
        let mut run = Run::new(1);
        run.add(SKB, healthy_syn());
        let mut other = healthy_syn();
        for h in &mut other {
            if let Some(t) = h.tuple.as_mut() {
                t.sport = 40001;
            }
        }
        let (_, pushed) = run.add(SKB + 1, other);
        let pushed = pushed.expect("the first told as the second begins");
        assert_eq!(pushed.tuple.sport, 40000);
        assert_eq!(pushed.state, State::NoReply);
        assert_eq!(run.conns.len(), 1);
    }
}
