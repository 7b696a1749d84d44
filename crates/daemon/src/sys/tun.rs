//! (tun: to be written)
