//! Mounted filesystems → `disks[]`: the mount table, the spec's type and
//! mount-point filters, `--disk-exclude`/`--disk-include`, `statvfs` behind a
//! deadline, de-duplication, and one entry per ZFS pool.
//!
//! Filter order for each mount (the server filters `disks[]` again with the
//! same type/mount-point rules, so these must match):
//! 1. a mount point seen again later is skipped here (the later mount hides it,
//!    and `statvfs` would measure the later one);
//! 2. `--disk-exclude` on the mount point, the device, or the device without
//!    `/dev/` drops the mount; exclusions always win;
//! 3. `--disk-include` (same matching) bypasses the automatic filter;
//! 4. the automatic filter runs before `statvfs`, so pseudo and network
//!    filesystems are never touched (a dead NFS server cannot hang what is
//!    never asked);
//! 5. `statvfs`, through [`StatfsGuard`]; a mount with zero blocks is skipped;
//! 6. ZFS datasets are gathered into one entry per pool;
//! 7. the filter runs again with the sizes (a full overlay is a read-only image);
//! 8. the same device with the same size at two mount points (bind mounts,
//!    btrfs subvolumes on Synology) is reported once, at the shorter path.
//!
//! Steps 1 to 4 and the device names depend only on the mount table and the
//! patterns, so [`Mounts`] keeps their outcome until the table changes
//! (`mounts::Watch`); a cycle with an unchanged table only asks `statvfs`.
//!
//! A mount whose `statvfs` does not answer within [`Options::statfs_timeout`]
//! is marked *stuck*, left out, and not asked again until that one call
//! returns; the whole cycle never spends more than [`Options::statfs_budget`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::mounts::{self, Mount};
use super::patterns::any_matches;
use super::{Error, Options};
use crate::root::Root;
use crate::sys::FsStats;

/// One entry of `disks[]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Filesystem {
    pub device: String,
    pub mountpoint: String,
    pub fstype: String,
    pub total: u64,
    pub used: u64,
    pub free: u64,
    /// used / (used + free) × 100: the share of what a user can fill.
    pub usage: f64,
    /// A ZFS pool's datasets (`zfsDatasets`): the mounted ones seen here,
    /// replaced by `zfs list`'s when the hardware thread has it.
    pub datasets: Vec<super::zfs::Dataset>,
}

pub struct Output {
    pub filesystems: Vec<Filesystem>,
    /// Things worth a warning: hung mounts, skipped lines, a capped table.
    pub notes: Vec<String>,
}

/// File system types that never hold user data, or that are images.
const READ_ONLY_TYPES: [&str; 8] = [
    "erofs",
    "squashfs",
    "squash-fs",
    "iso9660",
    "cdfs",
    "udf",
    "cramfs",
    "romfs",
];
const VIRTUAL_TYPES: [&str; 23] = [
    "tmpfs",
    "devtmpfs",
    "cgroup",
    "cgroup2",
    "sysfs",
    "proc",
    "devpts",
    "securityfs",
    "debugfs",
    "tracefs",
    "fusectl",
    "configfs",
    "pstore",
    "hugetlbfs",
    "mqueue",
    "bpf",
    "overlay",
    "overlayfs",
    "autofs",
    "fdescfs",
    "devfs",
    "linprocfs",
    "linsysfs",
];
const NETWORK_TYPES: [&str; 5] = ["sshfs", "9p", "nfs", "cifs", "smb"];
const SKIP_PREFIXES: [&str; 10] = [
    "/dev",
    "/proc",
    "/sys",
    "/run",
    "/var/run/",
    "/var/lib/docker",
    "/var/lib/containers",
    "/snap",
    "/System/Volumes/",
    "/Library/Developer/CoreSimulator/Volumes/",
];
const SKIP_EXACT: [&str; 4] = ["/boot/efi", "/boot/firmware", "/etc/pve", "/var/run"];
const OVERLAY_PARTS: [&str; 4] = ["/overlay2/", "/overlay/", "/diff/", "/merged"];

/// The server's automatic filesystem filter (`ShouldSkipFilesystem`). With
/// `total == 0` it is the pre-`statvfs` check.
pub fn should_skip(fstype: &str, mountpoint: &str, total: u64, used: u64) -> bool {
    let t = fstype.to_ascii_lowercase();
    if READ_ONLY_TYPES.iter().any(|r| t.contains(r)) {
        return true;
    }
    if t.contains("overlay") && total > 0 && used >= total {
        return true;
    }
    if VIRTUAL_TYPES.contains(&t.as_str()) {
        return true;
    }
    if NETWORK_TYPES.iter().any(|n| t.contains(n)) {
        return true;
    }
    if SKIP_PREFIXES.iter().any(|p| mountpoint.starts_with(p)) || SKIP_EXACT.contains(&mountpoint) {
        return true;
    }
    if mountpoint.contains("System Reserved") || mountpoint.starts_with("/mnt/.ix-apps/docker/") {
        return true;
    }
    (mountpoint.contains("/containers/") || mountpoint.contains("/container_tmp/"))
        && OVERLAY_PARTS.iter().any(|p| mountpoint.contains(p))
}

fn is_zfs(fstype: &str) -> bool {
    fstype == "zfs" || fstype == "fuse.zfs"
}

/// The mounts worth a `statvfs` (filters 1 to 4 above, and each mount's
/// device name), worked out again only when the mount table changes
/// ([`mounts::Watch`]) or the patterns do.
#[derive(Default)]
pub struct Mounts {
    watch: mounts::Watch,
    plan: Option<Plan>,
}

struct Plan {
    /// The patterns the plan was made with.
    exclude: Vec<String>,
    include: Vec<String>,
    /// What the table itself is worth a warning for (malformed lines, a cap).
    notes: Vec<String>,
    /// In table order.
    measure: Vec<Candidate>,
}

struct Candidate {
    mount: Mount,
    device: String,
    /// `--disk-include` matched: the automatic filter does not apply.
    included: bool,
    zfs: bool,
}

impl Mounts {
    pub fn new() -> Mounts {
        Mounts::default()
    }

    /// How many times the mount table was read and parsed.
    pub fn parses(&self) -> u64 {
        self.watch.parses()
    }

    /// The plan for this cycle: kept while the table and patterns are.
    fn plan(&mut self, root: &Root, opts: &Options) -> Result<&Plan, Error> {
        let patterns_changed = self
            .plan
            .as_ref()
            .is_some_and(|p| p.exclude != opts.disk_exclude || p.include != opts.disk_include);
        if patterns_changed {
            self.watch.forget();
        }
        // The watch reads the table on its first call and after a forget,
        // when there is no plan or a stale one.
        if let Some(table) = self.watch.read_if_changed(root)? {
            self.plan = Some(Plan::new(root, opts, &table));
        }
        Ok(self
            .plan
            .as_ref()
            .expect("invariant: the watch read a table when there was no plan"))
    }
}

impl Plan {
    fn new(root: &Root, opts: &Options, table: &mounts::Table) -> Plan {
        let mut notes = Vec::new();
        if table.skipped_lines > 0 {
            notes.push(format!(
                "{}: skipped {} malformed line(s)",
                table.path, table.skipped_lines
            ));
        }
        if table.truncated {
            notes.push(format!(
                "{}: larger than the read cap; later mounts left out",
                table.path
            ));
        }

        let devices = resolve_devices(root, &table.mounts);
        let mut last_index: HashMap<&str, usize> = HashMap::with_capacity(table.mounts.len());
        for (i, m) in table.mounts.iter().enumerate() {
            last_index.insert(m.mountpoint.as_str(), i);
        }
        let mut measure = Vec::new();
        for (i, (m, device)) in table.mounts.iter().zip(devices).enumerate() {
            let mp = m.mountpoint.as_str();
            if mp.is_empty() || last_index.get(mp) != Some(&i) {
                continue;
            }
            let bare = device.strip_prefix("/dev/").unwrap_or(&device);
            let names = [mp, device.as_str(), bare];
            if any_matches(&opts.disk_exclude, &names) {
                continue;
            }
            let included = any_matches(&opts.disk_include, &names);
            let zfs = is_zfs(&m.fstype);
            if !zfs && !included && should_skip(&m.fstype, mp, 0, 0) {
                continue;
            }
            measure.push(Candidate {
                mount: m.clone(),
                device,
                included,
                zfs,
            });
        }
        Plan {
            exclude: opts.disk_exclude.clone(),
            include: opts.disk_include.clone(),
            notes,
            measure,
        }
    }
}

/// Collects `disks[]` for this cycle.
pub fn collect(
    root: &Root,
    opts: &Options,
    mounts: &mut Mounts,
    guard: &mut StatfsGuard,
) -> Result<Output, Error> {
    let plan = mounts.plan(root, opts)?;
    let mut notes = plan.notes.clone();

    let deadline = Instant::now() + opts.statfs_budget;
    let mut out: Vec<Filesystem> = Vec::new();
    let mut pools: BTreeMap<String, Vec<Filesystem>> = BTreeMap::new();
    let mut budget_skipped = 0usize;

    let asked: Vec<&str> = plan
        .measure
        .iter()
        .map(|c| c.mount.mountpoint.as_str())
        .collect();
    let answers = guard.stat_all(&asked, deadline, opts.statfs_timeout);
    for (c, answer) in plan.measure.iter().zip(answers) {
        let (m, device, included, zfs) = (&c.mount, &c.device, c.included, c.zfs);
        let mp = m.mountpoint.as_str();
        let stats = match answer {
            Stat::Ready(Ok(s)) => s,
            Stat::Ready(Err(_)) => continue,
            Stat::Stuck => {
                notes.push(format!(
                    "statvfs({mp}) has not returned since an earlier cycle; left out"
                ));
                continue;
            }
            Stat::TimedOut => {
                notes.push(format!(
                    "statvfs({mp}) did not answer in time; left out until it does"
                ));
                continue;
            }
            Stat::NoBudget => {
                budget_skipped += 1;
                continue;
            }
        };
        if zfs {
            // The dataset name is the mount source even for a bind of a
            // dataset's subdirectory (an LXC mount point), where the device
            // rule above would give the subdirectory.
            let fs = sizes(&m.source, m, stats);
            let pool = m.source.split('/').next().unwrap_or("");
            if fs.total > 0 && !pool.is_empty() {
                pools.entry(pool.to_string()).or_default().push(fs);
            }
            continue;
        }
        let fs = sizes(device, m, stats);
        if fs.total == 0 {
            continue;
        }
        if !included && should_skip(&fs.fstype, mp, fs.total, fs.used) {
            continue;
        }
        out.push(fs);
    }
    if budget_skipped > 0 {
        notes.push(format!(
            "statvfs budget of {:?} used up by hung mounts; {budget_skipped} mount(s) left out this cycle",
            opts.statfs_budget
        ));
    }

    let mut out = dedupe(out);
    out.extend(
        pools
            .into_iter()
            .map(|(pool, datasets)| pool_entry(pool, datasets)),
    );
    out.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    Ok(Output {
        filesystems: out,
        notes,
    })
}

/// The device name each mount is reported under: the source when it is a path
/// (or the mount is of a filesystem root), else the mount's root; mapper
/// symlinks and `/dev/root` resolved; bind mounts named after the first mount
/// of the same `major:minor`.
fn resolve_devices(root: &Root, table: &[Mount]) -> Vec<String> {
    let mut first_by_devno: HashMap<&str, String> = HashMap::new();
    let mut out = Vec::with_capacity(table.len());
    for m in table {
        let mut device = if m.source.starts_with('/') || m.root == "/" {
            m.source.clone()
        } else {
            m.root.clone()
        };
        if let Some(name) = device.strip_prefix("/dev/mapper/") {
            if let Ok(target) = root.read_link(&format!("/dev/mapper/{name}")) {
                if let Some(base) = target.file_name() {
                    device = format!("/dev/{}", base.to_string_lossy());
                }
            }
        }
        if device == "/dev/root" && !m.major_minor.is_empty() {
            if let Ok(target) = root.read_link(&format!("/sys/dev/block/{}", m.major_minor)) {
                if let Some(base) = target.file_name() {
                    device = format!("/dev/{}", base.to_string_lossy());
                }
            }
        }
        if !m.major_minor.is_empty() {
            device = first_by_devno
                .entry(m.major_minor.as_str())
                .or_insert(device)
                .clone();
        }
        out.push(device);
    }
    out
}

fn sizes(device: &str, m: &Mount, s: FsStats) -> Filesystem {
    let total = s.blocks.saturating_mul(s.block_size);
    let free = s.blocks_avail.saturating_mul(s.block_size);
    let used = s
        .blocks
        .saturating_sub(s.blocks_free)
        .saturating_mul(s.block_size);
    let denom = used as f64 + free as f64;
    Filesystem {
        device: device.to_string(),
        mountpoint: m.mountpoint.clone(),
        fstype: m.fstype.clone(),
        total,
        used,
        free,
        usage: if denom > 0.0 {
            used as f64 / denom * 100.0
        } else {
            0.0
        },
        datasets: Vec::new(),
    }
}

/// One entry per device and size, at the shortest mount point.
fn dedupe(list: Vec<Filesystem>) -> Vec<Filesystem> {
    let mut keep: Vec<Filesystem> = Vec::with_capacity(list.len());
    let mut seen: HashMap<(String, u64), usize> = HashMap::new();
    for fs in list {
        match seen.get(&(fs.device.clone(), fs.total)) {
            Some(&i) => {
                if fs.mountpoint.len() < keep[i].mountpoint.len() {
                    keep[i] = fs;
                }
            }
            None => {
                seen.insert((fs.device.clone(), fs.total), keep.len());
                keep.push(fs);
            }
        }
    }
    keep
}

/// One `disks[]` entry for a ZFS pool. Every dataset of a pool sees the same
/// free space, so the largest dataset's numbers stand for the pool until the
/// ZFS collector refines them with `zpool list`.
fn pool_entry(pool: String, datasets: Vec<Filesystem>) -> Filesystem {
    let depth = |mp: &str| mp.split('/').filter(|c| !c.is_empty()).count();
    let mountpoint = datasets
        .iter()
        .find(|d| d.mountpoint == "/")
        .or_else(|| datasets.iter().find(|d| d.device == pool))
        .or_else(|| {
            datasets.iter().min_by(|a, b| {
                (depth(&a.mountpoint), &a.mountpoint).cmp(&(depth(&b.mountpoint), &b.mountpoint))
            })
        })
        .map_or_else(|| format!("zpool:{pool}"), |d| d.mountpoint.clone());
    let largest = datasets
        .iter()
        .max_by_key(|d| d.total)
        .expect("invariant: a pool entry is made from at least one dataset");
    let mut mounted: Vec<super::zfs::Dataset> = datasets
        .iter()
        .filter(|d| d.device != pool)
        .map(|d| super::zfs::Dataset {
            name: d.device.clone(),
            kind: "filesystem".to_string(),
            mountpoint: d.mountpoint.clone(),
            used: d.used,
            available: d.free,
            referenced: 0,
        })
        .collect();
    mounted.sort_by(|a, b| a.name.cmp(&b.name));
    mounted.dedup_by(|a, b| a.name == b.name);
    mounted.truncate(super::zfs::MAX_DATASETS);
    Filesystem {
        total: largest.total,
        used: largest.used,
        free: largest.free,
        usage: largest.usage,
        device: pool,
        mountpoint,
        fstype: "zfs".to_string(),
        datasets: mounted,
    }
}

/// What became of one `statvfs` request.
#[derive(Debug)]
pub enum Stat {
    Ready(io::Result<FsStats>),
    /// An earlier call on this mount has still not returned.
    Stuck,
    /// The call did not answer before the deadline; the mount is now stuck.
    TimedOut,
    /// The cycle's budget was already spent; the mount was not asked.
    NoBudget,
}

type Reply = (String, io::Result<FsStats>);

struct Worker {
    jobs: mpsc::Sender<String>,
    replies: mpsc::Receiver<Reply>,
}

/// Runs `statvfs` on a helper thread so a hung mount costs a deadline, not the
/// report. One thread serves every call while mounts answer; when one hangs,
/// its thread is left to it and the next call starts a fresh one. A hung mount
/// is not asked again until its call returns, so at most one thread per hung
/// mount ever waits.
pub struct StatfsGuard {
    root: Root,
    worker: Option<Worker>,
    stuck: Arc<Mutex<HashSet<String>>>,
}

impl StatfsGuard {
    pub fn new(root: Root) -> StatfsGuard {
        StatfsGuard {
            root,
            worker: None,
            stuck: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Mounts whose `statvfs` is still hanging.
    pub fn stuck(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.stuck).iter().cloned().collect();
        v.sort();
        v
    }

    /// `statvfs` of each of `mountpoints`, answered in the same order. They
    /// are handed to the helper thread together, which runs them back to
    /// back (one wake-up for the lot, not two per mount); each is waited for
    /// at most `timeout` from the answer before it, and none past
    /// `deadline`. After one that does not answer, the rest go to a fresh
    /// thread.
    pub fn stat_all(
        &mut self,
        mountpoints: &[&str],
        deadline: Instant,
        timeout: Duration,
    ) -> Vec<Stat> {
        let mut out: Vec<Option<Stat>> = mountpoints.iter().map(|_| None).collect();
        let mut next = 0;
        loop {
            let ask: Vec<usize> = {
                let stuck = lock(&self.stuck);
                (next..mountpoints.len())
                    .filter(|&k| {
                        let hung = stuck.contains(mountpoints[k]);
                        if hung {
                            out[k] = Some(Stat::Stuck);
                        }
                        !hung
                    })
                    .collect()
            };
            if ask.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for k in ask {
                    out[k] = Some(Stat::NoBudget);
                }
                break;
            }
            let failed = |e: &io::Error| Stat::Ready(Err(io::Error::new(e.kind(), e.to_string())));
            let worker = match self.worker.take() {
                Some(w) => w,
                None => match self.spawn() {
                    Ok(w) => w,
                    Err(e) => {
                        for k in ask {
                            out[k] = Some(failed(&e));
                        }
                        break;
                    }
                },
            };
            if ask
                .iter()
                .any(|&k| worker.jobs.send(mountpoints[k].to_string()).is_err())
            {
                let e = io::Error::other("statvfs worker exited");
                for k in ask {
                    out[k] = Some(failed(&e));
                }
                break;
            }
            let mut since = Instant::now();
            let mut hung = None;
            for &k in &ask {
                let mp = mountpoints[k];
                if let Some(result) = recv_for(&worker.replies, mp, (since + timeout).min(deadline))
                {
                    out[k] = Some(Stat::Ready(result));
                    since = Instant::now();
                    continue;
                }
                // The worker's critical section (clear the mark, send the
                // reply) runs under the same lock, so either its reply is
                // already here or it will clear the mark we set now.
                let mut stuck = lock(&self.stuck);
                if let Ok((answered, result)) = worker.replies.try_recv() {
                    if answered == mp {
                        drop(stuck);
                        out[k] = Some(Stat::Ready(result));
                        since = Instant::now();
                        continue;
                    }
                }
                stuck.insert(mp.to_string());
                log::warn!("statvfs({mp}) did not answer in time; leaving it out until it does");
                out[k] = Some(Stat::TimedOut);
                hung = Some(k);
                break;
            }
            match hung {
                None => {
                    self.worker = Some(worker);
                    break;
                }
                // `worker` drops here: its thread exits once the hung call
                // returns (its next reply has no receiver), asking nothing more.
                Some(k) => next = k + 1,
            }
        }
        out.into_iter()
            .map(|s| s.expect("invariant: every mount point was answered or skipped"))
            .collect()
    }

    fn spawn(&self) -> io::Result<Worker> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<String>();
        let (replies_tx, replies_rx) = mpsc::channel::<Reply>();
        let root = self.root.clone();
        let stuck = Arc::clone(&self.stuck);
        std::thread::Builder::new()
            .name("statvfs".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                for mp in jobs_rx {
                    let started = Instant::now();
                    let result = root.statvfs(&mp);
                    let mut s = lock(&stuck);
                    if s.remove(&mp) {
                        log::info!(
                            "statvfs({mp}) returned after {:.0?}; reporting it again",
                            started.elapsed()
                        );
                    }
                    if replies_tx.send((mp, result)).is_err() {
                        break;
                    }
                    drop(s);
                }
            })?;
        Ok(Worker {
            jobs: jobs_tx,
            replies: replies_rx,
        })
    }
}

/// Waits until `deadline` for the reply to `mountpoint`, discarding stale replies.
fn recv_for(
    rx: &mpsc::Receiver<Reply>,
    mountpoint: &str,
    deadline: Instant,
) -> Option<io::Result<FsStats>> {
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match rx.recv_timeout(left) {
            Ok((mp, r)) if mp == mountpoint => return Some(r),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the set half-updated
    // (insert/remove are atomic), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_filter() {
        assert!(should_skip("tmpfs", "/tmp", 0, 0));
        assert!(should_skip("squashfs", "/usr/local/nvidia", 0, 0));
        assert!(should_skip("nfs4", "/mnt/media", 0, 0));
        assert!(should_skip("fuse.sshfs", "/mnt/remote", 0, 0));
        assert!(should_skip("ext4", "/boot/efi", 0, 0));
        assert!(should_skip("ext4", "/devel", 0, 0)); // plain prefix, as the server does
        assert!(should_skip("ext4", "/var/lib/docker/volumes/x", 0, 0));
        assert!(should_skip(
            "xfs",
            "/data/containers/x/overlay2/abc/merged",
            0,
            0
        ));
        assert!(should_skip("zfs", "/mnt/.ix-apps/docker/abc", 0, 0));
        assert!(!should_skip("ext4", "/", 0, 0));
        assert!(!should_skip("btrfs", "/volume1", 0, 0));
        assert!(!should_skip("fuse.mergerfs", "/mnt/storage", 0, 0));
        assert!(!should_skip("overlayfs-ish", "/x", 10, 5));
        assert!(should_skip("overlayfs-ish", "/x", 10, 10));
        assert!(should_skip("OVERLAY", "/x", 0, 0));
    }

    #[test]
    fn dedupe_keeps_shorter_mountpoint() {
        let fs = |mp: &str| Filesystem {
            device: "/dev/md2".into(),
            mountpoint: mp.into(),
            fstype: "btrfs".into(),
            total: 100,
            used: 1,
            free: 99,
            usage: 1.0,
            datasets: Vec::new(),
        };
        let out = dedupe(vec![
            fs("/volume1/@appstore"),
            fs("/volume1"),
            fs("/volume1/x"),
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].mountpoint, "/volume1");
    }

    #[test]
    fn pool_entry_prefers_root_then_pool_dataset_then_shallowest() {
        let ds = |name: &str, mp: &str, total: u64| Filesystem {
            device: name.into(),
            mountpoint: mp.into(),
            fstype: "zfs".into(),
            total,
            used: total / 2,
            free: total / 2,
            usage: 50.0,
            datasets: Vec::new(),
        };
        let p = pool_entry(
            "rpool".into(),
            vec![
                ds("rpool/data", "/rpool/data", 10),
                ds("rpool/ROOT/pve-1", "/", 20),
            ],
        );
        assert_eq!(p.mountpoint, "/");
        assert_eq!(p.total, 20);
        let p = pool_entry(
            "tank".into(),
            vec![ds("tank/a", "/mnt/tank/a", 30), ds("tank", "/mnt/tank", 10)],
        );
        assert_eq!(p.mountpoint, "/mnt/tank");
        assert_eq!(p.total, 30);
        // The mounted datasets stand in for `zfs list`; not the pool's own.
        let names: Vec<&str> = p.datasets.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["tank/a"]);
        assert_eq!(p.datasets[0].available, 15);
        let p = pool_entry(
            "t".into(),
            vec![ds("t/a/b", "/x/y/z", 1), ds("t/c", "/q/r", 1)],
        );
        assert_eq!(p.mountpoint, "/q/r");
    }
}
