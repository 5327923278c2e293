//! `pathtrace daemon`: the same probes, left running, exporting drops to Prometheus and as JSON
//! lines. SIGHUP re-reads the config and swaps the kernel filter in place; SIGTERM stops and
//! flushes; links are owned by file descriptors, so even SIGKILL leaves no probe attached.

pub mod config;
mod http;
pub mod metrics;
pub mod sink;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use self::{
    config::DaemonConfig,
    metrics::{DropLabels, Metrics},
    sink::Sink,
};
use crate::{
    cli::FilterArgs,
    correlate::flow::Direction,
    output::{Output, Ready, Stats},
    report::Report,
    trace::{Control, TraceConfig, TraceError},
    verdict::Outcome,
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot listen on {addr}: {source} (is another pathtrace or exporter using the port?)")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the JSON log {path}: {source}")]
    Sink {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Trace(#[from] TraceError),
}

/// Why `/healthz` answers 503.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    #[error("probes are not attached")]
    Detached,
    #[error("the ring buffer reader stalled {0:.0?} ago")]
    Stalled(Duration),
    #[error("the reader has not started")]
    NotStarted,
}

/// A reader that has not ticked for this long is stalled.
const STALL: Duration = Duration::from_secs(10);

/// What the HTTP endpoint and the trace loop share.
pub struct State {
    pub metrics: Metrics,
    attached: bool,
    last_tick: Option<Instant>,
}

impl State {
    /// `/healthz`: fails when probes are not attached or the reader stopped ticking.
    pub fn health(&self) -> Result<(), Unhealthy> {
        if !self.attached {
            return Err(Unhealthy::Detached);
        }
        match self.last_tick {
            Some(t) if t.elapsed() < STALL => Ok(()),
            Some(t) => Err(Unhealthy::Stalled(t.elapsed())),
            None => Err(Unhealthy::NotStarted),
        }
    }
}

/// The trace session's output in daemon mode: counters and drop events.
struct DaemonOutput {
    state: Arc<Mutex<State>>,
    sink: Option<Sink>,
    /// The JSON log is failing: said once per streak, retried at every event.
    sink_failing: bool,
}

impl DaemonOutput {
    /// A drop event the JSON log could not take: counted and said, never the daemon's end
    /// (the counters go on; the log takes lines again once it can).
    fn sink_failed(&mut self, e: &std::io::Error) {
        if let Ok(mut s) = self.state.lock() {
            s.metrics.json_log_errors += 1;
        }
        if !self.sink_failing {
            tracing::error!(
                "the JSON log cannot be written ({e}): drops are still counted (pathtrace_json_log_errors_total), and the log is retried at every drop"
            );
            self.sink_failing = true;
        }
    }
}

fn labels(report: &Report) -> DropLabels {
    let last = report.last_hop();
    let nf_hook = report.hops.iter().rev().find_map(|h| {
        h.netfilter
            .as_ref()
            .filter(|n| n.verdict == "drop")
            .map(|n| n.hook)
    });
    let location = report
        .verdict
        .drop
        .as_ref()
        .and_then(|d| d.location.as_ref().map(|s| s.name.clone()));
    DropLabels {
        reason: report
            .verdict
            .drop
            .as_ref()
            .map_or_else(String::new, |d| d.reason.clone()),
        hook: nf_hook.map(str::to_owned).or(location).unwrap_or_default(),
        ifname: last.map_or_else(String::new, |h| h.ifname.clone()),
        netns: last.map_or_else(String::new, |h| h.netns_name.clone()),
        container: report
            .target
            .as_ref()
            .map(|t| t.container.name.clone())
            .or_else(|| last.and_then(|h| h.container.as_ref().map(|c| c.name.clone())))
            .unwrap_or_default(),
        code: report
            .diagnosis
            .as_ref()
            .map_or_else(String::new, |d| d.code.to_owned()),
        direction: report.flow.as_ref().map_or_else(String::new, |f| {
            match f.direction {
                Direction::Original => "original",
                Direction::Reply => "reply",
                Direction::Related => "related",
            }
            .to_owned()
        }),
    }
}

impl Output for DaemonOutput {
    fn ready(&mut self, ready: &Ready) -> std::io::Result<()> {
        if let Ok(mut s) = self.state.lock() {
            s.attached = true;
            s.last_tick = Some(Instant::now());
            s.metrics.backend = ready.backend.clone();
            s.metrics.hooks = ready.hook_set.to_string();
        }
        tracing::info!(backend = %ready.backend, hooks = %ready.hook_set, reason = %ready.backend_reason, filter = %ready.filter, docker = %ready.docker, "pathtrace daemon ready");
        Ok(())
    }

    fn report(&mut self, report: &Report) -> std::io::Result<()> {
        if report.verdict.outcome != Outcome::Dropped {
            return Ok(());
        }
        if let Ok(mut s) = self.state.lock() {
            s.metrics.count_drop(labels(report));
        }
        if let Some(sink) = &mut self.sink {
            let line =
                serde_json::to_string(&report.verdict_json()).map_err(std::io::Error::other)?;
            match sink.write_line(&line) {
                Ok(()) if self.sink_failing => {
                    tracing::info!("the JSON log is written again");
                    self.sink_failing = false;
                }
                Ok(()) => {}
                Err(e) => self.sink_failed(&e),
            }
        }
        Ok(())
    }

    /// A flood's drops are counted to the packet, with the labels of the full packet they
    /// repeat; the JSON log gets the summary line.
    fn summary(&mut self, summary: &crate::flood::Summary) -> std::io::Result<()> {
        let Some(like) = summary
            .like
            .as_deref()
            .filter(|r| r.verdict.outcome == Outcome::Dropped)
        else {
            return Ok(());
        };
        if let Ok(mut s) = self.state.lock() {
            s.metrics.count_drops(labels(like), summary.packets);
        }
        if let Some(sink) = &mut self.sink {
            let line = serde_json::to_string(&summary.json()).map_err(std::io::Error::other)?;
            match sink.write_line(&line) {
                Ok(()) => {}
                Err(e) => self.sink_failed(&e),
            }
        }
        Ok(())
    }

    fn wants_kernel_drops(&self) -> bool {
        true
    }

    fn kernel_drops(&mut self, drops: &[crate::output::KernelDrop]) -> std::io::Result<()> {
        if let Ok(mut s) = self.state.lock() {
            s.metrics.kernel_drops = drops.to_vec();
        }
        Ok(())
    }

    fn tick(&mut self, stats: &Stats, live_packets: usize) -> std::io::Result<()> {
        if let Ok(mut s) = self.state.lock() {
            s.last_tick = Some(Instant::now());
            let m = &mut s.metrics;
            m.events = stats.events;
            m.lost = stats.kernel.lost;
            m.summarised = stats.kernel.summarised;
            m.uncounted = stats.kernel.uncounted;
            m.kernel_drops_uncounted = stats.kernel.drops_uncounted;
            m.decode_errors = stats.decode_errors;
            m.packets = stats.packets;
            m.flows = stats.flows;
            m.live_packets = live_packets as u64;
        }
        Ok(())
    }

    fn stats(&mut self, stats: &Stats) -> std::io::Result<()> {
        if let Some(sink) = &mut self.sink
            && let Err(e) = sink.flush()
        {
            tracing::error!("flushing the JSON log at exit: {e}");
        }
        if let Ok(mut s) = self.state.lock() {
            s.attached = false;
        }
        tracing::info!(
            events = stats.events,
            lost = stats.lost,
            dropped = stats.dropped,
            "pathtrace daemon stopped"
        );
        Ok(())
    }
}

/// What SIGHUP re-reads: the file, with the filter flags given at start on top.
pub struct Reload {
    pub path: PathBuf,
    pub flags: FilterArgs,
}

/// Runs until SIGINT/SIGTERM. `reload` says what SIGHUP re-reads.
pub async fn run(cfg: DaemonConfig, reload: Option<Reload>) -> Result<(), DaemonError> {
    // Flags may pair what the file did not: checked before anything is bound.
    let trace_cfg = trace_config(&cfg)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let sink =
        match &cfg.json.path {
            Some(p) => Some(Sink::open(p, cfg.json.max_bytes, cfg.json.keep).map_err(
                |source| DaemonError::Sink {
                    path: p.display().to_string(),
                    source,
                },
            )?),
            None => None,
        };
    let state = Arc::new(Mutex::new(State {
        metrics: Metrics::new(cfg.limits.top_n),
        attached: false,
        last_tick: None,
    }));
    let server = tokio::spawn(http::serve(listener, state.clone()));
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let reloader = reload.map(|r| tokio::spawn(reload_on_hangup(r, state.clone(), control_tx)));
    let mut out = DaemonOutput {
        state,
        sink,
        sink_failing: false,
    };
    let result = crate::trace::run_controlled(trace_cfg, &mut out, Some(control_rx)).await;
    server.abort();
    if let Some(r) = reloader {
        r.abort();
    }
    result.map(drop).map_err(DaemonError::from)
}

/// The trace the daemon runs: its filter, probes and limits.
fn trace_config(cfg: &DaemonConfig) -> Result<TraceConfig, DaemonError> {
    let (filter, filter_text) = cfg.filter("flags")?;
    let (backend, hooks) = cfg.probes("flags")?;
    Ok(TraceConfig {
        filter,
        filter_text,
        backend,
        hooks: Some(hooks),
        all_drops: cfg.filter.all_drops,
        max_packets: cfg.limits.max_packets,
        max_flows: cfg.limits.max_flows,
        sizes: crate::probes::loader::ProbeSizes {
            ring_bytes: cfg.limits.ring_bytes,
            tracked_skbs: cfg.limits.tracked_skbs,
        },
        ..TraceConfig::default()
    })
}

/// On SIGHUP, re-reads the file and swaps in its filter, the flags' fields kept on top; a
/// file that does not parse leaves the running filter as it is.
async fn reload_on_hangup(
    Reload { path, flags }: Reload,
    state: Arc<Mutex<State>>,
    control: mpsc::UnboundedSender<Control>,
) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        let shown = path.display().to_string();
        let loaded = DaemonConfig::load(&path).and_then(|mut c| {
            c.apply_filter_flags(&flags);
            c.filter(&shown)
        });
        match loaded {
            Ok((filter, text)) => {
                tracing::info!(filter = %text, "SIGHUP: applying the new filter");
                if let Ok(mut s) = state.lock() {
                    s.metrics.filter_reloads += 1;
                }
                let _ = control.send(Control::SetFilter(filter));
            }
            Err(e) => tracing::error!("SIGHUP: keeping the current filter: {e}"),
        }
    }
}
