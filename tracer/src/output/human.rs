//! The timeline a person reads: one block per packet, hops with relative times, NAT rewrites
//! where they happen, then the verdict and diagnosis in plain words.

use std::{fmt::Write as _, io::Write, net::SocketAddr};

use tracer_common::HopKind;

use super::{Output, Ready, Stats};
use crate::{
    connection::Connection,
    correlate::flow::{Direction, RewriteKind},
    diagnose::{Confidence, Diagnosis, describe_rule},
    events::Hop,
    flood::Summary,
    probes::HookSet,
    report::{ConntrackView, HopView, Report},
    verdict::{Delivery, Outcome},
};

pub struct HumanOutput<W: Write> {
    out: W,
}

impl<W: Write> HumanOutput<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

/// Renders one report as text (also used by `cargo xtask demo` through the binary): a title,
/// one line per hop, the verdict, the target and the diagnosis.
pub fn render(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", title(report));
    let t0 = report.packet.first_ts();
    let mut prev_tuple = None;
    let mut shown_ct = None;
    for (i, (hop, view)) in report.packet.hops.iter().zip(&report.hops).enumerate() {
        let at = match &view.container_interface {
            Some(inner) => format!("{} ({inner}) @ {}", view.ifname, view.netns_name),
            None => format!("{} @ {}", view.ifname, view.netns_name),
        };
        let mut detail = String::new();
        if let Some(t) = hop.tuple.filter(|t| Some(*t) != prev_tuple) {
            let _ = write!(detail, "{t}{}", nat_mark(report, i));
            prev_tuple = Some(t);
        }
        if !view.tcp_flags.is_empty() && i == 0 {
            let _ = write!(detail, "  {}", view.tcp_flags);
        }
        hop_detail(&mut detail, hop, view);
        let rel = hop.ts_ns.saturating_sub(t0) as f64 / 1000.0;
        let _ = writeln!(
            s,
            "  {:>10}  {:<14} {:<28} {}",
            format!("+{rel:.1}µs"),
            view.hop,
            at,
            detail.trim_start()
        );
        // A drop repeats the entry the hop before it showed: said once.
        if let Some(ct) = view.conntrack.as_ref().filter(|ct| Some(*ct) != shown_ct) {
            let _ = writeln!(s, "{:>56}{}", "", conntrack_line(ct));
            shown_ct = Some(ct);
        }
        if let Some(stack) = &view.stack {
            stack_lines(&mut s, stack);
        }
    }
    let _ = writeln!(s, "  => {}", verdict_line(report));
    if let Some(t) = &report.target {
        let _ = writeln!(
            s,
            "  target: container {} ({}, {}) — port {} published to {}:{}",
            t.container.name,
            t.container.id,
            t.container.image,
            t.published_port,
            t.address.as_deref().unwrap_or("?"),
            t.port
        );
    }
    if let Some(d) = &report.diagnosis {
        diagnosis(&mut s, d);
    }
    s
}

/// `SYN 203.0.113.2:41822 → 203.0.113.1:10001 (tcp)  [skb 0x..., flow 1]`.
fn title(report: &Report) -> String {
    let flags = report
        .packet
        .hops
        .first()
        .map_or("", |h| h.tcp_flags.name());
    let quoted = report.packet.hops.iter().find_map(|h| h.quoted);
    let what = report.first_tuple().map_or_else(
        || "non-IP packet".to_owned(),
        |t| match quoted {
            Some(q) => format!(
                "ICMP {} {} → {} about {} ({})",
                q.error.name(),
                t.src,
                t.dst,
                q.tuple,
                q.tuple.proto
            ),
            None => {
                let flags = if flags.is_empty() { "packet" } else { flags };
                format!("{flags} {t} ({})", t.proto)
            }
        },
    );
    let flow = report
        .flow
        .as_ref()
        .map_or(String::new(), |f| match f.direction {
            Direction::Original => format!(", flow {}", f.id),
            Direction::Reply => format!(", flow {} reply", f.id),
            Direction::Related => format!(", flow {} related", f.id),
        });
    format!("{what}  [skb {:#x}{flow}]", report.packet.skb)
}

/// `  [DNAT]` where the flow saw hop `i` rewrite the header.
fn nat_mark(report: &Report, i: usize) -> &'static str {
    report
        .flow
        .as_ref()
        .and_then(|f| f.rewrites.iter().find(|r| r.hop == i))
        .map_or("", |r| match r.kind {
            RewriteKind::Dnat => "  [DNAT]",
            RewriteKind::Snat => "  [SNAT]",
            RewriteKind::Nat => "  [NAT]",
        })
}

/// What a hop adds after its header: the netfilter verdict, the peer, where it came in and
/// was sent before NAT, whether it is inferred, and where it was freed.
fn hop_detail(detail: &mut String, hop: &Hop, view: &HopView) {
    if let Some(nf) = &view.netfilter {
        let _ = write!(detail, "  {} {} → {}", nf.family, nf.hook, nf.verdict);
    }
    if let Some(peer) = &view.peer {
        let arrow = if hop.kind == HopKind::VethTransmit {
            "peer"
        } else {
            "out"
        };
        let _ = write!(detail, "  {arrow} {} @ {}", peer.ifname, peer.netns_name);
    }
    if let Some(input) = view.in_ifname.as_ref().filter(|i| **i != view.ifname) {
        let _ = write!(detail, "  came in on {input}");
    }
    if let (Some(e), Some(t)) = (&view.entered, hop.tuple)
        && (e.dst, e.dport.unwrap_or(0)) != (t.dst, t.dport)
    {
        let to = e.dport.map_or_else(
            || e.dst.to_string(),
            |p| SocketAddr::new(e.dst, p).to_string(),
        );
        let _ = write!(detail, "  (sent to {to} before NAT)");
    }
    if view.repeated {
        let _ = write!(
            detail,
            "  (as its flow's full packets went: not traced for this one)"
        );
    }
    if view.inferred {
        let _ = write!(detail, "  (inferred from the receive after it)");
    }
    if view.followed {
        let _ = write!(detail, "  (followed: it answers a traced packet)");
    }
    if let Some(mark) = view.mark {
        let _ = write!(detail, "  mark {mark:#x}");
    }
    if let Some(reason) = &view.drop_reason {
        let _ = write!(
            detail,
            "  {reason} at {}",
            view.location.as_deref().unwrap_or("?")
        );
    } else if let Some(loc) = &view.location {
        let _ = write!(detail, "  at {loc}");
    }
}

/// `ct ESTABLISHED reply: 198.51.100.7:40000 → 192.0.2.10:8080, reply 10.88.0.5:443 →
/// 198.51.100.7:40000 [CONFIRMED DNAT]`: the state, which direction the packet is, the
/// entry's two tuples (NAT is where they differ) and its status; zone and mark when set.
fn conntrack_line(ct: &ConntrackView) -> String {
    let mut s = format!("ct {} {}", ct.state, ct.direction);
    if let (Some(o), Some(r)) = (ct.original, ct.reply) {
        let _ = write!(s, ": {o}, reply {r}");
    }
    let status: Vec<&str> = ct.status.names().collect();
    if !status.is_empty() {
        let _ = write!(s, " [{}]", status.join(" "));
    }
    if ct.zone != 0 {
        let _ = write!(s, " zone {}", ct.zone);
    }
    if ct.mark != 0 {
        let _ = write!(s, " mark {:#x}", ct.mark);
    }
    s
}

/// The frames of a drop's kernel stack, innermost first, one per line.
fn stack_lines(s: &mut String, stack: &[String]) {
    for (i, frame) in stack.iter().enumerate() {
        let lead = if i == 0 { "stack" } else { "" };
        let _ = writeln!(s, "{:>50}{lead:<6}{frame}", "");
    }
}

/// `DROPPED after eth0 (root): IP_INADDRERRORS at ip_error`, `DELIVERED: ...`, `UNKNOWN: ...`.
fn verdict_line(report: &Report) -> String {
    let last = report
        .last_hop()
        .map(|h| format!("{} ({})", h.ifname, h.netns_name));
    match report.verdict.outcome {
        Outcome::Dropped => {
            let d = report.verdict.drop.as_ref();
            format!(
                "DROPPED{}: {} at {}",
                last.map(|l| format!(" after {l}")).unwrap_or_default(),
                d.map_or("?", |d| d.reason.as_str()),
                d.and_then(|d| d.location.as_ref())
                    .map_or_else(|| "an unknown location".into(), |s| s.name.clone()),
            )
        }
        Outcome::Delivered => {
            let how = match report.verdict.delivery {
                Some(Delivery::Socket) => "taken by the stack (a socket)",
                Some(Delivery::Transmitted) => "transmitted out of",
                Some(Delivery::LocalNamespace) | None => "received by its destination at",
            };
            format!("DELIVERED: {how} {}", last.unwrap_or_default())
        }
        Outcome::Ended => {
            let freed = report.verdict.freed.as_ref();
            format!(
                "ENDED{}: {} at {} — {} (the stack's housekeeping, not a drop; --all-drops counts it)",
                last.map(|l| format!(" after {l}")).unwrap_or_default(),
                freed.map_or("?", |(d, _)| d.reason.as_str()),
                freed
                    .and_then(|(d, _)| d.location.as_ref())
                    .map_or_else(|| "an unknown location".into(), |s| s.name.clone()),
                freed.map_or("", |(_, why)| why),
            )
        }
        Outcome::Unknown => format!(
            "UNKNOWN: last seen at {}; its end was not observed",
            last.unwrap_or_else(|| "?".into())
        ),
    }
}

/// The diagnosis block: code and summary, the rule, the evidence, the fix.
fn diagnosis(s: &mut String, d: &Diagnosis) {
    let confidence = match d.confidence {
        Confidence::High => "",
        Confidence::Medium => " (medium confidence)",
        Confidence::Low => " (low confidence)",
    };
    let _ = writeln!(s, "  diagnosis [{}]{confidence}: {}", d.code, d.summary);
    if let Some(rule) = &d.rule {
        let _ = writeln!(s, "    rule: {}", describe_rule(rule));
    }
    for e in &d.evidence {
        let _ = writeln!(s, "    evidence: {e}");
    }
    if let Some(fix) = &d.fix {
        let _ = writeln!(s, "    fix: {fix}");
    }
}

impl<W: Write> Output for HumanOutput<W> {
    fn ready(&mut self, ready: &Ready) -> std::io::Result<()> {
        writeln!(
            self.out,
            "pathtrace: tracing {} with the {} backend ({}) — {}. Ctrl-C to stop.",
            ready.filter,
            ready.backend,
            ready.hooks.join(", "),
            ready.backend_reason
        )?;
        if ready.docker.starts_with("unavailable") {
            writeln!(
                self.out,
                "pathtrace: Docker {}: interfaces are shown by name, without containers",
                ready.docker
            )?;
        } else {
            writeln!(self.out, "pathtrace: Docker {}", ready.docker)?;
        }
        match ready.hook_set {
            HookSet::Path => {}
            HookSet::Receive => writeln!(
                self.out,
                "pathtrace: hook set receive: every device a packet enters, where it is taken and where it dies; the veth and bridge transmits between them are inferred from the receives (marked so), without the transmit tracepoint's cost (--hooks path traces them)"
            )?,
            HookSet::Drops => writeln!(
                self.out,
                "pathtrace: drops only (--hooks drops): no path before a drop; causes are inferred from the drop, its input interface and where conntrack says it was sent (trace without it to see every hop)"
            )?,
        }
        if ready.floods.contains("backend") {
            writeln!(self.out, "pathtrace: {}", ready.floods)?;
        }
        for skipped in &ready.skipped_hooks {
            writeln!(self.out, "pathtrace: without {skipped}")?;
        }
        self.out.flush()
    }

    fn report(&mut self, report: &Report) -> std::io::Result<()> {
        match report.retransmission {
            // The story was told with the first copy: one line for each one after it.
            Some(n) => writeln!(
                self.out,
                "{}  retransmission {n}: {}",
                title(report),
                verdict_line(report)
            )?,
            None => writeln!(self.out, "\n{}", render(report).trim_end())?,
        }
        self.out.flush()
    }

    fn connection(&mut self, c: &Connection) -> std::io::Result<()> {
        writeln!(self.out, "\n{}", connection_line(c).trim_end())?;
        self.out.flush()
    }

    fn summary(&mut self, s: &Summary) -> std::io::Result<()> {
        writeln!(self.out, "{}", summary_line(s))?;
        self.out.flush()
    }

    fn stats(&mut self, s: &Stats) -> std::io::Result<()> {
        writeln!(
            self.out,
            "\npathtrace: {} ({} delivered, {} dropped, {}{} unknown) in {}; {} read, {} lost in the kernel{}{}",
            counted(s.packets, "packet"),
            s.delivered,
            s.dropped,
            if s.ended > 0 {
                format!("{} ended at a close, ", s.ended)
            } else {
                String::new()
            },
            s.unknown,
            counted(s.flows, "flow"),
            counted(s.events, "event"),
            s.lost,
            if s.lost > 0 {
                " — the ring buffer was full: narrow the filter"
            } else {
                ""
            },
            if s.summarised > 0 || s.kernel.uncounted > 0 {
                format!(
                    "; and {} of floods counted in the kernel ({} dropped), {} uncounted",
                    counted(s.summarised, "packet"),
                    s.summarised_dropped,
                    s.kernel.uncounted
                )
            } else {
                String::new()
            }
        )?;
        self.out.flush()
    }
}

/// `connection 3: 203.0.113.2:41822 → 203.0.113.1:10001 (tcp) reply dropped — SYN delivered
/// to web-1:80; SYN-ACK dropped ...`, and the step that explains it with its fix.
pub fn connection_line(c: &Connection) -> String {
    let mut s = format!(
        "connection {}: {} ({}) {} — {}\n",
        c.id,
        c.tuple,
        c.tuple.proto,
        serde_json::to_value(c.state)
            .ok()
            .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
            .unwrap_or_default(),
        c.summary
    );
    if let Some(step) = c.explained_by.and_then(|i| c.steps.get(i)) {
        let _ = writeln!(
            s,
            "  explained by the {}'s diagnosis{} (skb {})",
            step.packet,
            step.code.map(|c| format!(" [{c}]")).unwrap_or_default(),
            step.skb
        );
        if let Some(fix) = &step.fix {
            let _ = writeln!(s, "  fix: {fix}");
        }
    }
    if let Some(d) = &c.diagnosis {
        diagnosis(&mut s, d);
    }
    s
}

/// `  … and 284,416 more packets of this flow (31.2 MB, 150,812/s) took the same path and
/// were DROPPED: ...`, under the full packet they repeat.
pub fn summary_line(s: &Summary) -> String {
    let more = format!(
        "{} more {} ({}, {}/s)",
        grouped(s.packets),
        if s.packets == 1 { "packet" } else { "packets" },
        bytes(s.bytes),
        grouped(s.rate().round() as u64),
    );
    let total = if s.total_packets > s.packets {
        format!("; {} in all", grouped(s.total_packets))
    } else {
        String::new()
    };
    let state = if s.ended { "flood over" } else { "still going" };
    match &s.like {
        Some(r) => {
            let to = r
                .first_tuple()
                .map(|t| format!("{} → {} ({})", t.src, t.dst_end(), t.proto))
                .unwrap_or_default();
            let code = r
                .diagnosis
                .as_ref()
                .map(|d| format!(" [{}]", d.code))
                .unwrap_or_default();
            format!(
                "  … and {more} of this flow {to} took the same path as skb {} and ended the same way: {}{code}{total} ({state})",
                crate::report::SkbAddr(r.packet.skb),
                verdict_line(r),
            )
        }
        None => format!(
            "  … and {more} of flow {:08x} took the same path as its full packets, none of which is kept to show{total} ({state})",
            s.flow
        ),
    }
}

/// `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `31.2 MB`, `912 B`.
fn bytes(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.2} GB", n as f64 / 1e9),
    }
}

/// `1 packet`, `3 packets`.
fn counted(n: u64, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        correlate::{FlowTable, Packet},
        events::fixture::*,
        host::fixture::FakeHost,
        probes::{DropReasons, HookSet},
    };

    fn report(hops: Vec<crate::events::Hop>, host: &mut FakeHost) -> Report {
        let packet = Packet {
            skb: SKB,
            hops,
            freed: true,
        };
        let flow = FlowTable::new(8).observe(&packet);
        let reasons = DropReasons::from_pairs([("SKB_DROP_REASON_IP_INADDRERRORS".to_owned(), 87)]);
        Report::build(packet, flow, host, &reasons, HookSet::Path)
    }

    /// `--hooks drops`: kfree_skb is the packet's only hop.
    fn drop_alone(
        host: &mut FakeHost,
        reason: (&str, i64),
        mut drop: crate::events::Hop,
    ) -> Report {
        drop.drop_reason = reason.1 as u32;
        let packet = Packet {
            skb: SKB,
            hops: vec![drop],
            freed: true,
        };
        let reasons =
            DropReasons::from_pairs([(format!("SKB_DROP_REASON_{}", reason.0), reason.1)]);
        Report::build(packet, None, host, &reasons, HookSet::Drops)
    }

    #[test]
    fn inferred_transmits_are_shown_and_marked_as_such() {
        let mut host = FakeHost::lab();
        let mut packet = Packet {
            skb: SKB,
            hops: healthy_syn()
                .into_iter()
                .filter(|h| h.kind != HopKind::Transmit)
                .collect(),
            freed: true,
        };
        crate::correlate::transmits::infer(&mut packet, &mut host);
        let flow = FlowTable::new(8).observe(&packet);
        let r = Report::build(
            packet,
            flow,
            &mut host,
            &DropReasons::from_pairs([]),
            HookSet::Receive,
        );
        let text = render(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].contains("transmit       eth0 @ lab-out"), "{text}");
        assert!(
            lines[3].contains("transmit       docker0 @ lab-host"),
            "{text}"
        );
        assert!(
            lines[3].contains("→ 172.17.0.2:80  [DNAT]  (inferred from the receive after it)"),
            "the rewrite shows where the path set shows it: {text}"
        );
        assert!(
            lines[4].contains("transmit       veth0c1 @ lab-host"),
            "{text}"
        );
        assert!(!lines[5].contains("inferred"), "a traced receive: {text}");
        assert!(
            text.contains("=> DELIVERED: taken by the stack (a socket) eth0 (lab-ctr)"),
            "{text}"
        );
        let json = serde_json::to_value(&r.hops).expect("json");
        let marked: Vec<bool> = json
            .as_array()
            .expect("hops")
            .iter()
            .map(|h| h["inferred"] == true)
            .collect();
        assert_eq!(marked, [true, false, true, true, false, false]);
        assert!(json[1].get("inferred").is_none(), "absent, not false");
    }

    #[test]
    fn a_drop_traced_alone_is_diagnosed_when_the_drop_proves_the_cause() {
        // ip_error frees the skb on its input device: the one hop names the interface whose
        // forwarding sysctl the rule reads.
        let mut host = FakeHost::lab();
        host.set_sysctl(HOST_NS, "net.ipv4.conf.eth0.forwarding", "0");
        host.set_sysctl(HOST_NS, "net.ipv4.conf.all.forwarding", "1");
        let drop = forwarding_off_syn()
            .into_iter()
            .find(|h| h.kind == HopKind::Drop)
            .expect("a drop hop");
        let r = drop_alone(&mut host, ("IP_INADDRERRORS", 87), drop);
        let d = r.diagnosis.as_ref().expect("diagnosed from the drop alone");
        assert_eq!(d.code, "forwarding_disabled");
        assert!(
            d.summary
                .starts_with("The SYN arrived on eth0 (netns lab-host) for 172.17.0.2:80"),
            "{}",
            d.summary
        );
        assert_eq!(
            d.evidence[0],
            "kfree_skb: reason IP_INADDRERRORS at ip_error+0x80 on eth0, the interface it came in on"
        );
        let text = render(&r);
        assert!(
            text.contains("=> DROPPED after eth0 (lab-host): IP_INADDRERRORS at ip_error"),
            "{text}"
        );
        // The one hop says where the SYN was sent before DNAT (conntrack's tuple).
        assert!(
            text.contains(
                "203.0.113.2:40000 → 172.17.0.2:80  SYN  (sent to 203.0.113.1:10001 before NAT)  IP_INADDRERRORS"
            ),
            "{text}"
        );
        assert!(
            text.contains("fix: ip netns exec lab-host sysctl -w net.ipv4.conf.eth0.forwarding=1"),
            "{text}"
        );
    }

    #[test]
    fn timeline_shows_hops_nat_verdict_and_fix() {
        let mut host = FakeHost::lab();
        host.set_sysctl(HOST_NS, "net.ipv4.conf.eth0.forwarding", "0");
        let text = render(&report(forwarding_off_syn(), &mut host));
        assert!(text.contains("transmit       eth0 @ lab-out"), "{text}");
        assert!(
            text.contains("203.0.113.2:40000 → 172.17.0.2:80  [DNAT]"),
            "{text}"
        );
        assert!(text.contains("IP_INADDRERRORS at ip_error+0x80"), "{text}");
        assert!(
            text.contains("=> DROPPED after eth0 (lab-host): IP_INADDRERRORS at ip_error"),
            "{text}"
        );
        assert!(
            text.contains("fix: ip netns exec lab-host sysctl -w net.ipv4.conf.eth0.forwarding=1"),
            "{text}"
        );
    }

    /// `--stack` and conntrack's view on a SYN-ACK dropped on its way back: the entry's
    /// tuples show the DNAT the reply is to be undone by; the stack names who dropped it.
    #[test]
    fn a_drop_shows_its_conntrack_entry_and_kernel_stack() {
        let mut host = FakeHost::lab();
        host.symbols.push((0xffff_ffff_a000_0000, "bpf_trace_run4"));
        host.stacks.insert(
            3,
            vec![
                0xffff_ffff_a000_0040,
                0xffff_ffff_81fe_d3a8,
                0xffff_ffff_8200_0010,
            ],
        );
        let mut drop = with_reply_ct(syn_ack_ev(HopKind::Drop, 3_000, HOST_NS, 3));
        drop.stack = 4; // id 3, plus one
        drop.drop_reason = 87;
        let hops = vec![
            hop(syn_ack_ev(HopKind::Receive, 500, HOST_NS, 4)),
            hop(with_reply_ct(syn_ack_ev(
                HopKind::Receive,
                1_000,
                HOST_NS,
                3,
            ))),
            hop(drop),
        ];
        let r = report(hops, &mut host);
        let text = render(&r);
        assert!(
            text.contains(
                "ct ESTABLISHED reply: 203.0.113.2:40000 → 203.0.113.1:10001, reply \
                 172.17.0.2:80 → 203.0.113.2:40000 [SEEN_REPLY CONFIRMED DNAT] mark 0x2a"
            ),
            "{text}"
        );
        assert!(text.contains("stack ip_error+0x88"), "{text}");
        assert_eq!(
            text.matches("ct ESTABLISHED").count(),
            1,
            "the drop's entry, unchanged since the hop before, is said once: {text}"
        );

        let json = serde_json::to_value(&r.hops[2]).expect("json");
        assert_eq!(json["conntrack"]["state"], "ESTABLISHED");
        assert_eq!(json["conntrack"]["direction"], "reply");
        assert_eq!(json["conntrack"]["status"][2], "DNAT");
        assert_eq!(json["conntrack"]["original"]["dport"], 10001);
        assert_eq!(json["conntrack"]["reply"]["sport"], 80);
        assert_eq!(json["conntrack"]["mark"], 0x2a);
        assert_eq!(json["stack"][0], "ip_error+0x88");
        assert_eq!(
            json["stack"].as_array().map(Vec::len),
            Some(2),
            "the tracing frames are left out"
        );
        let first = serde_json::to_value(&r.hops[0]).expect("json");
        assert!(first.get("conntrack").is_none() && first.get("stack").is_none());
        let second = serde_json::to_value(&r.hops[1]).expect("json");
        assert_eq!(
            second["conntrack"], json["conntrack"],
            "JSON keeps each hop whole"
        );
    }

    #[test]
    fn healthy_timeline_names_every_device() {
        let text = render(&report(healthy_syn(), &mut FakeHost::lab()));
        for dev in [
            "eth0 @ lab-host",
            "docker0 @ lab-host",
            "veth0c1 @ lab-host",
            "eth0 @ lab-ctr",
        ] {
            assert!(text.contains(dev), "{dev} missing in\n{text}");
        }
        assert!(
            text.contains("=> DELIVERED: taken by the stack (a socket) eth0 (lab-ctr)"),
            "{text}"
        );
        assert!(!text.contains("diagnosis"), "{text}");
    }

    #[test]
    fn json_verdict_has_the_documented_fields() {
        let mut host = FakeHost::lab();
        host.set_sysctl(HOST_NS, "net.ipv4.conf.eth0.forwarding", "0");
        let r = report(forwarding_off_syn(), &mut host);
        let v = serde_json::to_value(r.verdict_json()).expect("serializes");
        assert_eq!(v["kind"], "verdict");
        assert_eq!(v["outcome"], "dropped");
        assert_eq!(v["drop_reason"], "IP_INADDRERRORS");
        assert_eq!(v["location"], "ip_error");
        assert_eq!(v["last_hop"]["ifname"], "eth0");
        assert_eq!(v["last_hop"]["netns_name"], "lab-host");
        assert_eq!(v["diagnosis"]["code"], "forwarding_disabled");
        assert_eq!(v["nat"][0]["kind"], "dnat");
    }
}

#[cfg(test)]
mod netfilter_tests {
    use tracer_common::{HopKind, event::nf_verdict};

    use super::*;
    use crate::{
        correlate::Packet,
        events::fixture::*,
        host::fixture::FakeHost,
        probes::{DropReasons, HookSet},
    };

    #[test]
    fn netfilter_and_veth_hops_read_naturally() {
        let mut nf = ev(HopKind::NetfilterHook, 2_500, HOST_NS, 2);
        nf.nf_family = 2;
        nf.nf_hook = 2;
        nf.nf_verdict = nf_verdict::DROP;
        nf.peer_ifindex = 3;
        nf.peer_netns = HOST_NS;
        let mut veth = ev(HopKind::VethTransmit, 2_700, HOST_NS, 4);
        veth.peer_ifindex = 2;
        veth.peer_netns = CTR_NS;
        let packet = Packet {
            skb: SKB,
            hops: vec![hop(nf), hop(veth)],
            freed: false,
        };
        let r = Report::build(
            packet,
            None,
            &mut FakeHost::lab(),
            &DropReasons::default(),
            HookSet::Path,
        );
        let text = render(&r);
        assert!(text.contains("netfilter      eth0 @ lab-host"), "{text}");
        assert!(
            text.contains("ipv4 FORWARD → drop  out docker0 @ lab-host"),
            "{text}"
        );
        assert!(text.contains("veth_transmit  veth0c1 @ lab-host"), "{text}");
        assert!(text.contains("peer eth0 @ lab-ctr"), "{text}");
        let json = serde_json::to_value(&r.hops[0]).expect("json");
        assert_eq!(json["netfilter"]["hook"], "FORWARD");
        assert_eq!(json["netfilter"]["verdict"], "drop");
        assert_eq!(json["peer"]["ifname"], "docker0");
    }
}

#[cfg(test)]
mod container_tests {
    use super::*;
    use crate::{
        correlate::{FlowTable, Packet},
        events::fixture::*,
        host::fixture::FakeHost,
        probes::{DropReasons, HookSet},
    };

    #[test]
    fn hops_and_verdict_name_the_container() {
        let mut host = FakeHost::lab_with_docker();
        let packet = Packet {
            skb: SKB,
            hops: healthy_syn(),
            freed: true,
        };
        let flow = FlowTable::new(4).observe(&packet);
        let r = Report::build(
            packet,
            flow,
            &mut host,
            &DropReasons::default(),
            HookSet::Path,
        );
        let text = render(&r);
        assert!(text.contains("veth0c1 (web-1:eth0) @ lab-host"), "{text}");
        assert!(text.contains("target: container web-1 (0123456789ab, nginx:1.27) — port 10001 published to 172.17.0.2:80"), "{text}");
        let v = serde_json::to_value(r.verdict_json()).expect("json");
        assert_eq!(v["target"]["container"]["name"], "web-1");
        assert_eq!(v["target"]["port"], 80);
        assert_eq!(v["last_hop"]["container"]["name"], "web-1");
        let veth = serde_json::to_value(&r.hops[3]).expect("json");
        assert_eq!(veth["container_interface"], "web-1:eth0");
    }

    #[test]
    fn a_syn_dying_at_the_uplink_still_names_its_container() {
        let mut host = FakeHost::lab_with_docker();
        host.set_sysctl(HOST_NS, "net.ipv4.conf.eth0.forwarding", "0");
        let packet = Packet {
            skb: SKB,
            hops: forwarding_off_syn(),
            freed: true,
        };
        let reasons = DropReasons::from_pairs([("SKB_DROP_REASON_IP_INADDRERRORS".to_owned(), 87)]);
        let r = Report::build(packet, None, &mut host, &reasons, HookSet::Path);
        assert_eq!(
            r.target.as_ref().map(|t| t.container.name.as_str()),
            Some("web-1")
        );
        let d = r.diagnosis.expect("diagnosed");
        assert!(
            d.summary
                .starts_with("The SYN for container web-1 arrived on eth0"),
            "{}",
            d.summary
        );
    }

    #[test]
    fn a_port_published_on_one_address_targets_its_container_at_that_address_only() {
        let mut host = FakeHost::lab_with_docker();
        host.set_sysctl(HOST_NS, "net.ipv4.conf.eth0.forwarding", "0");
        let reasons = DropReasons::from_pairs([("SKB_DROP_REASON_IP_INADDRERRORS".to_owned(), 87)]);
        let target = |host: &mut FakeHost| {
            let packet = Packet {
                skb: SKB,
                hops: forwarding_off_syn(),
                freed: true,
            };
            Report::build(packet, None, host, &reasons, HookSet::Path)
                .target
                .map(|t| t.container.name)
        };
        // The SYN is sent to 203.0.113.1; the port is published on another address only.
        host.published[0].host_ip = Some(std::net::Ipv4Addr::new(192, 0, 2, 44));
        assert_eq!(target(&mut host), None, "not published where it was sent");
        host.published[0].host_ip = Some(std::net::Ipv4Addr::new(203, 0, 113, 1));
        assert_eq!(target(&mut host).as_deref(), Some("web-1"));
    }

    #[test]
    fn a_syn_dropped_past_dnat_names_its_container_from_the_drop_alone() {
        // --hooks drops (the daemon's default): the one hop is addressed to the container
        // already; conntrack's header says it was sent to the published port.
        let mut host = FakeHost::lab_with_docker();
        host.set_sysctl(HOST_NS, "net.ipv4.conf.eth0.forwarding", "0");
        let drop = forwarding_off_syn()
            .into_iter()
            .find(|h| h.kind == HopKind::Drop)
            .expect("a drop hop");
        assert_eq!(drop.tuple.map(|t| t.dport), Some(80), "past DNAT");
        let reasons = DropReasons::from_pairs([("SKB_DROP_REASON_IP_INADDRERRORS".to_owned(), 87)]);
        let packet = Packet {
            skb: SKB,
            hops: vec![drop],
            freed: true,
        };
        let r = Report::build(packet, None, &mut host, &reasons, HookSet::Drops);
        assert_eq!(
            r.target.as_ref().map(|t| t.container.name.as_str()),
            Some("web-1")
        );
        assert_eq!(r.diagnosis.map(|d| d.code), Some("forwarding_disabled"));
    }

    #[test]
    fn the_closing_line_counts_in_the_singular_and_the_plural() {
        let line = |s: &Stats| {
            let mut out = HumanOutput::new(Vec::new());
            out.stats(s).unwrap();
            String::from_utf8(out.out).unwrap()
        };
        let one = Stats {
            events: 3,
            packets: 1,
            dropped: 1,
            flows: 1,
            ..Stats::default()
        };
        assert_eq!(
            line(&one).trim(),
            "pathtrace: 1 packet (0 delivered, 1 dropped, 0 unknown) in 1 flow; 3 events read, 0 lost in the kernel"
        );
        let lost = Stats {
            events: 1,
            lost: 2,
            packets: 2,
            flows: 2,
            ..Stats::default()
        };
        assert!(line(&lost).contains(
            "2 packets (0 delivered, 0 dropped, 0 unknown) in 2 flows; 1 event read, 2 lost in the kernel — the ring buffer was full"
        ));
    }
}
