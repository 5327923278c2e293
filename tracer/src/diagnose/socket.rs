//! The packet reached its destination namespace and nothing listens there.

use super::{Case, Confidence, Diagnosis, Rule, in_netns};
use crate::resolve::HostFacts;

pub const NO_LISTENER: Rule = Rule {
    code: "no_listener",
    // Freed by TCP/UDP in the namespace and on the device that received it.
    from_drop_alone: true,
    check,
};

fn check(case: &Case<'_>, facts: &mut dyn HostFacts) -> Option<Diagnosis> {
    let drop = case.verdict.drop.as_ref()?;
    if drop.reason != "NO_SOCKET" {
        return None;
    }
    let input = case.input_hop()?;
    let t = case.drop_hop().and_then(|h| h.tuple).or(input.tuple)?;
    let first = case.packet.hops.iter().find_map(|h| h.tuple).unwrap_or(t);
    let ns = facts.netns_label(input.netns);
    let proto = crate::events::proto_name(t.proto);
    let owner = facts
        .container_device(input.netns, input.ifindex)
        .filter(|d| !d.host_side);
    let whom = owner.as_ref().map_or_else(
        || format!("netns {ns}"),
        |d| format!("container {}", d.container.name),
    );
    let mut evidence = vec![format!(
        "kfree_skb: reason NO_SOCKET at {} in netns {ns}: no {proto} socket for {}:{}",
        drop.location
            .as_ref()
            .map_or_else(|| "?".into(), |s| s.name.clone()),
        t.dst,
        t.dport
    )];
    if (first.dst, first.dport) != (t.dst, t.dport) {
        evidence.push(format!(
            "the packet was sent to {}:{} and DNATed to {}:{}: the path worked",
            first.dst, first.dport, t.dst, t.dport
        ));
    }
    if t.proto == 6 {
        evidence.push("TCP answered with a RST: the client sees \"connection refused\"".into());
    }
    let ss = if t.proto == 6 { "ss -ltnp" } else { "ss -lunp" };
    Some(Diagnosis {
        code: NO_LISTENER.code,
        summary: format!(
            "{} reached {whom} on {}:{}, but nothing listens on {proto} port {} there.",
            case.packet_name(),
            t.dst,
            t.dport,
            t.dport
        ),
        evidence,
        fix: Some(format!(
            "{}   # then start the service on 0.0.0.0:{} (not 127.0.0.1) in {whom}",
            in_netns(facts, input.netns, ss),
            t.dport
        )),
        confidence: Confidence::High,
        rule: None,
    })
}
