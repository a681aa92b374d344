//! Developer commands: `cargo xtask <command>`.
//!
//! Every command first makes sure the eBPF toolchain is present, because a fresh machine (and CI)
//! starts without it and the userspace build embeds the kernel programs.

mod bench;
mod dist;
mod fuzz;
#[cfg(test)]
mod parity_table;
mod project;
mod report_page;
mod soak;
mod tasks;
mod toolchain;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "portwatch developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the eBPF toolchain parts that are missing (nightly rust-src, bpf-linker).
    Setup,
    /// Build portwatch (release) and run it as root with the given arguments.
    Run {
        /// Arguments passed to portwatch, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests, host end-to-end tests, then the kernel matrix in qemu.
    Test {
        /// Skip the kernel matrix (host tests only).
        #[arg(long)]
        host_only: bool,
    },
    /// Lint both crates: rustfmt and clippy (userspace on stable, kernel side on nightly for bpf).
    Lint,
    /// Boot Debian's stock kernels in qemu and run the end-to-end suite per backend.
    VmTest(vm::VmArgs),
    /// Run the cargo-fuzz targets from their committed corpora (nightly; installs cargo-fuzz).
    Fuzz(fuzz::FuzzArgs),
    /// Measure portwatch's overhead against no tracer and bpftrace.
    Bench(bench::BenchArgs),
    /// Render `portwatch report --html` in headless Chromium: charts drawn, no console message,
    /// a screenshot saved (hosts only; needs Debian's chromium).
    ReportPage(report_page::ReportPageArgs),
    /// A long capture under steady churn: rotation, SIGHUP, verify, RSS and maps over time.
    Soak(soak::SoakArgs),
    /// Build the Debian package (binary, systemd unit, completions, man page) into target/dist.
    Dist(dist::DistArgs),
}

fn main() {
    if let Err(err) = run(Cli::parse()) {
        eprintln!("xtask: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Setup => toolchain::ensure(),
        Command::Run { args } => tasks::run_portwatch(&args),
        Command::Test { host_only } => tasks::test_all(host_only),
        Command::Lint => tasks::lint(),
        Command::VmTest(args) => vm::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Soak(args) => soak::run(args),
        Command::Dist(args) => dist::run(args),
        Command::Fuzz(args) => fuzz::run(args),
        Command::ReportPage(args) => report_page::run(args),
    }
}
