//! The commands: trace (the live tracer), who, report and verify.

pub mod config;
pub mod report;
pub mod trace;
pub mod verify;
pub mod who;
