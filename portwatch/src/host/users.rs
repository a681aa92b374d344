//! uid → account name, two ways on purpose.
//!
//! The tracer (`--audit`) reads /etc/passwd itself, once. Asking the C library would go through
//! NSS: it loads modules into a process that runs as root for weeks, and a directory service
//! such as LDAP can block, which would stall the event loop and with it every event behind.
//! `who` runs once and exits, so it asks the C library, and accounts from NSS sources count.

use std::{collections::HashMap, ffi::CStr, fs};

/// Every account in /etc/passwd, by uid.
pub fn from_passwd_file() -> HashMap<u32, String> {
    fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let uid = fields.nth(1)?.parse().ok()?;
            Some((uid, name.to_string()))
        })
        .collect()
}

/// The account name of `uid` through the C library (so NSS sources such as LDAP count), or
/// None when it has none.
pub fn through_nss(uid: u32) -> Option<String> {
    let mut entry = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut buffer = vec![0 as libc::c_char; 4096];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `entry` is writable passwd storage,
    // `buffer` is writable for its length, and `found` is a writable out-pointer.
    let status = unsafe {
        libc::getpwuid_r(
            uid,
            entry.as_mut_ptr(),
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if status != 0 || found.is_null() {
        return None;
    }
    // SAFETY: on success `found` points at `entry`, whose pw_name points into `buffer` as a
    // NUL-terminated string; both outlive this borrow.
    let name = unsafe { CStr::from_ptr((*found).pw_name) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_both_ways() {
        assert_eq!(from_passwd_file().get(&0).map(String::as_str), Some("root"));
        assert_eq!(through_nss(0).as_deref(), Some("root"));
    }
}
