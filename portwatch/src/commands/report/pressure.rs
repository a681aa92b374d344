//! Where the ephemeral range the report weighs ports against comes from: the capture's header,
//! a `pressure` record, or this host.

use std::ops::RangeInclusive;

/// Where the ephemeral range came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeSource {
    /// The capture header's `ephemeral_range`.
    Header,
    /// The `range` of a `pressure` record read before the first event (the tracer read it in
    /// the namespace whose range filled).
    PressureRecord,
    /// This host's `/proc/sys/net/ipv4/ip_local_port_range`, read now: the input does not say.
    ThisHost,
    /// Neither: the input has none and this host's could not be read (the reason).
    Unknown(String),
}

/// `32768-60999` as a range.
pub fn range_of(text: &str) -> Option<RangeInclusive<u16>> {
    crate::model::ports::parse_spec(text)
        .ok()
        .and_then(|ranges| ranges.into_iter().next())
}

/// The range to count against: the header's, else a pressure record's, else this host's.
pub fn choose(
    header: Option<&str>,
    pressure: Option<&str>,
    host: impl FnOnce() -> std::io::Result<RangeInclusive<u16>>,
) -> (Option<RangeInclusive<u16>>, RangeSource) {
    if let Some(range) = header.and_then(range_of) {
        return (Some(range), RangeSource::Header);
    }
    if let Some(range) = pressure.and_then(range_of) {
        return (Some(range), RangeSource::PressureRecord);
    }
    match host() {
        Ok(range) => (Some(range), RangeSource::ThisHost),
        Err(err) => (None, RangeSource::Unknown(err.to_string())),
    }
}

pub fn range_size(range: &Option<RangeInclusive<u16>>) -> usize {
    range
        .as_ref()
        .map_or(0, |range| usize::from(*range.end() - *range.start()) + 1)
}
