//! Policy routing rules (`ip rule`), read inside their namespace: which table a lookup with a
//! given fwmark goes to, for the diagnosis of a reverse path check that used the mark.

use serde::Deserialize;

use crate::host::RouteRule;

/// Why the rules could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("running `ip -j -4 rule show`: {0}")]
    Run(#[from] std::io::Error),
    #[error("`ip -j -4 rule show` failed: {0}")]
    Failed(String),
    #[error("`ip -j -4 rule show` printed what is not its JSON: {0}")]
    Parse(#[from] serde_json::Error),
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

/// Runs `ip -j -4 rule show` in the calling thread's namespace.
pub fn read() -> Result<Vec<RouteRule>, RulesError> {
    let out = std::process::Command::new("ip")
        .args(["-j", "-4", "rule", "show"])
        .output()?;
    if !out.status.success() {
        return Err(RulesError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout))?)
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
}
