//! portwatch: see, live, every moment a local port is claimed or freed, by which process, and
//! every claim that failed and why.

mod backend;
mod btf;
mod cli;
mod clock;
mod event;
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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("portwatch: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(trace::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("portwatch: {err:#}");
            ExitCode::FAILURE
        }
    }
}
