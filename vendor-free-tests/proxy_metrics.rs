//! proxy_metrics tests (being written)
