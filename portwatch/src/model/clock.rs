//! Kernel timestamps (CLOCK_MONOTONIC) to wall-clock RFC 3339 text.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(u128);

impl Timestamp {
    pub fn from_unix_nanos(nanos: u128) -> Self {
        Self(nanos)
    }

    pub fn nanos(self) -> u128 {
        self.0
    }

    /// Nanoseconds from `earlier` to this time, 0 if `earlier` is later.
    pub fn nanos_since(self, earlier: Timestamp) -> u128 {
        self.0.saturating_sub(earlier.0)
    }

    pub fn now() -> Self {
        Self(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos()),
        )
    }

    /// `2026-11-26T04:59:01.123456789Z`.
    pub fn rfc3339(self) -> String {
        match self.rfc3339_bytes() {
            Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            None => {
                let (date, time, nanos) = self.parts();
                format!("{date}T{time}.{nanos:09}Z")
            }
        }
    }

    /// Writes [`Timestamp::rfc3339`] without allocating: every event's `ts` goes through this.
    pub fn write_rfc3339(self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        match self.rfc3339_bytes() {
            Some(bytes) => out.write_all(&bytes),
            None => out.write_all(self.rfc3339().as_bytes()),
        }
    }

    /// The RFC 3339 text in a fixed-size buffer, for the years 1970 to 2554 (every wall clock
    /// this tool will meet); None beyond them, which [`Timestamp::parts`] formats instead.
    fn rfc3339_bytes(self) -> Option<[u8; 30]> {
        // In u64 (nanoseconds fit until 2554): 128-bit division is a library call per event.
        let since_epoch = u64::try_from(self.0).ok()?;
        let seconds = (since_epoch / 1_000_000_000) as i64;
        let nanos = since_epoch % 1_000_000_000;
        let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        let year = u64::try_from(year).ok()?;
        let mut text = *b"0000-00-00T00:00:00.000000000Z";
        for (range, value) in [
            (0..4, year),
            (5..7, u64::from(month)),
            (8..10, u64::from(day)),
            (11..13, (second_of_day / 3600) as u64),
            (14..16, (second_of_day / 60 % 60) as u64),
            (17..19, (second_of_day % 60) as u64),
            (20..29, nanos),
        ] {
            let mut value = value;
            for digit in text[range].iter_mut().rev() {
                *digit = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        Some(text)
    }

    /// `04:59:01.123456`: the table's compact form (UTC, microseconds).
    pub fn time_of_day(self) -> String {
        match self.rfc3339_bytes() {
            // `2026-11-26T04:59:01.123456789Z`: the time, cut after the microseconds.
            Some(bytes) => String::from_utf8_lossy(&bytes[11..26]).into_owned(),
            None => {
                let (_, time, nanos) = self.parts();
                format!("{time}.{:06}", nanos / 1000)
            }
        }
    }

    fn parts(self) -> (String, String, u128) {
        let seconds = (self.0 / 1_000_000_000) as i64;
        let nanos = self.0 % 1_000_000_000;
        let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        (
            format!("{year:04}-{month:02}-{day:02}"),
            format!(
                "{:02}:{:02}:{:02}",
                second_of_day / 3600,
                second_of_day / 60 % 60,
                second_of_day % 60
            ),
            nanos,
        )
    }
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Converts CLOCK_MONOTONIC nanoseconds (what bpf_ktime_get_ns returns) to wall-clock time,
/// using the offset between the two clocks measured once at start-up.
pub struct MonotonicClock {
    offset: i128,
    anchor: (Timestamp, u64),
}

impl MonotonicClock {
    pub fn measure() -> Self {
        let wall = Timestamp::now();
        let monotonic = monotonic_now();
        Self {
            offset: wall.0 as i128 - monotonic as i128,
            anchor: (wall, monotonic),
        }
    }

    /// The wall time and the monotonic time read together at start-up: the mapping a capture
    /// file records so kernel timestamps can be checked against it.
    pub fn anchor(&self) -> (Timestamp, u64) {
        self.anchor
    }

    pub fn to_wall(&self, monotonic_ns: u64) -> Timestamp {
        Timestamp((monotonic_ns as i128 + self.offset).max(0) as u128)
    }
}

fn monotonic_now() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_with_nanoseconds() {
        assert_eq!(Timestamp(0).rfc3339(), "1970-01-01T00:00:00.000000000Z");
        // 2026-11-26T04:59:01.123456789Z
        let ts = Timestamp(1_795_669_141_123_456_789);
        assert_eq!(ts.rfc3339(), "2026-11-26T04:59:01.123456789Z");
        assert_eq!(ts.time_of_day(), "04:59:01.123456");
        // A leap day.
        assert_eq!(
            Timestamp(951_782_400 * 1_000_000_000).rfc3339(),
            "2000-02-29T00:00:00.000000000Z"
        );
        // Past 2554 nanoseconds leave u64, and the slower formatting takes over.
        assert_eq!(
            Timestamp(32_503_680_000 * 1_000_000_000).rfc3339(),
            "3000-01-01T00:00:00.000000000Z"
        );
        // Beyond year 9999 the text grows a digit rather than wrapping.
        assert_eq!(
            Timestamp(253_402_300_800 * 1_000_000_000).rfc3339(),
            "10000-01-01T00:00:00.000000000Z"
        );
        let mut written = Vec::new();
        ts.write_rfc3339(&mut written).unwrap();
        assert_eq!(written, b"2026-11-26T04:59:01.123456789Z");
    }

    #[test]
    fn monotonic_time_maps_near_now() {
        let clock = MonotonicClock::measure();
        let mapped = clock.to_wall(monotonic_now()).0 as i128;
        assert!((mapped - Timestamp::now().0 as i128).abs() < 1_000_000_000);
    }
}
