//! Capture files (`--output`): rotation under churn, SIGHUP, a full disk, unsafe paths, the
//! seal and `verify`, and `--audit` process context.

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    Outcome,
    expect::check,
    tracer::{self, Tracer},
    workload::{Kind, Socket, V4, free_port},
};

/// Env var that turns this test binary into a process that binds one port, holds it for the
/// given milliseconds, and exits.
pub const BIND_ONCE_ENV: &str = "PORTWATCH_E2E_BIND_ONCE";

pub fn bind_once(spec: &str) -> ! {
    let (port, millis) = spec.split_once(',').expect("port,millis");
    let socket = Socket::new(Kind::Udp, V4).expect("socket");
    socket.bind(port.parse().expect("port")).expect("bind");
    thread::sleep(Duration::from_millis(millis.parse().expect("millis")));
    std::process::exit(0)
}

/// A fresh directory for one scenario's files.
pub fn scratch(name: &str) -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("portwatch-e2e-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Binds and closes `port` `times` times: one claim and one free each.
pub fn churn(port: u16, times: usize) -> Outcome {
    for _ in 0..times {
        // Another scenario's fork may hold the socket just closed for a moment.
        let socket = Socket::rebinding(Kind::Udp, V4)?;
        socket.bind(port)?;
    }
    Ok(())
}

/// Every record of one file, in order; a line that is not JSON is an error naming it.
fn records(path: &Path) -> Result<Vec<Value>, String> {
    let file = fs::File::open(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let mut reader = BufReader::new(file);
    let gzipped = reader
        .fill_buf()
        .map_err(|err| err.to_string())?
        .starts_with(&[0x1f, 0x8b]);
    let mut text = String::new();
    let read = if gzipped {
        flate2::bufread::MultiGzDecoder::new(reader).read_to_string(&mut text)
    } else {
        reader.read_to_string(&mut text)
    };
    read.map_err(|err| format!("{}: {err}", path.display()))?;
    check_ends_with_newline(path, &text)?;
    text.lines()
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_str(line).map_err(|err| {
                format!("{}:{}: not JSON ({err}): {line}", path.display(), index + 1)
            })
        })
        .collect()
}

fn check_ends_with_newline(path: &Path, text: &str) -> Result<(), String> {
    if text.is_empty() || text.ends_with('\n') {
        Ok(())
    } else {
        Err(format!("{} ends in the middle of a line", path.display()))
    }
}

/// Every file of a capture in directory `dir`, as records, ordered by part.
fn parts(dir: &Path) -> Result<Vec<(PathBuf, Vec<Value>)>, String> {
    let mut parts = Vec::new();
    for entry in fs::read_dir(dir).map_err(|err| err.to_string())? {
        let path = entry.map_err(|err| err.to_string())?.path();
        let records = records(&path)?;
        let header = records
            .first()
            .ok_or(format!("{} is empty", path.display()))?;
        if header["event"] != "capture" {
            return Err(format!("{} does not start with a header", path.display()));
        }
        parts.push((path, records));
    }
    parts.sort_by_key(|(_, records)| records[0]["part"].as_u64());
    Ok(parts)
}

fn verify(files: &[PathBuf]) -> std::io::Result<(Option<i32>, String)> {
    let output = Command::new(tracer::binary())
        .arg("verify")
        .args(files)
        .output()?;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

pub fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fs::read_dir(dir)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect()
}

/// A tracer on a fresh port writing the capture FILE in `dir`, with `options` added.
fn capture(
    dir: &Path,
    options: &[&str],
) -> Result<(Tracer, PathBuf, u16), Box<dyn std::error::Error + Send + Sync>> {
    let file = dir.join("ports.jsonl");
    let port = free_port();
    let mut args = vec!["--port".to_string(), port.to_string(), "--output".into()];
    args.push(file.to_str().ok_or("path")?.to_string());
    args.extend(options.iter().map(|option| option.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Ok((Tracer::start(&args)?, file, port))
}

/// Claims by this process on `port` across all records.
fn own_claims(records: &[&Value], port: u16) -> usize {
    let me = std::process::id();
    records
        .iter()
        .filter(|r| r["event"] == "claim" && r["local_port"] == port && r["pid"] == me)
        .count()
}

/// Steady churn into a small rotating, compressed, sealed capture: every part parses and opens
/// with its header, numbering runs on across parts, the last part ends with the summary, every
/// claim is there, `verify` accepts the files and rejects them once a line is edited.
pub fn capture_rotates_under_churn() -> Outcome {
    const ROUNDS: usize = 2000;
    let dir = scratch("rotate")?;
    let rotation = [
        "--rotate-size",
        "64K",
        "--rotate-keep",
        "1000",
        "--compress",
        "--seal",
        "--quiet",
    ];
    let (tracer, _, port) = capture(&dir, &rotation)?;
    churn(port, ROUNDS)?;
    let trace = tracer.stop()?;
    check(trace.exit_code == Some(0), || {
        format!("portwatch exited {:?}: {:?}", trace.exit_code, trace.stderr)
    })?;
    let parts = parts(&dir)?;
    check(parts.len() >= 5, || format!("only {} parts", parts.len()))?;
    for (path, _) in &parts[..parts.len() - 1] {
        check(path.to_string_lossy().ends_with(".gz"), || {
            format!("rotated part {} is not compressed", path.display())
        })?;
    }
    for (path, _) in &parts {
        let mode = fs::metadata(path)?.permissions().mode() & 0o777;
        check(mode == 0o600, || {
            format!("{} has mode {mode:o}", path.display())
        })?;
    }
    let all: Vec<&Value> = parts.iter().flat_map(|(_, records)| records).collect();
    for (index, record) in all.iter().enumerate() {
        check(record["seq"] == index as u64 + 1, || {
            format!("record {index} has seq {}", record["seq"])
        })?;
    }
    let last = all.last().ok_or("no records")?;
    check(last["event"] == "summary" && last["lost"] == 0, || {
        format!("the capture ends with {last}")
    })?;
    check(own_claims(&all, port) == ROUNDS, || {
        format!(
            "{} claims in the files, {ROUNDS} caused",
            own_claims(&all, port)
        )
    })?;
    let (code, said) = verify(&files_in(&dir)?)?;
    check(
        code == Some(0) && said.contains("every seal matches"),
        || format!("verify of the untouched capture: {code:?} {said}"),
    )?;
    // Edit one record of the live part: verify must name that file and line.
    let live = &parts.last().ok_or("no parts")?.0;
    let text = fs::read_to_string(live)?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let edited = lines.len() / 2;
    lines[edited] = lines[edited].replacen("\"udp\"", "\"tcp\"", 1);
    fs::write(live, lines.join("\n") + "\n")?;
    let (code, said) = verify(&files_in(&dir)?)?;
    let expected = format!("{}:{}:", live.display(), edited + 1);
    check(code == Some(1) && said.contains(&expected), || {
        format!("verify of an edited capture: {code:?} {said} (expected {expected})")
    })?;
    fs::remove_dir_all(&dir)?;
    Ok(())
}

/// `--rotate-keep 2` with enough churn for many parts: only FILE and the two newest rotated
/// parts (compressed) remain, holding the newest parts' numbers with their records unbroken,
/// and the oldest parts are gone.
pub fn rotate_keep_deletes_the_oldest_parts() -> Outcome {
    const ROUNDS: usize = 2000;
    let dir = scratch("rotate-keep")?;
    let rotation = [
        "--rotate-size",
        "64K",
        "--rotate-keep",
        "2",
        "--compress",
        "--quiet",
    ];
    let (tracer, _, port) = capture(&dir, &rotation)?;
    churn(port, ROUNDS)?;
    tracer.stop()?;
    let mut names: Vec<String> = files_in(&dir)?
        .iter()
        .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
        .collect();
    names.sort();
    check(
        names == ["ports.jsonl", "ports.jsonl.1.gz", "ports.jsonl.2.gz"],
        || format!("the capture directory holds {names:?}"),
    )?;
    let parts = parts(&dir)?;
    let numbers: Vec<Option<u64>> = parts
        .iter()
        .map(|(_, records)| records[0]["part"].as_u64())
        .collect();
    let newest = numbers.last().copied().flatten().unwrap_or(0);
    // 2000 claims and frees make well over five 64K parts: at least two were deleted.
    check(
        newest >= 5 && numbers == [Some(newest - 2), Some(newest - 1), Some(newest)],
        || format!("the parts left are numbered {numbers:?}"),
    )?;
    for (path, part) in [
        ("ports.jsonl.2.gz", newest - 2),
        ("ports.jsonl.1.gz", newest - 1),
    ] {
        let found = parts
            .iter()
            .find(|(file, _)| file.ends_with(path))
            .map(|(_, records)| records[0]["part"].as_u64());
        check(found == Some(Some(part)), || {
            format!("{path} holds part {found:?}, not {part}")
        })?;
    }
    let records: Vec<&Value> = parts.iter().flat_map(|(_, records)| records).collect();
    let first_seq = records[0]["seq"].as_u64().unwrap_or(0);
    for (index, record) in records.iter().enumerate() {
        check(record["seq"] == first_seq + index as u64, || {
            format!("record {index} of the kept parts has seq {}", record["seq"])
        })?;
    }
    check(first_seq > 1, || {
        "the first records were not deleted".to_owned()
    })?;
    fs::remove_dir_all(&dir)?;
    Ok(())
}

/// logrotate moves the file away and sends SIGHUP: portwatch reopens FILE with a new header and
/// loses nothing; the two files verify as one capture.
pub fn sighup_reopens_the_capture() -> Outcome {
    let dir = scratch("sighup")?;
    let (tracer, file, port) = capture(&dir, &["--seal"])?;
    churn(port, 50)?;
    thread::sleep(Duration::from_millis(300));
    fs::rename(&file, dir.join("ports.jsonl.old"))?;
    tracer.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !file.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    churn(port, 50)?;
    let trace = tracer.stop()?;
    check(trace.exit_code == Some(0), || {
        format!("portwatch exited {:?}: {:?}", trace.exit_code, trace.stderr)
    })?;
    let reopened = records(&file)?;
    check(
        reopened[0]["reason"] == "reopened" && reopened[0]["part"] == 2,
        || format!("the new file starts with {}", reopened[0]),
    )?;
    let parts = parts(&dir)?;
    let all: Vec<&Value> = parts.iter().flat_map(|(_, records)| records).collect();
    check(own_claims(&all, port) == 100, || {
        format!(
            "{} claims in the two files, 100 caused",
            own_claims(&all, port)
        )
    })?;
    let (code, said) = verify(&files_in(&dir)?)?;
    check(code == Some(0), || format!("verify: {code:?} {said}"))?;
    fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A capture on a tiny tmpfs: when the disk fills, portwatch says so in one sentence, prints
/// its summary and exits 1, and the file holds only whole records.
pub fn full_disk_ends_the_capture_cleanly() -> Outcome {
    let dir = scratch("full")?;
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&dir)
        .status()?;
    check(mounted.success(), || "mounting a tmpfs failed".into())?;
    let outcome = fill_the_disk(&dir);
    let _ = Command::new("umount").arg(&dir).status();
    let _ = fs::remove_dir_all(&dir);
    outcome
}

fn fill_the_disk(dir: &Path) -> Outcome {
    let (mut tracer, file, port) = capture(dir, &["--quiet"])?;
    // 64 KiB holds a few hundred records; keep going until portwatch gives up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tracer.running() && Instant::now() < deadline {
        churn(port, 50)?;
        thread::sleep(Duration::from_millis(20));
    }
    let trace = tracer.wait()?;
    check(trace.exit_code == Some(1), || {
        format!(
            "exit {:?} after the disk filled: {:?}",
            trace.exit_code, trace.stderr
        )
    })?;
    let errors: Vec<&String> = trace
        .stderr
        .iter()
        .filter(|line| line.contains("No space left on device"))
        .collect();
    check(errors.len() == 1, || format!("stderr: {:?}", trace.stderr))?;
    check(trace.summary().is_some(), || {
        format!("no summary line: {:?}", trace.stderr)
    })?;
    let records = records(&file)?;
    check(
        records.len() > 10 && records[0]["event"] == "capture",
        || format!("{} records, first {:?}", records.len(), records.first()),
    )
}

/// Output paths portwatch must not write: a symlink, a directory, a file of another user. Each
/// is one sentence and exit 1, before any eBPF work, and nothing is written.
pub fn unsafe_output_paths_are_refused() -> Outcome {
    let dir = scratch("unsafe")?;
    let target = dir.join("target");
    fs::write(&target, "precious\n")?;
    let link = dir.join("link.jsonl");
    std::os::unix::fs::symlink(&target, &link)?;
    let foreign = dir.join("foreign.jsonl");
    fs::write(&foreign, "")?;
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534))?;
    let cases = [
        (link.clone(), "symbolic link"),
        (dir.clone(), "not a regular file"),
        (foreign.clone(), "belongs to uid 65534"),
    ];
    for (path, reason) in cases {
        let output = Command::new(tracer::binary())
            .args(["--port", "1", "--output"])
            .arg(&path)
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        check(
            output.status.code() == Some(1)
                && stderr.lines().count() == 1
                && stderr.contains(reason),
            || {
                format!(
                    "--output {}: exit {:?}, stderr {stderr:?} (wanted {reason:?})",
                    path.display(),
                    output.status.code()
                )
            },
        )?;
    }
    check(fs::read_to_string(&target)? == "precious\n", || {
        "the symlink's target was written".into()
    })?;
    check(fs::metadata(&foreign)?.size() == 0, || {
        "the other user's file was written".into()
    })?;
    fs::remove_dir_all(&dir)?;
    Ok(())
}

/// `--audit` on a process that lives two seconds and on one already gone when portwatch looks
/// it up: the first has its executable, command line, parent and cgroup; the second says
/// `exited`. Both carry the parent pid read in the kernel.
pub fn audit_names_the_process() -> Outcome {
    let me = std::process::id();
    let (alive_port, gone_port) = (free_port(), free_port());
    let tracer = Tracer::start(&[
        "--port",
        &format!("{alive_port},{gone_port}"),
        "--audit",
        "--events",
        "claim",
    ])?;
    let run = |port: u16, millis: u32| -> std::io::Result<u32> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(BIND_ONCE_ENV, format!("{port},{millis}"))
            .spawn()?;
        let pid = child.id();
        child.wait()?;
        Ok(pid)
    };
    let alive = run(alive_port, 2000)?;
    tracer.pause();
    let gone = run(gone_port, 0)?;
    tracer.resume();
    let trace = tracer.stop()?;
    let claim = |port: u16| {
        trace
            .on_port(port)
            .into_iter()
            .find(|event| event["event"] == "claim")
            .cloned()
            .ok_or(format!("no claim on {port}: {:?}", trace.events))
    };
    let alive_claim = claim(alive_port)?;
    let exe = std::env::current_exe()?;
    check(
        alive_claim["pid"] == alive
            && alive_claim["ppid"] == me
            && alive_claim["exe"] == exe.to_string_lossy().as_ref()
            && alive_claim["cmdline"]
                .as_str()
                .is_some_and(|cmdline| cmdline.starts_with(exe.to_string_lossy().as_ref()))
            && alive_claim["cgroup"]
                .as_str()
                .is_some_and(|c| c.starts_with('/'))
            && alive_claim["parent_comm"].is_string()
            && alive_claim.get("exited").is_none(),
        || format!("the live process's claim: {alive_claim}"),
    )?;
    let gone_claim = claim(gone_port)?;
    check(
        gone_claim["pid"] == gone
            && gone_claim["ppid"] == me
            && gone_claim["exited"] == true
            && gone_claim.get("exe").is_none(),
        || format!("the exited process's claim: {gone_claim}"),
    )
}
