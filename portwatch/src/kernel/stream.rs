//! Reading the ring buffer and the lost counter.
//!
//! Delivery is batched: the kernel programs submit without waking the reader until the ring
//! passes a fill level (`Settings::wakeup_bytes`), so under load one wakeup carries hundreds of
//! events. Below that level the reader looks on a short timer, which bounds how long a single
//! event waits.

use std::{mem::size_of, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use portwatch_ebpf::RawEvent;
use tokio::io::{Interest, unix::AsyncFd};

use crate::kernel::{lost::LostCounter, skipped::SkippedRuns};

/// The longest a single event waits in the ring before the reader looks: well under the 50 ms
/// at which a person notices, and only 40 wakeups a second when idle.
const BATCH_INTERVAL: Duration = Duration::from_millis(25);

/// The kernel's event stream and its drop counter.
pub struct Stream {
    ring: AsyncFd<RingBuf<MapData>>,
    lost: LostCounter,
    skipped: SkippedRuns,
}

impl Stream {
    pub fn new(
        ring: RingBuf<MapData>,
        lost: LostCounter,
        skipped: SkippedRuns,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            // SAFETY: the RingBuf owns its map fd; it stays open and unchanged until the
            // AsyncFd, which owns the RingBuf, is dropped.
            ring: unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|err| err.into_parts().1)
                .context("registering the ring buffer with epoll")?,
            lost,
            skipped,
        })
    }

    /// Waits until the kernel woke us (the ring passed its fill level) or the batching
    /// interval is over, whichever comes first; either way the ring may hold events to drain.
    pub async fn readable(&mut self) -> anyhow::Result<()> {
        match tokio::time::timeout(BATCH_INTERVAL, self.ring.readable_mut()).await {
            Ok(guard) => guard.context("waiting on the ring buffer")?.clear_ready(),
            Err(_elapsed) => {}
        }
        Ok(())
    }

    /// Hands every event now in the ring buffer to `handle`, oldest first, until it returns
    /// false (the consumer wants no more).
    pub fn drain(&mut self, mut handle: impl FnMut(&RawEvent) -> bool) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<RawEvent>() {
                continue;
            }
            // SAFETY: the item holds at least size_of::<RawEvent>() bytes written by the kernel
            // program from the same repr(C) definition; every bit pattern is a valid RawEvent,
            // and read_unaligned needs no alignment.
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<RawEvent>()) };
            if !handle(&event) {
                return;
            }
        }
    }

    /// Events dropped since the last call because the ring buffer was full.
    pub fn newly_lost(&mut self) -> u64 {
        self.lost.newly_lost()
    }

    /// Program runs the kernel skipped since the last call, and in all; None where it does
    /// not say.
    pub fn newly_skipped(&mut self) -> Option<(u64, u64)> {
        let new = self.skipped.newly_skipped()?;
        Some((new, self.skipped.total()))
    }
}
