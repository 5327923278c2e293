//! pathtrace against the lab scenarios, on this machine's kernel (tracepoints via auto, which
//! must say why it chose them). Needs root. The VM lab runs the same scenarios with fentry and
//! kprobe.

use lab::scenario::{self, Observed, Scenario};
use serde_json::Value;

fn run(name: &str) -> (lab::Lab, Observed, Scenario) {
    let s = scenario::find(name).expect("scenario exists");
    let (lab, seen) = scenario::observe(&s, "auto").expect("scenario runs");
    assert!(
        seen.matches(&s.expect),
        "{name}: expected {:?}, pathtrace said {:#}",
        s.expect,
        seen.verdict
    );
    (lab, seen, s)
}

fn evidence(v: &Value) -> Vec<String> {
    v["diagnosis"]["evidence"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn healthy_connect_is_delivered_through_bridge_and_veth() {
    let (lab, seen, _) = run("healthy");
    let v = &seen.verdict;
    assert_eq!(v["delivery"], "socket");
    assert!(
        v["diagnosis"].is_null(),
        "healthy path has nothing to diagnose: {v:#}"
    );
    assert_eq!(v["last_hop"]["ifname"], "eth0");
    assert_eq!(v["last_hop"]["netns_name"], lab.container.name.as_str());
    assert_eq!(v["nat"][0]["kind"], "dnat");
    assert_eq!(
        v["nat"][0]["to"]["dst"],
        lab.config.container_addr.to_string()
    );
    let hops = seen.hop_names();
    let host = &lab.host.name;
    for want in [
        format!("receive eth0@{host}"),
        format!("transmit docker0@{host}"),
        format!("transmit {}@{host}", lab.host_veth),
        format!("receive eth0@{}", lab.container.name),
    ] {
        assert!(hops.contains(&want), "missing hop `{want}` in {hops:#?}");
    }
    assert_eq!(seen.stats["lost"], 0);
    assert!(
        seen.stats["delivered"].as_u64() >= Some(1),
        "{}",
        seen.stats
    );
}

#[test]
fn auto_backend_explains_its_choice_on_this_kernel() {
    let (_lab, seen, _) = run("healthy");
    let backend = seen.ready["backend"].as_str().expect("backend");
    let reason = seen.ready["backend_reason"].as_str().expect("reason");
    assert!(reason.starts_with("auto: "), "{reason}");
    if backend == "tracepoint" {
        // This machine: no kprobes, fentry refused. Both must be named.
        assert!(reason.contains("fentry is unavailable"), "{reason}");
        assert!(reason.contains("kprobe is unavailable"), "{reason}");
    }
}

#[test]
fn forwarding_off_on_uplink_is_diagnosed() {
    let (lab, seen, _) = run("forwarding-off");
    let v = &seen.verdict;
    assert_eq!(v["location"], "ip_error");
    assert_eq!(v["last_hop"]["ifname"], "eth0");
    assert_eq!(v["last_hop"]["netns_name"], lab.host.name.as_str());
    assert_eq!(
        v["diagnosis"]["fix"],
        format!(
            "ip netns exec {} sysctl -w net.ipv4.conf.eth0.forwarding=1",
            lab.host.name
        )
    );
    let want = format!(
        "net.ipv4.conf.eth0.forwarding = 0 in netns {}",
        lab.host.name
    );
    assert!(evidence(v).contains(&want), "{:#?}", evidence(v));
}

/// Names, addresses and ports pathtrace has never seen: nothing may be assumed.
#[test]
fn unfamiliar_topology_gets_the_same_answer() {
    let (_lab, seen, s) = run("unusual-forwarding-off");
    let v = &seen.verdict;
    assert_eq!(v["last_hop"]["ifname"], "wan0");
    let fix = v["diagnosis"]["fix"].as_str().expect("fix");
    assert!(
        fix.ends_with("sysctl -w net.ipv4.conf.wan0.forwarding=1"),
        "{fix}"
    );
    let summary = v["diagnosis"]["summary"].as_str().expect("summary");
    let dnat = format!(
        "DNATed to {}:{}",
        s.config.container_addr, s.config.container_port
    );
    assert!(summary.contains(&dnat), "{summary}");
}

#[test]
fn global_ip_forward_off_is_diagnosed() {
    let (lab, seen, _) = run("ip-forward-off");
    assert_eq!(
        seen.verdict["diagnosis"]["fix"],
        format!(
            "ip netns exec {} sysctl -w net.ipv4.ip_forward=1",
            lab.host.name
        )
    );
}
