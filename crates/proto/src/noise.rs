//! (noise: to be written)
