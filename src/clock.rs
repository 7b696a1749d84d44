//! The daemon's clock: the one place where the engine's [`Now`] is read and
//! where the engine's deadlines are turned back into instants to sleep until.
//!
//! The protocol core never reads a clock; everything it knows about time
//! comes through here, so a test build can change how time passes without
//! touching the engine.

use std::time::Instant;

use ferroguard_proto::device::Now;

/// The current time as the engine sees it.
pub fn now() -> Now {
    Now::system()
}

/// The real instant at which an engine deadline falls.
pub fn real_deadline(engine_deadline: Instant) -> Instant {
    engine_deadline
}
