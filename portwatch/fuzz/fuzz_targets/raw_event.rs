//! Decoding a kernel record of arbitrary content (every field of `RawEvent` is an integer, so
//! any bytes are a value of it): an event or nothing, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portwatch::fuzzing::raw_event(data));
