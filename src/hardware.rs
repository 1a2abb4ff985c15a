//! The sources that run programs or may touch a device: md RAID (`mdadm`),
//! temperatures, fans and power (hwmon, `sensors -j`, RAPL), NVIDIA GPUs
//! (`nvidia-smi`) and ZFS (`zpool`, `zfs`). Each runs on its own worker
//! thread ([`Worker`]), started the first time its source is seen, so a hung
//! program holds only its own thread.
//!
//! Each cycle [`Hardware::begin`] asks every worker for a run before the
//! host collectors start (the sensors worker, on a host where its last run
//! found nothing, only every [`ABSENT_RECHECK`]), and [`Hardware::finish`] waits for the answers
//! until [`WAIT`] after `begin`. A worker that is still busy with an earlier
//! run when asked, or whose last run met a program that did not answer, is
//! not waited for: its latest finished result is used (RAID excepted:
//! `mdadm --detail` that is not from this cycle is not trusted over the fresh
//! `/proc/mdstat`). So a hung `mdadm`, `zpool` or `nvidia-smi` costs the
//! report at most [`WAIT`], once, and nothing after that.
//!
//! A program that will not die after SIGKILL (stuck in the kernel on a
//! failing device) is not started again until the reaper has it, so hung
//! processes cannot pile up one per cycle.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::collect::{HostSnapshot, Outcome, SourceStatus, gpu, hwmon, power, raid, zfs};
use crate::exec::{self, Tool, failure};
use crate::root::Root;
use crate::smart::parse::Status;
use crate::worker::{Answer, Ticket, Worker};

/// How long a report waits for the hardware workers, counted from `begin`;
/// a worker whose last run took longer is not waited for.
pub const WAIT: Duration = Duration::from_secs(4);
/// Readings older than this are dropped rather than sent as current.
const MAX_AGE: Duration = Duration::from_secs(300);
/// A host whose sensors run found nothing (a VM, a container) is looked at
/// again after this, not every cycle: no thread wakes to find nothing. A
/// sensor that appears later (a module loaded) shows within this.
const ABSENT_RECHECK: Duration = Duration::from_secs(150);

const MDADM_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"];
const NVIDIA_DIRS: &[&str] = &[
    "/usr/bin",
    "/usr/local/bin",
    "/usr/local/nvidia/bin",
    "/bin",
];
const SENSORS_DIRS: &[&str] = &["/usr/bin", "/usr/local/bin", "/bin"];

const MDADM_VERSION: Duration = Duration::from_secs(2);
const MDADM_DETAIL: Duration = Duration::from_secs(5);
/// No `mdadm --detail` starts later than this into a run.
const RAID_BUDGET: Duration = Duration::from_secs(10);
const NVIDIA_SMI: Duration = Duration::from_secs(5);
const SENSORS: Duration = Duration::from_secs(5);
const ZPOOL: Duration = Duration::from_secs(5);
const ZFS_LIST: Duration = Duration::from_secs(10);
const ZFS_LIST_CAP: usize = 4 * 1024 * 1024;
const MDSTAT_CAP: usize = 1024 * 1024;

/// What one `mdadm` run found.
#[derive(Debug, Default)]
pub struct RaidRun {
    /// `None` when mdadm is not installed; else the `--version` probe.
    pub mdadm: Option<Result<(), String>>,
    pub details: Vec<(String, Result<raid::Array, String>)>,
    pub hung: bool,
}

/// What one sensors run found.
#[derive(Debug, Default)]
pub struct SensorsRun {
    pub readings: hwmon::Readings,
    /// Watts since the previous run; `None` on the first run or without counters.
    pub power: Option<power::Watts>,
    /// The power counters were there (the next run has watts).
    pub power_counters: bool,
    pub warnings: Vec<String>,
    pub hung: bool,
}

/// What one ZFS run found; `None` when zpool is not installed.
#[derive(Debug)]
pub struct ZfsRun {
    pub stats: Result<BTreeMap<String, zfs::PoolStats>, String>,
    pub datasets: Result<BTreeMap<String, Vec<zfs::Dataset>>, String>,
    pub members: Result<HashMap<String, String>, String>,
    pub hung: bool,
}

/// What one nvidia-smi run found.
#[derive(Debug)]
pub struct GpuRun {
    pub gpus: Result<Vec<gpu::Gpu>, String>,
    pub hung: bool,
}

/// A run waited on a program that did not answer in time.
pub trait Hung {
    fn hung(&self) -> bool;
}

impl Hung for RaidRun {
    fn hung(&self) -> bool {
        self.hung
    }
}
impl Hung for SensorsRun {
    fn hung(&self) -> bool {
        self.hung
    }
}
impl Hung for GpuRun {
    fn hung(&self) -> bool {
        self.hung
    }
}
impl Hung for Option<ZfsRun> {
    fn hung(&self) -> bool {
        self.as_ref().is_some_and(|r| r.hung)
    }
}

/// The hardware workers, each started the first time its source exists.
pub struct Hardware {
    root: Root,
    raid: Slot<Vec<String>, RaidRun>,
    sensors: Slot<(), SensorsRun>,
    /// When a sensors run last found nothing, without a warning.
    sensors_absent: Option<Instant>,
    gpu: Slot<PathBuf, GpuRun>,
    zfs: Slot<(), Option<ZfsRun>>,
}

/// The requests of one cycle.
pub struct Pending {
    started: Instant,
    mdstat: Result<Vec<raid::Array>, String>,
    raid: Option<Ticket>,
    sensors: Option<Ticket>,
    gpu: Option<Ticket>,
    zfs: Option<Ticket>,
}

impl Hardware {
    pub fn new(root: Root) -> Hardware {
        Hardware {
            root,
            raid: Slot::new("raid"),
            sensors: Slot::new("sensors"),
            sensors_absent: None,
            gpu: Slot::new("gpu"),
            zfs: Slot::new("zfs"),
        }
    }

    /// Reads `/proc/mdstat` and asks each worker whose source exists for a run.
    pub fn begin(&mut self) -> Pending {
        let started = Instant::now();
        let root = self.root.clone();
        let mdstat = read_mdstat(&root);
        let devices: Vec<String> = mdstat
            .as_ref()
            .map(|a| a.iter().map(|a| a.device.clone()).collect())
            .unwrap_or_default();
        let raid = (!devices.is_empty())
            .then(|| {
                let r = root.clone();
                self.raid.ask(devices, || Box::new(raid_job(r)))
            })
            .flatten();
        let sensors = match self.sensors_absent {
            Some(at) if at.elapsed() < ABSENT_RECHECK => None,
            _ => {
                let r = root.clone();
                self.sensors.ask((), || Box::new(sensors_job(r)))
            }
        };
        let gpu = root
            .program("nvidia-smi", NVIDIA_DIRS)
            .and_then(|p| self.gpu.ask(p, || Box::new(gpu_job())));
        let zfs_loaded = root.exists("/sys/module/zfs") || root.exists("/proc/spl/kstat/zfs");
        let zfs = zfs_loaded
            .then(|| {
                let r = root.clone();
                self.zfs.ask((), || Box::new(zfs_job(r)))
            })
            .flatten();
        Pending {
            started,
            mdstat,
            raid,
            sensors,
            gpu,
            zfs,
        }
    }

    /// Waits (within [`WAIT`] of `begin`) and puts every answer into `snap`.
    pub fn finish(&mut self, p: Pending, snap: &mut HostSnapshot) {
        let deadline = p.started + WAIT;
        self.finish_raid(p.mdstat, p.raid, deadline, snap);

        let mut status = source("sensors", p.started);
        if p.sensors.is_none() && self.sensors_absent.is_some() {
            // Not asked: the last run found nothing (see `begin`).
            status.outcome = Outcome::Absent;
        } else {
            let sensors = self.sensors.answer(p.sensors, deadline);
            if let Some(a) = &sensors {
                late_note(a, "reading the sensors", &mut status);
            }
            self.sensors_absent = None;
            match sensors.as_ref().and_then(current) {
                Some(run) => {
                    snap.temperatures = run.readings.clone();
                    snap.power = run.power;
                    status.warnings.extend(run.warnings.iter().cloned());
                    if run.readings.is_empty() && run.power.is_none() {
                        status.outcome = Outcome::Absent;
                        let fresh = sensors.as_ref().is_some_and(|a| a.fresh);
                        if fresh && run.warnings.is_empty() && !run.power_counters {
                            self.sensors_absent = Some(Instant::now());
                        }
                    }
                }
                None => status.outcome = no_data(sensors.as_ref(), "sensors"),
            }
        }
        snap.sources.push(status);

        let mut status = source("gpu", p.started);
        match self.gpu.answer(p.gpu, deadline) {
            None => status.outcome = Outcome::Absent,
            Some(a) => match current(&a).as_deref().map(|r| &r.gpus) {
                Some(Ok(gpus)) => {
                    for g in gpus {
                        if let Some(t) = g.temperature {
                            snap.temperatures
                                .temperatures
                                .insert(format!("gpu_nvidia_{}", g.id), t);
                        }
                    }
                    snap.gpus.clone_from(gpus);
                    late_note(&a, "nvidia-smi", &mut status);
                }
                Some(Err(e)) => status.outcome = Outcome::Failed(e.clone()),
                None => status.outcome = no_data(Some(&a), "nvidia-smi"),
            },
        }
        snap.sources.push(status);

        self.finish_zfs(p.zfs, p.started, snap);
    }

    fn finish_raid(
        &mut self,
        mdstat: Result<Vec<raid::Array>, String>,
        ticket: Option<Ticket>,
        deadline: Instant,
        snap: &mut HostSnapshot,
    ) {
        let started = Instant::now();
        let mut status = source("raid", started);
        let arrays = match mdstat {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => {
                status.outcome = Outcome::Absent;
                snap.sources.push(status);
                return;
            }
            Err(e) => {
                status.outcome = if e.is_empty() {
                    Outcome::Absent
                } else {
                    Outcome::Failed(e)
                };
                snap.sources.push(status);
                return;
            }
        };
        let answer = self.raid.answer(ticket, deadline);
        // Only this cycle's mdadm is trusted over the fresh /proc/mdstat.
        let run = answer
            .as_ref()
            .filter(|a| a.fresh)
            .and_then(|a| a.latest.clone());
        match &run {
            Some(r) => {
                if let Some(Err(e)) = &r.mdadm {
                    status
                        .warnings
                        .push(format!("{e}; arrays are reported from /proc/mdstat"));
                }
            }
            None => status.warnings.push(
                "mdadm had no answer for this report (it was slow or hung); arrays are reported from /proc/mdstat"
                    .to_string(),
            ),
        }
        snap.raid = arrays
            .iter()
            .map(|base| {
                let detail = run
                    .as_ref()
                    .and_then(|r| r.details.iter().find(|(d, _)| *d == base.device));
                match detail {
                    Some((_, Ok(d))) => raid::merge(d.clone(), base),
                    Some((_, Err(e))) => {
                        status.warnings.push(e.clone());
                        base.clone()
                    }
                    None => base.clone(),
                }
            })
            .collect();
        status.duration = started.elapsed();
        snap.sources.push(status);
    }

    fn finish_zfs(&mut self, ticket: Option<Ticket>, started: Instant, snap: &mut HostSnapshot) {
        let mut status = source("zfs", started);
        let deadline = started + WAIT;
        let Some(answer) = self.zfs.answer(ticket, deadline) else {
            status.outcome = Outcome::Absent;
            snap.sources.push(status);
            return;
        };
        let latest = current(&answer);
        let run = match latest.as_deref() {
            Some(Some(run)) => run,
            Some(None) => {
                // The module is loaded but zpool is not here (a container):
                // pools keep their statfs numbers, and no disk is in a pool
                // this host can see.
                for d in &mut snap.smart {
                    d.collection.pool = Status::new("available", "zpool", "");
                }
                status.outcome = Outcome::Absent;
                snap.sources.push(status);
                return;
            }
            None => {
                status.outcome = no_data(Some(&answer), "zpool");
                snap.sources.push(status);
                return;
            }
        };
        late_note(&answer, "zpool", &mut status);
        for fs in snap.filesystems.iter_mut().filter(|f| f.fstype == "zfs") {
            if let Ok(stats) = &run.stats {
                if let Some(s) = stats.get(&fs.device).filter(|s| s.size > 0) {
                    (fs.total, fs.used, fs.free, fs.usage) = zfs::usable(*s, fs.free);
                }
            }
            if let Ok(datasets) = &run.datasets {
                fs.datasets = datasets.get(&fs.device).cloned().unwrap_or_default();
            }
        }
        let mut errors: Vec<&String> = Vec::new();
        if let Err(e) = &run.stats {
            errors.push(e);
        }
        if let Err(e) = &run.datasets {
            errors.push(e);
        }
        match &run.members {
            Ok(members) => {
                for d in &mut snap.smart {
                    d.pool = zfs::pool_of(members, &d.device, &d.serial, &d.wwn)
                        .unwrap_or("")
                        .to_string();
                    d.collection.pool = Status::new("available", "zpool", "");
                }
            }
            Err(e) => {
                errors.push(e);
                for d in &mut snap.smart {
                    d.collection.pool = Status::new(
                        "unavailable",
                        "zpool",
                        "ZFS pool membership could not be collected",
                    );
                }
            }
        }
        status.warnings.extend(errors.into_iter().cloned());
        snap.sources.push(status);
    }
}

fn source(name: &'static str, started: Instant) -> SourceStatus {
    SourceStatus {
        name,
        outcome: Outcome::Ok,
        duration: started.elapsed(),
        warnings: Vec::new(),
    }
}

/// Why a source has nothing to report: no run has finished yet, or the last
/// one is too old to pass for current.
fn no_data<T>(a: Option<&Answer<T>>, what: &str) -> Outcome {
    Outcome::Failed(match a.filter(|a| a.latest.is_some()) {
        Some(a) => format!(
            "{what} has not answered for {} s; its readings are left out",
            a.age.as_secs()
        ),
        None => format!(
            "the first {what} run has not finished (waited {} s)",
            WAIT.as_secs()
        ),
    })
}

/// Notes that the data is from an earlier run.
fn late_note<T>(a: &Answer<T>, what: &str, status: &mut SourceStatus) {
    if !a.fresh && a.latest.is_some() {
        status.warnings.push(format!(
            "{what} had no answer for this report (slow or hung); the report carries its answer from {} s ago",
            a.age.as_secs()
        ));
    }
}

/// The latest result unless it is older than [`MAX_AGE`] (a source whose
/// reads have hung for minutes is left out, not reported as current).
fn current<T>(a: &Answer<T>) -> Option<std::sync::Arc<T>> {
    a.latest.clone().filter(|_| a.fresh || a.age <= MAX_AGE)
}

/// `/proc/mdstat`'s arrays; `Err("")` when the file does not exist.
fn read_mdstat(root: &Root) -> Result<Vec<raid::Array>, String> {
    match root.read_kept("/proc/mdstat", MDSTAT_CAP) {
        Ok(c) if c.truncated => Err("/proc/mdstat is larger than 1 MiB".into()),
        Ok(c) => Ok(raid::parse_mdstat(&c.text)),
        Err(e) if e.is_not_found() => Err(String::new()),
        Err(e) => Err(format!("cannot read {e}")),
    }
}

type Job<I, T> = Box<dyn FnMut(I) -> T + Send>;

/// One worker, started the first time it is asked for something.
struct Slot<I, T> {
    name: &'static str,
    worker: Option<Worker<I, T>>,
}

impl<I: Send + 'static, T: Hung + Send + Sync + 'static> Slot<I, T> {
    fn new(name: &'static str) -> Slot<I, T> {
        Slot { name, worker: None }
    }

    fn ask(&mut self, input: I, make: impl FnOnce() -> Job<I, T>) -> Option<Ticket> {
        if self.worker.is_none() {
            let job = make();
            match Worker::start(&format!("hw-{}", self.name), job) {
                Ok(w) => self.worker = Some(w),
                Err(e) => {
                    log::warn!("{}: cannot start a thread: {e}", self.name);
                    return None;
                }
            }
        }
        self.worker.as_ref().map(|w| w.ask(input))
    }

    /// The answer to `ticket`: waited for until `deadline` unless the worker
    /// was still busy when asked, its last run took longer than the wait, or
    /// its last run met a program that did not answer (it will most likely
    /// be as slow again: the report does not pay for it every cycle; the run
    /// still goes on, and is used once it answers in time).
    fn answer(&self, ticket: Option<Ticket>, deadline: Instant) -> Option<Answer<T>> {
        let (w, t) = (self.worker.as_ref()?, ticket?);
        let first = w.wait(t, Instant::now());
        let hung = first.latest.as_deref().is_some_and(Hung::hung);
        let slow = first.latest.is_some() && first.took > WAIT;
        if first.fresh || t.behind || hung || slow {
            return Some(first);
        }
        Some(w.wait(t, deadline))
    }
}

fn raid_job(root: Root) -> impl FnMut(Vec<String>) -> RaidRun + Send {
    let mut tool = Tool::new("mdadm");
    move |devices| {
        let started = Instant::now();
        let Some(mdadm) = root.program("mdadm", MDADM_DIRS) else {
            return RaidRun::default();
        };
        let version = match tool.run(&mdadm, &["--version"], MDADM_VERSION, 64 * 1024) {
            Ok(o) if o.code == Some(0) => Ok(()),
            Ok(o) => Err(format!("mdadm --version: {}", failure(&o))),
            Err(e) => Err(e),
        };
        let mut details = Vec::new();
        if version.is_ok() {
            for dev in devices.iter().filter(|d| is_md_device(d)) {
                if started.elapsed() >= RAID_BUDGET {
                    break;
                }
                let r = match tool.run(&mdadm, &["--detail", dev], MDADM_DETAIL, exec::STDOUT_CAP) {
                    Ok(o) if o.code == Some(0) => {
                        raid::parse_detail(&String::from_utf8_lossy(&o.stdout), dev)
                    }
                    Ok(o) => Err(format!("mdadm --detail {dev}: {}", failure(&o))),
                    Err(e) => Err(e),
                };
                details.push((dev.clone(), r));
            }
        }
        RaidRun {
            mdadm: Some(version),
            details,
            hung: tool.take_hung(),
        }
    }
}

/// `/dev/md` followed by digits only: nothing else is passed to mdadm.
fn is_md_device(d: &str) -> bool {
    d.strip_prefix("/dev/md")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn sensors_job(root: Root) -> impl FnMut(()) -> SensorsRun + Send {
    let mut tool = Tool::new("sensors");
    let mut previous: Option<power::Sample> = None;
    move |()| {
        let mut run = SensorsRun::default();
        let chips = hwmon::read_sysfs(&root).unwrap_or_default();
        run.readings = hwmon::map(&chips);
        let no_temperatures =
            run.readings.temperatures.is_empty() && run.readings.additional.is_empty();
        if no_temperatures {
            if let Some(p) = root.program("sensors", SENSORS_DIRS) {
                match tool.run(&p, &["-j"], SENSORS, exec::STDOUT_CAP) {
                    // sensors exits non-zero when one subfeature fails.
                    Ok(o) if !o.stdout.iter().all(u8::is_ascii_whitespace) => {
                        match hwmon::parse_sensors_json(&String::from_utf8_lossy(&o.stdout)) {
                            Ok(chips) => {
                                let r = hwmon::map(&chips);
                                if !r.is_empty() {
                                    run.readings = r;
                                }
                            }
                            Err(e) => run.warnings.push(e),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => run.warnings.push(e),
                }
            }
        }
        if run.readings.temperatures.is_empty() && run.readings.additional.is_empty() {
            let zones = hwmon::map(&hwmon::read_thermal_zones(&root));
            run.readings.temperatures = zones.temperatures;
            run.readings.additional = zones.additional;
        }
        let now = power::sample(&root, Instant::now());
        if let (Some(before), Some(after)) = (&previous, &now) {
            run.power = Some(power::watts(before, after));
        }
        run.power_counters = now.is_some();
        previous = now;
        run.hung = tool.take_hung();
        run
    }
}

fn gpu_job() -> impl FnMut(PathBuf) -> GpuRun + Send {
    let mut tool = Tool::new("nvidia-smi");
    move |program| {
        let gpus = match tool.run(&program, &gpu::QUERY, NVIDIA_SMI, exec::STDOUT_CAP) {
            Ok(o) if o.code == Some(0) => Ok(gpu::parse(&String::from_utf8_lossy(&o.stdout))),
            Ok(o) => Err(format!("nvidia-smi: {}", failure(&o))),
            Err(e) => Err(e),
        };
        GpuRun {
            gpus,
            hung: tool.take_hung(),
        }
    }
}

fn zfs_job(root: Root) -> impl FnMut(()) -> Option<ZfsRun> + Send {
    let mut zpool_tool = Tool::new("zpool");
    let mut zfs_tool = Tool::new("zfs");
    move |()| {
        let zpool = root.program("zpool", zfs::DIRS)?;
        let text = |tool: &mut Tool, p: &Path, args: &[&str], t: Duration, cap: usize| {
            let o = tool.run(p, args, t, cap)?;
            if o.code != Some(0) {
                return Err(format!("{} {}: {}", tool.name, args[0], failure(&o)));
            }
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        };
        let stats = text(
            &mut zpool_tool,
            &zpool,
            &zfs::ZPOOL_LIST,
            ZPOOL,
            exec::STDOUT_CAP,
        )
        .and_then(|t| zfs::parse_zpool_list(&t));
        let datasets = match root.program("zfs", zfs::DIRS) {
            Some(z) => text(&mut zfs_tool, &z, &zfs::ZFS_LIST, ZFS_LIST, ZFS_LIST_CAP)
                .map(|t| zfs::parse_zfs_list(&t)),
            None => Err("zfs not found; datasets are the mounted ones".to_string()),
        };
        let members = text(
            &mut zpool_tool,
            &zpool,
            &zfs::ZPOOL_STATUS,
            ZPOOL,
            exec::STDOUT_CAP,
        )
        .map(|t| zfs::parse_zpool_status(&t));
        Some(ZfsRun {
            stats,
            datasets,
            members,
            hung: zpool_tool.take_hung() | zfs_tool.take_hung(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "pulse-hardware-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sys/class")).unwrap();
        d
    }

    fn sensors_cycle(hw: &mut Hardware) -> (bool, Outcome, HostSnapshot) {
        let p = hw.begin();
        let asked = p.sensors.is_some();
        let mut snap = HostSnapshot::default();
        hw.finish(p, &mut snap);
        let s = snap.sources.iter().find(|s| s.name == "sensors").unwrap();
        (asked, s.outcome.clone(), snap)
    }

    /// A VM has no sensors: the sensors thread used to wake every cycle to
    /// find nothing. It is asked again after ABSENT_RECHECK, and a sensor
    /// that appears then is reported.
    #[test]
    fn a_host_without_sensors_is_not_asked_every_cycle() {
        let dir = scratch("absent");
        let mut hw = Hardware::new(Root::new(&dir).unwrap());
        assert!(sensors_cycle(&mut hw).0, "the first cycle asks");
        for _ in 0..3 {
            let (asked, outcome, _) = sensors_cycle(&mut hw);
            assert!(!asked, "asked again though the last run found nothing");
            assert_eq!(outcome, Outcome::Absent);
        }
        // A sensor appears (a module loaded), and the recheck is due.
        let chip = dir.join("sys/class/hwmon/hwmon0");
        std::fs::create_dir_all(&chip).unwrap();
        std::fs::write(chip.join("name"), "coretemp\n").unwrap();
        std::fs::write(chip.join("temp1_input"), "45000\n").unwrap();
        std::fs::write(chip.join("temp1_label"), "Package id 0\n").unwrap();
        hw.sensors_absent = Some(Instant::now() - ABSENT_RECHECK);
        let (asked, outcome, snap) = sensors_cycle(&mut hw);
        assert!(asked);
        assert_eq!(outcome, Outcome::Ok);
        assert!(!snap.temperatures.is_empty(), "{:?}", snap.temperatures);
        // Present: asked every cycle.
        assert!(sensors_cycle(&mut hw).0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
