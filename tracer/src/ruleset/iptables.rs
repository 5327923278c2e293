//! `iptables-save [-c]` text: parsed into tables, chains and rules, and evaluated.
//!
//! The same text comes from iptables-nft (`iptables-nft-save`) and iptables-legacy, so one
//! parser serves both. Matches the evaluator does not know are kept as text and reported, so
//! a verdict that depends on them is never stated with more confidence than it deserves.

use super::{
    CtState, RuleVerdict,
    model::{Action, BaseChain, Chain, ChainRule, Cond, Flavor, Net, Ruleset, Source, Table},
};
use crate::net::{Proto, TcpFlags};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SaveTextError {
    #[error("line {line}: {why}")]
    Line { line: usize, why: String },
}

pub(super) fn tokenize(line: &str) -> Vec<String> {
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

pub(super) fn port_range(s: &str) -> Option<(u16, u16)> {
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

/// `-p`'s argument: a name, a number, or `all` (protocol 0, which matches any).
pub(super) fn proto_number(s: &str) -> Option<Proto> {
    match s {
        "all" => Some(ALL),
        other => Proto::parse(other),
    }
}

/// `-p all`.
const ALL: Proto = Proto::from_number(0);

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

/// One meaningful line of `iptables-save`/`ebtables-save` text (they share the layout).
pub(super) enum SaveLine<'a> {
    /// `*filter`
    Table(&'a str),
    /// `:FORWARD DROP [0:0]`
    Chain {
        name: &'a str,
        policy: Option<RuleVerdict>,
        packets: Option<u64>,
    },
    /// `[packets:bytes] -A ...` (counters only with `-c`).
    ChainRule { packets: Option<u64>, text: &'a str },
}

/// Splits save text into numbered lines, without comments and COMMITs; a line that is none
/// of them is returned as an error with its number, and the rest still split.
pub(super) fn save_lines(text: &str) -> Vec<Result<(usize, SaveLine<'_>), SaveTextError>> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let err = |why: &str| SaveTextError::Line {
            line: n + 1,
            why: format!("{why}: `{line}`"),
        };
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        let parsed = (|| {
            Ok(if let Some(name) = line.strip_prefix('*') {
                SaveLine::Table(name)
            } else if let Some(decl) = line.strip_prefix(':') {
                let mut parts = decl.split_whitespace();
                SaveLine::Chain {
                    name: parts.next().ok_or_else(|| err("chain without a name"))?,
                    policy: match parts.next() {
                        Some("ACCEPT") => Some(RuleVerdict::Accept),
                        Some("DROP") => Some(RuleVerdict::Drop),
                        _ => None,
                    },
                    packets: parts.next().and_then(counters),
                }
            } else if line.starts_with('[') {
                let (c, rest) = line
                    .split_once(' ')
                    .ok_or_else(|| err("counters without a rule"))?;
                SaveLine::ChainRule {
                    packets: counters(c),
                    text: rest.trim(),
                }
            } else {
                SaveLine::ChainRule {
                    packets: None,
                    text: line,
                }
            })
        })();
        out.push(parsed.map(|p| (n + 1, p)));
    }
    out
}

/// A rule's conditions and target, from the words after `-A CHAIN` and which names are
/// chains of its table.
pub(super) type RuleParser = fn(&[String], &dyn Fn(&str) -> bool) -> (Vec<(bool, Cond)>, Action);

/// How one dialect of save text (iptables-save, ebtables-save) becomes the model: the layout
/// is shared, the chains' hooks and the rule syntax are not.
pub(super) struct Dialect {
    pub family: &'static str,
    pub source: Source,
    /// The base chain a declared chain is: (table, chain, policy).
    pub base: fn(&str, &str, Option<RuleVerdict>) -> Option<BaseChain>,
    pub rule: RuleParser,
    /// Counters may trail a rule as `-c packets bytes` (older ebtables-save).
    pub trailing_counters: bool,
    /// A rule for a chain never declared is an error (else the chain is created).
    pub strict_chains: bool,
}

/// Parses save text in `dialect` into tables, chains and rules. A line that does not parse
/// is kept in [`Ruleset::unread`] and the rest is read: one rule pathtrace does not follow
/// must not hide every other. Text with no table at all is not save text: an error.
pub(super) fn parse_save(text: &str, dialect: &Dialect) -> Result<Ruleset, SaveTextError> {
    let mut rs = Ruleset::default();
    let mut first_error = None;
    for parsed in save_lines(text) {
        let parsed = parsed.and_then(|(line, parsed)| {
            parse_line(&mut rs, parsed, dialect).map_err(|why| SaveTextError::Line {
                line,
                why: format!(
                    "{why}: `{}`",
                    text.lines().nth(line - 1).unwrap_or("").trim()
                ),
            })
        });
        if let Err(e) = parsed {
            rs.unread.push(e.to_string());
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) if rs.tables.is_empty() => Err(e),
        _ => Ok(rs),
    }
}

/// Adds one line's table, chain or rule to `rs`.
fn parse_line(
    rs: &mut Ruleset,
    parsed: SaveLine<'_>,
    dialect: &Dialect,
) -> Result<(), &'static str> {
    let (mut packets, mut rule_text) = match parsed {
        SaveLine::Table(name) => {
            rs.tables.push(Table {
                name: name.to_owned(),
                family: dialect.family.into(),
                source: dialect.source,
                chains: Vec::new(),
            });
            return Ok(());
        }
        SaveLine::Chain {
            name,
            policy,
            packets,
        } => {
            let table = rs.tables.last_mut().ok_or("chain before any *table")?;
            table.chains.push(Chain {
                name: name.to_owned(),
                base: (dialect.base)(&table.name, name, policy),
                policy,
                policy_packets: packets,
                rules: Vec::new(),
            });
            return Ok(());
        }
        SaveLine::ChainRule { packets, text } => (packets, text),
    };
    if dialect.trailing_counters
        && let Some((rule, counts)) = rule_text.rsplit_once(" -c ")
        && let Some((p, _bytes)) = counts.split_once(' ')
        && let Ok(p) = p.parse()
    {
        packets = Some(p);
        rule_text = rule;
    }
    let table = rs.tables.last_mut().ok_or("rule before any *table")?;
    add_rule(table, rule_text, packets, dialect)
}

/// Appends `-A CHAIN ...` to its chain (created unless the dialect declares every chain).
fn add_rule(
    table: &mut Table,
    rule_text: &str,
    packets: Option<u64>,
    dialect: &Dialect,
) -> Result<(), &'static str> {
    let tokens = tokenize(rule_text);
    if tokens.first().map(String::as_str) != Some("-A") || tokens.len() < 2 {
        return Err("expected -A CHAIN");
    }
    let (conds, target) = (dialect.rule)(&tokens[2..], &|name: &str| {
        table.chains.iter().any(|c| c.name == name)
    });
    let at = match table.chains.iter().position(|c| c.name == tokens[1]) {
        Some(i) => i,
        None if dialect.strict_chains => return Err("rule for an undeclared chain"),
        None => {
            table.chains.push(Chain {
                name: tokens[1].clone(),
                base: None,
                policy: None,
                policy_packets: None,
                rules: Vec::new(),
            });
            table.chains.len() - 1
        }
    };
    let chain = &mut table.chains[at];
    chain.rules.push(ChainRule {
        index: chain.rules.len() + 1,
        handle: None,
        text: rule_text.to_owned(),
        packets,
        conds,
        target,
    });
    Ok(())
}

impl Ruleset {
    /// Parses `iptables-save` output (iptables-nft's), with or without `-c` counters.
    pub fn parse(text: &str) -> Result<Self, SaveTextError> {
        Self::parse_from(text, Flavor::Nft)
    }

    /// Parses `iptables-save` output of the given backend.
    pub fn parse_from(text: &str, backend: Flavor) -> Result<Self, SaveTextError> {
        parse_save(
            text,
            &Dialect {
                family: "ip",
                source: Source::Iptables(backend),
                // Built-in chains are declared with a policy, user chains with `-`.
                base: |table, chain, policy| policy.and_then(|_| BaseChain::iptables(table, chain)),
                rule: |words, is_chain| parse_rule(words, is_chain),
                trailing_counters: false,
                strict_chains: false,
            },
        )
    }
}

/// Parses the words after `-A CHAIN`: matches until `-j`/`-g`, whose target ends the rule
/// (the words after it are the target's options).
fn parse_rule(t: &[String], is_chain: &dyn Fn(&str) -> bool) -> (Vec<(bool, Cond)>, Action) {
    let mut conds = Vec::new();
    let mut neg = false;
    let mut i = 0;
    let mut module = String::new();
    let arg = |i: usize| t.get(i + 1).cloned().unwrap_or_default();
    while i < t.len() {
        let w = t[i].as_str();
        let flag = match w {
            "!" => {
                neg = true;
                i += 1;
                continue;
            }
            "-m" => {
                module = arg(i);
                i += 2;
                continue;
            }
            "-j" | "-g" => return (conds, target(w, arg(i), t, is_chain)),
            "--physdev-is-bridged" => Some(Cond::PhysdevIsBridged),
            "--syn" => Some(Cond::Syn),
            // Options with two arguments: read whole, so neither is taken for an option.
            "--tcp-flags" | "--match-set" => {
                let second = t.get(i + 2).cloned().unwrap_or_default();
                let c = match (
                    w,
                    TcpFlags::parse_list(&arg(i)),
                    TcpFlags::parse_list(&second),
                ) {
                    ("--tcp-flags", Some(mask), Some(comp)) => Cond::TcpFlags(mask, comp),
                    _ => Cond::Unknown(format!("-m {module} {w} {} {second}", arg(i))),
                };
                conds.push((neg, c));
                neg = false;
                i += 3;
                continue;
            }
            // A word no option took: an option with more arguments than pathtrace reads.
            // Kept as an unknown match rather than let it shift the words after it.
            word if !word.starts_with('-') => {
                conds.push((neg, Cond::Unknown(format!("-m {module} ... {word}"))));
                neg = false;
                i += 1;
                continue;
            }
            _ => None,
        };
        if let Some(c) = flag {
            conds.push((neg, c));
            neg = false;
            i += 1;
            continue;
        }
        let has_value = t.get(i + 1).is_some_and(|v| !v.starts_with('-'));
        if let Some(c) = condition(w, &module, &arg(i), has_value) {
            conds.push((neg, c));
            neg = false;
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
    (conds, Action::None)
}

/// The match an option with its argument makes; `None` for words that decide nothing here
/// (`--comment`, `-p all`, the options of modules already read as matches).
fn condition(w: &str, module: &str, arg: &str, has_value: bool) -> Option<Cond> {
    let unknown = |opt: &str| Cond::Unknown(format!("{opt} {arg}"));
    Some(match w {
        "-i" => Cond::InIface(arg.to_owned()),
        "-o" => Cond::OutIface(arg.to_owned()),
        "-s" => Net::parse(arg).map_or_else(|| unknown("-s"), Cond::Src),
        "-d" => Net::parse(arg).map_or_else(|| unknown("-d"), Cond::Dst),
        "-p" => match proto_number(arg) {
            Some(ALL) => return None,
            Some(p) => Cond::Proto(p),
            None => unknown("-p"),
        },
        "--dport" | "--destination-port" => {
            port_range(arg).map_or_else(|| unknown("--dport"), |(a, b)| Cond::Dport(a, b))
        }
        "--sport" | "--source-port" => {
            port_range(arg).map_or_else(|| unknown("--sport"), |(a, b)| Cond::Sport(a, b))
        }
        "--dports" | "--sports" | "--ports" if module == "multiport" => {
            let ranges: Vec<(u16, u16)> = arg.split(',').filter_map(port_range).collect();
            let (d, s) = match w {
                "--dports" => (true, false),
                "--sports" => (false, true),
                _ => (true, true),
            };
            Cond::Multiport(d, s, ranges)
        }
        "--ctstate" | "--state" => Cond::CtState(ct_states(arg)),
        "--dst-type" if arg == "LOCAL" => Cond::DstTypeLocal,
        "--src-type" if arg == "LOCAL" => Cond::SrcTypeLocal,
        "--physdev-in" => Cond::PhysdevIn(arg.to_owned()),
        "--physdev-out" => Cond::PhysdevOut(arg.to_owned()),
        "--comment" => return None,
        other if other.starts_with("--") => {
            if matches!(module, "comment" | "tcp" | "udp") {
                return None;
            }
            // A module option we do not model: the whole match is unknown.
            let mut text = format!("-m {module} {other}");
            if has_value {
                text.push(' ');
                text.push_str(arg);
            }
            Cond::Unknown(text)
        }
        _ => return None,
    })
}

/// What `-j NAME` (or `-g NAME`) does; `t` holds the target's options (`--to-destination`).
fn target(w: &str, name: String, t: &[String], is_chain: &dyn Fn(&str) -> bool) -> Action {
    match (w, name.as_str()) {
        ("-g", _) => Action::Goto(name),
        (_, "ACCEPT") => Action::Accept,
        (_, "DROP") => Action::Drop,
        (_, "REJECT") => Action::Reject,
        (_, "RETURN") => Action::Return,
        (_, "MASQUERADE" | "SNAT") => Action::SourceNat,
        (_, "DNAT") => dnat(t),
        (_, n) if is_chain(n) => Action::Jump(name),
        (_, n) => Action::Continue(n.to_owned()),
    }
}

/// `-j DNAT --to-destination ADDR[:PORT[-PORT]]`.
fn dnat(t: &[String]) -> Action {
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
        Ok(addr) => Action::Dnat(addr, p.and_then(|p| p.split('-').next()?.parse().ok())),
        Err(_) => Action::Continue(format!("DNAT {to}")),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::ruleset::{Hook, PacketAtHook};

    const DOCKER: &str = include_str!("../../test_data/iptables_docker.txt");

    fn syn(dst: [u8; 4], dport: u16, in_if: &str) -> PacketAtHook {
        PacketAtHook {
            src: Ipv4Addr::new(203, 0, 113, 2),
            dst: Ipv4Addr::from(dst),
            proto: Proto::TCP,
            sport: 40000,
            dport,
            tcp_flags: TcpFlags::SYN,
            in_if: Some(in_if.into()),
            out_if: None,
            physdev_in: None,
            physdev_out: None,
            ct_state: CtState::New,
            local_addrs: vec![Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(172, 17, 0, 1)],
        }
    }

    /// `--tcp-flags` takes two words: both read, so the target after them is still the rule's
    /// (it was skipped, and the DROP read as no target at all); a two-word option pathtrace
    /// does not model is an unknown match, never a shift of the words after it.
    #[test]
    fn options_of_two_words_keep_the_rule_whole() {
        let text = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j DROP\n-A INPUT -m set --match-set blocked src -j DROP\nCOMMIT\n";
        let rs = Ruleset::parse(text).unwrap();
        let input = rs.table("filter").unwrap().chain("INPUT").unwrap();
        assert_eq!(input.rules[0].target, Action::Drop);
        assert_eq!(input.rules[1].target, Action::Drop);
        let out = rs.evaluate(Hook::Input, &syn([203, 0, 113, 1], 22, "eth0"));
        assert_eq!(out.verdict, RuleVerdict::Drop);
        assert_eq!(out.by.and_then(|b| b.index), Some(1));
        let mut ack = syn([203, 0, 113, 1], 22, "eth0");
        ack.tcp_flags = TcpFlags::ACK;
        let out = rs.evaluate(Hook::Input, &ack);
        assert_eq!(out.verdict, RuleVerdict::Accept, "{out:?}");
        assert_eq!(
            out.unknown_matches.len(),
            1,
            "the set: {:?}",
            out.unknown_matches
        );
    }

    /// iptables-nft's and iptables-legacy's filter INPUT both run at priority 0: when both
    /// would drop the packet, which one did depends on registration order, which no listing
    /// shows. Said, not guessed.
    #[test]
    fn two_tables_dropping_at_the_same_priority_are_a_tie() {
        let mut rs = Ruleset::parse(
            "*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
        )
        .unwrap();
        let legacy = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -p tcp -j DROP\nCOMMIT\n";
        rs.merge(Ruleset::parse_from(legacy, Flavor::Legacy).unwrap());
        let out = rs.evaluate(Hook::Input, &syn([203, 0, 113, 1], 22, "eth0"));
        assert_eq!(out.verdict, RuleVerdict::Drop);
        let tied = out.tied.expect("a tie");
        assert!(
            tied.starts_with(
                "iptables-legacy filter chain INPUT rule 1 drops it too, at the same priority (0)"
            ),
            "{tied}"
        );
        // Only one of them drops: no tie.
        let mut rs = Ruleset::parse(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
        )
        .unwrap();
        rs.merge(Ruleset::parse_from(legacy, Flavor::Legacy).unwrap());
        let out = rs.evaluate(Hook::Input, &syn([203, 0, 113, 1], 22, "eth0"));
        assert_eq!(
            out.by.map(|b| b.table),
            Some("iptables-legacy filter".into())
        );
        assert_eq!(out.tied, None);
    }

    /// A chain after Docker's DNAT at PREROUTING (an nft chain at priority 100) sees the
    /// rewritten destination, as the kernel shows it.
    #[test]
    fn chains_after_the_dnat_see_the_rewritten_destination() {
        let mut rs = Ruleset::parse(DOCKER).unwrap();
        let late = r#"{"nftables":[{"table":{"family":"ip","name":"late","handle":1}},
            {"chain":{"family":"ip","table":"late","name":"c","handle":1,"type":"filter","hook":"prerouting","prio":100,"policy":"accept"}},
            {"rule":{"family":"ip","table":"late","chain":"c","handle":2,"expr":[
              {"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":10001}},{"drop":null}]}},
            {"rule":{"family":"ip","table":"late","chain":"c","handle":3,"expr":[
              {"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":80}},{"drop":null}]}}]}"#;
        rs.merge(crate::ruleset::nft::parse(late, &[]).unwrap());
        let out = rs.evaluate(Hook::Prerouting, &syn([203, 0, 113, 1], 10001, "eth0"));
        assert_eq!(out.verdict, RuleVerdict::Drop, "{out:?}");
        assert_eq!(
            out.by.map(|b| b.index),
            Some(Some(2)),
            "port 80 after the DNAT"
        );
    }

    /// In raw (before conntrack) a packet has no entry: `--ctstate INVALID` matches every
    /// packet, a SYN included, and `--ctstate NEW` none; in filter, after conntrack, the SYN is
    /// NEW. What the kernel does, found by comparing with its counters.
    #[test]
    fn before_conntrack_every_packet_is_invalid() {
        let text = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -m conntrack --ctstate NEW -j ACCEPT\n-A PREROUTING -m conntrack --ctstate INVALID -j DROP\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A FORWARD -m conntrack --ctstate INVALID -j DROP\nCOMMIT\n";
        let rs = Ruleset::parse(text).unwrap();
        let pre = rs.evaluate(Hook::Prerouting, &syn([172, 17, 0, 2], 80, "eth0"));
        assert_eq!(pre.verdict, RuleVerdict::Drop);
        let by = pre.by.expect("the rule");
        assert_eq!((by.table.as_str(), by.index), ("raw", Some(2)));
        let fwd = rs.evaluate(Hook::Forward, &syn([172, 17, 0, 2], 80, "eth0"));
        assert_eq!(fwd.verdict, RuleVerdict::Accept, "NEW in filter: {fwd:?}");
    }

    #[test]
    fn parses_docker_rules_with_counters() {
        let rs = Ruleset::parse(DOCKER).expect("parses");
        let nat = rs.table("nat").expect("nat");
        let docker = nat.chain("DOCKER").expect("DOCKER chain");
        assert_eq!(docker.rules.len(), 2);
        assert_eq!(
            docker.rules[1].target,
            Action::Dnat(Ipv4Addr::new(172, 17, 0, 2), Some(80))
        );
        assert_eq!(docker.rules[1].packets, Some(3));
        assert!(
            docker.rules[1]
                .text
                .starts_with("-A DOCKER ! -i docker0 -p tcp")
        );
        let fwd = rs.table("filter").unwrap().chain("FORWARD").unwrap();
        assert_eq!(fwd.policy, Some(RuleVerdict::Drop));
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
        assert_eq!(out.verdict, RuleVerdict::Accept);
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
        assert_eq!(out.verdict, RuleVerdict::Drop);
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
        assert_eq!(out.verdict, RuleVerdict::Drop);
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
        let dnats = rs.dnat_rules_for(Proto::TCP, 10001);
        assert_eq!(dnats.len(), 1);
        assert_eq!(dnats[0].chain, "DOCKER");
    }

    #[test]
    fn established_replies_skip_nat_and_match_conntrack() {
        let rs = Ruleset::parse(DOCKER).unwrap();
        let mut reply = syn([203, 0, 113, 2], 40000, "docker0");
        reply.src = Ipv4Addr::new(172, 17, 0, 2);
        reply.sport = 80;
        reply.tcp_flags = TcpFlags::SYN | TcpFlags::ACK;
        reply.ct_state = CtState::Established;
        reply.out_if = Some("eth0".into());
        let out = rs.evaluate(Hook::Forward, &reply);
        assert_eq!(out.verdict, RuleVerdict::Accept);
        // ChainRule 5: `-A FORWARD -i docker0 ! -o docker0 -j ACCEPT`.
        assert_eq!(out.by.unwrap().index, Some(5));
    }

    #[test]
    fn unknown_matches_are_reported_not_guessed() {
        let text = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m set --match-set blocked src -j DROP\nCOMMIT\n";
        let rs = Ruleset::parse(text).unwrap();
        let out = rs.evaluate(Hook::Forward, &syn([172, 17, 0, 2], 80, "eth0"));
        assert_eq!(out.verdict, RuleVerdict::Accept);
        assert_eq!(out.unknown_matches.len(), 1, "{:?}", out.unknown_matches);
    }

    #[test]
    fn rejects_malformed_input() {
        assert!(
            Ruleset::parse("-A FORWARD -j DROP\n").is_err(),
            "no table: not save text"
        );
    }

    /// One line pathtrace cannot read is reported with its number and text, and every other
    /// rule is still read, in place (the rule after it keeps its number).
    #[test]
    fn a_line_that_does_not_parse_is_reported_and_the_rest_is_read() {
        let text = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j ACCEPT\n-X FORWARD\n-A FORWARD -p tcp -m tcp --dport 80 -j DROP\nCOMMIT\n";
        let rs = Ruleset::parse(text).unwrap();
        assert_eq!(rs.unread, ["line 4: expected -A CHAIN: `-X FORWARD`"]);
        let fwd = rs.table("filter").unwrap().chain("FORWARD").unwrap();
        assert_eq!(fwd.rules.len(), 2);
        assert_eq!(fwd.rules[1].index, 2);
    }
}
