//! `pathtrace doctor` in the lab's host namespace: the static checks find the faults the
//! trace diagnoses, exit 1 when they do, and never change the ruleset or sysctls.

use std::process::Command;

use lab::{Fault, Lab, LabConfig, tracer::pathtrace_bin};
use serde_json::Value;

fn doctor(lab: &Lab) -> (i32, Value) {
    let before = lab.host.exec("iptables-save", &[]).expect("iptables-save");
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.host.name])
        .arg(pathtrace_bin().expect("binary"))
        .args([
            "doctor",
            "--dport",
            &lab.config.published_port.to_string(),
            "--json",
        ])
        .output()
        .expect("runs");
    let after = lab.host.exec("iptables-save", &[]).expect("iptables-save");
    // Rules and policies, not packet counters: the chain counters on `:CHAIN POLICY [p:b]`
    // lines move with any packet the namespace happens to send meanwhile.
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.rsplit_once(" [") {
                Some((decl, counters)) if l.starts_with(':') && counters.ends_with(']') => decl,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        strip(&before),
        strip(&after),
        "doctor must not change the ruleset"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn codes(v: &Value) -> Vec<String> {
    v["findings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["code"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn healthy_lab_is_clean() {
    let lab = Lab::new(LabConfig::default()).expect("lab");
    let (code, v) = doctor(&lab);
    assert_eq!(code, 0, "{v:#}");
    assert!(codes(&v).is_empty(), "{v:#}");
}

#[test]
fn finds_the_static_faults() {
    for (fault, want) in [
        (Fault::ForwardingOff("eth0".into()), "forwarding_disabled"),
        (Fault::PreroutingAcceptShadow, "dnat_skipped"),
        (Fault::ForwardAcceptMissing, "netfilter_drop"),
        (Fault::StrictRpFilter, "rp_filter"),
    ] {
        let lab = Lab::with_fault(LabConfig::default(), fault.clone()).expect("lab");
        let before = lab
            .host
            .exec("sysctl", &["-a", "-r", "^net.ipv4.conf"])
            .unwrap_or_default();
        let (code, v) = doctor(&lab);
        assert_eq!(code, 1, "{fault:?}: {v:#}");
        assert!(
            codes(&v).iter().any(|c| c == want),
            "{fault:?}: expected {want} in {v:#}"
        );
        let after = lab
            .host
            .exec("sysctl", &["-a", "-r", "^net.ipv4.conf"])
            .unwrap_or_default();
        assert_eq!(before, after, "doctor must not change sysctls");
        if want == "forwarding_disabled" {
            let f = &v["findings"][0];
            assert_eq!(f["fix"], "sysctl -w net.ipv4.conf.eth0.forwarding=1");
        }
        if want == "dnat_skipped" {
            let f = v["findings"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["code"] == want)
                .unwrap();
            assert_eq!(f["rule"]["chain"], "PREROUTING");
            assert_eq!(f["rule"]["index"], 1);
        }
    }
}

/// Without CAP_NET_ADMIN no ruleset can be listed: a clear error and exit 2, never "no
/// problems found".
#[test]
fn refuses_to_run_without_the_privilege_to_look() {
    let lab = Lab::new(LabConfig::unusual()).expect("lab");
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.host.name])
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .args(["--inh-caps=-all", "--bounding-set=-all"])
        .arg(pathtrace_bin().expect("binary"))
        .arg("doctor")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("needs CAP_NET_ADMIN"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("no problems found"));
}

/// A listing that fails (here nft, made to fail as it does without privileges) is said as
/// `could not check`, the rest is still judged, and the exit is 3, not 0. The packet judged is
/// named, from the client given.
#[test]
fn a_failing_listing_is_reported_and_the_rest_still_checked() {
    let lab = Lab::new(LabConfig::unusual()).expect("lab");
    let dir = std::env::temp_dir().join(format!("ptdoctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let nft = dir.join("nft");
    std::fs::write(
        &nft,
        "#!/bin/sh\necho 'netlink: Error: cache initialization failed: Operation not permitted' >&2\nexit 1\n",
    )
    .expect("fake nft");
    std::fs::set_permissions(&nft, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let port = lab.config.published_port.to_string();
    let out = Command::new("/usr/sbin/ip")
        .env("PATH", &path)
        .args(["netns", "exec", &lab.host.name])
        .arg(pathtrace_bin().expect("binary"))
        .args([
            "doctor",
            "--dport",
            &port,
            "--host",
            "192.0.2.61",
            "--sport",
            "33333",
        ])
        .output()
        .expect("runs");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "could not check: nft -j list ruleset: netlink: Error: cache initialization failed"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "judged: tcp 192.0.2.61:33333 → {}:{port} in on {}",
            lab.config.host_addr, lab.config.uplink
        )),
        "{stdout}"
    );
    assert!(stdout.contains("the checkup is incomplete"), "{stdout}");
}
