//! The receive-side anti-replay window (RFC 6479).
//!
//! Each keypair accepts every transport counter at most once, and only if it
//! is no more than [`WINDOW_SIZE`] behind the highest counter accepted so far.
//! Packets may arrive out of order (parallel decryption, reordering on the
//! path), so a plain "must increase" rule would drop good traffic.
//!
//! The bitmap is a ring of 128 words of 64 bits. Counter `c` owns bit `c % 64`
//! of word `(c / 64) % 128`. When the highest counter moves forward, the words
//! it moves into are cleared whole, which replaces the bit shifting of a
//! classic sliding window by at most 128 word stores and makes the common case
//! (next counter in the same word) a single OR. One word is kept as slack
//! for the word being cleared, so the usable window is `128 × 64 − 64 = 8128`
//! counters, as in the Linux driver and wireguard-go.
//!
//! [`ReplayWindow::update`] must only be called after the packet decrypted
//! successfully; otherwise a forged counter could move the window forward and
//! make genuine packets look too old. [`ReplayWindow::check`] is the read-only
//! twin that can be used to drop obvious replays before paying for the AEAD.

use crate::constants::REJECT_AFTER_MESSAGES;

/// Number of bits in one ring word.
const BITS_PER_WORD: u64 = u64::BITS as u64;
/// Number of words in the ring (a power of two, so `%` is a mask).
const RING_WORDS: usize = 128;
/// Total number of bits in the ring.
const RING_BITS: u64 = RING_WORDS as u64 * BITS_PER_WORD;

/// How far behind the highest accepted counter a counter may be and still be
/// accepted: a counter `c` is considered when `highest − c ≤ WINDOW_SIZE`.
pub const WINDOW_SIZE: u64 = RING_BITS - BITS_PER_WORD;

/// Where a counter falls relative to the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Above the highest counter seen (or nothing seen yet): always new.
    Ahead,
    /// Inside the window: new exactly when its bit is clear.
    InWindow,
    /// Too far behind the window, or beyond the message limit: never accepted.
    Rejected,
}

/// The set of transport counters already received on one keypair.
///
/// Not secret; `Debug` prints the highest counter only, not the 1 KiB bitmap.
#[derive(Clone)]
pub struct ReplayWindow {
    /// The bitmap ring; see the module documentation for the layout.
    ring: [u64; RING_WORDS],
    /// The largest counter accepted so far.
    highest: Option<u64>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest)
            .finish_non_exhaustive()
    }
}

/// Index of the ring word that holds the bit of `counter`.
fn word_index(counter: u64) -> usize {
    // The remainder is below RING_WORDS (128), so the cast is lossless.
    (counter / BITS_PER_WORD % RING_WORDS as u64) as usize
}

/// Mask selecting the bit of `counter` inside its word.
fn bit_mask(counter: u64) -> u64 {
    1 << (counter % BITS_PER_WORD)
}

impl ReplayWindow {
    /// An empty window: every counter below the message limit is acceptable.
    pub fn new() -> Self {
        Self {
            ring: [0; RING_WORDS],
            highest: None,
        }
    }

    /// Whether [`update`](Self::update) would accept `counter` right now.
    ///
    /// Read-only, so it is safe to call on a packet that has not been
    /// authenticated yet.
    pub fn check(&self, counter: u64) -> bool {
        match self.position(counter) {
            Position::Ahead => true,
            Position::InWindow => !self.is_marked(counter),
            Position::Rejected => false,
        }
    }

    /// Records `counter` as received and returns whether it was new.
    ///
    /// Returns `false` (and changes nothing) for a counter seen before, one
    /// more than [`WINDOW_SIZE`] behind the highest accepted counter, or one
    /// at or above `REJECT_AFTER_MESSAGES`. Call it only after the packet
    /// carrying `counter` was successfully decrypted.
    pub fn update(&mut self, counter: u64) -> bool {
        #[cfg(feature = "debug-checks")]
        let predicted = self.check(counter);

        let accepted = match self.position(counter) {
            Position::Ahead => {
                self.advance_to(counter);
                self.mark(counter);
                true
            }
            Position::InWindow => !self.is_marked(counter) && self.mark(counter),
            Position::Rejected => false,
        };

        #[cfg(feature = "debug-checks")]
        {
            assert_eq!(predicted, accepted, "check() disagrees with update()");
            self.assert_invariants();
        }
        accepted
    }

    /// The largest counter accepted so far, `None` before the first one.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    fn position(&self, counter: u64) -> Position {
        if counter >= REJECT_AFTER_MESSAGES {
            return Position::Rejected;
        }
        match self.highest {
            None => Position::Ahead,
            Some(highest) if counter > highest => Position::Ahead,
            Some(highest) if highest - counter > WINDOW_SIZE => Position::Rejected,
            Some(_) => Position::InWindow,
        }
    }

    fn is_marked(&self, counter: u64) -> bool {
        self.ring[word_index(counter)] & bit_mask(counter) != 0
    }

    /// Sets the bit of `counter`; returns `true` for use in `&&` chains.
    fn mark(&mut self, counter: u64) -> bool {
        self.ring[word_index(counter)] |= bit_mask(counter);
        true
    }

    /// Makes `new_highest` (> the current highest) the top of the window.
    ///
    /// The words after the old top word up to the new top word held bits of
    /// counters a whole ring (8192) earlier; they are cleared so that they
    /// describe the new, never-seen counters. A jump of a ring or more clears
    /// every word once.
    fn advance_to(&mut self, new_highest: u64) {
        if let Some(old_highest) = self.highest {
            let old_word = old_highest / BITS_PER_WORD;
            let new_word = new_highest / BITS_PER_WORD;
            let words_to_clear = (new_word - old_word).min(RING_WORDS as u64);
            for step in 1..=words_to_clear {
                // old_word < 2^58, so adding at most 128 cannot overflow.
                self.ring[word_index((old_word + step) * BITS_PER_WORD)] = 0;
            }
        }
        // With no highest yet the ring is still all zeros: nothing to clear.
        self.highest = Some(new_highest);
    }

    /// Panics if the window's internal invariants do not hold.
    #[cfg(feature = "debug-checks")]
    fn assert_invariants(&self) {
        let Some(highest) = self.highest else {
            assert!(
                self.ring.iter().all(|&word| word == 0),
                "bits set but no highest"
            );
            return;
        };
        assert!(highest < REJECT_AFTER_MESSAGES, "highest beyond limit");
        assert!(self.is_marked(highest), "highest counter not marked");
        // Counters above the highest live in the top word's upper bits (all
        // other words describe older counters); they must never look seen.
        let top_word = self.ring[word_index(highest)];
        let first_bit_above = highest % BITS_PER_WORD + 1;
        let mask_above = u64::MAX.checked_shl(first_bit_above as u32).unwrap_or(0);
        assert_eq!(
            top_word & mask_above,
            0,
            "bits set above the highest counter"
        );
    }
}

#[cfg(any(test, feature = "selftest"))]
/// The kernel's `selftest/counter.c` script (also wireguard-go's
/// `replay_test.go`): 34 `(counter, accepted)` cases on one window, around
/// the window's edge (`T_LIM = WINDOW_SIZE + 1`) and REJECT_AFTER_MESSAGES.
/// Shared by the unit tests and the start-up self-tests.
pub(crate) fn kernel_selftest_cases() -> [(u64, bool); 34] {
    const T_LIM: u64 = WINDOW_SIZE + 1;
    const REJECT: u64 = REJECT_AFTER_MESSAGES;
    [
        (0, true),
        (1, true),
        (1, false),
        (9, true),
        (8, true),
        (7, true),
        (7, false),
        (T_LIM, true),
        (T_LIM - 1, true),
        (T_LIM - 1, false),
        (T_LIM - 2, true),
        (2, true),
        (2, false),
        (T_LIM + 16, true),
        (3, false),
        (T_LIM + 16, false),
        (T_LIM * 4, true),
        (T_LIM * 4 - (T_LIM - 1), true),
        (10, false),
        (T_LIM * 4 - T_LIM, false),
        (T_LIM * 4 - (T_LIM + 1), false),
        (T_LIM * 4 - (T_LIM - 2), true),
        (T_LIM * 4 + 1 - T_LIM, false),
        (0, false),
        (REJECT, false),
        (REJECT - 1, true),
        (REJECT, false),
        (REJECT - 1, false),
        (REJECT - 2, true),
        (REJECT + 1, false),
        (REJECT + 2, false),
        (REJECT - 2, false),
        (REJECT - 3, true),
        (0, false),
    ]
}

#[cfg(any(test, feature = "selftest"))]
/// Runs `(counter, expected)` cases against one window; the error names the
/// first failing case by its 1-based number, like the kernel selftest.
pub(crate) fn run_cases(window: &mut ReplayWindow, cases: &[(u64, bool)]) -> Result<(), String> {
    for (number, &(counter, expected)) in cases.iter().enumerate() {
        if window.check(counter) != expected || window.update(counter) != expected {
            return Err(format!(
                "case {} (counter {counter}): expected {}",
                number + 1,
                if expected { "accept" } else { "reject" }
            ));
        }
    }
    Ok(())
}

#[cfg(any(test, feature = "selftest"))]
/// The kernel's counter script on a fresh window.
pub(crate) fn run_kernel_selftest() -> Result<(), String> {
    let mut window = ReplayWindow::new();
    run_cases(&mut window, &kernel_selftest_cases())?;
    if window.highest() != Some(REJECT_AFTER_MESSAGES - 1) {
        return Err("highest counter after the script is wrong".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::model::NaiveWindow;
    use super::*;
    use proptest::prelude::*;

    const REJECT: u64 = REJECT_AFTER_MESSAGES;

    #[test]
    fn window_size_matches_reference_implementations() {
        assert_eq!(WINDOW_SIZE, 8128);
        assert_eq!(u128::from(REJECT), (1u128 << 64) - (1 << 13) - 1);
    }

    fn run_script(window: &mut ReplayWindow, cases: &[(u64, bool)]) {
        if let Err(e) = run_cases(window, cases) {
            panic!("{e}");
        }
    }

    #[test]
    fn kernel_selftest_table() {
        assert_eq!(kernel_selftest_cases().len(), 34);
        assert_eq!(run_kernel_selftest(), Ok(()));
    }

    /// `counters` are all expected to be accepted, then `tail` is run.
    fn bulk_run(counters: impl Iterator<Item = u64>, tail: &[(u64, bool)]) {
        let mut window = ReplayWindow::new();
        for counter in counters {
            assert!(window.update(counter), "counter {counter} rejected");
        }
        run_script(&mut window, tail);
    }

    #[test]
    fn bulk_ascending_full_window_then_zero() {
        bulk_run(1..=WINDOW_SIZE, &[(0, true), (0, false)]);
    }

    #[test]
    fn bulk_ascending_one_past_window_then_zero_too_old() {
        bulk_run(2..=WINDOW_SIZE + 1, &[(1, true), (0, false)]);
    }

    #[test]
    fn bulk_descending_whole_window() {
        // Kernel: WINDOW_SIZE down to 0; wireguard-go: WINDOW_SIZE + 1 down to 1.
        bulk_run((0..=WINDOW_SIZE).rev(), &[]);
        bulk_run((1..=WINDOW_SIZE + 1).rev(), &[]);
    }

    #[test]
    fn bulk_descending_then_zero_too_old() {
        // Kernel: WINDOW_SIZE + 1 down to 1; wireguard-go: WINDOW_SIZE + 2 down to 2.
        bulk_run((1..=WINDOW_SIZE + 1).rev(), &[(0, false)]);
        bulk_run((2..=WINDOW_SIZE + 2).rev(), &[(0, false)]);
    }

    #[test]
    fn bulk_descending_then_advance_then_zero_too_old() {
        bulk_run(
            (1..=WINDOW_SIZE).rev(),
            &[(WINDOW_SIZE + 1, true), (0, false)],
        );
    }

    #[test]
    fn bulk_descending_then_zero_then_advance() {
        bulk_run(
            (1..=WINDOW_SIZE).rev(),
            &[(0, true), (WINDOW_SIZE + 1, true)],
        );
    }

    #[test]
    fn highest_tracks_largest_accepted_counter() {
        let mut window = ReplayWindow::default();
        assert_eq!(window.highest(), None);
        assert!(window.update(40));
        assert_eq!(window.highest(), Some(40));
        assert!(window.update(12));
        assert_eq!(window.highest(), Some(40));
        assert!(!window.update(REJECT));
        assert_eq!(window.highest(), Some(40));
        assert!(window.update(1 << 40));
        assert_eq!(window.highest(), Some(1 << 40));
    }

    #[test]
    fn check_does_not_modify() {
        let mut window = ReplayWindow::new();
        for counter in [0, 5, 9000, 100] {
            assert!(window.check(counter));
            assert!(window.check(counter), "second check of {counter}");
        }
        assert_eq!(window.highest(), None);
        assert!(window.update(5));
        assert!(!window.check(5));
        assert!(window.check(4));
        assert!(window.check(6));
    }

    #[test]
    fn first_counter_may_be_anything_below_limit() {
        let mut window = ReplayWindow::new();
        assert!(window.update(REJECT - 1));
        assert!(!window.update(REJECT - 1));
        assert!(window.update(REJECT - 1 - WINDOW_SIZE));
        assert!(!window.update(REJECT - 2 - WINDOW_SIZE));
    }

    #[test]
    fn bits_of_an_earlier_lap_do_not_leak_into_the_next() {
        // Counters 8192 apart share a bit. After jumping exactly one ring
        // ahead, the old bits must have been cleared.
        let mut window = ReplayWindow::new();
        for counter in 0..RING_BITS {
            assert!(window.update(counter));
        }
        // Jump a whole ring ahead, then fill the window downwards.
        let lap = RING_BITS;
        let mut jumped = window.clone();
        for counter in (lap + BITS_PER_WORD..2 * lap).rev() {
            assert!(jumped.update(counter), "counter {counter} after jump");
        }
        // Walk forward one counter at a time: each word is cleared on entry.
        for counter in lap..3 * lap {
            assert!(window.update(counter), "counter {counter} of later lap");
        }
        // Small forward steps clear one word at a time.
        let mut window = ReplayWindow::new();
        assert!(window.update(63));
        assert!(window.update(63 + RING_BITS - 64));
        assert!(window.update(63 + RING_BITS));
        assert!(!window.update(63 + RING_BITS - 64));
    }

    #[test]
    fn debug_does_not_dump_the_bitmap() {
        let mut window = ReplayWindow::new();
        window.update(7);
        let text = format!("{window:?}");
        assert!(text.contains("highest: Some(7)"), "{text}");
        assert!(text.len() < 64, "{text}");
    }

    /// A counter chosen relative to the current highest one, so that runs
    /// exercise the window edges instead of scattering over 2^64.
    #[derive(Debug, Clone)]
    enum Step {
        Forward(u64),
        Backward(u64),
        Absolute(u64),
        NearLimit(u64),
    }

    fn step_strategy() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..200u64).prop_map(Step::Forward),
            1 => (0..3 * RING_BITS).prop_map(Step::Forward),
            4 => (0..WINDOW_SIZE + 130).prop_map(Step::Backward),
            1 => any::<u64>().prop_map(Step::Absolute),
            1 => (0..WINDOW_SIZE + 10).prop_map(Step::NearLimit),
        ]
    }

    fn resolve(step: &Step, highest: Option<u64>) -> u64 {
        let base = highest.unwrap_or(0);
        match *step {
            Step::Forward(delta) => base.saturating_add(delta),
            Step::Backward(delta) => base.saturating_sub(delta),
            Step::Absolute(counter) => counter,
            Step::NearLimit(delta) => (REJECT + 2).saturating_sub(delta),
        }
    }

    proptest! {
        #[test]
        fn matches_naive_model(steps in prop::collection::vec(step_strategy(), 1..400)) {
            let mut window = ReplayWindow::new();
            let mut model = NaiveWindow::default();
            for step in &steps {
                let counter = resolve(step, model.highest());
                let expected = model.accepts(counter);
                prop_assert_eq!(window.check(counter), expected, "check {}", counter);
                prop_assert_eq!(window.update(counter), model.update(counter), "update {}", counter);
                prop_assert_eq!(window.highest(), model.highest());
            }
        }
    }
}

/// The obvious, slow definition of the window, to compare against: every
/// accepted counter in a set. Used by the unit tests and, with the
/// `reference-models` feature, by the fuzz target.
#[cfg(any(test, feature = "reference-models"))]
pub mod model {
    use super::WINDOW_SIZE;
    use crate::constants::REJECT_AFTER_MESSAGES as REJECT;
    use std::collections::BTreeSet;

    /// A window that remembers every counter it accepted within reach.
    #[derive(Default)]
    pub struct NaiveWindow {
        seen: BTreeSet<u64>,
        highest: Option<u64>,
    }

    impl NaiveWindow {
        /// The highest counter accepted so far.
        pub fn highest(&self) -> Option<u64> {
            self.highest
        }

        /// Whether `counter` would be accepted now.
        pub fn accepts(&self, counter: u64) -> bool {
            let too_old = self
                .highest
                .is_some_and(|highest| counter < highest && highest - counter > WINDOW_SIZE);
            counter < REJECT && !too_old && !self.seen.contains(&counter)
        }

        /// Accepts `counter` if it is new and within reach, like
        /// [`ReplayWindow::update`](super::ReplayWindow::update).
        pub fn update(&mut self, counter: u64) -> bool {
            let accepted = self.accepts(counter);
            if accepted {
                self.seen.insert(counter);
                let highest = self.highest.map_or(counter, |old| old.max(counter));
                self.highest = Some(highest);
                // Forget what can never matter again, to keep the model small.
                self.seen = self.seen.split_off(&highest.saturating_sub(WINDOW_SIZE));
            }
            accepted
        }
    }
}
