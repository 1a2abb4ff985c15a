//! proxy_ssh tests (being written)
