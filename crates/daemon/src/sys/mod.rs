//! Platform code: the only place where `unsafe` is allowed.
pub mod tun;
pub mod udp;
