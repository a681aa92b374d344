//! Both ends of the conversation with the guest: the `/init` script that runs the suite, and the
//! reading of the result lines it prints to the serial console.
//!
//! The console also carries kernel messages and the suite's own progress, so every line meant for
//! the host starts with `PORTWATCH-VM-`; a message the kernel interleaves before it on the same
//! line does not hide it. `PORTWATCH-VM-DONE` comes last: without it the guest hung or crashed, and
//! the backends that reported nothing failed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::Backend;
use super::initramfs::PAYLOAD_DIR;
use super::qemu::Line;

const PREFIX: &str = "PORTWATCH-VM-";

/// The busybox applets the init script uses, and the only commands the guest has: the suite must
/// not find busybox's flavour of a tool where it expects the real one (busybox's `setpriv`, for
/// one, lacks util-linux's options), it should find the tool missing.
const APPLETS: &str = "cat cut grep head ip mount poweroff sleep tail tee timeout uname";

/// The start of every guest's `/init`: busybox's applets, the file systems portwatch and the tools
/// need, loopback, and the kernel facts line.
const INIT_PRELUDE: &str = r#"#!/bin/busybox sh
for applet in @APPLETS@; do /bin/busybox ln -s busybox /bin/$applet; done
export PATH=/@PAYLOAD_DIR@:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up

if [ -e /sys/kernel/btf/vmlinux ]; then btf=yes; else btf=no; fi
functions=/sys/kernel/tracing/available_filter_functions
if [ -r $functions ]; then traceable=$(grep -c . $functions); else traceable=unreadable; fi
printf 'PORTWATCH-VM-KERNEL release=%s btf=%s filter_functions=%s\n' "$(uname -r)" $btf $traceable
"#;

/// The end of every guest's `/init`: the done line, then power off (which ends qemu).
const INIT_EPILOGUE: &str = r#"printf 'PORTWATCH-VM-DONE\n'
# Give the UART time to send the last lines before the machine goes away.
sleep 1
poweroff -f
"#;

/// The guest's `/init`, filled in with the backends and the per-suite timeout.
///
/// `portwatch --check --backend B` tells whether B attaches; only then is the suite run with it.
/// The suite and every check run under busybox `timeout`, so one hung backend costs its timeout
/// and the others still run. A failed suite's result names the failed scenarios and carries the
/// harness's summary line; a passed one names the scenarios that skipped themselves (libtest's
/// `test <name> ... ignored (<why>)` lines), so a check that never ran is not counted as passed.
const INIT_SUITE: &str = r#"TAB=$(printf '\t')
T=@TIMEOUT@

check() {
	timeout -s KILL $T portwatch --check "$@" >/tmp/check.out 2>/tmp/check.err
	rc=$?
	cat /tmp/check.out /tmp/check.err
}

printf 'PORTWATCH-VM-BEGIN @AUTO_STEP@\n'
check
picked=$(grep "^auto$TAB" /tmp/check.out | cut -f2)
if [ $rc -eq 0 ] && [ -n "$picked" ]; then
	printf 'PORTWATCH-VM-AUTO picked=%s\n' "$picked"
else
	printf 'PORTWATCH-VM-AUTO picked=none reason=exit status %s: %s\n' $rc "$(head -n 1 /tmp/check.err)"
fi

for b in @BACKENDS@; do
	printf 'PORTWATCH-VM-BEGIN backend=%s\n' $b
	check --backend $b
	answer=$(grep "^$b$TAB" /tmp/check.out)
	case "$answer" in
	"$b${TAB}ok")
		{
			PORTWATCH_BIN=/@PAYLOAD_DIR@/portwatch PORTWATCH_BACKEND=$b timeout -s KILL $T e2e --color never @SCENARIOS@
			echo $? >/tmp/e2e.status
		} 2>&1 | tee /tmp/e2e.out
		rc=$(cat /tmp/e2e.status)
		if [ $rc -eq 0 ]; then
			skipped=$(grep ' \.\.\. ignored' /tmp/e2e.out | while read -r test name rest; do printf '%s %s; ' "$name" "${rest#*ignored }"; done)
			printf 'PORTWATCH-VM-RESULT backend=%s status=passed skipped=%s reason=%s\n' $b "$(grep -c ' \.\.\. ignored' /tmp/e2e.out)" "${skipped%; }"
		elif [ $rc -eq 137 ]; then
			printf 'PORTWATCH-VM-RESULT backend=%s status=failed reason=suite killed after %s s\n' $b $T
		else
			# libtest-mimic's lines: `test <name> ... FAILED` per scenario, then `test result: ...`.
			failed=$(grep ' \.\.\. FAILED$' /tmp/e2e.out | cut -d' ' -f2)
			printf 'PORTWATCH-VM-RESULT backend=%s status=failed reason=suite exited with status %s: %s; failed: %s\n' $b $rc "$(grep '^test result:' /tmp/e2e.out | tail -n 1)" "$(echo $failed)"
		fi
		;;
	"$b${TAB}unsupported${TAB}"*)
		printf 'PORTWATCH-VM-RESULT backend=%s status=unsupported reason=%s\n' $b "${answer#"$b${TAB}unsupported${TAB}"}"
		;;
	*)
		printf 'PORTWATCH-VM-RESULT backend=%s status=failed reason=--check gave no answer for it (exit status %s): %s\n' $b $rc "$(head -n 1 /tmp/check.err)"
		;;
	esac
done

"#;

/// `scenarios`: a libtest name filter (checked to be shell-safe by the caller); None runs all.
pub fn init_script(backends: &[Backend], timeout_secs: u64, scenarios: Option<&str>) -> String {
    let names: Vec<&str> = backends.iter().map(|backend| backend.name()).collect();
    [INIT_PRELUDE, INIT_SUITE, INIT_EPILOGUE]
        .concat()
        .replace("@PAYLOAD_DIR@", PAYLOAD_DIR)
        .replace("@AUTO_STEP@", AUTO_STEP)
        .replace("@APPLETS@", APPLETS)
        .replace("@TIMEOUT@", &timeout_secs.to_string())
        .replace("@BACKENDS@", &names.join(" "))
        .replace("@SCENARIOS@", scenarios.unwrap_or_default())
}

/// The benchmark's command in the guest: xtask's guest side runs every round and prints its own
/// result lines (see `bench::emulated`).
const INIT_BENCH: &str = "/@PAYLOAD_DIR@/xtask bench --in-guest --rounds @ROUNDS@ --seconds @SECONDS@ \
--portwatch /@PAYLOAD_DIR@/portwatch\n";

/// The guest's `/init` for `cargo xtask bench --vm`.
pub fn bench_init_script(rounds: u32, seconds: f64) -> String {
    [INIT_PRELUDE, INIT_BENCH, INIT_EPILOGUE]
        .concat()
        .replace("@PAYLOAD_DIR@", PAYLOAD_DIR)
        .replace("@APPLETS@", APPLETS)
        .replace("@ROUNDS@", &rounds.to_string())
        .replace("@SECONDS@", &seconds.to_string())
}

/// The part of `line` meant for the host, if it has one.
pub fn marker(line: &str) -> Option<&str> {
    line.find(PREFIX).map(|start| line[start..].trim_end())
}

/// What the guest said about the kernel it runs.
pub struct KernelFacts {
    pub release: String,
    pub btf: String,
    pub filter_functions: String,
}

/// What `portwatch --check` picked without `--backend`.
pub enum Auto {
    Picked(String),
    Nothing { reason: String },
}

/// One backend's outcome, as the guest reported it.
pub enum Outcome {
    /// The suite passed; `skipped` scenarios said this machine cannot run them (`which`:
    /// `<name> (<why>)`, joined by `; `).
    Passed {
        skipped: usize,
        which: String,
    },
    Failed {
        reason: String,
    },
    Unsupported {
        reason: String,
    },
}

pub struct BackendResult {
    pub outcome: Outcome,
    /// From its begin line to its result line, on the host's clock.
    pub took: Duration,
}

/// Everything the guest reported in one boot.
#[derive(Default)]
pub struct Report {
    pub kernel: Option<KernelFacts>,
    pub auto: Option<Auto>,
    pub results: BTreeMap<Backend, BackendResult>,
    pub done: bool,
    /// When the guest printed its first line of ours: the boot time.
    pub booted_after: Option<Duration>,
}

impl Report {
    pub fn parse(lines: &[Line]) -> Report {
        let mut report = Report::default();
        let mut began: BTreeMap<Backend, Duration> = BTreeMap::new();
        for line in lines {
            let Some(marker) = marker(&line.text) else {
                continue;
            };
            report.booted_after.get_or_insert(line.at);
            let (kind, rest) = marker[PREFIX.len()..]
                .split_once(' ')
                .unwrap_or((&marker[PREFIX.len()..], ""));
            match kind {
                "KERNEL" => {
                    let field = |key: &str| {
                        rest.split(' ')
                            .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                            .unwrap_or("?")
                            .to_owned()
                    };
                    report.kernel = Some(KernelFacts {
                        release: field("release"),
                        btf: field("btf"),
                        filter_functions: field("filter_functions"),
                    });
                }
                "BEGIN" => {
                    if let Some(backend) = rest.strip_prefix("backend=").and_then(Backend::parse) {
                        began.insert(backend, line.at);
                    }
                }
                "AUTO" => report.auto = parse_auto(rest),
                "RESULT" => {
                    if let Some((backend, outcome)) = parse_result(rest) {
                        let took = line
                            .at
                            .saturating_sub(began.get(&backend).copied().unwrap_or(line.at));
                        report
                            .results
                            .insert(backend, BackendResult { outcome, took });
                    }
                }
                "DONE" => report.done = true,
                _ => {}
            }
        }
        report
    }
}

/// `picked=<backend>` or `picked=none reason=<text>`.
fn parse_auto(rest: &str) -> Option<Auto> {
    let picked = rest.strip_prefix("picked=")?;
    Some(match picked.split_once(" reason=") {
        Some(("none", reason)) => Auto::Nothing {
            reason: reason.to_owned(),
        },
        _ => Auto::Picked(picked.to_owned()),
    })
}

/// `backend=<b> status=<passed|failed|unsupported>[ skipped=<n>][ reason=<text to the end of
/// the line>]`. A pass without `skipped=` (an older guest's) skipped nothing it said.
fn parse_result(rest: &str) -> Option<(Backend, Outcome)> {
    let (backend, rest) = rest.strip_prefix("backend=")?.split_once(" status=")?;
    let backend = Backend::parse(backend)?;
    let (status, reason) = rest.split_once(" reason=").unwrap_or((rest, ""));
    let reason = reason.to_owned();
    let (status, skipped) = match status.split_once(" skipped=") {
        Some((status, count)) => (status, count.parse().ok()?),
        None => (status, 0),
    };
    let outcome = match status {
        "passed" => Outcome::Passed {
            skipped,
            which: reason,
        },
        "unsupported" => Outcome::Unsupported { reason },
        "failed" => Outcome::Failed { reason },
        _ => return None,
    };
    Some((backend, outcome))
}

/// The steps a boot goes through, each starting with a begin line: `auto` (the plain `--check`),
/// then each backend.
pub fn steps(backends: &[Backend]) -> Vec<&'static str> {
    let mut steps = vec![AUTO_STEP];
    steps.extend(backends.iter().map(|backend| backend.name()));
    steps
}

pub const AUTO_STEP: &str = "auto";

/// Splits the console log into one file per step, `<release>-<step>.log`, from its begin line up to
/// the next begin line or the end, so a failure points at the part that matters. A step the guest
/// never reached gets no file (an older run's is removed).
pub fn write_step_logs(
    lines: &[Line],
    dir: &Path,
    release: &str,
    steps: &[&'static str],
) -> Result<BTreeMap<&'static str, PathBuf>> {
    let mut sections: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut current = None;
    for line in lines {
        if let Some(marker) = marker(&line.text) {
            if let Some(rest) = marker.strip_prefix("PORTWATCH-VM-BEGIN ") {
                let name = rest.strip_prefix("backend=").unwrap_or(rest);
                current = steps.iter().copied().find(|step| *step == name);
            } else if marker.starts_with("PORTWATCH-VM-DONE") {
                current = None;
            }
        }
        if let Some(step) = current {
            let section = sections.entry(step).or_default();
            section.push_str(&line.logged());
            section.push('\n');
        }
    }
    let mut paths = BTreeMap::new();
    for &step in steps {
        let path = dir.join(format!("{release}-{step}.log"));
        match sections.remove(step) {
            Some(text) => {
                fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
                paths.insert(step, path);
            }
            None if path.exists() => {
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
            None => {}
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(texts: &[&str]) -> Vec<Line> {
        texts
            .iter()
            .enumerate()
            .map(|(second, text)| Line {
                at: Duration::from_secs(second as u64),
                text: (*text).to_owned(),
            })
            .collect()
    }

    #[test]
    fn a_whole_boot_is_read_back() {
        let lines = console(&[
            "[    0.5] random kernel chatter",
            "PORTWATCH-VM-KERNEL release=6.1.0-56-cloud-amd64 btf=yes filter_functions=51234",
            "PORTWATCH-VM-BEGIN auto",
            "PORTWATCH-VM-AUTO picked=fentry",
            "PORTWATCH-VM-BEGIN backend=kprobe",
            "PORTWATCH-VM-RESULT backend=kprobe status=passed skipped=0 reason=",
            "PORTWATCH-VM-BEGIN backend=fentry",
            // A kernel message printed on the same line before ours must not hide it.
            "[   12.0] audit: noise PORTWATCH-VM-RESULT backend=fentry status=failed reason=test result: FAILED. 1 passed; 1 failed",
            "PORTWATCH-VM-BEGIN backend=tracepoint",
            "PORTWATCH-VM-RESULT backend=tracepoint status=unsupported reason=no kprobes here",
            "PORTWATCH-VM-DONE",
        ]);
        let report = Report::parse(&lines);
        assert!(report.done);
        assert_eq!(report.booted_after, Some(Duration::from_secs(1)));
        let kernel = report.kernel.expect("kernel facts");
        assert_eq!(kernel.release, "6.1.0-56-cloud-amd64");
        assert_eq!(kernel.btf, "yes");
        assert_eq!(kernel.filter_functions, "51234");
        assert!(matches!(report.auto, Some(Auto::Picked(ref b)) if b == "fentry"));
        let kprobe = &report.results[&Backend::Kprobe];
        assert!(matches!(kprobe.outcome, Outcome::Passed { skipped: 0, .. }));
        assert_eq!(kprobe.took, Duration::from_secs(1));
        assert!(matches!(
            &report.results[&Backend::Fentry].outcome,
            Outcome::Failed { reason } if reason == "test result: FAILED. 1 passed; 1 failed"
        ));
        assert!(matches!(
            &report.results[&Backend::Tracepoint].outcome,
            Outcome::Unsupported { reason } if reason == "no kprobes here"
        ));
    }

    #[test]
    fn skipped_scenarios_are_read_back() {
        let report = Report::parse(&console(&[
            "PORTWATCH-VM-RESULT backend=tracepoint status=passed skipped=2 reason=parity::mptcp_binds_are_claims (this kernel has no MPTCP); fleet::prometheus_scrapes_metrics (prometheus is not installed)",
        ]));
        assert!(matches!(
            &report.results[&Backend::Tracepoint].outcome,
            Outcome::Passed { skipped: 2, which } if which == "parity::mptcp_binds_are_claims (this kernel has no MPTCP); fleet::prometheus_scrapes_metrics (prometheus is not installed)"
        ));
    }

    /// The init script's own shell turns libtest's output into the result line: run it on
    /// real harness output (names padded, reasons with parentheses) and read the line back.
    #[test]
    fn the_guest_shell_reports_what_libtest_skipped() {
        let script = init_script(&[Backend::Tracepoint], 5, None);
        let start = script
            .find("\t\tif [ $rc -eq 0 ]; then\n")
            .expect("the pass branch");
        let end = script[start..].find("\t\telif").expect("its end") + start;
        let dir = std::env::temp_dir().join(format!("portwatch-skips-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let out = dir.join("e2e.out");
        fs::write(
            &out,
            "running 3 tests\n\
             test fleet::promtool_accepts_the_metrics ... ignored (promtool is not installed (Debian: prometheus))\n\
             test fleet::metrics_count_own_traffic    ... ok\n\
             test parity::mptcp_binds_are_claims      ... ignored (no MPTCP)\n\
             \ntest result: ok. 1 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out\n",
        )
        .unwrap();
        let branch = format!(
            "rc=0; b=tracepoint\n{}fi\n",
            script[start..end].replace("/tmp/e2e.out", &out.display().to_string())
        );
        let output = std::process::Command::new("sh")
            .args(["-c", &branch])
            .output()
            .unwrap();
        fs::remove_dir_all(&dir).unwrap();
        let line = String::from_utf8(output.stdout).unwrap();
        let report = Report::parse(&console(&[line.trim_end()]));
        assert!(
            matches!(
                &report.results[&Backend::Tracepoint].outcome,
                Outcome::Passed { skipped: 2, which } if which == "fleet::promtool_accepts_the_metrics (promtool is not installed (Debian: prometheus)); parity::mptcp_binds_are_claims (no MPTCP)"
            ),
            "{line}"
        );
    }

    #[test]
    fn a_guest_that_stops_early_is_not_done_and_lacks_results() {
        let report = Report::parse(&console(&[
            "PORTWATCH-VM-AUTO picked=none reason=exit status 1: no BTF",
            "PORTWATCH-VM-BEGIN backend=kprobe",
            "Kernel panic - not syncing: oops",
        ]));
        assert!(!report.done);
        assert!(report.results.is_empty());
        assert!(report.kernel.is_none());
        assert!(matches!(
            report.auto,
            Some(Auto::Nothing { ref reason }) if reason == "exit status 1: no BTF"
        ));
    }

    #[test]
    fn malformed_result_lines_are_ignored() {
        for line in [
            "PORTWATCH-VM-RESULT backend=bogus status=passed",
            "PORTWATCH-VM-RESULT backend=kprobe status=maybe",
            "PORTWATCH-VM-RESULT backend=kprobe status=passed skipped=two reason=a (b)",
            "PORTWATCH-VM-RESULT status=passed",
            "PORTWATCH-VM-RESULT",
        ] {
            let report = Report::parse(&console(&[line]));
            assert!(report.results.is_empty(), "{line} was accepted");
        }
        let report = Report::parse(&console(&["PORTWATCH-VM-KERNEL release=5.10"]));
        let kernel = report.kernel.expect("partial facts");
        assert_eq!(
            (kernel.release.as_str(), kernel.btf.as_str()),
            ("5.10", "?")
        );
    }

    #[test]
    fn the_init_script_has_every_placeholder_filled() {
        let script = init_script(
            &[Backend::Kprobe, Backend::Tracepoint],
            240,
            Some("parity::"),
        );
        for placeholder in [
            "@APPLETS@",
            "@PAYLOAD_DIR@",
            "@TIMEOUT@",
            "@AUTO_STEP@",
            "@BACKENDS@",
            "@SCENARIOS@",
        ] {
            assert!(
                !script.contains(placeholder),
                "{placeholder} left in:\n{script}"
            );
        }
        assert!(script.contains("for b in kprobe tracepoint; do"));
        assert!(script.contains("T=240"));
        assert!(script.contains("timeout -s KILL $T e2e --color never parity::\n"));
        assert!(script.starts_with("#!/bin/busybox sh\n"));
    }

    #[test]
    fn the_bench_init_script_runs_xtask_between_prelude_and_epilogue() {
        let script = bench_init_script(3, 1.5);
        assert!(!script.contains('@'), "placeholder left in:\n{script}");
        assert!(script.starts_with("#!/bin/busybox sh\n"));
        let run = script
            .find("/opt/portwatch/xtask bench --in-guest --rounds 3 --seconds 1.5 --portwatch /opt/portwatch/portwatch\n")
            .expect("the xtask line");
        assert!(script.find("PORTWATCH-VM-KERNEL").unwrap() < run);
        assert!(run < script.find("PORTWATCH-VM-DONE").unwrap());
        assert!(script.ends_with("poweroff -f\n"));
    }

    #[test]
    fn step_logs_split_at_begin_lines() {
        let dir = std::env::temp_dir().join(format!("portwatch-steps-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // A log left by an earlier run for a step this run never reached goes away.
        fs::write(dir.join("k-fentry.log"), "old").unwrap();
        let lines = console(&[
            "boot",
            "PORTWATCH-VM-BEGIN auto",
            "auto output",
            "PORTWATCH-VM-BEGIN backend=kprobe",
            "kprobe output",
            "PORTWATCH-VM-DONE",
            "after",
        ]);
        let steps = steps(&[Backend::Kprobe, Backend::Fentry]);
        let paths = write_step_logs(&lines, &dir, "k", &steps).unwrap();
        let auto = fs::read_to_string(&paths["auto"]).unwrap();
        let kprobe = fs::read_to_string(&paths["kprobe"]).unwrap();
        assert!(auto.contains("auto output") && !auto.contains("kprobe output"));
        assert!(kprobe.contains("kprobe output") && !kprobe.contains("after"));
        assert!(!auto.contains("boot"));
        assert!(!paths.contains_key("fentry"));
        assert!(!dir.join("k-fentry.log").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
