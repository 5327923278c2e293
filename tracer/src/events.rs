//! Decoding ring buffer records into [`Hop`]s: plain `Copy` values, no allocation per event.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use serde::Serialize;
use tracer_common::{
    HopEvent, HopKind,
    config::FlowKey,
    event::{
        Addr, FLAG_CONNTRACK, FLAG_ENTERED, FLAG_FOLLOWED, FLAG_IPV4, FLAG_IPV6, FLAG_L4,
        FLAG_QUOTED, nf_verdict,
    },
};

use crate::net::{
    CtState, CtStatus, Family, Hook, IcmpError, Netfilter, NfVerdict, Proto, TcpFlags,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record of {0} bytes is shorter than an event")]
    Short(usize),
    #[error("unknown hop kind {0} (kernel object newer than this binary?)")]
    UnknownKind(u8),
}

/// An IPv4 or IPv6 5-tuple; ports are 0 for protocols without them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Tuple {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub proto: Proto,
}

/// An address as IPv4, where only IPv4's is known so far (the host's facts, rulesets,
/// conntrack's view: issue 25); `None` for IPv6.
pub fn ipv4(a: IpAddr) -> Option<Ipv4Addr> {
    match a {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

impl Tuple {
    /// 4 or 6.
    pub fn version(&self) -> u8 {
        if self.src.is_ipv6() { 6 } else { 4 }
    }

    /// The source as `address:port` (`[address]:port` for IPv6).
    pub fn src_end(&self) -> SocketAddr {
        SocketAddr::new(self.src, self.sport)
    }

    /// The destination as `address:port` (`[address]:port` for IPv6).
    pub fn dst_end(&self) -> SocketAddr {
        SocketAddr::new(self.dst, self.dport)
    }

    /// The same flow seen from the other end.
    pub fn reversed(self) -> Self {
        Self {
            src: self.dst,
            sport: self.dport,
            dst: self.src,
            dport: self.sport,
            proto: self.proto,
        }
    }
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.proto.has_ports() {
            write!(
                f,
                "{} → {}",
                SocketAddr::new(self.src, self.sport),
                SocketAddr::new(self.dst, self.dport)
            )
        } else {
            write!(f, "{} → {} ({})", self.src, self.dst, self.proto)
        }
    }
}

/// One decoded hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    pub ts_ns: u64,
    pub skb: u64,
    pub kind: HopKind,
    pub netns: u32,
    pub ifindex: u32,
    /// `None` when the packet's IPv4 header could not be read at this hop.
    pub tuple: Option<Tuple>,
    pub tcp_flags: TcpFlags,
    pub len: u32,
    /// Kernel address that freed the skb (drops and consumes).
    pub location: u64,
    /// Raw `enum skb_drop_reason` (drops only).
    pub drop_reason: u32,
    pub peer_ifindex: u32,
    pub peer_netns: u32,
    /// See `HopEvent::fingerprint`: constant for one packet, 0 when unknown.
    pub fingerprint: u32,
    /// Netfilter hops: the hook, its family and what it decided.
    pub netfilter: Option<Netfilter>,
    /// Drops: the device the packet was last received on in `netns` (`skb_iif`; 0 when it was
    /// generated there). Other hops: 0.
    pub in_ifindex: u32,
    /// Drops: the tuple as the packet entered `netns`, its destination from conntrack (before
    /// DNAT or a reply's de-SNAT). `None` without a conntrack entry or on other hops.
    pub entered: Option<Tuple>,
    /// Not reported by the kernel: a transmit the receive after it proves (a veth's peer, the
    /// bridge in front of a port), added when the transmit tracepoint is not attached
    /// (`correlate::transmits`).
    pub inferred: bool,
    /// The filter did not match this packet; the kernel followed it from here as a reply to
    /// one it did match (or an ICMP error about one).
    pub followed: bool,
    /// Not traced for this packet: it was a quiet packet of a summarised flood until it
    /// parted from its flow's way (`HopKind::Resumed`), and this hop is the flow's latest
    /// full packet's, which it shared (length and time are set from its own first traced
    /// hop once the packet is finished: not measured).
    pub repeated: bool,
    /// An ICMP error: what it says, and the header of the packet it is about.
    pub quoted: Option<Quoted>,
    /// Conntrack's entry for the packet, where the kernel saw it change (attached, NAT done,
    /// confirmed) and at a drop.
    pub conntrack: Option<CtView>,
    /// Drops traced with `--stack`: the id of the kernel stack that freed the packet.
    pub stack: Option<u32>,
    /// Drops: `skb->mark`, the fwmark routing looked the packet up with (0: none).
    pub mark: u32,
}

/// Conntrack's view of a packet at one hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtView {
    pub state: CtState,
    /// The packet travels in the entry's reply direction.
    pub reply: bool,
    pub status: CtStatus,
    pub mark: u32,
    pub zone: u16,
    /// The original and reply tuples; `None` when untracked (no entry).
    pub tuples: Option<(Tuple, Tuple)>,
}

/// What an ICMP error says about the packet it quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted {
    pub error: IcmpError,
    /// The quoted header: the packet the error answers, as its sender saw it.
    pub tuple: Tuple,
}

impl Hop {
    /// The header the packet entered this hop's namespace with: conntrack's from before NAT
    /// when the drop recorded it, else the one seen here.
    pub fn entered_tuple(&self) -> Option<Tuple> {
        self.entered.or(self.tuple)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let ev = HopEvent::from_bytes(bytes).ok_or(DecodeError::Short(bytes.len()))?;
        Self::from_event(&ev)
    }

    #[inline]
    pub fn from_event(ev: &HopEvent) -> Result<Self, DecodeError> {
        let kind = HopKind::from_raw(ev.kind).ok_or(DecodeError::UnknownKind(ev.kind))?;
        let v6 = ev.flags & FLAG_IPV6 != 0;
        let addr = |a: &Addr| -> IpAddr {
            if v6 {
                Ipv6Addr::from(a.0).into()
            } else {
                Ipv4Addr::from(a.v4_bytes()).into()
            }
        };
        let tuple = (ev.flags & (FLAG_IPV4 | FLAG_IPV6) != 0).then(|| {
            let l4 = ev.flags & FLAG_L4 != 0;
            Tuple {
                src: addr(&ev.saddr),
                sport: if l4 { ev.sport } else { 0 },
                dst: addr(&ev.daddr),
                dport: if l4 { ev.dport } else { 0 },
                proto: Proto::from_number(ev.proto),
            }
        });
        let entered = tuple
            .filter(|_| ev.flags & FLAG_ENTERED != 0)
            .map(|t| Tuple {
                dst: Ipv4Addr::from(ev.entered_daddr).into(),
                dport: if ev.flags & FLAG_L4 != 0 {
                    ev.entered_dport
                } else {
                    0
                },
                ..t
            });
        Ok(Self {
            ts_ns: ev.ts_ns,
            skb: ev.skb,
            kind,
            netns: ev.netns,
            ifindex: ev.ifindex,
            tuple,
            tcp_flags: TcpFlags::from_bits(ev.tcp_flags),
            len: ev.len,
            location: ev.location,
            drop_reason: ev.drop_reason,
            peer_ifindex: ev.peer_ifindex,
            peer_netns: ev.peer_netns,
            fingerprint: ev.fingerprint,
            netfilter: (kind == HopKind::NetfilterHook).then(|| netfilter(ev)),
            in_ifindex: ev.in_ifindex,
            entered,
            inferred: false,
            followed: ev.flags & FLAG_FOLLOWED != 0,
            repeated: false,
            quoted: (ev.flags & FLAG_QUOTED != 0).then(|| quoted(ev)),
            conntrack: (ev.flags & FLAG_CONNTRACK != 0)
                .then(|| conntrack(ev))
                .flatten(),
            stack: ev.stack.checked_sub(1),
            mark: ev.skb_mark,
        })
    }

    /// Whether the skb ends its life at this hop.
    pub fn frees(&self) -> bool {
        matches!(self.kind, HopKind::Drop | HopKind::Consume)
    }
}

/// A netfilter hop's hook, family and verdict. Out of line: only function backends report
/// such hops, and every other event decodes past it.
#[cold]
#[inline(never)]
fn netfilter(ev: &HopEvent) -> Netfilter {
    Netfilter {
        hook: Hook::from_number(ev.nf_hook),
        family: Family::from_number(ev.nf_family),
        verdict: match ev.nf_verdict {
            nf_verdict::ACCEPT => NfVerdict::Accept,
            nf_verdict::DROP => NfVerdict::Drop,
            _ => NfVerdict::Stolen,
        },
    }
}

/// A conntrack entry as a hop saw it. Out of line: a few hops per packet carry one. `None`
/// for an `ip_conntrack_info` that does not occur.
#[cold]
#[inline(never)]
fn conntrack(ev: &HopEvent) -> Option<CtView> {
    let (state, reply) = CtState::from_info(ev.ct.info)?;
    let tuple = |k: &FlowKey| Tuple {
        src: Ipv4Addr::from(k.saddr).into(),
        sport: k.sport,
        dst: Ipv4Addr::from(k.daddr).into(),
        dport: k.dport,
        proto: Proto::from_number(k.proto),
    };
    Some(CtView {
        state,
        reply,
        status: CtStatus(ev.ct.status),
        mark: ev.ct.mark,
        zone: ev.ct.zone,
        tuples: (state != CtState::Untracked)
            .then(|| (tuple(&ev.ct.original), tuple(&ev.ct.reply))),
    })
}

/// An ICMP error's quote. Out of line: rare.
#[cold]
#[inline(never)]
fn quoted(ev: &HopEvent) -> Quoted {
    Quoted {
        error: IcmpError {
            kind: ev.icmp_type,
            code: ev.icmp_code,
        },
        tuple: Tuple {
            src: Ipv4Addr::from(ev.quoted.saddr).into(),
            sport: ev.quoted.sport,
            dst: Ipv4Addr::from(ev.quoted.daddr).into(),
            dport: ev.quoted.dport,
            proto: Proto::from_number(ev.quoted.proto),
        },
    }
}

/// Stable lowercase name of a hop kind, as used in JSON (`"hop"`) and the timeline.
pub fn kind_name(kind: HopKind) -> &'static str {
    match kind {
        HopKind::Receive => "receive",
        HopKind::Transmit => "transmit",
        HopKind::Drop => "drop",
        HopKind::Consume => "consume",
        HopKind::NetfilterHook => "netfilter",
        HopKind::BridgeForward => "bridge_forward",
        HopKind::VethTransmit => "veth_transmit",
        HopKind::FreedUnseen => "freed_unseen",
        HopKind::Resumed => "resumed",
    }
}

#[cfg(test)]
pub(crate) mod fixture {
    //! Builders for recorded events, shared by the correlation, verdict and output tests.
    use tracer_common::{
        HopEvent, HopKind,
        event::{FLAG_ENTERED, FLAG_IPV4, FLAG_L4, FLAG_MATCHED},
    };

    use super::Hop;

    pub const HOST_NS: u32 = 4026532000;
    pub const CTR_NS: u32 = 4026532100;
    pub const OUT_NS: u32 = 4026532200;
    pub const SKB: u64 = 0xffff_8880_1234_5600;

    pub fn ev(kind: HopKind, ts_ns: u64, netns: u32, ifindex: u32) -> HopEvent {
        let mut e = HopEvent::zeroed();
        e.ts_ns = ts_ns;
        e.skb = SKB;
        e.kind = kind as u8;
        e.netns = netns;
        e.ifindex = ifindex;
        e.saddr = tracer_common::event::Addr::v4([203, 0, 113, 2]);
        e.daddr = tracer_common::event::Addr::v4([203, 0, 113, 1]);
        e.sport = 40000;
        e.dport = 10001;
        e.proto = 6;
        e.tcp_flags = 0x02;
        e.len = 60;
        e.flags = FLAG_IPV4 | FLAG_L4 | FLAG_MATCHED;
        e.fingerprint = 0x1234_5679;
        if kind == HopKind::Drop {
            e.in_ifindex = ifindex; // skb_iif: received on the device it dies on
        }
        e
    }

    /// The packet after DNAT to the container; a drop then carries conntrack's header from
    /// before it, as the kernel program records.
    pub fn dnat(mut e: HopEvent) -> HopEvent {
        if e.kind == HopKind::Drop as u8 {
            e.entered_daddr = e.daddr.v4_bytes();
            e.entered_dport = e.dport;
            e.flags |= FLAG_ENTERED;
        }
        e.daddr = tracer_common::event::Addr::v4([172, 17, 0, 2]);
        e.dport = 80;
        e
    }

    /// The container's SYN-ACK to [`ev`]'s SYN, before the host un-DNATs it:
    /// 172.17.0.2:80 → 203.0.113.2:40000.
    pub fn syn_ack_ev(kind: HopKind, ts_ns: u64, netns: u32, ifindex: u32) -> HopEvent {
        let mut e = ev(kind, ts_ns, netns, ifindex);
        e.saddr = tracer_common::event::Addr::v4([172, 17, 0, 2]);
        e.sport = 80;
        e.daddr = tracer_common::event::Addr::v4([203, 0, 113, 2]);
        e.dport = 40000;
        e.tcp_flags = 0x12;
        e
    }

    pub fn hop(e: HopEvent) -> Hop {
        Hop::from_event(&e).expect("valid fixture event")
    }

    /// [`syn_ack_ev`] as conntrack sees it past the host's DNAT: the reply direction of the
    /// entry 203.0.113.2:40000 → 203.0.113.1:10001, answered by 172.17.0.2:80.
    pub fn with_reply_ct(mut e: HopEvent) -> HopEvent {
        use tracer_common::{config::FlowKey, event::FLAG_CONNTRACK};
        let key = |s, sp, d, dp| FlowKey {
            saddr: s,
            daddr: d,
            sport: sp,
            dport: dp,
            proto: 6,
            ..FlowKey::ZERO
        };
        e.flags |= FLAG_CONNTRACK;
        e.ct.info = 3; // IP_CT_ESTABLISHED_REPLY
        e.ct.status = 1 << 1 | 1 << 3 | 1 << 5 | 1 << 7 | 1 << 8; // SEEN_REPLY, CONFIRMED, DNAT
        e.ct.zone = 0;
        e.ct.mark = 0x2a;
        e.ct.original = key([203, 0, 113, 2], 40000, [203, 0, 113, 1], 10001);
        e.ct.reply = key([172, 17, 0, 2], 80, [203, 0, 113, 2], 40000);
        e
    }

    /// A SYN from the outside namespace that dies on the host's eth0 (field note 000).
    pub fn forwarding_off_syn() -> Vec<Hop> {
        let mut drop = dnat(ev(HopKind::Drop, 3_000, HOST_NS, 2));
        drop.drop_reason = 87;
        drop.location = 0xffff_ffff_81fe_d3a0;
        vec![
            hop(ev(HopKind::Transmit, 1_000, OUT_NS, 2)),
            hop(ev(HopKind::Receive, 2_000, HOST_NS, 2)),
            hop(drop),
        ]
    }

    /// [`ev`] as an IPv6 SYN routed to the container's own address:
    /// [2001:db8:113::2]:40000 → [fd00:17::2]:80 (no NAT).
    pub fn v6(mut e: HopEvent) -> HopEvent {
        use tracer_common::event::{Addr, FLAG_IPV6};
        let addr = |s: &str| s.parse::<std::net::Ipv6Addr>().map(|a| Addr(a.octets()));
        e.saddr = addr("2001:db8:113::2").expect("fixture address");
        e.daddr = addr("fd00:17::2").expect("fixture address");
        e.dport = 80;
        e.flags = (e.flags & !FLAG_IPV4) | FLAG_IPV6;
        e
    }

    /// An IPv6 SYN from the outside namespace that dies in ip6_forward on the host's eth0:
    /// IPv6 forwarding is off there.
    pub fn forwarding_off_syn6() -> Vec<Hop> {
        let mut drop = v6(ev(HopKind::Drop, 3_000, HOST_NS, 2));
        drop.drop_reason = 87;
        drop.location = 0xffff_ffff_81f0_1654;
        vec![
            hop(v6(ev(HopKind::Transmit, 1_000, OUT_NS, 2))),
            hop(v6(ev(HopKind::Receive, 2_000, HOST_NS, 2))),
            hop(drop),
        ]
    }

    /// A healthy SYN: uplink, DNAT, bridge, veth, container, consumed by the listener.
    pub fn healthy_syn() -> Vec<Hop> {
        let mut consume = dnat(ev(HopKind::Consume, 9_000, CTR_NS, 2));
        consume.location = 0xffff_ffff_8200_0000;
        vec![
            hop(ev(HopKind::Transmit, 1_000, OUT_NS, 2)),
            hop(ev(HopKind::Receive, 2_000, HOST_NS, 2)),
            hop(dnat(ev(HopKind::Transmit, 4_000, HOST_NS, 3))),
            hop(dnat(ev(HopKind::Transmit, 5_000, HOST_NS, 4))),
            hop(dnat(ev(HopKind::Receive, 7_000, CTR_NS, 2))),
            hop(consume),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::{fixture::*, *};

    #[test]
    fn decodes_a_recorded_event() {
        let e = ev(HopKind::Receive, 42, HOST_NS, 7);
        let hop = Hop::decode(e.as_bytes()).expect("decodes");
        assert_eq!(hop.kind, HopKind::Receive);
        assert_eq!(hop.ifindex, 7);
        let t = hop.tuple.expect("ipv4");
        assert_eq!(t.to_string(), "203.0.113.2:40000 → 203.0.113.1:10001");
        assert_eq!(hop.tcp_flags.name(), "SYN");
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let e = ev(HopKind::Receive, 42, HOST_NS, 7);
        assert_eq!(
            Hop::decode(&e.as_bytes()[..10]),
            Err(DecodeError::Short(10))
        );
        let mut bad = e;
        bad.kind = 200;
        assert_eq!(
            Hop::decode(bad.as_bytes()),
            Err(DecodeError::UnknownKind(200))
        );
    }

    #[test]
    fn non_ip_event_has_no_tuple_and_icmp_has_no_ports() {
        let mut e = ev(HopKind::Drop, 1, HOST_NS, 1);
        e.flags = 0;
        assert!(Hop::from_event(&e).unwrap().tuple.is_none());
        e.flags = FLAG_IPV4;
        e.proto = 1;
        let t = Hop::from_event(&e).unwrap().tuple.unwrap();
        assert_eq!((t.sport, t.dport), (0, 0));
        assert_eq!(t.to_string(), "203.0.113.2 → 203.0.113.1 (icmp)");
    }

    /// An IPv6 record: its 16-byte addresses, shown bracketed with ports; the IPv4 and IPv6
    /// flags each decode their own width from the same fields.
    #[test]
    fn decodes_an_ipv6_record() {
        let mut e = ev(HopKind::Receive, 42, HOST_NS, 7);
        let a: Ipv6Addr = "2001:db8:7a:3::2".parse().unwrap();
        let b: Ipv6Addr = "fd42:c8:0:5::5".parse().unwrap();
        e.saddr = Addr(a.octets());
        e.daddr = Addr(b.octets());
        e.sport = 51000;
        e.dport = 9417;
        e.flags = FLAG_IPV6 | FLAG_L4;
        let t = Hop::from_event(&e).unwrap().tuple.expect("ipv6");
        assert_eq!((t.src, t.dst), (IpAddr::V6(a), IpAddr::V6(b)));
        assert_eq!(t.version(), 6);
        assert_eq!(
            t.to_string(),
            "[2001:db8:7a:3::2]:51000 → [fd42:c8:0:5::5]:9417"
        );
        assert_eq!(t.dst_end().to_string(), "[fd42:c8:0:5::5]:9417");
        assert_eq!(
            ipv4(t.dst),
            None,
            "no IPv4 fact is asked of an IPv6 address"
        );
        // ICMPv6: no ports, the protocol by its number.
        e.flags = FLAG_IPV6;
        e.proto = 58;
        let t = Hop::from_event(&e).unwrap().tuple.unwrap();
        assert_eq!(t.to_string(), "2001:db8:7a:3::2 → fd42:c8:0:5::5 (icmp6)");
        // The same bytes under the IPv4 flag are the first four only.
        e.flags = FLAG_IPV4;
        let t = Hop::from_event(&e).unwrap().tuple.unwrap();
        assert_eq!(t.src, IpAddr::V4(Ipv4Addr::new(0x20, 0x01, 0x0d, 0xb8)));
    }

    #[test]
    fn flags_render_in_conventional_order() {
        let name = |bits| crate::net::TcpFlags::from_bits(bits).name();
        assert_eq!(name(0x12), "SYN|ACK");
        assert_eq!(name(0x14), "ACK|RST");
        assert_eq!(name(0), "");
    }
}
