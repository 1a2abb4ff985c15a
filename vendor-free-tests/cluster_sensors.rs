//! cluster_sensors tests (being written)
