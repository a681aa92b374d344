//! The host row: the end-to-end suite on this machine, once per backend it supports, beside the
//! kernels. A backend the host does not support is information (the reason `--check` gives), not
//! a failure; a supported backend whose suite fails is.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result};

use super::Backend;
use super::matrix::{Cell, Row};

pub fn row(portwatch: &Path, e2e: &Path, backends: &[Backend]) -> Result<Row> {
    let mut cells = Vec::new();
    for &backend in backends {
        let output = check(portwatch, &["--backend", backend.name()])?;
        let cell = match answer(&output, backend.name()) {
            Some(answer) if answer == "ok" => suite(portwatch, e2e, backend)?,
            Some(answer) => info(match answer.strip_prefix("unsupported\t") {
                Some(reason) => format!("not supported: {reason}"),
                None => format!("unexpected answer: {answer}"),
            }),
            None => info(no_answer(&output)),
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

/// Runs the end-to-end suite on the host with one backend; its output goes to the terminal.
fn suite(portwatch: &Path, e2e: &Path, backend: Backend) -> Result<Cell> {
    eprintln!("host: e2e suite, backend {}", backend.name());
    let started = std::time::Instant::now();
    let status = Command::new(e2e)
        .env("PORTWATCH_BIN", portwatch)
        .env("PORTWATCH_BACKEND", backend.name())
        .status()
        .with_context(|| format!("running {}", e2e.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Cell {
        text: if status.success() {
            format!("passed ({seconds:.1} s)")
        } else {
            format!("FAILED: suite exited with {status}")
        },
        failed: !status.success(),
        log: None,
    })
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
