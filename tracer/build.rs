//! Builds the kernel programs (`tracer-ebpf`) for bpfel-unknown-none with the nightly toolchain
//! and embeds the object in the binary (see `probes::loader`).

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("bpf-linker").is_file()))
        .unwrap_or(false);
    if !on_path {
        return Err(anyhow!(
            "bpf-linker is not on PATH: run `cargo xtask setup` (it builds bpf-linker 0.13.0 \
             against the nightly toolchain's LLVM)"
        ));
    }
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest)
        .parent()
        .ok_or_else(|| anyhow!("tracer/ has no parent"))?
        .join("tracer-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    let package = Package {
        name: "tracer-ebpf",
        root_dir: root,
        ..Default::default()
    };
    // aya-build watches only the eBPF crate; the kernel side also compiles tracer-common (event
    // layout, filter, fingerprints), so a change there must rebuild the object too.
    let common = std::path::Path::new(&manifest)
        .parent()
        .ok_or_else(|| anyhow!("tracer/ has no parent"))?
        .join("tracer-common");
    println!("cargo:rerun-if-changed={}", common.display());
    aya_build::build_ebpf([package], Toolchain::Nightly)
}
