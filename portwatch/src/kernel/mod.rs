//! Everything that talks to the kernel: reading its BTF, choosing, loading and attaching a
//! backend's programs (in a child that keeps the capabilities), and streaming their records.

pub mod backend;
pub mod btf;
pub mod kernel_log;
pub mod loader;
pub mod lost;
pub mod mounts;
pub mod privileges;
pub mod skipped;
pub mod stream;
