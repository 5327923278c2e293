//! `cargo xtask lab`: the lab scenarios inside a VM running another kernel (Debian's 6.1 by
//! default, with kprobes and fentry), once per backend, as a table of expected vs observed.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{cargo, require_root, root, setup, status, vm::Guest};

#[derive(clap::Args)]
pub struct LabArgs {
    /// Scenarios to run (all by default; `ptlab list` names them).
    pub scenarios: Vec<String>,
    /// An extracted linux-image package (boot/vmlinuz-*, lib/modules/*); default: Debian's
    /// linux-image-amd64, downloaded into .cache/vm.
    #[arg(long, value_name = "DIR")]
    pub kernel: Option<PathBuf>,
    /// Backends to run the scenarios with (repeatable).
    #[arg(long = "backend", value_name = "BACKEND", default_values = ["fentry", "kprobe"])]
    pub backends: Vec<String>,
    /// Leave a person in the VM with this scenario's lab set up and pathtrace on PATH.
    #[arg(long, value_name = "SCENARIO", conflicts_with = "scenarios")]
    pub shell: Option<String>,
    /// kvm, tcg, or auto (KVM when it runs a guest here, else TCG).
    #[arg(long, default_value = "auto")]
    pub accel: String,
    /// Guests booted at once, one backend each (default: one per host CPU). A TCG guest keeps
    /// about one host CPU busy, whatever its own count.
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
}

pub fn run(args: LabArgs) -> Result<()> {
    setup::run()?;
    setup::vm_packages()?;
    require_root("lab")?;
    // Release binaries: under TCG userspace is emulated too, and debug ones cost a third of
    // the run (six scenarios with fentry on 6.1: 443 s debug, 294 s release).
    status(cargo().args([
        "build",
        "--release",
        "--package",
        "tracer",
        "--package",
        "pathtrace-lab",
        "--bins",
    ]))?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let bin_dir = target
        .join("release")
        .canonicalize()
        .context("target/release")?;
    let mut guest = Guest::prepare(args.kernel.as_deref(), &args.accel, &bin_dir)?;

    if let Some(scenario) = &args.shell {
        return guest.shell(&format!("exec ptlab shell {scenario}"));
    }

    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .clamp(1, args.backends.len().max(1));
    if jobs > 1 {
        guest.cpus = 1;
    }
    let next = AtomicUsize::new(0);
    let worker = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(backend) = args.backends.get(i) else {
                return done;
            };
            done.push((i, run_backend(&guest, backend, &args.scenarios)));
        }
    };
    let mut runs: Vec<(usize, Result<Vec<Value>>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs).map(|_| scope.spawn(worker)).collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    runs.sort_by_key(|(i, _)| *i);
    if runs.len() != args.backends.len() {
        bail!(
            "{} of {} guest runs came back (a runner thread panicked)",
            runs.len(),
            args.backends.len()
        );
    }
    let mut rows: Vec<(String, Value)> = Vec::new();
    let mut broken = Vec::new();
    for (i, results) in runs {
        let backend = &args.backends[i];
        match results {
            Ok(results) => rows.extend(results.into_iter().map(|r| (backend.clone(), r))),
            Err(e) => broken.push(format!("{backend}: {e:#}")),
        }
    }
    print_table(&rows);
    let failed: Vec<String> = rows
        .iter()
        .filter(|(backend, r)| !row_passes(backend, r))
        .map(|(b, r)| format!("{} on {b}", r["scenario"].as_str().unwrap_or("?")))
        .collect();
    if !broken.is_empty() {
        bail!(
            "{} guest run(s) failed{}:\n{}",
            broken.len(),
            if failed.is_empty() {
                String::new()
            } else {
                format!(" and mismatches in the others: {}", failed.join(", "))
            },
            broken.join("\n")
        );
    }
    if !failed.is_empty() {
        bail!("kernel lab mismatches: {}", failed.join(", "));
    }
    Ok(())
}

/// One guest boot running every scenario with `backend`; its result rows once the run is whole.
fn run_backend(guest: &Guest, backend: &str, scenarios: &[String]) -> Result<Vec<Value>> {
    let started = std::time::Instant::now();
    let console = guest.run(
        &format!("run-{backend}.sh"),
        &format!(
            "ptlab run --backend {backend} {}; echo \"PTLAB-EXIT $?\"",
            scenarios.join(" ")
        ),
        // 1094 s for the kprobe run on the slowest CI so far.
        Duration::from_secs(1800),
    )?;
    eprintln!(
        "xtask lab: {backend}: VM run took {:.0?}",
        started.elapsed()
    );
    if std::env::var_os("PTLAB_CONSOLE").is_some() {
        eprintln!("{console}");
    }
    whole_run(&console, backend)
        .with_context(|| format!("the {backend} run is not whole; console:\n{console}"))
}

/// The result rows of one guest run, only when the run is whole: the plan was printed, every
/// planned scenario has a row, every result line parses, the run reached its end and
/// `ptlab` exited 0. A guest that died after N scenarios is a failure, not N passes.
fn whole_run(console: &str, backend: &str) -> Result<Vec<Value>> {
    let marked = |marker: &str| -> Vec<&str> {
        console
            .lines()
            .filter_map(|l| l.split_once(marker).map(|(_, rest)| rest.trim()))
            .collect()
    };
    let plan: Value = marked("PTLAB-PLAN ")
        .first()
        .and_then(|j| serde_json::from_str(j).ok())
        .context("no PTLAB-PLAN line: ptlab did not start")?;
    let planned: Vec<&str> = plan["scenarios"]
        .as_array()
        .context("PTLAB-PLAN without scenarios")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut results = Vec::new();
    for line in marked("PTLAB-RESULT ") {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("a result line does not parse: {line}"))?;
        results.push(v);
    }
    let missing: Vec<&str> = planned
        .iter()
        .copied()
        .filter(|name| {
            !results
                .iter()
                .any(|r| r["scenario"] == *name && r["backend"] == backend)
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} of {} scenarios have no result: {}",
            missing.len(),
            planned.len(),
            missing.join(", ")
        );
    }
    if marked("PTLAB-END ").is_empty() {
        bail!("ptlab did not reach its end");
    }
    match marked("PTLAB-EXIT ").first() {
        Some(&"0") => Ok(results),
        Some(code) => bail!("ptlab exited with {code}"),
        None => bail!("the guest did not report ptlab's exit"),
    }
}

/// A row passes when the verdict matches, the requested backend was the one used, and the
/// function backends showed netfilter hooks (a scenario's row; `module-late` checks a re-attach,
/// not a verdict). A row the guest skipped is not a pass.
fn row_passes(backend: &str, r: &Value) -> bool {
    if r["skipped"].is_string() {
        return false;
    }
    let netfilter =
        r["netfilter"].as_array().is_some_and(|a| !a.is_empty()) || r["scenario"] == "module-late";
    r["pass"] == true && r["backend"] == backend && (backend == "tracepoint" || netfilter)
}

fn print_table(rows: &[(String, Value)]) {
    println!(
        "\n{:<24} {:<10} {:<42} {:<42} result",
        "scenario", "backend", "expected", "observed"
    );
    let fmt = |v: &Value| {
        format!(
            "{} {} {}",
            v["outcome"].as_str().unwrap_or("-"),
            v["drop_reason"].as_str().unwrap_or("-"),
            v["code"].as_str().unwrap_or("-")
        )
    };
    for (backend, r) in rows {
        let verdict = match r["skipped"].as_str() {
            Some(_) => "skipped",
            None if row_passes(backend, r) => "ok",
            None => "MISMATCH",
        };
        println!(
            "{:<24} {:<10} {:<42} {:<42} {verdict}",
            r["scenario"].as_str().unwrap_or("?"),
            backend,
            fmt(&r["expected"]),
            r.get("error")
                .and_then(Value::as_str)
                .map_or_else(|| fmt(&r["observed"]), |e| format!("error: {e}")),
        );
        if let Some(why) = r["skipped"].as_str() {
            println!("{:<24}   skipped in the VM: {why}", "");
        }
        if let Some(rule) = r["rule"].as_str() {
            println!("{:<24}   rule: {rule}", "");
        }
        if let Some(detail) = r["detail"].as_str() {
            println!("{:<24}   {detail}", "");
        }
        if !row_passes(backend, r)
            && let Some(hops) = r["hops"].as_array()
        {
            let hops: Vec<&str> = hops.iter().filter_map(Value::as_str).collect();
            println!("{:<24}   hops: {}", "", hops.join(", "));
        }
        if let Some(nf) = r["netfilter"].as_array().filter(|a| !a.is_empty()) {
            let hooks: Vec<&str> = nf.iter().filter_map(Value::as_str).collect();
            println!("{:<24}   netfilter: {}", "", hooks.join(", "));
        }
        for ct in r["conntrack"].as_array().into_iter().flatten() {
            println!("{:<24}   conntrack at {}", "", ct.as_str().unwrap_or("?"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"PTLAB-PLAN {"backend":"kprobe","scenarios":["healthy","rp-filter"]}"#;

    fn result(name: &str) -> String {
        format!(r#"PTLAB-RESULT {{"scenario":"{name}","backend":"kprobe","pass":true}}"#)
    }

    fn console(lines: &[&str]) -> String {
        lines.join("\n")
    }

    #[test]
    fn a_run_is_whole_only_with_every_row_its_end_and_a_clean_exit() {
        let (a, b) = (result("healthy"), result("rp-filter"));
        let end = r#"PTLAB-END {"backend":"kprobe","ran":2}"#;
        let whole = console(&["boot noise", PLAN, &a, &b, end, "PTLAB-EXIT 0"]);
        assert_eq!(whole_run(&whole, "kprobe").expect("whole").len(), 2);

        let err = |c: &str| format!("{:#}", whole_run(c, "kprobe").expect_err("not whole"));
        // The guest died after one scenario.
        let died = console(&[PLAN, &a]);
        assert!(err(&died).contains("1 of 2 scenarios have no result: rp-filter"));
        // A line cut in half by the console.
        let cut = console(&[
            PLAN,
            &a,
            r#"PTLAB-RESULT {"scenario":"rp-fil"#,
            end,
            "PTLAB-EXIT 0",
        ]);
        assert!(err(&cut).contains("does not parse"));
        // Every row, but ptlab failed.
        let failed = console(&[PLAN, &a, &b, end, "PTLAB-EXIT 1"]);
        assert!(err(&failed).contains("exited with 1"));
        assert!(err("kernel panic").contains("no PTLAB-PLAN"));
    }

    #[test]
    fn a_skipped_row_is_not_a_pass() {
        let skipped: Value =
            serde_json::from_str(r#"{"scenario":"x","backend":"kprobe","skipped":"why"}"#)
                .expect("json");
        assert!(!row_passes("kprobe", &skipped));
    }
}
