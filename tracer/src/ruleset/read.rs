//! Reading the rulesets of the calling thread's namespace: every iptables backend, ebtables
//! and native nft, merged into one [`Ruleset`]. Run it inside the namespace to read
//! (`resolve::netns::run_in`); it only lists, never changes a rule.

use super::{
    Ruleset, ebtables,
    model::{Flavor, Source},
    nft,
};

/// `iptables-save -c` in the calling thread's namespace: the nft-backed tables first, then
/// legacy; whichever has rules (a host uses one or the other).
///
/// `bridges`: the namespace has a bridge, so ebtables rules can matter there. Legacy ebtables
/// cannot list a table without the kernel creating it (empty, ACCEPT) in that namespace, so
/// it is only asked where a bridge exists and its module is already loaded.
pub fn read_ruleset(bridges: bool) -> Option<Ruleset> {
    let mut rs = Ruleset::default();
    let mut read_elsewhere = Vec::new();
    // Both iptables backends: a host can hold rules in each (Docker on one, a firewall script
    // on the other), and each `iptables` lists only its own.
    let ran: Vec<Option<Ruleset>> = ["iptables-nft-save", "iptables-legacy-save"]
        .into_iter()
        .filter_map(read_iptables)
        .collect();
    let saves: Vec<Ruleset> = if ran.is_empty() {
        // Neither split binary exists: the one `iptables-save` says which backend it is.
        read_iptables("iptables-save")
            .flatten()
            .into_iter()
            .collect()
    } else {
        ran.into_iter().flatten().collect()
    };
    for save in saves {
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
    if let Some(nft) = read_nft(&read_elsewhere) {
        rs.merge(nft);
    }
    (!rs.is_empty()).then_some(rs)
}

/// `<cmd> -c` (an iptables-save): `None` when the command does not exist, `Some(None)` when it
/// ran but had no rules (or failed). The backend comes from the header it writes
/// (`(nf_tables)` or `(legacy)`). iptables-legacy-save lists only the tables the namespace
/// already has (`/proc/net/ip_tables_names`): nothing is created.
fn read_iptables(cmd: &str) -> Option<Option<Ruleset>> {
    let out = std::process::Command::new(cmd).arg("-c").output().ok()?;
    if !out.status.success() {
        tracing::debug!("{cmd}: {}", String::from_utf8_lossy(&out.stderr).trim());
        return Some(None);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let backend =
        if text.contains("(legacy)") || (cmd.contains("legacy") && !text.contains("(nf_tables)")) {
            Flavor::Legacy
        } else {
            Flavor::Nft
        };
    Some(match Ruleset::parse_from(&text, backend) {
        Ok(rs) if !rs.is_empty() => Some(rs),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!("{cmd}: {e}");
            None
        }
    })
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
    (!rs.is_empty()).then_some(rs)
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
    (!rs.is_empty()).then_some(rs)
}

/// `nft -j list ruleset`, IPv4 families only, without the tables read elsewhere.
fn read_nft(read_elsewhere: &[(String, String)]) -> Option<Ruleset> {
    let out = std::process::Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .output()
        .ok()?;
    if !out.status.success() {
        tracing::debug!(
            "nft -j list ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    match nft::parse(&String::from_utf8_lossy(&out.stdout), read_elsewhere) {
        Ok(rs) => Some(rs),
        Err(e) => {
            tracing::debug!("nft -j list ruleset: {e}");
            None
        }
    }
}
