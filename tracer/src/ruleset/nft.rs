//! Native nftables rulesets (`nft -j list ruleset`): firewalld's `inet firewalld` table and
//! hand-written ones, parsed into the same model as iptables so one evaluator walks both.
//!
//! Only the families that see IPv4 are kept: `ip` and `inet`, and `bridge` (ebtables'
//! successor), whose chains the evaluator runs only for bridged frames. Expressions the evaluator does not
//! model become [`Cond::Unknown`] with their nft text, so a verdict resting on them is
//! reported as uncertain rather than guessed. Each rule's text is rendered in nft's own
//! syntax and carries its handle, which is how nft users find and delete a rule.

use serde_json::Value;

use super::{
    CtState, Hook, RuleVerdict,
    model::{Action, BaseChain, Chain, ChainRule, Cond, Net, Ruleset, Source, Table},
};
use crate::net::Proto;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NftJsonError {
    #[error("not nft JSON: {0}")]
    Json(String),
    #[error("no `nftables` array at the top level")]
    Shape,
}

/// Families whose base chains see IPv4 packets (bridged ones, for `bridge`).
fn ipv4_family(family: &str) -> bool {
    matches!(family, "ip" | "inet" | "bridge")
}

/// Tables iptables-nft creates, as (family, name).
pub fn iptables_nft_tables() -> Vec<(String, String)> {
    ["filter", "nat", "mangle", "raw", "security"]
        .into_iter()
        .map(|t| ("ip".to_owned(), t.to_owned()))
        .collect()
}

/// Parses `nft -j list ruleset`, leaving out the tables in `read_elsewhere` (family, name):
/// iptables-nft's and ebtables-nft's tables are read from their `-save` output, with their
/// rule numbers and text (nft shows their `xt` matches only as opaque names).
pub fn parse(json: &str, read_elsewhere: &[(String, String)]) -> Result<Ruleset, NftJsonError> {
    let doc: Value = serde_json::from_str(json).map_err(|e| NftJsonError::Json(e.to_string()))?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or(NftJsonError::Shape)?;
    let mut rs = Ruleset::default();
    let keep = |family: &str, table: &str| {
        ipv4_family(family)
            && !read_elsewhere
                .iter()
                .any(|(f, t)| f == family && t == table)
    };
    for item in items {
        if let Some(t) = item.get("table") {
            let (family, name) = (s(t, "family"), s(t, "name"));
            if keep(family, name) {
                rs.tables.push(Table {
                    name: name.to_owned(),
                    family: family.to_owned(),
                    source: Source::Nft,
                    chains: Vec::new(),
                });
            }
        } else if let Some(c) = item.get("chain") {
            let Some(table) = find_table(&mut rs, s(c, "family"), s(c, "table")) else {
                continue;
            };
            let bridge = table.family == "bridge";
            table.chains.push(chain(c, bridge));
        } else if let Some(r) = item.get("rule") {
            let Some(table) = find_table(&mut rs, s(r, "family"), s(r, "table")) else {
                continue;
            };
            let Some(chain) = table.chains.iter_mut().find(|c| c.name == s(r, "chain")) else {
                continue;
            };
            let index = chain.rules.len() + 1;
            chain.rules.extend(rules(r, index));
        }
    }
    Ok(rs)
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn find_table<'a>(rs: &'a mut Ruleset, family: &str, name: &str) -> Option<&'a mut Table> {
    rs.tables
        .iter_mut()
        .find(|t| t.source == Source::Nft && t.family == family && t.name == name)
}

fn chain(c: &Value, bridge: bool) -> Chain {
    let hook = match s(c, "hook") {
        "prerouting" => Some(Hook::Prerouting),
        "input" => Some(Hook::Input),
        "forward" => Some(Hook::Forward),
        "output" => Some(Hook::Output),
        "postrouting" => Some(Hook::Postrouting),
        _ => None,
    };
    let base = hook.map(|hook| BaseChain {
        hook,
        priority: c.get("prio").and_then(Value::as_i64).unwrap_or(0) as i32,
        nat: s(c, "type") == "nat",
        bridge,
    });
    Chain {
        name: s(c, "name").to_owned(),
        base,
        policy: base.map(|_| match s(c, "policy") {
            "drop" => RuleVerdict::Drop,
            _ => RuleVerdict::Accept,
        }),
        policy_packets: None,
        rules: Vec::new(),
    }
}

/// One nft rule; a verdict map (`iifname vmap { "eth0" : jump x }`) becomes one rule per
/// element, all with the rule's handle and text.
fn rules(r: &Value, index: usize) -> Vec<ChainRule> {
    let handle = r.get("handle").and_then(Value::as_u64);
    let exprs = r
        .get("expr")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut conds = Vec::new();
    let mut target = Action::None;
    let mut packets = None;
    let mut words = Vec::new();
    let mut vmap: Option<(Value, Vec<(Value, Action)>)> = None;
    for e in exprs {
        let Some((kind, body)) = e.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        match kind.as_str() {
            "match" => {
                let (cs, text) = match_expr(body);
                conds.extend(cs);
                words.push(text);
            }
            // Counts go to `packets`; the text, like iptables', is the rule without them.
            "counter" => packets = body.get("packets").and_then(Value::as_u64),
            "vmap" => {
                let key = body.get("key").cloned().unwrap_or(Value::Null);
                let elems = set_items(body.get("data").unwrap_or(&Value::Null))
                    .into_iter()
                    .filter_map(|pair| {
                        let pair = pair.as_array()?;
                        Some((pair.first()?.clone(), verdict(pair.get(1)?)?))
                    })
                    .collect();
                words.push(format!(
                    "{} vmap {}",
                    operand_text(&key),
                    right_text(body.get("data").unwrap_or(&Value::Null), names_iface(&key))
                ));
                vmap = Some((key, elems));
            }
            _ => {
                if let Some(t) = verdict(e) {
                    target = t;
                }
                words.push(statement_text(kind, body));
            }
        }
    }
    let text = words.join(" ");
    let rule = |conds: Vec<(bool, Cond)>, target: Action| ChainRule {
        index,
        handle,
        text: text.clone(),
        packets,
        conds,
        target,
    };
    match vmap {
        None => vec![rule(conds, target)],
        Some((key, elems)) => elems
            .into_iter()
            .map(|(value, t)| {
                let mut cs = conds.clone();
                cs.extend(compare(&key, "==", &value));
                rule(cs, t)
            })
            .collect(),
    }
}

/// The verdict or terminal statement an expression stands for, if it is one.
fn verdict(e: &Value) -> Option<Action> {
    let (kind, body) = e.as_object()?.iter().next()?;
    Some(match kind.as_str() {
        "accept" => Action::Accept,
        "drop" => Action::Drop,
        "reject" => Action::Reject,
        "return" => Action::Return,
        "continue" => Action::None,
        "jump" => Action::Jump(s(body, "target").to_owned()),
        "goto" => Action::Goto(s(body, "target").to_owned()),
        "masquerade" | "snat" => Action::SourceNat,
        "dnat" => Action::Dnat(
            s(body, "addr").parse().ok()?,
            body.get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok()),
        ),
        _ => return None,
    })
}

/// `{"op": "==", "left": ..., "right": ...}` as conditions, and its nft text.
fn match_expr(m: &Value) -> (Vec<(bool, Cond)>, String) {
    let op = m.get("op").and_then(Value::as_str).unwrap_or("==");
    let left = m.get("left").unwrap_or(&Value::Null);
    let right = m.get("right").unwrap_or(&Value::Null);
    let shown_op = match op {
        "==" | "in" => String::new(),
        other => format!("{other} "),
    };
    let text = format!(
        "{} {shown_op}{}",
        operand_text(left),
        right_text(right, names_iface(left))
    );
    let mut conds = compare(left, op, right);
    if conds.is_empty() {
        // `icmp type echo-request` cannot hold for a TCP packet: nft's implicit protocol
        // dependency decides it before the part the evaluator does not model.
        if let Some(proto) = left
            .get("payload")
            .and_then(|p| proto_number(&Value::String(s(p, "protocol").to_owned())))
        {
            conds.push((false, Cond::Proto(proto)));
        }
        conds.push((false, Cond::Unknown(text.clone())));
    }
    (conds, text)
}

/// Conditions for `left op right`; empty when the evaluator does not model it.
fn compare(left: &Value, op: &str, right: &Value) -> Vec<(bool, Cond)> {
    let negated = match op {
        "==" | "in" => false,
        "!=" => true,
        _ => return Vec::new(), // <, >, & masks: not modelled
    };
    let field = field_of(left);
    let values = set_items(right);
    // A payload match on tcp/udp implies the protocol, as nft adds the dependency itself.
    let mut out = Vec::new();
    if let Some(proto) = field.and_then(|f| f.implies_proto()) {
        out.push((false, Cond::Proto(proto)));
    }
    let one = |v: &Value| -> Option<Cond> {
        Some(match field? {
            Field::Iifname => Cond::InIface(iface(v.as_str()?)),
            Field::Oifname => Cond::OutIface(iface(v.as_str()?)),
            Field::Saddr => Cond::Src(net(v)?),
            Field::Daddr => Cond::Dst(net(v)?),
            Field::L4proto => Cond::Proto(proto_number(v)?),
            Field::Dport(_) => {
                let (a, b) = port_range(v)?;
                Cond::Dport(a, b)
            }
            Field::Sport(_) => {
                let (a, b) = port_range(v)?;
                Cond::Sport(a, b)
            }
            Field::FibDaddrLocal => match v.as_str()? {
                "local" => Cond::DstTypeLocal,
                _ => return None,
            },
            // Decided over the whole value before any element is looked at (below).
            Field::Nfproto | Field::CtState => return None,
        })
    };
    if field == Some(Field::Nfproto) {
        // `meta nfproto ipv4` always holds for the packets pathtrace follows.
        return match values.first().and_then(|v| v.as_str()) {
            Some("ipv4") if !negated => out,
            Some("ipv4") => vec![(false, Cond::Never)],
            Some(_) if negated => out,
            _ => vec![(false, Cond::Never)],
        };
    }
    // `ct state { established, related }` is one condition over a list.
    if field == Some(Field::CtState) {
        let states: Vec<CtState> = values
            .iter()
            .filter_map(|v| v.as_str())
            .filter_map(ct_state)
            .collect();
        if states.is_empty() {
            return Vec::new();
        }
        out.push((negated, Cond::CtState(states)));
        return out;
    }
    let conds: Option<Vec<Cond>> = values.iter().map(one).collect();
    match conds {
        Some(mut cs) if cs.len() == 1 => out.push((negated, cs.remove(0))),
        Some(cs) if !cs.is_empty() => out.push((negated, Cond::AnyOf(cs))),
        _ => return Vec::new(),
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Iifname,
    Oifname,
    Saddr,
    Daddr,
    L4proto,
    Dport(Proto),
    Sport(Proto),
    CtState,
    FibDaddrLocal,
    Nfproto,
}

impl Field {
    fn implies_proto(self) -> Option<Proto> {
        match self {
            Self::Dport(p) | Self::Sport(p) => Some(p),
            _ => None,
        }
    }
}

fn field_of(left: &Value) -> Option<Field> {
    if let Some(meta) = left.get("meta") {
        return match s(meta, "key") {
            "iifname" => Some(Field::Iifname),
            "oifname" => Some(Field::Oifname),
            "l4proto" => Some(Field::L4proto),
            "nfproto" => Some(Field::Nfproto),
            _ => None,
        };
    }
    if let Some(p) = left.get("payload") {
        return match (s(p, "protocol"), s(p, "field")) {
            ("ip", "saddr") => Some(Field::Saddr),
            ("ip", "daddr") => Some(Field::Daddr),
            ("ip", "protocol") => Some(Field::L4proto),
            ("tcp", "dport") => Some(Field::Dport(Proto::TCP)),
            ("tcp", "sport") => Some(Field::Sport(Proto::TCP)),
            ("udp", "dport") => Some(Field::Dport(Proto::UDP)),
            ("udp", "sport") => Some(Field::Sport(Proto::UDP)),
            ("th", "dport") => None,
            _ => None,
        };
    }
    if let Some(ct) = left.get("ct") {
        return (s(ct, "key") == "state").then_some(Field::CtState);
    }
    if let Some(fib) = left.get("fib") {
        let daddr = fib
            .get("flags")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|x| x == "daddr"));
        return (s(fib, "result") == "type" && daddr).then_some(Field::FibDaddrLocal);
    }
    None
}

/// The elements of a set (`{"set": [...]}` or a JSON array), or the value itself.
fn set_items(v: &Value) -> Vec<Value> {
    match v {
        Value::Object(o) if o.contains_key("set") => o
            .get("set")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    }
}

/// nft's interface wildcard `eth*` as iptables' `eth+`, which the evaluator understands.
fn iface(name: &str) -> String {
    match name.strip_suffix('*') {
        Some(prefix) => format!("{prefix}+"),
        None => name.to_owned(),
    }
}

fn net(v: &Value) -> Option<Net> {
    if let Some(p) = v.get("prefix") {
        return Some(Net {
            addr: s(p, "addr").parse().ok()?,
            len: u8::try_from(p.get("len")?.as_u64()?)
                .ok()
                .filter(|l| *l <= 32)?,
        });
    }
    Net::parse(v.as_str()?)
}

fn port_range(v: &Value) -> Option<(u16, u16)> {
    if let Some(r) = v.get("range").and_then(Value::as_array) {
        let a = u16::try_from(r.first()?.as_u64()?).ok()?;
        let b = u16::try_from(r.get(1)?.as_u64()?).ok()?;
        return Some((a, b));
    }
    let p = u16::try_from(v.as_u64()?).ok()?;
    Some((p, p))
}

fn proto_number(v: &Value) -> Option<Proto> {
    match v {
        Value::Number(n) => u8::try_from(n.as_u64()?).ok().map(Proto::from_number),
        // Names only: `ip` or `th` as a payload's protocol is no IP protocol.
        Value::String(s) => Proto::parse(s).filter(|p| p.is_named()),
        _ => None,
    }
}

fn ct_state(name: &str) -> Option<CtState> {
    Some(match name {
        "new" => CtState::New,
        "established" => CtState::Established,
        "related" => CtState::Related,
        "invalid" => CtState::Invalid,
        "untracked" => CtState::Untracked,
        _ => return None,
    })
}

/// The left side of a match as nft prints it.
fn operand_text(v: &Value) -> String {
    if let Some(meta) = v.get("meta") {
        let key = s(meta, "key");
        return match key {
            "iifname" | "oifname" | "iif" | "oif" | "mark" => key.to_owned(),
            _ => format!("meta {key}"),
        };
    }
    if let Some(p) = v.get("payload") {
        return format!("{} {}", s(p, "protocol"), s(p, "field"));
    }
    if let Some(ct) = v.get("ct") {
        return format!("ct {}", s(ct, "key"));
    }
    if let Some(fib) = v.get("fib") {
        let flags: Vec<&str> = fib
            .get("flags")
            .and_then(Value::as_array)
            .map(|f| f.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        return format!("fib {} {}", flags.join(" . "), s(fib, "result"));
    }
    value_text(v, false)
}

/// Interface names are the strings nft prints quoted (`iifname "lo"`); keywords such as
/// `established` or `local` stay bare.
fn names_iface(left: &Value) -> bool {
    left.get("meta")
        .is_some_and(|m| matches!(s(m, "key"), "iifname" | "oifname" | "ibrname" | "obrname"))
}

/// The right side of a match: a value, prefix, range or set; `quote` for interface names.
fn right_text(v: &Value, quote: bool) -> String {
    match v {
        Value::Object(o) if o.contains_key("set") => {
            let items: Vec<String> = set_items(v)
                .iter()
                .map(|e| set_elem_text(e, quote))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(|e| value_text(e, quote)).collect();
            format!("{{ {} }}", items.join(", "))
        }
        other => value_text(other, quote),
    }
}

fn set_elem_text(v: &Value, quote: bool) -> String {
    match v.as_array() {
        // A map element: `"eth0" : jump zone`.
        Some(pair) if pair.len() == 2 => {
            let verdict = pair[1]
                .as_object()
                .and_then(|o| o.iter().next())
                .map(|(k, b)| statement_text(k, b))
                .unwrap_or_default();
            format!("{} : {verdict}", value_text(&pair[0], quote))
        }
        _ => value_text(v, quote),
    }
}

fn value_text(v: &Value, quote: bool) -> String {
    match v {
        Value::String(s) if quote => format!("\"{s}\""),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                format!(
                    "{}/{}",
                    s(p, "addr"),
                    p.get("len").map(Value::to_string).unwrap_or_default()
                )
            } else if let Some(r) = o.get("range").and_then(Value::as_array) {
                let parts: Vec<String> = r.iter().map(|e| value_text(e, false)).collect();
                parts.join("-")
            } else {
                Value::Object(o.clone()).to_string()
            }
        }
        other => other.to_string(),
    }
}

/// A statement as nft prints it (`accept`, `jump zone`, `reject with icmpx admin-prohibited`).
fn statement_text(kind: &str, body: &Value) -> String {
    match kind {
        "jump" | "goto" => format!("{kind} {}", s(body, "target")),
        "reject" => match (s(body, "type"), s(body, "expr")) {
            ("", _) => "reject".into(),
            ("tcp reset", _) => "reject with tcp reset".into(),
            (t, "") => format!("reject with {t}"),
            (t, e) => format!("reject with {t} {e}"),
        },
        "dnat" | "snat" => {
            let port = body
                .get("port")
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            format!("{kind} to {}{port}", s(body, "addr"))
        }
        "log" => match body.get("prefix").and_then(Value::as_str) {
            Some(p) => format!("log prefix \"{p}\""),
            None => "log".into(),
        },
        other => other.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::ruleset::{PacketAtHook, ruleset_fixtures::syn_at_forward};

    const FIREWALLD: &str = include_str!("../../test_data/nft_firewalld.json");

    #[test]
    fn firewalld_forward_rejects_docker0_to_uplink_and_names_the_handle() {
        let rs = parse(FIREWALLD, &iptables_nft_tables()).expect("parses");
        let t = &rs.tables[0];
        assert_eq!(t.label(), "inet firewalld");
        let fwd = t.chain("filter_FORWARD").expect("chain");
        assert_eq!(
            fwd.base.map(|b| (b.hook, b.priority)),
            Some((Hook::Forward, 10))
        );

        // A container's outbound SYN: docker0 is in no zone, so it reaches the final reject.
        let pkt = syn_at_forward("docker0", "eth0", Ipv4Addr::new(172, 17, 0, 2));
        let out = rs.evaluate(Hook::Forward, &pkt);
        assert_eq!(out.verdict, RuleVerdict::Reject, "{out:?}");
        let by = out.by.expect("a rule");
        assert_eq!(by.table, "inet firewalld");
        assert_eq!(by.chain, "filter_FORWARD");
        assert_eq!(by.handle, Some(147));
        assert_eq!(by.text, "reject with icmpx admin-prohibited");
        assert!(
            out.path
                .iter()
                .any(|c| c == "inet firewalld/filter_FORWARD_IN_ZONES"),
            "{:?}",
            out.path
        );
        // ChainRule text as nft prints it: interface names quoted, keywords bare, vmaps spelled out.
        let text = |chain: &str, i: usize| t.chain(chain).expect("chain").rules[i].text.clone();
        assert_eq!(text("filter_FORWARD", 1), "iifname \"lo\" accept");
        assert_eq!(
            text("filter_FORWARD_IN_ZONES", 0),
            "iifname vmap { \"tun0\" : goto filter_FWDI_trusted, \"eth0\" : goto filter_FWDI_public }"
        );
        assert_eq!(
            text("filter_INPUT", 1),
            "tcp dport { 22, 9000-9100 } accept"
        );
    }

    #[test]
    fn firewalld_accepts_the_zone_it_knows_and_established_replies() {
        let rs = parse(FIREWALLD, &iptables_nft_tables()).expect("parses");
        // eth0 is in the public zone, whose forward chain accepts to... nothing here: the
        // packet from eth0 to docker0 still ends at the reject, unless it is a reply.
        let mut pkt = syn_at_forward("eth0", "docker0", Ipv4Addr::new(203, 0, 113, 2));
        pkt.ct_state = CtState::Established;
        let out = rs.evaluate(Hook::Forward, &pkt);
        assert_eq!(out.verdict, RuleVerdict::Accept);
        assert_eq!(
            out.by.map(|b| b.text),
            Some("ct state { established, related } accept".into())
        );
        // A trusted-zone interface is accepted through the vmap's goto.
        let pkt: PacketAtHook = syn_at_forward("tun0", "eth0", Ipv4Addr::new(10, 8, 0, 2));
        let out = rs.evaluate(Hook::Forward, &pkt);
        assert_eq!(out.verdict, RuleVerdict::Accept, "{out:?}");
        assert_eq!(out.by.and_then(|b| b.handle), Some(160));
    }

    #[test]
    fn iptables_nft_tables_are_left_to_iptables_save() {
        let json = r#"{"nftables":[{"table":{"family":"ip","name":"filter","handle":1}},
            {"chain":{"family":"ip","table":"filter","name":"FORWARD","handle":1,"type":"filter","hook":"forward","prio":0,"policy":"drop"}},
            {"table":{"family":"ip6","name":"mine","handle":2}},
            {"table":{"family":"netdev","name":"ingress","handle":4}},
            {"table":{"family":"inet","name":"mine","handle":3}}]}"#;
        let rs = parse(json, &iptables_nft_tables()).expect("parses");
        assert_eq!(
            rs.tables.iter().map(Table::label).collect::<Vec<_>>(),
            ["inet mine"]
        );
        let rs = parse(json, &[]).expect("parses");
        assert_eq!(rs.tables.len(), 2);
    }

    #[test]
    fn bridge_family_chains_see_only_bridged_frames_by_port() {
        let json = r#"{"nftables":[{"table":{"family":"bridge","name":"filter","handle":1}},
            {"chain":{"family":"bridge","table":"filter","name":"forward","handle":1,"type":"filter","hook":"forward","prio":-200,"policy":"accept"}},
            {"rule":{"family":"bridge","table":"filter","chain":"forward","handle":3,"expr":[
              {"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"veth2"}},
              {"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":"172.17.0.2"}},
              {"counter":{"packets":2,"bytes":120}},{"drop":null}]}}]}"#;
        let rs = parse(json, &[]).expect("parses");
        let pkt = syn_at_forward("veth2", "veth1", Ipv4Addr::new(172, 17, 0, 3));
        // Routed traffic never meets a bridge chain.
        assert_eq!(
            rs.evaluate(Hook::Forward, &pkt).verdict,
            RuleVerdict::Accept
        );
        let out = rs.evaluate_bridge(Hook::Forward, &pkt);
        assert_eq!(out.verdict, RuleVerdict::Drop);
        let by = out.by.expect("the rule");
        assert_eq!(
            (by.table.as_str(), by.chain.as_str(), by.handle, by.packets),
            ("bridge filter", "forward", Some(3), Some(2))
        );
        assert_eq!(by.text, "iifname \"veth2\" ip daddr 172.17.0.2 drop");
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(parse("not json", &[]), Err(NftJsonError::Json(_))));
        assert_eq!(parse("{}", &[]), Err(NftJsonError::Shape));
    }

    #[test]
    fn unmodelled_matches_are_kept_as_text() {
        let json = r#"{"nftables":[{"table":{"family":"inet","name":"t","handle":1}},
            {"chain":{"family":"inet","table":"t","name":"fwd","handle":1,"type":"filter","hook":"forward","prio":0,"policy":"accept"}},
            {"rule":{"family":"inet","table":"t","chain":"fwd","handle":4,"expr":[
              {"match":{"op":"==","left":{"meta":{"key":"mark"}},"right":42}},{"drop":null}]}}]}"#;
        let rs = parse(json, &[]).expect("parses");
        let pkt = syn_at_forward("eth0", "docker0", Ipv4Addr::new(203, 0, 113, 2));
        let out = rs.evaluate(Hook::Forward, &pkt);
        assert_eq!(out.verdict, RuleVerdict::Accept);
        assert_eq!(out.unknown_matches, ["mark 42 drop: mark 42"]);
    }
}
