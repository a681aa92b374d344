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
                    Outcome::Passed { skipped, which } => {
                        (passed(result.took.as_secs_f64(), *skipped, which), false)
                    }
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

/// A passed cell: the time, then what did not run, so a skipped check cannot pass for a run one:
/// `passed (12.3 s), 2 skipped: <name> (<why>); <name> (<why>)`. Shared with the host row.
pub fn passed(seconds: f64, skipped: usize, which: &str) -> String {
    match skipped {
        0 => format!("passed ({seconds:.1} s)"),
        _ => format!("passed ({seconds:.1} s), {skipped} skipped: {which}"),
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::ExitStatus;
    use std::time::Duration;

    use super::*;
    use crate::vm::protocol::{BackendResult, KernelFacts};
    use crate::vm::qemu::Line;

    fn kernel() -> Kernel {
        Kernel {
            series: Series::V6_12,
            release: "6.12.0-1-cloud-amd64".to_owned(),
            package: "linux-image-6.12.0-1-cloud-amd64".to_owned(),
            version: "6.12.9-1".to_owned(),
            vmlinuz: PathBuf::from("/nonexistent/vmlinuz"),
            btf: true,
        }
    }

    fn console(end: End, lines: &[&str]) -> Console {
        Console {
            lines: lines
                .iter()
                .map(|text| Line {
                    at: Duration::ZERO,
                    text: (*text).to_owned(),
                })
                .collect(),
            end,
            elapsed: Duration::from_secs(100),
        }
    }

    fn powered_off() -> End {
        use std::os::unix::process::ExitStatusExt;
        End::Exited(ExitStatus::from_raw(0))
    }

    fn report(results: Vec<(Backend, Outcome)>, auto: Option<Auto>, done: bool) -> Report {
        Report {
            kernel: None,
            auto,
            results: results
                .into_iter()
                .map(|(backend, outcome)| {
                    let took = Duration::from_millis(12_300);
                    (backend, BackendResult { outcome, took })
                })
                .collect(),
            done,
            booted_after: Some(Duration::from_secs(7)),
        }
    }

    fn row(report: &Report, console: &Console, backends: &[Backend]) -> Row {
        kernel_row(
            &kernel(),
            backends,
            report,
            console,
            Path::new("/nonexistent/console.log"),
            &BTreeMap::new(),
        )
    }

    fn cells(row: &Row) -> Vec<(&str, bool)> {
        row.backends
            .iter()
            .chain([&row.auto])
            .map(|cell| (cell.text.as_str(), cell.failed))
            .collect()
    }

    #[test]
    fn passes_show_their_skips_and_do_not_fail() {
        let mut report = report(
            vec![
                (
                    Backend::Kprobe,
                    Outcome::Passed {
                        skipped: 0,
                        which: String::new(),
                    },
                ),
                (
                    Backend::Tracepoint,
                    Outcome::Passed {
                        skipped: 2,
                        which: "a::b (no MPTCP); c::d (no promtool)".to_owned(),
                    },
                ),
            ],
            Some(Auto::Picked("fentry".to_owned())),
            true,
        );
        report.kernel = Some(KernelFacts {
            release: "6.12.0-1-cloud-amd64".to_owned(),
            btf: "yes".to_owned(),
            filter_functions: "51234".to_owned(),
        });
        let row = row(
            &report,
            &console(powered_off(), &[]),
            &[Backend::Kprobe, Backend::Tracepoint],
        );
        assert_eq!(
            cells(&row),
            [
                ("passed (12.3 s)", false),
                (
                    "passed (12.3 s), 2 skipped: a::b (no MPTCP); c::d (no promtool)",
                    false
                ),
                ("fentry", false),
            ]
        );
        assert_eq!(row.btf, "yes");
        assert_eq!(row.time, "boot 7 s, all 100 s");
    }

    #[test]
    fn failures_unsupported_and_a_wrong_auto_fail() {
        let report = report(
            vec![
                (
                    Backend::Fentry,
                    Outcome::Failed {
                        reason: "suite exited with status 101".to_owned(),
                    },
                ),
                (
                    Backend::Tracepoint,
                    Outcome::Unsupported {
                        reason: "no tracefs".to_owned(),
                    },
                ),
            ],
            Some(Auto::Picked("kprobe".to_owned())),
            true,
        );
        let row = row(
            &report,
            &console(powered_off(), &[]),
            &[Backend::Fentry, Backend::Tracepoint],
        );
        assert_eq!(
            cells(&row),
            [
                ("FAILED: suite exited with status 101", true),
                ("FAILED: not supported: no tracefs", true),
                ("FAILED: kprobe (expected fentry)", true),
            ]
        );
    }

    #[test]
    fn missing_results_say_how_the_guest_ended() {
        let panicked = console(
            powered_off(),
            &["[ 3.1] Kernel panic - not syncing: VFS: Unable to mount root fs"],
        );
        let crashed = row(&report(vec![], None, false), &panicked, &[Backend::Kprobe]);
        assert_eq!(
            cells(&crashed),
            [
                (
                    "FAILED: no result (kernel panic: VFS: Unable to mount root fs)",
                    true
                ),
                (
                    "FAILED: no answer (kernel panic: VFS: Unable to mount root fs)",
                    true
                ),
            ]
        );
        let hung = console(End::Killed(Duration::from_secs(300)), &[]);
        let nothing = report(
            vec![],
            Some(Auto::Nothing {
                reason: "exit status 1: no BTF".to_owned(),
            }),
            false,
        );
        assert_eq!(
            cells(&row(&nothing, &hung, &[Backend::Fentry])),
            [
                (
                    "FAILED: no result (guest killed after 300 s without progress)",
                    true
                ),
                ("FAILED: none (exit status 1: no BTF)", true),
            ]
        );
    }

    #[test]
    fn an_unsupported_answer_is_accepted_only_as_listed() {
        // The list is empty: every unsupported answer on these kernels is a failure.
        assert_eq!(
            unsupported(Series::V5_10, Backend::Fentry, "no BTF"),
            ("FAILED: not supported: no BTF".to_owned(), true)
        );
    }
}
