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

/// Where a flow met the rule a fix is for: its interfaces there, the chains it walked, and
/// what the host says of its ends.
#[derive(Default)]
pub(super) struct Where<'a> {
    pub in_if: Option<&'a str>,
    pub out_if: Option<&'a str>,
    pub path: &'a [String],
    /// The interface that leads to the flow's container: the connected route to the
    /// container's address (its bridge, or its veth). Never guessed from a name.
    pub container_side: Option<&'a str>,
    /// The containers at the flow's source and destination, by name.
    pub src_container: Option<&'a str>,
    pub dst_container: Option<&'a str>,
}

/// Said in a fix where pathtrace cannot tell the container-side interface.
const CONTAINER_SIDE: &str = "<the bridge or veth of the container's network>";

/// firewalld owns its nft table: a rule deleted by hand comes back on reload, so the fix is
/// to give the container-side interface a zone (Docker >= 20.10 adds a `docker` zone itself).
/// Only an interface the container's address is routed through is named: a name picked
/// otherwise could be the uplink, and the fix would open the host to the world.
fn firewalld_fix(at: &Where<'_>) -> String {
    let why = "firewalld forwards only between interfaces that are in zones; Docker >= 20.10 puts its bridges in a `docker` zone itself";
    match at.container_side {
        Some(side) => format!(
            "firewall-cmd --permanent --zone=trusted --change-interface={side} && firewall-cmd --reload   # {why}"
        ),
        None => format!(
            "firewall-cmd --permanent --zone=trusted --change-interface={CONTAINER_SIDE} && firewall-cmd --reload   # pathtrace could not tell which interface leads to the container (no container address with a route here): name its bridge, never the uplink; {why}"
        ),
    }
}

/// A rule whose fix is Docker's own command, not a ruleset edit: Docker's CLI talks to dockerd
/// wherever it runs, so the fix is never prefixed with a namespace.
pub(super) fn fixed_by_docker(by: &RuleRef) -> bool {
    by.chain.starts_with("DOCKER-ISOLATION")
}

/// Docker's own chains are its design: it re-creates a deleted rule, and the isolation
/// between its networks is on purpose. The fix is at Docker's level.
fn docker_fix(by: &RuleRef, at: &Where<'_>) -> Option<String> {
    if fixed_by_docker(by) {
        let network = match at.out_if {
            Some("docker0") => "bridge".to_owned(),
            Some(b) if b.starts_with("br-") => b.trim_start_matches("br-").to_owned(),
            _ => "<the destination's network>".to_owned(),
        };
        let from = at.src_container.unwrap_or("<the source container>");
        let to = at
            .dst_container
            .map(|d| format!(" ({from} to reach {d})"))
            .unwrap_or_default();
        return Some(format!(
            "docker network connect {network} {from}   # Docker isolates its networks from each other on purpose ({}, re-created if deleted): connect the client to the server's network{to}, or put both on one user-defined network",
            by.chain
        ));
    }
    None
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
    if let Some(fix) = docker_fix(by, at) {
        return fix;
    }
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
