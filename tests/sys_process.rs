//! Integration tests of `sys::process::daemonize`. Forking inside the test
//! harness would copy a half-running harness, so each case re-runs this test
//! binary with only the helper test selected (`--exact daemon_helper`); the
//! helper daemonizes, records what the daemon child sees, and reports as the
//! case asks. Every run is bounded in time.

#[path = "sys_common.rs"]
mod common;

use common::*;
use ferroguard::sys::process::daemonize;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MODE_ENV: &str = "FERROGUARD_SYS_DAEMON_MODE";
const OUT_ENV: &str = "FERROGUARD_SYS_DAEMON_OUT";

/// The result of running the helper in one mode: exit status, the parent's
/// standard error, and what the daemon child recorded.
struct Run {
    status: Option<i32>,
    stderr: String,
    record: String,
}

fn run_helper(mode: &str) -> Run {
    let out = std::env::temp_dir().join(unique_name("fgdaemon"));
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "daemon_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MODE_ENV, mode)
        .env(OUT_ENV, &out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let finished = wait_bounded_status(&mut helper, Duration::from_secs(20));
    let mut stderr = String::new();
    if let Some(mut pipe) = helper.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let record = wait_for_file(&out, Duration::from_secs(5));
    let _ = std::fs::remove_file(&out);
    Run {
        status: finished,
        stderr,
        record,
    }
}

/// Waits for `child` (killing it after `limit`) and returns its exit code.
fn wait_bounded_status(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn wait_for_file(path: &Path, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        if Instant::now() >= deadline {
            return String::new();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `key=value` field of the record.
fn field<'a>(record: &'a str, key: &str) -> &'a str {
    record
        .lines()
        .find_map(|line| {
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
        })
        .unwrap_or_else(|| panic!("no {key} in record {record:?}"))
}

fn assert_detached(record: &str, helper_status: Option<i32>) {
    assert!(helper_status.is_some(), "the parent did not exit in time");
    let pid = field(record, "pid");
    assert_eq!(
        field(record, "session"),
        pid,
        "the daemon leads its own session"
    );
    assert_ne!(field(record, "parent_pid"), pid);
    assert_eq!(field(record, "cwd"), "/");
    for fd in ["fd0", "fd1", "fd2"] {
        assert_eq!(field(record, fd), "/dev/null", "{fd}");
    }
}

#[test]
fn ready_child_makes_the_parent_exit_0() {
    let run = run_helper("ready");
    assert_eq!(run.status, Some(0), "stderr: {}", run.stderr);
    assert_detached(&run.record, run.status);
    assert!(
        run.stderr.is_empty(),
        "a ready daemon's parent prints nothing: {}",
        run.stderr
    );
}

#[test]
fn failed_child_makes_the_parent_print_and_exit_1() {
    let run = run_helper("fail");
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr.contains("boom: the test asked for a failure"),
        "stderr: {}",
        run.stderr
    );
    assert_detached(&run.record, run.status);
}

#[test]
fn silent_child_makes_the_parent_exit_1() {
    let run = run_helper("silent");
    assert_eq!(run.status, Some(1));
    assert!(
        run.stderr.contains("exited before it was ready"),
        "stderr: {}",
        run.stderr
    );
    assert_detached(&run.record, run.status);
}

/// Runs only when re-executed by the tests above.
#[test]
#[ignore = "helper run by the daemonize tests"]
fn daemon_helper() {
    let (Some(mode), Some(out)) = (std::env::var_os(MODE_ENV), std::env::var_os(OUT_ENV)) else {
        return;
    };
    let parent_pid = std::process::id();
    let child = daemonize().expect("daemonize");
    // Only the daemon child gets here.
    record_state(&PathBuf::from(out), parent_pid);
    match mode.to_str() {
        Some("ready") => child.ready().unwrap(),
        Some("fail") => child.failed("boom: the test asked for a failure").unwrap(),
        _ => drop(child),
    }
    std::process::exit(0);
}

/// Writes what the daemon child sees of itself, atomically (rename).
fn record_state(out: &Path, parent_pid: u32) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let link = |path: &str| {
        std::fs::read_link(path)
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let record = format!(
        "pid={}\nparent_pid={parent_pid}\nsession={}\ncwd={}\nfd0={}\nfd1={}\nfd2={}\n",
        std::process::id(),
        fields[3],
        link("/proc/self/cwd"),
        link("/proc/self/fd/0"),
        link("/proc/self/fd/1"),
        link("/proc/self/fd/2"),
    );
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, record).unwrap();
    std::fs::rename(&tmp, out).unwrap();
}
