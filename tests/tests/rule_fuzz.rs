//! The rule evaluator against the kernel: random rulesets, one SYN each through FORWARD and
//! INPUT, the kernel's counters against pathtrace's verdict (`lab::rulefuzz`). CI runs 200
//! rulesets; `cargo xtask fuzz-rules --count N [--seed S]` runs more.

/// Rulesets CI checks; `PATHTRACE_FUZZ_COUNT` and `PATHTRACE_FUZZ_SEED` change the run.
const COUNT: u64 = 200;
const SEED: u64 = 0x5eed_2026;

#[test]
fn the_rule_evaluator_agrees_with_the_kernel() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| {
                v.strip_prefix("0x")
                    .map_or_else(|| v.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
            })
            .unwrap_or(d)
    };
    let (count, seed) = (
        env("PATHTRACE_FUZZ_COUNT", COUNT),
        env("PATHTRACE_FUZZ_SEED", SEED),
    );
    let out =
        lab::rulefuzz::check(count, seed, |line| eprintln!("{line}")).expect("the check runs");
    eprintln!(
        "rulefuzz: {} rulesets, {} packets ({} dropped by netfilter, {} by tied tables said as such), {} disagreements",
        out.rulesets,
        out.packets,
        out.dropped,
        out.ties,
        out.disagreements.len()
    );
    assert_eq!(out.rulesets, count);
    assert!(
        out.dropped * 5 >= out.packets,
        "too few drops to test attribution: {} of {}",
        out.dropped,
        out.packets
    );
    let shown: Vec<String> = out
        .disagreements
        .iter()
        .take(5)
        .map(ToString::to_string)
        .collect();
    assert!(
        out.disagreements.is_empty(),
        "{} of {} packets judged differently from the kernel:\n{}",
        out.disagreements.len(),
        out.packets,
        shown.join("\n")
    );
}
