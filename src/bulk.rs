//! The priority of bulk work beside the data path: parsing a large `set`,
//! formatting a `get` or a metrics scrape of 2^20 peers. Such work takes a
//! CPU for seconds; on a small machine the data path must not queue behind
//! it, so its thread runs at nice [`BULK_NICE`].
//!
//! Decision: a lowered thread comes back to its normal priority for every
//! hold of the engine lock ([`at_normal_priority`]). A lock holder at
//! nice 10 is preempted by any busy normal thread (the client reading the
//! answer, another process) and keeps the lock meanwhile: the data path
//! then waits for the whole preemption (tens of milliseconds on a busy
//! machine, seen during scrapes of 2^20 peers whose copies were made at
//! nice 10: the note of issue #20). Coming back needs the right to raise
//! a thread's priority (root has it); a daemon without it does not lower
//! its bulk threads at all, since a lowered lock holder is the worse of
//! the two. That costs two `setpriority` calls per hold.

use std::cell::Cell;
use std::sync::OnceLock;

use crate::sys::process::{set_thread_nice, set_thread_realtime, thread_nice};

/// The nice value of a thread at bulk work.
pub const BULK_NICE: i32 = crate::config::BULK_NICE;

thread_local! {
    /// The thread's normal nice value while it is lowered.
    static LOWERED_FROM: Cell<Option<i32>> = const { Cell::new(None) };
    /// Whether the thread is inside [`at_normal_priority`] (calls nest).
    static RAISED: Cell<bool> = const { Cell::new(false) };
}

/// Lowers the calling thread to [`BULK_NICE`] for bulk work, if it may
/// come back to its present priority for its holds of the engine lock
/// (see the module documentation); else leaves it as it is. Calling it
/// again on a lowered thread does nothing. The thread stays lowered: use
/// it on threads that end with their work (a configuration connection, a
/// scrape).
pub fn lower_this_thread() {
    if LOWERED_FROM.get().is_some() {
        return;
    }
    let Ok(normal) = thread_nice() else { return };
    if normal >= BULK_NICE || !may_come_back() {
        return;
    }
    match set_thread_nice(BULK_NICE) {
        Ok(()) => LOWERED_FROM.set(Some(normal)),
        Err(error) => log::debug!("could not lower a bulk thread's priority: {error}"),
    }
}

/// Runs `hold` (a hold of the engine lock) at the calling thread's normal
/// priority when [`lower_this_thread`] lowered it, and lowers it again
/// afterwards; on any other thread, or inside another call, just runs
/// `hold`.
pub fn at_normal_priority<T>(hold: impl FnOnce() -> T) -> T {
    let Some(normal) = LOWERED_FROM.get() else {
        return hold();
    };
    if RAISED.get() {
        return hold();
    }
    RAISED.set(true);
    if let Err(error) = set_thread_nice(normal) {
        log::debug!("could not raise a bulk thread's priority: {error}");
    }
    let result = hold();
    RAISED.set(false);
    if let Err(error) = set_thread_nice(BULK_NICE) {
        log::debug!("could not lower a bulk thread's priority: {error}");
    }
    result
}

/// Runs `hold`, one hold of the engine lock by a thread that is not the
/// data path's (a configuration request, a `get`, a metrics scrape), as
/// [`SCHED_FIFO`](crate::sys::process::set_thread_realtime) where this
/// process may switch to it and back, and at the thread's normal priority
/// ([`at_normal_priority`]) elsewhere.
///
/// Decision (issue #20): with the holds at nice 0 the longest still
/// lasted 33 ms for 0.5 ms of work at 2^20 peers on a busy 2-core machine:
/// the holder was preempted with the lock held, and the data path waited
/// behind it. A nice value cannot prevent that: Linux shares the CPUs
/// fairly between sessions (autogroups) whatever their nice values, so
/// another session's compiler preempts a nice -20 holder too. A real-time
/// thread is preempted by no time-sharing one, so a hold lasts as long as
/// its work (bounded by the callers' slices of about half a millisecond)
/// and the data path's wait with it. Only the hold runs real-time, never
/// the parsing or formatting between holds, so the daemon cannot take the
/// CPUs from anything for longer than one slice. Two system calls per
/// hold (about a microsecond each).
pub fn lock_hold<T>(hold: impl FnOnce() -> T) -> T {
    if !may_run_realtime() {
        return at_normal_priority(hold);
    }
    let _realtime = RealtimeGuard::enter();
    hold()
}

/// Holds the calling thread real-time until dropped (also on a panic).
struct RealtimeGuard {
    entered: bool,
}

impl RealtimeGuard {
    fn enter() -> Self {
        let entered = match set_thread_realtime(true) {
            Ok(()) => true,
            Err(error) => {
                log::debug!("could not make a lock holder real-time: {error}");
                false
            }
        };
        RealtimeGuard { entered }
    }
}

impl Drop for RealtimeGuard {
    fn drop(&mut self) {
        if self.entered {
            if let Err(error) = set_thread_realtime(false) {
                log::error!("a lock holder stays real-time: {error}");
            }
        }
    }
}

/// Whether a thread of this process may switch to `SCHED_FIFO` and back
/// (tried once, on a thread of its own).
fn may_run_realtime() -> bool {
    static MAY: OnceLock<bool> = OnceLock::new();
    *MAY.get_or_init(|| {
        std::thread::spawn(|| {
            set_thread_realtime(true).is_ok() && set_thread_realtime(false).is_ok()
        })
        .join()
        .unwrap_or(false)
    })
}

/// Whether a thread of this process may lower its priority and raise it
/// back (tried once, on a thread of its own).
fn may_come_back() -> bool {
    static MAY: OnceLock<bool> = OnceLock::new();
    *MAY.get_or_init(|| {
        std::thread::spawn(|| {
            let Ok(normal) = thread_nice() else {
                return false;
            };
            set_thread_nice(BULK_NICE).is_ok() && set_thread_nice(normal).is_ok()
        })
        .join()
        .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lowered thread runs its holds at its normal priority and its bulk
    /// work at [`BULK_NICE`]; as root (CI) it is lowered, without the right
    /// to come back it must stay where it was.
    #[test]
    fn holds_run_at_normal_priority_and_bulk_work_lowered() {
        std::thread::spawn(|| {
            let normal = thread_nice().unwrap();
            lower_this_thread();
            lower_this_thread();
            let lowered = thread_nice().unwrap();
            if normal < BULK_NICE && may_come_back() {
                assert_eq!(lowered, BULK_NICE);
            } else {
                // Already as low (a test run under `nice`), or no way back.
                assert_eq!(lowered, normal);
            }
            assert_eq!(at_normal_priority(|| thread_nice().unwrap()), normal);
            assert_eq!(thread_nice().unwrap(), lowered);
            // Nested: the outer call's work after the inner one stays raised.
            let after_inner = at_normal_priority(|| {
                at_normal_priority(|| ());
                thread_nice().unwrap()
            });
            assert_eq!(after_inner, normal);
            assert_eq!(thread_nice().unwrap(), lowered);
        })
        .join()
        .unwrap();
        // Another thread is not affected.
        assert_eq!(at_normal_priority(|| 7), 7);
    }

    /// A hold runs real-time where the process may (root: CI), and the
    /// thread comes back to its policy and nice value after it, also
    /// after a panic inside the hold.
    #[test]
    fn a_hold_runs_realtime_and_the_thread_comes_back() {
        use crate::sys::process::thread_is_realtime;
        std::thread::spawn(|| {
            lower_this_thread();
            let nice = thread_nice().unwrap();
            let inside = lock_hold(|| thread_is_realtime().unwrap());
            assert_eq!(inside, may_run_realtime());
            assert!(!thread_is_realtime().unwrap());
            assert_eq!(thread_nice().unwrap(), nice);
            let panicked = std::panic::catch_unwind(|| lock_hold(|| panic!("inside a hold")));
            assert!(panicked.is_err());
            assert!(!thread_is_realtime().unwrap());
            assert_eq!(thread_nice().unwrap(), nice);
        })
        .join()
        .unwrap();
    }
}
