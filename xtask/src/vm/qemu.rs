//! Booting one kernel in qemu and collecting its serial console.
//!
//! Software emulation (`-accel tcg -cpu max`): KVM is missing on CI runners and crashes on some
//! development machines, and TCG boots a cloud kernel into an initramfs in seconds. `-cpu max`
//! offers every CPU feature TCG can emulate, so the guest kernel does not take slower paths.
//!
//! `thread=single` runs both vCPUs on one host thread, in turn. With one thread per vCPU (qemu's
//! default), the guests' live patching of kernel text went wrong when a killed tracer's fentry
//! trampolines were torn down while the other vCPU ran the patched functions: an `int3` oops in
//! `udp_lib_unhash` (6.12, a kernel panic) and a 60 s soft lockup (5.10), both right after the
//! kill -9 scenario, in one CI run of 2026-11-26. The likely cause is a vCPU still running its
//! translation of the old text after the other vCPU rewrote it; taking turns on one thread, each
//! sees the other's writes before it runs again.
//!
//! arm64 kernels boot on qemu's `virt` board, whose serial console is a PL011 (`ttyAMA0`).

use std::fs::File;
use std::io::{BufRead, BufReader, LineWriter, Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::arch::Arch;

/// The emulator of `arch`, the board options it needs, and the kernel's console device.
fn machine(arch: Arch) -> (&'static str, &'static [&'static str], &'static str) {
    match arch {
        Arch::Amd64 => ("qemu-system-x86_64", &[], "ttyS0"),
        Arch::Arm64 => ("qemu-system-aarch64", &["-M", "virt"], "ttyAMA0"),
    }
}

/// `quiet` keeps the kernel's boot chatter off the console the results are read from;
/// `panic=-1` turns a panic (or an init that exits) into a reboot, which `-no-reboot` turns into
/// qemu exiting instead of hanging until the watchdog.
/// On x86-64, `no_timer_check` skips the IO-APIC timer test, which a guest starved of CPU (three
/// emulated guests on two host CPUs) can fail at boot with "IO-APIC + timer doesn't work!".
fn kernel_cmdline(arch: Arch, console: &str) -> String {
    match arch {
        Arch::Amd64 => format!("console={console} quiet panic=-1 no_timer_check"),
        Arch::Arm64 => format!("console={console} quiet panic=-1"),
    }
}

/// One console line and when it arrived, counted from qemu's start.
pub struct Line {
    pub at: Duration,
    pub text: String,
}

impl Line {
    /// The line as it is written to the log files: with its arrival time, which is what shows
    /// where a slow or hung run spent its time.
    pub fn logged(&self) -> String {
        format!("[{:8.2}] {}", self.at.as_secs_f64(), self.text)
    }
}

/// How the guest ended.
pub enum End {
    Exited(ExitStatus),
    /// Killed by the watchdog after this long without progress.
    Killed(Duration),
}

impl End {
    pub fn describe(&self) -> String {
        match self {
            End::Exited(status) if status.success() => "guest powered off".to_owned(),
            End::Exited(status) => format!("qemu ended with {status}"),
            End::Killed(quiet) => {
                format!("guest killed after {} s without progress", quiet.as_secs())
            }
        }
    }
}

/// Everything the guest printed, qemu's own messages included.
pub struct Console {
    pub lines: Vec<Line>,
    pub end: End,
    pub elapsed: Duration,
}

/// Boots `kernel` (built for `arch`) with `initrd`, writes the console to `log` as it arrives and
/// returns it.
///
/// `on_line` sees every line and says whether it shows progress; qemu is killed once `watchdog`
/// passes without progress, so a hung guest costs a bounded time.
pub fn boot(
    arch: Arch,
    kernel: &Path,
    initrd: &Path,
    log: &Path,
    watchdog: Duration,
    on_line: impl FnMut(&str) -> bool,
) -> Result<Console> {
    boot_with(arch, kernel, initrd, log, watchdog, &[], on_line)
}

/// `boot` with `extra` arguments for qemu.
pub fn boot_with(
    arch: Arch,
    kernel: &Path,
    initrd: &Path,
    log: &Path,
    watchdog: Duration,
    extra: &[&str],
    mut on_line: impl FnMut(&str) -> bool,
) -> Result<Console> {
    // Line by line, so the log can be followed while a slow guest runs.
    let mut log =
        LineWriter::new(File::create(log).with_context(|| format!("creating {}", log.display()))?);
    let (qemu, board, console) = machine(arch);
    let mut child = Command::new(qemu)
        .args(board)
        .args([
            "-accel",
            "tcg,thread=single",
            "-cpu",
            "max",
            "-m",
            "1024",
            "-smp",
            "2",
        ])
        // The suite uses loopback only; a network card would only add probing to the boot.
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .args(extra)
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(kernel_cmdline(arch, console))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {qemu}"))?;
    let start = Instant::now();

    // The serial console comes on stdout, qemu's own complaints on stderr; both go to the log.
    let (sender, receiver) = mpsc::channel();
    let readers = [
        forward_lines(child.stdout.take().context("qemu stdout")?, sender.clone()),
        forward_lines(child.stderr.take().context("qemu stderr")?, sender),
    ];

    let mut lines = Vec::new();
    let mut last_progress = Instant::now();
    let end = loop {
        let deadline = last_progress + watchdog;
        match receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(text) => {
                if on_line(&text) {
                    last_progress = Instant::now();
                }
                let line = Line {
                    at: start.elapsed(),
                    text,
                };
                writeln!(log, "{}", line.logged())?;
                lines.push(line);
            }
            Err(RecvTimeoutError::Timeout) => {
                child.kill().context("killing qemu")?;
                child.wait().context("waiting for qemu")?;
                break End::Killed(watchdog);
            }
            Err(RecvTimeoutError::Disconnected) => {
                break End::Exited(child.wait().context("waiting for qemu")?);
            }
        }
    };
    // After a kill the readers may still be forwarding what qemu wrote last; they stop at the
    // end of the pipes, which qemu's exit closed.
    for reader in readers {
        reader
            .join()
            .map_err(|_| anyhow::anyhow!("console reader panicked"))?;
    }
    for text in receiver.try_iter() {
        let line = Line {
            at: start.elapsed(),
            text,
        };
        writeln!(log, "{}", line.logged())?;
        lines.push(line);
    }
    writeln!(
        log,
        "[{:8.2}] {}",
        start.elapsed().as_secs_f64(),
        end.describe()
    )?;
    log.flush()?;
    Ok(Console {
        lines,
        end,
        elapsed: start.elapsed(),
    })
}

/// Sends each line of `source` (without its `\r\n`; the serial console ends lines with both)
/// until end of file.
fn forward_lines(
    source: impl Read + Send + 'static,
    sender: mpsc::Sender<String>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut source = BufReader::new(source);
        let mut buffer = Vec::new();
        while let Ok(read) = source.read_until(b'\n', &mut buffer) {
            if read == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buffer);
            if sender
                .send(text.trim_end_matches(['\r', '\n']).to_owned())
                .is_err()
            {
                break;
            }
            buffer.clear();
        }
    })
}
