//! Netfilter: which rule or policy dropped the packet (field notes 001 and 004), and a nat
//! PREROUTING rule that kept Docker's DNAT from running (field note 002).
//!
//! The hook comes from the `nf_hook_slow` hop where the backend has one; on tracepoints it is
//! inferred by walking the packet through the hooks in kernel order and seeing where the
//! ruleset drops it. The rule comes from evaluating the namespace's ruleset against the packet
//! as it was at that hook, cross-checked with the rule's counter. Nothing is inserted into the
//! ruleset.

mod examine;

use std::sync::Arc;

use super::{Case, Confidence, Diagnosis, Rule, describe_rule, in_netns};
use crate::{
    events::{Hop, Tuple},
    host::HostFacts,
    net::NfVerdict,
    probes::HookSet,
    ruleset::{
        Hook, HookOutcome, RuleVerdict,
        model::{Flavor, Source},
    },
};

pub const NETFILTER_DROP: Rule = Rule {
    code: "netfilter_drop",
    // The hook is inferred by walking the ruleset in kernel order from the header the packet
    // entered the namespace with and its input interface. Without the path, the drop carries
    // both: conntrack's tuple (the header before any NAT) and skb_iif.
    from_drop_alone: true,
    check: netfilter_drop,
    examine: Some(examine::netfilter_drop),
};
pub const DNAT_SKIPPED: Rule = Rule {
    code: "dnat_skipped",
    // A NO_SOCKET drop in the namespace that received it, still addressed to a local address
    // and a published port, is by itself proof that no DNAT ran.
    from_drop_alone: true,
    check: dnat_skipped,
    examine: Some(examine::dnat_skipped),
};

/// Where the packet was when netfilter judged it.
struct Walked {
    outcome: HookOutcome,
    /// (in, out) interfaces at that hook.
    in_if: Option<String>,
    out_if: Option<String>,
    /// The hook was observed (nf_hook_slow hop), not inferred.
    observed: bool,
    /// Same-bridge traffic seen by iptables through br_netfilter.
    bridged: Option<String>,
    /// Decided by the nft `bridge` family (ebtables' successor), not by the IP hooks.
    bridge_family: bool,
}

impl Walked {
    fn place(&self) -> Where<'_> {
        Where {
            in_if: self.in_if.as_deref(),
            out_if: self.out_if.as_deref(),
            path: &self.outcome.path,
        }
    }
}

fn netfilter_drop(case: &Case<'_>, facts: &mut dyn HostFacts) -> Option<Diagnosis> {
    let drop = case.verdict.drop.as_ref()?;
    if drop.reason != "NETFILTER_DROP" {
        return None;
    }
    let netns = case.drop_netns()?;
    let ns = facts.netns_label(netns);
    let nf_hop = case
        .packet
        .hops
        .iter()
        .rev()
        .find_map(|h| h.netfilter.filter(|nf| nf.verdict == NfVerdict::Drop));
    let observed_hook = nf_hop.and_then(|nf| nf.hook);
    let family = nf_hop.map(|nf| nf.family.name());
    let ruleset = facts.ruleset(netns);
    let walked = ruleset
        .as_ref()
        .and_then(|rs| walk(case, facts, rs, netns, observed_hook));

    let location = drop
        .location
        .as_ref()
        .map_or_else(|| "nf_hook_slow".to_owned(), ToString::to_string);
    let mut evidence = vec![format!(
        "kfree_skb: reason NETFILTER_DROP at {location} in netns {ns}"
    )];
    if let (Some(h), Some(f)) = (observed_hook, family) {
        evidence.push(format!("nf_hook_slow: {f} {} returned drop", h.name()));
    }
    if case.hooks == HookSet::Drops
        && let Some((entered, now)) = case.drop_hop().and_then(|h| h.entered.zip(h.tuple))
        && (entered.dst, entered.dport) != (now.dst, now.dport)
    {
        evidence.push(format!(
            "conntrack: it entered netns {ns} addressed to {}:{} and was rewritten to {}:{} before it was dropped",
            entered.dst, entered.dport, now.dst, now.dport
        ));
    }
    let Some(w) = walked.filter(|w| w.outcome.verdict != RuleVerdict::Accept) else {
        // The kernel dropped in netfilter but the iptables rules do not explain it.
        let hook = observed_hook.map_or("a netfilter hook".to_owned(), |h| h.name().to_owned());
        if ruleset.is_none() {
            evidence.push(format!("no iptables or nft rules could be read in netns {ns} (iptables-save, nft -j list ruleset)"));
        } else {
            evidence.push("evaluating the iptables and nft tables against the packet does not drop it: look for rules with matches pathtrace cannot evaluate (nft list ruleset)".into());
        }
        return Some(Diagnosis {
            code: NETFILTER_DROP.code,
            summary: format!(
                "{} was dropped by netfilter at {hook} in netns {ns}, by a rule pathtrace could not pin down.",
                case.packet_name()
            ),
            evidence,
            fix: Some(in_netns(facts, netns, "nft list ruleset")),
            confidence: Confidence::Low,
            rule: None,
        });
    };
    let by = w.outcome.by.clone()?;
    let hook = w.outcome.hook.name();
    // Counters read around the drop: the first reading in this namespace (before the drop,
    // when pathtrace read it early enough) against this one.
    let delta = facts
        .ruleset_baseline(netns)
        .filter(|(base, _)| ruleset.as_ref().is_none_or(|now| !Arc::ptr_eq(base, now)))
        .and_then(|(base, ago)| {
            let before = base.packets_of(&by)?;
            Some((by.packets?.saturating_sub(before), ago))
        });
    let counted = match delta {
        Some((moved, _)) => moved > 0,
        None => by.packets.is_some_and(|p| p > 0),
    };
    let confidence = match (
        w.outcome.unknown_matches.is_empty(),
        counted || by.packets.is_none(),
        w.observed,
    ) {
        (true, true, true) => Confidence::High,
        (true, true, false) => Confidence::High,
        (true, false, _) | (false, true, _) => Confidence::Medium,
        (false, false, _) => Confidence::Low,
    };
    evidence.push(format!(
        "evaluating the ruleset against the packet at {hook} (in {}, out {}): {} → {}",
        w.in_if.as_deref().unwrap_or("-"),
        w.out_if.as_deref().unwrap_or("-"),
        w.outcome.path.join(" → "),
        describe_rule(&by)
    ));
    if !w.observed {
        evidence.push(match case.hooks {
            HookSet::Path | HookSet::Receive => format!("hook inferred from the hops and the ruleset walk (tracepoint backend); {hook} is the first hook whose rules drop this packet"),
            HookSet::Drops => format!("hook inferred from the ruleset walk alone (--hooks drops traces no path: the header it entered with is conntrack's, the input interface the kernel's skb_iif); {hook} is the first hook whose rules drop this packet"),
        });
    }
    match delta {
        Some((0, ago)) => evidence.push(format!(
            "its counter did not move since pathtrace first read the ruleset {:.1} s earlier: another rule or table may be dropping",
            ago.as_secs_f64()
        )),
        Some((moved, ago)) => evidence.push(format!(
            "its counter rose by {moved} since pathtrace first read the ruleset {:.1} s earlier",
            ago.as_secs_f64()
        )),
        None if by.packets == Some(0) => evidence.push("its counter is 0: the kernel counted no packet for this rule, so another rule or table may be dropping".into()),
        None => {}
    }
    if let Some(rs) = &ruleset {
        let has = |b: Flavor| rs.tables.iter().any(|t| t.source == Source::Iptables(b));
        let by_source = Source::of_label(&by.table).0;
        if has(Flavor::Nft) && has(Flavor::Legacy) && matches!(by_source, Source::Iptables(_)) {
            let other = match by_source {
                Source::Iptables(Flavor::Legacy) => "iptables-nft",
                _ => "iptables-legacy",
            };
            evidence.push(format!(
                "netns {ns} has iptables rules in both nf_tables (iptables-nft) and x_tables (iptables-legacy); the kernel runs both, but each `iptables` lists only its own: this rule does not show in `{other} -S`"
            ));
        }
    }
    for u in &w.outcome.unknown_matches {
        evidence.push(format!(
            "pathtrace cannot evaluate a match of {u}; assumed not to match"
        ));
    }
    let target = case
        .target
        .map(|t| format!(" for container {}", t.container.name))
        .unwrap_or_default();
    let tuple = case
        .drop_hop()
        .and_then(|h| h.tuple)
        .or(case.input_hop().and_then(|h| h.tuple));
    let what = tuple.map(|t| format!(" ({t})")).unwrap_or_default();
    let (code, summary, fix) = match &w.bridged {
        Some(bridge) if w.bridge_family => (
            "bridge_netfilter_drop",
            format!(
                "{}{target}{what} was bridged on {bridge}, and {} dropped it: {}.",
                case.packet_name(),
                match ebtables_table(&by) {
                    Some((cmd, table)) => format!("{cmd} (table {table})"),
                    None => format!(
                        "the bridge-family nft table {} (where ebtables rules live today)",
                        by.table
                    ),
                },
                rule_words(&by)
            ),
            fix_for(&by, tuple, &w.place()),
        ),
        Some(bridge) => (
            "bridge_netfilter_drop",
            format!(
                "{}{target}{what} was bridged on {bridge}, and because br_netfilter hands bridged IPv4 to iptables (net.bridge.bridge-nf-call-iptables = 1) the {} chain {} dropped it.",
                case.packet_name(),
                by.chain,
                rule_words(&by)
            ),
            fix_for(&by, tuple, &w.place()),
        ),
        None => (
            NETFILTER_DROP.code,
            format!(
                "{}{target}{what} was dropped by netfilter at {hook} in netns {ns}: {} {}.",
                case.packet_name(),
                by.table,
                rule_words(&by)
            ),
            fix_for(&by, tuple, &w.place()),
        ),
    };
    match (&w.bridged, &w.in_if) {
        (Some(bridge), Some(port)) if w.bridge_family => evidence.push(format!(
            "the frame came in on port {port} of bridge {bridge} and stays on it{}: the bridge family's FORWARD chains see it, with bridge ports as iifname/oifname",
            w.out_if.as_ref().map(|o| format!(" (headed out of port {o}, the device at the drop)")).unwrap_or_default()
        )),
        (Some(bridge), _) => evidence.push(format!(
            "the packet came in on a port of bridge {bridge} and stays on it: bridge-nf-call-iptables = 1 in netns {ns}"
        )),
        _ => {}
    }
    Some(Diagnosis {
        code,
        summary,
        evidence,
        fix: Some(in_netns(facts, netns, &fix)),
        confidence,
        rule: Some(by),
    })
}

fn rule_words(by: &crate::ruleset::RuleRef) -> String {
    match (by.index, by.handle) {
        (Some(i), Some(h)) => format!("chain {} rule {i}, handle {h} (`{}`)", by.chain, by.text),
        (Some(i), None) => format!("chain {} rule {i} (`{}`)", by.chain, by.text),
        (None, _) => format!("chain {} policy DROP (no rule accepted it)", by.chain),
    }
}

/// Where a flow met the rule a fix is for: its interfaces there and the chains it walked.
struct Where<'a> {
    pub in_if: Option<&'a str>,
    pub out_if: Option<&'a str>,
    pub path: &'a [String],
}

/// firewalld owns its nft table: a rule deleted by hand comes back on reload, so the fix is
/// to give the Docker-side interface a zone (Docker >= 20.10 adds a `docker` zone itself).
fn firewalld_fix(at: &Where<'_>) -> String {
    let container_side = [at.out_if, at.in_if]
        .into_iter()
        .flatten()
        .find(|i| i.starts_with("docker") || i.starts_with("br-") || i.starts_with("veth"))
        .or(at.out_if)
        .unwrap_or("docker0");
    format!(
        "firewall-cmd --permanent --zone=trusted --change-interface={container_side} && firewall-cmd --reload   # firewalld forwards only between interfaces that are in zones; Docker >= 20.10 puts its bridges in a `docker` zone itself"
    )
}

/// A native nft rule or policy: delete or narrow the rule by handle, or accept ahead of the
/// policy.
fn nft_fix(by: &crate::ruleset::RuleRef, tuple: Option<Tuple>, at: &Where<'_>) -> String {
    if by.table.ends_with(" firewalld") {
        return firewalld_fix(at);
    }
    match by.handle {
        Some(h) => format!(
            "nft delete rule {} {} handle {h}   # remove or narrow: {}",
            by.table, by.chain, by.text
        ),
        None => format!(
            "nft insert rule {} {}{} accept",
            by.table,
            by.chain,
            flow_match(at, tuple, Syntax::Nft)
        ),
    }
}

/// (command, table) for a rule read from ebtables (`ebtables filter`, `ebtables-legacy nat`).
fn ebtables_table(by: &crate::ruleset::RuleRef) -> Option<(&'static str, &str)> {
    match Source::of_label(&by.table) {
        (source @ Source::Ebtables(_), table) => Some((source.command(), table)),
        _ => None,
    }
}

/// An ebtables rule: delete it by number, or accept the flow ahead of a DROP policy.
fn ebtables_fix(
    cmd: &str,
    table: &str,
    by: &crate::ruleset::RuleRef,
    tuple: Option<Tuple>,
    at: &Where<'_>,
) -> String {
    if let Some(i) = by.index {
        return format!(
            "{cmd} -t {table} -D {} {i}   # remove or narrow: {}",
            by.chain, by.text
        );
    }
    format!(
        "{cmd} -t {table} -I {} 1{} -j ACCEPT",
        by.chain,
        flow_match(at, tuple, Syntax::Ebtables)
    )
}

fn fix_for(by: &crate::ruleset::RuleRef, tuple: Option<Tuple>, at: &Where<'_>) -> String {
    let (source, table) = Source::of_label(&by.table);
    let cmd = source.command();
    match source {
        Source::Ebtables(_) => return ebtables_fix(cmd, table, by, tuple, at),
        Source::Nft => return nft_fix(by, tuple, at),
        Source::Iptables(_) => {}
    }
    match by.index {
        Some(i) => format!(
            "{cmd} -t {table} -D {} {i}   # remove or narrow: {}",
            by.chain, by.text
        ),
        None => format!(
            "{cmd} -t {table} -I {}{} -j ACCEPT",
            // Docker's hook for user rules, where this table has it.
            if by.chain == "FORWARD"
                && at
                    .path
                    .iter()
                    .any(|p| p == &format!("{}/DOCKER-USER", by.table))
            {
                "DOCKER-USER"
            } else {
                &by.chain
            },
            flow_match(at, tuple, Syntax::Iptables)
        ),
    }
}

/// Whose rule syntax a fix is written in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Iptables,
    Nft,
    Ebtables,
}

/// The interfaces and destination of the dropped flow as rule matches: what an accept ahead of
/// a drop policy needs. ebtables sees frames, so it also names IPv4 and the destination address.
fn flow_match(at: &Where<'_>, tuple: Option<Tuple>, syntax: Syntax) -> String {
    let mut m = String::new();
    let (iif, oif) = match syntax {
        Syntax::Nft => ("iifname", "oifname"),
        Syntax::Iptables | Syntax::Ebtables => ("-i", "-o"),
    };
    let name = |s: &str| match syntax {
        Syntax::Nft => format!("\"{s}\""),
        Syntax::Iptables | Syntax::Ebtables => s.to_owned(),
    };
    if syntax == Syntax::Ebtables {
        m.push_str(" -p IPv4");
    }
    if let Some(i) = at.in_if {
        m.push_str(&format!(" {iif} {}", name(i)));
    }
    if let Some(o) = at.out_if {
        m.push_str(&format!(" {oif} {}", name(o)));
    }
    if let (Syntax::Ebtables, Some(t)) = (syntax, tuple) {
        m.push_str(&format!(" --ip-dst {}", t.dst));
    }
    if let Some(t) = tuple.filter(|t| t.proto.has_ports()) {
        let p = t.proto.name();
        m.push_str(&match syntax {
            Syntax::Nft => format!(" {p} dport {}", t.dport),
            Syntax::Iptables => format!(" -p {p} --dport {}", t.dport),
            Syntax::Ebtables => format!(" --ip-proto {p} --ip-dport {}", t.dport),
        });
    }
    m
}

/// Walks the packet through the hooks of `netns` until a hook drops it.
fn walk(
    case: &Case<'_>,
    facts: &mut dyn HostFacts,
    rs: &crate::ruleset::Ruleset,
    netns: u32,
    observed: Option<Hook>,
) -> Option<Walked> {
    let input = case.input_hop().filter(|h| h.netns == netns);
    // The header as it entered the namespace: at its first hop there, or, when the drop is
    // the only one (`--hooks drops`), as conntrack recorded it before any NAT.
    let first = case
        .packet
        .hops
        .iter()
        .filter(|h| h.netns == netns)
        .find_map(Hop::entered_tuple)?;
    let at_drop = case.drop_hop().and_then(|h| h.tuple).unwrap_or(first);
    // Input side: a bridge port hands the packet to iptables as the bridge itself.
    let (in_if, physdev_in, bridge, bridge_index) = match input {
        Some(h) => {
            let link = facts.interface(h.netns, h.ifindex);
            let master_index = link.as_ref().and_then(|l| l.master);
            let master = master_index.and_then(|m| facts.interface(h.netns, m));
            match (link, master) {
                (Some(l), Some(m)) if m.kind == "bridge" => (
                    Some(m.name.clone()),
                    Some(l.name),
                    Some(m.name),
                    master_index,
                ),
                (Some(l), _) => (Some(l.name), None, None, None),
                _ => (None, None, None, None),
            }
        }
        None => (None, None, None, None),
    };
    // The bridge sets skb->dev to the egress port before its FORWARD hook (__br_forward), so a
    // drop there names the port the frame was headed for: what `oifname`/`--physdev-out`
    // match. Any other device at the drop says nothing about a port.
    let out_port = case
        .drop_hop()
        .filter(|h| h.netns == netns && input.is_some_and(|i| i.ifindex != h.ifindex))
        .filter(|_| bridge_index.is_some())
        .and_then(|h| facts.interface(netns, h.ifindex))
        .filter(|l| l.master == bridge_index)
        .map(|l| l.name);
    let bridged_on = |facts: &mut dyn HostFacts, out: &Option<String>| -> Option<String> {
        let b = bridge.clone()?;
        (out.as_deref() == Some(b.as_str())
            && facts
                .sysctl(netns, "net.bridge.bridge-nf-call-iptables")
                .as_deref()
                == Some("1"))
        .then_some(b)
    };
    let at = |facts: &mut dyn HostFacts, hook: Hook, t: Tuple, out_if: Option<String>| {
        let mut p = case.at_hook(facts, netns, t, in_if.clone(), out_if.clone());
        if hook != Hook::Output {
            p.physdev_in = physdev_in.clone();
        } else {
            p.in_if = None;
        }
        if physdev_in.is_some() && out_if.is_some() && out_if == bridge {
            p.physdev_out = out_port.clone();
        }
        (rs.evaluate(hook, &p), out_if)
    };
    let route =
        |facts: &mut dyn HostFacts, t: Tuple| facts.connected_route(netns, t.dst).map(|l| l.name);

    let result = |outcome: HookOutcome,
                  out_if: Option<String>,
                  bridged: Option<String>,
                  observed: bool| Walked {
        outcome,
        in_if: in_if.clone(),
        out_if,
        observed,
        bridged,
        bridge_family: false,
    };

    // A frame bridged between two ports of one bridge meets the bridge family's chains first
    // (ebtables' successor, at priority -200), with the ports as its interfaces.
    if let (Some(b), Some(port)) = (&bridge, &physdev_in)
        && observed.is_none_or(|h| h == Hook::Forward)
        && route(facts, at_drop).as_deref() == Some(b.as_str())
    {
        let mut p = case.at_hook(facts, netns, at_drop, Some(port.clone()), out_port.clone());
        p.physdev_in = Some(port.clone());
        p.physdev_out = out_port.clone();
        let outcome = rs.evaluate_bridge(Hook::Forward, &p);
        if outcome.verdict != RuleVerdict::Accept {
            return Some(Walked {
                outcome,
                in_if: Some(port.clone()),
                out_if: out_port.clone(),
                observed: observed.is_some(),
                bridged: Some(b.clone()),
                bridge_family: true,
            });
        }
    }

    if let Some(hook) = observed {
        // The backend saw the hook: evaluate just that one, with the header at the drop.
        let t = if hook == Hook::Prerouting || hook == Hook::Output {
            first
        } else {
            at_drop
        };
        let out_if = if matches!(hook, Hook::Forward | Hook::Postrouting | Hook::Output) {
            route(facts, t)
        } else {
            None
        };
        let (o, out_if) = at(facts, hook, t, out_if);
        let bridged = if hook == Hook::Forward {
            bridged_on(facts, &out_if)
        } else {
            None
        };
        return Some(result(o, out_if, bridged, true));
    }
    if input.is_none() {
        // Locally generated: OUTPUT, then POSTROUTING.
        let out_if = route(facts, first);
        let (o, out_if) = at(facts, Hook::Output, first, out_if);
        if o.verdict != RuleVerdict::Accept {
            return Some(result(o, out_if, None, false));
        }
        let (o, out_if) = at(facts, Hook::Postrouting, at_drop, out_if);
        return Some(result(o, out_if, None, false));
    }
    let (pre, _) = at(facts, Hook::Prerouting, first, None);
    if pre.verdict != RuleVerdict::Accept {
        return Some(result(pre, None, None, false));
    }
    let mut t = first;
    if let Some((addr, port)) = pre.dnat {
        t.dst = addr;
        if let Some(p) = port {
            t.dport = p;
        }
    } else if at_drop != first {
        t = at_drop; // a rewrite the ruleset walk did not model, seen by the kernel
    }
    let local = facts.is_local(netns, t.dst) == Some(true);
    if local {
        let (o, out_if) = at(facts, Hook::Input, t, None);
        return Some(result(o, out_if, None, false));
    }
    let out_if = route(facts, t);
    let (fwd, out_if) = at(facts, Hook::Forward, t, out_if);
    if fwd.verdict != RuleVerdict::Accept {
        let bridged = bridged_on(facts, &out_if);
        return Some(result(fwd, out_if, bridged, false));
    }
    let (post, out_if) = at(facts, Hook::Postrouting, t, out_if);
    Some(result(post, out_if, None, false))
}

/// The packet reached the host itself (a local socket, or a reset for want of one) although
/// its port is published to a container or DNATed by a rule: something in nat PREROUTING ran
/// first.
fn dnat_skipped(case: &Case<'_>, facts: &mut dyn HostFacts) -> Option<Diagnosis> {
    let input = case.input_hop()?;
    let first = input.tuple?;
    let ended_here = match &case.verdict.drop {
        Some(d) => d.reason == "NO_SOCKET" && case.drop_netns() == Some(input.netns),
        None => {
            case.verdict.outcome == crate::verdict::Outcome::Delivered
                && case
                    .packet
                    .hops
                    .last()
                    .is_some_and(|h| h.netns == input.netns || h.netns == 0)
        }
    };
    if !ended_here || facts.is_local(input.netns, first.dst) != Some(true) {
        tracing::debug!(ended_here, "dnat_skipped: not delivered locally");
        return None;
    }
    // The packet kept its destination: no DNAT happened on the way.
    if case
        .packet
        .hops
        .iter()
        .filter_map(|h| h.tuple)
        .any(|t| t.dst != first.dst || t.dport != first.dport)
    {
        return None;
    }
    let rs = facts.ruleset(input.netns)?;
    let dnats = rs.dnat_rules_for(first.proto, first.dport);
    tracing::debug!(
        dnats = dnats.len(),
        tables = rs.tables.len(),
        "dnat_skipped: ruleset read"
    );
    if dnats.is_empty() && case.target.is_none() {
        return None;
    }
    let ns = facts.netns_label(input.netns);
    let in_if = facts.interface(input.netns, input.ifindex).map(|l| l.name);
    let pkt = case.at_hook(facts, input.netns, first, in_if.clone(), None);
    let pre = rs.evaluate(Hook::Prerouting, &pkt);
    tracing::debug!(?pre, "dnat_skipped: PREROUTING walk");
    if pre.dnat.is_some() {
        return None; // the ruleset would DNAT it: something else is going on
    }
    let shadow = pre.by.clone().filter(|r| r.in_iptables_nat());
    let dnat = dnats.first().cloned();
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
    if let Some(d) = &dnat {
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
    if let Some(s) = &shadow {
        evidence.push(format!(
            "nat PREROUTING accepted the packet first: {}",
            describe_rule(s)
        ));
        evidence.push(format!("chains walked: {}", pre.path.join(" → ")));
    }
    let summary = match &shadow {
        Some(s) => format!(
            "{} to published port {} never reached its DNAT: {} `{}` accepted it in nat {} before the jump to {}, so it was delivered to the host itself{}.",
            case.packet_name(),
            first.dport,
            s.index.map_or("the policy".into(), |i| format!("rule {i}")),
            s.text,
            s.chain,
            dnat.as_ref().map_or("the DNAT chain", |d| d.chain.as_str()),
            case.target
                .map(|t| format!(" instead of container {}", t.container.name))
                .unwrap_or_default()
        ),
        None => format!(
            "{} to published port {} was delivered to the host itself: its DNAT did not run.",
            case.packet_name(),
            first.dport
        ),
    };
    // The backend whose nat table holds the shadowing rule (or the DNAT).
    let cmd = shadow
        .as_ref()
        .or(dnat.as_ref())
        .map_or("iptables", |r| Source::of_label(&r.table).0.command());
    let fix = match (&shadow, &dnat) {
        (Some(_), Some(d)) if d.chain == "DOCKER" => {
            format!("{cmd} -t nat -I PREROUTING 1 -m addrtype --dst-type LOCAL -j DOCKER")
        }
        (Some(s), _) => format!(
            "{cmd} -t nat -D {} {}   # or move it after the DNAT jump",
            s.chain,
            s.index.unwrap_or(1)
        ),
        _ => format!("{cmd}-save -t nat   # find what keeps the DNAT from running"),
    };
    Some(Diagnosis {
        code: DNAT_SKIPPED.code,
        summary,
        evidence,
        fix: Some(in_netns(facts, input.netns, &fix)),
        confidence: if shadow.is_some() {
            Confidence::High
        } else {
            Confidence::Medium
        },
        rule: shadow,
    })
}

#[cfg(test)]
mod tests {
    use crate::net::Proto;
    use std::sync::Arc;

    use tracer_common::HopKind;

    use crate::{
        correlate::{FlowTable, Packet},
        diagnose::{Judged, judge},
        events::fixture::*,
        host::fixture::FakeHost,
        probes::{DropReasons, HookSet},
        ruleset::Ruleset,
    };

    #[test]
    fn the_accept_for_a_dropped_flow_is_written_in_each_tools_syntax() {
        use super::{Syntax, Where, flow_match};
        let at = Where {
            in_if: Some("veth1"),
            out_if: Some("veth2"),
            path: &[],
        };
        let tuple = Some(crate::events::Tuple {
            src: "172.17.0.3".parse().expect("addr"),
            sport: 40000,
            dst: "172.17.0.2".parse().expect("addr"),
            dport: 80,
            proto: Proto::Tcp,
        });
        assert_eq!(
            flow_match(&at, tuple, Syntax::Iptables),
            " -i veth1 -o veth2 -p tcp --dport 80"
        );
        assert_eq!(
            flow_match(&at, tuple, Syntax::Nft),
            " iifname \"veth1\" oifname \"veth2\" tcp dport 80"
        );
        assert_eq!(
            flow_match(&at, tuple, Syntax::Ebtables),
            " -p IPv4 -i veth1 -o veth2 --ip-dst 172.17.0.2 --ip-proto tcp --ip-dport 80"
        );
        // ICMP: no port to name.
        let icmp = tuple.map(|t| crate::events::Tuple {
            proto: Proto::Icmp,
            ..t
        });
        assert_eq!(
            flow_match(&at, icmp, Syntax::Ebtables),
            " -p IPv4 -i veth1 -o veth2 --ip-dst 172.17.0.2"
        );
    }

    const DOCKER: &str = include_str!("../../../test_data/iptables_docker.txt");

    fn reasons() -> DropReasons {
        DropReasons::from_pairs([
            ("SKB_DROP_REASON_NO_SOCKET".to_owned(), 3),
            ("SKB_DROP_REASON_NETFILTER_DROP".to_owned(), 12),
        ])
    }

    fn report(host: &mut FakeHost, hops: Vec<crate::events::Hop>) -> Judged {
        report_of(host, hops, HookSet::Path)
    }

    fn report_of(host: &mut FakeHost, hops: Vec<crate::events::Hop>, set: HookSet) -> Judged {
        let packet = Packet {
            skb: SKB,
            hops,
            freed: true,
        };
        let flow = FlowTable::new(4).observe(&packet);
        judge(packet, flow, host, &reasons(), set)
    }

    /// Docker's rules with an ACCEPT for the published port ahead of the jump to DOCKER.
    fn shadowed_docker() -> Ruleset {
        let text = DOCKER.replace(
            "[5:300] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
            "[2:120] -A PREROUTING ! -i p1p1 -p tcp -m multiport --dports 80,443,7788,10001 -j ACCEPT\n[5:300] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        );
        Ruleset::parse(&text).unwrap()
    }

    fn dropped_at(
        kind_reason: u32,
        dnat: bool,
        netns: u32,
        ifindex: u32,
    ) -> Vec<crate::events::Hop> {
        let mut d = ev(HopKind::Drop, 3_000, netns, ifindex);
        if dnat {
            d = crate::events::fixture::dnat(d);
        }
        d.drop_reason = kind_reason;
        vec![
            hop(ev(HopKind::Transmit, 1_000, OUT_NS, 2)),
            hop(ev(HopKind::Receive, 2_000, HOST_NS, 2)),
            hop(d),
        ]
    }

    #[test]
    fn prerouting_accept_ahead_of_docker_is_dnat_skipped() {
        let mut host = FakeHost::lab_with_docker();
        host.rulesets.insert(HOST_NS, Arc::new(shadowed_docker()));
        let r = report(&mut host, dropped_at(3, false, HOST_NS, 2));
        let d = r.diagnosis.expect("diagnosed");
        assert_eq!(d.code, "dnat_skipped", "{d:#?}");
        let rule = d.rule.expect("the shadowing rule");
        assert_eq!((rule.chain.as_str(), rule.index), ("PREROUTING", Some(1)));
        assert_eq!(
            d.fix.as_deref(),
            Some(
                "ip netns exec lab-host iptables -t nat -I PREROUTING 1 -m addrtype --dst-type LOCAL -j DOCKER"
            )
        );
        assert!(
            d.evidence
                .iter()
                .any(|e| e.starts_with("the DNAT that never ran: nat/DOCKER rule 2")),
            "{:#?}",
            d.evidence
        );
        assert!(
            d.summary.contains("instead of container web-1"),
            "{}",
            d.summary
        );
    }

    #[test]
    fn a_lone_reset_on_a_published_port_is_enough_for_dnat_skipped() {
        // --hooks drops: only the NO_SOCKET drop, still addressed to the host's own address
        // and the published port, in the namespace that received it.
        let mut host = FakeHost::lab_with_docker();
        host.rulesets.insert(HOST_NS, Arc::new(shadowed_docker()));
        let mut hops = dropped_at(3, false, HOST_NS, 2);
        hops.retain(|h| h.kind == HopKind::Drop);
        let r = report_of(&mut host, hops, HookSet::Drops);
        let d = r.diagnosis.expect("diagnosed from the drop alone");
        assert_eq!(d.code, "dnat_skipped", "{d:#?}");
        assert_eq!(
            d.rule.map(|r| (r.chain, r.index)),
            Some(("PREROUTING".to_owned(), Some(1)))
        );
        assert_eq!(
            d.evidence[0],
            "The SYN stayed addressed to 203.0.113.1:10001 (local to netns lab-host) until it was dropped: no DNAT"
        );
    }

    /// Docker's rules with a DOCKER-USER drop of port 80 and, in raw PREROUTING, a drop of
    /// anything sent straight to the container's address: the packet sent to the published
    /// port passes the raw rule (it is DNATed only after raw) and dies in DOCKER-USER.
    fn docker_user_drop_behind_a_raw_rule() -> Ruleset {
        let text = DOCKER.replace(
            "[0:0] -A DOCKER-USER -j RETURN",
            "[1:60] -A DOCKER-USER -p tcp -m tcp --dport 80 -j DROP\n[0:0] -A DOCKER-USER -j RETURN",
        );
        let raw = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n[0:0] -A PREROUTING -d 172.17.0.2/32 ! -i docker0 -j DROP\nCOMMIT\n";
        Ruleset::parse(&format!("{raw}{text}")).unwrap()
    }

    /// The drop alone, as `--hooks drops` traces it: the last hop of [`dropped_at`] with a
    /// NETFILTER_DROP, changed by `edit`, in the host namespace with ruleset `rs`.
    fn lone_netfilter_drop(
        rs: Ruleset,
        dnat: bool,
        edit: impl FnOnce(&mut crate::events::Hop),
    ) -> Option<crate::diagnose::Diagnosis> {
        let mut host = FakeHost::lab_with_docker();
        host.rulesets.insert(HOST_NS, Arc::new(rs));
        let mut hops = dropped_at(12, dnat, HOST_NS, 2);
        hops.retain(|h| h.kind == HopKind::Drop);
        edit(&mut hops[0]);
        report_of(&mut host, hops, HookSet::Drops).diagnosis
    }

    #[test]
    fn a_lone_netfilter_drop_is_attributed_from_conntracks_header() {
        // --hooks drops: the DOCKER-USER drop as the kernel program records it, after DNAT,
        // with conntrack's header from before it and the interface it came in on.
        let d = lone_netfilter_drop(docker_user_drop_behind_a_raw_rule(), true, |_| {})
            .expect("diagnosed from the drop alone");
        assert_eq!(d.code, "netfilter_drop", "{d:#?}");
        let rule = d.rule.clone().expect("rule");
        assert_eq!(
            (rule.table.as_str(), rule.chain.as_str(), rule.index),
            ("filter", "DOCKER-USER", Some(1))
        );
        assert!(d.summary.contains("at FORWARD"), "{}", d.summary);
        assert!(
            d.fix
                .as_deref()
                .unwrap_or_default()
                .starts_with("ip netns exec lab-host iptables -t filter -D DOCKER-USER 1"),
            "{:?}",
            d.fix
        );
        for needle in [
            "conntrack: it entered netns lab-host addressed to 203.0.113.1:10001 and was rewritten to 172.17.0.2:80 before it was dropped",
            "hook inferred from the ruleset walk alone (--hooks drops",
            "(in eth0, out ",
        ] {
            assert!(
                d.evidence.iter().any(|e| e.contains(needle)),
                "{needle}: {:#?}",
                d.evidence
            );
        }
    }

    #[test]
    fn without_conntracks_header_a_lone_drop_is_walked_as_it_was_dropped() {
        // The same drop from a kernel object that recorded no conntrack header: the walk
        // starts from the header after DNAT and the raw rule takes the blame. What the
        // entered header is for.
        let d = lone_netfilter_drop(docker_user_drop_behind_a_raw_rule(), true, |h| {
            h.entered = None;
        })
        .expect("diagnosed");
        let rule = d.rule.expect("rule");
        assert_eq!(
            (rule.table.as_str(), rule.chain.as_str()),
            ("raw", "PREROUTING")
        );
    }

    #[test]
    fn a_lone_drop_of_a_packet_generated_here_is_walked_from_output() {
        // skb_iif 0: the host sent it itself, so there is no input interface and the walk
        // starts at OUTPUT, where this rule drops it.
        let text = DOCKER.replace(
            ":OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n:DOCKER-ISOLATION-STAGE-1",
            ":OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n[1:60] -A OUTPUT -p tcp --dport 10001 -j DROP\n:DOCKER-ISOLATION-STAGE-1",
        );
        assert_ne!(
            text, DOCKER,
            "the fixture changed: the OUTPUT rule was not added"
        );
        let d = lone_netfilter_drop(Ruleset::parse(&text).unwrap(), false, |h| {
            h.in_ifindex = 0;
        })
        .expect("diagnosed");
        assert!(d.summary.contains("at OUTPUT"), "{}", d.summary);
        assert_eq!(d.rule.map(|r| r.chain), Some("OUTPUT".to_owned()));
    }

    /// A DNATed SYN dropped in the host namespace with `rs` as its ruleset: the
    /// `netfilter_drop` diagnosis and the rule it names.
    fn forward_drop_in(
        mut host: FakeHost,
        rs: Ruleset,
    ) -> (crate::diagnose::Diagnosis, crate::ruleset::RuleRef) {
        host.rulesets.insert(HOST_NS, Arc::new(rs));
        let r = report(&mut host, dropped_at(12, true, HOST_NS, 2));
        let d = r.diagnosis.expect("diagnosed");
        assert_eq!(d.code, "netfilter_drop");
        let rule = d.rule.clone().expect("rule");
        (d, rule)
    }

    #[test]
    fn docker_user_drop_is_attributed_on_tracepoints() {
        let host = FakeHost::lab_with_docker();
        let text = DOCKER.replace(
            "[0:0] -A DOCKER-USER -j RETURN",
            "[1:60] -A DOCKER-USER -p tcp -m tcp --dport 80 -j DROP\n[0:0] -A DOCKER-USER -j RETURN",
        );
        let (d, rule) = forward_drop_in(host, Ruleset::parse(&text).unwrap());
        assert_eq!(
            (rule.table.as_str(), rule.chain.as_str(), rule.index),
            ("filter", "DOCKER-USER", Some(1))
        );
        assert_eq!(d.confidence, crate::diagnose::Confidence::High);
        assert!(d.summary.contains("at FORWARD"), "{}", d.summary);
        assert!(
            d.fix
                .as_deref()
                .unwrap_or_default()
                .contains("iptables -t filter -D DOCKER-USER 1"),
            "{:?}",
            d.fix
        );
    }

    /// Docker's rules in iptables-nft, a DROP added with iptables-legacy: `iptables -S` (nft)
    /// shows nothing wrong, yet the kernel runs both. The rule is named in the legacy table,
    /// and the evidence says why nobody saw it.
    #[test]
    fn a_drop_in_the_other_iptables_backend_is_named_with_it() {
        let host = FakeHost::lab_with_docker();
        let mut rs = Ruleset::parse(DOCKER).unwrap();
        let legacy = "# Generated by iptables-save v1.8.9 (legacy)\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n[4:240] -A FORWARD -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j DROP\nCOMMIT\n";
        rs.merge(Ruleset::parse_from(legacy, crate::ruleset::model::Flavor::Legacy).unwrap());
        let (d, rule) = forward_drop_in(host, rs);
        assert_eq!(
            (rule.table.as_str(), rule.chain.as_str(), rule.index),
            ("iptables-legacy filter", "FORWARD", Some(1))
        );
        assert_eq!(
            d.fix.as_deref(),
            Some(
                "ip netns exec lab-host iptables-legacy -t filter -D FORWARD 1   # remove or narrow: -A FORWARD -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j DROP"
            )
        );
        assert!(
            d.evidence.iter().any(|e| e
                .contains("both nf_tables (iptables-nft) and x_tables (iptables-legacy)")
                && e.contains("`iptables-nft -S`")),
            "{:#?}",
            d.evidence
        );
    }

    /// Counters read before and after the drop: a rule whose counter moved is the one; one
    /// whose counter stood still while the packet died is not trusted as much.
    #[test]
    fn rule_counters_are_compared_with_an_earlier_reading() {
        let rule = |n: u32| {
            DOCKER.replace(
                "[0:0] -A DOCKER-USER -j RETURN",
                &format!("[{n}:60] -A DOCKER-USER -p tcp -m tcp --dport 80 -j DROP\n[0:0] -A DOCKER-USER -j RETURN"),
            )
        };
        let diagnose = |before: u32, now: u32| {
            let mut host = FakeHost::lab_with_docker();
            host.rulesets
                .insert(HOST_NS, Arc::new(Ruleset::parse(&rule(now)).unwrap()));
            host.baselines
                .insert(HOST_NS, Arc::new(Ruleset::parse(&rule(before)).unwrap()));
            report(&mut host, dropped_at(12, true, HOST_NS, 2))
                .diagnosis
                .expect("diagnosed")
        };
        let moved = diagnose(4, 7);
        assert!(
            moved
                .evidence
                .iter()
                .any(|e| e.contains("its counter rose by 3 since pathtrace first read the ruleset")),
            "{:?}",
            moved.evidence
        );
        assert_eq!(moved.confidence, crate::diagnose::Confidence::High);
        let still = diagnose(7, 7);
        assert!(
            still.evidence.iter().any(|e| e.contains("did not move")),
            "{:?}",
            still.evidence
        );
        assert_eq!(still.confidence, crate::diagnose::Confidence::Medium);
    }

    #[test]
    fn forward_policy_drop_names_the_policy_and_an_accept_to_add() {
        let mut host = FakeHost::lab_with_docker();
        let text = DOCKER.replace(
            "[3:180] -A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT\n",
            "",
        );
        host.rulesets
            .insert(HOST_NS, Arc::new(Ruleset::parse(&text).unwrap()));
        let r = report(&mut host, dropped_at(12, true, HOST_NS, 2));
        let d = r.diagnosis.expect("diagnosed");
        assert_eq!(d.code, "netfilter_drop");
        assert_eq!(d.rule.as_ref().and_then(|r| r.index), None, "the policy");
        assert!(
            d.summary.contains("chain FORWARD policy DROP"),
            "{}",
            d.summary
        );
        assert!(
            d.fix.as_deref().unwrap_or_default().ends_with(
                "iptables -t filter -I DOCKER-USER -i eth0 -o docker0 -p tcp --dport 80 -j ACCEPT"
            ),
            "{:?}",
            d.fix
        );
    }
}
