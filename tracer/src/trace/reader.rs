//! Reading the ring buffer for a running session: a reader that polls while events keep
//! coming and sleeps until the kernel wakes it when they stop, a tick that finishes idle
//! packets and reads the kernel's counters, and the session's controls.

use std::{
    pin::Pin,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::{AsyncFd, AsyncFdReadyMutGuard},
    time::Sleep,
};

use super::{Control, TraceError, pipeline::Pipeline, published::DropsFilter};
use tracer_common::{Filter, config::have};

use crate::{
    clock::monotonic_ns,
    output::Output,
    probes::{
        Probes,
        loader::{BackendChoice, ProbeSizes},
    },
};

/// The kernel's ring, registered with the runtime.
pub(super) type Ring = AsyncFd<RingBuf<MapData>>;

/// What a running session reads from and writes to.
pub(super) struct Session {
    pub probes: Probes,
    pub pipeline: Pipeline,
    /// `--hooks drops` on a published port: the filter widened to its DNAT target.
    pub drops_filter: Option<DropsFilter>,
    /// The filter the kernel has now, and the ring size: what a re-attach loads again.
    filter: Filter,
    sizes: ProbeSizes,
    reader: Reader,
    counters_read: Instant,
    /// When `REPLIES` was last swept, and how many flows' replies it followed then.
    replies_swept: (Instant, usize),
    /// Set once a second: look for module BTF that appeared.
    check_modules: bool,
    /// Which of [`MODULES`] were loaded when the probes were attached.
    loaded_at_attach: [bool; MODULES.len()],
}

/// Drivers that may be modules, loaded only with their first device: their types (module
/// BTF) and functions (the hooks named with their prefix) appear then. A row: the offsets'
/// `have` bit, the module, its hooks' prefix, the detail they give.
const MODULES: [(u32, &str, &str, &str); 2] = [
    (have::BRIDGE_PORT, "bridge", "br_", "bridge egress port"),
    (have::VETH_PEER, "veth", "veth_", "veth peer"),
];

impl Session {
    pub fn new(
        probes: Probes,
        pipeline: Pipeline,
        drops_filter: Option<DropsFilter>,
        filter: Filter,
        sizes: ProbeSizes,
    ) -> Self {
        Self {
            probes,
            pipeline,
            drops_filter,
            filter,
            sizes,
            // Polling first: the first poll finds the ring empty and puts the reader to sleep.
            reader: Reader::Polling,
            counters_read: Instant::now(),
            replies_swept: (Instant::now(), 0),
            check_modules: false,
            loaded_at_attach: loaded_modules(),
        }
    }

    /// Loads `f` into the kernel, remembered for a re-attach.
    pub fn set_filter(&mut self, f: Filter) -> Result<(), TraceError> {
        self.probes.set_filter(f)?;
        self.filter = f;
        Ok(())
    }

    /// Modules loaded since the probes were attached without their offsets or their hooks (a
    /// daemon started before the first bridge or veth existed).
    fn modules_appeared(&self) -> Vec<&'static str> {
        let now = loaded_modules();
        MODULES
            .iter()
            .zip(now.into_iter().zip(self.loaded_at_attach))
            .filter(|&(&(bit, _, prefix, _), (loaded, was))| {
                let lacking = self.probes.offsets.have & bit == 0
                    || self
                        .probes
                        .skipped
                        .iter()
                        .any(|(hook, _)| hook.starts_with(prefix));
                lacking && loaded && !was
            })
            .map(|(&(_, _, _, detail), _)| detail)
            .collect()
    }

    /// Attaches the probes again, now with the detail the new module BTF gives: same
    /// backend, hook set and filter. The old programs trace until the new ones are attached
    /// (which can take seconds), and their ring is read to the end before they go; a packet in
    /// flight across the swap may lose a hop or show one twice.
    fn reattach(&mut self, ring: &mut Ring, details: &[&str]) -> Result<(), TraceError> {
        let mut probes = Probes::attach(
            self.filter,
            self.sizes,
            BackendChoice::Only(self.probes.backend),
            Some(self.probes.hooks),
        )?;
        let fresh = super::open_ring(&mut probes)?;
        // The old programs detach as their `Probes` goes; what they wrote until then is read.
        self.probes = probes;
        while drain_ring(ring.get_mut(), &mut self.pipeline, BATCH) {}
        *ring = fresh;
        self.loaded_at_attach = loaded_modules();
        self.reader = Reader::Polling;
        tracing::info!(
            "attached again with the {} detail: its module's BTF appeared",
            details.join(" and ")
        );
        Ok(())
    }

    /// Reads until `until` (the duration, a signal) resolves or `count` verdicts are out.
    pub async fn read(
        &mut self,
        ring: &mut Ring,
        out: &mut dyn Output,
        mut control: Option<tokio::sync::mpsc::UnboundedReceiver<Control>>,
        count: Option<u64>,
        until: impl Future<Output = ()>,
    ) -> Result<u64, TraceError> {
        tokio::pin!(until);
        // Timers sleep while nothing happens: an idle daemon wakes once a second (TICK_IDLE),
        // not 60 times (docs/performance.md, "An idle daemon").
        let tick = tokio::time::sleep(TICK_BUSY);
        tokio::pin!(tick);
        let poll = tokio::time::sleep(DRAIN_EVERY);
        tokio::pin!(poll);
        let mut verdicts = 0u64;
        while count.is_none_or(|c| verdicts < c) {
            tokio::select! {
                guard = ring.readable_mut() => {
                    self.woken(&mut guard?, poll.as_mut(), tick.as_mut())?;
                    tokio::task::yield_now().await;
                }
                _ = &mut poll, if self.reader == Reader::Polling => {
                    self.poll(ring.get_mut(), poll.as_mut(), tick.as_mut()).await?;
                }
                _ = &mut tick => {
                    verdicts += self.tick(ring.get_mut(), out, tick.as_mut()).await?;
                    if std::mem::take(&mut self.check_modules) {
                        let details = self.modules_appeared();
                        if !details.is_empty() {
                            self.reattach(ring, &details)?;
                        }
                    }
                }
                Some(change) = next_change(&mut control) => self.apply(change)?,
                _ = &mut until => break,
            }
        }
        Ok(verdicts)
    }

    /// The ring became readable: an event woke a sleeping reader, or the backlog crossed
    /// `WAKEUP_BYTES` while polling.
    fn woken(
        &mut self,
        guard: &mut AsyncFdReadyMutGuard<'_, RingBuf<MapData>>,
        poll: Pin<&mut Sleep>,
        tick: Pin<&mut Sleep>,
    ) -> Result<(), TraceError> {
        match self.reader {
            Reader::Asleep => {
                // Poll from now on, and let more arrive before the first read, so a trickle
                // costs one wakeup per DRAIN_EVERY, not one per event.
                guard.clear_ready();
                self.probes.set_reader_asleep(false)?;
                self.reader = Reader::Polling;
                poll.reset(tokio::time::Instant::now() + DRAIN_EVERY);
            }
            Reader::Polling => {
                // Read now, in bounded batches so the other tasks (a daemon's HTTP endpoint,
                // the tick) still run between them.
                if !drain_ring(guard.get_inner_mut(), &mut self.pipeline, BATCH) {
                    guard.clear_ready();
                }
                hurry(tick);
            }
        }
        Ok(())
    }

    /// The polling interval passed: drain, or go to sleep when nothing came.
    async fn poll(
        &mut self,
        ring: &mut RingBuf<MapData>,
        mut poll: Pin<&mut Sleep>,
        tick: Pin<&mut Sleep>,
    ) -> Result<(), TraceError> {
        if drain_all(ring, &mut self.pipeline).await == 0 {
            // Nothing came for a whole interval: sleep until an event wakes us. An event
            // committed before the kernel saw the flag woke nobody: read again.
            self.probes.set_reader_asleep(true)?;
            if drain_all(ring, &mut self.pipeline).await > 0 {
                self.probes.set_reader_asleep(false)?;
            } else {
                self.reader = Reader::Asleep;
            }
        }
        if self.reader == Reader::Polling {
            poll.as_mut()
                .reset(tokio::time::Instant::now() + DRAIN_EVERY);
        }
        hurry(tick);
        Ok(())
    }

    /// Finishes idle packets, reads the kernel's counters once a second, and sets the next
    /// tick; how many verdicts were reported.
    async fn tick(
        &mut self,
        ring: &mut RingBuf<MapData>,
        out: &mut dyn Output,
        tick: Pin<&mut Sleep>,
    ) -> Result<u64, TraceError> {
        if self.reader == Reader::Asleep {
            // A safety net: an event whose program read the flag just before the reader went
            // to sleep woke nobody, and waits at most this long.
            drain_all(ring, &mut self.pipeline).await;
        }
        let verdicts = self.pipeline.flush(Some(monotonic_ns()), out)?;
        if self.counters_read.elapsed() >= TICK_IDLE {
            self.counters_read = Instant::now();
            self.read_counters();
            self.read_summaries(out, false)?;
            if out.wants_kernel_drops() {
                match self.probes.read_drops() {
                    Ok(counts) => {
                        let drops = self.pipeline.kernel_drops(&counts);
                        out.kernel_drops(&drops)?;
                    }
                    Err(e) => tracing::warn!("reading the kernel's drop counts: {e}"),
                }
            }
            self.check_modules = true;
            // Flows whose replies stopped being worth following: the kernel forgets them,
            // and stops looking once none is left.
            let (swept, live) = self.replies_swept;
            if swept.elapsed() >= sweep_every(live) {
                match self.probes.sweep_replies(monotonic_ns()) {
                    Ok(live) => self.replies_swept = (Instant::now(), live),
                    Err(e) => tracing::debug!("sweeping followed replies: {e}"),
                }
            }
            // Containers come and go: a published port's target with them.
            if let Some(d) = self.drops_filter.as_mut()
                && let Some(f) = d.refresh(&mut self.pipeline.resolver)
            {
                self.set_filter(f)?;
            }
        }
        let live = self.pipeline.live_packets();
        out.tick(&self.pipeline.stats, live)?;
        // Packets in flight end by timeout, checked at TICK_BUSY; with none and the reader
        // asleep, nothing changes until an event wakes it.
        let period = if live > 0 || self.reader == Reader::Polling {
            TICK_BUSY
        } else {
            TICK_IDLE
        };
        // On a fixed schedule, not `period` after this tick's work: under a flood the flush
        // above takes a while, and counting from its end stretched the period, each flush
        // with it, and lost events (docs/performance.md).
        let next = (tick.deadline() + period).max(tokio::time::Instant::now());
        tick.reset(next);
        Ok(verdicts)
    }

    /// Kernel counters (three map lookups) into the running totals.
    pub fn read_counters(&mut self) {
        if let Ok(c) = self.probes.counters() {
            self.pipeline.stats.kernel = c;
            self.pipeline.stats.lost = c.lost;
        }
    }

    /// The floods the kernel counted, told when due (`flood::Floods::read`).
    pub fn read_summaries(&mut self, out: &mut dyn Output, ending: bool) -> Result<(), TraceError> {
        if !self.pipeline.summarising() {
            return Ok(());
        }
        let now = monotonic_ns();
        match self.probes.read_summaries(now, crate::flood::FORGET_NS) {
            Ok(counts) => self.pipeline.summaries(&counts, now, ending, out)?,
            Err(e) => tracing::warn!("reading the flood summaries: {e}"),
        }
        Ok(())
    }

    fn apply(&mut self, change: Control) -> Result<(), TraceError> {
        match change {
            Control::SetFilter(f) => {
                let f = match self.drops_filter.as_mut() {
                    Some(d) => d.replace(f, &mut self.pipeline.resolver),
                    None => f,
                };
                self.set_filter(f)?;
            }
        }
        Ok(())
    }
}

/// Whether each of [`MODULES`] is loaded (or built in) now.
fn loaded_modules() -> [bool; MODULES.len()] {
    MODULES.map(|(_, module, _, _)| std::path::Path::new("/sys/module").join(module).exists())
}

/// The next control message, or never when the session has no controller.
async fn next_change(
    control: &mut Option<tokio::sync::mpsc::UnboundedReceiver<Control>>,
) -> Option<Control> {
    match control.as_mut() {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// How often a polling reader drains the ring: the latency a trace adds to each event, and the
/// most wakeups per second a steady trickle costs. A flood wakes it sooner (`WAKEUP_BYTES`);
/// an interval without events puts it to sleep until the next one.
pub const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// How often `REPLIES` is swept when it followed `live` flows last time: a sweep walks every
/// entry (two syscalls each), so a full map is swept less often, keeping it near a thousand
/// syscalls a second; at worst an expired flow's replies are looked up a quarter of their
/// lifetime (`cli::REPLY_SECS`) longer.
fn sweep_every(live: usize) -> Duration {
    const SYSCALLS_PER_SEC: u64 = 1000;
    let secs = (2 * live as u64).div_ceil(SYSCALLS_PER_SEC).clamp(1, 15);
    Duration::from_secs(secs)
}

/// The tick while packets are in flight: they end by timeout (`--idle`), checked this often.
const TICK_BUSY: Duration = Duration::from_millis(100);
/// The tick with nothing in flight: the kernel's counters and the daemon's gauges and health
/// (its stall limit is 10 s) need no more.
const TICK_IDLE: Duration = Duration::from_secs(1);

/// Brings an idle tick forward after events were read: packets they finished are reported
/// within TICK_BUSY, not at the next idle tick.
fn hurry(tick: Pin<&mut Sleep>) {
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
pub(super) const BATCH: usize = 4096;

/// Reads everything waiting, yielding between batches so other tasks run; how many records.
pub(super) async fn drain_all(ring: &mut RingBuf<MapData>, pipeline: &mut Pipeline) -> u64 {
    let before = pipeline.stats.events;
    while drain_ring(ring, pipeline, BATCH) {
        tokio::task::yield_now().await;
    }
    pipeline.stats.events - before
}

/// Reads up to `limit` records; `true` when more may be waiting.
pub(super) fn drain_ring(
    ring: &mut RingBuf<MapData>,
    pipeline: &mut Pipeline,
    limit: usize,
) -> bool {
    for _ in 0..limit {
        match ring.next() {
            Some(item) => pipeline.push_record(&item),
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fuller_reply_map_is_swept_less_often() {
        assert_eq!(sweep_every(0), Duration::from_secs(1));
        assert_eq!(sweep_every(400), Duration::from_secs(1));
        assert_eq!(sweep_every(2048), Duration::from_secs(5));
        assert_eq!(
            sweep_every(8192),
            Duration::from_secs(15),
            "a full map: a quarter of the reply lifetime at most"
        );
        assert!(crate::cli::REPLY_SECS as u64 >= 4 * 15);
    }
}
