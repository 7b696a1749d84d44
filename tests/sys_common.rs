//! Helpers shared by the `sys_*` integration tests (included with `#[path]`
//! by each of them; compiled alone it holds no tests).
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Whether the tests that need root (TUN, namespaces) can run here; prints
/// why not when they cannot (the caller then returns early). Under `CI`
/// (set by CI) a test that cannot run fails instead.
pub(crate) fn root_or_skip(test: &str) -> bool {
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    let tun = std::path::Path::new("/dev/net/tun").exists();
    let ip = Command::new("ip").arg("-V").output().is_ok();
    if !(root && tun && ip) {
        // CI runs as root on a machine with TUN devices: a test that cannot
        // run there is a failure, never a silent pass.
        assert!(
            std::env::var_os("CI").is_none(),
            "{test} needs root, /dev/net/tun and iproute2 (root={root}, tun={tun}, ip={ip}), and CI is set"
        );
        println!("skipping {test}: needs root, /dev/net/tun and iproute2 (root={root}, tun={tun}, ip={ip})");
        return false;
    }
    true
}

/// A name unique to this process and call, short enough for an interface
/// (at most 15 bytes) or a namespace.
pub(crate) fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 1_000_000)
}

/// Runs `ip ARGS`, returning its output without judging it.
pub(crate) fn ip_output(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run ip")
}

/// Runs `ip ARGS` and panics with its stderr when it fails.
pub(crate) fn ip(args: &[&str]) -> String {
    let out = ip_output(args);
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace created for a test and deleted on drop (also when
/// the test panics). Interfaces inside it go with it.
pub(crate) struct TestNetns {
    /// The namespace's name (as `ip netns` knows it).
    pub(crate) name: String,
}

impl TestNetns {
    /// Creates a namespace with a unique name and its loopback up.
    pub(crate) fn create() -> TestNetns {
        let name = unique_name("fgns");
        ip(&["netns", "add", &name]);
        let ns = TestNetns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace and panics if it fails.
    pub(crate) fn exec(&self, cmd: &[&str]) -> String {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        ip(&args)
    }

    /// The path of the namespace's file, for `setns`-style use.
    pub(crate) fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = ip_output(&["netns", "del", &self.name]);
    }
}

/// An interface in the test's own namespace deleted on drop (for veth pairs
/// and other links a test adds with `ip link add`).
pub(crate) struct TestLink {
    /// The interface's name.
    pub(crate) name: String,
}

impl Drop for TestLink {
    fn drop(&mut self) {
        let _ = ip_output(&["link", "del", &self.name]);
    }
}

/// Waits for `child` to exit, killing it after `limit`; returns whether it
/// exited successfully in time.
pub(crate) fn wait_bounded(child: &mut std::process::Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// The MTU `ip link show` reports for `name` (in the namespace `ns`, or the
/// test's own when `None`).
pub(crate) fn link_mtu(ns: Option<&TestNetns>, name: &str) -> u32 {
    let out = match ns {
        Some(ns) => ns.exec(&["ip", "-o", "link", "show", "dev", name]),
        None => ip(&["-o", "link", "show", "dev", name]),
    };
    let mut words = out.split_whitespace();
    words
        .find(|w| *w == "mtu")
        .expect("no mtu in ip link output");
    words.next().and_then(|w| w.parse().ok()).expect("bad mtu")
}
