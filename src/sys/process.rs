//! Process-level helpers: going to the background, interface names.

use super::check;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Report bytes sent from the daemon child to the waiting parent.
const READY: u8 = b'R';
const FAILED: u8 = b'F';

/// The most bytes of a failure message the parent reads.
const MAX_MESSAGE: u64 = 64 * 1024;

/// The daemon side of [`daemonize`]: reports once, to the waiting parent,
/// whether set-up succeeded. Dropping it without a report makes the parent
/// exit with status 1 and a generic message.
#[derive(Debug)]
pub struct DaemonChild {
    report: File,
}

impl DaemonChild {
    /// Set-up succeeded: the parent exits with status 0.
    pub fn ready(mut self) -> io::Result<()> {
        self.report.write_all(&[READY])
    }

    /// Set-up failed: the parent prints `message` on its standard error and
    /// exits with status 1.
    pub fn failed(mut self, message: &str) -> io::Result<()> {
        let mut report = Vec::with_capacity(1 + message.len());
        report.push(FAILED);
        report.extend_from_slice(message.as_bytes());
        self.report.write_all(&report)
    }
}

/// Puts the process in the background. Returns only in the child, which
/// has then left the terminal's session (`setsid`), moved to `/`, and has
/// standard input, output and error on `/dev/null`. The parent waits until
/// the child calls [`DaemonChild::ready`] or [`DaemonChild::failed`] (or
/// exits) and then exits itself: 0 when ready, 1 otherwise, printing the
/// child's message on its standard error.
///
/// Must be called before the process spawns any thread: `fork` copies only
/// the calling thread, so locks held by other threads would stay locked in
/// the child forever. (Descriptors opened before, like the TUN device, are
/// inherited; the parent's copies close when it exits.)
pub fn daemonize() -> io::Result<DaemonChild> {
    let (report_read, report_write) = pipe()?;
    match fork()? {
        Some(child) => {
            drop(report_write);
            let code = wait_for_report(report_read, child);
            std::process::exit(code)
        }
        None => {
            drop(report_read);
            let child = DaemonChild {
                report: File::from(report_write),
            };
            if let Err(e) = detach() {
                let _ = child.failed(&format!("cannot detach the daemon: {e}"));
                return Err(e);
            }
            Ok(child)
        }
    }
}

/// The parent's side: reads the child's report and returns the exit status.
fn wait_for_report(report: OwnedFd, child: libc::pid_t) -> i32 {
    let mut bytes = Vec::new();
    let read = File::from(report).take(MAX_MESSAGE).read_to_end(&mut bytes);
    match (read, bytes.split_first()) {
        (_, Some((&READY, _))) => 0,
        (_, Some((&FAILED, message))) => {
            eprintln!("{}", String::from_utf8_lossy(message));
            1
        }
        (Err(e), _) => {
            eprintln!("cannot read the daemon's status (pid {child}): {e}");
            1
        }
        _ => {
            eprintln!("the daemon process (pid {child}) exited before it was ready");
            1
        }
    }
}

/// The child's side: new session, `/` as working directory, standard
/// streams on `/dev/null`.
fn detach() -> io::Result<()> {
    // SAFETY: setsid takes no arguments; it fails only if already a leader.
    check(unsafe { libc::setsid() })?;
    std::env::set_current_dir("/")?;
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        duplicate_onto(null.as_raw_fd(), target)?;
    }
    Ok(())
}

/// `dup2(from, onto)`.
fn duplicate_onto(from: RawFd, onto: RawFd) -> io::Result<()> {
    // SAFETY: dup2 takes two descriptor numbers; replacing a standard stream
    // is the intent, and `from` is a live descriptor.
    check(unsafe { libc::dup2(from, onto) }).map(drop)
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [libc::c_int; 2] = [-1, -1];
    // SAFETY: `fds` is a live array of two ints, as pipe2 requires.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so fds[0] is a new descriptor owned only here.
    let read_end = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: likewise for fds[1].
    let write_end = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((read_end, write_end))
}

/// `fork()`: `Some(child pid)` in the parent, `None` in the child. The
/// caller must have a single thread.
pub(super) fn fork() -> io::Result<Option<libc::pid_t>> {
    // SAFETY: callers run single-threaded (`daemonize` documents it,
    // `split_cleanup_parent` checks it), so the child's copy of memory is
    // consistent.
    let pid = check(unsafe { libc::fork() })?;
    Ok((pid != 0).then_some(pid))
}

/// The index of interface `name` in the calling thread's network namespace,
/// or `None` if there is no such interface (or the name cannot be one).
pub fn if_nametoindex(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Whether an interface called `name` exists in the calling thread's
/// network namespace.
pub fn interface_exists(name: &str) -> bool {
    if_nametoindex(name).is_some()
}

/// Lowers the calling thread's scheduling priority to `nice` (Linux keeps a
/// nice value per thread), so that bulk work such as streaming the state of
/// 2^20 peers yields the CPU to the data path threads. Raising it back needs
/// privileges the daemon may have dropped: use it on threads that end with
/// their work.
pub fn lower_thread_priority(nice: i32) -> io::Result<()> {
    set_thread_nice(nice)
}

/// Sets the calling thread's nice value (Linux keeps one per thread).
/// Raising the priority (a lower value) needs `CAP_SYS_NICE` or room in
/// `RLIMIT_NICE`; without them it fails with `EACCES` and changes nothing.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority takes plain integers; PRIO_PROCESS with a thread
    // id changes only that thread.
    check(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) }).map(drop)
}

/// Switches the calling thread to `SCHED_FIFO` at the lowest real-time
/// priority (`realtime`), or back to the normal time-sharing policy
/// (`SCHED_OTHER`), whose nice value Linux keeps across the switch. A
/// real-time thread is never preempted by a time-sharing one; the kernel
/// still bounds real-time threads together to `sched_rt_runtime_us` of
/// each period. `SCHED_RESET_ON_FORK` keeps a child from inheriting it.
/// Needs `CAP_SYS_NICE` or room in `RLIMIT_RTPRIO`; without them it fails
/// with `EPERM` and changes nothing.
pub fn set_thread_realtime(realtime: bool) -> io::Result<()> {
    let (policy, priority) = if realtime {
        (libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, 1)
    } else {
        (libc::SCHED_OTHER, 0)
    };
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param that outlives the call; pid 0
    // is the calling thread, the only one changed.
    check(unsafe { libc::sched_setscheduler(0, policy, &param) }).map(drop)
}

/// Whether the calling thread runs under a real-time policy.
pub fn thread_is_realtime() -> io::Result<bool> {
    // SAFETY: pid 0 is the calling thread; the call only reads.
    let policy = check(unsafe { libc::sched_getscheduler(0) })?;
    let policy = policy & !libc::SCHED_RESET_ON_FORK;
    Ok(policy == libc::SCHED_FIFO || policy == libc::SCHED_RR)
}

/// The calling thread's nice value.
pub fn thread_nice() -> io::Result<i32> {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // getpriority may return -1 as a value: errno tells an error apart.
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: getpriority takes plain integers and only reads.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
    if nice == -1 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(0) {
            return Err(error);
        }
    }
    Ok(nice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_an_index() {
        let index = if_nametoindex("lo").expect("lo exists");
        assert!(index >= 1);
        assert!(interface_exists("lo"));
    }

    #[test]
    fn missing_or_impossible_names_have_none() {
        assert_eq!(if_nametoindex("fg-no-such-if"), None);
        assert_eq!(if_nametoindex("a\0b"), None);
        assert!(!interface_exists(""));
    }

    #[test]
    fn reports_decide_the_parent_status() {
        let (read, write) = pipe().unwrap();
        DaemonChild {
            report: File::from(write),
        }
        .ready()
        .unwrap();
        assert_eq!(wait_for_report(read, 0), 0);

        let (read, write) = pipe().unwrap();
        DaemonChild {
            report: File::from(write),
        }
        .failed("no")
        .unwrap();
        assert_eq!(wait_for_report(read, 0), 1);

        let (read, write) = pipe().unwrap();
        drop(DaemonChild {
            report: File::from(write),
        });
        assert_eq!(wait_for_report(read, 0), 1);
    }
}
