//! limit (being written)
