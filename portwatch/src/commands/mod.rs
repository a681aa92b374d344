//! The commands: trace (the live tracer), who, report and verify.

pub mod config;
pub mod ephemeral;
pub mod report;
pub mod trace;
pub mod verify;
pub mod who;
