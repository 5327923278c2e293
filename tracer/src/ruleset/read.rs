//! Reading the rulesets of the calling thread's namespace: every iptables backend, ebtables
//! and native nft, merged into one [`Ruleset`]. Run it inside the namespace to read
//! (`resolve::netns::run_in`); it only lists, never changes a rule.

use super::{
    Ruleset, ebtables,
    model::{Flavor, Source},
    nft,
};

/// Why no ruleset could be read: every iptables or nft listing that exists failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct ReadError(pub Vec<String>);

/// What one listing tool said.
enum Listing {
    /// The tool is not installed.
    Missing,
    /// It ran and failed, or printed what does not parse.
    Failed(String),
    /// It ran; the namespace has no rules of its kind.
    Empty,
    Rules(Ruleset),
}

/// Every ruleset of the calling thread's namespace: both iptables backends, ebtables and
/// native nft. `Ok(None)`: no rules anywhere; `Err`: nothing could be read and an iptables
/// or nft listing failed (a namespace with rules pathtrace cannot see is not one without).
///
/// `bridges`: the namespace has a bridge, so ebtables rules can matter there. Legacy ebtables
/// cannot list a table without the kernel creating it (empty, ACCEPT) in that namespace, so
/// it is only asked where a bridge exists and its module is already loaded.
pub fn read_ruleset(bridges: bool) -> Result<Option<Ruleset>, ReadError> {
    let mut rs = Ruleset::default();
    let mut failed = Vec::new();
    let mut read_elsewhere = Vec::new();
    let iptables = iptables_listings();
    if iptables.iter().all(|l| matches!(l, Listing::Missing)) {
        failed.push("iptables-save is not installed: iptables rules not checked".to_owned());
    }
    for listing in iptables {
        let save = match listing {
            Listing::Rules(save) => save,
            Listing::Failed(why) => {
                failed.push(why);
                continue;
            }
            Listing::Missing | Listing::Empty => continue,
        };
        if save
            .tables
            .iter()
            .any(|t| t.source == Source::Iptables(Flavor::Nft))
        {
            read_elsewhere = nft::iptables_nft_tables();
        }
        rs.merge(save);
    }
    // ebtables-nft's tables are nft `bridge` tables whose `ip` matches nft cannot show.
    for eb in [
        read_ebtables_nft(),
        bridges.then(read_ebtables_legacy).flatten(),
    ]
    .into_iter()
    .flatten()
    {
        for t in &eb.tables {
            if t.source == Source::Ebtables(Flavor::Nft) {
                read_elsewhere.push(("bridge".to_owned(), t.name.clone()));
            }
        }
        rs.merge(eb);
    }
    // Native nft tables (firewalld, hand-written) run at the same hooks.
    match read_nft(&read_elsewhere) {
        Listing::Rules(nft) => rs.merge(nft),
        Listing::Failed(why) => failed.push(why),
        Listing::Missing => failed
            .push("nft is not installed: native nft tables (firewalld) not checked".to_owned()),
        Listing::Empty => {}
    }
    // What was read is evaluated; what was not is said with it.
    if !rs.is_empty() {
        rs.unread.extend(failed);
        return Ok(Some(rs));
    }
    if !failed.is_empty() {
        return Err(ReadError(failed));
    }
    Ok((!rs.unread.is_empty()).then_some(rs))
}

/// Both iptables backends: a host can hold rules in each (Docker on one, a firewall script on
/// the other), and each `iptables` lists only its own. Without either split binary, the one
/// `iptables-save` says which backend it is.
fn iptables_listings() -> Vec<Listing> {
    let split: Vec<Listing> = ["iptables-nft-save", "iptables-legacy-save"]
        .into_iter()
        .map(read_iptables)
        .filter(|l| !matches!(l, Listing::Missing))
        .collect();
    if split.is_empty() {
        vec![read_iptables("iptables-save")]
    } else {
        split
    }
}

/// `<cmd> -c` (an iptables-save). The backend comes from the header it writes (`(nf_tables)`
/// or `(legacy)`). iptables-legacy-save lists only the tables the namespace already has
/// (`/proc/net/ip_tables_names`): nothing is created.
fn read_iptables(cmd: &str) -> Listing {
    let Ok(out) = std::process::Command::new(cmd).arg("-c").output() else {
        return Listing::Missing;
    };
    if !out.status.success() {
        return Listing::Failed(format!(
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let backend =
        if text.contains("(legacy)") || (cmd.contains("legacy") && !text.contains("(nf_tables)")) {
            Flavor::Legacy
        } else {
            Flavor::Nft
        };
    match Ruleset::parse_from(&text, backend) {
        Ok(rs) => said_by(cmd, rs).map_or(Listing::Empty, Listing::Rules),
        Err(e) => Listing::Failed(format!("{cmd}: {e}")),
    }
}

/// `ebtables-nft-save -c`, keeping the tables that hold rules ebtables-nft can read (it
/// marks native nft bridge tables as incompatible and leaves them to `nft`).
fn read_ebtables_nft() -> Option<Ruleset> {
    let out = std::process::Command::new("ebtables-nft-save")
        .arg("-c")
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let rs = ebtables::parse_nft_save(&String::from_utf8_lossy(&out.stdout))
        .inspect_err(|e| tracing::debug!("ebtables-nft-save: {e}"))
        .ok()?;
    said_by("ebtables-nft-save", rs)
}

/// `ebtables-legacy -L --Lc` for each ebtables table whose module is loaded (no module is ever
/// loaded for it). Listing a table the namespace lacks makes the kernel create it empty
/// (ACCEPT policies, no rules), as any `ebtables-legacy -L` does: no frame's fate changes.
fn read_ebtables_legacy() -> Option<Ruleset> {
    let modules = std::fs::read_to_string("/proc/modules").ok()?;
    let mut text = String::new();
    for table in ebtables::TABLES {
        let module = format!("ebtable_{table} ");
        if !modules.lines().any(|l| l.starts_with(&module)) {
            continue;
        }
        let Ok(out) = std::process::Command::new("ebtables-legacy")
            .args(["-t", table, "-L", "--Lc"])
            .output()
        else {
            return None; // not installed
        };
        if out.status.success() {
            text.push_str(&ebtables::listing_to_save(
                table,
                &String::from_utf8_lossy(&out.stdout),
            ));
        }
    }
    let rs = ebtables::parse(&text, Flavor::Legacy)
        .inspect_err(|e| tracing::debug!("ebtables-legacy: {e}"))
        .ok()?;
    said_by("ebtables-legacy", rs)
}

/// The ruleset, when it holds rules or lines that could not be read (named by `cmd`).
fn said_by(cmd: &str, mut rs: Ruleset) -> Option<Ruleset> {
    for line in &mut rs.unread {
        *line = format!("{cmd} {line}");
    }
    (!rs.is_empty() || !rs.unread.is_empty()).then_some(rs)
}

/// `nft -j list ruleset`, IPv4 families only, without the tables read elsewhere.
fn read_nft(read_elsewhere: &[(String, String)]) -> Listing {
    let Ok(out) = std::process::Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .output()
    else {
        return Listing::Missing;
    };
    if !out.status.success() {
        return Listing::Failed(format!(
            "nft -j list ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    match nft::parse(&String::from_utf8_lossy(&out.stdout), read_elsewhere) {
        Ok(rs) if rs.is_empty() => Listing::Empty,
        Ok(rs) => Listing::Rules(rs),
        Err(e) => Listing::Failed(format!("nft -j list ruleset: {e}")),
    }
}
