//! Lab scenarios: a topology, a fault, and what pathtrace must say about the SYN of one client
//! connect. The host integration tests and the VM lab (`ptlab` inside the guest) run these same
//! definitions.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::{
    Fault, Lab, LabConfig,
    tracer::{Tracer, transcript},
};

/// What a scenario expects of the SYN's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub outcome: &'static str,
    pub drop_reason: Option<&'static str>,
    pub code: Option<&'static str>,
}

/// Who opens the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// The outside host, to the published port.
    Outside,
    /// The outside host from a source address the host cannot route back to.
    OutsideUnroutable,
    /// A second container on the same bridge, straight to the container's port.
    Peer,
    /// The outside host over IPv6, straight to the container's IPv6 address and port (a
    /// dual-stack lab, routed: no NAT).
    Outside6,
}

/// Which packet of the handshake the scenario is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judged {
    Syn,
    SynAck,
}

impl Judged {
    fn flags(self) -> &'static str {
        match self {
            Self::Syn => "SYN",
            Self::SynAck => "SYN|ACK",
        }
    }

    /// As a connection line names it.
    pub fn step(self) -> &'static str {
        match self {
            Self::Syn => "SYN",
            Self::SynAck => "SYN-ACK",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub config: LabConfig,
    pub fault: Option<Fault>,
    pub client: Client,
    pub judged: Judged,
    pub expect: Expect,
    /// Why the VM kernel lab does not run this scenario, if it does not (reported as skipped in
    /// its table, never silently).
    pub vm_skip: Option<&'static str>,
    /// The table the VM kernel lab must see the dropping rule in, where it differs from the
    /// host's (ebtables-legacy exists only in the VM's kernel).
    pub vm_rule_table: Option<&'static str>,
}

impl Scenario {
    fn new(name: &'static str, about: &'static str, fault: Option<Fault>, expect: Expect) -> Self {
        Self {
            name,
            about,
            config: LabConfig::default(),
            fault,
            client: Client::Outside,
            judged: Judged::Syn,
            expect,
            vm_skip: None,
            vm_rule_table: None,
        }
    }

    /// The same scenario on another topology: the fault's interface follows the uplink.
    pub fn on(&self, config: &LabConfig) -> Self {
        let fault = match &self.fault {
            Some(Fault::ForwardingOff(i)) if *i == self.config.uplink => {
                Some(Fault::ForwardingOff(config.uplink.clone()))
            }
            other => other.clone(),
        };
        Self {
            config: config.clone(),
            fault,
            ..self.clone()
        }
    }

    /// The client's source address.
    pub fn client_addr(&self) -> std::net::IpAddr {
        match self.client {
            Client::OutsideUnroutable => crate::UNROUTABLE_CLIENT.into(),
            Client::Outside6 => self.config.v6.outside.into(),
            _ => self.config.outside_addr.into(),
        }
    }

    /// Where the client connects: the published port, or for an IPv6 client the container's
    /// own address (routed, no NAT).
    pub fn target(&self) -> std::net::SocketAddr {
        let c = &self.config;
        match self.client {
            Client::Outside6 => (c.v6.container, c.container_port).into(),
            Client::Peer => (c.container_addr, c.container_port).into(),
            _ => (c.host_addr, c.published_port).into(),
        }
    }

    /// The container's address the client's packets reach it at.
    pub fn container_addr(&self) -> std::net::IpAddr {
        match self.client {
            Client::Outside6 => self.config.v6.container.into(),
            _ => self.config.container_addr.into(),
        }
    }

    /// pathtrace's filter for this scenario's packets: the port the client connects to, as a
    /// user types it. A reply scenario's SYN-ACK is found by the kernel following the SYN's
    /// replies, not by a filter of its own.
    pub fn filter(&self) -> Vec<String> {
        let c = &self.config;
        match self.client {
            Client::Peer | Client::Outside6 => {
                vec!["--dport".into(), c.container_port.to_string()]
            }
            _ => vec!["--dport".into(), c.published_port.to_string()],
        }
    }
}

fn dropped(reason: &'static str, code: &'static str) -> Expect {
    Expect {
        outcome: "dropped",
        drop_reason: Some(reason),
        code: Some(code),
    }
}

/// Every scenario, healthy first.
pub fn all() -> Vec<Scenario> {
    let unusual = LabConfig::unusual();
    let fwd = || dropped("IP_INADDRERRORS", "forwarding_disabled");
    vec![
        Scenario::new(
            "healthy",
            "a published port that answers: uplink, DNAT, bridge, veth, container socket",
            None,
            Expect {
                outcome: "delivered",
                drop_reason: None,
                code: None,
            },
        ),
        Scenario::new(
            "forwarding-off",
            "field note 000: net.ipv4.conf.eth0.forwarding=0 on the host's uplink",
            Some(Fault::ForwardingOff("eth0".into())),
            fwd(),
        ),
        Scenario::new(
            "ip-forward-off",
            "net.ipv4.ip_forward=0 in the host namespace",
            Some(Fault::IpForwardOff),
            fwd(),
        ),
        Scenario {
            fault: Some(Fault::ForwardingOff(unusual.uplink.clone())),
            config: unusual,
            ..Scenario::new(
                "unusual-forwarding-off",
                "forwarding off on a topology with other names, addresses and ports",
                None,
                fwd(),
            )
        },
        Scenario::new(
            "no-listener",
            "the path works but nothing listens in the container",
            Some(Fault::NoListener),
            dropped("NO_SOCKET", "no_listener"),
        ),
        Scenario {
            client: Client::Outside6,
            ..Scenario::new(
                "ipv6-v4-only-listener",
                "an IPv6 client of a service that listens on 0.0.0.0 only: its SYN crosses the uplink, the bridge and the veth, and is refused in the container (NO_SOCKET at tcp_v6_rcv)",
                None,
                dropped("NO_SOCKET", "no_listener"),
            )
        },
        Scenario {
            client: Client::Outside6,
            ..Scenario::new(
                "ipv6-forwarding-off",
                "net.ipv6.conf.all.forwarding=0 on the host, the uplink's own forwarding=1 (which for IPv6 does not forward): an IPv6 SYN to the container dies in ip6_forward",
                Some(Fault::Ipv6ForwardingOff),
                fwd(),
            )
        },
        Scenario::new(
            "docker-user-drop",
            "a DROP rule in DOCKER-USER for the container's port",
            Some(Fault::DockerUserDrop),
            dropped("NETFILTER_DROP", "netfilter_drop"),
        ),
        Scenario::new(
            "forward-policy-drop",
            "field note 001: no ACCEPT for the port, the FORWARD policy DROP applies",
            Some(Fault::ForwardAcceptMissing),
            dropped("NETFILTER_DROP", "netfilter_drop"),
        ),
        Scenario::new(
            "firewalld-forward",
            "field note 001: firewalld's nft table rejects forwarding to a bridge in no zone",
            Some(Fault::FirewalldForward),
            dropped("NETFILTER_DROP", "netfilter_drop"),
        ),
        Scenario {
            config: LabConfig {
                uplink: "ens5".into(),
                bridge: "virbr1".into(),
                outside_addr: std::net::Ipv4Addr::new(192, 0, 2, 130),
                host_addr: std::net::Ipv4Addr::new(192, 0, 2, 129),
                uplink_prefix: 25,
                bridge_addr: std::net::Ipv4Addr::new(10, 77, 3, 1),
                container_addr: std::net::Ipv4Addr::new(10, 77, 3, 40),
                bridge_prefix: 24,
                published_port: 5601,
                container_port: 3000,
                publish_on: None,
                ..LabConfig::default()
            },
            ..Scenario::new(
                "firewalld-virbr",
                "field note 001 on a libvirt-style bridge: the fix names the bridge the container is routed through, whatever its name",
                Some(Fault::FirewalldForward),
                dropped("NETFILTER_DROP", "netfilter_drop"),
            )
        },
        Scenario::new(
            "iptables-legacy-drop",
            "Docker's rules in iptables-nft, a FORWARD DROP added with iptables-legacy (which `iptables -S` does not show)",
            Some(Fault::LegacyForwardDrop),
            dropped("NETFILTER_DROP", "netfilter_drop"),
        ),
        Scenario::new(
            "prerouting-accept",
            "field note 002: a nat PREROUTING ACCEPT ahead of -j DOCKER, so no DNAT",
            Some(Fault::PreroutingAcceptShadow),
            dropped("NO_SOCKET", "dnat_skipped"),
        ),
        Scenario {
            client: Client::OutsideUnroutable,
            ..Scenario::new(
                "rp-filter",
                "strict rp_filter on the uplink, client source with no route back",
                Some(Fault::StrictRpFilter),
                dropped("IP_RPFILTER", "rp_filter"),
            )
        },
        Scenario::new(
            "dnat-no-route",
            "the published port is DNATed to an address no route reaches",
            Some(Fault::DnatUnroutable),
            dropped("IP_INNOROUTES", "no_route"),
        ),
        Scenario::new(
            "dnat-dead-neighbor",
            "the published port is DNATed to an on-link address nobody answers ARP for",
            Some(Fault::DnatDeadNeighbor),
            dropped("NEIGH_FAILED", "neighbor_failed"),
        ),
        Scenario {
            client: Client::Peer,
            ..Scenario::new(
                "bridge-icc-drop",
                "field note 004: container to container on one bridge, dropped in iptables FORWARD via br_netfilter",
                Some(Fault::BridgeIccDrop),
                dropped("NETFILTER_DROP", "bridge_netfilter_drop"),
            )
        },
        Scenario {
            client: Client::Peer,
            ..Scenario::new(
                "bridge-nft-drop",
                "field note 004: container to container on one bridge, dropped by a bridge-family nft rule (ebtables' successor)",
                Some(Fault::BridgeNftDrop),
                dropped("NETFILTER_DROP", "bridge_netfilter_drop"),
            )
        },
        Scenario {
            client: Client::Peer,
            vm_rule_table: Some("ebtables-legacy filter"),
            ..Scenario::new(
                "bridge-ebtables-drop",
                "field note 004: container to container on one bridge, dropped by an ebtables rule (ebtables-legacy in the VM, ebtables-nft on the host)",
                Some(Fault::BridgeEbtablesDrop),
                dropped("NETFILTER_DROP", "bridge_netfilter_drop"),
            )
        },
        Scenario {
            judged: Judged::SynAck,
            ..Scenario::new(
                "reply-dropped",
                "field note 003: the SYN gets in, the container's SYN-ACK dies in FORWARD on its way out",
                Some(Fault::ReplyDropped),
                dropped("NETFILTER_DROP", "netfilter_drop"),
            )
        },
        Scenario {
            judged: Judged::SynAck,
            ..Scenario::new(
                "reply-raw-drop",
                "field note 003: the container's SYN-ACK dies in raw PREROUTING on the bridge, before conntrack knows it for a reply",
                Some(Fault::ReplyRawDrop),
                dropped("NETFILTER_DROP", "netfilter_drop"),
            )
        },
        Scenario {
            judged: Judged::SynAck,
            ..Scenario::new(
                "reply-mangle-drop",
                "field note 003: the container's SYN-ACK dies in a mangle FORWARD rule",
                Some(Fault::ReplyMangleDrop),
                dropped("NETFILTER_DROP", "netfilter_drop"),
            )
        },
        Scenario {
            judged: Judged::SynAck,
            ..Scenario::new(
                "reply-docker-user-drop",
                "field note 003: a DOCKER-USER rule on the container's port as a source drops its SYN-ACK",
                Some(Fault::ReplyDockerUserDrop),
                dropped("NETFILTER_DROP", "netfilter_drop"),
            )
        },
        Scenario {
            judged: Judged::SynAck,
            ..Scenario::new(
                "reply-bridge-drop",
                "field note 003/004: a bridge-family nft rule on the bridge's input drops the container's SYN-ACK",
                Some(Fault::ReplyBridgeDrop),
                dropped("NETFILTER_DROP", "bridge_netfilter_drop"),
            )
        },
        Scenario {
            judged: Judged::SynAck,
            client: Client::OutsideUnroutable,
            ..Scenario::new(
                "reply-no-route",
                "field note 003: the client's address has no route back from the host; the SYN gets in, the SYN-ACK has nowhere to go",
                Some(Fault::ReplyNoRoute),
                dropped("IP_INNOROUTES", "no_route"),
            )
        },
        Scenario {
            judged: Judged::SynAck,
            ..Scenario::new(
                "reply-marked-rp-filter",
                "field note 003 on a host with a second uplink: replies get their connection's mark back, the marked table routes the container's address out the uplink, and strict rp_filter on the bridge drops the SYN-ACK",
                Some(Fault::ReplyMarkedRpFilter),
                dropped("IP_RPFILTER", "rp_filter"),
            )
        },
        Scenario::new(
            "container-no-route",
            "field note 003 from the other end: the container has no route back to the client; its listener takes the SYN and no SYN-ACK is ever built",
            Some(Fault::ContainerNoRoute),
            Expect {
                outcome: "delivered",
                drop_reason: None,
                code: Some("no_route_back"),
            },
        ),
        Scenario::new(
            "forward-reject",
            "a REJECT in DOCKER-USER: the SYN dies and an ICMP port unreachable goes back to the client, shown with its flow",
            Some(Fault::ForwardReject),
            dropped("NETFILTER_DROP", "netfilter_drop"),
        ),
    ]
}

pub fn find(name: &str) -> Option<Scenario> {
    all().into_iter().find(|s| s.name == name)
}

/// What pathtrace said about the scenario's SYN.
#[derive(Debug)]
pub struct Observed {
    pub ready: Value,
    pub verdict: Value,
    /// The hop lines of the SYN's skb.
    pub hops: Vec<Value>,
    pub stats: Value,
    /// The `flow` lines (one per connection), told as the trace stopped.
    pub flows: Vec<Value>,
    /// Every verdict line on a packet of the scenario's lab.
    pub verdicts: Vec<Value>,
}

impl Observed {
    /// What a trace said of one lab's judged packet: its verdict and hops, and of all the
    /// trace's lines, the connections and this lab's verdicts.
    fn told(
        ready: Value,
        verdict: Value,
        hops: Vec<Value>,
        stats: Value,
        lines: &[Value],
        lab: &Lab,
    ) -> Self {
        let verdicts = lines
            .iter()
            .enumerate()
            .filter(|(i, v)| {
                v["kind"] == "verdict"
                    && crate::tracer::hops_before(lines, *i)
                        .iter()
                        .any(|h| lab.owns(h))
            })
            .map(|(_, v)| v.clone())
            .collect();
        Self {
            ready,
            verdict,
            hops,
            stats,
            flows: lines
                .iter()
                .filter(|v| v["kind"] == "flow")
                .cloned()
                .collect(),
            verdicts,
        }
    }

    pub fn outcome(&self) -> &str {
        self.verdict["outcome"].as_str().unwrap_or("?")
    }

    pub fn drop_reason(&self) -> Option<&str> {
        self.verdict["drop_reason"].as_str()
    }

    /// The judged packet's diagnosis code, or, for a packet that got through, its
    /// connection's (what explains a connection no packet does: `no_route_back`).
    pub fn code(&self) -> Option<&str> {
        self.verdict["diagnosis"]["code"].as_str().or_else(|| {
            (self.outcome() == "delivered")
                .then(|| self.connection()?["diagnosis"]["code"].as_str())
                .flatten()
        })
    }

    pub fn matches(&self, e: &Expect) -> bool {
        self.outcome() == e.outcome
            && self.drop_reason() == e.drop_reason
            && self.code() == e.code
            && self.netfilter_drop_seen(e)
            && (e.drop_reason != Some("NETFILTER_DROP") || self.rule().is_some())
    }

    /// The connection line of the judged packet's flow.
    pub fn connection(&self) -> Option<&Value> {
        let id = self.verdict["flow"].as_u64()?;
        self.flows.iter().find(|f| f["id"] == id)
    }

    /// The connection line tells the judged packet's fate: its step with the expected outcome,
    /// and for a drop, that step explains the connection with the expected diagnosis.
    pub fn connection_tells(&self, s: &Scenario) -> bool {
        let Some(c) = self.connection() else {
            return false;
        };
        let steps = c["steps"].as_array().cloned().unwrap_or_default();
        let judged = s.judged.step();
        let step = steps
            .iter()
            .position(|st| st["packet"] == judged && st["outcome"] == s.expect.outcome);
        let summary = c["summary"].as_str().unwrap_or_default();
        match step {
            None => false,
            Some(i) if s.expect.outcome == "dropped" => {
                c["explained_by"] == i
                    && steps[i]["code"].as_str() == s.expect.code
                    && summary.contains(&format!("{judged} dropped in netns"))
                    && c["state"]
                        == if s.judged == Judged::SynAck {
                            "reply_dropped"
                        } else {
                            "dropped"
                        }
            }
            Some(_) if s.expect.code.is_some() => {
                summary.contains(&format!("{judged} delivered"))
                    && c["state"] == "no_reply"
                    && c["diagnosis"]["code"].as_str() == s.expect.code
            }
            Some(_) => summary.contains(&format!("{judged} delivered")),
        }
    }

    /// The dropping rule or policy the diagnosis named: `table/chain rule N, counter C` or
    /// `table/chain policy, ...`.
    pub fn rule(&self) -> Option<String> {
        let r = &self.verdict["diagnosis"]["rule"];
        let place = format!("{}/{}", r["table"].as_str()?, r["chain"].as_str()?);
        let counted = r["packets"]
            .as_u64()
            .map_or_else(|| ", no counter".to_owned(), |n| format!(", counter {n}"));
        Some(match r["index"].as_u64() {
            Some(i) => format!("{place} rule {i}{counted}"),
            None => format!("{place} policy{counted}"),
        })
    }

    /// Where `nf_hook_slow` is probed (fentry, kprobe), a netfilter drop must show up as the
    /// hook's own hop with a drop verdict, part of the packet that died.
    fn netfilter_drop_seen(&self, e: &Expect) -> bool {
        let probed = self.ready["hooks"]
            .as_array()
            .is_some_and(|h| h.iter().any(|x| x == "nf_hook_slow"));
        !probed
            || e.drop_reason != Some("NETFILTER_DROP")
            || self.netfilter_hops().iter().any(|h| h.ends_with(" drop"))
    }

    /// `hop ifname@netns` for each hop, for assertions and tables.
    pub fn hop_names(&self) -> Vec<String> {
        self.hops
            .iter()
            .map(|h| {
                let s = |k: &str| h[k].as_str().unwrap_or("?").to_owned();
                format!("{} {}@{}", s("hop"), s("ifname"), s("netns_name"))
            })
            .collect()
    }

    /// Netfilter hops as `family HOOK verdict`.
    pub fn netfilter_hops(&self) -> Vec<String> {
        self.hops
            .iter()
            .filter(|h| h["hop"] == "netfilter")
            .map(|h| {
                let nf = &h["netfilter"];
                format!(
                    "{} {} {}",
                    nf["family"].as_str().unwrap_or("?"),
                    nf["hook"].as_str().unwrap_or("?"),
                    nf["verdict"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }

    /// Conntrack's entry on each hop that showed it: `netfilter FORWARD: NEW original
    /// 203.0.113.2:40000 → 203.0.113.1:10001 / 172.17.0.2:80 → 203.0.113.2:40000 [DNAT]`.
    pub fn conntrack_shown(&self) -> Vec<String> {
        self.hops
            .iter()
            .filter_map(|h| {
                let ct = h.get("conntrack")?;
                let status: Vec<&str> = ct["status"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let tuple = |t: &Value| {
                    format!(
                        "{}:{} → {}:{}",
                        t["src"].as_str().unwrap_or("?"),
                        t["sport"],
                        t["dst"].as_str().unwrap_or("?"),
                        t["dport"]
                    )
                };
                let at = match h["netfilter"]["hook"].as_str() {
                    Some(hook) => format!(
                        "{} {hook}",
                        h["netfilter"]["family"].as_str().unwrap_or("?")
                    ),
                    None => h["hop"].as_str().unwrap_or("?").to_owned(),
                };
                Some(format!(
                    "{at}: {} {} {} / {} [{}]",
                    ct["state"].as_str().unwrap_or("?"),
                    ct["direction"].as_str().unwrap_or("?"),
                    tuple(&ct["original"]),
                    tuple(&ct["reply"]),
                    status.join(" ")
                ))
            })
            .collect()
    }

    /// With netfilter hops traced (fentry, kprobe), a packet that passed IPv4 PREROUTING,
    /// where conntrack runs, shows the entry it got there: the SYN a NEW one in the original
    /// direction, the SYN-ACK an ESTABLISHED one in the reply direction; either way the
    /// entry's original tuple is the client's, to the port the filter names (read from the
    /// entry itself: a kernel whose addresses the programs misjudge shows zeros).
    pub fn conntrack_tells(&self, scenario: &Scenario) -> bool {
        if !self
            .netfilter_hops()
            .iter()
            .any(|h| h == "ipv4 PREROUTING accept")
        {
            return true;
        }
        let want = match scenario.judged {
            Judged::SynAck => "ESTABLISHED reply",
            _ => "NEW original",
        };
        let port = format!(
            ":{} / ",
            scenario.filter().get(1).map_or("?", String::as_str)
        );
        self.conntrack_shown().first().is_some_and(|c| {
            c.split_once(": ")
                .is_some_and(|(_, c)| c.starts_with(want) && c.contains(&port))
        })
    }

    /// One line for the VM lab's result table.
    pub fn summary(&self, scenario: &Scenario) -> Value {
        json!({
            "scenario": scenario.name,
            "backend": self.ready["backend"],
            "expected": {
                "outcome": scenario.expect.outcome,
                "drop_reason": scenario.expect.drop_reason,
                "code": scenario.expect.code,
            },
            "observed": {
                "outcome": self.outcome(),
                "drop_reason": self.drop_reason(),
                "code": self.code(),
            },
            "rule": self.rule(),
            "connection": self.connection().map(|c| c["summary"].clone()),
            "conntrack": self.conntrack_shown(),
            "pass": self.matches(&scenario.expect)
                && self.connection_tells(scenario)
                && self.conntrack_tells(scenario)
                && (std::env::var_os("PTLAB_IN_VM").is_none()
                    || scenario.vm_rule_table.is_none_or(|t| {
                        self.rule().is_some_and(|r| r.starts_with(&format!("{t}/")))
                    })),
            "hops": self.hop_names(),
            "netfilter": self.netfilter_hops(),
        })
    }
}

/// Builds the scenario's lab, runs pathtrace around one client connect, and returns the lab
/// (for further assertions) with what pathtrace said.
pub fn observe(s: &Scenario, backend: &str) -> Result<(Lab, Observed)> {
    observe_with(s, backend, None, &[])
}

/// [`observe`] with another filter than the scenario's, and more pathtrace arguments
/// (`--hooks drops`).
pub fn observe_with(
    s: &Scenario,
    backend: &str,
    filter: Option<Vec<String>>,
    extra: &[&str],
) -> Result<(Lab, Observed)> {
    let lab = build(s)?;
    let args = trace_args(filter.unwrap_or_else(|| s.filter()), backend, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut tracer = Tracer::start(&args)?;
    let ready = tracer.seen.last().cloned().unwrap_or(Value::Null);
    let verdict = match judge(s, &lab, &mut tracer) {
        Ok(v) => v,
        Err(e) => return Err(with_counters(e, &tracer.stop())),
    };
    let hops = tracer.hops_of(&verdict).into_iter().cloned().collect();
    let (stats, lines) = tracer.stop_with_lines()?;
    let observed = Observed::told(ready, verdict, hops, stats, &lines, &lab);
    Ok((lab, observed))
}

/// Runs many scenarios through as few traces as their filters allow: one pathtrace per
/// distinct filter, each scenario's lab built, connected and judged while it runs. Under TCG
/// starting pathtrace (the verifier) costs most of a scenario; the trace's resolver meets a
/// new lab's namespaces as a daemon meets new containers'. Every lab stays up until its trace
/// stops, so the connections told then are explained in namespaces that still exist. `done`
/// gets each scenario's result, one trace's scenarios after another; `Observed::stats` is the
/// whole trace's.
pub fn observe_all(
    scenarios: &[Scenario],
    backend: &str,
    extra: &[&str],
    done: impl FnMut(&Scenario, Result<(Lab, Observed)>),
) {
    observe_all_with(scenarios, backend, Scenario::filter, extra, done);
}

/// [`observe_all`] with each scenario's filter chosen by `filter_of`.
pub fn observe_all_with(
    scenarios: &[Scenario],
    backend: &str,
    filter_of: impl Fn(&Scenario) -> Vec<String>,
    extra: &[&str],
    mut done: impl FnMut(&Scenario, Result<(Lab, Observed)>),
) {
    let mut groups: Vec<(Vec<String>, Vec<&Scenario>)> = Vec::new();
    for s in scenarios {
        let filter = filter_of(s);
        match groups.iter_mut().find(|(f, _)| *f == filter) {
            Some((_, group)) => group.push(s),
            None => groups.push((filter, vec![s])),
        }
    }
    for (filter, group) in groups {
        let args = trace_args(filter, backend, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut tracer = match Tracer::start(&args) {
            Ok(t) => t,
            Err(e) => {
                for s in group {
                    done(
                        s,
                        Err(anyhow!("starting pathtrace {}: {e:#}", args.join(" "))),
                    );
                }
                continue;
            }
        };
        let ready = tracer.seen.last().cloned().unwrap_or(Value::Null);
        let judged: Vec<(&Scenario, Result<Pending>)> = group
            .into_iter()
            .map(|s| {
                let seen = build(s).and_then(|lab| {
                    let verdict = judge(s, &lab, &mut tracer)?;
                    let hops = tracer.hops_of(&verdict).into_iter().cloned().collect();
                    Ok((lab, verdict, hops))
                });
                (s, seen)
            })
            .collect();
        let stopped = tracer.stop_with_lines();
        let stats = stopped
            .as_ref()
            .map(|(stats, _)| stats.clone())
            .map_err(|e| anyhow!("{e:#}"));
        for (s, seen) in judged {
            let seen = seen.map_err(|e| with_counters(e, &stats));
            let result = seen.and_then(|(lab, verdict, hops)| {
                let (stats, lines) = stopped
                    .as_ref()
                    .map_err(|e| anyhow!("stopping the shared trace: {e:#}"))?;
                let observed =
                    Observed::told(ready.clone(), verdict, hops, stats.clone(), lines, &lab);
                Ok((lab, observed))
            });
            done(s, result);
        }
    }
}

/// A scenario's failure with the trace's counters at its stop (lost events, held packets):
/// they tell a verdict that came late from one that never could.
fn with_counters(e: anyhow::Error, stats: &Result<Value>) -> anyhow::Error {
    match stats {
        Ok(stats) => e.context(format!("pathtrace's counters at its stop: {stats}")),
        Err(stop) => e.context(format!("pathtrace did not stop cleanly: {stop:#}")),
    }
}

/// A lab with its judged packet's verdict and hops, waiting for its trace to stop.
type Pending = (Lab, Value, Vec<Value>);

/// The scenario's lab, dual-stack for an IPv6 client, with its fault switched on last (an
/// IPv6 fault undoes what the dual stack set up).
pub fn build(s: &Scenario) -> Result<Lab> {
    let mut lab = Lab::new(s.config.clone())?;
    if s.client == Client::Outside6 {
        lab.dual_stack()?;
    }
    if let Some(f) = &s.fault {
        lab.apply(f)?;
    }
    Ok(lab)
}

/// pathtrace's arguments: a filter, TCP, the backend, and `extra`.
fn trace_args(filter: Vec<String>, backend: &str, extra: &[&str]) -> Vec<String> {
    let mut args = filter;
    args.extend(["--proto", "tcp", "--backend", backend].map(str::to_owned));
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

/// Opens the scenario's connection in `lab` and waits for the verdict on its judged packet
/// there (a shared trace also tells other labs' packets, late retransmits among them).
fn judge(s: &Scenario, lab: &Lab, tracer: &mut Tracer) -> Result<Value> {
    let from = tracer.seen.len();
    let wait = Duration::from_millis(if s.expect.outcome == "delivered" {
        5000
    } else {
        1500
    });
    let answered = match s.client {
        Client::Outside => lab.connect(wait)?,
        Client::OutsideUnroutable => lab.connect_from(crate::UNROUTABLE_CLIENT, wait)?,
        Client::Peer => lab.connect_from_peer(wait)?,
        Client::Outside6 => lab.connect6(s.config.container_port, wait)?,
    };
    let flags = s.judged.flags();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let verdict = tracer.try_wait_for(left, |v| {
            v["kind"] == "verdict" && v["last_hop"]["tcp_flags"] == flags
        })?;
        match verdict {
            Some(v) if tracer.hops_of(&v).iter().any(|h| lab.owns(h)) => return Ok(v),
            Some(_) => continue,
            None => bail!(
                "scenario {}: no verdict on the {} in lab {} within 20 s (client connect answered: {answered}); pathtrace said:\n{}",
                s.name,
                s.judged.step(),
                lab.id,
                transcript(tracer.seen.get(from..).unwrap_or_default(), usize::MAX)
            ),
        }
    }
}

/// The name of the row [`module_late`] adds to the VM lab's table.
pub const MODULE_LATE: &str = "module-late";

/// A trace started before the first bridge and veth exist (their modules, and so their BTF,
/// not loaded yet) attaches again once they appear: the healthy connect after that shows the
/// bridge's egress port, which needs the bridge module's offsets. Run first in a fresh guest
/// (the VM lab boots one per backend); one `PTLAB-RESULT` row.
pub fn module_late(backend: &str) -> Value {
    let row = |pass: bool, detail: String| json!({"scenario": MODULE_LATE, "backend": backend, "pass": pass, "detail": detail});
    // The guest loads the lab's modules at boot: take the bridge and veth out again (nothing
    // uses them yet), so the trace starts without their BTF; the lab loads them on demand.
    for m in ["br_netfilter", "bridge", "veth"] {
        let _ = std::process::Command::new("rmmod").arg(m).status();
    }
    if std::path::Path::new("/sys/kernel/btf/bridge").exists() {
        return row(
            false,
            "the bridge module could not be unloaded before the trace started: nothing to pick up"
                .into(),
        );
    }
    let run = || -> Result<Value> {
        let s = find("healthy").context("the healthy scenario")?;
        let mut args = s.filter();
        args.extend([
            "--proto".into(),
            "tcp".into(),
            "--backend".into(),
            backend.into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut tracer = Tracer::start(&args)?;
        let ready = tracer.seen.last().cloned().unwrap_or(Value::Null);
        let lab = Lab::new(s.config.clone())?;
        let want = format!("transmit {}@{}", lab.host_veth, lab.host.name);
        // The reader looks for new module BTF once a second, and attaching again takes
        // tens of seconds under TCG (the verifier runs each program for seconds there, and
        // nothing is read meanwhile): connect until a SYN shows the bridge's egress port, three
        // minutes at most. A SYN sent while the programs are verified again waits for its
        // verdict until the deadline, not a fixed while (64 s for that on 6.1 under TCG).
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        let (mut answered, mut verdict, mut hops) = (false, Value::Null, Vec::new());
        while std::time::Instant::now() < deadline && !hops.contains(&want) {
            answered = lab.connect(Duration::from_secs(5))?;
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Some(v) = tracer.try_wait_for(left, |v| {
                v["kind"] == "verdict" && v["last_hop"]["tcp_flags"] == "SYN"
            })?
            else {
                break;
            };
            verdict = v;
            hops = tracer
                .hops_of(&verdict)
                .iter()
                .map(|h| {
                    let s = |k: &str| h[k].as_str().unwrap_or("?").to_owned();
                    format!("{} {}@{}", s("hop"), s("ifname"), s("netns_name"))
                })
                .collect();
            tracer.seen.clear();
            std::thread::sleep(Duration::from_secs(2));
        }
        let _ = tracer.stop();
        reload_guest_modules(&["br_netfilter"]);
        let pass = answered && verdict["outcome"] == "delivered" && hops.contains(&want);
        Ok(json!({
            "scenario": MODULE_LATE, "backend": backend, "pass": pass,
            "observed": {"outcome": verdict["outcome"]},
            "hops": hops,
            "detail": format!(
                "wanted `{want}` among the SYN's hops; at start: hooks {}, skipped {}",
                ready["hooks"], ready["skipped_hooks"]
            ),
        }))
    };
    run().unwrap_or_else(|e| row(false, format!("{e:#}")))
}

/// Loads guest kernel modules from the tree the VM's init links (`ptlab.modules` on its
/// command line), for what later scenarios need and nothing loads on demand (br_netfilter).
fn reload_guest_modules(modules: &[&str]) {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let Some(tree) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ptlab.modules="))
        .and_then(|m| m.strip_suffix("/lib/modules"))
    else {
        return;
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = std::process::Command::new("modprobe")
        .args(["-d", tree, "-S", release.trim(), "-a"])
        .args(modules)
        .status();
}
