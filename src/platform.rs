//! The platform sources: what a NAS or hypervisor node adds to the report
//! (`spec/pulse-collectors.md` §6.1, §6.2, §6.4; `spec/pulse-protocol.md`
//! §3.4): the Unraid array, Ceph health, the disks of running Proxmox LXC
//! containers, pending package updates and apt's package cache.
//!
//! Each source runs on its own [`Worker`] thread, started the first time it
//! is asked, so a hung `ceph`, `pct`, `mdcmd` or `apt-get` holds only its
//! own thread. A source is asked again only when its last result is older
//! than its [`Policy::refresh`] (every cycle for Unraid, whose spin states
//! and parity check move; minutes for the slow programs; 30 minutes for
//! apt), and each run gets [`Policy::budget`] as its deadline.
//!
//! A report waits for the answers no longer than the hardware workers do
//! ([`crate::hardware::WAIT`] after [`Platform::begin`], the two waits
//! overlap), and not at all for a source that was still busy when asked,
//! whose last run took longer than that, or met a program that did not
//! answer: it takes the latest result instead. A result older than its
//! refresh plus [`MAX_AGE`] is left out rather than sent as current.
//!
//! A source that finds no platform (`Ok(None)`) leaves its section and its
//! module out. One that fails keeps its module (state `retrying`, the
//! error) and sends nothing rather than stale data past [`MAX_AGE`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use std::path::{Path, PathBuf};

use crate::collect::{HostSnapshot, Outcome, SourceStatus, Stamped, ceph, packages, pct, unraid};
use crate::hardware::WAIT;
use crate::report::{Module, ModuleState};
use crate::root::Root;
use crate::worker::{Ticket, Worker};

/// A result older than its refresh plus this is not sent.
pub const MAX_AGE: Duration = Duration::from_secs(300);

/// One platform source's collector (`collect::{unraid, ceph, pct,
/// packages}`): `Ok(None)` when the platform is not on this host, `Err`
/// when it is and this run failed. A run never outlives `deadline`.
pub trait Collect: Send + 'static {
    type Data: Clone + Send + Sync + 'static;
    fn collect(&mut self, deadline: Instant) -> Result<Option<Self::Data>, String>;
    /// The run met a program that did not answer (taken: reset by reading).
    fn take_hung(&mut self) -> bool {
        false
    }
    /// What went wrong in a run that still produced its section (a
    /// container skipped, apt's simulation failing): warnings in `/status`,
    /// and the module's `lastError`.
    fn warnings(&self, _data: Option<&Self::Data>) -> Vec<String> {
        Vec::new()
    }
    /// The result is worth a module entry (package updates without a
    /// package manager this agent knows send their section, `supported:
    /// false`, but list no module).
    fn listed(_data: &Self::Data) -> bool {
        true
    }
}

/// Unraid: every cycle (a file and `mdcmd status`, both cheap); the spin
/// states and the parity check's progress move between cycles.
pub const UNRAID: Policy = Policy {
    name: unraid::MODULE,
    module: Some(unraid::MODULE),
    refresh: Duration::ZERO,
    budget: Duration::from_secs(5),
};
/// Ceph: `ceph status` and `ceph df` are Python programs of about a
/// quarter of a second of CPU each; the cluster's health is worth a minute
/// of staleness at most. Each command has 10 s (§6.1), the run 15 s.
pub const CEPH: Policy = Policy {
    name: ceph::MODULE,
    module: Some(ceph::MODULE),
    refresh: Duration::from_secs(60),
    budget: Duration::from_secs(15),
};
/// Proxmox LXC filesystems: `pct` is a Perl program that costs about a
/// third of a second of CPU per call, one call per running container; the
/// containers' disk usage moves slowly, so at most once every two minutes.
pub const LXC: Policy = Policy {
    name: pct::MODULE,
    module: Some(pct::MODULE),
    refresh: Duration::from_secs(120),
    budget: pct::BUDGET,
};
/// Package updates: apt's simulation, cached 30 minutes, 20 s per run.
pub const UPDATES: Policy = Policy {
    name: packages::MODULE,
    module: Some(packages::MODULE),
    refresh: Duration::from_secs(30 * 60),
    budget: packages::BUDGET,
};
/// apt's package cache (`storageCleanup`), cached 30 minutes.
pub const CLEANUP: Policy = Policy {
    name: "storage-cleanup",
    module: None,
    refresh: Duration::from_secs(30 * 60),
    budget: Duration::from_secs(10),
};

/// The platform sources' modules: optional, like the cluster sensors, so
/// one that fails (a Ceph cluster without monitors) is reported in its
/// module and does not make `/readyz` fail.
pub const MODULES: [&str; 4] = [unraid::MODULE, ceph::MODULE, pct::MODULE, packages::MODULE];

/// What the platform sources need from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `PULSE_PCT_PATH`.
    pub pct_path: Option<PathBuf>,
    /// The agent's clock, for `collectedAt` and `checkedAt`.
    pub clock: fn() -> SystemTime,
    /// `--once`: the one report waits for every source's run, up to its
    /// budget (there is no later report to carry a late answer).
    pub once: bool,
    /// Where apt's last answer is kept between runs (`STATE-DIR` with
    /// `--url`; never without, when the agent writes nothing there).
    pub apt_cache: Option<PathBuf>,
}

/// Every platform source.
pub struct Platform {
    root: Root,
    once: bool,
    /// `PULSE_PCT_PATH` is set: pct is asked for even when not found.
    pct_configured: bool,
    unraid: Source<unraid::Unraid>,
    ceph: Source<ceph::Ceph>,
    lxc: Source<pct::Lxc>,
    updates: Source<packages::Updates>,
    cleanup: Source<packages::Cleanup>,
    /// When Ceph was last found absent (no program, or no config).
    ceph_absent_at: Option<Instant>,
}

/// The requests of one cycle.
pub struct Pending {
    unraid: Asked,
    /// `None`: Ceph is switched off.
    ceph: Option<Asked>,
    lxc: Asked,
    updates: Asked,
    cleanup: Asked,
}

impl Platform {
    pub fn new(root: Root, settings: Settings) -> Platform {
        let clock = settings.clock;
        Platform {
            once: settings.once,
            pct_configured: settings.pct_path.is_some(),
            unraid: Source::new(UNRAID, unraid::Collector::new(root.clone()), clock),
            ceph: Source::new(CEPH, CephSource::new(root.clone()), clock),
            lxc: Source::new(
                LXC,
                pct::Collector::new(root.clone(), settings.pct_path),
                clock,
            ),
            updates: Source::new(
                UPDATES,
                AptSource::new(root.clone(), settings.apt_cache),
                clock,
            ),
            cleanup: Source::new(
                CLEANUP,
                packages::CleanupCollector::new(root.clone()),
                clock,
            ),
            ceph_absent_at: None,
            root,
        }
    }

    /// Asks every source whose result is due; Ceph only while `ceph` is on
    /// (`--disable-ceph`, the remote `disable_ceph`).
    pub fn begin(&mut self, ceph: bool) -> Pending {
        let now = Instant::now();
        if !ceph {
            // Switched on again later, it starts from a new run.
            self.ceph.forget();
        }
        // Where the platform is not, a check of its own is enough (and no
        // thread wakes): Unraid's file, a `ceph` program and its config, a
        // `pct` program (the root keeps where programs are).
        let no_unraid = !self.root.exists(unraid::VERSION_FILE);
        let no_ceph = ceph && !self.ceph_here(now);
        let no_pct = !self.pct_configured && self.root.program("pct", pct::DIRS).is_none();
        Pending {
            unraid: self.unraid.begin_unless_absent(now, no_unraid),
            ceph: ceph.then(|| self.ceph.begin_unless_absent(now, no_ceph)),
            lxc: self.lxc.begin_unless_absent(now, no_pct),
            updates: self.updates.begin(now),
            cleanup: self.cleanup.begin(now),
        }
    }

    /// Whether this host has Ceph: the program and its config. An absent
    /// answer holds for [`CEPH`]'s refresh (the source is asked no more
    /// often than that anyway), so a host without Ceph is not looked at
    /// every cycle.
    fn ceph_here(&mut self, now: Instant) -> bool {
        if self
            .ceph_absent_at
            .is_some_and(|t| now.saturating_duration_since(t) < CEPH.refresh)
        {
            return false;
        }
        let here = self.root.program("ceph", ceph::DIRS).is_some() && ceph::configured(&self.root);
        self.ceph_absent_at = (!here).then_some(now);
        here
    }

    /// Waits (within [`WAIT`] of `begin`) and puts every answer into `snap`
    /// and the module list.
    pub fn finish(
        &mut self,
        p: Pending,
        snap: &mut HostSnapshot,
        modules: &mut Vec<Module>,
        now: SystemTime,
    ) {
        let wait = |policy: Policy| match self.once {
            true => policy.budget,
            false => WAIT,
        };
        let src = &mut snap.sources;
        let w = wait(UNRAID);
        snap.unraid = self.unraid.take(p.unraid, w, src, modules, now);
        match p.ceph {
            Some(asked) => {
                let w = wait(CEPH);
                snap.ceph = self.ceph.take(asked, w, src, modules, now);
            }
            None => {
                src.push(SourceStatus {
                    name: ceph::MODULE,
                    outcome: Outcome::Absent,
                    duration: Duration::ZERO,
                    warnings: Vec::new(),
                });
                // Listed as switched off where Ceph is installed.
                match self.root.program("ceph", ceph::DIRS) {
                    Some(_) => put_module(
                        modules,
                        ceph::MODULE,
                        false,
                        ModuleState::Disabled,
                        None,
                        now,
                    ),
                    None => modules.retain(|m| m.name != ceph::MODULE),
                }
            }
        }
        let w = wait(LXC);
        snap.lxc = self.lxc.take(p.lxc, w, src, modules, now);
        let w = wait(UPDATES);
        snap.packages = self.updates.take(p.updates, w, src, modules, now);
        let w = wait(CLEANUP);
        snap.cleanup = self.cleanup.take(p.cleanup, w, src, modules, now);
    }
}

impl Collect for unraid::Collector {
    type Data = unraid::Unraid;
    fn collect(&mut self, deadline: Instant) -> Result<Option<Self::Data>, String> {
        unraid::Collector::collect(self, deadline)
    }
    fn warnings(&self, _: Option<&Self::Data>) -> Vec<String> {
        self.note().map(str::to_string).into_iter().collect()
    }
}

/// Ceph as the platform runs it. `ceph status` failing means "not a Ceph
/// node" (§6.1), which is the usual answer on a Proxmox VE node: every one
/// has the `ceph` client. But on a node that has answered before, it means
/// the monitors are gone, which is worth a module error rather than a
/// section that silently disappears.
pub struct CephSource {
    inner: ceph::Collector,
    /// A run has returned a section.
    seen: bool,
}

impl CephSource {
    pub fn new(root: Root) -> CephSource {
        CephSource {
            inner: ceph::Collector::new(root),
            seen: false,
        }
    }
}

impl Collect for CephSource {
    type Data = ceph::Ceph;
    fn collect(&mut self, deadline: Instant) -> Result<Option<Self::Data>, String> {
        match self.inner.collect(deadline) {
            Ok(Some(c)) => {
                self.seen = true;
                Ok(Some(c))
            }
            Ok(None) if self.seen => match self.inner.last_reason() {
                Some(why) if self.inner_installed() => Err(why.to_string()),
                _ => {
                    self.seen = false;
                    Ok(None)
                }
            },
            other => other,
        }
    }
    fn take_hung(&mut self) -> bool {
        self.inner.take_hung()
    }
    /// A section without its pools says why (`ceph df` failed).
    fn warnings(&self, data: Option<&Self::Data>) -> Vec<String> {
        match data {
            Some(_) => self
                .inner
                .last_reason()
                .map(str::to_string)
                .into_iter()
                .collect(),
            None => Vec::new(),
        }
    }
}

impl CephSource {
    /// The last run found a `ceph` program (it was not uninstalled).
    fn inner_installed(&self) -> bool {
        self.inner.last_reason() != Some(ceph::NOT_INSTALLED)
    }
}

impl Collect for pct::Collector {
    type Data = pct::Lxc;
    fn collect(&mut self, deadline: Instant) -> Result<Option<Self::Data>, String> {
        pct::Collector::collect(self, deadline)
    }
    fn take_hung(&mut self) -> bool {
        pct::Collector::take_hung(self)
    }
    fn warnings(&self, data: Option<&Self::Data>) -> Vec<String> {
        data.map(|l| {
            l.skipped
                .iter()
                .map(|s| format!("container {} ({}): {}", s.vmid, s.name, s.reason))
                .collect()
        })
        .unwrap_or_default()
    }
}

/// What apt's answer depends on: dpkg's database, the package lists, apt's
/// configuration (sources, pinning, options).
const APT_INPUTS: &[&str] = &[
    "/var/lib/dpkg/status",
    "/var/lib/apt/lists",
    "/etc/apt",
    "/etc/apt/sources.list.d",
    "/etc/apt/preferences.d",
    "/etc/apt/apt.conf.d",
];
/// Entries of one input directory looked at (a lists directory holds a few
/// hundred at most).
const APT_INPUT_ENTRIES: usize = 10_000;
/// An unchanged answer is trusted this long, then apt is asked again anyway.
const APT_REUSE: Duration = Duration::from_secs(24 * 3600);

/// Package updates as the platform runs them. apt's simulation costs a
/// second or more of CPU (it builds its cache in memory rather than write
/// it), and its answer can only change when what it reads does: each
/// refresh compares the inputs' sizes and times ([`APT_INPUTS`]) with the
/// last run's, and while they are the same it re-reads only the reboot flag.
///
/// With a cache file (`STATE-DIR/packages.json`, with `--url`), the last
/// answer outlives the process, so `--once` from a timer runs apt only when
/// something changed, not every minute. The file is written only after apt
/// ran, so the happy path writes nothing.
pub struct AptSource {
    root: Root,
    inner: packages::Collector,
    cache: Option<PathBuf>,
    last: Option<AptAnswer>,
}

/// apt's last answer and what it was made from.
#[derive(Debug, Clone, PartialEq)]
struct AptAnswer {
    /// `sha256:` of the inputs' names, sizes, inodes and times.
    inputs: String,
    updates: packages::Updates,
    at: SystemTime,
}

impl AptSource {
    pub fn new(root: Root, cache: Option<PathBuf>) -> AptSource {
        let last = cache.as_deref().and_then(load_apt_answer);
        AptSource {
            inner: packages::Collector::new(root.clone()),
            root,
            cache,
            last,
        }
    }

    /// A digest of the inputs' names, sizes, inodes and modification times.
    fn inputs(&self) -> String {
        use sha2::{Digest, Sha256};
        use std::os::unix::fs::MetadataExt;
        let mut h = Sha256::new();
        let stat = |path: &Path, h: &mut Sha256| match std::fs::symlink_metadata(path) {
            Ok(m) => h.update(format!(
                "{} {} {} {} {}\n",
                m.size(),
                m.ino(),
                m.mtime(),
                m.mtime_nsec(),
                m.is_dir()
            )),
            Err(e) => h.update(format!("{:?}\n", e.kind())),
        };
        for input in APT_INPUTS {
            let path = self.root.path(input);
            h.update(input.as_bytes());
            stat(&path, &mut h);
            if let Ok(mut names) = self.root.read_dir(input) {
                names.sort();
                names.truncate(APT_INPUT_ENTRIES);
                for n in names {
                    h.update(n.as_bytes());
                    stat(&path.join(&n), &mut h);
                }
            }
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }
}

impl Collect for AptSource {
    type Data = packages::Updates;
    fn collect(&mut self, deadline: Instant) -> Result<Option<Self::Data>, String> {
        let inputs = self.inputs();
        if let Some(last) = &self.last {
            let young = SystemTime::now()
                .duration_since(last.at)
                .is_ok_and(|age| age < APT_REUSE);
            if last.inputs == inputs && young {
                let mut u = last.updates.clone();
                u.reboot_required = packages::reboot_required(&self.root);
                return Ok(Some(u));
            }
        }
        let r = self.inner.collect(deadline);
        self.last = match &r {
            Ok(Some(u)) if u.supported && u.error.is_none() => Some(AptAnswer {
                inputs,
                updates: u.clone(),
                at: SystemTime::now(),
            }),
            _ => None,
        };
        if let (Some(path), Some(last)) = (&self.cache, &self.last) {
            if let Err(e) = crate::state::write_atomic(path, &apt_answer_json(last)) {
                log::debug!("cannot keep apt's answer in {}: {e}", path.display());
            }
        }
        r
    }
    fn take_hung(&mut self) -> bool {
        self.inner.take_hung()
    }
    fn warnings(&self, data: Option<&Self::Data>) -> Vec<String> {
        data.and_then(|u| u.error.clone()).into_iter().collect()
    }
    fn listed(u: &Self::Data) -> bool {
        u.supported
    }
}

/// Cap on the cache file: a release upgrade of a large desktop lists a few
/// thousand packages of ~100 bytes.
const APT_CACHE_CAP: u64 = 4 * 1024 * 1024;

fn apt_answer_json(a: &AptAnswer) -> Vec<u8> {
    let at =
        a.at.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
    let packages: Vec<serde_json::Value> = a
        .updates
        .pending
        .iter()
        .map(|p| serde_json::json!([p.name, p.installed, p.available]))
        .collect();
    let doc = serde_json::json!({
        "inputs": a.inputs,
        "at": at,
        "manager": a.updates.manager,
        "inventoryHash": a.updates.inventory_hash,
        "pending": packages,
    });
    serde_json::to_vec(&doc).expect("invariant: a Value serialises")
}

/// The cache file's answer; anything odd in it (a file from another
/// version, a truncated one) is no answer: apt runs again.
fn load_apt_answer(path: &Path) -> Option<AptAnswer> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(APT_CACHE_CAP)
        .read_to_string(&mut text)
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let s = |k: &str| v.get(k)?.as_str().map(str::to_string);
    let pending = v
        .get("pending")?
        .as_array()?
        .iter()
        .map(|p| {
            let p = p.as_array()?;
            Some(packages::Package {
                name: p.first()?.as_str()?.to_string(),
                installed: match p.get(1)? {
                    serde_json::Value::Null => None,
                    i => Some(i.as_str()?.to_string()),
                },
                available: p.get(2)?.as_str()?.to_string(),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(AptAnswer {
        inputs: s("inputs")?,
        at: std::time::UNIX_EPOCH + Duration::from_secs(v.get("at")?.as_u64()?),
        updates: packages::Updates {
            supported: true,
            manager: s("manager")?,
            inventory_hash: s("inventoryHash")?,
            pending,
            reboot_required: false,
            error: None,
        },
    })
}

impl Collect for packages::CleanupCollector {
    type Data = packages::Cleanup;
    fn collect(&mut self, deadline: Instant) -> Result<Option<Self::Data>, String> {
        packages::CleanupCollector::collect(self, deadline)
    }
    fn warnings(&self, data: Option<&Self::Data>) -> Vec<String> {
        data.and_then(|c| c.error.clone()).into_iter().collect()
    }
}

/// How often a source runs and how long it may take.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The source's name in `/status` and `/metrics`.
    pub name: &'static str,
    /// Its `agent.modules[]` entry while the platform is present (`None`:
    /// it has none, like apt's package cache, which rides with the updates).
    pub module: Option<&'static str>,
    /// A result younger than this is reused without asking.
    pub refresh: Duration,
    /// One run's deadline.
    pub budget: Duration,
}

/// One run's result, stamped when it ended.
#[derive(Debug)]
pub struct Run<T> {
    pub result: Result<Option<Arc<T>>, String>,
    /// The agent's clock when the run ended (`collectedAt`, `checkedAt`).
    pub at: SystemTime,
    /// When it ended, for [`Policy::refresh`].
    pub ended: Instant,
    pub took: Duration,
    pub hung: bool,
    pub warnings: Vec<String>,
    /// [`Collect::listed`].
    pub listed: bool,
}

type Job<T> = Box<dyn FnMut(Instant) -> Run<T> + Send>;

/// One source: its worker (started on the first ask) and what the report
/// last learnt from it.
pub struct Source<T> {
    pub policy: Policy,
    make: Option<Job<T>>,
    worker: Option<Worker<Instant, Run<T>>>,
    /// Forgotten (switched off): only a run asked after that counts, even
    /// if one that was going then ends later.
    forgotten: bool,
}

/// A request of one cycle.
pub struct Asked {
    started: Instant,
    ticket: Option<Ticket>,
}

impl<T: Clone + Send + Sync + 'static> Source<T> {
    pub fn new<C: Collect<Data = T>>(
        policy: Policy,
        mut collector: C,
        clock: fn() -> SystemTime,
    ) -> Source<T> {
        let job = move |deadline: Instant| {
            let started = Instant::now();
            let result = collector.collect(deadline).map(|d| d.map(Arc::new));
            let data = result.as_ref().ok().and_then(Option::as_deref);
            let warnings = collector.warnings(data);
            let listed = data.is_none_or(C::listed);
            Run {
                result,
                warnings,
                listed,
                at: clock(),
                ended: Instant::now(),
                took: started.elapsed(),
                hung: collector.take_hung(),
            }
        };
        Source {
            policy,
            make: Some(Box::new(job)),
            worker: None,
            forgotten: false,
        }
    }

    /// [`Source::begin`] for a source whose platform the caller has just
    /// found absent with a check of its own (one `stat`): before any run,
    /// or while the latest run found it absent too and is younger than half
    /// of [`MAX_AGE`], nothing is asked, so no thread is started or woken
    /// for a platform that is not there; the report carries that run's
    /// answer (or, before any, the platform's absence).
    pub fn begin_unless_absent(&mut self, started: Instant, absent: bool) -> Asked {
        let absent_before = match &self.worker {
            // Never asked: the check alone is enough, and no thread is ever
            // started for a platform this host does not have.
            None => true,
            Some(w) => w
                .peek()
                .is_some_and(|r| matches!(r.result, Ok(None)) && r.ended.elapsed() < MAX_AGE / 2),
        };
        if absent && absent_before && !self.forgotten {
            return Asked {
                started,
                ticket: None,
            };
        }
        self.begin(started)
    }

    /// Asks for a run unless the latest result is younger than the refresh.
    pub fn begin(&mut self, started: Instant) -> Asked {
        let due = match self.worker.as_ref().and_then(|w| w.peek()) {
            Some(r) => self.forgotten || r.ended.elapsed() >= self.policy.refresh,
            None => true,
        };
        let ticket = due.then(|| self.ask(started)).flatten();
        Asked { started, ticket }
    }

    fn ask(&mut self, started: Instant) -> Option<Ticket> {
        if self.worker.is_none() {
            let job = self.make.take()?;
            match Worker::start(&format!("pf-{}", self.policy.name), job) {
                Ok(w) => self.worker = Some(w),
                Err(e) => {
                    log::warn!("{}: cannot start a thread: {e}", self.policy.name);
                    return None;
                }
            }
        }
        let deadline = started + self.policy.budget;
        self.worker.as_ref().map(|w| w.ask(deadline))
    }

    /// The result this report carries: this cycle's run if it answers
    /// within `wait` of `begin` (the first report waits for the first run
    /// that long too), else the latest one still young enough.
    pub fn finish(&mut self, asked: Asked, wait: Duration) -> Option<Arc<Run<T>>> {
        let w = self.worker.as_ref()?;
        let latest = match asked.ticket {
            None => w.peek(),
            Some(t) => {
                let last = w.peek();
                let slow = last.as_ref().is_some_and(|r| r.hung || r.took > wait);
                let deadline = if t.behind || slow {
                    Instant::now()
                } else {
                    asked.started + wait
                };
                let answer = w.wait(t, deadline);
                if answer.fresh {
                    self.forgotten = false;
                }
                answer.latest
            }
        };
        if self.forgotten {
            return None;
        }
        latest.filter(|r| r.ended.elapsed() <= self.policy.refresh + MAX_AGE)
    }

    /// [`Source::finish`], then [`apply`]: the report's data, its status
    /// line and module entry.
    pub fn take(
        &mut self,
        asked: Asked,
        wait: Duration,
        sources: &mut Vec<SourceStatus>,
        modules: &mut Vec<Module>,
        now: SystemTime,
    ) -> Option<Stamped<T>> {
        let begun = asked.started;
        let run = self.finish(asked, wait);
        let pending = (run.is_none() && self.worker.is_some()).then(|| begun.elapsed());
        let took = run.as_ref().map_or(Duration::ZERO, |r| r.took);
        apply(&self.policy, run, pending, took, sources, modules, now)
    }

    /// Forgets the latest result (a source switched off), so switching it
    /// on again never sends what it found before.
    pub fn forget(&mut self) {
        if let Some(w) = &self.worker {
            w.forget();
            self.forgotten = true;
        }
    }
}

/// What a finished source contributes: its status line, its data, and its
/// module's state.
pub fn apply<T: Clone>(
    policy: &Policy,
    run: Option<Arc<Run<T>>>,
    pending: Option<Duration>,
    took: Duration,
    sources: &mut Vec<SourceStatus>,
    modules: &mut Vec<Module>,
    now: SystemTime,
) -> Option<Stamped<T>> {
    let mut status = SourceStatus {
        name: policy.name,
        outcome: Outcome::Ok,
        duration: took,
        warnings: Vec::new(),
    };
    let (data, module) = match run.as_deref() {
        // Asked, and nothing yet: the platform's presence is not known, so
        // its module is left as it is.
        None if pending.is_some() => {
            let waited = pending.unwrap_or_default();
            status.outcome = Outcome::Failed(format!(
                "the first run has not finished (waited {:.1} s)",
                waited.as_secs_f64()
            ));
            sources.push(status);
            return None;
        }
        None => {
            status.outcome = Outcome::Absent;
            (None, None)
        }
        Some(Run {
            result: Ok(None), ..
        }) => {
            status.outcome = Outcome::Absent;
            (None, None)
        }
        Some(Run {
            result: Ok(Some(v)),
            at,
            warnings,
            listed,
            ..
        }) => {
            status.warnings.clone_from(warnings);
            let error = (!warnings.is_empty()).then(|| warnings.join("; "));
            (
                Some(Stamped {
                    value: Arc::clone(v),
                    at: *at,
                }),
                listed.then_some((ModuleState::Running, error)),
            )
        }
        Some(Run { result: Err(e), .. }) => {
            status.outcome = Outcome::Failed(e.clone());
            (None, Some((ModuleState::Retrying, Some(e.clone()))))
        }
    };
    sources.push(status);
    if let Some(name) = policy.module {
        match module {
            Some((state, error)) => put_module(modules, name, true, state, error, now),
            // Only a module that was listed goes: a platform that went away.
            None => modules.retain(|m| m.name != name),
        }
    }
    data
}

/// Adds or updates a module's entry; `updatedAt` moves only on a change.
pub fn put_module(
    modules: &mut Vec<Module>,
    name: &'static str,
    enabled: bool,
    state: ModuleState,
    last_error: Option<String>,
    at: SystemTime,
) {
    match modules.iter_mut().find(|m| m.name == name) {
        Some(m) => {
            if m.enabled != enabled || m.state != state || m.last_error != last_error {
                m.enabled = enabled;
                m.state = state;
                m.last_error = last_error;
                m.updated_at = at;
            }
        }
        None => modules.push(Module {
            name,
            enabled,
            state,
            last_error,
            updated_at: at,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Where Ceph is not, the answer holds for Ceph's refresh: a config
    /// that appears meanwhile is seen at the refresh, not at the next cycle.
    /// A present answer is not kept: a config removed is seen at once.
    #[test]
    fn ceph_absence_is_kept_for_its_refresh_then_looked_at_again() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pulse-platform-ceph-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(".capture/bin")).unwrap();
        std::fs::create_dir_all(dir.join("etc/ceph")).unwrap();
        let ceph = dir.join(".capture/bin/ceph");
        std::fs::write(&ceph, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&ceph, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut p = Platform::new(
            Root::new(&dir).unwrap(),
            Settings {
                pct_path: None,
                clock: SystemTime::now,
                once: false,
                apt_cache: None,
            },
        );
        let t0 = Instant::now();
        assert!(!p.ceph_here(t0));
        let conf = dir.join("etc/ceph/ceph.conf");
        std::fs::write(&conf, "[global]\n").unwrap();
        assert!(
            !p.ceph_here(t0 + CEPH.refresh - Duration::from_secs(1)),
            "looked at again before the refresh"
        );
        assert!(p.ceph_here(t0 + CEPH.refresh));
        std::fs::remove_file(&conf).unwrap();
        assert!(!p.ceph_here(t0 + CEPH.refresh + Duration::from_millis(1)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Answers from a script: each run takes the next step (the last repeats).
    struct Scripted {
        runs: Arc<AtomicUsize>,
        steps: Vec<(Duration, Result<Option<u32>, String>)>,
    }

    impl Collect for Scripted {
        type Data = u32;
        fn collect(&mut self, deadline: Instant) -> Result<Option<u32>, String> {
            let n = self.runs.fetch_add(1, Ordering::SeqCst);
            let (sleep, r) = self.steps[n.min(self.steps.len() - 1)].clone();
            std::thread::sleep(sleep.min(deadline.saturating_duration_since(Instant::now())));
            r
        }
    }

    fn source(
        refresh: Duration,
        steps: Vec<(Duration, Result<Option<u32>, String>)>,
    ) -> (Source<u32>, Arc<AtomicUsize>) {
        let runs = Arc::new(AtomicUsize::new(0));
        let policy = Policy {
            name: "test",
            module: Some("test-module"),
            refresh,
            budget: Duration::from_secs(5),
        };
        let s = Source::new(
            policy,
            Scripted {
                runs: runs.clone(),
                steps,
            },
            SystemTime::now,
        );
        (s, runs)
    }

    fn cycle(s: &mut Source<u32>, wait: Duration, modules: &mut Vec<Module>) -> Option<u32> {
        let asked = s.begin(Instant::now());
        let mut sources = Vec::new();
        s.take(asked, wait, &mut sources, modules, SystemTime::now())
            .map(|d| *d.value)
    }

    #[test]
    fn a_result_younger_than_the_refresh_is_reused_without_asking() {
        let (mut s, runs) = source(
            Duration::from_secs(3600),
            vec![(Duration::ZERO, Ok(Some(7)))],
        );
        let mut modules = Vec::new();
        for _ in 0..3 {
            assert_eq!(cycle(&mut s, Duration::from_secs(2), &mut modules), Some(7));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(modules.len(), 1);
        assert_eq!(modules[0].state, ModuleState::Running);
    }

    /// Unraid's worker was asked (a thread woken) every cycle on every host,
    /// to stat a file that is not there; and its thread was started for the
    /// first such run. While the platform's own check says it is absent,
    /// nothing is asked and no thread exists; once present, the source is
    /// asked at once.
    #[test]
    fn an_absent_platform_is_not_asked_every_cycle() {
        let (mut s, runs) = source(Duration::ZERO, vec![(Duration::ZERO, Ok(None))]);
        let mut modules = Vec::new();
        let mut cycle = |absent: bool| {
            let asked = s.begin_unless_absent(Instant::now(), absent);
            let mut sources = Vec::new();
            let wait = Duration::from_secs(2);
            let data = s.take(asked, wait, &mut sources, &mut modules, SystemTime::now());
            assert!(data.is_none());
            assert_eq!(sources[0].outcome, Outcome::Absent);
        };
        for _ in 0..4 {
            cycle(true);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 0, "asked while absent");
        cycle(false);
        assert_eq!(runs.load(Ordering::SeqCst), 1, "not asked once present");
        for _ in 0..4 {
            cycle(true);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "asked again while absent");
    }

    #[test]
    fn an_absent_platform_starts_no_thread() {
        let (mut s, runs) = source(Duration::ZERO, vec![(Duration::ZERO, Ok(None))]);
        for _ in 0..3 {
            let asked = s.begin_unless_absent(Instant::now(), true);
            s.take(
                asked,
                Duration::ZERO,
                &mut Vec::new(),
                &mut Vec::new(),
                SystemTime::now(),
            );
        }
        assert!(
            s.worker.is_none(),
            "a thread was started for an absent platform"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 0);
    }

    /// Every report between two runs copied the run's data (the package
    /// list, Unraid's disks). They share it.
    #[test]
    fn reports_between_two_runs_share_the_runs_data() {
        let (mut s, _) = source(
            Duration::from_secs(3600),
            vec![(Duration::ZERO, Ok(Some(7)))],
        );
        let mut modules = Vec::new();
        let mut take = || {
            let asked = s.begin(Instant::now());
            let at = SystemTime::now();
            s.take(
                asked,
                Duration::from_secs(2),
                &mut Vec::new(),
                &mut modules,
                at,
            )
            .expect("data")
        };
        let (a, b) = (take(), take());
        assert!(Arc::ptr_eq(&a.value, &b.value));
    }

    #[test]
    fn a_hung_source_costs_one_report_the_wait_and_later_ones_nothing() {
        let hang = Duration::from_millis(1500);
        let (mut s, _) = source(
            Duration::ZERO,
            vec![(Duration::ZERO, Ok(Some(1))), (hang, Ok(Some(2)))],
        );
        let mut modules = Vec::new();
        let wait = Duration::from_millis(300);
        assert_eq!(cycle(&mut s, wait, &mut modules), Some(1));
        // The second run hangs: the report waits `wait`, then takes run 1.
        let t = Instant::now();
        assert_eq!(cycle(&mut s, wait, &mut modules), Some(1));
        assert!(
            t.elapsed() < wait + Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        // Asked while still busy: no wait at all.
        let t = Instant::now();
        assert_eq!(cycle(&mut s, wait, &mut modules), Some(1));
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        // Once it answers, its result is used; its slowness (took > wait)
        // means the report does not wait for the next one either.
        std::thread::sleep(hang * 2 + Duration::from_millis(200));
        let t = Instant::now();
        assert_eq!(cycle(&mut s, wait, &mut modules), Some(2));
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn module_follows_the_platform_absent_failing_and_gone() {
        let (mut s, _) = source(
            Duration::ZERO,
            vec![
                (Duration::ZERO, Ok(None)),
                (
                    Duration::ZERO,
                    Err("ceph status: exit 1: no monitors".into()),
                ),
                (Duration::ZERO, Ok(Some(3))),
                (Duration::ZERO, Ok(None)),
            ],
        );
        let mut m = Vec::new();
        let wait = Duration::from_secs(2);
        assert_eq!(cycle(&mut s, wait, &mut m), None);
        assert!(m.is_empty(), "an absent platform lists no module");
        assert_eq!(cycle(&mut s, wait, &mut m), None);
        assert_eq!(m[0].state, ModuleState::Retrying);
        assert_eq!(
            m[0].last_error.as_deref(),
            Some("ceph status: exit 1: no monitors")
        );
        assert_eq!(cycle(&mut s, wait, &mut m), Some(3));
        assert_eq!(
            (m[0].state, m[0].last_error.as_deref()),
            (ModuleState::Running, None)
        );
        assert_eq!(cycle(&mut s, wait, &mut m), None);
        assert!(
            m.is_empty(),
            "a platform that went away takes its module along"
        );
    }

    #[test]
    fn a_run_going_when_forgotten_does_not_count_once_it_ends() {
        let slow = Duration::from_millis(600);
        let (mut s, runs) = source(
            Duration::from_secs(3600),
            vec![(slow, Ok(Some(1))), (Duration::ZERO, Ok(Some(2)))],
        );
        let mut modules = Vec::new();
        // The first run is still going when the source is switched off.
        assert_eq!(cycle(&mut s, Duration::from_millis(50), &mut modules), None);
        s.forget();
        std::thread::sleep(slow + Duration::from_millis(200));
        // On again: run 1 has ended since, but only a run asked now counts.
        assert_eq!(cycle(&mut s, Duration::from_secs(2), &mut modules), Some(2));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_forgotten_result_is_not_sent_again() {
        let (mut s, runs) = source(
            Duration::from_secs(3600),
            vec![(Duration::ZERO, Ok(Some(5)))],
        );
        let mut modules = Vec::new();
        assert_eq!(cycle(&mut s, Duration::from_secs(2), &mut modules), Some(5));
        s.forget();
        assert_eq!(cycle(&mut s, Duration::from_secs(2), &mut modules), Some(5));
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "forgetting makes the next cycle ask"
        );
    }
}
