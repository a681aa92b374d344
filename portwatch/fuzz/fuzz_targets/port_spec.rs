//! The `--port` parser on arbitrary text: a value or one sentence, never a panic; what it accepts
//! must make a port set whose bitmap and description hold exactly those ports.
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| portwatch::fuzzing::port_spec(text));
