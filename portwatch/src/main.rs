//! portwatch: see, live, every moment a local port is claimed or freed, by which process, and
//! every claim that failed and why.

mod backend;
mod btf;
mod cli;
mod clock;
mod event;
mod loader;
mod ports;
mod privileges;
mod sink;
mod snapshot;
mod stream;
mod trace;
mod who;

use std::process::ExitCode;

fn main() -> ExitCode {
    let command = match cli::Command::from_args() {
        Ok(command) => command,
        Err(err) => {
            eprintln!("portwatch: {err:#}");
            return ExitCode::from(2);
        }
    };
    match command {
        cli::Command::Trace(config) => exit_code(run_trace(config).map(|()| ExitCode::SUCCESS), 1),
        cli::Command::Who(config) => exit_code(who::run(&config), who::ERROR),
    }
}

/// The command's own exit code, or `on_error` after printing the error in one sentence.
fn exit_code(outcome: anyhow::Result<ExitCode>, on_error: u8) -> ExitCode {
    outcome.unwrap_or_else(|err| {
        eprintln!("portwatch: {err:#}");
        ExitCode::from(on_error)
    })
}

fn run_trace(config: cli::Config) -> anyhow::Result<()> {
    privileges::check()?;
    privileges::raise_memlock_limit();
    if config.check {
        return trace::check(&config);
    }
    // Before the runtime starts: the loader forks, which is only sound single-threaded.
    let loaded = loader::load(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| anyhow::anyhow!("starting the async runtime: {err}"))?;
    runtime.block_on(trace::run(config, loaded))
}
