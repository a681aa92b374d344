//! portwatch: see, live, every moment a local port is claimed or freed, by which process, and
//! every claim that failed and why.

use std::{io::Write as _, process::ExitCode};

use portwatch::{
    cli,
    commands::{config::TraceConfig, ephemeral, report, trace, verify, who},
    host::netns,
    kernel::{loader, privileges},
    model::ports,
    output::{metrics_server, sink},
};

fn main() -> ExitCode {
    let command = match cli::Command::from_args() {
        Ok(command) => command,
        Err(err) => {
            eprintln!("portwatch: {err:#}");
            return ExitCode::from(2);
        }
    };
    match command {
        cli::Command::Trace(config) => exit_code(run_trace(*config).map(|()| ExitCode::SUCCESS), 1),
        cli::Command::Verify(files) => exit_code(run_verify(&files), 2),
        cli::Command::Who(config) => exit_code(who::run(&config), who::ERROR),
        cli::Command::Ephemeral => exit_code(ephemeral::run().map(|()| ExitCode::SUCCESS), 1),
        cli::Command::Report(options) => match report::run(&options) {
            Ok(()) => ExitCode::SUCCESS,
            // The error's own sentence names the file and cause; its source would repeat it.
            Err(err) => exit_code(Err(anyhow::anyhow!("{err}")), err.exit_code()),
        },
        cli::Command::Completions(shell) => exit_code(
            print(&cli::completions(shell)).map(|()| ExitCode::SUCCESS),
            1,
        ),
        cli::Command::Man(dir) => exit_code(
            cli::man_pages(&dir)
                .map(|()| ExitCode::SUCCESS)
                .map_err(|err| anyhow::anyhow!("writing man pages to {}: {err}", dir.display())),
            1,
        ),
    }
}

/// The command's own exit code, or `on_error` after printing the error in one sentence.
fn exit_code(outcome: anyhow::Result<ExitCode>, on_error: u8) -> ExitCode {
    outcome.unwrap_or_else(|err| {
        eprintln!("portwatch: {err:#}");
        ExitCode::from(on_error)
    })
}

/// 0 when the capture is whole, 1 at the first place it is not.
fn run_verify(files: &[std::path::PathBuf]) -> anyhow::Result<ExitCode> {
    match verify::verify(files)? {
        verify::Verdict::Whole(report) => {
            println!("portwatch verify: {report}");
            Ok(ExitCode::SUCCESS)
        }
        verify::Verdict::Broken { path, line, reason } => {
            println!("portwatch verify: {path}:{line}: {reason}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Writes generated text to stdout; a reader that stops early (`| head`) is not an error.
fn print(text: &[u8]) -> anyhow::Result<()> {
    match std::io::stdout().write_all(text) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(err.into()),
        _ => Ok(()),
    }
}

fn run_trace(config: TraceConfig) -> anyhow::Result<()> {
    let config = config.with_ephemeral_range(ports::ephemeral())?;
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
    // Forked while portwatch has one thread and every capability: it keeps CAP_SYS_ADMIN, which
    // the tracer gives up, to read other namespaces' ephemeral ranges for pressure events.
    let namespaces = (config.pressure_pct > 0)
        .then(netns::RangeReader::spawn)
        .and_then(Result::ok);
    // Before the runtime starts: the loader forks, which is only sound single-threaded.
    let loaded = loader::load(&config.load_spec())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| anyhow::anyhow!("starting the async runtime: {err}"))?;
    runtime.block_on(trace::run(config, loaded, output, metrics, namespaces))
}
