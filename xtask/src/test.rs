//! `cargo xtask test`: everything CI runs. Unit tests first (no root needed for them), then
//! the lab integration tests one at a time (they share port numbers and the kernel's probes),
//! then the same scenarios in the VM kernel lab with the fentry and kprobe backends.

use anyhow::Result;

use crate::{build, cargo, require_root, setup, status};

pub fn run(no_vm: bool) -> Result<()> {
    setup::run()?;
    require_root("test")?;
    let bin = build(false)?;
    status(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "pathtrace-lab",
        "--exclude",
        "tracer-ebpf",
    ]))?;
    // Tests that cannot run here say so in this file (`lab::skip`); they are counted and
    // printed after the summaries, never passed off as passes.
    let skips = std::env::current_dir()?.join("target/pathtrace-skips.txt");
    let _ = std::fs::remove_file(&skips);
    let lab = status(
        cargo()
            .args([
                "test",
                "--package",
                "pathtrace-lab",
                "--",
                "--test-threads=1",
            ])
            .env("PATHTRACE_BIN", &bin)
            .env("PATHTRACE_SKIPS", &skips),
    );
    let skipped = std::fs::read_to_string(&skips).unwrap_or_default();
    let n = skipped.lines().count();
    if n > 0 {
        eprintln!("xtask test: {n} test(s) skipped (counted as not run, not as passed):");
        for line in skipped.lines() {
            eprintln!("  {line}");
        }
    }
    lab?;
    if no_vm {
        eprintln!("xtask test: --no-vm: skipping the kernel lab");
        return Ok(());
    }
    crate::kernel_lab::run(crate::kernel_lab::LabArgs {
        scenarios: Vec::new(),
        kernel: None,
        backends: vec!["fentry".into(), "kprobe".into()],
        shell: None,
        accel: "auto".into(),
        jobs: None,
    })
}
