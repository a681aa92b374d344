//! Where events go: the table, JSON lines, sealed capture files and Prometheus metrics.

pub mod capture;
pub mod metrics_server;
pub mod sink;

/// How events are printed on stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}
