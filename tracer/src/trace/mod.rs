//! A trace session: attach the probes, read the ring buffer, correlate, decide, report.
//!
//! kernel → [`Hop`] → [`PacketTracker`] → [`FlowTable`] → [`Report`] → [`Output`]; each stage
//! only feeds the next.

use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};
use tracer_common::{
    Filter,
    config::{MAX_OR_DPORTS, filter_field, have},
};

mod published;

use published::DropsFilter;

use crate::{
    correlate::{FlowTable, Packet, PacketTracker, transmits},
    diagnose::judge,
    events::Hop,
    output::{Output, Ready, Stats},
    probes::{
        HookSet, ProbeError, Probes,
        loader::{BackendChoice, ProbeSizes},
    },
    report::Report,
    resolve::{
        Resolver, SharedIndex,
        docker::{self, DockerStatus},
    },
    verdict::Outcome,
};

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("ring buffer: {0}")]
    Io(#[from] std::io::Error),
    #[error("--container {name}: {why}")]
    Container { name: String, why: String },
}

/// What to trace and when to stop.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    pub filter: Filter,
    /// The filter as the user wrote it, for the header.
    pub filter_text: String,
    pub duration: Option<Duration>,
    /// Stop after this many packet verdicts.
    pub count: Option<u64>,
    /// A packet with no new hop for this long is finished without a free event.
    pub idle: Duration,
    pub sizes: ProbeSizes,
    pub backend: BackendChoice,
    /// `None`: the backend's default (`HookSet::trace_default`).
    pub hooks: Option<HookSet>,
    pub max_packets: usize,
    pub max_flows: usize,
    /// `--container`: resolved through Docker into the kernel filter before attaching.
    pub container: Option<String>,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            filter: Filter::any(),
            filter_text: "all IPv4 packets".into(),
            duration: None,
            count: None,
            idle: Duration::from_millis(500),
            sizes: ProbeSizes::default(),
            backend: BackendChoice::Auto,
            hooks: None,
            max_packets: 65536,
            max_flows: 65536,
            container: None,
        }
    }
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The correlation and reporting half of a session, independent of the kernel so it can be
/// driven from recorded events (tests, benchmarks).
pub struct Pipeline {
    packets: PacketTracker,
    flows: FlowTable,
    resolver: Resolver,
    drop_reasons: crate::probes::DropReasons,
    /// Without the path (`--hooks drops`) the diagnosis rules would reason from hops that were
    /// never traced: they do not run.
    hooks: HookSet,
    finished: Vec<Packet>,
    pub stats: Stats,
}

impl Pipeline {
    /// `hooks`: the set attached, which says what the hops can prove.
    pub fn new(
        cfg: &TraceConfig,
        hooks: HookSet,
        drop_reasons: crate::probes::DropReasons,
        containers: SharedIndex,
    ) -> Self {
        Self {
            packets: PacketTracker::new(cfg.idle.as_nanos() as u64, cfg.max_packets),
            flows: FlowTable::new(cfg.max_flows),
            resolver: Resolver::new().with_containers(containers),
            drop_reasons,
            hooks,
            finished: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Packets being correlated now.
    pub fn live_packets(&self) -> usize {
        self.packets.live()
    }

    /// Decodes one ring buffer record.
    pub fn push_record(&mut self, bytes: &[u8]) {
        self.stats.events += 1;
        match Hop::decode(bytes) {
            Ok(hop) => self.packets.push(hop, &mut self.finished),
            Err(e) => {
                self.stats.decode_errors += 1;
                tracing::warn!("{e}");
            }
        }
    }

    /// Finishes idle packets (`now_ns`), or all of them (`None`), and reports every finished
    /// packet. Returns how many verdicts were reported.
    pub fn flush(&mut self, now_ns: Option<u64>, out: &mut dyn Output) -> std::io::Result<u64> {
        match now_ns {
            Some(now) => self.packets.expire(now, &mut self.finished),
            None => self.packets.drain(&mut self.finished),
        }
        let mut n = 0;
        for mut packet in std::mem::take(&mut self.finished) {
            if self.hooks.infers_transmits() {
                transmits::infer(&mut packet, &mut self.resolver);
            }
            let flow = self.flows.observe(&packet);
            let judged = judge(
                packet,
                flow,
                &mut self.resolver,
                &self.drop_reasons,
                self.hooks,
            );
            let report = Report::new(judged, &mut self.resolver, &self.drop_reasons);
            self.stats.packets += 1;
            match report.verdict.outcome {
                Outcome::Delivered => self.stats.delivered += 1,
                Outcome::Dropped => self.stats.dropped += 1,
                Outcome::Unknown => self.stats.unknown += 1,
            }
            out.report(&report)?;
            n += 1;
        }
        self.stats.flows = self.flows.len() as u64;
        Ok(n)
    }
}

/// Changes applied to a running session.
#[derive(Clone, Copy, Debug)]
pub enum Control {
    /// Swap the kernel filter without detaching anything.
    SetFilter(Filter),
}

/// Runs a trace until the duration, count, or a signal ends it; returns the totals.
pub async fn run(cfg: TraceConfig, out: &mut dyn Output) -> Result<Stats, TraceError> {
    run_controlled(cfg, out, None).await
}

/// [`run`], with changes arriving on `control` while it runs.
pub async fn run_controlled(
    mut cfg: TraceConfig,
    out: &mut dyn Output,
    mut control: Option<tokio::sync::mpsc::UnboundedReceiver<Control>>,
) -> Result<Stats, TraceError> {
    let started = Instant::now();
    // Containers first: --container becomes part of the kernel filter, and the first packets
    // should already resolve to names.
    let containers = SharedIndex::default();
    let socket = docker::socket_path();
    let docker_status = docker::initial(&containers, &socket).await;
    if let Some(name) = cfg.container.clone() {
        container_filter(&mut cfg, &name, &containers, &docker_status)?;
    }
    let watcher = tokio::spawn(docker::watch(containers.clone(), socket));
    let mut probes = Probes::attach(cfg.filter, cfg.sizes, cfg.backend, cfg.hooks)?;
    let ring = probes.take_events()?;
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
    let mut pipeline = Pipeline::new(&cfg, probes.hooks, probes.drop_reasons.clone(), containers);
    pipeline.resolver.prefetch_own_ruleset();
    let mut drops_filter = (probes.hooks == HookSet::Drops)
        .then(|| DropsFilter::new(cfg.filter, probes.offsets.have & have::CONNTRACK != 0));
    if let Some(d) = drops_filter.as_mut() {
        if let Some(f) = d.refresh(&mut pipeline.resolver) {
            probes.set_filter(f)?;
        }
        if let Some(target) = d.target() {
            cfg.filter_text = format!("{}, or past Docker's DNAT to {target}", cfg.filter_text);
        }
    }

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    out.ready(&Ready {
        backend: probes.backend.to_string(),
        backend_reason: probes.backend_reason.clone(),
        hook_set: probes.hooks,
        hooks: probes.attached.clone(),
        attachments: probes.attachments.clone(),
        skipped_hooks: probes
            .skipped
            .iter()
            .map(|(t, why)| format!("{t}: {why}"))
            .collect(),
        packet_reads: probes.packet_reads.clone(),
        filter: cfg.filter_text.clone(),
        pid: std::process::id(),
        docker: docker_status.to_string(),
    })?;

    let deadline = cfg.duration.map(|d| tokio::time::Instant::now() + d);
    let sleep_until = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep_until);
    // Timers sleep while nothing happens: an idle daemon wakes once a second (TICK_IDLE),
    // not 60 times (docs/performance.md, "An idle daemon").
    let tick = tokio::time::sleep(TICK_BUSY);
    tokio::pin!(tick);
    // Polling first: the first poll finds the ring empty and puts the reader to sleep.
    let poll = tokio::time::sleep(DRAIN_EVERY);
    tokio::pin!(poll);
    let mut reader = Reader::Polling;
    let mut counters_read = Instant::now();
    let mut verdicts = 0u64;
    let reached = |n: u64| cfg.count.is_some_and(|c| n >= c);

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                match reader {
                    Reader::Asleep => {
                        // An event woke us: poll from now on, and let more arrive before the
                        // first read, so a trickle costs one wakeup per DRAIN_EVERY, not one
                        // per event.
                        guard.clear_ready();
                        probes.set_reader_asleep(false)?;
                        reader = Reader::Polling;
                        poll.as_mut().reset(tokio::time::Instant::now() + DRAIN_EVERY);
                    }
                    Reader::Polling => {
                        // Woken while polling: the backlog crossed WAKEUP_BYTES. Read now, in
                        // bounded batches so the other tasks (a daemon's HTTP endpoint, the
                        // tick) still run between them.
                        if !drain_ring(guard.get_inner_mut(), &mut pipeline, BATCH) {
                            guard.clear_ready();
                        }
                        hurry(tick.as_mut());
                    }
                }
                tokio::task::yield_now().await;
            }
            _ = &mut poll, if reader == Reader::Polling => {
                if drain_all(ring.get_mut(), &mut pipeline).await == 0 {
                    // Nothing came for a whole interval: sleep until an event wakes us. An
                    // event committed before the kernel saw the flag woke nobody: read again.
                    probes.set_reader_asleep(true)?;
                    if drain_all(ring.get_mut(), &mut pipeline).await > 0 {
                        probes.set_reader_asleep(false)?;
                    } else {
                        reader = Reader::Asleep;
                    }
                }
                if reader == Reader::Polling {
                    poll.as_mut().reset(tokio::time::Instant::now() + DRAIN_EVERY);
                }
                hurry(tick.as_mut());
            }
            _ = &mut tick => {
                if reader == Reader::Asleep {
                    // A safety net: an event whose program read the flag just before the
                    // reader went to sleep woke nobody, and waits at most this long.
                    drain_all(ring.get_mut(), &mut pipeline).await;
                }
                verdicts += pipeline.flush(Some(monotonic_ns()), out)?;
                if counters_read.elapsed() >= TICK_IDLE {
                    // Kernel counters once a second: three map lookups.
                    counters_read = Instant::now();
                    if let Ok(c) = probes.counters() {
                        pipeline.stats.kernel = c;
                        pipeline.stats.lost = c.lost;
                    }
                    // Containers come and go: a published port's target with them.
                    if let Some(d) = drops_filter.as_mut()
                        && let Some(f) = d.refresh(&mut pipeline.resolver)
                    {
                        probes.set_filter(f)?;
                    }
                }
                let live = pipeline.live_packets();
                out.tick(&pipeline.stats, live)?;
                // Packets in flight end by timeout, checked at TICK_BUSY; with none and the
                // reader asleep, nothing changes until an event wakes it.
                let period = if live > 0 || reader == Reader::Polling {
                    TICK_BUSY
                } else {
                    TICK_IDLE
                };
                // On a fixed schedule, not `period` after this tick's work: under a flood the
                // flush above takes a while, and counting from its end stretched the period,
                // each flush with it, and lost events (docs/performance.md).
                let next = (tick.deadline() + period).max(tokio::time::Instant::now());
                tick.as_mut().reset(next);
            }
            Some(change) = async {
                match control.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match change {
                    Control::SetFilter(f) => match drops_filter.as_mut() {
                        Some(d) => probes.set_filter(d.replace(f, &mut pipeline.resolver))?,
                        None => probes.set_filter(f)?,
                    },
                }
            }
            _ = &mut sleep_until => break,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        if reached(verdicts) {
            break;
        }
    }
    // Whatever is still buffered belongs to this trace.
    while drain_ring(ring.get_mut(), &mut pipeline, BATCH) {}
    if !reached(verdicts) {
        pipeline.flush(None, out)?;
    }
    let counters = probes.counters()?;
    pipeline.stats.kernel = counters;
    pipeline.stats.lost = counters.lost;
    pipeline.stats.duration_ms = started.elapsed().as_millis() as u64;
    if counters.lost > 0 {
        tracing::warn!(
            lost = counters.lost,
            "the kernel lost events: the ring buffer was full"
        );
    }
    watcher.abort();
    out.stats(&pipeline.stats)?;
    Ok(pipeline.stats.clone())
}

/// Narrows the kernel filter to one container: its address, or a port published to it.
fn container_filter(
    cfg: &mut TraceConfig,
    name: &str,
    containers: &SharedIndex,
    status: &DockerStatus,
) -> Result<(), TraceError> {
    let err = |why: String| TraceError::Container {
        name: name.to_owned(),
        why,
    };
    if let DockerStatus::Unavailable(why) = status {
        return Err(err(format!("Docker is {why}")));
    }
    let index = containers
        .read()
        .map_err(|_| err("container index poisoned".into()))?;
    let info = index
        .find(name)
        .ok_or_else(|| err("no running container by that name or id".into()))?;
    let addr = *info
        .addresses
        .first()
        .ok_or_else(|| err("the container has no IPv4 address (host network?)".into()))?;
    // What was asked besides the container, said after it.
    let also = if cfg.filter.is_any() {
        String::new()
    } else {
        format!(" {}", cfg.filter_text)
    };
    let f = &mut cfg.filter;
    f.host = addr.octets();
    f.fields |= filter_field::HOST;
    let ports = index.ports_of(&info.container);
    for p in ports
        .iter()
        .filter(|p| f.fields & filter_field::PROTO == 0 || p.proto.number() == f.proto)
        .take(MAX_OR_DPORTS)
    {
        f.or_dports[f.n_or_dports as usize] = p.host_port;
        f.n_or_dports += 1;
    }
    let published: Vec<String> = ports.iter().map(|p| p.host_port.to_string()).collect();
    cfg.filter_text = format!(
        "container {} ({addr}{}){}",
        info.container.name,
        if published.is_empty() {
            String::new()
        } else {
            format!(", published {}", published.join(","))
        },
        also
    );
    Ok(())
}

/// How often a polling reader drains the ring: the latency a trace adds to each event, and the
/// most wakeups per second a steady trickle costs. A flood wakes it sooner (`WAKEUP_BYTES`);
/// an interval without events puts it to sleep until the next one.
pub const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// The tick while packets are in flight: they end by timeout (`--idle`), checked this often.
const TICK_BUSY: Duration = Duration::from_millis(100);
/// The tick with nothing in flight: the kernel's counters and the daemon's gauges and health
/// (its stall limit is 10 s) need no more.
const TICK_IDLE: Duration = Duration::from_secs(1);

/// Brings an idle tick forward after events were read: packets they finished are reported
/// within TICK_BUSY, not at the next idle tick.
fn hurry(tick: std::pin::Pin<&mut tokio::time::Sleep>) {
    let soon = tokio::time::Instant::now() + TICK_BUSY;
    if tick.deadline() > soon {
        tick.reset(soon);
    }
}

/// How the ring reader waits for events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reader {
    /// Told the kernel so (`Probes::set_reader_asleep`): the next event wakes it.
    Asleep,
    /// Drains every `DRAIN_EVERY` while events keep coming; the kernel wakes it early only as
    /// the backlog crosses `WAKEUP_BYTES`.
    Polling,
}

/// Records read per wakeup before yielding.
const BATCH: usize = 4096;

/// Reads everything waiting, yielding between batches so other tasks run; how many records.
async fn drain_all(ring: &mut RingBuf<MapData>, pipeline: &mut Pipeline) -> u64 {
    let before = pipeline.stats.events;
    while drain_ring(ring, pipeline, BATCH) {
        tokio::task::yield_now().await;
    }
    pipeline.stats.events - before
}

/// Reads up to `limit` records; `true` when more may be waiting.
fn drain_ring(ring: &mut RingBuf<MapData>, pipeline: &mut Pipeline, limit: usize) -> bool {
    for _ in 0..limit {
        match ring.next() {
            Some(item) => pipeline.push_record(&item),
            None => return false,
        }
    }
    true
}
