//! pulse-agent: a small Linux host agent that speaks the Pulse server's agent
//! protocol. See ARCHITECTURE.md for the threads, data flow and invariants.

pub mod agent;
pub mod cli;
pub mod collect;
pub mod config;
pub mod deliver;
pub mod docker;
pub mod enroll;
pub mod exec;
#[doc(hidden)]
pub mod fuzz;
pub mod hardware;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod platform;
pub mod privilege;
pub mod proxy;
pub mod remote_config;
pub mod report;
pub mod root;
pub mod smart;
pub mod spool;
pub mod state;
pub mod sys;
pub mod update;
pub mod worker;
