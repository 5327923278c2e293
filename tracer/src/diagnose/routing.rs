//! Routing: reverse path filtering, no route, neighbour resolution.

use super::{Case, Confidence, Diagnosis, Premises, Rule, in_netns};
use crate::host::{HostFacts, Lookup};

pub const RP_FILTER: Rule = Rule {
    code: "rp_filter",
    // Dropped as the input route is looked up, on the device it came in on.
    from_drop_alone: true,
    check: rp_filter,
    examine: Some(strict_rp_filter),
};
pub const NO_ROUTE: Rule = Rule {
    code: "no_route",
    // Needs only the namespace and the destination at the drop.
    from_drop_alone: true,
    check: no_route,
    examine: None,
};
pub const NEIGHBOR_FAILED: Rule = Rule {
    code: "neighbor_failed",
    from_drop_alone: true,
    check: neighbor_failed,
    examine: None,
};

fn rp_filter(case: &Case<'_>, facts: &mut dyn HostFacts) -> Option<Diagnosis> {
    let drop = case.verdict.drop.as_ref()?;
    if drop.reason != "IP_RPFILTER" {
        return None;
    }
    let input = case.input_hop()?;
    let t = input.tuple?;
    let ifname = facts.interface(input.netns, input.ifindex)?.name;
    let ns = facts.netns_label(input.netns);
    let all = facts.sysctl(input.netns, "net.ipv4.conf.all.rp_filter");
    let iface = facts.sysctl(input.netns, &format!("net.ipv4.conf.{ifname}.rp_filter"));
    let back = facts.connected_route(input.netns, t.src).map(|l| l.name);
    let mut evidence = vec![
        format!(
            "kfree_skb: reason IP_RPFILTER on {ifname} in netns {ns}, the interface it came in on"
        ),
        format!(
            "net.ipv4.conf.all.rp_filter = {}, net.ipv4.conf.{ifname}.rp_filter = {}: the kernel uses the larger",
            rp_filter_mode(&all),
            rp_filter_mode(&iface)
        ),
    ];
    evidence.push(match &back {
        Some(dev) if *dev != ifname => format!("the route back to {} goes out {dev}, not {ifname}", t.src),
        Some(_) => format!("a connected route back to {} exists via {ifname}; a more specific route may differ (ip route get {})", t.src, t.src),
        None => format!("no connected route back to {} (check `ip route get {} from {} iif {ifname}`)", t.src, t.src, t.dst),
    });
    Some(Diagnosis {
        code: RP_FILTER.code,
        summary: format!(
            "{} from {} arrived on {ifname} (netns {ns}), but reverse path filtering dropped it: the route back to {} does not go out {ifname}.",
            case.packet_name(),
            t.src,
            t.src
        ),
        evidence,
        fix: Some(in_netns(
            facts,
            input.netns,
            &format!(
                "sysctl -w net.ipv4.conf.{ifname}.rp_filter=2 net.ipv4.conf.all.rp_filter=2   # loose mode; or add a route back to {} via {ifname}",
                t.src
            ),
        )),
        confidence: Confidence::High,
        rule: None,
    })
}

/// An rp_filter value as the kernel means it.
fn rp_filter_mode(value: &Lookup<String>) -> String {
    match value {
        Ok(Some(v)) if v == "1" => "1 (strict)".into(),
        Ok(Some(v)) if v == "2" => "2 (loose)".into(),
        Ok(Some(v)) if v == "0" => "0 (off)".into(),
        Ok(_) => "?".into(),
        Err(u) => format!("? ({u})"),
    }
}

/// Strict reverse path filtering on an interface (its own setting or `all`, the larger
/// wins): a lead to check, not a fault by itself.
fn strict_rp_filter(p: &Premises, facts: &mut dyn HostFacts) -> Vec<Diagnosis> {
    let all = facts.sysctl(p.netns, "net.ipv4.conf.all.rp_filter");
    let mut out = Vec::new();
    for l in p.interfaces() {
        let key = format!("net.ipv4.conf.{}.rp_filter", l.name);
        let own = facts.sysctl(p.netns, &key);
        let strict = |v: &Lookup<String>| matches!(v, Ok(Some(v)) if v == "1");
        if !strict(&all) && !strict(&own) {
            continue;
        }
        out.push(Diagnosis {
            code: RP_FILTER.code,
            summary: format!(
                "Strict reverse path filtering applies on {}: packets whose source is not routed back out {} are dropped (asymmetric routes, extra client addresses).",
                l.name, l.name
            ),
            evidence: vec![format!(
                "net.ipv4.conf.all.rp_filter = {}, {key} = {}: the kernel uses the larger",
                rp_filter_mode(&all),
                rp_filter_mode(&own)
            )],
            fix: Some(in_netns(
                facts,
                p.netns,
                &format!("sysctl -w {key}=2   # loose, if traffic legitimately arrives asymmetrically"),
            )),
            confidence: Confidence::Low,
            rule: None,
        });
    }
    out
}

fn no_route(case: &Case<'_>, facts: &mut dyn HostFacts) -> Option<Diagnosis> {
    let drop = case.verdict.drop.as_ref()?;
    if !matches!(drop.reason.as_str(), "IP_INNOROUTES" | "IP_OUTNOROUTES") {
        return None;
    }
    let netns = case.drop_netns()?;
    let t = case.drop_hop().and_then(|h| h.tuple)?;
    let ns = facts.netns_label(netns);
    let first = case.packet.hops.iter().find_map(|h| h.tuple).unwrap_or(t);
    let mut evidence = vec![format!(
        "kfree_skb: reason {} at {} in netns {ns}",
        drop.reason,
        drop.location
            .as_ref()
            .map_or_else(|| "?".into(), |s| s.to_string())
    )];
    if first.dst != t.dst {
        evidence.push(format!(
            "the destination was rewritten (DNAT) from {} to {}",
            first.dst, t.dst
        ));
    }
    evidence.push(format!(
        "no route in netns {ns} reaches {}: no connected subnet holds it and no route covers it",
        t.dst
    ));
    Some(Diagnosis {
        code: NO_ROUTE.code,
        summary: format!(
            "{} to {} was dropped in netns {ns}: there is no route to {}.",
            case.packet_name(),
            t.dst,
            t.dst
        ),
        evidence,
        fix: Some(in_netns(
            facts,
            netns,
            &format!(
                "ip route get {}   # then add the missing route, or fix the address the DNAT targets",
                t.dst
            ),
        )),
        confidence: Confidence::High,
        rule: None,
    })
}

fn neighbor_failed(case: &Case<'_>, facts: &mut dyn HostFacts) -> Option<Diagnosis> {
    let drop = case.verdict.drop.as_ref()?;
    if !matches!(
        drop.reason.as_str(),
        "NEIGH_FAILED" | "NEIGH_QUEUEFULL" | "NEIGH_DEAD"
    ) {
        return None;
    }
    let netns = case.drop_netns()?;
    let t = case.drop_hop().and_then(|h| h.tuple)?;
    let ns = facts.netns_label(netns);
    let dev = facts.connected_route(netns, t.dst).map(|l| l.name);
    let on = dev
        .as_deref()
        .map(|d| format!(" on {d}"))
        .unwrap_or_default();
    let why = match drop.reason.as_str() {
        "NEIGH_QUEUEFULL" => "too many packets waited for the same neighbour",
        "NEIGH_DEAD" => "the neighbour entry was removed while packets waited",
        _ => "ARP got no answer",
    };
    Some(Diagnosis {
        code: NEIGHBOR_FAILED.code,
        summary: format!(
            "{} to {} was dropped in netns {ns}: {why} for {}{on} — nothing on that link answers for the address.",
            case.packet_name(),
            t.dst,
            t.dst
        ),
        evidence: vec![
            format!("kfree_skb: reason {} in netns {ns}", drop.reason),
            format!(
                "{} is on a connected subnet{on}: it is resolved by ARP, not routed",
                t.dst
            ),
        ],
        fix: Some(in_netns(
            facts,
            netns,
            &format!(
                "ip neigh show {}   # is the container or host at {} up on{on}?",
                t.dst, t.dst
            ),
        )),
        confidence: Confidence::High,
        rule: None,
    })
}
