//! What the host is, read from /proc and netlink: network namespaces and their ephemeral
//! ranges, the sockets open now, the processes behind them and the accounts they run as.

pub mod containers;
pub mod enrich;
pub mod netns;
pub mod ns_ranges;
pub mod proc_stat;
pub mod snapshot;
pub mod users;
