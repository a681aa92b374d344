//! `cargo xtask vm-test`: the kernel matrix.
//!
//! portwatch has three ways to hook the kernel, and which of them work depends on the kernel, not on
//! the machine that builds it. So the end-to-end suite is run inside Debian's stock cloud kernels,
//! booted in qemu with software emulation (KVM is not available everywhere this runs), once per
//! backend, and the outcome is printed as a kernel × backend matrix.
//!
//! One boot per kernel runs every backend: a boot under TCG costs seconds, the suites cost minutes.

pub mod apt;
pub mod arch;
pub mod busybox;
mod cpio;
mod host;
pub mod initramfs;
pub mod kernels;
mod matrix;
pub mod packages;
mod payload;
pub mod protocol;
pub mod qemu;
mod subset;
mod verdict;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

use arch::Arch;
use kernels::{Kernel, Spec};
use matrix::{Matrix, Row};
use payload::Payload;
use protocol::Report;

/// Options of `cargo xtask vm-test`.
#[derive(clap::Args)]
pub struct VmArgs {
    /// Kernels to boot: Debian's newest cloud kernel of each series, `6.1` for this machine's
    /// architecture, `arm64/6.1` for arm64 (emulated on qemu's `virt` board). Not in the default
    /// set: the arm64 rows (`arm64/6.1`, `arm64/6.12`, `arm64/7.3`), whose tracers do not attach
    /// within the suite's waits under emulation on a two-CPU host (see
    /// portwatch/docs/platforms.md).
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = Spec::parse,
        default_values = ["5.10", "6.1", "6.12", "7.2", "7.3"]
    )]
    pub kernels: Vec<Spec>,
    /// Backends to run the suite with.
    #[arg(long, value_delimiter = ',', default_values = ["kprobe", "fentry", "tracepoint"])]
    pub backends: Vec<Backend>,
    /// Seconds one backend's suite may run inside the guest before it counts as hung. The suite
    /// took 220-360 s per backend under single-threaded TCG with three guests on two host CPUs
    /// (2026-11-26); it has grown since, and on 7.3 under heavy host load one backend's suite
    /// took 613 s (2026-12-03).
    #[arg(long, default_value_t = 900)]
    pub timeout_secs: u64,
    /// How many kernels boot at once. The suites mostly wait (one scenario waits out the kernel's
    /// 60 s TIME_WAIT timer), so guests overlap well even on a two-CPU machine; three at once
    /// on two CPUs is what the suites' waits were measured under.
    #[arg(long, default_value_t = 3)]
    pub jobs: usize,
    /// Use only kernels cached by an earlier run; touch no network.
    #[arg(long)]
    pub offline: bool,
    /// Add a row for this machine: the suite with each backend it supports, after the kernels.
    #[arg(long)]
    pub with_host: bool,
    /// Run only the scenarios whose names contain this (libtest's filter, e.g. `parity::`), to
    /// look into one failure without a whole matrix run. Letters, digits, `_` and `:` only.
    #[arg(long, value_name = "FILTER", value_parser = scenario_filter)]
    pub scenarios: Option<String>,
    /// Run every scenario in every row: by default the arm64 rows leave out the topics that do
    /// not depend on the architecture (see portwatch/docs/platforms.md).
    #[arg(long)]
    pub all: bool,
    /// Use this portwatch binary instead of building it (needs --e2e too; this machine's
    /// architecture only).
    #[arg(long, requires = "e2e", value_name = "PATH")]
    pub portwatch: Option<PathBuf>,
    /// Use this end-to-end test binary instead of building it (needs --portwatch too).
    #[arg(long, requires = "portwatch", value_name = "PATH")]
    pub e2e: Option<PathBuf>,
}

/// A portwatch backend, named as on portwatch's command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Backend {
    Kprobe,
    Fentry,
    Tracepoint,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Kprobe => "kprobe",
            Backend::Fentry => "fentry",
            Backend::Tracepoint => "tracepoint",
        }
    }

    /// The backend named `name`, as portwatch prints it.
    pub fn parse(name: &str) -> Option<Backend> {
        Backend::from_str(name, false).ok()
    }
}

/// A scenario filter goes into the guest's shell script unquoted, so it may hold only what a
/// scenario name holds.
fn scenario_filter(text: &str) -> Result<String, String> {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        Ok(text.to_string())
    } else {
        Err("a scenario filter holds only letters, digits, '_' and ':'".into())
    }
}

/// Guest time allowed between two progress lines on top of a backend's `--check` and its suite
/// (each bounded by `--timeout-secs` inside the guest): booting.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(60);

pub fn run(args: VmArgs) -> Result<()> {
    let specs = sorted_unique(args.kernels);
    let backends = sorted_unique(args.backends);
    if args.timeout_secs == 0 || args.jobs == 0 {
        bail!("--timeout-secs and --jobs must be positive");
    }
    let mut arches: Vec<Arch> = specs.iter().map(|spec| spec.arch).collect();
    if args.with_host {
        arches.push(Arch::HOST);
    }
    let arches = sorted_unique(arches);
    let given = args.portwatch.zip(args.e2e);
    if given.is_some() && arches.iter().any(|&arch| arch != Arch::HOST) {
        bail!(
            "--portwatch and --e2e are binaries for this machine; they cannot run in {} guests",
            arches
                .iter()
                .map(|arch| arch.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    packages::ensure(packages::KERNEL_MATRIX)?;
    if arches.contains(&Arch::Arm64) {
        packages::ensure(packages::ARM64_MATRIX)?;
    }

    let dir = crate::project::target_dir()?.join("vm");
    let kernels = kernels::resolve(&dir, &specs, args.offline)?;
    for kernel in &kernels {
        println!(
            "kernel {}: {} {} ({})",
            kernel.name(),
            kernel.package,
            kernel.version,
            if kernel.btf {
                "CONFIG_DEBUG_INFO_BTF=y"
            } else {
                "no CONFIG_DEBUG_INFO_BTF: fentry cannot work"
            },
        );
    }

    // One payload per architecture, and an image per payload and scenario selection.
    let selection = |kernel: &Kernel| match (&args.scenarios, args.all) {
        (Some(filter), _) => Some(filter.clone()),
        (None, true) => None,
        (None, false) => subset::skips(kernel.spec()),
    };
    let mut images = BTreeMap::new();
    let mut host_payload = None;
    for &arch in &arches {
        let payload = match &given {
            Some((portwatch, e2e)) => Payload {
                portwatch: portwatch.clone(),
                e2e: e2e.clone(),
            },
            None => payload::build(arch)?,
        };
        let busybox = busybox::find(&dir, arch, args.offline)?;
        let guest = initramfs::Guest {
            arch,
            busybox: &busybox,
        };
        for kernel in kernels.iter().filter(|kernel| kernel.arch == arch) {
            let scenarios = selection(kernel);
            let key = (arch, scenarios.clone());
            if images.contains_key(&key) {
                continue;
            }
            let name = match (&args.scenarios, &scenarios) {
                (None, Some(_)) => format!("initramfs-{}-subset.cpio", arch.name()),
                _ => format!("initramfs-{}.cpio", arch.name()),
            };
            let initrd = dir.join(name);
            let init = protocol::init_script(&backends, args.timeout_secs, scenarios.as_deref());
            initramfs::build(&initrd, &guest, &payload, &init)?;
            images.insert(key, initrd);
        }
        if arch == Arch::HOST {
            host_payload = Some(payload);
        }
    }

    let logs = dir.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    // A backend's begin and result lines enclose its `--check` and its suite: under arm64
    // emulation the check alone took up to 200 s (2026-12-03), so one timeout was not enough.
    let watchdog = 2 * Duration::from_secs(args.timeout_secs) + BOOT_ALLOWANCE;
    let mut rows = run_all(&kernels, args.jobs, |kernel| {
        let scenarios = selection(kernel);
        let subset = args.scenarios.is_none() && scenarios.is_some();
        let initrd = &images[&(kernel.arch, scenarios)];
        let mut row = run_kernel(kernel, initrd, &logs, &backends, watchdog)?;
        if subset {
            row.kernel = format!("{}, {}", row.kernel, subset::label());
        }
        Ok(row)
    })?;
    if let (true, Some(payload)) = (args.with_host, &host_payload) {
        rows.push(host::row(&payload.portwatch, &payload.e2e, &backends)?);
    }

    let matrix = Matrix { backends, rows };
    println!("\n{}", matrix.to_text());
    let markdown = dir.join("matrix.md");
    fs::write(&markdown, matrix.to_markdown())
        .with_context(|| format!("writing {}", markdown.display()))?;
    println!("matrix written to {}", markdown.display());

    let failed = matrix.failed_cells();
    for cell in &failed {
        println!("\n{}", cell.describe_failure());
    }
    if !failed.is_empty() {
        bail!("{} cell(s) of the kernel matrix failed", failed.len());
    }
    Ok(())
}

/// Runs `boot` on every kernel, `jobs` at a time, and returns the rows in the kernels' order.
/// Guests of another architecture start first: they take longest (emulating arm64 costs more),
/// and started last they would leave the other workers idle at the end.
fn run_all(
    kernels: &[Kernel],
    jobs: usize,
    boot: impl Fn(&Kernel) -> Result<Row> + Sync,
) -> Result<Vec<Row>> {
    let mut order: Vec<usize> = (0..kernels.len()).collect();
    order.sort_by_key(|&index| kernels[index].arch == Arch::HOST);
    let next = AtomicUsize::new(0);
    let worker = || -> Result<Vec<(usize, Row)>> {
        let mut rows = Vec::new();
        loop {
            let Some(&index) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                return Ok(rows);
            };
            let kernel = &kernels[index];
            rows.push((index, boot(kernel)?));
        }
    };
    let mut rows = thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs.min(kernels.len()))
            .map(|_| scope.spawn(worker))
            .collect();
        let mut rows = Vec::new();
        for handle in workers {
            let done = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a boot thread panicked"))??;
            rows.extend(done);
        }
        anyhow::Ok(rows)
    })?;
    rows.sort_by_key(|(index, _)| *index);
    Ok(rows.into_iter().map(|(_, row)| row).collect())
}

/// Boots `kernel` once, runs every backend's suite in it and judges what the guest reported.
/// Its progress lines carry the series, since several kernels may boot at once.
fn run_kernel(
    kernel: &Kernel,
    initrd: &Path,
    logs: &Path,
    backends: &[Backend],
    watchdog: Duration,
) -> Result<Row> {
    let series = kernel.name();
    println!("{series}: booting {} ...", kernel.release);
    let log = logs.join(format!("{}.log", kernel.release));
    let console = qemu::boot(
        kernel.arch,
        &kernel.vmlinuz,
        initrd,
        &log,
        watchdog,
        |line| {
            let marker = protocol::marker(line);
            if let Some(marker) = marker {
                println!("{series}:   {marker}");
            }
            marker.is_some()
        },
    )?;
    let report = Report::parse(&console.lines);
    if let Some(facts) = &report.kernel {
        println!(
            "{series}: guest: uname -r {}, /sys/kernel/btf/vmlinux {}, {} traceable functions",
            facts.release, facts.btf, facts.filter_functions
        );
    }
    let step_logs = protocol::write_step_logs(
        &console.lines,
        logs,
        &kernel.release,
        &protocol::steps(backends),
    )?;
    println!(
        "{series}: {} after {:.0} s",
        verdict::how_it_ended(&report, &console),
        console.elapsed.as_secs_f64()
    );
    Ok(verdict::kernel_row(
        kernel, backends, &report, &console, &log, &step_logs,
    ))
}

fn sorted_unique<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items.dedup();
    items
}
