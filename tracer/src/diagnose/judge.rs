//! Judging a finished packet: its verdict, the container it was meant for, and the first
//! diagnosis rule that recognises its case. The report is built from what this returns.

use crate::events::ipv4;
use serde::Serialize;

use super::{Case, Diagnosis, diagnose};
use crate::{
    correlate::{FlowView, Packet},
    events::Hop,
    host::{ContainerRef, HostFacts, Published},
    probes::{DropReasons, HookSet},
    verdict::{Verdict, decide},
};

/// The container a packet was meant for: its destination port is published to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    pub container: ContainerRef,
    /// The container port the published port leads to.
    pub port: u16,
    pub address: Option<String>,
    pub published_port: u16,
}

impl Target {
    fn of(p: Published) -> Self {
        Self {
            port: p.container_port,
            address: p.container_addr.map(|a| a.to_string()),
            published_port: p.host_port,
            container: p.container,
        }
    }
}

/// A finished packet, decided and diagnosed.
#[derive(Clone, Debug)]
pub struct Judged {
    pub packet: Packet,
    pub flow: Option<FlowView>,
    pub verdict: Verdict,
    /// The container the packet was meant for, when its destination port is published.
    pub target: Option<Target>,
    pub diagnosis: Option<Diagnosis>,
}

/// Decides the verdict, finds the packet's target and runs the rules that can judge what was
/// traced: without the path (`hooks` drops) only those a drop alone can prove
/// ([`super::Rule::from_drop_alone`]).
pub fn judge(
    packet: Packet,
    flow: Option<FlowView>,
    facts: &mut dyn HostFacts,
    reasons: &DropReasons,
    hooks: HookSet,
) -> Judged {
    let verdict = decide(&packet, facts, reasons);
    // The port the packet was sent to: a lone drop past DNAT (`--hooks drops`) carries it
    // as conntrack's header from before the rewrite.
    let target = packet
        .hops
        .iter()
        .find_map(Hop::entered_tuple)
        .and_then(|t| facts.published(Some(ipv4(t.dst)?), t.dport, t.proto))
        .map(Target::of);
    let case = Case {
        packet: &packet,
        verdict: &verdict,
        flow: flow.as_ref(),
        target: target.as_ref(),
        hooks,
    };
    let diagnosis = diagnose(&case, facts);
    Judged {
        packet,
        flow,
        verdict,
        target,
        diagnosis,
    }
}
