//! Lab scenarios: a topology, a fault, and what pathtrace must say about the SYN of one client
//! connect. The host integration tests and the VM lab (`ptlab` inside the guest) run these same
//! definitions.

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use crate::{Fault, Lab, LabConfig, tracer::Tracer};

/// What a scenario expects of the SYN's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub outcome: &'static str,
    pub drop_reason: Option<&'static str>,
    pub code: Option<&'static str>,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub config: LabConfig,
    pub fault: Option<Fault>,
    pub expect: Expect,
}

/// Every scenario, healthy first.
pub fn all() -> Vec<Scenario> {
    let unusual = LabConfig::unusual();
    vec![
        Scenario {
            name: "healthy",
            about: "a published port that answers: uplink, DNAT, bridge, veth, container socket",
            config: LabConfig::default(),
            fault: None,
            expect: Expect {
                outcome: "delivered",
                drop_reason: None,
                code: None,
            },
        },
        Scenario {
            name: "forwarding-off",
            about: "field note 000: net.ipv4.conf.eth0.forwarding=0 on the host's uplink",
            config: LabConfig::default(),
            fault: Some(Fault::ForwardingOff("eth0".into())),
            expect: Expect {
                outcome: "dropped",
                drop_reason: Some("IP_INADDRERRORS"),
                code: Some("forwarding_disabled"),
            },
        },
        Scenario {
            name: "ip-forward-off",
            about: "net.ipv4.ip_forward=0 in the host namespace",
            config: LabConfig::default(),
            fault: Some(Fault::IpForwardOff),
            expect: Expect {
                outcome: "dropped",
                drop_reason: Some("IP_INADDRERRORS"),
                code: Some("forwarding_disabled"),
            },
        },
        Scenario {
            name: "unusual-forwarding-off",
            about: "forwarding off on a topology with other names, addresses and ports",
            fault: Some(Fault::ForwardingOff(unusual.uplink.clone())),
            config: unusual,
            expect: Expect {
                outcome: "dropped",
                drop_reason: Some("IP_INADDRERRORS"),
                code: Some("forwarding_disabled"),
            },
        },
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
}

impl Observed {
    pub fn outcome(&self) -> &str {
        self.verdict["outcome"].as_str().unwrap_or("?")
    }

    pub fn drop_reason(&self) -> Option<&str> {
        self.verdict["drop_reason"].as_str()
    }

    pub fn code(&self) -> Option<&str> {
        self.verdict["diagnosis"]["code"].as_str()
    }

    pub fn matches(&self, e: &Expect) -> bool {
        self.outcome() == e.outcome && self.drop_reason() == e.drop_reason && self.code() == e.code
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
            "pass": self.matches(&scenario.expect),
            "hops": self.hop_names(),
            "netfilter": self.netfilter_hops(),
        })
    }
}

/// The first verdict about a SYN (the handshake's later packets match the filter too).
fn syn_verdict(v: &Value) -> bool {
    v["kind"] == "verdict" && v["last_hop"]["tcp_flags"] == "SYN"
}

/// Builds the scenario's lab, runs pathtrace around one client connect, and returns the lab
/// (for further assertions) with what pathtrace said.
pub fn observe(s: &Scenario, backend: &str) -> Result<(Lab, Observed)> {
    let lab = match &s.fault {
        Some(f) => Lab::with_fault(s.config.clone(), f.clone())?,
        None => Lab::new(s.config.clone())?,
    };
    let port = s.config.published_port.to_string();
    let mut tracer = Tracer::start(&["--dport", &port, "--proto", "tcp", "--backend", backend])?;
    let ready = tracer.seen.last().cloned().unwrap_or(Value::Null);
    let answered = lab.connect(Duration::from_millis(if s.expect.outcome == "delivered" {
        5000
    } else {
        1500
    }))?;
    let verdict = tracer
        .wait_for(Duration::from_secs(20), syn_verdict)
        .with_context(|| {
            format!(
                "scenario {}: no verdict (client connect answered: {answered})",
                s.name
            )
        })?;
    let skb = verdict["skb"].as_str().unwrap_or_default().to_owned();
    let hops = tracer.hops_of(&skb).into_iter().cloned().collect();
    let stats = tracer.stop()?;
    Ok((
        lab,
        Observed {
            ready,
            verdict,
            hops,
            stats,
        },
    ))
}
