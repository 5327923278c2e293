//! The VM for the kernel lab: Debian's kernel (downloaded with `apt-get download`, never
//! installed over the host's /boot), a busybox initramfs that mounts the host's root read-only
//! over 9p and runs a script inside it, and qemu (KVM when it works, TCG otherwise).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{root, status};

/// Modules the lab needs inside the guest, loaded after the 9p root is mounted.
const LAB_MODULES: &[&str] = &[
    "veth",
    "bridge",
    "br_netfilter",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nf_nat",
    "nf_conntrack",
    "xt_addrtype",
    "xt_conntrack",
    "xt_MASQUERADE",
    "xt_nat",
    "xt_tcpudp",
    "nfnetlink",
    "ip_tables",
    "iptable_nat",
    "iptable_filter",
    "x_tables",
    // ebtables-legacy (the bridge-ebtables-drop scenario)
    "ebtables",
    "ebtable_filter",
    "ebt_ip",
];

/// Modules needed before the host root can be mounted (loaded from the initramfs).
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// Where downloads and builds live: `<workspace>/.cache/vm` (git-ignored, kept across runs).
pub fn cache_dir() -> PathBuf {
    root().join(".cache/vm")
}

/// A kernel tree as `dpkg-deb -x` of a linux-image package leaves it.
pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// `<tree>/lib/modules`.
    pub modules: PathBuf,
    pub version: String,
}

impl Kernel {
    /// `dir` holds `boot/vmlinuz-<version>` and `lib/modules/<version>/`.
    pub fn from_tree(dir: &Path) -> Result<Self> {
        let boot = dir.join("boot");
        let vmlinuz = std::fs::read_dir(&boot)
            .with_context(|| {
                format!(
                    "{} has no boot/ (expected an extracted linux-image package)",
                    dir.display()
                )
            })?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
        let version = vmlinuz
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches("vmlinuz-")
                    .to_owned()
            })
            .context("vmlinuz name")?;
        let modules = dir.join("usr/lib/modules");
        let modules = if modules.join(&version).exists() {
            modules
        } else {
            dir.join("lib/modules")
        };
        if !modules.join(&version).exists() {
            bail!("no modules for {version} under {}", dir.display());
        }
        Ok(Self {
            vmlinuz,
            modules,
            version,
        })
    }

    /// Debian's current linux-image-amd64, downloaded and unpacked once into the cache.
    pub fn debian() -> Result<Self> {
        let dir = cache_dir().join("kernel");
        if let Ok(k) = Self::from_tree(&dir) {
            return Ok(k);
        }
        let debs = cache_dir().join("debs");
        std::fs::create_dir_all(&debs)?;
        let meta = lab::debs::download(&debs, "linux-image-amd64")?;
        // The meta package depends on the versioned image: download that one.
        let out = Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&meta)
            .arg("Depends")
            .output()?;
        let depends = String::from_utf8_lossy(&out.stdout);
        let image = depends
            .split([',', ' '])
            .find(|d| d.starts_with("linux-image-") && d.ends_with("-amd64"))
            .with_context(|| format!("linux-image-amd64 depends on `{depends}`"))?
            .to_owned();
        let deb = lab::debs::download(&debs, &image)?;
        let _ = std::fs::remove_dir_all(&dir);
        status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
        let k = Self::from_tree(&dir)?;
        status(
            Command::new("depmod")
                .arg("-b")
                .arg(
                    k.modules
                        .parent()
                        .context("modules dir")?
                        .parent()
                        .context("tree")?,
                )
                .arg(&k.version),
        )?;
        Ok(k)
    }

    /// Module files for `names` with their dependencies, in load order, without repeats.
    fn module_files(&self, names: &[&str]) -> Result<Vec<PathBuf>> {
        let tree = self
            .modules
            .parent()
            .and_then(Path::parent)
            .context("kernel tree")?;
        let out = Command::new("modprobe")
            .arg("--show-depends")
            .arg("-d")
            .arg(tree)
            .args(["-S", &self.version, "-a"])
            .args(names)
            .output()
            .context("running modprobe --show-depends (package kmod)")?;
        if !out.status.success() {
            bail!(
                "modprobe --show-depends: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut files: Vec<PathBuf> = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(path) = line.strip_prefix("insmod ") {
                let p = PathBuf::from(path.split_whitespace().next().unwrap_or_default());
                if !files.contains(&p) {
                    files.push(p);
                }
            }
        }
        Ok(files)
    }
}

/// busybox-static's binary, downloaded (installing the package would remove busybox).
fn busybox() -> Result<PathBuf> {
    lab::debs::busybox_static(&cache_dir())
}

/// The guest's /init: load the 9p stack, mount the host root read-only at /host, give it fresh
/// /proc, /sys, /dev and a writable /run (scratch space is /run/ptlab; /tmp stays the host's,
/// read-only, because the workspace may live there), load the lab's modules, run the script,
/// power off.
fn init_script() -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /host /sbin /usr/bin /usr/sbin /lib /tmp
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
arg() {{ sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }}
for m in $(cat /mods/order); do insmod /mods/$m || echo "PTLAB-WARN insmod $m failed"; done
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host; then
  echo "PTLAB-ERROR cannot mount the host root over 9p"; poweroff -f
fi
ln -s /host$(arg ptlab.modules) /lib/modules
echo /sbin/modprobe > /proc/sys/kernel/modprobe
modprobe -a {modules} 2>/dev/null
for d in proc sys dev; do mount --bind /$d /host/$d; done
mount -t tmpfs run /host/run
mkdir -p /host/run/ptlab
mount -t bpf bpf /host/sys/fs/bpf
mount -t tracefs tracefs /host/sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /host/sys/kernel/debug 2>/dev/null
echo "PTLAB-BOOTED $(uname -r)"
chroot /host /bin/sh $(arg ptlab.script) < /dev/console > /dev/console 2>&1
echo "PTLAB-EXIT $?"
poweroff -f
"#,
        modules = LAB_MODULES.join(" ")
    )
}

/// Builds the initramfs (newc cpio) for `kernel` and returns its path.
pub fn initramfs(kernel: &Kernel) -> Result<PathBuf> {
    let out = cache_dir().join(format!("initramfs-{}.cpio", kernel.version));
    let mut cpio = Cpio::default();
    for dir in ["bin", "mods", "dev"] {
        cpio.dir(dir);
    }
    cpio.file("init", init_script().as_bytes(), 0o755);
    cpio.file("bin/busybox", &std::fs::read(busybox()?)?, 0o755);
    let mut order = String::new();
    for path in kernel.module_files(BOOT_MODULES)? {
        let name = path
            .file_name()
            .context("module name")?
            .to_string_lossy()
            .into_owned();
        cpio.file(&format!("mods/{name}"), &std::fs::read(&path)?, 0o644);
        order.push_str(&name);
        order.push('\n');
    }
    cpio.file("mods/order", order.as_bytes(), 0o644);
    std::fs::write(&out, cpio.finish()).with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

/// A minimal newc cpio writer: directories and regular files are all an initramfs needs here.
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, data: &[u8], perm: u32) {
        self.entry(name, 0o100000 | perm, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }
}

/// How qemu accelerates the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// A guest that never reached its init script (TCG occasionally hangs early in boot): worth
/// booting again, unlike a failure of the run itself.
#[derive(Debug)]
pub struct BootHang {
    pub waited: Duration,
    pub console: String,
}

impl std::fmt::Display for BootHang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the VM hung before its init ran ({:.0?} without PTLAB-BOOTED); console:\n{}",
            self.waited, self.console
        )
    }
}

impl std::error::Error for BootHang {}

/// How long a boot may take to reach the init script under TCG (normally seconds).
const BOOT_WITHIN: Duration = Duration::from_secs(240);

/// One boot: runs `script` (a path on the host, run inside the guest's view of the host root)
/// and returns the console output. `interactive` hands the console to the user.
pub fn boot(
    kernel: &Kernel,
    initrd: &Path,
    script: &Path,
    accel: Accel,
    cpus: u32,
    interactive: bool,
    timeout: Duration,
) -> Result<String> {
    let append = format!(
        "console=ttyS0 panic=-1 quiet loglevel=3 ptlab.script={} ptlab.modules={}",
        script.display(),
        kernel.modules.display()
    );
    let mut cmd = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
    };
    cmd.args([
        "-smp",
        &cpus.to_string(),
        "-m",
        "1G",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
    ])
    .arg("-kernel")
    .arg(&kernel.vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", &append])
    .args([
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,id=hostroot",
    ]);
    if interactive {
        status(&mut cmd)?;
        return Ok(String::new());
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let deadline = started + timeout;
    let mut out = String::new();
    let mut booted = false;
    let verbose = std::env::var_os("PTLAB_VERBOSE").is_some();
    // Guests run side by side: each line says whose it is.
    let label = script
        .file_stem()
        .map_or_else(|| "vm".into(), |s| s.to_string_lossy());
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if verbose {
                    eprintln!("{label}| {line}");
                }
                booted |= line.contains("PTLAB-BOOTED");
                out.push_str(&line);
                out.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout)
                if !booted && started.elapsed() > BOOT_WITHIN.min(timeout) =>
            {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BootHang {
                    waited: started.elapsed(),
                    console: out,
                }
                .into());
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the VM did not finish within {timeout:?}; console:\n{out}");
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    let st = child.wait()?;
    if !st.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        bail!("qemu exited with {st}: {err}\nconsole:\n{out}");
    }
    Ok(out)
}

/// KVM when /dev/kvm runs a guest (a quick boot that must reach the initramfs), else TCG.
pub fn pick_accel(kernel: &Kernel, initrd: &Path) -> (Accel, String) {
    if !Path::new("/dev/kvm").exists() {
        return (Accel::Tcg, "no /dev/kvm: TCG".into());
    }
    let script = cache_dir().join("probe.sh");
    if std::fs::write(&script, "echo PTLAB-KVM-OK\n").is_err() {
        return (Accel::Tcg, "cannot write the probe script: TCG".into());
    }
    match boot(
        kernel,
        initrd,
        &script,
        Accel::Kvm,
        1,
        false,
        Duration::from_secs(20),
    ) {
        Ok(out) if out.contains("PTLAB-KVM-OK") => (Accel::Kvm, "KVM".into()),
        Ok(_) => (
            Accel::Tcg,
            "KVM booted but did not run the guest: TCG".into(),
        ),
        Err(e) => {
            let first = e.to_string().lines().next().unwrap_or_default().to_owned();
            (
                Accel::Tcg,
                format!("KVM does not run guests here ({first}): TCG"),
            )
        }
    }
}

/// Writes a guest script to the cache and returns its path.
pub fn write_script(name: &str, body: &str) -> Result<PathBuf> {
    let path = cache_dir().join(name);
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(body.as_bytes())?;
    Ok(path)
}

/// A guest kernel ready to boot lab scripts: kernel, initramfs, accelerator, and the
/// environment every script starts with (the host's binaries from `bin_dir` on PATH).
pub struct Guest {
    kernel: Kernel,
    initrd: PathBuf,
    accel: Accel,
    env: String,
    /// vCPUs of each boot: 2 alone; 1 when guests run side by side, because under TCG a
    /// guest's second vCPU spins on locks its descheduled first one holds.
    pub cpus: u32,
}

impl Guest {
    /// `kernel_dir`: an extracted linux-image package, or Debian's default; `accel`: kvm, tcg
    /// or auto.
    pub fn prepare(kernel_dir: Option<&Path>, accel: &str, bin_dir: &Path) -> Result<Self> {
        let kernel = match kernel_dir {
            Some(dir) => Kernel::from_tree(dir)?,
            None => Kernel::debian()?,
        };
        let initrd = initramfs(&kernel)?;
        let (accel, why) = match accel {
            "kvm" => (Accel::Kvm, "--accel kvm".to_owned()),
            "tcg" => (Accel::Tcg, "--accel tcg".to_owned()),
            "auto" => pick_accel(&kernel, &initrd),
            other => bail!("--accel {other}: kvm, tcg or auto"),
        };
        eprintln!(
            "xtask: guest kernel {} ({}), {why}",
            kernel.version,
            kernel.vmlinuz.display()
        );
        let mut env = format!(
            "export PATH={bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nexport PATHTRACE_BIN={bin}/pathtrace\nexport HOME=/run/ptlab TMPDIR=/run/ptlab PTLAB_IN_VM=1\ncd {root}\n",
            bin = bin_dir.display(),
            root = root().display()
        );
        // pathtrace's own log level carried in, so a slow or failing guest run can say what
        // it spent its time on (`verified=` per program at debug).
        if let Some(level) = std::env::var("PATHTRACE_LOG").ok().filter(|l| {
            l.chars()
                .all(|c| c.is_ascii_alphanumeric() || ",=_:".contains(c))
        }) {
            env.push_str(&format!("export PATHTRACE_LOG={level}\n"));
        }
        Ok(Self {
            kernel,
            initrd,
            accel,
            env,
            cpus: 2,
        })
    }

    /// Boots once to run `command` and returns the console; a boot that hangs before its
    /// init (seen under TCG) is retried once.
    pub fn run(&self, script_name: &str, command: &str, timeout: Duration) -> Result<String> {
        let script = write_script(script_name, &format!("{}{command}\n", self.env))?;
        let boot = || {
            boot(
                &self.kernel,
                &self.initrd,
                &script,
                self.accel,
                self.cpus,
                false,
                timeout,
            )
        };
        match boot() {
            Err(e) if e.downcast_ref::<BootHang>().is_some() => {
                eprintln!("xtask: {script_name}: {e}\nxtask: {script_name}: booting again");
                boot()
            }
            other => other,
        }
    }

    /// Boots with the console handed to the person at the terminal.
    pub fn shell(&self, command: &str) -> Result<()> {
        let script = write_script("shell.sh", &format!("{}{command}\n", self.env))?;
        boot(
            &self.kernel,
            &self.initrd,
            &script,
            self.accel,
            self.cpus,
            true,
            Duration::MAX,
        )
        .map(drop)
    }
}
