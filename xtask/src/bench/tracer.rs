//! Running a tracer around a load run: start it, wait until it is attached, stop it, and measure
//! what it cost (CPU time and peak RSS from `wait4`'s rusage, time from spawn to ready).

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::cpu;

/// How long a tracer may take to attach before the run is abandoned (bpftrace compiles its
/// script with LLVM first, which takes seconds on a slow machine).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a tracer may take to flush and exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often SIGINT is repeated while waiting for a tracer to exit.
const RESIGNAL: Duration = Duration::from_secs(5);
/// The line portwatch prints to stderr once every probe is attached.
const PORTWATCH_READY: &str = "portwatch: attached";

/// A tracer process that is attached and tracing.
pub struct Tracer {
    child: Child,
    reaped: bool,
    stderr_lines: Receiver<String>,
    stderr_reader: Option<JoinHandle<()>>,
    spawned: Instant,
    ready: Duration,
    status_line: Option<String>,
}

/// What a tracer cost, known once it has exited.
pub struct Stopped {
    /// From spawn until attached and ready.
    pub ready: Duration,
    /// User plus system CPU time of the tracer process.
    pub cpu: Duration,
    /// Peak resident set size, in KiB.
    pub peak_rss_kib: u64,
    /// portwatch's `portwatch: attached ...` line (None for bpftrace).
    pub status_line: Option<String>,
    /// Everything else it printed to stderr (portwatch's summary line is among it).
    pub stderr: Vec<String>,
}

impl Tracer {
    /// Starts portwatch with `args`, stdout to `output`; ready once it prints its attached line.
    pub fn portwatch(binary: &Path, args: &[&str], output: &Path, cpus: &[usize]) -> Result<Self> {
        let mut command = Command::new(binary);
        command.args(args);
        let mut tracer = Self::spawn(command, output, cpus)?;
        let mut early = Vec::new();
        loop {
            let remaining = READY_TIMEOUT.saturating_sub(tracer.spawned.elapsed());
            match tracer.stderr_lines.recv_timeout(remaining) {
                Ok(line) if line.starts_with(PORTWATCH_READY) => {
                    tracer.ready = tracer.spawned.elapsed();
                    tracer.status_line = Some(line);
                    return Ok(tracer);
                }
                Ok(line) => early.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    bail!("portwatch printed no `{PORTWATCH_READY}` line within {READY_TIMEOUT:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = tracer.child.wait()?;
                    tracer.reaped = true;
                    bail!(
                        "portwatch exited with {status} before attaching:\n{}",
                        early.join("\n")
                    )
                }
            }
        }
    }

    /// Starts bpftrace on `script`, stdout to `output`; ready once `ready_file` exists.
    ///
    /// bpftrace fully buffers output written to a file, so a marker line in the output cannot
    /// signal readiness without making every event line unbuffered (which would overstate its
    /// cost). Instead the script's `BEGIN` probe, which bpftrace fires after attaching all other
    /// probes, runs `touch` on `ready_file` (hence `--unsafe`).
    pub fn bpftrace(
        script: &Path,
        ready_file: &Path,
        output: &Path,
        cpus: &[usize],
    ) -> Result<Self> {
        match std::fs::remove_file(ready_file) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                return Err(err).context("removing the stale bpftrace ready file");
            }
            _ => {}
        }
        let mut command = Command::new("bpftrace");
        command.arg("--unsafe").arg(script);
        let mut tracer = Self::spawn(command, output, cpus)?;
        tracer.wait_until("bpftrace", || ready_file.exists())?;
        Ok(tracer)
    }

    /// Starts a libbpf tool (Debian's libbpf-tools) with `args`, stdout to `output`; ready once
    /// it waits in its event loop.
    ///
    /// The tools print nothing readable on attaching: their header goes to stdout, which a file
    /// buffers. But they attach every probe before they first wait for events, in `epoll_wait`
    /// on their perf buffer, and `/proc/PID/syscall` names the syscall a process waits in.
    pub fn libbpf_tool(
        binary: &Path,
        args: &[&str],
        output: &Path,
        cpus: &[usize],
    ) -> Result<Self> {
        let mut command = Command::new(binary);
        command.args(args);
        let mut tracer = Self::spawn(command, output, cpus)?;
        let syscall = format!("/proc/{}/syscall", tracer.child.id());
        let name = binary.file_name().unwrap_or_default().to_string_lossy();
        tracer.wait_until(&name, || waits_in_epoll(&syscall))?;
        Ok(tracer)
    }

    /// Polls `ready` until it holds, and records when; fails if the tracer exits first or takes
    /// longer than `READY_TIMEOUT`.
    fn wait_until(&mut self, name: &str, ready: impl Fn() -> bool) -> Result<()> {
        while !ready() {
            if let Some(status) = self.child.try_wait()? {
                self.reaped = true;
                let stderr: Vec<String> = self.stderr_lines.try_iter().collect();
                bail!(
                    "{name} exited with {status} before attaching:\n{}",
                    stderr.join("\n")
                );
            }
            if self.spawned.elapsed() > READY_TIMEOUT {
                bail!("{name} did not attach within {READY_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(1));
        }
        self.ready = self.spawned.elapsed();
        Ok(())
    }

    /// Spawns `command` pinned to `cpus`, stdout to `output`, stderr read line by line.
    fn spawn(mut command: Command, output: &Path, cpus: &[usize]) -> Result<Self> {
        let stdout = File::create(output)
            .with_context(|| format!("creating tracer output {}", output.display()))?;
        let set = cpu::cpu_set(cpus);
        // SAFETY: the hook runs between fork and exec and only makes one async-signal-safe
        // syscall (sched_setaffinity) on a set built before the fork.
        unsafe { command.pre_exec(move || cpu::pin_current(&set)) };
        let spawned = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {:?}", command.get_program()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let (sender, stderr_lines) = mpsc::channel();
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            reaped: false,
            stderr_lines,
            stderr_reader: Some(stderr_reader),
            spawned,
            ready: Duration::ZERO,
            status_line: None,
        })
    }

    /// Sends SIGINT (the tracer flushes and prints its summary), reaps it and reads its rusage.
    ///
    /// SIGINT is repeated every `RESIGNAL` while the tracer lives: bpftrace has been seen to
    /// miss a single one now and then, and a repeat costs a well-behaved tracer nothing.
    pub fn stop(mut self) -> Result<Stopped> {
        let pid = self.child.id() as libc::pid_t;
        let started = Instant::now();
        let mut signalled = 0;
        let (status, usage) = loop {
            if started.elapsed() >= RESIGNAL * signalled {
                // SAFETY: `pid` is our child and not yet reaped, so it still names this process.
                unsafe { libc::kill(pid, libc::SIGINT) };
                signalled += 1;
            }
            let mut status = 0;
            // SAFETY: rusage is plain old data; all-zero is valid.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: `status` and `usage` are valid for writes; `pid` is our unreaped child.
            let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if rc == pid {
                self.reaped = true;
                break (status, usage);
            }
            if rc < 0 {
                return Err(io::Error::last_os_error()).context("wait4 on the tracer");
            }
            if started.elapsed() > STOP_TIMEOUT {
                bail!("tracer did not exit within {STOP_TIMEOUT:?} of SIGINT");
            }
            thread::sleep(Duration::from_millis(2));
        };
        if let Some(reader) = self.stderr_reader.take() {
            reader.join().expect("the stderr reader does not panic");
        }
        let stderr: Vec<String> = self.stderr_lines.try_iter().collect();
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            bail!(
                "tracer exited abnormally after SIGINT (wait status {status:#x}):\n{}",
                stderr.join("\n")
            );
        }
        Ok(Stopped {
            ready: self.ready,
            cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
            peak_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
            status_line: self.status_line.take(),
            stderr,
        })
    }
}

impl Drop for Tracer {
    /// A run that fails half-way must not leave a tracer attached to the host.
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether the process whose `/proc/PID/syscall` is `path` waits in `epoll_wait`,
/// `epoll_pwait` or `epoll_pwait2` (the file starts with the syscall's number while it is in one).
fn waits_in_epoll(path: &str) -> bool {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let number = text.split_whitespace().next().and_then(|n| n.parse().ok());
    [
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
    ]
    .iter()
    .any(|&epoll| number == Some(epoll))
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
}
