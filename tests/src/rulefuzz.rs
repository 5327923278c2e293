//! The rule evaluator checked against the kernel: random rulesets (iptables-nft,
//! iptables-legacy, native nft `ip`/`inet` tables at various priorities) around the lab's
//! Docker-like base, one SYN through each, and the kernel's own packet counters say which rule
//! or policy took it. pathtrace, tracing all along, must name the same rule or policy, or say
//! the packet was not dropped by netfilter. A seed reproduces a case; a disagreement carries
//! the ruleset and both answers.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{Lab, LabConfig, run_with_input, tracer::Tracer};

/// A small, seedable generator (splitmix64): the same seed, the same ruleset, everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `pct` percent.
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }

    fn pick<'a, T>(&mut self, of: &'a [T]) -> &'a T {
        &of[self.below(of.len())]
    }
}

/// The topology the check runs on: names, addresses and ports of neither Docker's defaults
/// nor the lab's other configurations.
pub fn topology() -> LabConfig {
    LabConfig {
        uplink: "ext7".into(),
        bridge: "cbr-q".into(),
        outside_addr: Ipv4Addr::new(192, 0, 2, 200),
        host_addr: Ipv4Addr::new(192, 0, 2, 193),
        uplink_prefix: 26,
        bridge_addr: Ipv4Addr::new(10, 44, 9, 1),
        container_addr: Ipv4Addr::new(10, 44, 9, 17),
        bridge_prefix: 24,
        published_port: 6380,
        container_port: 7000,
        publish_on: None,
        ..LabConfig::default()
    }
}

/// A port nothing publishes: its SYN goes to the host's INPUT.
const HOST_PORT: u16 = 2222;

/// One generated case: the iptables-nft text (restored whole: raw, nat, filter), the
/// iptables-legacy filter table (empty when unused) and native nft tables.
#[derive(Clone, Debug)]
pub struct Case {
    pub seed: u64,
    pub iptables: String,
    pub legacy: String,
    pub nft: String,
}

/// Where an iptables rule may go, and what it may use there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    RawPre,
    NatPre,
    Forward,
    Input,
    /// A user chain, jumped to from FORWARD only.
    User,
}

struct Gen<'a> {
    rng: &'a mut Rng,
    c: &'a LabConfig,
}

impl Gen<'_> {
    fn addr(&mut self) -> String {
        let c = self.c;
        let (base, natural) = match self.rng.below(6) {
            0 => (c.outside_addr, 32),
            1 => (c.host_addr, 32),
            2 => (c.container_addr, 32),
            3 => (c.bridge_addr, c.bridge_prefix),
            4 => (c.outside_addr, c.uplink_prefix),
            _ => (Ipv4Addr::new(198, 18, self.rng.below(4) as u8, 9), 24),
        };
        let len = *self.rng.pick(&[natural, natural, 8, 16, 24, 32, 28]);
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        format!("{}/{len}", Ipv4Addr::from(u32::from(base) & mask))
    }

    fn iface(&mut self, exact: &[&str]) -> String {
        let c = self.c;
        let wild = format!("{}+", &c.uplink[..2]);
        let mut names: Vec<String> = vec![
            c.uplink.clone(),
            c.bridge.clone(),
            "veth+".into(),
            wild,
            "lo".into(),
            "eth9".into(),
        ];
        names.extend(exact.iter().map(|s| (*s).to_owned()));
        self.rng.pick(&names).clone()
    }

    fn port(&mut self) -> u16 {
        let c = self.c;
        let high = 40000 + self.rng.below(20000) as u16;
        *self
            .rng
            .pick(&[c.published_port, c.container_port, HOST_PORT, high, 443])
    }

    fn port_match(&mut self) -> String {
        let p = self.port();
        match self.rng.below(4) {
            0 => format!("--dport {p}"),
            1 => format!("--dport {}:{}", p.saturating_sub(5), p + 5),
            2 => format!("--sport {}:{}", 30000 + self.rng.below(10) * 1000, 65535),
            _ => format!(
                "-m multiport --dports {},{}:{}",
                self.port(),
                p.saturating_sub(1),
                p + 1
            ),
        }
    }

    fn not(&mut self) -> &'static str {
        if self.rng.chance(20) { "! " } else { "" }
    }

    /// One `-A CHAIN ...` rule for `place`, jumping only to `users`.
    fn iptables_rule(&mut self, chain: &str, place: Place, users: &[String]) -> String {
        let mut r = format!("-A {chain}");
        if self.rng.chance(40) {
            let n = self.not();
            let _ = write!(r, " {n}-s {}", self.addr());
        }
        if self.rng.chance(40) {
            let n = self.not();
            let _ = write!(r, " {n}-d {}", self.addr());
        }
        if self.rng.chance(35) {
            let n = self.not();
            let _ = write!(r, " {n}-i {}", self.iface(&[]));
        }
        if matches!(place, Place::Forward | Place::User) && self.rng.chance(35) {
            let n = self.not();
            let _ = write!(r, " {n}-o {}", self.iface(&[]));
        }
        match self.rng.below(6) {
            0..=2 => {
                let _ = write!(r, " -p tcp");
                if self.rng.chance(70) {
                    let m = self.port_match();
                    if !m.starts_with("-m") {
                        r.push_str(" -m tcp");
                    }
                    let _ = write!(r, " {m}");
                }
                if self.rng.chance(15) {
                    r.push_str(" --syn");
                }
            }
            3 => r.push_str(" -p udp"),
            4 => r.push_str(" -p icmp"),
            _ => {}
        }
        if self.rng.chance(30) {
            let states = *self.rng.pick(&[
                "NEW",
                "INVALID",
                "RELATED,ESTABLISHED",
                "NEW,ESTABLISHED",
                "UNTRACKED",
            ]);
            let n = self.not();
            let _ = write!(r, " -m conntrack {n}--ctstate {states}");
        }
        if matches!(place, Place::NatPre | Place::Input | Place::RawPre) && self.rng.chance(15) {
            r.push_str(" -m addrtype --dst-type LOCAL");
        }
        let target = match place {
            Place::NatPre => self.rng.pick(&["ACCEPT", "RETURN"]).to_string(),
            Place::RawPre => self.rng.pick(&["ACCEPT", "DROP", "DROP"]).to_string(),
            Place::User => self
                .rng
                .pick(&["ACCEPT", "DROP", "REJECT", "RETURN", "RETURN"])
                .to_string(),
            Place::Forward | Place::Input => {
                if !users.is_empty() && place == Place::Forward && self.rng.chance(30) {
                    let to = self.rng.pick(users).clone();
                    return format!("{r} -{} {to}", if self.rng.chance(30) { "g" } else { "j" });
                }
                self.rng
                    .pick(&["ACCEPT", "DROP", "DROP", "REJECT"])
                    .to_string()
            }
        };
        format!("{r} -j {target}")
    }

    /// The iptables-nft text: Docker's base with rules added, and (separately) the
    /// iptables-legacy filter table when this case uses it.
    fn iptables(&mut self) -> (String, String) {
        let base = self.c.docker_rules();
        let users: Vec<String> = (0..self.rng.below(3)).map(|i| format!("FZ-{i}")).collect();
        let mut nat_pre = Vec::new();
        for _ in 0..self.rng.below(3) {
            nat_pre.push(self.iptables_rule("PREROUTING", Place::NatPre, &[]));
        }
        let mut fwd = Vec::new();
        let mut user_rules = Vec::new();
        let mut input = Vec::new();
        let mut raw = Vec::new();
        for _ in 0..self.rng.below(4) {
            fwd.push(self.iptables_rule("FORWARD", Place::Forward, &users));
        }
        for _ in 0..self.rng.below(3) {
            fwd.push(self.iptables_rule("DOCKER-USER", Place::Forward, &users));
        }
        for u in &users {
            for _ in 0..1 + self.rng.below(3) {
                user_rules.push(self.iptables_rule(u, Place::User, &[]));
            }
        }
        for _ in 0..self.rng.below(4) {
            input.push(self.iptables_rule("INPUT", Place::Input, &[]));
        }
        if self.rng.chance(25) {
            raw.push(self.iptables_rule("PREROUTING", Place::RawPre, &[]));
        }
        let input_policy = *self.rng.pick(&["ACCEPT", "ACCEPT", "DROP"]);
        let fwd_policy = *self.rng.pick(&["DROP", "DROP", "ACCEPT"]);
        // Legacy: the added filter rules go to iptables-legacy instead, in its own table.
        let legacy = self.rng.chance(20);
        let mut text = String::new();
        if !raw.is_empty() {
            text.push_str("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
            for r in &raw {
                let _ = writeln!(text, "{r}");
            }
            text.push_str("COMMIT\n");
        }
        for line in base.lines() {
            let line = match line {
                ":INPUT ACCEPT [0:0]" if text.contains("*filter") => {
                    format!(
                        ":INPUT {} [0:0]",
                        if legacy { "ACCEPT" } else { input_policy }
                    )
                }
                ":FORWARD DROP [0:0]" => format!(":FORWARD {fwd_policy} [0:0]"),
                l => l.to_owned(),
            };
            if line == "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER" {
                // Added nat rules go ahead of Docker's jump (field note 002's shape).
                for r in &nat_pre {
                    let _ = writeln!(text, "{r}");
                }
            }
            if line.starts_with(":DOCKER-USER") {
                let _ = writeln!(text, "{line}");
                if !legacy {
                    for u in &users {
                        let _ = writeln!(text, ":{u} - [0:0]");
                    }
                }
                continue;
            }
            if line == "-A FORWARD -j DOCKER-USER" && !legacy {
                // Some FORWARD rules ahead of Docker's, DOCKER-USER's ahead of its RETURN.
                for r in fwd.iter().filter(|r| r.starts_with("-A FORWARD")) {
                    let _ = writeln!(text, "{r}");
                }
            }
            if line == "-A DOCKER-USER -j RETURN" && !legacy {
                for r in fwd.iter().filter(|r| r.starts_with("-A DOCKER-USER")) {
                    let _ = writeln!(text, "{r}");
                }
            }
            if line == "COMMIT" && text.contains("*filter") && !legacy {
                for r in user_rules.iter().chain(&input) {
                    let _ = writeln!(text, "{r}");
                }
            }
            let _ = writeln!(text, "{line}");
        }
        let legacy_text = if legacy {
            let mut t = format!(
                "*filter\n:INPUT {input_policy} [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            );
            for u in &users {
                let _ = writeln!(t, ":{u} - [0:0]");
            }
            for r in fwd.iter().chain(&user_rules).chain(&input) {
                // DOCKER-USER is Docker's (in iptables-nft): its rules go to FORWARD here.
                let _ = writeln!(t, "{}", r.replacen("-A DOCKER-USER", "-A FORWARD", 1));
            }
            t.push_str("COMMIT\n");
            t
        } else {
            String::new()
        };
        (text, legacy_text)
    }

    /// A native nft table: base chains at priorities around iptables' own, rules with a
    /// counter each, a trailing bare counter so a policy's decision can be seen.
    fn nft(&mut self) -> String {
        let family = *self.rng.pick(&["ip", "inet", "inet", "ip", "bridge"]);
        if family == "bridge" {
            return self.nft_bridge();
        }
        let mut t = format!("table {family} fuzz {{\n");
        let user = self.rng.chance(40);
        if user {
            t.push_str("  chain fz_user {\n");
            for _ in 0..1 + self.rng.below(2) {
                let r = self.nft_rule("user", false);
                let _ = writeln!(t, "    {r}");
            }
            t.push_str("  }\n");
        }
        for i in 0..1 + self.rng.below(2) {
            let (hook, can_reject) = *self.rng.pick(&[
                ("forward", true),
                ("forward", true),
                ("input", true),
                ("prerouting", false),
            ]);
            let prio = *self.rng.pick(&[-300, -150, -5, 0, 5, 10, 100]);
            let policy = *self.rng.pick(&["accept", "accept", "drop"]);
            let _ = writeln!(
                t,
                "  chain fz_{hook}_{i} {{\n    type filter hook {hook} priority {prio}; policy {policy};"
            );
            for _ in 0..self.rng.below(4) {
                let r = self.nft_rule(hook, can_reject);
                // Jumps only: at the end of a goto'd chain the base chain's policy decides,
                // and no counter would show it.
                let r = if user && self.rng.chance(25) {
                    format!("{} jump fz_user", r.rsplit_once(' ').map_or("", |(m, _)| m))
                } else {
                    r
                };
                let _ = writeln!(t, "    {r}");
            }
            // The policy's witness, TCP only (an `inet` table sees the host's IPv6 too).
            t.push_str("    meta l4proto tcp counter\n  }\n");
        }
        t.push_str("}\n");
        t
    }

    /// A `bridge` table (what ebtables-nft writes): it sees frames the bridge forwards, and
    /// those the bridge device itself sends out (the routed SYN leaving towards the container
    /// crosses its output and postrouting); its interfaces are bridge ports.
    fn nft_bridge(&mut self) -> String {
        let mut t = String::from("table bridge fuzz {\n");
        for i in 0..1 + self.rng.below(2) {
            let hook = *self
                .rng
                .pick(&["forward", "output", "postrouting", "prerouting"]);
            let prio = *self.rng.pick(&[-300, -200, 0, 100]);
            let policy = *self.rng.pick(&["accept", "accept", "drop"]);
            let _ = writeln!(
                t,
                "  chain fz_br_{hook}_{i} {{\n    type filter hook {hook} priority {prio}; policy {policy};"
            );
            // ARP passes: a policy that dropped it would starve the neighbour cache, and the
            // SYN would die later of that, or not, by what the cache still held.
            t.push_str("    ether type arp accept\n");
            for _ in 0..self.rng.below(3) {
                let mut m = String::new();
                if self.rng.chance(40) {
                    let _ = write!(m, "ip daddr {} ", self.addr());
                }
                if self.rng.chance(30) {
                    let _ = write!(m, "ip saddr {} ", self.addr());
                }
                if self.rng.chance(30) {
                    let name = *self.rng.pick(&["veth*", "eth9", "ext7"]);
                    let _ = write!(m, "oifname \"{name}\" ");
                }
                if self.rng.chance(50) {
                    let p = self.port();
                    let _ = write!(m, "tcp dport {p} ");
                }
                let verdict = *self.rng.pick(&["accept", "drop", "drop"]);
                // TCP only: the bridge also carries ARP and the container's other frames,
                // whose counts would be taken for the SYN's.
                let _ = writeln!(t, "    meta l4proto tcp {m}counter {verdict}");
            }
            t.push_str("    meta l4proto tcp counter\n  }\n");
        }
        t.push_str("}\n");
        t
    }

    /// `<matches> counter <verdict>` for a chain at `hook` (`user`: the user chain).
    fn nft_rule(&mut self, hook: &str, can_reject: bool) -> String {
        let in_user = hook == "user";
        let c = self.c;
        let mut m = String::new();
        if self.rng.chance(40) {
            let op = if self.rng.chance(20) { "!= " } else { "" };
            if self.rng.chance(25) {
                let _ = write!(m, "ip saddr {op}{{ {}, {} }} ", c.outside_addr, self.addr());
            } else {
                let _ = write!(m, "ip saddr {op}{} ", self.addr());
            }
        }
        if self.rng.chance(40) {
            let op = if self.rng.chance(20) { "!= " } else { "" };
            let _ = write!(m, "ip daddr {op}{} ", self.addr());
        }
        if self.rng.chance(35) {
            let name = self.iface(&[]).replace('+', "*");
            let op = if self.rng.chance(20) { "!= " } else { "" };
            let _ = write!(m, "iifname {op}\"{name}\" ");
        }
        if hook == "forward" && self.rng.chance(30) {
            let name = self.iface(&[]).replace('+', "*");
            let _ = write!(m, "oifname \"{name}\" ");
        }
        match self.rng.below(5) {
            0 => {
                let p = self.port();
                let _ = write!(m, "tcp dport {p} ");
            }
            1 => {
                let p = self.port();
                let _ = write!(m, "tcp dport {}-{} ", p.saturating_sub(3), p + 3);
            }
            2 => {
                let _ = write!(m, "tcp dport {{ {}, {} }} ", self.port(), self.port());
            }
            3 => m.push_str("meta l4proto udp "),
            _ => {}
        }
        if self.rng.chance(30) {
            let s = *self.rng.pick(&[
                "new",
                "invalid",
                "established,related",
                "{ new, established }",
            ]);
            let _ = write!(m, "ct state {s} ");
        }
        let verdict = if in_user {
            *self.rng.pick(&["accept", "drop", "return", "drop"])
        } else if can_reject {
            *self.rng.pick(&["accept", "drop", "drop", "reject"])
        } else {
            *self.rng.pick(&["accept", "drop"])
        };
        format!("{m}counter {verdict}")
    }
}

/// Generates case `seed` for the topology `c`.
pub fn generate(seed: u64, c: &LabConfig) -> Case {
    let mut rng = Rng::new(seed);
    let mut g = Gen { rng: &mut rng, c };
    let (iptables, legacy) = g.iptables();
    let nft = if g.rng.chance(35) {
        g.nft()
    } else {
        String::new()
    };
    Case {
        seed,
        iptables,
        legacy,
        nft,
    }
}

/// Which rule or policy took a packet, or none (not dropped by netfilter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    Rule {
        table: String,
        chain: String,
        index: u64,
    },
    Policy {
        table: String,
        chain: String,
    },
    /// Not dropped by netfilter (delivered, or dropped elsewhere).
    Passed,
    /// pathtrace said NETFILTER_DROP without naming a rule.
    Unnamed,
}

impl std::fmt::Display for Fate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rule {
                table,
                chain,
                index,
            } => write!(f, "{table}/{chain} rule {index}"),
            Self::Policy { table, chain } => write!(f, "{table}/{chain} policy"),
            Self::Passed => f.write_str("not dropped by netfilter"),
            Self::Unnamed => f.write_str("NETFILTER_DROP, no rule named"),
        }
    }
}

/// One counted place: (table label as pathtrace writes it, chain, rule index or `None` for
/// the policy) → (packets, a drop or reject, a base chain's trailing bare counter).
type Counters = Vec<((String, String, Option<u64>), u64, bool)>;

/// `iptables-save -c` text: every rule's and policy's packet counter. `label` is the table
/// prefix pathtrace gives the backend (`""` for iptables-nft, `iptables-legacy ` for legacy).
fn iptables_counters(text: &str, label: &str, out: &mut Counters) {
    let mut table = String::new();
    let mut index: std::collections::HashMap<String, u64> = Default::default();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = format!("{label}{t}");
            index.clear();
        } else if let Some(decl) = line.strip_prefix(':') {
            let mut w = decl.split_whitespace();
            let (Some(chain), Some(policy), Some(counts)) = (w.next(), w.next(), w.next()) else {
                continue;
            };
            if policy == "DROP" {
                out.push((
                    (table.clone(), chain.to_owned(), None),
                    packets(counts),
                    true,
                ));
            }
        } else if line.starts_with('[') {
            let Some((counts, rule)) = line.split_once(' ') else {
                continue;
            };
            let Some(chain) = rule.split_whitespace().nth(1) else {
                continue;
            };
            let i = index.entry(chain.to_owned()).or_insert(0);
            *i += 1;
            let drops = rule.ends_with("-j DROP") || rule.contains("-j REJECT");
            out.push((
                (table.clone(), chain.to_owned(), Some(*i)),
                packets(counts),
                drops,
            ));
        }
    }
}

/// The packets of a `[packets:bytes]` counter.
fn packets(counts: &str) -> u64 {
    counts
        .trim_matches(|c| c == '[' || c == ']')
        .split(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// `nft -j list ruleset`, tables `fuzz` only: rule counters in order, and for a base chain
/// with a drop policy its trailing counter (a rule without a verdict) as the policy's.
fn nft_counters(json: &str, out: &mut Counters) {
    let Ok(v) = serde_json::from_str::<Value>(json) else {
        return;
    };
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    let mut drop_policy = std::collections::HashSet::new();
    for it in &items {
        let ch = &it["chain"];
        if ch["table"] == "fuzz" && ch["policy"] == "drop" {
            drop_policy.insert((
                ch["family"].as_str().unwrap_or("").to_owned(),
                ch["name"].as_str().unwrap_or("").to_owned(),
            ));
        }
    }
    let mut index: std::collections::HashMap<(String, String), u64> = Default::default();
    let rules: Vec<&Value> = items
        .iter()
        .map(|i| &i["rule"])
        .filter(|r| r["table"] == "fuzz")
        .collect();
    for (n, r) in rules.iter().enumerate() {
        let family = r["family"].as_str().unwrap_or("").to_owned();
        let chain = r["chain"].as_str().unwrap_or("").to_owned();
        let i = index.entry((family.clone(), chain.clone())).or_insert(0);
        *i += 1;
        let exprs = r["expr"].as_array().cloned().unwrap_or_default();
        let packets = exprs
            .iter()
            .find_map(|e| e["counter"]["packets"].as_u64())
            .unwrap_or(0);
        let drops = exprs
            .iter()
            .any(|e| e.get("drop").is_some() || e.get("reject").is_some());
        let table = format!("{family} fuzz");
        let last_in_chain = rules
            .get(n + 1)
            .is_none_or(|next| next["chain"] != r["chain"] || next["family"] != r["family"]);
        let verdict = exprs.iter().any(|e| {
            ["accept", "drop", "reject", "jump", "goto", "return"]
                .iter()
                .any(|v| e.get(*v).is_some())
        });
        if last_in_chain && !verdict && drop_policy.contains(&(family.clone(), chain.clone())) {
            // The counter closing the chain: reached means the policy decides.
            out.push(((table, chain, None), packets, true));
        } else {
            out.push(((table, chain, Some(*i)), packets, drops));
        }
    }
}

/// Every counter of the host namespace now.
fn counters(lab: &Lab) -> Result<Counters> {
    let mut out = Vec::new();
    iptables_counters(&lab.host.exec("iptables-nft-save", &["-c"])?, "", &mut out);
    iptables_counters(
        &lab.host.exec("iptables-legacy-save", &["-c"])?,
        "iptables-legacy ",
        &mut out,
    );
    nft_counters(&lab.host.exec("nft", &["-j", "list", "ruleset"])?, &mut out);
    Ok(out)
}

/// The kernel's answer: the drop (or drop policy) whose counter the packet moved.
fn kernel_fate(before: &Counters, after: &Counters) -> Fate {
    for (key, packets, drops) in after {
        let was = before
            .iter()
            .find(|(k, _, _)| k == key)
            .map_or(0, |(_, p, _)| *p);
        if *drops && *packets > was {
            let (table, chain, index) = key.clone();
            return match index {
                Some(index) => Fate::Rule {
                    table,
                    chain,
                    index,
                },
                None => Fate::Policy { table, chain },
            };
        }
    }
    Fate::Passed
}

/// pathtrace's answer, from its verdict on the SYN.
fn pathtrace_fate(v: &Value) -> Fate {
    if v["drop_reason"] != "NETFILTER_DROP" {
        return Fate::Passed;
    }
    let r = &v["diagnosis"]["rule"];
    let (Some(table), Some(chain)) = (r["table"].as_str(), r["chain"].as_str()) else {
        return Fate::Unnamed;
    };
    let (table, chain) = (table.to_owned(), chain.to_owned());
    match r["index"].as_u64() {
        Some(index) => Fate::Rule {
            table,
            chain,
            index,
        },
        None => Fate::Policy { table, chain },
    }
}

/// pathtrace named another rule, but said with low confidence that the kernel's drops the
/// packet too at the same priority.
fn said_tied(verdict: &Value, kernel: &Fate) -> bool {
    let d = &verdict["diagnosis"];
    let (table, chain) = match kernel {
        Fate::Rule { table, chain, .. } | Fate::Policy { table, chain } => (table, chain),
        Fate::Passed | Fate::Unnamed => return false,
    };
    d["confidence"] == "low"
        && d["evidence"].as_array().is_some_and(|e| {
            e.iter().filter_map(Value::as_str).any(|line| {
                line.contains("at the same priority")
                    && line.starts_with(&format!("{table} chain {chain} "))
            })
        })
}

/// A case where pathtrace and the kernel disagree.
#[derive(Debug)]
pub struct Disagreement {
    pub seed: u64,
    pub packet: String,
    pub kernel: Fate,
    pub pathtrace: Fate,
    pub case: Case,
    pub verdict: Value,
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {:#x}, {}: the kernel: {}; pathtrace: {}",
            self.seed, self.packet, self.kernel, self.pathtrace
        )?;
        writeln!(f, "--- iptables-nft\n{}", self.case.iptables)?;
        if !self.case.legacy.is_empty() {
            writeln!(f, "--- iptables-legacy\n{}", self.case.legacy)?;
        }
        if !self.case.nft.is_empty() {
            writeln!(f, "--- nft\n{}", self.case.nft)?;
        }
        writeln!(
            f,
            "--- pathtrace's diagnosis\n{:#}",
            self.verdict["diagnosis"]
        )
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub rulesets: u64,
    pub packets: u64,
    /// Packets the kernel dropped in netfilter (the rest passed).
    pub dropped: u64,
    /// Packets two tables dropped at the same priority, which pathtrace said it could not
    /// tell apart (low confidence, both named): agreement on what can be known.
    pub ties: u64,
    pub disagreements: Vec<Disagreement>,
}

/// Applies `case` in the lab's host namespace, replacing the previous one.
fn apply(lab: &Lab, case: &Case) -> Result<()> {
    let ns = lab.host.name.as_str();
    run_with_input(
        "ip",
        &["netns", "exec", ns, "iptables-nft-restore"],
        Some(&case.iptables),
    )
    .with_context(|| format!("seed {:#x}: iptables-nft-restore", case.seed))?;
    // Without the raw table in the text, last case's raw rules would stay.
    if !case.iptables.contains("*raw") {
        let _ = lab.host.exec("iptables-nft", &["-t", "raw", "-F"]);
    }
    let legacy = if case.legacy.is_empty() {
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    } else {
        &case.legacy
    };
    run_with_input(
        "ip",
        &["netns", "exec", ns, "iptables-legacy-restore"],
        Some(legacy),
    )
    .with_context(|| format!("seed {:#x}: iptables-legacy-restore", case.seed))?;
    for family in ["ip", "inet", "bridge"] {
        let _ = lab.host.exec("nft", &["delete", "table", family, "fuzz"]);
    }
    if !case.nft.is_empty() {
        run_with_input(
            "ip",
            &["netns", "exec", ns, "nft", "-f", "-"],
            Some(&case.nft),
        )
        .with_context(|| format!("seed {:#x}: nft -f", case.seed))?;
    }
    Ok(())
}

/// Sends one SYN from the outside namespace, from `sport` to the host's `dport`, and lets the
/// socket go before any retransmission.
fn syn(lab: &Lab, sport: u16, dport: u16) -> Result<()> {
    let src = lab.config.outside_addr;
    let to = SocketAddrV4::new(lab.config.host_addr, dport);
    lab.outside.run_in(move || -> std::io::Result<()> {
        let stream = crate::bound_nonblocking(src, sport, to)?;
        std::thread::sleep(Duration::from_millis(60));
        drop::<TcpStream>(stream);
        Ok(())
    })??;
    Ok(())
}

/// Runs `count` rulesets from `seed` on, two SYNs each (to the published port, through
/// FORWARD; to a port nothing publishes, through INPUT), with one pathtrace tracing all of
/// them. `progress` is told each ruleset's result.
pub fn check(count: u64, seed: u64, mut progress: impl FnMut(&str)) -> Result<Outcome> {
    let config = topology();
    let lab = Lab::new(config.clone())?;
    // The container answers nothing: its replies would move the host's counters too.
    lab.container
        .exec("iptables-nft", &["-P", "OUTPUT", "DROP"])?;
    let client = config.outside_addr.to_string();
    let mut tracer = Tracer::start(&[
        "--host",
        &client,
        "--proto",
        "tcp",
        "--idle-ms",
        "100",
        "--backend",
        "auto",
    ])?;
    let mut out = Outcome::default();
    // Another run may trace the same addresses at once (CI beside an xtask run): its
    // verdicts are told apart by the namespaces this lab named, and the source ports differ.
    let ours = lab.host.name.trim_end_matches("-host").to_owned();
    let mut sport: u16 = 20000 + (std::process::id() % 20000) as u16;
    for i in 0..count {
        let case = generate(seed.wrapping_add(i), &config);
        apply(&lab, &case)?;
        // pathtrace keeps a ruleset it read for a second: the last case's must be gone.
        std::thread::sleep(Duration::from_millis(1050));
        let mut sent = Vec::new();
        for dport in [config.published_port, HOST_PORT] {
            sport = if sport >= 60000 { 20000 } else { sport + 1 };
            let before = counters(&lab)?;
            syn(&lab, sport, dport)?;
            let kernel = kernel_fate(&before, &counters(&lab)?);
            sent.push((sport, dport, kernel));
        }
        let mut said = String::new();
        for (sport, dport, kernel) in sent {
            let ours_for = |v: &Value| {
                v["kind"] == "verdict"
                    && v["tuple"]["sport"] == sport
                    && v["last_hop"]["tcp_flags"] == "SYN"
                    && v["last_hop"]["netns_name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(&ours))
            };
            // The other SYN's wait may have read this one's verdict already.
            let verdict = match tracer.seen.iter().find(|v| ours_for(v)).cloned() {
                Some(v) => v,
                None => tracer
                    .wait_for(Duration::from_secs(10), ours_for)
                    .with_context(|| {
                        format!("seed {:#x}: no verdict for sport {sport}", case.seed)
                    })?,
            };
            let pathtrace = pathtrace_fate(&verdict);
            out.packets += 1;
            if kernel != Fate::Passed {
                out.dropped += 1;
            }
            let _ = write!(said, " :{dport} {kernel}");
            if pathtrace != kernel && said_tied(&verdict, &kernel) {
                out.ties += 1;
                said.push_str(" (a tie, said)");
            } else if pathtrace != kernel {
                out.disagreements.push(Disagreement {
                    seed: case.seed,
                    packet: format!(
                        "SYN {}:{sport} → {}:{dport}",
                        config.outside_addr, config.host_addr
                    ),
                    kernel,
                    pathtrace,
                    case: case.clone(),
                    verdict,
                });
            }
        }
        tracer.seen.clear();
        out.rulesets += 1;
        progress(&format!("seed {:#x}:{said}", case.seed));
    }
    let _ = tracer.stop();
    if out.rulesets == 0 {
        bail!("no ruleset was checked");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_case_and_cases_differ() {
        let c = topology();
        let a = generate(7, &c);
        let b = generate(7, &c);
        assert_eq!((a.iptables.clone(), a.nft.clone()), (b.iptables, b.nft));
        let distinct: std::collections::HashSet<String> =
            (0..50).map(|s| generate(s, &c).iptables).collect();
        assert!(distinct.len() > 40, "{}", distinct.len());
        assert!(
            a.iptables
                .contains(&format!("--to-destination {}:7000", c.container_addr))
        );
    }

    #[test]
    fn counters_say_which_drop_took_the_packet() {
        let before = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [3:180]\n[0:0] -A FORWARD -j DOCKER-USER\n[0:0] -A FORWARD -p tcp -j DROP\nCOMMIT\n";
        let after = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [3:180]\n[1:60] -A FORWARD -j DOCKER-USER\n[1:60] -A FORWARD -p tcp -j DROP\nCOMMIT\n";
        let (mut b, mut a) = (Vec::new(), Vec::new());
        iptables_counters(before, "", &mut b);
        iptables_counters(after, "", &mut a);
        assert_eq!(
            kernel_fate(&b, &a),
            Fate::Rule {
                table: "filter".into(),
                chain: "FORWARD".into(),
                index: 2
            }
        );
        let policy = after
            .replace(":FORWARD DROP [3:180]", ":FORWARD DROP [4:240]")
            .replace("[1:60] -A FORWARD -p tcp", "[0:0] -A FORWARD -p tcp");
        let mut p = Vec::new();
        iptables_counters(&policy, "", &mut p);
        assert_eq!(
            kernel_fate(&b, &p),
            Fate::Policy {
                table: "filter".into(),
                chain: "FORWARD".into()
            }
        );
    }
}
