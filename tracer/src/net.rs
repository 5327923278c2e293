//! Values of the network stack as pathtrace reasons about them: the IP protocol, TCP flags,
//! and a netfilter hook, family and verdict. Decoding ([`crate::events`]) turns the kernel's
//! numbers into these once; nothing after it compares protocol numbers or flag masks. Each
//! type holds its one name table.

use std::fmt;

use serde::{Serialize, Serializer};

/// An IP protocol: its number, with names for the ones pathtrace reasons about. One byte, as
/// the kernel has it: every tuple holds one and the flow table hashes it per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Proto(u8);

impl Proto {
    pub const ICMP: Self = Self(1);
    pub const TCP: Self = Self(6);
    pub const UDP: Self = Self(17);
    pub const SCTP: Self = Self(132);
    pub const ICMPV6: Self = Self(58);

    /// The protocols with a name, in one table (`icmp6` as tcpdump says it).
    const NAMES: [(Self, &'static str); 5] = [
        (Self::ICMP, "icmp"),
        (Self::ICMPV6, "icmp6"),
        (Self::TCP, "tcp"),
        (Self::UDP, "udp"),
        (Self::SCTP, "sctp"),
    ];

    pub const fn from_number(n: u8) -> Self {
        Self(n)
    }

    /// The IANA protocol number, as the kernel and iptables' `-p` use it.
    pub const fn number(self) -> u8 {
        self.0
    }

    /// Lowercase name for display; `ip` for a protocol without one.
    pub fn name(self) -> &'static str {
        self.named().unwrap_or("ip")
    }

    /// One of the protocols with a name (`tcp`, `udp`, `icmp`, `sctp`).
    pub fn is_named(self) -> bool {
        self.named().is_some()
    }

    fn named(self) -> Option<&'static str> {
        Self::NAMES
            .iter()
            .find(|(p, _)| *p == self)
            .map(|(_, name)| *name)
    }

    /// TCP or UDP: the protocols whose ports pathtrace reads and filters on.
    pub const fn has_ports(self) -> bool {
        matches!(self, Self::TCP | Self::UDP)
    }

    /// What `-p tcp` / `-p 6` and nft's `l4proto` name: a name iptables knows or a number.
    pub fn parse(s: &str) -> Option<Self> {
        match Self::NAMES.iter().find(|(_, name)| *name == s) {
            Some((p, _)) => Some(*p),
            None => s.parse().ok().map(Self),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// JSON keeps the number (docs/json.md: a tuple's `proto`).
impl Serialize for Proto {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.number())
    }
}

/// The flags byte of a TCP header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(u8);

impl TcpFlags {
    pub const FIN: Self = Self(0x01);
    pub const SYN: Self = Self(0x02);
    pub const RST: Self = Self(0x04);
    pub const PSH: Self = Self(0x08);
    pub const ACK: Self = Self(0x10);
    pub const URG: Self = Self(0x20);
    pub const ECE: Self = Self(0x40);
    pub const CWR: Self = Self(0x80);
    pub const NONE: Self = Self(0);

    /// In the order people read them (`SYN|ACK`).
    const NAMES: [(Self, &'static str); 8] = [
        (Self::SYN, "SYN"),
        (Self::ACK, "ACK"),
        (Self::FIN, "FIN"),
        (Self::RST, "RST"),
        (Self::PSH, "PSH"),
        (Self::URG, "URG"),
        (Self::ECE, "ECE"),
        (Self::CWR, "CWR"),
    ];

    pub const fn from_bits(bits: u8) -> Self {
        Self(bits)
    }

    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Every flag of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Only the flags that open, answer and end a connection (SYN, ACK, FIN, RST): what names
    /// a segment, without PSH, URG or ECN.
    pub const fn handshake(self) -> Self {
        Self(self.0 & (Self::SYN.0 | Self::ACK.0 | Self::FIN.0 | Self::RST.0))
    }

    /// A connection's first segment: SYN without ACK.
    pub const fn opens(self) -> bool {
        self.contains(Self::SYN) && !self.contains(Self::ACK)
    }

    /// A comma list as iptables writes it (`FIN,SYN,RST,ACK`, `ALL`, `NONE`); `None` for a
    /// word that is not a flag.
    pub fn parse_list(s: &str) -> Option<Self> {
        let mut bits = 0;
        for word in s.split(',') {
            bits |= match word {
                "ALL" => 0xff,
                "NONE" => 0,
                w => Self::NAMES.iter().find(|(_, n)| *n == w)?.0.0,
            };
        }
        Some(Self(bits))
    }

    /// `SYN|ACK`, ...; empty for none. Every combination is spelled once, so a hop costs no
    /// allocation.
    pub fn name(self) -> &'static str {
        static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        NAMES.get_or_init(|| (0..=255u8).map(|b| Self(b).spell()).collect())[self.0 as usize]
            .as_str()
    }

    fn spell(self) -> String {
        Self::NAMES
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join("|")
    }
}

impl std::ops::BitOr for TcpFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A netfilter hook of the inet families (the bridge family numbers its hooks alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Hook {
    #[serde(rename = "PREROUTING")]
    Prerouting,
    #[serde(rename = "INPUT")]
    Input,
    #[serde(rename = "FORWARD")]
    Forward,
    #[serde(rename = "OUTPUT")]
    Output,
    #[serde(rename = "POSTROUTING")]
    Postrouting,
    /// `NF_INET_INGRESS` (the bridge family's BROUTING shares its number).
    #[serde(rename = "INGRESS")]
    Ingress,
}

impl Hook {
    /// The hooks, by the kernel's `NF_INET_*` number, with the chain names iptables gives them.
    const TABLE: [(Self, &'static str); 6] = [
        (Self::Prerouting, "PREROUTING"),
        (Self::Input, "INPUT"),
        (Self::Forward, "FORWARD"),
        (Self::Output, "OUTPUT"),
        (Self::Postrouting, "POSTROUTING"),
        (Self::Ingress, "INGRESS"),
    ];

    pub fn name(self) -> &'static str {
        Self::TABLE[self as usize].1
    }

    /// A built-in chain's name (`FORWARD`); not `INGRESS`, which no iptables chain is.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::TABLE[..5]
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(h, _)| *h)
    }

    /// From the kernel's `NF_INET_*` number.
    pub fn from_number(n: u8) -> Option<Self> {
        Self::TABLE.get(usize::from(n)).map(|(h, _)| *h)
    }
}

/// A netfilter protocol family (`NFPROTO_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Inet,
    Ipv4,
    Arp,
    Netdev,
    Bridge,
    Ipv6,
    Unknown(u8),
}

impl Family {
    pub const fn from_number(n: u8) -> Self {
        match n {
            1 => Self::Inet,
            2 => Self::Ipv4,
            3 => Self::Arp,
            5 => Self::Netdev,
            7 => Self::Bridge,
            10 => Self::Ipv6,
            n => Self::Unknown(n),
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Inet => "inet",
            Self::Ipv4 => "ipv4",
            Self::Arp => "arp",
            Self::Netdev => "netdev",
            Self::Bridge => "bridge",
            Self::Ipv6 => "ipv6",
            Self::Unknown(_) => "unknown",
        }
    }
}

/// What a pass through `nf_hook_slow` decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NfVerdict {
    Accept,
    Drop,
    /// Stolen or queued: the hook kept the packet.
    Stolen,
}

impl NfVerdict {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Drop => "drop",
            Self::Stolen => "stolen",
        }
    }
}

/// A netfilter hop: which hook of which family, and what it decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Netfilter {
    /// `None` for a hook number this build does not know.
    pub hook: Option<Hook>,
    pub family: Family,
    pub verdict: NfVerdict,
}

/// An ICMP error message: its type and code. Named by one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IcmpError {
    pub kind: u8,
    pub code: u8,
}

/// (type, code or `None` for any, name): the errors a tracer of dropped connections meets.
const ICMP_ERRORS: &[(u8, Option<u8>, &str)] = &[
    (3, Some(0), "net unreachable"),
    (3, Some(1), "host unreachable"),
    (3, Some(2), "protocol unreachable"),
    (3, Some(3), "port unreachable"),
    (3, Some(4), "fragmentation needed"),
    (3, Some(9), "net administratively prohibited"),
    (3, Some(10), "host administratively prohibited"),
    (3, Some(13), "communication administratively prohibited"),
    (3, None, "destination unreachable"),
    (4, None, "source quench"),
    (11, None, "time exceeded"),
    (12, None, "parameter problem"),
];

impl IcmpError {
    /// `port unreachable`, or `ICMP type T code C` for one the table lacks.
    pub fn name(self) -> String {
        ICMP_ERRORS
            .iter()
            .find(|(t, c, _)| *t == self.kind && c.is_none_or(|c| c == self.code))
            .map_or_else(
                || format!("ICMP type {} code {}", self.kind, self.code),
                |(_, _, n)| (*n).to_owned(),
            )
    }
}

/// Conntrack state as `-m conntrack --ctstate` (and nft's `ct state`) sees a packet; the
/// kernel's `enum ip_conntrack_info` decodes to one (`from_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CtState {
    New,
    Established,
    Related,
    /// Conntrack ran and found no entry it could make (no `_nfct` after it): never decoded
    /// from a hop, only assumed by the ruleset evaluator.
    Invalid,
    /// `NOTRACK`/`notrack` in a raw table: no entry, so no NAT.
    Untracked,
}

/// One row per `ip_conntrack_info` value: the state and whether the packet travels in the
/// reply direction (IP_CT_IS_REPLY and above). 5 (IP_CT_NEW_REPLY) and 6 do not occur.
const CT_INFO: &[(u8, CtState, bool)] = &[
    (0, CtState::Established, false),
    (1, CtState::Related, false),
    (2, CtState::New, false),
    (3, CtState::Established, true),
    (4, CtState::Related, true),
    (7, CtState::Untracked, false),
];

impl CtState {
    /// The state and direction a raw `ip_conntrack_info` says; `None` for values that do
    /// not occur.
    pub fn from_info(info: u8) -> Option<(Self, bool)> {
        CT_INFO
            .iter()
            .find(|(i, ..)| *i == info)
            .map(|&(_, s, reply)| (s, reply))
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::New => "NEW",
            Self::Established => "ESTABLISHED",
            Self::Related => "RELATED",
            Self::Invalid => "INVALID",
            Self::Untracked => "UNTRACKED",
        }
    }
}

/// A conntrack entry's status bits (`enum ip_conntrack_status`), those worth naming.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtStatus(pub u32);

/// (bit, name as `conntrack -L` prints it, or a short word where it prints none). `SNAT` and
/// `DNAT` are IPS_SRC_NAT/IPS_DST_NAT: the entry translates that side. The *_DONE bits are
/// left out: the NAT hooks set them on every entry they saw, a null binding included.
const CT_STATUS: &[(u32, &str)] = &[
    (0, "EXPECTED"),
    (1, "SEEN_REPLY"),
    (2, "ASSURED"),
    (3, "CONFIRMED"),
    (4, "SNAT"),
    (5, "DNAT"),
    (9, "DYING"),
];

impl CtStatus {
    /// The named bits that are set, in bit order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        CT_STATUS
            .iter()
            .filter(move |(bit, _)| self.0 & (1 << bit) != 0)
            .map(|(_, n)| *n)
    }
}

/// The names, as a JSON array: written straight from the bits, no list built per hop.
impl Serialize for CtStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_info_and_status_are_named_by_one_table_each() {
        assert_eq!(CtState::from_info(2), Some((CtState::New, false)));
        assert_eq!(CtState::from_info(3), Some((CtState::Established, true)));
        assert_eq!(CtState::from_info(7), Some((CtState::Untracked, false)));
        assert_eq!(CtState::from_info(5), None);
        let status = CtStatus(1 << 3 | 1 << 5 | 1 << 7 | 1 << 8);
        assert_eq!(
            serde_json::to_string(&status).expect("json"),
            r#"["CONFIRMED","DNAT"]"#
        );
        assert_eq!(
            status.names().collect::<Vec<_>>(),
            ["CONFIRMED", "DNAT"],
            "the NAT hooks' done bits (7, 8) are set for null bindings too: not named"
        );
    }

    #[test]
    fn icmp_errors_are_named_by_type_and_code() {
        let e = |kind, code| IcmpError { kind, code }.name();
        assert_eq!(e(3, 3), "port unreachable");
        assert_eq!(e(3, 4), "fragmentation needed");
        assert_eq!(e(3, 7), "destination unreachable");
        assert_eq!(e(11, 0), "time exceeded");
        assert_eq!(e(5, 1), "ICMP type 5 code 1");
    }

    #[test]
    fn a_segment_is_named_by_its_handshake_flags() {
        assert_eq!((TcpFlags::ACK | TcpFlags::RST).name(), "ACK|RST");
        assert!(TcpFlags::SYN.opens());
        assert!(!(TcpFlags::SYN | TcpFlags::ACK).opens());
        assert_eq!((TcpFlags::SYN | TcpFlags::PSH).handshake(), TcpFlags::SYN);
    }

    #[test]
    fn one_table_names_each_hook_both_ways() {
        for n in 0..6 {
            let h = Hook::from_number(n).expect("known");
            assert_eq!(h as u8, n);
            if h != Hook::Ingress {
                assert_eq!(Hook::from_name(h.name()), Some(h));
            }
        }
        assert_eq!(Hook::from_number(6), None);
        assert_eq!(Hook::from_name("INGRESS"), None);
    }

    #[test]
    fn protocols_keep_their_number() {
        for n in 0..=255u8 {
            assert_eq!(Proto::from_number(n).number(), n);
        }
        assert_eq!(Proto::parse("udp"), Some(Proto::UDP));
        assert_eq!(Proto::parse("47"), Some(Proto::from_number(47)));
        assert_eq!(Proto::parse("sctp").map(Proto::number), Some(132));
        assert!(!Proto::from_number(47).is_named());
        assert_eq!(Proto::from_number(47).name(), "ip");
        assert_eq!(Proto::SCTP.name(), "sctp");
        assert_eq!(serde_json::to_string(&Proto::TCP).expect("json"), "6");
    }
}
