//! (replay: to be written)
