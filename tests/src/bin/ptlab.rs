//! `ptlab`: runs lab scenarios against pathtrace. The VM lab runs it inside the guest; people
//! can run it on a host too (root).
//!
//! ```text
//! ptlab list
//! ptlab run [--backend B] [SCENARIO...]   one `PTLAB-RESULT {json}` line per scenario
//! ptlab shell SCENARIO                    the lab with its fault, and a shell to explore it
//! ```

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use lab::scenario;

fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()) {
        eprintln!("ptlab: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Vec<String>) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("list") => {
            for s in scenario::all() {
                println!("{:<24} {}", s.name, s.about);
            }
            Ok(())
        }
        Some("run") => {
            let mut backend = "auto".to_owned();
            let mut names = Vec::new();
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                if a == "--backend" {
                    backend = it.next().context("--backend needs a value")?.clone();
                } else {
                    names.push(a.clone());
                }
            }
            let scenarios = if names.is_empty() {
                scenario::all()
            } else {
                names
                    .iter()
                    .map(|n| {
                        scenario::find(n).with_context(|| format!("no scenario `{n}` (ptlab list)"))
                    })
                    .collect::<Result<_>>()?
            };
            let in_vm = std::env::var_os("PTLAB_IN_VM").is_some();
            // In a fresh guest with a function backend, first: a trace that starts before the
            // bridge module loads picks its BTF up once it appears.
            let module_late = in_vm && matches!(backend.as_str(), "fentry" | "kprobe");
            // What will be run, so a reader can tell a run that stopped short from a whole one.
            let mut names: Vec<&str> = scenarios
                .iter()
                .map(|s: &scenario::Scenario| s.name)
                .collect();
            if module_late {
                names.insert(0, scenario::MODULE_LATE);
            }
            println!(
                "PTLAB-PLAN {}",
                serde_json::json!({"backend": backend, "scenarios": names})
            );
            let planned = names.len();
            if module_late {
                println!("PTLAB-RESULT {}", scenario::module_late(&backend));
            }
            let mut traced = Vec::new();
            for s in scenarios {
                match (in_vm, s.vm_skip) {
                    (true, Some(why)) => {
                        let line = serde_json::json!({"scenario": s.name, "backend": backend, "skipped": why});
                        println!("PTLAB-RESULT {line}");
                    }
                    _ => traced.push(s),
                }
            }
            scenario::observe_all(&traced, &backend, &[], |s, seen| {
                let line = match seen {
                    Ok((_lab, seen)) => seen.summary(s),
                    Err(e) => serde_json::json!({
                        "scenario": s.name, "backend": backend, "pass": false, "error": format!("{e:#}"),
                    }),
                };
                println!("PTLAB-RESULT {line}");
            });
            println!(
                "PTLAB-END {}",
                serde_json::json!({"backend": backend, "ran": planned})
            );
            Ok(())
        }
        Some("shell") => {
            let name = args.get(1).context("ptlab shell SCENARIO")?;
            let s = scenario::find(name)
                .with_context(|| format!("no scenario `{name}` (ptlab list)"))?;
            let lab = scenario::build(&s)?;
            let to = s.target();
            println!(
                "\nScenario {}: {}\n  client:    ip netns exec {} ...   (connect to {to})\n  host:      ip netns exec {} ...\n  container: ip netns exec {} ...\nTry: pathtrace {} &  then  ip netns exec {} nc -w1 {} {}\nExit the shell to tear the lab down.\n",
                s.name,
                s.about,
                lab.outside.name,
                lab.host.name,
                lab.container.name,
                s.filter().join(" "),
                lab.outside.name,
                to.ip(),
                to.port(),
            );
            let shell = std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into());
            let status = Command::new(&shell)
                .status()
                .with_context(|| format!("starting {shell}"))?;
            drop(lab);
            if !status.success() {
                bail!("{shell} exited with {status}");
            }
            Ok(())
        }
        Some("fuzz-rules") => {
            let mut count = 2000;
            let mut seed = 0x5eed_2026;
            let mut it = args[1..].iter();
            let num = |v: Option<&String>, what: &str| -> Result<u64> {
                let v = v.with_context(|| format!("{what} needs a value"))?;
                v.strip_prefix("0x")
                    .map_or_else(|| v.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
                    .with_context(|| format!("{what} {v}: not a number"))
            };
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--count" => count = num(it.next(), "--count")?,
                    "--seed" => seed = num(it.next(), "--seed")?,
                    other => bail!("fuzz-rules: unknown argument {other}"),
                }
            }
            let out = lab::rulefuzz::check(count, seed, |line| println!("{line}"))?;
            for d in &out.disagreements {
                println!("\nDISAGREEMENT {d}");
            }
            println!(
                "\nrulefuzz: {} rulesets from seed {seed:#x}, {} packets ({} dropped by netfilter, {} by tied tables said as such), {} disagreements",
                out.rulesets,
                out.packets,
                out.dropped,
                out.ties,
                out.disagreements.len()
            );
            if !out.disagreements.is_empty() {
                bail!(
                    "pathtrace and the kernel disagree on {} packets",
                    out.disagreements.len()
                );
            }
            Ok(())
        }
        Some("fuzz-case") => {
            let seed = args.get(1).context("ptlab fuzz-case SEED")?;
            let seed = seed
                .strip_prefix("0x")
                .map_or_else(|| seed.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
                .context("SEED: a number")?;
            let case = lab::rulefuzz::generate(seed, &lab::rulefuzz::topology());
            println!("--- iptables-nft\n{}", case.iptables);
            println!("--- iptables-legacy\n{}", case.legacy);
            println!("--- nft\n{}", case.nft);
            Ok(())
        }
        _ => bail!(
            "usage: ptlab list | run [--backend B] [SCENARIO...] | shell SCENARIO | fuzz-rules [--count N] [--seed S] | fuzz-case SEED"
        ),
    }
}
