//! Routing as `ip` answers it inside a namespace: policy rules (which table a lookup with a
//! given fwmark goes to, for a reverse path check that used the mark) and `ip route get`
//! (whether a namespace can answer a packet it took at all).

use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::host::{RouteLookup, RouteRule};

/// Why `ip` could not say.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error("running `ip {0}`: {1}")]
    Run(String, std::io::Error),
    #[error("`ip {0}` failed: {1}")]
    Failed(String, String),
    #[error("`ip {0}` printed what is not its JSON: {1}")]
    Parse(String, serde_json::Error),
}

/// `ip -j rule` prints one object per rule: the fields read, and the rest by name.
#[derive(Deserialize)]
struct IpRule {
    priority: u32,
    src: Option<String>,
    dst: Option<String>,
    fwmark: Option<String>,
    fwmask: Option<String>,
    iif: Option<String>,
    table: Option<String>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// Selectors a lookup carrying only a mark cannot be sure to match (besides source,
/// destination and input interface, read above).
const OTHER_SELECTORS: &[&str] = &[
    "oif", "not", "l3mdev", "uidrange", "ipproto", "sport", "dport", "tos", "dsfield",
];

/// Parses `ip -j -4 rule show`. Rules that do not send to a table (`goto`, `blackhole`,
/// ...) are left out.
pub fn parse(json: &str) -> Result<Vec<RouteRule>, serde_json::Error> {
    let rules: Vec<IpRule> = serde_json::from_str(json)?;
    Ok(rules
        .into_iter()
        .filter_map(|r| {
            let hex = |s: &str| u32::from_str_radix(s.trim_start_matches("0x"), 16).ok();
            let fwmark = r
                .fwmark
                .as_deref()
                .and_then(hex)
                .map(|v| (v, r.fwmask.as_deref().and_then(hex).unwrap_or(u32::MAX)));
            let mark_only = r.src.as_deref().is_none_or(|s| s == "all")
                && r.dst.as_deref().is_none_or(|d| d == "all")
                && r.iif.as_deref().is_none_or(|i| i == "lo")
                && !OTHER_SELECTORS.iter().any(|k| r.rest.contains_key(*k));
            Some(RouteRule {
                priority: r.priority,
                fwmark,
                table: r.table?,
                mark_only,
            })
        })
        .collect())
}

/// Runs `ip ARGS` in the calling thread's namespace: its output, or its complaint.
fn ip(args: &[&str]) -> Result<Result<String, String>, RoutesError> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| RoutesError::Run(args.join(" "), e))?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    Ok(if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    })
}

/// Runs `ip -j -4 rule show` in the calling thread's namespace.
pub fn read_rules() -> Result<Vec<RouteRule>, RoutesError> {
    let args = ["-j", "-4", "rule", "show"];
    let json = ip(&args)?.map_err(|e| RoutesError::Failed(args.join(" "), e))?;
    parse(&json).map_err(|e| RoutesError::Parse(args.join(" "), e))
}

/// `ip -j -4 route get TO from FROM` in the calling thread's namespace. No route is an
/// answer (`Unreachable` with the kernel's words), not an error.
pub fn get(to: Ipv4Addr, from: Ipv4Addr) -> Result<RouteLookup, RoutesError> {
    let (to, from) = (to.to_string(), from.to_string());
    let args = ["-j", "-4", "route", "get", &to, "from", &from];
    match ip(&args)? {
        Ok(json) => parse_route(&json).map_err(|e| RoutesError::Parse(args.join(" "), e)),
        Err(why) => Ok(RouteLookup::Unreachable(
            why.trim_start_matches("RTNETLINK answers: ").to_owned(),
        )),
    }
}

#[derive(Deserialize)]
struct IpRoute {
    dev: Option<String>,
    gateway: Option<Ipv4Addr>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// The first route `ip -j route get` prints. A `blackhole`, `unreachable` or `prohibit`
/// route is no way out either.
fn parse_route(json: &str) -> Result<RouteLookup, serde_json::Error> {
    let routes: Vec<IpRoute> = serde_json::from_str(json)?;
    Ok(match routes.into_iter().next() {
        Some(r)
            if r.kind
                .as_deref()
                .is_some_and(|k| k != "unicast" && k != "local") =>
        {
            RouteLookup::Unreachable(format!("a {} route", r.kind.unwrap_or_default()))
        }
        Some(IpRoute {
            dev: Some(dev),
            gateway,
            ..
        }) => RouteLookup::Via { dev, gateway },
        _ => RouteLookup::Unreachable("no route printed".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As iproute2 6.1 prints it for: `fwmark 0x3 iif eth9 lookup 9`, `from 10.1.0.0/16
    /// lookup 5`, `fwmark 0x10/0xf0 lookup 7 pref 900`, `fwmark 0x2 lookup 102`.
    const RULES: &str = r#"[{"priority":0,"src":"all","table":"local"},{"priority":898,"src":"all","fwmark":"0x3","iif":"eth9","iif_detached":null,"table":"9"},{"priority":899,"src":"10.1.0.0","srclen":16,"table":"5"},{"priority":900,"src":"all","fwmark":"0x10","fwmask":"0xf0","table":"7"},{"priority":32765,"src":"all","fwmark":"0x2","table":"102"},{"priority":32766,"src":"all","table":"main"},{"priority":32767,"src":"all","table":"default"}]"#;

    #[test]
    fn a_marked_lookup_takes_the_first_rule_that_selects_by_its_mark_alone() {
        let rules = parse(RULES).expect("parses");
        assert_eq!(rules.len(), 7);
        let first = |mark| {
            rules
                .iter()
                .filter(|r| r.table != "local")
                .find(|r| r.takes(mark))
                .map(|r| r.table.as_str())
        };
        assert_eq!(first(0x2), Some("102"));
        assert_eq!(first(0x3), Some("main"), "that rule also needs iif eth9");
        assert_eq!(first(0x15), Some("7"), "0x15 & 0xf0 == 0x10");
        assert_eq!(
            first(0),
            Some("main"),
            "the source rule is not a mark-only one"
        );
        assert!(parse("not json").is_err());
    }

    #[test]
    fn a_route_lookup_says_the_way_out_or_why_there_is_none() {
        // iproute2 6.1, `ip -j route get 203.0.113.2 from 172.17.0.2` in a container.
        let via = r#"[{"dst":"203.0.113.2","gateway":"172.17.0.1","dev":"eth0","prefsrc":"172.17.0.2","flags":[],"uid":0,"cache":[]}]"#;
        assert_eq!(
            parse_route(via).expect("parses"),
            RouteLookup::Via {
                dev: "eth0".into(),
                gateway: Some(Ipv4Addr::new(172, 17, 0, 1)),
            }
        );
        let blackhole =
            r#"[{"type":"blackhole","dst":"203.0.113.2","flags":[],"uid":0,"cache":[]}]"#;
        assert_eq!(
            parse_route(blackhole).expect("parses"),
            RouteLookup::Unreachable("a blackhole route".into())
        );
    }
}
