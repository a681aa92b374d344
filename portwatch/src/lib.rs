//! portwatch: see, live, every moment a local port is claimed or freed, by which process, and
//! every claim that failed and why.
//!
//! The layers, lowest first; each imports only the ones below it:
//! - [`model`]: the owned event, time and port sets, the shapes every other layer speaks;
//! - [`host`]: what the host is now: namespaces and their ranges, sockets, processes, users;
//! - [`live`]: the tracing command's state: who holds which port, and pressure on the ranges;
//! - [`output`]: where events go: the table, JSON, capture files, metrics;
//! - [`kernel`]: loading and attaching the eBPF programs and reading what they record;
//! - [`commands`]: trace, who, report and verify, wiring the layers above;
//! - [`cli`]: the command line, which only builds the commands' configurations.

pub mod cli;
pub mod commands;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod host;
pub mod kernel;
pub mod live;
pub mod model;
pub mod output;
