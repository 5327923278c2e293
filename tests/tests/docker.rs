//! pathtrace against a real dockerd: container names on every hop, the target of a SYN that
//! died before its container, `--container`, and a dockerd restart mid-trace, in the CLI
//! and under `pathtrace daemon`. These tests
//! change the root namespace as Docker does, and put it back; xtask runs them one at a time.

use std::time::Duration;

use lab::{
    daemon::Daemon,
    docker::{Docker, Network, OutsideHost, unavailable},
    tracer::Tracer,
};
use serde_json::Value;

fn syn_verdict(v: &Value) -> bool {
    v["kind"] == "verdict" && v["last_hop"]["tcp_flags"] == "SYN"
}

/// The name of the test calling, from its thread (libtest names the thread after it).
fn this_test() -> String {
    std::thread::current().name().unwrap_or("docker").to_owned()
}

/// Skips (counted, and a failure under CI) only where Docker cannot be installed.
fn docker() -> Option<Docker> {
    if let Some(why) = unavailable() {
        lab::skip(&this_test(), &why);
        return None;
    }
    Some(Docker::start().expect("dockerd starts"))
}

/// A dockerd this test started and may restart; `None` (skipped, and a failure under CI)
/// otherwise.
fn owned_docker() -> Option<Docker> {
    let docker = docker()?;
    if !docker.owned() {
        lab::skip(
            &this_test(),
            "dockerd was already running; this test only restarts a dockerd it started",
        );
        return None;
    }
    Some(docker)
}

fn name(tag: &str) -> String {
    format!("pt-{tag}-{}", std::process::id())
}

#[test]
fn healthy_connect_names_the_container_on_its_hops() {
    let Some(docker) = docker() else { return };
    let web = docker.run(&name("web"), 10001).expect("container");
    let client = OutsideHost::new().expect("client namespace");
    let mut tracer = Tracer::start(&["--dport", "10001"]).expect("pathtrace");
    assert!(
        tracer.seen[0]["docker"]
            .as_str()
            .unwrap_or_default()
            .starts_with("connected"),
        "{:#}",
        tracer.seen[0]
    );
    assert!(
        client
            .connect(10001, Duration::from_secs(5))
            .expect("connect"),
        "published port must answer"
    );
    let v = tracer
        .wait_for(Duration::from_secs(10), syn_verdict)
        .expect("verdict");
    assert_eq!(v["outcome"], "delivered", "{v:#}");
    assert_eq!(v["target"]["container"]["name"], web.name.as_str());
    assert_eq!(v["target"]["port"], 80);
    assert_eq!(
        v["last_hop"]["container"]["name"],
        web.name.as_str(),
        "{v:#}"
    );
    assert_eq!(v["last_hop"]["netns_name"], web.name.as_str());
    let hops = tracer.hops_of(&v);
    let veth = hops
        .iter()
        .find(|h| h["container_interface"].is_string())
        .unwrap_or_else(|| panic!("no hop on the container's host-side veth: {hops:#?}"));
    assert_eq!(veth["container_interface"], format!("{}:eth0", web.name));
    assert!(
        veth["ifname"]
            .as_str()
            .unwrap_or_default()
            .starts_with("veth"),
        "{veth:#}"
    );
    tracer.stop().expect("clean stop");
}

#[test]
fn syn_dying_at_the_host_names_the_container_it_was_for() {
    let Some(docker) = docker() else { return };
    let web = docker.run(&name("fwd"), 10001).expect("container");
    let client = OutsideHost::new().expect("client namespace");
    client.forwarding_off().expect("fault");
    let mut tracer = Tracer::start(&["--dport", "10001"]).expect("pathtrace");
    assert!(
        !client
            .connect(10001, Duration::from_millis(1500))
            .expect("connect")
    );
    let v = tracer
        .wait_for(Duration::from_secs(10), syn_verdict)
        .expect("verdict");
    assert_eq!(v["outcome"], "dropped", "{v:#}");
    assert_eq!(v["drop_reason"], "IP_INADDRERRORS");
    assert_eq!(v["last_hop"]["ifname"], client.host_if.as_str());
    assert!(
        v["last_hop"]["container"].is_null(),
        "the uplink belongs to no container"
    );
    assert_eq!(v["target"]["container"]["name"], web.name.as_str(), "{v:#}");
    assert_eq!(v["target"]["address"], web.address.to_string());
    assert_eq!(v["diagnosis"]["code"], "forwarding_disabled");
    assert_eq!(
        v["diagnosis"]["fix"],
        format!("sysctl -w net.ipv4.conf.{}.forwarding=1", client.host_if)
    );
    let summary = v["diagnosis"]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&format!("for container {}", web.name)),
        "{summary}"
    );
}

#[test]
fn container_filter_follows_its_published_port_and_address() {
    let Some(docker) = docker() else { return };
    let web = docker.run(&name("flt"), 10003).expect("container");
    let _other = docker.run(&name("other"), 10004).expect("container");
    let client = OutsideHost::new().expect("client namespace");
    let mut tracer = Tracer::start(&["--container", &web.name]).expect("pathtrace");
    let filter = tracer.seen[0]["filter"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        filter.contains(&web.address.to_string()) && filter.contains("10003"),
        "{filter}"
    );
    assert!(
        client
            .connect(10004, Duration::from_secs(5))
            .expect("connect other")
    );
    assert!(
        client
            .connect(10003, Duration::from_secs(5))
            .expect("connect web")
    );
    let v = tracer
        .wait_for(Duration::from_secs(10), syn_verdict)
        .expect("verdict");
    assert_eq!(
        v["tuple"]["dport"], 10003,
        "the other container's traffic must not match: {v:#}"
    );
    assert_eq!(v["target"]["container"]["name"], web.name.as_str());
    // The SYN-ACK matches through the container's address.
    let reply = tracer
        .wait_for(Duration::from_secs(10), |v| {
            v["kind"] == "verdict" && v["last_hop"]["tcp_flags"] == "SYN|ACK"
        })
        .expect("the reply is traced too");
    // The client's TCP frees the SYN-ACK with __kfree_skb, which no tracepoint sees; whatever
    // takes its memory next (a socket's buffer, an ARP or IPv6 packet) is another packet and
    // must not become one of its hops.
    let hops = tracer.hops_of(&reply);
    assert!(
        hops.iter().all(|h| h["src"].is_string()),
        "a hop of another packet: {}",
        lab::tracer::transcript(&tracer.seen, tracer.seen.len())
    );
    assert_eq!(hops.last().map(|h| &h["hop"]), Some(&"receive".into()));

    let out = std::process::Command::new(lab::tracer::pathtrace_bin().expect("bin"))
        .args(["--container", "no-such-container", "--duration", "1"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("Docker runs no container by that name or id"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A remote Docker cannot say what runs here: refused in a sentence, not tried.
    let out = std::process::Command::new(lab::tracer::pathtrace_bin().expect("bin"))
        .args(["--container", &web.name, "--duration", "1"])
        .env("DOCKER_HOST", "tcp://192.0.2.30:2375")
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "--container {}: the container is found through Docker, which cannot be asked: DOCKER_HOST=tcp://192.0.2.30:2375 is not a unix socket",
            web.name
        )),
        "{err}"
    );
}

/// `--container` traces that container's traffic, not every packet sharing its port: a port
/// published on one host address only, which the host itself also connects out to (a server
/// on the client's namespace listens on it). The host's own connection must not match; the
/// client's, to the published address, must.
#[test]
fn container_filter_matches_its_published_address_not_its_port_number() {
    let Some(docker) = docker() else { return };
    let client = OutsideHost::new().expect("client namespace");
    let port = 6443;
    let web = docker
        .run_publishing(&name("hip"), &format!("{}:{port}:80", client.host_addr))
        .expect("container");
    let _server = client.serve(port).expect("a server on the client's side");
    let mut tracer = Tracer::start(&["--container", &web.name]).expect("pathtrace");
    let filter = tracer.seen[0]["filter"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        filter.contains(&format!("published {}:{port}", client.host_addr)),
        "{filter}"
    );
    // The host connects out to 198.51.100.2:6443: not the container's traffic.
    let out = std::net::SocketAddr::from(([198, 51, 100, 2], port));
    assert!(
        std::net::TcpStream::connect_timeout(&out, Duration::from_secs(5)).is_ok(),
        "the host reaches the client's server"
    );
    assert!(
        client
            .connect(port, Duration::from_secs(5))
            .expect("connect web")
    );
    let v = tracer
        .wait_for(Duration::from_secs(10), syn_verdict)
        .expect("verdict");
    assert_eq!(
        v["tuple"]["dst"],
        client.host_addr.to_string(),
        "the first SYN traced is the client's to the published address, not the host's own: {v:#}"
    );
    assert_eq!(v["target"]["container"]["name"], web.name.as_str());
    let host_own = |e: &Value| e["dst"] == "198.51.100.2" && e["dport"] == port;
    assert!(
        !tracer.seen.iter().any(host_own),
        "the host's own connection to port {port} was traced:\n{}",
        lab::tracer::transcript(&tracer.seen, tracer.seen.len())
    );
}

/// "The published port refuses": Docker publishes 10006 to port 81, httpd listens on 80. With
/// kfree_skb alone the SYN is seen only as it dies inside the container, addressed to port 81
/// (conntrack's record of 10006 stays on the host): the filter on the published port follows
/// it there, and the diagnosis names the container and the port nothing listens on.
#[test]
fn drops_only_follows_a_published_port_into_its_container() {
    let Some(docker) = docker() else { return };
    let web = docker.run_to(&name("port"), 10006, 81).expect("container");
    let client = OutsideHost::new().expect("client namespace");
    let mut tracer = Tracer::start(&["--hooks", "drops", "--dport", "10006"]).expect("pathtrace");
    let filter = tracer.seen[0]["filter"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        filter.contains(&format!(
            "past Docker's DNAT to {}:81 (container {})",
            web.address, web.name
        )),
        "{filter}"
    );
    assert!(
        !client
            .connect(10006, Duration::from_millis(1500))
            .expect("connect"),
        "nothing listens on 81: refused"
    );
    let v = tracer
        .wait_for(Duration::from_secs(10), |v| v["kind"] == "verdict")
        .expect("the drop");
    assert_eq!(v["outcome"], "dropped", "{v:#}");
    assert_eq!(v["drop_reason"], "NO_SOCKET");
    assert_eq!(v["tuple"]["dst"], web.address.to_string());
    assert_eq!(v["tuple"]["dport"], 81);
    assert_eq!(
        v["last_hop"]["container"]["name"],
        web.name.as_str(),
        "{v:#}"
    );
    assert_eq!(v["diagnosis"]["code"], "no_listener");
    let summary = v["diagnosis"]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&format!("container {}", web.name))
            && summary.contains("nothing listens on tcp port 81"),
        "{summary}"
    );
    let evidence = v["diagnosis"]["evidence"].to_string();
    assert!(
        evidence.contains(&format!(
            "Docker publishes host port 10006 to {}:81 (container {})",
            web.address, web.name
        )),
        "{evidence}"
    );
    let fix = v["diagnosis"]["fix"].as_str().unwrap_or_default();
    assert!(
        fix.contains("ss -ltnp")
            && fix.contains("0.0.0.0:81")
            && fix.contains("-p 10006:<that port>"),
        "{fix}"
    );
    tracer.stop().expect("clean stop");
}

#[test]
fn dockerd_restart_mid_trace_loses_no_later_resolution() {
    let Some(mut docker) = owned_docker() else {
        return;
    };
    let client = OutsideHost::new().expect("client namespace");
    let mut tracer = Tracer::start(&["--dport", "10005"]).expect("pathtrace");
    docker.kill_and_restart().expect("dockerd restarts");
    // A container that exists only after the restart must still be named.
    let late = docker
        .run(&name("late"), 10005)
        .expect("container after restart");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        client
            .connect(10005, Duration::from_secs(5))
            .expect("connect")
    );
    let v = tracer
        .wait_for(Duration::from_secs(10), syn_verdict)
        .expect("verdict");
    assert_eq!(v["outcome"], "delivered", "{v:#}");
    assert_eq!(
        v["target"]["container"]["name"],
        late.name.as_str(),
        "{v:#}"
    );
    assert_eq!(v["last_hop"]["container"]["name"], late.name.as_str());
    tracer.stop().expect("clean stop");
}

/// The daemon keeps its Docker view across a dockerd restart: it stays healthy while dockerd
/// is gone, and a drop for a container created after the restart is counted under that
/// container's name. With the daemon's default set (drops) the SYN's one hop is addressed to
/// the container already: the name comes from the published port conntrack says it was sent to.
#[test]
fn daemon_names_containers_created_after_a_dockerd_restart() {
    let Some(mut docker) = owned_docker() else {
        return;
    };
    let client = OutsideHost::new().expect("client namespace");
    let d = Daemon::start("[filter]\ndport = 10007\nproto = \"tcp\"\n", 19470);
    docker.kill_and_restart().expect("dockerd restarts");
    assert_eq!(d.get("/healthz").map(|(s, _)| s), Some(200));
    let late = docker
        .run(&name("dlate"), 10007)
        .expect("container after restart");
    client
        .forwarding_off()
        .expect("forwarding off on the client link");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !client
            .connect(10007, Duration::from_millis(1500))
            .expect("connect")
    );
    let wanted = format!("container=\"{}\"", late.name);
    let m = d.wait_for_metric(|m| m.contains(&wanted));
    let line = m
        .lines()
        .find(|l| l.contains(&wanted))
        .expect("the drop series");
    assert!(line.contains("reason=\"IP_INADDRERRORS\""), "{line}");
    assert!(line.contains("code=\"forwarding_disabled\""), "{line}");
    assert!(m.contains("hooks=\"drops\""), "the default set: {m}");
    assert_eq!(d.get("/healthz").map(|(s, _)| s), Some(200));
}

/// A user-defined network (`br-<id>`, 172.29.0.0/16) with two containers, one of them
/// publishing a port on one host address: its SYN is delivered through that network's bridge,
/// the container named. A container on Docker's default bridge reaching it is dropped by
/// Docker's network isolation, named as such, and the fix is Docker's: `docker network
/// connect`, never deleting the rule Docker keeps.
#[test]
fn a_user_defined_network_is_traced_and_its_isolation_named() {
    let Some(docker) = docker() else { return };
    let client = OutsideHost::new().expect("client namespace");
    let net = Network::create(&name("net"), "172.29.0.0/16").expect("network");
    let web = docker
        .run_on(
            &name("uweb"),
            Some(&net),
            Some(&format!("{}:7443:80", client.host_addr)),
        )
        .expect("container on the network");
    let _api = docker
        .run_on(&name("uapi"), Some(&net), None)
        .expect("a second one");
    let outsider = docker
        .run_on(&name("dflt"), None, None)
        .expect("on the default bridge");
    assert!(
        web.address.to_string().starts_with("172.29."),
        "{}",
        web.address
    );

    let mut tracer = Tracer::start(&["--dport", "7443"]).expect("pathtrace");
    assert!(
        client
            .connect(7443, Duration::from_secs(5))
            .expect("connect")
    );
    let v = tracer
        .wait_for(Duration::from_secs(10), syn_verdict)
        .expect("verdict");
    assert_eq!(v["outcome"], "delivered", "{v:#}");
    assert_eq!(v["target"]["container"]["name"], web.name.as_str(), "{v:#}");
    let hops = tracer.hops_of(&v);
    assert!(
        hops.iter().any(|h| h["ifname"] == net.bridge().as_str()),
        "no hop on {}: {hops:#?}",
        net.bridge()
    );
    tracer.stop().expect("stop");

    let mut tracer =
        Tracer::start(&["--host", &web.address.to_string(), "--dport", "80"]).expect("pathtrace");
    let fetched = std::process::Command::new("docker")
        .args(["exec", &outsider.name, "nc", "-w", "2"])
        .arg(web.address.to_string())
        .arg("80")
        .output()
        .expect("docker exec");
    assert!(
        !fetched.status.success(),
        "isolated networks must not reach each other"
    );
    let v = tracer
        .wait_for(Duration::from_secs(10), syn_verdict)
        .unwrap_or_else(|e| {
            let route = std::process::Command::new("docker")
                .args(["exec", &outsider.name, "ip", "route"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            panic!(
                "no verdict for the isolated SYN ({e}); nc ({}) said {:?}, {:?}; {} routes: {route}",
                fetched.status,
                String::from_utf8_lossy(&fetched.stdout),
                String::from_utf8_lossy(&fetched.stderr),
                outsider.name
            )
        });
    assert_eq!(v["drop_reason"], "NETFILTER_DROP", "{v:#}");
    let d = &v["diagnosis"];
    assert!(
        d["rule"]["chain"]
            .as_str()
            .is_some_and(|c| c.starts_with("DOCKER-ISOLATION-STAGE")),
        "{d:#}"
    );
    let fix = d["fix"].as_str().unwrap_or_default();
    assert!(
        fix.starts_with(&format!(
            "docker network connect {} {}",
            &net.id[..12],
            outsider.name
        )),
        "{fix}"
    );
    assert!(fix.contains("isolates its networks"), "{fix}");
    tracer.stop().expect("stop");
}
