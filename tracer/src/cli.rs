//! Command-line flags: one definition per flag, turned into a [`TraceConfig`].

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
    time::Duration,
};

use clap::{Args, Parser};
use tracer_common::{
    Filter,
    config::{filter_field, option},
};

use crate::{
    net::Proto,
    probes::{
        HookSet, NameError, ProbeError,
        loader::{self, BackendChoice, ProbeSizes},
    },
    trace::TraceConfig,
};

/// Follow packets through the Linux network stack and say where and why they die.
#[derive(Debug, Parser)]
#[command(name = "pathtrace", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub stop: StopArgs,
    #[command(flatten)]
    pub probes: ProbeArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check this host's configuration without tracing: forwarding, rp_filter, br_netfilter,
    /// nat chain order and FORWARD rules for every published Docker port (or --dport). Exits
    /// 1 when it finds a problem.
    ///
    /// Exits 0 when everything was checked and nothing found, 1 when it finds a problem, 2
    /// when it cannot run (no privileges), 3 when part of the configuration could not be
    /// checked (said as `could not check: ...`) and nothing was found in the rest.
    Doctor(DoctorArgs),
    /// Run continuously, exporting drops to Prometheus (--listen) and as JSON lines. SIGHUP
    /// re-reads --config and swaps the filter in place; SIGTERM stops and flushes.
    Daemon(DaemonArgs),
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// TOML configuration (re-read on SIGHUP); flags override it. See docs/daemon.md.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Prometheus endpoint (default 127.0.0.1:9464; anything else is an explicit choice).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Drop events as JSON lines: a file (rotated by size) or `-` for stdout.
    #[arg(long, value_name = "PATH")]
    pub json_log: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub probes: ProbeArgs,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Check this port (as a client sends it) instead of Docker's published ports.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub dport: Option<u16>,
    /// Protocol of --dport: tcp or udp.
    #[arg(long, value_name = "PROTO", default_value = "tcp", value_parser = parse_proto)]
    pub proto: Proto,
    /// The client whose first packet is judged (default 198.51.100.200, a documentation
    /// address): a firewall that lets some sources in judges yours.
    #[arg(long, value_name = "IPV4")]
    pub host: Option<Ipv4Addr>,
    /// The client's source port (default 40000).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub sport: Option<u16>,
    /// One JSON object with every finding.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Probes")]
pub struct ProbeArgs {
    /// How to attach to kernel functions: auto (fentry, then kprobe, then tracepoints),
    /// fentry, kprobe, or tracepoint (no netfilter/bridge/veth hops).
    #[arg(long, value_name = "BACKEND", default_value = "auto")]
    pub backend: BackendChoice,
    /// Ring buffer between the kernel and pathtrace, in MiB (a power of two). Larger rides
    /// out longer bursts before events are lost (losses are always counted and reported).
    #[arg(long, value_name = "MIB", default_value_t = 16, value_parser = parse_ring_mib)]
    pub ring_mib: u32,
    /// Which hooks: path (every hop traced, transmits included, NAT followed, diagnosed; a
    /// trace's default with fentry or kprobe), receive (every device a packet enters, where it
    /// is taken and where it dies, NAT followed, diagnosed; the veth and bridge transmits
    /// inferred from the receives after them, at about half the path's cost; a trace's
    /// default on tracepoints alone) or drops (only kfree_skb: where packets die and why, at
    /// no cost to traffic that flows; no path: the drop alone, with its input interface and,
    /// from conntrack, where it was sent; the daemon's default, path when --backend names
    /// fentry or kprobe).
    #[arg(long, value_name = "SET")]
    pub hooks: Option<HookSet>,
}

/// A flag's value, or flags together, that pathtrace cannot trace with.
#[derive(Debug, thiserror::Error)]
pub enum ArgError {
    #[error("`{0}` is not a whole number of MiB")]
    NotMib(String),
    #[error("{0} MiB: the ring must be a power of two from 1 to 1024 MiB")]
    RingSize(u32),
    #[error("`{0}` is not tcp, udp, icmp or a protocol number 0-255")]
    Proto(String),
    #[error(
        "`{0}` is not an IPv4 address, nor an IPv6 address with an optional prefix length (2001:db8::/64)"
    )]
    Host(String),
    #[error("`{0}`: a prefix of an IPv4 address is not supported yet: give one address")]
    HostPrefix4(String),
    #[error("IPv4 only and IPv6 only at once: give one of ipv4 and ipv6")]
    BothFamilies,
    #[error(
        "--host {host} is an IPv{host_version} address, but {flag} asks for IPv{flag_version} only"
    )]
    HostFamily {
        host: HostFilter,
        host_version: u8,
        flag: &'static str,
        flag_version: u8,
    },
    #[error("`{0}` is not a number of seconds")]
    NotSeconds(String),
    #[error("`{0}`: the duration must be positive (seconds)")]
    Duration(String),
    #[error("--sport/--dport need --proto tcp or udp, not {0}")]
    PortsWithout(Proto),
    #[error("packets_per_flow must be at least 1 (every_packet = true traces every packet)")]
    ZeroBudget,
    #[error(transparent)]
    Name(#[from] NameError),
    /// Boxed: a loader error is large, and this one travels in config errors too.
    #[error(transparent)]
    Probes(Box<ProbeError>),
}

impl From<ProbeError> for ArgError {
    fn from(e: ProbeError) -> Self {
        Self::Probes(Box::new(e))
    }
}

/// A power of two from 1 to 1024: the kernel wants the ring a power-of-two number of pages.
fn parse_ring_mib(s: &str) -> Result<u32, ArgError> {
    let n: u32 = s.parse().map_err(|_| ArgError::NotMib(s.to_owned()))?;
    if !(1..=1024).contains(&n) || !n.is_power_of_two() {
        return Err(ArgError::RingSize(n));
    }
    Ok(n)
}

/// Which packets to trace (all given filters must match). A packet is followed across NAT once
/// it matched, and so are the replies to it and ICMP errors about it (`--no-replies`: only
/// what the filter matches).
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Filter")]
pub struct FilterArgs {
    /// Destination port (TCP/UDP), as the packet has it when first seen.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub dport: Option<u16>,
    /// Source port (TCP/UDP).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub sport: Option<u16>,
    /// Address matching either the source or the destination: IPv4, or IPv6 with an optional
    /// prefix length (`2001:db8::/64`).
    #[arg(long, value_name = "ADDR")]
    pub host: Option<HostFilter>,
    /// IPv4 packets only.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// IPv6 packets only.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Protocol: tcp, udp, icmp, or a protocol number.
    #[arg(long, value_name = "PROTO", value_parser = parse_proto)]
    pub proto: Option<Proto>,
    /// Traffic to and from a Docker container (name or id): its addresses, and the host
    /// addresses and ports published to it (before DNAT; a port published on 0.0.0.0 on each
    /// of this namespace's addresses). Up to 32 published ports and 16 host addresses; more
    /// is an error. Needs the Docker socket.
    #[arg(long, value_name = "NAME|ID", conflicts_with = "host")]
    pub container: Option<String>,
    /// Also count as drops the frees that are the stack's housekeeping (a socket's queues
    /// purged as it closes: QUEUE_PURGE, SOCKET_CLOSE), shown otherwise as the packet's end.
    #[arg(long)]
    pub all_drops: bool,
    /// Trace only the packets the filter matches: not the replies to them (a SYN-ACK whose
    /// source port is the container's) nor the ICMP errors about them.
    #[arg(long)]
    pub no_replies: bool,
    /// Record the kernel stack that freed each traced drop (printed under the drop, JSON
    /// `stack`): who dropped it, beyond the reason and the one address `location` names.
    #[arg(long)]
    pub stack: bool,
    /// Full packets per flow (a client to one service port) per second; the rest of a flood
    /// that keeps taking the same way is counted in the kernel and shown as one summary with
    /// its exact count. A packet that parts from its flow's way is shown in full from there.
    #[arg(long, value_name = "N", default_value_t = tracer_common::flood::DEFAULT_BUDGET, value_parser = clap::value_parser!(u16).range(1..))]
    pub packets_per_flow: u16,
    /// Trace every packet in full, floods included (no summaries): under a flood the ring
    /// fills and events are lost (counted and reported).
    #[arg(long, conflicts_with = "packets_per_flow")]
    pub every_packet: bool,
}

/// How long the kernel keeps following a flow's replies after its last traced packet: longer
/// than a SYN's retransmissions take to give up on a slow path (1+2+4+8+16 s).
pub const REPLY_SECS: u16 = 60;

#[derive(Debug, Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// One JSON object per line (ready, hop, verdict, stats); schema in docs/json.md.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Stopping")]
pub struct StopArgs {
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<Duration>,
    /// Stop after this many packet verdicts.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Finish a packet with no new hop after this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub idle_ms: u64,
}

/// `--host`: one IPv4 address, or an IPv6 address or prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostFilter {
    V4(Ipv4Addr),
    /// An address and how many of its leading bits must match (128: the address itself).
    V6(Ipv6Addr, u8),
}

impl HostFilter {
    /// 4 or 6.
    pub fn version(&self) -> u8 {
        match self {
            Self::V4(_) => 4,
            Self::V6(..) => 6,
        }
    }
}

impl FromStr for HostFilter {
    type Err = ArgError;

    fn from_str(s: &str) -> Result<Self, ArgError> {
        let bad = || ArgError::Host(s.to_owned());
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        if let Ok(a) = addr.parse::<Ipv4Addr>() {
            return match bits {
                None | Some(32) => Ok(Self::V4(a)),
                Some(_) => Err(ArgError::HostPrefix4(s.to_owned())),
            };
        }
        let a = addr.parse::<Ipv6Addr>().map_err(|_| bad())?;
        match bits {
            None => Ok(Self::V6(a, 128)),
            Some(b) if b <= 128 => Ok(Self::V6(a, b)),
            Some(_) => Err(bad()),
        }
    }
}

impl fmt::Display for HostFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(a) => write!(f, "{a}"),
            Self::V6(a, 128) => write!(f, "{a}"),
            Self::V6(a, bits) => write!(f, "{a}/{bits}"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for HostFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

pub fn parse_proto(s: &str) -> Result<Proto, ArgError> {
    Proto::parse(&s.to_ascii_lowercase()).ok_or_else(|| ArgError::Proto(s.to_owned()))
}

fn parse_secs(s: &str) -> Result<Duration, ArgError> {
    let secs: f64 = s.parse().map_err(|_| ArgError::NotSeconds(s.to_owned()))?;
    if !(secs > 0.0 && secs <= 365.0 * 86400.0) {
        return Err(ArgError::Duration(s.to_owned()));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl FilterArgs {
    /// The kernel filter and its description for the header. Ports need TCP or UDP.
    pub fn to_filter(&self) -> Result<(Filter, String), ArgError> {
        let mut f = Filter::any();
        let mut words = Vec::new();
        if let Some(p) = self.proto {
            f.proto = p.number();
            f.fields |= filter_field::PROTO;
            words.push(p.name().to_owned());
            if (self.dport.is_some() || self.sport.is_some()) && !p.has_ports() {
                return Err(ArgError::PortsWithout(p));
            }
        }
        let only = match (self.ipv4, self.ipv6) {
            (true, true) => return Err(ArgError::BothFamilies),
            (true, false) => Some((4, "-4")),
            (false, true) => Some((6, "-6")),
            (false, false) => None,
        };
        if let Some((version, flag)) = only {
            if let Some(h) = self.host.filter(|h| h.version() != version) {
                return Err(ArgError::HostFamily {
                    host: h,
                    host_version: h.version(),
                    flag,
                    flag_version: version,
                });
            }
            f.family = version;
            words.push(if version == 4 { "ip" } else { "ip6" }.to_owned());
        }
        match self.host {
            Some(HostFilter::V4(a)) => {
                f.host = a.octets();
                f.fields |= filter_field::HOST;
            }
            Some(HostFilter::V6(a, bits)) => f.set_host6(a.octets(), bits),
            None => {}
        }
        if let Some(h) = self.host {
            words.push(format!("host {h}"));
        }
        if let Some(p) = self.sport {
            f.sport = p;
            f.fields |= filter_field::SPORT;
            words.push(format!("sport {p}"));
        }
        if let Some(p) = self.dport {
            f.dport = p;
            f.fields |= filter_field::DPORT;
            words.push(format!("dport {p}"));
        }
        let text = if words.is_empty() {
            "all IPv4 and IPv6 packets".to_owned()
        } else {
            words.join(" ")
        };
        if !self.no_replies {
            f.reply_secs = REPLY_SECS;
        }
        if self.stack {
            f.options |= option::STACK;
        }
        if !self.every_packet {
            f.flood_budget = self.packets_per_flow;
        }
        let text = if self.no_replies || f.is_any() {
            text
        } else {
            format!("{text}, and their replies")
        };
        Ok((f, text))
    }
}

impl Cli {
    pub fn trace_config(&self) -> Result<TraceConfig, ArgError> {
        let (filter, filter_text) = self.filter.to_filter()?;
        let hooks = self.probes.hooks;
        if let Some(hooks) = hooks {
            loader::compatible(hooks, self.probes.backend)?;
        }
        Ok(TraceConfig {
            filter,
            filter_text,
            duration: self.stop.duration,
            count: self.stop.count,
            idle: Duration::from_millis(self.stop.idle_ms),
            backend: self.probes.backend,
            hooks,
            container: self.filter.container.clone(),
            all_drops: self.filter.all_drops,
            sizes: ProbeSizes {
                ring_bytes: self.probes.ring_mib << 20,
                ..ProbeSizes::default()
            },
            ..TraceConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_size_must_be_a_power_of_two() {
        assert_eq!(parse_ring_mib("16").ok(), Some(16));
        let err = |s| parse_ring_mib(s).unwrap_err().to_string();
        assert!(err("12").contains("power of two"));
        assert!(parse_ring_mib("0").is_err());
        assert!(parse_ring_mib("2048").is_err());
        assert!(err("lots").contains("whole number"));
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pathtrace").chain(args.iter().copied()))
    }

    #[test]
    fn builds_the_kernel_filter() {
        let cli = parse(&[
            "--dport",
            "10001",
            "--proto",
            "tcp",
            "--host",
            "203.0.113.2",
        ])
        .unwrap();
        let cfg = cli.trace_config().unwrap();
        assert_eq!(cfg.filter.dport, 10001);
        assert_eq!(cfg.filter.proto, 6);
        assert_eq!(cfg.filter.host, [203, 0, 113, 2]);
        assert_eq!(
            cfg.filter_text,
            "tcp host 203.0.113.2 dport 10001, and their replies"
        );
        assert_eq!(cfg.filter.reply_secs, REPLY_SECS);
        let cli = parse(&["--dport", "10001", "--no-replies"]).unwrap();
        let cfg = cli.trace_config().unwrap();
        assert_eq!(
            (cfg.filter.reply_secs, cfg.filter_text.as_str()),
            (0, "dport 10001")
        );
    }

    /// `--host` takes an IPv6 address or prefix into the filter's IPv6 host; `-4`/`-6` set the
    /// version and refuse a host of the other one; an IPv4 prefix is refused, not truncated.
    #[test]
    fn builds_an_ipv6_filter() {
        let cfg = parse(&["--host", "fd42:17::/48", "--dport", "8443", "-6"])
            .unwrap()
            .trace_config()
            .unwrap();
        let f = cfg.filter;
        assert_eq!(f.family, 6);
        assert_eq!(f.host6_bits, 48);
        assert_eq!(&f.host6[..6], &[0xfd, 0x42, 0, 0x17, 0, 0]);
        assert_ne!(f.fields & filter_field::HOST6, 0);
        assert_eq!(f.fields & filter_field::HOST, 0);
        assert_eq!(
            cfg.filter_text,
            "ip6 host fd42:17::/48 dport 8443, and their replies"
        );
        let one = parse(&["--host", "2001:db8:7::9"])
            .unwrap()
            .trace_config()
            .unwrap();
        assert_eq!(one.filter.host6_bits, 128);
        assert_eq!(one.filter_text, "host 2001:db8:7::9, and their replies");
        let err = |args: &[&str]| parse(args).unwrap().trace_config().unwrap_err().to_string();
        assert!(err(&["--host", "2001:db8::1", "-4"]).contains("IPv6 address, but -4"));
        assert!(err(&["--host", "198.51.100.7", "-6"]).contains("IPv4 address, but -6"));
        let prefix = parse(&["--host", "10.9.0.0/16"]).unwrap_err().to_string();
        assert!(prefix.contains("prefix of an IPv4 address"), "{prefix}");
        assert!(parse(&["--host", "2001:db8::/129"]).is_err());
        assert!(parse(&["-4", "-6"]).is_err());
        let any = parse(&[]).unwrap().trace_config().unwrap();
        assert_eq!(any.filter_text, "all IPv4 and IPv6 packets");
    }

    #[test]
    fn rejects_bad_filters_with_a_message() {
        for bad in [
            &["--dport", "0"][..],
            &["--dport", "70000"],
            &["--host", "example"],
            &["--proto", "sctpx"],
            &["--duration", "-1"],
            &["--count", "0"],
            &["--backend", "ebpf"],
            &["--hooks", "drop"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse(&["doctor", "--dport", "0"]).is_err());
        assert!(matches!(
            parse(&["doctor", "--dport", "10001"]).unwrap().command,
            Some(Command::Doctor(_))
        ));
        let cli = parse(&["--proto", "icmp", "--dport", "80"]).unwrap();
        assert!(
            cli.trace_config()
                .unwrap_err()
                .to_string()
                .contains("need --proto tcp or udp")
        );
    }

    #[test]
    fn receives_take_no_function_backend() {
        let cfg = parse(&["--hooks", "receive", "--dport", "80"])
            .unwrap()
            .trace_config()
            .unwrap();
        assert_eq!(cfg.hooks, Some(HookSet::Receive));
        let err = parse(&["--hooks", "receive", "--backend", "kprobe"])
            .unwrap()
            .trace_config()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "--backend kprobe chooses how function hooks attach, and --hooks receive has none"
            ),
            "{err}"
        );
    }

    #[test]
    fn drops_take_no_function_backend() {
        let cfg = parse(&["--hooks", "drops", "--dport", "80"])
            .unwrap()
            .trace_config()
            .unwrap();
        assert_eq!(cfg.hooks, Some(HookSet::Drops));
        let err = parse(&["--hooks", "drops", "--backend", "fentry"])
            .unwrap()
            .trace_config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("--backend fentry"), "{err}");
        assert!(
            parse(&["--hooks", "drops", "--backend", "tracepoint"])
                .unwrap()
                .trace_config()
                .is_ok()
        );
    }

    #[test]
    fn without_hooks_a_trace_takes_the_backends_default() {
        let cfg = parse(&["--dport", "80"]).unwrap().trace_config().unwrap();
        assert_eq!(cfg.hooks, None, "chosen with the backend, at attach");
        for backend in ["kprobe", "fentry", "tracepoint"] {
            assert!(
                parse(&["--backend", backend])
                    .unwrap()
                    .trace_config()
                    .is_ok(),
                "{backend}"
            );
        }
        use crate::probes::Backend;
        assert_eq!(
            HookSet::trace_default(Backend::Tracepoint),
            HookSet::Receive
        );
        assert_eq!(HookSet::trace_default(Backend::Fentry), HookSet::Path);
        assert_eq!(HookSet::trace_default(Backend::Kprobe), HookSet::Path);
        assert!(HookSet::Receive.infers_transmits());
        assert!(!HookSet::Path.infers_transmits());
        assert!(
            !HookSet::Drops.infers_transmits(),
            "a lone drop has no receive to infer from"
        );
    }
}
