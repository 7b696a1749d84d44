//! A small logger for the `log` facade: one line per record on stderr,
//! `LEVEL: interface: message`. The level is chosen at run time; a disabled
//! level costs one relaxed atomic load at the call site (`log`'s
//! `max_level` check), which is what keeps the data path free of cost.
//! Keys never reach a log line: peers are named by `PublicKey::short_id`.

use std::io::Write;

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
