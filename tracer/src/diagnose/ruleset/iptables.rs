//! `iptables-save [-c]` text: parsed into tables, chains and rules, and evaluated.
//!
//! The same text comes from iptables-nft (`iptables-nft-save`) and iptables-legacy, so one
//! parser serves both. Matches the evaluator does not know are kept as text and reported, so
//! a verdict that depends on them is never stated with more confidence than it deserves.

use std::{collections::HashMap, net::Ipv4Addr};

use super::{CtState, Hook, HookOutcome, PacketAtHook, RuleRef, Verdict};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("line {line}: {why}")]
    Line { line: usize, why: String },
}

/// An IPv4 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Net {
    fn parse(s: &str) -> Option<Self> {
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
    Proto(u8),
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
    /// A match the evaluator does not model, as written.
    Unknown(String),
}

/// What a rule does when it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
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
pub struct Rule {
    /// 1-based position in its chain.
    pub index: usize,
    /// As iptables-save prints it, without counters.
    pub text: String,
    pub packets: Option<u64>,
    /// (negated, condition)
    pub conds: Vec<(bool, Cond)>,
    pub target: Target,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// Built-in chains have a policy.
    pub policy: Option<Verdict>,
    pub policy_packets: Option<u64>,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub chains: Vec<Chain>,
}

impl Table {
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }
}

/// A whole `iptables-save` dump.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: Vec<Table>,
}

fn tokenize(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    out.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(cur);
    }
    out
}

fn counters(s: &str) -> Option<u64> {
    s.trim_start_matches('[')
        .trim_end_matches(']')
        .split(':')
        .next()?
        .parse()
        .ok()
}

fn port_range(s: &str) -> Option<(u16, u16)> {
    match s.split_once(':') {
        Some((a, b)) => Some((
            if a.is_empty() { 0 } else { a.parse().ok()? },
            if b.is_empty() {
                u16::MAX
            } else {
                b.parse().ok()?
            },
        )),
        None => {
            let p = s.parse().ok()?;
            Some((p, p))
        }
    }
}

fn proto_number(s: &str) -> Option<u8> {
    match s {
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        "sctp" => Some(132),
        "all" => Some(0),
        other => other.parse().ok(),
    }
}

fn ct_states(s: &str) -> Vec<CtState> {
    s.split(',')
        .filter_map(|w| match w {
            "NEW" => Some(CtState::New),
            "ESTABLISHED" => Some(CtState::Established),
            "RELATED" => Some(CtState::Related),
            "INVALID" => Some(CtState::Invalid),
            "UNTRACKED" => Some(CtState::Untracked),
            _ => None,
        })
        .collect()
}

impl Ruleset {
    /// Parses `iptables-save` output, with or without `-c` counters.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut rs = Self::default();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let err = |why: &str| ParseError::Line {
                line: n + 1,
                why: why.to_owned(),
            };
            if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                rs.tables.push(Table {
                    name: name.to_owned(),
                    chains: Vec::new(),
                });
                continue;
            }
            let table = rs
                .tables
                .last_mut()
                .ok_or_else(|| err("rule before any *table"))?;
            if let Some(decl) = line.strip_prefix(':') {
                let mut parts = decl.split_whitespace();
                let name = parts.next().ok_or_else(|| err("chain without a name"))?;
                let policy = match parts.next() {
                    Some("ACCEPT") => Some(Verdict::Accept),
                    Some("DROP") => Some(Verdict::Drop),
                    _ => None,
                };
                table.chains.push(Chain {
                    name: name.to_owned(),
                    policy,
                    policy_packets: parts.next().and_then(counters),
                    rules: Vec::new(),
                });
                continue;
            }
            let (packets, rule_text) = if line.starts_with('[') {
                let (c, rest) = line
                    .split_once(' ')
                    .ok_or_else(|| err("counters without a rule"))?;
                (counters(c), rest.trim())
            } else {
                (None, line)
            };
            let tokens = tokenize(rule_text);
            if tokens.first().map(String::as_str) != Some("-A") || tokens.len() < 2 {
                return Err(err("expected -A CHAIN"));
            }
            let chain_name = tokens[1].clone();
            let (conds, target) = parse_rule(&tokens[2..], |name| {
                table.chains.iter().any(|c| c.name == name)
            });
            let chain = match table.chains.iter_mut().position(|c| c.name == chain_name) {
                Some(i) => &mut table.chains[i],
                None => {
                    table.chains.push(Chain {
                        name: chain_name.clone(),
                        policy: None,
                        policy_packets: None,
                        rules: Vec::new(),
                    });
                    let last = table.chains.len() - 1;
                    &mut table.chains[last]
                }
            };
            let index = chain.rules.len() + 1;
            chain.rules.push(Rule {
                index,
                text: rule_text.to_owned(),
                packets,
                conds,
                target,
            });
        }
        Ok(rs)
    }

    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(|t| {
            t.chains
                .iter()
                .all(|c| c.rules.is_empty() && c.policy != Some(Verdict::Drop))
        })
    }
}

/// Parses the words after `-A CHAIN`.
fn parse_rule(t: &[String], is_chain: impl Fn(&str) -> bool) -> (Vec<(bool, Cond)>, Target) {
    let mut conds = Vec::new();
    let mut target = Target::None;
    let mut neg = false;
    let mut i = 0;
    let mut module = String::new();
    let arg = |i: usize| t.get(i + 1).cloned().unwrap_or_default();
    while i < t.len() {
        let w = t[i].as_str();
        let mut push = |c: Cond, neg: &mut bool| {
            conds.push((*neg, c));
            *neg = false;
        };
        match w {
            "!" => {
                neg = true;
                i += 1;
                continue;
            }
            "-i" => push(Cond::InIface(arg(i)), &mut neg),
            "-o" => push(Cond::OutIface(arg(i)), &mut neg),
            "-s" => match Net::parse(&arg(i)) {
                Some(n) => push(Cond::Src(n), &mut neg),
                None => push(Cond::Unknown(format!("-s {}", arg(i))), &mut neg),
            },
            "-d" => match Net::parse(&arg(i)) {
                Some(n) => push(Cond::Dst(n), &mut neg),
                None => push(Cond::Unknown(format!("-d {}", arg(i))), &mut neg),
            },
            "-p" => match proto_number(&arg(i)) {
                Some(0) => {}
                Some(p) => push(Cond::Proto(p), &mut neg),
                None => push(Cond::Unknown(format!("-p {}", arg(i))), &mut neg),
            },
            "-m" => {
                module = arg(i);
                i += 2;
                continue;
            }
            "--dport" | "--destination-port" => match port_range(&arg(i)) {
                Some((a, b)) => push(Cond::Dport(a, b), &mut neg),
                None => push(Cond::Unknown(format!("--dport {}", arg(i))), &mut neg),
            },
            "--sport" | "--source-port" => match port_range(&arg(i)) {
                Some((a, b)) => push(Cond::Sport(a, b), &mut neg),
                None => push(Cond::Unknown(format!("--sport {}", arg(i))), &mut neg),
            },
            "--dports" | "--sports" | "--ports" if module == "multiport" => {
                let ranges: Vec<(u16, u16)> = arg(i).split(',').filter_map(port_range).collect();
                let (d, s) = match w {
                    "--dports" => (true, false),
                    "--sports" => (false, true),
                    _ => (true, true),
                };
                push(Cond::Multiport(d, s, ranges), &mut neg);
            }
            "--ctstate" | "--state" => push(Cond::CtState(ct_states(&arg(i))), &mut neg),
            "--dst-type" if arg(i) == "LOCAL" => push(Cond::DstTypeLocal, &mut neg),
            "--src-type" if arg(i) == "LOCAL" => push(Cond::SrcTypeLocal, &mut neg),
            "--physdev-in" => push(Cond::PhysdevIn(arg(i)), &mut neg),
            "--physdev-out" => push(Cond::PhysdevOut(arg(i)), &mut neg),
            "--physdev-is-bridged" => {
                push(Cond::PhysdevIsBridged, &mut neg);
                i += 1;
                continue;
            }
            "--syn" => {
                push(Cond::Syn, &mut neg);
                i += 1;
                continue;
            }
            "--comment" => {}
            "-j" | "-g" => {
                let name = arg(i);
                target = match (w, name.as_str()) {
                    ("-g", _) => Target::Goto(name),
                    (_, "ACCEPT") => Target::Accept,
                    (_, "DROP") => Target::Drop,
                    (_, "REJECT") => Target::Reject,
                    (_, "RETURN") => Target::Return,
                    (_, "MASQUERADE" | "SNAT") => Target::SourceNat,
                    (_, "DNAT") => {
                        let to = t
                            .iter()
                            .position(|x| x == "--to-destination")
                            .and_then(|p| t.get(p + 1))
                            .cloned()
                            .unwrap_or_default();
                        let (a, p) = to
                            .split_once(':')
                            .map_or((to.as_str(), None), |(a, p)| (a, Some(p)));
                        match a.parse() {
                            Ok(addr) => Target::Dnat(
                                addr,
                                p.and_then(|p| p.split('-').next()?.parse().ok()),
                            ),
                            Err(_) => Target::Continue(format!("DNAT {to}")),
                        }
                    }
                    (_, n) if is_chain(n) => Target::Jump(name),
                    (_, n) => Target::Continue(n.to_owned()),
                };
                // The rest are target options.
                break;
            }
            other if other.starts_with("--") => {
                // A module option we do not model: the whole match is unknown.
                let mut text = format!("-m {module} {other}");
                if t.get(i + 1).is_some_and(|v| !v.starts_with('-')) {
                    text.push(' ');
                    text.push_str(&arg(i));
                }
                if module != "comment" && module != "tcp" && module != "udp" {
                    push(Cond::Unknown(text), &mut neg);
                }
            }
            _ => {}
        }
        // Options with one argument.
        i += if t
            .get(i + 1)
            .is_some_and(|v| !v.starts_with("--") || v == "--")
        {
            2
        } else {
            1
        };
    }
    (conds, target)
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
    let has_ports = p.proto == 6 || p.proto == 17 || p.proto == 132;
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
        Cond::Syn => p.proto == 6 && p.tcp_flags & 0x17 == 0x02,
        Cond::Unknown(_) => return None,
    })
}

/// Tables in the order the kernel runs them at a hook (by priority).
fn tables_at(hook: Hook) -> &'static [&'static str] {
    match hook {
        Hook::Prerouting => &["raw", "mangle", "nat"],
        Hook::Input => &["mangle", "filter", "security", "nat"],
        Hook::Forward => &["mangle", "filter", "security"],
        Hook::Output => &["raw", "mangle", "nat", "filter", "security"],
        Hook::Postrouting => &["mangle", "nat"],
    }
}

enum Flow {
    /// Fell off the end (or RETURN) of this chain.
    Fallthrough,
    Verdict(Verdict, RuleRef),
    Dnat(Ipv4Addr, Option<u16>, RuleRef),
}

struct Walk<'a> {
    table: &'a Table,
    pkt: &'a PacketAtHook,
    path: Vec<String>,
    unknown: Vec<String>,
}

impl Walk<'_> {
    fn rule_ref(&self, chain: &Chain, rule: &Rule) -> RuleRef {
        RuleRef {
            table: self.table.name.clone(),
            chain: chain.name.clone(),
            index: Some(rule.index),
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
        self.path.push(format!("{}/{}", self.table.name, name));
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
                Target::Accept | Target::SourceNat => return Flow::Verdict(Verdict::Accept, here),
                Target::Drop => return Flow::Verdict(Verdict::Drop, here),
                Target::Reject => return Flow::Verdict(Verdict::Reject, here),
                Target::Dnat(a, p) => return Flow::Dnat(*a, *p, here),
                Target::Return => return Flow::Fallthrough,
                Target::Jump(sub) => match self.chain(sub, depth + 1) {
                    Flow::Fallthrough => {}
                    decided => return decided,
                },
                Target::Goto(sub) => return self.chain(sub, depth + 1),
                Target::Continue(_) | Target::None => {}
            }
        }
        Flow::Fallthrough
    }
}

impl Ruleset {
    /// Runs the tables of one hook over the packet, in kernel order. NAT tables see only the
    /// first packet of a connection.
    pub fn evaluate(&self, hook: Hook, pkt: &PacketAtHook) -> HookOutcome {
        let mut out = HookOutcome {
            hook,
            verdict: Verdict::Accept,
            by: None,
            path: Vec::new(),
            dnat: None,
            unknown_matches: Vec::new(),
        };
        for name in tables_at(hook) {
            if *name == "nat" && pkt.ct_state != CtState::New {
                continue;
            }
            let Some(table) = self.table(name) else {
                continue;
            };
            let Some(builtin) = table.chain(hook.name()) else {
                continue;
            };
            let mut walk = Walk {
                table,
                pkt,
                path: Vec::new(),
                unknown: Vec::new(),
            };
            let flow = walk.chain(hook.name(), 0);
            out.path.extend(walk.path);
            out.unknown_matches.extend(walk.unknown);
            match flow {
                Flow::Verdict(Verdict::Accept, by) => {
                    // The accepting rule of the last table that decided explicitly (in nat, an
                    // ACCEPT also means no DNAT for this connection).
                    out.by = Some(by);
                }
                Flow::Verdict(v, by) => {
                    out.verdict = v;
                    out.by = Some(by);
                    return out;
                }
                Flow::Dnat(a, p, by) => {
                    out.dnat = Some((a, p));
                    out.by = Some(by);
                }
                Flow::Fallthrough => {
                    if builtin.policy == Some(Verdict::Drop) {
                        out.verdict = Verdict::Drop;
                        out.by = Some(RuleRef {
                            table: table.name.clone(),
                            chain: builtin.name.clone(),
                            index: None,
                            text: format!(":{} DROP", builtin.name),
                            packets: builtin.policy_packets,
                        });
                        return out;
                    }
                }
            }
        }
        out
    }

    /// Every DNAT rule for `dport` (nat table), with the chain it sits in: what a packet to a
    /// published port should have hit.
    pub fn dnat_rules_for(&self, proto: u8, dport: u16) -> Vec<RuleRef> {
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
                let is_dnat = matches!(r.target, Target::Dnat(..));
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
                        table: "nat".into(),
                        chain: c.name.clone(),
                        index: Some(r.index),
                        text: r.text.clone(),
                        packets: r.packets,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: &str = include_str!("../../../test_data/iptables_docker.txt");

    fn syn(dst: [u8; 4], dport: u16, in_if: &str) -> PacketAtHook {
        PacketAtHook {
            src: Ipv4Addr::new(203, 0, 113, 2),
            dst: Ipv4Addr::from(dst),
            proto: 6,
            sport: 40000,
            dport,
            tcp_flags: 0x02,
            in_if: Some(in_if.into()),
            out_if: None,
            physdev_in: None,
            physdev_out: None,
            ct_state: CtState::New,
            local_addrs: vec![Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(172, 17, 0, 1)],
        }
    }

    #[test]
    fn parses_docker_rules_with_counters() {
        let rs = Ruleset::parse(DOCKER).expect("parses");
        let nat = rs.table("nat").expect("nat");
        let docker = nat.chain("DOCKER").expect("DOCKER chain");
        assert_eq!(docker.rules.len(), 2);
        assert_eq!(
            docker.rules[1].target,
            Target::Dnat(Ipv4Addr::new(172, 17, 0, 2), Some(80))
        );
        assert_eq!(docker.rules[1].packets, Some(3));
        assert!(
            docker.rules[1]
                .text
                .starts_with("-A DOCKER ! -i docker0 -p tcp")
        );
        let fwd = rs.table("filter").unwrap().chain("FORWARD").unwrap();
        assert_eq!(fwd.policy, Some(Verdict::Drop));
        assert_eq!(fwd.policy_packets, Some(7));
    }

    #[test]
    fn published_port_is_dnated_then_accepted_by_docker_chain() {
        let rs = Ruleset::parse(DOCKER).unwrap();
        let pre = rs.evaluate(Hook::Prerouting, &syn([203, 0, 113, 1], 10001, "eth0"));
        assert_eq!(pre.dnat, Some((Ipv4Addr::new(172, 17, 0, 2), Some(80))));
        let mut fwd = syn([172, 17, 0, 2], 80, "eth0");
        fwd.out_if = Some("docker0".into());
        let out = rs.evaluate(Hook::Forward, &fwd);
        assert_eq!(out.verdict, Verdict::Accept);
        let by = out.by.expect("the DOCKER accept");
        assert_eq!((by.chain.as_str(), by.index), ("DOCKER", Some(1)));
        assert!(
            out.path.contains(&"filter/DOCKER-USER".to_owned()),
            "{:?}",
            out.path
        );
    }

    #[test]
    fn unpublished_port_falls_to_the_forward_policy() {
        let rs = Ruleset::parse(DOCKER).unwrap();
        let mut fwd = syn([172, 17, 0, 2], 22, "eth0");
        fwd.out_if = Some("docker0".into());
        let out = rs.evaluate(Hook::Forward, &fwd);
        assert_eq!(out.verdict, Verdict::Drop);
        let by = out.by.unwrap();
        assert_eq!(by.index, None);
        assert_eq!(by.text, ":FORWARD DROP");
    }

    #[test]
    fn a_docker_user_drop_is_named_with_its_rule() {
        let text = DOCKER.replace(
            "[0:0] -A DOCKER-USER -j RETURN",
            "[4:240] -A DOCKER-USER -p tcp -m tcp --dport 80 -m comment --comment \"block web\" -j DROP\n[0:0] -A DOCKER-USER -j RETURN",
        );
        let rs = Ruleset::parse(&text).unwrap();
        let mut fwd = syn([172, 17, 0, 2], 80, "eth0");
        fwd.out_if = Some("docker0".into());
        let out = rs.evaluate(Hook::Forward, &fwd);
        assert_eq!(out.verdict, Verdict::Drop);
        let by = out.by.unwrap();
        assert_eq!(
            (by.chain.as_str(), by.index, by.packets),
            ("DOCKER-USER", Some(1), Some(4))
        );
        assert!(
            by.text.contains("--comment \"block web\"") || by.text.contains("block web"),
            "{}",
            by.text
        );
    }

    #[test]
    fn an_accept_ahead_of_docker_in_nat_prerouting_skips_dnat() {
        let text = DOCKER.replace(
            "[5:300] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
            "[2:120] -A PREROUTING ! -i p1p1 -p tcp -m multiport --dports 80,443,7788,10001 -j ACCEPT\n[5:300] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        );
        let rs = Ruleset::parse(&text).unwrap();
        let pre = rs.evaluate(Hook::Prerouting, &syn([203, 0, 113, 1], 10001, "eth0"));
        assert_eq!(pre.dnat, None);
        let by = pre.by.expect("the shadowing ACCEPT");
        assert_eq!((by.chain.as_str(), by.index), ("PREROUTING", Some(1)));
        let dnats = rs.dnat_rules_for(6, 10001);
        assert_eq!(dnats.len(), 1);
        assert_eq!(dnats[0].chain, "DOCKER");
    }

    #[test]
    fn established_replies_skip_nat_and_match_conntrack() {
        let rs = Ruleset::parse(DOCKER).unwrap();
        let mut reply = syn([203, 0, 113, 2], 40000, "docker0");
        reply.src = Ipv4Addr::new(172, 17, 0, 2);
        reply.sport = 80;
        reply.tcp_flags = 0x12;
        reply.ct_state = CtState::Established;
        reply.out_if = Some("eth0".into());
        let out = rs.evaluate(Hook::Forward, &reply);
        assert_eq!(out.verdict, Verdict::Accept);
        // Rule 5: `-A FORWARD -i docker0 ! -o docker0 -j ACCEPT`.
        assert_eq!(out.by.unwrap().index, Some(5));
    }

    #[test]
    fn unknown_matches_are_reported_not_guessed() {
        let text = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m set --match-set blocked src -j DROP\nCOMMIT\n";
        let rs = Ruleset::parse(text).unwrap();
        let out = rs.evaluate(Hook::Forward, &syn([172, 17, 0, 2], 80, "eth0"));
        assert_eq!(out.verdict, Verdict::Accept);
        assert_eq!(out.unknown_matches.len(), 1, "{:?}", out.unknown_matches);
    }

    #[test]
    fn rejects_malformed_input() {
        assert!(Ruleset::parse("-A FORWARD -j DROP\n").is_err());
        assert!(Ruleset::parse("*filter\n-X FORWARD\n").is_err());
    }
}
