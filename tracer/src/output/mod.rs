//! Rendering reports: a human timeline or JSON lines (schema in docs/json.md).

pub mod doctor;
pub mod human;
pub mod json;

use serde::Serialize;

use crate::{
    connection::Connection, flood::Summary, probes::loader::KernelCounters, report::Report,
};

/// What the trace session tells its output.
pub trait Output {
    /// Every probe is attached.
    fn ready(&mut self, ready: &Ready) -> std::io::Result<()>;
    /// One finished packet.
    fn report(&mut self, report: &Report) -> std::io::Result<()>;
    /// One connection's story, once it ended (idle, closed, or the session's end).
    fn connection(&mut self, _c: &Connection) -> std::io::Result<()> {
        Ok(())
    }
    /// Packets of a flood the kernel counted instead of tracing, told as one story.
    fn summary(&mut self, _s: &Summary) -> std::io::Result<()> {
        Ok(())
    }
    /// Whether it wants the kernel's own drop counts (`kernel_drops`, once a second).
    fn wants_kernel_drops(&self) -> bool {
        false
    }
    /// The kernel's own drop counts, cumulative, names resolved.
    fn kernel_drops(&mut self, _drops: &[KernelDrop]) -> std::io::Result<()> {
        Ok(())
    }
    /// Totals at exit.
    fn stats(&mut self, stats: &Stats) -> std::io::Result<()>;
    /// Called every tick (100 ms with packets in flight, 1 s without) with the running totals:
    /// the daemon's health and gauges.
    fn tick(&mut self, _stats: &Stats, _live_packets: usize) -> std::io::Result<()> {
        Ok(())
    }
}

/// `{"kind":"ready", ...}`: scripts and tests start traffic after this.
#[derive(Clone, Debug, Serialize)]
pub struct Ready {
    pub backend: String,
    pub backend_reason: String,
    /// `path` or `drops` (`--hooks`).
    pub hook_set: crate::probes::HookSet,
    /// Hook targets (`netif_receive_skb`, `nf_hook_slow`, ...).
    pub hooks: Vec<&'static str>,
    /// How each is attached (`tp_btf:kfree_skb`, `fexit:nf_hook_slow`, ...).
    pub attachments: Vec<String>,
    pub skipped_hooks: Vec<String>,
    /// How the kernel programs read packet headers: `direct loads (bpf_rdonly_cast)`, or
    /// `bpf_probe_read_kernel (why)`.
    pub packet_reads: String,
    /// Whether floods are summarised, and how: `summarised: ...` or `every packet traced...`.
    pub floods: String,
    pub filter: String,
    pub pid: u32,
    /// Container resolution: `connected (...)` or `unavailable: why`.
    pub docker: String,
}

/// Drops the kernel counted under one key (`tracer_common::flood::DropKey`), events or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelDrop {
    pub reason: String,
    /// The function that freed them.
    pub location: String,
    pub ifname: String,
    pub netns: String,
    pub count: u64,
}

/// `{"kind":"stats", ...}`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Events read from the ring buffer.
    pub events: u64,
    /// Events the kernel could not write (ring buffer full): reported, never hidden.
    pub lost: u64,
    pub kernel: KernelCounters,
    pub decode_errors: u64,
    pub packets: u64,
    pub delivered: u64,
    pub dropped: u64,
    /// Freed by the stack's housekeeping: not drops.
    pub ended: u64,
    pub unknown: u64,
    pub flows: u64,
    /// Packets the kernel followed as replies to matched ones (or ICMP errors about them).
    pub replies: u64,
    /// Packets of floods told in summaries (counted in the kernel, not traced), and how many
    /// of them were dropped.
    pub summarised: u64,
    pub summarised_dropped: u64,
    pub duration_ms: u64,
}
