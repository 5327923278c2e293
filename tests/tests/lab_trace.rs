//! pathtrace against the lab scenarios, on this machine's kernel (tracepoints via auto, which
//! must say why it chose them). Needs root. The VM lab runs the same scenarios with fentry and
//! kprobe.

use std::time::Duration;

use lab::{
    scenario::{self, Observed, Scenario},
    tracer::Tracer,
};
use serde_json::Value;

fn run(name: &str) -> (lab::Lab, Observed, Scenario) {
    let s = scenario::find(name).expect("scenario exists");
    let (lab, seen) = scenario::observe(&s, "auto").expect("scenario runs");
    assert_expected(&s, &seen, "its defaults");
    assert!(
        seen.connection_tells(&s),
        "{name}: the connection line does not tell the {}'s fate: {:#?}",
        s.judged.step(),
        seen.connection()
    );
    (lab, seen, s)
}

/// The scenario's expected verdict, reason and code; `how` names the trace's arguments.
fn assert_expected(s: &Scenario, seen: &Observed, how: &str) {
    assert!(
        seen.matches(&s.expect),
        "{}: expected {:?}, pathtrace ({how}) said {:#}",
        s.name,
        s.expect,
        seen.verdict
    );
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

/// The client's FIN|ACK after the server closed first, freed by the stack once taken: the
/// connection's end, not a drop; `--all-drops` shows it as one. On a topology that is not
/// Docker's.
#[test]
fn a_normal_close_is_not_a_drop() {
    let config = lab::LabConfig::unusual();
    let lab = lab::Lab::new(config.clone()).expect("lab");
    let port = config.published_port.to_string();
    let hold = Duration::from_millis(300);
    let closed = |extra: &[&str]| {
        let mut args = vec!["--dport", &port, "--proto", "tcp"];
        args.extend(extra);
        let mut t = Tracer::start(&args).expect("pathtrace starts");
        assert!(
            lab.connect_and_hold(Duration::from_secs(3), hold)
                .expect("connect")
        );
        // The client's: the server's FIN|ACK, followed as a reply, may be judged first.
        let fin = t
            .wait_for(Duration::from_secs(10), |v| {
                v["kind"] == "verdict"
                    && v["direction"] == "original"
                    && v["last_hop"]["tcp_flags"].as_str() == Some("ACK|FIN")
            })
            .expect("a verdict on the client's FIN|ACK");
        (fin, t.stop().expect("stats"))
    };
    let (fin, stats) = closed(&[]);
    assert_eq!(fin["outcome"], "ended", "{fin:#}");
    assert!(fin["diagnosis"].is_null(), "{fin:#}");
    assert_eq!(fin["last_hop"]["netns_name"], lab.container.name.as_str());
    assert_eq!(stats["dropped"], 0, "{stats}");
    assert!(stats["ended"].as_u64() >= Some(1), "{stats}");
    let (fin, stats) = closed(&["--all-drops"]);
    assert_eq!(fin["outcome"], "dropped", "{fin:#}");
    assert!(stats["dropped"].as_u64() >= Some(1), "{stats}");
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
        // And a 6.18 kernel with bpf_rdonly_cast: headers are loaded without helper calls.
        assert_eq!(
            seen.ready["packet_reads"], "direct loads (bpf_rdonly_cast)",
            "{}",
            seen.ready
        );
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

fn diagnosis(seen: &Observed) -> &Value {
    &seen.verdict["diagnosis"]
}

fn fix(seen: &Observed) -> String {
    diagnosis(seen)["fix"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn no_listener_names_the_port_and_namespace() {
    let (lab, seen, _) = run("no-listener");
    let d = diagnosis(&seen);
    let summary = d["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&format!("netns {}", lab.container.name)),
        "{summary}"
    );
    assert!(
        summary.contains("nothing listens on tcp port 80"),
        "{summary}"
    );
    assert_eq!(
        fix(&seen),
        format!(
            "ip netns exec {} ss -ltnp   # then start the service on 0.0.0.0:80 (not 127.0.0.1) in netns {}",
            lab.container.name, lab.container.name
        )
    );
}

#[test]
fn docker_user_drop_names_the_rule() {
    let (lab, seen, _) = run("docker-user-drop");
    let d = diagnosis(&seen);
    assert_eq!(d["rule"]["table"], "filter");
    assert_eq!(d["rule"]["chain"], "DOCKER-USER");
    assert_eq!(d["rule"]["index"], 1);
    assert_eq!(
        d["rule"]["text"],
        "-A DOCKER-USER -p tcp -m tcp --dport 80 -j DROP"
    );
    assert_eq!(d["confidence"], "high", "{d:#}");
    assert!(
        d["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("at FORWARD"),
        "{d:#}"
    );
    assert!(fix(&seen).starts_with(&format!(
        "ip netns exec {} iptables -t filter -D DOCKER-USER 1",
        lab.host.name
    )));
}

#[test]
fn forward_policy_drop_names_the_policy() {
    let (_lab, seen, _) = run("forward-policy-drop");
    let d = diagnosis(&seen);
    assert!(d["rule"]["index"].is_null(), "{d:#}");
    assert_eq!(d["rule"]["text"], ":FORWARD DROP");
    assert!(
        fix(&seen).ends_with(
            "iptables -t filter -I DOCKER-USER -i eth0 -o docker0 -p tcp --dport 80 -j ACCEPT"
        ),
        "{}",
        fix(&seen)
    );
    let evidence = evidence(&seen.verdict).join("\n");
    assert!(evidence.contains("filter/DOCKER-USER"), "{evidence}");
}

/// Field note 001 as it really was: firewalld's own nft table, not iptables, drops the SYN.
#[test]
fn firewalld_nft_reject_is_named_by_table_chain_and_handle() {
    let (_lab, seen, _) = run("firewalld-forward");
    let d = diagnosis(&seen);
    assert_eq!(d["rule"]["table"], "inet firewalld", "{d:#}");
    assert_eq!(d["rule"]["chain"], "filter_FORWARD");
    assert_eq!(d["rule"]["text"], "reject with icmpx admin-prohibited");
    assert!(d["rule"]["handle"].as_u64().is_some(), "{d:#}");
    let fixed = fix(&seen);
    assert!(
        fixed.contains("firewall-cmd --permanent --zone=trusted --change-interface=docker0"),
        "{fixed}"
    );
    let (lab, virbr, _) = run("firewalld-virbr");
    let fixed = fix(&virbr);
    assert!(
        fixed.contains("firewall-cmd --permanent --zone=trusted --change-interface=virbr1 "),
        "{fixed}"
    );
    assert!(!fixed.contains(&lab.config.uplink), "{fixed}");
    let evidence = evidence(&seen.verdict).join("\n");
    // Docker's iptables FORWARD accepted the published port first; firewalld runs after it.
    assert!(
        evidence.contains("filter/DOCKER")
            && evidence.contains("inet firewalld/filter_FORWARD_OUT_ZONES"),
        "{evidence}"
    );
}

#[test]
fn prerouting_accept_shadowing_docker_is_dnat_skipped() {
    let (lab, seen, _) = run("prerouting-accept");
    let d = diagnosis(&seen);
    assert_eq!(d["rule"]["chain"], "PREROUTING");
    assert_eq!(d["rule"]["index"], 1);
    assert!(
        d["rule"]["text"]
            .as_str()
            .unwrap_or_default()
            .ends_with("-j ACCEPT"),
        "{d:#}"
    );
    assert_eq!(
        fix(&seen),
        format!(
            "ip netns exec {} iptables -t nat -I PREROUTING 1 -m addrtype --dst-type LOCAL -j DOCKER",
            lab.host.name
        )
    );
    let evidence = evidence(&seen.verdict).join("\n");
    assert!(evidence.contains("the DNAT that never ran: nat/DOCKER rule 2: -A DOCKER ! -i docker0 -p tcp -m tcp --dport 10001 -j DNAT --to-destination 172.17.0.2:80"), "{evidence}");
}

#[test]
fn strict_rp_filter_is_diagnosed() {
    let (_lab, seen, _) = run("rp-filter");
    let evidence = evidence(&seen.verdict).join("\n");
    assert!(
        evidence.contains(
            "net.ipv4.conf.all.rp_filter = 1 (strict), net.ipv4.conf.eth0.rp_filter = 1 (strict)"
        ),
        "{evidence}"
    );
    assert!(
        evidence.contains(&format!(
            "no connected route back to {}",
            lab::UNROUTABLE_CLIENT
        )),
        "{evidence}"
    );
    assert!(
        fix(&seen).contains("sysctl -w net.ipv4.conf.eth0.rp_filter=2"),
        "{}",
        fix(&seen)
    );
}

#[test]
fn dnat_to_nowhere_is_no_route_and_dead_neighbour_is_named() {
    let (_lab, seen, _) = run("dnat-no-route");
    assert!(
        diagnosis(&seen)["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("there is no route to 10.250.0.9")
    );
    assert!(
        fix(&seen).ends_with("or fix the address the DNAT targets"),
        "{}",
        fix(&seen)
    );
    let (_lab, seen, _) = run("dnat-dead-neighbor");
    let summary = diagnosis(&seen)["summary"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        summary.contains("ARP got no answer for 172.17.0.99 on docker0"),
        "{summary}"
    );
}

#[test]
fn same_bridge_traffic_dropped_through_br_netfilter() {
    let (_lab, seen, _) = run("bridge-icc-drop");
    let d = diagnosis(&seen);
    assert_eq!(
        d["rule"]["text"], "-A FORWARD -i docker0 -o docker0 -j DROP",
        "{d:#}"
    );
    let evidence = evidence(&seen.verdict).join("\n");
    assert!(
        evidence.contains("bridge-nf-call-iptables = 1"),
        "{evidence}"
    );
}

/// ebtables' successor: the bridge family's FORWARD chain drops the frame before any IP hook.
#[test]
fn bridge_family_nft_drop_is_named_with_its_port() {
    let (lab, seen, _) = run("bridge-nft-drop");
    let d = diagnosis(&seen);
    assert_eq!(d["rule"]["table"], "bridge filter", "{d:#}");
    assert_eq!(d["rule"]["chain"], "forward");
    assert_eq!(
        d["rule"]["text"],
        format!("ip daddr {} tcp dport 80 drop", lab.config.container_addr)
    );
    assert!(
        d["rule"]["packets"].as_u64().is_some_and(|n| n > 0),
        "{d:#}"
    );
    assert!(
        fix(&seen).contains("nft delete rule bridge filter forward handle"),
        "{}",
        fix(&seen)
    );
    let evidence = evidence(&seen.verdict).join("\n");
    assert!(
        evidence.contains("came in on port") && evidence.contains("of bridge docker0"),
        "{evidence}"
    );
}

/// Rules in both iptables backends: the kernel runs both, each `iptables` lists only its own.
#[test]
fn a_drop_in_iptables_legacy_is_named_next_to_dockers_nft_rules() {
    let (lab, seen, _) = run("iptables-legacy-drop");
    let d = diagnosis(&seen);
    assert_eq!(d["code"], "netfilter_drop", "{d:#}");
    assert_eq!(d["rule"]["table"], "iptables-legacy filter", "{d:#}");
    assert_eq!(d["rule"]["chain"], "FORWARD");
    assert_eq!(d["rule"]["index"], 1);
    assert_eq!(
        d["rule"]["text"],
        format!(
            "-A FORWARD -d {}/32 -p tcp -m tcp --dport 80 -j DROP",
            lab.config.container_addr
        )
    );
    assert!(
        fix(&seen).contains("iptables-legacy -t filter -D FORWARD 1"),
        "{}",
        fix(&seen)
    );
    let evidence = evidence(&seen.verdict).join("\n");
    assert!(
        evidence.contains("both nf_tables (iptables-nft) and x_tables (iptables-legacy)"),
        "{evidence}"
    );
}

/// ebtables as distributions ship it (ebtables-nft): nft shows its `ip` match only as an
/// opaque `xt` expression, so the rule is read from `ebtables-nft-save` and named as
/// ebtables numbers it.
#[test]
fn ebtables_drop_is_named_as_ebtables_prints_it() {
    let (lab, seen, _) = run("bridge-ebtables-drop");
    let d = diagnosis(&seen);
    assert_eq!(d["rule"]["table"], "ebtables filter", "{d:#}");
    assert_eq!(d["rule"]["chain"], "FORWARD");
    assert_eq!(d["rule"]["index"], 1);
    assert_eq!(
        d["rule"]["text"],
        format!(
            "-A FORWARD -p IPv4 --ip-dst {} --ip-proto tcp --ip-dport 80 -j DROP",
            lab.config.container_addr
        )
    );
    assert!(
        d["rule"]["packets"].as_u64().is_some_and(|n| n > 0),
        "{d:#}"
    );
    assert!(
        d["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("ebtables (table filter)"),
        "{d:#}"
    );
    assert!(
        fix(&seen).contains("ebtables -t filter -D FORWARD 1"),
        "{}",
        fix(&seen)
    );
    // The bridge had already picked the egress port (skb->dev) when its FORWARD hook dropped.
    let evidence = evidence(&seen.verdict).join("\n");
    assert!(evidence.contains("headed out of port veth"), "{evidence}");
}

#[test]
fn a_dying_reply_is_judged_as_the_reply_of_its_flow() {
    let (_lab, seen, _) = run("reply-dropped");
    let v = &seen.verdict;
    assert_eq!(v["direction"], "reply", "{v:#}");
    assert_eq!(
        v["diagnosis"]["rule"]["text"],
        "-A FORWARD -i docker0 ! -o docker0 -j DROP"
    );
    assert_eq!(v["diagnosis"]["rule"]["index"], 1);
}

/// Field note 003: the reply is de-NATed by conntrack, hop by hop, with no DNAT rule for it.
#[test]
fn healthy_reply_shows_the_conntrack_rewrite() {
    let lab = lab::Lab::new(lab::LabConfig::default()).expect("lab");
    let outside = lab.config.outside_addr.to_string();
    let mut tracer =
        lab::tracer::Tracer::start(&["--host", &outside, "--proto", "tcp"]).expect("pathtrace");
    assert!(
        lab.connect(std::time::Duration::from_secs(5))
            .expect("connect")
    );
    let v = tracer
        .wait_for(std::time::Duration::from_secs(10), |v| {
            v["kind"] == "verdict" && v["last_hop"]["tcp_flags"] == "SYN|ACK"
        })
        .expect("the SYN-ACK's verdict");
    assert_eq!(v["outcome"], "delivered", "{v:#}");
    assert_eq!(v["direction"], "reply");
    let rw = &v["nat"][0];
    assert_eq!(rw["kind"], "snat", "{v:#}");
    assert_eq!(rw["from"]["src"], lab.config.container_addr.to_string());
    assert_eq!(rw["to"]["src"], lab.config.host_addr.to_string());
    assert_eq!(rw["to"]["sport"], lab.config.published_port);
}

/// `--hooks drops`, the set to leave running: only kfree_skb is attached and the SYN's one hop
/// is its drop, after DNAT. The drop still matches a filter on the published port (conntrack's
/// tuple says where it was sent) and still names the DOCKER-USER rule, its hook inferred from
/// the ruleset with that header and the input interface the drop recorded.
#[test]
fn drops_only_names_the_rule_that_dropped_after_dnat() {
    let lab =
        lab::Lab::with_fault(lab::LabConfig::default(), lab::Fault::DockerUserDrop).expect("lab");
    let container = lab.config.container_addr.to_string();
    let published = lab.config.published_port.to_string();
    let mut tracer =
        lab::tracer::Tracer::start(&["--hooks", "drops", "--dport", &published, "--proto", "tcp"])
            .expect("pathtrace");
    let ready = tracer.seen.last().cloned().unwrap_or(Value::Null);
    assert_eq!(ready["hook_set"], "drops", "{ready:#}");
    assert_eq!(
        ready["hooks"],
        serde_json::json!(["kfree_skb"]),
        "{ready:#}"
    );
    assert!(
        !lab.connect(std::time::Duration::from_millis(1500))
            .expect("connect"),
        "the DOCKER-USER rule must drop the SYN"
    );
    let v = tracer
        .wait_for(std::time::Duration::from_secs(10), |v| {
            v["kind"] == "verdict" && v["last_hop"]["tcp_flags"] == "SYN"
        })
        .expect("the SYN's verdict, matched by the published port it was sent to");
    assert_eq!(v["outcome"], "dropped", "{v:#}");
    assert_eq!(v["drop_reason"], "NETFILTER_DROP", "{v:#}");
    // nf_hook_slow frees the skb, or on newer kernels nft_do_chain with the rule's verdict.
    assert!(
        ["nf_hook_slow", "nft_do_chain"].contains(&v["location"].as_str().unwrap_or("")),
        "{v:#}"
    );
    assert_eq!(v["hops"], 1, "{v:#}");
    assert_eq!(v["last_hop"]["hop"], "drop");
    assert_eq!(
        v["last_hop"]["ifname"], "eth0",
        "dropped in FORWARD, still on the uplink"
    );
    assert_eq!(v["last_hop"]["netns_name"], lab.host.name.as_str());
    assert_eq!(v["tuple"]["dst"], container);
    assert_eq!(v["tuple"]["dport"], 80, "the tuple as dropped: after DNAT");
    assert_eq!(
        v["last_hop"]["entered"]["dport"], lab.config.published_port,
        "conntrack's header: before DNAT {v:#}"
    );
    assert_eq!(
        v["last_hop"]["entered"]["dst"],
        lab.config.host_addr.to_string(),
        "{v:#}"
    );
    let d = &v["diagnosis"];
    assert_eq!(d["code"], "netfilter_drop", "{v:#}");
    assert_eq!(d["rule"]["table"], "filter", "{d:#}");
    assert_eq!(d["rule"]["chain"], "DOCKER-USER", "{d:#}");
    assert_eq!(d["rule"]["index"], 1, "{d:#}");
    assert!(
        d["summary"].as_str().unwrap_or("").contains("FORWARD"),
        "{d:#}"
    );
    assert!(
        evidence(&v).iter().any(|e| e.contains(&format!(
            "addressed to {}:{}",
            lab.config.host_addr, lab.config.published_port
        ))),
        "{:?}",
        evidence(&v)
    );
    assert!(
        d["fix"]
            .as_str()
            .unwrap_or("")
            .contains("iptables -t filter -D DOCKER-USER 1"),
        "{d:#}"
    );
    let stats = tracer.stop().expect("stats");
    assert_eq!(
        stats["delivered"], 0,
        "no consume hook, nothing delivered: {stats}"
    );
}

/// `v` with this lab's own names (namespaces, host-side veths) replaced by their roles.
fn lab_neutral(lab: &lab::Lab, v: &Value) -> Value {
    let mut text = v.to_string();
    let mut names = vec![
        (lab.host.name.clone(), "HOST"),
        (lab.container.name.clone(), "CONTAINER"),
        (lab.outside.name.clone(), "OUTSIDE"),
        (lab.host_veth.clone(), "VETH"),
    ];
    if let Some(peer) = &lab.peer {
        names.push((peer.name.clone(), "PEER"));
    }
    for (name, role) in names {
        text = text.replace(&name, role);
    }
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// The set to leave running names the same cause as the path set, scenario by scenario: each
/// lab scenario whose packet dies, traced once with the path and once with kfree_skb alone,
/// ends with the same reason, diagnosis code, dropping rule and fix. The drop event carries
/// what the path gave the rules: the input interface and the header before NAT.
#[test]
fn every_drop_is_diagnosed_alike_from_the_drop_alone() {
    let dropped: Vec<Scenario> = scenario::all()
        .into_iter()
        .filter(|s| s.expect.outcome == "dropped")
        .collect();
    // The path set first, every scenario in one trace: its diagnosis with the lab's names
    // taken out, and whether the packet died past the container's veth.
    let mut by_path = std::collections::HashMap::new();
    scenario::observe_all(&dropped, "auto", &["--hooks", "path"], |s, seen| {
        let (lab, path) = seen.unwrap_or_else(|e| panic!("{}: {e:#}", s.name));
        let in_container = path.verdict["last_hop"]["netns_name"] == lab.container.name.as_str();
        by_path.insert(
            s.name,
            (lab_neutral(&lab, &path.verdict["diagnosis"]), in_container),
        );
    });
    // Then kfree_skb alone, each scenario with the filter a user would need there.
    let filter_of = |s: &Scenario| {
        // Conntrack's record of where a packet was sent stays in the namespace that NATed
        // it: a packet that died past the container's veth is matched by where it was headed
        // then (docs/backends.md), as `--container` would.
        let in_container = by_path.get(s.name).is_some_and(|(_, c)| *c);
        // Nothing but drops is traced, so no reply is followed: a reply's drop is matched by
        // the connection conntrack says it answers (the user's filter), except where it dies
        // before conntrack has seen it (raw PREROUTING, the bridge's input): there only the
        // client's address matches it.
        let before_conntrack = ["reply-raw-drop", "reply-bridge-drop"].contains(&s.name);
        if before_conntrack {
            vec!["--host".into(), s.client_addr().to_string()]
        } else if in_container && s.judged != scenario::Judged::SynAck {
            vec!["--host".into(), s.container_addr().to_string()]
        } else {
            s.filter()
        }
    };
    let mut compared = Vec::new();
    scenario::observe_all_with(
        &dropped,
        "auto",
        filter_of,
        &["--hooks", "drops"],
        |s, seen| {
            let (lab_d, drops) = seen.unwrap_or_else(|e| panic!("{}: {e:#}", s.name));
            assert_eq!(drops.ready["hook_set"], "drops", "{}", s.name);
            assert_expected(s, &drops, "--hooks drops");
            assert_eq!(drops.verdict["hops"], 1, "{}: {:#}", s.name, drops.verdict);
            // Each run has its own lab: compare with its namespace and veth names taken out.
            let d = lab_neutral(&lab_d, &drops.verdict["diagnosis"]);
            let (p, _) = &by_path[s.name];
            assert!(p["code"].is_string(), "{}: {p:#}", s.name);
            assert_same_diagnosis(s.name, p, &d);
            compared.push(s.name);
        },
    );
    assert_eq!(compared.len(), dropped.len(), "{compared:?}");
    assert!(compared.len() >= 10, "{compared:?}");
}

/// Two diagnoses of one scenario (lab names taken out) name the same cause, rule and fix. The
/// rule's counter is left out: a SYN the client retransmits within the run counts twice.
fn assert_same_diagnosis(scenario: &str, a: &Value, b: &Value) {
    for field in ["code", "fix"] {
        assert_eq!(a[field], b[field], "{scenario}: {field}");
    }
    for field in ["table", "chain", "index", "text"] {
        assert_eq!(
            a["rule"][field], b["rule"][field],
            "{scenario}: rule {field}"
        );
    }
}

/// Field note 002 with kfree_skb alone: the SYN dies with NO_SOCKET in the host namespace,
/// still addressed to the published port, and that one hop is proof enough that its DNAT
/// never ran: the daemon's cheap set names the shadowing rule as the path set does.
#[test]
fn drops_only_still_names_a_skipped_dnat() {
    let lab = lab::Lab::with_fault(
        lab::LabConfig::default(),
        lab::Fault::PreroutingAcceptShadow,
    )
    .expect("lab");
    let mut tracer =
        lab::tracer::Tracer::start(&["--hooks", "drops", "--dport", "10001"]).expect("pathtrace");
    assert!(
        !lab.connect(std::time::Duration::from_millis(1500))
            .expect("connect"),
        "the host itself must refuse the SYN"
    );
    let v = tracer
        .wait_for(std::time::Duration::from_secs(10), |v| {
            v["kind"] == "verdict" && v["last_hop"]["tcp_flags"] == "SYN"
        })
        .expect("the SYN's verdict");
    assert_eq!(v["hops"], 1, "{v:#}");
    assert_eq!(v["drop_reason"], "NO_SOCKET", "{v:#}");
    assert_eq!(v["last_hop"]["netns_name"], lab.host.name.as_str());
    let d = &v["diagnosis"];
    assert_eq!(d["code"], "dnat_skipped", "{v:#}");
    assert_eq!(d["rule"]["chain"], "PREROUTING", "{d:#}");
    assert_eq!(d["rule"]["index"], 1, "{d:#}");
    assert_eq!(
        d["fix"],
        format!(
            "ip netns exec {} iptables -t nat -I PREROUTING 1 -m addrtype --dst-type LOCAL -j DOCKER",
            lab.host.name
        )
    );
    assert!(
        evidence(&v)[0].ends_with("until it was dropped: no DNAT"),
        "{:?}",
        evidence(&v)
    );
    tracer.stop().expect("stats");
}

/// A trace's default on tracepoints, `--hooks receive` (every device a packet enters, the
/// transmit tracepoint left out), judges every scenario as the path set does: the same
/// outcome, reason, diagnosis and fix, NAT followed from one namespace to the next, and the
/// same hops, transmits included: each one the path traces is inferred from the receive after
/// it (a veth's other end, the bridge before a port), and only those are marked inferred.
#[test]
fn every_scenario_is_judged_alike_from_its_receives() {
    let all = scenario::all();
    let neutral_hops =
        |lab: &lab::Lab, seen: &Observed| lab_neutral(lab, &serde_json::json!(seen.hop_names()));
    // The path set first, every scenario in one trace: hops and verdict, lab names taken out.
    let mut by_path = std::collections::HashMap::new();
    scenario::observe_all(&all, "auto", &["--hooks", "path"], |s, seen| {
        let (lab, path) = seen.unwrap_or_else(|e| panic!("{}: {e:#}", s.name));
        assert_eq!(path.ready["hook_set"], "path", "{}", s.name);
        assert!(
            path.hops.iter().all(|h| h.get("inferred").is_none()),
            "{}: the path set infers nothing",
            s.name
        );
        by_path.insert(
            s.name,
            (neutral_hops(&lab, &path), lab_neutral(&lab, &path.verdict)),
        );
    });
    let mut compared = Vec::new();
    scenario::observe_all(&all, "auto", &[], |s, seen| {
        let (lab_r, rx) = seen.unwrap_or_else(|e| panic!("{}: {e:#}", s.name));
        let (path_hops, p) = &by_path[s.name];
        assert_eq!(rx.ready["hook_set"], "receive", "{}: the default", s.name);
        assert_eq!(
            rx.ready["hooks"],
            serde_json::json!(["netif_receive_skb", "kfree_skb", "consume_skb"]),
            "{}",
            s.name
        );
        assert_expected(s, &rx, "--hooks receive");
        assert_eq!(
            &neutral_hops(&lab_r, &rx),
            path_hops,
            "{}: the path's hops, its transmits inferred",
            s.name
        );
        let marked: Vec<bool> = rx.hops.iter().map(|h| h["inferred"] == true).collect();
        let transmits: Vec<bool> = rx.hops.iter().map(|h| h["hop"] == "transmit").collect();
        assert_eq!(
            marked, transmits,
            "{}: every transmit, and only those, inferred",
            s.name
        );
        let r = lab_neutral(&lab_r, &rx.verdict);
        for field in ["outcome", "delivery", "drop_reason"] {
            assert_eq!(p[field], r[field], "{}: {field}", s.name);
        }
        // Addresses only: each connect has its own client port.
        let rewrites = |v: &Value| {
            v["nat"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    (
                        n["kind"].clone(),
                        n["to"]["src"].clone(),
                        n["to"]["dst"].clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(rewrites(p), rewrites(&r), "{}: NAT followed", s.name);
        assert_eq!(
            (&p["tuple"]["src"], &p["tuple"]["dst"]),
            (&r["tuple"]["src"], &r["tuple"]["dst"]),
            "{}",
            s.name
        );
        assert_same_diagnosis(s.name, &p["diagnosis"], &r["diagnosis"]);
        compared.push(s.name);
    });
    assert_eq!(compared.len(), all.len(), "{compared:?}");
    assert!(compared.len() >= 15, "{compared:?}");
}

/// `-t raw -A PREROUTING -m conntrack --ctstate INVALID -j DROP`: conntrack has not run in
/// raw, so every packet is INVALID there and the SYN dies at that rule, which the diagnosis
/// names (the differential check against the kernel's counters found it unnamed before).
#[test]
fn a_raw_table_invalid_drop_is_named() {
    let config = lab::LabConfig::unusual();
    let lab = lab::Lab::new(config.clone()).expect("lab");
    lab.host
        .exec(
            "iptables",
            &[
                "-t",
                "raw",
                "-A",
                "PREROUTING",
                "-m",
                "conntrack",
                "--ctstate",
                "INVALID",
                "-j",
                "DROP",
            ],
        )
        .expect("raw rule");
    let port = config.published_port.to_string();
    let mut t = Tracer::start(&["--dport", &port, "--proto", "tcp"]).expect("pathtrace starts");
    assert!(!lab.connect(Duration::from_millis(1500)).expect("connect"));
    let v = t
        .wait_for(Duration::from_secs(10), |v| {
            v["kind"] == "verdict" && v["last_hop"]["tcp_flags"] == "SYN"
        })
        .expect("a verdict");
    let _ = t.stop();
    assert_eq!(v["drop_reason"], "NETFILTER_DROP", "{v:#}");
    let rule = &v["diagnosis"]["rule"];
    assert_eq!(rule["table"], "raw", "{v:#}");
    assert_eq!(rule["chain"], "PREROUTING");
    assert_eq!(rule["index"], 1);
}

/// Every scenario on three topologies: Docker's default names, a user-defined network
/// (`br-<12 hex>`, 172.18.0.0/16, the port published on one host address) and one resembling
/// neither. Same verdict, reason and diagnosis code, and nothing in the diagnosis names a
/// bridge or subnet of another topology.
#[test]
fn every_scenario_holds_on_three_topologies() {
    let moved: Vec<Scenario> = scenario::all()
        .iter()
        .flat_map(|s| {
            lab::LabConfig::topologies()
                .into_iter()
                // The scenario's own topology: its own test ran it.
                .filter(|config| config.bridge != s.config.bridge)
                .map(|config| s.on(&config))
        })
        .collect();
    let mut ran = Vec::new();
    // One trace per topology's filter: each scenario's lab is met by a trace already running.
    scenario::observe_all(&moved, "auto", &[], |moved, seen| {
        let config = &moved.config;
        let (_lab, seen) = seen.unwrap_or_else(|e| panic!("{}: {e:#}", moved.name));
        assert!(
            seen.matches(&moved.expect) && seen.connection_tells(moved),
            "{} on bridge {}: expected {:?}, pathtrace said {:#} in connection {:#?}",
            moved.name,
            config.bridge,
            moved.expect,
            seen.verdict,
            seen.connection()
        );
        let said = seen.verdict["diagnosis"].to_string();
        // The other topologies' bridges and container subnets (`172.17.0.`).
        let foreign = lab::LabConfig::topologies()
            .into_iter()
            .filter(|t| t.bridge != config.bridge)
            .flat_map(|t| {
                let ip = t.container_addr.to_string();
                let subnet = ip
                    .rsplit_once('.')
                    .map_or(ip.clone(), |(net, _)| format!("{net}."));
                [t.bridge, subnet]
            });
        for name in foreign {
            assert!(
                !said.contains(&name),
                "{} on bridge {}: the diagnosis names `{name}` of another topology: {said}",
                moved.name,
                config.bridge
            );
        }
        ran.push(format!("{}@{}", moved.name, config.bridge));
    });
    assert_eq!(ran.len(), moved.len(), "{ran:?}");
    assert!(ran.len() >= 2 * 18, "{ran:?}");
}

/// The expected dropping rule of each reply scenario (`table/chain rule N`); `None` where no
/// rule drops it.
fn reply_rule(name: &str) -> Option<&'static str> {
    match name {
        "reply-dropped" => Some("filter/FORWARD rule 1"),
        "reply-raw-drop" => Some("raw/PREROUTING rule 1"),
        "reply-mangle-drop" => Some("mangle/FORWARD rule 1"),
        "reply-docker-user-drop" => Some("filter/DOCKER-USER rule 1"),
        "reply-bridge-drop" => Some("bridge replies/input rule 1"),
        _ => None,
    }
}

/// Field note 003 as a user meets it: `pathtrace --dport <published port>`, nothing else. The
/// SYN is delivered; its SYN-ACK, which the filter does not match (its source is the
/// container's port), is followed by the kernel from its first hop in the container and dies
/// at each place a reply can die. Its verdict names the rule and fix, and the connection line
/// says the SYN got in and the SYN-ACK died there.
#[test]
fn every_reply_drop_is_traced_from_the_users_filter() {
    let mut ran = Vec::new();
    for s in scenario::all()
        .into_iter()
        .filter(|s| s.judged == scenario::Judged::SynAck)
    {
        assert_eq!(
            s.filter(),
            ["--dport", &s.config.published_port.to_string()],
            "the user's filter"
        );
        let (lab, seen, _) = run(s.name);
        assert!(
            seen.ready["filter"]
                .as_str()
                .is_some_and(|f| f.ends_with("and their replies")),
            "{}: {}",
            s.name,
            seen.ready["filter"]
        );
        let v = &seen.verdict;
        assert_eq!(v["direction"], "reply", "{}: {v:#}", s.name);
        // From its first hop: the container's end of the veth.
        assert_eq!(
            seen.hops[0]["netns_name"],
            lab.container.name.as_str(),
            "{}: {:#?}",
            s.name,
            seen.hops
        );
        assert!(
            seen.hops.iter().any(|h| h["followed"] == true),
            "{}: the hop where following began is marked: {:#?}",
            s.name,
            seen.hops
        );
        let drop = seen.hops.last().expect("hops");
        assert_eq!(drop["netns_name"], lab.host.name.as_str(), "{}", s.name);
        let c = seen.connection().expect("connection line");
        let summary = c["summary"].as_str().unwrap_or_default();
        assert!(
            summary.starts_with(&format!(
                "SYN delivered to {}:{}",
                s.config.container_addr, s.config.container_port
            )),
            "{}: {summary}",
            s.name
        );
        match reply_rule(s.name) {
            Some(rule) => {
                let named = seen.rule().unwrap_or_default();
                assert!(named.starts_with(rule), "{}: {named}", s.name);
                assert!(
                    summary.contains(&format!(
                        "SYN-ACK dropped in netns {} at {rule}",
                        lab.host.name
                    )),
                    "{}: {summary}",
                    s.name
                );
                assert!(
                    v["diagnosis"]["fix"]
                        .as_str()
                        .is_some_and(|f| f.contains(&lab.host.name)),
                    "{}: {v:#}",
                    s.name
                );
            }
            None => assert!(
                summary.contains(&format!("SYN-ACK dropped in netns {}", lab.host.name)),
                "{}: {summary}",
                s.name
            ),
        }
        ran.push(s.name);
    }
    assert!(ran.len() >= 6, "{ran:?}");
}

/// Conntrack's view and `--stack` where they explain a fate, on the unusual topology: a
/// SYN-ACK dropped past conntrack shows the entry it belongs to (the reply direction, the
/// DNAT its answer undoes, both tuples) and the kernel stack through netfilter; one dropped in
/// raw PREROUTING shows none, because conntrack had not seen it yet; a healthy SYN traced
/// with `--hooks path` shows the entry where it was made (NEW, DNAT done), once.
#[test]
fn conntrack_and_the_kernel_stack_explain_where_a_packet_died() {
    let topo = lab::LabConfig::unusual();
    let (pp, cp) = (topo.published_port, topo.container_port);

    let s = scenario::find("reply-docker-user-drop")
        .expect("scenario")
        .on(&topo);
    let (_lab, seen) =
        scenario::observe_with(&s, "auto", None, &["--stack"]).expect("scenario runs");
    assert!(seen.matches(&s.expect), "{:#}", seen.verdict);
    let drop = seen.hops.last().expect("hops");
    let ct = &drop["conntrack"];
    assert_eq!(ct["state"], "ESTABLISHED", "{drop:#}");
    assert_eq!(ct["direction"], "reply", "{drop:#}");
    assert!(
        ct["status"]
            .as_array()
            .is_some_and(|a| a.contains(&"DNAT".into())),
        "{drop:#}"
    );
    assert_eq!(ct["original"]["dport"], pp, "{drop:#}");
    assert_eq!(
        ct["original"]["dst"],
        topo.host_addr.to_string(),
        "{drop:#}"
    );
    assert_eq!(
        ct["reply"]["src"],
        topo.container_addr.to_string(),
        "{drop:#}"
    );
    assert_eq!(ct["reply"]["sport"], cp, "{drop:#}");
    let stack: Vec<&str> = drop["stack"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        stack.first().is_some_and(|f| !f.starts_with("bpf_")),
        "the tracing frames are left out: {stack:#?}"
    );
    assert!(
        stack.iter().any(|f| f.starts_with("nf_hook_slow+")),
        "dropped inside a netfilter hook: {stack:#?}"
    );

    let s = scenario::find("reply-raw-drop")
        .expect("scenario")
        .on(&topo);
    let (_lab, seen) = scenario::observe(&s, "auto").expect("scenario runs");
    assert!(seen.matches(&s.expect), "{:#}", seen.verdict);
    let drop = seen.hops.last().expect("hops");
    assert!(
        drop.get("conntrack").is_none() && drop.get("stack").is_none(),
        "no entry before conntrack ran, no stack unasked: {drop:#}"
    );

    let s = scenario::find("healthy").expect("scenario").on(&topo);
    let (_lab, seen) =
        scenario::observe_with(&s, "auto", None, &["--hooks", "path"]).expect("scenario runs");
    assert_eq!(seen.outcome(), "delivered", "{:#}", seen.verdict);
    let with_ct: Vec<&Value> = seen
        .hops
        .iter()
        .filter(|h| h.get("conntrack").is_some())
        .collect();
    let first = with_ct.first().expect("a hop with conntrack's entry");
    assert_eq!(first["conntrack"]["state"], "NEW", "{first:#}");
    assert_eq!(first["conntrack"]["direction"], "original", "{first:#}");
    assert_eq!(
        first["netns_name"], seen.hops[1]["netns_name"],
        "in the host: {first:#}"
    );
    assert!(
        first["conntrack"]["status"]
            .as_array()
            .is_some_and(|a| a.contains(&"DNAT".into())),
        "{first:#}"
    );
    assert!(
        with_ct.len() <= 2,
        "shown where it changes, not on every hop: {:#?}",
        seen.hops
    );
}

/// A reply marked for a second uplink fails strict reverse path filtering on the bridge: on a
/// user-defined network's names, the drop carries the packet's fwmark and conntrack's mark,
/// the diagnosis follows the mark through `ip rule` to the table that sent the check astray,
/// and the fix routes the bridge's subnet in that table.
#[test]
fn a_reply_marked_for_another_uplink_is_diagnosed_through_its_mark() {
    let topo = lab::LabConfig::user_network();
    let s = scenario::find("reply-marked-rp-filter")
        .expect("scenario")
        .on(&topo);
    let (lab, seen) = scenario::observe(&s, "auto").expect("scenario runs");
    assert!(seen.matches(&s.expect), "{:#}", seen.verdict);
    let drop = seen.hops.last().expect("hops");
    assert_eq!(drop["mark"], 2, "{drop:#}");
    assert_eq!(drop["conntrack"]["mark"], 2, "{drop:#}");
    assert_eq!(drop["ifname"], topo.bridge.as_str(), "{drop:#}");
    let d = &seen.verdict["diagnosis"];
    let summary = d["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&format!(
            "looked up with its fwmark 0x2, the route back to {} comes from table 102, which does not send it out {}",
            topo.container_addr, topo.bridge
        )),
        "{summary}"
    );
    let subnet = topo.bridge_subnet();
    assert_eq!(
        d["fix"].as_str(),
        Some(
            format!(
                "ip netns exec {} ip route add {subnet} dev {} table 102   # the marked table's way back to {}; or loose mode: sysctl -w net.ipv4.conf.{}.rp_filter=2 net.ipv4.conf.all.rp_filter=2",
                lab.host.name, topo.bridge, topo.container_addr, topo.bridge
            )
            .as_str()
        ),
        "{d:#}"
    );
    assert!(
        evidence(&seen.verdict)
            .iter()
            .any(|e| e.contains("ip rule 32765: fwmark 0x2 lookup 102, ahead of main")),
        "{d:#}"
    );
}

/// `--no-replies` is what a trace was before the kernel followed replies: the SYN alone. The
/// same reply scenario then shows no SYN-ACK at all, so the test above cannot pass by a filter
/// that matched the reply by accident.
#[test]
fn without_following_replies_the_dying_syn_ack_is_not_seen() {
    let s = scenario::find("reply-docker-user-drop").expect("scenario");
    let lab = lab::Lab::with_fault(s.config.clone(), s.fault.clone().expect("fault")).expect("lab");
    let port = s.config.published_port.to_string();
    let mut tracer =
        Tracer::start(&["--dport", &port, "--proto", "tcp", "--no-replies"]).expect("pathtrace");
    assert!(!lab.connect(Duration::from_millis(1500)).expect("connect"));
    tracer
        .wait_for(Duration::from_secs(10), |v| {
            v["kind"] == "verdict" && v["last_hop"]["tcp_flags"] == "SYN"
        })
        .expect("the SYN's verdict");
    let (_, lines) = tracer.stop_with_lines().expect("stops");
    let replies: Vec<_> = lines
        .iter()
        .filter(|v| v["kind"] == "verdict" && v["direction"] != "original")
        .collect();
    assert!(replies.is_empty(), "{replies:#?}");
}

/// A REJECT answers the SYN with an ICMP port unreachable. The kernel follows it by the header
/// it quotes (the SYN as the client sent it, after conntrack translated the quote back), and
/// it is shown in the SYN's flow, as related, and in the connection line.
#[test]
fn a_reject_s_icmp_error_is_shown_with_its_flow() {
    let (lab, seen, _) = run("forward-reject");
    let flow = seen.verdict["flow"].clone();
    let icmp = seen
        .verdicts
        .iter()
        .find(|v| v["icmp"].is_object())
        .unwrap_or_else(|| panic!("no ICMP error: {:#?}", seen.verdicts));
    assert_eq!(icmp["icmp"]["error"], "port unreachable", "{icmp:#}");
    assert_eq!(icmp["direction"], "related", "{icmp:#}");
    assert_eq!(icmp["flow"], flow, "{icmp:#}");
    let about = &icmp["icmp"]["about"];
    assert_eq!(about["dst"], lab.config.host_addr.to_string(), "{icmp:#}");
    assert_eq!(about["dport"], lab.config.published_port, "{icmp:#}");
    assert_eq!(about["src"], lab.config.outside_addr.to_string());
    let c = seen.connection().expect("connection");
    assert!(
        c["steps"].as_array().is_some_and(|s| s
            .iter()
            .any(|st| st["packet"] == "ICMP port unreachable" && st["direction"] == "related")),
        "{c:#}"
    );
    assert_eq!(c["state"], "dropped", "{c:#}");
}

/// The kernel hands a freed namespace's inode to the next namespace made. A trace that outlives
/// one lab (a daemon outliving containers) must name the lab that now has the number, and its
/// devices, not the one it knew under it.
#[test]
fn a_namespace_number_handed_on_names_its_new_owner() {
    use std::os::unix::fs::MetadataExt as _;
    let first_config = lab::LabConfig {
        uplink: "ext7".into(),
        bridge: "lan-pods".into(),
        outside_addr: std::net::Ipv4Addr::new(100, 88, 4, 2),
        host_addr: std::net::Ipv4Addr::new(100, 88, 4, 1),
        uplink_prefix: 30,
        bridge_addr: std::net::Ipv4Addr::new(10, 31, 7, 1),
        container_addr: std::net::Ipv4Addr::new(10, 31, 7, 9),
        bridge_prefix: 24,
        published_port: 7443,
        container_port: 9100,
        publish_on: None,
        ..lab::LabConfig::default()
    };
    // Same addresses and port (one filter), other device names: a device table kept from the
    // first lab would name the second's uplink `ext7`.
    let second_config = lab::LabConfig {
        uplink: "wan9".into(),
        bridge: "pods-b".into(),
        ..first_config.clone()
    };
    let inodes = |l: &lab::Lab| -> Vec<u64> {
        [&l.outside, &l.host, &l.container]
            .iter()
            .filter_map(|n| std::fs::metadata(n.path()).ok().map(|m| m.ino()))
            .collect()
    };
    // Every hop of the delivered SYN, as `hop ifname@netns`.
    let syn_hops = |t: &mut Tracer, l: &lab::Lab| -> Vec<String> {
        t.seen.clear();
        assert!(
            l.connect(Duration::from_secs(5)).expect("connect"),
            "the lab answers"
        );
        let v = t
            .wait_for(Duration::from_secs(20), |v| {
                v["kind"] == "verdict" && v["last_hop"]["tcp_flags"] == "SYN"
            })
            .expect("a verdict");
        assert_eq!(v["outcome"], "delivered", "{v:#}");
        t.hops_of(&v)
            .iter()
            .map(|h| {
                let s = |k: &str| h[k].as_str().unwrap_or("?").to_owned();
                format!("{} {}@{}", s("hop"), s("ifname"), s("netns_name"))
            })
            .collect()
    };
    let port = first_config.published_port.to_string();
    let mut t = Tracer::start(&["--dport", &port, "--proto", "tcp"]).expect("pathtrace starts");
    let first = lab::Lab::new(first_config).expect("first lab");
    let first_host = first.host.name.clone();
    let hops = syn_hops(&mut t, &first);
    assert!(
        hops.iter()
            .any(|h| h.ends_with(&format!("ext7@{first_host}"))),
        "the first lab's uplink is named: {hops:#?}"
    );
    let taken = inodes(&first);
    drop(first);
    // The old namespaces are freed in the background: build labs until one gets a number the
    // first lab had.
    let mut second = None;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(300));
        let l = lab::Lab::new(second_config.clone()).expect("second lab");
        if inodes(&l).iter().any(|i| taken.contains(i)) {
            second = Some(l);
            break;
        }
    }
    let second = second.expect("no new namespace got a freed one's inode in 30 tries");
    let hops = syn_hops(&mut t, &second);
    let _ = t.stop();
    let prefix = second
        .host
        .name
        .strip_suffix("-host")
        .expect("lab names end in -host")
        .to_owned();
    assert!(
        hops.iter()
            .all(|h| !h.contains(&first_host) && !h.contains("ext7")),
        "a hop of the second lab is named after the first: {hops:#?}"
    );
    assert!(
        hops.iter()
            .any(|h| h.ends_with(&format!("wan9@{}", second.host.name))),
        "the second lab's uplink is named: {hops:#?}"
    );
    assert!(
        hops.iter()
            .filter(|h| !h.ends_with("@-"))
            .all(|h| h.contains(&prefix)),
        "every lab hop names the second lab's namespaces: {hops:#?}"
    );
}

/// `Udp: NoPorts` in a namespace: the kernel's own count of datagrams freed for want of a
/// socket.
fn udp_no_ports(ns: &lab::Netns) -> u64 {
    let text = ns
        .run_in(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .expect("thread in namespace")
        .expect("snmp");
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().expect("header"), udp.next().expect("values"));
    let i = names
        .split_whitespace()
        .position(|n| n == "NoPorts")
        .expect("NoPorts");
    values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .expect("a number")
}

/// A UDP flood to a port nothing listens on, every datagram matching: the first packets in
/// full, the rest counted in the kernel and told as one summary whose count, with the full
/// ones, equals the kernel's own NoPorts counter; one datagram in the middle from another
/// source port (the same flow), which an INPUT rule drops, is shown whole (its shared receive repeated, its own drop traced) with
/// its rule. On a topology that is not Docker's.
#[test]
fn a_flood_is_counted_to_the_packet_and_a_packet_parting_from_it_is_shown_whole() {
    let config = lab::LabConfig::unusual();
    let lab = lab::Lab::new(config.clone()).expect("lab");
    let port: u16 = 47113;
    lab.host
        .exec(
            "iptables",
            &[
                "-I", "INPUT", "-p", "udp", "--sport", "47999", "--dport", "47113", "-j", "DROP",
            ],
        )
        .expect("the length rule");
    let before = udp_no_ports(&lab.host);
    let mut t = Tracer::start(&[
        "--dport",
        "47113",
        "--proto",
        "udp",
        "--packets-per-flow",
        "5",
    ])
    .expect("pathtrace starts");
    let to = std::net::SocketAddrV4::new(config.host_addr, port);
    let sent = lab
        .outside
        .run_in(move || -> std::io::Result<u64> {
            let s = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0))?;
            s.connect(to)?;
            let mut sent = 0u64;
            let burst = |n: u64, sent: &mut u64| {
                for _ in 0..n {
                    if s.send(&[0x5a; 18]).is_ok() {
                        *sent += 1;
                    }
                }
            };
            burst(60_000, &mut sent);
            let odd = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 47999))?;
            odd.send_to(&[0x77; 18], to)?;
            burst(60_000, &mut sent);
            Ok(sent)
        })
        .expect("thread in namespace")
        .expect("flood sent");
    t.wait_for(Duration::from_secs(15), |v| {
        v["kind"] == "summary" && v["ended"] == true && v["drop_reason"] == "NO_SOCKET"
    })
    .expect("the flood's summary once it stopped");
    let (stats, lines) = t.stop_with_lines().expect("stats");
    let no_ports = udp_no_ports(&lab.host) - before;
    let full = lines
        .iter()
        .filter(|v| v["kind"] == "verdict" && v["drop_reason"] == "NO_SOCKET")
        .count() as u64;
    let summarised: u64 = lines
        .iter()
        .filter(|v| v["kind"] == "summary" && v["drop_reason"] == "NO_SOCKET")
        .map(|v| v["packets"].as_u64().unwrap_or(0))
        .sum();
    let text = lab::tracer::transcript(&lines, lines.len());
    assert!(summarised > 0, "nothing summarised:\n{text}");
    assert!(
        full < 200,
        "{full} full packets for a 5-per-second budget:\n{text}"
    );
    assert_eq!(no_ports, sent, "the kernel's count of the small datagrams");
    assert_eq!(
        full + summarised,
        no_ports,
        "full {full} + summarised {summarised}:\n{text}"
    );
    assert_eq!(stats["lost"], 0, "{stats}");
    assert_eq!(stats["kernel"]["uncounted"], 0, "{stats}");
    assert_eq!(
        stats["summarised"].as_u64(),
        stats["kernel"]["summarised"].as_u64(),
        "{stats}"
    );
    // The one that took another way: whole, with the rule that dropped it.
    let at = lines
        .iter()
        .position(|v| v["kind"] == "verdict" && v["drop_reason"] == "NETFILTER_DROP")
        .unwrap_or_else(|| panic!("the odd datagram's verdict:\n{text}"));
    let parted = &lines[at];
    let hops: Vec<&Value> = lab::tracer::hops_before(&lines, at).iter().collect();
    assert!(
        hops.iter()
            .any(|h| h["hop"] == "receive" && h["ifname"] == config.uplink.as_str()),
        "its receive on {}: {hops:#?}",
        config.uplink
    );
    assert_eq!(
        hops.last().map(|h| &h["hop"]),
        Some(&Value::from("drop")),
        "{hops:#?}"
    );
    assert_eq!(parted["diagnosis"]["rule"]["chain"], "INPUT", "{parted:#}");
    // It was quiet until it parted (the budget was spent long before it came): its receive
    // (the first hop traced, after the transmit inferred from it) is the flow's, repeated.
    assert_eq!(stats["kernel"]["resumed"], 1, "{stats}");
    assert!(
        hops.iter()
            .find(|h| h["inferred"] != true)
            .is_some_and(|h| h["repeated"] == true && h["hop"] == "receive"),
        "{hops:#?}"
    );
}

/// A flood that ends two ways by turns, the rarer one never among its budgeted packets (an
/// INPUT rule drops one datagram in 40; the 3 full packets a second go out back to back, so
/// they seldom meet it): the first packet to take the rarer way is shown whole, and its way
/// is then the flood's, so the rest are counted and told as their own summary, named by a
/// packet that died there. Counts equal the kernel's: the rule's counter and NoPorts. On a
/// topology that is not Docker's, a port unlike the issue's.
#[test]
fn a_flood_ending_two_ways_shows_each_way_once_and_counts_the_rest() {
    let config = lab::LabConfig::unusual();
    let lab = lab::Lab::new(config.clone()).expect("lab");
    let port: u16 = 38211;
    lab.host
        .exec(
            "iptables",
            &[
                "-I",
                "INPUT",
                "-p",
                "udp",
                "--dport",
                "38211",
                "-m",
                "statistic",
                "--mode",
                "nth",
                "--every",
                "40",
                "--packet",
                "7",
                "-j",
                "DROP",
            ],
        )
        .expect("the every-40th rule");
    let before = udp_no_ports(&lab.host);
    let mut t = Tracer::start(&[
        "--dport",
        "38211",
        "--proto",
        "udp",
        "--packets-per-flow",
        "3",
    ])
    .expect("pathtrace starts");
    let to = std::net::SocketAddrV4::new(config.host_addr, port);
    let sent = lab
        .outside
        .run_in(move || -> std::io::Result<u64> {
            let s = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0))?;
            s.connect(to)?;
            let mut sent = 0u64;
            for _ in 0..80_000 {
                if s.send(&[0x3c; 22]).is_ok() {
                    sent += 1;
                }
            }
            Ok(sent)
        })
        .expect("thread in namespace")
        .expect("flood sent");
    t.wait_for(Duration::from_secs(15), |v| {
        v["kind"] == "summary" && v["ended"] == true && v["drop_reason"] == "NETFILTER_DROP"
    })
    .expect("the rule's share told as its own summary");
    let (stats, lines) = t.stop_with_lines().expect("stats");
    let text = lab::tracer::transcript(&lines, lines.len());
    let no_ports = udp_no_ports(&lab.host) - before;
    let saved = lab
        .host
        .exec("iptables-save", &["-c"])
        .expect("iptables-save");
    let by_rule: u64 = saved
        .lines()
        .find(|l| l.contains("statistic") && l.contains("38211"))
        .and_then(|l| l.strip_prefix('['))
        .and_then(|l| l.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the rule's counter in:\n{saved}"));
    assert_eq!(no_ports + by_rule, sent, "the kernel's two counts");
    let count = |reason: &str| {
        let full = lines
            .iter()
            .filter(|v| v["kind"] == "verdict" && v["drop_reason"] == reason)
            .count() as u64;
        let summarised: u64 = lines
            .iter()
            .filter(|v| v["kind"] == "summary" && v["drop_reason"] == reason)
            .map(|v| v["packets"].as_u64().unwrap_or(0))
            .sum();
        (full, summarised)
    };
    let (rule_full, rule_summarised) = count("NETFILTER_DROP");
    let (port_full, port_summarised) = count("NO_SOCKET");
    // Each way shown a few times (its budgeted packets, a packet that parted before its way
    // was learnt or after the other pushed it out), not once per rule drop (2,000 of them).
    assert!(
        rule_full < 60,
        "{rule_full} rule drops shown whole:\n{text}"
    );
    assert!(
        rule_summarised > 1_000,
        "{rule_summarised} counted:\n{text}"
    );
    assert_eq!(rule_full + rule_summarised, by_rule, "{text}");
    assert_eq!(port_full + port_summarised, no_ports, "{text}");
    assert_eq!(stats["lost"], 0, "{stats}");
    assert_eq!(stats["kernel"]["uncounted"], 0, "{stats}");
    assert!(
        stats["kernel"]["resumed"].as_u64().is_some_and(|n| n < 60),
        "{stats}"
    );
    // The rule's summary is told with the rule that dropped its packets: named by a packet
    // that died there, though hundreds of NO_SOCKET ones were shown after it.
    let summary = lines
        .iter()
        .find(|v| v["kind"] == "summary" && v["drop_reason"] == "NETFILTER_DROP")
        .expect("found above");
    assert_eq!(summary["outcome"], "dropped", "{summary:#}");
    assert_eq!(summary["tuple"]["dport"], 38211, "{summary:#}");
}

/// An IPv6 SYN, routed from outside to a container's address on a port nothing listens on, as
/// a user filters it: by an IPv6 prefix and the port. Every hop on the way (the uplink, the
/// bridge, the container's eth0) with its IPv6 header, the drop where and why the kernel says
/// (`tcp_v6_rcv`, NO_SOCKET), the diagnosis naming the address and port in IPv6's notation. A
/// trace restricted to IPv4 (`-4`) sees none of it. On the topology that resembles nothing of
/// Docker's.
#[test]
fn ipv6_syn_to_a_closed_port_is_traced_and_diagnosed() {
    const PORT: u16 = 9417;
    let lab = lab::Lab::new(lab::LabConfig::unusual()).expect("lab");
    lab.dual_stack().expect("dual stack");
    let v6 = lab.config.v6;
    let (ctr, client) = (v6.container.to_string(), v6.outside.to_string());
    let mut t = Tracer::start(&["--host", "fd42:c8::/32", "--dport", &PORT.to_string()])
        .expect("pathtrace");
    assert!(
        !lab.connect6(PORT, Duration::from_secs(3)).expect("connect"),
        "nothing listens on port {PORT}: the connect must be refused"
    );
    let verdict = t
        .wait_for(Duration::from_secs(15), |v| {
            v["kind"] == "verdict" && v["tuple"]["dst"] == ctr.as_str()
        })
        .expect("the IPv6 SYN's verdict");
    assert_eq!(verdict["outcome"], "dropped", "{verdict:#}");
    assert_eq!(verdict["drop_reason"], "NO_SOCKET", "{verdict:#}");
    assert_eq!(verdict["location"], "tcp_v6_rcv", "{verdict:#}");
    assert_eq!(verdict["tuple"]["src"], client.as_str());
    let d = &verdict["diagnosis"];
    assert_eq!(d["code"], "no_listener", "{verdict:#}");
    let summary = d["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&format!("[{ctr}]:{PORT}")) && summary.contains(&lab.container.name),
        "{summary}"
    );
    let hops: Vec<String> = t
        .hops_of(&verdict)
        .iter()
        .map(|h| {
            assert_eq!(h["family"], "ipv6", "{h:#}");
            assert_eq!(h["src"], client.as_str(), "{h:#}");
            format!(
                "{} {}@{}{}",
                h["hop"].as_str().unwrap_or("?"),
                h["ifname"].as_str().unwrap_or("?"),
                h["netns_name"].as_str().unwrap_or("?"),
                if h["inferred"] == true {
                    " (inferred)"
                } else {
                    ""
                }
            )
        })
        .collect();
    let (host, ctr_ns) = (&lab.host.name, &lab.container.name);
    // Routed onto the bridge, the packet is received on the uplink and in the container; the
    // host veth's transmit between them is proved by that receive.
    let wanted = [
        format!("receive wan0@{host}"),
        format!("transmit {}@{host} (inferred)", lab.host_veth),
        format!("receive eth0@{ctr_ns}"),
        format!("drop eth0@{ctr_ns}"),
    ];
    for w in &wanted {
        assert!(
            hops.contains(w),
            "wanted `{w}` among the SYN's hops: {hops:#?}"
        );
    }
    t.stop().expect("stop");

    // The same SYN under `-4`: not a single line about it.
    let mut t4 = Tracer::start(&["-4", "--dport", &PORT.to_string()]).expect("pathtrace -4");
    assert!(!lab.connect6(PORT, Duration::from_secs(3)).expect("connect"));
    let seen = t4
        .try_wait_for(Duration::from_secs(3), |v| v["kind"] == "verdict")
        .expect("pathtrace -4 runs");
    assert!(seen.is_none(), "-4 traced an IPv6 packet: {seen:#?}");
}
