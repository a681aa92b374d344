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
mod metrics_server;
mod ports;
mod pressure;
mod privileges;
mod sink;
mod snapshot;
mod stream;
mod trace;
mod verify;

use std::{io::Write as _, process::ExitCode};

fn main() -> ExitCode {
    let command = match cli::Command::from_args() {
        Ok(command) => command,
        Err(err) => {
            eprintln!("portwatch: {err:#}");
            return ExitCode::from(2);
        }
    };
    match command {
        cli::Command::Trace(config) => exit_code(run_trace(*config)),
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
        cli::Command::Completions(shell) => exit_code(print(&cli::completions(shell))),
        cli::Command::Man(dir) => exit_code(
            cli::man_pages(&dir)
                .map_err(|err| anyhow::anyhow!("writing man pages to {}: {err}", dir.display())),
        ),
    }
}

fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err, ExitCode::FAILURE),
    }
}

/// One sentence on stderr, and the command's exit code for errors.
fn fail(err: &anyhow::Error, code: ExitCode) -> ExitCode {
    eprintln!("portwatch: {err:#}");
    code
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
    // Before any eBPF work: a capture file that cannot be written or a metrics address that
    // cannot be bound is one sentence, at once.
    let output = config
        .output
        .as_ref()
        .map(|options| sink::open_output(&options.path))
        .transpose()?;
    let metrics = config.metrics.map(metrics_server::bind).transpose()?;
    // Before the runtime starts: the loader forks, which is only sound single-threaded.
    let loaded = loader::load(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| anyhow::anyhow!("starting the async runtime: {err}"))?;
    runtime.block_on(trace::run(config, loaded, output, metrics))
}
