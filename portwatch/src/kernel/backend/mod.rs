//! Backend choice, loading and attaching. One object file holds every backend's programs; a
//! backend is the set of hooks it attaches. `auto` tries them best first and says why it passed
//! over the others.

mod concurrent;
mod fentry;
mod kprobe;
#[cfg(test)]
mod object_tests;
mod spec;
mod tracefs;
mod tracepoint;

use std::collections::HashMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::Array,
    programs::{Program, ProgramError},
};
use portwatch_ebpf::{
    Offsets, Settings,
    programs::{self, FUNCTIONS},
};

pub use spec::{Choice, LoadSpec};

use crate::kernel::btf::{self, Btf, BtfError};

/// The kernel programs, compiled by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portwatch"));

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Fentry,
    Kprobe,
    Tracepoint,
}

impl Backend {
    /// Best first: fentry is the cheapest per call and sees everything, kprobes see the same
    /// functions at a higher cost, tracepoints work where neither does but see less.
    pub const PREFERENCE: [Backend; 3] = [Backend::Fentry, Backend::Kprobe, Backend::Tracepoint];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Fentry => "fentry",
            Backend::Kprobe => "kprobe",
            Backend::Tracepoint => "tracepoint",
        }
    }

    /// This backend's programs in the object's table.
    fn programs(self) -> impl Iterator<Item = &'static programs::Program> {
        programs::of(match self {
            Backend::Fentry => programs::Backend::Fentry,
            Backend::Kprobe => programs::Backend::Kprobe,
            Backend::Tracepoint => programs::Backend::Tracepoint,
        })
    }

    pub fn candidates(choice: Choice) -> Vec<Backend> {
        match choice {
            Choice::Auto => Self::PREFERENCE.to_vec(),
            Choice::Fentry => vec![Backend::Fentry],
            Choice::Kprobe => vec![Backend::Kprobe],
            Choice::Tracepoint => vec![Backend::Tracepoint],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("loading the eBPF object failed: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("setting up map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("{hook}: {reason}")]
    Hook { hook: String, reason: String },
    #[error("{0}")]
    Unsupported(String),
}

impl BackendError {
    /// Turns a program error into one readable line; the verifier log, when there is one, is
    /// printed whole only if PORTWATCH_VERIFIER_LOG is set.
    fn hook(hook: impl Into<String>, error: ProgramError) -> Self {
        let reason = match &error {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => {
                if std::env::var_os("PORTWATCH_VERIFIER_LOG").is_some() {
                    eprintln!("{verifier_log}");
                }
                format!("the kernel refused to load it ({io_error})")
            }
            ProgramError::SyscallError(syscall) => {
                format!("{} failed ({})", syscall.call, syscall.io_error)
            }
            other => chain(other),
        };
        Self::Hook {
            hook: hook.into(),
            reason,
        }
    }
}

/// A backend's program missing from the object, or of another program type than it expects.
fn lacks(program: &str) -> BackendError {
    BackendError::Unsupported(format!(
        "the object lacks the program {program} of this backend"
    ))
}

/// An error and its causes on one line: aya's outer errors often name only a path.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What every backend needs from the running kernel, read once.
pub struct Kernel {
    /// The field offsets, or why this kernel's BTF lacks one.
    offsets: Result<Offsets, String>,
    /// The functions the fentry and kprobe backends may hook that this kernel has, with their
    /// parameter counts (which fexit programs depend on).
    functions: HashMap<&'static str, u32>,
    /// aya's own parse, which program loading needs to find attach points.
    pub aya_btf: aya::Btf,
    /// The BTF aya parsed: the kernel's type ids, with only the attach points named.
    pub skeleton: Vec<u8>,
}

/// A function aya's feature probes look up in the kernel's BTF.
const AYA_PROBE_FUNCTION: &str = "bpf_fentry_test1";

impl Kernel {
    /// Whether this kernel's BTF locates a timer's handler and a TIME_WAIT socket's timer, by
    /// which the tracepoint backend recognises TIME_WAIT timers.
    fn time_wait_timers_located(&self) -> bool {
        self.offsets
            .as_ref()
            .is_ok_and(|offsets| offsets.timer_function != 0 && offsets.tw_timer != 0)
    }

    /// Takes what we need from our own BTF parse, then gives aya a skeleton of the kernel's BTF
    /// that holds only the attach points (see [`Btf::attach_points_only`]).
    pub fn read() -> Result<Self, BackendError> {
        let kernel_functions = || {
            FUNCTIONS
                .iter()
                .flat_map(|(_, candidates)| candidates.iter().copied())
        };
        let names: Vec<&'static str> = kernel_functions()
            .chain(tracepoint::BTF_TRACEPOINT_TYPES)
            .chain([AYA_PROBE_FUNCTION])
            .collect();
        let btf = Btf::from_sys_fs(&names)?;
        let functions: HashMap<&'static str, u32> = kernel_functions()
            .filter_map(|name| Some((name, btf.parameter_count(name).ok()?)))
            .collect();
        let offsets = btf::offsets(&btf).map_err(|err| err.to_string());
        let skeleton = btf.attach_points_only(&names);
        drop(btf);
        let aya_btf = aya::Btf::parse(&skeleton, aya::Endianness::Little)
            .map_err(|err| BackendError::Unsupported(format!("reading kernel BTF: {err}")))?;
        Ok(Self {
            offsets,
            functions,
            aya_btf,
            skeleton,
        })
    }
}

/// A backend with every hook attached. Dropping it detaches everything.
pub struct Attached {
    pub backend: Backend,
    pub ebpf: Ebpf,
    /// What this backend cannot see on this kernel beyond its documented limits.
    pub notes: Vec<String>,
}

/// Loads the object once with this kernel's offsets and the config's filters; backends then
/// load and attach their own programs from it.
fn load_object(kernel: &Kernel, spec: &LoadSpec) -> Result<Ebpf, BackendError> {
    let offsets = kernel.offsets.clone().map_err(BackendError::Unsupported)?;
    let mut ebpf = EbpfLoader::new()
        // No CO-RE relocations to apply: offsets come in as globals.
        .btf(None)
        .override_global("OFFSETS", &offsets, true)
        .override_global("SETTINGS", &settings(spec), true)
        // aya-log's level, frozen: 0 (off) turns every kernel log call into dead code.
        .override_global("AYA_LOG_LEVEL", &kernel_log_level(spec), true)
        .map_max_entries("EVENTS", spec.ring_bytes)
        .map_max_entries("LOST", crate::kernel::lost::slots())
        .load(OBJECT)?;
    if let Some(ports) = &spec.ports {
        let map = ebpf
            .map_mut("WATCHED_PORTS")
            .ok_or(BackendError::Unsupported(
                "the eBPF object has no WATCHED_PORTS map".into(),
            ))?;
        let mut watched: Array<_, u64> =
            Array::try_from(map).map_err(|err| BackendError::Map("WATCHED_PORTS", err))?;
        for (index, word) in ports.bitmap().into_iter().enumerate() {
            if word != 0 {
                watched
                    .set(index as u32, word, 0)
                    .map_err(|err| BackendError::Map("WATCHED_PORTS", err))?;
            }
        }
    }
    Ok(ebpf)
}

/// Attaches one backend's programs; on failure, unloads whatever of them it had loaded, so the
/// next backend starts from a clean object.
fn attach_programs(
    backend: Backend,
    ebpf: &mut Ebpf,
    kernel: &Kernel,
) -> Result<Vec<String>, BackendError> {
    let attached = match backend {
        Backend::Fentry => fentry::attach(ebpf, kernel).map(|()| Vec::new()),
        Backend::Kprobe => kprobe::attach(ebpf, kernel).map(|()| Vec::new()),
        Backend::Tracepoint => tracepoint::attach(ebpf, kernel),
    };
    if attached.is_err() {
        unload(ebpf, backend);
    }
    attached
}

fn unload(ebpf: &mut Ebpf, backend: Backend) {
    for name in backend.programs().map(|program| program.name) {
        // Programs that never loaded refuse to unload; nothing to undo for them.
        let _ = match ebpf.program_mut(name) {
            Some(Program::FEntry(program)) => program.unload(),
            Some(Program::FExit(program)) => program.unload(),
            Some(Program::KProbe(program)) => program.unload(),
            Some(Program::TracePoint(program)) => program.unload(),
            Some(Program::BtfTracePoint(program)) => program.unload(),
            Some(Program::CgroupSock(program)) => program.unload(),
            _ => Ok(()),
        };
    }
}

/// The object loaded for `candidates`, or each of them failed with the reason it did not load.
fn load_for(
    candidates: &[Backend],
    kernel: &Kernel,
    spec: &LoadSpec,
) -> Result<Ebpf, Vec<(Backend, BackendError)>> {
    load_object(kernel, spec).map_err(|err| {
        let reason = err.to_string();
        candidates
            .iter()
            .map(|&backend| (backend, BackendError::Unsupported(reason.clone())))
            .collect()
    })
}

/// Tries the candidates best first; returns the first that attaches and why each earlier one
/// did not.
pub fn attach_best(
    kernel: &Kernel,
    spec: &LoadSpec,
) -> (Option<Attached>, Vec<(Backend, BackendError)>) {
    let candidates = Backend::candidates(spec.choice);
    let mut ebpf = match load_for(&candidates, kernel, spec) {
        Ok(ebpf) => ebpf,
        Err(failed) => return (None, failed),
    };
    let mut passed_over = Vec::new();
    for backend in candidates {
        match attach_programs(backend, &mut ebpf, kernel) {
            Ok(notes) => {
                return (
                    Some(Attached {
                        backend,
                        ebpf,
                        notes,
                    }),
                    passed_over,
                );
            }
            Err(err) => passed_over.push((backend, err)),
        }
    }
    (None, passed_over)
}

/// Closes an attachment's descriptors, concurrently: the kernel waits for an RCU grace period
/// as each tracepoint's perf event goes (tens of milliseconds each, over a second for the
/// syscall tracepoints one after another), and concurrent waits share their grace periods.
pub fn detach(attachment: Vec<std::os::fd::OwnedFd>) {
    const CLOSERS: usize = 16;
    let per_closer = attachment.len().div_ceil(CLOSERS).max(1);
    let mut descriptors = attachment.into_iter().peekable();
    std::thread::scope(|scope| {
        while descriptors.peek().is_some() {
            let batch: Vec<_> = descriptors.by_ref().take(per_closer).collect();
            scope.spawn(move || drop(batch));
        }
    });
}

/// Attaches each candidate in turn and detaches it again: what `--check` reports.
pub fn check(kernel: &Kernel, spec: &LoadSpec) -> Vec<(Backend, Result<(), BackendError>)> {
    let candidates = Backend::candidates(spec.choice);
    let mut ebpf = match load_for(&candidates, kernel, spec) {
        Ok(ebpf) => ebpf,
        Err(failed) => {
            return failed
                .into_iter()
                .map(|(backend, err)| (backend, Err(err)))
                .collect();
        }
    };
    candidates
        .into_iter()
        .map(|backend| {
            let outcome = attach_programs(backend, &mut ebpf, kernel).map(drop);
            unload(&mut ebpf, backend);
            (backend, outcome)
        })
        .collect()
}

/// The reader is woken each time another 1/32 of the ring fills while unread (at the default
/// 1 MiB, every 270 events or so), and otherwise polls on a timer. Waking it later leaves too
/// little room for what arrives while a busy host schedules it: at 100k events/s, 1 MiB lasts
/// 75 ms. Waking it for every event while it is behind would cost every producing CPU an
/// interrupt per event.
const WAKEUP_FILL_DIVISOR: u32 = 32;

fn settings(spec: &LoadSpec) -> Settings {
    Settings {
        all_ports: spec.ports.is_none() as u8,
        portless_failures: spec.portless_failures as u8,
        tcp: spec.tcp as u8,
        udp: spec.udp as u8,
        ipv4: spec.ipv4 as u8,
        ipv6: spec.ipv6 as u8,
        _pad: [0; 2],
        wakeup_bytes: spec.ring_bytes / WAKEUP_FILL_DIVISOR,
    }
}

fn kernel_log_level(spec: &LoadSpec) -> u8 {
    if spec.debug_kernel {
        aya_log::Level::Debug as u8
    } else {
        0
    }
}

/// The kernel function behind a hook: the first of its candidates this kernel has, because
/// names change between versions (`inet_twsk_hashdance` became `inet_twsk_hashdance_schedule`).
fn kernel_function(kernel: &Kernel, hook: &str) -> Result<&'static str, BackendError> {
    let candidates = FUNCTIONS
        .iter()
        .find(|(name, _)| *name == hook)
        .map_or(&[][..], |(_, candidates)| *candidates);
    candidates
        .iter()
        .copied()
        .find(|name| kernel.functions.contains_key(name))
        .ok_or_else(|| BackendError::Hook {
            hook: hook.into(),
            reason: format!(
                "the kernel has none of the functions {}",
                candidates.join(", ")
            ),
        })
}

/// How many parameters a kernel function takes on this kernel (0 if it is not there).
fn parameter_count(kernel: &Kernel, function: &str) -> u32 {
    kernel.functions.get(function).copied().unwrap_or(0)
}
