//! (peerlookup: to be written)
