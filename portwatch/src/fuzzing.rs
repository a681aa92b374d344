//! What the fuzz targets drive (`portwatch/fuzz`, cargo-fuzz on nightly): each function takes
//! arbitrary input as a corrupt file, a hostile argument or a garbled kernel record would give
//! it, and must end in a value or an error, never a panic or a hang.
//!
//! The unit tests below replay the committed corpora (`fuzz/corpus/<target>/`) through the same
//! functions, so every input the fuzzer found interesting is checked again by every
//! `cargo test`, without nightly or libFuzzer.

use std::path::PathBuf;

use portwatch_ebpf::RawEvent;

use crate::{
    commands::{report, verify},
    kernel::btf,
    model::{clock::MonotonicClock, event, ports, task},
};

/// The BTF reader on bytes standing for `/sys/kernel/btf/vmlinux`: every lookup portwatch
/// makes ends in a value or an error.
pub fn btf_reader(data: &[u8]) {
    let names = [
        "tcp_v4_connect",
        "inet_csk_accept",
        "btf_trace_inet_sock_set_state",
    ];
    if let Ok(btf) = btf::Btf::parse(data.to_vec(), &names) {
        let _ = btf::offsets(&btf);
        let _ = btf.parameter_count("tcp_v4_connect");
        let _ = btf.attach_points_only(&names);
    }
}

/// The `--port` parser: a value or one sentence; what it accepts makes a port set whose bitmap
/// and description hold exactly those ports.
pub fn port_spec(text: &str) {
    match ports::parse_spec(text) {
        Ok(ranges) => {
            let set = ports::PortSet::new(ranges.clone());
            let bitmap = set.bitmap();
            for range in &ranges {
                for port in [*range.start(), *range.end()] {
                    assert!(set.contains(port), "{text:?}");
                    assert!(
                        bitmap[port as usize >> 6] & (1 << (port & 63)) != 0,
                        "{text:?}"
                    );
                }
            }
            let again = ports::parse_spec(&set.describe()).expect("a description parses");
            assert_eq!(ports::PortSet::new(again), set, "{text:?}");
        }
        Err(reason) => assert!(!reason.is_empty() && !reason.contains('\n'), "{text:?}"),
    }
}

/// Decoding a kernel record of any content (every field of `RawEvent` is an integer, so any
/// bytes are a value of it): an event or nothing.
pub fn raw_event(data: &[u8]) {
    if data.len() < size_of::<RawEvent>() {
        return;
    }
    // SAFETY: the input holds at least one RawEvent's bytes, and every bit pattern is a valid
    // RawEvent (integers and byte arrays only); read_unaligned needs no alignment.
    let raw: RawEvent = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
    let ts = MonotonicClock::measure().to_wall(raw.ts_ns);
    let _ = (ts.rfc3339(), ts.time_of_day());
    if let Some(event) = event::Event::from_raw(&raw, ts) {
        let _ = event.family_name();
    }
    let _ = (
        task::Comm::from_kernel(&raw.comm),
        event::errno_name(raw.errno),
    );
}

/// A capture file of any content, plain or gzipped, read as `verify` and `report` read it: a
/// verdict, a loaded capture or one sentence.
pub fn capture_file(data: &[u8]) {
    // The readers take paths (rotated parts are files), so the input becomes one.
    let path = PathBuf::from(format!(
        "/tmp/portwatch-fuzz-capture-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, data).expect("writing the input to /tmp");
    let paths = [path];
    let _ = verify::verify(&paths);
    for strict in [false, true] {
        let _ = report::load::load(&paths, strict, |_| {}, |_| {});
    }
    let _ = std::fs::remove_file(&paths[0]);
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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
        corpus("btf_reader")
            .iter()
            .for_each(|input| super::btf_reader(input));
    }

    #[test]
    fn port_spec_corpus() {
        for input in corpus("port_spec") {
            if let Ok(text) = std::str::from_utf8(&input) {
                super::port_spec(text);
            }
        }
    }

    #[test]
    fn raw_event_corpus() {
        corpus("raw_event")
            .iter()
            .for_each(|input| super::raw_event(input));
    }

    #[test]
    fn capture_file_corpus() {
        corpus("capture_file")
            .iter()
            .for_each(|input| super::capture_file(input));
    }
}
