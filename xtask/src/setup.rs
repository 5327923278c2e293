//! `cargo xtask setup`: idempotent install of everything a fresh machine lacks.
//!
//! - Debian packages the lab and the tool use;
//! - `rust-src` for the nightly toolchain (`-Z build-std=core` for the eBPF target);
//! - bpf-linker 0.13.0 built against the LLVM that nightly rustc ships, so both agree on the
//!   bitcode format. Its RUNPATH points into `$CARGO_HOME/pathtrace-llvm`, which must stay.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::status;

/// bpftool: the daemon's SIGKILL test and the bench's per-hook costs list loaded programs.
const PACKAGES: &[&str] = &[
    "iproute2", "iptables", "nftables", "ethtool", "procps", "kmod", "bpftool",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    packages()?;
    docker()?;
    rust_src()?;
    bpf_linker()?;
    Ok(())
}

/// Docker for the container tests (`tests/tests/docker.rs`). Installing it does not start it:
/// the tests start dockerd when none runs and put the host back afterwards. Where it cannot
/// be installed the Docker tests say so and skip; nothing else depends on it.
fn docker() -> Result<()> {
    if let Err(e) = install_missing(&["docker.io"]) {
        eprintln!(
            "xtask setup: docker.io could not be installed ({e:#}); the Docker tests will skip"
        );
    }
    Ok(())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

/// PATH with `$CARGO_HOME/bin` first, where `cargo install` puts bpf-linker.
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut dirs = vec![cargo_home().join("bin")];
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// What the VM kernel lab needs on top: qemu (the kernel and busybox are downloaded, not
/// installed).
pub fn vm_packages() -> Result<()> {
    // ebtables: ebtables-legacy for the VM's kernel, which still has the x_tables bridge
    // tables (its `ebtables` alternative stays ebtables-nft, at a higher priority).
    install_missing(&["qemu-system-x86", "ebtables"])
}

fn packages() -> Result<()> {
    install_missing(PACKAGES)
}

fn install_missing(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask setup: installing {}", missing.join(" "));
    if lab::require_root().is_err() {
        bail!(
            "installing {} needs root: run `sudo cargo xtask setup`",
            missing.join(" ")
        );
    }
    status(Command::new("apt-get").arg("update").arg("-qq"))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running rustup (is the nightly toolchain installed?)")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    eprintln!("xtask setup: adding rust-src to the nightly toolchain");
    status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The libLLVM that nightly rustc itself links against.
fn nightly_libllvm() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running rustc +nightly")?;
    if !out.status.success() {
        bail!("no nightly toolchain: `rustup toolchain install nightly` (the eBPF crate needs it)");
    }
    let lib = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("lib");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.starts_with("libLLVM.so.") && name.contains("-rust-")
        })
        .collect();
    found.sort();
    found
        .pop()
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", lib.display()))
}

fn linker_works(bin: &Path) -> bool {
    Command::new(bin).arg("--version").output().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
    })
}

fn bpf_linker() -> Result<()> {
    let bin = cargo_home().join("bin/bpf-linker");
    if linker_works(&bin) {
        return Ok(());
    }
    let llvm = nightly_libllvm()?;
    let prefix = cargo_home().join("pathtrace-llvm");
    let libdir = prefix.join("lib");
    std::fs::create_dir_all(&libdir).with_context(|| format!("creating {}", libdir.display()))?;
    let file_name = llvm.file_name().context("libLLVM has no file name")?;
    for link in [libdir.join("libLLVM.so"), libdir.join(file_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("linking {} → {}", link.display(), llvm.display()))?;
    }
    eprintln!(
        "xtask setup: building bpf-linker {BPF_LINKER_VERSION} against {} (a few minutes)",
        llvm.display()
    );
    let major = file_name
        .to_string_lossy()
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or("22")
        .to_owned();
    status(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                &format!("={BPF_LINKER_VERSION}"),
                "--force",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix)
            .current_dir(std::env::temp_dir()),
    )?;
    if !linker_works(&bin) {
        bail!(
            "bpf-linker was installed at {} but does not run",
            bin.display()
        );
    }
    Ok(())
}
