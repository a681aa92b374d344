//! The binary's contract with its user: exit codes, one-sentence errors, clean pipe closing,
//! self-limiting runs.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    Outcome,
    expect::check,
    tracer::{Reachable, Tracer, backend, binary},
    workload::{Kind, Socket, V4, free_port},
};

/// Bad arguments: clap's error, exit 2, no backtrace.
pub fn bad_arguments_exit_2() -> Outcome {
    for args in [
        ["--port", "0"],
        ["--port", "65536"],
        ["--port", "abc"],
        ["--port", "200-100"],
    ] {
        let output = Command::new(binary()).args(args).output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        check(output.status.code() == Some(2), || {
            format!("{args:?} exited {:?}", output.status)
        })?;
        check(
            stderr.starts_with("error:") && !stderr.contains("panicked"),
            || format!("{args:?} printed {stderr}"),
        )?;
    }
    Ok(())
}

/// Without privileges: one sentence naming what is needed, exit 1. Runs as nobody, which drops
/// every capability.
pub fn unprivileged_exit_1() -> Outcome {
    let output = Reachable::binary()?
        .command()
        .args(["--port", "60312"])
        .uid(65534)
        .gid(65534)
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    check(output.status.code() == Some(1), || {
        format!("exited {:?}: {stderr}", output.status)
    })?;
    check(
        stderr.lines().count() == 1 && stderr.contains("needs root"),
        || format!("unclear message: {stderr}"),
    )
}

/// `portwatch | head -1`: once the reader goes away, portwatch exits 0 at its next write.
pub fn closed_pipe_is_a_clean_exit() -> Outcome {
    let port = free_port();
    let mut child = Command::new(binary())
        .args([
            "--json",
            "--backend",
            &backend(),
            "--port",
            &port.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
    let mut line = String::new();
    while !line.starts_with("portwatch: attached") {
        line.clear();
        if stderr.read_line(&mut line)? == 0 {
            return Err("portwatch exited before attaching".into());
        }
    }
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let socket = Socket::new(Kind::Udp, V4)?;
    socket.bind(port)?;
    let mut first = String::new();
    stdout.read_line(&mut first)?;
    check(first.contains("\"event\":\"claim\""), || {
        format!("first line: {first}")
    })?;
    // No further event comes (the socket stays open): portwatch must notice the reader went
    // away by itself, not at its next write.
    drop(stdout);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut rest = String::new();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("portwatch kept running after its stdout closed".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    socket.close();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
    check(status.code() == Some(0), || {
        format!("exit {status:?}, stderr: {rest}")
    })?;
    check(
        !rest.contains("panicked") && !rest.contains("Broken pipe"),
        || rest.clone(),
    )
}

/// `--count 2` stops by itself after two events and prints the summary. Three bind+close
/// rounds make six events; which two come first is not fixed: a socket's free waits while a
/// process another scenario forks at that moment holds a copy of its descriptor.
pub fn count_stops_the_trace() -> Outcome {
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string(), "--count", "2"])?;
    for _ in 0..3 {
        let socket = Socket::rebinding(Kind::Udp, V4)?;
        socket.bind(port)?;
    }
    let trace = tracer.wait()?;
    check(trace.exit_code == Some(0), || {
        format!("exit {:?}", trace.exit_code)
    })?;
    check(trace.events.len() == 2, || {
        format!("{} events: {:?}", trace.events.len(), trace.events)
    })?;
    check(trace.events[0]["event"] == "claim", || {
        format!(
            "the first event should be the first claim: {:?}",
            trace.events
        )
    })?;
    let count = |kind: &str| {
        trace
            .events
            .iter()
            .filter(|event| event["event"] == kind)
            .count()
    };
    let wanted = format!(
        "claim={} listen=0 free={} fail=0 held=0 lost=0",
        count("claim"),
        count("free")
    );
    let counts = trace
        .summary()
        .map(|summary| summary.split(" skipped_runs=").next().unwrap_or(summary));
    check(counts == Some(wanted.as_str()), || {
        format!("summary {:?}, not {wanted:?}", trace.summary())
    })
}
