//! (ratelimiter: to be written)
