//! The outcome of one packet, decided from its hops: delivered, dropped, or unknown.

use crate::events::ipv4;
use serde::Serialize;
use tracer_common::HopKind;

use crate::{
    correlate::Packet,
    events::Hop,
    host::{HostFacts, Symbol},
    probes::DropReasons,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Reached a socket (consumed after a receive), left the host through a device, or was last
    /// seen received in the namespace that owns its destination address.
    Delivered,
    /// Freed with a drop reason.
    Dropped,
    /// Freed by the stack's housekeeping (a socket's queue purged as it closed): its end, not
    /// a loss. `--all-drops` counts these as drops.
    Ended,
    /// Its end was not observed.
    Unknown,
}

/// How a delivered packet ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Consumed right after a receive: taken by the stack (a socket) in that namespace.
    Socket,
    /// Consumed after a transmit: handed to a device that left the traced path.
    Transmitted,
    /// Last seen received in the namespace owning the destination address.
    LocalNamespace,
}

/// Where and why a packet was freed as a drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropSite {
    pub reason_code: u32,
    /// Kernel name without `SKB_DROP_REASON_`.
    pub reason: String,
    pub location: Option<Symbol>,
    pub location_addr: u64,
}

/// The verdict on one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub delivery: Option<Delivery>,
    pub drop: Option<DropSite>,
    /// [`Outcome::Ended`]: the free that ended it, its reason one of the housekeeping ones, and
    /// why that is not a drop.
    pub freed: Option<(DropSite, &'static str)>,
    /// Index of the last hop where the packet was on a device (receive or transmit, or the
    /// consume on the device that sent it when its transmit was not traced).
    pub last_hop: Option<usize>,
}

/// Decides the verdict for a finished packet.
pub fn decide(packet: &Packet, facts: &mut dyn HostFacts, reasons: &DropReasons) -> Verdict {
    let mut last_hop = packet
        .hops
        .iter()
        .rposition(|h| {
            matches!(
                h.kind,
                HopKind::Receive | HopKind::Transmit | HopKind::VethTransmit
            )
        })
        .or(if packet.hops.is_empty() {
            None
        } else {
            Some(0)
        });
    let last_device_hop = last_hop.and_then(|i| packet.hops.get(i));

    if let Some(drop) = packet.hops.iter().find(|h| h.kind == HopKind::Drop) {
        let site = DropSite {
            reason_code: drop.drop_reason,
            reason: reasons.name(drop.drop_reason),
            location: facts.symbol(drop.location),
            location_addr: drop.location,
        };
        let at = site.location.as_ref().map(|s| s.name.as_str());
        let (outcome, drop, freed) =
            match reasons.housekeeping(drop.drop_reason, at, drop.tcp_flags) {
                Some(why) => (Outcome::Ended, None, Some((site, why))),
                None => (Outcome::Dropped, Some(site), None),
            };
        return Verdict {
            outcome,
            delivery: None,
            drop,
            freed,
            last_hop,
        };
    }

    let delivery = if let Some(end) = packet.hops.last().filter(|h| h.kind == HopKind::Consume) {
        match last_device_hop {
            Some(rx) if rx.kind == HopKind::Receive && sent_unseen(rx, end, facts) => {
                last_hop = Some(packet.hops.len() - 1);
                Some(Delivery::Transmitted)
            }
            Some(rx) if rx.kind == HopKind::Receive => Some(Delivery::Socket),
            Some(tx) if matches!(tx.kind, HopKind::Transmit | HopKind::VethTransmit) => {
                Some(Delivery::Transmitted)
            }
            _ => None,
        }
    } else {
        last_device_hop
            .filter(|h| h.kind == HopKind::Receive)
            .and_then(|h| local_delivery(h, facts))
    };
    Verdict {
        outcome: if delivery.is_some() {
            Outcome::Delivered
        } else {
            Outcome::Unknown
        },
        delivery,
        drop: None,
        freed: None,
        last_hop,
    }
}

/// Consumed on another device of the namespace it was received in, addressed elsewhere: the
/// packet was forwarded, and its device freed it once sent (a NIC's TX completion), the
/// transmit itself unseen (`--hooks receive`). A socket's consume is for a local address.
fn sent_unseen(rx: &Hop, end: &Hop, facts: &mut dyn HostFacts) -> bool {
    end.ifindex != 0
        && end.netns == rx.netns
        && end.ifindex != rx.ifindex
        && end
            .tuple
            .or(rx.tuple)
            .is_some_and(|t| ipv4(t.dst).and_then(|a| facts.is_local(rx.netns, a)) == Some(false))
}

fn local_delivery(hop: &Hop, facts: &mut dyn HostFacts) -> Option<Delivery> {
    let dst = ipv4(hop.tuple?.dst)?;
    facts
        .is_local(hop.netns, dst)?
        .then_some(Delivery::LocalNamespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{events::fixture::*, host::fixture::FakeHost};

    fn reasons() -> DropReasons {
        DropReasons::from_pairs([("SKB_DROP_REASON_IP_INADDRERRORS".to_owned(), 87)])
    }

    #[test]
    fn drop_names_reason_location_and_last_device_hop() {
        let p = Packet {
            skb: SKB,
            hops: forwarding_off_syn(),
            freed: true,
        };
        let v = decide(&p, &mut FakeHost::lab(), &reasons());
        assert_eq!(v.outcome, Outcome::Dropped);
        let drop = v.drop.expect("drop site");
        assert_eq!(drop.reason, "IP_INADDRERRORS");
        assert_eq!(drop.location.map(|s| s.name), Some("ip_error".into()));
        assert_eq!(v.last_hop, Some(1), "the receive on eth0");
    }

    #[test]
    fn a_purge_at_close_ends_the_packet_and_all_drops_makes_it_a_drop() {
        // The FIN|ACK of a healthy connection, freed from the container socket's queue as it
        // closed.
        let mut hops = healthy_syn();
        let mut purge = dnat(ev(HopKind::Drop, 9_000, CTR_NS, 2));
        purge.drop_reason = 61;
        purge.location = 0xffff_ffff_81fe_d3a0;
        *hops.last_mut().expect("hops") = hop(purge);
        let p = Packet {
            skb: SKB,
            hops,
            freed: true,
        };
        let reasons = DropReasons::from_pairs([
            ("SKB_DROP_REASON_IP_INADDRERRORS".to_owned(), 87),
            ("SKB_DROP_REASON_QUEUE_PURGE".to_owned(), 61),
        ]);
        let v = decide(&p, &mut FakeHost::lab(), &reasons);
        assert_eq!(v.outcome, Outcome::Ended);
        assert_eq!(v.drop, None, "no drop for the rules to diagnose");
        let (site, why) = v.freed.expect("the free that ended it");
        assert_eq!(site.reason, "QUEUE_PURGE");
        assert!(why.contains("closed"), "{why}");
        let v = decide(&p, &mut FakeHost::lab(), &reasons.counting_all());
        assert_eq!(v.outcome, Outcome::Dropped);
        assert_eq!(v.drop.map(|d| d.reason), Some("QUEUE_PURGE".into()));
    }

    #[test]
    fn consumed_after_receive_is_delivered_to_a_socket() {
        let p = Packet {
            skb: SKB,
            hops: healthy_syn(),
            freed: true,
        };
        let v = decide(&p, &mut FakeHost::lab(), &reasons());
        assert_eq!(v.outcome, Outcome::Delivered);
        assert_eq!(v.delivery, Some(Delivery::Socket));
        assert_eq!(v.last_hop, Some(4));
    }

    #[test]
    fn consumed_on_another_device_for_an_address_elsewhere_was_transmitted() {
        // --hooks receive: in on eth0, DNATed and routed out of device 3, which freed it
        // once sent; the transmit is not traced.
        let p = Packet {
            skb: SKB,
            hops: vec![
                hop(ev(HopKind::Receive, 2_000, HOST_NS, 2)),
                hop(dnat(ev(HopKind::Consume, 4_000, HOST_NS, 3))),
            ],
            freed: true,
        };
        let v = decide(&p, &mut FakeHost::lab(), &reasons());
        assert_eq!(v.outcome, Outcome::Delivered);
        assert_eq!(v.delivery, Some(Delivery::Transmitted));
        assert_eq!(v.last_hop, Some(1), "the device that sent it");
        // The same consume for the host's own address is a socket's, whatever the device
        // word says.
        let p = Packet {
            skb: SKB,
            hops: vec![
                hop(ev(HopKind::Receive, 2_000, HOST_NS, 2)),
                hop(ev(HopKind::Consume, 4_000, HOST_NS, 3)),
            ],
            freed: true,
        };
        let v = decide(&p, &mut FakeHost::lab(), &reasons());
        assert_eq!(v.delivery, Some(Delivery::Socket));
        assert_eq!(v.last_hop, Some(0));
    }

    #[test]
    fn unfinished_packet_is_delivered_only_in_its_destination_namespace() {
        let mut hops = healthy_syn();
        hops.pop(); // no consume observed
        let p = Packet {
            skb: SKB,
            hops: hops.clone(),
            freed: false,
        };
        let v = decide(&p, &mut FakeHost::lab(), &reasons());
        assert_eq!(v.delivery, Some(Delivery::LocalNamespace));
        // Stopped on the bridge: not the destination's namespace.
        hops.truncate(3);
        let p = Packet {
            skb: SKB,
            hops,
            freed: false,
        };
        let v = decide(&p, &mut FakeHost::lab(), &reasons());
        assert_eq!(v.outcome, Outcome::Unknown);
    }
}
