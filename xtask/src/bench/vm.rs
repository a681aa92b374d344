//! `cargo xtask bench --vm SERIES`: the benchmark inside one of the matrix's kernels, booted in
//! qemu, so that backends this host cannot run (fentry, kprobe) are compared with the one it can,
//! and with Debian's libbpf-tools, on the same emulated kernel.
//!
//! The guest gets this very xtask binary (its load generator and round logic, see
//! `bench::emulated`), portwatch, and the tools; the host reads the result lines off the serial
//! console and writes the table to `vm/bench-<series>.md`.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::emulated::Tool;
use super::emulated_table::{Header, Table};
use super::libbpf_tools;
use super::machine::Machine;
use crate::project::target_dir;
use crate::vm::arch::Arch;
use crate::vm::initramfs::{self, Executable};
use crate::vm::kernels::{self, Series};
use crate::vm::{busybox, packages, protocol, qemu};

/// What `cargo xtask bench --vm` was asked for.
pub struct Options {
    pub series: Series,
    pub rounds: u32,
    pub seconds: f64,
    pub offline: bool,
    /// A portwatch binary to measure instead of the release build.
    pub portwatch: Option<PathBuf>,
}

/// Longest quiet spell on the console before the guest counts as hung, on top of the load's
/// seconds: a mode prints its result line after a tracer's start (up to a minute under
/// emulation), the load, and a stop (up to half a minute).
const QUIET_ALLOWANCE: Duration = Duration::from_secs(180);

/// The guest's clock counts executed instructions, 2^2 ns each (about the speed TCG runs at
/// here), instead of following the host's clock. Otherwise whatever else the host runs slows
/// the emulator and, through the guest's wall clock, the ops/s of whichever mode ran then: the
/// no-tracer baseline moved by 2.5x between two runs. Idle time still passes at the host's pace
/// (`sleep=on`).
const ICOUNT: [&str; 2] = ["-icount", "shift=2,sleep=on"];

/// qemu's clock arguments for `series`, and the header's sentence about them. 6.1 hung bringing
/// up its second vCPU with `-icount` (shift 2 with sleep on and off, and shift auto; 2026-11-26),
/// so the kernels but 6.12 keep the host's clock and say what that costs.
fn clock(series: Series) -> (&'static [&'static str], String) {
    match series {
        Series::V6_12 => (
            &ICOUNT,
            format!(
                "the guest's clock counts executed instructions (`{}`), so the host's other load \
                 does not move the ratios. They are ratios of emulated work per op: TCG models no \
                 caches, so a hook's cache misses are not in them.",
                ICOUNT.join(" ")
            ),
        ),
        Series::V5_10 | Series::V6_1 | Series::V7_2 | Series::V7_3 => (
            &[],
            "the host's (`-icount` is used on 6.12 only: 6.1 hung bringing up its second vCPU \
             with it), so whatever else the host ran during a mode's rounds moved its ratio; \
             the alternating modes and medians only spread that."
                .to_owned(),
        ),
    }
}

pub fn run(options: Options) -> Result<()> {
    let started = Instant::now();
    packages::ensure(packages::KERNEL_MATRIX)?;
    let dir = target_dir()?.join("vm");
    let spec = kernels::Spec {
        arch: Arch::HOST,
        series: options.series,
    };
    let kernel = kernels::resolve(&dir, &[spec], options.offline)?
        .pop()
        .context("no kernel resolved")?;
    let tools = libbpf_tools::resolve(&dir, options.offline)?;
    let portwatch = match options.portwatch {
        Some(path) => path,
        None => super::binary::build_release()?,
    };
    let xtask = std::env::current_exe().context("locating the xtask binary for the guest")?;

    let tool_binaries: Vec<(Tool, PathBuf)> = Tool::ALL
        .into_iter()
        .map(|tool| (tool, tools.binary(tool.name())))
        .collect();
    let mut executables = vec![
        Executable {
            host: &portwatch,
            name: "portwatch",
            unpacked: None,
        },
        Executable {
            host: &xtask,
            name: "xtask",
            unpacked: None,
        },
    ];
    executables.extend(tool_binaries.iter().map(|(tool, binary)| Executable {
        host: binary,
        name: tool.name(),
        unpacked: Some(&tools.root),
    }));
    let initrd = dir.join("bench-initramfs.cpio");
    let init = protocol::bench_init_script(options.rounds, options.seconds);
    let busybox = busybox::find(&dir, Arch::HOST, options.offline)?;
    let guest = initramfs::Guest {
        arch: Arch::HOST,
        busybox: &busybox,
    };
    initramfs::build_with(&initrd, &guest, &executables, &init)?;

    let logs = dir.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log = logs.join(format!("bench-{}.log", kernel.release));
    println!(
        "booting {} for the benchmark ({} rounds of {} s per mode; console in {}) ...",
        kernel.release,
        options.rounds,
        options.seconds,
        log.display()
    );
    let watchdog = QUIET_ALLOWANCE + Duration::from_secs_f64(options.seconds);
    let (clock_args, clock) = clock(options.series);
    let console = qemu::boot_with(
        Arch::HOST,
        &kernel.vmlinuz,
        &initrd,
        &log,
        watchdog,
        clock_args,
        |line| {
            let marker = protocol::marker(line);
            if let Some(marker) = marker {
                println!("  {marker}");
            }
            marker.is_some()
        },
    )?;
    let report = protocol::Report::parse(&console.lines);
    let table = Table::parse(
        console
            .lines
            .iter()
            .filter_map(|line| protocol::marker(&line.text)),
    );

    let machine = Machine::describe();
    let release = report
        .kernel
        .as_ref()
        .map_or(kernel.release.as_str(), |facts| facts.release.as_str());
    let header = Header {
        kernel: format!("{release} ({} {})", kernel.package, kernel.version),
        clock,
        rounds: options.rounds,
        seconds: options.seconds,
        host: format!("{}, {} cores", machine.cpu_model, machine.cores),
        date: machine.date,
        tools: tools.versions.clone(),
        wall_minutes: started.elapsed().as_secs_f64() / 60.0,
    };
    let markdown = table.markdown(&header);
    println!("\n{markdown}");
    let out = dir.join(format!("bench-{}.md", options.series.name()));
    fs::write(&out, &markdown).with_context(|| format!("writing {}", out.display()))?;
    println!("written to {}", out.display());

    if let Some(error) = &table.error {
        bail!("the guest's benchmark stopped early: {error}");
    }
    if !report.done {
        bail!(
            "the guest did not finish ({}); see {}",
            console.end.describe(),
            log.display()
        );
    }
    Ok(())
}
