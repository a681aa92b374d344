//! Reading a capture file of arbitrary content, plain or gzipped, as `verify` and `report` do:
//! a verdict, a loaded capture or one sentence, never a panic.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/clock.rs"]
mod clock;
#[allow(dead_code)]
#[path = "../../src/event.rs"]
mod event;
#[allow(dead_code)]
#[path = "../../src/verify.rs"]
mod verify;

// The report's modules refer to one another as `super::...`, so they sit at the top here, and
// `crate::capture::...` is made to resolve with re-exports (a nested `#[path]` module would be
// looked up under a directory that does not exist).
#[allow(dead_code)]
#[path = "../../src/capture/reader.rs"]
mod capture_reader;
#[allow(dead_code)]
#[path = "../../src/capture/seal.rs"]
mod capture_seal;
#[allow(dead_code)]
#[path = "../../src/report/load.rs"]
mod load;
#[allow(dead_code)]
#[path = "../../src/report/record.rs"]
mod record;
#[allow(dead_code)]
#[path = "../../src/report/time.rs"]
mod time;

mod capture {
    pub(crate) use super::{capture_reader as reader, capture_seal as seal};
}

use std::path::PathBuf;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The readers take paths (rotated parts are files), so each input becomes one.
    let path = PathBuf::from(format!("/tmp/portwatch-fuzz-capture-{}", std::process::id()));
    std::fs::write(&path, data).expect("writing the input to /tmp");
    let paths = [path];
    let _ = verify::verify(&paths);
    for strict in [false, true] {
        let _ = load::load(&paths, strict, |_| {}, |_| {});
    }
});
