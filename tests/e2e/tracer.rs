//! Runs the real portwatch binary as a child and collects what it prints.
//!
//! Every process a scenario starts is killed and reaped however the scenario ends (an early `?`,
//! a panic): a tracer left running would keep its programs attached to the host.

use std::{
    io::{BufRead, BufReader},
    ops::{Deref, DerefMut},
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    sync::{Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// How long portwatch may take to attach. Generous: under qemu's software emulation the
/// verifier alone takes seconds.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(90);

pub fn binary() -> String {
    std::env::var("PORTWATCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_portwatch").to_string())
}

/// A copy of the binary that every user can run, for scenarios that run it as another user: the
/// build's own may sit in a directory only root can enter (a clone under /root, mode 0700). A
/// fresh directory under /tmp, mode 0755, holds the copy (0755) and goes when this is dropped.
pub struct Reachable {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl Reachable {
    pub fn binary() -> std::io::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "portwatch-e2e-reachable-{}-{unique}",
            std::process::id()
        ));
        // Mode 0755 whatever the umask: set again after creating.
        std::fs::DirBuilder::new().mode(0o755).create(&dir)?;
        let copy = Self {
            path: dir.join("portwatch"),
            dir,
        };
        std::fs::set_permissions(&copy.dir, std::fs::Permissions::from_mode(0o755))?;
        std::fs::copy(binary(), &copy.path)?;
        std::fs::set_permissions(&copy.path, std::fs::Permissions::from_mode(0o755))?;
        copy.await_runnable()?;
        Ok(copy)
    }

    /// Runs the copy (`--version`) until it starts. A process another scenario's thread forked
    /// while the copy was open for writing holds that descriptor until it execs, and exec of a
    /// file open for writing fails with ETXTBSY (seen under qemu). Once one run starts, no
    /// process has it open for writing any more, and none can get it.
    fn await_runnable(&self) -> std::io::Result<()> {
        let mut tries = 0;
        loop {
            let started = Command::new(&self.path)
                .arg("--version")
                .stdout(Stdio::null())
                .status();
            match started {
                Err(err) if err.raw_os_error() == Some(libc::ETXTBSY) && tries < 250 => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(20));
                }
                started => return started.map(drop),
            }
        }
    }

    /// A command running the copy, from `/` (the working directory may be unreachable too).
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.path);
        command.current_dir("/");
        command
    }
}

impl Drop for Reachable {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The backend under test: PORTWATCH_BACKEND, or whatever `auto` picks.
pub fn backend() -> String {
    std::env::var("PORTWATCH_BACKEND").unwrap_or_else(|_| "auto".into())
}

/// A child process that is killed (SIGKILL) and reaped when dropped, unless already reaped.
pub struct Guarded(Child);

impl Guarded {
    /// Starts `command`. The child also gets SIGKILL if the thread that started it dies, so not
    /// even a killed test binary leaves one behind.
    pub fn spawn(command: &mut Command) -> std::io::Result<Self> {
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of ours.
        let command = unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        command.spawn().map(Self)
    }

    /// Sends `signal` to the child.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill takes a pid of our own, unreaped child and a valid signal number.
        unsafe { libc::kill(self.0.id() as i32, signal) };
    }
}

impl Deref for Guarded {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // Both are no-ops on a child already waited for: std remembers its status.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Scenarios run in parallel, and a tracer that watches every port gets every other scenario's
/// events in its ring buffer: a flood beside it would overflow that ring and lose the events the
/// scenario waits for. Such tracers hold this lock shared; floods hold it alone ([`flood_alone`]).
static EVERY_PORT: RwLock<()> = RwLock::new(());

/// Keeps every tracer that watches all ports out of the way while the guard lives.
pub fn flood_alone() -> RwLockWriteGuard<'static, ()> {
    EVERY_PORT
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct Tracer {
    child: Guarded,
    /// Held by a tracer without `--port` (see [`EVERY_PORT`]).
    _every_port: Option<RwLockReadGuard<'static, ()>>,
    /// Behind a lock so that a scenario's other threads can wait for events
    /// ([`Tracer::wait_for`]).
    stdout: Mutex<mpsc::Receiver<String>>,
    /// The lines [`Tracer::wait_for`] read, still part of the trace.
    read_early: Mutex<Vec<String>>,
    /// Locked for the same reason as `stdout`: only so that `Tracer` can be shared.
    stderr: Mutex<mpsc::Receiver<String>>,
    /// What portwatch said before its status line (notes about this kernel).
    before_attach: Vec<String>,
    /// The backend named on the status line.
    pub backend: String,
}

/// What a tracer printed, after it stopped.
pub struct Trace {
    pub backend: String,
    pub events: Vec<Value>,
    pub stderr: Vec<String>,
    pub exit_code: Option<i32>,
}

fn lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

impl Tracer {
    /// Starts `portwatch --json --backend <backend> <args>` and waits for its status line.
    pub fn start(args: &[&str]) -> Result<Self, String> {
        Self::start_with(args, |_| {})
    }

    /// As [`Tracer::start`], with the command adjusted first (credentials, for one).
    pub fn start_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Result<Self, String> {
        Self::start_command(Command::new(binary()), args, adjust)
    }

    /// As [`Tracer::start_with`], running `command`'s program (a [`Reachable`] copy, for one).
    pub fn start_command(
        mut command: Command,
        args: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Result<Self, String> {
        command
            .args(["--json", "--backend", &backend()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        adjust(&mut command);
        let every_port = (!args.contains(&"--port")).then(|| {
            EVERY_PORT
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        });
        let mut child =
            Guarded::spawn(&mut command).map_err(|err| format!("starting {}: {err}", binary()))?;
        let stdout = lines(child.stdout.take().expect("piped"));
        let stderr = lines(child.stderr.take().expect("piped"));
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match stderr.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("portwatch: attached backend=") {
                        let backend = rest.split(',').next().unwrap_or_default().to_string();
                        return Ok(Self {
                            child,
                            _every_port: every_port,
                            stdout: Mutex::new(stdout),
                            read_early: Mutex::default(),
                            stderr: Mutex::new(stderr),
                            before_attach: seen,
                            backend,
                        });
                    }
                    seen.push(line);
                }
                // The guard kills and reaps the child on the way out.
                Err(_) => return Err(format!("portwatch did not attach: {}", seen.join(" | "))),
            }
        }
    }

    /// Waits, at most `timeout`, until the tracer prints an event `wanted` accepts; whether it
    /// did. Everything read on the way stays part of the trace.
    pub fn wait_for(&self, wanted: impl Fn(&Value) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let stdout = self.stdout.lock().unwrap_or_else(PoisonError::into_inner);
        while let Ok(line) = stdout.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let found = serde_json::from_str(&line).is_ok_and(|event: Value| wanted(&event));
            self.read_early
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line);
            if found {
                return true;
            }
        }
        false
    }

    /// Stops the tracer process (SIGSTOP) so the ring buffer fills.
    pub fn pause(&self) {
        self.child.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.child.signal(libc::SIGCONT);
    }

    /// `kill -9`: no chance to detach or print anything.
    pub fn kill(mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.child.wait().map(drop)
    }

    /// The tracer's pid, for scenarios that look at it from outside (/proc, kill -9).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: i32) {
        self.child.signal(signal);
    }

    /// Whether the tracer is still running (it has not exited by itself).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Gives in-flight kernel work (softirq closes, timers) a moment, then stops the tracer with
    /// SIGINT and returns everything it printed. A tracer that does not end cleanly (exit 0, no
    /// panic, its summary printed) fails the scenario even when the events it printed matched.
    pub fn stop(self) -> Result<Trace, String> {
        thread::sleep(Duration::from_millis(300));
        self.child.signal(libc::SIGINT);
        let trace = self.wait()?;
        let stderr = trace.stderr.join("\n");
        if trace.exit_code != Some(0) || stderr.contains("panicked") || trace.summary().is_none() {
            return Err(format!(
                "portwatch did not stop cleanly on SIGINT (exit {:?}):\n{stderr}",
                trace.exit_code
            ));
        }
        Ok(trace)
    }

    /// Waits for the tracer to exit by itself (--count, --duration) and collects its output. It
    /// is killed after 30 s; the exit code then is `None`.
    pub fn wait(mut self) -> Result<Trace, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = self.child.kill();
                    break self.child.wait().ok();
                }
            }
        };
        let early = std::mem::take(
            self.read_early
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let stdout = self
            .stdout
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let events = early
            .into_iter()
            .chain(collect(stdout))
            .map(|line| {
                serde_json::from_str(&line).map_err(|err| {
                    format!("portwatch printed a line that is not JSON ({err}): {line}")
                })
            })
            .collect::<Result<_, _>>()?;
        let trace = Trace {
            backend: self.backend.clone(),
            events,
            stderr: self
                .before_attach
                .into_iter()
                .chain(collect(
                    self.stderr
                        .get_mut()
                        .unwrap_or_else(PoisonError::into_inner),
                ))
                .collect(),
            exit_code: status.and_then(|s| s.code()),
        };
        LAST_SUMMARY.set(trace.summary().map(str::to_string));
        SKIPPED_RUNS.set(SKIPPED_RUNS.get() + trace.summary_count("skipped_runs").unwrap_or(0));
        Ok(trace)
    }
}

thread_local! {
    /// The summary of the last tracer this scenario's thread stopped, so that a failing scenario
    /// says what the tracer counted (lost events above all) without each scenario asking.
    static LAST_SUMMARY: std::cell::Cell<Option<String>> = const { std::cell::Cell::new(None) };
}

thread_local! {
    /// Program runs the kernel skipped, over every tracer this scenario's thread stopped: a
    /// failure with skipped runs may be the kernel's, not portwatch's (see `main.rs`).
    static SKIPPED_RUNS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Takes the count [`SKIPPED_RUNS`] holds, leaving 0 for the next scenario.
pub fn take_skipped_runs() -> u64 {
    SKIPPED_RUNS.take()
}

/// Takes the summary [`LAST_SUMMARY`] holds, leaving none for the next scenario.
pub fn take_last_summary() -> Option<String> {
    LAST_SUMMARY.take()
}

/// Everything left in a stream of the exited tracer: up to the end of the pipe, which comes
/// once the reader thread has read it all. Waiting for a pause instead would cut the output
/// short whenever that thread is slow to be scheduled (seen with eight scenarios at once).
fn collect(receiver: &mpsc::Receiver<String>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    while let Ok(line) = receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        lines.push(line);
    }
    lines
}

impl Trace {
    /// Events about one port in this process's network namespace. The same port number in
    /// another namespace (other tests on the host use their own) is another port; events that
    /// carry no namespace (a failed bind has no socket to read it from) are kept.
    pub fn on_port(&self, port: u16) -> Vec<&Value> {
        let own = own_netns();
        self.events
            .iter()
            .filter(|event| event["local_port"] == port)
            .filter(|event| event["netns"].is_null() || event["netns"].as_u64() == Some(own))
            .collect()
    }

    /// Events about one port from one process, in whatever network namespace.
    pub fn of_process(&self, port: u16, pid: u32) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|event| event["local_port"] == port && event["pid"] == pid)
            .collect()
    }

    pub fn summary(&self) -> Option<&str> {
        self.stderr
            .iter()
            .find_map(|line| line.strip_prefix("portwatch: summary "))
    }

    /// One `key=N` of the summary line (`lost`, `skipped_runs`, a kind's count).
    pub fn summary_count(&self, key: &str) -> Option<u64> {
        summary_count(self.summary()?, key)
    }
}

/// One `key=N` of a summary line.
pub fn summary_count(summary: &str, key: &str) -> Option<u64> {
    summary
        .split(' ')
        .find_map(|part| part.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// The inode of this process's network namespace, as portwatch reports it in `netns`.
pub fn own_netns() -> u64 {
    netns_inode("/proc/self/ns/net").expect("/proc/self/ns/net")
}

pub fn netns_inode(path: &str) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|metadata| metadata.ino())
}
