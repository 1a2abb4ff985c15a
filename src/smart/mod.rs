//! SMART health of every physical disk (`sensors.smart[]`,
//! `spec/pulse-collectors.md` §1), read with smartctl without waking a
//! sleeping disk.
//!
//! SMART is slow (a second or more per disk) and changes slowly, so it is not
//! read in the report cycle: a `smart` thread refreshes it at most every
//! `--smart-interval` (default 5 minutes) and each report carries the last
//! result. On each refresh a disk is probed only if it is new, or its
//! `/proc/diskstats` counters moved since its last probe (it is awake and in
//! use), or its last probe is older than `--smart-max-age` (default 6 hours).
//! Many drives restart their spin-down timer on any command, even the
//! power-mode check that guards every probe, so a monitor that asks an idle
//! disk every few minutes keeps it spinning forever; this one leaves idle
//! disks alone and reports what it last saw. A disk found asleep is reported
//! as asleep with its last known identity, health and counters.
//!
//! On Unraid the array's own view comes first (§1.7): each refresh reads it
//! afresh (`disks.ini`, `mdcmd status`, at most 3 s), and a member Unraid
//! says is spun down gets no smartctl command at all, whatever the idle and
//! age rules would say; it is reported as asleep with Unraid's identity,
//! ahead of every other row. Unraid's transport for the other members
//! decides their `-d` types and row type.
//!
//! Probes run on at most [`PARALLEL`] threads, each disk's attempts within
//! [`PROBE_DEADLINE`], the whole refresh within [`REFRESH_BUDGET`]. A
//! smartctl that cannot be killed (stuck on a failing disk) keeps its disk out
//! of later refreshes until it exits, like a hung mount.

pub mod discover;
pub mod parse;
pub mod probe;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::collect::Outcome;
use crate::collect::unraid;
use crate::exec;
use crate::root::{self, Root};
use discover::Target;
pub use parse::Disk;
use probe::Probe;

/// All attempts for one disk share this deadline (the stock agent's).
pub const PROBE_DEADLINE: Duration = Duration::from_secs(10);
/// `smartctl --scan` and `lsblk` get this long.
pub const SCAN_DEADLINE: Duration = Duration::from_secs(10);
/// No probe starts later than this after the refresh began; disks not reached
/// keep what they showed before.
pub const REFRESH_BUDGET: Duration = Duration::from_secs(30);
/// Disks probed at once. Each probe is a process of a few MiB, and disks on
/// one controller or port multiplier answer one after another anyway.
pub const PARALLEL: usize = 4;
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(6 * 3600);

/// How SMART is collected.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--smartctl` / `PULSE_SMARTCTL_PATH`; else `smartctl` from `PATH`.
    pub smartctl: Option<PathBuf>,
    /// Time between refreshes; zero turns SMART off.
    pub interval: Duration,
    /// An idle disk is probed again after this long anyway.
    pub max_age: Duration,
    /// `--disk-exclude` patterns.
    pub exclude: Vec<String>,
    /// Disks probed at once ([`PARALLEL`]; the benchmark compares with 1).
    pub parallel: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            smartctl: None,
            interval: DEFAULT_INTERVAL,
            max_age: DEFAULT_MAX_AGE,
            exclude: Vec::new(),
            parallel: PARALLEL,
        }
    }
}

/// One refresh's result: the rows every report carries until the next.
#[derive(Debug, Clone)]
pub struct Refresh {
    pub rows: Vec<Disk>,
    pub outcome: Outcome,
    pub duration: Duration,
    pub warnings: Vec<String>,
    /// Disks asked this time.
    pub probed: usize,
    /// Disks left alone because they were idle since their last probe.
    pub idle: usize,
    /// Rows showing a sleeping disk.
    pub standby: usize,
}

/// What is remembered about one target between refreshes.
#[derive(Debug, Default)]
struct Memory {
    /// The row last reported.
    row: Option<Disk>,
    /// Whether `row` came from sysfs alone (listed after probed rows).
    identity_only: bool,
    /// The last row read from the disk itself (not a standby answer).
    known: Option<Disk>,
    /// sysfs serial and WWN when `known` was read.
    known_id: (String, String),
    probed_at: Option<Instant>,
    /// `/proc/diskstats` counters right after that probe.
    activity: Option<Activity>,
    stuck: Option<exec::Stuck>,
}

/// Completed reads, writes, discards and flushes of one block device.
type Activity = [u64; 4];

/// The SMART collector and what it remembers between refreshes.
pub struct Smart {
    root: Root,
    settings: Settings,
    memory: HashMap<String, Memory>,
    missing_logged: bool,
    /// Reads the Unraid array at the start of each refresh.
    unraid: unraid::Collector,
}

impl Smart {
    pub fn new(root: Root, settings: Settings) -> Smart {
        Smart {
            unraid: unraid::Collector::new(root.clone()),
            root,
            settings,
            memory: HashMap::new(),
            missing_logged: false,
        }
    }

    fn smartctl(&mut self) -> Option<PathBuf> {
        if let Some(p) = &self.settings.smartctl {
            return Some(p.clone());
        }
        let found = exec::find_program("smartctl");
        if found.is_none() && !self.missing_logged {
            self.missing_logged = true;
            log::info!(
                "smartctl not found: disks are reported from sysfs without SMART health (install smartmontools)"
            );
        }
        found
    }

    /// Lists the disks, probes those that need it, and returns every row.
    pub fn refresh(&mut self, now: Instant) -> Refresh {
        let started = Instant::now();
        let mut warnings = Vec::new();
        let exclude = self.settings.exclude.clone();
        // Unraid first, before anything could reach a disk it has spun down.
        let native = match self.unraid.collect(Instant::now() + unraid::MDCMD_TIMEOUT) {
            Ok(Some(u)) if !u.disks.is_empty() => Some(u),
            Ok(_) => None,
            Err(e) => {
                warnings.push(format!("unraid: {e}"));
                None
            }
        };
        let smartctl = self.smartctl();

        let scan = match &smartctl {
            Some(p) => match exec::run(p, &["--scan"], started + SCAN_DEADLINE, 256 * 1024) {
                Ok(o) => discover::parse_scan(&String::from_utf8_lossy(&o.stdout), &exclude),
                Err(e) => {
                    warnings.push(format!("smartctl --scan: {e}"));
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let disks = match discover::sysfs_disks(&self.root, &exclude) {
            Ok(d) => Ok(d),
            Err(e) => lsblk(&exclude, started + SCAN_DEADLINE).ok_or(e),
        };
        let disks = match disks {
            Ok(d) => d,
            Err(e) if scan.is_empty() => {
                // No /sys/block at all (a container without it) and nothing
                // scanned: there are no disks to see here.
                let outcome = if e.is_not_found() {
                    Outcome::Absent
                } else {
                    Outcome::Failed(format!("no list of disks: cannot read {e}"))
                };
                return Refresh {
                    rows: Vec::new(),
                    outcome,
                    duration: started.elapsed(),
                    warnings,
                    probed: 0,
                    idle: 0,
                    standby: 0,
                };
            }
            Err(_) => Vec::new(),
        };
        let targets = discover::union(&self.root, &scan, &disks, &exclude);
        let (targets, spun_down) = match &native {
            Some(u) => unraid_members(&self.root, targets, u, &exclude),
            None => (targets, Vec::new()),
        };
        let hosts = scsi_hosts(&self.root);
        let counters = read_activity(&self.root);

        // Decide who is asked.
        let mut to_probe = Vec::new();
        let mut idle = 0;
        for (i, t) in targets.iter().enumerate() {
            let m = self.memory.entry(t.key()).or_default();
            if m.stuck.as_ref().is_some_and(exec::Stuck::is_stuck) {
                warnings.push(format!(
                    "smartctl still hangs on {}; not asked again until it exits",
                    t.path
                ));
                continue;
            }
            m.stuck = None;
            // No counters at all (not in diskstats, a member of a controller
            // without volumes here) is no sign of use either.
            let unchanged =
                m.probed_at.is_some() && m.activity == activity_of(&counters, &hosts, t);
            let fresh = m
                .probed_at
                .is_some_and(|at| now.saturating_duration_since(at) < self.settings.max_age);
            if smartctl.is_some() && unchanged && fresh {
                idle += 1;
                continue;
            }
            to_probe.push(i);
        }

        // Each disk's counters are read right after its own probe, so use
        // that starts later in the refresh still counts as use.
        let root = &self.root;
        let after = |t: &Target| activity_of(&read_activity(root), &hosts, t);
        let probes = match &smartctl {
            Some(p) => probe_all(
                p,
                root,
                &targets,
                &to_probe,
                (started, self.settings.parallel.max(1)),
                &after,
            ),
            None => Vec::new(),
        };

        let mut late = 0;
        let mut probed = 0;
        for (&i, result) in to_probe
            .iter()
            .zip(probes.into_iter().chain(std::iter::repeat_with(|| None)))
        {
            let t = &targets[i];
            let sys = discover::sysfs_disk(&self.root, &t.block);
            let transport = t.transport(&self.root);
            let m = self.memory.entry(t.key()).or_default();
            let Some((result, activity)) = result else {
                if smartctl.is_some() {
                    late += 1;
                    if m.row.is_some() {
                        continue; // keeps its previous row
                    }
                }
                m.row = probe::identity_only(t, &sys, transport);
                m.identity_only = true;
                continue;
            };
            probed += 1;
            m.probed_at = Some(now);
            m.activity = activity;
            // Another disk in the same place (swapped while the agent ran):
            // what was known of the old one is not this one's.
            let id = (sys.serial.clone(), sys.wwn.clone());
            if m.known.is_some() && m.known_id != id {
                m.known = None;
            }
            match result {
                Probe::Row(mut d) if !d.standby => {
                    probe::refine(&mut d, t, &sys, transport);
                    m.known = Some(d.clone());
                    m.known_id = id;
                    m.row = Some(d);
                    m.identity_only = false;
                }
                // smartctl 7.5 answers a sleeping disk with a document too.
                Probe::Standby(mut d) | Probe::Row(mut d) => {
                    probe::refine(&mut d, t, &sys, transport);
                    m.row = Some(asleep(m.known.as_ref(), d));
                    m.identity_only = false;
                }
                Probe::Failed(why) => {
                    log::debug!("SMART {}: {why}", t.key());
                    m.row = probe::identity_only(t, &sys, transport);
                    m.identity_only = true;
                }
                Probe::Stuck(stuck, why) => {
                    warnings.push(format!("{}: {why}", t.path));
                    m.stuck = Some(stuck);
                    if m.row.is_none() {
                        m.row = probe::identity_only(t, &sys, transport);
                        m.identity_only = true;
                    }
                }
            }
        }
        if late > 0 {
            warnings.push(format!(
                "{late} disk(s) not probed: the refresh ran past {} s",
                REFRESH_BUDGET.as_secs()
            ));
        }

        // Forget disks that are gone (or asleep by Unraid's word); list
        // Unraid's sleeping members first, then probed rows, then sysfs-only ones.
        let keys: Vec<String> = targets.iter().map(Target::key).collect();
        self.memory.retain(|k, _| keys.contains(k));
        let mut rows = spun_down;
        let mut identity = Vec::new();
        for k in &keys {
            if let Some(m) = self.memory.get(k) {
                if let Some(row) = &m.row {
                    let dup = rows
                        .iter()
                        .chain(identity.iter())
                        .any(|r: &Disk| r.device == row.device && !r.member && !row.member);
                    if dup {
                        continue;
                    }
                    if m.identity_only {
                        identity.push(row.clone());
                    } else {
                        rows.push(row.clone());
                    }
                }
            }
        }
        rows.extend(identity);
        // Without the zfs module there are no pools, so "no pool" is known;
        // with it, the hardware thread's `zpool status` replaces this.
        let zfs = self.root.exists("/sys/module/zfs") || self.root.exists("/proc/spl/kstat/zfs");
        for r in &mut rows {
            r.collection.pool = if zfs {
                parse::Status::new(
                    "unavailable",
                    "zpool",
                    "ZFS pool membership could not be collected",
                )
            } else {
                parse::Status::new("available", "zpool", "")
            };
        }
        let standby = rows.iter().filter(|r| r.standby).count();
        Refresh {
            rows,
            outcome: Outcome::Ok,
            duration: started.elapsed(),
            warnings,
            probed,
            idle,
            standby,
        }
    }
}

/// Sets Unraid's transport on its members' targets and takes the members it
/// says are spun down out of `targets`: for those (and for sleeping members
/// no scan found) it returns rows made from Unraid's facts alone, sorted by
/// device. Excluded disks are left alone.
fn unraid_members(
    root: &Root,
    targets: Vec<Target>,
    array: &unraid::Unraid,
    exclude: &[String],
) -> (Vec<Target>, Vec<Disk>) {
    let mut members: HashMap<String, &unraid::UnraidDisk> = HashMap::new();
    for d in &array.disks {
        let block = discover::canonical_block(root, &d.device);
        let excluded = crate::collect::patterns::any_matches(
            exclude,
            &[block.as_str(), &format!("/dev/{block}")],
        );
        if !block.is_empty() && !excluded {
            members.insert(block, d);
        }
    }
    let mut kept = Vec::with_capacity(targets.len());
    for mut t in targets {
        match members.get(&t.block) {
            Some(m) if m.spun_down => {
                log::debug!("SMART {}: spun down by Unraid, not asked", t.key());
            }
            Some(m) => {
                t.native_transport = smart_transport(&m.transport);
                kept.push(t);
            }
            None => kept.push(t),
        }
    }
    let mut asleep: Vec<Disk> = members
        .iter()
        .filter(|(_, m)| m.spun_down)
        .map(|(block, m)| unraid_standby(block, m))
        .collect();
    asleep.sort_by(|a, b| a.device.cmp(&b.device));
    (kept, asleep)
}

/// Unraid's transport as a SMART row's `type`, if it is one.
fn smart_transport(t: &str) -> Option<&'static str> {
    match t.trim().to_ascii_lowercase().as_str() {
        "ata" | "sata" => Some("sata"),
        "sas" => Some("sas"),
        "usb" => Some("usb"),
        "nvme" => Some("nvme"),
        _ => None,
    }
}

/// The row of a member Unraid has spun down: nothing was asked of the disk.
fn unraid_standby(block: &str, m: &unraid::UnraidDisk) -> Disk {
    let mut d = Disk {
        device: block.to_string(),
        model: m.model.trim().to_string(),
        serial: m.serial.trim().to_string(),
        kind: smart_transport(&m.transport).unwrap_or("").to_string(),
        size_bytes: m.size_bytes,
        health: parse::Health::Unknown,
        standby: true,
        ..Disk::default()
    };
    d.collection.serial = if d.serial.is_empty() {
        parse::Status::new("missing", "unraid", "disk serial was not reported")
    } else {
        parse::Status::new("available", "unraid", "")
    };
    d.collection.temperature =
        parse::Status::new("unavailable", "unraid", "disk is reported spun down");
    d
}

/// A sleeping disk's row: its last known values, marked asleep, without a
/// temperature (the last one would be stale).
fn asleep(known: Option<&Disk>, fresh: Disk) -> Disk {
    let mut d = match known {
        Some(k) => k.clone(),
        None => fresh,
    };
    d.standby = true;
    d.temperature = 0;
    d.collection.temperature = parse::Status::new("unavailable", "smartctl", parse::STANDBY_REASON);
    d
}

/// Probes `targets[i]` for each `i` in `which` on [`PARALLEL`] threads; a
/// slot is `None` when the refresh budget ran out before it was started.
fn probe_all(
    smartctl: &Path,
    root: &Root,
    targets: &[Target],
    which: &[usize],
    (started, parallel): (Instant, usize),
    after: &(dyn Fn(&Target) -> Option<Activity> + Sync),
) -> Vec<Option<(Probe, Option<Activity>)>> {
    type Slot = Mutex<Option<(Probe, Option<Activity>)>>;
    let results: Vec<Slot> = which.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let work = || loop {
        let n = next.fetch_add(1, Ordering::SeqCst);
        let Some(&i) = which.get(n) else {
            return;
        };
        if started.elapsed() >= REFRESH_BUDGET {
            continue;
        }
        let deadline = Instant::now() + PROBE_DEADLINE;
        let p = probe::probe(smartctl, root, &targets[i], deadline);
        let a = after(&targets[i]);
        *results[n].lock().unwrap_or_else(|p| p.into_inner()) = Some((p, a));
    };
    std::thread::scope(|s| {
        let workers = parallel.min(which.len());
        let mut spawned = 0;
        for _ in 0..workers {
            let ok = std::thread::Builder::new()
                .name("smart-probe".into())
                .stack_size(256 * 1024)
                .spawn_scoped(s, work)
                .is_ok();
            spawned += usize::from(ok);
        }
        if spawned == 0 && workers > 0 {
            work(); // no threads to be had: one at a time, here
        }
    });
    results
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect()
}

/// The disk list from `lsblk`, for hosts whose `/sys/block` cannot be read.
fn lsblk(exclude: &[String], deadline: Instant) -> Option<Vec<String>> {
    let p = exec::find_program("lsblk")?;
    let args = ["-J", "-d", "-o", "NAME,TYPE,TRAN,MODEL,VENDOR,SUBSYSTEMS"];
    let out = exec::run(&p, &args, deadline, 1024 * 1024).ok()?;
    (out.code == Some(0)).then(|| discover::parse_lsblk(&out.stdout, exclude))
}

/// Block devices per SCSI host number, for `/dev/bus/N` (the controller on
/// host N, as smartctl names MegaRAID members).
fn scsi_hosts(root: &Root) -> HashMap<String, Vec<String>> {
    let mut hosts: HashMap<String, Vec<String>> = HashMap::new();
    for b in root.read_dir("/sys/block").unwrap_or_default() {
        let sys = discover::sysfs_disk(root, &b);
        if let Some((host, _)) = sys.target.split_once(':') {
            hosts.entry(host.to_string()).or_default().push(b);
        }
    }
    hosts
}

/// A target's counters: its block device's, or for a controller member the
/// sum over the controller's volumes (a member is busy when they are).
fn activity_of(
    counters: &HashMap<String, Activity>,
    hosts: &HashMap<String, Vec<String>>,
    t: &Target,
) -> Option<Activity> {
    if let Some(a) = counters.get(&t.block) {
        return Some(*a);
    }
    let host = t
        .path
        .strip_prefix("/dev/bus/")
        .filter(|_| t.multiplexed())?;
    let mut sum: Option<Activity> = None;
    for b in hosts.get(host)? {
        if let Some(a) = counters.get(b) {
            let s = sum.get_or_insert([0; 4]);
            for (x, y) in s.iter_mut().zip(a) {
                *x = x.wrapping_add(*y);
            }
        }
    }
    sum
}

/// Completed I/O counters per block device from `/proc/diskstats`.
fn read_activity(root: &Root) -> HashMap<String, Activity> {
    let Ok(c) = root.read_capped("/proc/diskstats", root::LARGE) else {
        return HashMap::new();
    };
    parse_activity(&c.text)
}

fn parse_activity(text: &str) -> HashMap<String, Activity> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            // Fields (1-based): 4 reads, 8 writes, 15 discards, 19 flushes.
            let a = [n(3)?, n(7)?, n(14).unwrap_or(0), n(18).unwrap_or(0)];
            Some((f.get(2)?.to_string(), a))
        })
        .collect()
}

/// The SMART thread: refreshes every interval and keeps the latest result.
pub struct Service {
    shared: Arc<(Mutex<Option<Arc<Refresh>>>, Condvar)>,
}

impl Service {
    /// Starts the thread; the first refresh begins at once.
    pub fn start(mut smart: Smart) -> std::io::Result<Service> {
        let shared: Arc<(Mutex<Option<Arc<Refresh>>>, Condvar)> = Arc::default();
        let publish = shared.clone();
        let interval = smart.settings.interval;
        std::thread::Builder::new()
            .name("smart".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let stack = crate::sys::StackTrim::this_thread();
                loop {
                    let began = Instant::now();
                    let r = smart.refresh(began);
                    log::debug!(
                        "SMART refresh: {} rows, {} probed, {} idle, {} asleep, {:?}",
                        r.rows.len(),
                        r.probed,
                        r.idle,
                        r.standby,
                        r.duration
                    );
                    let (m, cv) = &*publish;
                    *m.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(r));
                    cv.notify_all();
                    if let Some(t) = &stack {
                        t.trim();
                    }
                    std::thread::sleep(interval.saturating_sub(began.elapsed()));
                }
            })?;
        Ok(Service { shared })
    }

    /// The latest refresh, if one has finished.
    pub fn latest(&self) -> Option<Arc<Refresh>> {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The latest refresh, waiting up to `timeout` for the first one.
    pub fn wait(&self, timeout: Duration) -> Option<Arc<Refresh>> {
        let (m, cv) = &*self.shared;
        let guard = m.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |r| r.is_none())
            .unwrap_or_else(|p| p.into_inner());
        guard.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diskstats_activity() {
        let a = parse_activity(
            "   8       0 sda 10 0 80 1 5 0 40 2 0 3 3 7 0 9 1 4 2\n 8 16 sdb 1 2 3 4 5 6 7 8 9 10 11\nbad\n",
        );
        assert_eq!(a["sda"], [10, 5, 7, 4]);
        assert_eq!(a["sdb"], [1, 5, 0, 0]);
        assert_eq!(a.len(), 2);
    }
}
