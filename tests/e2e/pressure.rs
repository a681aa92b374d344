//! Ephemeral-port pressure: a network namespace whose ephemeral range fills up says so before
//! connects start failing with EADDRNOTAVAIL, and says so again when it eases.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{
    Outcome,
    expect::check,
    lifetimes::bring_loopback_up,
    tracer::Tracer,
    workload::{Kind, Socket, V4, tcp_listener},
};

/// Env var that turns this test binary into the namespace that fills its range.
pub const FILL_ENV: &str = "PORTWATCH_E2E_FILL_RANGE";

/// The narrowed range: ten ports, above the host's usual ephemeral range.
const RANGE: (u16, u16) = (61990, 61999);
const CONNECTIONS: usize = 9;

/// In a new network namespace with a ten-port ephemeral range, nine connections take nine of
/// its ports; then the server closes first, so the clients keep no TIME_WAIT, and all close.
pub fn fill_the_range() -> ! {
    // SAFETY: unshare with a valid flag; this process is single-threaded here.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    }
    bring_loopback_up();
    std::fs::write(
        "/proc/sys/net/ipv4/ip_local_port_range",
        format!("{} {}", RANGE.0, RANGE.1),
    )
    .expect("narrow the ephemeral range");
    let listener = tcp_listener(V4, 41000).expect("listen");
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        let client = Socket::new(Kind::Tcp, V4).expect("socket");
        client.connect(41000).expect("connect");
        connections.push((client, listener.accept().expect("accept")));
    }
    let (clients, accepted): (Vec<_>, Vec<_>) = connections.into_iter().unzip();
    drop(accepted);
    std::thread::sleep(Duration::from_millis(100));
    drop(clients);
    // The tracer enters the namespace through this process to read its range: stay until the
    // parent has seen the tracer print an event of ours, which closes stdin.
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    std::process::exit(0);
}

pub fn pressure_rises_and_eases() -> Outcome {
    let range = format!("{}-{}", RANGE.0, RANGE.1);
    let tracer = Tracer::start(&["--port", &range, "--pressure", "80"])?;
    let mut child = Command::new(std::env::current_exe()?)
        .env(FILL_ENV, "1")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    // Not seeing one fails the checks below, which say what is missing.
    tracer.wait_for(|event| event["pid"] == pid, Duration::from_secs(30));
    drop(child.stdin.take());
    let output = child.wait_with_output()?;
    let trace = tracer.stop()?;
    check(output.status.success(), || {
        format!(
            "namespace child failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    let pressure: Vec<&Value> = trace
        .events
        .iter()
        .filter(|event| event["event"] == "pressure" && event["range"] == range.as_str())
        .filter(|event| event["scope"] == "namespace")
        .collect();
    check(pressure.len() == 2, || {
        format!("expected a rise and an easing, got {pressure:?}")
    })?;
    let (high, eased) = (pressure[0], pressure[1]);
    check(
        high["state"] == "high"
            && high["proto"] == "tcp"
            && high["in_use"] == 8
            && high["range_size"] == 10
            && high["top"][0]["pid"] == pid
            && high["top"][0]["ports"] == 8,
        || format!("the rise: {high}"),
    )?;
    check(eased["state"] == "normal" && eased["in_use"] == 7, || {
        format!("the easing: {eased}")
    })?;
    let host_netns = std::fs::metadata("/proc/self/ns/net").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    })?;
    check(
        high["netns"]
            .as_u64()
            .is_some_and(|netns| netns != host_netns),
        || format!("the rise does not name the child's namespace: {high}"),
    )
}
