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
    status(
        cargo()
            .args([
                "test",
                "--package",
                "pathtrace-lab",
                "--",
                "--test-threads=1",
            ])
            .env("PATHTRACE_BIN", &bin),
    )?;
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
    })
}
