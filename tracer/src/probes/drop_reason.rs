//! Names of `enum skb_drop_reason`, read from the running kernel's BTF (values move between
//! kernel versions, so none is compiled in).

use std::collections::{HashMap, HashSet};

use super::btf::{Btf, BtfError};
use crate::net::TcpFlags;

const PREFIX: &str = "SKB_DROP_REASON_";

/// A free that is the stack's housekeeping, not a loss: the packet had done its work (reached
/// its socket, or been answered) and is freed as its owner goes away. A row per case, each
/// named by the kernel's own comment on the reason (`include/net/dropreason-core.h`) and
/// measured on healthy connections.
pub struct Housekeeping {
    /// The reason's name without `SKB_DROP_REASON_`.
    pub reason: &'static str,
    /// Only when freed in this function (a reason as vague as `NOT_SPECIFIED` means
    /// housekeeping in one place only).
    pub at: Option<&'static str>,
    /// Only for a connection's first segment (`Some(true)`: SYN without ACK), only for
    /// segments without SYN (`Some(false)`: a connection's end, never its start), or for any
    /// packet.
    pub opening: Option<bool>,
    /// Said in place of a drop.
    pub why: &'static str,
}

pub const HOUSEKEEPING: &[Housekeeping] = &[
    // "bulk free": a socket's queues emptied as it is destroyed (`sk_stream_kill_queues`),
    // the FIN|ACK that closed it among them.
    Housekeeping {
        reason: "QUEUE_PURGE",
        at: None,
        opening: None,
        why: "its socket's queue was purged as the socket closed",
    },
    // "socket is close()d": queued on a socket its owner closed.
    Housekeeping {
        reason: "SOCKET_CLOSE",
        at: None,
        opening: None,
        why: "its socket was closed with it still queued",
    },
    // AF_UNIX only; never an IP packet, listed so it is never counted as one.
    Housekeeping {
        reason: "UNIX_DISCONNECT",
        at: None,
        opening: None,
        why: "its unix socket was disconnected",
    },
    // Measured on 6.18: the client's FIN|ACK after the server closed first reaches a TIME_WAIT
    // connection, which answers it with an ACK, and `tcp_v4_rcv` frees it without a reason.
    // Every loss in `tcp_v4_rcv` names its reason (NO_SOCKET, TCP_CSUM, ...).
    Housekeeping {
        reason: "NOT_SPECIFIED",
        at: Some("tcp_v4_rcv"),
        opening: Some(false),
        why: "a connection in TIME_WAIT took it (the end of a close)",
    },
    // Measured on 6.18: a SYN sent again (its SYN-ACK was lost) reaches the request socket
    // its first copy made; `tcp_check_req` sends the SYN-ACK again and `tcp_v4_rcv` frees the
    // copy without a reason. A first SYN meets a listener, or a reason (NO_SOCKET, ...).
    Housekeeping {
        reason: "NOT_SPECIFIED",
        at: Some("tcp_v4_rcv"),
        opening: Some(true),
        why: "a retransmitted SYN reached the half-open connection its first copy made, which answered it with the SYN-ACK again",
    },
];

/// Drop reason value → name without the `SKB_DROP_REASON_` prefix, and which values are
/// housekeeping rather than drops.
#[derive(Clone, Debug, Default)]
pub struct DropReasons {
    names: HashMap<u32, String>,
    /// Values of [`HOUSEKEEPING`]'s reasons in this kernel; empty with `--all-drops`.
    housekeeping: HashSet<u32>,
}

impl DropReasons {
    pub fn from_btf(btf: &mut Btf) -> Result<Self, BtfError> {
        Ok(Self::from_pairs(btf.enum_values("skb_drop_reason")?))
    }

    /// Builds the table from (enum variant, value) pairs; variants that are not reasons
    /// (`SKB_NOT_DROPPED_YET`, `SKB_CONSUMED`, `SKB_DROP_REASON_MAX`) are kept under their own
    /// names so nothing is shown as a bare number.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, i64)>) -> Self {
        let names = pairs
            .into_iter()
            .filter_map(|(name, value)| {
                let value = u32::try_from(value).ok()?;
                let short = name.strip_prefix(PREFIX).unwrap_or(&name).to_owned();
                Some((value, short))
            })
            .collect::<HashMap<_, _>>();
        let housekeeping = names
            .iter()
            .filter(|(_, n)| HOUSEKEEPING.iter().any(|h| h.reason == n.as_str()))
            .map(|(&v, _)| v)
            .collect();
        Self {
            names,
            housekeeping,
        }
    }

    /// `--all-drops`: every free with a reason is a drop, housekeeping included.
    pub fn counting_all(mut self) -> Self {
        self.housekeeping.clear();
        self
    }

    /// The reason's name, or `UNKNOWN(<n>)` for values the kernel's BTF does not list
    /// (subsystem reasons carry their subsystem in the upper 16 bits).
    pub fn name(&self, reason: u32) -> String {
        match self.names.get(&reason) {
            Some(n) => n.clone(),
            None => format!("UNKNOWN({reason})"),
        }
    }

    /// Whether frees with this reason may be the stack's housekeeping (wherever they are and
    /// whatever the packet): left out of drop counts that cannot tell (the kernel's per-key
    /// counts), unless `--all-drops`.
    pub fn maybe_housekeeping(&self, reason: u32) -> bool {
        self.housekeeping.contains(&reason)
    }

    /// Why a free with this reason, in function `at`, of a packet with these TCP flags, is
    /// the packet's end rather than a drop; `None` for a drop.
    pub fn housekeeping(
        &self,
        reason: u32,
        at: Option<&str>,
        flags: TcpFlags,
    ) -> Option<&'static str> {
        if !self.housekeeping.contains(&reason) {
            return None;
        }
        let name = self.names.get(&reason)?;
        HOUSEKEEPING
            .iter()
            .find(|h| {
                h.reason == name.as_str()
                    && h.at.is_none_or(|f| at == Some(f))
                    && h.opening.is_none_or(|opening| {
                        if opening {
                            flags.opens()
                        } else {
                            !flags.contains(TcpFlags::SYN)
                        }
                    })
            })
            .map(|h| h.why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_prefix_and_keeps_unknown_numbers_visible() {
        let t = DropReasons::from_pairs([
            ("SKB_NOT_DROPPED_YET".to_owned(), 0),
            ("SKB_DROP_REASON_NO_SOCKET".to_owned(), 3),
            ("SKB_DROP_REASON_IP_INADDRERRORS".to_owned(), 87),
        ]);
        assert_eq!(t.name(87), "IP_INADDRERRORS");
        assert_eq!(t.name(3), "NO_SOCKET");
        assert_eq!(t.name(0), "SKB_NOT_DROPPED_YET");
        assert_eq!(t.name(4242), "UNKNOWN(4242)");
    }

    #[test]
    fn a_purge_at_close_is_housekeeping_unless_all_drops_are_asked_for() {
        let t = DropReasons::from_pairs([
            ("SKB_DROP_REASON_NO_SOCKET".to_owned(), 3),
            ("SKB_DROP_REASON_QUEUE_PURGE".to_owned(), 61),
            ("SKB_DROP_REASON_SOCKET_CLOSE".to_owned(), 4),
            ("SKB_DROP_REASON_NOT_SPECIFIED".to_owned(), 2),
        ]);
        let fin = TcpFlags::from_bits(TcpFlags::FIN.bits() | TcpFlags::ACK.bits());
        let at = |f| Some(f);
        assert!(
            t.housekeeping(61, at("sk_stream_kill_queues"), fin)
                .unwrap()
                .contains("purged")
        );
        assert!(t.housekeeping(4, None, fin).is_some());
        assert_eq!(
            t.housekeeping(3, at("tcp_v4_rcv"), TcpFlags::SYN),
            None,
            "a SYN with no listener is a drop"
        );
        assert!(
            t.housekeeping(2, at("tcp_v4_rcv"), fin)
                .unwrap()
                .contains("TIME_WAIT")
        );
        assert!(
            t.housekeeping(2, at("tcp_v4_rcv"), TcpFlags::SYN)
                .unwrap()
                .contains("retransmitted SYN"),
            "a SYN freed without a reason met the half-open connection of its first copy"
        );
        let syn_ack = TcpFlags::SYN | TcpFlags::ACK;
        assert_eq!(t.housekeeping(2, at("tcp_v4_rcv"), syn_ack), None);
        assert_eq!(
            t.housekeeping(2, at("ip_rcv_core"), fin),
            None,
            "NOT_SPECIFIED elsewhere is a drop"
        );
        assert_eq!(t.housekeeping(999, None, fin), None);
        let all = t.counting_all();
        assert_eq!(all.housekeeping(61, None, fin), None);
        assert_eq!(all.name(61), "QUEUE_PURGE");
    }
}
