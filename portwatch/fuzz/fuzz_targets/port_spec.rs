//! The `--port` parser on arbitrary text: a value or one sentence, never a panic; what it accepts
//! must make a port set whose bitmap and description hold exactly those ports.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/ports.rs"]
mod ports;

libfuzzer_sys::fuzz_target!(|text: &str| {
    match ports::parse_spec(text) {
        Ok(ranges) => {
            let set = ports::PortSet::new(ranges.clone());
            let bitmap = set.bitmap();
            for range in &ranges {
                for port in [*range.start(), *range.end()] {
                    assert!(set.contains(port));
                    assert!(bitmap[port as usize >> 6] & (1 << (port & 63)) != 0);
                }
            }
            let again = ports::parse_spec(&set.describe()).expect("a description parses");
            assert_eq!(ports::PortSet::new(again), set);
        }
        Err(reason) => assert!(!reason.is_empty() && !reason.contains('\n')),
    }
});
