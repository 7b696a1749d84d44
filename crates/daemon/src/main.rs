//! The ferroguard daemon.
fn main() {}
