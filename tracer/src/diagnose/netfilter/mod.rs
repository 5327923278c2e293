//! Netfilter: which rule or policy dropped the packet (field notes 001 and 004), and a nat
//! PREROUTING rule that kept Docker's DNAT from running (field note 002).
//!
//! The hook comes from the `nf_hook_slow` hop where the backend has one; on tracepoints it is
//! inferred by walking the packet through the hooks in kernel order and seeing where the
//! ruleset drops it. The rule comes from evaluating the namespace's ruleset against the packet
//! as it was at that hook, cross-checked with the rule's counter. Nothing is inserted into the
//! ruleset.

mod dnat;
mod examine;
mod fix;
mod walk;

use crate::events::ipv4;
use std::{sync::Arc, time::Duration};

use self::{
    fix::{Where, ebtables_table, fix_for, fixed_by_docker, rule_words},
    walk::{Walked, walk},
};
use super::{Case, Confidence, Diagnosis, Rule, describe_rule, in_netns};
use crate::{
    events::Tuple,
    host::HostFacts,
    net::{Hook, Netfilter, NfVerdict},
    probes::HookSet,
    ruleset::{
        RuleRef, RuleVerdict, Ruleset,
        model::{Flavor, Source},
    },
    verdict::DropSite,
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
    check: dnat::dnat_skipped,
    examine: Some(examine::dnat_skipped),
};

/// A `NETFILTER_DROP`: which hook, which rule or policy, how sure, and the fix.
fn netfilter_drop(case: &Case<'_>, facts: &mut dyn HostFacts) -> Option<Diagnosis> {
    let drop = case.verdict.drop.as_ref()?;
    if drop.reason != "NETFILTER_DROP" {
        return None;
    }
    let netns = case.drop_netns()?;
    let ns = facts.netns_label(netns);
    // The hook that returned drop, where the backend traces `nf_hook_slow`.
    let nf_hop = case
        .packet
        .hops
        .iter()
        .rev()
        .find_map(|h| h.netfilter.filter(|nf| nf.verdict == NfVerdict::Drop));
    let observed_hook = nf_hop.and_then(|nf| nf.hook);
    let ruleset = facts.ruleset(netns);
    let walked = match &ruleset {
        Ok(Some(rs)) => walk(case, facts, rs, netns, nf_hop),
        _ => None,
    };
    let mut evidence = drop_evidence(case, drop, nf_hop, &ns);
    if let Ok(Some(rs)) = &ruleset {
        evidence.extend(unread_evidence(rs));
    }
    let Some(w) = walked.filter(|w| w.outcome.verdict != RuleVerdict::Accept) else {
        evidence.push(match &ruleset {
            Ok(Some(_)) => "evaluating the iptables and nft tables against the packet does not drop it: look for rules with matches pathtrace cannot evaluate (nft list ruleset)".into(),
            Ok(None) => format!("no iptables or nft rules could be read in netns {ns} (iptables-save, nft -j list ruleset)"),
            Err(u) => format!("{u}: the rule that dropped it cannot be named"),
        });
        return Some(unexplained(
            case,
            facts,
            netns,
            &ns,
            observed_hook,
            evidence,
        ));
    };
    let by = w.outcome.by.clone()?;
    let ruleset = ruleset.ok().flatten();
    let delta = counter_delta(facts, netns, ruleset.as_ref(), &by);
    let confidence = confidence(&w, &by, delta);
    evidence.extend(rule_evidence(case, &w, &by, delta));
    if let Some(rs) = &ruleset {
        evidence.extend(hidden_backend(rs, &by, &ns));
    }
    evidence.extend(w.outcome.tied.clone());
    for u in &w.outcome.unknown_matches {
        evidence.push(format!(
            "pathtrace cannot evaluate a match of {u}; assumed not to match"
        ));
    }
    let (code, summary, fix) = summary_and_fix(case, facts, netns, &w, &by, &ns);
    evidence.extend(bridge_evidence(&w, &ns));
    Some(Diagnosis {
        code,
        summary,
        evidence,
        fix: Some(if fixed_by_docker(&by) {
            fix
        } else {
            in_netns(facts, netns, &fix)
        }),
        confidence,
        rule: Some(by),
    })
}

/// The drop itself, the hook that returned drop when it was traced, and (drops alone) the
/// DNAT conntrack says happened before it.
fn drop_evidence(
    case: &Case<'_>,
    drop: &DropSite,
    nf_hop: Option<Netfilter>,
    ns: &str,
) -> Vec<String> {
    let location = drop
        .location
        .as_ref()
        .map_or_else(|| "nf_hook_slow".to_owned(), ToString::to_string);
    let mut evidence = vec![format!(
        "kfree_skb: reason NETFILTER_DROP at {location} in netns {ns}"
    )];
    if let Some(nf) = nf_hop
        && let Some(h) = nf.hook
    {
        evidence.push(format!(
            "nf_hook_slow: {} {} returned drop",
            nf.family.name(),
            h.name()
        ));
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
    evidence
}

/// The kernel dropped in netfilter but the rules read do not explain it (`evidence` says why).
fn unexplained(
    case: &Case<'_>,
    facts: &mut dyn HostFacts,
    netns: u32,
    ns: &str,
    observed_hook: Option<Hook>,
    evidence: Vec<String>,
) -> Diagnosis {
    let hook = observed_hook.map_or("a netfilter hook".to_owned(), |h| h.name().to_owned());
    Diagnosis {
        code: NETFILTER_DROP.code,
        summary: format!(
            "{} was dropped by netfilter at {hook} in netns {ns}, by a rule pathtrace could not pin down.",
            case.packet_name()
        ),
        evidence,
        fix: Some(in_netns(facts, netns, "nft list ruleset")),
        confidence: Confidence::Low,
        rule: None,
    }
}

/// How much the rule's counter rose since pathtrace first read the namespace's ruleset (before
/// the drop, when it read early enough), and how long ago that was.
fn counter_delta(
    facts: &mut dyn HostFacts,
    netns: u32,
    now: Option<&Arc<Ruleset>>,
    by: &RuleRef,
) -> Option<(u64, Duration)> {
    facts
        .ruleset_baseline(netns)
        .filter(|(base, _)| now.is_none_or(|now| !Arc::ptr_eq(base, now)))
        .and_then(|(base, ago)| {
            let before = base.packets_of(by)?;
            Some((by.packets?.saturating_sub(before), ago))
        })
}

/// High when every match could be evaluated and the rule's counter agrees; low when another
/// table drops the packet at the same priority (which ran first cannot be known).
fn confidence(w: &Walked, by: &RuleRef, delta: Option<(u64, Duration)>) -> Confidence {
    if w.outcome.tied.is_some() {
        return Confidence::Low;
    }
    let counted = match delta {
        Some((moved, _)) => moved > 0,
        None => by.packets.is_some_and(|p| p > 0),
    };
    match (
        w.outcome.unknown_matches.is_empty(),
        counted || by.packets.is_none(),
    ) {
        (true, true) => Confidence::High,
        (true, false) | (false, true) => Confidence::Medium,
        (false, false) => Confidence::Low,
    }
}

/// The walk that found the rule, how the hook was known, and what its counter says.
fn rule_evidence(
    case: &Case<'_>,
    w: &Walked,
    by: &RuleRef,
    delta: Option<(u64, Duration)>,
) -> Vec<String> {
    let hook = w.outcome.hook.name();
    let mut evidence = vec![format!(
        "evaluating the ruleset against the packet at {hook} (in {}, out {}): {} → {}",
        w.in_if.as_deref().unwrap_or("-"),
        w.out_if.as_deref().unwrap_or("-"),
        w.outcome.path.join(" → "),
        describe_rule(by)
    )];
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
    evidence
}

/// What the evaluation went without: the verdict holds only for the rules that were read.
fn unread_evidence(rs: &Ruleset) -> Option<String> {
    const SHOWN: usize = 3;
    let (first, rest) = rs.unread.split_at(rs.unread.len().min(SHOWN));
    (!first.is_empty()).then(|| {
        format!(
            "the ruleset was evaluated without what pathtrace could not read: {}{}",
            first.join("; "),
            if rest.is_empty() {
                String::new()
            } else {
                format!(" (and {} more)", rest.len())
            }
        )
    })
}

/// Rules in both iptables backends: the one that dropped does not show in the other's listing.
fn hidden_backend(rs: &Ruleset, by: &RuleRef, ns: &str) -> Option<String> {
    let has = |b: Flavor| rs.tables.iter().any(|t| t.source == Source::Iptables(b));
    let by_source = Source::of_label(&by.table).0;
    if !(has(Flavor::Nft) && has(Flavor::Legacy) && matches!(by_source, Source::Iptables(_))) {
        return None;
    }
    let other = match by_source {
        Source::Iptables(Flavor::Legacy) => "iptables-nft",
        _ => "iptables-legacy",
    };
    Some(format!(
        "netns {ns} has iptables rules in both nf_tables (iptables-nft) and x_tables (iptables-legacy); the kernel runs both, but each `iptables` lists only its own: this rule does not show in `{other} -S`"
    ))
}

/// The code (a drop on a bridge or in the IP hooks), the summary in words, and the fix.
fn summary_and_fix(
    case: &Case<'_>,
    facts: &mut dyn HostFacts,
    netns: u32,
    w: &Walked,
    by: &RuleRef,
    ns: &str,
) -> (&'static str, String, String) {
    let hook = w.outcome.hook.name();
    let target = case
        .target
        .map(|t| format!(" for container {}", t.container.name))
        .unwrap_or_default();
    let tuple = case
        .drop_hop()
        .and_then(|h| h.tuple)
        .or(case.input_hop().and_then(|h| h.tuple));
    let what = tuple.map(|t| format!(" ({t})")).unwrap_or_default();
    let ends = Ends::of(case, facts, netns, tuple);
    let fix = fix_for(
        by,
        tuple,
        &Where {
            container_side: ends.container_side.as_deref(),
            src_container: ends.src.as_deref(),
            dst_container: ends.dst.as_deref(),
            ..w.place()
        },
    );
    let name = case.packet_name();
    match &w.bridged {
        Some(bridge) if w.bridge_family => (
            "bridge_netfilter_drop",
            format!(
                "{name}{target}{what} {} {bridge}, and {} dropped it: {}.",
                match w.outcome.hook {
                    Hook::Prerouting => "entered bridge",
                    Hook::Input => "came in on a port of bridge",
                    Hook::Output | Hook::Postrouting => "was sent to a port by bridge",
                    _ => "was bridged on",
                },
                match ebtables_table(by) {
                    Some((cmd, table)) => format!("{cmd} (table {table})"),
                    None => format!(
                        "the bridge-family nft table {} (where ebtables rules live today)",
                        by.table
                    ),
                },
                rule_words(by)
            ),
            fix,
        ),
        Some(bridge) => (
            "bridge_netfilter_drop",
            format!(
                "{name}{target}{what} was bridged on {bridge}, and because br_netfilter hands bridged IPv4 to iptables (net.bridge.bridge-nf-call-iptables = 1) the {} chain {} dropped it.",
                by.chain,
                rule_words(by)
            ),
            fix,
        ),
        None => (
            NETFILTER_DROP.code,
            format!(
                "{name}{target}{what} was dropped by netfilter at {hook} in netns {ns}: {} {}.",
                by.table,
                rule_words(by)
            ),
            fix,
        ),
    }
}

/// What the host says of a dropped flow's ends: the containers at either end, and the
/// interface the container's address is routed through in the namespace of the drop.
struct Ends {
    src: Option<String>,
    dst: Option<String>,
    container_side: Option<String>,
}

impl Ends {
    fn of(case: &Case<'_>, facts: &mut dyn HostFacts, netns: u32, tuple: Option<Tuple>) -> Self {
        let src = tuple.and_then(|t| facts.container_at(ipv4(t.src)?));
        let dst = tuple.and_then(|t| facts.container_at(ipv4(t.dst)?));
        // The target's address first (the packet may have died before its DNAT), then the
        // flow's DNAT target (a server behind a published port, Docker's or not), then
        // whichever end is a container's.
        let target = case
            .target
            .and_then(|t| t.address.as_deref()?.parse::<std::net::Ipv4Addr>().ok());
        let dnat_to = case
            .flow
            .filter(|f| f.original.dst != f.translated.dst)
            .map(|f| f.translated.dst)
            .or_else(|| {
                let d = case.drop_hop()?;
                let (entered, now) = (d.entered?, d.tuple?);
                (entered.dst != now.dst).then_some(now.dst)
            })
            .and_then(ipv4);
        let container_addrs = target
            .into_iter()
            .chain(dnat_to)
            .chain(tuple.into_iter().flat_map(|t| {
                [
                    dst.as_ref().and_then(|_| ipv4(t.dst)),
                    src.as_ref().and_then(|_| ipv4(t.src)),
                ]
                .into_iter()
                .flatten()
            }));
        let mut container_side = None;
        for addr in container_addrs.collect::<Vec<_>>() {
            if let Some(link) = facts
                .connected_route(netns, addr)
                .filter(|l| !l.is_loopback())
            {
                container_side = Some(link.name);
                break;
            }
        }
        Self {
            src: src.map(|c| c.name),
            dst: dst.map(|c| c.name),
            container_side,
        }
    }
}

/// Where on the bridge the frame was when it was dropped there.
fn bridge_evidence(w: &Walked, ns: &str) -> Option<String> {
    match (&w.bridged, &w.in_if) {
        (Some(bridge), Some(port)) if w.bridge_family => Some(match w.outcome.hook {
            Hook::Prerouting => format!(
                "the frame came in on port {port} of bridge {bridge}: the bridge family's PREROUTING chains see every frame a port brings in, with the port as iifname"
            ),
            Hook::Input => format!(
                "the frame came in on port {port} of bridge {bridge} addressed to the bridge itself (to be routed on, or taken here): the bridge family's INPUT chains see it, with the port as iifname"
            ),
            _ => format!(
                "the frame came in on port {port} of bridge {bridge} and stays on it{}: the bridge family's FORWARD chains see it, with bridge ports as iifname/oifname",
                w.out_if
                    .as_ref()
                    .map(|o| format!(" (headed out of port {o}, the device at the drop)"))
                    .unwrap_or_default()
            ),
        }),
        (Some(bridge), None) if w.bridge_family => Some(format!(
            "bridge {bridge} sent the frame to its port {}: the bridge family's {} chains see it, with the port as oifname",
            w.out_if.as_deref().unwrap_or("?"),
            w.outcome.hook.name()
        )),
        (Some(bridge), _) => Some(format!(
            "the packet came in on a port of bridge {bridge} and stays on it: bridge-nf-call-iptables = 1 in netns {ns}"
        )),
        _ => None,
    }
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
        use super::fix::{Syntax, Where, flow_match};
        let at = Where {
            in_if: Some("veth1"),
            out_if: Some("veth2"),
            ..Where::default()
        };
        let tuple = Some(crate::events::Tuple {
            src: "172.17.0.3".parse().expect("addr"),
            sport: 40000,
            dst: "172.17.0.2".parse().expect("addr"),
            dport: 80,
            proto: Proto::TCP,
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
            proto: Proto::ICMP,
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

    /// The state the ruleset is walked with is conntrack's own where the drop carried its
    /// entry: a SYN a raw `NOTRACK` left untracked dies in a `--ctstate UNTRACKED` rule, which a
    /// SYN assumed NEW would pass (Docker's ACCEPT for its port would take it instead).
    #[test]
    fn a_drop_is_walked_with_the_state_conntrack_gave_it() {
        let rs = || {
            Ruleset::parse(&DOCKER.replace(
                "[0:0] -A DOCKER-USER -j RETURN",
                "[1:60] -A DOCKER-USER -m conntrack --ctstate UNTRACKED -j DROP\n[0:0] -A DOCKER-USER -j RETURN",
            ))
            .unwrap()
        };
        let untracked = |h: &mut crate::events::Hop| {
            h.conntrack = Some(crate::events::CtView {
                state: crate::net::CtState::Untracked,
                reply: false,
                status: crate::net::CtStatus::default(),
                mark: 0,
                zone: 0,
                tuples: None,
            });
        };
        let d = lone_netfilter_drop(rs(), true, untracked).expect("diagnosed");
        let rule = d.rule.clone().expect("rule");
        assert_eq!(
            (rule.chain.as_str(), rule.index),
            ("DOCKER-USER", Some(1)),
            "{d:#?}"
        );
        let assumed = lone_netfilter_drop(rs(), true, |_| {});
        assert!(
            assumed
                .and_then(|d| d.rule)
                .is_none_or(|r| (r.chain.as_str(), r.index) != ("DOCKER-USER", Some(1))),
            "without the entry the SYN is assumed NEW and passes that rule"
        );
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

    /// A ruleset that could not be read is said as such, not as a namespace without rules.
    #[test]
    fn an_unreadable_ruleset_is_named_in_the_evidence() {
        let mut host = FakeHost::lab_with_docker();
        host.unreadable_rulesets
            .insert(HOST_NS, "iptables-nft-save: Permission denied".into());
        let r = report(&mut host, dropped_at(12, true, HOST_NS, 2));
        let d = r.diagnosis.expect("diagnosed");
        assert_eq!(d.code, "netfilter_drop");
        assert_eq!(d.confidence, crate::diagnose::Confidence::Low);
        assert!(
            d.evidence.iter().any(|e| e
                == &format!("cannot read the ruleset of netns {HOST_NS}: iptables-nft-save: Permission denied: the rule that dropped it cannot be named")),
            "{:?}",
            d.evidence
        );
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

    /// A container's outbound SYN (to a database on the uplink's subnet) rejected by firewalld,
    /// its bridge named like nothing Docker makes: the fix puts the bridge the container's
    /// address is routed through in the trusted zone, never the uplink it was leaving by.
    #[test]
    fn a_firewalld_fix_names_the_containers_bridge_never_the_uplink() {
        const FIREWALLD: &str = include_str!("../../../test_data/nft_firewalld.json");
        let mut host = FakeHost::lab_with_docker();
        if let Some(l) = host.links.get_mut(&(HOST_NS, 3)) {
            l.name = "virbr7".into();
        }
        let rs = crate::ruleset::nft::parse(FIREWALLD, &[]).expect("parses");
        host.rulesets.insert(HOST_NS, Arc::new(rs));
        let outbound = |kind, ts| {
            let mut e = ev(kind, ts, HOST_NS, 3);
            e.saddr = tracer_common::event::Addr::v4([172, 17, 0, 2]);
            e.daddr = tracer_common::event::Addr::v4([203, 0, 113, 50]);
            e.dport = 5432;
            e
        };
        let mut drop = outbound(HopKind::Drop, 3_000);
        drop.drop_reason = 12;
        let hops = vec![hop(outbound(HopKind::Receive, 2_000)), hop(drop)];
        let fix = |host: &mut FakeHost| {
            let r = report(host, hops.clone());
            let d = r.diagnosis.expect("diagnosed");
            assert_eq!(
                d.rule.as_ref().map(|r| r.table.as_str()),
                Some("inet firewalld")
            );
            d.fix.unwrap_or_default()
        };
        let f = fix(&mut host);
        assert!(
            f.contains("firewall-cmd --permanent --zone=trusted --change-interface=virbr7 "),
            "{f}"
        );
        assert!(!f.contains("=eth0"), "{f}");
        // Nobody knows the address: a placeholder, said as such, not a guess.
        host.published.clear();
        let f = fix(&mut host);
        assert!(
            f.contains("--change-interface=<the bridge or veth of the container's network>"),
            "{f}"
        );
        assert!(f.contains("could not tell"), "{f}");
        assert!(!f.contains("=eth0"), "{f}");
    }

    /// A SYN from a container on a user-defined network to one on Docker's default bridge,
    /// dropped by Docker's isolation: named as isolation, and fixed at Docker's level.
    #[test]
    fn dockers_network_isolation_is_fixed_with_docker_not_by_deleting_its_rule() {
        let mut host = FakeHost::lab_with_docker();
        host.links.insert(
            (HOST_NS, 9),
            crate::host::Link {
                ifindex: 9,
                name: "br-5e1f0a9c2d3b".into(),
                kind: "bridge".into(),
                ..Default::default()
            },
        );
        host.subnets
            .push((HOST_NS, std::net::Ipv4Addr::new(172, 23, 0, 0), 16, 9));
        host.addressed.insert(
            std::net::Ipv4Addr::new(172, 23, 0, 4),
            crate::host::ContainerRef {
                id: "abcdefabcdef".into(),
                name: "api".into(),
                image: "api:3".into(),
            },
        );
        let text = DOCKER
            .replace(
                "[2:120] -A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2",
                "[2:120] -A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2\n[1:60] -A DOCKER-ISOLATION-STAGE-1 -i br-5e1f0a9c2d3b ! -o br-5e1f0a9c2d3b -j DOCKER-ISOLATION-STAGE-2",
            );
        host.rulesets
            .insert(HOST_NS, Arc::new(Ruleset::parse(&text).unwrap()));
        let from_api = |kind, ts| {
            let mut e = ev(kind, ts, HOST_NS, 9);
            e.saddr = tracer_common::event::Addr::v4([172, 23, 0, 4]);
            e.daddr = tracer_common::event::Addr::v4([172, 17, 0, 2]);
            e.dport = 80;
            e
        };
        let mut drop = from_api(HopKind::Drop, 3_000);
        drop.drop_reason = 12;
        let r = report(
            &mut host,
            vec![hop(from_api(HopKind::Receive, 2_000)), hop(drop)],
        );
        let d = r.diagnosis.expect("diagnosed");
        let rule = d.rule.clone().expect("rule");
        assert_eq!(
            (rule.chain.as_str(), rule.index),
            ("DOCKER-ISOLATION-STAGE-2", Some(1))
        );
        let fix = d.fix.unwrap_or_default();
        assert!(
            fix.starts_with("docker network connect bridge api "),
            "{fix}"
        );
        assert!(fix.contains("isolates its networks"), "{fix}");
        assert!(fix.contains("api to reach web-1"), "{fix}");
        assert!(
            !fix.contains(" -D "),
            "Docker's own rule is not deleted: {fix}"
        );
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
