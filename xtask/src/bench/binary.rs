//! The portwatch binary under test: the release build, built on demand.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use crate::{project, toolchain};

/// Builds `portwatch` in release mode and returns the executable cargo reports.
///
/// Asking cargo for the artifact path (rather than assuming `target/release/portwatch`) keeps this
/// right under `CARGO_TARGET_DIR` and any build configuration the user has.
pub fn build_release() -> Result<PathBuf> {
    toolchain::ensure()?;
    eprintln!("bench: building portwatch (release)");
    let mut child = project::cargo(None)
        .args([
            "build",
            "--release",
            "--package",
            "portwatch",
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo build")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut executable = None;
    for line in BufReader::new(stdout).lines() {
        let message: serde_json::Value = serde_json::from_str(&line?)?;
        if message["reason"] == "compiler-artifact"
            && message["target"]["name"] == "portwatch"
            && let Some(path) = message["executable"].as_str()
        {
            executable = Some(PathBuf::from(path));
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("building portwatch failed ({status})");
    }
    executable.context("cargo built no portwatch executable")
}
