//! A small logger for the `log` facade: one line per record on stderr,
//! `LEVEL: interface: message`, or in the system log once the daemon has
//! detached from its terminal (see [`use_syslog`]). The level is chosen at run time; a disabled
//! level costs one relaxed atomic load at the call site (`log`'s
//! `max_level` check), which is what keeps the data path free of cost.
//! Keys never reach a log line: peers are named by `PublicKey::short_id`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static TO_SYSLOG: AtomicBool = AtomicBool::new(false);

/// Sends every later record to the system log instead of stderr.
pub fn use_syslog() {
    crate::sys::syslog::open();
    TO_SYSLOG.store(true, Ordering::Relaxed);
}

struct StderrLogger {
    interface: String,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if TO_SYSLOG.load(Ordering::Relaxed) {
            let priority = match record.level() {
                log::Level::Error => libc::LOG_ERR,
                log::Level::Warn => libc::LOG_WARNING,
                log::Level::Info => libc::LOG_INFO,
                log::Level::Debug | log::Level::Trace => libc::LOG_DEBUG,
            };
            let message = format!("{}: {}", self.interface, record.args());
            crate::sys::syslog::write(priority, &message);
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "{}: {}: {}",
            record.level(),
            self.interface,
            record.args()
        );
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger for `interface` at `level` (only the first call counts).
pub fn init(interface: &str, level: log::LevelFilter) {
    let logger = Box::new(StderrLogger {
        interface: interface.to_string(),
    });
    if log::set_boxed_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
