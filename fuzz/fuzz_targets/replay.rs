//! Drives `ReplayWindow` with a sequence of counters and compares every
//! answer with the crate's reference model (`replay::model`, a set of seen
//! counters plus the "too old" rule).
//!
//! Counters are mostly chosen relative to the current highest one, so that
//! the fuzzer spends its time at the window edges and on ring wrap-around
//! instead of scattering over 2^64. The library is built with
//! `debug-checks`, so the window also asserts its own invariants.
#![no_main]

use arbitrary::Arbitrary;
use ferroguard_proto::constants::REJECT_AFTER_MESSAGES;
use ferroguard_proto::replay::model::NaiveWindow;
use ferroguard_proto::replay::{ReplayWindow, WINDOW_SIZE};
use libfuzzer_sys::fuzz_target;

/// How the next counter is derived from the model's highest counter.
#[derive(Debug, Arbitrary)]
enum Step {
    /// Highest + delta.
    Forward(u16),
    /// Highest − delta, reaching a little past the window.
    Backward(u16),
    /// Highest − WINDOW_SIZE + small offset: right at the trailing edge.
    TrailingEdge(i8),
    /// Any counter at all.
    Absolute(u64),
    /// Just below or above REJECT_AFTER_MESSAGES.
    NearLimit(i16),
}

/// The next counter, relative to the model's highest one.
fn next_counter(model: &NaiveWindow, step: &Step) -> u64 {
    let base = model.highest().unwrap_or(0);
    match *step {
        Step::Forward(delta) => base.saturating_add(u64::from(delta)),
        Step::Backward(delta) => base.saturating_sub(u64::from(delta) % (WINDOW_SIZE + 200)),
        Step::TrailingEdge(offset) => offset_by(base.saturating_sub(WINDOW_SIZE), offset.into()),
        Step::Absolute(counter) => counter,
        Step::NearLimit(offset) => offset_by(REJECT_AFTER_MESSAGES, offset.into()),
    }
}

fn offset_by(base: u64, offset: i64) -> u64 {
    base.saturating_add_signed(offset)
}

fuzz_target!(|steps: Vec<Step>| {
    let mut window = ReplayWindow::new();
    let mut model = NaiveWindow::default();
    for step in &steps {
        let counter = next_counter(&model, step);
        assert_eq!(
            window.check(counter),
            model.accepts(counter),
            "check {counter}"
        );
        assert_eq!(
            window.update(counter),
            model.update(counter),
            "update {counter}"
        );
        assert_eq!(window.highest(), model.highest(), "highest after {counter}");
    }
});
