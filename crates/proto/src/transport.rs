//! (transport: to be written)
