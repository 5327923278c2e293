//! How a fix is written for the rule that dropped a flow: in the syntax of the tool that owns
//! the rule's table (iptables, iptables-legacy, nft, ebtables, firewalld), naming the flow's
//! interfaces and destination when the fix is an accept ahead of a drop policy.

use crate::{
    events::Tuple,
    ruleset::{RuleRef, model::Source},
};

pub(super) fn rule_words(by: &RuleRef) -> String {
    match (by.index, by.handle) {
        (Some(i), Some(h)) => format!("chain {} rule {i}, handle {h} (`{}`)", by.chain, by.text),
        (Some(i), None) => format!("chain {} rule {i} (`{}`)", by.chain, by.text),
        (None, _) => format!("chain {} policy DROP (no rule accepted it)", by.chain),
    }
}

/// Where a flow met the rule a fix is for: its interfaces there and the chains it walked.
pub(super) struct Where<'a> {
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
fn nft_fix(by: &RuleRef, tuple: Option<Tuple>, at: &Where<'_>) -> String {
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
pub(super) fn ebtables_table(by: &RuleRef) -> Option<(&'static str, &str)> {
    match Source::of_label(&by.table) {
        (source @ Source::Ebtables(_), table) => Some((source.command(), table)),
        _ => None,
    }
}

/// An ebtables rule: delete it by number, or accept the flow ahead of a DROP policy.
fn ebtables_fix(
    cmd: &str,
    table: &str,
    by: &RuleRef,
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

pub(super) fn fix_for(by: &RuleRef, tuple: Option<Tuple>, at: &Where<'_>) -> String {
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
pub(super) enum Syntax {
    Iptables,
    Nft,
    Ebtables,
}

/// The interfaces and destination of the dropped flow as rule matches: what an accept ahead of
/// a drop policy needs. ebtables sees frames, so it also names IPv4 and the destination address.
pub(super) fn flow_match(at: &Where<'_>, tuple: Option<Tuple>, syntax: Syntax) -> String {
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
