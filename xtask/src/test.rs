//! `cargo xtask test`: everything CI runs. Unit tests first (no root needed for them), then
//! the lab integration tests one at a time (they share port numbers and the kernel's probes).

use anyhow::Result;

use crate::{build, cargo, require_root, setup, status};

pub fn run() -> Result<()> {
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
    Ok(())
}
