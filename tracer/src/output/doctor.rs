//! `pathtrace doctor`'s findings: a short human list, or one JSON object (`--json`).

use std::io::Write;

use crate::doctor::Checkup;

/// The ports checked, as `10001/tcp`.
fn ports(c: &Checkup) -> Vec<String> {
    c.ports
        .iter()
        .map(|p| format!("{}/{}", p.port, p.proto))
        .collect()
}

/// `{"kind":"doctor","ports":[...],"docker":"...","iptables":bool,"findings":[...]}`.
pub fn json(c: &Checkup, mut w: impl Write) -> std::io::Result<()> {
    let mut v = serde_json::json!({
        "kind": "doctor",
        "ports": ports(c),
        "docker": c.docker,
        "iptables": c.ruleset == Ok(true),
        "judged": c.judged,
        "unchecked": c.unchecked,
        "findings": c.findings,
    });
    if let Err(u) = &c.ruleset {
        v["ruleset_unreadable"] = serde_json::Value::String(u.to_string());
    }
    writeln!(w, "{v}")
}

/// What was checked, then each finding with its evidence and fix.
pub fn human(c: &Checkup, mut w: impl Write) -> std::io::Result<()> {
    let checked = ports(c);
    writeln!(
        w,
        "pathtrace doctor: checked forwarding, rp_filter, br_netfilter{}; ports: {}; Docker {}",
        match &c.ruleset {
            Ok(true) => ", iptables".to_owned(),
            Ok(false) => " (no iptables rules found)".to_owned(),
            Err(u) => format!(" (iptables not checked: {u})"),
        },
        if checked.is_empty() {
            "none".to_owned()
        } else {
            checked.join(", ")
        },
        c.docker
    )?;
    for j in &c.judged {
        writeln!(w, "judged: {j}")?;
    }
    for u in &c.unchecked {
        writeln!(w, "could not check: {u}")?;
    }
    match (c.findings.is_empty(), c.unchecked.is_empty()) {
        (true, true) => writeln!(w, "no problems found")?,
        (true, false) => writeln!(
            w,
            "no problems found in what could be checked; the checkup is incomplete"
        )?,
        _ => {}
    }
    for f in &c.findings {
        writeln!(w, "\n[{}] ({:?}) {}", f.code, f.confidence, f.summary)?;
        for e in &f.evidence {
            writeln!(w, "  evidence: {e}")?;
        }
        if let Some(fix) = &f.fix {
            writeln!(w, "  fix: {fix}")?;
        }
    }
    Ok(())
}
