//! `Root`: the only way any code reads the host.
//!
//! Every `/proc`, `/sys`, `/etc`, `/run` and `/dev` path the agent touches is
//! resolved below a base directory (`/` in production, `/host` for an agent in
//! a container, a fixture tree in tests). Reads are capped: procfs and sysfs
//! report a size of 0 or 4096 whatever the content, so `metadata().len()` is
//! never trusted.
//!
//! Four facts do not come from files: filesystem sizes (`statvfs`), interface
//! addresses (`getifaddrs`), the machine architecture when the kernel has no
//! `/proc/sys/kernel/arch`, and which external programs exist. A *live* root
//! asks the kernel (and the file system) for them (where a program is, it
//! asks again at most every [`PROGRAM_RECHECK`]). A
//! *captured* root (a directory holding `.capture/`, as written by
//! `contrib/capture-host`) answers from recorded files instead, so a whole
//! machine can be replayed byte for byte:
//!
//! * `.capture/statvfs`: one mount per line, `MOUNTPOINT BSIZE BLOCKS BFREE BAVAIL`,
//!   or `MOUNTPOINT slow SECONDS BSIZE BLOCKS BFREE BAVAIL` (the first call
//!   answers after a delay, later ones at once, like an NFS server that was
//!   overloaded for a moment), `MOUNTPOINT hang` (never returns,
//!   like a dead one) or `MOUNTPOINT error` (EIO). Mount points use
//!   mountinfo's octal escapes.
//! * `.capture/ip-addr`: the output of `ip -o addr show`.
//! * `.capture/uname-m`: the output of `uname -m`.
//! * `.capture/bin/<program>`: the external programs (mdadm, zpool, zfs,
//!   nvidia-smi, sensors) of the captured machine, usually links to
//!   `vendor-free-tests/fake-program`, which replays `.capture/cmd/`. A program
//!   not there is absent on that machine.
//!
//! This module never interprets file contents; parsers live in `collect/`.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::exec;
use crate::sys::{self, FsStats, IfAddr};

/// Where the host's files are, and how the non-file facts are answered.
#[derive(Clone)]
pub struct Root {
    base: PathBuf,
    facts: Facts,
    /// Procfs files read every cycle, kept open ([`Root::read_kept`]).
    kept: Arc<Mutex<HashMap<&'static str, std::fs::File>>>,
    /// A live root's program lookups and when each was made ([`Root::program`]).
    programs: Arc<Mutex<HashMap<String, Lookup>>>,
}

/// Where a program was found (or not), and when.
type Lookup = (Option<PathBuf>, Instant);

/// How long a live root keeps the answer to "where is this program": a
/// program installed meanwhile is found at most this much later. (A search
/// that finds nothing stats every candidate directory, which every cycle
/// would do again for `nvidia-smi`, and for `sensors` on a host without
/// hwmon temperatures.)
pub const PROGRAM_RECHECK: Duration = Duration::from_secs(300);

#[derive(Clone)]
enum Facts {
    Live,
    Captured(Arc<Capture>),
}

struct Capture {
    statvfs: HashMap<String, CapturedStat>,
    /// `slow` mounts whose one slow answer has been given.
    slowed: std::sync::Mutex<std::collections::HashSet<String>>,
    ip_addr: Option<String>,
    machine: Option<String>,
}

#[derive(Clone, Copy)]
enum CapturedStat {
    Stats(FsStats),
    Slow(std::time::Duration, FsStats),
    Hang,
    Error,
}

/// A pseudo-file read with a size cap.
#[derive(Debug)]
pub struct Capped {
    pub text: String,
    /// The file held more than the cap; `text` ends at the last whole line
    /// before it.
    pub truncated: bool,
}

/// A failed read, naming the path as the user would type it (inside the root).
#[derive(Debug)]
pub struct ReadError {
    pub path: String,
    pub source: io::Error,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.source)
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl ReadError {
    /// The file (or a directory above it) does not exist: the source is absent,
    /// not broken.
    pub fn is_not_found(&self) -> bool {
        self.source.kind() == io::ErrorKind::NotFound
    }
}

/// Default cap for small pseudo-files.
pub const SMALL: usize = 64 * 1024;
/// Cap for files that grow with the machine (diskstats, net/dev, cpuinfo).
pub const LARGE: usize = 4 * 1024 * 1024;
/// Links followed by [`Root::exists_following`] before it gives up, as
/// Linux's `ELOOP` limit.
pub const MAX_LINKS: usize = 40;
/// Cap for mount tables: Kubernetes nodes carry tens of thousands of mounts.
pub const MOUNTS: usize = 32 * 1024 * 1024;

impl Root {
    /// A root at `base`. If `base/.capture/` exists the non-file facts come from
    /// it (see the module docs); otherwise from the running kernel.
    pub fn new(base: impl Into<PathBuf>) -> io::Result<Root> {
        let base = base.into();
        let capture_dir = base.join(".capture");
        let facts = if capture_dir.is_dir() {
            Facts::Captured(Arc::new(Capture::load(&capture_dir)?))
        } else {
            Facts::Live
        };
        Ok(Root {
            base,
            facts,
            kept: Arc::default(),
            programs: Arc::default(),
        })
    }

    /// The real host: `/`, live facts.
    pub fn host() -> Root {
        Root {
            base: PathBuf::from("/"),
            facts: Facts::Live,
            kept: Arc::default(),
            programs: Arc::default(),
        }
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    pub fn is_captured(&self) -> bool {
        matches!(self.facts, Facts::Captured(_))
    }

    /// `abs` (an absolute host path such as `/proc/stat`) below the base.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.base.join(abs.trim_start_matches('/'))
    }

    fn err(&self, abs: &str, source: io::Error) -> ReadError {
        ReadError {
            path: abs.to_string(),
            source,
        }
    }

    /// Reads at most `cap` bytes of `abs`. Invalid UTF-8 is replaced, never an
    /// error: a garbled byte in one line must not lose the rest of the file.
    pub fn read_capped(&self, abs: &str, cap: usize) -> Result<Capped, ReadError> {
        let file = std::fs::File::open(self.path(abs)).map_err(|e| self.err(abs, e))?;
        read_at_most(file, cap).map_err(|e| self.err(abs, e))
    }

    /// [`Root::read_capped`] for a fixed procfs path read every cycle
    /// (`/proc/stat`, `/proc/meminfo`, ...): the file stays open and is read
    /// again from its start, which procfs answers with fresh content, so a
    /// cycle saves the path lookup, the open and the close. Anything not on
    /// procfs (a captured tree) is opened for each read as usual; a kept file
    /// that fails a read is closed and opened again.
    pub fn read_kept(&self, abs: &'static str, cap: usize) -> Result<Capped, ReadError> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = kept.get(abs) {
            match self.reread(abs, file, cap) {
                Ok(c) => return Ok(c),
                Err(_) => {
                    kept.remove(abs);
                }
            }
        }
        let file = self.open(abs)?;
        let c = read_at_most(&file, cap).map_err(|e| self.err(abs, e))?;
        if matches!(sys::is_procfs(file.as_fd()), Ok(true)) {
            kept.insert(abs, file);
        }
        Ok(c)
    }

    /// Opens `abs` to be kept and read again with [`Root::reread`] (a mount
    /// table, re-read only when it says it changed).
    pub fn open(&self, abs: &str) -> Result<std::fs::File, ReadError> {
        std::fs::File::open(self.path(abs)).map_err(|e| self.err(abs, e))
    }

    /// Reads `file`, opened from `abs` with [`Root::open`], again from its
    /// start: at most `cap` bytes, like [`Root::read_capped`].
    pub fn reread(
        &self,
        abs: &str,
        mut file: &std::fs::File,
        cap: usize,
    ) -> Result<Capped, ReadError> {
        use std::io::Seek;
        file.seek(io::SeekFrom::Start(0))
            .map_err(|e| self.err(abs, e))?;
        read_at_most(file, cap).map_err(|e| self.err(abs, e))
    }

    /// `stat(abs)`, following links.
    pub fn metadata(&self, abs: &str) -> Result<std::fs::Metadata, ReadError> {
        std::fs::metadata(self.path(abs)).map_err(|e| self.err(abs, e))
    }

    /// Reads a small file whole (up to [`SMALL`]).
    pub fn read(&self, abs: &str) -> Result<String, ReadError> {
        self.read_capped(abs, SMALL).map(|c| c.text)
    }

    /// The first line of a small file, trimmed; `None` if absent or empty.
    pub fn read_trimmed(&self, abs: &str) -> Option<String> {
        let text = self.read(abs).ok()?;
        let t = text.trim();
        (!t.is_empty()).then(|| t.to_string())
    }

    pub fn exists(&self, abs: &str) -> bool {
        self.path(abs).symlink_metadata().is_ok()
    }

    /// Whether `abs` exists once every link on the way to it is followed
    /// inside the root. An absolute link target is a path on the host, so
    /// with `--root /host` the Proxmox link `/etc/ceph/ceph.conf ->
    /// /etc/pve/ceph.conf` is looked up as `/host/etc/pve/ceph.conf`, never as
    /// the container's own file (which the kernel would follow to). A
    /// dangling link, or more than [`MAX_LINKS`] of them, is `false`.
    pub fn exists_following(&self, abs: &str) -> bool {
        self.resolve(abs)
            .is_some_and(|p| self.path(&p).symlink_metadata().is_ok())
    }

    /// `abs` as a host path with every link on the way resolved inside the
    /// root, the way the host's kernel would resolve it; `None` after
    /// [`MAX_LINKS`] links (a loop). Components that do not exist are kept
    /// as they are.
    fn resolve(&self, abs: &str) -> Option<String> {
        let mut pending: Vec<String> = abs.split('/').rev().map(String::from).collect();
        let mut done: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(name) = pending.pop() {
            match name.as_str() {
                "" | "." => continue,
                ".." => {
                    done.pop();
                    continue;
                }
                _ => done.push(name),
            }
            let Ok(target) = std::fs::read_link(self.path(&done.join("/"))) else {
                continue;
            };
            links += 1;
            if links > MAX_LINKS {
                return None;
            }
            done.pop();
            if target.is_absolute() {
                done.clear();
            }
            pending.extend(target.to_str()?.split('/').rev().map(String::from));
        }
        Some(format!("/{}", done.join("/")))
    }

    /// Names in a directory, sorted; hidden entries included.
    pub fn read_dir(&self, abs: &str) -> Result<Vec<String>, ReadError> {
        let rd = std::fs::read_dir(self.path(abs)).map_err(|e| self.err(abs, e))?;
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    pub fn read_link(&self, abs: &str) -> Result<PathBuf, ReadError> {
        std::fs::read_link(self.path(abs)).map_err(|e| self.err(abs, e))
    }

    /// `realpath(abs)` as a host path (symlinks inside the root resolved
    /// inside it); `None` if it does not resolve or leaves the root.
    pub fn real_path(&self, abs: &str) -> Option<String> {
        let base = std::fs::canonicalize(&self.base).ok()?;
        let real = std::fs::canonicalize(self.path(abs)).ok()?;
        let rel = real.strip_prefix(&base).ok()?;
        Some(format!("/{}", rel.to_str()?))
    }

    /// The program `name`: on a live root the first executable of `dirs`,
    /// then `PATH` ([`exec::find_in`]), the answer kept for
    /// [`PROGRAM_RECHECK`] (a program found is checked to still be there at
    /// every call); a captured root answers with `.capture/bin/<name>` (a
    /// stand-in that replays the captured output) or nothing, never with a
    /// program of the machine running the replay.
    pub fn program(&self, name: &str, dirs: &[&str]) -> Option<PathBuf> {
        match &self.facts {
            Facts::Live => {
                let mut known = self.programs.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((found, at)) = known.get(name) {
                    let there = found.as_deref().is_none_or(exec::is_executable);
                    if at.elapsed() < PROGRAM_RECHECK && there {
                        return found.clone();
                    }
                }
                let found = exec::find_in(name, dirs);
                known.insert(name.to_string(), (found.clone(), Instant::now()));
                found
            }
            Facts::Captured(_) => {
                let p = self.base.join(".capture/bin").join(name);
                exec::is_executable(&p).then_some(p)
            }
        }
    }

    /// Filesystem numbers of the mount at `mountpoint` (a host path).
    /// A live root may block here forever on a dead network mount: callers
    /// must use `collect::filesystems::StatfsGuard`.
    pub fn statvfs(&self, mountpoint: &str) -> io::Result<FsStats> {
        match &self.facts {
            Facts::Live => sys::statvfs(&self.path(mountpoint)),
            Facts::Captured(c) => match c.statvfs.get(mountpoint) {
                Some(CapturedStat::Stats(s)) => Ok(*s),
                Some(CapturedStat::Slow(delay, s)) => {
                    let first = c
                        .slowed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(mountpoint.to_string());
                    if first {
                        std::thread::sleep(*delay);
                    }
                    Ok(*s)
                }
                Some(CapturedStat::Error) => Err(io::Error::from_raw_os_error(libc::EIO)),
                Some(CapturedStat::Hang) => loop {
                    // Like a hard NFS mount whose server is gone: never returns.
                    std::thread::park();
                },
                None => Err(io::Error::from_raw_os_error(libc::ENOENT)),
            },
        }
    }

    /// Every interface address, in kernel order.
    pub fn interface_addrs(&self) -> io::Result<Vec<IfAddr>> {
        match &self.facts {
            Facts::Live => sys::getifaddrs(),
            Facts::Captured(c) => Ok(c.ip_addr.as_deref().map(parse_ip_addr).unwrap_or_default()),
        }
    }

    /// `uname -m`: from `/proc/sys/kernel/arch` when the kernel has it, else
    /// from the kernel (live) or the capture.
    pub fn machine(&self) -> Option<String> {
        if let Some(arch) = self.read_trimmed("/proc/sys/kernel/arch") {
            return Some(arch);
        }
        match &self.facts {
            Facts::Live => sys::uname_machine(),
            Facts::Captured(c) => c.machine.clone(),
        }
    }
}

impl Capture {
    fn load(dir: &Path) -> io::Result<Capture> {
        // Capped like every other read: the statvfs list as large as a
        // mount table may be, the others as the files they stand for.
        let read = |name: &str, cap: usize| -> io::Result<Option<String>> {
            let file = match std::fs::File::open(dir.join(name)) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            Ok(Some(read_at_most(file, cap)?.text))
        };
        let statvfs = read("statvfs", MOUNTS)?
            .as_deref()
            .map(parse_statvfs)
            .unwrap_or_default();
        Ok(Capture {
            statvfs,
            slowed: Default::default(),
            ip_addr: read("ip-addr", LARGE)?,
            machine: read("uname-m", SMALL)?
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        })
    }
}

/// At most `cap` bytes of `file`, cut after the last whole line when there
/// was more; invalid UTF-8 replaced.
fn read_at_most(file: impl Read, cap: usize) -> io::Result<Capped> {
    let mut file = file.take(cap as u64 + 1);
    // Most pseudo-files are a few hundred bytes: read them on the stack and
    // allocate once, at their size. (A fresh 16 KiB buffer per read is an
    // mmap and a munmap each time with musl's allocator.)
    let mut small = [0u8; 4096];
    let mut len = 0;
    while len < small.len() {
        match file.read(&mut small[len..]) {
            Ok(0) => return Ok(capped(small[..len].to_vec(), cap)),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let mut buf = Vec::with_capacity(4 * small.len());
    buf.extend_from_slice(&small);
    file.read_to_end(&mut buf)?;
    Ok(capped(buf, cap))
}

/// `buf` (at most `cap` + 1 bytes) cut to `cap` at a line end, as text.
fn capped(mut buf: Vec<u8>, cap: usize) -> Capped {
    let truncated = buf.len() > cap;
    if truncated {
        buf.truncate(cap);
        let keep = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        buf.truncate(keep);
    }
    let text = match String::from_utf8(buf) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    Capped { text, truncated }
}

fn parse_statvfs(text: &str) -> HashMap<String, CapturedStat> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(mp) = f.first() else { continue };
        let mp = crate::collect::mounts::unescape(mp);
        let numbers = |f: &[&str]| -> Option<FsStats> {
            let n: Vec<u64> = f.iter().map(|s| s.parse().ok()).collect::<Option<_>>()?;
            match n[..] {
                [block_size, blocks, blocks_free, blocks_avail] => Some(FsStats {
                    block_size,
                    blocks,
                    blocks_free,
                    blocks_avail,
                }),
                _ => None,
            }
        };
        let stat = match f.get(1..) {
            Some(["hang"]) => CapturedStat::Hang,
            Some(["error"]) => CapturedStat::Error,
            Some(["slow", secs, rest @ ..]) => {
                // try_from: `from_secs_f64` panics on a delay past Duration's range.
                let delay = secs
                    .parse::<f64>()
                    .ok()
                    .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok());
                match (delay, numbers(rest)) {
                    (Some(delay), Some(s)) => CapturedStat::Slow(delay, s),
                    _ => continue,
                }
            }
            Some(rest) => match numbers(rest) {
                Some(s) => CapturedStat::Stats(s),
                None => continue,
            },
            None => continue,
        };
        out.insert(mp, stat);
    }
    out
}

/// Parses `ip -o addr show`: `2: eth0    inet 192.0.2.2/24 brd ... scope global eth0\ ...`.
/// Only the interface name, family keyword and `ip/prefix` are used.
pub fn parse_ip_addr(text: &str) -> Vec<IfAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(_index), Some(name), Some(family), Some(cidr)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if family != "inet" && family != "inet6" {
            continue;
        }
        // `ip` prints `eth0@if12` for veth peers; the interface is `eth0`.
        let name = name.split('@').next().unwrap_or(name);
        let cidr = if cidr.contains('/') {
            cidr.to_string()
        } else if family == "inet" {
            format!("{cidr}/32")
        } else {
            format!("{cidr}/128")
        };
        out.push(IfAddr {
            interface: name.to_string(),
            cidr,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addr_lines() {
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
                    4: eth0    inet6 fe80::fc:ff:fe00:1/64 scope link \\       valid_lft forever\n\
                    9: eth0@if12    inet 10.0.0.5/24 brd 10.0.0.255 scope global eth0\n\
                    garbage\n";
        let a = parse_ip_addr(text);
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].interface, "lo");
        assert_eq!(a[1].cidr, "fe80::fc:ff:fe00:1/64");
        assert_eq!(a[2].interface, "eth0");
    }

    #[test]
    fn statvfs_lines() {
        let t = parse_statvfs(
            "/ 4096 100 50 40\n/mnt/My\\040Share 4096 10 5 5\n/nfs hang\n/bad error\n/x 1 2\n",
        );
        assert!(matches!(t.get("/"), Some(CapturedStat::Stats(s)) if s.blocks == 100));
        assert!(t.contains_key("/mnt/My Share"));
        assert!(matches!(t.get("/nfs"), Some(CapturedStat::Hang)));
        assert!(matches!(t.get("/bad"), Some(CapturedStat::Error)));
        assert!(!t.contains_key("/x"));
    }

    /// `Duration::from_secs_f64(1e300)` panicked: a captured statvfs line
    /// with an absurd delay stopped `Root::new`. It is skipped like any
    /// malformed line.
    #[test]
    fn captured_statvfs_with_an_absurd_delay_is_skipped_not_a_panic() {
        let t = parse_statvfs(
            "/a slow 1e300 4096 1 1 1\n/b slow -1 4096 1 1 1\n/c slow NaN 4096 1 1 1\n/d slow 0.5 4096 1 1 1\n",
        );
        assert!(!t.contains_key("/a") && !t.contains_key("/b") && !t.contains_key("/c"));
        assert!(matches!(t.get("/d"), Some(CapturedStat::Slow(d, _)) if d.as_millis() == 500));
    }

    /// `.capture/` files were read whole (`read_to_string`): a huge one cost
    /// its whole size in memory at start-up. They are capped like /proc.
    #[test]
    fn captured_root_reads_its_capture_files_with_a_cap() {
        let dir = std::env::temp_dir().join(format!("pulse-root-cap-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(".capture")).unwrap();
        let line = "2: eth0    inet 10.0.0.5/24 brd 10.0.0.255 scope global eth0\n";
        let lines = LARGE / line.len() + 1000;
        std::fs::write(dir.join(".capture/ip-addr"), line.repeat(lines)).unwrap();
        std::fs::write(dir.join(".capture/uname-m"), "x".repeat(SMALL + 10)).unwrap();
        let r = Root::new(&dir).unwrap();
        let addrs = r.interface_addrs().unwrap();
        // Whole lines only: every address read is a whole one.
        assert_eq!(addrs.len(), LARGE / line.len());
        assert!(addrs.iter().all(|a| a.cidr == "10.0.0.5/24"));
        // One line longer than the cap: nothing of it.
        assert_eq!(r.machine(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Links are followed inside the root: an absolute target is rebased
    /// under it, a relative one is taken from the link's directory, `..`
    /// never climbs above the root, and a loop ends.
    #[test]
    fn links_are_followed_inside_the_root() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("pulse-root-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc/pve/ceph")).unwrap();
        std::fs::create_dir_all(dir.join("etc/a")).unwrap();
        std::fs::write(dir.join("etc/pve/ceph.conf"), "[global]\n").unwrap();
        std::fs::write(dir.join("etc/pve/ceph/keyring"), "").unwrap();
        let r = Root::new(&dir).unwrap();

        // A file of the machine running the test, absent from the root.
        let outside = "/proc/self/status";
        assert!(std::path::Path::new(outside).exists());
        symlink(outside, dir.join("etc/a/outside")).unwrap();
        assert!(!r.exists_following("/etc/a/outside"));
        assert!(r.exists("/etc/a/outside"), "the link itself is there");

        symlink("/etc/pve/ceph.conf", dir.join("etc/a/abs")).unwrap();
        assert!(r.exists_following("/etc/a/abs"));
        symlink("../pve/ceph.conf", dir.join("etc/a/rel")).unwrap();
        assert!(r.exists_following("/etc/a/rel"));
        // A linked directory on the way, then a link to a link.
        symlink("/etc/pve/ceph", dir.join("etc/dir")).unwrap();
        assert!(r.exists_following("/etc/dir/keyring"));
        assert!(!r.exists_following("/etc/dir/nothing"));
        symlink("/etc/a/abs", dir.join("etc/a/twice")).unwrap();
        assert!(r.exists_following("/etc/a/twice"));
        // `..` past the top stays at the root, as on the host.
        symlink("../../../../etc/pve/ceph.conf", dir.join("etc/a/up")).unwrap();
        assert!(r.exists_following("/etc/a/up"));
        // Dangling, and a loop.
        symlink("/etc/pve/missing.conf", dir.join("etc/a/dangling")).unwrap();
        assert!(!r.exists_following("/etc/a/dangling"));
        symlink("/etc/a/loop2", dir.join("etc/a/loop1")).unwrap();
        symlink("loop1", dir.join("etc/a/loop2")).unwrap();
        assert!(!r.exists_following("/etc/a/loop1"));
        assert!(r.resolve("/etc/a/loop1").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Reads start on the stack and move to the heap past 4 KiB: every size
    /// around the switch reads whole, or cut at a line end past the cap.
    #[test]
    fn reads_around_the_stack_buffer_are_whole() {
        let dir = std::env::temp_dir().join(format!("pulse-root-sizes-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("proc")).unwrap();
        let r = Root::new(&dir).unwrap();
        for len in [0, 1, 4095, 4096, 4097, 8191, 8192, 100_000] {
            let text: String = (0..len)
                .map(|i| if i % 10 == 9 { '\n' } else { 'x' })
                .collect();
            std::fs::write(dir.join("proc/f"), &text).unwrap();
            let c = r.read_capped("/proc/f", LARGE).unwrap();
            assert_eq!((c.text.len(), c.truncated), (len, false), "{len} bytes");
            assert_eq!(c.text, text);
            for cap in [4095, 4096, 4097] {
                let c = r.read_capped("/proc/f", cap).unwrap();
                assert_eq!(c.truncated, len > cap, "{len} bytes, cap {cap}");
                let want = if len > cap { cap / 10 * 10 } else { len };
                assert_eq!(c.text.len(), want, "{len} bytes, cap {cap}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Only procfs files are kept open: a captured tree's file is opened for
    /// every read, so a rewrite (even by a rename) shows at once.
    #[test]
    fn kept_reads_of_a_captured_tree_see_every_rewrite() {
        let dir = std::env::temp_dir().join(format!("pulse-root-kept-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("proc")).unwrap();
        let r = Root::new(&dir).unwrap();
        std::fs::write(dir.join("proc/uptime"), "1.00 2.00\n").unwrap();
        assert_eq!(
            r.read_kept("/proc/uptime", SMALL).unwrap().text,
            "1.00 2.00\n"
        );
        std::fs::write(dir.join("proc/uptime.new"), "3.00 4.00\n").unwrap();
        std::fs::rename(dir.join("proc/uptime.new"), dir.join("proc/uptime")).unwrap();
        assert_eq!(
            r.read_kept("/proc/uptime", SMALL).unwrap().text,
            "3.00 4.00\n"
        );
        assert!(r.kept.lock().unwrap().is_empty());
        std::fs::remove_file(dir.join("proc/uptime")).unwrap();
        assert!(
            r.read_kept("/proc/uptime", SMALL)
                .unwrap_err()
                .is_not_found()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A live root searched `PATH` for `nvidia-smi` (and `sensors` where
    /// hwmon had no temperature) every cycle, a stat per directory. The
    /// answer is kept; a program found is checked to still be there.
    #[test]
    fn live_program_lookups_are_kept_and_a_found_one_is_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pulse-root-prog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.to_str().unwrap();
        let name = format!("pulse-test-program-{}", std::process::id());
        let r = Root::host();
        assert_eq!(r.program(&name, &[d]), None);
        let path = dir.join(&name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Not searched again before PROGRAM_RECHECK.
        assert_eq!(r.program(&name, &[d]), None);
        r.programs.lock().unwrap().clear();
        assert_eq!(r.program(&name, &[d]), Some(path.clone()));
        // A clone shares what is known.
        assert_eq!(r.clone().program(&name, &[d]), Some(path.clone()));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(r.program(&name, &[d]), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn capped_read_cuts_at_line() {
        let dir = std::env::temp_dir().join(format!("pulse-root-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("proc")).unwrap();
        std::fs::write(dir.join("proc/x"), "aaaa\nbbbb\ncccc\n").unwrap();
        let r = Root::new(&dir).unwrap();
        let c = r.read_capped("/proc/x", 12).unwrap();
        assert!(c.truncated);
        assert_eq!(c.text, "aaaa\nbbbb\n");
        let c = r.read_capped("/proc/x", 15).unwrap();
        assert!(!c.truncated);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
