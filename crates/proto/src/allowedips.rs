//! (allowedips: to be written)
