//! The host row: what `portwatch --check` says on this machine, for comparison with the kernels.
//!
//! The host's end-to-end suite is run by the ordinary test command, so here it is only asked; an
//! unsupported backend on the host is information, not a failure.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result};

use super::Backend;
use super::matrix::{Cell, Row};

pub fn row(portwatch: &Path, backends: &[Backend]) -> Result<Row> {
    let mut cells = Vec::new();
    for &backend in backends {
        let output = check(portwatch, &["--backend", backend.name()])?;
        let text = match answer(&output, backend.name()) {
            Some(answer) if answer == "ok" => "supported".to_owned(),
            Some(answer) => match answer.strip_prefix("unsupported\t") {
                Some(reason) => format!("not supported: {reason}"),
                None => format!("unexpected answer: {answer}"),
            },
            None => no_answer(&output),
        };
        cells.push(info(text));
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
