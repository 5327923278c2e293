//! `cargo xtask fuzz-rules --count N [--seed S]`: the differential check of the rule evaluator
//! (`lab::rulefuzz`) at any size, on this host's kernel. A disagreement prints its seed, the
//! ruleset and both answers; `ptlab fuzz-case SEED` prints one case again.

use anyhow::{Result, bail};

use crate::{build, require_root, setup};

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Rulesets to generate and check (two SYNs each).
    #[arg(long, default_value_t = 2000)]
    count: u64,
    /// The first seed (decimal or 0x-hex); case i uses seed + i.
    #[arg(long, default_value = "0x5eed2026", value_parser = parse_seed)]
    seed: u64,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    s.strip_prefix("0x")
        .map_or_else(|| s.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| format!("`{s}` is not a number"))
}

pub fn run(args: FuzzArgs) -> Result<()> {
    setup::run()?;
    require_root("fuzz-rules")?;
    let bin = build(false)?;
    // SAFETY: set before any thread that reads the environment starts.
    unsafe { std::env::set_var("PATHTRACE_BIN", &bin) };
    let started = std::time::Instant::now();
    let out = lab::rulefuzz::check(args.count, args.seed, |line| println!("{line}"))?;
    for d in &out.disagreements {
        println!("\nDISAGREEMENT {d}");
    }
    println!(
        "\nfuzz-rules: {} rulesets from seed {:#x}, {} packets ({} dropped by netfilter, {} by tied chains said as such), {} disagreements, in {:.0?}",
        out.rulesets,
        args.seed,
        out.packets,
        out.dropped,
        out.ties,
        out.disagreements.len(),
        started.elapsed()
    );
    if !out.disagreements.is_empty() {
        bail!(
            "pathtrace and the kernel disagree on {} of {} packets",
            out.disagreements.len(),
            out.packets
        );
    }
    Ok(())
}
