//! (device: to be written)
