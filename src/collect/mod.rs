//! Host collectors: one file per source, each a `collect(root, ..)` that reads
//! through [`Root`] plus a pure `parse(&str)` that can be fed anything.
//!
//! [`Host`] is the one explicit list of collectors. It runs them in order,
//! records how each source fared ([`SourceStatus`]) and returns a
//! [`HostSnapshot`]; a source that fails leaves only its own section out. It
//! keeps the little state that must survive between cycles: the previous
//! `/proc/stat` sample, the mount table and the interfaces (read again only
//! when they changed: `filesystems::Mounts`, `network::Watch`) and the set of
//! hung mounts.
//!
//! Nothing here formats wire JSON (that is `report.rs`) or talks to a server.

pub mod ceph;
pub mod cluster;
pub mod cpu;
pub mod diskio;
pub mod filesystems;
pub mod gpu;
pub mod hwmon;
pub mod identity;
pub mod loadavg;
pub mod memory;
pub mod mounts;
pub mod network;
pub mod packages;
pub mod patterns;
pub mod pct;
pub mod power;
pub mod raid;
pub mod unraid;
pub mod uptime;
pub mod zfs;

use std::fmt;
use std::time::{Duration, Instant};

use crate::root::{ReadError, Root};

/// What went wrong reading one source. Each variant names the file or call.
#[derive(Debug)]
pub enum Error {
    /// The file could not be read.
    Read(ReadError),
    /// The file was read but does not hold what the kernel writes there.
    Parse { path: &'static str, reason: String },
}

impl Error {
    pub fn parse(path: &'static str, reason: impl Into<String>) -> Error {
        Error::Parse {
            path,
            reason: reason.into(),
        }
    }

    /// The source does not exist on this host (absent, not broken).
    pub fn is_absent(&self) -> bool {
        matches!(self, Error::Read(e) if e.is_not_found())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Read(e) => write!(f, "cannot read {e}"),
            Error::Parse { path, reason } => write!(f, "{path}: {reason}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Read(e) => Some(e),
            Error::Parse { .. } => None,
        }
    }
}

impl From<ReadError> for Error {
    fn from(e: ReadError) -> Error {
        Error::Read(e)
    }
}

/// How one source fared in one cycle.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok,
    /// The source does not exist here; its section is simply not sent.
    Absent,
    /// The source exists but could not be read or understood.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceStatus {
    pub name: &'static str,
    pub outcome: Outcome,
    pub duration: Duration,
    /// A note worth a warning even though data came out (a capped file, a hung mount).
    pub warnings: Vec<String>,
}

/// Settings the collectors take from the configuration.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--disk-exclude` patterns (filesystems and block devices).
    pub disk_exclude: Vec<String>,
    /// `--disk-include` patterns (filesystems re-included despite the automatic filter).
    pub disk_include: Vec<String>,
    /// How long the first cycle watches `/proc/stat` when it has no previous sample.
    pub cpu_spot_sample: Duration,
    /// How long one `statvfs` may take before its mount is marked stuck and
    /// left out until that call returns.
    pub statfs_timeout: Duration,
    /// Take the ZFS ARC off used memory. Off inside an LXC container, where
    /// arcstats is the host's but meminfo is the container's (lxcfs).
    pub zfs_arc_is_cache: bool,
    /// Cap on all `statvfs` calls of one cycle, so several newly hung mounts
    /// cannot stall a report for long; mounts not asked in time wait for the
    /// next cycle.
    pub statfs_budget: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            disk_exclude: Vec::new(),
            disk_include: Vec::new(),
            cpu_spot_sample: Duration::from_secs(1),
            zfs_arc_is_cache: true,
            statfs_timeout: Duration::from_secs(5),
            statfs_budget: Duration::from_secs(10),
        }
    }
}

/// A platform source's result and the agent's clock when its run ended
/// (`collectedAt`, `checkedAt`). Shared with the run it came from: a report
/// between two runs does not copy it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped<T> {
    pub value: std::sync::Arc<T>,
    pub at: std::time::SystemTime,
}

/// Everything one cycle of the host collectors produced.
#[derive(Debug, Clone, Default)]
pub struct HostSnapshot {
    pub uptime_seconds: Option<u64>,
    pub load_average: Option<[f64; 3]>,
    pub cpu_usage_percent: Option<f64>,
    pub memory: Option<memory::Memory>,
    pub filesystems: Vec<filesystems::Filesystem>,
    pub disk_io: Vec<diskio::DiskIo>,
    pub network: Vec<network::Interface>,
    /// The SMART rows of the latest refresh (collected on their own thread).
    pub smart: Vec<crate::smart::Disk>,
    /// md arrays (`raid[]`), from the hardware workers like the rest below.
    pub raid: Vec<raid::Array>,
    pub temperatures: hwmon::Readings,
    pub power: Option<power::Watts>,
    pub gpus: Vec<gpu::Gpu>,
    /// Cluster peers' temperatures (`clusterSensors[]`, `--enable-proxmox`).
    pub cluster: Vec<cluster::NodeSensors>,
    /// The platform sources (`platform.rs`): the Unraid array, the disks
    /// of running Proxmox LXC containers, pending package updates and
    /// apt's package cache, each with the time its run ended.
    pub unraid: Option<Stamped<unraid::Unraid>>,
    pub ceph: Option<Stamped<ceph::Ceph>>,
    pub lxc: Option<Stamped<pct::Lxc>>,
    pub packages: Option<Stamped<packages::Updates>>,
    pub cleanup: Option<Stamped<packages::Cleanup>>,
    pub sources: Vec<SourceStatus>,
}

/// The host collectors and the state they keep between cycles.
pub struct Host {
    root: Root,
    options: Options,
    cpu: cpu::Usage,
    /// The mount table, re-read only when it changed.
    mounts: filesystems::Mounts,
    /// Interfaces and addresses, re-read only when they changed.
    network: network::Watch,
    statfs: filesystems::StatfsGuard,
}

impl Host {
    pub fn new(root: Root, options: Options) -> Host {
        Host {
            mounts: filesystems::Mounts::new(),
            network: network::Watch::new(),
            statfs: filesystems::StatfsGuard::new(root.clone()),
            // A captured host never moves: watching it would only wait.
            cpu: cpu::Usage::new(if root.is_captured() {
                Duration::ZERO
            } else {
                options.cpu_spot_sample
            }),
            root,
            options,
        }
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    /// How many times the mount table was read and parsed: once, then once
    /// per change of the table.
    pub fn mount_table_reads(&self) -> u64 {
        self.mounts.parses()
    }

    /// How many times the interfaces and their addresses were read: on a
    /// live root once, then once per change the kernel reported; on a
    /// captured root every cycle.
    pub fn interface_reads(&self) -> u64 {
        self.network.reads()
    }

    /// Runs every host collector once.
    pub fn collect(&mut self) -> HostSnapshot {
        let mut snap = HostSnapshot::default();
        let root = &self.root;
        let opts = &self.options;

        snap.uptime_seconds = run(&mut snap.sources, "uptime", || uptime::collect(root));
        snap.load_average = run(&mut snap.sources, "loadavg", || loadavg::collect(root));
        let cpu = &mut self.cpu;
        snap.cpu_usage_percent = run(&mut snap.sources, "cpu", || cpu.collect(root)).flatten();
        snap.memory = run(&mut snap.sources, "memory", || {
            memory::collect(root, opts.zfs_arc_is_cache)
        });

        let (mounts, statfs) = (&mut self.mounts, &mut self.statfs);
        let mut notes = Vec::new();
        snap.filesystems = run(&mut snap.sources, "filesystems", || {
            filesystems::collect(root, opts, mounts, statfs).map(|out| {
                notes = out.notes;
                out.filesystems
            })
        })
        .unwrap_or_default();
        if let Some(s) = snap.sources.last_mut() {
            s.warnings = notes;
        }

        snap.disk_io = run(&mut snap.sources, "diskio", || {
            diskio::collect(root, &opts.disk_exclude)
        })
        .unwrap_or_default();
        let watch = &mut self.network;
        snap.network = run(&mut snap.sources, "network", || {
            network::collect(root, watch)
        })
        .unwrap_or_default();
        snap
    }
}

/// Runs one collector, records its outcome and time, and returns its data.
fn run<T>(
    sources: &mut Vec<SourceStatus>,
    name: &'static str,
    f: impl FnOnce() -> Result<T, Error>,
) -> Option<T> {
    let started = Instant::now();
    let result = f();
    let (outcome, value) = match result {
        Ok(v) => (Outcome::Ok, Some(v)),
        Err(e) if e.is_absent() => (Outcome::Absent, None),
        Err(e) => (Outcome::Failed(e.to_string()), None),
    };
    sources.push(SourceStatus {
        name,
        outcome,
        duration: started.elapsed(),
        warnings: Vec::new(),
    });
    value
}

/// Splits `line` on whitespace and parses field `i` (0-based) as `u64`.
pub(crate) fn field_u64(fields: &[&str], i: usize) -> Option<u64> {
    fields.get(i)?.parse().ok()
}
