//! (messages: to be written)
