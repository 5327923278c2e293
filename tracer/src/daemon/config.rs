//! The daemon's TOML configuration. Flags override the file; SIGHUP re-reads the file and
//! applies the new filter without detaching the probes.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use tracer_common::Filter;

use crate::{
    cli::{ArgError, DaemonArgs, FilterArgs},
    probes::{
        Backend, HookSet,
        loader::{self, BackendChoice},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// toml's message names the line, column and field.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: filter: {source}")]
    Filter { path: String, source: ArgError },
    /// The backend and hook set, unknown or not usable together.
    #[error("{path}: {source}")]
    Probes { path: String, source: ArgError },
    #[error("--container is not supported by the daemon yet: use --dport/--host")]
    ContainerFilter,
    /// A value the file may hold but pathtrace cannot run with; `at` is `path:line`.
    #[error("{at}: {key} = {value}: {why}")]
    Value {
        at: String,
        key: &'static str,
        value: String,
        why: &'static str,
    },
}

/// `path:line` of `key` in `[section]` (top level: `None`), or `path` when it is not written
/// there (a default, or a flag).
fn at(text: &str, path: &str, section: Option<&str>, key: &str) -> String {
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim().to_owned());
            continue;
        }
        let is_key = line
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if is_key && current.as_deref() == section {
            return format!("{path}:{}", n + 1);
        }
    }
    path.to_owned()
}

/// `[filter]`: the same fields as the trace flags.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    pub dport: Option<u16>,
    pub sport: Option<u16>,
    /// IPv4, or IPv6 with an optional prefix length (`--host`).
    pub host: Option<crate::cli::HostFilter>,
    pub proto: Option<String>,
    /// `-4`: IPv4 packets only.
    #[serde(default)]
    pub ipv4: bool,
    /// `-6`: IPv6 packets only.
    #[serde(default)]
    pub ipv6: bool,
    /// `--all-drops`.
    #[serde(default)]
    pub all_drops: bool,
    /// `--no-replies`.
    #[serde(default)]
    pub no_replies: bool,
    /// `--stack`.
    #[serde(default)]
    pub stack: bool,
    /// `--packets-per-flow`.
    pub packets_per_flow: Option<u16>,
    /// `--every-packet`.
    #[serde(default)]
    pub every_packet: bool,
}

/// `[json]`: where drop events go.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct JsonConfig {
    /// A file (rotated by size) or `-` for stdout; unset: no JSON log.
    pub path: Option<PathBuf>,
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` .. `path.N`).
    pub keep: u32,
}

impl Default for JsonConfig {
    fn default() -> Self {
        Self {
            path: None,
            max_bytes: 64 << 20,
            keep: 5,
        }
    }
}

/// `[limits]`: memory bounds.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Packets correlated at once (userspace).
    pub max_packets: usize,
    /// Flows remembered (userspace).
    pub max_flows: usize,
    /// Skbs tracked at once (kernel LRU).
    pub tracked_skbs: u32,
    /// Ring buffer bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Distinct label sets per metric before the rest fold into `other`.
    pub top_n: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_packets: 16384,
            max_flows: 65536,
            tracked_skbs: 16384,
            ring_bytes: 4 << 20,
            top_n: 100,
        }
    }
}

/// The whole file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Prometheus endpoint; anything but loopback is an explicit choice.
    pub listen: SocketAddr,
    pub backend: String,
    /// `path`, `receive` or `drops` (`--hooks`); unset, [`DaemonConfig::probes`] picks one.
    pub hooks: Option<String>,
    pub filter: FilterConfig,
    pub json: JsonConfig,
    pub limits: Limits,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            backend: "auto".into(),
            hooks: None,
            filter: FilterConfig::default(),
            json: JsonConfig::default(),
            limits: Limits::default(),
        }
    }
}

impl DaemonConfig {
    /// The file named by `--config` (or the defaults), with the flags given on top.
    pub fn from_args(args: &DaemonArgs) -> Result<Self, ConfigError> {
        let mut cfg = match &args.config {
            Some(path) => Self::load(path)?,
            None => Self::default(),
        };
        if args.filter.container.is_some() {
            return Err(ConfigError::ContainerFilter);
        }
        if let Some(listen) = args.listen {
            cfg.listen = listen;
        }
        if let Some(path) = &args.json_log {
            cfg.json.path = Some(path.clone());
        }
        cfg.apply_filter_flags(&args.filter);
        if let BackendChoice::Only(b) = args.probes.backend {
            cfg.backend = b.to_string();
        }
        if let Some(hooks) = args.probes.hooks {
            cfg.hooks = Some(hooks.to_string());
        }
        Ok(cfg)
    }

    /// The filter fields given as flags, over the file's: at start and at every SIGHUP, so a
    /// reload never loses what the command line said.
    pub fn apply_filter_flags(&mut self, f: &FilterArgs) {
        self.filter.dport = f.dport.or(self.filter.dport);
        self.filter.sport = f.sport.or(self.filter.sport);
        self.filter.host = f.host.or(self.filter.host);
        if f.ipv4 || f.ipv6 {
            self.filter.ipv4 = f.ipv4;
            self.filter.ipv6 = f.ipv6;
        }
        self.filter.all_drops |= f.all_drops;
        self.filter.no_replies |= f.no_replies;
        self.filter.stack |= f.stack;
        self.filter.every_packet |= f.every_packet;
        if f.packets_per_flow != tracer_common::flood::DEFAULT_BUDGET {
            self.filter.packets_per_flow = Some(f.packets_per_flow);
        }
        if let Some(p) = f.proto {
            self.filter.proto = Some(p.number().to_string());
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim().to_owned(),
        })?;
        cfg.check(text, path)?;
        cfg.filter(path).map_err(|e| match e {
            ConfigError::Filter { source, .. } => ConfigError::Filter {
                path: at(text, path, Some("filter"), "proto"),
                source,
            },
            other => other,
        })?;
        cfg.probes(path)?;
        Ok(cfg)
    }

    /// Values the flags' parsers would refuse, refused here too, with their line: a port 0,
    /// a ring the kernel cannot map, a limit of nothing.
    pub fn check(&self, text: &str, path: &str) -> Result<(), ConfigError> {
        let bad = |section, key, value: String, why| ConfigError::Value {
            at: at(text, path, section, key),
            key,
            value,
            why,
        };
        for (key, port) in [("dport", self.filter.dport), ("sport", self.filter.sport)] {
            if port == Some(0) {
                return Err(bad(Some("filter"), key, "0".into(), "a port is 1 to 65535"));
            }
        }
        let l = &self.limits;
        let ring = l.ring_bytes;
        if !ring.is_power_of_two() || !(4096..=1 << 30).contains(&ring) {
            return Err(bad(
                Some("limits"),
                "ring_bytes",
                ring.to_string(),
                "the ring must be a power of two from 4096 (a page) to 1073741824 bytes",
            ));
        }
        for (key, n) in [
            ("max_packets", l.max_packets),
            ("max_flows", l.max_flows),
            ("tracked_skbs", l.tracked_skbs as usize),
            ("top_n", l.top_n),
        ] {
            if n == 0 {
                return Err(bad(Some("limits"), key, "0".into(), "at least 1"));
            }
        }
        if self.json.max_bytes < 1024 {
            return Err(bad(
                Some("json"),
                "max_bytes",
                self.json.max_bytes.to_string(),
                "at least 1024 bytes (one drop event is about 1 KiB)",
            ));
        }
        Ok(())
    }

    /// The kernel filter and its text; `path` names where it came from in an error.
    pub fn filter(&self, path: &str) -> Result<(Filter, String), ConfigError> {
        self.filter_args()
            .and_then(|f| f.to_filter())
            .map_err(|source| ConfigError::Filter {
                path: path.to_owned(),
                source,
            })
    }

    /// `backend` and `hooks`, parsed and checked against each other. Without `hooks`, a
    /// daemon is left running on a busy host, so it attaches `drops`, which costs traffic that
    /// flows nothing (the path set traces every packet its filter matches, and an empty filter
    /// matches all of them); a backend named outright asks for function hooks, which only the
    /// path set has.
    pub fn probes(&self, path: &str) -> Result<(BackendChoice, HookSet), ConfigError> {
        self.probe_choice().map_err(|source| ConfigError::Probes {
            path: path.to_owned(),
            source,
        })
    }

    fn probe_choice(&self) -> Result<(BackendChoice, HookSet), ArgError> {
        let backend: BackendChoice = self.backend.parse()?;
        let hooks = match &self.hooks {
            Some(set) => set.parse()?,
            None => match backend {
                BackendChoice::Only(Backend::Fentry | Backend::Kprobe) => HookSet::Path,
                BackendChoice::Auto | BackendChoice::Only(Backend::Tracepoint) => HookSet::Drops,
            },
        };
        loader::compatible(hooks, backend)?;
        Ok((backend, hooks))
    }

    /// The filter section as the trace flags, so both are validated by one piece of code. A
    /// protocol that is not one is an error, not a filter without it.
    pub fn filter_args(&self) -> Result<FilterArgs, ArgError> {
        Ok(FilterArgs {
            dport: self.filter.dport,
            sport: self.filter.sport,
            host: self.filter.host,
            ipv4: self.filter.ipv4,
            ipv6: self.filter.ipv6,
            proto: self
                .filter
                .proto
                .as_deref()
                .map(crate::cli::parse_proto)
                .transpose()?,
            container: None,
            all_drops: self.filter.all_drops,
            no_replies: self.filter.no_replies,
            stack: self.filter.stack,
            packets_per_flow: match self.filter.packets_per_flow {
                Some(0) => return Err(ArgError::ZeroBudget),
                Some(n) => n,
                None => tracer_common::flood::DEFAULT_BUDGET,
            },
            every_packet: self.filter.every_packet,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let cfg = DaemonConfig::parse(
            "listen = \"0.0.0.0:9500\"\n[filter]\ndport = 10001\nproto = \"tcp\"\n[json]\npath = \"/var/log/pathtrace/drops.json\"\nmax_bytes = 1048576\n[limits]\ntop_n = 20\n",
            "t.toml",
        )
        .expect("valid");
        assert_eq!(cfg.listen.port(), 9500);
        assert_eq!(cfg.filter.dport, Some(10001));
        assert_eq!(cfg.json.max_bytes, 1 << 20);
        assert_eq!(cfg.json.keep, 5, "defaults fill the rest");
        assert_eq!(cfg.limits.top_n, 20);
        let (f, text) = cfg.filter_args().unwrap().to_filter().unwrap();
        assert_eq!(
            (f.dport, f.proto, text.as_str()),
            (10001, 6, "tcp dport 10001, and their replies")
        );
        assert_eq!(f.options, 0, "no stacks unless asked");
        let stacks = DaemonConfig::parse("[filter]\nstack = true\n", "s.toml").expect("valid");
        let (f, _) = stacks.filter_args().unwrap().to_filter().unwrap();
        assert_eq!(f.options, tracer_common::config::option::STACK);
    }

    /// `[filter]` takes an IPv6 host or prefix and one family, as the flags do; both
    /// families at once, or an IPv4 prefix, is an error naming the field.
    #[test]
    fn ipv6_filters_from_the_file() {
        let cfg = DaemonConfig::parse(
            "[filter]\nhost = \"2001:db8:7::/48\"\nipv6 = true\n",
            "six.toml",
        )
        .expect("valid");
        let (f, text) = cfg.filter_args().unwrap().to_filter().unwrap();
        assert_eq!((f.family, f.host6_bits), (6, 48));
        assert_eq!(text, "ip6 host 2001:db8:7::/48, and their replies");
        let err = DaemonConfig::parse("[filter]\nipv4 = true\nipv6 = true\n", "b.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("b.toml") && err.contains("give one of ipv4 and ipv6"),
            "{err}"
        );
        let err = DaemonConfig::parse("[filter]\nhost = \"10.1.0.0/16\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefix of an IPv4 address"), "{err}");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let err = DaemonConfig::parse("[filter]\ndport = 70000\n", "/etc/pathtrace.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/pathtrace.toml: "), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let err = DaemonConfig::parse("[filter]\ndports = 1\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dports"), "{err}");
        let err = DaemonConfig::parse("[filter]\nproto = \"icmp\"\ndport = 80\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("need --proto tcp or udp"), "{err}");
        let err = DaemonConfig::parse("hooks = \"drops\"\nbackend = \"kprobe\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("p.toml: --backend kprobe"), "{err}");
        let err = DaemonConfig::parse("[filter]\nproto = \"gre\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("p.toml:2: filter: `gre` is not tcp, udp, icmp"),
            "{err}"
        );
        let err = DaemonConfig::parse("[filter]\nproto = \"tpc\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.toml:2: filter: `tpc` is not tcp"), "{err}");
        let err = DaemonConfig::parse(
            "listen = \"127.0.0.1:9\"\n[filter]\n\ndport = 0\n",
            "p.toml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "p.toml:4: dport = 0: a port is 1 to 65535");
        let err = DaemonConfig::parse("[limits]\nring_bytes = 1000000\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("p.toml:2: ring_bytes = 1000000: the ring must be a power of two"),
            "{err}"
        );
        let err = DaemonConfig::parse("[limits]\ntop_n = 0\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "p.toml:2: top_n = 0: at least 1");
        let err = DaemonConfig::parse("hooks = \"all\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown hook set `all`"), "{err}");
        let cfg = DaemonConfig::parse("hooks = \"receive\"\n", "p.toml").expect("valid");
        assert_eq!(
            cfg.probes("p.toml").ok(),
            Some((BackendChoice::Auto, HookSet::Receive))
        );
    }

    /// `pathtrace daemon --config f --dport 7000`: the flag holds at start and after every
    /// SIGHUP, which reads the file again and puts the same flags on top.
    #[test]
    fn filter_flags_stay_on_top_of_a_reloaded_file() {
        let flags = FilterArgs {
            dport: Some(7000),
            sport: None,
            host: None,
            ipv4: false,
            ipv6: false,
            proto: None,
            container: None,
            all_drops: false,
            no_replies: false,
            stack: false,
            packets_per_flow: tracer_common::flood::DEFAULT_BUDGET,
            every_packet: false,
        };
        for file in [
            "[filter]\nproto = \"udp\"\n",
            "[filter]\nproto = \"udp\"\ndport = 53\n",
        ] {
            let mut cfg = DaemonConfig::parse(file, "p.toml").expect("valid");
            cfg.apply_filter_flags(&flags);
            let (f, text) = cfg.filter("p.toml").expect("filter");
            assert_eq!((f.dport, f.proto), (7000, 17), "{text}");
        }
    }

    #[test]
    fn left_running_it_attaches_drops_unless_a_function_backend_is_named() {
        let probes = |text: &str| {
            DaemonConfig::parse(text, "p.toml")
                .unwrap()
                .probes("p.toml")
                .ok()
        };
        assert_eq!(probes(""), Some((BackendChoice::Auto, HookSet::Drops)));
        assert_eq!(
            probes("backend = \"tracepoint\"\n"),
            Some((BackendChoice::Only(Backend::Tracepoint), HookSet::Drops))
        );
        assert_eq!(
            probes("backend = \"fentry\"\n"),
            Some((BackendChoice::Only(Backend::Fentry), HookSet::Path))
        );
        assert_eq!(
            probes("hooks = \"path\"\n"),
            Some((BackendChoice::Auto, HookSet::Path))
        );
    }
}
