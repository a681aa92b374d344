//! The tracing command's state, fed by events: which socket holds which port now, and how full
//! each ephemeral range is.

pub mod exhaustion;
pub mod holders;
mod port_sockets;
pub mod pressure;
