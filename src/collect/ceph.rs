//! Ceph (`ceph`, `spec/pulse-collectors.md` §6.1): the cluster this node
//! belongs to, from `ceph status --format json` and `ceph df --format json`.
//!
//! The `ceph` program reads `/etc/ceph/ceph.conf` and the admin keyring
//! itself (it gets the clean environment of [`crate::exec`]: no `CEPH_CONF`);
//! where neither exists it is not run at all ([`configured`]).
//! A node without `ceph` has no section and no module. A node whose
//! `ceph status` fails is "not a Ceph node" as the stock agent sees it:
//! Proxmox VE installs `ceph-common` on every node, so a failure there is
//! the usual case, not an error; the section is left out and
//! [`Collector::last_reason`] keeps why, for the log and `/status`. Output
//! that `ceph status` gave with exit 0 but which is not a Ceph status is an
//! error of this source. `ceph df` is optional: without it the status is
//! sent alone, without `pools`.
//!
//! The parsers take any JSON: a number may come as a float, a string or out
//! of range, a section may be missing or of another type, and each such value
//! counts as absent (0), never as a failure of the whole document. Only a
//! document that is not a JSON object, or holds none of the sections a status
//! has, is refused. Lists are capped ([`MAX_ITEMS`], [`MAX_DETAIL`]) and
//! strings cut ([`MAX_TEXT`]) so a runaway answer cannot outgrow the report.
//! Beyond the stock agent: Nautilus and older nest the OSD counts in
//! `osdmap.osdmap`, which is read when there (the stock agent sends zeros).
//! Nothing here changes the cluster: both commands only read.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::exec::{self, Tool};
use crate::root::Root;

/// The module's name in `agent.modules[]`, `/status` and the collectors.
pub const MODULE: &str = "ceph";
/// [`Collector::last_reason`] when there is no `ceph` program.
pub const NOT_INSTALLED: &str = "ceph is not installed";
/// What `ceph` reads to find and join a cluster: without either, it cannot
/// reach one, and is not run (see [`configured`]).
pub const CONFIG_FILES: &[&str] = &["/etc/ceph/ceph.conf", "/etc/ceph/ceph.client.admin.keyring"];
/// [`Collector::last_reason`] when `ceph` is installed but has neither.
pub const NOT_CONFIGURED: &str = "not a Ceph node: no /etc/ceph/ceph.conf";
/// Where `ceph` is installed, before `PATH`.
pub const DIRS: &[&str] = &["/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin", "/sbin"];
/// The exact arguments of the status command.
pub const STATUS_ARGS: [&str; 3] = ["status", "--format", "json"];
/// The exact arguments of the usage command.
pub const DF_ARGS: [&str; 3] = ["df", "--format", "json"];
/// Each command's own limit (the stock agent's), within the caller's deadline.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Cap on each command's standard output (the stock agent's 4 MiB).
pub const OUTPUT_CAP: usize = 4 * 1024 * 1024;
/// Monitors, health checks and pools kept, each. Far above a real cluster.
pub const MAX_ITEMS: usize = 256;
/// Detail lines kept per health check (Ceph's own `mon_health_max_detail`).
pub const MAX_DETAIL: usize = 50;
/// Bytes kept of one string (names, messages), cut at a character boundary.
pub const MAX_TEXT: usize = 1024;
/// The largest count or size taken: the server's integers are int64.
const MAX_INT: u64 = i64::MAX as u64;

/// The `ceph` section, without its time (the caller stamps `collectedAt`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ceph {
    pub fsid: String,
    pub health: Health,
    pub mon_map: MonMap,
    pub mgr_map: MgrMap,
    pub osd_map: OsdMap,
    pub pg_map: PgMap,
    /// From `ceph df`; empty without it.
    pub pools: Vec<Pool>,
    /// `mon`, `mgr`, `osd`, in that order.
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Health {
    /// `HEALTH_OK`, `HEALTH_WARN`, `HEALTH_ERR`, as Ceph says it.
    pub status: String,
    /// By check name (`OSD_DOWN`, ...), sorted as Go encodes a map.
    pub checks: BTreeMap<String, Check>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Check {
    pub severity: String,
    /// `summary.message`.
    pub message: String,
    /// `detail[].message`.
    pub detail: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct MonMap {
    pub epoch: u64,
    /// The largest of `monmap.num_mons` and the lengths of `monmap.mons`,
    /// `quorum_names` and `quorum` (Quincy and later have no `mons`).
    pub num_mons: u64,
    pub monitors: Vec<Monitor>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Monitor {
    pub name: String,
    pub rank: u64,
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct MgrMap {
    pub available: bool,
    /// Active (0 or 1) plus standbys.
    pub num_mgrs: u64,
    pub active_mgr: String,
    pub standbys: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct OsdMap {
    pub epoch: u64,
    pub num_osds: u64,
    pub num_up: u64,
    pub num_in: u64,
    /// OSDs that are not up (never below 0).
    pub num_down: u64,
    /// OSDs that are not in (never below 0).
    pub num_out: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct PgMap {
    pub num_pgs: u64,
    pub bytes_total: u64,
    pub bytes_used: u64,
    pub bytes_available: u64,
    pub data_bytes: u64,
    /// used / total × 100; else `ceph df`'s `stats.percent_used`.
    pub usage_percent: f64,
    pub degraded_ratio: f64,
    pub misplaced_ratio: f64,
    pub read_bytes_per_sec: u64,
    pub write_bytes_per_sec: u64,
    pub read_ops_per_sec: u64,
    pub write_ops_per_sec: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pool {
    pub id: u64,
    pub name: String,
    pub bytes_used: u64,
    /// `stats.max_avail`.
    pub bytes_available: u64,
    pub objects: u64,
    /// 0–100 (a 0–1 ratio is multiplied by 100).
    pub percent_used: f64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Service {
    /// `mon`, `mgr` or `osd`.
    pub kind: &'static str,
    pub running: u64,
    pub total: u64,
}

/// What `ceph df --format json` adds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Df {
    pub pools: Vec<Pool>,
    /// Top-level `stats.percent_used`, as 0–100.
    pub percent_used: f64,
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// Not JSON at all (the parser's message, with line and column).
    Json(String),
    /// JSON, but not an object with any of the sections the command writes.
    NotCeph {
        command: &'static str,
        found: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Json(e) => write!(f, "not JSON: {e}"),
            Error::NotCeph { command, found } => {
                write!(f, "not the output of `ceph {command}`: {found}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// The sections a `ceph status` document has; one is enough.
const STATUS_KEYS: [&str; 6] = ["fsid", "health", "monmap", "mgrmap", "osdmap", "pgmap"];

fn object(text: &str, command: &'static str, keys: &[&str]) -> Result<Map<String, Value>, Error> {
    let v: Value = serde_json::from_str(text).map_err(|e| Error::Json(e.to_string()))?;
    let found = match v {
        Value::Object(m) if keys.iter().any(|k| m.contains_key(*k)) => return Ok(m),
        Value::Object(_) => "an object without any of its sections",
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
    };
    Err(Error::NotCeph { command, found })
}

/// `ceph status --format json` → the section without pools. Every
/// derived value of §6.1 is computed here.
pub fn parse_status(text: &str) -> Result<Ceph, Error> {
    let doc = object(text, "status", &STATUS_KEYS)?;
    let doc = Value::Object(doc);
    let at = |path: &str| doc.pointer(path);

    let mut health = Health {
        status: string(at("/health/status")),
        checks: BTreeMap::new(),
    };
    if let Some(checks) = at("/health/checks").and_then(Value::as_object) {
        for (name, c) in checks.iter().take(MAX_ITEMS) {
            let detail = c
                .get("detail")
                .and_then(Value::as_array)
                .map(|d| {
                    d.iter()
                        .take(MAX_DETAIL)
                        .map(|line| string(line.get("message")))
                        .collect()
                })
                .unwrap_or_default();
            health.checks.insert(
                cut(name),
                Check {
                    severity: string(c.get("severity")),
                    message: string(c.pointer("/summary/message")),
                    detail,
                },
            );
        }
    }

    let len = |path: &str| at(path).and_then(Value::as_array).map_or(0, Vec::len) as u64;
    let quorum = len("/quorum_names").max(len("/quorum"));
    let monitors: Vec<Monitor> = at("/monmap/mons")
        .and_then(Value::as_array)
        .map(|mons| {
            mons.iter()
                .take(MAX_ITEMS)
                .map(|m| Monitor {
                    name: string(m.get("name")),
                    rank: count(m.get("rank")),
                    addr: string(m.get("addr")),
                })
                .collect()
        })
        .unwrap_or_default();
    let num_mons = count(at("/monmap/num_mons"))
        .max(len("/monmap/mons"))
        .max(quorum);

    let available = at("/mgrmap/available").and_then(Value::as_bool) == Some(true);
    let active_mgr = string(at("/mgrmap/active_name"));
    let active = u64::from(available || !active_mgr.is_empty());
    let standbys = count(at("/mgrmap/num_standbys")).max(len("/mgrmap/standbys"));
    let num_mgrs = active + standbys;

    // Nautilus and older nest the counts one level down (`osdmap.osdmap`).
    let osdmap = match at("/osdmap/osdmap") {
        Some(Value::Object(_)) => "/osdmap/osdmap",
        _ => "/osdmap",
    };
    let osd = |key: &str| count(at(&format!("{osdmap}/{key}")));
    let osds = osd("num_osds");
    let up = osd("num_up_osds");
    let inside = osd("num_in_osds");

    let total = count(at("/pgmap/bytes_total"));
    let used = count(at("/pgmap/bytes_used"));
    let pg_map = PgMap {
        num_pgs: count(at("/pgmap/num_pgs")),
        bytes_total: total,
        bytes_used: used,
        bytes_available: count(at("/pgmap/bytes_avail")),
        data_bytes: count(at("/pgmap/data_bytes")),
        usage_percent: if total > 0 {
            used as f64 / total as f64 * 100.0
        } else {
            0.0
        },
        degraded_ratio: real(at("/pgmap/degraded_ratio")),
        misplaced_ratio: real(at("/pgmap/misplaced_ratio")),
        read_bytes_per_sec: count(at("/pgmap/read_bytes_sec")),
        write_bytes_per_sec: count(at("/pgmap/write_bytes_sec")),
        read_ops_per_sec: count(at("/pgmap/read_op_per_sec")),
        write_ops_per_sec: count(at("/pgmap/write_op_per_sec")),
    };

    // Monitors in quorum are the ones known to run; without quorum data,
    // all of them (the stock agent's rule).
    let mons_running = if quorum > 0 { quorum } else { num_mons };
    let services = vec![
        Service {
            kind: "mon",
            running: mons_running,
            total: num_mons,
        },
        Service {
            kind: "mgr",
            running: u64::from(available),
            total: num_mgrs,
        },
        Service {
            kind: "osd",
            running: up,
            total: osds,
        },
    ];

    Ok(Ceph {
        fsid: string(at("/fsid")),
        health,
        mon_map: MonMap {
            epoch: count(at("/monmap/epoch")),
            num_mons,
            monitors,
        },
        mgr_map: MgrMap {
            available,
            num_mgrs,
            active_mgr,
            standbys,
        },
        osd_map: OsdMap {
            epoch: osd("epoch"),
            num_osds: osds,
            num_up: up,
            num_in: inside,
            num_down: osds.saturating_sub(up),
            num_out: osds.saturating_sub(inside),
        },
        pg_map,
        pools: Vec::new(),
        services,
    })
}

/// `ceph df --format json` → pools and the cluster's `stats.percent_used`.
pub fn parse_df(text: &str) -> Result<Df, Error> {
    let doc = object(text, "df", &["pools", "stats"])?;
    let pools = doc
        .get("pools")
        .and_then(Value::as_array)
        .map(|pools| {
            pools
                .iter()
                .take(MAX_ITEMS)
                .map(|p| Pool {
                    id: count(p.get("id")),
                    name: string(p.get("name")),
                    bytes_used: count(p.pointer("/stats/bytes_used")),
                    bytes_available: count(p.pointer("/stats/max_avail")),
                    objects: count(p.pointer("/stats/objects")),
                    percent_used: percent(real(p.pointer("/stats/percent_used"))),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Df {
        pools,
        percent_used: percent(real(doc.get("stats").and_then(|s| s.get("percent_used")))),
    })
}

impl Ceph {
    /// Adds what `ceph df` said: its pools, and its usage when the status
    /// gave none.
    pub fn apply_df(&mut self, df: Df) {
        self.pools = df.pools;
        if self.pg_map.usage_percent == 0.0 && df.percent_used > 0.0 {
            self.pg_map.usage_percent = df.percent_used;
        }
    }
}

/// A percentage Ceph gave as a 0–1 ratio or as 0–100.
fn percent(v: f64) -> f64 {
    if (0.0..=1.0).contains(&v) {
        v * 100.0
    } else {
        v
    }
}

/// A string value, cut to [`MAX_TEXT`]; anything else is empty.
fn string(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).map(cut).unwrap_or_default()
}

fn cut(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_string();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A count or size: a non-negative integer (a float is truncated, a decimal
/// string read); negative, not finite, past int64 or of another type is
/// absent (0).
fn count(v: Option<&Value>) -> u64 {
    let n = match v {
        Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().and_then(whole)),
        Some(Value::String(s)) => {
            let s = s.trim();
            s.parse::<u64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().and_then(whole))
        }
        _ => None,
    };
    n.filter(|&n| n <= MAX_INT).unwrap_or(0)
}

fn whole(f: f64) -> Option<u64> {
    // `as` saturates; the range check keeps a saturated value out.
    (f.is_finite() && f >= 0.0 && f < MAX_INT as f64).then_some(f as u64)
}

/// A ratio or rate: a finite, non-negative number (or decimal string); else 0.
fn real(v: Option<&Value>) -> f64 {
    let f = match v {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    f.filter(|f| f.is_finite() && *f >= 0.0).unwrap_or(0.0)
}

/// The Ceph source for the platform worker: finds `ceph`, runs both
/// commands, keeps why the last run gave no section.
pub struct Collector {
    root: Root,
    tool: Tool,
    reason: Option<String>,
}

/// Whether this node has a Ceph client configuration: `/etc/ceph/ceph.conf`
/// (on a Proxmox VE Ceph node a link to `/etc/pve/ceph.conf`, followed
/// inside `--root`; a dangling link counts as none) or the admin keyring.
/// Proxmox VE installs the `ceph` program on every node; on one without a
/// cluster, `ceph status` is a Python process (about a quarter of a second
/// of CPU) that can only fail.
/// The one client this misses finds its monitors by DNS SRV records and
/// keeps its keyring away from the default path.
pub fn configured(root: &Root) -> bool {
    CONFIG_FILES.iter().any(|f| root.exists_following(f))
}

impl Collector {
    pub fn new(root: Root) -> Collector {
        Collector {
            root,
            tool: Tool::new("ceph"),
            reason: None,
        }
    }

    /// One run. `Ok(None)`: no `ceph`, or `ceph status` failed (not a Ceph
    /// node; [`Collector::last_reason`] says why). `Err`: `ceph status`
    /// answered with something that is not a status. A failing `ceph df`
    /// leaves the pools out and is noted in `last_reason`.
    pub fn collect(&mut self, deadline: Instant) -> Result<Option<Ceph>, String> {
        self.reason = None;
        let Some(ceph) = self.root.program("ceph", DIRS) else {
            self.reason = Some(NOT_INSTALLED.into());
            return Ok(None);
        };
        if !configured(&self.root) {
            self.reason = Some(NOT_CONFIGURED.into());
            return Ok(None);
        }
        let status = match self.run(&ceph, &STATUS_ARGS, deadline) {
            Ok(text) => text,
            Err(why) => {
                self.reason = Some(format!("not a Ceph node: {why}"));
                return Ok(None);
            }
        };
        let mut c = parse_status(&status).map_err(|e| format!("ceph status --format json: {e}"))?;
        match self
            .run(&ceph, &DF_ARGS, deadline)
            .and_then(|text| parse_df(&text).map_err(|e| format!("ceph df --format json: {e}")))
        {
            Ok(df) => c.apply_df(df),
            Err(why) => self.reason = Some(format!("pools left out: {why}")),
        }
        Ok(Some(c))
    }

    /// Why the last run sent no section (no `ceph`, `ceph status` failed) or
    /// sent it without pools; `None` after a complete run.
    pub fn last_reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// A command of a run since the last call did not answer in time.
    pub fn take_hung(&mut self) -> bool {
        self.tool.take_hung()
    }

    /// Standard output of `ceph args..` when it exits 0; else one line.
    fn run(
        &mut self,
        ceph: &std::path::Path,
        args: &[&str],
        deadline: Instant,
    ) -> Result<String, String> {
        let what = format!("ceph {}", args.join(" "));
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("{what}: no time left in this run"));
        }
        let o = self
            .tool
            .run(ceph, args, left.min(COMMAND_TIMEOUT), OUTPUT_CAP)?;
        if o.code != Some(0) {
            return Err(format!("{what}: {}", exec::failure(&o)));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_of_every_shape() {
        let v = serde_json::json!([
            3,
            3.9,
            "7",
            " 8 ",
            "2.5",
            -1,
            -0.5,
            1e300,
            "x",
            null,
            true,
            9223372036854775807u64,
            9223372036854775808u64
        ]);
        let got: Vec<u64> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| count(Some(x)))
            .collect();
        assert_eq!(got, [3, 3, 7, 8, 2, 0, 0, 0, 0, 0, 0, MAX_INT, 0]);
        assert_eq!(real(Some(&serde_json::json!("0.25"))), 0.25);
        assert_eq!(real(Some(&serde_json::json!(-0.1))), 0.0);
    }

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        let s = "é".repeat(MAX_TEXT);
        let c = cut(&s);
        assert!(c.len() <= MAX_TEXT && c.len() >= MAX_TEXT - 1);
        assert!(c.chars().all(|ch| ch == 'é'));
    }

    #[test]
    fn not_a_status() {
        for (text, want) in [
            ("", "not JSON"),
            ("[1]", "an array"),
            ("null", "null"),
            ("{\"a\":1}", "an object without any of its sections"),
            ("\"HEALTH_OK\"", "a string"),
        ] {
            let e = parse_status(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        assert!(parse_df("{\"x\":1}").is_err());
        assert!(parse_status("{\"fsid\":5}").is_ok());
    }
}
