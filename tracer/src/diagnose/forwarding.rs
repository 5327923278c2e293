//! Forwarding disabled on the input interface, or globally (field note 000).
//!
//! Kernel view: routing picks a forward route, `ip_route_input_slow` sees the input device's
//! `forwarding` off and installs `ip_error`, which frees the skb with IP_INADDRERRORS and —
//! because forwarding is off — sends no ICMP error. The client just times out.
//!
//! IPv6 differs (measured on 6.18): `ip6_forward` itself frees the skb with IP_INADDRERRORS,
//! again without an ICMPv6 error, when `net.ipv6.conf.all.forwarding` is 0, whatever the input
//! interface's own `forwarding` (for IPv6 that only makes an interface act as a router). Since
//! 6.17 an interface's `force_forwarding = 1` forwards from it alone.

use super::{Case, Confidence, Diagnosis, Premises, Rule, in_netns, sysctl_is};
use crate::events::ipv4;
use crate::{
    events::Hop,
    host::{HostFacts, Symbol, Unreadable},
};

pub const RULE: Rule = Rule {
    code: "forwarding_disabled",
    // ip_error frees the skb on the device it came in on: the drop names the interface.
    from_drop_alone: true,
    check,
    examine: Some(examine),
};

/// The switch that turns forwarding back on: the global one when it is off, else the
/// interface's own.
fn fix_command(globally_off: bool, key: &str) -> String {
    if globally_off {
        "sysctl -w net.ipv4.ip_forward=1".to_owned()
    } else {
        format!("sysctl -w {key}=1")
    }
}

fn check(case: &Case<'_>, facts: &mut dyn HostFacts) -> Option<Diagnosis> {
    let drop = case.verdict.drop.as_ref()?;
    if drop.reason != "IP_INADDRERRORS" {
        return None;
    }
    let input = case.input_hop()?;
    if input.tuple.is_some_and(|t| t.version() == 6) {
        return check6(case, facts, &input, drop.location.as_ref());
    }
    if drop.location.as_ref().is_some_and(|s| s.name != "ip_error") {
        return None;
    }
    let ifname = facts.interface(input.netns, input.ifindex)?.name;
    let key = format!("net.ipv4.conf.{ifname}.forwarding");
    // Unreadable, the switch is not confirmed off, but the drop is the one it makes: say both.
    let unread = match facts.sysctl(input.netns, &key) {
        Ok(Some(value)) if value == "0" => None,
        Ok(_) => return None,
        Err(u) => Some(u),
    };
    let seen = Seen {
        netns: input.netns,
        ns: facts.netns_label(input.netns),
        ifname,
        key,
        unread,
        all: facts
            .sysctl(input.netns, "net.ipv4.conf.all.forwarding")
            .ok()
            .flatten(),
        location: drop
            .location
            .as_ref()
            .map_or_else(|| "ip_error".to_owned(), ToString::to_string),
    };
    let globally_off = seen.all.as_deref() == Some("0");
    Some(Diagnosis {
        code: RULE.code,
        summary: seen.summary(case, &input, globally_off),
        evidence: seen.evidence(case, &input, facts),
        fix: Some(in_netns(
            facts,
            input.netns,
            &fix_command(globally_off, &seen.key),
        )),
        confidence: if seen.unread.is_some() {
            Confidence::Medium
        } else {
            Confidence::High
        },
        rule: None,
    })
}

/// What the rule read about the interface the packet came in on.
struct Seen {
    netns: u32,
    ns: String,
    ifname: String,
    /// `net.ipv4.conf.IFNAME.forwarding`
    key: String,
    /// Why the switch could not be read, when it could not.
    unread: Option<Unreadable>,
    /// `net.ipv4.conf.all.forwarding`.
    all: Option<String>,
    /// Where the kernel freed it.
    location: String,
}

impl Seen {
    fn evidence(&self, case: &Case<'_>, input: &Hop, facts: &mut dyn HostFacts) -> Vec<String> {
        let Self {
            ns, ifname, key, ..
        } = self;
        let mut evidence = vec![
            format!(
                "kfree_skb: reason IP_INADDRERRORS at {} on {ifname}, the interface it came in on",
                self.location
            ),
            match &self.unread {
                None => format!("{key} = 0 in netns {ns}"),
                Some(u) => format!("{u}: the drop is the one forwarding off makes, not confirmed"),
            },
        ];
        if let Some(all) = &self.all {
            evidence.push(format!(
                "net.ipv4.conf.all.forwarding = {all} in netns {ns}"
            ));
        }
        let at_drop = case.drop_hop().and_then(|h| h.tuple).or(input.tuple);
        if let Some(t) = at_drop
            .filter(|t| ipv4(t.dst).and_then(|a| facts.is_local(self.netns, a)) == Some(false))
        {
            evidence.push(format!(
                "destination {} is not a local address of netns {ns}: the packet had to be forwarded",
                t.dst
            ));
        }
        evidence.push("ip_error sends no ICMP error when the input interface does not forward: the client sees a timeout".into());
        evidence
    }

    fn summary(&self, case: &Case<'_>, input: &Hop, globally_off: bool) -> String {
        let Self {
            ns, ifname, key, ..
        } = self;
        let at_drop = case.drop_hop().and_then(|h| h.tuple).or(input.tuple);
        let arrived = input
            .tuple
            .map(|t| format!(" for {}:{}", t.dst, t.dport))
            .unwrap_or_default();
        let nat = match (input.tuple, at_drop) {
            (Some(before), Some(after))
                if before.dst != after.dst || before.dport != after.dport =>
            {
                format!(", was DNATed to {}:{}", after.dst, after.dport)
            }
            _ => String::new(),
        };
        let cause = if globally_off {
            "IP forwarding is off in this namespace (net.ipv4.ip_forward = 0)".to_owned()
        } else if self.unread.is_some() {
            format!("forwarding is most likely disabled on {ifname} ({key} could not be read)")
        } else {
            format!("forwarding is disabled on {ifname} ({key} = 0) although it is on elsewhere")
        };
        let meant_for = case
            .target
            .map(|t| format!(" for container {}", t.container.name))
            .unwrap_or_default();
        format!(
            "{}{meant_for} arrived on {ifname} (netns {ns}){arrived}{nat} and had to be forwarded, \
             but {cause}: routing drops it at ip_error without telling the sender. Make \
             the fix persistent in /etc/sysctl.d/.",
            case.packet_name(),
        )
    }
}

/// The one IPv6 switch that forwards.
const ALL6: &str = "net.ipv6.conf.all.forwarding";

/// An IPv6 packet freed in `ip6_forward` with forwarding off in its namespace.
fn check6(
    case: &Case<'_>,
    facts: &mut dyn HostFacts,
    input: &Hop,
    location: Option<&Symbol>,
) -> Option<Diagnosis> {
    if location.is_some_and(|s| s.name != "ip6_forward") {
        return None;
    }
    let netns = input.netns;
    let ifname = facts.interface(netns, input.ifindex)?.name;
    let unread = match facts.sysctl(netns, ALL6) {
        Ok(Some(value)) if value == "0" => None,
        Ok(_) => return None,
        Err(u) => Some(u),
    };
    let mut read = |key: String| {
        let value = facts.sysctl(netns, &key).ok().flatten();
        (key, value)
    };
    // Since 6.17: forwarding from this interface alone. Absent before.
    let force = read(format!("net.ipv6.conf.{ifname}.force_forwarding"));
    if force.1.as_deref() == Some("1") {
        return None;
    }
    let own = read(format!("net.ipv6.conf.{ifname}.forwarding"));
    let accept_ra = read(format!("net.ipv6.conf.{ifname}.accept_ra"));
    let ns = facts.netns_label(netns);
    let location = location.map_or_else(|| "ip6_forward".to_owned(), ToString::to_string);
    let mut evidence = vec![
        format!(
            "kfree_skb: reason IP_INADDRERRORS at {location} on {ifname}, the interface it came in on"
        ),
        match &unread {
            None => format!("{ALL6} = 0 in netns {ns}"),
            Some(u) => format!("{u}: the drop is the one IPv6 forwarding off makes, not confirmed"),
        },
    ];
    if own.1.as_deref() == Some("1") {
        evidence.push(format!(
            "{} = 1 does not forward: for IPv6 it only makes {ifname} act as a router; the kernel forwards when {ALL6} = 1",
            own.0
        ));
    }
    if force.1.is_some() {
        evidence.push(format!(
            "{} = 0: this kernel can also forward from {ifname} alone, with it set to 1",
            force.0
        ));
    }
    // With forwarding on, an interface with accept_ra = 1 ignores router advertisements: a
    // host whose default route comes from them would lose it. 2 keeps taking them.
    let keep_ra = accept_ra.1.as_deref() == Some("1");
    if keep_ra {
        evidence.push(format!(
            "{} = 1: once forwarding is on, {ifname} ignores router advertisements; the fix sets 2 so that a default route learned from them stays",
            accept_ra.0
        ));
    }
    evidence.push(
        "ip6_forward sends no ICMPv6 error when forwarding is off: the client sees a timeout"
            .into(),
    );
    let arrived = input
        .tuple
        .map(|t| format!(" for {}", t.dst_end()))
        .unwrap_or_default();
    let meant_for = case
        .target
        .map(|t| format!(" for container {}", t.container.name))
        .unwrap_or_default();
    let cause = match &unread {
        None => format!("IPv6 forwarding is off in this namespace ({ALL6} = 0)"),
        Some(_) => format!(
            "IPv6 forwarding is most likely off in this namespace ({ALL6} could not be read)"
        ),
    };
    let fix = if keep_ra {
        format!("sysctl -w {}=2 {ALL6}=1", accept_ra.0)
    } else {
        format!("sysctl -w {ALL6}=1")
    };
    Some(Diagnosis {
        code: RULE.code,
        summary: format!(
            "{}{meant_for} arrived on {ifname} (netns {ns}){arrived} and had to be forwarded, but \
             {cause}: ip6_forward drops it without telling the sender, whatever \
             net.ipv6.conf.{ifname}.forwarding says. Make the fix persistent in /etc/sysctl.d/.",
            case.packet_name(),
        ),
        evidence,
        fix: Some(in_netns(facts, netns, &fix)),
        confidence: if unread.is_some() {
            Confidence::Medium
        } else {
            Confidence::High
        },
        rule: None,
    })
}

/// Forwarding off globally while something needs it (a published port, a bridge), or off
/// on one interface while on globally: the first packet to cross would die at ip_error.
fn examine(p: &Premises, facts: &mut dyn HostFacts) -> Vec<Diagnosis> {
    let finding = |summary: String, evidence: Vec<String>, fix: String| Diagnosis {
        code: RULE.code,
        summary,
        evidence,
        fix: Some(fix),
        confidence: Confidence::High,
        rule: None,
    };
    if sysctl_is(facts, p.netns, "net.ipv4.ip_forward", "0") {
        if p.ports.is_empty() && !p.has_bridge() {
            return Vec::new();
        }
        return vec![finding(
            "IP forwarding is off (net.ipv4.ip_forward = 0): traffic to containers and published ports cannot be routed.".into(),
            vec!["net.ipv4.ip_forward = 0".into()],
            in_netns(facts, p.netns, &fix_command(true, "")),
        )];
    }
    let mut out = Vec::new();
    for l in p.interfaces() {
        let key = format!("net.ipv4.conf.{}.forwarding", l.name);
        if sysctl_is(facts, p.netns, &key, "0") {
            out.push(finding(
                format!(
                    "Forwarding is disabled on {} although net.ipv4.ip_forward = 1: packets arriving on {} for containers are dropped at ip_error, without an ICMP error.",
                    l.name, l.name
                ),
                vec![format!("{key} = 0"), "net.ipv4.ip_forward = 1".into()],
                in_netns(facts, p.netns, &fix_command(false, &key)),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::{
        correlate::Packet,
        diagnose::{Case, diagnose},
        events::fixture::*,
        host::fixture::FakeHost,
        probes::{DropReasons, HookSet},
        verdict::decide,
    };

    fn run(host: &mut FakeHost) -> Option<crate::diagnose::Diagnosis> {
        run_on(host, forwarding_off_syn())
    }

    fn run_on(
        host: &mut FakeHost,
        hops: Vec<crate::events::Hop>,
    ) -> Option<crate::diagnose::Diagnosis> {
        let packet = Packet {
            skb: SKB,
            hops,
            freed: true,
        };
        let reasons = DropReasons::from_pairs([("SKB_DROP_REASON_IP_INADDRERRORS".to_owned(), 87)]);
        let verdict = decide(&packet, host, &reasons);
        diagnose(
            &Case {
                packet: &packet,
                verdict: &verdict,
                flow: None,
                target: None,
                hooks: HookSet::Path,
            },
            host,
        )
    }

    #[test]
    fn names_the_interface_sysctl_and_fix() {
        let mut host = FakeHost::lab();
        host.set_sysctl(HOST_NS, "net.ipv4.conf.eth0.forwarding", "0");
        host.set_sysctl(HOST_NS, "net.ipv4.conf.all.forwarding", "1");
        let d = run(&mut host).expect("diagnosed");
        assert_eq!(d.code, "forwarding_disabled");
        assert_eq!(
            d.fix.as_deref(),
            Some("ip netns exec lab-host sysctl -w net.ipv4.conf.eth0.forwarding=1")
        );
        assert!(
            d.summary
                .starts_with("The SYN arrived on eth0 (netns lab-host)"),
            "{}",
            d.summary
        );
        assert!(
            d.summary.contains("DNATed to 172.17.0.2:80"),
            "{}",
            d.summary
        );
        assert!(
            d.evidence
                .iter()
                .any(|e| e == "net.ipv4.conf.eth0.forwarding = 0 in netns lab-host")
        );
        assert!(d.evidence[0].contains("ip_error+0x80"), "{:?}", d.evidence);
        assert!(
            d.evidence
                .iter()
                .any(|e| e.starts_with("destination 172.17.0.2 is not a local address")),
            "{:?}",
            d.evidence
        );
    }

    /// The namespace could not be entered to read the switch: the drop is still the one
    /// forwarding off makes, said with less confidence and why.
    #[test]
    fn an_unreadable_switch_is_said_not_taken_for_on() {
        let mut host = FakeHost::lab();
        host.unreadable.insert(
            (HOST_NS, "net.ipv4.conf.eth0.forwarding".into()),
            "setns: Operation not permitted".into(),
        );
        let d = run(&mut host).expect("diagnosed from the drop");
        assert_eq!(d.code, "forwarding_disabled");
        assert_eq!(d.confidence, crate::diagnose::Confidence::Medium);
        assert!(
            d.evidence.iter().any(|e| e.starts_with(&format!(
                "cannot read net.ipv4.conf.eth0.forwarding in netns {HOST_NS}: setns: Operation not permitted"
            ))),
            "{:?}",
            d.evidence
        );
        assert!(
            d.summary.contains("most likely disabled on eth0"),
            "{}",
            d.summary
        );
        assert_eq!(
            d.fix.as_deref(),
            Some("ip netns exec lab-host sysctl -w net.ipv4.conf.eth0.forwarding=1")
        );
    }

    #[test]
    fn global_forwarding_off_fixes_ip_forward() {
        let mut host = FakeHost::lab();
        host.set_sysctl(HOST_NS, "net.ipv4.conf.eth0.forwarding", "0");
        host.set_sysctl(HOST_NS, "net.ipv4.conf.all.forwarding", "0");
        let d = run(&mut host).expect("diagnosed");
        assert_eq!(
            d.fix.as_deref(),
            Some("ip netns exec lab-host sysctl -w net.ipv4.ip_forward=1")
        );
    }

    #[test]
    fn no_diagnosis_when_forwarding_is_on_or_unknown() {
        let mut host = FakeHost::lab();
        host.set_sysctl(HOST_NS, "net.ipv4.conf.eth0.forwarding", "1");
        assert_eq!(run(&mut host), None);
        assert_eq!(
            run(&mut FakeHost::lab()),
            None,
            "sysctl not there: say nothing (unreadable is the test above)"
        );
    }

    /// IPv6: the switch is `all`, an interface's own `forwarding = 1` is named as not
    /// forwarding, and a fix that turns forwarding on keeps router advertisements coming on
    /// an interface that takes them.
    #[test]
    fn ipv6_forwarding_off_names_the_one_switch_that_forwards() {
        let mut host = FakeHost::lab();
        host.set_sysctl(HOST_NS, "net.ipv6.conf.all.forwarding", "0");
        host.set_sysctl(HOST_NS, "net.ipv6.conf.eth0.forwarding", "1");
        host.set_sysctl(HOST_NS, "net.ipv6.conf.eth0.accept_ra", "1");
        let d = run_on(&mut host, forwarding_off_syn6()).expect("diagnosed");
        assert_eq!(d.code, "forwarding_disabled");
        assert_eq!(
            d.fix.as_deref(),
            Some(
                "ip netns exec lab-host sysctl -w net.ipv6.conf.eth0.accept_ra=2 net.ipv6.conf.all.forwarding=1"
            )
        );
        assert!(
            d.summary.starts_with(
                "The SYN arrived on eth0 (netns lab-host) for [fd00:17::2]:80 and had to be forwarded, but IPv6 forwarding is off in this namespace (net.ipv6.conf.all.forwarding = 0): ip6_forward drops it"
            ),
            "{}",
            d.summary
        );
        let said = d.evidence.join("\n");
        for want in [
            "reason IP_INADDRERRORS at ip6_forward+0x654 on eth0",
            "net.ipv6.conf.all.forwarding = 0 in netns lab-host",
            "net.ipv6.conf.eth0.forwarding = 1 does not forward",
            "net.ipv6.conf.eth0.accept_ra = 1: once forwarding is on",
            "no ICMPv6 error",
        ] {
            assert!(said.contains(want), "wanted `{want}` in {said}");
        }
        assert!(
            !said.contains("force_forwarding"),
            "a kernel without it: {said}"
        );
        assert!(!said.contains("ipv4"), "{said}");
    }

    /// A kernel with `force_forwarding` (6.17+): said as the per-interface way; set to 1 it
    /// forwards, so the drop is not this rule's; forwarding on: not this rule's either.
    #[test]
    fn ipv6_force_forwarding_is_offered_where_the_kernel_has_it() {
        let mut host = FakeHost::lab();
        host.set_sysctl(HOST_NS, "net.ipv6.conf.all.forwarding", "0");
        host.set_sysctl(HOST_NS, "net.ipv6.conf.eth0.force_forwarding", "0");
        host.set_sysctl(HOST_NS, "net.ipv6.conf.eth0.accept_ra", "0");
        let d = run_on(&mut host, forwarding_off_syn6()).expect("diagnosed");
        assert!(
            d.evidence.iter().any(|e| e.starts_with(
                "net.ipv6.conf.eth0.force_forwarding = 0: this kernel can also forward from eth0 alone"
            )),
            "{:?}",
            d.evidence
        );
        assert_eq!(
            d.fix.as_deref(),
            Some("ip netns exec lab-host sysctl -w net.ipv6.conf.all.forwarding=1"),
            "accept_ra 0: nothing to keep"
        );
        host.set_sysctl(HOST_NS, "net.ipv6.conf.eth0.force_forwarding", "1");
        assert_eq!(run_on(&mut host, forwarding_off_syn6()), None);
        host.set_sysctl(HOST_NS, "net.ipv6.conf.eth0.force_forwarding", "0");
        host.set_sysctl(HOST_NS, "net.ipv6.conf.all.forwarding", "1");
        assert_eq!(run_on(&mut host, forwarding_off_syn6()), None);
        // The IPv4 switches say nothing about an IPv6 packet.
        let mut v4_only = FakeHost::lab();
        v4_only.set_sysctl(HOST_NS, "net.ipv4.conf.eth0.forwarding", "0");
        assert_eq!(run_on(&mut v4_only, forwarding_off_syn6()), None);
    }
}
