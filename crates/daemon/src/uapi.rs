//! (uapi: to be written)
