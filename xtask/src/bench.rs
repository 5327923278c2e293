//! `cargo xtask bench`: what tracing costs on the container forwarding path.
//!
//! The lab topology; an 18-byte UDP flood from the outside namespace to a published port,
//! DNATed through the bridge into the container, where a sink counts arrivals; runs
//! interleaved (untraced, traced, untraced, traced, ...) so drift hits both sides. Reports the
//! throughput ratios, events delivered and lost, per-hook BPF run time (BPF_ENABLE_STATS,
//! enabled only for one dedicated run and restored), pathtrace's CPU per million events and
//! RSS, its wakeups and CPU while idle (the cost of leaving it on), and the userspace pipeline
//! on recorded events. Writes docs/performance.md.

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
    /// Interleaved rounds per mode (six pairs are the fewest a median's 95 % interval needs).
    #[arg(long, default_value_t = 6)]
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
    /// Measure only one ratio of this flood (udp or syn), the non-matching one unless
    /// `--matching`: untraced and traced runs alternate with nothing else between them, so the
    /// same time buys three times the pairs where the goal is tightest. Prints the ratio and the programs' run time per call (one
    /// more run, with the kernel's accounting on); writes nothing.
    #[arg(long, value_name = "FLOOD", value_parser = parse_flood, conflicts_with = "vm")]
    pub only: Option<Traffic>,
    /// With --only: every flood packet matching (summarised, the default) instead of none.
    #[arg(long, requires = "only")]
    pub matching: bool,
    /// With --only: trace with this hook set (pathtrace's --hooks) instead of a trace's
    /// default: `path` traces transmits, `drops` is the set meant to be left running.
    #[arg(long, value_name = "SET", requires = "only", value_parser = ["path", "receive", "drops"])]
    pub hooks: Option<String>,
    /// Seconds of the daemon's drop flood (the daemon as shipped under a full-rate UDP flood
    /// to a port nothing listens on: its counts against the kernel's); 0 leaves it out.
    #[arg(long, default_value_t = 40, value_name = "SECONDS")]
    pub drop_flood: u64,
    /// Inside the VM: measure with this backend and the pathtrace on PATH, nothing else.
    #[arg(long, hide = true, value_name = "BACKEND")]
    pub guest: Option<String>,
}

fn parse_flood(s: &str) -> Result<Traffic, String> {
    [Traffic::Udp, Traffic::Syn]
        .into_iter()
        .find(|t| t.name() == s)
        .ok_or_else(|| format!("`{s}`: the floods are udp and syn"))
}

/// What floods the lab.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Traffic {
    /// 18-byte datagrams to the published UDP port, counted by a sink in the container.
    Udp,
    /// Raw-socket SYNs to the published TCP port, counted as TCP segments the container's
    /// stack receives (each SYN and the client kernel's RST to the SYN-ACK).
    Syn,
}

impl Traffic {
    /// The name `--only` takes.
    fn name(self) -> &'static str {
        match self {
            Traffic::Udp => "udp",
            Traffic::Syn => "syn",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Untraced,
    /// pathtrace attached, filter matching nothing on this path.
    NonMatching,
    /// As [`Mode::NonMatching`], while the kernel follows the replies of one packet the filter
    /// did match (sent before the flood): every flood packet that fails the filter pays the
    /// reply lookup.
    NonMatchingFollowing,
    /// pathtrace attached, every flood packet matching (floods summarised: the default).
    Matching,
    /// As [`Mode::Matching`] with `--every-packet`: every packet traced in full.
    MatchingEveryPacket,
    /// As [`Mode::Matching`], the flood sent from [`FLOWS`] client addresses in turn: as many
    /// flows, each summarised on its own.
    MatchingFlows,
    /// Nothing attached, the flood of [`Mode::MatchingFlows`]: its ratio's baseline.
    UntracedFlows,
    /// pathtrace attached with `--hooks path` (the transmit tracepoint too, where a trace's
    /// default on tracepoints infers transmits), filter matching nothing.
    NonMatchingPath,
    /// `pathtrace daemon` with no configuration, as a host leaves it running: its default hook
    /// set and no filter, so every IPv4 packet the set sees is reported.
    Daemon,
}

impl Mode {
    /// Whether the flood is sent from [`FLOWS`] client addresses.
    fn flows(self) -> bool {
        matches!(self, Mode::MatchingFlows | Mode::UntracedFlows)
    }

    /// The untraced runs a run of this mode is compared with: the same flood.
    fn baseline(self) -> Mode {
        if self.flows() {
            Mode::UntracedFlows
        } else {
            Mode::Untraced
        }
    }
}

/// Flows of a [`Mode::MatchingFlows`] flood.
const FLOWS: u8 = 8;

/// Where `pathtrace daemon` serves its metrics during a [`Mode::Daemon`] run.
const DAEMON_PORT: u16 = 19_990;

struct Run {
    pps: f64,
    /// Segments or datagrams that arrived per second of busy CPU, both cores summed (see
    /// [`CpuTimes`]): the forwarding cost itself, without the time the hypervisor took away.
    per_busy_s: f64,
    /// CPU time stolen by the hypervisor during the flood, as a share of the wall time of both
    /// cores.
    steal: f64,
    events: u64,
    lost: u64,
    /// Packets followed as answers.
    replies: u64,
    /// Packets counted in the kernel instead of traced.
    summarised: u64,
    /// Packets that arrived (the flood's count, for the CPU per million packets).
    packets: u64,
    cpu_s: f64,
    rss_kib: u64,
    /// How the kernel programs read packet headers (the ready line's `packet_reads`).
    packet_reads: String,
    /// The hook set pathtrace attached; empty untraced.
    hook_set: String,
}

/// A running pathtrace.
struct Tracer {
    child: Child,
    how: Attached,
}

enum Attached {
    /// Writing its JSON to a file, as `pathtrace --json > trace.jsonl` would: a pipe read by
    /// this harness (which shares the two cores with the flood) would measure the harness's
    /// reading speed instead of pathtrace's.
    Cli {
        output: std::path::PathBuf,
        ready: Value,
    },
    /// `pathtrace daemon`, counting on its metrics endpoint, with the hook set it chose
    /// (`pathtrace_build_info`).
    Daemon { hooks: String },
}

/// Events read and lost, as pathtrace counted them.
#[derive(Default)]
struct Counted {
    events: u64,
    lost: u64,
    /// Packets the kernel followed as answers (the stats line's `replies`).
    replies: u64,
    /// Packets of floods the kernel counted instead of tracing.
    summarised: u64,
}

impl Tracer {
    /// How the kernel programs read packet headers (the CLI's ready line says).
    fn packet_reads(&self) -> &str {
        match &self.how {
            Attached::Cli { ready, .. } => ready["packet_reads"].as_str().unwrap_or("?"),
            Attached::Daemon { .. } => "",
        }
    }

    /// The hook set attached.
    fn hook_set(&self) -> &str {
        match &self.how {
            Attached::Cli { ready, .. } => ready["hook_set"].as_str().unwrap_or("path"),
            Attached::Daemon { hooks } => hooks,
        }
    }

    /// SIGINT, then what it counted: the CLI's stats line (the last line it writes), the
    /// daemon's counters scraped just before.
    fn stop(mut self) -> Result<Counted> {
        let scraped = matches!(self.how, Attached::Daemon { .. }).then(|| daemon_get("/metrics"));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        match self.how {
            Attached::Cli { output, .. } => {
                let text = std::fs::read_to_string(&output)
                    .with_context(|| format!("reading {}", output.display()))?;
                let _ = std::fs::remove_file(&output);
                let stats: Value = text
                    .lines()
                    .rev()
                    .find(|l| l.contains("\"kind\":\"stats\""))
                    .and_then(|l| serde_json::from_str(l).ok())
                    .unwrap_or_default();
                Ok(Counted {
                    events: stats["events"].as_u64().unwrap_or(0),
                    lost: stats["kernel"]["lost"].as_u64().unwrap_or(0),
                    replies: stats["replies"].as_u64().unwrap_or(0),
                    summarised: stats["kernel"]["summarised"].as_u64().unwrap_or(0),
                })
            }
            Attached::Daemon { .. } => {
                let (_, metrics) = scraped
                    .flatten()
                    .context("pathtrace daemon stopped answering /metrics")?;
                Ok(Counted {
                    events: counter(&metrics, "pathtrace_events_total"),
                    lost: counter(&metrics, "pathtrace_events_lost_total"),
                    replies: 0,
                    summarised: counter(&metrics, "pathtrace_summarised_packets_total"),
                })
            }
        }
    }
}

/// The port the daemon's drop flood is sent to: nothing listens there, nothing publishes it.
const DROP_FLOOD_PORT: u16 = 10013;

/// `pathtrace daemon` as shipped under a UDP flood at full rate for `seconds`, every datagram
/// dropped for want of a socket: the table row comparing what it counted (its drops, its
/// kernel-side count) with the kernel's own `Udp: NoPorts`, and what it lost.
fn daemon_drop_flood(lab: &Lab, subject: &Subject<'_>, seconds: u64) -> Result<String> {
    let daemon = start_daemon(subject)?;
    let flood = || -> Result<(u64, f64, u64)> {
        let before = lab.host_udp_no_ports()?;
        let started = Instant::now();
        let sent = lab.udp_flood_to(DROP_FLOOD_PORT, Duration::from_secs(seconds), u64::MAX)?;
        let rate = sent as f64 / started.elapsed().as_secs_f64();
        Ok((sent, rate, lab.host_udp_no_ports()? - before))
    };
    let (sent, rate, dropped) = match flood() {
        Ok(flooded) => flooded,
        Err(e) => {
            // Not left running on the bench's port.
            let _ = daemon.stop();
            return Err(e);
        }
    };
    let netns = format!("netns=\"{}\"", lab.host.name);
    let with = ["reason=\"NO_SOCKET\"", netns.as_str()];
    // The daemon reads the kernel's counts on its tick: wait for them to arrive (or not).
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let m = daemon_get("/metrics").map(|(_, m)| m).unwrap_or_default();
        if lab::daemon::series_sum(&m, "pathtrace_drops_total", &with) >= dropped
            || Instant::now() > deadline
        {
            break m;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    daemon.stop()?;
    let counted = lab::daemon::series_sum(&metrics, "pathtrace_drops_total", &with);
    let kernel = lab::daemon::series_sum(&metrics, "pathtrace_kernel_drops_total", &with);
    let lost = counter(&metrics, "pathtrace_events_lost_total");
    let uncounted = counter(&metrics, "pathtrace_uncounted_packets_total")
        + counter(&metrics, "pathtrace_kernel_drops_uncounted_total");
    eprintln!(
        "daemon drop flood: {sent} sent in {seconds} s, NoPorts {dropped}, counted {counted}, kernel {kernel}, lost {lost}, uncounted {uncounted}"
    );
    Ok(format!(
        "| `pathtrace daemon` as shipped, {seconds} s UDP drop flood at full rate ({rate:.0} datagrams/s, each dropped for want of a socket): drops it counted (`pathtrace_drops_total`); its kernel-side count; the kernel's own `Udp: NoPorts`; events lost; packets uncounted | {counted}; {kernel}; {dropped}; {lost}; {uncounted} | counted = the kernel's, 0 uncounted |"
    ))
}

/// An unlabelled counter of a Prometheus exposition; 0 when absent.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// One HTTP request to the daemon under measurement: its status and body.
fn daemon_get(path: &str) -> Option<(u16, String)> {
    lab::daemon::http_get(DAEMON_PORT, path)
}

/// `pathtrace daemon` with no configuration file and no filter, once its probes are attached
/// (`/healthz` answers 200).
fn start_daemon(subject: &Subject<'_>) -> Result<Tracer> {
    let mut child = Command::new(subject.bin)
        .args(["daemon", "--listen", &format!("127.0.0.1:{DAEMON_PORT}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting pathtrace daemon")?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        if let Some(status) = child.try_wait()? {
            bail!("pathtrace daemon exited before it was healthy: {status}");
        }
        if daemon_get("/healthz").is_some_and(|(status, _)| status == 200) {
            let hooks = daemon_get("/metrics")
                .and_then(|(_, m)| {
                    let (_, rest) = m.split_once("hooks=\"")?;
                    Some(rest.split('"').next()?.to_owned())
                })
                .unwrap_or_else(|| "?".into());
            let how = Attached::Daemon { hooks };
            return Ok(Tracer { child, how });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    bail!("pathtrace daemon was not healthy within 120 s")
}

/// The pathtrace under test and how it attaches.
struct Subject<'a> {
    bin: &'a std::path::Path,
    backend: &'a str,
    /// pathtrace's --hooks; `None`: a trace's default, no flag (older builds lack it).
    hooks: Option<&'a str>,
}

impl Subject<'_> {
    /// Whether this build's `--hooks` offers `set` (its help lists each as `set (...)`).
    fn knows_hook_set(&self, set: &str) -> bool {
        Command::new(self.bin)
            .arg("--help")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{set} (")))
    }
}

fn start_tracer(subject: &Subject<'_>, mode: Mode, traffic: Traffic) -> Result<Option<Tracer>> {
    let proto = match traffic {
        Traffic::Udp => "udp",
        Traffic::Syn => "tcp",
    };
    let dport = match (mode, traffic) {
        (Mode::Untraced | Mode::UntracedFlows, _) => return Ok(None),
        (Mode::Daemon, _) => return start_daemon(subject).map(Some),
        (Mode::NonMatching | Mode::NonMatchingPath | Mode::NonMatchingFollowing, _) => 1,
        (Mode::Matching | Mode::MatchingEveryPacket | Mode::MatchingFlows, Traffic::Udp) => {
            UDP_PORT
        }
        (Mode::Matching | Mode::MatchingEveryPacket | Mode::MatchingFlows, Traffic::Syn) => {
            LabConfig::default().published_port
        }
    }
    .to_string();
    let filter = ["--dport", &dport, "--proto", proto];
    let hooks = match mode {
        Mode::NonMatchingPath => Some("path"),
        _ => subject.hooks,
    };
    let output = std::env::temp_dir().join(format!("pathtrace-bench-{}.jsonl", std::process::id()));
    let file =
        std::fs::File::create(&output).with_context(|| format!("creating {}", output.display()))?;
    let mut child = Command::new(subject.bin)
        .args(filter)
        .args(["--json", "--backend", subject.backend])
        .args(hooks.into_iter().flat_map(|set| ["--hooks", set]))
        .args((mode == Mode::MatchingEveryPacket).then_some("--every-packet"))
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
            let ready: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            if let Some(set) = hooks
                && ready["hook_set"] != set
            {
                let _ = child.kill();
                bail!("pathtrace attached {} hooks, not {set}", ready["hook_set"]);
            }
            let how = Attached::Cli { output, ready };
            return Ok(Some(Tracer { child, how }));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    bail!("pathtrace was not ready within 120 s")
}

/// The machine-wide CPU counters of `/proc/stat`'s first line, in ticks.
#[derive(Clone, Copy, Default)]
struct CpuTimes {
    /// user + nice + system + irq + softirq: everything that ran, tracer and BPF included.
    busy: u64,
    /// Time the vCPUs wanted to run but the hypervisor ran something else: invisible to the
    /// guest, yet it lowers the throughput of whichever run it falls on.
    steal: u64,
    all: u64,
}

impl CpuTimes {
    fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        Self {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            steal: at(7),
            all: f.iter().take(8).sum(),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            busy: self.busy.saturating_sub(before.busy),
            steal: self.steal.saturating_sub(before.steal),
            all: self.all.saturating_sub(before.all),
        }
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is index 0, utime 11, stime 12.
    (ticks(11) + ticks(12)) / ticks_per_second()
}

/// The unit of `/proc/stat` and `/proc/PID/stat` times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    }
}

/// Context switches of every thread of a process: each is a wakeup (voluntary: it slept and
/// was woken) or a preemption.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .map(|t| {
            std::fs::read_to_string(t.path().join("status"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("voluntary_ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// What a pathtrace whose filter matches nothing costs while no traffic flows: the daemon
/// left running on a quiet host. (wakeups per second, share of one core).
fn idle_cost(subject: &Subject<'_>, seconds: u64) -> Result<(f64, f64)> {
    let tracer = start_tracer(subject, Mode::NonMatching, Traffic::Udp)?
        .context("a traced mode starts pathtrace")?;
    let pid = tracer.child.id();
    // Past start-up (BTF, Docker, the first ruleset reading).
    std::thread::sleep(Duration::from_secs(2));
    let (switches, cpu, t) = (context_switches(pid), cpu_seconds(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds.max(10)));
    let secs = t.elapsed().as_secs_f64();
    let wakeups = context_switches(pid).saturating_sub(switches) as f64 / secs;
    let share = (cpu_seconds(pid) - cpu) / secs;
    tracer.stop()?;
    Ok((wakeups, share))
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
    if mode == Mode::NonMatchingFollowing {
        // One packet to the filter's port, whose answer (a RST, or an ICMP port unreachable)
        // the kernel then follows: its replies stay followed for the whole run.
        let to = std::net::SocketAddr::from((lab.config.host_addr, 1));
        lab.outside
            .run_in(move || match traffic {
                Traffic::Udp => std::net::UdpSocket::bind("0.0.0.0:0")
                    .and_then(|s| s.send_to(b"x", to))
                    .map(drop),
                Traffic::Syn => {
                    std::net::TcpStream::connect_timeout(&to, Duration::from_millis(300)).map(drop)
                }
            })?
            .ok();
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu0 = tracer.as_ref().map_or(0.0, |t| cpu_seconds(t.child.id()));
    let arrived = || match traffic {
        Traffic::Udp => Ok(sink.received.load(std::sync::atomic::Ordering::Relaxed)),
        Traffic::Syn => lab.container_tcp_in_segs(),
    };
    let before = arrived()?;
    let cpu_before = CpuTimes::now();
    let t = Instant::now();
    let flood = Duration::from_secs(secs);
    match (traffic, mode.flows()) {
        (Traffic::Udp, false) => lab.udp_flood(flood, u64::MAX)?,
        (Traffic::Syn, false) => lab.syn_flood(flood, u64::MAX)?,
        (Traffic::Udp, true) => lab.udp_flood_from(&lab.flow_sources(FLOWS)?, flood, u64::MAX)?,
        (Traffic::Syn, true) => lab.syn_flood_from(&lab.flow_sources(FLOWS)?, flood, u64::MAX)?,
    };
    let elapsed = t.elapsed().as_secs_f64();
    let cpu = CpuTimes::now().since(cpu_before);
    std::thread::sleep(Duration::from_millis(300));
    let got = arrived()? - before;
    let ticks = ticks_per_second();
    let mut run = Run {
        pps: got as f64 / elapsed,
        per_busy_s: if cpu.busy > 0 {
            got as f64 / (cpu.busy as f64 / ticks)
        } else {
            0.0
        },
        steal: if cpu.all > 0 {
            cpu.steal as f64 / cpu.all as f64
        } else {
            0.0
        },
        events: 0,
        lost: 0,
        replies: 0,
        summarised: 0,
        packets: got,
        cpu_s: 0.0,
        rss_kib: 0,
        packet_reads: String::new(),
        hook_set: String::new(),
    };
    if let Some(t) = tracer {
        let pid = t.child.id();
        run.cpu_s = cpu_seconds(pid) - cpu0;
        run.rss_kib = peak_rss_kib(pid);
        run.packet_reads = t.packet_reads().to_owned();
        run.hook_set = t.hook_set().to_owned();
        let counted = t.stop()?;
        (run.events, run.lost, run.replies, run.summarised) = (
            counted.events,
            counted.lost,
            counted.replies,
            counted.summarised,
        );
        if mode == Mode::NonMatchingFollowing && run.replies == 0 {
            bail!(
                "{traffic:?}: the primer's answer was not followed: the run would not measure the reply lookup"
            );
        }
    }
    Ok(run)
}

/// What a pair of runs is compared on.
#[derive(Clone, Copy)]
enum Measure {
    /// Arrivals per wall-clock second: the goal's measure, and what a user feels.
    Throughput,
    /// Arrivals per busy CPU-second of the whole machine: the same cost without the
    /// hypervisor's steal and idle gaps, which move a 3 s run by several percent here.
    PerCpu,
}

impl Measure {
    fn of(self, run: &Run) -> f64 {
        match self {
            Measure::Throughput => run.pps,
            Measure::PerCpu => run.per_busy_s,
        }
    }
}

/// Each run in `mode` against the untraced runs just before and after it, on `measure`: this
/// machine's baseline drifts by ±10 % within minutes, and a ratio of medians taken far apart
/// measures the drift as much as the tracer.
fn paired_ratios(results: &[(Mode, Run)], mode: Mode, measure: Measure) -> Vec<f64> {
    results
        .iter()
        .enumerate()
        .filter(|(_, (m, _))| *m == mode)
        .filter_map(|(i, (_, run))| {
            let baseline = mode.baseline();
            let before = results[..i].iter().rev().find(|(m, _)| *m == baseline);
            let after = results[i + 1..].iter().find(|(m, _)| *m == baseline);
            let base: Vec<f64> = [before, after]
                .into_iter()
                .flatten()
                .map(|(_, r)| measure.of(r))
                .collect();
            let base = base.iter().sum::<f64>() / base.len().max(1) as f64;
            (base > 0.0).then(|| measure.of(run) / base)
        })
        .collect()
}

/// The paired ratios of one mode: their median and how far it can be trusted.
struct Ratio {
    median: f64,
    /// A distribution-free 95 % confidence interval of the median (order statistics of the
    /// pairs), from six pairs on: one pair moves by ±0.1 here, so whether a goal holds is read
    /// off the interval, not the median alone.
    ci: Option<(f64, f64)>,
    pairs: usize,
}

impl Ratio {
    fn of(results: &[(Mode, Run)], mode: Mode, measure: Measure) -> Self {
        let mut r = paired_ratios(results, mode, measure);
        r.sort_by(f64::total_cmp);
        let ci = median_ci_ranks(r.len()).map(|(lo, hi)| (r[lo], r[hi]));
        Self {
            pairs: r.len(),
            ci,
            median: median(r),
        }
    }
}

impl std::fmt::Display for Ratio {
    /// `0.942 (95 % CI 0.93–0.95 of 20 pairs)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3}", self.median)?;
        if let Some((lo, hi)) = self.ci {
            write!(f, " (95 % CI {lo:.2}–{hi:.2} of {} pairs)", self.pairs)?;
        }
        Ok(())
    }
}

/// The ranks (0-based, in the sorted sample) bounding a 95 % confidence interval of the median
/// of `n` samples: the k-th smallest and k-th largest for the largest k with
/// P(Binomial(n, ½) < k) ≤ 2.5 %. `None` below six samples, where no such k exists.
fn median_ci_ranks(n: usize) -> Option<(usize, usize)> {
    let mut below = 0.0; // P(X < k), growing with k
    let mut term = 0.5f64.powi(n as i32); // P(X = k)
    let mut k = 0;
    while k < n / 2 && below + term <= 0.025 {
        below += term;
        term *= (n - k) as f64 / (k + 1) as f64;
        k += 1;
    }
    (k >= 1).then(|| (k - 1, n - k))
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

/// The median (the mean of the middle two for an even count); 0 for no values.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Per-program average run time with bpf_stats on for one run of `traffic` in `mode`.
fn hook_costs(
    lab: &Lab,
    subject: &Subject<'_>,
    mode: Mode,
    traffic: Traffic,
    secs: u64,
) -> Result<Vec<(String, f64, u64)>> {
    let _stats = enable_bpf_stats()?;
    (|| -> Result<Vec<(String, f64, u64)>> {
        let tracer = start_tracer(subject, mode, traffic)?.context("tracer")?;
        match traffic {
            Traffic::Udp => lab.udp_flood(Duration::from_secs(secs), u64::MAX)?,
            Traffic::Syn => lab.syn_flood(Duration::from_secs(secs), u64::MAX)?,
        };
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
            hooks: None,
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
    let subject = Subject {
        bin: &bin,
        backend: "tracepoint",
        hooks: args.hooks.as_deref(),
    };
    if let Some(traffic) = args.only {
        return only(&args, &subject, traffic);
    }
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
    let mut table = measure_table(&args, &subject)?;
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

/// The lab and its UDP sink, warmed by a second of flood: the first packets pay for ARP,
/// conntrack entries and cold caches, which no measured run should.
fn warm_lab() -> Result<(Lab, lab::bench::Sink)> {
    let lab = Lab::new(LabConfig::default())?;
    let sink = lab.udp_sink()?;
    lab.udp_flood(Duration::from_secs(1), u64::MAX)?;
    Ok((lab, sink))
}

/// One measured run, as the progress line on stderr.
fn log_run(round: u32, traffic: Traffic, mode: Mode, r: &Run) {
    eprintln!(
        "round {round} {traffic:?} {mode:?}: {:.0}/s arrived ({:.0} per busy CPU-s, {:.1} % stolen), {} events, {} summarised, {} lost, pathtrace {:.2} s CPU",
        r.pps,
        r.per_busy_s,
        r.steal * 100.0,
        r.events,
        r.summarised,
        r.lost,
        r.cpu_s
    );
}

/// `| UDP flood, every packet matching, the default: events emitted; summarised; lost; pathtrace
/// CPU per million packets | ... |`: what a matching flood cost, summed over its runs.
fn flood_row(name: &str, how: &str, runs: &[&Run]) -> String {
    let (events, summarised, lost, packets, cpu) =
        runs.iter()
            .fold((0u64, 0u64, 0u64, 0u64, 0.0f64), |(e, s, l, p, c), r| {
                (
                    e + r.events,
                    s + r.summarised,
                    l + r.lost,
                    p + r.packets,
                    c + r.cpu_s,
                )
            });
    format!(
        "| {name} flood, every packet matching, {how}: events read; packets summarised in the kernel; events lost; pathtrace CPU per million packets | {events}; {summarised}; {lost} of {}; {:.2} s | {} |",
        events + lost,
        if packets > 0 {
            cpu / packets as f64 * 1e6
        } else {
            0.0
        },
        if how.ends_with("the default") {
            "0 lost"
        } else {
            "losses counted"
        }
    )
}

/// `--only`: untraced and traced runs of one flood, alternating, their ratio, and what each
/// program cost per call in one more traced run.
fn only(args: &BenchArgs, subject: &Subject<'_>, traffic: Traffic) -> Result<()> {
    if args.rounds == 0 {
        bail!("--only measures a ratio: give it --rounds of 1 or more (6 for an interval)");
    }
    let traced = if args.matching {
        Mode::Matching
    } else {
        Mode::NonMatching
    };
    let (lab, sink) = warm_lab()?;
    let mut results: Vec<(Mode, Run)> = Vec::new();
    for round in 0..args.rounds {
        for mode in [Mode::Untraced, traced] {
            let r = measure(&lab, &sink, subject, mode, traffic, args.seconds)?;
            log_run(round, traffic, mode, &r);
            results.push((mode, r));
        }
    }
    let r = measure(&lab, &sink, subject, Mode::Untraced, traffic, args.seconds)?;
    results.push((Mode::Untraced, r));
    let costs = hook_costs(&lab, subject, traced, traffic, args.seconds)?;
    println!(
        "`cargo xtask bench --only {}{}{} --rounds {} --seconds {}`: {traffic:?} flood, {} / untraced: {}; per busy CPU-second: {}",
        traffic.name(),
        if args.matching { " --matching" } else { "" },
        subject
            .hooks
            .map_or_else(String::new, |set| format!(" --hooks {set}")),
        args.rounds,
        args.seconds,
        if args.matching {
            "every packet matching"
        } else {
            "filter matching nothing"
        },
        Ratio::of(&results, traced, Measure::Throughput),
        Ratio::of(&results, traced, Measure::PerCpu)
    );
    for (name, ns, calls) in costs.iter().filter(|(_, _, calls)| *calls > 0) {
        println!("  BPF `{name}`: {ns:.0} ns/call ({calls} calls)");
    }
    Ok(())
}

/// The interleaved floods and the table of what they measured (everything but the pipeline).
fn measure_table(args: &BenchArgs, subject: &Subject<'_>) -> Result<String> {
    let (lab, sink) = warm_lab()?;
    // One traced run, not counted: the first one's JSON (~500 MB) goes into page cache on
    // memory a fresh VM's hypervisor has not backed yet, and those first touches stall the
    // reader long enough to lose events (docs/performance.md). Later runs reuse the pages.
    let warm = measure(
        &lab,
        &sink,
        subject,
        Mode::Matching,
        Traffic::Udp,
        args.seconds,
    )?;
    eprintln!(
        "warm-up (not counted): {} events, {} lost, pathtrace {:.2} s CPU",
        warm.events, warm.lost, warm.cpu_s
    );
    let mut results: Vec<(Mode, Run)> = Vec::new();
    let mut syn_results: Vec<(Mode, Run)> = Vec::new();
    // On tracepoints a trace's default is `receive`, transmits inferred: the path set, which
    // traces them, is measured beside it by builds that have both (PATHTRACE_BIN may be an
    // older one, whose default is the path).
    let tracepoints = subject.backend == "tracepoint" && subject.hooks.is_none();
    let path_too = tracepoints && subject.knows_hook_set("receive");
    // The daemon as a host leaves it: its own choices (backend auto: tracepoints here).
    let daemon_too = tracepoints;
    let mut modes = vec![
        Mode::Untraced,
        Mode::NonMatching,
        Mode::Untraced,
        Mode::Matching,
        Mode::Untraced,
        Mode::NonMatchingFollowing,
        Mode::Untraced,
        Mode::MatchingEveryPacket,
        Mode::UntracedFlows,
        Mode::MatchingFlows,
        Mode::UntracedFlows,
    ];
    for (extra, wanted) in [
        (Mode::NonMatchingPath, path_too),
        (Mode::Daemon, daemon_too),
    ] {
        if wanted {
            modes.extend([Mode::Untraced, extra]);
        }
    }
    // First: a failure here shows before the rounds, not after them.
    let drop_flood = if daemon_too && args.drop_flood > 0 {
        Some(daemon_drop_flood(&lab, subject, args.drop_flood)?)
    } else {
        None
    };
    for round in 0..args.rounds {
        for (traffic, out) in [
            (Traffic::Udp, &mut results),
            (Traffic::Syn, &mut syn_results),
        ] {
            for &mode in &modes {
                let r = measure(&lab, &sink, subject, mode, traffic, args.seconds)?;
                log_run(round, traffic, mode, &r);
                out.push((mode, r));
            }
        }
    }
    // The daemon's rows name the set it chose for itself.
    let daemon_set = runs_in(&results, Mode::Daemon)
        .first()
        .map_or_else(String::new, |r| r.hook_set.clone());
    let daemon_row = format!(
        "`pathtrace daemon` left on as shipped (no configuration: `--hooks {daemon_set}`, no filter)"
    );
    // And the main rows the set a trace attaches by default.
    let trace_set = runs_in(&results, Mode::NonMatching)
        .first()
        .map_or_else(String::new, |r| r.hook_set.clone());
    let idle_costs = hook_costs(&lab, subject, Mode::NonMatching, Traffic::Udp, args.seconds)?;
    let costs = hook_costs(&lab, subject, Mode::Matching, Traffic::Udp, args.seconds)?;
    // The SYN flood's non-matching path, where the goal is tightest: 18 hook calls per
    // exchange, so a few nanoseconds per call show here first.
    let syn_idle_costs = hook_costs(&lab, subject, Mode::NonMatching, Traffic::Syn, args.seconds)?;
    let (wakeups, idle_cpu) = idle_cost(subject, args.seconds)?;

    let (base, non, all) = (
        median_pps(&results, Mode::Untraced),
        median_pps(&results, Mode::NonMatching),
        median_pps(&results, Mode::Matching),
    );
    let (non_ratio, all_ratio) = (
        Ratio::of(&results, Mode::NonMatching, Measure::Throughput),
        Ratio::of(&results, Mode::Matching, Measure::Throughput),
    );
    let matching = runs_in(&results, Mode::Matching);
    let events: u64 = matching.iter().map(|r| r.events).sum();
    let cpu: f64 = matching.iter().map(|r| r.cpu_s).sum();
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
        "| traced as a trace is by default (`--hooks {trace_set}`), filter matching nothing / untraced ({non:.0} pkt/s) | {non_ratio} | ≥ 0.95 |"
    );
    let _ = writeln!(
        table,
        "| traced, every packet matching (one flow: the flood summarised, the default) / untraced ({all:.0} pkt/s) | {all_ratio} | ≥ 0.90, 0 lost |"
    );
    let _ = writeln!(
        table,
        "| traced, every packet matching, {FLOWS} flows at once (each summarised) / untraced | {} | ≥ 0.90, 0 lost |",
        Ratio::of(&results, Mode::MatchingFlows, Measure::Throughput)
    );
    let _ = writeln!(
        table,
        "| every packet matching, `--every-packet` (each traced in full) / untraced | {} | ≥ 0.70, losses counted |",
        Ratio::of(&results, Mode::MatchingEveryPacket, Measure::Throughput)
    );
    let _ = writeln!(
        table,
        "| filter matching nothing, while one matched flow's replies are followed (every flood packet pays the reply lookup) / untraced | {} | ≥ 0.95 |",
        Ratio::of(&results, Mode::NonMatchingFollowing, Measure::Throughput)
    );
    if path_too {
        let _ = writeln!(
            table,
            "| `--hooks path` (transmits traced, not inferred), filter matching nothing / untraced | {} | ≥ 0.95 |",
            Ratio::of(&results, Mode::NonMatchingPath, Measure::Throughput)
        );
    }
    if daemon_too {
        let _ = writeln!(
            table,
            "| {daemon_row} / untraced | {} | ≥ 0.95 |",
            Ratio::of(&results, Mode::Daemon, Measure::Throughput)
        );
    }
    for (name, runs) in [("UDP", &results), ("SYN", &syn_results)] {
        let flows = format!("{FLOWS} flows at once, the default");
        for (mode, how) in [
            (Mode::Matching, "the default"),
            (Mode::MatchingFlows, flows.as_str()),
            (Mode::MatchingEveryPacket, "`--every-packet`"),
        ] {
            let _ = writeln!(table, "{}", flood_row(name, how, &runs_in(runs, mode)));
        }
    }
    // The SYN flood: the same two filters against the TCP path (conntrack, DNAT, a listener
    // answering with SYN-ACKs that the client's kernel resets).
    let _ = writeln!(
        table,
        "| SYN flood: untraced (TCP segments into the container: SYN + client RST) | {:.0} /s | |",
        median_pps(&syn_results, Mode::Untraced)
    );
    let default_non_matching =
        format!("`--hooks {trace_set}` (the default), filter matching nothing");
    let flows_matching = format!("every packet matching, {FLOWS} flows at once (each summarised)");
    for (mode, what, goal) in [
        (Mode::NonMatching, default_non_matching.as_str(), "≥ 0.95"),
        (
            Mode::Matching,
            "every packet matching (summarised, the default)",
            "≥ 0.90, 0 lost",
        ),
        (
            Mode::MatchingFlows,
            flows_matching.as_str(),
            "≥ 0.90, 0 lost",
        ),
        (
            Mode::MatchingEveryPacket,
            "every packet matching, `--every-packet`",
            "≥ 0.70, losses counted",
        ),
        (
            Mode::NonMatchingFollowing,
            "filter matching nothing, one flow's replies followed",
            "≥ 0.95",
        ),
        (
            Mode::NonMatchingPath,
            "`--hooks path`, filter matching nothing",
            "≥ 0.95",
        ),
    ] {
        if mode == Mode::NonMatchingPath && !path_too {
            continue;
        }
        let ratio = Ratio::of(&syn_results, mode, Measure::Throughput);
        let _ = writeln!(table, "| SYN flood: {what} / untraced | {ratio} | {goal} |");
    }
    if daemon_too {
        // Left on with no filter, the daemon reports every drop: under the SYN flood, the
        // client kernel's NO_SOCKET for each SYN-ACK and the container's for each RST.
        let runs = runs_in(&syn_results, Mode::Daemon);
        let (events, lost, cpu) = runs.iter().fold((0, 0, 0.0), |(e, l, c), r| {
            (e + r.events, l + r.lost, c + r.cpu_s)
        });
        let secs = args.seconds as f64 * runs.len().max(1) as f64;
        let _ = writeln!(
            table,
            "| SYN flood: {daemon_row} / untraced | {} | ≥ 0.60: with no filter every drop matches |",
            Ratio::of(&syn_results, Mode::Daemon, Measure::Throughput)
        );
        let _ = writeln!(
            table,
            "| SYN flood: the daemon as shipped: drops reported; lost; its CPU | {:.0} /s; {lost} of {}; {:.2} s per million, {:.0} % of a core | 0 lost |",
            events as f64 / secs,
            events + lost,
            if events > 0 {
                cpu / events as f64 * 1e6
            } else {
                0.0
            },
            cpu / secs * 100.0
        );
    }
    // The same pairs on CPU cost: what tracing adds per packet on the whole machine (pathtrace
    // itself included), with the hypervisor's steal and idle gaps taken out of both sides.
    for (name, runs) in [("UDP", &results), ("SYN", &syn_results)] {
        let [non, all] =
            [Mode::NonMatching, Mode::Matching].map(|m| Ratio::of(runs, m, Measure::PerCpu));
        let steal = median(runs.iter().map(|(_, r)| r.steal * 100.0).collect());
        let _ = writeln!(
            table,
            "| {name}: packets per busy CPU-second (whole machine), traced / untraced, non-matching; matching (median steal {steal:.1} %) | {non}; {all} | |"
        );
    }
    if let Some(row) = drop_flood {
        let _ = writeln!(table, "{row}");
    }
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
    let _ = writeln!(
        table,
        "| pathtrace idle (filter matching nothing, no traffic): wakeups; CPU | {wakeups:.1} /s; {:.2} % of a core | |",
        idle_cpu * 100.0
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
        let idle = |costs: &[(String, f64, u64)]| {
            costs
                .iter()
                .find(|(x, _, _)| x == name)
                .map_or_else(|| "-".to_owned(), |(_, ns, _)| format!("{ns:.0}"))
        };
        let _ = writeln!(
            table,
            "| BPF `{name}` run time, non-matching / matching; non-matching under the SYN flood | {} / {ns:.0} ns/call ({n} calls matching); {} ns/call | |",
            idle(&idle_costs),
            idle(&syn_idle_costs)
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
        "# Performance\n\n\
         What tracing costs the traffic it watches. Measured with `cargo xtask bench --rounds {rounds} --seconds {seconds}` on {host}\n\
         ({cores} cores), kernel {kernel}, tracepoint backend, in the lab topology: floods from the outside namespace to a published\n\
         port, DNATed through the bridge into the container namespace. Medians; each ratio pairs a traced run with the untraced\n\
         runs around it, with the distribution-free 95 % interval of its median.\n\n\
         Reproduce (root, a fresh clone; `cargo xtask setup` installs what is missing):\n\n\
         ```sh\n\
         cargo xtask bench --rounds {rounds} --seconds {seconds}   # this table, written here\n\
         cargo xtask bench --only syn --rounds 20    # one ratio, printed: non-matching SYN (or udp; --hooks drops|path; --matching)\n\
         cargo xtask bench --vm --rounds 2           # fentry and kprobe in the kernel lab's VM, printed\n\
         cargo bench -p tracer --bench pipeline      # userspace decode + correlation alone\n\
         ```\n\n{table}\n\
         What the rows mean:\n\
         - *untraced*: the floods' rates with nothing attached. UDP: 18-byte datagrams to published port {UDP_PORT}, counted by a\n  \
         sink in the container. SYN: raw-socket SYNs (source ports cycling) to published TCP port {tcp_port}, counted as TCP\n  \
         segments the container received (each SYN, and the RST the client's kernel sends for the SYN-ACK).\n\
         - *filter matching nothing / untraced*: throughput kept with probes attached and a filter no flood packet passes: the\n  \
         cost every packet on a host pays while a trace for something else runs. Goal ≥ 0.95.\n\
         - *every packet matching / untraced*: every flood packet matches the filter. By default a flow (a client to one\n  \
         service port, whatever its source port) gets 20 full packets a second (`--packets-per-flow`); the rest, while they\n  \
         take the flow's way, are counted in the kernel and told as one `summary` line (docs/json.md). *`--every-packet`*\n  \
         streams each in full: ~2 events a packet with a trace's default set (`--hooks receive`: the receives; the bridge\n  \
         and veth transmits are inferred in userspace), ~4 with `--hooks path`. Goals (issue 30): ≥ 0.90 with 0 lost by\n  \
         default, ≥ 0.70 with losses counted for `--every-packet`. The CLI's JSON goes to a file, as\n  \
         `pathtrace --json > trace.jsonl`.\n\
         - *{FLOWS} flows at once*: the same flood sent from {FLOWS} client addresses in turn (a `sendmmsg` batch, or a SYN, from each):\n  \
         {FLOWS} flows, each with its own budget and summary. Paired with untraced runs of the same {FLOWS}-source flood around it.\n\
         - *events read; packets summarised; events lost; CPU per million packets*: the same runs' sums over the six rounds.\n\
         - *`--hooks path`* and *`pathtrace daemon` as shipped* rows: measured in the same rounds; the daemon is started with\n  \
         nothing but `--listen` (its default set, `--hooks drops`, and no filter), as a host leaves it running.\n\
         - *drop flood*: the daemon as shipped under a UDP flood at full rate (`sendmmsg`, one socket) to a port of the host\n  \
         nothing listens on, for `--drop-flood` seconds (40 by default): its `pathtrace_drops_total` and the kernel-side\n  \
         count it reads, against the kernel's own `Udp: NoPorts` for the same flood. Goal: equal, 0 uncounted (issue 30).\n\
         - *per busy CPU-second*: arrivals divided by the CPU time the whole machine spent (pathtrace included, hypervisor\n  \
         steal excluded): what tracing costs when the CPU, not the wire, is the limit.\n\
         - *CPU per million events*, *peak RSS*, *idle*: pathtrace's own process (idle: no traffic, filter matching nothing).\n\
         - *BPF run time*: the kernel's own accounting (`BPF_ENABLE_STATS`, on for three extra runs), per program call; UDP runs\n  \
         unless marked SYN.\n\
         - *decode + correlate*: `cargo bench -p tracer --bench pipeline`, recorded events on one core. Goal ≥ 2 M events/s.\n",
        rounds = args.rounds,
        seconds = args.seconds,
        host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pps: f64) -> Run {
        Run {
            pps,
            per_busy_s: pps / 2.0,
            steal: 0.0,
            events: 0,
            lost: 0,
            replies: 0,
            summarised: 0,
            packets: 0,
            cpu_s: 0.0,
            rss_kib: 0,
            packet_reads: String::new(),
            hook_set: String::new(),
        }
    }

    #[test]
    fn the_daemon_s_counters_are_read_by_their_whole_name() {
        let metrics = "# TYPE pathtrace_events_total counter\npathtrace_events_total 4856886\n\
                       pathtrace_events_lost_total 3\npathtrace_drops_total{reason=\"NO_SOCKET\"} 9\n";
        assert_eq!(counter(metrics, "pathtrace_events_total"), 4_856_886);
        assert_eq!(counter(metrics, "pathtrace_events_lost_total"), 3);
        assert_eq!(
            counter(metrics, "pathtrace_drops_total"),
            0,
            "labelled: not a counter"
        );
        assert_eq!(counter("", "pathtrace_events_total"), 0);
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn median_interval_ranks_follow_the_binomial_tables() {
        assert_eq!(median_ci_ranks(5), None, "P(all above) = 3 % > 2.5 %");
        assert_eq!(median_ci_ranks(6), Some((0, 5)));
        assert_eq!(median_ci_ranks(20), Some((5, 14)));
        assert_eq!(median_ci_ranks(100), Some((39, 60)));
    }

    #[test]
    fn each_traced_run_is_compared_with_the_untraced_runs_around_it() {
        let results = vec![
            (Mode::Untraced, run(100.0)),
            (Mode::NonMatching, run(90.0)),
            (Mode::Untraced, run(80.0)),
            (Mode::Matching, run(40.0)),
        ];
        assert_eq!(
            paired_ratios(&results, Mode::NonMatching, Measure::Throughput),
            vec![1.0]
        );
        // No untraced run after the last one: the one before is the baseline.
        assert_eq!(
            paired_ratios(&results, Mode::Matching, Measure::PerCpu),
            vec![0.5]
        );
        let r = Ratio::of(&results, Mode::NonMatching, Measure::Throughput);
        assert_eq!((r.median, r.pairs, r.ci), (1.0, 1, None));
        assert_eq!(r.to_string(), "1.000");
    }

    #[test]
    fn a_flood_of_several_flows_is_compared_with_the_same_flood_untraced() {
        let results = vec![
            (Mode::Untraced, run(100.0)),
            (Mode::UntracedFlows, run(60.0)),
            (Mode::MatchingFlows, run(54.0)),
            (Mode::UntracedFlows, run(60.0)),
            (Mode::Untraced, run(100.0)),
        ];
        assert_eq!(
            paired_ratios(&results, Mode::MatchingFlows, Measure::Throughput),
            vec![0.9]
        );
    }

    #[test]
    fn the_interval_is_shown_with_enough_pairs() {
        let mut results = Vec::new();
        for traced in [0.90, 0.91, 0.92, 0.93, 0.94, 0.95] {
            results.push((Mode::Untraced, run(100.0)));
            results.push((Mode::NonMatching, run(traced * 100.0)));
        }
        results.push((Mode::Untraced, run(100.0)));
        let r = Ratio::of(&results, Mode::NonMatching, Measure::Throughput);
        assert_eq!(r.to_string(), "0.925 (95 % CI 0.90–0.95 of 6 pairs)");
    }
}
