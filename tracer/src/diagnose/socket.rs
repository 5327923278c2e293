//! The packet reached its destination namespace and nothing listens there.

use super::{Case, Confidence, Diagnosis, Rule, in_netns};
use crate::events::ipv4;
use crate::{host::HostFacts, net::Proto};

pub const NO_LISTENER: Rule = Rule {
    code: "no_listener",
    // Freed by TCP/UDP in the namespace and on the device that received it.
    from_drop_alone: true,
    check,
    examine: None,
};

fn check(case: &Case<'_>, facts: &mut dyn HostFacts) -> Option<Diagnosis> {
    let drop = case.verdict.drop.as_ref()?;
    if drop.reason != "NO_SOCKET" {
        return None;
    }
    let input = case.input_hop()?;
    let t = case.drop_hop().and_then(|h| h.tuple).or(input.tuple)?;
    let first = case.packet.hops.iter().find_map(|h| h.tuple).unwrap_or(t);
    let ns = facts.netns_label(input.netns);
    let proto = t.proto.name();
    let owner = facts
        .container_device(input.netns, input.ifindex)
        .filter(|d| !d.host_side);
    let whom = owner.as_ref().map_or_else(
        || format!("netns {ns}"),
        |d| format!("container {}", d.container.name),
    );
    let mut evidence = vec![format!(
        "kfree_skb: reason NO_SOCKET at {} in netns {ns}: no {proto} socket for {}",
        drop.location
            .as_ref()
            .map_or_else(|| "?".into(), |s| s.name.clone()),
        t.dst_end()
    )];
    // Docker forwards a published port here: the mapping may name the wrong port.
    let published = ipv4(t.dst).and_then(|dst| facts.published_to(dst, t.dport, t.proto));
    if (first.dst, first.dport) != (t.dst, t.dport) {
        evidence.push(format!(
            "the packet was sent to {} and DNATed to {}: the path worked",
            first.dst_end(),
            t.dst_end()
        ));
    } else if let Some(p) = &published {
        // Seen only as it died (`--hooks drops`): the mapping says where it came from.
        evidence.push(format!(
            "Docker publishes host port {} to {}:{} (container {}): clients of port {} are refused here",
            p.host_port, t.dst, t.dport, p.container.name, p.host_port
        ));
    }
    if t.proto == Proto::TCP {
        evidence.push("TCP answered with a RST: the client sees \"connection refused\"".into());
    }
    let ss = if t.proto == Proto::TCP {
        "ss -ltnp"
    } else {
        "ss -lunp"
    };
    Some(Diagnosis {
        code: NO_LISTENER.code,
        summary: format!(
            "{} reached {whom} on {}, but nothing listens on {proto} port {} there.",
            case.packet_name(),
            t.dst_end(),
            t.dport
        ),
        evidence,
        fix: Some(format!(
            "{}   # then start the service on {} (not {}) in {whom}{}",
            in_netns(facts, input.netns, ss),
            if t.version() == 6 {
                format!("[::]:{}", t.dport)
            } else {
                format!("0.0.0.0:{}", t.dport)
            },
            if t.version() == 6 { "::1" } else { "127.0.0.1" },
            published.map_or_else(String::new, |p| format!(
                ", or publish the port it listens on (-p {}:<that port>)",
                p.host_port
            ))
        )),
        confidence: Confidence::High,
        rule: None,
    })
}

#[cfg(test)]
mod tests {
    use tracer_common::HopKind;

    use crate::{
        correlate::{FlowTable, Packet},
        diagnose::judge,
        events::fixture::*,
        host::fixture::FakeHost,
        probes::{DropReasons, HookSet},
    };

    /// `--hooks drops`: a SYN to published port 10001 refused inside the container, seen only
    /// as it died there, addressed to the container's port (no conntrack in its namespace).
    #[test]
    fn a_lone_refusal_in_a_container_names_the_port_docker_publishes_to_it() {
        let mut host = FakeHost::lab_with_docker();
        let mut drop = ev(HopKind::Drop, 3_000, CTR_NS, 2);
        drop.daddr = tracer_common::event::Addr::v4([172, 17, 0, 2]);
        drop.dport = 80;
        drop.drop_reason = 3;
        let packet = Packet {
            skb: SKB,
            hops: vec![hop(drop)],
            freed: true,
        };
        let flow = FlowTable::new(4).observe(&packet);
        let reasons = DropReasons::from_pairs([("SKB_DROP_REASON_NO_SOCKET".to_owned(), 3)]);
        let r = judge(packet, flow, &mut host, &reasons, HookSet::Drops);
        let d = r.diagnosis.expect("diagnosed from the drop alone");
        assert_eq!(d.code, "no_listener");
        assert!(
            d.summary.contains(
                "reached container web-1 on 172.17.0.2:80, but nothing listens on tcp port 80"
            ),
            "{}",
            d.summary
        );
        assert!(
            d.evidence.iter().any(|e| e
                == "Docker publishes host port 10001 to 172.17.0.2:80 (container web-1): clients of port 10001 are refused here"),
            "{:#?}",
            d.evidence
        );
        let fix = d.fix.unwrap_or_default();
        assert!(
            fix.ends_with(
                "# then start the service on 0.0.0.0:80 (not 127.0.0.1) in container web-1, or publish the port it listens on (-p 10001:<that port>)"
            ),
            "{fix}"
        );
    }
}
