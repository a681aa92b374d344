//! The everyday tasks: running portwatch as root, linting, and the whole test command.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{
    project::{cargo, is_root, succeed, target_dir},
    toolchain,
};

pub fn run_portwatch(args: &[String]) -> anyhow::Result<()> {
    toolchain::ensure()?;
    let mut build = cargo(None);
    build.args(["build", "--release", "-p", "portwatch"]);
    succeed(build)?;
    let binary = target_dir()?.join("release/portwatch");
    let mut command = if is_root() {
        Command::new(&binary)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(&binary);
        sudo
    };
    let status = command.args(args).status().context("starting portwatch")?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Everything CI checks, in the order that fails fastest: the host packages the kernel matrix
/// needs (installed when missing, before any build), the toolchain, lint, xtask's own unit tests,
/// portwatch's unit tests, a few seconds of each fuzz target, the benchmark's quick mode, then
/// the end-to-end suite: on this host with every backend it supports and in each kernel of the
/// matrix (one table), or on this host alone.
pub fn test_all(host_only: bool) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the tests load eBPF programs and must run as root (sudo cargo xtask test)");
    }
    crate::vm::packages::ensure(crate::vm::packages::HOST_CHECKS)?;
    if !host_only {
        crate::vm::packages::ensure(crate::vm::packages::KERNEL_MATRIX)?;
    }
    toolchain::ensure()?;
    // The fuzz targets are built and run below, which checks them more than lint's check.
    lint_code()?;
    let mut xtask_units = cargo(None);
    xtask_units.args(["test", "-p", "xtask"]);
    succeed(xtask_units)?;
    let mut unit = cargo(None);
    unit.args(["test", "--release", "-p", "portwatch", "--lib", "--bins"]);
    succeed(unit)?;
    crate::fuzz::smoke()?;
    let xtask = std::env::current_exe().context("locating xtask")?;
    let mut bench = Command::new(&xtask);
    bench.args(["bench", "--quick"]);
    succeed(bench)?;
    // The HTML report rendered in Chromium: on this host only (the guests have no browser).
    let mut report_page = Command::new(&xtask);
    report_page.arg("report-page");
    succeed(report_page)?;
    if host_only {
        let mut e2e = cargo(None);
        e2e.args(["test", "--release", "-p", "portwatch", "--test", "e2e"]);
        return succeed(e2e);
    }
    let mut matrix = Command::new(&xtask);
    matrix.args(["vm-test", "--with-host"]);
    succeed(matrix)
}

/// rustfmt and clippy on every crate; the kernel crate is linted for the BPF target as well,
/// and the fuzz targets are type-checked on nightly.
pub fn lint() -> anyhow::Result<()> {
    lint_code()?;
    crate::fuzz::check()
}

/// rustfmt and clippy on every crate, the kernel crate for the BPF target as well.
fn lint_code() -> anyhow::Result<()> {
    toolchain::ensure()?;
    let mut fmt = cargo(None);
    fmt.args(["fmt", "--all", "--check"]);
    succeed(fmt)?;
    let mut clippy = cargo(None);
    clippy.args([
        "clippy",
        "-p",
        "portwatch",
        "-p",
        "xtask",
        "-p",
        "portwatch-ebpf",
        "--lib",
    ]);
    clippy.args(["--all-targets", "--", "-D", "warnings"]);
    succeed(clippy)?;
    let mut bpf = cargo(Some("+nightly"));
    bpf.args(["clippy", "-p", "portwatch-ebpf", "--bins", "--release"]);
    bpf.args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"]);
    bpf.arg("--target-dir").arg(target_dir()?.join("bpf-lint"));
    bpf.args(["--", "-D", "warnings"]);
    bpf.env("CARGO_CFG_BPF_TARGET_ARCH", std::env::consts::ARCH);
    bpf.env(
        "RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
    );
    succeed(bpf)
}
