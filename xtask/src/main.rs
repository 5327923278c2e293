//! Project tasks. `cargo xtask setup | build | demo | test | lab | bench | fuzz-rules`; each
//! is one file.

mod bench;
mod demo;
mod fuzz_rules;
mod kernel_lab;
mod setup;
mod test;
mod vm;

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "pathtrace project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks: Debian packages, nightly rust-src, bpf-linker.
    Setup,
    /// Build the pathtrace binary (eBPF object included).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build a lab with forwarding off on its uplink and show pathtrace finding it.
    Demo,
    /// Unit tests, the integration tests against the lab (root), then the kernel lab in a VM.
    Test {
        /// Skip the VM kernel lab (it boots qemu under TCG: minutes).
        #[arg(long)]
        no_vm: bool,
    },
    /// The lab scenarios in a VM with another kernel, per backend (fentry, kprobe).
    Lab(kernel_lab::LabArgs),
    /// What tracing costs on the container forwarding path; writes docs/performance.md.
    Bench(bench::BenchArgs),
    /// The rule evaluator against the kernel: random rulesets, the kernel's counters against
    /// pathtrace's verdicts (CI runs 200).
    FuzzRules(fuzz_rules::FuzzArgs),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run().and_then(|()| setup::vm_packages()),
        Task::Build { release } => {
            setup::run()?;
            build(release).map(drop)
        }
        Task::Demo => demo::run(),
        Task::Test { no_vm } => test::run(no_vm),
        Task::Lab(args) => kernel_lab::run(args),
        Task::Bench(args) => bench::run(args),
        Task::FuzzRules(args) => fuzz_rules::run(args),
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> std::path::PathBuf {
    let xtask = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = xtask.parent().unwrap_or(xtask);
    root.canonicalize().unwrap_or_else(|_| root.to_path_buf())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root())
        .env("PATH", setup::path_with_cargo_bin());
    cmd
}

/// Runs a command to completion, failing with its name.
fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed with {st}");
    }
    Ok(())
}

/// Builds the pathtrace binary and returns its path.
fn build(release: bool) -> Result<std::path::PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "tracer", "--bin", "pathtrace"]);
    if release {
        cmd.arg("--release");
    }
    status(&mut cmd)?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), Into::into);
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("pathtrace"))
}

fn require_root(task: &str) -> Result<()> {
    if lab::require_root().is_err() {
        bail!(
            "`cargo xtask {task}` needs root (it loads eBPF programs and builds network namespaces); run it with sudo"
        );
    }
    Ok(())
}
