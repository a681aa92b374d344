//! `cargo xtask report-page`: the HTML report, rendered. A short capture of known traffic by
//! named threads (a server, its clients, a rival server refused with EADDRINUSE, a UDP user)
//! goes through `portwatch report --html`; headless Chromium then loads the page offline and
//! must find the three charts drawn, every failure marked, and print no console message (a blocked
//! fetch would print one); last, it saves a screenshot. Hosts only: the qemu guests have no
//! browser.

use std::{
    fs,
    net::{Ipv6Addr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use clap::Args;

use crate::{bench::binary, project, soak::wait_until_attached};

#[derive(Args)]
pub struct ReportPageArgs {
    /// Where to save the screenshot (portwatch/docs/reports.md shows portwatch/assets/report.png).
    #[arg(long, value_name = "PNG")]
    screenshot: Option<PathBuf>,
}

/// Debian's package installs the browser here.
const CHROMIUM: &str = "/usr/bin/chromium";
/// Below the default ephemeral range and away from the ports the e2e suite, the benchmark and
/// the soak use.
const FIRST_PORT: u16 = 31700;
const CLIENTS: usize = 5;

pub fn run(args: ReportPageArgs) -> anyhow::Result<()> {
    ensure!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); this check needs a browser"
    );
    let portwatch = binary::build_release()?;
    let dir = project::target_dir()?.join("report-page");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let files = capture(&portwatch, &dir)?;
    let page = dir.join("report.html");
    let report = Command::new(&portwatch)
        .arg("report")
        .arg("--html")
        .arg(&page)
        .args(&files)
        .stdout(Stdio::null())
        .status()
        .context("running portwatch report")?;
    ensure!(
        report.success(),
        "portwatch report --html failed ({report})"
    );
    let (dom, console) = chromium(&dir, &page, &["--dump-dom"])?;
    check_dom(&dom)?;
    ensure!(
        console.is_empty(),
        "the page logged to the console:\n{}",
        console.join("\n")
    );
    let screenshot = args.screenshot.unwrap_or_else(|| dir.join("report.png"));
    let shot = format!("--screenshot={}", screenshot.display());
    chromium(&dir, &page, &[&shot, "--window-size=1280,1600"])?;
    let png = fs::read(&screenshot).with_context(|| format!("reading {}", screenshot.display()))?;
    ensure!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} is not a screenshot of a drawn page ({} bytes)",
        screenshot.display(),
        png.len()
    );
    println!(
        "report-page: ok: {} rendered in Chromium with its three charts and no console message; screenshot {}",
        page.display(),
        screenshot.display()
    );
    Ok(())
}

/// Runs the traffic under portwatch and returns the capture's files.
fn capture(portwatch: &Path, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let last = FIRST_PORT + 3;
    let mut tracer = Command::new(portwatch)
        .args(["--port", &format!("{FIRST_PORT}-{last}")])
        .arg("--output")
        .arg(dir.join("ports.jsonl"))
        .args(["--rotate-size", "16K", "--compress", "--seal", "--quiet"])
        // Only this process's threads: others on the host may touch the same ports.
        .args(["--pid", &std::process::id().to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .context("starting portwatch")?;
    let stderr = wait_until_attached(&mut tracer)?;
    let traffic = traffic();
    // SAFETY: kill with our own child's pid and a valid signal number.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let status = tracer.wait()?;
    let said = stderr.join().unwrap_or_default();
    traffic?;
    ensure!(status.success(), "portwatch exited {status}: {said}");
    let files = fs::read_dir(dir)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(files)
}

/// Spawns a named thread (its name is the `comm` portwatch records).
fn named(
    name: &str,
    work: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<thread::JoinHandle<anyhow::Result<()>>> {
    thread::Builder::new()
        .name(name.into())
        .spawn(work)
        .context("spawning a traffic thread")
}

fn pause(millis: u64) {
    thread::sleep(Duration::from_millis(millis));
}

/// About three seconds of traffic with a known shape.
fn traffic() -> anyhow::Result<()> {
    let server = TcpListener::bind(("127.0.0.1", FIRST_PORT))?;
    let web = named("web-server", move || {
        let mut held = Vec::new();
        for _ in 0..CLIENTS {
            held.push(server.accept()?.0);
        }
        // The server closes first: each accepted end stays in TIME_WAIT on the server's port.
        for stream in held {
            pause(150);
            drop(stream);
        }
        pause(600);
        Ok(())
    })?;
    let clients = named("web-client", || {
        let mut streams = Vec::new();
        for _ in 0..CLIENTS {
            pause(200);
            streams.push(TcpStream::connect(("127.0.0.1", FIRST_PORT))?);
        }
        pause(2000);
        Ok(())
    })?;
    let rival = named("rival-server", || {
        for _ in 0..2 {
            pause(700);
            let refused = TcpListener::bind(("127.0.0.1", FIRST_PORT));
            ensure!(refused.is_err(), "the rival's bind should have failed");
        }
        Ok(())
    })?;
    let udp = named("dns-cache", || {
        for round in 0..3 {
            let socket = UdpSocket::bind((Ipv6Addr::LOCALHOST, FIRST_PORT + 1 + round))?;
            pause(500);
            drop(socket);
            pause(300);
        }
        Ok(())
    })?;
    for handle in [web, clients, rival, udp] {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("a traffic thread panicked"))??;
    }
    pause(300);
    Ok(())
}

/// Runs headless Chromium on the page with `extra` flags; returns its stdout and the console
/// lines of its log.
fn chromium(dir: &Path, page: &Path, extra: &[&str]) -> anyhow::Result<(String, Vec<String>)> {
    let profile = dir.join(format!("chromium-profile-{}", extra.len()));
    let _ = fs::remove_dir_all(&profile);
    let output = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .context("running chromium")?;
    ensure!(
        output.status.success(),
        "chromium failed ({})",
        output.status
    );
    let log = String::from_utf8_lossy(&output.stderr);
    if let Some(failed) = log.lines().find(|line| line.contains("Page load failed")) {
        bail!("chromium could not load the page: {failed}");
    }
    let console = log
        .lines()
        .filter(|line| line.contains("CONSOLE") || line.contains("Uncaught"))
        .map(str::to_string)
        .collect();
    Ok((
        String::from_utf8_lossy(&output.stdout).into_owned(),
        console,
    ))
}

/// The rendered DOM holds both charts with their bars, and the failures the traffic caused.
fn check_dom(dom: &str) -> anyhow::Result<()> {
    let figure = |id: &str| -> anyhow::Result<&str> {
        let start = dom
            .find(&format!("<figure id=\"{id}\""))
            .with_context(|| format!("the page has no {id} chart"))?;
        let end = dom[start..]
            .find("</figure>")
            .with_context(|| format!("the {id} chart is cut off"))?;
        Ok(&dom[start..start + end])
    };
    let sockets = figure("sockets")?;
    let bars = sockets.matches("<rect").count();
    // A bar per socket at least: the listener, its accepted ends (and their TIME_WAIT), the
    // UDP binds.
    ensure!(
        sockets.contains("<svg") && bars >= 2 * CLIENTS + 4,
        "the sockets chart has {bars} rectangles"
    );
    for thread in ["web-server", "rival-server", "dns-cache"] {
        ensure!(
            sockets.contains(thread),
            "the sockets chart does not name {thread}"
        );
    }
    // Ports in use over time: an area per protocol (tcp and udp were both held), TIME_WAIT
    // bands under them, and the refused binds marked.
    let occupancy = figure("occupancy")?;
    let areas = occupancy.matches("<polygon").count();
    ensure!(
        occupancy.contains("<svg") && areas >= 4,
        "the occupancy chart has {areas} areas, 4 expected (in use and TIME_WAIT, tcp and udp)"
    );
    ensure!(
        occupancy.contains("failed claims (2)"),
        "the occupancy chart does not mark the 2 failed claims"
    );
    let hold_times = figure("hold-times")?;
    ensure!(
        hold_times.contains("<svg") && hold_times.matches("<rect").count() > 4,
        "the hold-time chart has no bars"
    );
    // The two refusals are one group: same port, errno and holder.
    ensure!(
        dom.contains("EADDRINUSE</td><td>2</td>"),
        "the failed-claims table has no group of the 2 EADDRINUSE the traffic caused"
    );
    Ok(())
}
