//! The kernel's count of TIME_WAIT sockets it declined to create.
//!
//! Connect churn leaves one TIME_WAIT socket per op for 60 s. Past `net.ipv4.tcp_max_tw_buckets`
//! the kernel skips TIME_WAIT and closes the socket outright (counting it in TcpExt's
//! TCPTimeWaitOverflow), so that op's server-side `free` legitimately carries no `time_wait`.
//! Reading the counter around a run lets the expected events account for it instead of the
//! benchmark changing a host setting behind the user's back.

use anyhow::{Context, Result};

/// The current value of `TcpExt: TCPTimeWaitOverflow` in `/proc/net/netstat`.
pub fn time_wait_overflows() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").context("reading /proc/net/netstat")?;
    // The file pairs a header line of names with a line of values, both prefixed `TcpExt:`.
    let mut tcp_ext = text.lines().filter(|line| line.starts_with("TcpExt:"));
    let (names, values) = tcp_ext
        .next()
        .zip(tcp_ext.next())
        .context("no TcpExt lines in /proc/net/netstat")?;
    let value = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "TCPTimeWaitOverflow")
        .context("no TCPTimeWaitOverflow in /proc/net/netstat")?
        .1;
    value
        .parse()
        .with_context(|| format!("TCPTimeWaitOverflow value {value:?}"))
}
