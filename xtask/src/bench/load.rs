//! The load generator: churns sockets on one pinned core as fast as it can.
//!
//! It runs as a separate process (xtask re-executed as `bench --load-only <workload>`) rather than
//! as threads of the orchestrator, so the events it causes can be picked out by its pid alone, and
//! the orchestrator's own bookkeeping never shares its core. The hot loops call libc directly so
//! that one op is exactly the syscalls named below and nothing else.

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::cpu;

/// A socket churn pattern; each op creates and releases exactly one port claim per socket.
#[derive(Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Workload {
    /// TCP `socket` + `bind(127.0.0.1:0)` + `close`.
    Bind,
    /// TCP `socket` + `connect` to a local listener + `accept4` + `close` of both ends.
    Connect,
    /// UDP `socket` + `sendto(127.0.0.1:<sink>)` without bind (the kernel autobinds) + `close`.
    Udp,
    /// No sockets: `getppid` + `read` of 64 bytes from /dev/zero, what every other process on
    /// the host does. Shows what a tracer costs the calls it does not trace.
    Syscalls,
}

impl Workload {
    /// Run order. Connect churn goes last: it leaves up to a minute of TIME_WAIT sockets behind,
    /// which portwatch lists as `held` at startup, and they should not slow the other rows.
    pub const ALL: [Workload; 4] = [
        Workload::Syscalls,
        Workload::Bind,
        Workload::Udp,
        Workload::Connect,
    ];

    /// The name used on the command line.
    pub fn arg(self) -> &'static str {
        match self {
            Workload::Bind => "bind",
            Workload::Connect => "connect",
            Workload::Udp => "udp",
            Workload::Syscalls => "syscalls",
        }
    }

    /// What one op does, for the results table.
    pub fn describe(self) -> &'static str {
        match self {
            Workload::Bind => "TCP bind+close",
            Workload::Connect => "TCP connect+accept+close",
            Workload::Udp => "UDP sendto+close",
            Workload::Syscalls => "unrelated getppid+read",
        }
    }
}

/// What one load run achieved.
pub struct LoadRun {
    /// The load generator's pid: portwatch's `pid` key and bpftrace's `pid=` field for its events.
    pub pid: u32,
    pub ops: u64,
    pub seconds: f64,
}

impl LoadRun {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
}

/// Runs `workload` for `seconds` in a fresh xtask process and waits for its result.
pub fn spawn(workload: Workload, seconds: f64) -> Result<LoadRun> {
    let exe = std::env::current_exe().context("locating the xtask binary to re-execute")?;
    let child = Command::new(exe)
        .args(["bench", "--load-only", workload.arg(), "--seconds"])
        .arg(seconds.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the load generator")?;
    let pid = child.id();
    let out = child
        .wait_with_output()
        .context("waiting for the load generator")?;
    if !out.status.success() {
        bail!(
            "load generator ({}) failed with {}: {}",
            workload.arg(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let result: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing the load generator's result")?;
    let ops = result["ops"].as_u64().context("load result lacks `ops`")?;
    let seconds = result["seconds"]
        .as_f64()
        .context("load result lacks `seconds`")?;
    Ok(LoadRun { pid, ops, seconds })
}

/// The child side: pins itself, churns for `seconds`, and prints `{"ops":N,"seconds":S}`.
///
/// Setup sockets (the listener, the UDP sink) are opened before the clock starts and closed
/// explicitly before exit, so a tracer sees their release as a `close` like any other.
pub fn run(workload: Workload, seconds: f64) -> Result<()> {
    let placement = cpu::placement()?;
    cpu::pin_current(&cpu::cpu_set(&[placement.load])).context("pinning the load generator")?;
    let duration = Duration::from_secs_f64(seconds);
    let (ops, elapsed) = match workload {
        Workload::Bind => churn(duration, bind_op)?,
        Workload::Connect => {
            let listener = listener()?;
            let target = loopback(local_port(&listener)?);
            let result = churn(duration, || connect_op(&listener, &target))?;
            drop(listener);
            result
        }
        Workload::Udp => {
            let sink = udp_sink()?;
            let target = loopback(local_port(&sink)?);
            let result = churn(duration, || udp_op(&target))?;
            drop(sink);
            result
        }
        Workload::Syscalls => {
            let zero = std::fs::File::open("/dev/zero").context("opening /dev/zero")?;
            let mut buffer = [0u8; 64];
            churn(duration, || unrelated_op(&zero, &mut buffer))?
        }
    };
    let result = serde_json::json!({ "ops": ops, "seconds": elapsed.as_secs_f64() });
    writeln!(io::stdout(), "{result}").context("writing the load result")?;
    Ok(())
}

/// Repeats `op` until `duration` has passed; returns completed ops and the exact time taken.
///
/// The clock is read once per batch: reading it per op would add a measurable share of a
/// microsecond-scale op, and a batch overshoots the deadline by a few hundred microseconds at most.
fn churn(duration: Duration, mut op: impl FnMut() -> io::Result<()>) -> Result<(u64, Duration)> {
    const BATCH: u64 = 64;
    let start = Instant::now();
    let mut ops = 0;
    loop {
        for _ in 0..BATCH {
            op().with_context(|| format!("socket op #{} failed", ops + 1))?;
            ops += 1;
        }
        if start.elapsed() >= duration {
            return Ok((ops, start.elapsed()));
        }
    }
}

/// Workload 1: one port claimed by an explicit bind to port 0, released by close.
fn bind_op() -> io::Result<()> {
    let fd = socket(libc::SOCK_STREAM)?;
    bind(&fd, &loopback(0))
}

/// Workload 2, both ends in this one thread: a blocking connect to a loopback listener completes
/// the handshake before it returns (loopback delivers in the sender's context), so the following
/// blocking accept4 never waits.
///
/// The server end closes first. That puts TIME_WAIT on the accepted socket, whose local port is
/// the listener's: TIME_WAIT entries then differ only in the client's port and never hold an
/// ephemeral port hostage, so connect churn does not run out of ports. The client's port is free
/// the moment its close completes. SO_LINGER 0 would avoid TIME_WAIT altogether, but then no
/// `free` would ever carry `time_wait`, and real servers that close first do produce it.
fn connect_op(listener: &OwnedFd, target: &libc::sockaddr_in) -> io::Result<()> {
    let client = socket(libc::SOCK_STREAM)?;
    // SAFETY: `target` is a valid sockaddr_in and its size is passed with it.
    let rc = unsafe {
        libc::connect(
            client.as_raw_fd(),
            (target as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    check(rc)?;
    // SAFETY: null address and length pointers are allowed: the peer address is not wanted.
    let server = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    // SAFETY: accept4 returned a fresh descriptor (checked non-negative) that nothing else owns.
    let server = unsafe { OwnedFd::from_raw_fd(check(server)?) };
    drop(server);
    drop(client);
    Ok(())
}

/// Workload 3: the port is claimed by the kernel's autobind inside sendto, released by close.
fn udp_op(target: &libc::sockaddr_in) -> io::Result<()> {
    let fd = socket(libc::SOCK_DGRAM)?;
    // SAFETY: the buffer is one valid byte; `target` is a valid sockaddr_in passed with its size.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            b"x".as_ptr().cast(),
            1,
            0,
            (target as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Workload 4: two syscalls no tracer of ports has any business with.
fn unrelated_op(zero: &std::fs::File, buffer: &mut [u8; 64]) -> io::Result<()> {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() };
    // SAFETY: `buffer` is a writable 64-byte array and its length is passed with it.
    let read = unsafe { libc::read(zero.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
    if read != buffer.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The listener for workload 2; a deep backlog, though each connection is accepted at once.
fn listener() -> Result<OwnedFd> {
    let fd = socket(libc::SOCK_STREAM)?;
    bind(&fd, &loopback(0)).context("binding the listener")?;
    // SAFETY: plain syscall on a descriptor this function owns.
    check(unsafe { libc::listen(fd.as_raw_fd(), 1024) }).context("listen")?;
    Ok(fd)
}

/// The UDP target for workload 3: bound, never read. Once its receive buffer fills, the kernel
/// drops further datagrams silently, which is cheaper than the ICMP port-unreachable a closed
/// port would answer every datagram with (and that ICMP traffic would not be part of the op).
fn udp_sink() -> Result<OwnedFd> {
    let fd = socket(libc::SOCK_DGRAM)?;
    bind(&fd, &loopback(0)).context("binding the UDP sink")?;
    Ok(fd)
}

fn socket(kind: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, 0) };
    // SAFETY: socket returned a fresh descriptor (checked non-negative) that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(check(fd)?) })
}

fn bind(fd: &OwnedFd, addr: &libc::sockaddr_in) -> io::Result<()> {
    // SAFETY: `addr` is a valid sockaddr_in and its size is passed with it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    check(rc).map(drop)
}

/// The port the kernel picked for a socket bound to port 0.
fn local_port(fd: &OwnedFd) -> Result<u16> {
    // SAFETY: sockaddr_in is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` and `len` describe a writable sockaddr_in-sized buffer.
    let rc = unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut addr).cast(), &mut len) };
    check(rc).context("getsockname")?;
    Ok(u16::from_be(addr.sin_port))
}

fn loopback(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Turns a libc return value into a Result, reading errno on failure.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
