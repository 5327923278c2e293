//! Where pathtrace hooks into the kernel: the hook-point tables, the BTF facts the programs
//! need, and the loader.
//!
//! A hook point is a row: [`TRACEPOINTS`] are attached by every backend (receive, transmit,
//! drop, consume); each [`FUNCTION_HOOKS`] row names a kernel function and the programs each
//! backend attaches there. Every program emits the same [`tracer_common::HopEvent`], so nothing
//! downstream knows which backend ran.

pub mod btf;
pub mod drop_reason;
pub mod kfunc;
pub mod loader;
pub mod offsets;

use std::fmt;

use tracer_common::HopKind;

pub use drop_reason::DropReasons;
pub use loader::{ProbeError, Probes};

/// How function hook points are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// fentry/fexit through BPF trampolines: cheapest, needs BTF and a kernel that allows
    /// tracing programs.
    Fentry,
    /// kprobe/kretprobe: needs CONFIG_KPROBES.
    Kprobe,
    /// BTF tracepoints only: needs nothing but kernel BTF; no netfilter/bridge/veth detail.
    Tracepoint,
}

impl Backend {
    /// The order `--backend auto` tries them in.
    pub const PREFERENCE: [Backend; 3] = [Backend::Fentry, Backend::Kprobe, Backend::Tracepoint];
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::Tracepoint => "tracepoint",
        })
    }
}

/// A backend or hook set name that is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("unknown backend `{0}`: auto, fentry, kprobe or tracepoint")]
    Backend(String),
    #[error(
        "unknown hook set `{0}`: path (every hop), receive (every device a packet enters, no transmits) or drops (kfree_skb only)"
    )]
    HookSet(String),
}

impl std::str::FromStr for Backend {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        match s {
            "fentry" => Ok(Self::Fentry),
            "kprobe" => Ok(Self::Kprobe),
            "tracepoint" => Ok(Self::Tracepoint),
            other => Err(NameError::Backend(other.to_owned())),
        }
    }
}

/// Which hook points to attach: the whole path, the devices a packet enters, or only where
/// packets are freed as drops.
///
/// `drops` is the set to leave running on a busy host: `kfree_skb` fires only when a packet
/// dies, so traffic that flows pays nothing, where the path set costs each forwarded packet
/// five or six tracepoint calls (docs/performance.md). The price: no path before the drop,
/// no NAT following (the filter sees the packet as it is when dropped, or as conntrack says it
/// entered the namespace). `receive` sits between: `net_dev_start_xmit`, three of those calls per forwarded packet
/// and about half their cost, is left out; the path keeps every device a packet enters and NAT
/// is still followed, but the devices it leaves by are not shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookSet {
    #[default]
    Path,
    Receive,
    Drops,
}

impl HookSet {
    /// Whether hooks producing `kind` hops belong to the set.
    pub fn includes(self, kind: HopKind) -> bool {
        match self {
            Self::Path => true,
            Self::Receive => matches!(kind, HopKind::Receive | HopKind::Drop | HopKind::Consume),
            Self::Drops => kind == HopKind::Drop,
        }
    }

    /// A trace's set when `--hooks` is not given: the path where a function backend attaches
    /// (its netfilter, bridge and veth hops are the reason to have one); on tracepoints
    /// alone, `receive`, whose transmits are inferred from the receives after them, at about
    /// half the path's cost to traffic nobody follows (docs/performance.md).
    pub fn trace_default(backend: Backend) -> Self {
        match backend {
            Backend::Tracepoint => Self::Receive,
            Backend::Fentry | Backend::Kprobe => Self::Path,
        }
    }

    /// Whether transmits are worked out from the receives after them rather than traced: a
    /// set that sees every device a packet enters but not the transmit tracepoint
    /// (`correlate::transmits`).
    pub fn infers_transmits(self) -> bool {
        self.includes(HopKind::Receive) && !self.includes(HopKind::Transmit)
    }

    /// Whether the set has function hooks, the ones a backend attaches: only the path.
    pub fn has_function_hooks(self) -> bool {
        FUNCTION_HOOKS.iter().any(|f| self.includes(f.kind))
    }
}

impl fmt::Display for HookSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Path => "path",
            Self::Receive => "receive",
            Self::Drops => "drops",
        })
    }
}

impl std::str::FromStr for HookSet {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        match s {
            "path" => Ok(Self::Path),
            "receive" => Ok(Self::Receive),
            "drops" => Ok(Self::Drops),
            other => Err(NameError::HookSet(other.to_owned())),
        }
    }
}

/// How one program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    TpBtf,
    FEntry,
    FExit,
    KProbe,
    KRetProbe,
}

impl Attach {
    pub fn name(self) -> &'static str {
        match self {
            Self::TpBtf => "tp_btf",
            Self::FEntry => "fentry",
            Self::FExit => "fexit",
            Self::KProbe => "kprobe",
            Self::KRetProbe => "kretprobe",
        }
    }
}

/// A program of the object and how it attaches.
#[derive(Clone, Copy, Debug)]
pub struct Program {
    pub attach: Attach,
    pub name: &'static str,
}

/// A tracepoint every backend attaches.
#[derive(Clone, Copy, Debug)]
pub struct TracepointHook {
    pub program: &'static str,
    pub tracepoint: &'static str,
    pub kind: HopKind,
    /// The program reads this many tracepoint arguments ...
    pub min_args: u32,
    /// ... and is meant for kernels with at most this many (a variant for other kernels
    /// stands in another row).
    pub max_args: u32,
    /// Tracing is pointless without it.
    pub required: bool,
}

/// Tracepoints, attached whatever the backend. Rows for one tracepoint with different
/// argument counts are versions for different kernels; the loader picks the one that fits.
pub const TRACEPOINTS: &[TracepointHook] = &[
    TracepointHook {
        program: "tp_netif_receive_skb",
        tracepoint: "netif_receive_skb",
        kind: HopKind::Receive,
        min_args: 1,
        max_args: u32::MAX,
        required: true,
    },
    TracepointHook {
        program: "tp_net_dev_start_xmit",
        tracepoint: "net_dev_start_xmit",
        kind: HopKind::Transmit,
        min_args: 2,
        max_args: u32::MAX,
        required: true,
    },
    TracepointHook {
        program: "tp_kfree_skb",
        tracepoint: "kfree_skb",
        kind: HopKind::Drop,
        min_args: 3,
        max_args: u32::MAX,
        required: true,
    },
    TracepointHook {
        program: "tp_consume_skb",
        tracepoint: "consume_skb",
        kind: HopKind::Consume,
        min_args: 2,
        max_args: u32::MAX,
        required: false,
    },
    TracepointHook {
        program: "tp_consume_skb_noloc",
        tracepoint: "consume_skb",
        kind: HopKind::Consume,
        min_args: 1,
        max_args: 1,
        required: false,
    },
];

/// What a function hook needs beyond the function itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    Nothing,
    /// `nf_hook_state` offsets.
    NfHookState,
}

/// A kernel function hook point and the programs each backend attaches there.
#[derive(Clone, Copy, Debug)]
pub struct FunctionHook {
    pub function: &'static str,
    pub kind: HopKind,
    pub fentry: &'static [Program],
    pub kprobe: &'static [Program],
    /// Without it the backend is not worth choosing (nf_hook_slow is why fentry/kprobe exist).
    pub required: bool,
    pub needs: Needs,
    /// What it shows, for docs and `--help`.
    pub shows: &'static str,
}

pub const FUNCTION_HOOKS: &[FunctionHook] = &[
    FunctionHook {
        function: "nf_hook_slow",
        kind: HopKind::NetfilterHook,
        fentry: &[
            Program {
                attach: Attach::FEntry,
                name: "fentry_nf_hook_slow",
            },
            Program {
                attach: Attach::FExit,
                name: "fexit_nf_hook_slow",
            },
        ],
        kprobe: &[
            Program {
                attach: Attach::KProbe,
                name: "kprobe_nf_hook_slow",
            },
            Program {
                attach: Attach::KRetProbe,
                name: "kretprobe_nf_hook_slow",
            },
        ],
        required: true,
        needs: Needs::NfHookState,
        shows: "netfilter hook (family, PREROUTING..POSTROUTING) and its verdict",
    },
    FunctionHook {
        function: "br_forward",
        kind: HopKind::BridgeForward,
        fentry: &[Program {
            attach: Attach::FEntry,
            name: "fentry_br_forward",
        }],
        kprobe: &[Program {
            attach: Attach::KProbe,
            name: "kprobe_br_forward",
        }],
        required: false,
        needs: Needs::Nothing,
        shows: "bridge forwarding: ingress and egress port",
    },
    FunctionHook {
        function: "veth_xmit",
        kind: HopKind::VethTransmit,
        fentry: &[Program {
            attach: Attach::FEntry,
            name: "fentry_veth_xmit",
        }],
        kprobe: &[Program {
            attach: Attach::KProbe,
            name: "kprobe_veth_xmit",
        }],
        required: false,
        needs: Needs::Nothing,
        shows: "veth transmit to its peer (peer ifindex and namespace)",
    },
];

impl FunctionHook {
    pub fn programs(&self, backend: Backend) -> &'static [Program] {
        match backend {
            Backend::Fentry => self.fentry,
            Backend::Kprobe => self.kprobe,
            Backend::Tracepoint => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names_are_distinct_and_versions_do_not_overlap() {
        let mut names: Vec<&str> = TRACEPOINTS.iter().map(|h| h.program).collect();
        for f in FUNCTION_HOOKS {
            names.extend(f.fentry.iter().chain(f.kprobe).map(|p| p.name));
        }
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
        // For any argument count at most one version of a tracepoint applies.
        for args in 0..8 {
            for tp in ["consume_skb", "kfree_skb"] {
                let fits = TRACEPOINTS
                    .iter()
                    .filter(|h| h.tracepoint == tp && (h.min_args..=h.max_args).contains(&args))
                    .count();
                assert!(fits <= 1, "{tp} with {args} args: {fits} programs");
            }
        }
    }

    #[test]
    fn the_drops_set_is_kfree_skb_alone() {
        let tps: Vec<&str> = TRACEPOINTS
            .iter()
            .filter(|h| HookSet::Drops.includes(h.kind))
            .map(|h| h.tracepoint)
            .collect();
        assert_eq!(tps, ["kfree_skb"]);
        assert!(
            FUNCTION_HOOKS
                .iter()
                .all(|f| !HookSet::Drops.includes(f.kind))
        );
        assert!(TRACEPOINTS.iter().all(|h| HookSet::Path.includes(h.kind)));
        assert_eq!("drops".parse::<HookSet>(), Ok(HookSet::Drops));
        assert!(
            "drop"
                .parse::<HookSet>()
                .unwrap_err()
                .to_string()
                .contains("path (every hop")
        );
    }

    #[test]
    fn the_receive_set_leaves_out_transmits_and_function_hooks() {
        let mut tps: Vec<&str> = TRACEPOINTS
            .iter()
            .filter(|h| HookSet::Receive.includes(h.kind))
            .map(|h| h.tracepoint)
            .collect();
        tps.dedup();
        assert_eq!(tps, ["netif_receive_skb", "kfree_skb", "consume_skb"]);
        assert!(HookSet::Path.has_function_hooks());
        assert!(!HookSet::Receive.has_function_hooks());
        assert!(!HookSet::Drops.has_function_hooks());
        assert_eq!("receive".parse::<HookSet>(), Ok(HookSet::Receive));
        assert_eq!(HookSet::Receive.to_string(), "receive");
    }

    #[test]
    fn backends_parse_and_every_function_hook_has_both_kinds_of_program() {
        assert_eq!("kprobe".parse::<Backend>(), Ok(Backend::Kprobe));
        assert!("kprobes".parse::<Backend>().is_err());
        for f in FUNCTION_HOOKS {
            assert!(
                !f.fentry.is_empty() && !f.kprobe.is_empty(),
                "{}",
                f.function
            );
        }
    }
}
