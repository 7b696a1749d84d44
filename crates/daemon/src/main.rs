//! The ferroguard daemon.
mod icmp;
mod sys;
mod uapi;

fn main() {}
