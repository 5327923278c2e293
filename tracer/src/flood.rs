//! Floods the kernel summarised (`tracer_common::flood`): its counts, read once a second, are
//! joined to the full packet whose way the counted ones took, and told as one story per flow
//! and way: when the flood stops, every [`TELL_EVERY`] while it lasts, and at the end.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use serde::Serialize;
use tracer_common::{
    HopKind,
    event::Addr,
    flood::{SummaryCount, SummaryKey, flow_id},
};

use crate::{
    clock::WallTime,
    events::{Hop, Tuple},
    report::{Report, SkbAddr},
    verdict::Outcome,
};

/// A flood that counted nothing new for this long has stopped: told then.
pub const IDLE_NS: u64 = 2_000_000_000;
/// A flood still going is told this often, with what it added since.
pub const TELL_EVERY_NS: u64 = 10_000_000_000;
/// A summary idle this long is deleted from the kernel's map after its last read.
pub const FORGET_NS: u64 = 60_000_000_000;
/// Full packets kept per flow, the latest of each way it took: a summary names the one its
/// packets repeat, among these.
const KEPT_PER_FLOW: usize = 8;

/// One telling of a flood: packets of `flow` the kernel counted since the last telling, all
/// of which took the way `like` took and ended as it did.
#[derive(Clone, Debug)]
pub struct Summary {
    pub flow: u32,
    /// The full packet they repeat; `None` when none is kept (it ended too long ago, or the
    /// counted ones were freed where the full ones were not seen to end).
    pub like: Option<Arc<Report>>,
    /// Since the telling before.
    pub packets: u64,
    pub bytes: u64,
    /// Since the flood began.
    pub total_packets: u64,
    pub total_bytes: u64,
    /// CLOCK_MONOTONIC of the first and latest packet counted, and of the telling before (or
    /// the first packet), for the rate.
    pub first_ns: u64,
    pub last_ns: u64,
    pub since_ns: u64,
    /// No packet for [`IDLE_NS`], or the trace ended: the last telling.
    pub ended: bool,
}

impl Summary {
    /// Packets per second over this telling's span.
    pub fn rate(&self) -> f64 {
        let span = self.last_ns.saturating_sub(self.since_ns);
        if span == 0 {
            return 0.0;
        }
        self.packets as f64 * 1e9 / span as f64
    }
}

/// `{"kind":"summary", ...}` (docs/json.md).
#[derive(Serialize)]
pub struct SummaryJson {
    pub kind: &'static str,
    /// The latest packet counted, on the wall clock.
    pub time: WallTime,
    /// The flow's id, hex: the same in every summary of one flow.
    pub flow: String,
    /// The full packet the counted ones repeat: its skb, header and end.
    pub like_skb: Option<SkbAddr>,
    pub tuple: Option<Tuple>,
    pub outcome: Option<Outcome>,
    pub drop_reason: Option<String>,
    pub location: Option<String>,
    pub code: Option<&'static str>,
    pub packets: u64,
    pub bytes: u64,
    pub total_packets: u64,
    pub total_bytes: u64,
    pub per_sec: f64,
    pub first_time: WallTime,
    pub ended: bool,
}

impl Summary {
    pub fn json(&self) -> SummaryJson {
        let like = self.like.as_deref();
        let verdict = like.map(Report::verdict_json);
        SummaryJson {
            kind: "summary",
            time: WallTime(self.last_ns),
            flow: format!("{:08x}", self.flow),
            like_skb: like.map(|r| SkbAddr(r.packet.skb)),
            tuple: like.and_then(Report::first_tuple),
            outcome: verdict.as_ref().map(|v| v.outcome),
            drop_reason: verdict.as_ref().and_then(|v| v.drop_reason.clone()),
            location: verdict.as_ref().and_then(|v| v.location.clone()),
            code: like.and_then(|r| r.diagnosis.as_ref()).map(|d| d.code),
            packets: self.packets,
            bytes: self.bytes,
            total_packets: self.total_packets,
            total_bytes: self.total_bytes,
            per_sec: (self.rate() * 10.0).round() / 10.0,
            first_time: WallTime(self.first_ns),
            ended: self.ended,
        }
    }
}

/// What was read and told of one summary key.
#[derive(Clone, Copy, Debug, Default)]
struct Told {
    read: SummaryCount,
    packets: u64,
    bytes: u64,
    at_ns: u64,
}

/// The flood summaries of one session.
#[derive(Default)]
pub struct Floods {
    recent: HashMap<u32, VecDeque<Arc<Report>>>,
    told: HashMap<SummaryKey, Told>,
    max_flows: usize,
}

impl Floods {
    pub fn new(max_flows: usize) -> Self {
        Self {
            recent: HashMap::new(),
            told: HashMap::new(),
            max_flows: max_flows.max(1),
        }
    }

    /// Keeps a full packet's report: the story its flow's counted packets repeat.
    pub fn remember(&mut self, report: &Report) {
        let Some(flow) = flow_of(&report.packet.hops) else {
            return;
        };
        if !self.recent.contains_key(&flow)
            && self.recent.len() >= self.max_flows
            && let Some(&old) = self.recent.keys().next()
        {
            self.recent.remove(&old);
        }
        let kept = self.recent.entry(flow).or_default();
        // The latest of each way: a flood delivered a thousand times between two of its drops
        // still has a drop to name its dropped packets by.
        kept.retain(|r| !same_way(&r.packet.hops, &report.packet.hops));
        if kept.len() >= KEPT_PER_FLOW {
            kept.pop_front();
        }
        kept.push_back(Arc::new(report.clone()));
    }

    /// The hops a packet at `skb` shared with its flow's latest full packet before it parted
    /// from them (`HopKind::Resumed`): that packet's first `n` traced hops, marked repeated,
    /// with the netfilter hooks among and after them (the kernel does not count those: they
    /// are not part of a flood's signature).
    pub fn shared_hops(&self, flow: u32, n: u32, skb: u64, first_ts: u64) -> Vec<Hop> {
        let Some(latest) = self.recent.get(&flow).and_then(|k| k.back()) else {
            return Vec::new();
        };
        let mut counted = 0;
        latest
            .packet
            .hops
            .iter()
            .filter(|h| !h.inferred && !h.frees())
            .take_while(|h| {
                if h.kind == HopKind::NetfilterHook {
                    return counted <= n;
                }
                counted += 1;
                counted <= n
            })
            .enumerate()
            .map(|(i, h)| Hop {
                skb,
                // This packet's first hop, when the kernel saw it (its summaries name it by
                // that time), and the rest a nanosecond apart: the full packet's are not its.
                ts_ns: first_ts + i as u64,
                // Not this packet's: a fingerprint would make its next hop look like reuse.
                fingerprint: 0,
                repeated: true,
                ..*h
            })
            .collect()
    }

    /// Gives a packet's repeated hops (see [`Floods::shared_hops`]) the length of the first
    /// hop traced for it: theirs was the full packet's.
    pub fn settle_repeated(packet: &mut crate::correlate::Packet) {
        let Some(len) = packet.hops.iter().find(|h| !h.repeated).map(|h| h.len) else {
            return;
        };
        for h in packet.hops.iter_mut().filter(|h| h.repeated) {
            h.len = len;
        }
    }

    /// Reads the kernel's cumulative counts at `now_ns`; returns what is to be told now.
    /// `ending`: the trace stops, everything not told yet is.
    pub fn read(
        &mut self,
        counts: &[(SummaryKey, SummaryCount)],
        now_ns: u64,
        ending: bool,
    ) -> Vec<Summary> {
        let mut out = Vec::new();
        let recent = &self.recent;
        for (key, count) in counts {
            let told = self.told.entry(*key).or_default();
            // A count below the one read before: the kernel's entry was deleted and made
            // again, so it counts from zero.
            if count.packets < told.read.packets {
                *told = Told::default();
            }
            told.read = *count;
            let packets = count.packets - told.packets;
            if packets == 0 {
                continue;
            }
            let stopped = now_ns.saturating_sub(count.last_ns) >= IDLE_NS;
            let due = now_ns.saturating_sub(told.at_ns.max(count.first_ns)) >= TELL_EVERY_NS;
            if !(ending || stopped || due) {
                continue;
            }
            let since_ns = if told.packets == 0 {
                count.first_ns
            } else {
                told.at_ns
            };
            out.push(Summary {
                flow: key.flow,
                like: like(recent, key.flow, count.reference),
                packets,
                bytes: count.bytes - told.bytes.min(count.bytes),
                total_packets: count.packets,
                total_bytes: count.bytes,
                first_ns: count.first_ns,
                last_ns: count.last_ns,
                since_ns,
                ended: ending || stopped,
            });
            told.packets = count.packets;
            told.bytes = count.bytes;
            told.at_ns = count.last_ns;
        }
        // Deleted from the kernel's map (idle for FORGET_NS): nothing left to tell.
        self.told
            .retain(|key, _| counts.iter().any(|(k, _)| k == key));
        out
    }
}

/// The kept full packet of `flow` that started closest to `reference` (its first hop's time
/// as the kernel took it, a moment before the hop's own). Without one (0), the counted
/// packets were freed where no tracepoint fires: the latest kept that was not seen freed.
fn like(
    recent: &HashMap<u32, VecDeque<Arc<Report>>>,
    flow: u32,
    reference: u64,
) -> Option<Arc<Report>> {
    let kept = recent.get(&flow)?;
    if reference == 0 {
        return kept
            .iter()
            .rev()
            .find(|r| !r.packet.hops.iter().any(Hop::frees))
            .or(kept.back())
            .cloned();
    }
    kept.iter()
        .min_by_key(|r| r.packet.first_ts().abs_diff(reference))
        .cloned()
}

/// Whether two full packets took the same way as userspace sees it: the same traced hops
/// (kind, device, namespace, drop reason and place). The kernel's signature tells more
/// apart (conntrack's state, TCP flags), so a kept packet per way here is at most one per
/// way there.
fn same_way(a: &[Hop], b: &[Hop]) -> bool {
    let traced = |hops: &[Hop]| -> Vec<(HopKind, u32, u32, u32, u64)> {
        hops.iter()
            .filter(|h| !h.inferred)
            .map(|h| {
                let at = if h.kind == HopKind::Drop {
                    h.location
                } else {
                    0
                };
                (h.kind, h.ifindex, h.netns, h.drop_reason, at)
            })
            .collect()
    };
    traced(a) == traced(b)
}

/// The flow the kernel summarised a packet under: from the header of its first traced hop
/// (a repeated one is its flow's, the same).
pub fn flow_of(hops: &[Hop]) -> Option<u32> {
    let first = hops.iter().find(|h| !h.inferred)?;
    let t = first.tuple?;
    Some(flow_id(
        folded(t.src),
        folded(t.dst),
        t.proto.number(),
        t.dport,
    ))
}

/// An address as the kernel keys a flow by it: IPv4's, IPv6's folded (`Addr::folded`).
fn folded(a: IpAddr) -> [u8; 4] {
    match a {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => Addr(a.octets()).folded(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        correlate::{FlowTable, Packet},
        events::fixture::*,
        host::fixture::FakeHost,
        output::human::summary_line,
        probes::{DropReasons, HookSet},
    };

    /// A UDP datagram from 198.51.100.23 to 10.61.4.9:5353 received on the uplink and freed
    /// there for want of a socket, first seen at `ts`.
    fn dying(ts: u64, skb: u64) -> Report {
        datagram(ts, skb, &[(HopKind::Receive, 0), (HopKind::Drop, 900)])
    }

    /// The same datagram received, then taken where no tracepoint fires (UDP frees what its
    /// socket read without one).
    fn taken_unseen(ts: u64, skb: u64) -> Report {
        datagram(ts, skb, &[(HopKind::Receive, 0)])
    }

    fn datagram(ts: u64, skb: u64, way: &[(HopKind, u64)]) -> Report {
        let mut hops = Vec::new();
        for &(kind, at) in way {
            let mut e = ev(kind, ts + at, HOST_NS, 2);
            e.skb = skb;
            e.saddr = tracer_common::event::Addr::v4([198, 51, 100, 23]);
            e.daddr = tracer_common::event::Addr::v4([10, 61, 4, 9]);
            e.sport = 51000;
            e.dport = 5353;
            e.proto = 17;
            e.tcp_flags = 0;
            if kind == HopKind::Drop {
                e.drop_reason = 2;
                e.location = 0xffff_ffff_8190_0000;
            }
            hops.push(hop(e));
        }
        let packet = Packet {
            skb,
            hops,
            freed: way.len() > 1,
        };
        let flow = FlowTable::new(8).observe(&packet);
        let reasons = DropReasons::from_pairs([("SKB_DROP_REASON_NO_SOCKET".to_owned(), 2)]);
        Report::build(packet, flow, &mut FakeHost::lab(), &reasons, HookSet::Path)
    }

    fn flow() -> u32 {
        flow_id([198, 51, 100, 23], [10, 61, 4, 9], 17, 5353)
    }

    fn count(packets: u64, first_ns: u64, last_ns: u64, reference: u64) -> SummaryCount {
        SummaryCount {
            packets,
            bytes: packets * 46,
            first_ns,
            last_ns,
            reference,
        }
    }

    #[test]
    fn counted_packets_are_told_once_with_the_packet_they_repeat() {
        let mut floods = Floods::new(16);
        let first = dying(1_000, 0xffff_8880_0000_1000);
        let later = dying(500_000, 0xffff_8880_0000_2000);
        floods.remember(&first);
        floods.remember(&later);
        assert_eq!(flow_of(&first.packet.hops), Some(flow()));
        let key = SummaryKey {
            flow: flow(),
            path: 0xfeed,
        };
        // Going: not told before it stops or ten seconds pass.
        let going = [(key, count(90_000, 2_000_000, 900_000_000, 499_990))];
        assert!(floods.read(&going, 1_000_000_000, false).is_empty());
        // Stopped: told once, with the full packet that started nearest the reference.
        let stopped = [(key, count(284_416, 2_000_000, 1_900_000_000, 499_990))];
        let told = floods.read(&stopped, 1_900_000_000 + IDLE_NS, false);
        assert_eq!(told.len(), 1);
        let s = &told[0];
        assert_eq!(
            (s.packets, s.total_packets, s.bytes),
            (284_416, 284_416, 284_416 * 46)
        );
        assert!(s.ended);
        assert_eq!(
            s.like.as_ref().map(|r| r.packet.skb),
            Some(0xffff_8880_0000_2000)
        );
        let line = summary_line(s);
        assert!(
            line.contains("… and 284,416 more packets (13.1 MB, 149,")
                && line.contains("/s) of this flow 198.51.100.23 → 10.61.4.9:5353 (udp)"),
            "{line}"
        );
        assert!(
            line.contains("DROPPED after") && line.contains("NO_SOCKET"),
            "{line}"
        );
        assert!(line.ends_with("(flood over)"), "{line}");
        let json = serde_json::to_value(s.json()).expect("json");
        assert_eq!(json["kind"], "summary");
        assert_eq!(json["packets"], 284_416);
        assert_eq!(json["outcome"], "dropped");
        assert_eq!(json["drop_reason"], "NO_SOCKET");
        assert_eq!(json["like_skb"], "0xffff888000002000");
        // Read again, nothing new: nothing told. More later: only what came since.
        assert!(floods.read(&stopped, 9_000_000_000, false).is_empty());
        let again = [(key, count(284_500, 2_000_000, 9_500_000_000, 499_990))];
        let told = floods.read(&again, 9_500_000_000, true);
        assert_eq!((told[0].packets, told[0].total_packets), (84, 284_500));
        // Gone from the kernel's map: forgotten here too.
        assert!(floods.read(&[], 20_000_000_000, true).is_empty());
        assert!(floods.told.is_empty());
    }

    #[test]
    fn a_long_flood_is_told_every_ten_seconds_with_what_it_added() {
        let mut floods = Floods::new(16);
        floods.remember(&dying(1_000, 0xffff_8880_0000_1000));
        let key = SummaryKey {
            flow: flow(),
            path: 7,
        };
        let first = 2_000_000;
        let told = floods.read(
            &[(key, count(1_000_000, first, first + TELL_EVERY_NS, 0))],
            first + TELL_EVERY_NS,
            false,
        );
        assert_eq!(told.len(), 1);
        assert!(!told[0].ended, "still going");
        assert!(summary_line(&told[0]).ends_with("(still going)"));
        let told = floods.read(
            &[(
                key,
                count(1_500_000, first, first + TELL_EVERY_NS + 5_000_000_000, 0),
            )],
            first + TELL_EVERY_NS + 5_000_000_000,
            false,
        );
        assert!(told.is_empty(), "five seconds later: not yet");
    }

    #[test]
    fn a_packet_parting_from_its_flood_starts_with_the_hops_it_shared() {
        let mut floods = Floods::new(16);
        floods.remember(&dying(1_000, 0xffff_8880_0000_1000));
        let skb = 0xffff_8880_0000_9000;
        // The time of its first hop, as the Resumed record carries it: its own, not the full
        // packet's (1_000).
        let shared = floods.shared_hops(flow(), 1, skb, 6_000_000);
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0].kind, HopKind::Receive);
        assert!(shared[0].repeated);
        assert_eq!((shared[0].skb, shared[0].fingerprint), (skb, 0));
        assert_eq!(shared[0].ts_ns, 6_000_000);
        // Never the full packet's own end, and nothing for a flow with no full packet kept.
        assert!(
            floods
                .shared_hops(flow(), 5, skb, 6_000_000)
                .iter()
                .all(|h| !h.frees())
        );
        assert!(floods.shared_hops(flow() ^ 1, 1, skb, 6_000_000).is_empty());
        // Finished: the shared hop takes the length of the packet's own first hop, and keeps
        // its time.
        let mut own = dying(7_000_000, skb).packet.hops[1];
        own.len = 428;
        let mut packet = crate::correlate::Packet {
            skb,
            hops: vec![shared[0], own],
            freed: true,
        };
        Floods::settle_repeated(&mut packet);
        assert_eq!(packet.hops[0].len, 428);
        assert_eq!(packet.hops[0].ts_ns, 6_000_000);
    }

    #[test]
    fn each_way_of_a_flood_is_named_by_a_packet_that_went_that_way() {
        let mut floods = Floods::new(16);
        // One datagram dropped, then many taken by the socket: the drop stays kept.
        floods.remember(&dying(1_000, 0xffff_8880_0000_1000));
        for i in 0..20 {
            floods.remember(&taken_unseen(10_000 + i * 1_000, 0xffff_8880_0001_0000 + i));
        }
        assert_eq!(floods.recent[&flow()].len(), 2, "one per way");
        let dropped = SummaryKey {
            flow: flow(),
            path: 0xd0,
        };
        let unseen = SummaryKey {
            flow: flow(),
            path: 0x7a,
        };
        // The drops name the latest drop by its first hop's time; the packets freed where no
        // tracepoint fires (no reference) name the latest that was not seen freed, even with
        // a drop kept after it.
        floods.remember(&dying(900_000, 0xffff_8880_0000_2000));
        let told = floods.read(
            &[
                (dropped, count(5_000, 50_000, 800_000, 899_990)),
                (unseen, count(70_000, 40_000, 890_000, 0)),
            ],
            900_000 + IDLE_NS,
            false,
        );
        let named: Vec<_> = told
            .iter()
            .map(|s| (s.like.as_ref().map(|r| r.packet.skb), s.json().outcome))
            .collect();
        assert_eq!(
            named,
            [
                (Some(0xffff_8880_0000_2000), Some(Outcome::Dropped)),
                // Not seen delivered here (no socket in the fake host): not seen dropped.
                (Some(0xffff_8880_0001_0013), Some(Outcome::Unknown)),
            ]
        );
    }
}
