//! The system log, for a daemon that detached from its terminal (journald
//! collects it on systemd machines).

use std::ffi::CString;

/// Opens the log connection under the name `ferroguard` with the pid.
pub fn open() {
    // SAFETY: the identifier is a 'static C string; openlog keeps the pointer.
    unsafe {
        libc::openlog(
            c"ferroguard".as_ptr(),
            libc::LOG_PID | libc::LOG_NDELAY,
            libc::LOG_DAEMON,
        )
    };
}

/// Writes one message at `priority` (a `libc::LOG_*` level).
pub fn write(priority: libc::c_int, message: &str) {
    // Interior NULs cannot be passed to C; replace them.
    let Ok(text) = CString::new(message.replace('\0', "\\0")) else {
        return;
    };
    // SAFETY: "%s" with one valid NUL-terminated argument.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), text.as_ptr()) };
}
