//! nodes (being written)
