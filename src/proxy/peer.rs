//! peer (being written)
