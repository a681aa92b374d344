//! `portwatch report` over real captures: the holders, times and failures it tells must be what
//! the scenario did, losses must be stated, and bad input must name its file and line.

use std::{
    fs, io,
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

use crate::{
    Outcome, Skip,
    capture::{churn, files_in, scratch},
    expect::check,
    tracer::{self, Trace, Tracer, flood_alone},
    workload::{Kind, Socket, V4, V6, free_port, tcp_connection, tcp_listener},
};

/// Clocks may differ by this much: portwatch maps kernel time to wall time once, at start-up.
const SLACK_NS: u128 = 50_000_000;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}

const DAY_NS: u128 = 86_400 * 1_000_000_000;

/// The time of day, in nanoseconds, of a time the report wrote (`...T09:50:00.123456789Z`).
/// Comparing times of day needs no calendar (busybox guests have no `date` either).
fn nanos_of_day(what: &str, value: &Value) -> Result<u128, String> {
    let text = value
        .as_str()
        .ok_or_else(|| format!("{what}: {value} is not a time"))?;
    let clock = text
        .split_once('T')
        .and_then(|(_, clock)| clock.strip_suffix('Z'))
        .ok_or_else(|| format!("{what}: {text:?} is not an RFC 3339 UTC time"))?;
    let (whole, fraction) = clock.split_once('.').unwrap_or((clock, "0"));
    let fields: Vec<u128> = whole
        .split(':')
        .chain(std::iter::once(fraction))
        .map(|field| field.parse().map_err(|_| format!("{what}: {text:?}")))
        .collect::<Result<_, _>>()?;
    let [hours, minutes, seconds, nanos] = fields[..] else {
        return Err(format!("{what}: {text:?} is not HH:MM:SS.nnnnnnnnn"));
    };
    Ok(((hours * 60 + minutes) * 60 + seconds) * 1_000_000_000 + nanos)
}

/// A tracer on `ports` writing the capture `ports.jsonl` in `dir`, with `options` added.
fn capture_in(
    dir: &std::path::Path,
    ports: &str,
    options: &[&str],
) -> Result<(Tracer, PathBuf), Box<dyn std::error::Error + Send + Sync>> {
    let file = dir.join("ports.jsonl");
    let mut args = vec!["--port", ports, "--output", file.to_str().ok_or("path")?];
    args.extend_from_slice(options);
    Ok((Tracer::start(&args)?, file))
}

/// `portwatch report ARGS FILES`: exit code, stdout, stderr.
fn report(args: &[&str], files: &[PathBuf]) -> std::io::Result<(Option<i32>, String, String)> {
    let output = Command::new(tracer::binary())
        .arg("report")
        .args(args)
        .args(files)
        .output()?;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

fn report_json(
    args: &[&str],
    files: &[PathBuf],
) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
    let mut args = args.to_vec();
    args.push("--json");
    let (code, stdout, stderr) = report(&args, files)?;
    check(code == Some(0), || {
        format!("report --json exited {code:?}: {stderr}")
    })?;
    Ok(serde_json::from_str(&stdout)?)
}

/// The report's entry for one port of one protocol.
fn port<'a>(report: &'a Value, proto: &str, port: u16) -> Result<&'a Value, String> {
    report["ports"]
        .as_array()
        .and_then(|ports| {
            ports
                .iter()
                .find(|entry| entry["proto"] == proto && entry["port"] == port)
        })
        .ok_or_else(|| format!("the report has no {proto} port {port}: {}", report["ports"]))
}

/// The report's time `value` lies within `[before, after]` (wall-clock nanoseconds), give or
/// take the clocks' slack; midnight may fall in between.
fn within(what: &str, value: &Value, (before, after): (u128, u128)) -> Outcome {
    let at = nanos_of_day(what, value)?;
    let from = (before - SLACK_NS) % DAY_NS;
    let into = (at + DAY_NS - from) % DAY_NS;
    check(into <= after - before + 2 * SLACK_NS, || {
        format!(
            "{what} at {value}, outside what the scenario did: {} ns from {before} to {after}",
            into as i128 - SLACK_NS as i128
        )
    })
}

/// How much later than its `close()` a socket's release may come: the release is the last
/// reference's, and every process another scenario spawns holds a copy of this process's
/// descriptors from its fork to its exec, which under an emulated guest's load can take tens of
/// milliseconds. A release is never earlier than the close, so only the end is widened.
const RELEASE_LAG_NS: u128 = 2_000_000_000;

/// A release's time lies within `closed`, or up to [`RELEASE_LAG_NS`] after it.
fn released_within(what: &str, value: &Value, (before, after): (u128, u128)) -> Outcome {
    within(what, value, (before, after + RELEASE_LAG_NS))
}

/// What the scenario did, with wall-clock bounds around each step.
struct Done {
    listen_port: u16,
    client_port: u16,
    udp_port: u16,
    churn_port: u16,
    listened: (u128, u128),
    conflict: (u128, u128),
    closed: (u128, u128),
}

/// A listener with a failed bind on its port, a connection whose client closes first (its
/// explicitly bound port stays in TIME_WAIT), a UDP bind and its conflict, and churn that rotates
/// the capture into gzipped parts.
fn do_things(
    listen_port: u16,
    client_port: u16,
    udp_port: u16,
    churn_port: u16,
) -> Result<Done, Box<dyn std::error::Error + Send + Sync>> {
    let before = now_ns();
    let listener = tcp_listener(V4, listen_port)?;
    let listened = (before, now_ns());
    thread::sleep(Duration::from_millis(100));
    let before = now_ns();
    let refused = Socket::new(Kind::Tcp, V4)?.bind(listen_port);
    let conflict = (before, now_ns());
    check(refused.is_err(), || "the second bind succeeded".into())?;
    let client = Socket::new(Kind::Tcp, V4)?;
    client.bind(client_port)?;
    client.connect(listen_port)?;
    let accepted = listener.accept()?;
    let udp = Socket::new(Kind::Udp, V6)?;
    udp.bind(udp_port)?;
    check(Socket::new(Kind::Udp, V6)?.bind(udp_port).is_err(), || {
        "the second UDP bind succeeded".into()
    })?;
    churn(churn_port, 200)?;
    thread::sleep(Duration::from_millis(100));
    let before = now_ns();
    client.close();
    thread::sleep(Duration::from_millis(50));
    accepted.close();
    listener.close();
    udp.close();
    let closed = (before, now_ns());
    Ok(Done {
        listen_port,
        client_port,
        udp_port,
        churn_port,
        listened,
        conflict,
        closed,
    })
}

/// A real capture (rotated, gzipped, sealed) of known sockets: the report names this process as
/// the holder of each port, with claim and release times inside the steps that made them, the
/// failed bind with its errno and its holder, TIME_WAIT on the client's port, nothing lost; the
/// text says the same, and --port and --until narrow it.
pub fn report_tells_what_the_capture_saw() -> Outcome {
    let me = std::process::id();
    let dir = scratch("report")?;
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let list = ports.map(|port| port.to_string()).join(",");
    let (tracer, _) = capture_in(
        &dir,
        &list,
        &[
            "--rotate-size",
            "16K",
            "--rotate-keep",
            "100",
            "--compress",
            "--seal",
            "--quiet",
        ],
    )?;
    let done = do_things(ports[0], ports[1], ports[2], ports[3]);
    let trace = tracer.stop()?;
    let done = done?;
    check(trace.exit_code == Some(0), || {
        format!("portwatch exited {:?}: {:?}", trace.exit_code, trace.stderr)
    })?;
    let files = files_in(&dir)?;
    check(files.len() >= 2, || {
        format!("the capture did not rotate: {files:?}")
    })?;
    let json = report_json(&["--detail"], &files)?;
    check(
        json["lost"]["events"] == 0
            && json["lost"]["summary_seen"] == true
            && json["lost"]["missing_records"] == 0,
        || format!("the report's losses: {}", json["lost"]),
    )?;

    let listener = port(&json, "tcp", done.listen_port)?;
    let holders = listener["holders"].as_array().ok_or("no holders")?;
    let bound = holders
        .iter()
        .find(|hold| hold["how"] == "bind")
        .ok_or_else(|| format!("no bind holder on the listener's port: {holders:?}"))?;
    check(
        bound["pid"] == me && bound["listening"] == true && bound["claim_seen"] == true,
        || format!("listener hold: {bound}"),
    )?;
    within("the listener's claim", &bound["from"], done.listened)?;
    released_within("the listener's release", &bound["until"], done.closed)?;
    check(
        holders
            .iter()
            .any(|hold| hold["how"] == "accept" && hold["pid"] == me),
        || format!("no accepted socket among {holders:?}"),
    )?;

    let failures = listener["failures"].as_array().ok_or("no failures")?;
    check(failures.len() == 1, || {
        format!("expected one failure on the listener's port: {failures:?}")
    })?;
    let failure = &failures[0];
    check(
        failure["errno"] == "EADDRINUSE" && failure["pid"] == me && failure["how"] == "bind",
        || format!("failure: {failure}"),
    )?;
    within("the failed bind", &failure["ts"], done.conflict)?;
    let holder = &failure["holder"];
    check(holder["pid"] == me && holder["state"] == "listen", || {
        format!("the failure's holder: {holder}")
    })?;

    let client = port(&json, "tcp", done.client_port)?;
    let client_hold = &client["holders"][0];
    check(
        client_hold["pid"] == me
            && client_hold["how"] == "bind"
            && client_hold["time_wait"] == true,
        || format!("the client's port should be in TIME_WAIT after its close: {client_hold}"),
    )?;
    released_within("the client's close", &client_hold["closed"], done.closed)?;

    let udp = port(&json, "udp", done.udp_port)?;
    check(
        udp["holders"][0]["family"] == "ipv6"
            && udp["failures"][0]["errno"] == "EADDRINUSE"
            && udp["failures"][0]["holder"]["pid"] == me,
        || format!("udp port: {udp}"),
    )?;
    let churned = port(&json, "udp", done.churn_port)?;
    check(
        churned["holders"].as_array().map(Vec::len) == Some(200),
        || {
            format!(
                "{} churn holds, 200 made",
                churned["holders"].as_array().map_or(0, Vec::len)
            )
        },
    )?;
    let busiest = &json["busiest"][0];
    check(
        busiest["pid"] == me && busiest["claims"].as_u64() >= Some(204) && busiest["failures"] == 2,
        || format!("busiest: {busiest}"),
    )?;

    let (code, text, stderr) = report(&["--detail"], &files)?;
    check(code == Some(0) && stderr.is_empty(), || {
        format!("report exited {code:?}: {stderr}")
    })?;
    for wanted in [
        "lost: none (the kernel dropped no events)".to_string(),
        format!(
            "tcp {}  bind 127.0.0.1: EADDRINUSE  1x at ",
            done.listen_port
        ),
        format!("tcp port {}", done.listen_port),
        format!("[{me}]  bind 127.0.0.1: EADDRINUSE; held by "),
        format!("[{me}] (listen since "),
        "+ TIME_WAIT to".to_string(),
        "ephemeral ports 32768-".to_string(),
        "(200 holds one after another".to_string(),
    ] {
        check(text.contains(&wanted), || {
            format!("the text report lacks {wanted:?}:\n{text}")
        })?;
    }

    let narrowed = report_json(&["--port", &done.udp_port.to_string()], &files)?;
    let ports_left: Vec<&Value> = narrowed["ports"]
        .as_array()
        .ok_or("no ports")?
        .iter()
        .collect();
    check(
        ports_left.len() == 1 && ports_left[0]["port"] == done.udp_port,
        || format!("--port left {ports_left:?}"),
    )?;
    // Between the listen and the failed bind, as an offset from the start of the capture.
    let start = nanos_of_day("the capture's start", &json["span"]["from"])?;
    let middle = ((done.listened.1 + done.conflict.0) / 2) % DAY_NS;
    let until = format!("+{}ms", (middle + DAY_NS - start) % DAY_NS / 1_000_000);
    let early = report_json(&["--until", &until], &files)?;
    let early_listener = port(&early, "tcp", done.listen_port)?;
    check(
        early_listener["failures"]
            .as_array()
            .is_some_and(Vec::is_empty),
        || format!("--until {until} still shows {}", early_listener["failures"]),
    )?;
    fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A tiny ring buffer and a stalled tracer: the report must state the loss the summary counted.
pub fn report_states_lost_events() -> Outcome {
    let dir = scratch("report-lost")?;
    let port = free_port();
    let (tracer, file) = capture_in(&dir, &port.to_string(), &["--ring-kib", "4", "--quiet"])?;
    tracer.pause();
    let churned = churn(port, 300);
    tracer.resume();
    let trace = tracer.stop()?;
    churned?;
    let summary = trace.summary().ok_or("no summary")?.to_string();
    let lost = trace
        .summary_count("lost")
        .ok_or_else(|| format!("summary {summary:?}"))?;
    check(lost > 0, || {
        format!("nothing lost with a 4 KiB ring: {summary}")
    })?;
    let json = report_json(&[], std::slice::from_ref(&file))?;
    check(json["lost"]["events"] == lost, || {
        format!(
            "the report says lost {} where the summary says {lost}",
            json["lost"]
        )
    })?;
    let (_, text, _) = report(&[], &[file])?;
    let wanted = format!("lost: {lost} events dropped by the kernel");
    check(text.contains(&wanted), || {
        format!("the text report lacks {wanted:?}:\n{text}")
    })?;
    fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A capture cut mid-line (the last part) and mid-stream (a gzipped part): --strict stops at the
/// first with exit 1 naming file and line; the default names each once and reports the rest.
pub fn truncated_capture_is_named_by_file_and_line() -> Outcome {
    let dir = scratch("report-torn")?;
    let port = free_port();
    let (tracer, file) = capture_in(
        &dir,
        &port.to_string(),
        &[
            "--rotate-size",
            "8K",
            "--rotate-keep",
            "100",
            "--compress",
            "--quiet",
        ],
    )?;
    let churned = churn(port, 150);
    let trace = tracer.stop()?;
    churned?;
    check(trace.exit_code == Some(0), || {
        format!("portwatch exited {:?}", trace.exit_code)
    })?;
    let text = fs::read_to_string(&file)?;
    let lines: Vec<&str> = text.lines().collect();
    check(lines.len() >= 4, || {
        format!("the live part has only {} lines", lines.len())
    })?;
    // Cut the live part in the middle of its third line.
    let keep: usize =
        lines[..2].iter().map(|line| line.len() + 1).sum::<usize>() + lines[2].len() / 2;
    fs::write(&file, &text.as_bytes()[..keep])?;
    let torn = format!("{}:3:", file.display());
    let gzipped = dir.join("ports.jsonl.1.gz");
    let gz = fs::read(&gzipped)?;
    fs::write(&gzipped, &gz[..gz.len() / 2])?;
    let files = files_in(&dir)?;

    let (code, stdout, stderr) = report(&["--strict"], &files)?;
    check(
        code == Some(1) && stdout.is_empty() && stderr.lines().count() == 1,
        || format!("--strict: exit {code:?}, stdout {stdout:?}, stderr {stderr:?}"),
    )?;
    check(
        stderr.contains(&format!("{}:", gzipped.display())) || stderr.contains(&torn),
        || format!("--strict names no file and line: {stderr}"),
    )?;

    let (code, stdout, stderr) = report(&[], &files)?;
    check(
        code == Some(0) && stdout.contains("portwatch report"),
        || format!("default mode: exit {code:?}, stderr {stderr}"),
    )?;
    let warnings: Vec<&str> = stderr.lines().collect();
    check(
        warnings
            .iter()
            .any(|line| line.contains(&torn) && line.contains("line skipped")),
        || format!("no warning naming {torn}: {warnings:?}"),
    )?;
    check(
        warnings.iter().any(|line| {
            line.contains(&format!("{}:", gzipped.display())) && line.contains("breaks off")
        }),
        || format!("no warning naming the cut gzip part: {warnings:?}"),
    )?;
    check(stdout.contains("unreadable lines skipped"), || {
        format!("the report does not state what it skipped:\n{stdout}")
    })?;
    fs::remove_dir_all(&dir)?;
    Ok(())
}

/// `--html` writes one page that needs nothing from the network: no script, no external
/// reference, a policy that forbids fetching, and the charts inline. (Rendering it is checked in
/// Chromium by `cargo xtask report-page`, on hosts only.)
pub fn report_html_is_self_contained() -> Outcome {
    let dir = scratch("report-html")?;
    let port = free_port();
    let (tracer, file) = capture_in(&dir, &port.to_string(), &["--quiet"])?;
    let listener = tcp_listener(V4, port);
    refuse_a_second_bind(port, listener, tracer)?;
    let page = dir.join("report.html");
    let (code, _, stderr) = report(&["--html", page.to_str().ok_or("path")?], &[file])?;
    check(code == Some(0), || {
        format!("report --html exited {code:?}: {stderr}")
    })?;
    let html = fs::read_to_string(&page)?;
    for wanted in [
        "<svg",
        "id=\"occupancy\"",
        "id=\"hold-times\"",
        "EADDRINUSE",
        "default-src 'none'",
    ] {
        check(html.contains(wanted), || {
            format!("the page lacks {wanted:?}")
        })?;
    }
    for forbidden in ["<script", " src=", " href=", "url(", "<link", "@import"] {
        check(!html.contains(forbidden), || {
            format!("the page is not self-contained: it holds {forbidden:?}")
        })?;
    }
    fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The line of `text` that holds `wanted` (counted from 0), or an error showing the text.
fn line_of(text: &str, wanted: &str) -> Result<usize, String> {
    text.lines()
        .position(|line| line.contains(wanted))
        .ok_or_else(|| format!("the text report lacks {wanted:?}:\n{text}"))
}

/// A listener refused `REFUSED` times by this process at known moments, and a UDP bind
/// refused once: the summary groups the TCP refusals into one line with their count and the
/// first and last time, names the holder, and keeps the UDP refusal apart.
pub fn failed_claims_are_grouped() -> Outcome {
    const REFUSED: usize = 4;
    let me = std::process::id();
    let dir = scratch("report-groups")?;
    let (tcp_port, udp_port) = (free_port(), free_port());
    let (tracer, file) = capture_in(&dir, &format!("{tcp_port},{udp_port}"), &["--quiet"])?;
    let listener = tcp_listener(V4, tcp_port)?;
    let mut attempts = Vec::new();
    for _ in 0..REFUSED {
        thread::sleep(Duration::from_millis(60));
        let before = now_ns();
        let refused = Socket::new(Kind::Tcp, V4)?.bind(tcp_port);
        attempts.push((before, now_ns()));
        check(refused.is_err(), || "a second bind succeeded".into())?;
    }
    let udp = Socket::new(Kind::Udp, V4)?;
    udp.bind(udp_port)?;
    check(Socket::new(Kind::Udp, V4)?.bind(udp_port).is_err(), || {
        "the second UDP bind succeeded".into()
    })?;
    drop((listener, udp));
    let trace = tracer.stop()?;
    check(trace.exit_code == Some(0), || "the tracer failed".into())?;

    let json = report_json(&[], std::slice::from_ref(&file))?;
    let groups = json["failure_groups"]
        .as_array()
        .ok_or("no failure_groups")?;
    check(json["failures"] == REFUSED + 1 && groups.len() == 2, || {
        format!("{REFUSED} + 1 refusals, groups: {groups:?}")
    })?;
    let tcp = &groups[0];
    check(
        tcp["proto"] == "tcp"
            && tcp["port"] == tcp_port
            && tcp["errno"] == "EADDRINUSE"
            && tcp["count"] == REFUSED
            && tcp["claimers"]["top"][0]["of"]["pid"] == me
            && tcp["claimers"]["top"][0]["count"] == REFUSED
            && tcp["sample"]["holder"]["pid"] == me
            && tcp["sample"]["holder"]["state"] == "listen",
        || format!("the tcp group: {tcp}"),
    )?;
    within("the first refusal", &tcp["first"], attempts[0])?;
    within("the last refusal", &tcp["last"], attempts[REFUSED - 1])?;
    let udp = &groups[1];
    check(
        udp["proto"] == "udp" && udp["port"] == udp_port && udp["count"] == 1,
        || format!("the udp group: {udp}"),
    )?;

    let (code, text, _) = report(&[], &[file])?;
    check(code == Some(0), || format!("report exited {code:?}"))?;
    let first = tcp["first"].as_str().ok_or("first")?;
    let last = tcp["last"].as_str().ok_or("last")?;
    // The text's clock is the RFC 3339 time of day cut to microseconds.
    let clock = |rfc: &str| {
        rfc.split_once('T')
            .map(|(_, clock)| clock[..15].to_string())
    };
    let head = format!(
        "tcp {tcp_port}  bind 127.0.0.1: EADDRINUSE  {REFUSED}x from {} to {}",
        clock(first).ok_or("first")?,
        clock(last).ok_or("last")?
    );
    let at = line_of(&text, &head)?;
    let who = text.lines().nth(at + 1).unwrap_or_default();
    check(
        who.contains(&format!("[{me}] ({REFUSED}); held by "))
            && who.contains(&format!("[{me}] (listen since ")),
        || format!("the group's second line: {who:?}\n{text}"),
    )?;
    line_of(
        &text,
        &format!("udp {udp_port}  bind 127.0.0.1: EADDRINUSE  1x at "),
    )?;
    fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Thousands of loopback connections, each on its own ephemeral port, and one refused bind of
/// the listener's port: the default text report stays a screen or two, with the refusal near
/// the top and the ephemeral peak naming this process and the listener as the destination.
pub fn thousands_of_connections_stay_short() -> Outcome {
    const CONNECTIONS: usize = 3000;
    let me = std::process::id();
    let dir = scratch("report-short")?;
    let file = dir.join("ports.jsonl");
    let tracer = Tracer::start(&[
        "--output",
        file.to_str().ok_or("path")?,
        "--pid",
        &me.to_string(),
        "--quiet",
    ])?;
    let port = free_port();
    let listener = tcp_listener(V4, port)?;
    // Loopback connects may reuse a port whose socket is in TIME_WAIT: count the ports given.
    let mut given = std::collections::HashSet::new();
    for _ in 0..CONNECTIONS {
        let (client, accepted, client_port) = tcp_connection(&listener)?;
        given.insert(client_port);
        // The client closes first: its ephemeral port stays in TIME_WAIT, as with a load
        // generator that reconnects for every request.
        drop(client);
        // The server's close is the passive one once the client's FIN is in: the client
        // side, not both, goes to TIME_WAIT.
        accepted.await_peer_close()?;
        drop(accepted);
    }
    refuse_a_second_bind(port, listener, tracer)?;
    let (code, text, stderr) = report(&[], &[file])?;
    check(code == Some(0), || {
        format!("report exited {code:?}: {stderr}")
    })?;
    let lines = text.lines().count();
    check(lines <= 80, || {
        format!("{CONNECTIONS} connections made {lines} lines:\n{text}")
    })?;
    let refusal = line_of(
        &text,
        &format!("tcp {port}  bind 127.0.0.1: EADDRINUSE  1x at "),
    )?;
    check(refusal < 40, || {
        format!("the refusal is at line {}:\n{text}", refusal + 1)
    })?;
    line_of(&text, "read: ")?;
    let peak = line_of(&text, "tcp: peak ")?;
    let peak_ports: usize = text.lines().nth(peak).unwrap_or_default()["  tcp: peak ".len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or("no peak number")?;
    line_of(&text, &format!("[{me}] "))?;
    line_of(&text, &format!("by destination: 127.0.0.1:{port} "))?;
    line_of(&text, &format!("tcp {port}  listening: "))?;
    fs::remove_dir_all(&dir)?;
    // The ports the kernel still holds in TIME_WAIT toward the server were all in use at the
    // end, so the peak is at least that many. Not every port given: the kernel keeps at most
    // `tcp_max_tw_buckets` TIME_WAIT sockets (4,096 in the small guests, shared with the other
    // scenarios) and closes the rest at once, which the trace shows as frees without TIME_WAIT.
    let waiting = in_time_wait_toward(port)?;
    if waiting <= CONNECTIONS / 10 {
        return Err(Skip::because(format!(
            "the peak is not checked: the kernel holds only {waiting} of {CONNECTIONS} \
             connections in TIME_WAIT (its TIME_WAIT table is full)"
        )));
    }
    check(peak_ports >= waiting, || {
        format!(
            "a peak of {peak_ports} ephemeral ports while the kernel holds {waiting} in TIME_WAIT \
             ({} ports given):\n{text}",
            given.len()
        )
    })
}

/// How many IPv4 sockets in TIME_WAIT toward 127.0.0.1:`port` the kernel lists in
/// /proc/net/tcp (state 06; addresses and ports in hex).
fn in_time_wait_toward(port: u16) -> io::Result<usize> {
    let remote = format!("0100007F:{port:04X}");
    Ok(fs::read_to_string("/proc/net/tcp")?
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"06")
        })
        .count())
}

/// The stdout of `portwatch --json` (no capture header, no seq, no summary) is read: the report
/// says in one line what such a stream lacks and reports the refused bind in it. Garbage and a
/// stream given with a capture are one sentence and exit 2.
pub fn plain_json_stream_is_read() -> Outcome {
    let me = std::process::id();
    let dir = scratch("report-plain")?;
    let port = free_port();
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let listener = tcp_listener(V4, port)?;
    let refused = Socket::new(Kind::Tcp, V4)?.bind(port);
    drop(listener);
    let trace = tracer.stop()?;
    check(refused.is_err(), || "the second bind succeeded".into())?;
    let stream = dir.join("stream.jsonl");
    let mut text = String::new();
    for event in &trace.events {
        text.push_str(&serde_json::to_string(event)?);
        text.push('\n');
    }
    fs::write(&stream, text)?;
    let json = report_json(&[], std::slice::from_ref(&stream))?;
    check(
        json["plain_streams"][0] == stream.to_str().ok_or("path")?
            && json["captures"].as_array().is_some_and(Vec::is_empty)
            && json["failure_groups"][0]["port"] == port
            && json["failure_groups"][0]["sample"]["holder"]["pid"] == me,
        || format!("the report of a plain stream: {json}"),
    )?;
    let (code, text, stderr) = report(&[], std::slice::from_ref(&stream))?;
    check(code == Some(0) && stderr.is_empty(), || {
        format!("report exited {code:?}: {stderr}")
    })?;
    let lacks = line_of(
        &text,
        "is a plain --json stream, not a capture: it does not say what was watched",
    )?;
    check(lacks < 4, || {
        format!("the plain-stream note is at line {lacks}")
    })?;
    line_of(
        &text,
        &format!("tcp {port}  bind 127.0.0.1: EADDRINUSE  1x at "),
    )?;

    let garbage = dir.join("notes.txt");
    fs::write(&garbage, "hello\nworld\n")?;
    let (tracer, capture) = capture_in(&dir, &port.to_string(), &["--quiet"])?;
    tracer.stop()?;
    for (files, wanted) in [
        (
            vec![garbage.clone()],
            "neither a capture header nor a portwatch --json record",
        ),
        (
            vec![stream.clone(), capture.clone()],
            "report them separately",
        ),
    ] {
        let (code, stdout, stderr) = report(&[], &files)?;
        check(
            code == Some(2)
                && stdout.is_empty()
                && stderr.lines().count() == 1
                && stderr.contains(wanted)
                && !stderr.contains("panicked"),
            || format!("{files:?}: exit {code:?}, stdout {stdout:?}, stderr {stderr:?}"),
        )?;
    }
    fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A stalled tracer with a tiny ring and a load that causes a known number of events (UDP bind
/// and close: a claim and a free each): the report's delivered claims and frees plus its lost
/// events must add up to what the load caused, exactly.
pub fn report_losses_match_what_the_load_caused() -> Outcome {
    const ROUNDS: usize = 400;
    let _alone = flood_alone();
    let dir = scratch("report-caused")?;
    let port = free_port();
    let (tracer, file) = capture_in(&dir, &port.to_string(), &["--ring-kib", "4", "--quiet"])?;
    tracer.pause();
    let churned = churn(port, ROUNDS);
    tracer.resume();
    let trace = tracer.stop()?;
    churned?;
    check(trace.exit_code == Some(0), || "the tracer failed".into())?;
    let caused = 2 * ROUNDS as u64;
    let json = report_json(&[], &[file])?;
    let delivered = &json["delivered"];
    let count = |kind: &str| delivered[kind].as_u64().unwrap_or(0);
    let lost = json["lost"]["events"].as_u64().ok_or("no lost count")?;
    check(lost > 0, || {
        format!("nothing lost with a stalled 4 KiB ring: {json}")
    })?;
    check(
        count("claim") + count("free") + lost == caused && count("fail") == 0,
        || {
            format!(
                "caused {caused}: the report read {} claims + {} frees and says {lost} lost",
                count("claim"),
                count("free")
            )
        },
    )?;
    fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A second bind of `port`, refused while `listener` holds it; then the listener closes and the
/// tracer stops cleanly, or the scenario did not run as meant.
fn refuse_a_second_bind<L>(
    port: u16,
    listener: L,
    tracer: Tracer,
) -> Result<Trace, Box<dyn std::error::Error + Send + Sync>> {
    let refused = Socket::new(Kind::Tcp, V4)?.bind(port);
    drop(listener);
    let trace = tracer.stop()?;
    check(refused.is_err() && trace.exit_code == Some(0), || {
        "the scenario did not run".into()
    })?;
    Ok(trace)
}
