//! The view model: a decided, diagnosed packet ([`Judged`]) with everything resolved for
//! output (interface and namespace names, symbols). Output formats only render this.

use std::net::IpAddr;

use serde::Serialize;

use crate::{
    clock::WallTime,
    correlate::{FlowView, Packet, Rewrite, flow::Direction},
    diagnose::{Diagnosis, Judged, Target},
    events::{CtView, Hop, Tuple, kind_name},
    host::{ContainerRef, HostFacts, Symbol},
    net::{CtStatus, Hook},
    probes::DropReasons,
    verdict::{Delivery, Outcome, Verdict},
};

/// One hop with names resolved. Field names are the JSON schema (docs/json.md): add, never
/// rename.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HopView {
    pub ts_ns: u64,
    /// `ts_ns` on the wall clock (RFC 3339 UTC, microseconds).
    pub time: WallTime,
    /// Kernel address of the skb, hex (too large for JSON numbers to hold exactly).
    pub skb: SkbAddr,
    pub hop: &'static str,
    pub ifname: String,
    pub ifindex: u32,
    /// Network namespace inode.
    pub netns: u32,
    pub netns_name: String,
    /// `ipv4` or `ipv6`; absent where the IP header could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<&'static str>,
    pub src: Option<IpAddr>,
    pub sport: Option<u16>,
    pub dst: Option<IpAddr>,
    pub dport: Option<u16>,
    pub proto: Option<&'static str>,
    pub tcp_flags: &'static str,
    pub len: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Netfilter hops: which hook and what it decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netfilter: Option<NetfilterView>,
    /// veth peer, bridge egress port, or FORWARD output device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerView>,
    /// The container the device belongs to (inside it, or the host side of its veth).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerRef>,
    /// For a host-side veth: the container end it leads to, `web-1:eth0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_interface: Option<String>,
    /// Drops: the device the packet was last received on in this namespace (`skb_iif`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_ifname: Option<String>,
    /// Drops: where the packet was addressed when it entered this namespace, before any NAT
    /// (conntrack's tuple).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entered: Option<EnteredView>,
    /// Not traced but proved by the receive after it (`--hooks receive`): the sending end of
    /// a veth, or the bridge in front of a port. Its time is that receive's.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inferred: bool,
    /// The filter did not match the packet here: the kernel followed it as a reply to one it
    /// did match (or an ICMP error about one). Set on the hop where that began.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub followed: bool,
    /// Not traced for this packet: a summarised flood's packet that parted from its flow's
    /// way later, shown from here as the flow's latest full packet went (its time and length
    /// are those of the first hop traced for it: not measured).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub repeated: bool,
    /// Conntrack's entry for the packet: on the first hop that has one, where it changed
    /// (NAT done, confirmed), and at a drop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackView>,
    /// Drops traced with `--stack`: the kernel stack that freed the packet, innermost first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<Vec<String>>,
    /// Drops: the packet's fwmark (`skb->mark`) when set: policy routing and, with
    /// `src_valid_mark`, reverse path filtering look routes up with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mark: Option<u32>,
}

/// A drop's kernel stack, symbolised, from the function that freed the packet outwards: the
/// frames of the tracing machinery itself (the program, `bpf_trace_run*`, the tracepoint's
/// iterator) are left out.
fn stack_view(frames: &[u64], facts: &dyn HostFacts) -> Vec<String> {
    let named: Vec<(Option<Symbol>, u64)> =
        frames.iter().map(|&ip| (facts.symbol(ip), ip)).collect();
    let tracing = |s: &Option<Symbol>| {
        s.as_ref()
            .is_some_and(|s| TRACING_FRAMES.iter().any(|p| s.name.starts_with(p)))
    };
    // Only the leading run: a tc or XDP program deeper in the stack is part of the story.
    let skip = named.iter().position(|(s, _)| !tracing(s)).unwrap_or(0);
    named[skip..]
        .iter()
        .map(|(s, ip)| {
            s.as_ref()
                .map_or_else(|| format!("{ip:#x}"), ToString::to_string)
        })
        .collect()
}

/// Name prefixes of the frames between a tracepoint and the program it runs.
const TRACING_FRAMES: &[&str] = &["bpf_prog_", "bpf_trace_run", "__traceiter_", "__bpf_trace_"];

/// Conntrack's entry as one hop saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConntrackView {
    /// `NEW`, `ESTABLISHED`, `RELATED` or `UNTRACKED`, as `--ctstate` names them.
    pub state: &'static str,
    /// `original` or `reply`: which of the entry's directions the packet travels.
    pub direction: &'static str,
    /// Status bits set (`CONFIRMED`, `SEEN_REPLY`, `ASSURED`, `SNAT`, `DNAT` done, ...).
    pub status: CtStatus,
    pub zone: u16,
    pub mark: u32,
    /// The entry's tuples: as the first packet was sent, and as the answer is expected.
    /// Absent when untracked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original: Option<Tuple>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<Tuple>,
}

impl ConntrackView {
    fn new(ct: &CtView) -> Self {
        Self {
            state: ct.state.name(),
            direction: if ct.reply { "reply" } else { "original" },
            status: ct.status,
            zone: ct.zone,
            mark: ct.mark,
            original: ct.tuples.map(|t| t.0),
            reply: ct.tuples.map(|t| t.1),
        }
    }
}

/// A packet's destination as it entered a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct EnteredView {
    pub dst: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
}

/// An skb address, written as hex (`0xffff8881...`) without an allocation per hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SkbAddr(pub u64);

impl std::fmt::Display for SkbAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl Serialize for SkbAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetfilterView {
    pub family: &'static str,
    pub hook: &'static str,
    pub verdict: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerView {
    pub ifname: String,
    pub ifindex: u32,
    pub netns: u32,
    pub netns_name: String,
}

impl HopView {
    pub fn new(hop: &Hop, facts: &mut dyn HostFacts, reasons: &DropReasons) -> Self {
        let t = hop.tuple;
        let l4 = t.is_some_and(|t| t.proto.has_ports());
        let freed = hop.frees().then(|| {
            facts
                .symbol(hop.location)
                .map_or_else(|| format!("{:#x}", hop.location), |s| s.to_string())
        });
        let owner = facts.container_device(hop.netns, hop.ifindex);
        Self {
            container_interface: owner
                .as_ref()
                .filter(|d| d.host_side)
                .map(|d| format!("{}:{}", d.container.name, d.ifname)),
            container: owner.map(|d| d.container),
            ts_ns: hop.ts_ns,
            time: WallTime(hop.ts_ns),
            skb: SkbAddr(hop.skb),
            hop: kind_name(hop.kind),
            ifname: facts.ifname(hop.netns, hop.ifindex),
            ifindex: hop.ifindex,
            netns: hop.netns,
            netns_name: facts.netns_label(hop.netns),
            family: t.map(|t| if t.version() == 6 { "ipv6" } else { "ipv4" }),
            src: t.map(|t| t.src),
            sport: t.filter(|_| l4).map(|t| t.sport),
            dst: t.map(|t| t.dst),
            dport: t.filter(|_| l4).map(|t| t.dport),
            proto: t.map(|t| t.proto.name()),
            tcp_flags: hop.tcp_flags.name(),
            len: hop.len,
            drop_reason: (hop.kind == tracer_common::HopKind::Drop)
                .then(|| reasons.name(hop.drop_reason)),
            location: freed,
            netfilter: hop.netfilter.map(|nf| NetfilterView {
                family: nf.family.name(),
                hook: nf.hook.map_or("UNKNOWN", Hook::name),
                verdict: nf.verdict.name(),
            }),
            in_ifname: (hop.in_ifindex != 0).then(|| facts.ifname(hop.netns, hop.in_ifindex)),
            inferred: hop.inferred,
            followed: hop.followed,
            repeated: hop.repeated,
            entered: hop.entered.map(|e| EnteredView {
                dst: e.dst,
                dport: l4.then_some(e.dport),
            }),
            peer: (hop.peer_ifindex != 0).then(|| PeerView {
                ifname: facts.ifname(hop.peer_netns, hop.peer_ifindex),
                ifindex: hop.peer_ifindex,
                netns: hop.peer_netns,
                netns_name: facts.netns_label(hop.peer_netns),
            }),
            conntrack: hop.conntrack.as_ref().map(ConntrackView::new),
            mark: (hop.mark != 0).then_some(hop.mark),
            stack: hop
                .stack
                .and_then(|id| Some(stack_view(&facts.kernel_stack(id)?, facts))),
        }
    }
}

/// Everything said about one packet.
#[derive(Clone, Debug)]
pub struct Report {
    pub packet: Packet,
    pub hops: Vec<HopView>,
    pub flow: Option<FlowView>,
    pub verdict: Verdict,
    pub diagnosis: Option<Diagnosis>,
    pub target: Option<Target>,
    /// The same segment as an earlier packet of its flow, sent again: the how-manieth
    /// (set by `connection::Connections`).
    pub retransmission: Option<u32>,
}

impl Report {
    /// Names everything a decided, diagnosed packet mentions.
    pub fn new(judged: Judged, facts: &mut dyn HostFacts, reasons: &DropReasons) -> Self {
        let Judged {
            packet,
            flow,
            verdict,
            target,
            diagnosis,
        } = judged;
        let hops = packet
            .hops
            .iter()
            .map(|h| HopView::new(h, facts, reasons))
            .collect();
        Self {
            packet,
            hops,
            flow,
            verdict,
            diagnosis,
            target,
            retransmission: None,
        }
    }

    pub fn last_hop(&self) -> Option<&HopView> {
        self.verdict.last_hop.and_then(|i| self.hops.get(i))
    }

    /// The tuple the packet started with.
    pub fn first_tuple(&self) -> Option<Tuple> {
        self.packet.hops.iter().find_map(|h| h.tuple)
    }

    /// The verdict as the JSON object of docs/json.md.
    pub fn verdict_json(&self) -> VerdictJson<'_> {
        // A housekeeping free says its reason and place too; `outcome` tells it from a drop.
        let drop = (self.verdict.drop.as_ref()).or(self.verdict.freed.as_ref().map(|(d, _)| d));
        VerdictJson {
            kind: "verdict",
            time: WallTime(self.packet.first_ts()),
            skb: SkbAddr(self.packet.skb),
            outcome: self.verdict.outcome,
            delivery: self.verdict.delivery,
            drop_reason: drop.map(|d| d.reason.clone()),
            location: drop.map(|d| {
                d.location
                    .as_ref()
                    .map_or_else(|| format!("{:#x}", d.location_addr), |s| s.name.clone())
            }),
            location_detail: drop.and_then(|d| d.location.as_ref().map(ToString::to_string)),
            last_hop: self.last_hop(),
            tuple: self.first_tuple(),
            flow: self.flow.as_ref().map(|f| f.id),
            direction: self.flow.as_ref().map(|f| f.direction),
            nat: self.flow.as_ref().map_or(&[][..], |f| &f.rewrites[..]),
            hops: self.hops.len(),
            duration_ns: self.packet.hops.last().map_or(0, |h| h.ts_ns) - self.packet.first_ts(),
            diagnosis: self.diagnosis.as_ref(),
            target: self.target.as_ref(),
            retransmission: self.retransmission,
            icmp: self
                .packet
                .hops
                .iter()
                .find_map(|h| h.quoted)
                .map(|q| IcmpView {
                    error: q.error.name(),
                    icmp_type: q.error.kind,
                    code: q.error.code,
                    about: q.tuple,
                }),
        }
    }
}

/// An ICMP error: what it says and the header of the packet it is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IcmpView {
    /// `port unreachable`, `fragmentation needed`, ...
    pub error: String,
    #[serde(rename = "type")]
    pub icmp_type: u8,
    pub code: u8,
    /// The quoted header.
    pub about: Tuple,
}

#[cfg(test)]
impl Report {
    /// Judges and names a packet in one step, as a session does: for the output tests.
    pub(crate) fn build(
        packet: Packet,
        flow: Option<FlowView>,
        facts: &mut dyn HostFacts,
        reasons: &DropReasons,
        hooks: crate::probes::HookSet,
    ) -> Self {
        let judged = crate::diagnose::judge(packet, flow, facts, reasons, hooks);
        Self::new(judged, facts, reasons)
    }
}

/// `{"kind":"verdict", ...}`.
#[derive(Serialize)]
pub struct VerdictJson<'a> {
    pub kind: &'static str,
    /// When the packet was first seen, on the wall clock.
    pub time: WallTime,
    pub skb: SkbAddr,
    pub outcome: Outcome,
    pub delivery: Option<Delivery>,
    pub drop_reason: Option<String>,
    pub location: Option<String>,
    pub location_detail: Option<String>,
    pub last_hop: Option<&'a HopView>,
    pub tuple: Option<Tuple>,
    pub flow: Option<u64>,
    pub direction: Option<Direction>,
    pub nat: &'a [Rewrite],
    pub hops: usize,
    pub duration_ns: u64,
    pub diagnosis: Option<&'a Diagnosis>,
    /// The container the packet was meant for, when its destination port is published.
    pub target: Option<&'a Target>,
    /// A retransmitted segment: the how-manieth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmission: Option<u32>,
    /// An ICMP error: what it says about which packet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpView>,
}
