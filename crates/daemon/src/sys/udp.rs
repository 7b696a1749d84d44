//! (udp: to be written)
