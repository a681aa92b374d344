//! portwatch: see, live, every moment a local port is claimed or freed, by which process, and
//! every claim that failed and why.

mod backend;
mod btf;
mod cli;
mod clock;
mod event;
mod loader;
mod metrics_server;
mod ports;
mod privileges;
mod sink;
mod snapshot;
mod stream;
mod trace;

use std::{io::Write as _, process::ExitCode};

fn main() -> ExitCode {
    let command = match cli::Command::from_args() {
        Ok(command) => command,
        Err(err) => {
            eprintln!("portwatch: {err:#}");
            return ExitCode::from(2);
        }
    };
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("portwatch: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: cli::Command) -> anyhow::Result<()> {
    match command {
        cli::Command::Trace(config) => run_trace(config),
        cli::Command::Completions(shell) => print(&cli::completions(shell)),
        cli::Command::Man(dir) => cli::man_pages(&dir)
            .map_err(|err| anyhow::anyhow!("writing man pages to {}: {err}", dir.display())),
    }
}

/// Writes generated text to stdout; a reader that stops early (`| head`) is not an error.
fn print(text: &[u8]) -> anyhow::Result<()> {
    match std::io::stdout().write_all(text) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(err.into()),
        _ => Ok(()),
    }
}

fn run_trace(config: cli::Config) -> anyhow::Result<()> {
    privileges::check()?;
    privileges::raise_memlock_limit();
    if config.check {
        return trace::check(&config);
    }
    // Bound with the privileges portwatch started with, and before the slow load.
    let metrics = config.metrics.map(metrics_server::bind).transpose()?;
    // Before the runtime starts: the loader forks, which is only sound single-threaded.
    let loaded = loader::load(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| anyhow::anyhow!("starting the async runtime: {err}"))?;
    runtime.block_on(trace::run(config, loaded, metrics))
}
