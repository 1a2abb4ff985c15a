//! proxy_audit tests (being written)
