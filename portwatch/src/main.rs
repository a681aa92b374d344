//! portwatch: see, live, every moment a local port is claimed or freed, by which process, and
//! every claim that failed and why.

mod backend;
mod btf;
mod cli;
mod clock;
mod event;
#[cfg(test)]
mod fuzz_replay;
mod loader;
mod ports;
mod privileges;
mod sink;
mod snapshot;
mod stream;
mod trace;

use std::process::ExitCode;

fn main() -> ExitCode {
    let config = match cli::Config::from_args() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("portwatch: {err:#}");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("portwatch: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: cli::Config) -> anyhow::Result<()> {
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
