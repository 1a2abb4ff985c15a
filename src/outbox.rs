//! One stream of reports to the server (the host report, the docker report):
//! its endpoint, its spool, the report in flight, and what the last delivery
//! did. Both streams share the client (one connection pool, one token).
//!
//! Order: while the spool is empty a report is posted directly (and spooled
//! only if that fails); otherwise it is spooled first and the spool is sent
//! oldest first, so the server always ends on the newest report.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::deliver::{self, Ack, Client, Delivery, REPORT_TIMEOUT};
use crate::metrics::DeliveryState;
use crate::spool::Spool;

/// Which report an outbox carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Host,
    Docker,
}

impl Stream {
    pub fn path(self) -> &'static str {
        match self {
            Stream::Host => "/api/agents/agent/report",
            Stream::Docker => "/api/agents/docker/report",
        }
    }

    fn scope(self) -> &'static str {
        match self {
            Stream::Host => "agent:report",
            Stream::Docker => "docker:report",
        }
    }

    /// How log lines name it: the host report is "the report".
    fn prefix(self) -> &'static str {
        match self {
            Stream::Host => "",
            Stream::Docker => "docker report ",
        }
    }
}

pub struct Outbox {
    pub stream: Stream,
    pub spool: Arc<Mutex<Spool>>,
    /// The report being posted while the spool is empty; the stop watchdog
    /// spools it if the post hangs.
    pub inflight: Arc<Mutex<Option<Arc<Vec<u8>>>>>,
    pub delivery: DeliveryState,
    /// The last acknowledgement, for the caller to act on.
    pub ack: Option<Ack>,
    /// The HTTP status the server gave the last fresh report (not a spooled
    /// one: it may have been built by the version before), `None` when it
    /// gave none (not reached): a new version's trial goes by it.
    pub fresh_status: Option<u16>,
    /// Fed after every request of a flush: a long spool to a slow server
    /// is progress, not a hang (`notify.rs`).
    pub keepalive: Option<Arc<crate::notify::Notifier>>,
    auth_logged: Option<Instant>,
    user_agent: String,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Outbox {
    pub fn new(stream: Stream, spool: Spool, configured: bool, user_agent: String) -> Outbox {
        Outbox {
            stream,
            delivery: DeliveryState {
                configured,
                spooled: spool.len(),
                // Dropped at open: more reports on disk than the bounds allow.
                dropped: spool.dropped(),
                spool_dropped: spool.dropped(),
                ..DeliveryState::default()
            },
            spool: Arc::new(Mutex::new(spool)),
            inflight: Arc::new(Mutex::new(None)),
            ack: None,
            fresh_status: None,
            keepalive: None,
            auth_logged: None,
            user_agent,
        }
    }

    fn spool(&self) -> MutexGuard<'_, Spool> {
        lock(&self.spool)
    }

    /// Posts a report; `fresh` when it is the one just built.
    fn post(&mut self, client: &Client, body: &[u8], fresh: bool) -> Delivery {
        let reply = client.post_json(
            self.stream.path(),
            body,
            REPORT_TIMEOUT,
            Some(&self.user_agent),
        );
        if let (true, deliver::Reply::Status(status, _)) = (fresh, &reply) {
            self.fresh_status = Some(*status);
        }
        deliver::classify(reply)
    }

    /// Delivers a fresh report, oldest spooled reports first. Returns whether
    /// the fresh report reached the server.
    /// `body` may be shared (the host report's bytes are `/report`'s too);
    /// it is copied only to go to the spool.
    pub fn deliver(&mut self, client: &Client, body: Arc<Vec<u8>>) -> bool {
        let dropped_before = self.spool().dropped();
        let delivered = if !self.spool().is_empty() {
            // During an outage a report is on disk before any network attempt.
            let fresh = self.spool().push(Arc::unwrap_or_clone(body));
            self.flush(client, fresh)
        } else {
            *lock(&self.inflight) = Some(body.clone());
            let outcome = self.post(client, &body, true);
            // Held while the report is spooled: the stop watchdog takes this
            // lock first, so it never exits in the middle of the write.
            let inflight = self.inflight.clone();
            let mut guard = lock(&inflight);
            let still_ours = guard.take().is_some();
            match outcome {
                Delivery::Delivered(ack) => {
                    drop(guard);
                    self.delivered(client, ack);
                    true
                }
                Delivery::Failed(why) => {
                    if still_ours {
                        self.spool().push(Arc::unwrap_or_clone(body));
                    }
                    drop(guard);
                    self.failed(client, why);
                    false
                }
                other => {
                    drop(guard);
                    self.refused(other, 1);
                    false
                }
            }
        };
        let spool = self.spool();
        let (total, spooled) = (spool.dropped(), spool.len());
        drop(spool);
        self.delivery.dropped += total - dropped_before;
        self.delivery.spool_dropped = total;
        self.delivery.spooled = spooled;
        delivered
    }

    /// Sends spooled reports oldest first until one fails. Returns whether
    /// `fresh` (the spool entry of the report just built) was delivered.
    fn flush(&mut self, client: &Client, fresh: Option<u64>) -> bool {
        let mut sent = 0;
        let mut fresh_delivered = false;
        loop {
            let front = self.spool().front();
            let (id, body) = match front {
                Ok(Some(entry)) => entry,
                Ok(None) => {
                    if sent > 0 {
                        log::info!("sent {sent} spooled {}report(s)", self.stream.prefix());
                    }
                    return fresh_delivered;
                }
                Err(e) => {
                    // Kept for the next cycle: the problem may pass.
                    self.failed(client, format!("cannot read the spool: {e}"));
                    return false;
                }
            };
            let outcome = self.post(client, &body, Some(id) == fresh);
            if let Some(n) = &self.keepalive {
                n.keepalive();
            }
            match outcome {
                Delivery::Delivered(ack) => {
                    self.spool().remove(id);
                    self.delivered(client, ack);
                    fresh_delivered |= Some(id) == fresh;
                    sent += 1;
                }
                Delivery::Failed(why) => {
                    self.failed(client, why);
                    return false;
                }
                refused @ (Delivery::Unauthorized | Delivery::Forbidden) => {
                    // The token is no good: nothing in the spool will ever be taken.
                    let n = self.spool().clear();
                    self.refused(refused, n as u64);
                    return false;
                }
                rejected => {
                    self.spool().remove(id);
                    self.refused(rejected, 1);
                }
            }
        }
    }

    fn delivered(&mut self, client: &Client, ack: Ack) {
        if self.delivery.last_ok == Some(false) {
            log::info!(
                "{}delivery to {} works again",
                self.stream.prefix(),
                client.base()
            );
        }
        self.delivery.last_ok = Some(true);
        self.delivery.last_error = None;
        self.delivery.delivered += 1;
        self.auth_logged = None;
        self.ack = Some(ack);
    }

    pub fn failed(&mut self, client: &Client, why: String) {
        if self.delivery.last_ok != Some(false) {
            log::warn!(
                "{}delivery to {} failed: {why}; keeping reports in the spool and trying again every interval",
                self.stream.prefix(),
                client.base()
            );
        } else {
            log::debug!("{}delivery still failing: {why}", self.stream.prefix());
        }
        self.delivery.last_ok = Some(false);
        self.delivery.last_error = Some(why);
        self.delivery.failed += 1;
    }

    fn refused(&mut self, outcome: Delivery, dropped: u64) {
        self.delivery.last_ok = Some(false);
        self.delivery.dropped += dropped;
        let scope = self.stream.scope();
        let what = match self.stream {
            Stream::Host => "reports",
            Stream::Docker => "docker reports",
        };
        let (msg, rate_limited) = match outcome {
            Delivery::Unauthorized => (
                format!(
                    "the server does not accept the token (401): check --token-file; {what} are dropped until it does"
                ),
                true,
            ),
            Delivery::Forbidden => (
                format!(
                    "the token lacks the {scope} scope (403); {what} are dropped until it has it"
                ),
                true,
            ),
            Delivery::Rejected(status, body) if body.contains("already in use") => (
                format!(
                    "the server says this token already belongs to another agent ({status}: {body}); give this host its own token. Dropped the report"
                ),
                true,
            ),
            Delivery::Rejected(status, body)
                if body.contains("monitoring stopped") || body.contains("was removed") =>
            {
                (
                    format!(
                        "the server stopped monitoring this host ({status}: {body}); the report was dropped, and the next ones are sent as usual"
                    ),
                    true,
                )
            }
            Delivery::Rejected(status, body) => (
                format!(
                    "the server refused a {}report for good ({status}: {body}); dropped it",
                    self.stream.prefix()
                ),
                false,
            ),
            _ => return,
        };
        self.delivery.last_error = Some(msg.clone());
        let due = self
            .auth_logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(300));
        if !rate_limited || due {
            log::error!("{msg}");
            if rate_limited {
                self.auth_logged = Some(Instant::now());
            }
        }
    }
}
