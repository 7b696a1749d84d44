//! (icmp: to be written)
