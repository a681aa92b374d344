//! Reading a capture file of arbitrary content, plain or gzipped, as `verify` and `report` do:
//! a verdict, a loaded capture or one sentence, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portwatch::fuzzing::capture_file(data));
