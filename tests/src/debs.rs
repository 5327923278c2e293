//! Debian packages fetched with `apt-get download` (never installed) into a project cache:
//! the VM's kernel and busybox, and the busybox in the Docker test image.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The workspace's cache for downloads: `<workspace>/.cache` (git-ignored).
pub fn cache_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).join(".cache")
}

fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed with {st}");
    }
    Ok(())
}

/// `apt-get download NAME` into `dir` (once), refreshing the package lists if needed.
pub fn download(dir: &Path, name: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let find = || {
        std::fs::read_dir(dir).ok().and_then(|rd| {
            rd.flatten().map(|e| e.path()).find(|p| {
                p.extension().is_some_and(|e| e == "deb")
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}_")))
            })
        })
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    let get = || {
        Command::new("apt-get")
            .args(["download", "-q", name])
            .current_dir(dir)
            .status()
    };
    if !get().is_ok_and(|s| s.success()) {
        status(Command::new("apt-get").args(["update", "-qq"]))?;
        status(
            Command::new("apt-get")
                .args(["download", "-q", name])
                .current_dir(dir),
        )?;
    }
    find().with_context(|| format!("apt-get download {name} left no .deb in {}", dir.display()))
}

/// busybox-static's binary unpacked under `cache` (installing the package would remove the
/// system's busybox).
pub fn busybox_static(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("busybox");
    let bin = dir.join("bin/busybox");
    if bin.exists() {
        return Ok(bin);
    }
    let deb = download(&cache.join("debs"), "busybox-static")?;
    status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    Ok(bin)
}
