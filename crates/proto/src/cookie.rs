//! (cookie: to be written)
