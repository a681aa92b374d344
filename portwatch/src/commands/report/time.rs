//! RFC 3339 text back to nanoseconds since the epoch: the inverse of `clock::Timestamp::rfc3339`,
//! for the `ts` of every record and for `--since`/`--until`.

/// `2026-11-26T04:59:01.123456789Z`, a fraction of any length or none, `Z` or `±HH:MM`.
pub fn parse_rfc3339(text: &str) -> Option<u128> {
    let (date, rest) = text.split_once(['T', 't', ' '])?;
    let mut date_fields = date.split('-');
    let year: i64 = date_fields.next()?.parse().ok()?;
    let month: u32 = date_fields.next()?.parse().ok()?;
    let day: u32 = date_fields.next()?.parse().ok()?;
    if date_fields.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let (clock, offset_seconds) = split_offset(rest)?;
    let (whole, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut clock_fields = whole.split(':').map(|field| field.parse::<i64>().ok());
    let (hour, minute, second) = (
        clock_fields.next()??,
        clock_fields.next()??,
        clock_fields.next()??,
    );
    if clock_fields.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<u128>().ok()? * 10u128.pow(9 - fraction.len() as u32)
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_seconds;
    u128::try_from(seconds)
        .ok()
        .map(|s| s * 1_000_000_000 + nanos)
}

/// `12:00:00Z` → ("12:00:00", 0); `12:00:00+02:00` → ("12:00:00", 7200).
fn split_offset(rest: &str) -> Option<(&str, i64)> {
    if let Some(clock) = rest.strip_suffix(['Z', 'z']) {
        return Some((clock, 0));
    }
    let at = rest.rfind(['+', '-'])?;
    let (clock, offset) = rest.split_at(at);
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let (hours, minutes) = offset[1..].split_once(':')?;
    let (hours, minutes): (i64, i64) = (hours.parse().ok()?, minutes.parse().ok()?);
    Some((clock, sign * (hours * 3600 + minutes * 60)))
}

/// Howard Hinnant's days-from-civil (proleptic Gregorian), the inverse of clock.rs's
/// civil-from-days.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_index = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let day_of_year = (153 * month_index + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::clock::Timestamp;

    #[test]
    fn round_trips_what_the_writer_prints() {
        for nanos in [0u128, 1_795_669_277_123_456_789, 951_782_400_000_000_001] {
            let text = Timestamp::from_unix_nanos(nanos).rfc3339();
            assert_eq!(parse_rfc3339(&text), Some(nanos), "{text}");
        }
    }

    #[test]
    fn offsets_and_short_fractions() {
        assert_eq!(
            parse_rfc3339("2026-11-26T07:01:17.5+02:00"),
            Some(1_795_669_277_500_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-26T05:01:17Z"),
            Some(1_795_669_277_000_000_000)
        );
        for bad in [
            "2026-11-26",
            "2026-13-01T00:00:00Z",
            "yesterday",
            "2026-11-26T25:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
