//! The lab: a Docker-like host built from network namespaces, with faults as switches.
//!
//! ```text
//!  outside ns                host ns                                   container ns
//!  eth0 203.0.113.2 ──veth── eth0 203.0.113.1   docker0 172.17.0.1 ── vethXXXX ──veth── eth0 172.17.0.2:80
//!                            nat: DOCKER DNAT :10001 → 172.17.0.2:80, MASQUERADE; filter FORWARD DROP + Docker's accepts
//! ```
//!
//! Everything lives in namespaces the lab creates (unique names, removed on drop even when a
//! test panics); the root namespace is never touched. Tests, `cargo xtask demo`, and later the
//! VM lab and benchmarks share this one definition.

pub mod bench;
pub mod daemon;
pub mod debs;
pub mod docker;
pub mod rulefuzz;
pub mod scenario;
pub mod tracer;

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

/// Addresses, names and ports of a lab. [`LabConfig::default`] looks like a stock Docker host;
/// [`LabConfig::unusual`] changes every name and number so tests cannot lean on them.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// The host's uplink interface.
    pub uplink: String,
    /// The container bridge.
    pub bridge: String,
    pub outside_addr: Ipv4Addr,
    pub host_addr: Ipv4Addr,
    pub uplink_prefix: u8,
    pub bridge_addr: Ipv4Addr,
    pub container_addr: Ipv4Addr,
    pub bridge_prefix: u8,
    /// Port published on the host (DNAT from here).
    pub published_port: u16,
    /// Port the container listens on.
    pub container_port: u16,
    /// The host address the port is published on (`-p ADDR:PORT:PORT`, Docker's HostIp);
    /// `None`: every address (`-m addrtype --dst-type LOCAL` only).
    pub publish_on: Option<Ipv4Addr>,
    /// IPv6 addresses, given by [`Lab::dual_stack`].
    pub v6: Lab6,
}

/// A dual-stack lab's IPv6 addresses: the uplink's /64 (outside, host) and the bridge's /64
/// (bridge, container), routed without NAT.
#[derive(Clone, Copy, Debug)]
pub struct Lab6 {
    pub outside: Ipv6Addr,
    pub host: Ipv6Addr,
    pub bridge: Ipv6Addr,
    pub container: Ipv6Addr,
}

impl Lab6 {
    /// The bridge's /64.
    pub fn bridge_subnet(&self) -> String {
        let s = self.bridge.segments();
        format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
    }
}

impl Default for LabConfig {
    fn default() -> Self {
        Self {
            uplink: "eth0".into(),
            bridge: "docker0".into(),
            outside_addr: Ipv4Addr::new(203, 0, 113, 2),
            host_addr: Ipv4Addr::new(203, 0, 113, 1),
            uplink_prefix: 24,
            bridge_addr: Ipv4Addr::new(172, 17, 0, 1),
            container_addr: Ipv4Addr::new(172, 17, 0, 2),
            bridge_prefix: 16,
            published_port: 10001,
            container_port: 80,
            publish_on: None,
            v6: Lab6 {
                outside: "2001:db8:113::2".parse().expect("literal"),
                host: "2001:db8:113::1".parse().expect("literal"),
                bridge: "fd00:17::1".parse().expect("literal"),
                container: "fd00:17::2".parse().expect("literal"),
            },
        }
    }
}

impl LabConfig {
    /// A topology pathtrace has never seen: other names, addresses and ports.
    pub fn unusual() -> Self {
        Self {
            uplink: "wan0".into(),
            bridge: "br-apps".into(),
            outside_addr: Ipv4Addr::new(198, 18, 7, 2),
            host_addr: Ipv4Addr::new(198, 18, 7, 1),
            uplink_prefix: 24,
            bridge_addr: Ipv4Addr::new(10, 200, 0, 1),
            container_addr: Ipv4Addr::new(10, 200, 0, 5),
            bridge_prefix: 24,
            published_port: 8443,
            container_port: 8080,
            publish_on: None,
            v6: Lab6 {
                outside: "2001:db8:7a:3::2".parse().expect("literal"),
                host: "2001:db8:7a:3::1".parse().expect("literal"),
                bridge: "fd42:c8:0:5::1".parse().expect("literal"),
                container: "fd42:c8:0:5::5".parse().expect("literal"),
            },
        }
    }

    /// A Docker user-defined network: its bridge `br-<12 hex>`, 172.18.0.0/16, the port
    /// published on one host address only (`-p 192.168.77.10:8088:8080`).
    pub fn user_network() -> Self {
        Self {
            uplink: "enp3s0".into(),
            bridge: "br-3f9c2a7d1e40".into(),
            outside_addr: Ipv4Addr::new(192, 168, 77, 20),
            host_addr: Ipv4Addr::new(192, 168, 77, 10),
            uplink_prefix: 24,
            bridge_addr: Ipv4Addr::new(172, 18, 0, 1),
            container_addr: Ipv4Addr::new(172, 18, 0, 3),
            bridge_prefix: 16,
            published_port: 8088,
            container_port: 8080,
            publish_on: Some(Ipv4Addr::new(192, 168, 77, 10)),
            v6: Lab6 {
                outside: "2001:db8:77::20".parse().expect("literal"),
                host: "2001:db8:77::10".parse().expect("literal"),
                bridge: "fd00:18::1".parse().expect("literal"),
                container: "fd00:18::3".parse().expect("literal"),
            },
        }
    }

    /// The three topologies every scenario holds on: Docker's default names, a user-defined
    /// network published on one address, and one resembling neither.
    pub fn topologies() -> [Self; 3] {
        [Self::default(), Self::user_network(), Self::unusual()]
    }

    /// `-d ADDR/32 ` when the port is published on one address.
    fn publish_match(&self) -> String {
        self.publish_on
            .map(|a| format!("-d {a}/32 "))
            .unwrap_or_default()
    }

    /// The bridge's subnet, `172.17.0.0/16`.
    pub fn bridge_subnet(&self) -> String {
        let mask = u32::MAX
            .checked_shl(32 - self.bridge_prefix as u32)
            .unwrap_or(0);
        let net = Ipv4Addr::from(u32::from(self.bridge_addr) & mask);
        format!("{net}/{}", self.bridge_prefix)
    }

    /// Docker's rules for one published port (as `iptables-save` prints them).
    pub fn docker_rules(&self) -> String {
        let (br, sub, ctr) = (&self.bridge, self.bridge_subnet(), self.container_addr);
        let (pp, cp) = (self.published_port, self.container_port);
        let on = self.publish_match();
        format!(
            "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s {sub} ! -o {br} -j MASQUERADE
-A POSTROUTING -s {ctr}/32 -d {ctr}/32 -p tcp -m tcp --dport {cp} -j MASQUERADE
-A DOCKER -i {br} -j RETURN
-A DOCKER {on}! -i {br} -p tcp -m tcp --dport {pp} -j DNAT --to-destination {ctr}:{cp}
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o {br} -j DOCKER
-A FORWARD -i {br} ! -o {br} -j ACCEPT
-A FORWARD -i {br} -o {br} -j ACCEPT
-A DOCKER -d {ctr}/32 ! -i {br} -o {br} -p tcp -m tcp --dport {cp} -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i {br} ! -o {br} -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o {br} -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
"
        )
    }
}

/// A fault the lab can switch on. Each reproduces a field note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `net.ipv4.conf.<iface>.forwarding = 0` on one host interface (field note 000).
    ForwardingOff(String),
    /// `net.ipv4.ip_forward = 0` in the host namespace.
    IpForwardOff,
    /// `net.ipv6.conf.all.forwarding = 0` in the host namespace (a dual-stack lab): with the
    /// uplink's own `forwarding` left at 1, which for IPv6 does not forward.
    Ipv6ForwardingOff,
    /// Nothing listens in the container.
    NoListener,
    /// A DROP rule in DOCKER-USER for the container port (netfilter_drop, rule).
    DockerUserDrop,
    /// Docker's per-port ACCEPT is missing: the FORWARD policy DROP applies (field note 001).
    ForwardAcceptMissing,
    /// A nat PREROUTING `-j ACCEPT` for the published port ahead of `-j DOCKER` (field note 002).
    PreroutingAcceptShadow,
    /// Strict reverse path filtering on the uplink; the client uses a source the host has no
    /// route back to.
    StrictRpFilter,
    /// The published port is DNATed to an address no route reaches.
    DnatUnroutable,
    /// The published port is DNATed to an on-link address nobody answers ARP for.
    DnatDeadNeighbor,
    /// A second container on the bridge; container-to-container traffic is dropped by
    /// `-A FORWARD -i docker0 -o docker0 -j DROP` seen through br_netfilter (field note 004).
    BridgeIccDrop,
    /// The container's replies are dropped in FORWARD (the SYN gets through, the SYN-ACK dies).
    ReplyDropped,
    /// The container's replies die in raw PREROUTING on the bridge, before conntrack has
    /// seen them (so before their tuple is known to be a reply).
    ReplyRawDrop,
    /// The container's replies die in a mangle FORWARD rule.
    ReplyMangleDrop,
    /// The container's replies die in DOCKER-USER (a rule written for the other direction's
    /// port, matching the reply's source port).
    ReplyDockerUserDrop,
    /// The container's replies die in a bridge-family nft rule on the bridge's input (the
    /// frame is for the bridge itself: routed on, not bridged).
    ReplyBridgeDrop,
    /// The client's source address has no route back from the host, and rp_filter is off:
    /// the SYN gets in, the SYN-ACK finds no way out.
    ReplyNoRoute,
    /// Policy routing for a second uplink: connections in by the uplink get conntrack mark
    /// 0x2, replies get it back (`CONNMARK --restore-mark`) to leave by the same uplink, and
    /// the marked table holds only that uplink's default route. With `src_valid_mark` on and
    /// strict rp_filter on the bridge, the reverse path check of the container's SYN-ACK is
    /// looked up in that table, which sends the container's address out the uplink: dropped.
    ReplyMarkedRpFilter,
    /// DOCKER-USER rejects the SYN with an ICMP port unreachable, which goes back to the
    /// client.
    ForwardReject,
    /// The container has no default route: its listener takes the SYN, and TCP, which routes
    /// the answer before it builds it, never makes a SYN-ACK.
    ContainerNoRoute,
    /// A second container on the bridge; a `bridge` family nft rule (what `ebtables-nft`
    /// writes) drops frames to the first container's port (field note 004).
    BridgeNftDrop,
    /// A second container on the bridge; an ebtables rule drops frames to the first
    /// container's port: ebtables-legacy where the kernel has it (the VM lab), else
    /// ebtables-nft (field note 004).
    BridgeEbtablesDrop,
    /// Docker's rules stay in iptables-nft; a DROP for the container's port is added with
    /// iptables-legacy, which `iptables -S` (nft) does not list but the kernel still runs.
    LegacyForwardDrop,
    /// firewalld's native nft table (as firewalld 0.8 on CentOS 8 writes it): the uplink is in
    /// the public zone, the Docker bridge in none, so forwarded traffic ends at its final
    /// `reject` (field note 001).
    FirewalldForward,
}

/// The source address the client uses for [`Fault::StrictRpFilter`].
pub const UNROUTABLE_CLIENT: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

/// A network namespace the lab created; `ip netns` knows it by `name`.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub(crate) fn create(name: String) -> Result<Self> {
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", &self.name, cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Writes a sysctl in this namespace (only namespaces the lab owns).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(drop)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let file =
            std::fs::File::open(self.path()).with_context(|| format!("opening {}", self.path()))?;
        let handle = std::thread::spawn(move || {
            // SAFETY: setns for this thread only, with a valid namespace fd.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        });
        let joined = handle
            .join()
            .map_err(|_| anyhow::anyhow!("netns thread panicked"))?;
        joined.context("setns")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A thread repeating one step until dropped (the lab's listener, the bench's sink). Each
/// step must return within a short time (a nonblocking call or a read timeout).
pub struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub(crate) fn spawn(mut step: impl FnMut() + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                step();
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A running lab. Dropping it removes every namespace (and with them every interface and rule).
pub struct Lab {
    /// `ptlab-PID-N`: every namespace of the lab is named `<id>-...`.
    pub id: String,
    pub config: LabConfig,
    /// The host-side veth of the container.
    pub host_veth: String,
    // Field order is drop order: stop the listener before its namespace goes.
    listener: Option<Worker>,
    /// A second container on the bridge, for same-bridge scenarios.
    pub peer: Option<Netns>,
    pub container: Netns,
    pub host: Netns,
    pub outside: Netns,
}

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Fails with a clear message when not root (the lab creates namespaces and rules).
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the lab needs root (network namespaces, veth, iptables): run `sudo cargo xtask test`"
        );
    }
    Ok(())
}

/// Where `cargo xtask test` collects skips, to count and print them after the summaries.
pub const SKIPS_ENV: &str = "PATHTRACE_SKIPS";

/// A test that cannot run here. Under CI (`CI=true`) a missing prerequisite is a failure: this
/// panics with `why`. Elsewhere it prints `SKIPPED: test: why` and appends that line to the
/// file `PATHTRACE_SKIPS` names, so the run counts it instead of calling it passed. The
/// caller returns right after.
pub fn skip(test: &str, why: &str) {
    let line = format!("SKIPPED: {test}: {why}");
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{line} (a missing prerequisite fails the run under CI=true)");
    }
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIPS_ENV) {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Removes namespaces left by lab processes that died without cleaning up.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("ptlab-")
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

impl Lab {
    /// Builds the topology, healthy: the published port answers from the outside namespace.
    pub fn new(config: LabConfig) -> Result<Self> {
        require_root()?;
        sweep_stale();
        let id = format!(
            "ptlab-{}-{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let outside = Netns::create(format!("{id}-out"))?;
        let host = Netns::create(format!("{id}-host"))?;
        let container = Netns::create(format!("{id}-ctr"))?;
        let host_veth = format!("veth{:x}", std::process::id() % 0xffff);
        let mut lab = Self {
            id: id.clone(),
            config,
            host_veth,
            listener: None,
            peer: None,
            container,
            host,
            outside,
        };
        lab.build().with_context(|| format!("building lab {id}"))?;
        Ok(lab)
    }

    /// Builds the lab with one fault switched on.
    pub fn with_fault(config: LabConfig, fault: Fault) -> Result<Self> {
        let mut lab = Self::new(config)?;
        lab.apply(&fault)?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        let c = self.config.clone();
        let (out, host, ctr) = (&self.outside, &self.host, &self.container);
        // Uplink: a veth whose far end is the outside host.
        host.ip(&[
            "link", "add", &c.uplink, "type", "veth", "peer", "name", "eth0", "netns", &out.name,
        ])?;
        host.ip(&[
            "addr",
            "add",
            &format!("{}/{}", c.host_addr, c.uplink_prefix),
            "dev",
            &c.uplink,
        ])?;
        host.ip(&["link", "set", &c.uplink, "up"])?;
        out.ip(&[
            "addr",
            "add",
            &format!("{}/{}", c.outside_addr, c.uplink_prefix),
            "dev",
            "eth0",
        ])?;
        out.ip(&["link", "set", "eth0", "up"])?;
        // Bridge and the container's veth.
        host.ip(&["link", "add", &c.bridge, "type", "bridge"])?;
        host.ip(&[
            "addr",
            "add",
            &format!("{}/{}", c.bridge_addr, c.bridge_prefix),
            "dev",
            &c.bridge,
        ])?;
        host.ip(&["link", "set", &c.bridge, "up"])?;
        host.ip(&[
            "link",
            "add",
            &self.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ctr.name,
        ])?;
        host.ip(&["link", "set", &self.host_veth, "master", &c.bridge, "up"])?;
        ctr.ip(&[
            "addr",
            "add",
            &format!("{}/{}", c.container_addr, c.bridge_prefix),
            "dev",
            "eth0",
        ])?;
        ctr.ip(&["link", "set", "eth0", "up"])?;
        ctr.ip(&["route", "add", "default", "via", &c.bridge_addr.to_string()])?;
        // What dockerd does on the host.
        host.sysctl("net.ipv4.ip_forward", "1")?;
        run_stdin(
            "ip",
            &["netns", "exec", &host.name, "iptables-restore"],
            &c.docker_rules(),
        )
        .context("loading Docker-style rules")?;
        self.listener = Some(self.listen()?);
        Ok(())
    }

    /// Gives the lab IPv6 too (`LabConfig::v6`): addresses on the uplink, the bridge and the
    /// container, forwarding on in the host, routes both ways; no ip6tables rules. Without
    /// duplicate address detection, so the addresses work at once.
    pub fn dual_stack(&self) -> Result<()> {
        let (c, v6) = (&self.config, self.config.v6);
        let (out, host, ctr) = (&self.outside, &self.host, &self.container);
        let add = |ns: &Netns, addr: Ipv6Addr, dev: &str| {
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                dev,
                "nodad",
            ])
        };
        add(host, v6.host, &c.uplink)?;
        add(out, v6.outside, "eth0")?;
        add(host, v6.bridge, &c.bridge)?;
        add(ctr, v6.container, "eth0")?;
        host.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        out.ip(&[
            "-6",
            "route",
            "add",
            &v6.bridge_subnet(),
            "via",
            &v6.host.to_string(),
        ])?;
        ctr.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &v6.bridge.to_string(),
        ])?;
        Ok(())
    }

    /// Connects from the outside namespace to the container's IPv6 address and `port`
    /// (routed, no NAT); `Ok(true)` when the handshake completed.
    pub fn connect6(&self, port: u16, timeout: Duration) -> Result<bool> {
        let to = SocketAddr::new(self.config.v6.container.into(), port);
        self.outside
            .run_in(move || TcpStream::connect_timeout(&to, timeout).is_ok())
    }

    /// Whether a hop line (`netns_name`) is in one of this lab's namespaces.
    pub fn owns(&self, hop: &serde_json::Value) -> bool {
        hop["netns_name"]
            .as_str()
            .and_then(|n| n.strip_prefix(self.id.as_str()))
            .is_some_and(|rest| rest.starts_with('-'))
    }

    /// A TCP listener accepting and closing connections inside the container namespace.
    fn listen(&self) -> Result<Worker> {
        let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, self.config.container_port);
        let sock = self.container.run_in(move || TcpListener::bind(addr))??;
        sock.set_nonblocking(true)?;
        Ok(Worker::spawn(move || match sock.accept() {
            Ok((conn, _)) => drop(conn),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }))
    }

    /// Switches a fault on.
    pub fn apply(&mut self, fault: &Fault) -> Result<()> {
        let c = self.config.clone();
        let (cport, pport) = (c.container_port.to_string(), c.published_port.to_string());
        match fault {
            Fault::ForwardingOff(iface) => self
                .host
                .sysctl(&format!("net.ipv4.conf.{iface}.forwarding"), "0"),
            Fault::IpForwardOff => self.host.sysctl("net.ipv4.ip_forward", "0"),
            Fault::Ipv6ForwardingOff => {
                // `all` is written to every interface too: the uplink's own switch goes back
                // on, so the lab shows that it is not the one that forwards.
                self.host.sysctl("net.ipv6.conf.all.forwarding", "0")?;
                self.host
                    .sysctl(&format!("net.ipv6.conf.{}.forwarding", c.uplink), "1")
            }
            Fault::NoListener => {
                self.listener = None;
                Ok(())
            }
            Fault::DockerUserDrop => self.docker_user(&["-p", "tcp", "--dport", &cport, "-j", "DROP"]),
            Fault::ForwardAcceptMissing => self.iptables(&[
                "-D",
                "DOCKER",
                "-d",
                &format!("{}/32", c.container_addr),
                "!",
                "-i",
                &c.bridge,
                "-o",
                &c.bridge,
                "-p",
                "tcp",
                "-m",
                "tcp",
                "--dport",
                &cport,
                "-j",
                "ACCEPT",
            ]),
            Fault::PreroutingAcceptShadow => self.iptables(&[
                "-t",
                "nat",
                "-I",
                "PREROUTING",
                "1",
                "!",
                "-i",
                "p1p1",
                "-p",
                "tcp",
                "-m",
                "multiport",
                "--dports",
                &format!("80,443,7788,{pport}"),
                "-j",
                "ACCEPT",
            ]),
            Fault::StrictRpFilter => {
                self.add_unroutable_client()?;
                self.host.sysctl("net.ipv4.conf.all.rp_filter", "1")?;
                self.host
                    .sysctl(&format!("net.ipv4.conf.{}.rp_filter", c.uplink), "1")
            }
            Fault::ReplyNoRoute => {
                self.add_unroutable_client()?;
                self.host.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
                self.host
                    .sysctl(&format!("net.ipv4.conf.{}.rp_filter", c.uplink), "0")
            }
            Fault::ReplyMarkedRpFilter => {
                self.iptables(&[
                    "-t", "mangle", "-A", "PREROUTING", "-i", &c.uplink, "-m", "conntrack",
                    "--ctstate", "NEW", "-j", "CONNMARK", "--set-mark", "0x2",
                ])?;
                self.iptables(&[
                    "-t", "mangle", "-A", "PREROUTING", "-i", &c.bridge, "-j", "CONNMARK",
                    "--restore-mark",
                ])?;
                self.host.exec("ip", &["rule", "add", "fwmark", "0x2", "lookup", "102"])?;
                self.host.exec(
                    "ip",
                    &[
                        "route", "add", "default", "via", &c.outside_addr.to_string(), "dev",
                        &c.uplink, "table", "102",
                    ],
                )?;
                self.host.sysctl("net.ipv4.conf.all.src_valid_mark", "1")?;
                self.host
                    .sysctl(&format!("net.ipv4.conf.{}.rp_filter", c.bridge), "1")
            }
            Fault::ContainerNoRoute => self
                .container
                .exec("ip", &["route", "del", "default"])
                .map(drop),
            Fault::ReplyRawDrop => self.iptables(&[
                "-t", "raw", "-A", "PREROUTING", "-i", &c.bridge, "-p", "tcp", "--sport", &cport,
                "-j", "DROP",
            ]),
            Fault::ReplyMangleDrop => self.iptables(&[
                "-t", "mangle", "-A", "FORWARD", "-i", &c.bridge, "-p", "tcp", "--sport", &cport,
                "-j", "DROP",
            ]),
            Fault::ReplyDockerUserDrop => self.docker_user(&[
                "-i", &c.bridge, "-p", "tcp", "--sport", &cport, "-j", "DROP",
            ]),
            Fault::ReplyBridgeDrop => run_stdin(
                "ip",
                &["netns", "exec", &self.host.name, "nft", "-f", "-"],
                &format!(
                    "table bridge replies {{\n  chain input {{\n    type filter hook input priority -200; policy accept;\n    ip saddr {} tcp sport {cport} counter drop\n  }}\n}}\n",
                    c.container_addr
                ),
            )
            .context("loading a bridge-family nft table"),
            Fault::ForwardReject => self.docker_user(&[
                "-p",
                "tcp",
                "--dport",
                &cport,
                "-j",
                "REJECT",
                "--reject-with",
                "icmp-port-unreachable",
            ]),
            Fault::DnatUnroutable => self.dnat_first(&format!("10.250.0.9:{cport}")),
            Fault::DnatDeadNeighbor => {
                let octets = c.container_addr.octets();
                let dead = Ipv4Addr::new(octets[0], octets[1], octets[2], 99);
                self.dnat_first(&format!("{dead}:{cport}"))?;
                self.iptables(&["-I", "DOCKER-USER", "-j", "ACCEPT"])
            }
            Fault::BridgeIccDrop => {
                self.add_peer_container()?;
                // br_netfilter exists per namespace once the module is loaded (Docker loads it).
                self.host
                    .sysctl("net.bridge.bridge-nf-call-iptables", "1")?;
                self.iptables(&[
                    "-I", "FORWARD", "-i", &c.bridge, "-o", &c.bridge, "-j", "DROP",
                ])
            }
            Fault::ReplyDropped => self.iptables(&[
                "-I", "FORWARD", "-i", &c.bridge, "!", "-o", &c.bridge, "-j", "DROP",
            ]),
            Fault::BridgeNftDrop => {
                self.add_peer_container()?;
                run_stdin(
                    "ip",
                    &["netns", "exec", &self.host.name, "nft", "-f", "-"],
                    &format!(
                        "table bridge filter {{\n  chain forward {{\n    type filter hook forward priority -200; policy accept;\n    ip daddr {} tcp dport {cport} counter drop\n  }}\n}}\n",
                        c.container_addr
                    ),
                )
                .context("loading a bridge-family nft table")
            }
            Fault::BridgeEbtablesDrop => {
                self.add_peer_container()?;
                let legacy = self
                    .host
                    .exec("ebtables-legacy", &["-t", "filter", "-L"])
                    .is_ok();
                let eb = if legacy {
                    "ebtables-legacy"
                } else {
                    "ebtables-nft"
                };
                let dst = c.container_addr.to_string();
                self.host
                    .exec(
                        eb,
                        &[
                            "-A",
                            "FORWARD",
                            "-p",
                            "IPv4",
                            "--ip-dst",
                            &dst,
                            "--ip-proto",
                            "tcp",
                            "--ip-dport",
                            &cport,
                            "-j",
                            "DROP",
                        ],
                    )
                    .map(drop)
                    .with_context(|| format!("adding an {eb} rule"))
            }
            Fault::LegacyForwardDrop => {
                let dst = c.container_addr.to_string();
                self.host
                    .exec(
                        "iptables-legacy",
                        &[
                            "-I", "FORWARD", "-d", &dst, "-p", "tcp", "--dport", &cport, "-j",
                            "DROP",
                        ],
                    )
                    .map(drop)
                    .context("adding an iptables-legacy rule")
            }
            Fault::FirewalldForward => run_stdin(
                "ip",
                &["netns", "exec", &self.host.name, "nft", "-f", "-"],
                &firewalld_ruleset(&c.uplink),
            )
            .context("loading a firewalld-style nft table"),
        }
    }

    /// Publishes `host_port` to the container's `container_port` as Docker does: a DNAT in nat
    /// DOCKER and an ACCEPT in filter DOCKER.
    pub fn publish(&self, proto: &str, host_port: u16, container_port: u16) -> Result<()> {
        let c = &self.config;
        let (hp, cp) = (host_port.to_string(), container_port.to_string());
        let to = format!("{}:{cp}", c.container_addr);
        let dst = format!("{}/32", c.container_addr);
        self.iptables(&[
            "-t",
            "nat",
            "-A",
            "DOCKER",
            "!",
            "-i",
            &c.bridge,
            "-p",
            proto,
            "--dport",
            &hp,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ])?;
        self.iptables(&[
            "-A", "DOCKER", "-d", &dst, "!", "-i", &c.bridge, "-o", &c.bridge, "-p", proto,
            "--dport", &cp, "-j", "ACCEPT",
        ])
    }

    /// A DNAT of the published TCP port to `to`, ahead of Docker's own.
    fn dnat_first(&self, to: &str) -> Result<()> {
        let port = self.config.published_port.to_string();
        self.iptables(&[
            "-t",
            "nat",
            "-I",
            "DOCKER",
            "1",
            "-p",
            "tcp",
            "--dport",
            &port,
            "-j",
            "DNAT",
            "--to-destination",
            to,
        ])
    }

    /// [`UNROUTABLE_CLIENT`] on the outside end, which ARPs from its subnet's own address so
    /// only the TCP packets carry the unroutable source (the host filters ARP by rp_filter
    /// too).
    fn add_unroutable_client(&self) -> Result<()> {
        self.outside.ip(&[
            "addr",
            "add",
            &format!("{UNROUTABLE_CLIENT}/32"),
            "dev",
            "eth0",
        ])?;
        self.outside.sysctl("net.ipv4.conf.all.arp_announce", "2")?;
        self.outside.sysctl("net.ipv4.conf.eth0.arp_announce", "2")
    }

    /// `iptables ARGS` in the host namespace.
    fn iptables(&self, args: &[&str]) -> Result<()> {
        self.host.exec("iptables", args).map(drop)
    }

    /// A rule (matches and target) inserted first in DOCKER-USER, where Docker tells users to
    /// put theirs.
    fn docker_user(&self, rule: &[&str]) -> Result<()> {
        let mut args = vec!["-I", "DOCKER-USER"];
        args.extend_from_slice(rule);
        self.iptables(&args)
    }

    /// A second container (`.3` on the bridge) for same-bridge traffic.
    fn add_peer_container(&mut self) -> Result<()> {
        let c = self.config.clone();
        let peer = Netns::create(format!("{}-ctr2", self.host.name.trim_end_matches("-host")))?;
        let veth = format!("{}b", self.host_veth);
        self.host.ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &peer.name,
        ])?;
        self.host
            .ip(&["link", "set", &veth, "master", &c.bridge, "up"])?;
        let o = c.container_addr.octets();
        let addr = Ipv4Addr::new(o[0], o[1], o[2], o[3] + 1);
        peer.ip(&[
            "addr",
            "add",
            &format!("{addr}/{}", c.bridge_prefix),
            "dev",
            "eth0",
        ])?;
        peer.ip(&["link", "set", "eth0", "up"])?;
        peer.ip(&["route", "add", "default", "via", &c.bridge_addr.to_string()])?;
        self.peer = Some(peer);
        Ok(())
    }

    /// Connects from the second container straight to the first one's port (no DNAT).
    pub fn connect_from_peer(&self, timeout: Duration) -> Result<bool> {
        let peer = self
            .peer
            .as_ref()
            .context("no peer container (Fault::BridgeIccDrop)")?;
        let to = SocketAddrV4::new(self.config.container_addr, self.config.container_port).into();
        peer.run_in(move || TcpStream::connect_timeout(&to, timeout).is_ok())
    }

    /// Connects from the outside namespace with a given source address.
    pub fn connect_from(&self, src: Ipv4Addr, timeout: Duration) -> Result<bool> {
        let to: std::net::SocketAddr = self.published().into();
        self.outside.run_in(move || {
            let sock = socket2_connect(src, to, timeout);
            sock.is_ok()
        })
    }

    /// The address a client outside connects to.
    pub fn published(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.config.host_addr, self.config.published_port)
    }

    /// Connects from the outside namespace to the published port and keeps the connection
    /// open for `hold` before closing it: the container's listener closes first, so the
    /// client's FIN|ACK reaches a socket that is already closing (as most short requests end).
    pub fn connect_and_hold(&self, timeout: Duration, hold: Duration) -> Result<bool> {
        let to = self.published().into();
        self.outside
            .run_in(move || match TcpStream::connect_timeout(&to, timeout) {
                Ok(stream) => {
                    std::thread::sleep(hold);
                    drop(stream);
                    true
                }
                Err(_) => false,
            })
    }

    /// Connects from the outside namespace to the published port; `Ok(true)` when the TCP
    /// handshake completed within `timeout`.
    pub fn connect(&self, timeout: Duration) -> Result<bool> {
        let to = self.published().into();
        self.outside
            .run_in(move || TcpStream::connect_timeout(&to, timeout).is_ok())
    }
}

/// Runs a command, failing with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    run_with_input(cmd, args, None)
}

/// firewalld's forward path as 0.8 writes it in `table inet firewalld`: interfaces in a zone
/// get that zone's rules, everything else falls through to the final reject.
fn firewalld_ruleset(uplink: &str) -> String {
    format!(
        r#"table inet firewalld {{
    chain filter_FWDI_public {{
        icmp type echo-request accept
    }}
    chain filter_FWDO_public {{
    }}
    chain filter_FORWARD_IN_ZONES {{
        iifname "{uplink}" goto filter_FWDI_public
        goto filter_FWDI_public
    }}
    chain filter_FORWARD_OUT_ZONES {{
        oifname "{uplink}" goto filter_FWDO_public
        goto filter_FWDO_public
    }}
    chain filter_FORWARD {{
        type filter hook forward priority filter + 10; policy accept;
        ct state {{ established, related }} accept
        iifname "lo" accept
        jump filter_FORWARD_IN_ZONES
        jump filter_FORWARD_OUT_ZONES
        ct state {{ invalid }} drop
        reject with icmpx type admin-prohibited
    }}
}}
"#
    )
}

fn run_stdin(cmd: &str, args: &[&str], input: &str) -> Result<()> {
    run_with_input(cmd, args, Some(input)).map(drop)
}

fn run_with_input(cmd: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    use std::io::Write as _;
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd} (is it installed? `cargo xtask setup`)"))?;
    if let Some(input) = input {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A TCP connect from a chosen source address (std has no bind-before-connect).
fn socket2_connect(
    src: Ipv4Addr,
    to: std::net::SocketAddr,
    timeout: Duration,
) -> std::io::Result<()> {
    let std::net::SocketAddr::V4(to) = to else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let stream = bound_nonblocking(src, 0, to)?;
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    if n <= 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        ));
    }
    stream.take_error()?.map_or(Ok(()), Err)
}

/// A TCP socket bound to `src:sport` (`sport` 0: any) whose connect to `to` has started: its
/// SYN is on its way when this returns.
pub(crate) fn bound_nonblocking(
    src: Ipv4Addr,
    sport: u16,
    to: SocketAddrV4,
) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket(2); owned by the TcpStream below on success.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let sa = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let one: libc::c_int = 1;
    // SAFETY: a valid int option of its size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let local = sa(src, sport);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: valid sockaddr_in of the given length.
    if unsafe { libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    stream.set_nonblocking(true)?;
    let remote = sa(*to.ip(), to.port());
    // SAFETY: as above.
    let rc = unsafe { libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_rules_follow_the_config() {
        let rules = LabConfig::unusual().docker_rules();
        assert!(rules.contains("-A DOCKER ! -i br-apps -p tcp -m tcp --dport 8443 -j DNAT --to-destination 10.200.0.5:8080"));
        assert!(rules.contains("-A POSTROUTING -s 10.200.0.0/24 ! -o br-apps -j MASQUERADE"));
        assert!(rules.contains(":FORWARD DROP"));
        assert_eq!(LabConfig::default().bridge_subnet(), "172.17.0.0/16");
    }
}
