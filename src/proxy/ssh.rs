//! ssh (being written)
