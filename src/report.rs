//! The wire documents, built field by field in the spec's names
//! (`spec/pulse-protocol.md` §3), plus the report's sequence IDs and times.
//!
//! Go's `omitempty` decides what the stock agent sends; the helpers of [`Obj`]
//! reproduce it so the server sees the same shapes: empty strings, zero
//! numbers, `false` and empty lists are left out, while `metrics`,
//! `metrics.memory`, `sensors` and `timestamp` are always there. Counts and
//! bytes are JSON integers, never `1.0`. Nothing else in the crate builds
//! report JSON.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Number, Value};

use crate::collect::HostSnapshot;
use crate::collect::diskio::DiskIo;
use crate::collect::identity::Identity;
use crate::smart::Disk;
use crate::smart::parse::Status;

/// The state of one agent module, as `agent.modules[]` and `/status` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleState {
    Disabled,
    Starting,
    Retrying,
    Running,
}

impl ModuleState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleState::Disabled => "disabled",
            ModuleState::Starting => "starting",
            ModuleState::Retrying => "retrying",
            ModuleState::Running => "running",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Module {
    pub name: &'static str,
    pub enabled: bool,
    pub state: ModuleState,
    pub last_error: Option<String>,
    pub updated_at: SystemTime,
}

/// Facts about the agent process (`agent.privilege`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privilege {
    pub running_as_root: bool,
    pub service_user: String,
    pub smartctl_helper: bool,
    pub pct_helper: bool,
    /// The sandbox in effect (our addition; the server ignores it).
    pub sandbox: crate::privilege::Sandbox,
}

impl Privilege {
    /// The running process's privilege; the helpers are the scoped wrappers a
    /// least-privilege install configures (`PULSE_SMARTCTL_PATH`, `PULSE_PCT_PATH`).
    pub fn current(smartctl_helper: bool, pct_helper: bool) -> Privilege {
        let euid = crate::sys::geteuid();
        Privilege {
            running_as_root: euid == 0,
            service_user: crate::sys::user_name(euid).unwrap_or_default(),
            smartctl_helper,
            pct_helper,
            sandbox: crate::privilege::Sandbox::current(),
        }
    }
}

/// What `agent` says about the reporting agent.
#[derive(Debug, Clone)]
pub struct Agent<'a> {
    pub id: &'a str,
    pub version: &'a str,
    pub interval_seconds: u64,
    pub hostname: &'a str,
    pub disk_exclude: &'a [String],
    pub modules: &'a [Module],
    pub privilege: &'a Privilege,
    /// `(version, hash)` of the remote config this agent applied.
    pub applied_config: Option<(&'a str, &'a str)>,
    pub update: &'a crate::update::Status,
    /// The version this one replaced, while it is on trial.
    pub updated_from: Option<&'a str>,
}

/// Everything one host report is made of.
#[derive(Debug, Clone)]
pub struct HostReport<'a> {
    pub agent: Agent<'a>,
    pub identity: &'a Identity,
    pub report_ip: Option<&'a str>,
    pub tags: &'a [String],
    pub snapshot: &'a HostSnapshot,
    pub timestamp: SystemTime,
    pub sequence_id: &'a str,
}

/// The host report (`POST /api/agents/agent/report` body).
pub fn host(r: &HostReport) -> Value {
    host_doc(r, None)
}

/// The host report with `packages` as `host.packageUpdates` when given
/// (else built from the snapshot).
fn host_doc(r: &HostReport, packages: Option<Value>) -> Value {
    let mut doc = Obj::default();
    for (_, section) in host_sections(r, packages) {
        section(&mut doc);
    }
    doc.done()
}

/// [`host_doc`] written as compact JSON into `out`, one top-level member at
/// a time: each member's tree is built, written and dropped before the
/// next, so the whole report's tree never exists. The bytes are
/// [`host_doc`]'s, serialised (members in the key order of serde_json's
/// map, which sorts them).
fn write_host_doc(r: &HostReport, packages: Option<Value>, out: &mut Vec<u8>) {
    let mut sections = host_sections(r, packages);
    sections.sort_by_key(|(key, _)| *key);
    out.push(b'{');
    let mut first = true;
    for (_, section) in sections {
        let mut one = Obj::default();
        section(&mut one);
        for (k, v) in one.0 {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, &k).expect("invariant: a str serialises");
            out.push(b':');
            serde_json::to_writer(&mut *out, &v).expect("invariant: a Value serialises");
        }
    }
    out.push(b'}');
}

/// One top-level member of the host report: its key, and what puts it
/// into an object (or leaves it out, when it has nothing to say).
type Section<'a> = (&'static str, Box<dyn FnOnce(&mut Obj) + 'a>);

/// The host report's top-level members (`POST /api/agents/agent/report`).
fn host_sections<'a>(r: &'a HostReport<'a>, packages: Option<Value>) -> Vec<Section<'a>> {
    let s = r.snapshot;
    vec![
        (
            "agent",
            Box::new(move |d: &mut Obj| d.put("agent", agent(&r.agent))),
        ),
        (
            "host",
            Box::new(move |d: &mut Obj| d.put("host", host_info(r, packages))),
        ),
        (
            "metrics",
            Box::new(move |d: &mut Obj| d.put("metrics", metrics(s))),
        ),
        (
            "disks",
            Box::new(move |d: &mut Obj| d.list("disks", disks(s))),
        ),
        (
            "diskIO",
            Box::new(move |d: &mut Obj| d.list("diskIO", s.disk_io.iter().map(disk_io))),
        ),
        (
            "network",
            Box::new(move |d: &mut Obj| d.list("network", networks(s))),
        ),
        (
            "sensors",
            Box::new(move |d: &mut Obj| d.put("sensors", sensors(s))),
        ),
        (
            "raid",
            Box::new(move |d: &mut Obj| d.list("raid", s.raid.iter().map(raid))),
        ),
        (
            "unraid",
            Box::new(move |d: &mut Obj| {
                if let Some(u) = &s.unraid {
                    d.put("unraid", unraid(&u.value));
                }
            }),
        ),
        (
            "ceph",
            Box::new(move |d: &mut Obj| {
                if let Some(c) = &s.ceph {
                    d.put("ceph", ceph(&c.value, c.at));
                }
            }),
        ),
        (
            "proxmoxLxc",
            Box::new(move |d: &mut Obj| {
                if let Some(l) = &s.lxc {
                    d.put("proxmoxLxc", proxmox_lxc(&l.value, l.at));
                }
            }),
        ),
        (
            "clusterSensors",
            Box::new(move |d: &mut Obj| {
                d.list("clusterSensors", s.cluster.iter().map(cluster_node))
            }),
        ),
        ("tags", Box::new(move |d: &mut Obj| d.strs("tags", r.tags))),
        (
            "timestamp",
            Box::new(move |d: &mut Obj| d.put("timestamp", Value::String(rfc3339(r.timestamp)))),
        ),
        (
            "sequenceId",
            Box::new(move |d: &mut Obj| d.str("sequenceId", r.sequence_id)),
        ),
    ]
}

/// `sensors`.
fn sensors(s: &HostSnapshot) -> Value {
    let mut sensors = Obj::default();
    let t = &s.temperatures;
    sensors.readings(t);
    if let Some(w) = s.power {
        let mut p = Obj::default();
        p.float("cpu_package", w.package);
        p.float("cpu_core", w.core);
        p.float("dram", w.dram);
        let p = p.done();
        if p.as_object().is_some_and(|m| !m.is_empty()) {
            sensors.put("powerWatts", p);
        }
    }
    sensors.list("gpu", s.gpus.iter().map(gpu));
    sensors.list(
        "smart",
        s.smart.iter().map(|d| smart_row(d, &s.smart, &s.disk_io)),
    );
    sensors.done()
}

/// Encodes host reports, building `host.packageUpdates` once per apt run
/// rather than once per report: the list changes only when apt runs (every
/// 30 minutes at most) but can be most of a report (200 packages are about
/// 20 KB). Its compact JSON is kept for the run it came from and spliced
/// into each report's bytes in place of a marker; the bytes are the same
/// as [`host`]'s, encoded.
///
/// What is kept of a report is its bytes, never its `Value` tree (a BTreeMap
/// node per object, several times the bytes): the tree lives only while
/// the report is encoded.
#[derive(Default)]
pub struct HostEncoder {
    packages: Option<KeptPackages>,
    built: u64,
    /// The last report's length, so the next one is written into a buffer
    /// of its size at once rather than one that doubles its way there.
    last_len: usize,
    /// The last two reports' bodies. When one is written the one before
    /// last is held by nobody else (its delivery is over and `/report`
    /// shows the last one), and its buffer takes the new report: no fresh
    /// ~20 KB allocation, which the static build's allocator maps and
    /// unmaps every cycle (page faults, and a TLB flush on every CPU).
    bodies: [Option<Arc<Vec<u8>>>; 2],
}

struct KeptPackages {
    /// The run's data (a new run is a new `Arc`) and time.
    run: std::sync::Arc<crate::collect::packages::Updates>,
    at: SystemTime,
    json: String,
}

/// Stands for `host.packageUpdates` in a report being encoded: a JSON string
/// no host data holds (a NUL cannot reach a report field that the agent
/// reads from the host, and if one did the report is encoded whole).
const PACKAGES_MARKER: &str = "\u{0}pulse-agent:packageUpdates\u{0}";

/// A host report: its wire bytes, shared by the delivery and `/report`.
pub struct Encoded {
    pub body: Arc<Vec<u8>>,
}

impl Encoded {
    /// The wire bytes, and the same bytes kept for `/report`.
    pub fn split(self) -> (Arc<Vec<u8>>, Document) {
        let doc = Document {
            body: self.body.clone(),
        };
        (self.body, doc)
    }
}

/// A sent host report, kept for `/report` as the bytes that were sent.
pub struct Document {
    body: Arc<Vec<u8>>,
}

impl Document {
    /// The whole document as pretty JSON, as `serde_json::to_string_pretty`
    /// writes it: the sent bytes re-indented ([`pretty`]), so the page
    /// costs nothing until someone asks for it and shows every number
    /// exactly as it was sent.
    pub fn pretty(&self) -> String {
        pretty(&self.body)
    }
}

/// Compact JSON (serde_json's, no whitespace outside strings) laid out as
/// `serde_json::to_string_pretty` lays it out: two-space indents, `": "`,
/// and `[]`/`{}` for empty ones. Only the layout changes; strings and
/// numbers are copied byte for byte (parsing a number back can move a float
/// by one unit in the last place).
pub fn pretty(compact: &[u8]) -> String {
    let mut out = Vec::with_capacity(compact.len() + compact.len() / 2);
    let mut depth = 0usize;
    let newline = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        out.resize(out.len() + 2 * depth, b' ');
    };
    let mut i = 0;
    while i < compact.len() {
        let c = compact[i];
        match c {
            b'"' => {
                let start = i;
                i += 1;
                while i < compact.len() && compact[i] != b'"' {
                    i += if compact[i] == b'\\' { 2 } else { 1 };
                }
                out.extend_from_slice(&compact[start..(i + 1).min(compact.len())]);
            }
            b'{' | b'[' => {
                let close = if c == b'{' { b'}' } else { b']' };
                if compact.get(i + 1) == Some(&close) {
                    out.extend_from_slice(&[c, close]);
                    i += 1;
                } else {
                    out.push(c);
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            b',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            b':' => out.extend_from_slice(b": "),
            _ => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl HostEncoder {
    pub fn new() -> HostEncoder {
        HostEncoder::default()
    }

    /// How many times `host.packageUpdates` was built: once per apt run.
    pub fn packages_built(&self) -> u64 {
        self.built
    }

    /// `r` as the server receives it ([`host`], encoded).
    pub fn encode(&mut self, r: &HostReport) -> Encoded {
        let Some(p) = &r.snapshot.packages else {
            self.packages = None;
            return self.whole(r);
        };
        let fresh = self
            .packages
            .as_ref()
            .is_none_or(|k| !std::sync::Arc::ptr_eq(&k.run, &p.value) || k.at != p.at);
        if fresh {
            let value = package_updates(&p.value, p.at);
            let json = serde_json::to_string(&value).expect("invariant: a Value serialises");
            self.built += 1;
            self.packages = Some(KeptPackages {
                run: p.value.clone(),
                at: p.at,
                json,
            });
        }
        let kept = self.packages.as_ref().expect("invariant: kept just now");
        let room = self.last_len.max(kept.json.len() + 8192) + 1024;
        let mut text = reusable(&mut self.bodies, room);
        let marked = Some(Value::String(PACKAGES_MARKER.to_string()));
        write_host_doc(r, marked, &mut text);
        let mut text = String::from_utf8(text).expect("invariant: serde_json writes UTF-8");
        let marker = serde_json::to_string(PACKAGES_MARKER).expect("invariant: a str serialises");
        let body = match text.find(&marker) {
            Some(at) if !text[at + marker.len()..].contains(&marker) => {
                text.replace_range(at..at + marker.len(), &kept.json);
                text.into_bytes()
            }
            // The marker is in the host's own data: encode it whole.
            _ => {
                let mut whole = Vec::with_capacity(room);
                write_host_doc(r, None, &mut whole);
                whole
            }
        };
        self.keep(body)
    }

    fn whole(&mut self, r: &HostReport) -> Encoded {
        let mut body = reusable(&mut self.bodies, self.last_len.max(8192) + 1024);
        write_host_doc(r, None, &mut body);
        self.keep(body)
    }

    fn keep(&mut self, body: Vec<u8>) -> Encoded {
        self.last_len = body.len();
        let body = Arc::new(body);
        self.bodies = [Some(body.clone()), self.bodies[0].take()];
        Encoded { body }
    }
}

/// An empty buffer of at least `room` bytes: an earlier body that
/// nobody holds any more, else a new one.
fn reusable(bodies: &mut [Option<Arc<Vec<u8>>>; 2], room: usize) -> Vec<u8> {
    for slot in bodies.iter_mut().rev() {
        let Some(body) = slot.take() else { continue };
        match Arc::try_unwrap(body) {
            Ok(mut buf) => {
                buf.clear();
                buf.reserve(room);
                return buf;
            }
            Err(held) => *slot = Some(held),
        }
    }
    Vec::with_capacity(room)
}

/// `disks[]`: the same list in the host and the docker report.
fn disks(s: &HostSnapshot) -> impl Iterator<Item = Value> + '_ {
    s.filesystems.iter().map(|f| {
        let mut o = Obj::default();
        o.str("device", &f.device);
        o.str("mountpoint", &f.mountpoint);
        o.str("filesystem", &f.fstype);
        o.str("type", &f.fstype);
        o.uint("totalBytes", f.total);
        o.uint("usedBytes", f.used);
        o.uint("freeBytes", f.free);
        o.float("usage", f.usage);
        o.list("zfsDatasets", f.datasets.iter().map(zfs_dataset));
        o.done()
    })
}

/// `network[]`: the same list in the host and the docker report.
fn networks(s: &HostSnapshot) -> impl Iterator<Item = Value> + '_ {
    s.network.iter().map(|n| {
        let mut o = Obj::default();
        o.put("name", Value::String(n.name.clone()));
        o.str("mac", &n.mac);
        o.strs("addresses", &n.addresses);
        o.uint("rxBytes", n.rx_bytes);
        o.uint("txBytes", n.tx_bytes);
        o.done()
    })
}

/// What the docker report is made of.
pub struct DockerReport<'a> {
    pub agent_id: &'a str,
    pub version: &'a str,
    pub interval_seconds: u64,
    pub identity: &'a Identity,
    /// This cycle's host collection: the `host` metrics.
    pub snapshot: &'a HostSnapshot,
    pub docker: &'a crate::docker::Snapshot,
    pub timestamp: SystemTime,
    /// Leave out each container's `env`, `labels` and `mounts` (a report
    /// over the server's size limit).
    pub lean: bool,
}

/// The docker report (`POST /api/agents/docker/report` body, spec §4).
pub fn docker(r: &DockerReport) -> Value {
    let d = r.docker;
    let s = r.snapshot;
    let mut agent = Obj::default();
    agent.put("id", Value::String(r.agent_id.to_string()));
    agent.put("version", Value::String(r.version.to_string()));
    agent.str("type", "unified");
    let interval = if r.interval_seconds == 0 {
        30
    } else {
        r.interval_seconds
    };
    agent.put("intervalSeconds", Value::Number(interval.into()));

    let mut host = Obj::default();
    let hostname = match r.identity.hostname.trim() {
        "" => d.info.name.as_str(),
        h => h,
    };
    host.put("hostname", Value::String(hostname.to_string()));
    host.str("name", &d.info.name);
    host.str("machineId", &r.identity.machine_id);
    host.str("os", &d.info.os);
    host.str("runtime", d.runtime.as_str());
    host.str("runtimeVersion", &d.info.server_version);
    host.str("kernelVersion", &d.info.kernel_version);
    host.str("architecture", &d.info.architecture);
    host.str("dockerVersion", &d.info.server_version);
    host.uint("totalCpu", d.info.ncpu);
    let mem_total = match d.info.mem_total {
        0 => s.memory.as_ref().map_or(0, |m| m.total),
        t => t,
    };
    host.uint("totalMemoryBytes", mem_total);
    host.uint("uptimeSeconds", s.uptime_seconds.unwrap_or(0));
    host.float("cpuUsagePercent", s.cpu_usage_percent.unwrap_or(0.0));
    host.load_average(s);
    host.put("memory", memory(s));
    host.list("disks", disks(s));
    host.list("network", networks(s));
    if !d.info.authorization_plugins.is_empty() {
        let mut sec = Obj::default();
        sec.strs("authorizationPlugins", &d.info.authorization_plugins);
        host.put("security", sec.done());
    }

    let mut doc = Obj::default();
    doc.put("agent", agent.done());
    doc.put("host", host.done());
    doc.put(
        "containers",
        Value::Array(
            d.containers
                .iter()
                .map(|c| container(c, d.runtime, r.lean))
                .collect(),
        ),
    );
    doc.put("timestamp", Value::String(rfc3339(r.timestamp)));
    doc.done()
}

fn container(
    c: &crate::docker::collect::Container,
    runtime: crate::docker::engine::Runtime,
    lean: bool,
) -> Value {
    let mut o = Obj::default();
    let text = |v: &str| Value::String(v.to_string());
    o.put("id", text(&c.id));
    o.put("name", text(&c.name));
    o.put("image", text(&c.image));
    o.str("imageDigest", &c.image_digest);
    let created = UNIX_EPOCH + std::time::Duration::from_secs(c.created.max(0) as u64);
    o.put("createdAt", text(&rfc3339(created)));
    o.put("state", text(&c.state));
    o.put("status", text(&c.status));
    o.str("health", &c.health);
    o.strs("healthcheckTargets", &c.healthcheck_targets);
    o.put("cpuPercent", float(c.cpu_percent));
    o.put("memoryUsageBytes", Value::Number(c.memory_usage.into()));
    o.put("memoryLimitBytes", Value::Number(c.memory_limit.into()));
    o.put("memoryPercent", float(c.memory_percent));
    o.put("uptimeSeconds", Value::Number(c.uptime_seconds.into()));
    o.put("restartCount", Value::Number(c.restart_count.into()));
    o.put("exitCode", Value::Number(c.exit_code.into()));
    o.put("oomKilled", Value::Bool(c.oom_killed));
    o.str("startedAt", &c.started_at);
    o.str("finishedAt", &c.finished_at);
    o.list(
        "ports",
        c.ports.iter().map(|p| {
            let mut po = Obj::default();
            po.put("privatePort", Value::Number(p.private.into()));
            po.uint("publicPort", p.public);
            po.put("protocol", text(&p.protocol));
            po.str("ip", &p.ip);
            po.done()
        }),
    );
    if !lean && !c.labels.is_empty() {
        o.put(
            "labels",
            Value::Object(c.labels.iter().map(|(k, v)| (k.clone(), text(v))).collect()),
        );
    }
    if !lean {
        o.strs("env", &c.env);
    }
    o.list(
        "networks",
        c.networks.iter().map(|n| {
            let mut no = Obj::default();
            no.put("name", text(&n.name));
            no.str("ipv4", &n.ipv4);
            no.str("ipv6", &n.ipv6);
            no.done()
        }),
    );
    o.uint("networkRxBytes", c.network_rx);
    o.uint("networkTxBytes", c.network_tx);
    if c.block_read != 0 || c.block_write != 0 {
        let mut b = Obj::default();
        b.uint("readBytes", c.block_read);
        b.uint("writeBytes", c.block_write);
        o.put("blockIo", b.done());
    }
    if !lean {
        o.list(
            "mounts",
            c.mounts.iter().map(|m| {
                let mut mo = Obj::default();
                mo.str("type", &m.kind);
                mo.str("source", &m.source);
                mo.str("destination", &m.destination);
                mo.str("mode", &m.mode);
                mo.put("rw", Value::Bool(m.rw));
                mo.str("propagation", &m.propagation);
                mo.str("name", &m.name);
                mo.str("driver", &m.driver);
                mo.done()
            }),
        );
    }
    if runtime == crate::docker::engine::Runtime::Podman {
        let fields = crate::docker::collect::podman_labels(&c.labels);
        if !fields.is_empty() {
            let mut p = Obj::default();
            for (k, v) in fields {
                match k {
                    // A bool in the server's schema.
                    "infra" => p.flag(k, v.eq_ignore_ascii_case("true")),
                    _ => p.str(k, &v),
                }
            }
            o.put("podman", p.done());
        }
    }
    o.done()
}

/// One `clusterSensors[]` entry: a peer's readings in the shape of `sensors`.
fn cluster_node(n: &crate::collect::cluster::NodeSensors) -> Value {
    let mut o = Obj::default();
    o.put("nodeName", Value::String(n.node.clone()));
    let mut sensors = Obj::default();
    sensors.readings(&n.readings);
    o.put("sensors", sensors.done());
    o.put("collectedAt", Value::String(rfc3339(n.collected_at)));
    o.done()
}

fn disk_io(d: &DiskIo) -> Value {
    let mut o = Obj::default();
    o.put("device", Value::String(d.device.clone()));
    o.uint("readBytes", d.read_bytes);
    o.uint("writeBytes", d.write_bytes);
    o.uint("readOps", d.read_ops);
    o.uint("writeOps", d.write_ops);
    o.uint("readTimeMs", d.read_time_ms);
    o.uint("writeTimeMs", d.write_time_ms);
    o.uint("ioTimeMs", d.io_time_ms);
    o.done()
}

fn zfs_dataset(d: &crate::collect::zfs::Dataset) -> Value {
    let mut o = Obj::default();
    o.put("name", Value::String(d.name.clone()));
    o.str("type", &d.kind);
    o.str("mountpoint", &d.mountpoint);
    o.uint("usedBytes", d.used);
    o.uint("availableBytes", d.available);
    o.uint("referencedBytes", d.referenced);
    o.done()
}

fn gpu(g: &crate::collect::gpu::Gpu) -> Value {
    let mut o = Obj::default();
    o.str("id", &g.id);
    o.str("name", &g.name);
    // Pointers in the stock agent: a reading of 0 (an idle GPU) is sent.
    if let Some(t) = g.temperature {
        o.put("temperatureCelsius", float(t));
    }
    if let Some(u) = g.utilization {
        o.put("utilizationPercent", float(u));
    }
    if let Some(m) = g.memory_used {
        o.put("memoryUsedBytes", Value::Number(m.into()));
    }
    if let Some(m) = g.memory_total {
        o.put("memoryTotalBytes", Value::Number(m.into()));
    }
    o.done()
}

/// One `raid[]` entry: level, state, the counts, `devices` and
/// `rebuildPercent` are always sent (no `omitempty` in the stock agent).
fn raid(a: &crate::collect::raid::Array) -> Value {
    let mut o = Obj::default();
    o.put("device", Value::String(a.device.clone()));
    o.str("name", &a.name);
    o.put("level", Value::String(a.level.clone()));
    o.put("state", Value::String(a.state.clone()));
    for (k, v) in [
        ("totalDevices", a.total),
        ("activeDevices", a.active),
        ("workingDevices", a.working),
        ("failedDevices", a.failed),
        ("spareDevices", a.spare),
    ] {
        o.put(k, Value::Number(v.into()));
    }
    o.str("uuid", &a.uuid);
    o.put(
        "devices",
        Value::Array(
            a.members
                .iter()
                .map(|m| {
                    let mut d = Obj::default();
                    d.put("device", Value::String(m.device.clone()));
                    d.put("state", Value::String(m.state.clone()));
                    d.put("slot", Value::Number(m.slot.into()));
                    d.done()
                })
                .collect(),
        ),
    );
    o.put("rebuildPercent", float(a.rebuild_percent));
    o.str("rebuildSpeed", &a.rebuild_speed);
    o.str("operation", &a.operation);
    o.done()
}

/// One `sensors.smart[]` row, with the disk's own `diskIO` entry as `io`.
pub fn smart_row(d: &Disk, all: &[Disk], io: &[DiskIo]) -> Value {
    let mut o = Obj::default();
    o.put("device", Value::String(d.device.clone()));
    o.str("model", &d.model);
    o.str("serial", &d.serial);
    o.str("wwn", &d.wwn);
    o.str("type", &d.kind);
    o.str("controller", &d.controller);
    o.str("target", &d.target);
    o.uint("sizeBytes", d.size_bytes);
    o.put("temperature", Value::Number(d.temperature.into()));
    o.str("health", d.health.as_str());
    o.flag("standby", d.standby);
    o.str("pool", &d.pool);
    // `io` by device name: not for controller members (their counters are
    // the array's) nor for a name several rows share.
    let token = device_token(&d.device);
    let shared = all
        .iter()
        .filter(|r| device_token(&r.device) == token)
        .count()
        > 1;
    let io_status = if d.member || shared {
        Status::new(
            "unsupported",
            "kernel_diskstats",
            "controller target does not expose member-level I/O counters",
        )
    } else if io.is_empty() {
        Status::new(
            "unavailable",
            "kernel_diskstats",
            "no disk I/O counters were collected",
        )
    } else if let Some(entry) = io.iter().find(|e| e.device.to_ascii_lowercase() == token) {
        o.put("io", disk_io(entry));
        Status::new("available", "kernel_diskstats", "")
    } else {
        Status::new(
            "missing",
            "kernel_diskstats",
            "no I/O counters for this device",
        )
    };
    let status = |s: &Status| {
        let mut so = Obj::default();
        so.put("state", Value::String(s.state.to_string()));
        so.str("source", s.source);
        so.str("reason", s.reason);
        so.done()
    };
    let c = &d.collection;
    let mut col = Obj::default();
    col.put("serial", status(&c.serial));
    col.put("temperature", status(&c.temperature));
    col.put("io", status(&io_status));
    col.put("controller", status(&c.controller));
    col.put("pool", status(&c.pool));
    o.put("collection", col.done());
    if let Some(a) = &d.attributes {
        let mut ao = Map::new();
        for (k, v) in a.fields() {
            if let Some(v) = v {
                ao.insert(k.to_string(), Value::Number(v.into()));
            }
        }
        o.put("attributes", Value::Object(ao));
    }
    o.done()
}

/// The name a SMART row and a `diskIO` entry share: no `/dev/`, the first
/// word (`sda [megaraid,0]` → `sda`), lowercase.
fn device_token(device: &str) -> String {
    let d = device.strip_prefix("/dev/").unwrap_or(device);
    d.split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// `agent.update` (spec §9): the updater's state and times.
pub fn update(u: &crate::update::Status) -> Value {
    let mut o = Obj::default();
    o.str("state", u.state.as_str());
    o.put("autoUpdate", Value::Bool(u.auto_update));
    if let Some(v) = &u.available {
        o.str("availableVersion", v);
    }
    for (k, t) in [
        ("lastCheckedAt", u.last_checked),
        ("lastAttemptAt", u.last_attempt),
        ("lastSuccessAt", u.last_success),
    ] {
        if let Some(t) = t {
            o.put(k, Value::String(rfc3339(t)));
        }
    }
    if let Some(e) = &u.last_error {
        o.str("lastError", e);
    }
    o.done()
}

fn agent(a: &Agent) -> Value {
    let mut o = Obj::default();
    o.put("id", Value::String(a.id.to_string()));
    o.str("version", a.version);
    o.str("type", "unified");
    o.uint("intervalSeconds", a.interval_seconds);
    o.str("hostname", a.hostname);
    o.strs("diskExclude", a.disk_exclude);
    if let Some((version, hash)) = a.applied_config {
        let mut ac = Obj::default();
        ac.str("version", version);
        ac.str("hash", hash);
        o.put("appliedConfig", ac.done());
    }
    if let Some(from) = a.updated_from {
        o.str("updatedFrom", from);
    }
    o.put("update", update(a.update));
    let mut modules: Vec<&Module> = a.modules.iter().collect();
    modules.sort_by_key(|m| m.name);
    o.list(
        "modules",
        modules.into_iter().map(|m| {
            let mut mo = Obj::default();
            mo.put("name", Value::String(m.name.to_string()));
            mo.put("enabled", Value::Bool(m.enabled));
            mo.put("state", Value::String(m.state.as_str().to_string()));
            mo.str("lastError", m.last_error.as_deref().unwrap_or(""));
            mo.put("updatedAt", Value::String(rfc3339(m.updated_at)));
            mo.done()
        }),
    );
    let mut p = Obj::default();
    p.put("runningAsRoot", Value::Bool(a.privilege.running_as_root));
    p.str("serviceUser", &a.privilege.service_user);
    p.flag("smartctlHelper", a.privilege.smartctl_helper);
    p.flag("pctHelper", a.privilege.pct_helper);
    // Ours, ignored by the server: which documented profile and sandbox.
    let sandbox = &a.privilege.sandbox;
    p.str(
        "profile",
        crate::privilege::profile(a.privilege.running_as_root),
    );
    p.flag("noNewPrivileges", sandbox.no_new_privileges);
    p.flag("seccomp", sandbox.seccomp);
    if let Some(caps) = &sandbox.capabilities {
        p.put(
            "capabilities",
            Value::Array(caps.iter().map(|c| Value::from(c.as_str())).collect()),
        );
    }
    o.put("privilege", p.done());
    o.done()
}

fn host_info(r: &HostReport, packages: Option<Value>) -> Value {
    let id = r.identity;
    let s = r.snapshot;
    let mut o = Obj::default();
    o.str("id", &id.machine_id);
    o.put("hostname", Value::String(id.hostname.clone()));
    o.str("displayName", &id.hostname);
    o.str("machineId", &id.machine_id);
    o.str("platform", "linux");
    o.str("osName", &id.os_name);
    o.str("osVersion", &id.os_version);
    o.str("kernelVersion", &id.kernel_version);
    o.str("architecture", &id.architecture);
    o.str("cpuModel", &id.cpu_model);
    o.uint("cpuCount", id.cpu_count);
    o.uint("uptimeSeconds", s.uptime_seconds.unwrap_or(0));
    o.load_average(s);
    o.str("reportIp", r.report_ip.unwrap_or(""));
    if let Some(p) = &s.packages {
        let v = packages.unwrap_or_else(|| package_updates(&p.value, p.at));
        o.put("packageUpdates", v);
    }
    if let Some(c) = &s.cleanup {
        o.put("storageCleanup", storage_cleanup(&c.value, c.at));
    }
    o.done()
}

fn metrics(s: &HostSnapshot) -> Value {
    let mut o = Obj::default();
    o.float("cpuUsagePercent", s.cpu_usage_percent.unwrap_or(0.0));
    o.put("memory", memory(s));
    o.done()
}

/// `memory`: the same object in the host and the docker report.
fn memory(s: &HostSnapshot) -> Value {
    let mut m = Obj::default();
    if let Some(mem) = &s.memory {
        m.uint("totalBytes", mem.total);
        m.uint("usedBytes", mem.used);
        m.uint("freeBytes", mem.free);
        m.uint("cacheBytes", mem.cache);
        m.float("usage", mem.usage);
        m.uint("swapTotalBytes", mem.swap_total);
        m.uint("swapUsedBytes", mem.swap_used);
    }
    m.done()
}

// ---- unraid (§3.10): the Unraid helper's functions go below ----

/// `unraid` (§3.10): `arrayStarted` always, everything else `omitempty`;
/// each member's `name` always.
pub fn unraid(u: &crate::collect::unraid::Unraid) -> Value {
    let int = |o: &mut Obj, k: &str, v: i64| {
        if v != 0 {
            o.put(k, Value::Number(v.into()));
        }
    };
    let mut o = Obj::default();
    o.put("arrayStarted", Value::Bool(u.array_started));
    o.str("arrayState", &u.array_state);
    o.str("syncAction", &u.sync_action);
    o.float("syncProgress", u.sync_progress);
    int(&mut o, "syncErrors", u.sync_errors);
    int(&mut o, "numProtected", u.num_protected);
    int(&mut o, "numDisabled", u.num_disabled);
    int(&mut o, "numInvalid", u.num_invalid);
    int(&mut o, "numMissing", u.num_missing);
    o.list(
        "disks",
        u.disks.iter().map(|d| {
            let mut m = Obj::default();
            m.put("name", Value::String(d.name.clone()));
            m.str("device", &d.device);
            m.str("role", &d.role);
            m.str("status", &d.status);
            m.str("rawStatus", &d.raw_status);
            m.str("model", &d.model);
            m.str("serial", &d.serial);
            m.str("filesystem", &d.filesystem);
            m.str("transport", &d.transport);
            m.uint("sizeBytes", d.size_bytes);
            m.uint("usedBytes", d.used_bytes);
            m.uint("freeBytes", d.free_bytes);
            int(&mut m, "temperature", d.temperature);
            m.flag("spunDown", d.spun_down);
            int(&mut m, "readCount", d.read_count);
            int(&mut m, "writeCount", d.write_count);
            int(&mut m, "errorCount", d.error_count);
            int(&mut m, "slot", d.slot);
            m.done()
        }),
    );
    o.done()
}

// ---- ceph (§3.10): the Ceph helper's functions go below ----

/// The `ceph` section (§3.10), as the stock agent's `CephCluster`:
/// `monMap` and `mgrMap` are structs (Go's `omitempty` never drops them),
/// every count without `omitempty` is sent even when 0, `usagePercent`
/// always; `collectedAt` is `time.RFC3339`, whole seconds in UTC.
pub fn ceph(c: &crate::collect::ceph::Ceph, collected_at: SystemTime) -> Value {
    let int = |v: u64| Value::Number(v.into());
    let mut o = Obj::default();
    o.put("fsid", Value::String(c.fsid.clone()));

    let mut health = Obj::default();
    health.put("status", Value::String(c.health.status.clone()));
    if !c.health.checks.is_empty() {
        let checks = c
            .health
            .checks
            .iter()
            .map(|(name, check)| {
                let mut k = Obj::default();
                k.put("severity", Value::String(check.severity.clone()));
                k.str("message", &check.message);
                k.strs("detail", &check.detail);
                (name.clone(), k.done())
            })
            .collect();
        health.put("checks", Value::Object(checks));
    }
    o.put("health", health.done());

    let mut mon = Obj::default();
    mon.put("epoch", int(c.mon_map.epoch));
    mon.put("numMons", int(c.mon_map.num_mons));
    mon.list(
        "monitors",
        c.mon_map.monitors.iter().map(|m| {
            let mut e = Obj::default();
            e.put("name", Value::String(m.name.clone()));
            e.put("rank", int(m.rank));
            e.str("addr", &m.addr);
            e.done()
        }),
    );
    o.put("monMap", mon.done());

    let mut mgr = Obj::default();
    mgr.put("available", Value::Bool(c.mgr_map.available));
    mgr.put("numMgrs", int(c.mgr_map.num_mgrs));
    mgr.str("activeMgr", &c.mgr_map.active_mgr);
    mgr.put("standbys", int(c.mgr_map.standbys));
    o.put("mgrMap", mgr.done());

    let osd = &c.osd_map;
    let mut m = Obj::default();
    m.put("epoch", int(osd.epoch));
    m.put("numOsds", int(osd.num_osds));
    m.put("numUp", int(osd.num_up));
    m.put("numIn", int(osd.num_in));
    m.uint("numDown", osd.num_down);
    m.uint("numOut", osd.num_out);
    o.put("osdMap", m.done());

    let pg = &c.pg_map;
    let mut p = Obj::default();
    p.put("numPgs", int(pg.num_pgs));
    p.put("bytesTotal", int(pg.bytes_total));
    p.put("bytesUsed", int(pg.bytes_used));
    p.put("bytesAvailable", int(pg.bytes_available));
    p.uint("dataBytes", pg.data_bytes);
    p.put("usagePercent", float(pg.usage_percent));
    p.float("degradedRatio", pg.degraded_ratio);
    p.float("misplacedRatio", pg.misplaced_ratio);
    p.uint("readBytesPerSec", pg.read_bytes_per_sec);
    p.uint("writeBytesPerSec", pg.write_bytes_per_sec);
    p.uint("readOpsPerSec", pg.read_ops_per_sec);
    p.uint("writeOpsPerSec", pg.write_ops_per_sec);
    o.put("pgMap", p.done());

    o.list(
        "pools",
        c.pools.iter().map(|pool| {
            let mut e = Obj::default();
            e.put("id", int(pool.id));
            e.put("name", Value::String(pool.name.clone()));
            e.put("bytesUsed", int(pool.bytes_used));
            e.put("bytesAvailable", int(pool.bytes_available));
            e.put("objects", int(pool.objects));
            e.put("percentUsed", float(pool.percent_used));
            e.done()
        }),
    );
    o.list(
        "services",
        c.services.iter().map(|s| {
            let mut e = Obj::default();
            e.put("type", Value::String(s.kind.to_string()));
            e.put("running", int(s.running));
            e.put("total", int(s.total));
            e.done()
        }),
    );
    let secs = collected_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    o.put(
        "collectedAt",
        Value::String(rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(secs))),
    );
    o.done()
}

// ---- proxmoxLxc (§3.10): the pct helper's functions go below ----

/// `proxmoxLxc`: `{containers[{vmid, name, disks[]}], collectedAt}`. The
/// stock struct has no `omitempty` here, so `containers` is `[]` when none
/// runs, and `name` is sent even when empty. Skipped containers are not sent.
pub fn proxmox_lxc(l: &crate::collect::pct::Lxc, collected_at: SystemTime) -> Value {
    let containers = l.containers.iter().map(|c| {
        let mut o = Obj::default();
        o.put("vmid", Value::Number(c.vmid.into()));
        o.put("name", Value::String(c.name.clone()));
        o.put(
            "disks",
            Value::Array(c.disks.iter().map(lxc_disk).collect()),
        );
        o.done()
    });
    let mut o = Obj::default();
    o.put("containers", Value::Array(containers.collect()));
    o.put("collectedAt", Value::String(rfc3339(collected_at)));
    o.done()
}

/// A container filesystem in the §3.6 `Disk` shape: the stock agent fills
/// `type` with the mount key (`rootfs`, `mp0`) and leaves `filesystem` out.
fn lxc_disk(d: &crate::collect::pct::Disk) -> Value {
    let mut o = Obj::default();
    o.str("device", &d.device);
    o.str("mountpoint", &d.mountpoint);
    o.str("type", &d.kind);
    o.uint("totalBytes", d.total);
    o.uint("usedBytes", d.used);
    o.uint("freeBytes", d.free);
    o.float("usage", d.usage);
    o.done()
}

// ---- host.packageUpdates and host.storageCleanup (§3.4): the packages helper's functions go below ----

/// `host.packageUpdates`: `supported`, `pendingCount` and `checkedAt` always
/// (Go: a bool, an int and a `time.Time` without `omitempty` effect); the
/// first [`LISTED_MAX`](crate::collect::packages::LISTED_MAX) packages, as
/// the stock agent lists them; the rest omitempty.
pub fn package_updates(u: &crate::collect::packages::Updates, checked_at: SystemTime) -> Value {
    use crate::collect::packages::LISTED_MAX;
    let mut o = Obj::default();
    o.put("supported", Value::Bool(u.supported));
    o.str("manager", &u.manager);
    o.str("inventoryHash", &u.inventory_hash);
    o.put("pendingCount", Value::Number(u.pending.len().into()));
    o.list(
        "packages",
        u.pending.iter().take(LISTED_MAX).map(|p| {
            let mut po = Obj::default();
            po.put("name", Value::String(p.name.clone()));
            po.str("installedVersion", p.installed.as_deref().unwrap_or(""));
            po.str("availableVersion", &p.available);
            po.done()
        }),
    );
    o.put("checkedAt", Value::String(rfc3339(checked_at)));
    o.flag("rebootRequired", u.reboot_required);
    o.str("error", u.error.as_deref().unwrap_or(""));
    o.done()
}

/// `host.storageCleanup`: `supported`, `reclaimableBytes` and `checkedAt`
/// always, the rest omitempty.
pub fn storage_cleanup(c: &crate::collect::packages::Cleanup, checked_at: SystemTime) -> Value {
    let mut o = Obj::default();
    o.put("supported", Value::Bool(c.supported));
    o.str("provider", &c.provider);
    o.str("fingerprint", &c.fingerprint);
    o.put(
        "reclaimableBytes",
        Value::Number(c.reclaimable_bytes.into()),
    );
    o.put("checkedAt", Value::String(rfc3339(checked_at)));
    o.str("error", c.error.as_deref().unwrap_or(""));
    o.done()
}

/// A JSON object built with Go `omitempty` rules.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn put(&mut self, k: &str, v: Value) {
        self.0.insert(k.to_string(), v);
    }
    fn str(&mut self, k: &str, v: &str) {
        if !v.is_empty() {
            self.put(k, Value::String(v.to_string()));
        }
    }
    fn uint(&mut self, k: &str, v: u64) {
        if v != 0 {
            self.put(k, Value::Number(v.into()));
        }
    }
    fn float(&mut self, k: &str, v: f64) {
        if v != 0.0 && v.is_finite() {
            self.put(k, float(v));
        }
    }
    fn flag(&mut self, k: &str, v: bool) {
        if v {
            self.put(k, Value::Bool(true));
        }
    }
    fn strs(&mut self, k: &str, v: &[String]) {
        if !v.is_empty() {
            self.put(
                k,
                Value::Array(v.iter().cloned().map(Value::String).collect()),
            );
        }
    }
    fn floats(&mut self, k: &str, m: &std::collections::BTreeMap<String, f64>) {
        if !m.is_empty() {
            self.put(
                k,
                Value::Object(m.iter().map(|(k, v)| (k.clone(), float(*v))).collect()),
            );
        }
    }
    fn list(&mut self, k: &str, items: impl Iterator<Item = Value>) {
        let v: Vec<Value> = items.collect();
        if !v.is_empty() {
            self.put(k, Value::Array(v));
        }
    }
    /// `temperatureCelsius`, `fanRpm` and `additional`: the same in `sensors`
    /// and in each `clusterSensors[].sensors`.
    fn readings(&mut self, r: &crate::collect::hwmon::Readings) {
        self.floats("temperatureCelsius", &r.temperatures);
        self.floats("fanRpm", &r.fans);
        self.floats("additional", &r.additional);
    }
    /// `loadAverage`, the same in the host and the docker report.
    fn load_average(&mut self, s: &HostSnapshot) {
        if let Some(load) = s.load_average {
            self.put(
                "loadAverage",
                Value::Array(load.iter().map(|&v| float(v)).collect()),
            );
        }
    }
    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

/// A finite float as JSON; non-finite values (which JSON cannot carry) become 0.
fn float(v: f64) -> Value {
    Number::from_f64(v).map_or(Value::Number(0.into()), Value::Number)
}

/// RFC 3339 in UTC with nanoseconds, trailing zeros trimmed (Go's
/// `time.RFC3339Nano`): `2026-08-22T14:52:27.123456789Z`, `2026-08-22T14:52:27Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let mut s = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    let nanos = d.subsec_nanos();
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `sequenceId` values: `v1:<stream>:<n>`, a fresh random stream per process
/// and `n` counting every report built, so the server can drop replays and
/// out-of-order copies.
#[derive(Debug, Clone)]
pub struct Sequence {
    stream: String,
    last: u64,
}

impl Sequence {
    /// A new stream from the kernel's random source.
    pub fn random() -> Sequence {
        let mut bytes = [0u8; 16];
        if crate::sys::getrandom(&mut bytes).is_err() {
            // Kernels before 3.17: uniqueness is all a stream ID needs.
            use sha2::Digest;
            let seed = format!(
                "{:?} {} {:p}",
                SystemTime::now(),
                std::process::id(),
                &bytes
            );
            bytes.copy_from_slice(&sha2::Sha256::digest(seed.as_bytes())[..16]);
        }
        Sequence::with_stream(&bytes)
    }

    /// A stream with a chosen ID (tests, golden files).
    pub fn with_stream(bytes: &[u8; 16]) -> Sequence {
        Sequence {
            stream: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            last: 0,
        }
    }

    pub fn next_id(&mut self) -> String {
        self.last += 1;
        format!("v1:{}:{}", self.stream, self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::collect::packages::{Package, Updates};
    use crate::collect::{HostSnapshot, Stamped};

    fn encode(enc: &mut HostEncoder, snap: &HostSnapshot, seq: &str) -> (Encoded, Value) {
        let identity = Identity {
            hostname: "h".into(),
            ..Identity::default()
        };
        let privilege = Privilege {
            running_as_root: true,
            service_user: "root".into(),
            smartctl_helper: false,
            pct_helper: false,
            sandbox: crate::privilege::Sandbox::default(),
        };
        let update = crate::update::Status::default();
        let r = HostReport {
            agent: Agent {
                id: "x",
                version: "v0",
                interval_seconds: 30,
                hostname: "h",
                disk_exclude: &[],
                modules: &[],
                privilege: &privilege,
                applied_config: None,
                update: &update,
                updated_from: None,
            },
            identity: &identity,
            report_ip: None,
            tags: &[],
            snapshot: snap,
            timestamp: UNIX_EPOCH + Duration::from_secs(1_787_410_347),
            sequence_id: seq,
        };
        (enc.encode(&r), host(&r))
    }

    fn with_packages(names: &[&str], at: u64) -> HostSnapshot {
        let pending = names
            .iter()
            .map(|n| Package {
                name: n.to_string(),
                installed: Some("1.0".into()),
                available: "1.1".into(),
            })
            .collect();
        HostSnapshot {
            packages: Some(Stamped {
                value: std::sync::Arc::new(Updates {
                    supported: true,
                    manager: "apt".into(),
                    inventory_hash: "sha256:00".into(),
                    pending,
                    ..Updates::default()
                }),
                at: UNIX_EPOCH + Duration::from_secs(at),
            }),
            uptime_seconds: Some(42),
            ..HostSnapshot::default()
        }
    }

    /// Every report was written into a new ~20 KB buffer (which musl's
    /// allocator maps and unmaps each cycle). The buffer of the report
    /// before last is reused once nobody holds it: not while a delivery or
    /// `/report` still does, and its old bytes never leak into the new one.
    #[test]
    fn the_buffer_of_a_report_nobody_holds_is_reused() {
        for snap in [
            with_packages(&["bash", "curl"], 1_787_410_000),
            HostSnapshot::default(),
        ] {
            let mut enc = HostEncoder::new();
            let (first, _) = encode(&mut enc, &snap, "v1:00:1");
            let first_at = first.body.as_ptr();
            let (_, first_doc) = first.split();
            let (second, _) = encode(&mut enc, &snap, "v1:00:2");
            assert_ne!(second.body.as_ptr(), first_at);
            // The first report is still shown on /report: not reused.
            let (third, whole) = encode(&mut enc, &snap, "v1:00:3");
            assert_ne!(third.body.as_ptr(), first_at);
            assert_eq!(*third.body, serde_json::to_vec(&whole).unwrap());
            drop((first_doc, second));
            // The second is held by nobody but the encoder: its buffer
            // takes the fourth report, which is exactly that report.
            let second_at = enc.bodies[1].as_ref().unwrap().as_ptr();
            let (fourth, whole) = encode(&mut enc, &snap, "v1:00:4");
            assert_eq!(fourth.body.as_ptr(), second_at);
            assert_eq!(*fourth.body, serde_json::to_vec(&whole).unwrap());
            assert_eq!(Arc::strong_count(&fourth.body), 2);
            drop(third);
            let (fifth, whole) = encode(&mut enc, &snap, "v1:00:5");
            assert_eq!(*fifth.body, serde_json::to_vec(&whole).unwrap());
            assert_ne!(fifth.body.as_ptr(), fourth.body.as_ptr());
        }
    }

    /// Every report built and encoded `packageUpdates` again (most of a
    /// report on a host with many pending packages) though it changes only
    /// when apt runs. It is built once per run, and the bytes are the same
    /// as the whole report's.
    #[test]
    fn package_updates_are_built_once_per_apt_run_and_the_bytes_are_unchanged() {
        let mut enc = HostEncoder::new();
        let snap = with_packages(&["bash", "curl", "tzdata"], 1_787_410_000);
        for n in 1..=3 {
            let seq = format!("v1:00:{n}");
            let (e, whole) = encode(&mut enc, &snap, &seq);
            assert_eq!(
                String::from_utf8(e.body.to_vec()).unwrap(),
                serde_json::to_string(&whole).unwrap()
            );
            let (_, doc) = e.split();
            assert_eq!(doc.pretty(), serde_json::to_string_pretty(&whole).unwrap());
        }
        assert_eq!(enc.packages_built(), 1);
        // The next run (a new result): built again.
        let next = with_packages(&["bash"], 1_787_411_800);
        let (e, whole) = encode(&mut enc, &next, "v1:00:4");
        assert_eq!(*e.body, serde_json::to_vec(&whole).unwrap());
        assert_eq!(enc.packages_built(), 2);
        // No packages section at all.
        let (e, whole) = encode(&mut enc, &HostSnapshot::default(), "v1:00:5");
        assert_eq!(*e.body, serde_json::to_vec(&whole).unwrap());
        assert!(whole["host"].get("packageUpdates").is_none());
    }

    /// The marker standing for `packageUpdates` in the host's own data: the
    /// report is encoded whole, never spliced at the wrong place.
    #[test]
    fn a_package_marker_in_the_hosts_data_encodes_the_report_whole() {
        let mut enc = HostEncoder::new();
        let snap = with_packages(&[PACKAGES_MARKER, "curl"], 1_787_410_000);
        let (e, whole) = encode(&mut enc, &snap, PACKAGES_MARKER);
        assert_eq!(*e.body, serde_json::to_vec(&whole).unwrap());
    }

    /// `/report` parsed the sent bytes back to pretty-print them, and
    /// serde_json's parser can move a float by one unit in the last place
    /// (12.469892708561419 came back as 12.46989270856142): the page showed
    /// numbers that were not the ones sent. It re-indents the bytes instead,
    /// and the layout is serde_json's own.
    #[test]
    fn the_report_page_is_the_sent_bytes_laid_out_as_serde_json_does() {
        let v = serde_json::json!({
            "a": 12.469892708561419, "b": [], "c": {}, "d": [1, [2, {}], {"e": []}],
            "s": "q\"uo:te,{[]}\\", "u": "\u{e9}\u{1}\n", "n": null, "t": true,
            "neg": -1.5e-300, "big": 18446744073709551615u64
        });
        let compact = serde_json::to_vec(&v).unwrap();
        assert_eq!(pretty(&compact), serde_json::to_string_pretty(&v).unwrap());
        assert!(pretty(&compact).contains("12.469892708561419"));
        assert_eq!(pretty(b"[]"), "[]");
        assert_eq!(pretty(b"{}"), "{}");
    }

    #[test]
    fn times() {
        let t = UNIX_EPOCH + Duration::new(1_787_410_347, 123_456_789);
        assert_eq!(rfc3339(t), "2026-08-22T14:52:27.123456789Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::new(1_787_410_347, 0)),
            "2026-08-22T14:52:27Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::new(1_787_410_347, 104_993_000)),
            "2026-08-22T14:52:27.104993Z"
        );
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // Leap day and the turn of a century.
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(4_102_444_800)),
            "2100-01-01T00:00:00Z"
        );
    }

    #[test]
    fn sequence_ids() {
        let mut s = Sequence::with_stream(&[0xab; 16]);
        assert_eq!(s.next_id(), format!("v1:{}:1", "ab".repeat(16)));
        assert_eq!(s.next_id(), format!("v1:{}:2", "ab".repeat(16)));
        let r = Sequence::random().next_id();
        assert_eq!(r.len(), "v1::1".len() + 32);
    }

    #[test]
    fn omit_rules() {
        let mut o = Obj::default();
        o.str("a", "");
        o.uint("b", 0);
        o.float("c", 0.0);
        o.float("d", f64::NAN);
        o.flag("e", false);
        o.strs("f", &[]);
        o.list("g", std::iter::empty());
        assert_eq!(o.done(), Value::Object(Map::new()));
        assert_eq!(float(f64::INFINITY), Value::Number(0.into()));
    }
}
