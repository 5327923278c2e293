//! Diagnosis: from a verdict to "where, why, evidence, fix" in an expert's words.
//!
//! Each fault family is a file with one or more [`Rule`]s; [`RULES`] is the one list to extend.
//! Rules only read: a verdict, the packet's hops and [`HostFacts`] (sysctls, interfaces). They
//! never change the host.

mod forwarding;

use serde::Serialize;
use tracer_common::HopKind;

use crate::{
    correlate::{FlowView, Packet},
    events::{Hop, tcp_flags_string},
    report::Target,
    resolve::HostFacts,
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
}

/// What a rule looks at.
pub struct Case<'a> {
    pub packet: &'a Packet,
    pub verdict: &'a Verdict,
    pub flow: Option<&'a FlowView>,
    /// The container the packet was meant for (its destination port is published).
    pub target: Option<&'a Target>,
}

impl Case<'_> {
    /// The hop that freed the packet as a drop.
    pub fn drop_hop(&self) -> Option<&Hop> {
        self.packet.hops.iter().find(|h| h.kind == HopKind::Drop)
    }

    /// The last receive before the drop (or the end): the interface the packet came in on.
    pub fn input_hop(&self) -> Option<&Hop> {
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
    }

    /// "The SYN", "The SYN-ACK", "The packet": how a person names this packet.
    pub fn packet_name(&self) -> String {
        let flags = self.packet.hops.first().map_or(0, |h| h.tcp_flags);
        match tcp_flags_string(flags & 0x17).as_str() {
            "SYN" => "The SYN".into(),
            "SYN|ACK" => "The SYN-ACK".into(),
            "ACK|RST" | "RST" => "The RST".into(),
            _ => "The packet".into(),
        }
    }
}

/// One diagnosis rule: a code and the function that recognises it.
pub struct Rule {
    pub code: &'static str,
    pub check: fn(&Case<'_>, &mut dyn HostFacts) -> Option<Diagnosis>,
}

/// Every rule, most specific first; the first that recognises the case wins.
pub const RULES: &[Rule] = &[forwarding::RULE];

/// Runs the rules over a finished packet.
pub fn diagnose(case: &Case<'_>, facts: &mut dyn HostFacts) -> Option<Diagnosis> {
    RULES.iter().find_map(|rule| (rule.check)(case, facts))
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
