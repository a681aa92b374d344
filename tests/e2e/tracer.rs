//! Runs the real portwatch binary as a child and collects what it prints.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
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

/// The backend under test: PORTWATCH_BACKEND, or whatever `auto` picks.
pub fn backend() -> String {
    std::env::var("PORTWATCH_BACKEND").unwrap_or_else(|_| "auto".into())
}

pub struct Tracer {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
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
        let mut child = Command::new(binary())
            .args(["--json", "--backend", &backend()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| format!("starting {}: {err}", binary()))?;
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
                            stdout,
                            stderr,
                            before_attach: seen,
                            backend,
                        });
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    return Err(format!("portwatch did not attach: {}", seen.join(" | ")));
                }
            }
        }
    }

    /// Stops the tracer process (SIGSTOP) so the ring buffer fills.
    pub fn pause(&self) {
        // SAFETY: kill with a valid pid of our own child and a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) };
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill with a valid pid of our own child and a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Whether the tracer is still running (it has not exited by itself).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Gives in-flight kernel work (softirq closes, timers) a moment, then stops the tracer with
    /// SIGINT and returns everything it printed.
    pub fn stop(self) -> Trace {
        thread::sleep(Duration::from_millis(300));
        // SAFETY: kill with a valid pid of our own child and a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.wait()
    }

    /// Waits for the tracer to exit by itself (--count, --duration) and collects its output.
    pub fn wait(mut self) -> Trace {
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
        let events = collect(&self.stdout)
            .into_iter()
            .map(|line| {
                serde_json::from_str(&line).unwrap_or_else(|err| {
                    panic!("portwatch printed a line that is not JSON ({err}): {line}")
                })
            })
            .collect();
        Trace {
            backend: self.backend,
            events,
            stderr: self
                .before_attach
                .into_iter()
                .chain(collect(&self.stderr))
                .collect(),
            exit_code: status.and_then(|s| s.code()),
        }
    }
}

fn collect(receiver: &mpsc::Receiver<String>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(line) = receiver.recv_timeout(Duration::from_millis(500)) {
        lines.push(line);
    }
    lines
}

impl Trace {
    /// Events about one port.
    pub fn on_port(&self, port: u16) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|event| event["local_port"] == port)
            .collect()
    }

    pub fn summary(&self) -> Option<&str> {
        self.stderr
            .iter()
            .find_map(|line| line.strip_prefix("portwatch: summary "))
    }
}
