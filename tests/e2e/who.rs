//! `portwatch who PORT`: the real binary against real sockets this process holds, checked
//! through its JSON and exit code (0 held, 1 free).

use std::{os::unix::process::CommandExt, process::Command};

use serde_json::Value;

use crate::{
    Outcome,
    expect::{check, only, want},
    sharing::closed_by_another_process,
    tracer::{Reachable, Tracer, binary},
    workload::{Kind, Socket, V4, V6, free_port, tcp_listener},
};

/// What one `portwatch who PORT --json` run printed and how it exited.
struct Answer {
    exit_code: Option<i32>,
    port: Value,
    stderr: String,
}

impl Answer {
    fn sockets(&self) -> &[Value] {
        self.port["sockets"].as_array().map_or(&[], Vec::as_slice)
    }
}

fn who(port: u16, as_nobody: bool) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let reachable = as_nobody.then(Reachable::binary).transpose()?;
    let mut command = match &reachable {
        Some(copy) => {
            let mut command = copy.command();
            command.uid(65534).gid(65534);
            command
        }
        None => Command::new(binary()),
    };
    command.args(["who", &port.to_string(), "--json"]);
    let output = command.output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    check(lines.len() == 1, || {
        format!("expected one JSON line, got {stdout:?} (stderr {stderr:?})")
    })?;
    let port_answer: Value = serde_json::from_str(lines[0])?;
    check(port_answer["port"] == port, || {
        format!("answer for the wrong port: {port_answer}")
    })?;
    Ok(Answer {
        exit_code: output.status.code(),
        port: port_answer,
        stderr,
    })
}

/// Exactly one socket on the port, with these fields.
fn only_socket(answer: &Answer, fields: &[(&str, Value)]) -> Outcome {
    check(answer.exit_code == Some(0), || {
        format!("exit {:?}, stderr {:?}", answer.exit_code, answer.stderr)
    })?;
    check(answer.port["held"] == true, || answer.port.to_string())?;
    let sockets = answer.sockets();
    check(sockets.len() == 1, || {
        format!("expected one socket: {}", answer.port)
    })?;
    for (key, value) in fields {
        check(&sockets[0][*key] == value, || {
            format!(
                "{key} is {}, expected {value}: {}",
                sockets[0][*key], sockets[0]
            )
        })?;
    }
    Ok(())
}

fn me() -> Value {
    std::process::id().into()
}

/// A TCP listener: state, address, no peer, and this process as its holder.
pub fn who_tcp_listener() -> Outcome {
    let port = free_port();
    let _listener = tcp_listener(V4, port)?;
    only_socket(
        &who(port, false)?,
        &[
            ("proto", "tcp".into()),
            ("family", "ipv4".into()),
            ("state", "listen".into()),
            ("local_addr", "127.0.0.1".into()),
            ("local_port", port.into()),
            ("remote_addr", Value::Null),
            ("pid", me()),
            ("uid", 0.into()),
        ],
    )
}

/// A UDP socket bound on IPv6 loopback.
pub fn who_udp_socket() -> Outcome {
    let port = free_port();
    let socket = Socket::new(Kind::Udp, V6)?;
    socket.bind(port)?;
    only_socket(
        &who(port, false)?,
        &[
            ("proto", "udp".into()),
            ("family", "ipv6".into()),
            ("state", "unconnected".into()),
            ("local_addr", "::1".into()),
            ("pid", me()),
        ],
    )
}

/// A connection this side closed first leaves a TIME_WAIT socket, which still holds the port
/// (exit 0) but belongs to no process.
///
/// Under qemu the TIME_WAIT socket sometimes did not show (who said the port was free in 2 of
/// about 36 guest suite runs on 2026-11-26, once for a whole second of asking again), and the
/// cause is not known: the server's FIN left waiting for ksoftirqd, /proc/net/tcp (the guests' fallback)
/// skipping a line while other scenarios changed the table, or no TIME_WAIT made at all. So the
/// connection is made again, on fresh ports, up to three times; what `who` says of a TIME_WAIT
/// it does see is checked in full.
pub fn who_time_wait() -> Outcome {
    let mut looked_free = Vec::new();
    for _ in 0..3 {
        let (server_port, client_port) = (free_port(), free_port());
        // A probe socket of free_port may live on for a moment in another scenario's forked
        // child (until it execs): the ports are then taken, so this attempt counts as not run.
        let bound = tcp_listener(V4, server_port).and_then(|listener| {
            let client = Socket::new(Kind::Tcp, V4)?;
            client.bind(client_port)?;
            Ok((listener, client))
        });
        let (listener, client) = match bound {
            Ok(bound) => bound,
            Err(err) if err.raw_os_error() == Some(libc::EADDRINUSE) => continue,
            Err(err) => return Err(err.into()),
        };
        client.connect(server_port)?;
        let accepted = listener.accept()?;
        client.close();
        accepted.close();
        listener.close();
        let mut answer = who(client_port, false)?;
        for _ in 0..10 {
            if answer.exit_code != Some(1) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            answer = who(client_port, false)?;
        }
        if answer.exit_code == Some(1) {
            looked_free.push(client_port);
            continue;
        }
        return only_socket(
            &answer,
            &[
                ("state", "time_wait".into()),
                ("local_addr", "127.0.0.1".into()),
                ("remote_addr", "127.0.0.1".into()),
                ("remote_port", server_port.into()),
                ("pid", Value::Null),
                ("uid", Value::Null),
                ("no_process", "kernel".into()),
            ],
        );
    }
    Err(format!(
        "three attempts, no TIME_WAIT socket seen by who (client ports that looked free: \
         {looked_free:?}; the others could not be bound)"
    )
    .into())
}

/// Nothing on the port: exit 1, no sockets.
pub fn who_free_port() -> Outcome {
    let port = free_port();
    let answer = who(port, false)?;
    check(answer.exit_code == Some(1), || {
        format!("exit {:?}, stderr {:?}", answer.exit_code, answer.stderr)
    })?;
    check(
        answer.port["held"] == false && answer.sockets().is_empty(),
        || answer.port.to_string(),
    )
}

/// Whether portwatch can see bound-only TCP sockets here: sock_diag lists them since Linux 6.8,
/// unless portwatch had to fall back to /proc/net/tcp (said in `stderr`), which never does.
fn lists_bound_inactive(stderr: &str) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse::<u32>().ok());
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (6, 8)
        && !stderr.contains("/proc/net/tcp")
}

/// A TCP socket bound but neither listening nor connected: shown where the kernel lists such
/// sockets, and said to be invisible where it does not.
pub fn who_bound_not_listening() -> Outcome {
    let port = free_port();
    let socket = Socket::new(Kind::Tcp, V4)?;
    socket.bind(port)?;
    let answer = who(port, false)?;
    if lists_bound_inactive(&answer.stderr) {
        only_socket(
            &answer,
            &[
                ("proto", "tcp".into()),
                ("state", "bound_inactive".into()),
                ("local_addr", "127.0.0.1".into()),
                ("pid", me()),
            ],
        )
    } else {
        check(
            answer.exit_code == Some(1) && answer.stderr.contains("bound but neither listening"),
            || format!("exit {:?}, stderr {:?}", answer.exit_code, answer.stderr),
        )
    }
}

/// Without root: the socket and its user are shown, its process (root's) is not, and portwatch
/// says why.
pub fn who_unprivileged() -> Outcome {
    let port = free_port();
    let _listener = tcp_listener(V6, port)?;
    let answer = who(port, true)?;
    only_socket(
        &answer,
        &[
            ("state", "listen".into()),
            ("local_addr", "::1".into()),
            ("uid", 0.into()),
            ("pid", Value::Null),
            ("no_process", "hidden".into()),
        ],
    )?;
    check(
        answer.stderr.contains("not readable by this user") && !answer.stderr.contains("panicked"),
        || format!("stderr: {:?}", answer.stderr),
    )
}

/// A TCP socket bound but not listening when tracing starts is a `held` holder (where the
/// kernel lists such sockets), and its free names this process even though another process,
/// handed the socket later, closes it.
pub fn held_bound_not_listening() -> Outcome {
    let me = std::process::id();
    let port = free_port();
    let socket = Socket::new(Kind::Tcp, V4)?;
    socket.bind(port)?;
    let tracer = Tracer::start(&["--port", &port.to_string()])?;
    let closer = closed_by_another_process(socket)?;
    let trace = tracer.stop()?;
    check(closer != me, || "the socket was closed here".to_owned())?;
    let events = trace.on_port(port);
    if !lists_bound_inactive(&trace.stderr.join("\n")) {
        return check(
            trace
                .stderr
                .iter()
                .any(|line| line.contains("bound but neither listening")),
            || format!("no note about bound-only sockets: {:?}", trace.stderr),
        );
    }
    only(
        &events,
        &[
            want("held", port, me, "tcp", "ipv4").with("state", "bound_inactive"),
            want("free", port, me, "tcp", "ipv4").with("claimer_seen", Value::Null),
        ],
    )
}
