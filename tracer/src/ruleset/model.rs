//! The ruleset model every source is parsed into (iptables-save text, nft JSON), and the
//! evaluator that walks a packet through it: base chains of a hook in priority order, jumps,
//! gotos, returns and policies, the way the kernel does.

use std::{collections::HashMap, net::Ipv4Addr};

use super::{CtState, Hook, HookOutcome, PacketAtHook, RuleRef, RuleVerdict};
use crate::net::{Proto, TcpFlags};

/// An IPv4 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Net {
    /// `a.b.c.d[/len]`.
    pub fn parse(s: &str) -> Option<Self> {
        let (a, l) = s.split_once('/').unwrap_or((s, "32"));
        let len: u8 = l.parse().ok().filter(|l| *l <= 32)?;
        Some(Self {
            addr: a.parse().ok()?,
            len,
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - self.len as u32).unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

/// One match condition of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cond {
    InIface(String),
    OutIface(String),
    Src(Net),
    Dst(Net),
    Proto(Proto),
    Dport(u16, u16),
    Sport(u16, u16),
    /// `-m multiport --dports/--sports/--ports`: (is dport, is sport, ranges).
    Multiport(bool, bool, Vec<(u16, u16)>),
    CtState(Vec<CtState>),
    DstTypeLocal,
    SrcTypeLocal,
    PhysdevIn(String),
    PhysdevOut(String),
    PhysdevIsBridged,
    /// `--syn`: SYN set, ACK/RST/FIN clear.
    Syn,
    /// `--tcp-flags MASK COMP`: of the flags in the mask, exactly those of comp are set.
    TcpFlags(TcpFlags, TcpFlags),
    /// Any of these holds (an nft set: `tcp dport { 80, 443 }`).
    AnyOf(Vec<Cond>),
    /// Never holds for the packets pathtrace follows (`meta nfproto ipv6`).
    Never,
    /// A match the evaluator does not model, as written.
    Unknown(String),
}

/// What a rule does when it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Accept,
    Drop,
    Reject,
    Return,
    Jump(String),
    Goto(String),
    Dnat(Ipv4Addr, Option<u16>),
    /// SNAT, MASQUERADE: accept in the nat table.
    SourceNat,
    /// LOG, MARK, ...: non-terminal.
    Continue(String),
    /// No `-j`: counts and goes on.
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainRule {
    /// 1-based position in its chain.
    pub index: usize,
    /// nft's rule handle (`nft -a list ruleset`), for native nft rules.
    pub handle: Option<u64>,
    /// As iptables-save or nft prints it, without counters.
    pub text: String,
    pub packets: Option<u64>,
    /// (negated, condition)
    pub conds: Vec<(bool, Cond)>,
    pub target: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// Where the kernel enters this chain; `None` for chains reached only by jumps.
    pub base: Option<BaseChain>,
    /// Built-in chains have a policy.
    pub policy: Option<RuleVerdict>,
    pub policy_packets: Option<u64>,
    pub rules: Vec<ChainRule>,
}

/// `NF_IP_PRI_CONNTRACK`: chains that run before it see packets without a conntrack entry.
pub const PRIORITY_CONNTRACK: i32 = -200;

/// A chain the kernel enters at a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub hook: Hook,
    /// Lower runs first (raw -300, mangle -150, dstnat -100, filter 0, srcnat 100).
    pub priority: i32,
    /// A nat chain: it sees only the first packet of a connection.
    pub nat: bool,
    /// A chain of the nft `bridge` family (ebtables' successor): it sees frames being
    /// bridged, and its `iifname`/`oifname` are bridge ports, not the bridge.
    pub bridge: bool,
}

impl BaseChain {
    /// Whether the kernel runs this chain for `pkt`: a nat chain sees only a connection's
    /// first packet.
    fn sees(&self, pkt: &PacketAtHook) -> bool {
        !self.nat || pkt.ct_state == CtState::New
    }

    /// The built-in chains of iptables' tables, at the priorities the kernel registers them.
    pub fn iptables(table: &str, chain: &str) -> Option<Self> {
        let hook = Hook::from_name(chain)?;
        let priority = match (table, hook) {
            ("raw", _) => -300,
            ("mangle", _) => -150,
            ("nat", Hook::Prerouting | Hook::Output) => -100,
            ("nat", _) => 100,
            ("filter", _) => 0,
            ("security", _) => 50,
            _ => return None,
        };
        Some(Self {
            hook,
            priority,
            nat: table == "nat",
            bridge: false,
        })
    }
}

/// Which tool owns a table: it decides how a rule is named and how a fix is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// iptables-save text.
    Iptables(Flavor),
    /// A native nftables table (`nft -j list ruleset`): firewalld, hand-written rulesets.
    Nft,
    /// ebtables-save text: bridged frames only.
    Ebtables(Flavor),
}

/// Which kernel side an iptables/ebtables ruleset lives in. Both can hold rules at once, and
/// each tool lists only its own: rules in the other one are a classic hidden drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// nf_tables (`iptables-nft`, `ebtables-nft`: the default of current distributions).
    Nft,
    /// x_tables (`iptables-legacy`, `ebtables-legacy`).
    Legacy,
}

impl RuleRef {
    /// An iptables nat table's rule (either backend): where a DNAT is shadowed.
    pub fn in_iptables_nat(&self) -> bool {
        matches!(Source::of_label(&self.table), (Source::Iptables(_), "nat"))
    }
}

impl Source {
    /// The command that lists and edits rules of this source.
    pub fn command(self) -> &'static str {
        match self {
            Self::Iptables(Flavor::Nft) => "iptables",
            Self::Iptables(Flavor::Legacy) => "iptables-legacy",
            Self::Nft => "nft",
            Self::Ebtables(Flavor::Nft) => "ebtables",
            Self::Ebtables(Flavor::Legacy) => "ebtables-legacy",
        }
    }

    /// The source of a rule from its table label (see [`Table::label`]), and the table's own
    /// name.
    pub fn of_label(label: &str) -> (Self, &str) {
        match label.split_once(' ') {
            None => (Self::Iptables(Flavor::Nft), label),
            Some(("iptables-legacy", t)) => (Self::Iptables(Flavor::Legacy), t),
            Some(("ebtables", t)) => (Self::Ebtables(Flavor::Nft), t),
            Some(("ebtables-legacy", t)) => (Self::Ebtables(Flavor::Legacy), t),
            Some(_) => (Self::Nft, label),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// `filter`, `nat` for iptables; the table name for nft.
    pub name: String,
    /// nft family (`ip`, `inet`, ...); `ip` for iptables.
    pub family: String,
    pub source: Source,
    pub chains: Vec<Chain>,
}

impl Table {
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// How rules of this table are named in findings: `filter` for iptables(-nft),
    /// `iptables-legacy filter`, `inet firewalld` for nft, `ebtables filter`.
    pub fn label(&self) -> String {
        match self.source {
            Source::Iptables(Flavor::Nft) => self.name.clone(),
            Source::Nft => format!("{} {}", self.family, self.name),
            other => format!("{} {}", other.command(), self.name),
        }
    }
}

/// Every table of a namespace, from every source that has rules there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: Vec<Table>,
    /// What could not be read and so is not evaluated: a listing that failed or is not
    /// installed, a line that did not parse (`iptables-legacy-save line 12: expected -A
    /// CHAIN: ...`). Said wherever the ruleset is judged, never dropped.
    pub unread: Vec<String>,
}

impl Ruleset {
    /// An iptables table by name (`nat`, `filter`).
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables
            .iter()
            .find(|t| matches!(t.source, Source::Iptables(_)) && t.name == name)
    }

    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(|t| {
            t.chains
                .iter()
                .all(|c| c.rules.is_empty() && c.policy != Some(RuleVerdict::Drop))
        })
    }

    /// The packet counter of the rule or policy `r` names, in this reading of the ruleset.
    pub fn packets_of(&self, r: &RuleRef) -> Option<u64> {
        let table = self.tables.iter().find(|t| t.label() == r.table)?;
        let chain = table.chain(&r.chain)?;
        match r.index {
            Some(i) => {
                chain
                    .rules
                    .iter()
                    .find(|x| x.index == i && x.handle == r.handle && x.text == r.text)?
                    .packets
            }
            None => chain.policy_packets,
        }
    }

    /// Adds another source's tables (nft next to iptables).
    pub fn merge(&mut self, other: Ruleset) {
        self.tables.extend(other.tables);
        self.unread.extend(other.unread);
    }
}

/// The drop a chain's flow ends in: a DROP/REJECT rule, or its DROP policy when the packet
/// fell through. `None` when the chain let it go on.
fn dropped(
    flow: Flow,
    table: &Table,
    chain: &Chain,
    base: BaseChain,
    hook: Hook,
) -> Option<(RuleVerdict, RuleRef)> {
    match flow {
        Flow::Verdict(RuleVerdict::Accept, _) | Flow::Dnat(..) => None,
        Flow::Verdict(v, by) => Some((v, by)),
        Flow::Fallthrough if chain.policy == Some(RuleVerdict::Drop) => Some((
            RuleVerdict::Drop,
            RuleRef {
                table: table.label(),
                chain: chain.name.clone(),
                index: None,
                handle: None,
                text: match table.source {
                    Source::Iptables(_) | Source::Ebtables(_) => format!(":{} DROP", chain.name),
                    Source::Nft => format!(
                        "chain {} {{ type {} hook {} priority {}; policy drop; }}",
                        chain.name,
                        if base.nat { "nat" } else { "filter" },
                        hook.name().to_lowercase(),
                        base.priority
                    ),
                },
                packets: chain.policy_packets,
            },
        )),
        Flow::Fallthrough => None,
    }
}

fn iface_matches(pattern: &str, name: Option<&str>) -> Option<bool> {
    let name = name?;
    Some(match pattern.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    })
}

/// `Some(true/false)` when decidable for this packet, `None` when it is not.
fn cond_holds(c: &Cond, p: &PacketAtHook) -> Option<bool> {
    let in_range = |v: u16, (a, b): (u16, u16)| a <= v && v <= b;
    let has_ports = p.proto.has_ports() || p.proto == Proto::SCTP;
    Some(match c {
        Cond::InIface(n) => iface_matches(n, p.in_if.as_deref())?,
        Cond::OutIface(n) => iface_matches(n, p.out_if.as_deref())?,
        Cond::Src(n) => n.contains(p.src),
        Cond::Dst(n) => n.contains(p.dst),
        Cond::Proto(x) => p.proto == *x,
        Cond::Dport(a, b) => has_ports && in_range(p.dport, (*a, *b)),
        Cond::Sport(a, b) => has_ports && in_range(p.sport, (*a, *b)),
        Cond::Multiport(d, s, ranges) => {
            has_ports
                && ranges
                    .iter()
                    .any(|r| (*d && in_range(p.dport, *r)) || (*s && in_range(p.sport, *r)))
        }
        Cond::CtState(states) => states.contains(&p.ct_state),
        Cond::DstTypeLocal => p.local_addrs.contains(&p.dst) || p.dst.is_loopback(),
        Cond::SrcTypeLocal => p.local_addrs.contains(&p.src) || p.src.is_loopback(),
        Cond::PhysdevIn(n) => iface_matches(n, p.physdev_in.as_deref()).unwrap_or(false),
        Cond::PhysdevOut(n) => iface_matches(n, p.physdev_out.as_deref()).unwrap_or(false),
        Cond::PhysdevIsBridged => p.physdev_in.is_some() && p.physdev_out.is_some(),
        Cond::Syn => p.proto == Proto::TCP && p.tcp_flags.handshake() == TcpFlags::SYN,
        Cond::TcpFlags(mask, comp) => {
            p.proto == Proto::TCP && p.tcp_flags.bits() & mask.bits() == comp.bits()
        }
        Cond::AnyOf(any) => {
            let mut undecided = false;
            for c in any {
                match cond_holds(c, p) {
                    Some(true) => return Some(true),
                    Some(false) => {}
                    None => undecided = true,
                }
            }
            if undecided {
                return None;
            }
            false
        }
        Cond::Never => false,
        Cond::Unknown(_) => return None,
    })
}

enum Flow {
    /// Fell off the end (or RETURN) of this chain.
    Fallthrough,
    Verdict(RuleVerdict, RuleRef),
    Dnat(Ipv4Addr, Option<u16>, RuleRef),
}

struct Walk<'a> {
    table: &'a Table,
    pkt: &'a PacketAtHook,
    path: Vec<String>,
    unknown: Vec<String>,
}

impl Walk<'_> {
    fn rule_ref(&self, chain: &Chain, rule: &ChainRule) -> RuleRef {
        RuleRef {
            table: self.table.label(),
            chain: chain.name.clone(),
            index: Some(rule.index),
            handle: rule.handle,
            text: rule.text.clone(),
            packets: rule.packets,
        }
    }

    fn chain(&mut self, name: &str, depth: u32) -> Flow {
        let Some(chain) = self.table.chain(name) else {
            return Flow::Fallthrough;
        };
        if depth > 32 {
            return Flow::Fallthrough;
        }
        self.path.push(format!("{}/{}", self.table.label(), name));
        for rule in &chain.rules {
            let mut all = true;
            for (neg, c) in &rule.conds {
                match cond_holds(c, self.pkt) {
                    Some(v) if v != *neg => {}
                    Some(_) => {
                        all = false;
                        break;
                    }
                    None => {
                        let text = match c {
                            Cond::Unknown(t) => t.clone(),
                            other => format!("{other:?}"),
                        };
                        self.unknown.push(format!("{}: {text}", rule.text));
                        all = false;
                        break;
                    }
                }
            }
            if !all {
                continue;
            }
            let here = self.rule_ref(chain, rule);
            match &rule.target {
                Action::Accept | Action::SourceNat => {
                    return Flow::Verdict(RuleVerdict::Accept, here);
                }
                Action::Drop => return Flow::Verdict(RuleVerdict::Drop, here),
                Action::Reject => return Flow::Verdict(RuleVerdict::Reject, here),
                Action::Dnat(a, p) => return Flow::Dnat(*a, *p, here),
                Action::Return => return Flow::Fallthrough,
                Action::Jump(sub) => match self.chain(sub, depth + 1) {
                    Flow::Fallthrough => {}
                    decided => return decided,
                },
                Action::Goto(sub) => return self.chain(sub, depth + 1),
                Action::Continue(_) | Action::None => {}
            }
        }
        // An ebtables user chain may carry its own policy.
        match chain.policy {
            Some(v) if chain.base.is_none() => Flow::Verdict(
                v,
                RuleRef {
                    table: self.table.label(),
                    chain: chain.name.clone(),
                    index: None,
                    handle: None,
                    text: format!(":{} {}", chain.name, v.name()),
                    packets: chain.policy_packets,
                },
            ),
            _ => Flow::Fallthrough,
        }
    }
}

impl Ruleset {
    /// Runs the tables of one hook over the packet, in kernel order. NAT tables see only the
    /// first packet of a connection.
    pub fn evaluate(&self, hook: Hook, pkt: &PacketAtHook) -> HookOutcome {
        self.evaluate_family(hook, pkt, false)
    }

    /// Runs the `bridge` family's chains of one hook over a frame being bridged; `pkt`'s
    /// interfaces are the bridge ports.
    pub fn evaluate_bridge(&self, hook: Hook, pkt: &PacketAtHook) -> HookOutcome {
        self.evaluate_family(hook, pkt, true)
    }

    fn evaluate_family(&self, hook: Hook, pkt: &PacketAtHook, bridge: bool) -> HookOutcome {
        let mut out = HookOutcome::unevaluated(hook);
        // Every base chain of this hook, from every table and source, in the order the
        // kernel runs them: by priority, ties in registration (listing) order.
        let mut entries: Vec<(&Table, &Chain, BaseChain)> = self
            .tables
            .iter()
            .flat_map(|t| {
                t.chains.iter().filter_map(move |c| {
                    c.base
                        .filter(|b| b.hook == hook && b.bridge == bridge)
                        .map(|b| (t, c, b))
                })
            })
            .collect();
        entries.sort_by_key(|(_, _, b)| b.priority);
        // The packet as each chain sees it: rewritten by a DNAT for the chains after it.
        let mut now = pkt.clone();
        for (k, &(table, chain, base)) in entries.iter().enumerate() {
            if !base.sees(pkt) {
                continue;
            }
            let (flow, path, unknown) = self.run_base(table, chain, base, hook, bridge, &now);
            out.path.extend(path);
            out.unknown_matches.extend(unknown);
            match flow {
                Flow::Verdict(RuleVerdict::Accept, by) => {
                    // The accepting rule of the last chain that decided explicitly (in nat, an
                    // ACCEPT also means no DNAT for this connection).
                    out.by = Some(by);
                }
                Flow::Dnat(a, p, by) => {
                    out.dnat = Some((a, p));
                    out.by = Some(by);
                    now.dst = a;
                    if let Some(p) = p {
                        now.dport = p;
                    }
                }
                flow => {
                    let Some((verdict, by)) = dropped(flow, table, chain, base, hook) else {
                        continue;
                    };
                    out.verdict = verdict;
                    out.by = Some(by);
                    out.tied = self.tied_drop(&entries[k + 1..], base, hook, bridge, &now);
                    return out;
                }
            }
        }
        out
    }

    /// Walks one base chain; the packet has no conntrack entry yet before priority -200 at
    /// PREROUTING and OUTPUT, where a `ctstate`/`ct state` match sees INVALID (`-t raw ...
    /// --ctstate INVALID -j DROP` drops every packet, a SYN included).
    fn run_base(
        &self,
        table: &Table,
        chain: &Chain,
        base: BaseChain,
        hook: Hook,
        bridge: bool,
        pkt: &PacketAtHook,
    ) -> (Flow, Vec<String>, Vec<String>) {
        let before_conntrack = !bridge
            && matches!(hook, Hook::Prerouting | Hook::Output)
            && base.priority < PRIORITY_CONNTRACK;
        let untracked;
        let seen = if before_conntrack {
            untracked = PacketAtHook {
                ct_state: CtState::Invalid,
                ..pkt.clone()
            };
            &untracked
        } else {
            pkt
        };
        let mut walk = Walk {
            table,
            pkt: seen,
            path: Vec::new(),
            unknown: Vec::new(),
        };
        let flow = walk.chain(&chain.name, 0);
        (flow, walk.path, walk.unknown)
    }

    /// Another base chain at the same priority (of another table, or of the same one) that
    /// would drop the packet too: the kernel runs equal priorities in the order their hooks
    /// were registered, which no listing shows (nft's own chains of one table included), so
    /// which one dropped it cannot be told.
    fn tied_drop(
        &self,
        after: &[(&Table, &Chain, BaseChain)],
        base: BaseChain,
        hook: Hook,
        bridge: bool,
        pkt: &PacketAtHook,
    ) -> Option<String> {
        after
            .iter()
            .take_while(|(_, _, b)| b.priority == base.priority)
            .filter(|(_, _, b)| b.sees(pkt))
            .find_map(|&(t, c, b)| {
                let (flow, _, _) = self.run_base(t, c, b, hook, bridge, pkt);
                let (_, by) = dropped(flow, t, c, b, hook)?;
                Some(format!(
                    "{} {} drops it too, at the same priority ({}): the kernel runs chains of equal priority in the order they were registered, which no listing shows, so either may have dropped it",
                    by.table,
                    match by.index {
                        Some(i) => format!("chain {} rule {i}", by.chain),
                        None => format!("chain {} policy", by.chain),
                    },
                    base.priority
                ))
            })
    }

    /// Every DNAT rule for `dport` (nat table), with the chain it sits in: what a packet to a
    /// published port should have hit.
    pub fn dnat_rules_for(&self, proto: Proto, dport: u16) -> Vec<RuleRef> {
        let mut out = Vec::new();
        let Some(nat) = self.table("nat") else {
            return out;
        };
        let mut chain_rules: HashMap<&str, &Chain> = HashMap::new();
        for c in &nat.chains {
            chain_rules.insert(c.name.as_str(), c);
        }
        for c in &nat.chains {
            for r in &c.rules {
                let is_dnat = matches!(r.target, Action::Dnat(..));
                let port_ok = r.conds.iter().any(|(neg, cond)| {
                    !neg && match cond {
                        Cond::Dport(a, b) => *a <= dport && dport <= *b,
                        Cond::Multiport(true, _, ranges) => {
                            ranges.iter().any(|(a, b)| *a <= dport && dport <= *b)
                        }
                        _ => false,
                    }
                });
                let proto_ok = r
                    .conds
                    .iter()
                    .all(|(neg, cond)| !matches!(cond, Cond::Proto(p) if (*p == proto) == *neg));
                if is_dnat && port_ok && proto_ok {
                    out.push(RuleRef {
                        table: nat.label(),
                        chain: c.name.clone(),
                        index: Some(r.index),
                        handle: None,
                        text: r.text.clone(),
                        packets: r.packets,
                    });
                }
            }
        }
        out
    }
}
