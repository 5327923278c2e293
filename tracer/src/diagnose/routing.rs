//! Routing: reverse path filtering, no route, neighbour resolution.

use super::{Case, Confidence, Diagnosis, Premises, Rule, in_netns, sysctl_is};
use crate::events::ipv4;
use crate::{
    events::{Hop, Tuple},
    host::{HostFacts, Lookup, RouteRule},
};

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
    let back = ipv4(t.src)
        .and_then(|a| facts.connected_route(input.netns, a))
        .map(|l| l.name);
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
    if let Some(m) = marked_lookup(case, facts, input.netns, &ifname) {
        return Some(marked_rp_filter(
            case, facts, input, t, &ifname, evidence, m,
        ));
    }
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

/// The reverse path lookup of a marked packet: with `src_valid_mark` on, the kernel looks the
/// route back up with the packet's fwmark, and `ip rule` may send that lookup to another table
/// than the one whose connected route would pass it (the multi-uplink setup that marks
/// connections and restores the mark on replies).
struct MarkedLookup {
    mark: u32,
    /// Conntrack's mark on the entry, when the drop carried it.
    ct_mark: Option<u32>,
    /// The `src_valid_mark` switch that is on (`all` or the interface's).
    switch: String,
    /// The first rule the marked lookup takes, when it leads elsewhere than `main`.
    rule: Option<RouteRule>,
    /// Why the rules are not known, when they could not be read.
    unreadable: Option<String>,
}

fn marked_lookup(
    case: &Case<'_>,
    facts: &mut dyn HostFacts,
    netns: u32,
    ifname: &str,
) -> Option<MarkedLookup> {
    let drop = case.drop_hop()?;
    let mark = drop.mark;
    if mark == 0 {
        return None;
    }
    // IN_DEV_SRC_VMARK: on when `all` or the interface says so.
    let switch = [
        "net.ipv4.conf.all.src_valid_mark".to_owned(),
        format!("net.ipv4.conf.{ifname}.src_valid_mark"),
    ]
    .into_iter()
    .find(|k| sysctl_is(facts, netns, k, "1"))?;
    let (rule, unreadable) = match facts.route_rules(netns) {
        Ok(rules) => (
            rules.and_then(|r| {
                r.iter()
                    .filter(|r| r.table != "local")
                    .find(|r| r.takes(mark))
                    .filter(|r| r.table != "main")
                    .cloned()
            }),
            None,
        ),
        Err(u) => (None, Some(u.to_string())),
    };
    Some(MarkedLookup {
        mark,
        ct_mark: drop.conntrack.map(|c| c.mark),
        switch,
        rule,
        unreadable,
    })
}

fn marked_rp_filter(
    case: &Case<'_>,
    facts: &mut dyn HostFacts,
    input: Hop,
    t: Tuple,
    ifname: &str,
    mut evidence: Vec<String>,
    m: MarkedLookup,
) -> Diagnosis {
    let ns = facts.netns_label(input.netns);
    let restored = if m.ct_mark == Some(m.mark) {
        ", conntrack's mark on its connection (restored onto the packet, as CONNMARK --restore-mark does)".to_owned()
    } else {
        String::new()
    };
    evidence.push(format!("the packet carries fwmark {:#x}{restored}", m.mark));
    evidence.push(format!(
        "{} = 1: the route back to {} is looked up with that mark",
        m.switch, t.src
    ));
    let check = format!(
        "ip route get {} from {} iif {ifname} mark {:#x}",
        t.src, t.dst, m.mark
    );
    let subnet = ipv4(t.src)
        .and_then(|src| facts.connected_subnet(input.netns, src))
        .map_or_else(|| format!("{}/32", t.src), |(n, l)| format!("{n}/{l}"));
    let (summary_tail, fix) = match &m.rule {
        Some(r) => {
            let (v, mask) = r.fwmark.unwrap_or((m.mark, u32::MAX));
            let selector = if mask == u32::MAX {
                format!("fwmark {v:#x}")
            } else {
                format!("fwmark {v:#x}/{mask:#x}")
            };
            evidence.push(format!(
                "ip rule {}: {selector} lookup {}, ahead of main: the way back to {} comes from table {}, not from the connected route via {ifname} (check `{check}`)",
                r.priority, r.table, t.src, r.table
            ));
            (
                format!(
                    "looked up with its fwmark {:#x}, the route back to {} comes from table {}, which does not send it out {ifname}",
                    m.mark, t.src, r.table
                ),
                format!(
                    "ip route add {subnet} dev {ifname} table {}   # the marked table's way back to {}; or loose mode: sysctl -w net.ipv4.conf.{ifname}.rp_filter=2 net.ipv4.conf.all.rp_filter=2",
                    r.table, t.src
                ),
            )
        }
        None => {
            evidence.push(match &m.unreadable {
                Some(why) => format!("the routing rules could not be read ({why}): check `{check}`"),
                None => format!("no `ip rule` sends that mark elsewhere than main that pathtrace can see: check `{check}`"),
            });
            (
                format!(
                    "looked up with its fwmark {:#x}, the route back to {} does not go out {ifname}",
                    m.mark, t.src
                ),
                format!(
                    "sysctl -w net.ipv4.conf.{ifname}.rp_filter=2 net.ipv4.conf.all.rp_filter=2   # loose mode; or route {subnet} via {ifname} in the table `{check}` names"
                ),
            )
        }
    };
    Diagnosis {
        code: RP_FILTER.code,
        summary: format!(
            "{} from {} arrived on {ifname} (netns {ns}), but reverse path filtering dropped it: {summary_tail}.",
            case.packet_name(),
            t.src,
        ),
        evidence,
        fix: Some(in_netns(facts, input.netns, &fix)),
        // The table's contents are not read: its default route is what usually leads away.
        confidence: if m.rule.is_some() {
            Confidence::High
        } else {
            Confidence::Medium
        },
        rule: None,
    }
}

/// A packet a socket took in `netns`, to which nothing came back (`connection::State::NoReply`):
/// what the connection-level check needs of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unanswered {
    /// Where it was taken, and on which device it arrived there.
    pub netns: u32,
    pub ifindex: u32,
    /// Its header there: the source is who the answer must go back to.
    pub tuple: Tuple,
    /// The namespace it came from, when traced: the gateway a container would use is that
    /// side's address on its subnet.
    pub via_netns: Option<u32>,
}

/// The code of [`no_route_back`]'s diagnosis.
pub const NO_ROUTE_BACK: &str = "no_route_back";

/// A connection-level check: the first packet was taken by a socket and nothing came back.
/// When the namespace that took it has no route to its source, the answer is never built —
/// TCP looks the route up before it makes a SYN-ACK — so no packet of the reply exists to
/// trace, and only the routing table can say why.
pub fn no_route_back(facts: &mut dyn HostFacts, u: &Unanswered, packet: &str) -> Option<Diagnosis> {
    let t = u.tuple;
    let crate::host::RouteLookup::Unreachable(why) = facts
        .route_get(u.netns, ipv4(t.src)?, ipv4(t.dst)?)
        .ok()??
    else {
        return None;
    };
    let ns = facts.netns_label(u.netns);
    let who = facts.container_device(u.netns, u.ifindex).map_or_else(
        || format!("netns {ns}"),
        |d| format!("container {}", d.container.name),
    );
    let dev = facts.interface(u.netns, u.ifindex).map(|l| l.name);
    let gateway = u
        .via_netns
        .zip(ipv4(t.dst))
        .and_then(|(h, dst)| facts.own_address_near(h, dst));
    let fix = match (gateway, &dev) {
        (Some(gw), Some(dev)) => format!("ip route add default via {gw} dev {dev}"),
        (Some(gw), None) => format!("ip route add default via {gw}"),
        (None, _) => format!(
            "ip route add {} via <gateway>   # the way back to the client",
            t.src
        ),
    };
    let answer = if t.proto == crate::net::Proto::TCP {
        "its SYN-ACK was never built (TCP routes the answer before making it), so there is no reply to trace"
    } else {
        "whatever it answers cannot leave"
    };
    Some(Diagnosis {
        code: NO_ROUTE_BACK,
        summary: format!(
            "The {packet} reached {who} at {}:{} and was taken by a socket, but {who} has no route back to {}: {answer}.",
            t.dst, t.dport, t.src
        ),
        evidence: vec![
            format!(
                "the {packet} was delivered in netns {ns}{} and nothing came back",
                dev.as_deref()
                    .map(|d| format!(" on {d}"))
                    .unwrap_or_default()
            ),
            format!("ip route get {} from {} in netns {ns}: {why}", t.src, t.dst),
        ],
        fix: Some(in_netns(facts, u.netns, &fix)),
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
    // The header it came with: the first hop's, or with the drop alone (`--hooks drops`)
    // the one the drop says it entered the namespace with, before a DNAT.
    let first = case
        .packet
        .hops
        .iter()
        .find_map(|h| h.entered_tuple())
        .unwrap_or(t);
    let mut evidence = vec![format!(
        "kfree_skb: reason {} at {} in netns {ns}",
        drop.reason,
        drop.location
            .as_ref()
            .map_or_else(|| "?".into(), |s| s.to_string())
    )];
    let rewritten = first.dst != t.dst;
    if rewritten {
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
                "ip route get {}   # then add the missing route{}",
                t.dst,
                if rewritten {
                    ", or fix the address the DNAT targets"
                } else {
                    ""
                }
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
    let dev = facts.connected_route(netns, ipv4(t.dst)?).map(|l| l.name);
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

#[cfg(test)]
mod tests {
    use tracer_common::HopKind;

    use crate::{
        correlate::{FlowTable, Packet},
        diagnose::{Diagnosis, judge},
        events::fixture::*,
        host::{RouteRule, fixture::FakeHost},
        probes::{DropReasons, HookSet},
    };

    /// The container's SYN-ACK, marked 0x2 (its connection's mark, restored), dropped by
    /// reverse path filtering as it enters the host on docker0.
    fn marked_reply_drop(host: &mut FakeHost) -> Option<Diagnosis> {
        let mut drop = with_reply_ct(syn_ack_ev(HopKind::Drop, 2_000, HOST_NS, 3));
        drop.ct.mark = 0x2;
        drop.skb_mark = 0x2;
        drop.drop_reason = 17;
        let packet = Packet {
            skb: SKB,
            hops: vec![
                hop(syn_ack_ev(HopKind::Receive, 1_000, HOST_NS, 3)),
                hop(drop),
            ],
            freed: true,
        };
        let flow = FlowTable::new(4).observe(&packet);
        let reasons = DropReasons::from_pairs([("SKB_DROP_REASON_IP_RPFILTER".to_owned(), 17)]);
        judge(packet, flow, host, &reasons, HookSet::Receive).diagnosis
    }

    fn multi_uplink_host() -> FakeHost {
        let mut host = FakeHost::lab();
        host.set_sysctl(HOST_NS, "net.ipv4.conf.all.rp_filter", "1");
        host.set_sysctl(HOST_NS, "net.ipv4.conf.docker0.rp_filter", "1");
        host.route_rules.insert(
            HOST_NS,
            vec![
                RouteRule {
                    priority: 0,
                    fwmark: None,
                    table: "local".into(),
                    mark_only: true,
                },
                RouteRule {
                    priority: 32765,
                    fwmark: Some((0x2, u32::MAX)),
                    table: "102".into(),
                    mark_only: true,
                },
                RouteRule {
                    priority: 32766,
                    fwmark: None,
                    table: "main".into(),
                    mark_only: true,
                },
            ],
        );
        host
    }

    /// With `src_valid_mark` on, the reverse path lookup took the mark to table 102, ahead of
    /// main's connected route: the diagnosis names the mark, the rule and the table, and the
    /// fix routes the bridge's subnet there.
    #[test]
    fn a_marked_reply_is_checked_against_the_table_its_mark_selects() {
        let mut host = multi_uplink_host();
        host.set_sysctl(HOST_NS, "net.ipv4.conf.all.src_valid_mark", "1");
        let d = marked_reply_drop(&mut host).expect("diagnosed");
        assert_eq!(d.code, "rp_filter");
        assert!(
            d.summary.contains(
                "looked up with its fwmark 0x2, the route back to 172.17.0.2 comes from table 102, which does not send it out docker0"
            ),
            "{}",
            d.summary
        );
        assert_eq!(
            d.fix.as_deref(),
            Some(
                "ip netns exec lab-host ip route add 172.17.0.0/16 dev docker0 table 102   # the marked table's way back to 172.17.0.2; or loose mode: sysctl -w net.ipv4.conf.docker0.rp_filter=2 net.ipv4.conf.all.rp_filter=2"
            )
        );
        for needle in [
            "fwmark 0x2, conntrack's mark on its connection",
            "net.ipv4.conf.all.src_valid_mark = 1",
            "ip rule 32765: fwmark 0x2 lookup 102, ahead of main",
            "ip route get 172.17.0.2 from 203.0.113.2 iif docker0 mark 0x2",
        ] {
            assert!(
                d.evidence.iter().any(|e| e.contains(needle)),
                "{needle}: {:#?}",
                d.evidence
            );
        }
    }

    /// Without `src_valid_mark` the mark plays no part in the check: the plain diagnosis.
    #[test]
    fn a_mark_is_not_blamed_when_the_check_ignores_it() {
        let mut host = multi_uplink_host();
        let d = marked_reply_drop(&mut host).expect("diagnosed");
        assert!(!d.summary.contains("fwmark"), "{}", d.summary);
        assert!(
            d.fix.as_deref().is_some_and(|f| f.contains("rp_filter=2")),
            "{:?}",
            d.fix
        );
    }

    /// A SYN with no route on: after a DNAT the fix names the DNAT's target as a suspect; an
    /// IPv6 SYN routed to the container's own address had no DNAT, and the fix says none.
    #[test]
    fn no_route_blames_a_dnat_only_when_there_was_one() {
        let no_route = |hops: Vec<crate::events::Hop>| {
            let packet = Packet {
                skb: SKB,
                hops,
                freed: true,
            };
            let flow = FlowTable::new(4).observe(&packet);
            let reasons =
                DropReasons::from_pairs([("SKB_DROP_REASON_IP_INNOROUTES".to_owned(), 88)]);
            let mut host = FakeHost::lab();
            judge(packet, flow, &mut host, &reasons, HookSet::Receive)
                .diagnosis
                .expect("diagnosed")
        };
        let mut drop = dnat(ev(HopKind::Drop, 3_000, HOST_NS, 2));
        drop.drop_reason = 88;
        let dnat_fix = "ip netns exec lab-host ip route get 172.17.0.2   # then add the missing route, or fix the address the DNAT targets";
        let d = no_route(vec![
            hop(ev(HopKind::Receive, 2_000, HOST_NS, 2)),
            hop(drop),
        ]);
        assert_eq!(d.code, "no_route");
        assert_eq!(d.fix.as_deref(), Some(dnat_fix));
        // The drop alone (`--hooks drops`): the header it entered with tells the DNAT.
        let d = no_route(vec![hop(drop)]);
        assert_eq!(d.fix.as_deref(), Some(dnat_fix));
        let mut drop6 = v6(ev(HopKind::Drop, 3_000, HOST_NS, 2));
        drop6.drop_reason = 88;
        let d = no_route(vec![
            hop(v6(ev(HopKind::Receive, 2_000, HOST_NS, 2))),
            hop(drop6),
        ]);
        assert_eq!(
            d.fix.as_deref(),
            Some("ip netns exec lab-host ip route get fd00:17::2   # then add the missing route")
        );
        assert!(
            !d.evidence.iter().any(|e| e.contains("DNAT")),
            "{:?}",
            d.evidence
        );
    }
}
