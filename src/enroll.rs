//! Enrollment (`--enroll`, spec §2.2): trade a one-time bootstrap token for
//! a runtime token at start.
//!
//! A runtime token saved by an earlier enrollment (`STATE-DIR/runtime.token`)
//! is used as is. Otherwise `POST /api/agents/agent/enroll`; on success the
//! runtime token (0600, no newline) and the server's agent ID are saved. A
//! 403 means the token is not a bootstrap token and is used as it is; 400,
//! 401, 404 and 409 are final; anything else is retried (5 s, doubling, at
//! most 5 min apart) until it works or the agent is told to stop.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::config::Secret;
use crate::deliver::{Client, REPORT_TIMEOUT, Reply, json_str};
use crate::state;

/// What enrollment produced.
#[derive(Debug)]
pub enum Enrolled {
    /// A runtime token (from the server now, or saved earlier) and, when the
    /// server named one, the agent ID.
    Runtime(Secret, Option<String>),
    /// The server says this is not a bootstrap token: keep using it.
    NotBootstrap,
}

/// Facts the enroll request carries.
#[derive(Debug, Clone)]
pub struct Host<'a> {
    pub hostname: &'a str,
    pub os: &'a str,
    pub arch: &'a str,
    pub version: &'a str,
}

pub const RUNTIME_TOKEN_FILE: &str = "runtime.token";

/// A runtime token saved by an earlier enrollment.
pub fn saved_token(state_dir: &Path) -> Option<Secret> {
    state::read_trimmed(&state_dir.join(RUNTIME_TOKEN_FILE), 64 * 1024)
        .ok()
        .flatten()
        .map(Secret::new)
}

enum Attempt {
    Done(Enrolled),
    Final(String),
    Retry(String),
}

fn attempt(client: &Client, host: &Host) -> Attempt {
    let body = json!({"hostname": host.hostname, "os": host.os, "arch": host.arch, "agentVersion": host.version});
    let ua = format!("pulse-agent/{}", host.version);
    match client.post_json(
        "/api/agents/agent/enroll",
        body.to_string().as_bytes(),
        REPORT_TIMEOUT,
        Some(&ua),
    ) {
        Reply::Status(200, b) => {
            let v: serde_json::Value = match serde_json::from_slice(&b) {
                Ok(v) => v,
                Err(e) => return Attempt::Retry(format!("bad JSON in the answer: {e}")),
            };
            match json_str(&v, "runtimeToken") {
                Some(t) => {
                    Attempt::Done(Enrolled::Runtime(Secret::new(t), json_str(&v, "agentId")))
                }
                None => Attempt::Retry("the answer has no runtimeToken".into()),
            }
        }
        Reply::Status(403, _) => Attempt::Done(Enrolled::NotBootstrap),
        Reply::Status(s @ (400 | 401 | 404 | 409), b) => Attempt::Final(format!(
            "server answered {s}: {} (a bootstrap token works once; 401 means it is unknown)",
            crate::deliver::snippet(&b)
        )),
        Reply::Status(s, b) => Attempt::Retry(format!(
            "server answered {s}: {}",
            crate::deliver::snippet(&b)
        )),
        Reply::Failed(why) => Attempt::Retry(why),
    }
}

/// Enrolls, retrying with backoff while `wait(delay, why)` returns true (it
/// sleeps and returns false when the agent should stop; `why` is the last
/// attempt's failure). With `once`, one attempt.
pub fn enroll(
    client: &Client,
    host: &Host,
    state_dir: &Path,
    once: bool,
    wait: &mut dyn FnMut(Duration, &str) -> bool,
) -> Result<Enrolled, String> {
    let mut delay = Duration::from_secs(5);
    loop {
        match attempt(client, host) {
            Attempt::Done(Enrolled::Runtime(token, id)) => {
                if let Err(e) = state::write_atomic(
                    &state_dir.join(RUNTIME_TOKEN_FILE),
                    token.expose().as_bytes(),
                ) {
                    log::warn!(
                        "enrolled, but cannot save the runtime token in {}: {e}",
                        state_dir.display()
                    );
                }
                if let Some(id) = &id {
                    if let Err(e) = state::write_if_changed(&state_dir.join("agent-id"), id) {
                        log::warn!("cannot save the agent ID: {e}");
                    }
                }
                log::info!(
                    "enrolled with the server{}",
                    id.as_deref()
                        .map(|i| format!(" as {i}"))
                        .unwrap_or_default()
                );
                return Ok(Enrolled::Runtime(token, id));
            }
            Attempt::Done(Enrolled::NotBootstrap) => {
                log::info!("the token is not a bootstrap token; using it as it is");
                return Ok(Enrolled::NotBootstrap);
            }
            Attempt::Final(why) => return Err(format!("enrollment failed: {why}")),
            Attempt::Retry(why) => {
                if once {
                    return Err(format!("enrollment failed: {why}"));
                }
                log::warn!(
                    "enrollment failed: {why}; trying again in {}s",
                    delay.as_secs()
                );
                if !wait(delay, &why) {
                    return Err("stopped before enrollment completed".into());
                }
                delay = (delay * 2).min(Duration::from_secs(300));
            }
        }
    }
}
