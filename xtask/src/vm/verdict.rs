//! What counts as a failure.
//!
//! Debian's stock cloud kernels have kprobes, BTF and fentry (arm64 6.1 excepted, see
//! `ACCEPTED_UNSUPPORTED`), so every backend must attach there and `--backend auto` must pick
//! fentry. A backend that says "unsupported" on them is a failure, not a skip: that is how a
//! broken attach path would look.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Backend;
use super::arch::Arch;
use super::kernels::{Kernel, Series};
use super::matrix::{Cell, Row};
use super::protocol::{AUTO_STEP, Auto, Outcome, Report};
use super::qemu::{Console, End};

/// An "unsupported" answer accepted as a fact about a kernel rather than a portwatch bug.
struct Accepted {
    arch: Arch,
    series: Series,
    backend: Backend,
    /// A piece of portwatch's reason; only that reason is accepted.
    reason_contains: &'static str,
    /// The kernel fact, checkable by the reader (a config option, a missing symbol ...).
    fact: &'static str,
}

/// Add an entry only for a fact the reader can check in the kernel itself, and say which.
const ACCEPTED_UNSUPPORTED: &[Accepted] = &[Accepted {
    arch: Arch::Arm64,
    series: Series::V6_1,
    backend: Backend::Fentry,
    // ENOTSUPP from attaching the trampoline.
    reason_contains: "os error 524",
    fact: "its config has no CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS, which arm64 gained in 6.4 \
           and BPF trampolines on kernel functions need",
}];

/// What `--backend auto` must pick on `kernel`: fentry, or kprobe where fentry is accepted
/// as unsupported.
fn expected_auto(kernel: &Kernel) -> &'static str {
    let no_fentry = ACCEPTED_UNSUPPORTED.iter().any(|accepted| {
        accepted.arch == kernel.arch
            && accepted.series == kernel.series
            && accepted.backend == Backend::Fentry
    });
    if no_fentry { "kprobe" } else { "fentry" }
}

/// Judges one boot of `kernel` into a matrix row.
pub fn kernel_row(
    kernel: &Kernel,
    backends: &[Backend],
    report: &Report,
    console: &Console,
    log: &Path,
    step_logs: &BTreeMap<&str, PathBuf>,
) -> Row {
    let log_of = |step: &str| {
        step_logs
            .get(step)
            .cloned()
            .unwrap_or_else(|| log.to_path_buf())
    };
    let cells = backends
        .iter()
        .map(|&backend| {
            let (text, failed) = match report.results.get(&backend) {
                Some(result) => match &result.outcome {
                    Outcome::Passed => (
                        format!("passed ({:.1} s)", result.took.as_secs_f64()),
                        false,
                    ),
                    Outcome::Failed { reason } => (format!("FAILED: {reason}"), true),
                    Outcome::Unsupported { reason } => unsupported(kernel, backend, reason),
                },
                None => (
                    format!("FAILED: no result ({})", how_it_ended(report, console)),
                    true,
                ),
            };
            Cell {
                text,
                failed,
                log: Some(log_of(backend.name())),
            }
        })
        .collect();

    let (text, failed) = match &report.auto {
        Some(Auto::Picked(picked)) if picked == expected_auto(kernel) => (picked.clone(), false),
        Some(Auto::Picked(picked)) => {
            let expected = expected_auto(kernel);
            (format!("FAILED: {picked} (expected {expected})"), true)
        }
        Some(Auto::Nothing { reason }) => (format!("FAILED: none ({reason})"), true),
        None => (
            format!("FAILED: no answer ({})", how_it_ended(report, console)),
            true,
        ),
    };
    let auto = Cell {
        text,
        failed,
        log: Some(log_of(AUTO_STEP)),
    };

    let sysfs_btf = report
        .kernel
        .as_ref()
        .map_or("?", |facts| facts.btf.as_str());
    let btf = match (kernel.btf, sysfs_btf) {
        (true, "yes") => "yes".to_owned(),
        (config, sysfs) => format!(
            "config {}, /sys/kernel/btf/vmlinux {sysfs}",
            if config { "y" } else { "n" }
        ),
    };
    let time = match report.booted_after {
        Some(boot) => format!(
            "boot {:.0} s, all {:.0} s",
            boot.as_secs_f64(),
            console.elapsed.as_secs_f64()
        ),
        None => format!("all {:.0} s", console.elapsed.as_secs_f64()),
    };
    Row {
        kernel: format!("{} ({})", kernel.release, kernel.version),
        btf,
        backends: cells,
        auto,
        time,
    }
}

/// The cell for an "unsupported" answer: a failure unless listed in `ACCEPTED_UNSUPPORTED`.
fn unsupported(kernel: &Kernel, backend: Backend, reason: &str) -> (String, bool) {
    let accepted = ACCEPTED_UNSUPPORTED.iter().find(|accepted| {
        accepted.arch == kernel.arch
            && accepted.series == kernel.series
            && accepted.backend == backend
            && reason.contains(accepted.reason_contains)
    });
    match accepted {
        Some(accepted) => (
            format!("not supported: {reason} (accepted: {})", accepted.fact),
            false,
        ),
        None => (format!("FAILED: not supported: {reason}"), true),
    }
}

/// How the boot ended, in the words a reader needs: a guest that stopped without reporting
/// everything either hung (and was killed) or crashed, and a kernel panic names its cause.
pub fn how_it_ended(report: &Report, console: &Console) -> String {
    if report.done {
        return "guest finished".to_owned();
    }
    if let End::Killed(_) = console.end {
        return console.end.describe();
    }
    let panic = console
        .lines
        .iter()
        .find_map(|line| line.text.split_once("Kernel panic - not syncing: "));
    match panic {
        Some((_, message)) => format!("kernel panic: {}", message.trim()),
        None => format!("guest stopped before reporting; {}", console.end.describe()),
    }
}
