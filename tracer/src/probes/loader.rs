//! Loads the embedded kernel object, hands it the filter and the running kernel's offsets, and
//! attaches every hook point of the chosen backend. Links are owned by the returned [`Probes`]:
//! dropping it (or the process dying) detaches everything; nothing is pinned.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{BtfTracePoint, FEntry, FExit, KProbe},
};
use tracer_common::{
    Filter, KernelOffsets,
    config::{FlowKey, have},
    counter,
    flood::{DropKey, SummaryCount, SummaryKey},
};

use super::{
    Attach, Backend, DropReasons, FUNCTION_HOOKS, FunctionHook, HookSet, Needs, Program,
    TRACEPOINTS, TracepointHook,
    btf::{Btf, BtfError, KERNEL_BTF},
    kfunc::{self, KfuncError, Kfuncs},
    offsets::{self, OffsetError},
};

/// The kernel object built by `build.rs` (aya-build) from `tracer-ebpf`.
pub(super) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

/// `KernelFacts::packet_reads` when headers are loaded directly.
pub const DIRECT_READS: &str = "direct loads (bpf_rdonly_cast)";

/// Present when the kernel can create kprobes through perf (CONFIG_KPROBES).
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

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
    #[error("linking the eBPF object's kfunc calls: {0}")]
    Kfunc(#[from] KfuncError),
    #[error("the eBPF object has no program `{0}` (stale build?)")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map `{0}` (stale build?)")]
    MissingMap(&'static str),
    #[error("this kernel has no `{target}` tracepoint usable by pathtrace: {reason}")]
    NoHook {
        target: &'static str,
        reason: String,
    },
    #[error("the {backend} backend is not available on this kernel: {reason}")]
    BackendUnavailable { backend: Backend, reason: String },
    #[error("no backend could attach: {0}")]
    NoBackend(String),
    #[error(
        "--backend {backend} chooses how function hooks attach, and --hooks {hooks} has none (its hooks are tracepoints): leave out one of the two"
    )]
    TracepointsOnly { hooks: HookSet, backend: Backend },
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

/// Which backend to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// fentry, then kprobe, then tracepoints; the first that attaches wins.
    #[default]
    Auto,
    Only(Backend),
}

impl std::str::FromStr for BackendChoice {
    type Err = super::NameError;
    fn from_str(s: &str) -> Result<Self, super::NameError> {
        if s == "auto" {
            Ok(Self::Auto)
        } else {
            s.parse().map(Self::Only)
        }
    }
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
    /// The hook set attached.
    pub hooks: HookSet,
    /// Why this backend (what auto tried, or that it was asked for).
    pub backend_reason: String,
    /// Hook targets attached, in table order (`netif_receive_skb`, `nf_hook_slow`, ...).
    pub attached: Vec<&'static str>,
    /// The same as `attach:target` (`tp_btf:kfree_skb`, `fexit:nf_hook_slow`, ...).
    pub attachments: Vec<String>,
    /// Optional hooks this kernel lacks, with why (tracing goes on without their detail).
    pub skipped: Vec<(&'static str, String)>,
    pub drop_reasons: DropReasons,
    pub offsets: KernelOffsets,
    /// How the programs read packet headers (see `KernelFacts::packet_reads`).
    pub packet_reads: String,
    /// Whether the programs summarise floods ([`summarises`]).
    pub floods: bool,
}

/// Kernel facts learnt from BTF once per run: offsets for the programs, names for userspace.
pub struct KernelFacts {
    pub btf: Btf,
    pub offsets: KernelOffsets,
    pub drop_reasons: DropReasons,
    pub kfuncs: Kfuncs,
    /// How the programs read packet headers, and why not directly when they cannot.
    pub packet_reads: String,
}

impl KernelFacts {
    pub fn read() -> Result<Self, ProbeError> {
        let mut btf = Btf::from_kernel()?;
        let kfuncs = Kfuncs::from_btf(&mut btf);
        let mut offsets = offsets::from_btf(&mut btf)?;
        let packet_reads = match offsets::use_header_types(&mut offsets, &mut btf, &kfuncs) {
            Ok(()) => DIRECT_READS.to_owned(),
            Err(why) => format!("bpf_probe_read_kernel ({why})"),
        };
        let drop_reasons = DropReasons::from_btf(&mut btf)?;
        Ok(Self {
            btf,
            offsets,
            drop_reasons,
            kfuncs,
            packet_reads,
        })
    }

    /// Stops using kfuncs: the programs fall back to helper calls.
    fn drop_kfuncs(&mut self, why: &str) {
        self.kfuncs = self.kfuncs.without_any();
        self.offsets.have &= !have::RDONLY_CAST;
        self.packet_reads =
            format!("bpf_probe_read_kernel (the verifier refused bpf_rdonly_cast: {why})");
    }
}

/// Everything one attach attempt needs.
struct Attempt<'a> {
    filter: Filter,
    sizes: ProbeSizes,
    hooks: HookSet,
    facts: &'a mut KernelFacts,
    aya_btf: &'a aya::Btf,
}

/// Refuses a set of tracepoints alone (`--hooks receive|drops`) with a function backend: the
/// set has no function hook to attach.
pub fn compatible(hooks: HookSet, choice: BackendChoice) -> Result<(), ProbeError> {
    match choice {
        BackendChoice::Only(backend)
            if backend != Backend::Tracepoint && !hooks.has_function_hooks() =>
        {
            Err(ProbeError::TracepointsOnly { hooks, backend })
        }
        _ => Ok(()),
    }
}

impl Probes {
    /// Loads the programs with `filter` and attaches the chosen backend's hook points of the
    /// set `hooks` (`None`: the backend's [`HookSet::trace_default`]); returns once every
    /// required hook is attached.
    pub fn attach(
        filter: Filter,
        sizes: ProbeSizes,
        choice: BackendChoice,
        hooks: Option<HookSet>,
    ) -> Result<Self, ProbeError> {
        if let Some(hooks) = hooks {
            compatible(hooks, choice)?;
        }
        let for_backend = |backend| hooks.unwrap_or(HookSet::trace_default(backend));
        check_privileges()?;
        let mut facts = KernelFacts::read()?;
        let aya_btf = aya::Btf::from_sys_fs()?;
        raise_memlock_limit();
        let mut attempt = Attempt {
            filter,
            sizes,
            hooks: hooks.unwrap_or_default(),
            facts: &mut facts,
            aya_btf: &aya_btf,
        };
        if let Some(hooks) = hooks.filter(|h| !h.has_function_hooks()) {
            // Every hook of the set is a tracepoint: there is no backend to choose.
            let mut p = attempt.run(Backend::Tracepoint)?;
            p.backend_reason = match hooks {
                HookSet::Drops => "--hooks drops: only where packets are dropped",
                _ => "--hooks receive: every device a packet enters, where it is taken or dropped",
            }
            .into();
            return Ok(p);
        }
        match choice {
            BackendChoice::Only(backend) => {
                attempt.hooks = for_backend(backend);
                let mut p = attempt.run(backend)?;
                p.backend_reason = format!("--backend {backend}");
                Ok(p)
            }
            BackendChoice::Auto => {
                let mut refused = Vec::new();
                for backend in Backend::PREFERENCE {
                    attempt.hooks = for_backend(backend);
                    match attempt.run(backend) {
                        Ok(mut p) => {
                            p.backend_reason = if refused.is_empty() {
                                format!("auto: {backend} attached")
                            } else {
                                format!("auto: chose {backend} because {}", refused.join("; "))
                            };
                            return Ok(p);
                        }
                        Err(ProbeError::BackendUnavailable { backend, reason }) => {
                            tracing::info!("{backend} backend unavailable: {reason}");
                            refused.push(format!("{backend} is unavailable ({reason})"));
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(ProbeError::NoBackend(refused.join("; ")))
            }
        }
    }

    /// Replaces the kernel filter in place: nothing is detached, packets already tracked stay
    /// tracked (a daemon's SIGHUP).
    pub fn set_filter(&mut self, filter: Filter) -> Result<(), ProbeError> {
        write_filter(&mut self.ebpf, filter)
    }

    /// Tells the kernel programs whether the reader sleeps until woken: while it does, an event
    /// wakes it; while it polls, only a backlog crossing `WAKEUP_BYTES` does (`hop::emit`).
    pub fn set_reader_asleep(&mut self, asleep: bool) -> Result<(), ProbeError> {
        write_entry(&mut self.ebpf, "READER", u32::from(asleep))
    }

    /// Takes the ring buffer for the reader. Call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        self.take("EVENTS")
    }

    /// Takes the map of drops' kernel stacks (`--stack`) for the resolver, which reads each id
    /// once. Call once.
    pub fn take_stacks(&mut self) -> Result<StackTraceMap<MapData>, ProbeError> {
        self.take("STACKS")
    }

    /// Takes map `name` out of the object, typed as `T`.
    fn take<T>(&mut self, name: &'static str) -> Result<T, ProbeError>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(ProbeError::MissingMap(name))?;
        T::try_from(map).map_err(|source| ProbeError::Map { name, source })
    }

    /// Deletes the replies whose time ran out (`now_ns`: CLOCK_MONOTONIC, the kernel's
    /// clock) and, when none is left, tells the programs to stop looking (`REPLYING`): a
    /// packet failing the filter then costs no lookup. Returns how many flows' replies are
    /// followed. The flag is cleared before the map is read again, so an insert racing the
    /// sweep (entry first, flag second in the kernel) is never left unflagged.
    pub fn sweep_replies(&mut self, now_ns: u64) -> Result<usize, ProbeError> {
        let map = |source| ProbeError::Map {
            name: "REPLIES",
            source,
        };
        let live = {
            let replies: aya::maps::HashMap<&mut MapData, FlowKey, u64> =
                aya::maps::HashMap::try_from(
                    self.ebpf
                        .map_mut("REPLIES")
                        .ok_or(ProbeError::MissingMap("REPLIES"))?,
                )
                .map_err(map)?;
            let mut expired = Vec::new();
            let mut live = 0usize;
            for entry in replies.iter() {
                let (key, until) = entry.map_err(map)?;
                if until <= now_ns {
                    expired.push(key);
                } else {
                    live += 1;
                }
            }
            let mut replies = replies;
            for key in &expired {
                // Gone already (LRU, or the kernel refreshed and it expired again): fine.
                let _ = replies.remove(key);
            }
            live
        };
        if live == 0 {
            write_entry(&mut self.ebpf, "REPLYING", 0u32)?;
            let replies: aya::maps::HashMap<&MapData, FlowKey, u64> = aya::maps::HashMap::try_from(
                self.ebpf
                    .map("REPLIES")
                    .ok_or(ProbeError::MissingMap("REPLIES"))?,
            )
            .map_err(map)?;
            if replies.keys().next().is_some() {
                write_entry(&mut self.ebpf, "REPLYING", 1u32)?;
                return Ok(1);
            }
        }
        Ok(live)
    }

    /// Kernel-side counters summed over CPUs.
    /// Reads every flood summary (`tracer_common::flood`): cumulative counts per flow and way
    /// its quiet packets ended. Entries idle for `forget_after_ns` before `now_ns` are deleted
    /// once read (the kernel's map is not LRU: it never drops a count on its own); a packet
    /// counted between the read and the delete would be lost, which needs a flow to come back
    /// after that long in the microseconds between the two.
    pub fn read_summaries(
        &mut self,
        now_ns: u64,
        forget_after_ns: u64,
    ) -> Result<Vec<(SummaryKey, SummaryCount)>, ProbeError> {
        let map = |source| ProbeError::Map {
            name: "SUMMARIES",
            source,
        };
        let mut summaries: aya::maps::HashMap<&mut MapData, SummaryKey, SummaryCount> =
            aya::maps::HashMap::try_from(
                self.ebpf
                    .map_mut("SUMMARIES")
                    .ok_or(ProbeError::MissingMap("SUMMARIES"))?,
            )
            .map_err(map)?;
        let mut all = Vec::new();
        for entry in summaries.iter() {
            all.push(entry.map_err(map)?);
        }
        for (key, count) in &all {
            let last = count.last_ns.max(count.first_ns);
            if now_ns.saturating_sub(last) >= forget_after_ns {
                let _ = summaries.remove(key);
            }
        }
        Ok(all)
    }

    /// Every drop the kernel counted, by reason, place, device and namespace (cumulative).
    pub fn read_drops(&self) -> Result<Vec<(DropKey, u64)>, ProbeError> {
        let map = |source| ProbeError::Map {
            name: "DROPS",
            source,
        };
        let drops: aya::maps::HashMap<&MapData, DropKey, u64> = aya::maps::HashMap::try_from(
            self.ebpf
                .map("DROPS")
                .ok_or(ProbeError::MissingMap("DROPS"))?,
        )
        .map_err(map)?;
        drops.iter().map(|e| e.map_err(map)).collect()
    }

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
            summarised: sum(counter::SUMMARISED)?,
            uncounted: sum(counter::UNCOUNTED)?,
            resumed: sum(counter::RESUMED)?,
            drops_uncounted: sum(counter::DROPS_UNCOUNTED)?,
        })
    }
}

/// Whether `backend`'s programs summarise floods. Only the tracepoint backend's do: the
/// function backends' programs (kprobes read every field through a helper) already take a 6.1
/// verifier to 0.3–0.4 M of its million instructions without it, and several times as long
/// to load under the VM lab's emulation, so they trace every packet.
pub fn summarises(backend: Backend) -> bool {
    backend == Backend::Tracepoint
}

/// Pending bytes at which an event wakes the reader: an eighth of the ring, so a reader that
/// drains on its timer (`trace::DRAIN_EVERY`) is rarely woken, and one that fell behind is woken
/// long before the ring is full.
fn wakeup_bytes(ring_bytes: u32) -> u64 {
    u64::from(ring_bytes / 8)
}

impl Attempt<'_> {
    /// `floods`: the summarising is verified and runs (`FLOODS`).
    fn load(&self, floods: bool) -> Result<Ebpf, ProbeError> {
        let object = kfunc::link(OBJECT, &self.facts.kfuncs)?;
        tracing::debug!(
            linked = object.linked,
            stubbed = object.stubbed,
            "kfunc calls linked"
        );
        EbpfLoader::new()
            .btf(Some(self.aya_btf))
            .override_global("OFFSETS", &self.facts.offsets, true)
            .override_global("WAKEUP_BYTES", &wakeup_bytes(self.sizes.ring_bytes), true)
            .override_global("FLOODS", &u32::from(floods), true)
            .map_max_entries("EVENTS", self.sizes.ring_bytes)
            .map_max_entries("TRACKED", self.sizes.tracked_skbs)
            .load(object.bytes())
            .map_err(|e| match &e {
                aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                    if io_error.raw_os_error() == Some(libc::EPERM) =>
                {
                    ProbeError::Privileges
                }
                _ => ProbeError::Load(e),
            })
    }

    /// Loads and attaches `backend`; if the verifier refuses the kfunc calls (a kernel that has
    /// the function but not for these programs), once more with helper calls instead.
    fn run(&mut self, backend: Backend) -> Result<Probes, ProbeError> {
        match self.run_once(backend) {
            Err(e) if self.facts.offsets.have & have::RDONLY_CAST != 0 && kfunc_refused(&e) => {
                tracing::warn!(
                    "the kernel refused bpf_rdonly_cast in pathtrace's programs, reading packet \
                     headers with bpf_probe_read_kernel instead: {e}"
                );
                self.facts.drop_kfuncs(&e.to_string());
                self.run_once(backend)
            }
            r => r,
        }
    }

    fn run_once(&mut self, backend: Backend) -> Result<Probes, ProbeError> {
        let kprobes = Path::new(KPROBE_PMU).exists();
        if backend == Backend::Kprobe && !kprobes {
            return Err(ProbeError::BackendUnavailable {
                backend,
                reason: format!(
                    "the kernel has no kprobes (CONFIG_KPROBES off: {KPROBE_PMU} is missing)"
                ),
            });
        }
        let floods = summarises(backend);
        let mut ebpf = self.load(floods)?;
        write_filter(&mut ebpf, self.filter)?;
        // The function hooks first: a kernel that refuses them (fentry's EPERM) says so before
        // the tracepoint programs are verified for nothing (3 s of an auto start on 6.18).
        let mut functions = Attached::default();
        let hooks = self.hooks;
        for hook in FUNCTION_HOOKS.iter().filter(|h| hooks.includes(h.kind)) {
            self.attach_function(&mut ebpf, &mut functions, hook, backend, kprobes)?;
        }
        let mut done = Attached::default();
        self.attach_tracepoints(&mut ebpf, &mut done)?;
        done.then(functions);
        Ok(Probes {
            ebpf,
            backend,
            hooks: self.hooks,
            backend_reason: String::new(),
            attached: done.targets,
            attachments: done.attachments,
            skipped: done.skipped,
            drop_reasons: self.facts.drop_reasons.clone(),
            offsets: self.facts.offsets,
            packet_reads: self.facts.packet_reads.clone(),
            floods,
        })
    }

    fn attach_tracepoints(
        &mut self,
        ebpf: &mut Ebpf,
        probes: &mut Attached,
    ) -> Result<(), ProbeError> {
        let hooks = self.hooks;
        let in_set = |h: &&TracepointHook| hooks.includes(h.kind);
        for hook in TRACEPOINTS.iter().filter(in_set) {
            let Some(args) = self.facts.btf.tracepoint_args(hook.tracepoint) else {
                let reason = format!("BTF has no btf_trace_{}", hook.tracepoint);
                if hook.required {
                    return Err(ProbeError::NoHook {
                        target: hook.tracepoint,
                        reason,
                    });
                }
                if !probes.skipped.iter().any(|(t, _)| *t == hook.tracepoint) {
                    probes.skipped.push((hook.tracepoint, reason));
                }
                continue;
            };
            if !(hook.min_args..=hook.max_args).contains(&args) {
                continue; // a version of this program for other kernels
            }
            let program = Program {
                attach: Attach::TpBtf,
                name: hook.program,
            };
            attach_program(ebpf, self.aya_btf, program, hook.tracepoint)?;
            probes.targets.push(hook.tracepoint);
            probes
                .attachments
                .push(format!("tp_btf:{}", hook.tracepoint));
        }
        for hook in TRACEPOINTS.iter().filter(in_set).filter(|h| h.required) {
            if !probes.targets.contains(&hook.tracepoint) {
                return Err(ProbeError::NoHook {
                    target: hook.tracepoint,
                    reason: "no program version matches its arguments on this kernel".into(),
                });
            }
        }
        Ok(())
    }

    fn attach_function(
        &mut self,
        ebpf: &mut Ebpf,
        probes: &mut Attached,
        hook: &'static FunctionHook,
        backend: Backend,
        kprobes: bool,
    ) -> Result<(), ProbeError> {
        if backend == Backend::Tracepoint {
            return Ok(());
        }
        let skip = |probes: &mut Attached, reason: String| -> Result<(), ProbeError> {
            if hook.required {
                return Err(ProbeError::BackendUnavailable { backend, reason });
            }
            tracing::info!(function = hook.function, "skipped: {reason}");
            probes.skipped.push((hook.function, reason));
            Ok(())
        };
        if hook.needs == Needs::NfHookState && self.facts.offsets.have & have::NF_HOOK_STATE == 0 {
            return skip(probes, "kernel BTF lacks struct nf_hook_state".into());
        }
        // aya attaches fentry only to vmlinux functions; module functions (bridge, veth on
        // most distributions) get kprobes when the kernel has them.
        let in_vmlinux = self.facts.btf.has_func(hook.function);
        let programs = match backend {
            Backend::Fentry if !in_vmlinux && kprobes => hook.kprobe,
            Backend::Fentry if !in_vmlinux => {
                return skip(
                    probes,
                    format!(
                        "{} is not in vmlinux BTF (module not loaded, or fentry on modules unsupported) and there are no kprobes",
                        hook.function
                    ),
                );
            }
            _ => hook.programs(backend),
        };
        for &program in programs {
            if let Err(e) = attach_program(ebpf, self.aya_btf, program, hook.function) {
                let reason = match refused_errno(&e) {
                    Some(libc::EPERM)
                        if matches!(program.attach, Attach::FEntry | Attach::FExit) =>
                    {
                        format!(
                            "the kernel refuses fentry/fexit programs ({}:{} load: EPERM)",
                            program.attach.name(),
                            hook.function
                        )
                    }
                    _ => format!("{}:{}: {e}", program.attach.name(), hook.function),
                };
                return skip(probes, reason);
            }
            probes
                .attachments
                .push(format!("{}:{}", program.attach.name(), hook.function));
        }
        probes.targets.push(hook.function);
        Ok(())
    }
}

fn write_filter(ebpf: &mut Ebpf, filter: Filter) -> Result<(), ProbeError> {
    write_entry(ebpf, "FILTERS", filter)
}

/// Writes entry 0 of the one-entry array map `name`.
fn write_entry<T: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    value: T,
) -> Result<(), ProbeError> {
    let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    let mut array: aya::maps::Array<&mut MapData, T> =
        aya::maps::Array::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
    array
        .set(0, value, 0)
        .map_err(|source| ProbeError::Map { name, source })
}

/// Whether the verifier refused a program for its kfunc calls, rather than for anything else:
/// only then is a load without them worth a second try.
fn kfunc_refused(e: &ProbeError) -> bool {
    match e {
        ProbeError::Program {
            source: aya::programs::ProgramError::LoadError { verifier_log, .. },
            ..
        } => {
            let log = verifier_log.to_string();
            log.contains("kernel function") || log.contains("kfunc")
        }
        _ => false,
    }
}

/// The errno behind a program load or attach failure, if any.
fn refused_errno(e: &ProbeError) -> Option<i32> {
    use aya::programs::ProgramError as P;
    match e {
        ProbeError::Program {
            source: P::LoadError { io_error, .. },
            ..
        } => io_error.raw_os_error(),
        ProbeError::Program {
            source: P::SyscallError(s),
            ..
        } => s.io_error.raw_os_error(),
        _ => None,
    }
}

/// What one attempt attached so far.
#[derive(Default)]
struct Attached {
    targets: Vec<&'static str>,
    attachments: Vec<String>,
    skipped: Vec<(&'static str, String)>,
}

impl Attached {
    /// `later`'s hooks after these, so a trace lists its hooks in the packet's order.
    fn then(&mut self, later: Attached) {
        self.targets.extend(later.targets);
        self.attachments.extend(later.attachments);
        self.skipped.extend(later.skipped);
    }
}

fn attach_program(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    program: Program,
    target: &str,
) -> Result<(), ProbeError> {
    let name = program.name;
    let prog = ebpf
        .program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?;
    let what = |verb: &str| format!("{verb} {name} ({}:{target})", program.attach.name());
    let err = |verb: &'static str| {
        move |source| ProbeError::Program {
            what: what(verb),
            source,
        }
    };
    match program.attach {
        Attach::TpBtf => {
            let p: &mut BtfTracePoint = prog.try_into().map_err(err("loading"))?;
            p.load(target, btf).map_err(err("loading"))?;
            p.attach().map_err(err("attaching"))?;
        }
        Attach::FEntry => {
            let p: &mut FEntry = prog.try_into().map_err(err("loading"))?;
            p.load(target, btf).map_err(err("loading"))?;
            p.attach().map_err(err("attaching"))?;
        }
        Attach::FExit => {
            let p: &mut FExit = prog.try_into().map_err(err("loading"))?;
            p.load(target, btf).map_err(err("loading"))?;
            p.attach().map_err(err("attaching"))?;
        }
        Attach::KProbe | Attach::KRetProbe => {
            let p: &mut KProbe = prog.try_into().map_err(err("loading"))?;
            p.load().map_err(err("loading"))?;
            p.attach(target, 0).map_err(err("attaching"))?;
        }
    }
    // The verifier's work per program: what a kernel or a change of the eBPF code costs in
    // load time (a 6.1 kernel walks several times what 6.18 does).
    let verified = ebpf
        .program(name)
        .and_then(|p| p.info().ok())
        .and_then(|info| info.verified_instruction_count());
    tracing::debug!(program = name, target, verified, "attached");
    Ok(())
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
    /// Packets of floods counted in the kernel instead of traced (`--packets-per-flow`).
    pub summarised: u64,
    /// Quiet packets the summary map could not count: reported like lost events.
    pub uncounted: u64,
    /// Quiet packets that parted from their flow's way and were traced in full from there.
    pub resumed: u64,
    /// Drops the per-key drop counter could not take (its map full).
    pub drops_uncounted: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(log: &str) -> ProbeError {
        ProbeError::Program {
            what: "loading tp_netif_receive_skb (tp_btf:netif_receive_skb)".into(),
            source: aya::programs::ProgramError::LoadError {
                io_error: std::io::Error::from_raw_os_error(libc::EACCES),
                verifier_log: aya_obj::VerifierLog::new(log.into()),
            },
        }
    }

    #[test]
    fn only_a_verifier_refusing_the_kfunc_calls_earns_a_load_without_them() {
        // What 6.x verifiers say when a kfunc may not be called from a program.
        assert!(kfunc_refused(&refused(
            "0: R1=ctx() R10=fp0\ncalling kernel function bpf_rdonly_cast is not allowed\n"
        )));
        assert!(kfunc_refused(&refused(
            "kfunc bpf_rdonly_cast#75123 reference has not been acquired before\n"
        )));
        // Anything else stays an error, reported as it is.
        assert!(!kfunc_refused(&refused(
            "R2 invalid mem access 'scalar'\nprocessed 12 insns\n"
        )));
        assert!(!kfunc_refused(&ProbeError::MissingProgram("tp_kfree_skb")));
    }
}
