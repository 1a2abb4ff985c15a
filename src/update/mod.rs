//! The updater (work in progress): see `exe.rs`.

pub mod exe;
