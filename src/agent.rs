//! Runs the agent: the reporting service, or one cycle (`--once`).
//!
//! The service is one blocking loop on the main thread: the first report at
//! once, then one every interval on a fixed grid (an overrun cycle is followed
//! by at most one immediate cycle, never a burst); the remote config every
//! 60 s between reports. Each cycle collects, builds the report, delivers it
//! (spool first when the spool holds anything), then publishes a snapshot for
//! the health listener.
//!
//! SIGTERM and SIGINT are taken by a signal thread: the loop finishes its
//! cycle and the process exits 0. If the cycle is stuck on an unresponsive
//! server, the signal thread spools the report in flight and exits the
//! process after at most [`STOP_GRACE`], so a stop never takes longer than
//! about 2 s and never loses a report.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::collect::{self, Outcome, SourceStatus, identity::Identity};
use crate::config::{Config, Secret, ServerUrl};
use crate::deliver::{self, Client, Delivery, REPORT_TIMEOUT, TlsOptions};
use crate::hardware::Hardware;
use crate::health::{self, Published, Snapshot};
use crate::metrics::{self, DeliveryState};
use crate::remote_config::{self, Trust};
use crate::report::{self, Module, ModuleState, Privilege, Sequence};
use crate::root::Root;
use crate::spool::{self, Spool};
use crate::{enroll, logging, smart, state, sys};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// How long a stop may wait for the cycle in progress.
pub const STOP_GRACE: Duration = Duration::from_millis(1800);
const REPORT_PATH: &str = "/api/agents/agent/report";
/// How long the first report waits for the first SMART refresh; a hung
/// smartctl costs the first report at most this, later reports nothing.
pub const SMART_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub enum Error {
    Root(PathBuf, std::io::Error),
    Tls(deliver::Error),
    Enroll(String),
    Signals(std::io::Error),
    NotDelivered(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Root(p, e) => write!(f, "--root {}: {e}", p.display()),
            Error::Tls(e) => e.fmt(f),
            Error::Enroll(why) => f.write_str(why),
            Error::Signals(e) => write!(f, "cannot set up signal handling: {e}"),
            Error::NotDelivered(why) => write!(f, "report not delivered: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// `v` + the crate version: what `agent.version` and `--version` show.
pub fn version() -> String {
    format!("v{VERSION}")
}

/// Runs what the configuration asks for.
pub fn run(config: &Config) -> Result<(), Error> {
    sys::limit_malloc_arenas();
    if config.once {
        return run_once(config);
    }
    serve(config)
}

/// `--once`: without a URL, print the report; with one, deliver it (after
/// whatever the spool holds) and succeed only if the server took it.
fn run_once(config: &Config) -> Result<(), Error> {
    let mut agent = Agent::new(config, SystemTime::now)?;
    if config.url.is_some() {
        agent.enroll_if_asked(true, &mut |_| false)?;
    }
    let (doc, body) = agent.build();
    match agent.client.is_some() {
        false => {
            let text = serde_json::to_string_pretty(&doc)
                .expect("invariant: a serde_json::Value always serialises");
            println!("{text}");
            Ok(())
        }
        true => {
            let seq = doc["sequenceId"].as_str().unwrap_or("").to_string();
            if agent.deliver(body) {
                log::info!(
                    "delivered report {seq} to {}",
                    agent.client.as_ref().map_or("", |c| c.base())
                );
                Ok(())
            } else {
                Err(Error::NotDelivered(
                    agent
                        .delivery
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "see the log".into()),
                ))
            }
        }
    }
}

/// Collects one host report and returns it, without delivering. The clock,
/// sequence and the process's privilege are passed in so tests can pin them.
pub fn once(
    config: &Config,
    clock: fn() -> SystemTime,
    seq: &mut Sequence,
    privilege: &Privilege,
) -> Result<Value, Error> {
    let mut agent = Agent::new(config, clock)?;
    agent.seq = std::mem::replace(seq, Sequence::with_stream(&[0; 16]));
    agent.privilege = privilege.clone();
    let (doc, _) = agent.build();
    *seq = agent.seq;
    Ok(doc)
}

/// What wakes the service loop besides its schedule.
enum Event {
    Stop,
    Config(Result<Option<remote_config::Remote>, String>),
}

/// The reporting service.
fn serve(config: &Config) -> Result<(), Error> {
    sys::block_stop_signals().map_err(Error::Signals)?;
    let (events_tx, events) = mpsc::channel::<Event>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut agent = Agent::new(config, SystemTime::now)?;

    let spool = agent.spool.clone();
    let inflight = agent.inflight.clone();
    let stop_tx = events_tx.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let sig = sys::wait_stop_signal();
            log::info!("received signal {sig}; stopping after the current cycle");
            let _ = stop_tx.send(Event::Stop);
            if done_rx.recv_timeout(STOP_GRACE).is_err() {
                // The cycle is stuck (an unresponsive server): keep its report.
                // Lock order as in Agent::deliver: in-flight, then spool. Both
                // stay held until exit, so no spool write is cut in half.
                let mut inflight = lock(&inflight);
                let mut spool = lock(&spool);
                if let Some(body) = inflight.take() {
                    spool.push(body);
                    log::info!("saved the report in flight to the spool");
                }
                log::info!("stopped");
                std::process::exit(0);
            }
        })
        .map_err(|e| Error::Signals(std::io::Error::other(e)))?;

    let published = Arc::new(Published::default());
    agent.published = Some(published.clone());
    agent.publish(None);
    let _listener = match &config.health_addr {
        Some(addr) => match health::start(addr, published, agent.started) {
            Ok(l) => Some(l),
            Err(e) => {
                // Like the stock agent: a busy port is no reason not to report.
                log::warn!("health listener on {addr}: {e}; continuing without it");
                None
            }
        },
        None => None,
    };

    let mut wait =
        |d: Duration| matches!(events.recv_timeout(d), Err(mpsc::RecvTimeoutError::Timeout));
    if let Err(e) = agent.enroll_if_asked(false, &mut wait) {
        let _ = done_tx.send(());
        return Err(e);
    }
    match &config.url {
        Some(url) => log::info!("reporting to {url} every {}s", agent.interval.as_secs()),
        None => log::info!(
            "no --url: collecting every {}s without sending (standalone)",
            agent.interval.as_secs()
        ),
    }
    // The first config is applied before the first report (one 10 s budget);
    // later ones are fetched on their own thread so a slow server never
    // delays a report.
    if let Some(fetch) = agent.config_fetcher() {
        agent.apply_fetched(fetch.fetch());
        let tx = events_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("remote-config".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                loop {
                    std::thread::sleep(remote_config::REFRESH);
                    if tx.send(Event::Config(fetch.fetch())).is_err() {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!(
                "cannot start the remote-config thread: {e}; using the config fetched at start"
            );
        }
    }
    drop(events_tx);

    let mut next_report = Instant::now();
    loop {
        match events.recv_timeout(next_report.saturating_duration_since(Instant::now())) {
            Ok(Event::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Ok(Event::Config(fetched)) => {
                let before = agent.interval;
                agent.apply_fetched(fetched);
                if agent.interval != before {
                    // Like a reset ticker: the new interval counts from now.
                    next_report = Instant::now() + agent.interval;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= next_report {
            agent.cycle();
            next_report = next_tick(next_report, agent.interval, Instant::now());
        }
    }
    let _ = done_tx.send(());
    // If the watchdog is already saving the report in flight, let it finish
    // (it exits the process); returning now could cut its write short.
    let _wait = lock(&agent.inflight);
    log::info!("stopped");
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The next report time on the grid `previous + k × interval`. After an
/// overrun the missed ticks collapse into one immediate tick.
pub fn next_tick(previous: Instant, interval: Duration, now: Instant) -> Instant {
    let next = previous + interval;
    if next > now {
        return next;
    }
    let behind = (now - next).as_nanos() / interval.as_nanos().max(1);
    next + interval * u32::try_from(behind).unwrap_or(u32::MAX)
}

/// The agent's state between cycles.
struct Agent {
    config: Config,
    identity: Identity,
    host: collect::Host,
    seq: Sequence,
    privilege: Privilege,
    modules: Vec<Module>,
    started: SystemTime,
    clock: fn() -> SystemTime,
    agent_id: String,
    interval: Duration,
    report_ip: Option<IpAddr>,
    applied_config: Option<(String, String)>,
    client: Option<Client>,
    trust: Trust,
    spool: Arc<Mutex<Spool>>,
    inflight: Arc<Mutex<Option<Vec<u8>>>>,
    delivery: DeliveryState,
    published: Option<Arc<Published>>,
    reports_built: u64,
    last_report: Option<SystemTime>,
    outcomes: HashMap<&'static str, Outcome>,
    warned: HashMap<&'static str, Vec<String>>,
    last_sources: Vec<SourceStatus>,
    auth_logged: Option<Instant>,
    server_id_logged: bool,
    server_version: Option<String>,
    smart: Option<smart::Service>,
    smart_waited: bool,
    hardware: Hardware,
}

impl Agent {
    fn new(config: &Config, clock: fn() -> SystemTime) -> Result<Agent, Error> {
        let started = clock();
        let root = Root::new(&config.root).map_err(|e| Error::Root(config.root.clone(), e))?;
        let identity = collect::identity::collect(&root, config.hostname.as_deref());
        if let Some(kind) = identity.container {
            log::debug!("running inside an {kind} container");
        }
        let mut opts = options(config);
        opts.zfs_arc_is_cache = identity.container.is_none();
        let smart = start_smart(config, &root);
        let hardware = Hardware::new(root.clone());
        let host = collect::Host::new(root, opts);

        let mut client = None;
        let mut spool_dir = None;
        if let Some(url) = &config.url {
            match state::ensure_dir(&config.state_dir) {
                Ok(Some(warning)) => log::warn!("{warning}"),
                Ok(None) => {}
                Err(e) => log::warn!(
                    "state directory {}: {e}; nothing will survive a restart",
                    config.state_dir.display()
                ),
            }
            spool_dir = Some(config.state_dir.join("spool"));
            let mut token = config.token.clone();
            if config.enroll {
                if let Some(saved) = enroll::saved_token(&config.state_dir) {
                    token = Some(saved);
                }
            }
            client = Some(make_client(config, url, token)?);
        }
        let spool = match &config.url {
            Some(_) => Spool::open(
                spool_dir.as_deref(),
                config.spool_reports,
                spool::DEFAULT_MAX_BYTES,
            ),
            None => Spool::open(None, 0, 0),
        };
        let agent_id = agent_id(config, &identity);
        if config.url.is_some() && !config.once {
            // Remember the ID (the installer's uninstall path reads it); no
            // write when it has not changed.
            if let Err(e) = state::write_if_changed(&config.agent_id_file, &agent_id) {
                log::warn!(
                    "cannot save the agent ID to {}: {e}",
                    config.agent_id_file.display()
                );
            }
        }
        Ok(Agent {
            modules: modules(config, started),
            privilege: Privilege::current(
                config.smartctl_path.is_some(),
                config.pct_path.is_some(),
            ),
            seq: Sequence::random(),
            interval: config.interval,
            report_ip: config.report_ip,
            applied_config: None,
            delivery: DeliveryState {
                configured: client.is_some(),
                spooled: spool.len(),
                ..DeliveryState::default()
            },
            client,
            trust: Trust {
                public_keys: std::env::var("PULSE_AGENT_CONFIG_PUBLIC_KEYS")
                    .ok()
                    .filter(|s| !s.trim().is_empty()),
                signature_required: std::env::var("PULSE_AGENT_CONFIG_SIGNATURE_REQUIRED")
                    .is_ok_and(|v| crate::cli::parse_env_bool(&v)),
            },
            spool: Arc::new(Mutex::new(spool)),
            inflight: Arc::new(Mutex::new(None)),
            published: None,
            reports_built: 0,
            last_report: None,
            outcomes: HashMap::new(),
            warned: HashMap::new(),
            last_sources: Vec::new(),
            auth_logged: None,
            server_id_logged: false,
            server_version: None,
            smart,
            smart_waited: false,
            hardware,
            agent_id,
            identity,
            host,
            started,
            clock,
            config: config.clone(),
        })
    }

    fn enroll_if_asked(
        &mut self,
        once: bool,
        wait: &mut dyn FnMut(Duration) -> bool,
    ) -> Result<(), Error> {
        if !self.config.enroll || enroll::saved_token(&self.config.state_dir).is_some() {
            return Ok(());
        }
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        let version = version();
        let host = enroll::Host {
            hostname: &self.identity.hostname,
            os: &self.identity.os_name,
            arch: &self.identity.architecture,
            version: &version,
        };
        match enroll::enroll(client, &host, &self.config.state_dir, once, wait)
            .map_err(Error::Enroll)?
        {
            enroll::Enrolled::Runtime(token, id) => {
                client.set_token(token);
                if let Some(id) = id {
                    self.agent_id = id;
                }
            }
            enroll::Enrolled::NotBootstrap => {}
        }
        Ok(())
    }

    /// Collects and builds one report: the document and its wire bytes.
    fn build(&mut self) -> (Value, Vec<u8>) {
        // The hardware workers run while the host collectors do.
        let pending = self.hardware.begin();
        let mut snapshot = self.host.collect();
        self.add_smart(&mut snapshot);
        self.hardware.finish(pending, &mut snapshot);
        self.log_outcomes(&snapshot.sources);
        let sequence_id = self.seq.next_id();
        let version = version();
        let report_ip = self.report_ip.map(|ip| ip.to_string());
        let applied = self
            .applied_config
            .as_ref()
            .map(|(v, h)| (v.as_str(), h.as_str()));
        let timestamp = (self.clock)();
        let doc = report::host(&report::HostReport {
            agent: report::Agent {
                id: &self.agent_id,
                version: &version,
                interval_seconds: self.interval.as_secs(),
                hostname: &self.identity.hostname,
                disk_exclude: &self.config.disk_exclude,
                modules: &self.modules,
                privilege: &self.privilege,
                applied_config: applied,
            },
            identity: &self.identity,
            report_ip: report_ip.as_deref(),
            tags: &self.config.tags,
            snapshot: &snapshot,
            // The server orders reports by this: it is taken after collection.
            timestamp,
            sequence_id: &sequence_id,
        });
        self.reports_built += 1;
        self.last_report = Some(timestamp);
        self.last_sources = snapshot.sources;
        let body =
            serde_json::to_vec(&doc).expect("invariant: a serde_json::Value always serialises");
        (doc, body)
    }

    /// Puts the latest SMART refresh into `snap`. The first report waits for
    /// the first refresh, up to [`SMART_WAIT`]; later ones never wait.
    fn add_smart(&mut self, snap: &mut collect::HostSnapshot) {
        let Some(service) = &self.smart else {
            return;
        };
        let refresh = if self.smart_waited {
            service.latest()
        } else {
            self.smart_waited = true;
            service.wait(SMART_WAIT)
        };
        snap.sources.push(match refresh {
            Some(r) => {
                snap.smart = r.rows.clone();
                SourceStatus {
                    name: "smart",
                    outcome: r.outcome.clone(),
                    duration: r.duration,
                    warnings: r.warnings.clone(),
                }
            }
            None => SourceStatus {
                name: "smart",
                outcome: Outcome::Failed(format!(
                    "the first SMART refresh has not finished (waited {} s)",
                    SMART_WAIT.as_secs()
                )),
                duration: Duration::ZERO,
                warnings: Vec::new(),
            },
        });
    }

    /// Logs a source's outcome when it changes, not every cycle.
    fn log_outcomes(&mut self, sources: &[SourceStatus]) {
        for s in sources {
            // A warning is logged when it first appears, not every cycle.
            let seen = self
                .warned
                .insert(s.name, s.warnings.clone())
                .unwrap_or_default();
            for w in s.warnings.iter().filter(|w| !seen.contains(w)) {
                log::warn!("{}: {w}", s.name);
            }
            let prev = self.outcomes.insert(s.name, s.outcome.clone());
            if prev.as_ref() == Some(&s.outcome) {
                continue;
            }
            match (&s.outcome, prev) {
                (Outcome::Failed(why), _) => log::warn!("{}: {why}", s.name),
                (Outcome::Ok, Some(Outcome::Failed(_))) => log::info!("{}: works again", s.name),
                (Outcome::Absent, _) => log::debug!("{}: not on this host", s.name),
                _ => {}
            }
        }
    }

    /// One report cycle: collect, build, deliver, publish.
    fn cycle(&mut self) {
        let (doc, body) = self.build();
        if self.client.is_some() {
            self.deliver(body);
        }
        self.publish(Some(&doc));
    }

    fn post(&self, body: &[u8]) -> Delivery {
        let client = self
            .client
            .as_ref()
            .expect("invariant: delivery needs a client");
        let ua = format!("pulse-agent/{}", version());
        deliver::classify(client.post_json(REPORT_PATH, body, REPORT_TIMEOUT, Some(&ua)))
    }

    fn spool(&self) -> std::sync::MutexGuard<'_, Spool> {
        lock(&self.spool)
    }

    /// Delivers a fresh report, oldest spooled reports first. Returns whether
    /// the fresh report reached the server.
    fn deliver(&mut self, body: Vec<u8>) -> bool {
        let dropped_before = self.spool().dropped();
        let delivered = if !self.spool().is_empty() {
            // During an outage a report is on disk before any network attempt.
            let fresh = self.spool().push(body);
            self.flush(fresh)
        } else {
            *lock(&self.inflight) = Some(body.clone());
            let outcome = self.post(&body);
            // Held while the report is spooled: the stop watchdog takes this
            // lock first, so it never exits in the middle of the write.
            let inflight = self.inflight.clone();
            let mut guard = lock(&inflight);
            let still_ours = guard.take().is_some();
            match outcome {
                Delivery::Delivered(ack) => {
                    drop(guard);
                    self.delivered(ack);
                    true
                }
                Delivery::Failed(why) => {
                    if still_ours {
                        self.spool().push(body);
                    }
                    drop(guard);
                    self.failed(why);
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
        let (dropped, spooled) = (spool.dropped() - dropped_before, spool.len());
        drop(spool);
        self.delivery.dropped += dropped;
        self.delivery.spooled = spooled;
        delivered
    }

    /// Sends spooled reports oldest first until one fails. Returns whether
    /// `fresh` (the spool entry of the report just built) was delivered.
    fn flush(&mut self, fresh: Option<u64>) -> bool {
        let mut sent = 0;
        let mut fresh_delivered = false;
        loop {
            let front = self.spool().front();
            let (id, body) = match front {
                Ok(Some(entry)) => entry,
                Ok(None) => {
                    if sent > 0 {
                        log::info!("sent {sent} spooled report(s)");
                    }
                    return fresh_delivered;
                }
                Err(e) => {
                    // Kept for the next cycle: the problem may pass.
                    self.failed(format!("cannot read the spool: {e}"));
                    return false;
                }
            };
            match self.post(&body) {
                Delivery::Delivered(ack) => {
                    self.spool().remove(id);
                    self.delivered(ack);
                    fresh_delivered |= Some(id) == fresh;
                    sent += 1;
                }
                Delivery::Failed(why) => {
                    self.failed(why);
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

    fn delivered(&mut self, ack: deliver::Ack) {
        if self.delivery.last_ok == Some(false) {
            log::info!(
                "delivery to {} works again",
                self.client.as_ref().map_or("", |c| c.base())
            );
        }
        self.delivery.last_ok = Some(true);
        self.delivery.last_error = None;
        self.delivery.delivered += 1;
        self.auth_logged = None;
        if let Some(id) = ack.agent_id {
            if id != self.agent_id && !self.server_id_logged {
                log::info!(
                    "the server knows this agent as {id:?} (reported {:?}); saved for the next start",
                    self.agent_id
                );
                self.server_id_logged = true;
            }
            if let Err(e) = state::write_if_changed(&self.config.state_dir.join("agent-id"), &id) {
                log::warn!("cannot save the agent ID: {e}");
            }
        }
        if ack.server_version.is_some() {
            self.server_version = ack.server_version;
        }
    }

    fn failed(&mut self, why: String) {
        if self.delivery.last_ok != Some(false) {
            log::warn!(
                "delivery to {} failed: {why}; keeping reports in the spool and trying again every interval",
                self.client.as_ref().map_or("", |c| c.base())
            );
        } else {
            log::debug!("delivery still failing: {why}");
        }
        self.delivery.last_ok = Some(false);
        self.delivery.last_error = Some(why);
        self.delivery.failed += 1;
    }

    fn refused(&mut self, outcome: Delivery, dropped: u64) {
        self.delivery.last_ok = Some(false);
        self.delivery.dropped += dropped;
        let (msg, rate_limited) = match outcome {
            Delivery::Unauthorized => ("the server does not accept the token (401): check --token-file; reports are dropped until it does".to_string(), true),
            Delivery::Forbidden => ("the token lacks the agent:report scope (403); reports are dropped until it has it".to_string(), true),
            Delivery::Rejected(status, body) => (format!("the server refused a report for good ({status}: {body}); dropped it"), false),
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

    /// What a remote-config fetch needs, when this agent fetches one (a
    /// server and a token).
    fn config_fetcher(&self) -> Option<remote_config::Fetcher> {
        let client = self.client.as_ref()?;
        if self.config.token.is_none() && !self.config.enroll {
            return None;
        }
        Some(remote_config::Fetcher {
            client: client.clone(),
            hostname: self.identity.hostname.clone(),
            agent_id: self.agent_id.clone(),
            trust: self.trust.clone(),
            clock: self.clock,
        })
    }

    fn apply_fetched(&mut self, fetched: Result<Option<remote_config::Remote>, String>) {
        match fetched {
            Ok(Some(r)) => self.apply(r),
            Ok(None) => log::debug!("the server has no config for this agent yet"),
            Err(e) => log::debug!("remote config: {e}"),
        }
    }

    fn apply(&mut self, r: remote_config::Remote) {
        if let Some(i) = r.interval.filter(|i| *i != self.interval) {
            log::info!("remote config: interval {}s", i.as_secs());
            self.interval = i;
        }
        if let Some(ip) = r.report_ip.filter(|ip| *ip != self.report_ip) {
            log::info!(
                "remote config: report IP {}",
                ip.map_or("cleared".to_string(), |i| i.to_string())
            );
            self.report_ip = ip;
        }
        if let Some(level) = r.log_level.filter(|l| *l != log::max_level()) {
            log::info!("remote config: log level {level}");
            logging::set_level(level);
        }
        if let Some(c) = r.disable_ceph {
            self.config.disable_ceph = c;
        }
        if r.applied.is_some() {
            self.applied_config = r.applied;
        }
    }

    /// Publishes what the health listener answers with.
    fn publish(&self, doc: Option<&Value>) {
        let Some(published) = &self.published else {
            return;
        };
        let ready = self
            .modules
            .iter()
            .filter(|m| m.enabled)
            .all(|m| m.state == ModuleState::Running);
        let sources = &self.last_sources;
        let status = json!({
            "ready": ready,
            "modules": self.modules.iter().map(module_json).collect::<Vec<_>>(),
            "agent": {"id": self.agent_id, "version": version(), "hostname": self.identity.hostname,
                      "intervalSeconds": self.interval.as_secs()},
            "collectors": sources.iter().map(source_json).collect::<Vec<_>>(),
            "delivery": delivery_json(&self.delivery, self.client.as_ref().map(|c| c.base())),
        });
        let metrics = metrics::render(&metrics::State {
            version: &version(),
            modules: &self.modules,
            sources,
            delivery: &self.delivery,
            reports_built: self.reports_built,
            last_report: self.last_report,
        });
        let previous = published.get();
        published.set(Snapshot {
            ready,
            status: status.to_string(),
            metrics,
            report: match doc {
                Some(d) => Some(Arc::new(
                    serde_json::to_string_pretty(d).expect("invariant: a Value serialises"),
                )),
                None => previous.report.clone(),
            },
        });
    }
}

fn module_json(m: &Module) -> Value {
    let mut v = json!({"name": m.name, "enabled": m.enabled, "state": m.state.as_str(),
        "updatedAt": report::rfc3339(m.updated_at)});
    if let Some(e) = &m.last_error {
        v["lastError"] = json!(e);
    }
    v
}

fn source_json(s: &SourceStatus) -> Value {
    let (outcome, error) = match &s.outcome {
        Outcome::Ok => ("ok", None),
        Outcome::Absent => ("absent", None),
        Outcome::Failed(e) => ("failed", Some(e.as_str())),
    };
    let mut v =
        json!({"name": s.name, "outcome": outcome, "durationSeconds": s.duration.as_secs_f64()});
    if let Some(e) = error {
        v["error"] = json!(e);
    }
    if !s.warnings.is_empty() {
        v["warnings"] = json!(s.warnings);
    }
    v
}

fn delivery_json(d: &DeliveryState, url: Option<&str>) -> Value {
    json!({"configured": d.configured, "url": url, "lastOk": d.last_ok, "lastError": d.last_error,
        "delivered": d.delivered, "failed": d.failed, "dropped": d.dropped, "spooled": d.spooled})
}

fn make_client(config: &Config, url: &ServerUrl, token: Option<Secret>) -> Result<Client, Error> {
    let tls = TlsOptions {
        cacert: config.cacert.clone(),
        insecure: config.insecure,
        fingerprint: config.server_fingerprint,
    };
    Client::new(url, token, &tls, &format!("pulse-agent/{}", version())).map_err(Error::Tls)
}

/// The SMART thread, unless SMART is off (`--smart-interval=0`) or the host
/// is not reported.
fn start_smart(config: &Config, root: &Root) -> Option<smart::Service> {
    if config.smart_interval.is_zero() || !config.enable_host {
        return None;
    }
    let settings = smart::Settings {
        smartctl: config.smartctl_path.clone(),
        interval: config.smart_interval,
        max_age: config.smart_max_age,
        exclude: config.disk_exclude.clone(),
        parallel: smart::PARALLEL,
    };
    match smart::Service::start(smart::Smart::new(root.clone(), settings)) {
        Ok(s) => Some(s),
        Err(e) => {
            log::warn!("cannot start the SMART thread: {e}; disks are not reported");
            None
        }
    }
}

/// Settings the collectors take from the configuration.
pub fn options(config: &Config) -> collect::Options {
    collect::Options {
        disk_exclude: config.disk_exclude.clone(),
        disk_include: config.disk_include.clone(),
        ..collect::Options::default()
    }
}

/// `agent.modules`: the host module, and the stock agent's other modules as
/// disabled so the server's module view is complete.
pub fn modules(config: &Config, at: SystemTime) -> Vec<Module> {
    let m = |name, enabled: bool, state| Module {
        name,
        enabled,
        state,
        last_error: None,
        updated_at: at,
    };
    vec![
        m("docker", false, ModuleState::Disabled),
        if config.enable_host {
            m("host", true, ModuleState::Running)
        } else {
            m("host", false, ModuleState::Disabled)
        },
        m("kubernetes", false, ModuleState::Disabled),
    ]
}

/// `agent.id`: `--agent-id`, else the agent-id file, else the machine ID,
/// else the hostname.
pub fn agent_id(config: &Config, identity: &Identity) -> String {
    if let Some(id) = &config.agent_id {
        return id.clone();
    }
    if let Some(id) = read_agent_id_file(&config.agent_id_file) {
        return id;
    }
    if !identity.machine_id.is_empty() {
        return identity.machine_id.clone();
    }
    identity.hostname.clone()
}

fn read_agent_id_file(path: &Path) -> Option<String> {
    state::read_trimmed(path, 4096)
        .ok()
        .flatten()
        .filter(|id| id.len() <= 256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_stay_on_the_grid_without_bursts() {
        let t0 = Instant::now();
        let i = Duration::from_secs(30);
        // On time.
        assert_eq!(next_tick(t0, i, t0 + Duration::from_secs(1)), t0 + i);
        // Overran one interval: one immediate tick (at the missed grid point).
        assert_eq!(next_tick(t0, i, t0 + Duration::from_secs(31)), t0 + i);
        // Overran three and a half: still one immediate tick, on the grid.
        assert_eq!(
            next_tick(t0, i, t0 + Duration::from_secs(105)),
            t0 + Duration::from_secs(90)
        );
    }
}
