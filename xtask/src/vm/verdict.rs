//! What counts as a failure.
//!
//! Debian's stock 5.10, 6.1 and 6.12 cloud kernels have kprobes, BTF and fentry, so every backend
//! must attach there and `--backend auto` must pick fentry. A backend that says "unsupported" on
//! them is a failure, not a skip: that is how a broken attach path would look.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Backend;
use super::kernels::{Kernel, Series};
use super::matrix::{Cell, Row};
use super::protocol::{AUTO_STEP, Auto, Outcome, Report};
use super::qemu::{Console, End};

/// An "unsupported" answer accepted as a fact about a kernel rather than a portwatch bug.
struct Accepted {
    series: Series,
    backend: Backend,
    /// A piece of portwatch's reason; only that reason is accepted.
    reason_contains: &'static str,
    /// The kernel fact, checkable by the reader (a config option, a missing symbol ...).
    fact: &'static str,
}

/// Empty on purpose: none of the kernels booted lacks what a backend needs. Add an entry only
/// for a fact the reader can check in the kernel itself, and say which.
const ACCEPTED_UNSUPPORTED: &[Accepted] = &[];

/// What `--backend auto` must pick on every kernel of the matrix.
const EXPECTED_AUTO: &str = "fentry";

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
                    Outcome::Unsupported { reason } => unsupported(kernel.series, backend, reason),
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
        Some(Auto::Picked(picked)) if picked == EXPECTED_AUTO => (picked.clone(), false),
        Some(Auto::Picked(picked)) => {
            (format!("FAILED: {picked} (expected {EXPECTED_AUTO})"), true)
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
fn unsupported(series: Series, backend: Backend, reason: &str) -> (String, bool) {
    let accepted = ACCEPTED_UNSUPPORTED.iter().find(|accepted| {
        accepted.series == series
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
