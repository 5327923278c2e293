//! `cargo xtask bench`: what tracing costs on the container forwarding path.
//!
//! The lab topology; an 18-byte UDP flood from the outside namespace to a published port,
//! DNATed through the bridge into the container, where a sink counts arrivals; runs
//! interleaved (untraced, traced, untraced, traced, ...) so drift hits both sides. Reports the
//! throughput ratios, events delivered and lost, per-hook BPF run time (bpf_stats, enabled only
//! for one dedicated run and restored), pathtrace's CPU per million events and RSS, and the
//! userspace pipeline on recorded events. Writes docs/performance.md.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lab::{Lab, LabConfig, bench::UDP_PORT};
use serde_json::Value;

use crate::{cargo, require_root, root, setup, status};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Interleaved rounds per mode.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Seconds of flood per measurement.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Print the table without writing docs/performance.md.
    #[arg(long)]
    pub no_write: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Untraced,
    /// pathtrace attached, filter matching nothing on this path.
    NonMatching,
    /// pathtrace attached, every flood packet matching.
    Matching,
}

struct Run {
    pps: f64,
    events: u64,
    lost: u64,
    cpu_s: f64,
    rss_kib: u64,
}

/// A running pathtrace whose output is drained on a thread (a full pipe would stall it and
/// count as lost events), keeping only the final `stats` line.
struct Tracer {
    child: Child,
    stats: std::thread::JoinHandle<Option<Value>>,
}

impl Tracer {
    /// SIGINT, then the stats line.
    fn stop(mut self) -> Result<Option<Value>> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        self.stats
            .join()
            .map_err(|_| anyhow::anyhow!("output thread panicked"))
    }
}

fn start_tracer(bin: &std::path::Path, mode: Mode) -> Result<Option<Tracer>> {
    let filter: &[&str] = match mode {
        Mode::Untraced => return Ok(None),
        Mode::NonMatching => &["--dport", "1", "--proto", "udp"],
        Mode::Matching => &["--dport", "10009", "--proto", "udp"],
    };
    let mut child = Command::new(bin)
        .args(filter)
        .args(["--json", "--backend", "tracepoint"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting pathtrace")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    for line in lines.by_ref() {
        if line?.contains("\"kind\":\"ready\"") {
            let stats = std::thread::spawn(move || {
                let mut last = None;
                for line in lines.map_while(Result::ok) {
                    if line.contains("\"kind\":\"stats\"") {
                        last = serde_json::from_str(&line).ok();
                    }
                }
                last
            });
            return Ok(Some(Tracer { child, stats }));
        }
    }
    bail!("pathtrace exited before it was ready")
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is index 0, utime 11, stime 12.
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn measure(
    lab: &Lab,
    sink: &lab::bench::Sink,
    bin: &std::path::Path,
    mode: Mode,
    secs: u64,
) -> Result<Run> {
    let tracer = start_tracer(bin, mode)?;
    let cpu0 = tracer.as_ref().map_or(0.0, |t| cpu_seconds(t.child.id()));
    let before = sink.received.load(std::sync::atomic::Ordering::Relaxed);
    let t = Instant::now();
    lab.udp_flood(Duration::from_secs(secs), u64::MAX)?;
    let elapsed = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let got = sink.received.load(std::sync::atomic::Ordering::Relaxed) - before;
    let mut run = Run {
        pps: got as f64 / elapsed,
        events: 0,
        lost: 0,
        cpu_s: 0.0,
        rss_kib: 0,
    };
    if let Some(t) = tracer {
        let pid = t.child.id();
        run.cpu_s = cpu_seconds(pid) - cpu0;
        run.rss_kib = peak_rss_kib(pid);
        if let Some(v) = t.stop()? {
            run.events = v["events"].as_u64().unwrap_or(0);
            run.lost = v["kernel"]["lost"].as_u64().unwrap_or(0);
        }
    }
    Ok(run)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Per-program average run time with bpf_stats on for one run in `mode`.
fn hook_costs(
    lab: &Lab,
    bin: &std::path::Path,
    mode: Mode,
    secs: u64,
) -> Result<Vec<(String, f64, u64)>> {
    let key = "/proc/sys/kernel/bpf_stats_enabled";
    let old = std::fs::read_to_string(key).unwrap_or_else(|_| "0".into());
    std::fs::write(key, "1").context("enabling kernel.bpf_stats_enabled for the run")?;
    let result = (|| -> Result<Vec<(String, f64, u64)>> {
        let tracer = start_tracer(bin, mode)?.context("tracer")?;
        lab.udp_flood(Duration::from_secs(secs), u64::MAX)?;
        let out = Command::new("bpftool")
            .args(["prog", "show", "-j"])
            .output()
            .context("bpftool")?;
        let progs: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        tracer.stop()?;
        Ok(progs
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("tp_")))
            .filter_map(|p| {
                let (t, n) = (p["run_time_ns"].as_u64()?, p["run_cnt"].as_u64()?);
                Some((
                    p["name"].as_str()?.to_owned(),
                    if n > 0 { t as f64 / n as f64 } else { 0.0 },
                    n,
                ))
            })
            .collect())
    })();
    let _ = std::fs::write(key, old.trim());
    result
}

pub fn run(args: BenchArgs) -> Result<()> {
    setup::run()?;
    require_root("bench")?;
    status(cargo().args([
        "build",
        "--release",
        "--package",
        "tracer",
        "--bin",
        "pathtrace",
    ]))?;
    let bin = root().join("target/release/pathtrace");
    let pipeline = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(root())
        .env("PATH", setup::path_with_cargo_bin())
        .args(["bench", "-q", "--package", "tracer", "--bench", "pipeline"])
        .output()
        .context("running the pipeline benchmark")?;
    let pipeline = String::from_utf8_lossy(&pipeline.stdout)
        .lines()
        .find(|l| l.starts_with("pipeline:"))
        .unwrap_or("pipeline: (failed)")
        .to_owned();

    let lab = Lab::new(LabConfig::default())?;
    let sink = lab.udp_sink()?;
    lab.udp_flood(Duration::from_secs(1), u64::MAX)?; // warm up ARP, conntrack, caches
    let mut results: Vec<(Mode, Run)> = Vec::new();
    for round in 0..args.rounds {
        for mode in [
            Mode::Untraced,
            Mode::NonMatching,
            Mode::Untraced,
            Mode::Matching,
        ] {
            let r = measure(&lab, &sink, &bin, mode, args.seconds)?;
            eprintln!(
                "round {round} {mode:?}: {:.0} pkt/s, {} events, {} lost",
                r.pps, r.events, r.lost
            );
            results.push((mode, r));
        }
    }
    let idle_costs = hook_costs(&lab, &bin, Mode::NonMatching, args.seconds)?;
    let costs = hook_costs(&lab, &bin, Mode::Matching, args.seconds)?;

    let pps = |m: Mode| {
        median(
            results
                .iter()
                .filter(|(x, _)| *x == m)
                .map(|(_, r)| r.pps)
                .collect(),
        )
    };
    let (base, non, all) = (
        pps(Mode::Untraced),
        pps(Mode::NonMatching),
        pps(Mode::Matching),
    );
    let matching: Vec<&Run> = results
        .iter()
        .filter(|(m, _)| *m == Mode::Matching)
        .map(|(_, r)| r)
        .collect();
    let events: u64 = matching.iter().map(|r| r.events).sum();
    let lost: u64 = matching.iter().map(|r| r.lost).sum();
    let cpu: f64 = matching.iter().map(|r| r.cpu_s).sum();
    let secs = args.seconds as f64 * matching.len() as f64;
    let rss = results.iter().map(|(_, r)| r.rss_kib).max().unwrap_or(0);

    let mut table = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(table, "| measure | value | goal |\n|---|---|---|");
    let _ = writeln!(
        table,
        "| untraced forwarding (UDP, 18-byte payload) | {base:.0} pkt/s | |"
    );
    let _ = writeln!(
        table,
        "| traced, filter matching nothing / untraced | {:.3} ({non:.0} pkt/s) | ≥ 0.95 |",
        non / base
    );
    let _ = writeln!(
        table,
        "| traced, every packet matching / untraced | {:.3} ({all:.0} pkt/s) | ≥ 0.60 |",
        all / base
    );
    let _ = writeln!(
        table,
        "| events delivered to userspace (matching) | {:.0} /s | |",
        events as f64 / secs
    );
    let _ = writeln!(
        table,
        "| events lost in the kernel (matching) | {lost} of {} | 0 |",
        events + lost
    );
    let _ = writeln!(
        table,
        "| pathtrace CPU per million events | {:.2} s | |",
        if events > 0 {
            cpu / events as f64 * 1e6
        } else {
            0.0
        }
    );
    let _ = writeln!(
        table,
        "| pathtrace peak RSS | {:.1} MiB | |",
        rss as f64 / 1024.0
    );
    for (name, ns, n) in &costs {
        let idle = idle_costs
            .iter()
            .find(|(x, _, _)| x == name)
            .map_or_else(|| "-".to_owned(), |(_, ns, _)| format!("{ns:.0}"));
        let _ = writeln!(
            table,
            "| BPF `{name}` run time, non-matching / matching | {idle} / {ns:.0} ns/call ({n} calls matching) | |"
        );
    }
    let _ = writeln!(
        table,
        "| {} | | ≥ 2 M events/s |",
        pipeline.trim_start_matches("pipeline: ")
    );
    println!("\n{table}");

    if !args.no_write {
        let doc = format!(
            "# Performance\n\nMeasured with `cargo xtask bench --rounds {} --seconds {}` on {} ({} cores), kernel {}, tracepoint backend.\n\
             The lab topology: 18-byte UDP datagrams from the outside namespace to published port {UDP_PORT}, DNATed through the bridge into the\n\
             container namespace, counted by a sink there. Runs interleave untraced and traced measurements; medians are shown.\n\n{table}\n\
             How to read it: the ratios are the forwarding throughput kept while pathtrace is attached; \"matching\" means every flood\n\
             packet produces ~4 events (receive, DNAT transmit on the bridge, veth transmit, receive in the container). BPF run time is\n\
             the kernel's own accounting (`kernel.bpf_stats_enabled`, on for one extra run and restored).\n",
            args.rounds,
            args.seconds,
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim(),
        );
        std::fs::write(root().join("docs/performance.md"), doc)?;
        eprintln!("wrote docs/performance.md");
    }
    drop(sink);
    drop(lab);
    Ok(())
}
