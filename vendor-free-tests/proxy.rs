//! proxy tests (being written)
