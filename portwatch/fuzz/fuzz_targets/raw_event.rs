//! Decoding a kernel record of arbitrary content (every field of `RawEvent` is an integer, so
//! any bytes are a value of it): an event or nothing, never a panic.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/clock.rs"]
mod clock;
#[allow(dead_code)]
#[path = "../../src/event.rs"]
mod event;

use portwatch_ebpf::RawEvent;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < size_of::<RawEvent>() {
        return;
    }
    // SAFETY: the input holds at least one RawEvent's bytes, and every bit pattern is a valid
    // RawEvent (integers and byte arrays only); read_unaligned needs no alignment.
    let raw: RawEvent = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
    let clock = clock::MonotonicClock::new();
    let ts = clock.to_wall(raw.ts_ns);
    let _ = (ts.rfc3339(), ts.time_of_day());
    if let Some(event) = event::Event::from_raw(&raw, ts) {
        let _ = event.family_name();
    }
    let _ = (event::comm(&raw.comm), event::errno_name(raw.errno));
});
