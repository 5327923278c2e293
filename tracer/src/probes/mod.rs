//! Where pathtrace hooks into the kernel: the hook-point table, the BTF facts the programs
//! need, and the loader.
//!
//! A hook point is a row in [`HOOKS`]; each backend (tp_btf today; kprobe and fentry with the
//! kernel lab) contributes rows, and every row's program emits the same [`tracer_common::HopEvent`],
//! so nothing downstream knows which backend ran.

pub mod btf;
pub mod drop_reason;
pub mod loader;
pub mod offsets;

use std::fmt;

use tracer_common::HopKind;

pub use drop_reason::DropReasons;
pub use loader::{ProbeError, Probes};

/// How a program attaches to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// BTF-typed tracepoints (`tp_btf`): stable kernel ABI, available with kernel BTF, no
    /// kprobes needed.
    Tracepoint,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tracepoint => "tracepoint",
        })
    }
}

/// One place in the kernel a program attaches to.
#[derive(Clone, Copy, Debug)]
pub struct HookPoint {
    pub backend: Backend,
    /// Program name in the object (the entry point's function name).
    pub program: &'static str,
    /// What it attaches to: a tracepoint name for tp_btf.
    pub target: &'static str,
    /// The hop kind its events carry.
    pub kind: HopKind,
    /// Whether tracing can go on without it (a kernel that lacks it loses detail, not function).
    pub required: bool,
}

/// Every hook point pathtrace knows, by backend.
pub const HOOKS: &[HookPoint] = &[
    HookPoint {
        backend: Backend::Tracepoint,
        program: "tp_netif_receive_skb",
        target: "netif_receive_skb",
        kind: HopKind::Receive,
        required: true,
    },
    HookPoint {
        backend: Backend::Tracepoint,
        program: "tp_net_dev_start_xmit",
        target: "net_dev_start_xmit",
        kind: HopKind::Transmit,
        required: true,
    },
    HookPoint {
        backend: Backend::Tracepoint,
        program: "tp_kfree_skb",
        target: "kfree_skb",
        kind: HopKind::Drop,
        required: true,
    },
    HookPoint {
        backend: Backend::Tracepoint,
        program: "tp_consume_skb",
        target: "consume_skb",
        kind: HopKind::Consume,
        required: false,
    },
];

/// The rows of one backend.
pub fn hooks_for(backend: Backend) -> impl Iterator<Item = &'static HookPoint> {
    HOOKS.iter().filter(move |h| h.backend == backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tracepoint_row_names_a_distinct_program() {
        let rows: Vec<_> = hooks_for(Backend::Tracepoint).collect();
        assert!(rows.iter().any(|h| h.kind == HopKind::Drop && h.required));
        let mut names: Vec<_> = rows.iter().map(|h| h.program).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), rows.len());
    }
}
