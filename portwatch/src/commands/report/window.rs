//! The stretch of time a report covers: the capture's, narrowed by `--since` and `--until`.

use std::time::Duration;

use super::timeline::Hold;

/// A `--since`/`--until` value: a time, or an offset from the start of the capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    At(u128),
    AfterStart(Duration),
}

impl Bound {
    fn resolve(self, start: u128) -> u128 {
        match self {
            Bound::At(at) => at,
            Bound::AfterStart(offset) => start + offset.as_nanos(),
        }
    }
}

/// `[since, until]` in nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub since: u128,
    pub until: u128,
}

impl Window {
    pub fn new(since: u128, until: u128) -> Self {
        Self { since, until }
    }

    /// The capture's span `[start, end]`, narrowed by the bounds given.
    pub fn narrowed(start: u128, end: u128, since: Option<Bound>, until: Option<Bound>) -> Self {
        Self {
            since: since.map_or(start, |bound| bound.resolve(start).max(start)),
            until: until.map_or(end, |bound| bound.resolve(start).min(end)),
        }
    }

    pub fn contains(&self, at: u128) -> bool {
        (self.since..=self.until).contains(&at)
    }

    /// The part of `hold` inside the window, `(start, end)`; empty when `start >= end`. A claim
    /// before the capture starts at the window's start, a hold never released runs to its end.
    pub fn clip(&self, hold: &Hold) -> (u128, u128) {
        let start = hold.from.unwrap_or(self.since).max(self.since);
        let end = hold.occupied_until().unwrap_or(self.until).min(self.until);
        (start, end)
    }

    pub fn overlaps(&self, hold: &Hold) -> bool {
        hold.from.unwrap_or(self.since) <= self.until
            && hold.occupied_until().is_none_or(|end| end >= self.since)
    }
}
