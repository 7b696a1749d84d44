//! (peer: to be written)
