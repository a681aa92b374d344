//! portwatch: see, live, every moment a local port is claimed or freed, by which process, and
//! every claim that failed and why.

mod backend;
mod btf;
mod capture;
mod cli;
mod clock;
mod enrich;
mod event;
mod holders;
mod loader;
mod ports;
mod privileges;
mod report;
mod sink;
mod snapshot;
mod stream;
mod trace;
mod verify;

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
        cli::Command::Trace(config) => match run_trace(*config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(&err, ExitCode::FAILURE),
        },
        cli::Command::Verify(files) => match verify::verify(&files) {
            Ok(verify::Verdict::Whole(report)) => {
                println!("portwatch verify: {report}");
                ExitCode::SUCCESS
            }
            Ok(verify::Verdict::Broken { path, line, reason }) => {
                println!("portwatch verify: {path}:{line}: {reason}");
                ExitCode::FAILURE
            }
            Err(err) => fail(&err.into(), ExitCode::from(2)),
        },
        cli::Command::Report(options) => match report::run(&options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                // The error's own sentence names the file and cause; its source would repeat it.
                fail(&anyhow::anyhow!("{err}"), ExitCode::from(err.exit_code()))
            }
        },
    }
}

/// One sentence on stderr, and the command's exit code for errors.
fn fail(err: &anyhow::Error, code: ExitCode) -> ExitCode {
    eprintln!("portwatch: {err:#}");
    code
}

fn run_trace(config: cli::Config) -> anyhow::Result<()> {
    privileges::check()?;
    privileges::raise_memlock_limit();
    if config.check {
        return trace::check(&config);
    }
    // Before any eBPF work: a capture file that cannot be written is one sentence, at once.
    let output = config
        .output
        .as_ref()
        .map(|options| sink::open_output(&options.path))
        .transpose()?;
    // Before the runtime starts: the loader forks, which is only sound single-threaded.
    let loaded = loader::load(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| anyhow::anyhow!("starting the async runtime: {err}"))?;
    runtime.block_on(trace::run(config, loaded, output))
}
