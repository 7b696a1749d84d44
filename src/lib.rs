//! The ferroguard daemon as a library: platform code, the configuration API
//! and the runtime that drives the protocol core. `main.rs` is a thin shell.
pub mod bulk;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto_pool;
pub mod daemon;
pub mod handed;
pub mod holds;
pub mod icmp;
pub mod io_threads;
pub mod logging;
pub mod metrics;
pub mod offload;
pub mod rootless;
pub mod runtime;
pub mod selftest;
#[allow(unsafe_code)] // the one place of the daemon where system calls need it
pub mod sys;
pub mod uapi;

/// `ferroguard --version`: the version and the features compiled in.
pub fn version_string() -> String {
    let mut features = Vec::new();
    if cfg!(feature = "selftest") {
        features.push("selftest");
    }
    if cfg!(feature = "debug-checks") {
        features.push("debug-checks");
    }
    if cfg!(feature = "test-clock") {
        features.push("test-clock");
    }
    format!(
        "ferroguard {} (userspace WireGuard; features: {})",
        env!("CARGO_PKG_VERSION"),
        if features.is_empty() {
            "none".to_string()
        } else {
            features.join(", ")
        }
    )
}
