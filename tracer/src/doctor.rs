//! `pathtrace doctor`: the diagnosis rules run statically on the host's configuration, with
//! no eBPF: per-interface forwarding, rp_filter, br_netfilter, nat chain order that shadows a
//! DNAT, and FORWARD rules that drop a published port. Each finding is a [`Diagnosis`] with
//! the same codes a trace gives.

use std::net::Ipv4Addr;

use crate::{
    diagnose::{
        Confidence, Diagnosis, describe_rule,
        netfilter::{Where, fix_for},
        ruleset::{CtState, Hook, PacketAtHook, Ruleset, Verdict},
    },
    events::Tuple,
    resolve::{LinkTable, Published},
};

/// A port to check: published by Docker, or given with `--dport`.
#[derive(Clone, Debug)]
pub struct PortCheck {
    pub port: u16,
    pub proto: u8,
    pub published: Option<Published>,
}

/// Reads a sysctl by its dotted name.
pub type SysctlReader = Box<dyn Fn(&str) -> Option<String>>;

/// What the doctor reads: the namespace's links, sysctls and ruleset.
pub struct HostConfig {
    pub links: LinkTable,
    pub sysctl: SysctlReader,
    pub ruleset: Option<Ruleset>,
}

/// Runs every static check; findings, worst first.
pub fn examine(host: &HostConfig, ports: &[PortCheck]) -> Vec<Diagnosis> {
    let mut out = Vec::new();
    forwarding(host, ports, &mut out);
    rp_filter(host, &mut out);
    if let Some(rs) = &host.ruleset {
        for p in ports {
            published_port(host, rs, p, &mut out);
        }
        bridges(host, rs, &mut out);
    }
    out.sort_by_key(|d| std::cmp::Reverse(d.confidence));
    out
}

fn finding(
    code: &'static str,
    summary: String,
    evidence: Vec<String>,
    fix: String,
    confidence: Confidence,
) -> Diagnosis {
    Diagnosis {
        code,
        summary,
        evidence,
        fix: Some(fix),
        confidence,
        rule: None,
    }
}

/// Interfaces other than loopback.
fn interfaces(host: &HostConfig) -> Vec<&crate::resolve::Link> {
    let mut v: Vec<_> = host
        .links
        .links
        .values()
        .filter(|l| l.name != "lo")
        .collect();
    v.sort_by_key(|l| l.ifindex);
    v
}

fn forwarding(host: &HostConfig, ports: &[PortCheck], out: &mut Vec<Diagnosis>) {
    let ip_forward = (host.sysctl)("net.ipv4.ip_forward");
    let needs_forwarding =
        !ports.is_empty() || host.links.links.values().any(|l| l.kind == "bridge");
    if ip_forward.as_deref() == Some("0") {
        if needs_forwarding {
            out.push(finding(
                "forwarding_disabled",
                "IP forwarding is off (net.ipv4.ip_forward = 0): traffic to containers and published ports cannot be routed.".into(),
                vec!["net.ipv4.ip_forward = 0".into()],
                "sysctl -w net.ipv4.ip_forward=1".into(),
                Confidence::High,
            ));
        }
        return;
    }
    for l in interfaces(host) {
        let key = format!("net.ipv4.conf.{}.forwarding", l.name);
        if (host.sysctl)(&key).as_deref() == Some("0") {
            out.push(finding(
                "forwarding_disabled",
                format!(
                    "Forwarding is disabled on {} although net.ipv4.ip_forward = 1: packets arriving on {} for containers are dropped at ip_error, without an ICMP error.",
                    l.name, l.name
                ),
                vec![format!("{key} = 0"), "net.ipv4.ip_forward = 1".into()],
                format!("sysctl -w {key}=1"),
                Confidence::High,
            ));
        }
    }
}

fn rp_filter(host: &HostConfig, out: &mut Vec<Diagnosis>) {
    let all = (host.sysctl)("net.ipv4.conf.all.rp_filter").unwrap_or_default();
    for l in interfaces(host) {
        let key = format!("net.ipv4.conf.{}.rp_filter", l.name);
        let own = (host.sysctl)(&key).unwrap_or_default();
        if all == "1" || own == "1" {
            out.push(finding(
                "rp_filter",
                format!(
                    "Strict reverse path filtering applies on {}: packets whose source is not routed back out {} are dropped (asymmetric routes, extra client addresses).",
                    l.name, l.name
                ),
                vec![format!("net.ipv4.conf.all.rp_filter = {all}, {key} = {own}: the kernel uses the larger")],
                format!("sysctl -w {key}=2   # loose, if traffic legitimately arrives asymmetrically"),
                Confidence::Low,
            ));
        }
    }
}

/// The first local, non-bridge, non-veth address: where outside clients arrive.
fn uplinks(host: &HostConfig) -> Vec<(String, Ipv4Addr)> {
    let mut v = Vec::new();
    for (idx, addr, _) in &host.links.addrs {
        let Some(l) = host.links.links.get(idx) else {
            continue;
        };
        if l.name == "lo" || l.kind == "bridge" || l.master.is_some() || addr.is_loopback() {
            continue;
        }
        v.push((l.name.clone(), *addr));
    }
    v
}

fn published_port(host: &HostConfig, rs: &Ruleset, p: &PortCheck, out: &mut Vec<Diagnosis>) {
    let dnats = rs.dnat_rules_for(p.proto, p.port);
    let local_addrs: Vec<Ipv4Addr> = host.links.addrs.iter().map(|(_, a, _)| *a).collect();
    for (uplink, addr) in uplinks(host) {
        let pkt = PacketAtHook {
            src: Ipv4Addr::new(198, 51, 100, 200),
            dst: addr,
            proto: p.proto,
            sport: 40000,
            dport: p.port,
            tcp_flags: 0x02,
            in_if: Some(uplink.clone()),
            out_if: None,
            physdev_in: None,
            physdev_out: None,
            ct_state: CtState::New,
            local_addrs: local_addrs.clone(),
        };
        let pre = rs.evaluate(Hook::Prerouting, &pkt);
        let Some((to, to_port)) = pre.dnat else {
            if let Some(d) = dnats.first() {
                let shadow = pre.by.clone().filter(|r| r.in_iptables_nat());
                let mut evidence =
                    vec![format!("the DNAT that would not run: {}", describe_rule(d))];
                if let Some(s) = &shadow {
                    evidence.push(format!(
                        "nat PREROUTING decides first: {}",
                        describe_rule(s)
                    ));
                }
                out.push(Diagnosis {
                    code: "dnat_skipped",
                    summary: format!(
                        "A client reaching {addr}:{} on {uplink} would not be DNATed{}: nat PREROUTING {} before the DNAT in {}.",
                        p.port,
                        p.published.as_ref().map(|x| format!(" to container {}", x.container.name)).unwrap_or_default(),
                        shadow.as_ref().map_or("ends".into(), |s| format!("rule {} accepts it", s.index.unwrap_or(0))),
                        d.chain
                    ),
                    evidence,
                    fix: Some(if d.chain == "DOCKER" {
                        "iptables -t nat -I PREROUTING 1 -m addrtype --dst-type LOCAL -j DOCKER".into()
                    } else {
                        format!("iptables-save -t nat   # move the jump to {} ahead of what accepts first", d.chain)
                    }),
                    confidence: if shadow.is_some() { Confidence::High } else { Confidence::Medium },
                    rule: shadow,
                });
            }
            continue;
        };
        let out_if = host.links.connected_route(to).map(|l| l.name.clone());
        let fwd_pkt = PacketAtHook {
            dst: to,
            dport: to_port.unwrap_or(p.port),
            out_if: out_if.clone(),
            ..pkt.clone()
        };
        let fwd = rs.evaluate(Hook::Forward, &fwd_pkt);
        if fwd.verdict != Verdict::Accept {
            let Some(by) = fwd.by.clone() else { continue };
            let tuple = Tuple {
                src: fwd_pkt.src,
                sport: fwd_pkt.sport,
                dst: to,
                dport: fwd_pkt.dport,
                proto: p.proto,
            };
            let place = Where {
                in_if: Some(&uplink),
                out_if: out_if.as_deref(),
                path: &fwd.path,
            };
            let fix = fix_for(&by, Some(tuple), &place);
            out.push(Diagnosis {
                code: "netfilter_drop",
                summary: format!(
                    "Port {} is DNATed to {to}:{}, but FORWARD drops it coming in on {uplink}: {}.",
                    p.port,
                    fwd_pkt.dport,
                    describe_rule(&by)
                ),
                evidence: vec![format!("chains walked: {}", fwd.path.join(" → "))],
                fix: Some(fix),
                confidence: if fwd.unknown_matches.is_empty() {
                    Confidence::High
                } else {
                    Confidence::Medium
                },
                rule: Some(by),
            });
        }
    }
}

fn bridges(host: &HostConfig, rs: &Ruleset, out: &mut Vec<Diagnosis>) {
    if (host.sysctl)("net.bridge.bridge-nf-call-iptables").as_deref() != Some("1") {
        return;
    }
    for (idx, addr, len) in &host.links.addrs {
        let Some(bridge) = host.links.links.get(idx).filter(|l| l.kind == "bridge") else {
            continue;
        };
        let base = u32::from(*addr) & u32::MAX.checked_shl(32 - *len as u32).unwrap_or(0);
        let (a, b) = (Ipv4Addr::from(base + 2), Ipv4Addr::from(base + 3));
        let pkt = PacketAtHook {
            src: a,
            dst: b,
            proto: 6,
            sport: 40000,
            dport: 80,
            tcp_flags: 0x02,
            in_if: Some(bridge.name.clone()),
            out_if: Some(bridge.name.clone()),
            physdev_in: None,
            physdev_out: None,
            ct_state: CtState::New,
            local_addrs: vec![*addr],
        };
        let fwd = rs.evaluate(Hook::Forward, &pkt);
        if fwd.verdict == Verdict::Accept {
            continue;
        }
        let Some(by) = fwd.by.clone() else { continue };
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
            evidence: vec![describe_rule(&by), format!("chains walked: {}", fwd.path.join(" → "))],
            fix: Some(fix_for(
                &by,
                None,
                &Where {
                    in_if: Some(&bridge.name),
                    out_if: Some(&bridge.name),
                    path: &fwd.path,
                },
            )),
            confidence: Confidence::Medium,
            rule: Some(by),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::resolve::Link;

    const DOCKER: &str = include_str!("../test_data/iptables_docker.txt");

    fn host(rules: &str, sysctls: &[(&str, &str)]) -> HostConfig {
        let mut links = HashMap::new();
        for (idx, name, kind) in [(1, "lo", ""), (2, "eth0", "veth"), (3, "docker0", "bridge")] {
            links.insert(
                idx,
                Link {
                    ifindex: idx,
                    name: name.into(),
                    kind: kind.into(),
                    ..Link::default()
                },
            );
        }
        let table = LinkTable {
            links,
            addrs: vec![
                (1, Ipv4Addr::LOCALHOST, 8),
                (2, Ipv4Addr::new(203, 0, 113, 1), 24),
                (3, Ipv4Addr::new(172, 17, 0, 1), 16),
            ],
        };
        let map: HashMap<String, String> = sysctls
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        HostConfig {
            links: table,
            sysctl: Box::new(move |k| map.get(k).cloned()),
            ruleset: Ruleset::parse(rules).ok(),
        }
    }

    fn port() -> Vec<PortCheck> {
        vec![PortCheck {
            port: 10001,
            proto: 6,
            published: None,
        }]
    }

    #[test]
    fn healthy_docker_host_has_no_findings() {
        let h = host(
            DOCKER,
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.eth0.forwarding", "1"),
            ],
        );
        assert_eq!(examine(&h, &port()), vec![]);
    }

    #[test]
    fn flags_forwarding_off_on_one_interface() {
        let h = host(
            DOCKER,
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.eth0.forwarding", "0"),
            ],
        );
        let f = examine(&h, &port());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].code, "forwarding_disabled");
        assert_eq!(
            f[0].fix.as_deref(),
            Some("sysctl -w net.ipv4.conf.eth0.forwarding=1")
        );
    }

    #[test]
    fn flags_a_shadowed_dnat_and_a_missing_forward_accept() {
        let shadowed = DOCKER.replace(
            "[5:300] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
            "-A PREROUTING -p tcp -m multiport --dports 10001 -j ACCEPT\n-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        );
        let f = examine(&host(&shadowed, &[("net.ipv4.ip_forward", "1")]), &port());
        assert_eq!(f[0].code, "dnat_skipped", "{f:#?}");
        assert_eq!(f[0].rule.as_ref().and_then(|r| r.index), Some(1));

        let no_accept = DOCKER.replace(
            "[3:180] -A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT\n",
            "",
        );
        let f = examine(&host(&no_accept, &[("net.ipv4.ip_forward", "1")]), &port());
        assert_eq!(f[0].code, "netfilter_drop", "{f:#?}");
        assert_eq!(
            f[0].fix.as_deref(),
            Some(
                "iptables -t filter -I DOCKER-USER -i eth0 -o docker0 -p tcp --dport 80 -j ACCEPT"
            )
        );
    }

    #[test]
    fn flags_same_bridge_drops_through_br_netfilter() {
        let icc = DOCKER.replace(
            "[12:720] -A FORWARD -j DOCKER-USER",
            "-A FORWARD -i docker0 -o docker0 -j DROP\n[12:720] -A FORWARD -j DOCKER-USER",
        );
        let f = examine(
            &host(
                &icc,
                &[
                    ("net.ipv4.ip_forward", "1"),
                    ("net.bridge.bridge-nf-call-iptables", "1"),
                ],
            ),
            &port(),
        );
        assert!(
            f.iter().any(|d| d.code == "bridge_netfilter_drop"),
            "{f:#?}"
        );
    }
}
