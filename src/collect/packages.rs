//! Pending package updates (`host.packageUpdates`) and apt's package cache
//! (`host.storageCleanup`), `spec/pulse-protocol.md` §3.4.
//!
//! **Updates.** One run asks apt what an upgrade would do, without doing it:
//! `apt-get -s upgrade` ([`APT_ARGS`]). The simulation prints one
//! `Inst NAME [INSTALLED] (AVAILABLE SUITE.. [ARCH])` line per package it
//! would install (no `[INSTALLED]` for a new one) and a summary
//! (`N upgraded, M newly installed, ...`); [`parse`] reads those, checks the
//! count of `Inst` lines against the summary, and ignores the rest (`Conf`,
//! `Remv`, the kept-back notices, the wrapped name lists). It runs under
//! [`BUDGET`] (20 s, the stock agent's), capped by the caller's deadline.
//!
//! apt-get -s is not read-only by default, so the options make it so (checked
//! with strace on Debian 12, apt 2.6): `Debug::NoLocking=1` takes no lock
//! (dpkg's `lock-frontend`/`lock` or the archives' `lock`), so a running
//! `apt-get install` neither blocks nor is blocked by this run;
//! `Dir::Cache::pkgcache=` and `Dir::Cache::srcpkgcache=` keep the binary
//! cache in memory instead of rewriting `/var/cache/apt/*.bin` as root; and
//! `Dir::Log::Planner=` stops root's run from replacing
//! `/var/log/apt/eipp.log.xz`. What remains: apt reads its lists and dpkg's
//! status, runs `dpkg --print-foreign-architectures`, starts (and stops) its
//! http method without a connection, and uses unnamed `O_TMPFILE` scratch
//! files in `/tmp`.
//!
//! `inventoryHash` is `sha256:` + hex of the pending set, sorted, one
//! `NAME\0INSTALLED\0AVAILABLE\n` per package, so it changes exactly when
//! what an upgrade would install changes (not when a suite is renamed).
//! `rebootRequired` is the presence of `/run/reboot-required` (Debian's
//! and Ubuntu's flag; `/var/run` as well for old layouts).
//!
//! **Cleanup.** What `apt-get clean` would free: the regular files directly
//! in `/var/cache/apt/archives/` and its `partial/` (apt's `lock` excepted),
//! by size. Symlinks are counted as nothing and never followed; the archives
//! directory itself may be a link, but only to a place inside the root. At
//! most [`CACHE_ENTRIES`] entries are looked at. The `fingerprint` is
//! `sha256:` + hex of the sorted `NAME\0SIZE\0MTIME_NS\n` of the counted files.
//!
//! On a live root other than `/` (an agent in a container reading the host
//! below `/host`) this machine's apt-get would describe the container, not
//! the host, so it is not run: the section says so in its `error`. A
//! captured root answers from its `.capture/bin/apt-get` stand-in.
//!
//! Nothing here installs, removes, cleans or writes anything.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::exec::{self, Tool};
use crate::root::Root;

/// The module's name in `agent.modules[]`, `/status` and the collectors.
pub const MODULE: &str = "package-updates";
/// One simulation (the stock agent's budget).
pub const BUDGET: Duration = Duration::from_secs(20);
/// Where apt-get lives.
pub const APT_DIRS: &[&str] = &["/usr/bin", "/bin", "/usr/local/bin"];
/// `apt-get ARGS`: simulate an upgrade, read-only (see the module docs).
pub const APT_ARGS: [&str; 10] = [
    "-s",
    "-o",
    "Debug::NoLocking=1",
    "-o",
    "Dir::Cache::pkgcache=",
    "-o",
    "Dir::Cache::srcpkgcache=",
    "-o",
    "Dir::Log::Planner=",
    "upgrade",
];
/// Cap on apt-get's output: two lines per package, ~200 bytes each, for a
/// release upgrade of a large desktop (~5,000 packages) fits with room.
pub const APT_OUTPUT_CAP: usize = 4 * 1024 * 1024;
/// How many packages the report lists (the stock agent's cap);
/// `pendingCount` counts them all.
pub const LISTED_MAX: usize = 200;
/// Longest package name or version accepted (Debian's are far shorter).
pub const FIELD_MAX: usize = 256;
/// apt's package cache, and the files `apt-get clean` leaves.
pub const CACHE_DIR: &str = "/var/cache/apt/archives";
/// Entries looked at in the cache before giving up (the stock agent's cap).
pub const CACHE_ENTRIES: usize = 100_000;
/// The `storageCleanup.provider` of apt's cache.
pub const CACHE_PROVIDER: &str = "apt-package-cache";
const REBOOT_FLAGS: [&str; 2] = ["/run/reboot-required", "/var/run/reboot-required"];
/// Longest `error` text sent to the server.
const ERROR_MAX: usize = 300;

/// One package an upgrade would install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// apt's name; `name:arch` for a foreign architecture.
    pub name: String,
    /// `None` for a package the upgrade would newly install.
    pub installed: Option<String>,
    pub available: String,
}

/// `host.packageUpdates`, without its time (the caller stamps `checkedAt`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Updates {
    /// A package manager this agent understands (apt) is here.
    pub supported: bool,
    /// `"apt"` when supported.
    pub manager: String,
    /// `sha256:<hex>` of the pending set; empty when the run failed.
    pub inventory_hash: String,
    /// Every pending package, in apt's order (the report lists the first
    /// [`LISTED_MAX`]).
    pub pending: Vec<Package>,
    pub reboot_required: bool,
    /// Why the pending set is unknown (one line).
    pub error: Option<String>,
}

/// `host.storageCleanup`, without its time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cleanup {
    pub supported: bool,
    /// [`CACHE_PROVIDER`] when supported.
    pub provider: String,
    /// `sha256:<hex>` of the counted files; empty when the run failed.
    pub fingerprint: String,
    pub reclaimable_bytes: u64,
    pub error: Option<String>,
}

/// Why apt-get's output was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// An `Inst` line without the shape apt prints.
    Line { line: usize, reason: &'static str },
    /// No `N upgraded, M newly installed, ...` line.
    NoSummary,
    /// The summary counts differ from the `Inst` lines.
    Count { summary: u64, listed: usize },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Line { line, reason } => {
                write!(f, "apt-get -s upgrade: line {line}: {reason}")
            }
            ParseError::NoSummary => write!(
                f,
                "apt-get -s upgrade: no summary line (N upgraded, M newly installed, ...)"
            ),
            ParseError::Count { summary, listed } => write!(
                f,
                "apt-get -s upgrade: the summary counts {summary} packages to install, the simulation lists {listed}"
            ),
        }
    }
}

impl std::error::Error for ParseError {}

/// The pending packages in `apt-get -s upgrade` output, in apt's order.
pub fn parse(text: &str) -> Result<Vec<Package>, ParseError> {
    let mut pending = Vec::new();
    let mut summary = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let inst = line
            .strip_prefix("Inst")
            .filter(|r| r.is_empty() || r.starts_with(char::is_whitespace));
        if let Some(rest) = inst {
            pending.push(parse_inst(rest).map_err(|reason| ParseError::Line {
                line: i + 1,
                reason,
            })?);
        } else if summary.is_none() {
            summary = parse_summary(line);
        }
    }
    let summary = summary.ok_or(ParseError::NoSummary)?;
    if summary != pending.len() as u64 {
        return Err(ParseError::Count {
            summary,
            listed: pending.len(),
        });
    }
    Ok(pending)
}

/// `NAME [INSTALLED] (AVAILABLE ...) ...`, the text after `Inst `.
fn parse_inst(rest: &str) -> Result<Package, &'static str> {
    let rest = rest.trim_start();
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let name = &rest[..end];
    if !valid_field(name) {
        return Err("Inst line without a valid package name");
    }
    let mut rest = rest[end..].trim_start();
    let mut installed = None;
    if let Some(r) = rest.strip_prefix('[') {
        let close = r
            .find(']')
            .ok_or("Inst line with an unclosed [installed version]")?;
        let v = &r[..close];
        if !valid_field(v) {
            return Err("Inst line with an invalid installed version");
        }
        installed = Some(v.to_string());
        rest = r[close + 1..].trim_start();
    }
    let r = rest
        .strip_prefix('(')
        .ok_or("Inst line without (available version)")?;
    let end = r
        .find(|c: char| c.is_whitespace() || c == ')')
        .ok_or("Inst line with an unclosed (available version)")?;
    let available = &r[..end];
    if !valid_field(available) {
        return Err("Inst line with an invalid available version");
    }
    Ok(Package {
        name: name.to_string(),
        installed,
        available: available.to_string(),
    })
}

/// A package name or version as apt prints them: printable ASCII, no
/// spaces or brackets, not too long.
fn valid_field(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= FIELD_MAX
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"[]()".contains(&b))
}

/// The number of packages the summary says an upgrade installs:
/// `N upgraded, M newly installed, [R reinstalled, ][D downgraded, ]X to
/// remove and K not upgraded.` counts N + M + R + D.
fn parse_summary(line: &str) -> Option<u64> {
    let body = line.strip_suffix('.')?;
    if !body.contains(" upgraded, ") || !body.ends_with(" not upgraded") {
        return None;
    }
    let mut total: u64 = 0;
    for part in body.split(", ").flat_map(|p| p.split(" and ")) {
        let (n, what) = part.split_once(' ')?;
        let n: u64 = n.parse().ok()?;
        match what {
            "upgraded" | "newly installed" | "reinstalled" | "downgraded" => {
                total = total.checked_add(n)?;
            }
            "to remove" | "not upgraded" => {}
            _ => return None,
        }
    }
    Some(total)
}

/// `sha256:<hex>` of the pending set, independent of apt's order.
pub fn inventory_hash(pending: &[Package]) -> String {
    let mut lines: Vec<String> = pending
        .iter()
        .map(|p| {
            format!(
                "{}\0{}\0{}\n",
                p.name,
                p.installed.as_deref().unwrap_or(""),
                p.available
            )
        })
        .collect();
    lines.sort_unstable();
    sha256_of(lines.iter().map(String::as_bytes))
}

fn sha256_of<'a>(parts: impl Iterator<Item = &'a [u8]>) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let mut s = String::from("sha256:");
    for b in h.finalize() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// One line, at most [`ERROR_MAX`] bytes, with any `user:password@` of a
/// URL left out (apt names repositories in some messages).
fn one_line(text: &str) -> String {
    let mut out = String::new();
    let line = text.lines().next().unwrap_or("").trim();
    let mut rest = line;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let host_end = tail
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..host_end].rfind('@') {
            Some(at) => {
                out.push_str("***@");
                rest = &tail[at + 1..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    if out.len() > ERROR_MAX {
        let mut cut = ERROR_MAX;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// Whether apt is this root's package manager, and the apt-get to run
/// (`None` when it must not run here: a live root other than `/`).
fn find_apt(root: &Root) -> (bool, Option<std::path::PathBuf>) {
    let live_elsewhere = !root.is_captured() && root.base() != Path::new("/");
    if live_elsewhere {
        let here = APT_DIRS
            .iter()
            .any(|d| root.exists(&format!("{d}/apt-get")));
        return (here, None);
    }
    let p = root.program("apt-get", APT_DIRS);
    (p.is_some(), p)
}

/// Debian's and Ubuntu's flag that an upgrade wants a reboot.
pub fn reboot_required(root: &Root) -> bool {
    REBOOT_FLAGS.iter().any(|f| root.exists(f))
}

/// The package-updates source: one `apt-get -s upgrade` per run.
pub struct Collector {
    root: Root,
    tool: Tool,
    hung: bool,
}

impl Collector {
    pub fn new(root: Root) -> Collector {
        Collector {
            root,
            tool: Tool::new("apt-get"),
            hung: false,
        }
    }

    /// Whether the last run met an apt-get that did not answer in time (the
    /// caller need not wait as long for the next one).
    pub fn hung(&self) -> bool {
        self.hung
    }

    /// [`Collector::hung`], reset by reading (the platform worker's rule).
    pub fn take_hung(&mut self) -> bool {
        std::mem::take(&mut self.hung)
    }

    /// One run. Always `Some` (the section is always there on Linux): no
    /// apt → `supported: false`; a failed simulation → `error`.
    pub fn collect(&mut self, deadline: Instant) -> Result<Option<Updates>, String> {
        let (supported, program) = find_apt(&self.root);
        if !supported {
            return Ok(Some(Updates::default()));
        }
        let mut u = Updates {
            supported: true,
            manager: "apt".into(),
            reboot_required: reboot_required(&self.root),
            ..Updates::default()
        };
        self.hung = false;
        let result = match program {
            None => Err(format!(
                "apt-get: the host below {} is not this machine; its updates are not checked",
                self.root.base().display()
            )),
            Some(p) => self.simulate(&p, deadline),
        };
        match result {
            Ok(pending) => {
                u.inventory_hash = inventory_hash(&pending);
                u.pending = pending;
            }
            Err(e) => u.error = Some(one_line(&e)),
        }
        Ok(Some(u))
    }

    fn simulate(&mut self, apt: &Path, deadline: Instant) -> Result<Vec<Package>, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("apt-get -s upgrade: no time left in this run".into());
        }
        let timeout = left.min(BUDGET);
        let o = match self.tool.run(apt, &APT_ARGS, timeout, APT_OUTPUT_CAP) {
            Ok(o) => o,
            Err(_) if self.tool.take_hung() => {
                self.hung = true;
                return Err(format!(
                    "apt-get -s upgrade: no answer within {:.1} s",
                    timeout.as_secs_f64()
                ));
            }
            Err(e) => return Err(e.replace(&APT_ARGS.join(" "), "-s upgrade")),
        };
        if o.code != Some(0) {
            return Err(format!("apt-get -s upgrade: {}", exec::failure(&o)));
        }
        parse(&String::from_utf8_lossy(&o.stdout)).map_err(|e| e.to_string())
    }
}

/// The storage-cleanup source: apt's package cache, measured.
pub struct CleanupCollector {
    root: Root,
}

impl CleanupCollector {
    pub fn new(root: Root) -> CleanupCollector {
        CleanupCollector { root }
    }

    /// One run. Always `Some` on Linux: no apt → `supported: false`.
    pub fn collect(&mut self, deadline: Instant) -> Result<Option<Cleanup>, String> {
        if !find_apt(&self.root).0 {
            return Ok(Some(Cleanup::default()));
        }
        let mut c = Cleanup {
            supported: true,
            provider: CACHE_PROVIDER.into(),
            ..Cleanup::default()
        };
        match measure_cache(&self.root, deadline) {
            Ok((bytes, fingerprint)) => {
                c.reclaimable_bytes = bytes;
                c.fingerprint = fingerprint;
            }
            Err(e) => c.error = Some(one_line(&e)),
        }
        Ok(Some(c))
    }
}

/// Bytes `apt-get clean` would free below `root`, and their fingerprint.
pub fn measure_cache(root: &Root, deadline: Instant) -> Result<(u64, String), String> {
    // The directory may be a link (a cache moved to a bigger disk), but only
    // to somewhere inside the root.
    let dir = match root.real_path(CACHE_DIR) {
        Some(d) => d,
        None if !root.exists(CACHE_DIR) => return Ok((0, sha256_of(std::iter::empty()))),
        None => {
            return Err(format!(
                "{CACHE_DIR}: a link that leaves the root or leads nowhere"
            ));
        }
    };
    let mut files: Vec<(String, u64, i128)> = Vec::new();
    let mut seen = 0usize;
    let mut scan = |sub: &str, files: &mut Vec<(String, u64, i128)>| -> Result<(), String> {
        let abs = if sub.is_empty() {
            dir.clone()
        } else {
            format!("{dir}/{sub}")
        };
        let names = match std::fs::read_dir(root.path(&abs)) {
            Ok(rd) => rd,
            // A non-root agent cannot read root's 0700 partial/: partial
            // downloads are then not counted.
            Err(e) if !sub.is_empty() && e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Ok(());
            }
            Err(e) => return Err(format!("{CACHE_DIR}/{sub}: {e}")),
        };
        for entry in names {
            seen += 1;
            if seen > CACHE_ENTRIES {
                return Err(format!(
                    "{CACHE_DIR}: more than {CACHE_ENTRIES} entries; not measured"
                ));
            }
            if seen % 1024 == 0 && Instant::now() >= deadline {
                return Err(format!("{CACHE_DIR}: not measured within the run's time"));
            }
            let entry = entry.map_err(|e| format!("{CACHE_DIR}/{sub}: {e}"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // What apt's own clean leaves, in both directories.
            if name == "lock" || name == "partial" || name == "lost+found" {
                continue;
            }
            // lstat: a link is never followed.
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue; // removed while looking
            };
            if !meta.file_type().is_file() {
                continue;
            }
            use std::os::unix::fs::MetadataExt;
            let rel = if sub.is_empty() {
                name
            } else {
                format!("{sub}/{name}")
            };
            let mtime = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
            files.push((rel, meta.len(), mtime));
        }
        Ok(())
    };
    scan("", &mut files)?;
    let partial = root.path(&format!("{dir}/partial"));
    if partial.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        scan("partial", &mut files)?;
    }
    files.sort_unstable();
    let mut total: u64 = 0;
    for (_, size, _) in &files {
        total = total
            .checked_add(*size)
            .filter(|t| *t <= i64::MAX as u64)
            .ok_or_else(|| format!("{CACHE_DIR}: size past the wire's int64"))?;
    }
    let lines: Vec<String> = files
        .iter()
        .map(|(name, size, mtime)| format!("{name}\0{size}\0{mtime}\n"))
        .collect();
    Ok((total, sha256_of(lines.iter().map(String::as_bytes))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inst_line_shapes() {
        let p =
            parse_inst("bash [5.2.15-2+b8] (5.2.15-2+b13 Debian:12.15/oldstable [amd64])").unwrap();
        assert_eq!(p.name, "bash");
        assert_eq!(p.installed.as_deref(), Some("5.2.15-2+b8"));
        assert_eq!(p.available, "5.2.15-2+b13");
        let p = parse_inst("newpkg (1.0-1 Debian:12.15/oldstable [amd64])").unwrap();
        assert_eq!(p.installed, None);
        assert_eq!(p.available, "1.0-1");
        let p = parse_inst("x (2.0)").unwrap();
        assert_eq!(p.available, "2.0");
        assert!(parse_inst("").is_err());
        assert!(parse_inst("x [1.0 (2.0)").is_err());
        assert!(parse_inst("x [1.0]").is_err());
        assert!(parse_inst("x [] (2.0 a)").is_err());
        assert!(parse_inst("x (2.0").is_err());
    }

    #[test]
    fn summary_lines() {
        assert_eq!(
            parse_summary("130 upgraded, 0 newly installed, 0 to remove and 0 not upgraded."),
            Some(130)
        );
        assert_eq!(
            parse_summary(
                "1 upgraded, 2 newly installed, 3 reinstalled, 4 downgraded, 5 to remove and 6 not upgraded."
            ),
            Some(10)
        );
        assert_eq!(parse_summary("Calculating upgrade..."), None);
        assert_eq!(
            parse_summary("x upgraded, 0 newly installed, 0 to remove and 0 not upgraded."),
            None
        );
    }

    #[test]
    fn url_credentials_are_left_out_of_errors() {
        assert_eq!(
            one_line("E: Failed https://user:pw@repo.example/debian x\nsecond"),
            "E: Failed https://***@repo.example/debian x"
        );
        assert_eq!(one_line("a://b c://d@e"), "a://b c://***@e");
        assert!(one_line(&"é".repeat(400)).len() <= ERROR_MAX);
    }
}
