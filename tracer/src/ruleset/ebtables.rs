//! ebtables rulesets: `ebtables-nft-save -c` text (ebtables as distributions ship it today,
//! stored in nft `bridge` tables whose `ip` matches nft shows only as opaque `xt` matches) and
//! `ebtables-legacy -L --Lc` listings (the x_tables kernel tables), parsed into the same model
//! the evaluator walks for bridged frames.
//!
//! Only what a frame carrying IPv4 can meet is modelled: the ether type, bridge ports, the
//! `ip` match (addresses, protocol, ports). MAC addresses, VLANs, marks and the like are kept as
//! text and reported as not evaluated.

use super::{
    iptables::{Dialect, SaveTextError, parse_save, port_range, proto_number},
    model::{Action, BaseChain, Cond, Flavor, Net, Ruleset, Source},
};

/// The tables ebtables knows; `broute` decides bridging vs routing, not a verdict, and is left
/// out of evaluation.
pub const TABLES: [&str; 3] = ["filter", "nat", "broute"];

impl BaseChain {
    /// ebtables' built-in chains, at the priorities the bridge registers them
    /// (NF_BR_PRI_NAT_DST_BRIDGED -300, NF_BR_PRI_FILTER_BRIDGED -200, ...).
    pub fn ebtables(table: &str, chain: &str) -> Option<Self> {
        use super::Hook::*;
        let (hook, priority) = match (table, chain) {
            ("filter", "INPUT") => (Input, -200),
            ("filter", "FORWARD") => (Forward, -200),
            ("filter", "OUTPUT") => (Output, -200),
            ("nat", "PREROUTING") => (Prerouting, -300),
            ("nat", "OUTPUT") => (Output, 100),
            ("nat", "POSTROUTING") => (Postrouting, 300),
            _ => return None,
        };
        Some(Self {
            hook,
            priority,
            // ebtables' nat table is not conntrack NAT: it sees every frame.
            nat: false,
            bridge: true,
        })
    }
}

/// Parses `ebtables-save [-c]` text (counters as a `[packets:bytes]` prefix, or a trailing
/// `-c packets bytes` as older ebtables-save writes them).
pub fn parse(text: &str, backend: Flavor) -> Result<Ruleset, SaveTextError> {
    parse_save(
        text,
        &Dialect {
            family: "bridge",
            source: Source::Ebtables(backend),
            // A user chain may have a policy too (RETURN, the default, is none).
            base: |table, chain, _| BaseChain::ebtables(table, chain),
            rule: |words, is_chain| (parse_conds(words), parse_target(words, is_chain)),
            trailing_counters: true,
            strict_chains: true,
        },
    )
}

/// Parses `ebtables-nft-save -c`, without the tables it marks as holding native nft chains it
/// cannot show (`# Table `filter' contains incompatible base-chains...`): those are nft's.
pub fn parse_nft_save(text: &str) -> Result<Ruleset, SaveTextError> {
    let incompatible: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("# Table `")?
                .split_once("' contains incompatible")
        })
        .map(|(t, _)| t)
        .collect();
    let mut rs = parse(text, Flavor::Nft)?;
    rs.tables
        .retain(|t| !incompatible.contains(&t.name.as_str()));
    Ok(rs)
}

/// Turns `ebtables-legacy -t TABLE -L --Lc` into `ebtables-save -c` text, the way
/// `ebtables-legacy-save` does (which cannot be trusted to call the legacy binary).
pub fn listing_to_save(table: &str, listing: &str) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    let mut chain = "";
    for line in listing.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Bridge chain: ") {
            let name = rest.split(',').next().unwrap_or_default();
            let policy = rest.rsplit("policy: ").next().unwrap_or("ACCEPT");
            chains.push_str(&format!(":{name} {policy}\n"));
            chain = name;
            continue;
        }
        if line.is_empty() || line.starts_with("Bridge table:") || chain.is_empty() {
            continue;
        }
        let (rule, counters) = match line.rsplit_once(" , pcnt = ") {
            Some((r, c)) => {
                let (p, b) = c.split_once(" -- bcnt = ").unwrap_or((c, "0"));
                (r.trim(), format!("[{p}:{b}] "))
            }
            None => (line, String::new()),
        };
        // `--Ln` numbering, if present, is not part of the rule.
        let rule = match rule.split_once(". ") {
            Some((n, r)) if n.chars().all(|c| c.is_ascii_digit()) => r,
            _ => rule,
        };
        rules.push_str(&format!("{counters}-A {chain} {rule}\n"));
    }
    format!("*{table}\n{chains}{rules}")
}

fn parse_target(t: &[String], is_chain: &dyn Fn(&str) -> bool) -> Action {
    let Some(at) = t.iter().position(|w| w == "-j" || w == "--jump") else {
        return Action::None;
    };
    let name = t.get(at + 1).map(String::as_str).unwrap_or_default();
    match name {
        "ACCEPT" => Action::Accept,
        "DROP" => Action::Drop,
        "RETURN" => Action::Return,
        "CONTINUE" => Action::None,
        n if is_chain(n) => Action::Jump(n.to_owned()),
        // mark, snat, dnat, redirect, arpreply...: they rewrite the frame and then, by default,
        // accept it; modelled as going on, since what follows rarely matters for a drop.
        n => Action::Continue(n.to_owned()),
    }
}

/// Options that take no value.
const FLAGS: [&str; 5] = ["--log", "--log-ip", "--log-arp", "--log-ip6", "--nflog"];

/// Watchers and target options: they never decide whether a rule matches.
fn is_non_match(opt: &str) -> bool {
    opt.starts_with("--log")
        || opt.starts_with("--nflog")
        || opt.starts_with("--ulog")
        || opt.ends_with("-target")
        || matches!(
            opt,
            "--to-src" | "--to-dst" | "--to-source" | "--to-destination"
        )
        || opt == "--mark-set"
        || opt.starts_with("--mark-")
        || opt.starts_with("--arpreply-")
}

/// The conditions of a rule, up to its `-j`. A `!` before an option or before its value
/// negates it (ebtables prints both styles, depending on version).
fn parse_conds(t: &[String]) -> Vec<(bool, Cond)> {
    let mut conds = Vec::new();
    let mut neg = false;
    let mut i = 0;
    while i < t.len() {
        let opt = t[i].as_str();
        if opt == "!" {
            neg = true;
            i += 1;
            continue;
        }
        if opt == "-j" || opt == "--jump" {
            break;
        }
        if FLAGS.contains(&opt) {
            i += 1;
            continue;
        }
        let mut value = t.get(i + 1).cloned().unwrap_or_default();
        let mut step = 2;
        if value == "!" {
            neg = !neg;
            value = t.get(i + 2).cloned().unwrap_or_default();
            step = 3;
        }
        if matches!(opt, "-p" | "--proto" | "--protocol") {
            // pathtrace follows IPv4: the rule matches it exactly when it asks for IPv4.
            let ipv4 = matches!(value.as_str(), "IPv4" | "ipv4" | "0x0800" | "0x800");
            if ipv4 == neg {
                conds.push((false, Cond::Never));
            }
            neg = false;
            i += step;
            continue;
        }
        let cond = match opt {
            "-i" | "--in-interface" | "--in-if" => Some(Cond::InIface(value.clone())),
            "-o" | "--out-interface" | "--out-if" => Some(Cond::OutIface(value.clone())),
            "--ip-src" | "--ip-source" => Some(
                Net::parse(&value)
                    .map_or_else(|| Cond::Unknown(format!("{opt} {value}")), Cond::Src),
            ),
            "--ip-dst" | "--ip-destination" => Some(
                Net::parse(&value)
                    .map_or_else(|| Cond::Unknown(format!("{opt} {value}")), Cond::Dst),
            ),
            "--ip-proto" | "--ip-protocol" => Some(
                proto_number(&value)
                    .map_or_else(|| Cond::Unknown(format!("{opt} {value}")), Cond::Proto),
            ),
            "--ip-dport" | "--ip-destination-port" => Some(port_range(&value).map_or_else(
                || Cond::Unknown(format!("{opt} {value}")),
                |(a, b)| Cond::Dport(a, b),
            )),
            "--ip-sport" | "--ip-source-port" => Some(port_range(&value).map_or_else(
                || Cond::Unknown(format!("{opt} {value}")),
                |(a, b)| Cond::Sport(a, b),
            )),
            // ARP, IPv6 and VLAN matches imply an ether type pathtrace's packets do not have.
            o if o.starts_with("--arp-") || o.starts_with("--ip6-") || o.starts_with("--vlan-") => {
                Some(Cond::Never)
            }
            o if is_non_match(o) => None,
            o => Some(Cond::Unknown(format!("{o} {value}"))),
        };
        if let Some(c) = cond {
            conds.push((neg, c));
        }
        neg = false;
        i += step;
    }
    conds
}

#[cfg(test)]
mod tests {
    use crate::net::{Proto, TcpFlags};
    use std::net::Ipv4Addr;

    use super::*;
    use crate::ruleset::{CtState, Hook, PacketAtHook, RuleVerdict};

    const SAVE: &str = include_str!("../../test_data/ebtables_save.txt");
    const LEGACY: &str = include_str!("../../test_data/ebtables_legacy_filter.txt");

    /// A SYN bridged from `in_port` to `out_port` (if known).
    fn bridged(dst: [u8; 4], dport: u16, in_port: &str, out_port: Option<&str>) -> PacketAtHook {
        PacketAtHook {
            src: Ipv4Addr::new(172, 17, 0, 3),
            dst: Ipv4Addr::from(dst),
            proto: Proto::TCP,
            sport: 40000,
            dport,
            tcp_flags: TcpFlags::SYN,
            in_if: Some(in_port.into()),
            out_if: out_port.map(Into::into),
            physdev_in: Some(in_port.into()),
            physdev_out: out_port.map(Into::into),
            ct_state: CtState::New,
            local_addrs: vec![],
        }
    }

    #[test]
    fn ebtables_nft_save_names_the_dropping_rule_with_counters() {
        let rs = parse(SAVE, Flavor::Nft).unwrap();
        let filter = rs.tables.iter().find(|t| t.name == "filter").unwrap();
        assert_eq!(filter.label(), "ebtables filter");
        let fwd = filter.chain("FORWARD").unwrap();
        assert_eq!(
            fwd.base.map(|b| (b.hook, b.priority, b.bridge)),
            Some((Hook::Forward, -200, true))
        );
        assert_eq!(fwd.rules.len(), 3);
        assert_eq!(fwd.rules[0].packets, Some(7));

        let out = rs.evaluate_bridge(Hook::Forward, &bridged([172, 17, 0, 2], 80, "veth1", None));
        assert_eq!(out.verdict, RuleVerdict::Drop);
        let by = out.by.unwrap();
        assert_eq!(
            (by.table.as_str(), by.chain.as_str(), by.index),
            ("ebtables filter", "FORWARD", Some(1))
        );
        assert_eq!(
            by.text,
            "-A FORWARD -p IPv4 -i veth1 --ip-dst 172.17.0.2 --ip-proto tcp --ip-dport 80 -j DROP"
        );
        assert_eq!(by.packets, Some(7));
        // Another port, or another address, is let through; routed traffic never meets it.
        assert_eq!(
            rs.evaluate_bridge(Hook::Forward, &bridged([172, 17, 0, 2], 443, "veth1", None))
                .verdict,
            RuleVerdict::Accept
        );
        assert_eq!(
            rs.evaluate(Hook::Forward, &bridged([172, 17, 0, 2], 80, "veth1", None))
                .verdict,
            RuleVerdict::Accept
        );
    }

    #[test]
    fn user_chains_mac_matches_and_negations() {
        let rs = parse(SAVE, Flavor::Nft).unwrap();
        // To a veth port: jumps to MYCHAIN, whose MAC match cannot be evaluated, then its
        // DROP policy decides.
        let out = rs.evaluate_bridge(
            Hook::Forward,
            &bridged([172, 17, 0, 9], 22, "veth7", Some("veth2")),
        );
        assert_eq!(out.verdict, RuleVerdict::Drop);
        let by = out.by.unwrap();
        assert_eq!(
            (by.chain.as_str(), by.index, by.text.as_str()),
            ("MYCHAIN", None, ":MYCHAIN DROP")
        );
        assert_eq!(
            out.path,
            ["ebtables filter/FORWARD", "ebtables filter/MYCHAIN"]
        );
        assert!(
            out.unknown_matches
                .iter()
                .any(|u| u.contains("-s 02:42:ac:11:00:03")),
            "{:?}",
            out.unknown_matches
        );
        // The ARP rule never matches an IPv4 frame; `! --ip-src 10.0.0.0/8` in nat PREROUTING
        // accepts this one.
        let nat = rs.evaluate_bridge(
            Hook::Prerouting,
            &bridged([172, 17, 0, 2], 80, "veth1", None),
        );
        assert_eq!(nat.verdict, RuleVerdict::Accept);
        assert_eq!(nat.by.map(|b| b.index), Some(Some(1)));
    }

    #[test]
    fn legacy_listing_becomes_save_text() {
        let save = listing_to_save("filter", LEGACY);
        assert!(
            save.starts_with("*filter\n:INPUT ACCEPT\n:FORWARD ACCEPT\n"),
            "{save}"
        );
        assert!(
            save.contains("[3:180] -A FORWARD -p IPv4 -i veth1 --ip-dst 172.17.0.2 --ip-proto tcp --ip-dport 80 -j DROP\n"),
            "{save}"
        );
        let rs = parse(&save, Flavor::Legacy).unwrap();
        let out = rs.evaluate_bridge(Hook::Forward, &bridged([172, 17, 0, 2], 80, "veth1", None));
        let by = out.by.unwrap();
        assert_eq!(
            (by.table.as_str(), by.index, by.packets),
            ("ebtables-legacy filter", Some(1), Some(3))
        );
        assert_eq!(
            Source::Ebtables(Flavor::Legacy).command(),
            "ebtables-legacy"
        );
    }

    #[test]
    fn tables_ebtables_nft_cannot_show_are_left_to_nft() {
        // What ebtables-nft-save prints for a hand-written `table bridge filter`.
        let text = "# Table `filter' contains incompatible base-chains, use 'nft' tool to list them.\n# Generated by ebtables-nft-save v1.8.9 (nf_tables)\n*filter\n:INPUT ACCEPT\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\n*nat\n:PREROUTING ACCEPT\n[1:60] -A PREROUTING -p IPv4 -j DROP\n";
        let rs = parse_nft_save(text).unwrap();
        assert_eq!(
            rs.tables.iter().map(|t| t.label()).collect::<Vec<_>>(),
            ["ebtables nat"]
        );
    }

    #[test]
    fn bad_text_is_an_error_not_a_panic() {
        assert!(parse("-A FORWARD -j DROP", Flavor::Nft).is_err());
        let rs = parse("*filter\n-A NOPE -j DROP", Flavor::Nft).unwrap();
        assert_eq!(
            rs.unread,
            ["line 2: rule for an undeclared chain: `-A NOPE -j DROP`"]
        );
        let rs = parse("*filter\n[1:2 -A FORWARD", Flavor::Nft).unwrap();
        assert_eq!(rs.unread.len(), 1, "{:?}", rs.unread);
    }
}
