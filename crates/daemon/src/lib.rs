//! The ferroguard daemon as a library: platform code, the configuration API
//! and the runtime that drives the protocol core. `main.rs` is a thin shell.
pub mod icmp;
pub mod sys;
pub mod uapi;
