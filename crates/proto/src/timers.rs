//! (timers: to be written)
