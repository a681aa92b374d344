//! The host row: the end-to-end suite on this machine, once per backend it supports, beside the
//! kernels. A backend the host does not support is information (the reason `--check` gives), not
//! a failure, unless it is one every host must support ([`REQUIRED`]); a supported backend whose
//! suite fails is a failure, and a passing suite names the scenarios it skipped.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result};

use super::Backend;
use super::matrix::{Cell, Row};
use super::verdict;

/// The backends a host that runs portwatch at all must attach: the tracepoint backend needs
/// only syscall and sock tracepoints and BTF, which portwatch needs anyway (the hosts it is
/// tested on, and kernels without kprobes or trampolines, have them). Its "unsupported" is a
/// regression, not a fact about the host, and would otherwise leave the row green with no
/// suite run.
const REQUIRED: &[Backend] = &[Backend::Tracepoint];

pub fn row(portwatch: &Path, e2e: &Path, backends: &[Backend]) -> Result<Row> {
    let mut cells = Vec::new();
    for &backend in backends {
        let output = check(portwatch, &["--backend", backend.name()])?;
        let cell = match answer(&output, backend.name()) {
            Some(answer) if answer == "ok" => suite(portwatch, e2e, backend)?,
            answer => {
                let text = match answer {
                    Some(answer) => match answer.strip_prefix("unsupported\t") {
                        Some(reason) => format!("not supported: {reason}"),
                        None => format!("unexpected answer: {answer}"),
                    },
                    None => no_answer(&output),
                };
                if REQUIRED.contains(&backend) {
                    Cell {
                        text: format!("FAILED: {text} (required on every host)"),
                        failed: true,
                        log: None,
                    }
                } else {
                    info(text)
                }
            }
        };
        cells.push(cell);
    }
    let output = check(portwatch, &[])?;
    let auto = match answer(&output, "auto") {
        Some(picked) if output.status.success() => picked,
        _ => no_answer(&output),
    };
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let btf = if Path::new("/sys/kernel/btf/vmlinux").exists() {
        "yes"
    } else {
        "no"
    };
    Ok(Row {
        kernel: format!("host ({})", release.trim()),
        btf: btf.to_owned(),
        backends: cells,
        auto: info(auto),
        time: "-".to_owned(),
    })
}

/// Runs the end-to-end suite on the host with one backend; its output goes on to the terminal
/// as it comes, and the scenarios that skipped themselves go into the cell.
fn suite(portwatch: &Path, e2e: &Path, backend: Backend) -> Result<Cell> {
    eprintln!("host: e2e suite, backend {}", backend.name());
    let started = std::time::Instant::now();
    let mut child = Command::new(e2e)
        .args(["--color", "never"])
        .env("PORTWATCH_BIN", portwatch)
        .env("PORTWATCH_BACKEND", backend.name())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", e2e.display()))?;
    let mut skipped = Vec::new();
    let mut terminal = std::io::stdout();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.with_context(|| format!("reading {}'s output", e2e.display()))?;
        let _ = writeln!(terminal, "{line}");
        skipped.extend(skipped_scenario(&line));
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {}", e2e.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Cell {
        text: if status.success() {
            verdict::passed(seconds, skipped.len(), &skipped.join("; "))
        } else {
            format!("FAILED: suite exited with {status}")
        },
        failed: !status.success(),
        log: None,
    })
}

/// `<name> (<why>)` from libtest's `test <name> ... ignored (<why>)` line, as the guest's init
/// script reports it.
fn skipped_scenario(line: &str) -> Option<String> {
    let (name, outcome) = line.strip_prefix("test ")?.split_once(" ... ")?;
    let why = outcome.strip_prefix("ignored")?.trim_start();
    Some(format!("{} {why}", name.trim_end()).trim_end().to_owned())
}

fn check(portwatch: &Path, args: &[&str]) -> Result<Output> {
    Command::new(portwatch)
        .arg("--check")
        .args(args)
        .output()
        .with_context(|| format!("running {} --check", portwatch.display()))
}

/// What follows `<key>\t` on portwatch's stdout.
fn answer(output: &Output, key: &str) -> Option<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            line.strip_prefix(key)?
                .strip_prefix('\t')
                .map(str::to_owned)
        })
}

fn no_answer(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    format!(
        "no answer ({}): {}",
        output.status,
        stderr.lines().next().unwrap_or_default()
    )
}

fn info(text: String) -> Cell {
    Cell {
        text,
        failed: false,
        log: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_scenarios_are_read_from_libtest_lines() {
        assert_eq!(
            skipped_scenario(
                "test fleet::prometheus_scrapes_metrics   ... ignored (prometheus is not installed (Debian: prometheus))"
            )
            .as_deref(),
            Some(
                "fleet::prometheus_scrapes_metrics (prometheus is not installed (Debian: prometheus))"
            )
        );
        assert_eq!(
            skipped_scenario("test a::b ... ignored").as_deref(),
            Some("a::b")
        );
        for other in [
            "test fleet::metrics_count_own_traffic    ... ok",
            "test a::b ... FAILED",
            "test result: ok. 1 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out",
            "e2e: skip: not a result line ... ignored",
        ] {
            assert_eq!(skipped_scenario(other), None, "{other}");
        }
    }
}
