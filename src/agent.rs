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
//! about 2 s and never loses a report. SIGHUP reopens the log file and
//! re-reads the token file between cycles.
//!
//! With a server URL the agent holds the state directory's lock
//! (`state::Lock`) for its whole life: a second agent on the same directory
//! exits 1 naming the first, and `--once` waits up to [`ONCE_LOCK_WAIT`]
//! for it first. Without a URL nothing is written there and nothing is locked.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::collect::{self, Outcome, SourceStatus, cluster, identity::Identity};
use crate::config::{Config, Secret, ServerUrl, TokenSource};
use crate::deliver::{self, Client, TlsOptions};
use crate::docker;
use crate::hardware::Hardware;
use crate::health::{self, Published, Snapshot};
use crate::metrics::{self, DeliveryState};
use crate::outbox::{Outbox, Stream};
use crate::platform::{Platform, put_module};
use crate::remote_config::{self, Trust};
use crate::report::{self, Module, ModuleState, Privilege, Sequence};
use crate::root::Root;
use crate::spool::{self, Spool};
use crate::{enroll, logging, smart, state, sys, update};

pub const VERSION: &str = match option_env!("PULSE_AGENT_VERSION") {
    // A release build may carry its own version (the release process and
    // the updater's end-to-end test set it); otherwise the crate's.
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};
/// How long a stop may wait for the cycle in progress.
pub const STOP_GRACE: Duration = Duration::from_millis(1800);
/// The docker report's limit at the server (spec §4.7; sent uncompressed,
/// so the encoded and decoded sizes are the same), and where the agent warns.
pub const DOCKER_MAX_BODY: usize = 2 * 1024 * 1024;
pub const DOCKER_WARN_BODY: usize = DOCKER_MAX_BODY / 10 * 8;
/// How long the first report waits for the first SMART refresh; a hung
/// smartctl costs the first report at most this, later reports nothing.
pub const SMART_WAIT: Duration = Duration::from_secs(15);
/// How long `--once` waits for another agent to let go of the state
/// directory (a timer run that meets the service, or a second manual run).
pub const ONCE_LOCK_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum Error {
    Root(PathBuf, std::io::Error),
    Tls(deliver::Error),
    Enroll(String),
    Signals(std::io::Error),
    NotDelivered(String),
    Docker(String),
    /// Another agent holds the state directory's lock.
    StateDirBusy {
        dir: PathBuf,
        pid: Option<u32>,
        waited: Option<Duration>,
    },
    /// The report could not be written to standard output.
    Stdout(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Root(p, e) => write!(f, "--root {}: {e}", p.display()),
            Error::Tls(e) => e.fmt(f),
            Error::Enroll(why) => f.write_str(why),
            Error::Signals(e) => write!(f, "cannot set up signal handling: {e}"),
            Error::NotDelivered(why) => write!(f, "report not delivered: {why}"),
            Error::Docker(why) => write!(f, "docker: {why}"),
            Error::StateDirBusy { dir, pid, waited } => {
                write!(
                    f,
                    "the state directory {} is in use by another pulse-agent",
                    dir.display()
                )?;
                if let Some(pid) = pid {
                    write!(f, " (PID {pid})")?;
                }
                if let Some(w) = waited {
                    write!(f, "; waited {} s", w.as_secs())?;
                }
                f.write_str("; stop it, or give this one its own --state-dir")
            }
            Error::Stdout(e) => write!(f, "writing the report to standard output: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// `v` + the crate version: what `agent.version` and `--version` show.
pub fn version() -> String {
    format!("v{VERSION}")
}

/// Runs what the configuration asks for. `log_file` is the logger's file
/// (`--log-file`), reopened on SIGHUP.
pub fn run(config: &Config, log_file: logging::LogFile) -> Result<(), Error> {
    sys::limit_malloc_arenas();
    // First of all, before anything that could fail: a version on trial
    // counts this start (a start that ends in an error or a panic before
    // its clean stop is an abnormal exit).
    let trial = begin_trial(config);
    if config.once {
        return run_once(config, trial);
    }
    serve(config, log_file, trial)
}

/// What the start of a run found about a trial.
enum TrialStart {
    None,
    /// On trial; the version it replaced.
    Pending(String),
    /// It failed its trial and could not be rolled back: why.
    RollbackFailed(String),
}

fn begin_trial(config: &Config) -> TrialStart {
    if config.url.is_none() {
        return TrialStart::None;
    }
    match update::trial_start(&config.state_dir, &version()) {
        update::Verdict::Pending { from } => {
            log::info!(
                "pulse-agent {} is on trial (updated from {from}) until a report is delivered",
                version()
            );
            TrialStart::Pending(from)
        }
        update::Verdict::RollBack(why) => TrialStart::RollbackFailed(roll_back(config, &why)),
        _ => TrialStart::None,
    }
}

/// Puts the previous binary back and runs it in this process. Returns only
/// when that cannot be done, with why.
fn roll_back(config: &Config, why: &str) -> String {
    log::error!("rolling back from pulse-agent {}: {why}", version());
    let binary = match std::env::current_exe().and_then(std::fs::canonicalize) {
        Ok(b) => b,
        Err(e) => return format!("cannot find this program's own file: {e}"),
    };
    // The file this process runs (the kernel's link, even once replaced).
    let running = update::file_identity(Path::new("/proc/self/exe"));
    match update::roll_back(&config.state_dir, &binary, &version(), running, why) {
        Ok(()) => {
            let e = reexec(&binary);
            format!("restored {}, but cannot run it: {e}", binary.display())
        }
        Err(e) => e,
    }
}

/// `--once`: without a URL, print the report (then the docker report, when
/// the docker module is on); with one, deliver them (after whatever the
/// spools hold) and succeed only if the server took them.
fn run_once(config: &Config, trial: TrialStart) -> Result<(), Error> {
    let mut agent = Agent::new(config, SystemTime::now)?;
    agent.take_trial(trial);
    let result = deliver_once(&mut agent, config);
    agent.stop_trial();
    result
}

/// The rest of `--once`, after the trial bookkeeping.
fn deliver_once(agent: &mut Agent, config: &Config) -> Result<(), Error> {
    if config.url.is_some() {
        agent.enroll_if_asked(true, &mut |_, _| false)?;
    }
    let pending = agent.ask_docker();
    let snapshot = agent.collect();
    let host = config.enable_host.then(|| {
        let (encoded, doc) = agent.host_report_and_document(&snapshot);
        (doc, Arc::unwrap_or_clone(encoded.body))
    });
    let docker = pending.and_then(|p| agent.docker_report(p, &snapshot, docker::ONCE_WAIT));
    // Asked for by name and not there: that is a failure of this run.
    let docker_error = match (&agent.docker, &docker) {
        (Some(d), None) if d.explicit => Some(
            agent
                .modules
                .iter()
                .find(|m| m.name == "docker")
                .and_then(|m| m.last_error.clone())
                .unwrap_or_else(|| "no docker report".into()),
        ),
        _ => None,
    };
    if agent.client.is_none() {
        let docs = host.iter().chain(docker.iter()).map(|(doc, _)| doc);
        match print_reports(&mut std::io::stdout().lock(), docs) {
            Ok(()) => {}
            // Whoever reads has read enough (`| head`): not an error, as
            // for ripgrep and most Unix tools.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(Error::Stdout(e)),
        }
        return docker_error.map_or(Ok(()), |e| Err(Error::Docker(e)));
    }
    let base = agent.client.as_ref().map_or("", |c| c.base()).to_string();
    if let Some((doc, body)) = host {
        let seq = doc["sequenceId"].as_str().unwrap_or("").to_string();
        if !agent.deliver(Arc::new(body)) {
            return Err(Error::NotDelivered(
                agent
                    .out
                    .delivery
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "see the log".into()),
            ));
        }
        log::info!("delivered report {seq} to {base}");
    }
    if let Some((doc, body)) = docker {
        let n = doc["containers"].as_array().map_or(0, Vec::len);
        if !agent.deliver_docker(body) {
            let why = agent
                .docker
                .as_ref()
                .and_then(|d| d.outbox.delivery.last_error.clone())
                .unwrap_or_else(|| "see the log".into());
            return Err(Error::NotDelivered(format!("docker report: {why}")));
        }
        log::info!("delivered the docker report ({n} containers) to {base}");
    }
    docker_error.map_or(Ok(()), |e| Err(Error::Docker(e)))
}

/// Writes each document, pretty, one after the other. `println!` would
/// panic on a write error (a full disk, a closed pipe); this returns it.
fn print_reports<'a>(
    out: &mut impl std::io::Write,
    docs: impl Iterator<Item = &'a Value>,
) -> std::io::Result<()> {
    for doc in docs {
        serde_json::to_writer_pretty(&mut *out, doc).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    out.flush()
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
    /// SIGHUP: reopen the log file, re-read the token file.
    Hangup,
    Config(Result<Option<remote_config::Remote>, String>),
    /// The updater installed a version (`None`: someone else replaced the
    /// binary): restart into it between cycles.
    Updated(Option<String>),
}

/// The reporting service.
fn serve(config: &Config, log_file: logging::LogFile, trial: TrialStart) -> Result<(), Error> {
    sys::block_signals().map_err(Error::Signals)?;
    let (events_tx, events) = mpsc::channel::<Event>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut agent = Agent::new(config, SystemTime::now)?;
    agent.log_file = log_file;
    agent.take_trial(trial);
    // The stop watchdog's exit is a clean stop too.
    let on_trial = agent
        .updated_from
        .is_some()
        .then(|| config.state_dir.clone());

    let held: Vec<_> = agent
        .outboxes()
        .map(|o| (o.inflight.clone(), o.spool.clone()))
        .collect();
    let stop_tx = events_tx.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let sig = loop {
                match sys::wait_signal() {
                    // Handled by the loop between cycles, like a config.
                    sys::SIGHUP => {
                        let _ = stop_tx.send(Event::Hangup);
                    }
                    sig => break sig,
                }
            };
            log::info!("received signal {sig}; stopping after the current cycle");
            let _ = stop_tx.send(Event::Stop);
            if done_rx.recv_timeout(STOP_GRACE).is_err() {
                // The cycle is stuck (an unresponsive server): keep its report.
                // Lock order as in Outbox::deliver: in-flight, then spool. All
                // stay held until exit, so no spool write is cut in half.
                let mut guards = Vec::new();
                for (inflight, spool) in &held {
                    let mut inflight = lock(inflight);
                    let mut spool = lock(spool);
                    if let Some(body) = inflight.take() {
                        spool.push(Arc::unwrap_or_clone(body));
                        log::info!("saved the report in flight to the spool");
                    }
                    guards.push((inflight, spool));
                }
                if let Some(dir) = &on_trial {
                    update::trial_stop(dir, &version());
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

    // systemd (Type=notify): ready once the first report is collected, the
    // watchdog fed at every step (notify.rs), a stop announced.
    let notifier = crate::notify::Notifier::from_env(&|k| std::env::var(k).ok()).map(Arc::new);
    agent.set_notifier(notifier.clone());

    // Enrollment retries sleep on the event channel so a stop ends them; a
    // SIGHUP meanwhile is handled once enrollment is over. A server that is
    // not there yet must not fail the start (systemd would kill and restart
    // the agent at TimeoutStartSec=, and hold `systemctl start` and the
    // units after it meanwhile): the agent says READY=1 with the reason in
    // STATUS= and keeps the watchdog fed while it waits.
    let mut hangup_pending = false;
    let mut wait = |d: Duration, why: &str| {
        if let Some(n) = &notifier {
            n.status(&format!("waiting to enroll with the server: {why}"), true);
        }
        let until = Instant::now() + d;
        loop {
            let wake = notifier
                .as_ref()
                .and_then(|n| n.next_ping())
                .map_or(until, |p| p.min(until));
            match events.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= until => return true,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Ok(Event::Hangup) => hangup_pending = true,
                Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            }
            if let Some(n) = &notifier {
                n.ping_if_due();
            }
        }
    };
    if let Err(e) = agent.enroll_if_asked(false, &mut wait) {
        let _ = done_tx.send(());
        return Err(e);
    }
    if hangup_pending {
        agent.hangup();
    }
    let binary = agent.start_updater(config, events_tx.clone());
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
    // The report grid (a cycle's start, the interval), for the refresh to
    // land between reports (`remote_config::fetch_at`).
    let grid = Arc::new(Mutex::new((Instant::now(), agent.interval)));
    if let Some(mut fetch) = agent.config_fetcher() {
        let first = fetch.fetch();
        agent.apply_fetched(first.clone());
        agent.keepalive();
        let tx = events_tx.clone();
        let new_token = agent.fetch_token.clone();
        let grid = grid.clone();
        let spawned = std::thread::Builder::new()
            .name("remote-config".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let stack = crate::sys::StackTrim::this_thread();
                let mut last = Instant::now();
                // The main loop hears of a fetch only when its outcome
                // differs from the one before: the same config (or the same
                // error) every minute is news to nobody, and would wake it
                // and log again.
                let mut sent = remote_config::Changes::from(first);
                loop {
                    if let Some(t) = &stack {
                        t.trim();
                    }
                    let due = last + remote_config::REFRESH;
                    let (start, interval) = *lock(&grid);
                    let at = remote_config::fetch_at(due, start, interval, Instant::now());
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    last = Instant::now();
                    if let Some(t) = lock(&new_token).take() {
                        fetch.client.set_token(t);
                    }
                    let fetched = fetch.fetch();
                    if sent.is_new(&fetched) && tx.send(Event::Config(fetched)).is_err() {
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
    // The start (enrolment, the first TLS handshake) takes the main stack
    // to about 60 KiB, a cycle to about 20: what a cycle does not use is
    // given back after the first one, and every TRIM_EVERY cycles after
    // that (not every cycle: each trim flushes the TLBs of the other CPUs,
    // and the pages a cycle uses come back at the next one).
    let main_stack = crate::sys::StackTrim::this_thread();
    const TRIM_EVERY: u64 = 20;
    let mut cycles = 0u64;
    loop {
        let wake = notifier
            .as_ref()
            .and_then(|n| n.next_ping())
            .map_or(next_report, |p| p.min(next_report));
        match events.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(Event::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(n) = &notifier {
                    n.send("STOPPING=1");
                }
                break;
            }
            Ok(Event::Hangup) => {
                agent.hangup();
                continue;
            }
            Ok(Event::Updated(version)) => {
                let Some(binary) = &binary else { continue };
                match version {
                    Some(v) => log::info!("restarting into pulse-agent {v}"),
                    None => log::info!("restarting into the new {}", binary.display()),
                }
                agent.stop_trial();
                // The new image is silent until its first collection: it
                // gets a whole WatchdogSec= from here, not what is left of
                // the last ping's.
                if let Some(n) = &notifier {
                    n.send("WATCHDOG=1");
                }
                let e = reexec(binary);
                log::error!(
                    "cannot run {}: {e}; exiting so the service manager starts it",
                    binary.display()
                );
                let _ = done_tx.send(());
                std::process::exit(1);
            }
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
            *lock(&grid) = (Instant::now(), agent.interval);
            agent.cycle();
            if let Some(t) = main_stack.as_ref().filter(|_| cycles % TRIM_EVERY == 0) {
                t.trim();
            }
            cycles += 1;
            next_report = next_tick(next_report, agent.interval, Instant::now());
            if let Some(n) = &notifier {
                n.status(&agent.status_text(), true);
            }
        }
        if let Some(n) = &notifier {
            n.ping_if_due();
        }
    }
    let _ = done_tx.send(());
    agent.stop_trial();
    // If the watchdog is already saving the report in flight, let it finish
    // (it exits the process); returning now could cut its write short.
    let _wait: Vec<_> = agent.outboxes().map(|o| lock(&o.inflight)).collect();
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
    /// Builds host reports (`packageUpdates` once per apt run).
    encoder: report::HostEncoder,
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
    /// The host report's way to the server.
    out: Outbox,
    docker: Option<DockerModule>,
    published: Option<Arc<Published>>,
    reports_built: u64,
    last_report: Option<SystemTime>,
    outcomes: HashMap<&'static str, Outcome>,
    warned: HashMap<&'static str, Vec<String>>,
    /// The last host report's sources, shared with the published view.
    last_sources: Arc<[SourceStatus]>,
    server_id_logged: bool,
    /// The server's ID for this agent as last saved in `STATE-DIR/agent-id`.
    saved_server_id: Option<String>,
    server_version: Option<String>,
    smart: Option<smart::Service>,
    smart_waited: bool,
    hardware: Hardware,
    /// Unraid, Ceph, Proxmox LXC, package updates (`platform.rs`).
    platform: Platform,
    /// `--enable-proxmox`: the peers' temperatures through pulse-sensor-proxy.
    cluster: Option<cluster::Service>,
    /// The first report waited for the first cluster run.
    cluster_waited: bool,
    /// The logger's file, reopened on SIGHUP.
    log_file: logging::LogFile,
    /// A token re-read on SIGHUP, for the remote-config thread's client.
    fetch_token: Arc<Mutex<Option<Secret>>>,
    /// Held while the agent lives (with a URL): one agent per state directory.
    _state_lock: Option<state::Lock>,
    /// The updater's state, shared with its thread.
    update: Arc<Mutex<update::Status>>,
    /// While this version is on trial: the version it replaced.
    updated_from: Option<String>,
    /// systemd's notification socket (service only): READY=1 and the watchdog.
    notifier: Option<Arc<crate::notify::Notifier>>,
}

impl Agent {
    fn new(config: &Config, clock: fn() -> SystemTime) -> Result<Agent, Error> {
        // Before anything starts: a second agent stops here, having touched
        // nothing of the first one's.
        let state_lock = match config.url {
            Some(_) => lock_state_dir(config)?,
            None => None,
        };
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
        let platform = Platform::new(
            root.clone(),
            crate::platform::Settings {
                pct_path: config.pct_path.clone(),
                clock,
                once: config.once,
                apt_cache: config
                    .url
                    .as_ref()
                    .map(|_| config.state_dir.join("packages.json")),
            },
        );
        let cluster = start_cluster(config, &root);
        let root_for_docker = root.clone();
        let host = collect::Host::new(root, opts);

        let mut client = None;
        let mut spool_dir = None;
        if let Some(url) = &config.url {
            spool_dir = Some(config.state_dir.join("spool"));
            let mut token = config.token.clone();
            if config.enroll {
                if let Some(saved) = enroll::saved_token(&config.state_dir) {
                    token = Some(saved);
                }
            }
            client = Some(make_client(config, url, token)?);
        }
        // The docker reports have their own spool beside the host's.
        let open_spool = |name: &str| match &config.url {
            Some(_) => Spool::open(
                spool_dir
                    .as_deref()
                    .map(|_| config.state_dir.join(name))
                    .as_deref(),
                config.spool_reports,
                spool::DEFAULT_MAX_BYTES,
            ),
            None => Spool::open(None, 0, 0),
        };
        let user_agent = format!("pulse-agent/{}", version());
        let out = Outbox::new(
            Stream::Host,
            open_spool("spool"),
            client.is_some(),
            user_agent.clone(),
        );
        let docker = start_docker(config, &root_for_docker, || {
            Outbox::new(
                Stream::Docker,
                open_spool("spool-docker"),
                client.is_some(),
                user_agent.clone(),
            )
        });
        let agent_id = agent_id(config, &identity);
        let mut update_status = update::Status::disabled(None);
        if config.url.is_some() {
            update_status.restore(&update::record::Record::load(&config.state_dir));
        }
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
            encoder: report::HostEncoder::new(),
            interval: config.interval,
            report_ip: config.report_ip,
            applied_config: None,
            out,
            docker,
            client,
            trust: Trust {
                public_keys: std::env::var("PULSE_AGENT_CONFIG_PUBLIC_KEYS")
                    .ok()
                    .filter(|s| !s.trim().is_empty()),
                signature_required: std::env::var("PULSE_AGENT_CONFIG_SIGNATURE_REQUIRED")
                    .is_ok_and(|v| crate::cli::parse_env_bool(&v)),
            },
            published: None,
            reports_built: 0,
            last_report: None,
            outcomes: HashMap::new(),
            warned: HashMap::new(),
            last_sources: Arc::from([]),
            server_id_logged: false,
            saved_server_id: None,
            server_version: None,
            smart,
            smart_waited: false,
            hardware,
            platform,
            cluster,
            cluster_waited: false,
            log_file: logging::LogFile::default(),
            fetch_token: Arc::new(Mutex::new(None)),
            _state_lock: state_lock,
            update: Arc::new(Mutex::new(update_status)),
            updated_from: None,
            notifier: None,
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
        wait: &mut dyn FnMut(Duration, &str) -> bool,
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

    /// Collects this host: the host collectors, SMART and the hardware.
    fn collect(&mut self) -> collect::HostSnapshot {
        // The hardware workers run while the host collectors do.
        let pending = self.hardware.begin();
        let platform = self.platform.begin(!self.config.disable_ceph);
        let cluster = self.cluster.as_ref().map(cluster::Service::ask);
        let mut snapshot = self.host.collect();
        self.keepalive();
        self.add_smart(&mut snapshot);
        self.keepalive();
        self.hardware.finish(pending, &mut snapshot);
        let now = (self.clock)();
        self.platform
            .finish(platform, &mut snapshot, &mut self.modules, now);
        if let Some(p) = cluster {
            self.add_cluster(p, &mut snapshot);
        }
        self.log_outcomes(&snapshot.sources);
        snapshot
    }

    /// Under systemd: every step of a cycle feeds the watchdog, and every
    /// delivery's requests (the outboxes), so only a step that hangs, not a
    /// long chain of slow ones, lets it fire.
    fn set_notifier(&mut self, notifier: Option<Arc<crate::notify::Notifier>>) {
        self.out.keepalive = notifier.clone();
        if let Some(d) = &mut self.docker {
            d.outbox.keepalive = notifier.clone();
        }
        self.notifier = notifier;
    }

    fn keepalive(&self) {
        if let Some(n) = &self.notifier {
            n.keepalive();
        }
    }

    /// Collects and builds one host report: the document and its wire bytes.
    fn build(&mut self) -> (Value, Vec<u8>) {
        let snapshot = self.collect();
        let (encoded, doc) = self.host_report_and_document(&snapshot);
        (doc, Arc::unwrap_or_clone(encoded.body))
    }

    /// The host report of `snapshot`: its wire bytes.
    fn host_report(&mut self, snapshot: &collect::HostSnapshot) -> report::Encoded {
        self.host_report_as(snapshot, false).0
    }

    /// [`Agent::host_report`], and the same report as a document (`--once`
    /// prints it; a cycle keeps only the bytes).
    fn host_report_and_document(
        &mut self,
        snapshot: &collect::HostSnapshot,
    ) -> (report::Encoded, Value) {
        let (encoded, doc) = self.host_report_as(snapshot, true);
        (encoded, doc.expect("invariant: asked for"))
    }

    fn host_report_as(
        &mut self,
        snapshot: &collect::HostSnapshot,
        document: bool,
    ) -> (report::Encoded, Option<Value>) {
        let sequence_id = self.seq.next_id();
        let version = version();
        let report_ip = self.report_ip.map(|ip| ip.to_string());
        let applied = self
            .applied_config
            .as_ref()
            .map(|(v, h)| (v.as_str(), h.as_str()));
        let timestamp = (self.clock)();
        let update_status = lock(&self.update).clone();
        let r = report::HostReport {
            agent: report::Agent {
                id: &self.agent_id,
                version: &version,
                interval_seconds: self.interval.as_secs(),
                hostname: &self.identity.hostname,
                disk_exclude: &self.config.disk_exclude,
                modules: &self.modules,
                privilege: &self.privilege,
                applied_config: applied,
                update: &update_status,
                updated_from: self.updated_from.as_deref(),
            },
            identity: &self.identity,
            report_ip: report_ip.as_deref(),
            tags: &self.config.tags,
            snapshot,
            // The server orders reports by this: it is taken after collection.
            timestamp,
            sequence_id: &sequence_id,
        };
        let encoded = self.encoder.encode(&r);
        let doc = document.then(|| report::host(&r));
        self.reports_built += 1;
        self.last_report = Some(timestamp);
        self.last_sources = Arc::from(snapshot.sources.as_slice());
        (encoded, doc)
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

    /// Puts the latest cluster run into `snap` and the module's state. The
    /// first report waits for the first run (up to its budget); later ones
    /// wait as long as the hardware workers, else take the run before.
    fn add_cluster(&mut self, pending: cluster::Pending, snap: &mut collect::HostSnapshot) {
        let Some(service) = &self.cluster else {
            return;
        };
        let wait = match std::mem::replace(&mut self.cluster_waited, true) {
            false => cluster::BUDGET,
            true => crate::hardware::WAIT,
        };
        let started = Instant::now();
        let run = service.answer(pending, wait);
        let (state, error) = match &run {
            None => (
                ModuleState::Starting,
                Some(format!(
                    "the first run has not finished (waited {} s)",
                    wait.as_secs()
                )),
            ),
            Some(r) if r.ok() => (ModuleState::Running, r.error()),
            Some(r) => (ModuleState::Retrying, r.error()),
        };
        if let Some(r) = &run {
            snap.cluster.clone_from(&r.nodes);
        }
        snap.sources.push(SourceStatus {
            name: cluster::MODULE,
            outcome: match (state, &error) {
                (ModuleState::Running, _) | (_, None) => Outcome::Ok,
                (_, Some(e)) => Outcome::Failed(e.clone()),
            },
            duration: started.elapsed(),
            // Peers that failed while others answered.
            warnings: match state {
                ModuleState::Running => run.map(|r| r.errors.clone()).unwrap_or_default(),
                _ => Vec::new(),
            },
        });
        let now = (self.clock)();
        put_module(&mut self.modules, cluster::MODULE, true, state, error, now);
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

    /// One report cycle: collect, build, deliver, publish. The docker
    /// collection runs on its own thread meanwhile; its report follows the
    /// host's.
    fn cycle(&mut self) {
        let docker = self.ask_docker();
        let snapshot = self.collect();
        // Ready: the first report is collected. Its delivery is the
        // server's part (down, slow, a long spool to flush) and must not
        // fail the start; STATUS= says how it went.
        if let Some(n) = &self.notifier {
            n.ready(&self.status_text());
        }
        let mut host_doc = None;
        if self.config.enable_host {
            let (body, doc) = self.host_report(&snapshot).split();
            if self.client.is_some() {
                self.deliver(body);
                self.keepalive();
            }
            host_doc = Some(doc);
        }
        if let Some(pending) = docker {
            // Never into the next cycle: a slow daemon's answer waits for it.
            let wait = docker::WAIT.min(self.interval / 2);
            if let Some((_, body)) = self.docker_report(pending, &snapshot, wait) {
                self.keepalive();
                self.deliver_docker(body);
            }
            self.keepalive();
        }
        self.publish(host_doc);
    }

    /// The outboxes, host first.
    fn outboxes(&self) -> impl Iterator<Item = &Outbox> {
        std::iter::once(&self.out).chain(self.docker.as_ref().map(|d| &d.outbox))
    }

    /// Delivers a fresh host report, oldest spooled reports first. Returns
    /// whether the fresh report reached the server.
    fn deliver(&mut self, body: Arc<Vec<u8>>) -> bool {
        let client = self
            .client
            .as_ref()
            .expect("invariant: delivery needs a client");
        let delivered = self.out.deliver(client, body);
        if let Some(ack) = self.out.ack.take() {
            self.host_ack(ack);
        }
        let answer = self.out.fresh_status.take();
        self.trial_answer(answer);
        delivered
    }

    /// The server's answer to a report this version built, for its trial.
    fn trial_answer(&mut self, status: Option<u16>) {
        let Some(status) = status.filter(|_| self.updated_from.is_some()) else {
            return;
        };
        match update::trial_answers(&self.config.state_dir, &version(), &[status]) {
            update::Verdict::Passed { from } => {
                log::info!(
                    "pulse-agent {} passed its trial (updated from {from})",
                    version()
                );
                self.updated_from = None;
            }
            update::Verdict::RollBack(why) => self.roll_back(&why),
            _ => {}
        }
    }

    /// One line on what the agent is doing, for systemd's `STATUS=`.
    fn status_text(&self) -> String {
        let d = &self.out.delivery;
        let Some(client) = &self.client else {
            return format!(
                "standalone (no --url): collecting every {}s",
                self.interval.as_secs()
            );
        };
        match (d.last_ok, &d.last_error) {
            (None, _) => format!(
                "first report collected; delivering to {}, every {}s",
                client.base(),
                self.interval.as_secs()
            ),
            (Some(false), Some(why)) => format!(
                "delivery to {} failing: {why}; {} report(s) spooled",
                client.base(),
                d.spooled
            ),
            _ => format!(
                "{} report(s) delivered to {}, every {}s",
                d.delivered,
                client.base(),
                self.interval.as_secs()
            ),
        }
    }

    /// What [`begin_trial`] found.
    fn take_trial(&mut self, trial: TrialStart) {
        match trial {
            TrialStart::Pending(from) => self.updated_from = Some(from),
            TrialStart::RollbackFailed(why) => self.rollback_failed(why),
            TrialStart::None => {}
        }
    }

    /// Starts the updater thread when this agent can update itself (a URL,
    /// a channel, a trusted key, not switched off); otherwise the reason is
    /// in `agent.update`. Returns the binary it would replace.
    fn start_updater(&mut self, config: &Config, events: mpsc::Sender<Event>) -> Option<PathBuf> {
        let why = if config.url.is_none() {
            Err("no --url: updates are checked only by an agent that reports".to_string())
        } else if config.disable_auto_update {
            Err(String::new())
        } else {
            update::Settings::from_config(config)
        };
        let settings = match why {
            Ok(s) => s,
            Err(why) => {
                let mut st = lock(&self.update);
                if st.state != update::State::Error {
                    *st = update::Status {
                        last_success: st.last_success,
                        ..update::Status::disabled((!why.is_empty()).then(|| why.clone()))
                    };
                }
                if !why.is_empty() && config.url.is_some() {
                    log::info!("self-update is off: {why}");
                }
                return None;
            }
        };
        let binary = settings.binary.clone();
        lock(&self.update).auto_update = true;
        if lock(&self.update).state == update::State::Disabled {
            lock(&self.update).state = update::State::Idle;
        }
        log::info!(
            "self-update from {} (checked {} s after start, then hourly)",
            settings.channel,
            update::FIRST_CHECK.as_secs()
        );
        let started = update::start(
            settings,
            self.update.clone(),
            update::FIRST_CHECK,
            Box::new(move |v| {
                let _ = events.send(Event::Updated(v));
            }),
        );
        if let Err(e) = started {
            log::warn!("cannot start the updater thread: {e}");
            return None;
        }
        Some(binary)
    }

    /// A clean stop during a trial is not a crash.
    fn stop_trial(&self) {
        if self.updated_from.is_some() {
            update::trial_stop(&self.config.state_dir, &version());
        }
    }

    /// Puts the previous binary back and runs it. Returns only when that
    /// cannot be done (the error is then in the report).
    fn roll_back(&mut self, why: &str) {
        self.updated_from = None;
        let failed = roll_back(&self.config, why);
        self.rollback_failed(failed);
    }

    fn rollback_failed(&mut self, why: String) {
        log::error!("rollback failed: {why}");
        let mut st = lock(&self.update);
        st.state = update::State::Error;
        st.last_error = Some(format!("rollback from {} failed: {why}", version()));
    }

    fn deliver_docker(&mut self, body: Vec<u8>) -> bool {
        let (Some(client), Some(d)) = (self.client.as_ref(), self.docker.as_mut()) else {
            return false;
        };
        let delivered = d.outbox.deliver(client, Arc::new(body));
        // The docker ack's agentId is the docker agent's; nothing to keep,
        // and a trial goes by the host reports.
        d.outbox.ack = None;
        let answer = d.outbox.fresh_status.take();
        // A trial goes by the host reports, or by the docker ones where the
        // agent sends no host report.
        if !self.config.enable_host {
            self.trial_answer(answer);
        }
        delivered
    }

    /// What the host report's acknowledgement tells the agent.
    fn host_ack(&mut self, ack: deliver::Ack) {
        if let Some(id) = ack.agent_id {
            if id != self.agent_id && !self.server_id_logged {
                log::info!(
                    "the server knows this agent as {id:?} (reported {:?}); saved for the next start",
                    self.agent_id
                );
                self.server_id_logged = true;
            }
            // Every answer carries the ID: the file is read (and written when
            // it differs) only when the ID is not the one last saved.
            if self.saved_server_id.as_deref() != Some(id.as_str()) {
                match state::write_if_changed(&self.config.state_dir.join("agent-id"), &id) {
                    Ok(_) => self.saved_server_id = Some(id),
                    Err(e) => log::warn!("cannot save the agent ID: {e}"),
                }
            }
        }
        if ack.server_version.is_some() {
            self.server_version = ack.server_version;
        }
    }

    /// Asks the docker thread for a collection, when the module is on (or,
    /// auto-detected, a socket exists).
    fn ask_docker(&mut self) -> Option<docker::Pending> {
        let d = self.docker.as_mut()?;
        if !d.explicit && !d.enabled {
            // Auto-detection: with no socket there, looked for again every
            // DOCKER_PROBE, not every cycle (a stat per candidate). The
            // stock agent looks once, at start.
            if d.absent_at.is_some_and(|t| t.elapsed() < DOCKER_PROBE) {
                return None;
            }
            if !d.service.socket_present() {
                d.absent_at = Some(Instant::now());
                return None;
            }
            d.absent_at = None;
        }
        Some(d.service.ask())
    }

    /// Takes the docker collection asked for (waiting until `wait` after the
    /// ask), updates the module's state and builds the docker report of it
    /// with this cycle's host metrics. `None` when there is nothing new to send.
    fn docker_report(
        &mut self,
        pending: docker::Pending,
        host: &collect::HostSnapshot,
        wait: Duration,
    ) -> Option<(Value, Vec<u8>)> {
        let now = (self.clock)();
        let d = self.docker.as_mut()?;
        let run = d.service.answer(pending, wait);
        let fresh = run
            .clone()
            .filter(|r| d.last_used.is_none_or(|t| r.finished > t));
        let Some(run) = fresh else {
            let why = match run {
                None => "the first collection has not finished",
                Some(_) => "the container engine has not answered this interval",
            };
            if d.enabled {
                let why = format!("{why} (waited {} s)", wait.as_secs());
                put_module(
                    &mut self.modules,
                    "docker",
                    true,
                    ModuleState::Retrying,
                    Some(why),
                    now,
                );
            }
            return None;
        };
        d.last_used = Some(run.finished);
        d.last_run = Some(run.clone());
        let snap = match &run.result {
            Ok(snap) => snap,
            Err(e) => {
                if d.enabled {
                    if d.logged_error.as_deref() != Some(e.as_str()) {
                        log::warn!("docker: {e}");
                        d.logged_error = Some(e.clone());
                    }
                    put_module(
                        &mut self.modules,
                        "docker",
                        true,
                        ModuleState::Retrying,
                        Some(e.clone()),
                        now,
                    );
                } else if d.logged_error.is_none() {
                    // Auto-detection: a socket exists but does not answer.
                    log::info!(
                        "docker: not enabled: {e} (--enable-docker makes this an error, --enable-docker=false stops trying)"
                    );
                    d.logged_error = Some(e.clone());
                }
                return None;
            }
        };
        if !d.enabled || d.logged_error.is_some() {
            log::info!(
                "docker: reporting {} containers from {} ({} {}, API {})",
                snap.containers.len(),
                snap.endpoint,
                snap.runtime.as_str(),
                snap.info.server_version,
                snap.api_version
            );
        }
        d.enabled = true;
        d.logged_error = None;
        for w in snap.warnings.iter() {
            log::debug!("docker: {w}");
        }
        put_module(
            &mut self.modules,
            "docker",
            true,
            ModuleState::Running,
            None,
            now,
        );
        let version = version();
        let build = |lean: bool| {
            let doc = report::docker(&report::DockerReport {
                agent_id: &self.agent_id,
                version: &version,
                interval_seconds: self.interval.as_secs(),
                identity: &self.identity,
                snapshot: host,
                docker: snap,
                timestamp: now,
                lean,
            });
            let body =
                serde_json::to_vec(&doc).expect("invariant: a serde_json::Value always serialises");
            (doc, body)
        };
        let (mut doc, mut body) = build(false);
        let full = body.len();
        if full > DOCKER_MAX_BODY {
            (doc, body) = build(true);
        }
        let d = self.docker.as_mut()?;
        let large = full >= DOCKER_WARN_BODY;
        if large && !d.size_warned {
            match full > DOCKER_MAX_BODY {
                true => log::warn!(
                    "docker: the report is {full} bytes, over the server's {DOCKER_MAX_BODY}-byte limit; sending it without env, labels and mounts ({} bytes)",
                    body.len()
                ),
                false => log::warn!(
                    "docker: the report is {full} bytes, near the server's {DOCKER_MAX_BODY}-byte limit"
                ),
            }
        }
        d.size_warned = large;
        Some((doc, body))
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

    /// SIGHUP: reopens the log file (after logrotate renamed it) and
    /// re-reads the token file, and says so in one line.
    fn hangup(&mut self) {
        let mut done = Vec::new();
        let mut failed = false;
        if let Some((path, result)) = self.log_file.reopen() {
            match result {
                Ok(()) => done.push(format!("reopened the log file {}", path.display())),
                Err(e) => {
                    failed = true;
                    done.push(format!(
                        "cannot reopen the log file {}: {e}; still writing the old one",
                        path.display()
                    ));
                }
            }
        }
        match (&self.config.token_source, self.client.as_mut()) {
            (_, None) => {}
            (Some(TokenSource::File(path) | TokenSource::StateDir(path)), Some(client))
                if !self.config.enroll =>
            {
                let mut notices = Vec::new();
                let read = match crate::config::read_token_file(path, &mut notices) {
                    Ok(Some(token)) => Ok(token),
                    Ok(None) => Err(format!("token file {}: empty", path.display())),
                    Err(e) => Err(e.to_string()),
                };
                notices.iter().for_each(crate::config::Notice::log);
                match read {
                    Ok(token) if Some(&token) == self.config.token.as_ref() => done.push(format!(
                        "re-read the token file {} (unchanged)",
                        path.display()
                    )),
                    Ok(token) => {
                        client.set_token(token.clone());
                        *lock(&self.fetch_token) = Some(token.clone());
                        self.config.token = Some(token);
                        done.push(format!(
                            "re-read the token file {}: a new token, used from the next request",
                            path.display()
                        ));
                    }
                    Err(why) => {
                        failed = true;
                        done.push(format!("{why}; keeping the token in use"));
                    }
                }
            }
            (Some(TokenSource::File(_) | TokenSource::StateDir(_)), Some(_)) => {
                done.push("the enrolled runtime token is kept (--enroll)".into());
            }
            (_, Some(_)) => {}
        }
        if done.is_empty() {
            done.push("nothing to reopen (no --log-file, no token file)".into());
        }
        let line = format!("SIGHUP: {}", done.join("; "));
        if failed {
            log::warn!("{line}");
        } else {
            log::info!("{line}");
        }
    }

    /// Publishes what the health listener answers with: what this cycle
    /// found, not text. Each page is rendered on the first request for it
    /// (`health::Page`), so a cycle nobody asks about renders nothing.
    fn publish(&self, doc: Option<report::Document>) {
        let Some(published) = &self.published else {
            return;
        };
        let ready = self
            .modules
            .iter()
            // Cluster sensors and the platform sources are optional: a
            // missing proxy or a failing `pct` is reported in the module,
            // it does not make the agent unready.
            .filter(|m| {
                m.enabled
                    && m.name != cluster::MODULE
                    && !crate::platform::MODULES.contains(&m.name)
            })
            .all(|m| m.state == ModuleState::Running);
        let url = self.client.as_ref().map(|c| c.base().to_string());
        let view = Arc::new(View {
            ready,
            modules: self.modules.clone(),
            agent_id: self.agent_id.clone(),
            hostname: self.identity.hostname.clone(),
            interval_seconds: self.interval.as_secs(),
            sources: self.last_sources.clone(),
            delivery: self.out.delivery.clone(),
            docker: self.docker.as_ref().map(|d| DockerView {
                enabled: d.enabled,
                delivery: d.outbox.delivery.clone(),
                last_run: d.last_run.clone(),
            }),
            url,
            update: lock(&self.update).clone(),
            reports_built: self.reports_built,
            last_report: self.last_report,
        });
        let previous = published.get();
        let (for_status, for_metrics) = (view.clone(), view);
        published.set(Snapshot {
            ready,
            status: Arc::new(health::Page::new(move || for_status.status_json())),
            metrics: Arc::new(health::Page::new(move || for_metrics.metrics_text())),
            report: match doc {
                Some(d) => Some(Arc::new(health::Page::new(move || d.pretty()))),
                None => previous.report.clone(),
            },
        });
    }
}

/// What `/status` and `/metrics` show of one cycle, kept for the health
/// listener to render when asked.
struct View {
    ready: bool,
    modules: Vec<Module>,
    agent_id: String,
    hostname: String,
    interval_seconds: u64,
    sources: Arc<[SourceStatus]>,
    delivery: DeliveryState,
    docker: Option<DockerView>,
    /// The server's base URL, with a URL.
    url: Option<String>,
    update: update::Status,
    reports_built: u64,
    last_report: Option<SystemTime>,
}

/// The docker module's part of a [`View`].
struct DockerView {
    enabled: bool,
    delivery: DeliveryState,
    last_run: Option<Arc<docker::Run>>,
}

impl View {
    /// `/status` (and `/readyz`).
    fn status_json(&self) -> String {
        let url = self.url.as_deref();
        json!({
            "ready": self.ready,
            "modules": self.modules.iter().map(module_json).collect::<Vec<_>>(),
            "agent": {"id": self.agent_id, "version": version(), "hostname": self.hostname,
                      "intervalSeconds": self.interval_seconds},
            "collectors": self.sources.iter().map(source_json).collect::<Vec<_>>(),
            "delivery": delivery_json(&self.delivery, url),
            "docker": self.docker.as_ref().map(|d| docker_json(d, url)),
            "update": report::update(&self.update),
        })
        .to_string()
    }

    /// `/metrics` without the `process_*` families.
    fn metrics_text(&self) -> String {
        metrics::render(&metrics::State {
            version: &version(),
            modules: &self.modules,
            sources: &self.sources,
            delivery: &self.delivery,
            docker_delivery: self.docker.as_ref().map(|d| &d.delivery),
            docker_containers: self
                .docker
                .as_ref()
                .and_then(|d| d.last_run.as_ref())
                .and_then(|r| r.result.as_ref().ok())
                .map(|s| s.containers.len()),
            reports_built: self.reports_built,
            last_report: self.last_report,
            update: &self.update,
        })
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

/// The docker module in `/status`: its last collection and its delivery.
fn docker_json(d: &DockerView, url: Option<&str>) -> Value {
    let mut v = json!({"enabled": d.enabled, "delivery": delivery_json(&d.delivery, url)});
    if let Some(run) = &d.last_run {
        match &run.result {
            Ok(s) => {
                v["endpoint"] = json!(s.endpoint);
                v["runtime"] = json!(s.runtime.as_str());
                v["apiVersion"] = json!(s.api_version);
                v["containers"] = json!(s.containers.len());
                v["collectionSeconds"] = json!(s.took.as_secs_f64());
                v["statsCalls"] = json!(s.stats_calls);
                v["inspectCalls"] = json!(s.inspect_calls);
                if !s.warnings.is_empty() {
                    v["warnings"] = json!(s.warnings);
                }
            }
            Err(e) => v["error"] = json!(e),
        }
    }
    v
}

fn delivery_json(d: &DeliveryState, url: Option<&str>) -> Value {
    json!({"configured": d.configured, "url": url, "lastOk": d.last_ok, "lastError": d.last_error,
        "delivered": d.delivered, "failed": d.failed, "dropped": d.dropped, "spooled": d.spooled,
        "spoolDropped": d.spool_dropped})
}

/// Takes the state directory's lock (creating the directory first). The
/// service gives up at once when another agent holds it; `--once` waits up
/// to [`ONCE_LOCK_WAIT`]. A directory that cannot be locked at all (read-only,
/// a filesystem without locks) is logged and not guarded.
fn lock_state_dir(config: &Config) -> Result<Option<state::Lock>, Error> {
    let dir = &config.state_dir;
    match state::ensure_dir(dir) {
        Ok(Some(warning)) => log::warn!("{warning}"),
        Ok(None) => {}
        Err(e) => log::warn!(
            "state directory {}: {e}; nothing will survive a restart",
            dir.display()
        ),
    }
    let wait = if config.once {
        ONCE_LOCK_WAIT
    } else {
        Duration::ZERO
    };
    let deadline = Instant::now() + wait;
    let mut told = false;
    loop {
        match state::Lock::try_take(dir) {
            Ok(l) => return Ok(Some(l)),
            Err(state::LockError::Io(path, e)) => {
                log::warn!(
                    "cannot lock {}: {e}; another agent on this state directory would not be noticed",
                    path.display()
                );
                return Ok(None);
            }
            Err(state::LockError::Held(pid)) => {
                if Instant::now() >= deadline {
                    return Err(Error::StateDirBusy {
                        dir: dir.clone(),
                        pid,
                        waited: (!wait.is_zero()).then_some(wait),
                    });
                }
                if !told {
                    log::info!(
                        "the state directory {} is in use by another pulse-agent{}; waiting up to {} s",
                        dir.display(),
                        pid.map_or(String::new(), |p| format!(" (PID {p})")),
                        wait.as_secs()
                    );
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// `--self-test` (what the updater runs on a candidate binary with the
/// agent's flags): the configuration loads, the root opens, and the TLS
/// client for `--url` can be built. Nothing is collected or sent.
pub fn self_test(config: &Config) -> Result<(), Error> {
    Root::new(&config.root).map_err(|e| Error::Root(config.root.clone(), e))?;
    if let Some(url) = &config.url {
        make_client(config, url, config.token.clone())?;
    }
    Ok(())
}

/// Replaces this process with `binary`, same PID, arguments and
/// environment. Returns only on failure.
pub fn reexec(binary: &Path) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| binary.as_os_str().to_owned());
    log::logger().flush();
    std::process::Command::new(binary)
        .arg0(arg0)
        .args(args)
        .exec()
}

fn make_client(config: &Config, url: &ServerUrl, token: Option<Secret>) -> Result<Client, Error> {
    let tls = TlsOptions {
        cacert: config.cacert.clone(),
        insecure: config.insecure,
        fingerprint: config.server_fingerprint,
    };
    Client::new(url, token, &tls, &format!("pulse-agent/{}", version())).map_err(Error::Tls)
}

/// The docker module between cycles.
struct DockerModule {
    service: docker::Service,
    /// `--enable-docker` (otherwise auto-detected).
    explicit: bool,
    /// Explicit, or a collection has succeeded.
    enabled: bool,
    outbox: Outbox,
    /// When the collection last turned into a report ended.
    last_used: Option<Instant>,
    logged_error: Option<String>,
    size_warned: bool,
    /// The last collection taken (for `/status`).
    last_run: Option<Arc<docker::Run>>,
    /// When auto-detection last found no socket.
    absent_at: Option<Instant>,
}

/// How often auto-detection looks for a container engine's socket while
/// there is none.
const DOCKER_PROBE: Duration = Duration::from_secs(60);

/// The docker thread, unless the module is off: `--enable-docker=false`, or
/// auto-detection on a captured root (a fixture never talks to the
/// machine's own engine) without `--docker-socket`.
fn start_docker(
    config: &Config,
    root: &Root,
    outbox: impl FnOnce() -> Outbox,
) -> Option<DockerModule> {
    let explicit = match config.enable_docker {
        Some(false) => return None,
        Some(true) => true,
        None if root.is_captured() && config.docker_socket.is_none() => return None,
        None => false,
    };
    let settings = docker::Settings::from_env(
        config.docker_socket.clone(),
        config.docker_runtime,
        &format!("pulse-agent/{}", version()),
    );
    match docker::Service::start(settings) {
        Ok(service) => Some(DockerModule {
            service,
            explicit,
            enabled: explicit,
            outbox: outbox(),
            last_used: None,
            logged_error: None,
            size_warned: false,
            last_run: None,
            absent_at: None,
        }),
        Err(e) => {
            log::warn!("cannot start the docker thread: {e}; containers are not reported");
            None
        }
    }
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

/// The cluster-sensors thread, with `--enable-proxmox`.
fn start_cluster(config: &Config, root: &Root) -> Option<cluster::Service> {
    if !config.enable_proxmox || !config.enable_host {
        return None;
    }
    let collector = cluster::Collector::new(root.clone(), config.sensor_proxy_socket.clone());
    match cluster::Service::start(collector) {
        Ok(s) => Some(s),
        Err(e) => {
            log::warn!(
                "cannot start the {} thread: {e}; cluster temperatures are not reported",
                cluster::MODULE
            );
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
    let mut list = vec![
        if config.enable_docker == Some(true) {
            m("docker", true, ModuleState::Starting)
        } else {
            m("docker", false, ModuleState::Disabled)
        },
        if config.enable_host {
            m("host", true, ModuleState::Running)
        } else {
            m("host", false, ModuleState::Disabled)
        },
        m("kubernetes", false, ModuleState::Disabled),
    ];
    if config.enable_proxmox && config.enable_host {
        list.push(m(cluster::MODULE, true, ModuleState::Starting));
    }
    list
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

    /// A standalone agent on a fixture host, publishing for a listener.
    fn fixture_agent(case: &str) -> (Agent, Arc<Published>) {
        let root = format!(
            "{}/vendor-free-tests/fixtures/{case}/root",
            env!("CARGO_MANIFEST_DIR")
        );
        let state = std::env::temp_dir().join("pulse-agent-unit-no-such-state-dir");
        let args = [
            "--root".to_string(),
            root,
            format!("--state-dir={}", state.display()),
            // Never this machine's smartctl.
            "--smart-interval=0s".to_string(),
        ];
        let no_env = |_: &str| None;
        let a = crate::cli::parse(args, &no_env).expect("args");
        let config = Config::from_args(&a, &no_env, &|_| None).expect("config");
        let mut agent = Agent::new(&config, SystemTime::now).expect("agent");
        let published = Arc::new(Published::default());
        agent.published = Some(published.clone());
        (agent, published)
    }

    /// Every delivery's answer read `STATE-DIR/agent-id` to compare the
    /// server's ID with it. It is read (and written if it differs) only when
    /// the ID is not the one last saved.
    #[test]
    fn the_agent_id_file_is_read_only_when_the_servers_id_changes() {
        let (mut agent, _) = fixture_agent("debian12-vm");
        let dir = std::env::temp_dir().join(format!("pulse-agent-ack-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        agent.config.state_dir = dir.clone();
        let file = dir.join("agent-id");
        let ack = |id: &str| deliver::Ack {
            agent_id: Some(id.to_string()),
            server_version: None,
        };
        agent.host_ack(ack("one"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "one");
        // Not read again for the same ID: a changed file stays as it is.
        std::fs::write(&file, "edited").unwrap();
        agent.host_ack(ack("one"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "edited");
        agent.host_ack(ack("two"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "two");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The pretty `/report` (and `/status`, `/metrics`) was rendered by
    /// every cycle, asked for or not. A cycle keeps what it found; the page
    /// is rendered on the first request, and is the latest cycle's report.
    #[test]
    fn report_is_rendered_only_when_asked_and_shows_the_latest_cycle() {
        let (mut agent, published) = fixture_agent("debian12-vm");
        agent.cycle();
        let first = published.get();
        agent.cycle();
        let snap = published.get();
        for (what, s) in [("first", &first), ("second", &snap)] {
            let report = s.report.as_ref().expect("a report was built");
            assert!(!report.is_rendered(), "{what} cycle rendered /report");
            assert!(!s.status.is_rendered(), "{what} cycle rendered /status");
            assert!(!s.metrics.is_rendered(), "{what} cycle rendered /metrics");
        }
        let report = snap.report.as_ref().expect("a report was built");
        let doc: Value = serde_json::from_str(report.text()).expect("pretty JSON");
        let seq = doc["sequenceId"].as_str().expect("sequenceId");
        assert!(seq.ends_with(":2"), "not the second cycle's report: {seq}");
        assert_eq!(doc["host"]["hostname"], agent.identity.hostname.as_str());
        assert!(report.text().contains("\n  \""), "not pretty");
        assert!(report.is_rendered());
        // Rendered once, then answered from the same text.
        assert!(std::ptr::eq(report.text(), report.text()));
        // The status page is rendered from the same cycle.
        let status: Value = serde_json::from_str(snap.status.text()).expect("status JSON");
        assert_eq!(status["agent"]["id"], agent.agent_id.as_str());
        assert!(
            snap.metrics
                .text()
                .contains("pulse_agent_reports_built_total")
        );
    }

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
