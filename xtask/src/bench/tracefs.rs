//! Making sure tracefs is mounted.
//!
//! Both tracers attach to tracepoints, and both look tracepoints up by name under
//! `/sys/kernel/tracing/events`. Minimal hosts and containers often boot without tracefs mounted,
//! and then every attach fails with a confusing "not found".

use std::ffi::CStr;
use std::io;
use std::path::Path;

use anyhow::{Context, Result};

const MOUNT_POINT: &CStr = c"/sys/kernel/tracing";

/// Mounts tracefs at `/sys/kernel/tracing` when it is not there yet; says so when it does.
pub fn ensure_mounted() -> Result<()> {
    let mount_point = Path::new(MOUNT_POINT.to_str().expect("the mount point is ASCII"));
    if mount_point.join("events").is_dir() {
        return Ok(());
    }
    // SAFETY: every pointer is a NUL-terminated string literal; tracefs takes no mount data.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            MOUNT_POINT.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("mounting tracefs at /sys/kernel/tracing");
    }
    eprintln!("bench: mounted tracefs at /sys/kernel/tracing (tracepoints need it)");
    Ok(())
}
