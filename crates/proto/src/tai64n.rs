//! (tai64n: to be written)
