//! `pathtrace daemon` against the lab: Prometheus counters and JSON lines per drop, SIGHUP
//! swapping the filter, SIGTERM stopping promptly, SIGKILL leaving no probe attached, and a
//! flood with a tiny ring buffer: losses counted and exported, memory bounded.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use lab::{
    Fault, Lab, LabConfig,
    daemon::{Daemon, series_sum},
};

/// Every line of the exposition is `name{labels} value` or a comment.
fn assert_prometheus_text(text: &str) {
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        assert!(series.starts_with("pathtrace_"), "{line}");
    }
}

/// The uplink's forwarding off, a daemon with `config`, one SYN: returns the daemon, the
/// exposition and the drop's series, its labels checked up to the diagnosis code.
fn forwarding_off_drop(config: impl Fn(&Lab) -> String, port: u16) -> (Daemon, String, String) {
    let lab =
        Lab::with_fault(LabConfig::default(), Fault::ForwardingOff("eth0".into())).expect("lab");
    let d = Daemon::start(&config(&lab), port);
    assert!(!lab.connect(Duration::from_millis(1500)).unwrap());
    let m = d.wait_for_metric(|m| m.contains("reason=\"IP_INADDRERRORS\""));
    assert_prometheus_text(&m);
    let line = m
        .lines()
        .find(|l| l.contains("IP_INADDRERRORS"))
        .unwrap()
        .to_owned();
    assert!(line.contains("hook=\"ip_error\""), "{line}");
    assert!(line.contains("ifname=\"eth0\""), "{line}");
    assert!(
        line.contains(&format!("netns=\"{}\"", lab.host.name)),
        "{line}"
    );
    (d, m, line)
}

/// With the path set asked for, the drop's JSON line carries the hops before it.
#[test]
fn drops_are_counted_with_labels_and_logged_as_json() {
    let (d, m, line) = forwarding_off_drop(
        |_| "hooks = \"path\"\n[filter]\ndport = 10001\nproto = \"tcp\"\n".into(),
        19464,
    );
    assert!(line.contains("code=\"forwarding_disabled\""), "{line}");
    assert!(m.contains("pathtrace_build_info{"), "{m}");
    assert!(m.contains("hooks=\"path\""), "{m}");
    let log = std::fs::read_to_string(d.dir.join("drops.json")).unwrap();
    let first: serde_json::Value =
        serde_json::from_str(log.lines().next().expect("a JSON line")).unwrap();
    assert_eq!(first["kind"], "verdict");
    assert!(first["hops"].as_u64().is_some_and(|n| n > 1), "{first}");
    // The wall clock next to the monotonic one, in the format logs are read by.
    let time = first["time"].as_str().unwrap_or_default();
    let today = String::from_utf8(
        Command::new("date")
            .args(["-u", "+%Y-%m-%dT"])
            .output()
            .expect("date")
            .stdout,
    )
    .expect("utf8");
    assert!(
        time.starts_with(today.trim()),
        "{time} is not today ({today})"
    );
    assert!(time.ends_with('Z') && time.len() == 27, "{time}");
    assert_eq!(first["diagnosis"]["code"], "forwarding_disabled");
}

/// The daemon's default set, the one to leave running: kfree_skb alone still labels the drop
/// with its reason, where it happened and the namespace. The SYN dies after DNAT, addressed to
/// the container, yet the filter on the published port matches it: the drop program reads
/// where conntrack says it was sent. The drop records its input interface, so the cause is
/// diagnosed as with the path: the code is there, and the JSON line carries the fix.
#[test]
fn a_daemon_left_on_counts_the_drop_from_the_drop_alone() {
    let (d, m, line) = forwarding_off_drop(
        |_| "[filter]\ndport = 10001\nproto = \"tcp\"\n".into(),
        19468,
    );
    assert!(m.contains("hooks=\"drops\""), "the default set: {m}");
    assert!(line.contains("code=\"forwarding_disabled\""), "{line}");
    let log = std::fs::read_to_string(d.dir.join("drops.json")).unwrap();
    let first: serde_json::Value =
        serde_json::from_str(log.lines().next().expect("a JSON line")).unwrap();
    assert_eq!(first["hops"], 1, "{first}");
    assert_eq!(first["tuple"]["dport"], 80, "dropped after DNAT: {first}");
    assert_eq!(first["last_hop"]["entered"]["dport"], 10001, "{first}");
    assert_eq!(first["diagnosis"]["code"], "forwarding_disabled");
    assert!(
        first["diagnosis"]["fix"]
            .as_str()
            .is_some_and(|f| f.ends_with("sysctl -w net.ipv4.conf.eth0.forwarding=1")),
        "{first}"
    );
}

#[test]
fn sighup_swaps_the_filter_and_sigterm_stops_promptly() {
    let lab =
        Lab::with_fault(LabConfig::default(), Fault::ForwardingOff("eth0".into())).expect("lab");
    let mut d = Daemon::start("[filter]\ndport = 1\nproto = \"tcp\"\n", 19465);
    assert!(!lab.connect(Duration::from_millis(1200)).unwrap());
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        !d.metrics().contains("IP_INADDRERRORS"),
        "dport 1 must not match"
    );
    // A bad file is refused and the filter kept.
    std::fs::write(d.dir.join("pathtrace.toml"), "[filter]\ndport = \"x\"\n").unwrap();
    d.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.metrics().contains("pathtrace_filter_reloads_total 0"));
    std::fs::write(
        d.dir.join("pathtrace.toml"),
        "[filter]\ndport = 10001\nproto = \"tcp\"\n",
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for_metric(|m| m.contains("pathtrace_filter_reloads_total 1"));
    assert!(!lab.connect(Duration::from_millis(1200)).unwrap());
    d.wait_for_metric(|m| m.contains("IP_INADDRERRORS"));

    let t = Instant::now();
    d.signal(libc::SIGTERM);
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "SIGTERM took {:?}",
        t.elapsed()
    );
}

/// pathtrace's programs loaded right now. bpftool fails now and then while another process's
/// programs are being freed (the previous test's daemon): such a listing is retried, not
/// read as zero.
fn our_programs() -> usize {
    for _ in 0..20 {
        let out = Command::new("bpftool")
            .args(["prog", "show", "-j"])
            .output()
            .expect("bpftool");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let (true, Some(progs)) = (out.status.success(), v.as_array()) {
            return progs
                .iter()
                .filter(|p| {
                    p["name"].as_str().is_some_and(|n| {
                        n.starts_with("tp_netif_rec") || n.starts_with("tp_kfree_skb")
                    })
                })
                .count();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("bpftool prog show -j kept failing");
}

/// Waits (up to 5 s) until `done` holds for the program count, and returns the last count.
fn programs_until(done: impl Fn(usize) -> bool) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = our_programs();
    while !done(n) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        n = our_programs();
    }
    n
}

#[test]
fn sigkill_leaves_no_probe_attached() {
    // Programs of the previous test's daemon may still be on their way out.
    let before = programs_until(|n| n == 0);
    let mut d = Daemon::start("", 19466);
    assert!(
        programs_until(|n| n > before) > before,
        "the daemon's programs are loaded"
    );
    d.signal(libc::SIGKILL);
    d.child.wait().unwrap();
    assert_eq!(
        programs_until(|n| n <= before),
        before,
        "links and programs die with the process: nothing pinned"
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The daemon as left on, no filter: a flood of datagrams to a port nothing listens on is
/// counted to the packet, in `pathtrace_drops_total` (a few full, the rest summarised, all
/// with the full packets' labels) and in the kernel's own per-key count, both equal to the
/// namespace's `Udp: NoPorts`; nothing lost. On a topology that is not Docker's.
#[test]
fn a_drop_flood_is_counted_to_the_packet() {
    let lab = Lab::new(LabConfig::unusual()).expect("lab");
    let no_ports = || -> u64 {
        let text = lab
            .host
            .run_in(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
            .unwrap()
            .unwrap();
        let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
        let i = names
            .split_whitespace()
            .position(|n| n == "NoPorts")
            .unwrap();
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    };
    let d = Daemon::start("", 19471);
    let before = no_ports();
    let to = SocketAddrV4::new(lab.config.host_addr, 47120);
    lab.outside
        .run_in(move || {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            s.connect(to).unwrap();
            for _ in 0..150_000 {
                let _ = s.send(b"pathtrace-flood");
            }
        })
        .unwrap();
    let dropped = no_ports() - before;
    assert!(
        dropped > 100_000,
        "{dropped} datagrams dropped for want of a socket"
    );
    let netns = format!("netns=\"{}\"", lab.host.name);
    let with = ["reason=\"NO_SOCKET\"", netns.as_str()];
    let m = d.wait_for_metric(|m| {
        series_sum(m, "pathtrace_drops_total", &with) >= dropped
            && series_sum(m, "pathtrace_kernel_drops_total", &with) >= dropped
    });
    assert_eq!(
        series_sum(&m, "pathtrace_drops_total", &with),
        dropped,
        "{m}"
    );
    assert_eq!(
        series_sum(&m, "pathtrace_kernel_drops_total", &with),
        dropped,
        "{m}"
    );
    assert!(
        m.lines().any(|l| l.starts_with("pathtrace_drops_total{")
            && l.contains("code=\"no_listener\"")
            && l.contains(&netns)),
        "the summarised drops carry the full packets' diagnosis: {m}"
    );
    let counter = |name: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    };
    assert_eq!(counter("pathtrace_events_lost_total"), 0, "{m}");
    assert_eq!(counter("pathtrace_uncounted_packets_total"), 0, "{m}");
    assert!(counter("pathtrace_summarised_packets_total") > 0, "{m}");
}

#[test]
fn a_flood_is_counted_not_hidden_and_memory_stays_bounded() {
    let lab = Lab::new(LabConfig::default()).expect("lab");
    // A tiny ring buffer and packet table: the flood must overflow them.
    let d = Daemon::start(
        "hooks = \"path\"\n[filter]\ndport = 10002\nproto = \"udp\"\nevery_packet = true\n[limits]\nring_bytes = 16384\nmax_packets = 512\n",
        19467,
    );
    let to = SocketAddrV4::new(lab.config.host_addr, 10002);
    let send = |n: u32| {
        lab.outside
            .run_in(move || {
                let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
                for _ in 0..n {
                    let _ = s.send_to(b"pathtrace-flood", to);
                }
            })
            .unwrap();
    };
    send(20_000);
    std::thread::sleep(Duration::from_millis(500));
    let rss_warm = rss_kib(d.child.id());
    send(200_000);
    let m = d.wait_for_metric(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("pathtrace_events_lost_total "))
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|v| v > 0)
    });
    assert_prometheus_text(&m);
    let rss_after = rss_kib(d.child.id());
    assert!(
        rss_after < rss_warm + 64 * 1024,
        "RSS grew from {rss_warm} KiB to {rss_after} KiB"
    );
    assert!(
        d.get("/healthz").map(|(s, _)| s) == Some(200),
        "healthy through the flood"
    );
}

/// A JSON log that cannot take more (a 16 KiB tmpfs, filled by a few hundred drops) does not
/// stop the daemon: the failures are counted, the drops still are.
#[test]
fn a_full_json_log_is_counted_and_the_daemon_goes_on() {
    let lab =
        Lab::with_fault(LabConfig::unusual(), Fault::ForwardingOff("wan0".into())).expect("lab");
    let mnt = std::env::temp_dir().join(format!("pathtrace-full-{}", std::process::id()));
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", "pt-full"])
        .arg(&mnt)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mounting a tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _unmount = Unmount(mnt.clone());
    let port = lab.config.published_port;
    let d = Daemon::start_logging_to(
        &format!("[filter]\ndport = {port}\nproto = \"udp\"\n"),
        19471,
        Some(&mnt.join("drops.json")),
    );
    let to = SocketAddrV4::new(lab.config.host_addr, port);
    let send = |n: u32| {
        lab.outside
            .run_in(move || {
                let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
                for _ in 0..n {
                    let _ = s.send_to(b"pathtrace-full", to);
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
            .unwrap();
    };
    let value = |m: &str, name: &str| -> u64 {
        m.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum()
    };
    send(400);
    let m = d.wait_for_metric(|m| value(m, "pathtrace_json_log_errors_total") > 0);
    let dropped = value(&m, "pathtrace_drops_total{");
    assert!(dropped > 0, "{m}");
    send(50);
    d.wait_for_metric(|m| value(m, "pathtrace_drops_total{") > dropped);
    let mut child = d;
    assert!(
        child.child.try_wait().expect("status").is_none(),
        "the daemon must still run"
    );
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Out of descriptors (a low `ulimit -n` and idle clients holding connections), `accept`
/// fails with EMFILE for as long as they stay: the endpoint backs off instead of spinning, and
/// answers again once they go.
#[test]
fn accept_failing_with_emfile_does_not_spin() {
    let port = 19472;
    let mut child = Command::new("prlimit")
        .args(["--nofile=40:40", "--"])
        .arg(lab::tracer::pathtrace_bin().expect("binary"))
        .args([
            "daemon",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--dport",
            "9",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("daemon starts");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid = child.id();
    let _kill = Kill(&mut child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while lab::daemon::http_get(port, "/healthz").map(|(s, _)| s) != Some(200) {
        assert!(Instant::now() < deadline, "daemon never became healthy");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Idle clients that never send a request: each holds a descriptor until the head timeout.
    let idle: Vec<_> = (0..40)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_secs(pid);
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_secs(pid) - before;
    assert!(
        spent < 0.5,
        "{spent:.2} s of CPU in 2 s while accept fails: a busy loop"
    );
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(20);
    while lab::daemon::http_get(port, "/metrics").map(|(s, _)| s) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the endpoint never answered again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A daemon filtered on a published port counts the container's SYN-ACK dying in DOCKER-USER
/// on its way back, with the same labels as the SYN's would have and `direction="reply"`: on
/// the receive set the kernel follows the replies of the SYN it matched; on the default set
/// (drops alone, nothing followed) the drop is matched by the connection conntrack says it
/// answers. On a topology with other names, addresses and ports.
#[test]
fn a_reply_dropped_on_its_way_back_is_counted_with_its_direction() {
    let config = LabConfig::unusual();
    for (hooks, port) in [("hooks = \"receive\"\n", 19473), ("", 19474)] {
        let lab = Lab::with_fault(config.clone(), Fault::ReplyDockerUserDrop).expect("lab");
        let d = Daemon::start(
            &format!(
                "{hooks}[filter]\ndport = {}\nproto = \"tcp\"\n",
                config.published_port
            ),
            port,
        );
        assert!(!lab.connect(Duration::from_millis(1500)).unwrap());
        let m = d.wait_for_metric(|m| m.contains("direction=\"reply\""));
        assert_prometheus_text(&m);
        let line = m
            .lines()
            .find(|l| l.contains("direction=\"reply\""))
            .unwrap()
            .to_owned();
        for label in [
            "reason=\"NETFILTER_DROP\"".to_owned(),
            "code=\"netfilter_drop\"".to_owned(),
            format!("netns=\"{}\"", lab.host.name),
            format!("ifname=\"{}\"", config.bridge),
        ] {
            assert!(line.contains(&label), "{hooks}: {label} in {line}");
        }
        assert!(
            !m.contains("direction=\"original\""),
            "{hooks}: the SYN was delivered: {m}"
        );
        let log = std::fs::read_to_string(d.dir.join("drops.json")).unwrap();
        let first: serde_json::Value =
            serde_json::from_str(log.lines().next().expect("a JSON line")).unwrap();
        assert_eq!(first["direction"], "reply", "{hooks}: {first}");
        assert_eq!(
            first["diagnosis"]["rule"]["chain"], "DOCKER-USER",
            "{hooks}: {first}"
        );
    }
}
