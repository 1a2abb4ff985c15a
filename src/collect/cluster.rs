//! Cluster sensors (`clusterSensors[]`, `spec/pulse-collectors.md` §3.5):
//! the temperatures of this Proxmox VE node's cluster peers, with
//! `--enable-proxmox`.
//!
//! The stock agent runs `ssh -o StrictHostKeyChecking=no root@<peer>` with
//! root's key. This one asks the local `pulse-sensor-proxy` instead
//! (`spec/pulse-sensor-proxy.md` §2): one `get_temperature` request per peer
//! on its Unix socket. The proxy holds the SSH key and the peers' pinned host
//! keys, so this process runs no ssh, reads no key and never accepts a host
//! key blindly.
//!
//! Peers come from `pvesh get /cluster/status --output-format json`: nodes
//! that are not this one (`local != 1`), are online and have an IP. At most
//! [`PARALLEL`] requests are in flight (the proxy refuses a third from the
//! same user), each within [`PER_PEER`], all within [`BUDGET`]. A peer's
//! answer is `sensors -j` output or the installer wrapper's
//! `{"sensors": {...}, "smart": [...]}`; either goes through this host's
//! `sensors -j` parser and key mapping ([`hwmon`]), and a peer with no
//! temperature is left out, as the stock agent does.
//!
//! When the proxy is not there or does not answer, no cluster sensors are
//! sent, the module status says why, and the next attempt waits 30 s,
//! doubling to 5 minutes, until one works. A peer the proxy refuses
//! (validator, SSH, no sensors) is named in the status and asked again next
//! cycle, not within this one. Nothing here asks the local node (its sensors
//! are `sensors`), or retries a request.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::collect::hwmon;
use crate::exec::{self, Stuck};
use crate::root::Root;
use crate::worker::{Ticket, Worker};

/// The module's name in `agent.modules[]`, `/status` and the collectors.
pub const MODULE: &str = "cluster-sensors";
/// One run: discovery and every peer (the stock agent's budget).
pub const BUDGET: Duration = Duration::from_secs(15);
/// One peer's request.
pub const PER_PEER: Duration = Duration::from_secs(8);
/// Requests in flight at once: the proxy's per-caller concurrency (§4).
pub const PARALLEL: usize = 2;
/// The proxy's usual sockets, on the host and inside a container (§13).
pub const SOCKETS: [&str; 2] = [
    "/run/pulse-sensor-proxy/pulse-sensor-proxy.sock",
    "/mnt/pulse-proxy/pulse-sensor-proxy.sock",
];
/// Cap on one reply. The proxy passes up to 1 MiB of a peer's output, as
/// a JSON string inside its reply: escaping (`"` → `\"`) makes that longer,
/// so the cap leaves room for it.
pub const REPLY_CAP: usize = 4 * 1024 * 1024;
const BACKOFF_FIRST: Duration = Duration::from_secs(30);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const PVESH_DIRS: &[&str] = &["/usr/bin", "/usr/sbin", "/bin", "/sbin"];
pub const PVESH_ARGS: [&str; 4] = ["get", "/cluster/status", "--output-format", "json"];

/// A remote cluster member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub ip: String,
}

/// One peer's readings (`clusterSensors[]` entry).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSensors {
    /// The peer's name, lowercased.
    pub node: String,
    pub readings: hwmon::Readings,
    pub collected_at: SystemTime,
}

/// The class of a `success:false` answer (`spec/pulse-sensor-proxy.md` §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The node validator or the allow-list refused the node.
    Node,
    /// The proxy's rate limiter.
    RateLimit,
    /// This process is not allowed to ask.
    Auth,
    /// Reaching the peer failed.
    Ssh,
    /// The peer answered without sensor data.
    Sensor,
    Other,
}

/// Why `get_temperature` gave no answer.
#[derive(Debug)]
pub enum ProxyError {
    /// Nothing at the socket path: the proxy is not installed or not running.
    Missing(PathBuf),
    /// connect(2) failed (refused: a stale socket; permission denied).
    Connect(PathBuf, std::io::Error),
    /// No whole answer before the deadline.
    Timeout(PathBuf),
    /// Writing the request or reading the answer failed.
    Io(PathBuf, std::io::Error),
    /// The answer is not the protocol's.
    BadReply(String),
    /// The proxy answered `success:false`.
    Refused { class: Class, message: String },
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::Missing(p) => write!(
                f,
                "pulse-sensor-proxy socket {} not found (is pulse-sensor-proxy installed and running?)",
                p.display()
            ),
            ProxyError::Connect(p, e) => {
                write!(
                    f,
                    "cannot connect to pulse-sensor-proxy at {}: {e}",
                    p.display()
                )
            }
            ProxyError::Timeout(p) => write!(
                f,
                "pulse-sensor-proxy at {} did not answer in time",
                p.display()
            ),
            ProxyError::Io(p, e) => write!(f, "pulse-sensor-proxy at {}: {e}", p.display()),
            ProxyError::BadReply(why) => write!(f, "pulse-sensor-proxy's answer: {why}"),
            ProxyError::Refused { message, .. } => {
                write!(f, "pulse-sensor-proxy refused: {message}")
            }
        }
    }
}

impl std::error::Error for ProxyError {}

impl ProxyError {
    /// Every other peer would fail the same way: stop asking this cycle.
    pub fn stops_run(&self) -> bool {
        matches!(
            self,
            ProxyError::Missing(_)
                | ProxyError::Connect(..)
                | ProxyError::Refused {
                    class: Class::Auth | Class::RateLimit,
                    ..
                }
        )
    }
}

/// Asks the proxy at `socket` for `node`'s temperatures: one request line,
/// half-close, read the answer (at most [`REPLY_CAP`]) until EOF, all before
/// `deadline`. Returns the `temperature` string (the peer's output).
pub fn get_temperature(socket: &Path, node: &str, deadline: Instant) -> Result<String, ProxyError> {
    let p = || socket.to_path_buf();
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| ProxyError::Timeout(p()))
    };
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ProxyError::Timeout(p()),
        _ => ProxyError::Io(p(), e),
    };
    let mut s = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ProxyError::Missing(p()),
        _ => ProxyError::Connect(p(), e),
    })?;
    let request = serde_json::json!({"method": "get_temperature", "params": {"node": node}});
    let mut line = request.to_string();
    line.push('\n');
    s.set_write_timeout(Some(left()?)).map_err(io)?;
    // The proxy refuses (unauthorized, rate limit) before it reads, and
    // may close its side first: after a failed write, its reply is still
    // there to read.
    let sent = s.write_all(line.as_bytes());
    let _ = s.shutdown(Shutdown::Write);
    let mut reply = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    // One line: the proxy may keep the connection open after it.
    while !reply.ends_with(b"\n") {
        s.set_read_timeout(Some(left()?)).map_err(io)?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if reply.len() + n > REPLY_CAP => {
                return Err(ProxyError::BadReply(format!(
                    "longer than {REPLY_CAP} bytes"
                )));
            }
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if reply.is_empty() => return Err(io(sent.err().unwrap_or(e))),
            Err(_) => break,
        }
    }
    if let (Err(e), true) = (sent, reply.is_empty()) {
        return Err(io(e));
    }
    parse_reply(&reply)
}

/// The proxy's answer `{"success":..,"data":{"temperature":".."},"error":..}`
/// → the `temperature` string, or the refusal with its class.
pub fn parse_reply(bytes: &[u8]) -> Result<String, ProxyError> {
    let bad = |why: &str| ProxyError::BadReply(why.to_string());
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let Value::Object(doc) = doc else {
        return Err(bad("not a JSON object"));
    };
    if doc.get("success").and_then(Value::as_bool) == Some(true) {
        return doc
            .get("data")
            .and_then(|d| d.get("temperature"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| bad("no temperature data in response"));
    }
    let message = match doc.get("error").and_then(Value::as_str) {
        Some(e) if !e.trim().is_empty() => e.trim().to_string(),
        _ => "(no error text)".to_string(),
    };
    Err(ProxyError::Refused {
        class: classify(&message),
        message,
    })
}

/// The backend client's classes, by the error text (§13), in its order.
pub fn classify(message: &str) -> Class {
    let m = message.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| m.contains(w));
    if has(&["rejected by validator", "not in allowlist", "node \""]) {
        Class::Node
    } else if has(&["rate limit"]) {
        Class::RateLimit
    } else if has(&["unauthorized", "admin capability"]) {
        Class::Auth
    } else if has(&["ssh", "connection", "timeout"]) {
        Class::Ssh
    } else if has(&["sensor", "temperature"]) {
        Class::Sensor
    } else {
        Class::Other
    }
}

/// `pvesh get /cluster/status --output-format json` → the remote peers:
/// `type == "node"`, `local != 1`, `online == 1`, a non-empty `ip`.
pub fn parse_cluster_status(text: &str) -> Result<Vec<Peer>, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("pvesh: not JSON: {e}"))?;
    let Value::Array(entries) = doc else {
        return Err("pvesh: not a JSON array".into());
    };
    // pvesh writes 0/1; a boolean is taken too.
    let one =
        |v: Option<&Value>| v.is_some_and(|v| v.as_u64() == Some(1) || v == &Value::Bool(true));
    let text = |e: &Value, k: &str| {
        e.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string()
    };
    Ok(entries
        .iter()
        .filter(|e| e.get("type").and_then(Value::as_str) == Some("node"))
        .filter(|e| !one(e.get("local")) && one(e.get("online")))
        .map(|e| Peer {
            name: text(e, "name"),
            ip: text(e, "ip"),
        })
        .filter(|p| !p.ip.is_empty())
        .collect())
}

/// A peer's output → its readings: `sensors -j`, or the installer wrapper's
/// `{"sensors": {...}, "smart": [...]}` (its `sensors` member is used).
/// Empty output and `{}` are no readings.
pub fn parse_temperature(text: &str) -> Result<hwmon::Readings, String> {
    let t = text.trim();
    if t.is_empty() || t == "{}" {
        return Ok(hwmon::Readings::default());
    }
    let mut doc: Value = serde_json::from_str(t).map_err(|e| format!("not JSON: {e}"))?;
    let wrapped = doc.as_object().is_some_and(|o| {
        o.get("sensors").is_some_and(Value::is_object)
            && o.keys().all(|k| k == "sensors" || k == "smart")
    });
    if wrapped {
        doc = doc["sensors"].take();
    }
    Ok(hwmon::map(&hwmon::sensors_chips(doc)?))
}

/// What one run found.
#[derive(Debug, Default)]
pub struct Run {
    /// Peers with at least one temperature, by name.
    pub nodes: Vec<NodeSensors>,
    /// Why the run could not ask the peers (no proxy, no pvesh, ...).
    pub failed: Option<String>,
    /// Peers that gave no readings, each with why.
    pub errors: Vec<String>,
}

impl Run {
    /// Working (`true`): the run reached the proxy and either got data or
    /// had nothing to complain about.
    pub fn ok(&self) -> bool {
        self.failed.is_none() && (!self.nodes.is_empty() || self.errors.is_empty())
    }

    /// The module's `lastError`.
    pub fn error(&self) -> Option<String> {
        if let Some(f) = &self.failed {
            return Some(f.clone());
        }
        match self.errors.len() {
            0 => None,
            1..=3 => Some(self.errors.join("; ")),
            n => Some(format!(
                "{}; and {} more peers",
                self.errors[..3].join("; "),
                n - 3
            )),
        }
    }
}

/// The collector and its back-off between runs.
pub struct Collector {
    root: Root,
    /// `--sensor-proxy-socket`; `None`: [`SOCKETS`] under the root.
    socket: Option<PathBuf>,
    pvesh_stuck: Option<Stuck>,
    backoff: Duration,
    /// No attempt before this; the last failure stands until then.
    paused: Option<(Instant, String)>,
}

impl Collector {
    pub fn new(root: Root, socket: Option<PathBuf>) -> Collector {
        Collector {
            root,
            socket,
            pvesh_stuck: None,
            backoff: BACKOFF_FIRST,
            paused: None,
        }
    }

    /// The socket to use: the configured one, else the first of [`SOCKETS`]
    /// that exists, else the first.
    pub fn socket(&self) -> PathBuf {
        if let Some(s) = &self.socket {
            return s.clone();
        }
        SOCKETS
            .iter()
            .map(|s| self.root.path(s))
            .find(|p| p.exists())
            .unwrap_or_else(|| self.root.path(SOCKETS[0]))
    }

    /// One run, unless a failed one asked for a pause that has not passed.
    /// The failure message stays the same while it lasts, so the status
    /// (and the log) changes only when something does.
    pub fn collect(&mut self) -> Run {
        if let Some((at, why)) = &self.paused {
            if Instant::now() < *at {
                return failed(why.clone());
            }
        }
        let mut run = self.attempt(Instant::now() + BUDGET);
        if run.ok() {
            self.paused = None;
            self.backoff = BACKOFF_FIRST;
            return run;
        }
        let why = format!(
            "{}; retrying after a pause ({} s, doubling up to {} s)",
            run.error().unwrap_or_default(),
            BACKOFF_FIRST.as_secs(),
            BACKOFF_MAX.as_secs()
        );
        self.paused = Some((Instant::now() + self.backoff, why.clone()));
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        run.failed = Some(why);
        run
    }

    fn attempt(&mut self, end: Instant) -> Run {
        let socket = self.socket();
        if !socket.exists() {
            return failed(ProxyError::Missing(socket).to_string());
        }
        let peers = match self.peers(end) {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        let queue = Mutex::new(peers.iter());
        let stop = AtomicBool::new(false);
        let results = Mutex::new(Vec::new());
        let lane = || {
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let Some(peer) = lock(&queue).next() else {
                    break;
                };
                let r = get_temperature(&socket, &peer.ip, (Instant::now() + PER_PEER).min(end));
                if r.as_ref().is_err_and(ProxyError::stops_run) {
                    stop.store(true, Ordering::Relaxed);
                }
                lock(&results).push((peer, r, SystemTime::now()));
            }
        };
        std::thread::scope(|s| {
            for _ in 1..PARALLEL.min(peers.len()) {
                let spawned = std::thread::Builder::new()
                    .name("cluster-peer".into())
                    .stack_size(128 * 1024)
                    .spawn_scoped(s, lane);
                if let Err(e) = spawned {
                    log::debug!("{MODULE}: cannot start a thread ({e}); asking one peer at a time");
                }
            }
            lane();
        });
        let mut run = Run::default();
        let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
        results.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        for (peer, r, at) in results {
            let who = format!("node {:?} ({})", peer.name, peer.ip);
            match r.map(|t| parse_temperature(&t)) {
                Ok(Ok(readings)) if !readings.temperatures.is_empty() => {
                    run.nodes.push(NodeSensors {
                        node: peer.name.to_ascii_lowercase(),
                        readings,
                        collected_at: at,
                    });
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => run.errors.push(format!("{who}: its sensors output is {e}")),
                Err(e) if e.stops_run() => run.failed = Some(e.to_string()),
                Err(e) => run.errors.push(format!("{who}: {e}")),
            }
        }
        let unasked = lock(&queue).len();
        if run.failed.is_none() && unasked > 0 {
            run.errors.push(format!(
                "{unasked} peers not asked within the {} s budget",
                BUDGET.as_secs()
            ));
        }
        run
    }

    /// The remote peers, from pvesh.
    fn peers(&mut self, end: Instant) -> Result<Vec<Peer>, String> {
        let pvesh = self
            .root
            .program("pvesh", PVESH_DIRS)
            .ok_or("pvesh not found: --enable-proxmox needs a Proxmox VE node".to_string())?;
        if self.pvesh_stuck.as_ref().is_some_and(Stuck::is_stuck) {
            return Err("an earlier pvesh has not exited; not started again until it does".into());
        }
        let o = match exec::run(&pvesh, &PVESH_ARGS, end, exec::STDOUT_CAP) {
            Ok(o) => o,
            Err(exec::Error::Timeout(p, d, stuck)) => {
                self.pvesh_stuck = Some(stuck);
                return Err(exec::Error::Timeout(p, d, Stuck::default()).to_string());
            }
            Err(e) => return Err(e.to_string()),
        };
        let out = String::from_utf8_lossy(&o.stdout);
        if o.code != Some(0) {
            let said = o
                .stderr
                .lines()
                .chain(out.lines())
                .find(|l| !l.trim().is_empty());
            return Err(format!(
                "pvesh get /cluster/status: exit {}{}",
                o.code.map_or("by a signal".to_string(), |c| c.to_string()),
                said.map(|l| format!(": {}", l.trim())).unwrap_or_default()
            ));
        }
        parse_cluster_status(&out)
    }
}

fn failed(why: String) -> Run {
    Run {
        failed: Some(why),
        ..Run::default()
    }
}

fn lock<X>(m: &Mutex<X>) -> std::sync::MutexGuard<'_, X> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The cluster-sensors thread: one run per request.
pub struct Service {
    worker: Worker<(), Run>,
}

/// A request in flight.
pub type Pending = Ticket;

impl Service {
    pub fn start(mut collector: Collector) -> std::io::Result<Service> {
        let worker = Worker::start(MODULE, move |()| collector.collect())?;
        Ok(Service { worker })
    }

    pub fn ask(&self) -> Pending {
        self.worker.ask(())
    }

    /// The newest finished run, waiting until `wait` after the ask for the
    /// one asked for (not at all when an earlier one was still running).
    pub fn answer(&self, p: Pending, wait: Duration) -> Option<Arc<Run>> {
        self.worker.latest_within(p, wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_the_online_remote_nodes_with_an_ip() {
        let text = r#"[
            {"type":"cluster","name":"lab","nodes":3,"quorate":1},
            {"type":"node","name":"pve1","ip":"10.0.0.1","local":1,"online":1},
            {"type":"node","name":"PVE2","ip":"10.0.0.2","local":0,"online":1},
            {"type":"node","name":"pve3","ip":"10.0.0.3","local":0,"online":0},
            {"type":"node","name":"pve4","ip":"","local":0,"online":1},
            {"type":"node","name":"pve5","online":1}
        ]"#;
        assert_eq!(
            parse_cluster_status(text).unwrap(),
            [Peer {
                name: "PVE2".into(),
                ip: "10.0.0.2".into()
            }]
        );
        assert!(parse_cluster_status("{}").is_err());
        assert!(parse_cluster_status("[").is_err());
    }

    #[test]
    fn replies_give_the_temperature_or_a_classified_refusal() {
        let ok =
            br#"{"correlation_id":"x","success":true,"data":{"node":"10.0.0.2","temperature":"{}"}}
"#;
        assert_eq!(parse_reply(ok).unwrap(), "{}");
        let refused = |text: &str| match parse_reply(
            serde_json::json!({"success": false, "error": text})
                .to_string()
                .as_bytes(),
        ) {
            Err(ProxyError::Refused { class, .. }) => class,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(r#"node "10.9.9.9" rejected by validator (node_not_cluster_member)"#),
            Class::Node
        );
        assert_eq!(refused("rate limit exceeded"), Class::RateLimit);
        assert_eq!(refused("unauthorized"), Class::Auth);
        assert_eq!(
            refused(
                "failed to get temperatures: failed to fetch temperatures: exit status 255 (stderr: ssh: connect to host)"
            ),
            Class::Ssh
        );
        assert_eq!(refused("invalid node name"), Class::Other);
        for bad in [
            &b""[..],
            b"[]",
            b"{\"success\":true}",
            b"{\"success\":true,\"data\":{\"temperature\":5}}",
        ] {
            assert!(
                matches!(parse_reply(bad), Err(ProxyError::BadReply(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_installer_wrapper_and_plain_sensors_give_the_same_readings() {
        let sensors = r#"{"coretemp-isa-0000":{"Adapter":"ISA adapter","Package id 0":{"temp1_input":51.0},"Core 0":{"temp2_input":48.0}}}"#;
        let plain = parse_temperature(sensors).unwrap();
        assert_eq!(plain.temperatures["cpu_package"], 51.0);
        assert_eq!(plain.temperatures["cpu_core_0"], 48.0);
        let wrapped = format!(
            r#"{{"sensors": {sensors}, "smart": [{{"device":"/dev/sda","temperature":null}}]}}"#
        );
        assert_eq!(parse_temperature(&wrapped).unwrap(), plain);
        assert!(parse_temperature("").unwrap().is_empty());
        assert!(parse_temperature(" {} \n").unwrap().is_empty());
        assert!(
            parse_temperature("{\"sensors\": {}, \"smart\": []}")
                .unwrap()
                .is_empty()
        );
        assert!(parse_temperature("nope").is_err());
    }
}
