//! A trace session: connect to Docker, build the filter, attach the probes, say ready, read
//! the ring buffer until told to stop, then report what is left and the totals.
//!
//! kernel → hops → packets and flows → judged → [`crate::report::Report`] → [`Output`]
//! ([`Pipeline`]); each stage only feeds the next.

use std::time::{Duration, Instant};

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    task::JoinHandle,
};
use tracer_common::{
    Filter,
    config::{filter_field, have},
};

mod pipeline;
mod published;
mod reader;

pub use pipeline::Pipeline;
use published::DropsFilter;
pub use reader::DRAIN_EVERY;
use reader::{BATCH, Ring, Session, drain_ring};

use crate::{
    host::LinkTable,
    output::{Output, Ready, Stats},
    probes::{
        HookSet, ProbeError, Probes,
        loader::{BackendChoice, ProbeSizes},
    },
    resolve::{
        SharedIndex,
        docker::{self, DockerStatus},
    },
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
    /// `--all-drops`: housekeeping frees are drops too.
    pub all_drops: bool,
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
            all_drops: false,
        }
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
    control: Option<tokio::sync::mpsc::UnboundedReceiver<Control>>,
) -> Result<Stats, TraceError> {
    let started = Instant::now();
    let docker = DockerSession::connect(&mut cfg).await?;
    let (mut session, mut ring) = attach(&mut cfg, docker.index.clone())?;
    // Signals are caught before anyone is told to start traffic (and so to stop it).
    let until = stop(cfg.duration)?;
    out.ready(&ready(&session.probes, &cfg, &docker.status))?;
    let verdicts = session
        .read(&mut ring, out, control, cfg.count, until)
        .await?;
    if let Some(w) = &docker.watcher {
        w.abort();
    }
    finish(
        session,
        &mut ring,
        out,
        started,
        cfg.count.is_some_and(|c| verdicts >= c),
    )
}

/// Docker, asked first: `--container` becomes part of the kernel filter, and the first packets
/// should already resolve to names.
struct DockerSession {
    index: SharedIndex,
    status: DockerStatus,
    /// Keeps the index current from the events stream (none when Docker cannot be named).
    watcher: Option<JoinHandle<()>>,
}

impl DockerSession {
    async fn connect(cfg: &mut TraceConfig) -> Result<Self, TraceError> {
        let index = SharedIndex::default();
        let (status, socket) = match docker::socket_path() {
            Ok(socket) => (docker::initial(&index, &socket).await, Some(socket)),
            Err(e) => (DockerStatus::Unavailable(e.to_string()), None),
        };
        if let Some(name) = cfg.container.clone() {
            container_filter(cfg, &name, &index, &status)?;
        }
        let watcher = socket.map(|s| tokio::spawn(docker::watch(index.clone(), s)));
        Ok(Self {
            index,
            status,
            watcher,
        })
    }
}

/// Attaches the probes with the filter, registers their ring, and widens a `--hooks drops`
/// filter on a published port to its DNAT target.
fn attach(cfg: &mut TraceConfig, containers: SharedIndex) -> Result<(Session, Ring), TraceError> {
    let mut probes = Probes::attach(cfg.filter, cfg.sizes, cfg.backend, cfg.hooks)?;
    let ring = open_ring(&mut probes)?;
    if !probes.floods {
        cfg.filter.flood_budget = 0;
    }
    let mut pipeline = Pipeline::new(cfg, probes.hooks, probes.drop_reasons.clone(), containers);
    pipeline.resolver.prefetch_own_ruleset();
    // Taken whether or not `--stack` is on now: a daemon's reload may turn it on.
    pipeline.resolver.read_stacks_from(probes.take_stacks()?);
    let mut drops_filter = (probes.hooks == HookSet::Drops)
        .then(|| DropsFilter::new(cfg.filter, probes.offsets.have & have::CONNTRACK != 0));
    let mut filter = cfg.filter;
    if let Some(d) = drops_filter.as_mut() {
        if let Some(f) = d.refresh(&mut pipeline.resolver) {
            probes.set_filter(f)?;
            filter = f;
        }
        if let Some(target) = d.target() {
            cfg.filter_text = format!("{}, or past Docker's DNAT to {target}", cfg.filter_text);
        }
    }
    Ok((
        Session::new(probes, pipeline, drops_filter, filter, cfg.sizes),
        ring,
    ))
}

/// The probes' ring buffer, registered with the runtime.
fn open_ring(probes: &mut Probes) -> Result<Ring, TraceError> {
    let ring = probes.take_events()?;
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd holds it.
    Ok(unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?)
}

/// The `ready` line: what is attached, how, and what is traced.
fn ready(probes: &Probes, cfg: &TraceConfig, docker: &DockerStatus) -> Ready {
    Ready {
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
        floods: match (probes.floods, cfg.filter.flood_budget) {
            (true, 0) => "every packet traced (--every-packet)".to_owned(),
            (true, n) => format!(
                "summarised: {n} full packets per flow a second, the rest counted in the kernel"
            ),
            (false, _) => format!(
                "every packet traced: the {} backend's programs do not summarise floods (the tracepoint backend's do)",
                probes.backend
            ),
        },
        filter: cfg.filter_text.clone(),
        pid: std::process::id(),
        docker: docker.to_string(),
    }
}

/// Resolves when the session should stop: `--duration` ran out, SIGINT or SIGTERM.
fn stop(duration: Option<Duration>) -> Result<impl Future<Output = ()>, TraceError> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    Ok(async move {
        let deadline = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = deadline => {}
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    })
}

/// Reads what is still buffered, reports the packets in flight (unless `--count` was
/// reached), and the totals.
fn finish(
    mut session: Session,
    ring: &mut Ring,
    out: &mut dyn Output,
    started: Instant,
    count_reached: bool,
) -> Result<Stats, TraceError> {
    while drain_ring(ring.get_mut(), &mut session.pipeline, BATCH) {}
    if !count_reached {
        session.pipeline.flush(None, out)?;
    }
    session.read_summaries(out, true)?;
    let counters = session.probes.counters()?;
    let stats = &mut session.pipeline.stats;
    stats.kernel = counters;
    stats.lost = counters.lost;
    stats.duration_ms = started.elapsed().as_millis() as u64;
    if counters.lost > 0 {
        tracing::warn!(
            lost = counters.lost,
            "the kernel lost events: the ring buffer was full"
        );
    }
    out.stats(stats)?;
    Ok(stats.clone())
}

/// Narrows the kernel filter to one container: its addresses, or the host addresses and
/// ports published to it (a port published on every address: on each of this namespace's).
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
        return Err(err(format!(
            "the container is found through Docker, which cannot be asked: {why}"
        )));
    }
    let index = containers
        .read()
        .map_err(|_| err("the container index is poisoned".into()))?;
    let info = index
        .find(name)
        .ok_or_else(|| err("Docker runs no container by that name or id".into()))?;
    if info.addresses.is_empty() {
        return Err(err(
            "the container has no IPv4 address (host network, or none attached)".into(),
        ));
    }
    let full = |e: tracer_common::config::TooMany| {
        err(format!(
            "the kernel filter holds at most {} {}: trace one port with --dport instead",
            e.limit, e.what
        ))
    };
    // What was asked besides the container, said after it.
    let also = if cfg.filter.is_any() {
        String::new()
    } else {
        format!(" {}", cfg.filter_text)
    };
    let f = &mut cfg.filter;
    for addr in &info.addresses {
        f.add_host(addr.octets()).map_err(full)?;
    }
    let ports: Vec<_> = index
        .ports_of(&info.container)
        .into_iter()
        .filter(|p| f.fields & filter_field::PROTO == 0 || p.proto.number() == f.proto)
        .collect();
    for p in &ports {
        let on = p.host_ip.map_or([0; 4], |ip| ip.octets());
        f.add_dest(on, p.host_port, p.proto.number())
            .map_err(full)?;
    }
    if ports.iter().any(|p| p.host_ip.is_none()) {
        let here = LinkTable::dump_here()
            .map_err(|e| err(format!("reading this namespace's addresses: {e}")))?;
        for (_, addr, _) in &here.addrs {
            f.add_local(addr.octets()).map_err(full)?;
        }
    }
    let addrs: Vec<String> = info.addresses.iter().map(ToString::to_string).collect();
    let published: Vec<String> = ports.iter().map(|p| p.host_side()).collect();
    cfg.filter_text = format!(
        "container {} ({}{}){}",
        info.container.name,
        addrs.join(", "),
        if published.is_empty() {
            String::new()
        } else {
            format!("; published {}", published.join(", "))
        },
        also
    );
    Ok(())
}
