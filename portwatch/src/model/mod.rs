//! The shapes every other layer speaks: the owned event decoded from the kernel's record, wall
//! and monotonic time, and port sets.

pub mod clock;
pub mod container;
pub mod event;
pub mod exhaustion;
pub mod json;
pub mod ports;
pub mod proto;
pub mod record;
pub mod socket_state;
pub mod task;
pub mod text;
