//! A nat PREROUTING rule that kept Docker's DNAT from running (field note 002): the packet
//! reached the host itself (a local socket, or a reset for want of one) although its port is
//! published to a container or DNATed by a rule.

use super::DNAT_SKIPPED;
use crate::events::ipv4;
use crate::{
    diagnose::{Case, Confidence, Diagnosis, describe_rule, in_netns},
    events::{Hop, Tuple},
    host::HostFacts,
    probes::HookSet,
    ruleset::{Hook, RuleRef, model::Source},
    verdict::Outcome,
};

pub(super) fn dnat_skipped(case: &Case<'_>, facts: &mut dyn HostFacts) -> Option<Diagnosis> {
    let (input, first) = ended_undnatted(case, facts)?;
    // Without the ruleset nothing shows a DNAT was due (an unreadable one is warned about).
    let rs = facts.ruleset(input.netns).ok().flatten()?;
    let dnats = rs.dnat_rules_for(first.proto, first.dport);
    tracing::debug!(
        dnats = dnats.len(),
        tables = rs.tables.len(),
        "dnat_skipped: ruleset read"
    );
    if dnats.is_empty() && case.target.is_none() {
        return None;
    }
    let in_if = facts.interface(input.netns, input.ifindex).map(|l| l.name);
    let pkt = case.at_hook(facts, input.netns, first, in_if, None)?;
    let pre = rs.evaluate(Hook::Prerouting, &pkt);
    tracing::debug!(?pre, "dnat_skipped: PREROUTING walk");
    if pre.dnat.is_some() {
        return None; // the ruleset would DNAT it: something else is going on
    }
    let skipped = Skipped {
        first,
        shadow: pre.by.clone().filter(|r| r.in_iptables_nat()),
        dnat: dnats.first().cloned(),
        path: pre.path,
    };
    let ns = facts.netns_label(input.netns);
    Some(Diagnosis {
        code: DNAT_SKIPPED.code,
        summary: skipped.summary(case),
        evidence: skipped.evidence(case, &ns),
        fix: Some(in_netns(facts, input.netns, &skipped.fix())),
        confidence: if skipped.shadow.is_some() {
            Confidence::High
        } else {
            Confidence::Medium
        },
        rule: skipped.shadow,
    })
}

/// The packet's input hop and header, when it ended in the namespace it entered, still
/// addressed to a local address and port it entered with: no DNAT ran on the way.
fn ended_undnatted(case: &Case<'_>, facts: &mut dyn HostFacts) -> Option<(Hop, Tuple)> {
    let input = case.input_hop()?;
    let first = input.tuple?;
    let ended_here = match &case.verdict.drop {
        Some(d) => d.reason == "NO_SOCKET" && case.drop_netns() == Some(input.netns),
        None => {
            case.verdict.outcome == Outcome::Delivered
                && case
                    .packet
                    .hops
                    .last()
                    .is_some_and(|h| h.netns == input.netns || h.netns == 0)
        }
    };
    if !ended_here || ipv4(first.dst).and_then(|a| facts.is_local(input.netns, a)) != Some(true) {
        tracing::debug!(ended_here, "dnat_skipped: not delivered locally");
        return None;
    }
    let kept = case
        .packet
        .hops
        .iter()
        .filter_map(|h| h.tuple)
        .all(|t| t.dst == first.dst && t.dport == first.dport);
    kept.then_some((input, first))
}

/// What kept the DNAT from running.
struct Skipped {
    /// The header the packet kept.
    first: Tuple,
    /// The nat PREROUTING rule that accepted it first, when one did.
    shadow: Option<RuleRef>,
    /// The DNAT that never ran.
    dnat: Option<RuleRef>,
    /// The chains PREROUTING walked.
    path: Vec<String>,
}

impl Skipped {
    fn evidence(&self, case: &Case<'_>, ns: &str) -> Vec<String> {
        let first = self.first;
        let mut evidence = vec![format!(
            "{} stayed addressed to {}:{} (local to netns {ns}) {}: no DNAT",
            case.packet_name(),
            first.dst,
            first.dport,
            match case.hooks {
                HookSet::Path => "on every hop",
                HookSet::Receive => "on every device it entered",
                HookSet::Drops => "until it was dropped",
            }
        )];
        match &case.verdict.drop {
            Some(d) => evidence.push(format!(
                "the host answered for itself: NO_SOCKET at {} (a RST), nothing on the host listens on {}",
                d.location.as_ref().map_or_else(|| "tcp_v4_rcv".into(), |s| s.name.clone()),
                first.dport
            )),
            None => evidence.push(format!("a socket on the host itself took it (port {})", first.dport)),
        }
        if let Some(d) = &self.dnat {
            evidence.push(format!("the DNAT that never ran: {}", describe_rule(d)));
        }
        if let Some(t) = case.target {
            evidence.push(format!(
                "Docker publishes port {} to container {} ({}:{})",
                t.published_port,
                t.container.name,
                t.address.as_deref().unwrap_or("?"),
                t.port
            ));
        }
        if let Some(s) = &self.shadow {
            evidence.push(format!(
                "nat PREROUTING accepted the packet first: {}",
                describe_rule(s)
            ));
            evidence.push(format!("chains walked: {}", self.path.join(" → ")));
        }
        evidence
    }

    fn summary(&self, case: &Case<'_>) -> String {
        match &self.shadow {
            Some(s) => format!(
                "{} to published port {} never reached its DNAT: {} `{}` accepted it in nat {} before the jump to {}, so it was delivered to the host itself{}.",
                case.packet_name(),
                self.first.dport,
                s.index.map_or("the policy".into(), |i| format!("rule {i}")),
                s.text,
                s.chain,
                self.dnat
                    .as_ref()
                    .map_or("the DNAT chain", |d| d.chain.as_str()),
                case.target
                    .map(|t| format!(" instead of container {}", t.container.name))
                    .unwrap_or_default()
            ),
            None => format!(
                "{} to published port {} was delivered to the host itself: its DNAT did not run.",
                case.packet_name(),
                self.first.dport
            ),
        }
    }

    /// In the tool whose nat table holds the shadowing rule (or the DNAT).
    fn fix(&self) -> String {
        let cmd = self
            .shadow
            .as_ref()
            .or(self.dnat.as_ref())
            .map_or("iptables", |r| Source::of_label(&r.table).0.command());
        match (&self.shadow, &self.dnat) {
            (Some(_), Some(d)) if d.chain == "DOCKER" => {
                format!("{cmd} -t nat -I PREROUTING 1 -m addrtype --dst-type LOCAL -j DOCKER")
            }
            (Some(s), _) => format!(
                "{cmd} -t nat -D {} {}   # or move it after the DNAT jump",
                s.chain,
                s.index.unwrap_or(1)
            ),
            _ => format!("{cmd}-save -t nat   # find what keeps the DNAT from running"),
        }
    }
}
