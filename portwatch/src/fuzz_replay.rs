//! Replays the fuzz corpora (`fuzz/corpus/<target>/`, kept in the repository) through the same
//! code the cargo-fuzz targets drive, as ordinary unit tests: every input the fuzzer found
//! interesting, crashes it once found included, is checked again on every `cargo xtask test`,
//! without nightly or libFuzzer.

use std::path::PathBuf;

use portwatch_ebpf::RawEvent;

use crate::{kernel::btf, model::clock::MonotonicClock, model::event, model::ports};

/// The inputs of one target's corpus. An empty or missing corpus fails: a replay of nothing
/// would pass whatever happened to the code.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| std::fs::read(entry.expect("corpus entry").path()).expect("corpus file"))
        .collect();
    assert!(!inputs.is_empty(), "{} is empty", dir.display());
    inputs
}

#[test]
fn btf_reader_corpus() {
    let names = [
        "tcp_v4_connect",
        "inet_csk_accept",
        "btf_trace_inet_sock_set_state",
    ];
    for input in corpus("btf_reader") {
        if let Ok(btf) = btf::Btf::parse(input, &names) {
            let _ = btf::offsets(&btf);
            let _ = btf.parameter_count("tcp_v4_connect");
            let _ = btf.attach_points_only(&names);
        }
    }
}

#[test]
fn port_spec_corpus() {
    for input in corpus("port_spec") {
        let Ok(text) = std::str::from_utf8(&input) else {
            continue;
        };
        match ports::parse_spec(text) {
            Ok(ranges) => {
                let set = ports::PortSet::new(ranges);
                let again = ports::parse_spec(&set.describe()).expect("a description parses");
                assert_eq!(ports::PortSet::new(again), set, "{text:?}");
            }
            Err(reason) => assert!(!reason.is_empty() && !reason.contains('\n'), "{text:?}"),
        }
    }
}

#[test]
fn raw_event_corpus() {
    let clock = MonotonicClock::measure();
    for input in corpus("raw_event") {
        if input.len() < size_of::<RawEvent>() {
            continue;
        }
        // SAFETY: the input holds at least one RawEvent's bytes, and every bit pattern is a valid
        // RawEvent (integers and byte arrays only); read_unaligned needs no alignment.
        let raw: RawEvent = unsafe { std::ptr::read_unaligned(input.as_ptr().cast()) };
        let ts = clock.to_wall(raw.ts_ns);
        let _ = (ts.rfc3339(), ts.time_of_day());
        let _ = event::Event::from_raw(&raw, ts);
        let _ = (
            event::Comm::from_kernel(&raw.comm),
            event::errno_name(raw.errno),
        );
    }
}

#[test]
fn capture_file_corpus() {
    let dir = std::env::temp_dir().join(format!("portwatch-capture-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("capture.jsonl");
    for input in corpus("capture_file") {
        std::fs::write(&path, &input).expect("writing the input");
        let paths = [path.clone()];
        let _ = crate::commands::verify::verify(&paths);
        for strict in [false, true] {
            let _ = crate::commands::report::load::load(&paths, strict, |_| {}, |_| {});
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
