//! Userspace decode + correlation throughput on recorded events, no kernel needed:
//! `cargo bench -p tracer --bench pipeline`. Prints one `pipeline:` line that
//! `cargo xtask bench` copies into docs/performance.md.

use std::time::Instant;

use pathtrace::{
    correlate::{FlowTable, PacketTracker},
    events::Hop,
};
use tracer_common::{
    HopEvent, HopKind,
    event::{Addr, FLAG_IPV4, FLAG_L4, FLAG_MATCHED},
};

/// Six hops per packet, as a SYN takes on the Docker-like path: uplink receive, bridge and
/// veth transmit, container receive, DNAT in the middle, consumed at the end.
fn recorded(packets: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(packets as usize * 6 * size_of::<HopEvent>());
    for p in 0..packets {
        let skb = 0xffff_8880_0000_0000 + (p % 50_000) * 0x100;
        let kinds = [
            (HopKind::Transmit, 2),
            (HopKind::Receive, 2),
            (HopKind::Transmit, 3),
            (HopKind::Transmit, 4),
            (HopKind::Receive, 2),
            (HopKind::Consume, 0),
        ];
        for (i, (kind, ifindex)) in kinds.into_iter().enumerate() {
            let mut e = HopEvent::zeroed();
            e.ts_ns = p * 10_000 + i as u64 * 1_000;
            e.skb = skb;
            e.kind = kind as u8;
            e.ifindex = ifindex;
            e.netns = 4026532000 + (i as u32 / 2);
            e.saddr = Addr::v4([203, 0, 113, 2]);
            e.daddr = Addr::v4(if i >= 2 {
                [172, 17, 0, 2]
            } else {
                [203, 0, 113, 1]
            });
            e.sport = 20000 + (p % 40000) as u16;
            e.dport = if i >= 2 { 80 } else { 10001 };
            e.proto = 6;
            e.tcp_flags = 0x02;
            e.len = 60;
            e.fingerprint = p as u32 | 1;
            e.flags = FLAG_IPV4 | FLAG_L4 | FLAG_MATCHED;
            out.extend_from_slice(e.record());
        }
    }
    out
}

fn main() {
    let packets = 500_000u64;
    let data = recorded(packets);
    // None of these hops is a drop: each record is the head alone, as the kernel writes it.
    let size = HopEvent::HEAD_LEN;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let mut tracker = PacketTracker::new(500_000_000, 65_536);
        let mut flows = FlowTable::new(65_536);
        let mut finished = Vec::with_capacity(64);
        let mut done = 0u64;
        let t = Instant::now();
        for record in data.chunks_exact(size) {
            let hop = Hop::decode(record).expect("recorded events decode");
            tracker.push(hop, &mut finished);
            for packet in finished.drain(..) {
                std::hint::black_box(flows.observe(&packet));
                done += 1;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(done, packets);
        best = best.min(secs);
    }
    let events = (packets * 6) as f64;
    println!(
        "pipeline: {:.2} M events/s decode + correlate on one core ({} events, best of 5: {:.3} s)",
        events / best / 1e6,
        packets * 6,
        best
    );
}
