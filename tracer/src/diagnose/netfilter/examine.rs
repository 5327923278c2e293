//! The netfilter rules judged from the ruleset alone (`pathtrace doctor`): a synthetic SYN
//! from outside to each published port, arriving on each uplink, walked through PREROUTING
//! (is it DNATed?) and FORWARD (is it let through?); and traffic between two addresses of a
//! bridge's subnet through FORWARD when br_netfilter hands bridged frames to iptables.

use std::net::Ipv4Addr;

use super::{
    DNAT_SKIPPED, NETFILTER_DROP,
    fix::{Where, fix_for},
};
use crate::{
    diagnose::{Confidence, Diagnosis, PortCheck, Premises, describe_rule, sysctl_is},
    events::Tuple,
    host::HostFacts,
    net::{Proto, TcpFlags},
    ruleset::{CtState, Hook, HookOutcome, PacketAtHook, RuleVerdict, Ruleset},
};

/// A new TCP SYN (or first UDP datagram) from the premises' client to `addr:port`, arriving
/// on `uplink`.
fn first_packet(p: &Premises, port: &PortCheck, uplink: &str, addr: Ipv4Addr) -> PacketAtHook {
    PacketAtHook {
        src: p.client.0,
        dst: addr,
        proto: port.proto,
        sport: p.client.1,
        dport: port.port,
        tcp_flags: TcpFlags::SYN,
        in_if: Some(uplink.to_owned()),
        out_if: None,
        physdev_in: None,
        physdev_out: None,
        ct_state: CtState::New,
        local_addrs: p.local_addrs(),
    }
}

/// Every (port, uplink, address, PREROUTING outcome) the premises give.
fn arrivals<'p>(
    p: &'p Premises,
    rs: &Ruleset,
) -> Vec<(&'p PortCheck, String, Ipv4Addr, PacketAtHook, HookOutcome)> {
    let mut out = Vec::new();
    for a in p.arrivals() {
        let pkt = first_packet(p, a.port, &a.uplink, a.addr);
        let pre = rs.evaluate(Hook::Prerouting, &pkt);
        out.push((a.port, a.uplink, a.addr, pkt, pre));
    }
    out
}

/// A published port whose DNAT exists but would not run for a client on an uplink.
pub(super) fn dnat_skipped(p: &Premises, facts: &mut dyn HostFacts) -> Vec<Diagnosis> {
    let Ok(Some(rs)) = facts.ruleset(p.netns) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (port, uplink, addr, _, pre) in arrivals(p, &rs) {
        if pre.dnat.is_some() {
            continue;
        }
        let dnats = rs.dnat_rules_for(port.proto, port.port);
        let Some(d) = dnats.first() else { continue };
        let shadow = pre.by.clone().filter(|r| r.in_iptables_nat());
        let mut evidence = vec![format!("the DNAT that would not run: {}", describe_rule(d))];
        if let Some(s) = &shadow {
            evidence.push(format!(
                "nat PREROUTING decides first: {}",
                describe_rule(s)
            ));
        }
        out.push(Diagnosis {
            code: DNAT_SKIPPED.code,
            summary: format!(
                "A client reaching {addr}:{} on {uplink} would not be DNATed{}: nat PREROUTING {} before the DNAT in {}.",
                port.port,
                port.published
                    .as_ref()
                    .map(|x| format!(" to container {}", x.container.name))
                    .unwrap_or_default(),
                shadow.as_ref().map_or("ends".into(), |s| format!(
                    "rule {} accepts it",
                    s.index.unwrap_or(0)
                )),
                d.chain
            ),
            evidence,
            fix: Some(if d.chain == "DOCKER" {
                "iptables -t nat -I PREROUTING 1 -m addrtype --dst-type LOCAL -j DOCKER".into()
            } else {
                format!(
                    "iptables-save -t nat   # move the jump to {} ahead of what accepts first",
                    d.chain
                )
            }),
            confidence: if shadow.is_some() {
                Confidence::High
            } else {
                Confidence::Medium
            },
            rule: shadow,
        });
    }
    out
}

/// A published port that is DNATed but dropped in FORWARD, and same-bridge traffic dropped
/// in FORWARD through br_netfilter.
pub(super) fn netfilter_drop(p: &Premises, facts: &mut dyn HostFacts) -> Vec<Diagnosis> {
    let Ok(Some(rs)) = facts.ruleset(p.netns) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (port, uplink, _, pkt, pre) in arrivals(p, &rs) {
        let Some((to, to_port)) = pre.dnat else {
            continue;
        };
        let out_if = facts.connected_route(p.netns, to).map(|l| l.name);
        let fwd_pkt = PacketAtHook {
            dst: to,
            dport: to_port.unwrap_or(port.port),
            out_if: out_if.clone(),
            ..pkt
        };
        let fwd = rs.evaluate(Hook::Forward, &fwd_pkt);
        if fwd.verdict == RuleVerdict::Accept {
            continue;
        }
        let Some(by) = fwd.by.clone() else { continue };
        let tuple = Tuple {
            src: fwd_pkt.src.into(),
            sport: fwd_pkt.sport,
            dst: to.into(),
            dport: fwd_pkt.dport,
            proto: port.proto,
        };
        let place = Where {
            in_if: Some(&uplink),
            out_if: out_if.as_deref(),
            path: &fwd.path,
            // The route to the DNAT's target is the container's side.
            container_side: out_if.as_deref(),
            ..Where::default()
        };
        out.push(Diagnosis {
            code: NETFILTER_DROP.code,
            summary: format!(
                "Port {} is DNATed to {to}:{}, but FORWARD drops it coming in on {uplink}: {}.",
                port.port,
                fwd_pkt.dport,
                describe_rule(&by)
            ),
            evidence: vec![format!("chains walked: {}", fwd.path.join(" → "))],
            fix: Some(fix_for(&by, Some(tuple), &place)),
            confidence: if fwd.unknown_matches.is_empty() {
                Confidence::High
            } else {
                Confidence::Medium
            },
            rule: Some(by),
        });
    }
    if sysctl_is(facts, p.netns, "net.bridge.bridge-nf-call-iptables", "1") {
        out.extend(bridged_drops(p, &rs));
    }
    out
}

/// Two addresses of each bridge's subnet talking through FORWARD (br_netfilter).
fn bridged_drops(p: &Premises, rs: &Ruleset) -> Vec<Diagnosis> {
    let mut out = Vec::new();
    for (idx, addr, len) in &p.links.addrs {
        let Some(bridge) = p.links.links.get(idx).filter(|l| l.kind == "bridge") else {
            continue;
        };
        let base = u32::from(*addr) & u32::MAX.checked_shl(32 - *len as u32).unwrap_or(0);
        let pkt = PacketAtHook {
            src: Ipv4Addr::from(base + 2),
            dst: Ipv4Addr::from(base + 3),
            proto: Proto::TCP,
            sport: p.client.1,
            dport: 80,
            tcp_flags: TcpFlags::SYN,
            in_if: Some(bridge.name.clone()),
            out_if: Some(bridge.name.clone()),
            physdev_in: None,
            physdev_out: None,
            ct_state: CtState::New,
            local_addrs: vec![*addr],
        };
        let fwd = rs.evaluate(Hook::Forward, &pkt);
        if fwd.verdict == RuleVerdict::Accept {
            continue;
        }
        let Some(by) = fwd.by.clone() else { continue };
        let place = Where {
            in_if: Some(&bridge.name),
            out_if: Some(&bridge.name),
            path: &fwd.path,
            container_side: Some(&bridge.name),
            ..Where::default()
        };
        out.push(Diagnosis {
            code: "bridge_netfilter_drop",
            summary: format!(
                "Traffic between containers on {} goes through iptables FORWARD (net.bridge.bridge-nf-call-iptables = 1) and {}.",
                bridge.name,
                match by.index {
                    Some(i) => format!("{} rule {i} drops it", by.chain),
                    None => format!("the {} policy drops it", by.chain),
                }
            ),
            evidence: vec![
                describe_rule(&by),
                format!("chains walked: {}", fwd.path.join(" → ")),
            ],
            fix: Some(fix_for(&by, None, &place)),
            confidence: Confidence::Medium,
            rule: Some(by),
        });
    }
    out
}
