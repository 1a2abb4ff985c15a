//! proxy_config tests (being written)
