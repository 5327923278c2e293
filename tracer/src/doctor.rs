//! `pathtrace doctor`: the diagnosis rules' static side over this namespace's configuration,
//! with no eBPF: per-interface forwarding, rp_filter, nat chain order that shadows a DNAT,
//! FORWARD rules that drop a published port, br_netfilter. The findings are the same
//! [`Diagnosis`] values, from the same [`crate::diagnose::RULES`], as a trace gives.

use std::net::Ipv4Addr;

use crate::{
    diagnose::{Diagnosis, PortCheck, Premises, examine},
    host::{HostFacts, LinkTable, Unreadable},
    net::Proto,
    resolve::{Resolver, SharedIndex, docker, netns},
};

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error(
        "pathtrace doctor reads the iptables and nft rulesets, which needs CAP_NET_ADMIN (root): run it with sudo"
    )]
    Privileges,
    #[error("cannot tell which network namespace pathtrace runs in (/proc/self/ns/net)")]
    OwnNamespace,
    #[error("listing interfaces (rtnetlink): {0}")]
    Links(std::io::Error),
}

/// What the doctor checked and found.
#[derive(Debug)]
pub struct Checkup {
    pub ports: Vec<PortCheck>,
    /// How Docker answered, or why it was not asked.
    pub docker: String,
    /// A ruleset was found to evaluate (iptables, ebtables or nft), or why none could be read.
    pub ruleset: Result<bool, Unreadable>,
    /// The packets judged: `tcp 198.51.100.200:40000 → 203.0.113.1:10001 in on eth0`.
    pub judged: Vec<String>,
    /// What could not be checked, and why: a listing that failed or is missing, a line that
    /// did not parse. Not empty: the checkup is incomplete.
    pub unchecked: Vec<String>,
    pub findings: Vec<Diagnosis>,
}

/// Whether this process may read rulesets: CAP_NET_ADMIN in its effective set.
fn may_read_rulesets() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_owned();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// Examines the namespace pathtrace runs in: `port` (a port number and IP protocol) when
/// given, else every port Docker publishes, each judged for a first packet from `client`.
pub async fn run(
    port: Option<(u16, Proto)>,
    client: (Ipv4Addr, u16),
) -> Result<Checkup, DoctorError> {
    // Without it every listing fails and the checkup would find nothing for want of looking.
    if !may_read_rulesets() {
        return Err(DoctorError::Privileges);
    }
    let netns = netns::own_inode().ok_or(DoctorError::OwnNamespace)?;
    let links = LinkTable::dump_here().map_err(DoctorError::Links)?;
    let index = SharedIndex::default();
    let (ports, docker) = match port {
        Some((port, proto)) => (
            vec![PortCheck {
                port,
                proto,
                published: None,
            }],
            "not used (--dport given)".to_owned(),
        ),
        None => {
            let status = match docker::socket_path() {
                Ok(socket) => docker::initial(&index, &socket).await,
                Err(e) => docker::DockerStatus::Unavailable(e.to_string()),
            };
            (published_ports(&index), status.to_string())
        }
    };
    let mut facts = Resolver::without_symbols().with_containers(index);
    let premises = Premises {
        netns,
        links,
        ports,
        client,
    };
    let findings = examine(&premises, &mut facts);
    let ruleset = facts.ruleset(netns);
    let unchecked = match &ruleset {
        Ok(Some(rs)) => rs.unread.clone(),
        Ok(None) => Vec::new(),
        Err(u) => vec![u.to_string()],
    };
    Ok(Checkup {
        ruleset: ruleset.map(|rs| rs.is_some()),
        judged: premises.judged(),
        ports: premises.ports,
        docker,
        unchecked,
        findings,
    })
}

/// Every port Docker publishes, as a check.
fn published_ports(index: &SharedIndex) -> Vec<PortCheck> {
    let Ok(index) = index.read() else {
        return Vec::new();
    };
    index
        .published
        .iter()
        .map(|p| PortCheck {
            port: p.host_port,
            proto: p.proto,
            published: Some(p.clone()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::net::Proto;
    use std::{collections::HashMap, net::Ipv4Addr, sync::Arc};

    use crate::{
        diagnose::{PortCheck, Premises, examine},
        host::{Link, LinkTable, fixture::FakeHost},
        ruleset::Ruleset,
    };

    const DOCKER: &str = include_str!("../test_data/iptables_docker.txt");
    const NS: u32 = 1;

    /// A Docker host seen from its own namespace: lo, eth0 (uplink), docker0.
    fn host(rules: &str, sysctls: &[(&str, &str)]) -> (Premises, FakeHost) {
        let mut h = FakeHost::default();
        let mut links = HashMap::new();
        for (idx, name, kind) in [(1, "lo", ""), (2, "eth0", "veth"), (3, "docker0", "bridge")] {
            let link = Link {
                ifindex: idx,
                name: name.into(),
                kind: kind.into(),
                ..Link::default()
            };
            h.links.insert((NS, idx), link.clone());
            links.insert(idx, link);
        }
        let addrs = vec![
            (1, Ipv4Addr::LOCALHOST, 8),
            (2, Ipv4Addr::new(203, 0, 113, 1), 24),
            (3, Ipv4Addr::new(172, 17, 0, 1), 16),
        ];
        for (idx, addr, len) in &addrs {
            h.local.push((NS, *addr));
            h.subnets.push((NS, *addr, *len, *idx));
        }
        for (k, v) in sysctls {
            h.set_sysctl(NS, k, v);
        }
        if let Ok(rs) = Ruleset::parse(rules) {
            h.rulesets.insert(NS, Arc::new(rs));
        }
        let premises = Premises {
            netns: NS,
            links: LinkTable { links, addrs },
            ports: port(),
            client: crate::diagnose::CLIENT,
        };
        (premises, h)
    }

    fn port() -> Vec<PortCheck> {
        vec![PortCheck {
            port: 10001,
            proto: Proto::TCP,
            published: None,
        }]
    }

    fn run((premises, mut facts): (Premises, FakeHost)) -> Vec<crate::diagnose::Diagnosis> {
        examine(&premises, &mut facts)
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
        assert_eq!(run(h), vec![]);
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
        let f = run(h);
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
        let f = run(host(&shadowed, &[("net.ipv4.ip_forward", "1")]));
        assert_eq!(f[0].code, "dnat_skipped", "{f:#?}");
        assert_eq!(f[0].rule.as_ref().and_then(|r| r.index), Some(1));

        let no_accept = DOCKER.replace(
            "[3:180] -A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT\n",
            "",
        );
        let f = run(host(&no_accept, &[("net.ipv4.ip_forward", "1")]));
        assert_eq!(f[0].code, "netfilter_drop", "{f:#?}");
        assert_eq!(
            f[0].fix.as_deref(),
            Some(
                "iptables -t filter -I DOCKER-USER -i eth0 -o docker0 -p tcp --dport 80 -j ACCEPT"
            )
        );
    }

    /// `-p 192.0.2.9:7790:80`: Docker DNATs only that address. The doctor judges the port
    /// there (and says so), not at the uplink's other address, where no DNAT is meant to run.
    #[test]
    fn a_port_published_on_one_address_is_judged_there_only() {
        let rules = DOCKER.replace(
            "[3:180] -A DOCKER ! -i docker0 -p tcp -m tcp --dport 10001 -j DNAT --to-destination 172.17.0.2:80",
            "[3:180] -A DOCKER -d 192.0.2.9/32 ! -i docker0 -p tcp -m tcp --dport 7790 -j DNAT --to-destination 172.17.0.2:80",
        );
        let (mut premises, facts) = host(&rules, &[("net.ipv4.ip_forward", "1")]);
        premises
            .links
            .addrs
            .push((2, Ipv4Addr::new(192, 0, 2, 9), 24));
        let web = crate::host::ContainerRef {
            id: "0123456789ab".into(),
            name: "web".into(),
            image: "httpd".into(),
        };
        let published = |host_ip| crate::host::Published {
            container: web.clone(),
            host_ip,
            host_port: 7790,
            proto: Proto::TCP,
            container_addr: Some(Ipv4Addr::new(172, 17, 0, 2)),
            container_port: 80,
        };
        premises.ports = vec![PortCheck {
            port: 7790,
            proto: Proto::TCP,
            published: Some(published(Some(Ipv4Addr::new(192, 0, 2, 9)))),
        }];
        premises.client = (Ipv4Addr::new(192, 0, 2, 77), 51000);
        assert_eq!(
            premises.judged(),
            ["tcp 192.0.2.77:51000 → 192.0.2.9:7790 in on eth0 (published to container web)"]
        );
        let mut facts = facts;
        assert_eq!(examine(&premises, &mut facts), vec![]);
        // Judged on every address, the uplink's own would wrongly look skipped.
        premises.ports[0].published = Some(published(None));
        let f = examine(&premises, &mut facts);
        assert_eq!(f.first().map(|d| d.code), Some("dnat_skipped"), "{f:#?}");
    }

    #[test]
    fn flags_same_bridge_drops_through_br_netfilter() {
        let icc = DOCKER.replace(
            "[12:720] -A FORWARD -j DOCKER-USER",
            "-A FORWARD -i docker0 -o docker0 -j DROP\n[12:720] -A FORWARD -j DOCKER-USER",
        );
        let f = run(host(
            &icc,
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.bridge.bridge-nf-call-iptables", "1"),
            ],
        ));
        assert!(
            f.iter().any(|d| d.code == "bridge_netfilter_drop"),
            "{f:#?}"
        );
    }
}
