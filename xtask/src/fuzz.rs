//! `cargo xtask fuzz`: the cargo-fuzz targets in `portwatch/fuzz`, each run for a while from
//! its committed corpus. `cargo xtask lint` type-checks them and `cargo xtask test` runs each
//! for a few seconds, so a change that breaks a target fails at once instead of when someone
//! next fuzzes.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    project::{cargo, succeed, target_dir, workspace_root},
    toolchain,
};

/// The cargo-fuzz release line whose `--fuzz-dir` and corpus arguments are used here.
const CARGO_FUZZ_VERSION: &str = "^0.13";

/// Seconds each target runs in `cargo xtask test`: enough to replay the corpus and mutate it a
/// little, not a search for new bugs.
pub const SMOKE_SECONDS: u32 = 5;

#[derive(Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u32,
    /// Targets to run (default: all of them).
    targets: Vec<String>,
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("portwatch/fuzz")
}

/// The targets, by the file names under `fuzz_targets/`.
fn all_targets() -> anyhow::Result<Vec<String>> {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut targets = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if let Some(name) = path.file_stem().and_then(|stem| stem.to_str()) {
            targets.push(name.to_string());
        }
    }
    targets.sort();
    Ok(targets)
}

pub fn run(args: FuzzArgs) -> anyhow::Result<()> {
    let known = all_targets()?;
    for target in &args.targets {
        if !known.contains(target) {
            bail!(
                "no fuzz target {target}; the targets are {}",
                known.join(", ")
            );
        }
    }
    let targets = if args.targets.is_empty() {
        known
    } else {
        args.targets
    };
    run_targets(&targets, args.seconds, Build::Release)
}

/// Every target, `SMOKE_SECONDS` each, built unoptimised: the build is most of the cost, and
/// a few seconds of slower fuzzing still replays the corpus and mutates it.
pub fn smoke() -> anyhow::Result<()> {
    run_targets(&all_targets()?, SMOKE_SECONDS, Build::Dev)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Build {
    Dev,
    Release,
}

/// Type-checks the targets on nightly (what lint asks; no libFuzzer build needed).
pub fn check() -> anyhow::Result<()> {
    let mut check = cargo(Some("+nightly"));
    check
        .arg("check")
        .arg("--manifest-path")
        .arg(fuzz_dir().join("Cargo.toml"));
    check
        .arg("--bins")
        .arg("--target-dir")
        .arg(target_dir()?.join("fuzz"));
    succeed(check)
}

fn run_targets(targets: &[String], seconds: u32, build: Build) -> anyhow::Result<()> {
    toolchain::ensure()?;
    ensure_cargo_fuzz()?;
    for target in targets {
        // New inputs go to a scratch corpus; the committed one is only read, so a smoke run
        // leaves the tree as it was.
        let scratch = target_dir()?.join("fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        let mut fuzz = cargo(Some("+nightly"));
        fuzz.args(["fuzz", "run", "--fuzz-dir"]).arg(fuzz_dir());
        if build == Build::Dev {
            fuzz.arg("--dev");
        }
        fuzz.arg("--target-dir").arg(target_dir()?.join("fuzz"));
        fuzz.arg(target)
            .arg(&scratch)
            .arg(fuzz_dir().join("corpus").join(target));
        fuzz.arg("--").arg(format!("-max_total_time={seconds}"));
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        succeed(fuzz).with_context(|| format!("fuzz target {target}"))?;
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let installed = Command::new("cargo")
        .env("PATH", toolchain::path_with_cargo_bin())
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if installed {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz");
    let mut install = cargo(None);
    install.args([
        "install",
        "--locked",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
    ]);
    succeed(install)
}
