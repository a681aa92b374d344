//! `cargo xtask soak`: a long capture under steady churn, as an auditor would leave it running.
//! portwatch writes a rotating, compressed, sealed capture while this process binds and closes
//! watched ports at a fixed rate; halfway through, the file is moved away and portwatch gets
//! SIGHUP. Every minute the tracer's RSS, open descriptors and kernel map entries are sampled.
//! At the end: every line of every file parses, each file opens with a header, the last ends
//! with the summary, `portwatch verify` accepts the sealed files and rejects an edited copy,
//! and delivered + lost equals what the load caused.

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{bench::binary, project};

#[derive(Args)]
pub struct SoakArgs {
    /// How long the capture runs.
    #[arg(long, default_value_t = 60)]
    minutes: u64,
    /// Port claims per second (each is a bind and a close: two events).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Use this portwatch binary instead of building the release one.
    #[arg(long, value_name = "PATH")]
    portwatch: Option<PathBuf>,
}

/// Ports nobody else on the host uses: above the default ephemeral range (32768-60999), below
/// nothing that CI or the e2e suite touches.
const FIRST_PORT: u16 = 61000;
const PORTS: u16 = 1000;

/// One minute's reading of the tracer.
struct Sample {
    minute: u64,
    rss_kib: u64,
    descriptors: usize,
    map_entries: Option<usize>,
    caused: u64,
}

pub fn run(args: SoakArgs) -> anyhow::Result<()> {
    let portwatch = match args.portwatch {
        Some(path) => path,
        None => binary::build_release()?,
    };
    let dir = project::target_dir()?.join("soak");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let file = dir.join("ports.jsonl");
    let mut tracer = Command::new(&portwatch)
        .args([
            "--port",
            &format!("{FIRST_PORT}-{}", FIRST_PORT + PORTS - 1),
        ])
        .arg("--output")
        .arg(&file)
        .args(["--rotate-size", "20M", "--rotate-keep", "5", "--compress"])
        .args(["--seal", "--quiet"])
        // The load runs in this process; others on the host may use the same ports.
        .args(["--pid", &std::process::id().to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .context("starting portwatch")?;
    let stderr = wait_until_attached(&mut tracer)?;
    let caused = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (caused, stop, rate) = (caused.clone(), stop.clone(), args.rate);
        thread::spawn(move || churn(rate, &caused, &stop))
    };
    let mut samples = Vec::new();
    let moved = dir.join("ports.jsonl.before-sighup");
    for minute in 1..=args.minutes {
        thread::sleep(Duration::from_secs(60));
        samples.push(sample(tracer.id(), minute, caused.load(Ordering::Relaxed)));
        let last = samples.last().expect("just pushed");
        eprintln!(
            "soak: minute {minute}: rss {} KiB, {} descriptors, map entries {:?}, {} claims caused",
            last.rss_kib, last.descriptors, last.map_entries, last.caused
        );
        if minute == args.minutes / 2 {
            fs::rename(&file, &moved)?;
            // SAFETY: kill with our own child's pid and a valid signal.
            unsafe { libc::kill(tracer.id() as i32, libc::SIGHUP) };
        }
    }
    stop.store(true, Ordering::Relaxed);
    load.join().expect("the load thread does not panic")?;
    thread::sleep(Duration::from_secs(1));
    // SAFETY: as above.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let status = tracer.wait()?;
    let stderr_text = stderr.join().unwrap_or_default();
    if !status.success() {
        bail!("portwatch exited with {status}: {stderr_text}");
    }
    let caused = caused.load(Ordering::Relaxed);
    let report = check_capture(&portwatch, &dir, &file, caused)?;
    let table = render(&samples, &report, caused, args.minutes, args.rate);
    fs::write(dir.join("report.md"), &table)?;
    println!("{table}");
    Ok(())
}

pub fn wait_until_attached(tracer: &mut Child) -> anyhow::Result<thread::JoinHandle<String>> {
    let stderr = tracer.stderr.take().expect("piped");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("portwatch: attached") {
                let _ = ready_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .context("portwatch did not attach within 60 s")?;
    Ok(reader)
}

/// Binds and closes the soak's ports at `rate` per second until told to stop.
fn churn(rate: u64, caused: &AtomicU64, stop: &AtomicBool) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut done: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = started.elapsed().as_nanos() as u64 * rate / 1_000_000_000;
        if done >= due {
            thread::sleep(Duration::from_micros(200));
            continue;
        }
        let port = FIRST_PORT + (done % u64::from(PORTS)) as u16;
        UdpSocket::bind(("127.0.0.1", port))
            .with_context(|| format!("binding 127.0.0.1:{port}"))?;
        done += 1;
        caused.store(done, Ordering::Relaxed);
    }
    Ok(())
}

fn sample(pid: u32, minute: u64, caused: u64) -> Sample {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let descriptors = fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    Sample {
        minute,
        rss_kib,
        descriptors,
        map_entries: claim_map_entries(pid),
        caused,
    }
}

/// Entries in the tracer's per-socket claim map: its id from the tracer's own descriptors
/// (/proc/<pid>/fdinfo), its entries through bpftool (None when bpftool is missing).
fn claim_map_entries(pid: u32) -> Option<usize> {
    let bpftool = |args: &[&str]| -> Option<serde_json::Value> {
        let output = Command::new("bpftool").arg("-j").args(args).output().ok()?;
        serde_json::from_slice(&output.stdout).ok()
    };
    let id = fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .ok()?
        .filter_map(|entry| fs::read_to_string(entry.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("map_id:"))
                .map(|id| id.trim().to_string())
        })
        .find(|id| {
            bpftool(&["map", "show", "id", id]).is_some_and(|map| map["name"] == "CLAIMS")
        })?;
    Some(bpftool(&["map", "dump", "id", &id])?.as_array()?.len())
}

/// What the files say, checked.
struct CaptureReport {
    files: usize,
    records: u64,
    claims: u64,
    frees: u64,
    lost: u64,
    /// One line per run of consecutive parts left on disk.
    verified: Vec<String>,
    verify_edited: String,
}

fn check_capture(
    portwatch: &Path,
    dir: &Path,
    live: &Path,
    caused: u64,
) -> anyhow::Result<CaptureReport> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|path| path.file_name().is_some_and(|name| name != "report.md"));
    let mut records = 0;
    let mut summary = None;
    let mut parts = Vec::new();
    for path in &files {
        let lines = read_lines(path)?;
        let first: serde_json::Value = serde_json::from_str(lines.first().context("empty file")?)?;
        if first["event"] != "capture" {
            bail!("{} does not open with a capture header", path.display());
        }
        parts.push((
            first["part"].as_u64().context("header without part")?,
            path.clone(),
        ));
        for (index, line) in lines.iter().enumerate() {
            let record: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{} is not JSON", path.display(), index + 1))?;
            if path == live && index + 1 == lines.len() {
                summary = Some(record);
            }
        }
        records += lines.len() as u64;
    }
    let summary = summary.context("the live file has no records")?;
    if summary["event"] != "summary" {
        bail!("the capture does not end with its summary: {summary}");
    }
    let count = |key: &str| summary["counts"][key].as_u64().unwrap_or(0);
    let (claims, frees, lost) = (
        count("claim"),
        count("free"),
        summary["lost"].as_u64().unwrap_or(0),
    );
    // Losses are counted for every process on the watched ports, deliveries only for the
    // load's: exact when nothing was lost, bounded otherwise.
    let delivered = claims + frees;
    let balanced = if lost == 0 {
        delivered == 2 * caused
    } else {
        delivered <= 2 * caused && delivered + lost >= 2 * caused
    };
    if !balanced {
        bail!("delivered {claims} claims + {frees} frees + {lost} lost != 2 x {caused} caused");
    }
    // --rotate-keep deleted the parts between the runs that are left: verify each run.
    parts.sort();
    let mut runs: Vec<Vec<PathBuf>> = Vec::new();
    for (index, (part, path)) in parts.iter().enumerate() {
        if index == 0 || parts[index - 1].0 + 1 != *part {
            runs.push(Vec::new());
        }
        runs.last_mut().expect("pushed").push(path.clone());
    }
    let verified = runs
        .iter()
        .map(|run| verify(portwatch, run, 0))
        .collect::<anyhow::Result<Vec<String>>>()?;
    let edited = dir.join("edited-copy.jsonl");
    let text = fs::read_to_string(live)?;
    fs::write(&edited, text.replacen("\"udp\"", "\"tcp\"", 1))?;
    let verify_edited = verify(portwatch, std::slice::from_ref(&edited), 1)?;
    fs::remove_file(&edited)?;
    Ok(CaptureReport {
        files: files.len(),
        records,
        claims,
        frees,
        lost,
        verified,
        verify_edited,
    })
}

fn read_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?.read_to_end(&mut bytes)?;
    let text = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_string(&mut text)?;
        text
    } else {
        String::from_utf8(bytes)?
    };
    if !text.ends_with('\n') {
        bail!("{} ends in the middle of a line", path.display());
    }
    Ok(text.lines().map(str::to_string).collect())
}

fn verify(portwatch: &Path, files: &[PathBuf], expected: i32) -> anyhow::Result<String> {
    let output = Command::new(portwatch).arg("verify").args(files).output()?;
    let said = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if output.status.code() != Some(expected) {
        bail!(
            "verify exited {:?}, expected {expected}: {said}",
            output.status.code()
        );
    }
    Ok(said)
}

fn render(
    samples: &[Sample],
    report: &CaptureReport,
    caused: u64,
    minutes: u64,
    rate: u64,
) -> String {
    let mut text = format!(
        "Soak: {minutes} min at {rate} claims/s (bind+close on 127.0.0.1:{FIRST_PORT}-{}), \
         --rotate-size 20M --rotate-keep 5 --compress --seal, SIGHUP at minute {}.\n\n\
         | minute | tracer RSS (KiB) | descriptors | CLAIMS map entries | claims caused |\n|---:|---:|---:|---:|---:|\n",
        FIRST_PORT + PORTS - 1,
        minutes / 2
    );
    for sample in samples {
        text.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            sample.minute,
            sample.rss_kib,
            sample.descriptors,
            sample
                .map_entries
                .map_or("n/a (no bpftool)".into(), |entries| entries.to_string()),
            sample.caused
        ));
    }
    text.push_str(&format!(
        "\nCaused {caused} claims ({} events); the summary record says {} claims + {} frees \
         delivered, {} lost. {} files kept, {} records in them, every line parses.\n\
         verify, per run of consecutive parts left on disk:\n  {}\n\
         verify (copy with one edited line): {}\n",
        2 * caused,
        report.claims,
        report.frees,
        report.lost,
        report.files,
        report.records,
        report.verified.join("\n  "),
        report.verify_edited
    ));
    text
}
