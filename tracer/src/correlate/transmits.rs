//! Transmits a receive proves, for a hook set without the transmit tracepoint (`--hooks
//! receive`): what one end of a veth receives, the other end sent; and a packet that reaches
//! the far end of a bridge port after being routed in the bridge's namespace left through the
//! bridge device first. On a container's path (uplink, bridge, veth) these are exactly the
//! hops `net_dev_start_xmit` reports, without the tracepoint call that every packet on the
//! host, followed or not, would pay (docs/performance.md). Each added hop is marked
//! `inferred`; a transmit nothing receives afterwards (a NIC sending to the wire) is not
//! invented: the verdict judges it from the consume at TX completion.

use tracer_common::HopKind;

use super::Packet;
use crate::{events::Hop, host::HostFacts};

/// What `skb->len` counts on an Ethernet device's transmit and not after its receive
/// (`eth_type_trans` pulls it): the MAC header.
const ETH_HLEN: u32 = 14;

/// Adds to `packet`, before each receive on a veth (or loopback), the transmit on the device
/// that sent it, and before that the bridge's own transmit when the packet was routed to one
/// of its ports rather than bridged from another.
pub fn infer(packet: &mut Packet, facts: &mut dyn HostFacts) {
    if !packet.hops.iter().any(|h| h.kind == HopKind::Receive) {
        return;
    }
    let mut hops = Vec::with_capacity(packet.hops.len() + 4);
    for hop in std::mem::take(&mut packet.hops) {
        if hop.kind == HopKind::Receive
            && let Some((netns, sender)) = facts.wiring(hop.netns, hop.ifindex).and_then(|w| w.peer)
        {
            if let Some(bridge) = routed_through(&hops, netns, sender, facts) {
                hops.push(sent_by(&hop, netns, bridge));
            }
            hops.push(sent_by(&hop, netns, sender));
        }
        hops.push(hop);
    }
    packet.hops = hops;
}

/// The bridge `port` (in `netns`) is attached to, when the packet went out through it: its
/// last hop in that namespace, if it had one, was not a receive on another port of the same
/// bridge (which would have bridged it at layer 2, never touching the bridge device's
/// transmit). A receive on the bridge device itself is the bridge passing the frame up to be
/// routed, so the way out is through the bridge again.
fn routed_through(seen: &[Hop], netns: u32, port: u32, facts: &mut dyn HostFacts) -> Option<u32> {
    let bridge = facts.wiring(netns, port)?.bridge?;
    let bridged = seen
        .iter()
        .rev()
        .find(|h| h.netns == netns)
        .filter(|h| h.kind == HopKind::Receive)
        .and_then(|h| facts.wiring(netns, h.ifindex))
        .is_some_and(|w| w.bridge == Some(bridge));
    (!bridged).then_some(bridge)
}

/// The transmit on `ifindex` that `rx` proves: the same packet, at the same moment (the
/// transmit's own time was not observed).
fn sent_by(rx: &Hop, netns: u32, ifindex: u32) -> Hop {
    Hop {
        kind: HopKind::Transmit,
        netns,
        ifindex,
        len: rx.len + ETH_HLEN,
        location: 0,
        drop_reason: 0,
        peer_ifindex: 0,
        peer_netns: 0,
        netfilter: None,
        in_ifindex: 0,
        entered: None,
        inferred: true,
        followed: false,
        ..*rx
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::HopKind;

    use super::*;
    use crate::{
        events::fixture::*,
        host::{LOOPBACK_IFINDEX, Link, fixture::FakeHost},
    };

    fn packet(hops: Vec<Hop>) -> Packet {
        Packet {
            skb: SKB,
            hops,
            freed: true,
        }
    }

    fn places(p: &Packet) -> Vec<(HopKind, u32, u32, bool)> {
        p.hops
            .iter()
            .map(|h| (h.kind, h.netns, h.ifindex, h.inferred))
            .collect()
    }

    #[test]
    fn a_syn_into_the_container_gets_the_transmits_the_path_set_sees() {
        let path = packet(healthy_syn());
        let mut rx = packet(
            healthy_syn()
                .into_iter()
                .filter(|h| h.kind != HopKind::Transmit)
                .collect(),
        );
        infer(&mut rx, &mut FakeHost::lab());
        // The client's eth0 (peer of the host's eth0), then docker0 and its port veth0c1
        // (the packet was routed on the host: it came in on eth0, not on a docker0 port).
        let want: Vec<_> = places(&path)
            .into_iter()
            .map(|(k, ns, i, _)| (k, ns, i, k == HopKind::Transmit))
            .collect();
        assert_eq!(places(&rx), want);
        // Each transmit carries the header its receive saw: DNAT happened before docker0.
        let tuples: Vec<_> = rx.hops.iter().map(|h| h.tuple).collect();
        assert_eq!(tuples[0], tuples[1]);
        assert_eq!(tuples[2], tuples[4]);
        assert_ne!(
            tuples[1], tuples[2],
            "the DNAT rewrite shows at docker0's transmit"
        );
        assert_eq!(rx.hops[2].len, rx.hops[4].len + 14);
        assert_eq!(rx.hops[2].ts_ns, rx.hops[4].ts_ns);
    }

    #[test]
    fn a_frame_bridged_from_another_port_never_leaves_through_the_bridge_device() {
        let mut host = FakeHost::lab();
        // A second container on docker0: veth0c2 (host, 5) ↔ eth0 (its namespace, 2).
        let other_ns = OUT_NS + 1;
        for (ns, idx, name, peer, master) in [
            (HOST_NS, 5, "veth0c2", 2, Some(3)),
            (other_ns, 2, "eth0", 5, None),
        ] {
            host.links.insert(
                (ns, idx),
                Link {
                    ifindex: idx,
                    name: name.into(),
                    kind: "veth".into(),
                    master,
                    link: Some(peer),
                    link_netnsid: Some(0),
                },
            );
        }
        let mut p = packet(vec![
            hop(ev(HopKind::Receive, 1_000, HOST_NS, 5)),
            hop(ev(HopKind::Receive, 2_000, CTR_NS, 2)),
        ]);
        infer(&mut p, &mut host);
        assert_eq!(
            places(&p),
            vec![
                (HopKind::Transmit, other_ns, 2, true),
                (HopKind::Receive, HOST_NS, 5, false),
                (HopKind::Transmit, HOST_NS, 4, true),
                (HopKind::Receive, CTR_NS, 2, false),
            ]
        );
        // Passed up to docker0 and routed back out (hairpin DNAT): through docker0 again.
        let mut p = packet(vec![
            hop(ev(HopKind::Receive, 1_000, HOST_NS, 5)),
            hop(ev(HopKind::Receive, 1_500, HOST_NS, 3)),
            hop(ev(HopKind::Receive, 2_000, CTR_NS, 2)),
        ]);
        infer(&mut p, &mut host);
        let kinds: Vec<_> = places(&p)
            .into_iter()
            .map(|(_, ns, i, inf)| (ns, i, inf))
            .collect();
        assert_eq!(
            kinds[3..],
            [(HOST_NS, 3, true), (HOST_NS, 4, true), (CTR_NS, 2, false)]
        );
    }

    #[test]
    fn an_identical_lab_beside_this_one_is_told_apart_by_nsid() {
        // A second lab, wired alike (same names, same ifindexes), in other namespaces.
        const TWIN: u32 = 10;
        let mut host = FakeHost::lab();
        let twins: Vec<_> = host
            .links
            .iter()
            .map(|(&(ns, idx), l)| ((ns + TWIN, idx), l.clone()))
            .collect();
        host.links.extend(twins);
        let rx = || {
            packet(vec![
                hop(ev(HopKind::Receive, 2_000, HOST_NS, 2)),
                hop(dnat(ev(HopKind::Receive, 7_000, CTR_NS, 2))),
            ])
        };
        // Nobody to ask: two namespaces pair alike, and neither is guessed.
        let mut p = rx();
        infer(&mut p, &mut host);
        assert_eq!(p.hops.len(), 2, "{:?}", places(&p));
        // Each namespace knows its neighbours by nsid 0, the twins' included.
        for base in [0, TWIN] {
            for (a, b) in [
                (HOST_NS, OUT_NS),
                (HOST_NS, CTR_NS),
                (OUT_NS, HOST_NS),
                (CTR_NS, HOST_NS),
            ] {
                host.nsids.insert((a + base, b + base), 0);
            }
        }
        let mut p = rx();
        infer(&mut p, &mut host);
        let spots: Vec<_> = places(&p)
            .into_iter()
            .map(|(_, ns, i, _)| (ns, i))
            .collect();
        assert_eq!(
            spots,
            [
                (OUT_NS, 2),
                (HOST_NS, 2),
                (HOST_NS, 3),
                (HOST_NS, 4),
                (CTR_NS, 2)
            ]
        );
    }

    #[test]
    fn a_device_without_a_peer_is_left_alone_and_loopback_sends_to_itself() {
        let mut host = FakeHost::lab();
        host.links.insert(
            (HOST_NS, 7),
            Link {
                ifindex: 7,
                name: "ens3".into(),
                ..Link::default()
            },
        );
        host.links.insert(
            (HOST_NS, LOOPBACK_IFINDEX),
            Link {
                ifindex: LOOPBACK_IFINDEX,
                name: "lo".into(),
                ..Link::default()
            },
        );
        let mut consume = ev(HopKind::Consume, 3_000, HOST_NS, 0);
        consume.location = 0xffff_ffff_8200_0000;
        let mut p = packet(vec![
            hop(ev(HopKind::Receive, 1_000, HOST_NS, 7)),
            hop(ev(HopKind::Receive, 2_000, HOST_NS, LOOPBACK_IFINDEX)),
            hop(consume),
        ]);
        infer(&mut p, &mut host);
        assert_eq!(
            places(&p),
            vec![
                (HopKind::Receive, HOST_NS, 7, false),
                (HopKind::Transmit, HOST_NS, LOOPBACK_IFINDEX, true),
                (HopKind::Receive, HOST_NS, LOOPBACK_IFINDEX, false),
                (HopKind::Consume, HOST_NS, 0, false),
            ]
        );
        // An unknown device (its namespace gone) infers nothing.
        let mut p = packet(vec![hop(ev(HopKind::Receive, 1_000, HOST_NS, 99))]);
        infer(&mut p, &mut host);
        assert_eq!(p.hops.len(), 1);
    }
}
