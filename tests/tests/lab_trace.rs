//! pathtrace against the lab, on this machine's kernel (tracepoint backend). Needs root.

use std::time::Duration;

use lab::{Fault, Lab, LabConfig, tracer::Tracer};
use serde_json::Value;

/// The first verdict for a SYN (the handshake's later packets match the filter too).
fn syn_verdict(v: &Value) -> bool {
    v["kind"] == "verdict" && v["last_hop"]["tcp_flags"] == "SYN"
}

fn names(hops: &[&Value]) -> Vec<String> {
    hops.iter()
        .map(|h| {
            format!(
                "{} {}@{}",
                h["hop"].as_str().unwrap_or("?"),
                h["ifname"].as_str().unwrap_or("?"),
                h["netns_name"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

#[test]
fn healthy_connect_is_delivered_through_bridge_and_veth() {
    let lab = Lab::new(LabConfig::default()).expect("lab");
    let port = lab.config.published_port.to_string();
    let mut tracer = Tracer::start(&["--dport", &port]).expect("pathtrace starts");
    assert!(
        lab.connect(Duration::from_secs(3)).expect("connect"),
        "healthy lab must answer"
    );
    let verdict = tracer
        .wait_for(Duration::from_secs(10), syn_verdict)
        .expect("a verdict");

    assert_eq!(verdict["outcome"], "delivered", "{verdict:#}");
    assert_eq!(verdict["delivery"], "socket");
    assert!(
        verdict["diagnosis"].is_null(),
        "healthy path has nothing to diagnose: {verdict:#}"
    );
    assert_eq!(verdict["last_hop"]["ifname"], "eth0");
    assert_eq!(
        verdict["last_hop"]["netns_name"],
        lab.container.name.as_str()
    );
    assert_eq!(verdict["nat"][0]["kind"], "dnat");
    assert_eq!(
        verdict["nat"][0]["to"]["dst"],
        lab.config.container_addr.to_string()
    );

    let skb = verdict["skb"].as_str().expect("skb").to_owned();
    let hops = names(&tracer.hops_of(&skb));
    let host = &lab.host.name;
    for want in [
        format!("receive eth0@{host}"),
        format!("transmit docker0@{host}"),
        format!("transmit {}@{host}", lab.host_veth),
        format!("receive eth0@{}", lab.container.name),
    ] {
        assert!(hops.contains(&want), "missing hop `{want}` in {hops:#?}");
    }
    let stats = tracer.stop().expect("clean stop");
    assert_eq!(stats["lost"], 0);
    assert!(stats["delivered"].as_u64() >= Some(1), "{stats}");
}

#[test]
fn forwarding_off_on_uplink_is_diagnosed() {
    let lab =
        Lab::with_fault(LabConfig::default(), Fault::ForwardingOff("eth0".into())).expect("lab");
    let port = lab.config.published_port.to_string();
    let mut tracer = Tracer::start(&["--dport", &port]).expect("pathtrace starts");
    assert!(
        !lab.connect(Duration::from_millis(1500)).expect("connect"),
        "the SYN must die"
    );
    let verdict = tracer
        .wait_for(Duration::from_secs(10), syn_verdict)
        .expect("a verdict");

    assert_eq!(verdict["outcome"], "dropped", "{verdict:#}");
    assert_eq!(verdict["drop_reason"], "IP_INADDRERRORS");
    assert_eq!(verdict["location"], "ip_error");
    assert_eq!(verdict["last_hop"]["ifname"], "eth0");
    assert_eq!(verdict["last_hop"]["netns_name"], lab.host.name.as_str());
    let d = &verdict["diagnosis"];
    assert_eq!(d["code"], "forwarding_disabled", "{verdict:#}");
    assert_eq!(
        d["fix"],
        format!(
            "ip netns exec {} sysctl -w net.ipv4.conf.eth0.forwarding=1",
            lab.host.name
        )
    );
    let evidence: Vec<&str> = d["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        evidence.contains(
            &format!(
                "net.ipv4.conf.eth0.forwarding = 0 in netns {}",
                lab.host.name
            )
            .as_str()
        ),
        "{evidence:#?}"
    );
    tracer.stop().expect("clean stop");
}

/// Names, addresses and ports pathtrace has never seen: nothing may be assumed.
#[test]
fn unfamiliar_topology_gets_the_same_answer() {
    let cfg = LabConfig::unusual();
    let lab = Lab::with_fault(cfg.clone(), Fault::ForwardingOff(cfg.uplink.clone())).expect("lab");
    let port = cfg.published_port.to_string();
    let mut tracer =
        Tracer::start(&["--dport", &port, "--proto", "tcp"]).expect("pathtrace starts");
    assert!(!lab.connect(Duration::from_millis(1500)).expect("connect"));
    let verdict = tracer
        .wait_for(Duration::from_secs(10), syn_verdict)
        .expect("a verdict");
    assert_eq!(verdict["outcome"], "dropped", "{verdict:#}");
    assert_eq!(verdict["last_hop"]["ifname"], "wan0");
    assert_eq!(verdict["diagnosis"]["code"], "forwarding_disabled");
    let fix = verdict["diagnosis"]["fix"].as_str().expect("fix");
    assert!(
        fix.ends_with("sysctl -w net.ipv4.conf.wan0.forwarding=1"),
        "{fix}"
    );
    let summary = verdict["diagnosis"]["summary"].as_str().expect("summary");
    assert!(
        summary.contains(&format!(
            "DNATed to {}:{}",
            cfg.container_addr, cfg.container_port
        )),
        "{summary}"
    );
}

#[test]
fn global_ip_forward_off_is_diagnosed() {
    let lab = Lab::with_fault(LabConfig::default(), Fault::IpForwardOff).expect("lab");
    let mut tracer = Tracer::start(&["--dport", "10001"]).expect("pathtrace starts");
    assert!(!lab.connect(Duration::from_millis(1500)).expect("connect"));
    let verdict = tracer
        .wait_for(Duration::from_secs(10), syn_verdict)
        .expect("a verdict");
    assert_eq!(
        verdict["diagnosis"]["code"], "forwarding_disabled",
        "{verdict:#}"
    );
    assert_eq!(
        verdict["diagnosis"]["fix"],
        format!(
            "ip netns exec {} sysctl -w net.ipv4.ip_forward=1",
            lab.host.name
        )
    );
}
