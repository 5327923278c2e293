//! Diagnosis: from a verdict to "where, why, evidence, fix" in an expert's words.
//!
//! Each fault family is a file with one or more [`Rule`]s; [`RULES`] is the one list to extend.
//! Rules only read: a verdict, the packet's hops and [`HostFacts`] (sysctls, interfaces). They
//! never change the host.
//!
//! With `--hooks drops` a packet is one hop, its drop. A rule runs there only when it says the
//! drop alone proves its case ([`Rule::from_drop_alone`]); the rest reason from hops before the
//! drop and stay silent rather than guess.

mod forwarding;
mod judge;
mod netfilter;
mod premises;
mod routing;
mod socket;

pub use judge::{Judged, Target, judge};
pub use premises::{CLIENT, PortCheck, Premises, examine};
pub use routing::{NO_ROUTE_BACK, Unanswered, no_route_back};

use crate::events::ipv4;
use serde::Serialize;
use tracer_common::HopKind;

use crate::ruleset::{CtState, PacketAtHook, RuleRef};
use crate::{
    correlate::{FlowView, Packet, flow::Direction},
    events::{Hop, Tuple},
    host::HostFacts,
    net::{Proto, TcpFlags},
    probes::HookSet,
    verdict::Verdict,
};

/// A named fault with the evidence for it and the command that fixes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    /// Stable identifier (`forwarding_disabled`, ...), documented in docs/diagnosis.md.
    pub code: &'static str,
    pub summary: String,
    pub evidence: Vec<String>,
    pub fix: Option<String>,
    /// How sure the rule is: `high` (read or observed directly), `medium` (inferred, e.g. the
    /// hook from surrounding hops), `low` (a guess worth checking).
    pub confidence: Confidence,
    /// The netfilter rule or chain policy named, when there is one.
    pub rule: Option<RuleRef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    Low,
    Medium,
    High,
}

/// What a rule looks at.
pub struct Case<'a> {
    pub packet: &'a Packet,
    pub verdict: &'a Verdict,
    pub flow: Option<&'a FlowView>,
    /// The container the packet was meant for (its destination port is published).
    pub target: Option<&'a Target>,
    /// What was traced: with [`HookSet::Drops`] the packet's only hop is its drop.
    pub hooks: HookSet,
}

impl Case<'_> {
    /// The hop that freed the packet as a drop.
    pub fn drop_hop(&self) -> Option<&Hop> {
        self.packet.hops.iter().find(|h| h.kind == HopKind::Drop)
    }

    /// The last receive before the drop (or the end): the interface the packet came in on.
    /// Without the path (`--hooks drops`) it is the drop itself, on the device the kernel
    /// last received the packet on there (`skb_iif`, which the drop records: `skb->dev` is
    /// another device at the bridge's FORWARD hook or after routing); `None` when the packet
    /// was generated in that namespace.
    pub fn input_hop(&self) -> Option<Hop> {
        if self.hooks == HookSet::Drops {
            let drop = *self.drop_hop()?;
            return (drop.in_ifindex != 0).then_some(Hop {
                ifindex: drop.in_ifindex,
                ..drop
            });
        }
        let end = self
            .packet
            .hops
            .iter()
            .position(|h| h.kind == HopKind::Drop)
            .unwrap_or(self.packet.hops.len());
        self.packet.hops[..end]
            .iter()
            .rev()
            .find(|h| h.kind == HopKind::Receive)
            .copied()
    }

    /// "The SYN", "The SYN-ACK", "The packet": how a person names this packet.
    pub fn packet_name(&self) -> String {
        match self.tcp_flags().handshake().name() {
            "SYN" => "The SYN".into(),
            "SYN|ACK" => "The SYN-ACK".into(),
            "ACK|RST" | "RST" => "The RST".into(),
            _ => "The packet".into(),
        }
    }

    /// The flags the packet was first seen with (none for other protocols).
    fn tcp_flags(&self) -> TcpFlags {
        self.packet
            .hops
            .first()
            .map_or(TcpFlags::NONE, |h| h.tcp_flags)
    }
}

/// One diagnosis rule: a code and the function that recognises it.
pub struct Rule {
    pub code: &'static str,
    /// The drop hop alone proves the case (`--hooks drops`): what the rule needs is in the
    /// drop event (its namespace, header, input interface, and the header the packet entered
    /// the namespace with, from conntrack). False for a rule that needs hops before the drop.
    pub from_drop_alone: bool,
    pub check: Check,
    /// The same fault judged from configuration alone, with no packet (`pathtrace doctor`);
    /// `None` for a rule that needs a packet to say anything.
    pub examine: Option<Examine>,
}

/// A rule's judgement of a traced packet.
pub type Check = fn(&Case<'_>, &mut dyn HostFacts) -> Option<Diagnosis>;

/// A rule's judgement of a namespace's configuration, no packet: every finding.
pub type Examine = fn(&Premises, &mut dyn HostFacts) -> Vec<Diagnosis>;

/// Every rule, most specific first; the first that recognises the case wins.
pub const RULES: &[Rule] = &[
    forwarding::RULE,
    netfilter::DNAT_SKIPPED,
    netfilter::NETFILTER_DROP,
    socket::NO_LISTENER,
    routing::RP_FILTER,
    routing::NO_ROUTE,
    routing::NEIGHBOR_FAILED,
];

/// Runs the rules that can judge what was traced over a finished packet.
pub fn diagnose(case: &Case<'_>, facts: &mut dyn HostFacts) -> Option<Diagnosis> {
    RULES
        .iter()
        .filter(|rule| case.hooks == HookSet::Path || rule.from_drop_alone)
        .find_map(|rule| (rule.check)(case, facts))
}

/// Whether sysctl `key` reads `value` in `netns`; unreadable is not (the resolver has said why).
pub fn sysctl_is(facts: &mut dyn HostFacts, netns: u32, key: &str, value: &str) -> bool {
    facts.sysctl(netns, key).ok().flatten().as_deref() == Some(value)
}

/// `cmd` as a person would run it in namespace `netns` from the tracer's shell.
pub fn in_netns(facts: &mut dyn HostFacts, netns: u32, cmd: &str) -> String {
    if facts.own_netns() == Some(netns) {
        return cmd.to_owned();
    }
    match facts.netns(netns) {
        Some(e) if e.label == "root" => cmd.to_owned(),
        Some(e) => match e.ip_netns_name {
            Some(name) => format!("ip netns exec {name} {cmd}"),
            None => format!("nsenter --net={} {cmd}", e.path.display()),
        },
        None => format!("{cmd}  # in network namespace {netns}"),
    }
}

impl Case<'_> {
    /// Conntrack state as the ruleset sees this packet where it died: the entry the drop
    /// carried, when conntrack had one for it there (so a RELATED ICMP error or an UNTRACKED
    /// packet is evaluated as such); else inferred: a bare SYN (or the first packet of a flow)
    /// is NEW, replies and later packets are ESTABLISHED.
    pub fn ct_state(&self) -> CtState {
        if let Some(ct) = self.drop_hop().and_then(|d| d.conntrack) {
            return ct.state;
        }
        let tcp = self
            .packet
            .hops
            .iter()
            .find_map(|h| h.tuple)
            .is_some_and(|t| t.proto == Proto::TCP);
        match self.flow {
            Some(f) if f.direction == Direction::Reply => CtState::Established,
            _ if tcp && self.tcp_flags().opens() => CtState::New,
            Some(f) if f.packets > 1 => CtState::Established,
            _ if tcp => CtState::Established,
            _ => CtState::New,
        }
    }

    /// The namespace the packet died in.
    pub fn drop_netns(&self) -> Option<u32> {
        let d = self.drop_hop()?;
        Some(if d.netns != 0 {
            d.netns
        } else {
            self.input_hop()?.netns
        })
    }

    /// The packet at a hook of namespace `netns`, with `tuple` as its header there; `None` for
    /// an IPv6 packet (rulesets are evaluated for IPv4 so far: issue 25).
    pub fn at_hook(
        &self,
        facts: &mut dyn HostFacts,
        netns: u32,
        tuple: Tuple,
        in_if: Option<String>,
        out_if: Option<String>,
    ) -> Option<PacketAtHook> {
        let (src, dst) = (ipv4(tuple.src)?, ipv4(tuple.dst)?);
        let local_addrs = [src, dst]
            .into_iter()
            .filter(|a| facts.is_local(netns, *a) == Some(true))
            .collect();
        Some(PacketAtHook {
            src,
            dst,
            proto: tuple.proto,
            sport: tuple.sport,
            dport: tuple.dport,
            tcp_flags: self.tcp_flags(),
            in_if,
            out_if,
            physdev_in: None,
            physdev_out: None,
            ct_state: self.ct_state(),
            local_addrs,
        })
    }
}

/// How a rule reads in evidence: `filter/DOCKER-USER rule 1: -A DOCKER-USER ... (4 packets)`.
pub fn describe_rule(r: &RuleRef) -> String {
    let packets = r
        .packets
        .map(|p| format!(" ({p} packets matched)"))
        .unwrap_or_default();
    let handle = r
        .handle
        .map(|h| format!(" (handle {h})"))
        .unwrap_or_default();
    match r.index {
        Some(i) => format!(
            "{}/{} rule {i}{handle}: {}{packets}",
            r.table, r.chain, r.text
        ),
        None => format!("{}/{} policy DROP{packets}", r.table, r.chain),
    }
}

#[cfg(test)]
mod tests {
    use super::RULES;

    /// docs/diagnosis.md is where a person learns which causes `--hooks drops` can still name:
    /// its table must list every rule, with the last column saying what `from_drop_alone` says.
    #[test]
    fn every_rule_is_documented_with_what_a_lone_drop_proves() {
        let doc = include_str!("../../../docs/diagnosis.md");
        for rule in RULES {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", rule.code)))
                .unwrap_or_else(|| panic!("docs/diagnosis.md has no row for {}", rule.code));
            let alone = row
                .trim_end_matches('|')
                .rsplit('|')
                .next()
                .unwrap_or_default()
                .trim();
            assert_eq!(
                alone.starts_with("yes"),
                rule.from_drop_alone,
                "{}: the doc says `{alone}`",
                rule.code
            );
        }
    }
}
