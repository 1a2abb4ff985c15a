//! One docker collection: `/info`, `/containers/json?all=1`, one-shot stats
//! of the running and paused containers on a few threads, and inspect only
//! for containers that are new or changed.
//!
//! What dockerd pays per cycle: one `/info`, one list, one one-shot stats per
//! running container (the call that reads cgroups), and an inspect only when
//! a container's state, health or exit code changed, it restarted, or its
//! last inspect is older than [`INSPECT_MAX_AGE`]. Ports, mounts, labels and
//! networks come from the list. `/system/df`, `/images/json`, `/volumes` and
//! `/networks` are never called: no container field needs them, and
//! `/system/df` walks every layer on disk (see `contrib/bench/docker.rs`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::engine::{self, Engine, Runtime};
use crate::config::DockerRuntime;
use crate::remote_config::parse_rfc3339;

/// Per-call budgets (spec §6 "Docker cycle").
const INFO_TIMEOUT: Duration = Duration::from_secs(8);
const LIST_TIMEOUT: Duration = Duration::from_secs(20);
/// Stats and inspect of one container, together.
const CONTAINER_TIMEOUT: Duration = Duration::from_secs(15);
/// No container's stats start later than this into a collection; the rest
/// are reported without them (and a warning).
const START_BY: Duration = Duration::from_secs(20);
/// Stats calls made at once. dockerd answers a one-shot stats call at its
/// stats collector's next tick (once a second), whatever the number of
/// callers, so calls made together share one tick: 50 containers take about
/// a second, where 4 at a time took 13 (`cargo bench --bench docker`).
pub const PARALLEL: usize = 64;
/// An inspect result is reused at most this long.
pub const INSPECT_MAX_AGE: Duration = Duration::from_secs(300);
/// Answer caps: a list of thousands of containers fits; a stats or inspect
/// answer is a few KiB.
const LIST_CAP: u64 = 32 << 20;
const ITEM_CAP: u64 = 4 << 20;
/// Consecutive failed cycles before the endpoint is chosen again.
const RECONNECT_AFTER: u32 = 3;
/// At most this many healthcheck targets (spec §4.4).
const MAX_TARGETS: usize = 16;
/// More online CPUs than Linux can have (NR_CPUS tops out at 8192): a count
/// above this is not a count, and would scale a CPU % into nonsense.
const MAX_CPUS: u64 = 1 << 16;
/// 9999-12-31T23:59:59Z, the last instant an RFC 3339 time (and the
/// server's parser) can hold: a `Created` past it is not a time.
const MAX_UNIX_SECONDS: i64 = 253_402_300_799;
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "key",
    "token",
    "credential",
    "auth",
    "api_key",
    "apikey",
    "private",
    "access_token",
    "refresh_token",
    "database_url",
    "connection_string",
    "encryption",
];

#[derive(Debug, Clone)]
pub struct Settings {
    /// `--docker-socket`.
    pub socket: Option<PathBuf>,
    pub runtime: DockerRuntime,
    /// `DOCKER_API_VERSION`: no negotiation.
    pub api_version: Option<String>,
    /// DOCKER_HOST, CONTAINER_HOST, PODMAN_HOST, XDG_RUNTIME_DIR as read at start.
    pub env: HashMap<String, String>,
    pub uid: u32,
    pub user_agent: String,
}

impl Settings {
    pub fn from_env(socket: Option<PathBuf>, runtime: DockerRuntime, user_agent: &str) -> Settings {
        let env = [
            "DOCKER_HOST",
            "CONTAINER_HOST",
            "PODMAN_HOST",
            "XDG_RUNTIME_DIR",
        ]
        .iter()
        .filter_map(|k| {
            let v = std::env::var(k).ok()?;
            (!v.trim().is_empty()).then(|| (k.to_string(), v))
        })
        .collect();
        Settings {
            socket,
            runtime,
            api_version: std::env::var("DOCKER_API_VERSION")
                .ok()
                .filter(|v| !v.trim().is_empty()),
            env,
            uid: crate::sys::geteuid(),
            user_agent: user_agent.to_string(),
        }
    }

    pub fn candidates(&self) -> (Vec<PathBuf>, Vec<String>) {
        engine::candidates(
            self.runtime,
            self.socket.as_deref(),
            &|k| self.env.get(k).cloned(),
            self.uid,
        )
    }
}

/// What `/info` says that the report uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Info {
    pub name: String,
    pub os: String,
    pub server_version: String,
    pub kernel_version: String,
    pub architecture: String,
    pub ncpu: u64,
    pub mem_total: u64,
    pub authorization_plugins: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Port {
    pub private: u64,
    pub public: u64,
    pub protocol: String,
    pub ip: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Network {
    pub name: String,
    pub ipv4: String,
    pub ipv6: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub destination: String,
    pub mode: String,
    pub rw: bool,
    pub propagation: String,
    pub name: String,
    pub driver: String,
}

/// One container as reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub image: String,
    pub image_digest: String,
    /// Unix seconds.
    pub created: i64,
    pub state: String,
    pub status: String,
    pub health: String,
    pub healthcheck_targets: Vec<String>,
    pub cpu_percent: f64,
    pub memory_usage: u64,
    pub memory_limit: u64,
    pub memory_percent: f64,
    pub uptime_seconds: u64,
    pub restart_count: u64,
    pub exit_code: i64,
    pub oom_killed: bool,
    /// RFC 3339 as the engine gave it; empty when the zero time.
    pub started_at: String,
    pub finished_at: String,
    pub ports: Vec<Port>,
    pub labels: BTreeMap<String, String>,
    pub env: Vec<String>,
    pub networks: Vec<Network>,
    pub network_rx: u64,
    pub network_tx: u64,
    pub block_read: u64,
    pub block_write: u64,
    pub mounts: Vec<Mount>,
}

/// One collection.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub endpoint: String,
    pub api_version: String,
    pub runtime: Runtime,
    pub info: Info,
    pub containers: Vec<Container>,
    /// Containers left out or without stats, and why.
    pub warnings: Vec<String>,
    pub took: Duration,
    pub stats_calls: usize,
    pub inspect_calls: usize,
}

/// The inspect fields the report uses, kept between cycles.
#[derive(Debug, Clone, Default)]
struct Inspected {
    /// The list's state, health and exit code when this was read.
    key: String,
    at: Option<Instant>,
    health: String,
    targets: Vec<String>,
    restart_count: u64,
    exit_code: i64,
    oom_killed: bool,
    started_at: String,
    finished_at: String,
    started: Option<SystemTime>,
    env: Vec<String>,
}

/// The CPU counters of a container's previous stats.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuSample {
    total: u64,
    system: u64,
    online: u64,
    /// Seconds since the epoch of the stats' `read`.
    read: f64,
}

#[derive(Debug, Clone, Default)]
struct Stats {
    memory_usage: u64,
    memory_limit: u64,
    network_rx: u64,
    network_tx: u64,
    block_read: u64,
    block_write: u64,
    cpu: Option<CpuSample>,
    /// Podman's own percentage, when it sends one.
    podman_cpu: Option<f64>,
}

/// The docker collector, with what it keeps between cycles.
pub struct Docker {
    settings: Settings,
    engine: Option<(Engine, Runtime)>,
    failures: u32,
    cpu: HashMap<String, CpuSample>,
    inspected: HashMap<String, Inspected>,
    notes_logged: bool,
}

impl Docker {
    pub fn new(settings: Settings) -> Docker {
        Docker {
            settings,
            engine: None,
            failures: 0,
            cpu: HashMap::new(),
            inspected: HashMap::new(),
            notes_logged: false,
        }
    }

    /// The first candidate that answers `/_ping` and `/info` (and, with
    /// `--docker-runtime=docker`, is not Podman).
    fn connect(&mut self) -> Result<(), String> {
        let (paths, notes) = self.settings.candidates();
        if !self.notes_logged {
            notes.iter().for_each(|n| log::warn!("docker: {n}"));
            self.notes_logged = true;
        }
        let mut tried = Vec::new();
        for path in &paths {
            if self.settings.socket.is_none() && !path.exists() {
                continue;
            }
            let attempt = Engine::open(
                path,
                self.settings.api_version.as_deref(),
                &self.settings.user_agent,
            )
            .and_then(|e| {
                let info = e.get_json("/info", engine::PROBE_TIMEOUT, engine::INFO_CAP)?;
                Ok((e, info))
            });
            match attempt {
                Ok((e, info)) => {
                    let runtime = engine::detect_runtime(&e.endpoint, &info, self.settings.runtime);
                    if self.settings.runtime == DockerRuntime::Docker && runtime == Runtime::Podman
                    {
                        tried.push(format!(
                            "{} is Podman (--docker-runtime=docker)",
                            e.endpoint
                        ));
                        continue;
                    }
                    log::info!(
                        "docker: using {} ({} {}, API {})",
                        e.endpoint,
                        runtime.as_str(),
                        info.get("ServerVersion")
                            .and_then(Value::as_str)
                            .unwrap_or("?"),
                        e.api_version
                    );
                    self.engine = Some((e, runtime));
                    return Ok(());
                }
                Err(why) => tried.push(why),
            }
        }
        Err(match tried.is_empty() {
            true => format!(
                "no container engine socket: looked for {}",
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            false => tried.join("; "),
        })
    }

    /// One collection. A failed list fails it; a container whose stats or
    /// inspect fail is left out with a warning.
    pub fn collect(&mut self) -> Result<Snapshot, String> {
        let started = Instant::now();
        if self.engine.is_none() {
            self.connect()?;
        }
        match self.collect_from_engine(started) {
            Ok(s) => {
                self.failures = 0;
                Ok(s)
            }
            Err(e) => {
                self.failures += 1;
                if self.failures >= RECONNECT_AFTER {
                    // The daemon may have moved (a restart on another socket).
                    self.engine = None;
                    self.failures = 0;
                }
                Err(e)
            }
        }
    }

    fn collect_from_engine(&mut self, started: Instant) -> Result<Snapshot, String> {
        let (engine, _) = self.engine.as_ref().expect("invariant: connected above");
        let info_doc = engine.get_json("/info", INFO_TIMEOUT, engine::INFO_CAP)?;
        let runtime = engine::detect_runtime(&engine.endpoint, &info_doc, self.settings.runtime);
        let info = parse_info(&info_doc);
        let list = engine.get_json("/containers/json?all=1", LIST_TIMEOUT, LIST_CAP)?;
        let Value::Array(list) = list else {
            return Err(format!(
                "GET /containers/json on {}: not a list",
                engine.endpoint
            ));
        };
        let mut containers: Vec<Container> = list
            .iter()
            .filter_map(parse_list_entry)
            .filter(|c| !c.name.contains("_pulse_backup_"))
            .collect();
        containers.sort_by(|a, b| a.name.cmp(&b.name));

        let now = SystemTime::now();
        let jobs: Vec<Job> = containers
            .iter()
            .map(|c| {
                let cached = self.inspected.get(&c.id);
                Job {
                    id: c.id.clone(),
                    stats: matches!(c.state.as_str(), "running" | "paused"),
                    inspect: cached.is_none_or(|i| needs_inspect(c, i, now)),
                }
            })
            .collect();
        let results = run_jobs(engine, &jobs, started, runtime);

        let mut warnings = Vec::new();
        let (mut stats_calls, mut inspect_calls) = (0, 0);
        let mut kept = Vec::with_capacity(containers.len());
        for ((mut c, job), result) in containers.into_iter().zip(&jobs).zip(results) {
            stats_calls += usize::from(job.stats && result.attempted);
            inspect_calls += usize::from(job.inspect && result.attempted);
            if let Some(why) = result.error {
                warnings.push(format!("{}: {why}", c.name));
                if result.inspected.is_none() && !self.inspected.contains_key(&c.id) {
                    continue;
                }
            }
            if let Some(mut i) = result.inspected {
                i.key = inspect_key(&c);
                i.at = Some(Instant::now());
                self.inspected.insert(c.id.clone(), i);
            }
            let Some(i) = self.inspected.get(&c.id) else {
                continue;
            };
            apply_inspect(&mut c, i, now);
            if let Some(s) = result.stats {
                c.cpu_percent = cpu_percent(&mut self.cpu, &c.id, &s, runtime, info.ncpu);
                apply_stats(&mut c, &s);
            }
            kept.push(c);
        }
        forget_gone(&mut self.inspected, &mut self.cpu, &kept);
        Ok(Snapshot {
            endpoint: engine.endpoint.clone(),
            api_version: engine.api_version.clone(),
            runtime,
            info,
            containers: kept,
            warnings,
            took: started.elapsed(),
            stats_calls,
            inspect_calls,
        })
    }
}

/// Drops what is kept between cycles for containers no longer reported. A
/// set of the reported IDs: a scan of the list per cached container was
/// quadratic, minutes for a host with 100 000 containers.
fn forget_gone(
    inspected: &mut HashMap<String, Inspected>,
    cpu: &mut HashMap<String, CpuSample>,
    kept: &[Container],
) {
    let present: std::collections::HashSet<&str> = kept.iter().map(|c| c.id.as_str()).collect();
    inspected.retain(|id, _| present.contains(id.as_str()));
    cpu.retain(|id, _| present.contains(id.as_str()));
}

/// CPU % between this stats sample and the container's previous one
/// (spec §4.6); 0 the first time a container is seen.
fn cpu_percent(
    samples: &mut HashMap<String, CpuSample>,
    id: &str,
    s: &Stats,
    runtime: Runtime,
    ncpu: u64,
) -> f64 {
    if runtime == Runtime::Podman {
        if let Some(p) = s.podman_cpu {
            // Podman's own figure, of all CPUs: at most all of them busy.
            let cpus = Some(ncpu).filter(|n| (1..=MAX_CPUS).contains(n));
            return finite(p).min(cpus.unwrap_or(MAX_CPUS) as f64 * 100.0);
        }
    }
    let Some(cur) = s.cpu else {
        return 0.0;
    };
    let prev = samples.insert(id.to_string(), cur);
    prev.map_or(0.0, |p| cpu_between(p, cur, runtime, ncpu))
}

/// CPU % from two samples of one container.
fn cpu_between(prev: CpuSample, cur: CpuSample, runtime: Runtime, ncpu: u64) -> f64 {
    let d_total = if cur.total >= prev.total {
        cur.total - prev.total
    } else {
        // The counter went back (a restart): count from zero.
        cur.total
    } as f64;
    let online = [cur.online, prev.online, ncpu]
        .into_iter()
        .find(|n| (1..=MAX_CPUS).contains(n))
        .unwrap_or(1) as f64;
    let d_read = cur.read - prev.read;
    let pct = match runtime {
        Runtime::Docker if cur.system > prev.system => {
            d_total / (cur.system - prev.system) as f64 * online * 100.0
        }
        Runtime::Docker if d_read > 0.0 => d_total / (d_read * online * 1e9) * 100.0,
        Runtime::Podman if d_read > 0.0 => d_total / (d_read * 1e9) * 100.0,
        _ => 0.0,
    };
    // Counters from the engine that moved more than the CPUs can (a reset
    // system counter, hostile JSON) say nothing: at most every CPU busy
    // (Podman's figure is of one CPU, so a busy container of 4 reads 400).
    finite(pct).min(online * 100.0)
}

fn finite(v: f64) -> f64 {
    if v.is_finite() { v.max(0.0) } else { 0.0 }
}

/// What to fetch for one container.
struct Job {
    id: String,
    stats: bool,
    inspect: bool,
}

#[derive(Default)]
struct JobResult {
    attempted: bool,
    stats: Option<Stats>,
    inspected: Option<Inspected>,
    error: Option<String>,
}

/// Runs the jobs on up to [`PARALLEL`] threads; results in job order.
fn run_jobs(engine: &Engine, jobs: &[Job], started: Instant, runtime: Runtime) -> Vec<JobResult> {
    let results: Vec<Mutex<JobResult>> = jobs.iter().map(|_| Mutex::default()).collect();
    let todo: Vec<usize> = (0..jobs.len())
        .filter(|&i| jobs[i].stats || jobs[i].inspect)
        .collect();
    let next = AtomicUsize::new(0);
    let work = || {
        loop {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let Some(&i) = todo.get(n) else {
                return;
            };
            let r = match started.elapsed() < START_BY {
                true => run_job(engine, &jobs[i], runtime),
                false => JobResult {
                    error: Some(format!(
                        "not asked: the collection was already {} s old",
                        START_BY.as_secs()
                    )),
                    ..JobResult::default()
                },
            };
            *results[i].lock().unwrap_or_else(|p| p.into_inner()) = r;
        }
    };
    let threads = PARALLEL.min(todo.len());
    std::thread::scope(|s| {
        for _ in 1..threads {
            // Should a thread not start, the others (and this one) do its share.
            let _ = std::thread::Builder::new()
                .name("docker-stats".into())
                .stack_size(128 * 1024)
                .spawn_scoped(s, work);
        }
        work();
    });
    results
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect()
}

fn run_job(engine: &Engine, job: &Job, runtime: Runtime) -> JobResult {
    let deadline = Instant::now() + CONTAINER_TIMEOUT;
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut r = JobResult {
        attempted: true,
        ..JobResult::default()
    };
    if job.inspect {
        match engine.get_json(&format!("/containers/{}/json", job.id), left(), ITEM_CAP) {
            Ok(doc) => r.inspected = Some(parse_inspect(&doc)),
            Err(e) => {
                r.error = Some(e);
                return r;
            }
        }
    }
    if job.stats {
        let path = format!("/containers/{}/stats?stream=false&one-shot=true", job.id);
        match engine.get_json(&path, left(), ITEM_CAP) {
            Ok(doc) => r.stats = Some(parse_stats(&doc, runtime)),
            Err(e) => r.error = Some(e),
        }
    }
    r
}

fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

/// A count or byte counter: a JSON integer from 0 to `u64::MAX`, or a float
/// in that range (truncated). Anything else — negative, `1e300`, past
/// `u64::MAX`, not a number — is 0, the field's "absent", never a value
/// saturated or wrapped into a huge one.
fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(count).unwrap_or(0)
}

fn count(x: &Value) -> Option<u64> {
    // 2^64 as f64: every float below it converts exactly-or-truncated.
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    x.as_u64().or_else(|| {
        x.as_f64()
            .filter(|f| (0.0..LIMIT).contains(f))
            .map(|f| f as u64)
    })
}

/// [`u`] for a field the server decodes as a Go `int`/`int64`: a value past
/// `i64::MAX` would make the whole report undecodable, so it is 0 (absent).
fn i(v: &Value, k: &str) -> u64 {
    Some(u(v, k))
        .filter(|&n| i64::try_from(n).is_ok())
        .unwrap_or(0)
}

/// A TCP/UDP port, or 0 when the value is not one.
fn port(v: &Value, k: &str) -> u64 {
    Some(u(v, k)).filter(|&p| p <= 65_535).unwrap_or(0)
}

pub fn parse_info(v: &Value) -> Info {
    let mut plugins: Vec<String> = v
        .pointer("/Plugins/Authorization")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default();
    plugins.sort();
    plugins.dedup();
    Info {
        name: s(v, "Name"),
        os: s(v, "OperatingSystem"),
        server_version: s(v, "ServerVersion"),
        kernel_version: s(v, "KernelVersion"),
        architecture: s(v, "Architecture"),
        ncpu: i(v, "NCPU"),
        mem_total: i(v, "MemTotal"),
        authorization_plugins: plugins,
    }
}

/// One entry of `/containers/json`; `None` without an ID.
pub fn parse_list_entry(v: &Value) -> Option<Container> {
    let id = s(v, "Id");
    if id.is_empty() {
        return None;
    }
    let name = v
        .get("Names")
        .and_then(Value::as_array)
        .and_then(|n| n.first())
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim_start_matches('/')
        .to_string();
    let labels = v
        .get("Labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    let ports = v
        .get("Ports")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| Port {
                    private: port(p, "PrivatePort"),
                    public: port(p, "PublicPort"),
                    protocol: s(p, "Type"),
                    ip: s(p, "IP"),
                })
                .collect()
        })
        .unwrap_or_default();
    let mut networks: Vec<Network> = v
        .pointer("/NetworkSettings/Networks")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(name, n)| Network {
                    name: name.clone(),
                    ipv4: s(n, "IPAddress"),
                    ipv6: s(n, "GlobalIPv6Address"),
                })
                .collect()
        })
        .unwrap_or_default();
    networks.sort_by(|a, b| a.name.cmp(&b.name));
    let mounts = v
        .get("Mounts")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|m| Mount {
                    kind: s(m, "Type"),
                    source: s(m, "Source"),
                    destination: s(m, "Destination"),
                    mode: s(m, "Mode"),
                    rw: m.get("RW").and_then(Value::as_bool).unwrap_or(false),
                    propagation: s(m, "Propagation"),
                    name: s(m, "Name"),
                    driver: s(m, "Driver"),
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Container {
        id,
        name,
        image: s(v, "Image"),
        image_digest: s(v, "ImageID"),
        // Rendered as an RFC 3339 time: only seconds that make one.
        created: v
            .get("Created")
            .and_then(Value::as_i64)
            .filter(|t| (0..=MAX_UNIX_SECONDS).contains(t))
            .unwrap_or(0),
        state: s(v, "State").to_ascii_lowercase(),
        status: s(v, "Status"),
        ports,
        labels,
        networks,
        mounts,
        ..Container::default()
    })
}

/// The inspect fields the report uses.
fn parse_inspect(v: &Value) -> Inspected {
    let st = v.get("State").cloned().unwrap_or_default();
    // Passed on as the engine wrote them, so only text that is a time: the
    // server parses it, and one bad time would make it refuse the report.
    let time = |k: &str| {
        let t = s(&st, k);
        if t.starts_with("0001-01-01") || parse_rfc3339(&t).is_none() {
            String::new()
        } else {
            t
        }
    };
    let started_at = time("StartedAt");
    let test = crate::deliver::json_strings(v.pointer("/Config/Healthcheck/Test"));
    let env = v
        .pointer("/Config/Env")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(mask_env).collect())
        .unwrap_or_default();
    Inspected {
        health: st
            .pointer("/Health/Status")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        targets: healthcheck_targets(&test),
        restart_count: i(v, "RestartCount"),
        exit_code: st.get("ExitCode").and_then(Value::as_i64).unwrap_or(0),
        oom_killed: st
            .get("OOMKilled")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        started: parse_rfc3339(&started_at),
        started_at,
        finished_at: time("FinishedAt"),
        env,
        ..Inspected::default()
    }
}

fn parse_stats(v: &Value, runtime: Runtime) -> Stats {
    let mem = v.get("memory_stats").cloned().unwrap_or_default();
    let mut usage = i(&mem, "usage");
    if let Some(m) = mem.get("stats") {
        // cgroup v1 has `cache`; v2 has `inactive_file`.
        let cache = if m.get("cache").is_some() {
            u(m, "cache")
        } else {
            u(m, "inactive_file")
        };
        if cache < usage {
            usage -= cache;
        }
    }
    let (mut rx, mut tx) = (0u64, 0u64);
    if let Some(nets) = v.get("networks").and_then(Value::as_object) {
        for n in nets.values() {
            rx = rx.saturating_add(u(n, "rx_bytes"));
            tx = tx.saturating_add(u(n, "tx_bytes"));
        }
    }
    let (mut read, mut write) = (0u64, 0u64);
    if let Some(io) = v
        .pointer("/blkio_stats/io_service_bytes_recursive")
        .and_then(Value::as_array)
    {
        for e in io {
            match s(e, "op").to_ascii_lowercase().as_str() {
                "read" => read = read.saturating_add(u(e, "value")),
                "write" => write = write.saturating_add(u(e, "value")),
                _ => {}
            }
        }
    }
    let cpu = v.get("cpu_stats");
    let sample = cpu.and_then(|c| {
        let total = c.pointer("/cpu_usage/total_usage")?.as_u64()?;
        // Not a count of CPUs (0, or past MAX_CPUS): the per-CPU list's
        // length, else the caller's fallback.
        let online = match u(c, "online_cpus") {
            n @ 1..=MAX_CPUS => n,
            _ => c
                .pointer("/cpu_usage/percpu_usage")
                .and_then(Value::as_array)
                .map_or(0, |a| a.len() as u64)
                .min(MAX_CPUS),
        };
        let read = parse_rfc3339(v.get("read")?.as_str()?)?
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        Some(CpuSample {
            total,
            system: u(c, "system_cpu_usage"),
            online,
            read,
        })
    });
    Stats {
        memory_usage: usage,
        memory_limit: i(&mem, "limit"),
        network_rx: rx,
        network_tx: tx,
        block_read: read,
        block_write: write,
        cpu: sample,
        podman_cpu: match runtime {
            Runtime::Podman => cpu.and_then(|c| c.get("cpu")).and_then(Value::as_f64),
            Runtime::Docker => None,
        },
    }
}

fn apply_inspect(c: &mut Container, i: &Inspected, now: SystemTime) {
    c.health = i.health.clone();
    c.healthcheck_targets = i.targets.clone();
    c.restart_count = i.restart_count;
    c.exit_code = i.exit_code;
    c.oom_killed = i.oom_killed;
    c.env = i.env.clone();
    c.started_at = i.started_at.clone();
    let running = matches!(c.state.as_str(), "running" | "paused");
    if !running {
        c.finished_at = i.finished_at.clone();
    }
    if running {
        c.uptime_seconds = i
            .started
            .and_then(|t| now.duration_since(t).ok())
            .map_or(0, |d| d.as_secs());
    }
}

fn apply_stats(c: &mut Container, s: &Stats) {
    c.memory_usage = s.memory_usage;
    c.memory_limit = s.memory_limit;
    c.memory_percent = match s.memory_limit {
        0 => 0.0,
        // Usage past the limit is not memory a container can hold.
        l => finite(s.memory_usage as f64 / l as f64 * 100.0).min(100.0),
    };
    c.network_rx = s.network_rx;
    c.network_tx = s.network_tx;
    c.block_read = s.block_read;
    c.block_write = s.block_write;
}

/// One container from the engine's documents, as a collection builds it: a
/// list entry, its inspect, and its stats (successive samples, so the last
/// one's CPU % is against the one before). Pure: for tests and fuzzing the
/// whole container path with hostile JSON. `None` without an ID.
pub fn container_from_documents(
    list_entry: &Value,
    inspect: &Value,
    stats: &[Value],
    runtime: Runtime,
    ncpu: u64,
    now: SystemTime,
) -> Option<Container> {
    let mut c = parse_list_entry(list_entry)?;
    let mut i = parse_inspect(inspect);
    i.key = inspect_key(&c);
    apply_inspect(&mut c, &i, now);
    let mut samples = HashMap::new();
    for doc in stats {
        let s = parse_stats(doc, runtime);
        c.cpu_percent = cpu_percent(&mut samples, &c.id, &s, runtime, ncpu);
        apply_stats(&mut c, &s);
    }
    Some(c)
}

/// The parts of a list entry that, when they change, make a cached inspect
/// stale: the state and everything in parentheses in the status (health,
/// exit code, "Paused").
fn inspect_key(c: &Container) -> String {
    let mut key = c.state.clone();
    let mut rest = c.status.as_str();
    while let Some(open) = rest.find('(') {
        let Some(close) = rest[open..].find(')') else {
            break;
        };
        key.push('|');
        key.push_str(&rest[open..open + close + 1]);
        rest = &rest[open + close + 1..];
    }
    key
}

fn needs_inspect(c: &Container, i: &Inspected, now: SystemTime) -> bool {
    if i.key != inspect_key(c) || i.at.is_none_or(|t| t.elapsed() >= INSPECT_MAX_AGE) {
        return true;
    }
    // Still "Up", but for less time than the cached start implies: it restarted.
    match (c.state.as_str(), i.started, up_at_most(&c.status)) {
        ("running" | "paused", Some(started), Some(max)) => {
            now.duration_since(started).unwrap_or_default()
                > max.saturating_add(Duration::from_secs(2))
        }
        _ => false,
    }
}

/// The longest uptime an `Up …` status can stand for (Docker's
/// `HumanDuration` buckets); `None` when the text is not one.
pub fn up_at_most(status: &str) -> Option<Duration> {
    let text = status.strip_prefix("Up ")?;
    let text = text.split(" (").next().unwrap_or(text).trim();
    const MIN: u64 = 60;
    const HOUR: u64 = 3600;
    const DAY: u64 = 86_400;
    let secs = match text {
        "Less than a second" => 1,
        "About a minute" => 2 * MIN,
        "About an hour" => HOUR + HOUR / 2,
        _ => {
            let (n, unit) = text.split_once(' ')?;
            let n: u64 = n.parse().ok()?;
            // The number is the engine's: checked arithmetic, and a span that
            // does not fit is not a status (`Up 99999999999 years`).
            let (bucket, scale, extra) = match unit.trim_end_matches('s') {
                "second" => (n.checked_add(1)?, 1, 0),
                "minute" => (n.checked_add(1)?, MIN, 0),
                "hour" => (n, HOUR, HOUR / 2),
                "day" => (n.checked_add(1)?, DAY, 0),
                "week" => (n.checked_add(1)?, 7 * DAY, 0),
                "month" => (n.checked_add(1)?, 30 * DAY, 0),
                "year" => (n.checked_add(1)?, 366 * DAY, 0),
                _ => return None,
            };
            bucket.checked_mul(scale)?.checked_add(extra)?
        }
    };
    Some(Duration::from_secs(secs))
}

/// `NAME=value` with the value replaced by `***` when the name looks secret.
pub fn mask_env(e: &str) -> String {
    let Some((name, value)) = e.split_once('=') else {
        return e.to_string();
    };
    let lower = name.to_ascii_lowercase();
    if !value.is_empty() && SECRET_WORDS.iter().any(|w| lower.contains(w)) {
        return format!("{name}=***");
    }
    e.to_string()
}

/// Host names of the `http(s)://` URLs in a healthcheck, lower case, without
/// paths or queries, at most [`MAX_TARGETS`].
pub fn healthcheck_targets(test: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in test {
        let lower = part.to_ascii_lowercase();
        let mut rest = lower.as_str();
        while let Some(i) = rest.find("http") {
            let after = &rest[i..];
            let tail = after
                .strip_prefix("https://")
                .or_else(|| after.strip_prefix("http://"));
            rest = &after[4..];
            let Some(tail) = tail else {
                continue;
            };
            let authority: &str = tail
                .split(|c: char| {
                    matches!(c, '/' | '?' | '#' | '"' | '\'' | '`') || c.is_whitespace()
                })
                .next()
                .unwrap_or("");
            let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let host = if let Some(v6) = authority.strip_prefix('[') {
                v6.split(']').next().unwrap_or("")
            } else {
                authority.split(':').next().unwrap_or("")
            };
            let ok = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
            if ok && !out.iter().any(|h| h == host) && out.len() < MAX_TARGETS {
                out.push(host.to_string());
            }
        }
    }
    out
}

/// The `podman` object's fields from a container's labels (spec §4.4).
pub fn podman_labels(labels: &BTreeMap<String, String>) -> Vec<(&'static str, String)> {
    let map: &[(&str, &[&str])] = &[
        ("podName", &["io.podman.annotations.pod.name"]),
        ("podId", &["io.podman.annotations.pod.id"]),
        ("infra", &["io.podman.annotations.pod.infra"]),
        ("composeProject", &["io.podman.compose.project"]),
        ("composeService", &["io.podman.compose.service"]),
        ("composeWorkdir", &["io.podman.compose.working_dir"]),
        ("composeConfigHash", &["io.podman.compose.config-hash"]),
        ("autoUpdatePolicy", &["io.containers.autoupdate"]),
        ("autoUpdateRestart", &["io.containers.autoupdate.restart"]),
        (
            "userNamespace",
            &["io.podman.annotations.userns", "io.containers.userns"],
        ),
    ];
    map.iter()
        .filter_map(|(field, keys)| {
            keys.iter()
                .find_map(|k| labels.get(*k).map(|v| v.trim()).filter(|v| !v.is_empty()))
                .map(|v| (*field, v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A running container's inspect, read just now, started an hour before `now`.
    fn inspected_running_for_an_hour(now: SystemTime) -> Inspected {
        Inspected {
            key: "running".into(),
            at: Some(Instant::now()),
            started: Some(now - Duration::from_secs(3600)),
            ..Inspected::default()
        }
    }

    #[test]
    fn cpu_percent_follows_the_spec() {
        let a = CpuSample {
            total: 1_000_000_000,
            system: 100_000_000_000,
            online: 2,
            read: 100.0,
        };
        let b = CpuSample {
            total: 2_000_000_000,
            system: 102_000_000_000,
            online: 2,
            read: 101.0,
        };
        // 1 s of CPU over 2 s of system time (both CPUs) × 2 CPUs = 100 %.
        assert!((cpu_between(a, b, Runtime::Docker, 0) - 100.0).abs() < 1e-9);
        // No system counter: by wall time.
        let (a0, b0) = (CpuSample { system: 0, ..a }, CpuSample { system: 0, ..b });
        assert!((cpu_between(a0, b0, Runtime::Docker, 0) - 50.0).abs() < 1e-9);
        // Podman: of one CPU.
        assert!((cpu_between(a, b, Runtime::Podman, 0) - 100.0).abs() < 1e-9);
        // A restart: the counter went back, count from zero.
        let r = CpuSample {
            total: 500_000_000,
            ..b
        };
        assert!((cpu_between(a, r, Runtime::Docker, 0) - 50.0).abs() < 1e-9);
        // Nothing moved.
        assert_eq!(cpu_between(a, a, Runtime::Docker, 4), 0.0);
        // Podman: two CPUs busy for a second is 200 % (not cut at one CPU).
        let two = CpuSample {
            total: 3_000_000_000,
            ..b
        };
        assert!((cpu_between(a, two, Runtime::Podman, 0) - 200.0).abs() < 1e-9);
    }

    #[test]
    fn secrets_in_the_environment_are_masked() {
        assert_eq!(mask_env("DB_PASSWORD=hunter2"), "DB_PASSWORD=***");
        assert_eq!(mask_env("Api_Key=abc"), "Api_Key=***");
        assert_eq!(mask_env("MONKEY=banana"), "MONKEY=***", "contains 'key'");
        assert_eq!(mask_env("TOKEN="), "TOKEN=");
        assert_eq!(mask_env("PATH=/usr/bin"), "PATH=/usr/bin");
        assert_eq!(mask_env("NOEQUALS"), "NOEQUALS");
    }

    #[test]
    fn healthcheck_targets_are_hosts_only() {
        let t = healthcheck_targets(&[
            "CMD-SHELL".into(),
            "curl -f http://LocalHost:8080/health?x=1 && wget -q https://user:pw@api.example.com/ping || exit 1".into(),
            "curl http://[::1]:80/ http://localhost/again httpx://no".into(),
        ]);
        assert_eq!(t, ["localhost", "api.example.com", "::1"]);
        let many: Vec<String> = (0..40).map(|i| format!("http://h{i}/")).collect();
        assert_eq!(healthcheck_targets(&many).len(), 16);
    }

    #[test]
    fn up_durations_bound_the_uptime() {
        let m = |s| up_at_most(s).map(|d| d.as_secs());
        assert_eq!(m("Up 5 seconds"), Some(6));
        assert_eq!(m("Up Less than a second"), Some(1));
        assert_eq!(m("Up About a minute (healthy)"), Some(120));
        assert_eq!(m("Up 3 hours (Paused)"), Some(3 * 3600 + 1800));
        assert_eq!(m("Up 2 days"), Some(3 * 86_400));
        assert_eq!(m("Exited (0) 3 minutes ago"), None);
        assert_eq!(m("Up forever"), None);
    }

    /// Fuzzing: `(n + 1) * 366 * DAY` overflowed on a huge `Up N years`,
    /// and `max + 2 s` on a status near `u64::MAX` seconds (both panics).
    #[test]
    fn up_at_most_with_a_huge_number_is_none_not_an_overflow() {
        let m = |s| up_at_most(s).map(|d| d.as_secs());
        assert_eq!(m("Up 18446744073709551615 seconds"), None);
        assert_eq!(m("Up 18446744073709551615 hours"), None);
        assert_eq!(m("Up 99999999999999 years"), None);
        assert_eq!(m("Up 999999999999 years (healthy)"), None);
        assert_eq!(m("Up 99999999999999999999 weeks"), None, "past u64");
        assert_eq!(
            m("Up 99999999999 years"),
            Some(100_000_000_000 * 366 * 86_400)
        );
        assert_eq!(m("Up 18446744073709551614 seconds"), Some(u64::MAX));
        let now = SystemTime::now();
        let i = inspected_running_for_an_hour(now);
        for status in [
            "Up 18446744073709551614 seconds",
            "Up 18446744073709551613 seconds",
            "Up 99999999999 years",
        ] {
            let c = Container {
                state: "running".into(),
                status: status.into(),
                ..Container::default()
            };
            assert!(!needs_inspect(&c, &i, now), "{status}");
        }
    }

    /// The fuzzer's container documents: numbers past every range, negative,
    /// 1e300, zero deltas. Nothing panics, and no field the server reads as
    /// a Go int64 gets a value past `i64::MAX` (which would make it refuse
    /// the whole report), nor a percentage more than the CPUs or the limit
    /// allow; a nonsensical number is left out (0).
    #[test]
    fn hostile_numbers_in_container_json_are_left_out_not_wrapped() {
        let list: Value = serde_json::from_str(
            r#"{"Id": "abc", "Names": ["/x"], "Created": 1e300, "State": "running",
            "Status": "Up 18446744073709551615 years",
            "Ports": [{"PrivatePort": 1e300, "PublicPort": -1},
                      {"PrivatePort": 70000, "PublicPort": 18446744073709551616}]}"#,
        )
        .unwrap();
        let inspect = json!({"RestartCount": 1e300, "State": {"ExitCode": -9223372036854775808i64,
            "StartedAt": "2026-11-22T16:14:07+1é00", "FinishedAt": "not a time"}});
        let stats = |total: f64, system: f64, read: &str| {
            json!({"read": read,
                "memory_stats": {"usage": 1e300, "limit": 1, "stats": {"cache": -5}},
                "networks": {"a": {"rx_bytes": 18446744073709551615u64, "tx_bytes": 1e300},
                             "b": {"rx_bytes": 18446744073709551615u64, "tx_bytes": -1}},
                "blkio_stats": {"io_service_bytes_recursive": [
                    {"op": "read", "value": 18446744073709551615u64}, {"op": "Read", "value": 7},
                    {"op": "write", "value": 1e300}]},
                "cpu_stats": {"cpu_usage": {"total_usage": total, "percpu_usage": []},
                    "system_cpu_usage": system, "online_cpus": 1e300}})
        };
        let samples = [
            stats(0.0, 5.0, "2026-11-22T16:14:07Z"),
            stats(1e19, 5.0, "2026-11-22T16:14:08Z"),
            stats(1.8e19, 6.0, "2026-11-22T16:14:07Z"),
        ];
        let now = SystemTime::now();
        for runtime in [Runtime::Docker, Runtime::Podman] {
            for ncpu in [0, 4, u64::MAX] {
                for n in 0..=samples.len() {
                    let c = container_from_documents(
                        &list,
                        &inspect,
                        &samples[..n],
                        runtime,
                        ncpu,
                        now,
                    )
                    .unwrap();
                    assert_eq!(c.created, 0);
                    assert_eq!(c.restart_count, 0);
                    assert_eq!((c.ports[0].private, c.ports[0].public), (0, 0));
                    assert_eq!((c.ports[1].private, c.ports[1].public), (0, 0));
                    assert_eq!((c.started_at.as_str(), c.finished_at.as_str()), ("", ""));
                    assert_eq!(c.uptime_seconds, 0);
                    let int64 = [c.memory_usage, c.memory_limit, c.uptime_seconds];
                    assert!(int64.iter().all(|&v| i64::try_from(v).is_ok()), "{c:?}");
                    assert!(c.cpu_percent.is_finite() && c.cpu_percent >= 0.0);
                    assert!(c.cpu_percent <= 100.0 * 4.0, "{}", c.cpu_percent);
                    assert!((0.0..=100.0).contains(&c.memory_percent), "{c:?}");
                    if n > 0 {
                        assert_eq!((c.memory_usage, c.memory_limit), (0, 1));
                        assert_eq!((c.network_rx, c.network_tx), (u64::MAX, 0));
                        assert_eq!((c.block_read, c.block_write), (u64::MAX, 0));
                    }
                }
            }
        }
        // A Podman figure of 1e300 % is at most every CPU busy.
        let podman = json!({"cpu_stats": {"cpu": 1e300}});
        let c = container_from_documents(&list, &inspect, &[podman], Runtime::Podman, 2, now);
        assert_eq!(c.unwrap().cpu_percent, 200.0);
        // Info: counts past i64 are left out.
        let info = parse_info(&json!({"NCPU": 1e300, "MemTotal": 18446744073709551615u64}));
        assert_eq!((info.ncpu, info.mem_total), (0, 0));
    }

    /// Forgetting gone containers scanned the kept list once per cached
    /// container: quadratic. 100 000 containers, half of them gone, within a
    /// generous deadline (a hang check, not a speed target).
    #[test]
    fn forgetting_many_gone_containers_is_not_quadratic() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let n = 100_000;
            let ids: Vec<String> = (0..n).map(|i| format!("{i:064x}")).collect();
            let mut inspected: HashMap<String, Inspected> = ids
                .iter()
                .map(|id| (id.clone(), Inspected::default()))
                .collect();
            let sample = CpuSample {
                total: 0,
                system: 0,
                online: 1,
                read: 0.0,
            };
            let mut cpu: HashMap<String, CpuSample> =
                ids.iter().map(|id| (id.clone(), sample)).collect();
            let kept: Vec<Container> = ids
                .iter()
                .step_by(2)
                .map(|id| Container {
                    id: id.clone(),
                    ..Container::default()
                })
                .collect();
            forget_gone(&mut inspected, &mut cpu, &kept);
            let _ = tx.send((inspected.len(), cpu.len(), inspected.contains_key(&ids[1])));
        });
        let got = rx.recv_timeout(Duration::from_secs(20));
        assert_eq!(got, Ok((50_000, 50_000, false)), "hung or wrong");
    }

    /// The ordinary path still gives the ordinary numbers.
    #[test]
    fn container_from_documents_matches_a_collection() {
        let list = json!({"Id": "abc", "Names": ["/web"], "Created": 1_700_000_000,
            "State": "running", "Status": "Up 2 hours", "Ports": [{"PrivatePort": 80, "PublicPort": 8080}]});
        let inspect = json!({"RestartCount": 2, "State": {"ExitCode": 0,
            "StartedAt": "2026-11-22T14:14:07.5Z", "FinishedAt": "0001-01-01T00:00:00Z"}});
        let stats = |total: u64, system: u64, read: &str| {
            json!({"read": read, "memory_stats": {"usage": 3000, "limit": 4000, "stats": {"inactive_file": 1000}},
                "cpu_stats": {"cpu_usage": {"total_usage": total}, "system_cpu_usage": system, "online_cpus": 2}})
        };
        let now = parse_rfc3339("2026-11-22T16:14:07.5Z").unwrap();
        let c = container_from_documents(
            &list,
            &inspect,
            &[
                stats(1_000_000_000, 100_000_000_000, "2026-11-22T16:14:06Z"),
                stats(2_000_000_000, 102_000_000_000, "2026-11-22T16:14:07Z"),
            ],
            Runtime::Docker,
            2,
            now,
        )
        .unwrap();
        assert_eq!(
            (c.created, c.restart_count, c.uptime_seconds),
            (1_700_000_000, 2, 7200)
        );
        assert_eq!((c.memory_usage, c.memory_limit), (2000, 4000));
        assert!((c.memory_percent - 50.0).abs() < 1e-9);
        assert!((c.cpu_percent - 100.0).abs() < 1e-9);
        assert_eq!(c.started_at, "2026-11-22T14:14:07.5Z");
        assert_eq!((c.ports[0].private, c.ports[0].public), (80, 8080));
    }

    #[test]
    fn the_inspect_key_changes_with_state_health_and_exit_code() {
        let c = |state: &str, status: &str| Container {
            state: state.into(),
            status: status.into(),
            ..Container::default()
        };
        assert_eq!(
            inspect_key(&c("running", "Up 5 seconds (healthy)")),
            "running|(healthy)"
        );
        assert_eq!(
            inspect_key(&c("running", "Up 5 seconds (healthy)")),
            inspect_key(&c("running", "Up 3 hours (healthy)"))
        );
        assert_ne!(
            inspect_key(&c("exited", "Exited (0) 1 second ago")),
            inspect_key(&c("exited", "Exited (1) 1 second ago"))
        );
        // A restart hidden behind the same state is caught by the Up time.
        let now = SystemTime::now();
        let i = inspected_running_for_an_hour(now);
        assert!(needs_inspect(&c("running", "Up 5 seconds"), &i, now));
        assert!(!needs_inspect(&c("running", "Up About an hour"), &i, now));
    }

    #[test]
    fn stats_memory_network_and_block_io() {
        let v1 = json!({"read": "2026-11-22T16:14:12.5Z",
            "memory_stats": {"usage": 10_000, "limit": 40_000, "stats": {"cache": 4_000}},
            "networks": {"eth0": {"rx_bytes": 5, "tx_bytes": 7}, "eth1": {"rx_bytes": 1, "tx_bytes": 1}},
            "blkio_stats": {"io_service_bytes_recursive": [
                {"op": "Read", "value": 100}, {"op": "Write", "value": 50}, {"op": "read", "value": 1}, {"op": "Total", "value": 151}]},
            "cpu_stats": {"cpu_usage": {"total_usage": 5, "percpu_usage": [2, 3]}, "system_cpu_usage": 9}});
        let s = parse_stats(&v1, Runtime::Docker);
        assert_eq!((s.memory_usage, s.memory_limit), (6_000, 40_000));
        assert_eq!(
            (s.network_rx, s.network_tx, s.block_read, s.block_write),
            (6, 8, 101, 50)
        );
        let cpu = s.cpu.unwrap();
        assert_eq!((cpu.total, cpu.system, cpu.online), (5, 9, 2));
        let v2 = json!({"memory_stats": {"usage": 10_000, "limit": 0, "stats": {"inactive_file": 20_000}},
            "blkio_stats": {"io_service_bytes_recursive": null}});
        let s = parse_stats(&v2, Runtime::Docker);
        assert_eq!(
            s.memory_usage, 10_000,
            "inactive_file larger than usage is not taken off"
        );
        assert!(s.cpu.is_none());
        let junk = parse_stats(&json!([1, 2]), Runtime::Podman);
        assert_eq!(junk.memory_usage, 0);
    }

    #[test]
    fn list_entries_and_inspect() {
        let e = json!({"Id": "abc", "Names": ["/web"], "Image": "nginx:1", "ImageID": "sha256:1",
            "Created": 1_700_000_000, "State": "running", "Status": "Up 2 hours",
            "Ports": [{"PrivatePort": 80, "PublicPort": 8080, "Type": "tcp", "IP": "0.0.0.0"}],
            "Labels": {"a": "b"}, "NetworkSettings": {"Networks": {"z": {"IPAddress": "10.0.0.2"}, "a": {"GlobalIPv6Address": "fd00::2"}}},
            "Mounts": [{"Type": "bind", "Source": "/s", "Destination": "/d", "Mode": "ro", "RW": false, "Propagation": "rprivate"}]});
        let c = parse_list_entry(&e).unwrap();
        assert_eq!(
            (c.name.as_str(), c.created, c.ports[0].public),
            ("web", 1_700_000_000, 8080)
        );
        assert_eq!(
            c.networks
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "z"]
        );
        assert_eq!(c.mounts[0].destination, "/d");
        assert!(parse_list_entry(&json!({"Names": ["/x"]})).is_none());
        let i = parse_inspect(
            &json!({"RestartCount": 3, "State": {"ExitCode": 137, "OOMKilled": true,
            "StartedAt": "2026-11-22T16:14:07.1Z", "FinishedAt": "0001-01-01T00:00:00Z",
            "Health": {"Status": "unhealthy"}}, "Config": {"Env": ["A=1", "SECRET=x"],
            "Healthcheck": {"Test": ["CMD", "wget", "http://db:5432"]}}}),
        );
        assert_eq!((i.restart_count, i.exit_code, i.oom_killed), (3, 137, true));
        assert_eq!(
            (i.health.as_str(), i.finished_at.as_str()),
            ("unhealthy", "")
        );
        assert_eq!(i.env, ["A=1", "SECRET=***"]);
        assert_eq!(i.targets, ["db"]);
        assert!(i.started.is_some());
    }

    #[test]
    fn podman_fields_come_from_labels() {
        let mut l = BTreeMap::new();
        l.insert(
            "io.podman.annotations.pod.name".to_string(),
            "pod1".to_string(),
        );
        l.insert("io.containers.userns".to_string(), "keep-id".to_string());
        l.insert("io.podman.compose.project".to_string(), " ".to_string());
        assert_eq!(
            podman_labels(&l),
            [
                ("podName", "pod1".to_string()),
                ("userNamespace", "keep-id".to_string())
            ]
        );
    }
}
