//! `cargo xtask bench`: what tracing costs on the container forwarding path.
//!
//! The lab topology; an 18-byte UDP flood from the outside namespace to a published port,
//! DNATed through the bridge into the container, where a sink counts arrivals; runs
//! interleaved (untraced, traced, untraced, traced, ...) so drift hits both sides. Reports the
//! throughput ratios, events delivered and lost, per-hook BPF run time (BPF_ENABLE_STATS, enabled only
//! for one dedicated run and restored), pathtrace's CPU per million events and RSS, and the
//! userspace pipeline on recorded events. Writes docs/performance.md.

use std::{
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
    /// Measure the kprobe and fentry backends in the kernel lab's VM (Debian's kernel, which has
    /// them) instead of tracepoints here. Under TCG only the ratios mean anything; the table is
    /// printed, not written.
    #[arg(long)]
    pub vm: bool,
    /// Inside the VM: measure with this backend and the pathtrace on PATH, nothing else.
    #[arg(long, hide = true, value_name = "BACKEND")]
    pub guest: Option<String>,
}

/// What floods the lab.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Traffic {
    /// 18-byte datagrams to the published UDP port, counted by a sink in the container.
    Udp,
    /// Raw-socket SYNs to the published TCP port, counted as TCP segments the container's
    /// stack receives (each SYN and the client kernel's RST to the SYN-ACK).
    Syn,
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
    /// How the kernel programs read packet headers (the ready line's `packet_reads`).
    packet_reads: String,
}

/// A running pathtrace writing its JSON to a file, as `pathtrace --json > trace.jsonl` would:
/// a pipe read by this harness (which shares the two cores with the flood) would measure the
/// harness's reading speed instead of pathtrace's.
struct Tracer {
    child: Child,
    output: std::path::PathBuf,
    ready: Value,
}

impl Tracer {
    /// SIGINT, then the stats line (the last line pathtrace writes).
    fn stop(mut self) -> Result<Option<Value>> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        let text = std::fs::read_to_string(&self.output)
            .with_context(|| format!("reading {}", self.output.display()))?;
        let _ = std::fs::remove_file(&self.output);
        Ok(text
            .lines()
            .rev()
            .find(|l| l.contains("\"kind\":\"stats\""))
            .and_then(|l| serde_json::from_str(l).ok()))
    }
}

/// The pathtrace under test and how it attaches.
struct Subject<'a> {
    bin: &'a std::path::Path,
    backend: &'a str,
}

fn start_tracer(subject: &Subject<'_>, mode: Mode, traffic: Traffic) -> Result<Option<Tracer>> {
    let proto = match traffic {
        Traffic::Udp => "udp",
        Traffic::Syn => "tcp",
    };
    let dport = match (mode, traffic) {
        (Mode::Untraced, _) => return Ok(None),
        (Mode::NonMatching, _) => 1,
        (Mode::Matching, Traffic::Udp) => UDP_PORT,
        (Mode::Matching, Traffic::Syn) => LabConfig::default().published_port,
    }
    .to_string();
    let filter = ["--dport", &dport, "--proto", proto];
    let output = std::env::temp_dir().join(format!("pathtrace-bench-{}.jsonl", std::process::id()));
    let file =
        std::fs::File::create(&output).with_context(|| format!("creating {}", output.display()))?;
    let mut child = Command::new(subject.bin)
        .args(filter)
        .args(["--json", "--backend", subject.backend])
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
        .context("starting pathtrace")?;
    // A debug-free release build starts in well under a second here, ~15 s under TCG.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        if let Some(status) = child.try_wait()? {
            bail!("pathtrace exited before it was ready: {status}");
        }
        let head = std::fs::read_to_string(&output).unwrap_or_default();
        if let Some(line) = head.lines().find(|l| l.contains("\"kind\":\"ready\"")) {
            let ready = serde_json::from_str(line).unwrap_or_default();
            return Ok(Some(Tracer {
                child,
                output,
                ready,
            }));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    bail!("pathtrace was not ready within 120 s")
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
    subject: &Subject<'_>,
    mode: Mode,
    traffic: Traffic,
    secs: u64,
) -> Result<Run> {
    let tracer = start_tracer(subject, mode, traffic)?;
    let cpu0 = tracer.as_ref().map_or(0.0, |t| cpu_seconds(t.child.id()));
    let arrived = || match traffic {
        Traffic::Udp => Ok(sink.received.load(std::sync::atomic::Ordering::Relaxed)),
        Traffic::Syn => lab.container_tcp_in_segs(),
    };
    let before = arrived()?;
    let t = Instant::now();
    match traffic {
        Traffic::Udp => lab.udp_flood(Duration::from_secs(secs), u64::MAX)?,
        Traffic::Syn => lab.syn_flood(Duration::from_secs(secs), u64::MAX)?,
    };
    let elapsed = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let got = arrived()? - before;
    let mut run = Run {
        pps: got as f64 / elapsed,
        events: 0,
        lost: 0,
        cpu_s: 0.0,
        rss_kib: 0,
        packet_reads: String::new(),
    };
    if let Some(t) = tracer {
        let pid = t.child.id();
        run.cpu_s = cpu_seconds(pid) - cpu0;
        run.rss_kib = peak_rss_kib(pid);
        run.packet_reads = t.ready["packet_reads"].as_str().unwrap_or("?").to_owned();
        if let Some(v) = t.stop()? {
            run.events = v["events"].as_u64().unwrap_or(0);
            run.lost = v["kernel"]["lost"].as_u64().unwrap_or(0);
        }
    }
    Ok(run)
}

/// Each run in `mode`'s throughput against the untraced runs just before and after it: this
/// machine's baseline drifts by ±10 % within minutes, and a ratio of medians taken far apart
/// measures the drift as much as the tracer.
fn paired_ratios(results: &[(Mode, Run)], mode: Mode) -> Vec<f64> {
    results
        .iter()
        .enumerate()
        .filter(|(_, (m, _))| *m == mode)
        .filter_map(|(i, (_, run))| {
            let before = results[..i]
                .iter()
                .rev()
                .find(|(m, _)| *m == Mode::Untraced);
            let after = results[i + 1..].iter().find(|(m, _)| *m == Mode::Untraced);
            let base: Vec<f64> = [before, after]
                .into_iter()
                .flatten()
                .map(|(_, r)| r.pps)
                .collect();
            (!base.is_empty()).then(|| run.pps / (base.iter().sum::<f64>() / base.len() as f64))
        })
        .collect()
}

/// The median of the paired ratios and, from three pairs on, their quartiles ("quartiles
/// 0.90–1.00 of 20 pairs"): one pair moves by ±0.1 here, so the spread says how far the median
/// can be trusted.
fn ratio_summary(results: &[(Mode, Run)], mode: Mode) -> (f64, Option<String>) {
    let mut r = paired_ratios(results, mode);
    r.sort_by(f64::total_cmp);
    let at = |q: f64| r[((r.len() - 1) as f64 * q).round() as usize];
    let spread = (r.len() >= 3).then(|| {
        format!(
            "quartiles {:.2}–{:.2} of {} pairs",
            at(0.25),
            at(0.75),
            r.len()
        )
    });
    (median(r), spread)
}

/// The runs measured in `mode`.
fn runs_in(results: &[(Mode, Run)], mode: Mode) -> Vec<&Run> {
    results
        .iter()
        .filter(|(m, _)| *m == mode)
        .map(|(_, r)| r)
        .collect()
}

/// The median throughput of the runs in `mode`.
fn median_pps(results: &[(Mode, Run)], mode: Mode) -> f64 {
    median(runs_in(results, mode).iter().map(|r| r.pps).collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Per-program average run time with bpf_stats on for one run in `mode`.
fn hook_costs(
    lab: &Lab,
    subject: &Subject<'_>,
    mode: Mode,
    secs: u64,
) -> Result<Vec<(String, f64, u64)>> {
    let _stats = enable_bpf_stats()?;
    (|| -> Result<Vec<(String, f64, u64)>> {
        let tracer = start_tracer(subject, mode, Traffic::Udp)?.context("tracer")?;
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
            .filter(|p| {
                p["name"].as_str().is_some_and(|n| {
                    ["tp_", "kprobe_", "kretprobe_", "fentry_", "fexit_"]
                        .iter()
                        .any(|prefix| n.starts_with(prefix))
                })
            })
            .filter_map(|p| {
                let (t, n) = (p["run_time_ns"].as_u64()?, p["run_cnt"].as_u64()?);
                Some((
                    p["name"].as_str()?.to_owned(),
                    if n > 0 { t as f64 / n as f64 } else { 0.0 },
                    n,
                ))
            })
            .collect())
    })()
}

/// Turns on BPF run-time accounting for as long as the returned descriptor is open
/// (`BPF_ENABLE_STATS`): the kernel turns it off again when the descriptor closes, even if the
/// bench is killed, so `kernel.bpf_stats_enabled` is never left changed.
fn enable_bpf_stats() -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    const BPF_ENABLE_STATS: libc::c_long = 32;
    const BPF_STATS_RUN_TIME: u32 = 0;
    // union bpf_attr, enable_stats member: { __u32 type; }, padded like the kernel's union.
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&BPF_STATS_RUN_TIME.to_ne_bytes());
    // SAFETY: a bpf(2) call with a zeroed, correctly sized attribute buffer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .context("bpf(BPF_ENABLE_STATS): turning on BPF run-time accounting for the run");
    }
    // SAFETY: the kernel just returned this descriptor to us and nobody else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// The heading where docs/performance.md's hand-written part starts.
const ANALYSIS: &str = "## Where the goals stand";

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(backend) = &args.guest {
        // Inside the VM: the host built everything; its root is mounted read-only.
        let bin = std::env::var_os("PATHTRACE_BIN").context("PATHTRACE_BIN")?;
        let subject = Subject {
            bin: std::path::Path::new(&bin),
            backend,
        };
        let table = measure_table(&args, &subject)?;
        println!("PTBENCH-TABLE-BEGIN\n{table}PTBENCH-TABLE-END");
        return Ok(());
    }
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
    if args.vm {
        return in_vm(&args);
    }
    // PATHTRACE_BIN measures another build (an A/B of two commits) in this bench's lab.
    let bin = std::env::var_os("PATHTRACE_BIN")
        .map_or_else(|| root().join("target/release/pathtrace"), Into::into);
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
    let mut table = measure_table(
        &args,
        &Subject {
            bin: &bin,
            backend: "tracepoint",
        },
    )?;
    use std::fmt::Write as _;
    let _ = writeln!(
        table,
        "| {} | | ≥ 2 M events/s |",
        pipeline.trim_start_matches("pipeline: ")
    );
    println!("\n{table}");
    if !args.no_write {
        write_doc(&args, &table)?;
    }
    Ok(())
}

/// Boots the kernel lab's VM once per function backend and runs the measurements there.
fn in_vm(args: &BenchArgs) -> Result<()> {
    setup::vm_packages()?;
    let bin_dir = root()
        .join("target/release")
        .canonicalize()
        .context("target/release")?;
    let xtask = std::env::current_exe().context("locating xtask")?;
    let guest = crate::vm::Guest::prepare(None, "auto", &bin_dir)?;
    for backend in ["fentry", "kprobe"] {
        let console = guest.run(
            &format!("bench-{backend}.sh"),
            &format!(
                "{} bench --guest {backend} --rounds {} --seconds {}",
                xtask.display(),
                args.rounds,
                args.seconds
            ),
            Duration::from_secs(3600),
        )?;
        let table = console
            .split_once("PTBENCH-TABLE-BEGIN\n")
            .and_then(|(_, rest)| rest.split_once("PTBENCH-TABLE-END"))
            .map(|(t, _)| t.to_owned())
            .with_context(|| format!("the {backend} run printed no table; console:\n{console}"))?;
        println!(
            "\n`cargo xtask bench --vm --rounds {} --seconds {}`, backend {backend}, Debian's kernel under TCG:\n\n{table}",
            args.rounds, args.seconds
        );
    }
    Ok(())
}

/// The interleaved floods and the table of what they measured (everything but the pipeline).
fn measure_table(args: &BenchArgs, subject: &Subject<'_>) -> Result<String> {
    let lab = Lab::new(LabConfig::default())?;
    let sink = lab.udp_sink()?;
    lab.udp_flood(Duration::from_secs(1), u64::MAX)?; // warm up ARP, conntrack, caches
    let mut results: Vec<(Mode, Run)> = Vec::new();
    let mut syn_results: Vec<(Mode, Run)> = Vec::new();
    for round in 0..args.rounds {
        for (traffic, out) in [
            (Traffic::Udp, &mut results),
            (Traffic::Syn, &mut syn_results),
        ] {
            for mode in [
                Mode::Untraced,
                Mode::NonMatching,
                Mode::Untraced,
                Mode::Matching,
            ] {
                let r = measure(&lab, &sink, subject, mode, traffic, args.seconds)?;
                eprintln!(
                    "round {round} {traffic:?} {mode:?}: {:.0}/s arrived, {} events, {} lost, pathtrace {:.2} s CPU",
                    r.pps, r.events, r.lost, r.cpu_s
                );
                out.push((mode, r));
            }
        }
    }
    let idle_costs = hook_costs(&lab, subject, Mode::NonMatching, args.seconds)?;
    let costs = hook_costs(&lab, subject, Mode::Matching, args.seconds)?;

    let (base, non, all) = (
        median_pps(&results, Mode::Untraced),
        median_pps(&results, Mode::NonMatching),
        median_pps(&results, Mode::Matching),
    );
    let ((non_ratio, non_spread), (all_ratio, all_spread)) = (
        ratio_summary(&results, Mode::NonMatching),
        ratio_summary(&results, Mode::Matching),
    );
    let matching = runs_in(&results, Mode::Matching);
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
        "| traced, filter matching nothing / untraced | {non_ratio:.3} ({non:.0} pkt/s{}) | ≥ 0.95 |",
        non_spread.map_or_else(String::new, |s| format!(", {s}"))
    );
    let _ = writeln!(
        table,
        "| traced, every packet matching / untraced | {all_ratio:.3} ({all:.0} pkt/s{}) | ≥ 0.60 |",
        all_spread.map_or_else(String::new, |s| format!(", {s}"))
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
    // The SYN flood: the same two filters against the TCP path (conntrack, DNAT, a listener
    // answering with SYN-ACKs that the client's kernel resets).
    let syn_matching = runs_in(&syn_results, Mode::Matching);
    let _ = writeln!(
        table,
        "| SYN flood: untraced (TCP segments into the container: SYN + client RST) | {:.0} /s | |",
        median_pps(&syn_results, Mode::Untraced)
    );
    for (mode, what, goal) in [
        (Mode::NonMatching, "filter matching nothing", "≥ 0.95"),
        (Mode::Matching, "every packet matching", "≥ 0.60"),
    ] {
        let (ratio, spread) = ratio_summary(&syn_results, mode);
        let _ = writeln!(
            table,
            "| SYN flood: {what} / untraced | {ratio:.3}{} | {goal} |",
            spread.map_or_else(String::new, |s| format!(" ({s})"))
        );
    }
    let _ = writeln!(
        table,
        "| SYN flood: events lost in the kernel (matching) | {} of {} | 0 |",
        syn_matching.iter().map(|r| r.lost).sum::<u64>(),
        syn_matching.iter().map(|r| r.lost + r.events).sum::<u64>()
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
    let reads = results
        .iter()
        .map(|(_, r)| r.packet_reads.as_str())
        .find(|r| !r.is_empty())
        .unwrap_or("?");
    let _ = writeln!(
        table,
        "| kernel programs read packet headers with | {reads} | |"
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
    drop(sink);
    drop(lab);
    Ok(table)
}

/// docs/performance.md: the generated header and table, then the hand-written analysis kept.
fn write_doc(args: &BenchArgs, table: &str) -> Result<()> {
    let tcp_port = LabConfig::default().published_port;
    let doc = format!(
        "# Performance\n\nMeasured with `cargo xtask bench --rounds {} --seconds {}` on {} ({} cores), kernel {}, tracepoint backend.\n\
             The lab topology: 18-byte UDP datagrams from the outside namespace to published port {UDP_PORT}, DNATed through the bridge into the\n\
             container namespace, counted by a sink there. Runs interleave untraced and traced measurements; medians are shown.\n\n{table}\n\
             How to read it: the ratios are the forwarding throughput kept while pathtrace is attached; \"matching\" means every flood\n\
             packet produces ~4 events (receive, DNAT transmit on the bridge, veth transmit, receive in the container). BPF run time is\n\
             the kernel's own accounting (`BPF_ENABLE_STATS`, on for two extra runs, one per filter, off when its descriptor closes).\n\
             Ratios pair each traced run with the untraced runs around it; the CLI's JSON goes to a file, as `pathtrace --json > trace.jsonl`.\n\
             The SYN flood sends raw-socket SYNs (source ports cycling) to the published TCP port {tcp_port}; its rate is TCP segments the\n\
             container's stack received (each SYN, and the RST the client's kernel sends for the SYN-ACK), BPF costs are from the UDP runs.\n",
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
    // The analysis below the generated table is written by people: keep it.
    let path = root().join("docs/performance.md");
    let analysis = std::fs::read_to_string(&path)
        .ok()
        .and_then(|old| old.find(ANALYSIS).map(|at| old[at..].to_owned()))
        .unwrap_or_default();
    std::fs::write(&path, format!("{doc}\n{analysis}"))?;
    eprintln!("wrote docs/performance.md");
    Ok(())
}
