//! Placeholder for the audit log (being written by another helper): only the
//! [`Event`] shape that `https.rs` fills in, so this branch compiles. The
//! lead keeps the real module.

use crate::proxy::Peer;

/// One audit event (spec §5); empty strings and `None` are omitted on disk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    pub event_type: &'static str,
    pub correlation_id: String,
    pub peer: Option<Peer>,
    pub remote_addr: String,
    pub command: String,
    pub args: String,
    pub target: String,
    pub decision: &'static str,
    pub reason: String,
    pub limiter: String,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<i64>,
    pub error: String,
}
