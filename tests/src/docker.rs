//! A real dockerd for the container tests: started when none runs (and then stopped, with the
//! root namespace's firewall, forwarding sysctl and docker0 put back as they were), a busybox
//! image imported locally (no registry is reachable), and an "outside host" namespace joined
//! to the root namespace by a veth, as a client on the same L2 network would be.

use std::{
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{Netns, debs, run};

/// The image the tests run: busybox's httpd serving /www on port 80.
pub const IMAGE: &str = "pathtrace-busybox:lab";

/// What dockerd changes in the root namespace, saved before we start it.
struct Saved {
    /// `nft list ruleset` (iptables-nft rules included): restored exactly.
    nft: Option<String>,
    /// `iptables-save`, for hosts where nft cannot list the ruleset (iptables-legacy).
    iptables: String,
    ip_forward: String,
}

/// A dockerd the tests may use.
pub struct Docker {
    /// Set when the harness started dockerd (and must stop it and restore the host).
    daemon: Option<Child>,
    saved: Option<Saved>,
    log: PathBuf,
}

/// Why Docker tests cannot run here, if they cannot: `dockerd` is not installed.
pub fn unavailable() -> Option<String> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("dockerd").is_file()))
        .unwrap_or(false);
    (!found).then(|| "dockerd is not installed (`cargo xtask setup` installs docker.io)".to_owned())
}

fn answers() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_until(what: &str, timeout: Duration, ready: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            bail!("{what} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

impl Docker {
    /// Uses the running dockerd, or starts one.
    pub fn start() -> Result<Self> {
        crate::require_root()?;
        let log = debs::cache_root().join("dockerd.log");
        if answers() {
            return Ok(Self {
                daemon: None,
                saved: None,
                log,
            });
        }
        let saved = Saved {
            nft: run("nft", &["list", "ruleset"]).ok(),
            iptables: run("iptables-save", &[])?,
            ip_forward: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?
                .trim()
                .to_owned(),
        };
        let mut docker = Self {
            daemon: None,
            saved: Some(saved),
            log,
        };
        docker.spawn_daemon()?;
        Ok(docker)
    }

    fn spawn_daemon(&mut self) -> Result<()> {
        std::fs::create_dir_all(debs::cache_root())?;
        let log = std::fs::File::create(&self.log)?;
        let child = Command::new("dockerd")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd")?;
        self.daemon = Some(child);
        wait_until("dockerd did not answer", Duration::from_secs(30), answers)
            .with_context(|| format!("see {}", self.log.display()))
    }

    /// Whether the harness owns dockerd (and may kill and restart it).
    pub fn owned(&self) -> bool {
        self.daemon.is_some()
    }

    /// Stops dockerd (SIGTERM: it takes its containerd and containers down), then starts it
    /// again.
    pub fn kill_and_restart(&mut self) -> Result<()> {
        let Some(mut child) = self.daemon.take() else {
            bail!("dockerd is not ours to kill")
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait()?;
        wait_until(
            "the docker socket still answered",
            Duration::from_secs(10),
            || !answers(),
        )?;
        self.spawn_daemon()
    }

    /// Imports the test image once.
    pub fn image(&self) -> Result<&'static str> {
        let have = Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .output()?;
        if have.status.success() {
            return Ok(IMAGE);
        }
        let busybox = debs::busybox_static(&debs::cache_root())?;
        let root = debs::cache_root().join("image-rootfs");
        let _ = std::fs::remove_dir_all(&root);
        for d in ["bin", "www", "tmp"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::copy(&busybox, root.join("bin/busybox"))?;
        for applet in ["sh", "httpd", "nc", "sleep", "cat", "ls", "ip"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
        std::fs::write(root.join("www/index.html"), "pathtrace lab\n")?;
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()?;
        let st = Command::new("docker")
            .args([
                "import",
                "-c",
                r#"CMD ["/bin/httpd","-f","-p","80","-h","/www"]"#,
                "-",
                IMAGE,
            ])
            .stdin(tar.stdout.context("tar stdout")?)
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("docker import failed");
        }
        Ok(IMAGE)
    }

    /// Runs a container publishing `host_port` to its port 80, where httpd listens.
    pub fn run(&self, name: &str, host_port: u16) -> Result<Container> {
        self.run_to(name, host_port, 80)
    }

    /// Runs a container publishing `host_port` to its `container_port` (httpd listens on 80).
    pub fn run_to(&self, name: &str, host_port: u16, container_port: u16) -> Result<Container> {
        self.run_publishing(name, &format!("{host_port}:{container_port}"))
    }

    /// Runs a container with `-p <publish>` (`198.51.100.1:6443:80`); httpd listens on 80.
    pub fn run_publishing(&self, name: &str, publish: &str) -> Result<Container> {
        self.run_on(name, None, Some(publish))
    }

    /// Runs a container on `network` (Docker's `bridge` when `None`), publishing `publish`.
    pub fn run_on(
        &self,
        name: &str,
        network: Option<&Network>,
        publish: Option<&str>,
    ) -> Result<Container> {
        let image = self.image()?;
        let _ = Command::new("docker").args(["rm", "-f", name]).output();
        let mut args = vec!["run", "-d", "--init", "--name", name];
        if let Some(n) = network {
            args.extend(["--network", n.name.as_str()]);
        }
        if let Some(p) = publish {
            args.extend(["-p", p]);
        }
        args.push(image);
        run("docker", &args)?;
        let ip = run(
            "docker",
            &[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                name,
            ],
        )?;
        Ok(Container {
            name: name.to_owned(),
            address: ip
                .trim()
                .parse()
                .with_context(|| format!("container address `{}`", ip.trim()))?,
        })
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let Some(saved) = self.saved.take() else {
            return;
        };
        if let Some(mut child) = self.daemon.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Put the root namespace back as it was before dockerd: its rules, forwarding, bridge.
        match &saved.nft {
            Some(ruleset) => {
                let _ = Command::new("nft").args(["flush", "ruleset"]).status();
                feed("nft", &["-f", "-"], ruleset);
            }
            None => {
                for table in ["filter", "nat", "mangle", "raw"] {
                    let _ = Command::new("iptables").args(["-t", table, "-F"]).status();
                    let _ = Command::new("iptables").args(["-t", table, "-X"]).status();
                }
                let _ = Command::new("iptables")
                    .args(["-P", "FORWARD", "ACCEPT"])
                    .status();
                feed("iptables-restore", &[], &saved.iptables);
            }
        }
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &saved.ip_forward);
        let _ = Command::new("ip")
            .args(["link", "del", "docker0"])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `cmd` with `input` on stdin, ignoring failures (best effort during cleanup).
fn feed(cmd: &str, args: &[&str], input: &str) {
    use std::io::Write as _;
    if input.trim().is_empty() {
        return;
    }
    if let Ok(mut child) = Command::new(cmd).args(args).stdin(Stdio::piped()).spawn() {
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input.as_bytes());
        }
        let _ = child.wait();
    }
}

/// A user-defined Docker network (its bridge is `br-<first 12 hex of its id>`), removed on
/// drop.
pub struct Network {
    pub name: String,
    pub id: String,
}

impl Network {
    /// `docker network create --subnet SUBNET NAME`.
    pub fn create(name: &str, subnet: &str) -> Result<Self> {
        let _ = Command::new("docker")
            .args(["network", "rm", name])
            .output();
        let id = run("docker", &["network", "create", "--subnet", subnet, name])?;
        Ok(Self {
            name: name.to_owned(),
            id: id.trim().to_owned(),
        })
    }

    /// The Linux bridge Docker made for it.
    pub fn bridge(&self) -> String {
        format!("br-{}", &self.id[..12.min(self.id.len())])
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.name])
            .output();
    }
}

/// A running test container, removed on drop.
pub struct Container {
    pub name: String,
    pub address: Ipv4Addr,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

/// A client namespace on a veth to the root namespace: `198.51.100.2` → host `198.51.100.1`.
pub struct OutsideHost {
    /// The root-namespace end of the veth (the host's "uplink" for this client).
    pub host_if: String,
    pub host_addr: Ipv4Addr,
    pub ns: Netns,
}

impl OutsideHost {
    pub fn new() -> Result<Self> {
        let id = std::process::id();
        let ns = Netns::create(format!("ptdock-{id}-out"))?;
        let host_if = format!("ptd{}", id % 100_000);
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ],
        )?;
        let host = Self {
            host_if,
            host_addr: Ipv4Addr::new(198, 51, 100, 1),
            ns,
        };
        run(
            "ip",
            &["addr", "add", "198.51.100.1/24", "dev", &host.host_if],
        )?;
        run("ip", &["link", "set", &host.host_if, "up"])?;
        host.ns
            .ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"])?;
        host.ns.ip(&["link", "set", "eth0", "up"])?;
        Ok(host)
    }

    /// Turns forwarding off on the host end of this client's link (field note 000). The
    /// interface is ours and disappears with this value when the test ends.
    pub fn forwarding_off(&self) -> Result<()> {
        let path = Path::new("/proc/sys/net/ipv4/conf")
            .join(&self.host_if)
            .join("forwarding");
        std::fs::write(&path, "0").with_context(|| format!("writing {}", path.display()))
    }

    /// A TCP listener on this client's own address (`198.51.100.2:port`), accepting for as
    /// long as the value lives: a server the host and its containers connect out to.
    pub fn serve(&self, port: u16) -> Result<crate::Worker> {
        let addr = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), port);
        let sock = self
            .ns
            .run_in(move || std::net::TcpListener::bind(addr))??;
        sock.set_nonblocking(true)?;
        Ok(crate::Worker::spawn(move || match sock.accept() {
            Ok((conn, _)) => drop(conn),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }))
    }

    /// Connects to the host's `port`; `Ok(true)` when the handshake completed.
    pub fn connect(&self, port: u16, timeout: Duration) -> Result<bool> {
        let to = SocketAddrV4::new(self.host_addr, port).into();
        self.ns
            .run_in(move || TcpStream::connect_timeout(&to, timeout).is_ok())
    }
}

impl Drop for OutsideHost {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair, root end included.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}
