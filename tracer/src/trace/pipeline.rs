//! The correlation and reporting half of a session: decoded hops → packets → flows → judged
//! → reported. Independent of the kernel, so recorded events drive it in tests and benchmarks.

use super::TraceConfig;
use crate::{
    connection::{Connection, Connections},
    correlate::{FlowTable, Packet, PacketTracker, transmits},
    diagnose::{judge, no_route_back},
    events::Hop,
    flood::Floods,
    output::{Output, Stats},
    probes::{DropReasons, HookSet},
    report::Report,
    resolve::{Resolver, SharedIndex},
    verdict::Outcome,
};

/// The correlation and reporting half of a session, independent of the kernel so it can be
/// driven from recorded events (tests, benchmarks).
pub struct Pipeline {
    packets: PacketTracker,
    flows: FlowTable,
    pub(super) resolver: Resolver,
    drop_reasons: DropReasons,
    /// Without the path (`--hooks drops`) the diagnosis rules would reason from hops that were
    /// never traced: they do not run.
    hooks: HookSet,
    finished: Vec<Packet>,
    connections: Connections,
    pub stats: Stats,
    /// Route checks of unanswered connections this second (see `explained`).
    route_checks: (Option<std::time::Instant>, u32),
    /// Floods summarised in the kernel; `None` with `--every-packet`.
    floods: Option<Floods>,
}

/// Unanswered connections checked for a route back per second, at most: each distinct client
/// runs `ip route get` in the namespace that took its first packet, and a flood of unanswered
/// SYNs from many sources must not fork a process per source.
const ROUTE_CHECKS_PER_SEC: u32 = 16;

impl Pipeline {
    /// `hooks`: the set attached, which says what the hops can prove.
    pub fn new(
        cfg: &TraceConfig,
        hooks: HookSet,
        drop_reasons: DropReasons,
        containers: SharedIndex,
    ) -> Self {
        Self {
            packets: PacketTracker::new(cfg.idle.as_nanos() as u64, cfg.max_packets),
            flows: FlowTable::new(cfg.max_flows),
            resolver: Resolver::new().with_containers(containers),
            drop_reasons: if cfg.all_drops {
                drop_reasons.counting_all()
            } else {
                drop_reasons
            },
            hooks,
            finished: Vec::new(),
            connections: Connections::new(cfg.max_flows),
            stats: Stats::default(),
            route_checks: (None, 0),
            floods: (cfg.filter.flood_budget != 0).then(|| Floods::new(cfg.max_flows)),
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
            // A flood's quiet packet parted from its flow's way: shown from the start, the
            // hops it shared taken from the flow's latest full packet.
            Ok(hop) if hop.kind == tracer_common::HopKind::Resumed => {
                if let Some(floods) = &self.floods {
                    let shared =
                        floods.shared_hops(hop.location as u32, hop.len, hop.skb, hop.ts_ns);
                    for shared in shared {
                        self.packets.push(shared, &mut self.finished);
                    }
                }
            }
            Ok(hop) => self.packets.push(hop, &mut self.finished),
            Err(e) => {
                self.stats.decode_errors += 1;
                tracing::warn!("{e}");
            }
        }
    }

    /// A connection as it is told: one whose first packet a socket took and nothing came
    /// back gets the connection-level check (a namespace with no route back never builds
    /// its answer, so no packet's diagnosis can say it).
    fn explained(&mut self, mut c: Connection) -> Connection {
        if c.unanswered().is_none() {
            return c;
        }
        let (since, n) = &mut self.route_checks;
        if since.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
            (*since, *n) = (Some(std::time::Instant::now()), 0);
        }
        if *n >= ROUTE_CHECKS_PER_SEC {
            return c;
        }
        *n += 1;
        // Copied only once the budget allows the check.
        let Some((packet, u)) = c.unanswered().map(|(p, u)| (p.to_owned(), u)) else {
            return c;
        };
        c.diagnosis = no_route_back(&mut self.resolver, &u, &packet);
        c
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
            if self.floods.is_some() {
                Floods::settle_repeated(&mut packet);
            }
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
            let mut report = Report::new(judged, &mut self.resolver, &self.drop_reasons);
            let (again, pushed_out) = self.connections.add(&report);
            report.retransmission = again;
            if let Some(c) = pushed_out {
                out.connection(&self.explained(c))?;
            }
            self.stats.packets += 1;
            if report.packet.hops.iter().any(|h| h.followed) {
                self.stats.replies += 1;
            }
            match report.verdict.outcome {
                Outcome::Delivered => self.stats.delivered += 1,
                Outcome::Dropped => self.stats.dropped += 1,
                Outcome::Ended => self.stats.ended += 1,
                Outcome::Unknown => self.stats.unknown += 1,
            }
            out.report(&report)?;
            if let Some(floods) = &mut self.floods {
                floods.remember(&report);
            }
            n += 1;
        }
        for c in self.connections.finished(now_ns) {
            out.connection(&self.explained(c))?;
        }
        self.stats.flows = self.flows.len() as u64;
        Ok(n)
    }

    /// Tells the floods the kernel counted (`Probes::read_summaries` at `now_ns`) that are due;
    /// `ending`: all of them.
    pub fn summaries(
        &mut self,
        counts: &[(
            tracer_common::flood::SummaryKey,
            tracer_common::flood::SummaryCount,
        )],
        now_ns: u64,
        ending: bool,
        out: &mut dyn Output,
    ) -> std::io::Result<()> {
        let Some(floods) = &mut self.floods else {
            return Ok(());
        };
        for s in floods.read(counts, now_ns, ending) {
            self.stats.summarised += s.packets;
            if s.like
                .as_ref()
                .is_some_and(|r| r.verdict.outcome == Outcome::Dropped)
            {
                self.stats.summarised_dropped += s.packets;
            }
            out.summary(&s)?;
        }
        Ok(())
    }

    /// The kernel's per-key drop counts with their names; the stack's housekeeping left out
    /// (unless `--all-drops`), as from the other drop counts.
    pub fn kernel_drops(
        &mut self,
        counts: &[(tracer_common::flood::DropKey, u64)],
    ) -> Vec<crate::output::KernelDrop> {
        use crate::host::HostFacts as _;
        counts
            .iter()
            .filter(|(k, _)| !self.drop_reasons.maybe_housekeeping(k.reason))
            .map(|(k, n)| crate::output::KernelDrop {
                reason: self.drop_reasons.name(k.reason),
                location: self
                    .resolver
                    .symbol(k.location)
                    .map_or_else(|| format!("{:#x}", k.location), |s| s.name),
                ifname: self.resolver.ifname(k.netns, k.ifindex),
                netns: self.resolver.netns_label(k.netns),
                count: *n,
            })
            .collect()
    }

    /// Whether floods are summarised (not `--every-packet`).
    pub fn summarising(&self) -> bool {
        self.floods.is_some()
    }
}
