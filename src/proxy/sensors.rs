//! sensors (being written)
