//! Netfilter rulesets as data, and an evaluator that walks a packet through them.
//!
//! pathtrace never inserts TRACE rules: to say *which* rule dropped a packet it reads the
//! ruleset (`iptables-save -c` for iptables-nft and iptables-legacy) and evaluates it against
//! the packet as it was at each hook — interfaces, addresses after DNAT, ports, conntrack
//! state — the way the kernel walks the tables in priority order.

pub mod ebtables;
pub mod iptables;
pub mod model;
pub mod nft;
pub mod read;

pub use crate::net::Hook;
use crate::net::{Proto, TcpFlags};
pub use model::Ruleset;
pub use read::{ReadError, read_ruleset};

use std::net::Ipv4Addr;

use serde::Serialize;

impl RuleVerdict {
    /// As iptables and ebtables spell it in a policy.
    pub fn name(self) -> &'static str {
        match self {
            Self::Accept => "ACCEPT",
            Self::Drop => "DROP",
            Self::Reject => "REJECT",
        }
    }
}

pub use crate::net::CtState;

/// A packet as it stands at a hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketAtHook {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: Proto,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: TcpFlags,
    pub in_if: Option<String>,
    pub out_if: Option<String>,
    /// Bridge port the frame came in on / goes out of (br_netfilter), for `-m physdev`.
    pub physdev_in: Option<String>,
    pub physdev_out: Option<String>,
    pub ct_state: CtState,
    /// Addresses local to the namespace, for `-m addrtype --dst-type LOCAL`.
    pub local_addrs: Vec<Ipv4Addr>,
}

/// What a rule or policy decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleVerdict {
    Accept,
    Drop,
    Reject,
}

/// The rule or chain policy that decided, as a person finds it in `iptables-save`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub table: String,
    pub chain: String,
    /// 1-based position in its chain (`iptables -L --line-numbers`); `None` for the policy.
    pub index: Option<usize>,
    /// nft rule handle (`nft -a list ruleset`), for native nft rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
    /// The rule as `iptables-save` prints it, or `:CHAIN POLICY` for a policy.
    pub text: String,
    /// Packets the kernel counted for it, when the ruleset was read with counters.
    pub packets: Option<u64>,
}

/// The outcome of walking one hook's tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookOutcome {
    pub hook: Hook,
    pub verdict: RuleVerdict,
    /// The deciding rule or policy (`None` when every chain fell through to ACCEPT).
    pub by: Option<RuleRef>,
    /// The chains entered, in order (`filter/FORWARD → DOCKER-USER → ...`).
    pub path: Vec<String>,
    /// A DNAT that rewrote the destination here: (address, port).
    pub dnat: Option<(Ipv4Addr, Option<u16>)>,
    /// Matches the evaluator could not decide and assumed false.
    pub unknown_matches: Vec<String>,
    /// Another base chain at the deciding chain's priority drops the packet too: which of them
    /// the kernel ran first cannot be read from any listing.
    pub tied: Option<String>,
}

impl HookOutcome {
    /// A hook before any chain is walked (and one the evaluator does not walk at all):
    /// accepted, nothing known.
    pub fn unevaluated(hook: Hook) -> Self {
        Self {
            hook,
            verdict: RuleVerdict::Accept,
            by: None,
            path: Vec::new(),
            dnat: None,
            unknown_matches: Vec::new(),
            tied: None,
        }
    }
}

#[cfg(test)]
pub(crate) mod ruleset_fixtures {
    use std::net::Ipv4Addr;

    use super::{CtState, PacketAtHook};
    use crate::net::{Proto, TcpFlags};

    /// A new TCP SYN to port 80 being forwarded from `in_if` to `out_if`.
    pub fn syn_at_forward(in_if: &str, out_if: &str, src: Ipv4Addr) -> PacketAtHook {
        PacketAtHook {
            src,
            dst: Ipv4Addr::new(172, 17, 0, 2),
            proto: Proto::TCP,
            sport: 40000,
            dport: 80,
            tcp_flags: TcpFlags::SYN,
            in_if: Some(in_if.into()),
            out_if: Some(out_if.into()),
            physdev_in: None,
            physdev_out: None,
            ct_state: CtState::New,
            local_addrs: vec![Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(172, 17, 0, 1)],
        }
    }
}
