//! Loads the embedded kernel object, hands it the filter and the running kernel's offsets, and
//! attaches every hook point of the chosen backend. Links are owned by the returned [`Probes`]:
//! dropping it (or the process dying) detaches everything; nothing is pinned.

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
};
use tracer_common::{Filter, KernelOffsets, counter};

use super::{
    Backend, DropReasons, HookPoint,
    btf::{Btf, BtfError, KERNEL_BTF},
    hooks_for,
    offsets::{self, OffsetError},
};

/// The kernel object built by `build.rs` (aya-build) from `tracer-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "pathtrace needs root, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN, to load eBPF programs \
         (run it with sudo)"
    )]
    Privileges,
    #[error("kernel BTF: {0}")]
    Btf(#[from] BtfError),
    #[error("kernel BTF at {KERNEL_BTF}: {0}")]
    AyaBtf(#[from] aya::BtfError),
    #[error("reading kernel struct offsets: {0}")]
    Offsets(#[from] OffsetError),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object has no program `{0}` (stale build?)")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map `{0}` (stale build?)")]
    MissingMap(&'static str),
    #[error("this kernel has no `{target}` hook for the {backend} backend: {reason}")]
    NoHook {
        backend: Backend,
        target: &'static str,
        reason: String,
    },
    #[error("{what}: {source}")]
    Program {
        what: String,
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
}

/// Sizes of the kernel-side tables.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSizes {
    /// Ring buffer bytes (a power of two multiple of the page size).
    pub ring_bytes: u32,
    /// Tracked skbs remembered at once (LRU).
    pub tracked_skbs: u32,
}

impl Default for ProbeSizes {
    fn default() -> Self {
        Self {
            ring_bytes: 4 << 20,
            tracked_skbs: 16384,
        }
    }
}

/// Loaded and attached programs, their ring buffer and counters.
pub struct Probes {
    ebpf: Ebpf,
    pub backend: Backend,
    /// The tracepoints/functions attached, in table order.
    pub attached: Vec<&'static str>,
    /// Optional hooks this kernel lacks (tracing goes on without their detail).
    pub skipped: Vec<(&'static str, String)>,
    pub drop_reasons: DropReasons,
    pub offsets: KernelOffsets,
}

/// Kernel facts learnt from BTF once per run: offsets for the programs, names for userspace.
pub struct KernelFacts {
    pub btf: Btf,
    pub offsets: KernelOffsets,
    pub drop_reasons: DropReasons,
}

impl KernelFacts {
    pub fn read() -> Result<Self, ProbeError> {
        let mut btf = Btf::from_kernel()?;
        let offsets = offsets::from_btf(&mut btf)?;
        let drop_reasons = DropReasons::from_btf(&mut btf)?;
        Ok(Self {
            btf,
            offsets,
            drop_reasons,
        })
    }
}

impl Probes {
    /// Loads the programs with `filter`, attaches the backend's hooks, and returns once every
    /// required hook is attached.
    pub fn attach(filter: Filter, sizes: ProbeSizes, backend: Backend) -> Result<Self, ProbeError> {
        check_privileges()?;
        let KernelFacts {
            mut btf,
            offsets,
            drop_reasons,
        } = KernelFacts::read()?;
        let aya_btf = aya::Btf::from_sys_fs()?;
        raise_memlock_limit();
        let mut ebpf =
            EbpfLoader::new()
                .btf(Some(&aya_btf))
                .override_global("FILTER", &filter, true)
                .override_global("OFFSETS", &offsets, true)
                .map_max_entries("EVENTS", sizes.ring_bytes)
                .map_max_entries("TRACKED", sizes.tracked_skbs)
                .load(OBJECT)
                .map_err(|e| match &e {
                    aya::EbpfError::MapError(aya::maps::MapError::CreateError {
                        io_error, ..
                    }) if io_error.raw_os_error() == Some(libc::EPERM) => ProbeError::Privileges,
                    _ => ProbeError::Load(e),
                })?;

        let mut attached = Vec::new();
        let mut skipped = Vec::new();
        for hook in hooks_for(backend) {
            match attach_one(&mut ebpf, &mut btf, &aya_btf, hook) {
                Ok(()) => attached.push(hook.target),
                Err(e @ ProbeError::NoHook { .. }) if !hook.required => {
                    tracing::info!("{e}; continuing without it");
                    skipped.push((hook.target, e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Self {
            ebpf,
            backend,
            attached,
            skipped,
            drop_reasons,
            offsets,
        })
    }

    /// Takes the ring buffer for the reader. Call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(ProbeError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            name: "EVENTS",
            source,
        })
    }

    /// Kernel-side counters summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or(ProbeError::MissingMap("COUNTERS"))?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| ProbeError::Map {
                name: "COUNTERS",
                source,
            })?;
        let sum = |index: u32| -> Result<u64, ProbeError> {
            let values = array.get(&index, 0).map_err(|source| ProbeError::Map {
                name: "COUNTERS",
                source,
            })?;
            Ok(values.iter().sum())
        };
        Ok(KernelCounters {
            emitted: sum(counter::EMITTED)?,
            lost: sum(counter::LOST)?,
            track_failed: sum(counter::TRACK_FAILED)?,
        })
    }
}

/// Totals of the per-CPU counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounters {
    /// Events written to the ring buffer.
    pub emitted: u64,
    /// Events the kernel could not write because the ring buffer was full.
    pub lost: u64,
    /// Matching skbs the tracked-skb map refused (they are traced only where they match).
    pub track_failed: u64,
}

fn attach_one(
    ebpf: &mut Ebpf,
    btf: &mut Btf,
    aya_btf: &aya::Btf,
    hook: &HookPoint,
) -> Result<(), ProbeError> {
    match hook.backend {
        Backend::Tracepoint => {
            if !btf.has_typedef(&format!("btf_trace_{}", hook.target)) {
                return Err(ProbeError::NoHook {
                    backend: hook.backend,
                    target: hook.target,
                    reason: format!("BTF has no btf_trace_{}", hook.target),
                });
            }
            let program: &mut BtfTracePoint = ebpf
                .program_mut(hook.program)
                .ok_or(ProbeError::MissingProgram(hook.program))?
                .try_into()
                .map_err(|source| ProbeError::Program {
                    what: hook.program.to_owned(),
                    source,
                })?;
            program
                .load(hook.target, aya_btf)
                .map_err(|source| ProbeError::Program {
                    what: format!("loading {} (tp_btf/{})", hook.program, hook.target),
                    source,
                })?;
            program.attach().map_err(|source| ProbeError::Program {
                what: format!("attaching tp_btf/{}", hook.target),
                source,
            })?;
        }
    }
    tracing::debug!(target = hook.target, backend = %hook.backend, "attached");
    Ok(())
}

/// Fails early with a plain message instead of an EPERM from deep inside the loader.
fn check_privileges() -> Result<(), ProbeError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    // CAP_BPF (39), CAP_PERFMON (38) and CAP_NET_ADMIN (12) in the effective set.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let needed = (1u64 << 39) | (1 << 38) | (1 << 12);
    if eff & needed == needed {
        Ok(())
    } else {
        Err(ProbeError::Privileges)
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; raising our own limit changes
/// nothing on the host.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}
