//! The binaries the guest runs: portwatch itself and the end-to-end test binary.
//!
//! Both are built on the host, in release mode, and copied into the initramfs together with the
//! shared libraries they link against; the guest has nothing else.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use super::arch::Arch;

pub struct Payload {
    pub portwatch: PathBuf,
    /// The `e2e` test (libtest-mimic, not cargo's harness); it reads `PORTWATCH_BIN` and
    /// `PORTWATCH_BACKEND`.
    pub e2e: PathBuf,
}

/// Builds both for `arch`, setting up the eBPF toolchain (the portwatch build compiles and
/// embeds the kernel programs, for `arch`'s registers and syscalls) and any cross tools first.
pub fn build(arch: Arch) -> Result<Payload> {
    crate::toolchain::ensure()?;
    arch.ensure_build_tools()?;
    println!(
        "building portwatch and the e2e suite (release, {}) ...",
        arch.name()
    );
    let target: &[&str] = match arch.cargo_target() {
        Some(triple) => &["--target", triple],
        None => &[],
    };
    let portwatch = built_executable(
        &[&["build", "--release", "-p", "portwatch"], target].concat(),
        "portwatch",
    )?;
    let e2e = built_executable(
        &[
            &[
                "test",
                "--release",
                "-p",
                "portwatch",
                "--test",
                "e2e",
                "--no-run",
            ],
            target,
        ]
        .concat(),
        "e2e",
    )?;
    Ok(Payload { portwatch, e2e })
}

/// Runs a cargo build and returns the executable of the target named `target`, as cargo reports it
/// in its JSON messages: the test binary's file name carries a hash, and the target directory may
/// be moved by `CARGO_TARGET_DIR`, so neither path can be guessed.
fn built_executable(args: &[&str], target: &str) -> Result<PathBuf> {
    let output = crate::project::cargo(None)
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !output.status.success() {
        bail!("cargo {} failed ({})", args.join(" "), output.status);
    }
    let mut found = None;
    for line in output.stdout.lines() {
        let line = line.context("reading cargo's output")?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact"
            && message["target"]["name"] == target
            && let Some(executable) = message["executable"].as_str()
        {
            found = Some(PathBuf::from(executable));
        }
    }
    found.with_context(|| format!("cargo {} reported no executable {target}", args.join(" ")))
}
