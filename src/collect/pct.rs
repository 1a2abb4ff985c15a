//! Proxmox LXC filesystems (`proxmoxLxc`, `spec/pulse-collectors.md` §6.4):
//! on a Proxmox VE node, the filesystems of each running container, from
//! `pct list` and then `pct df <vmid>` per running container.
//!
//! The section is there whenever a `pct` is (PVE's `/usr/sbin/pct`, or the
//! privilege helper named by `PULSE_PCT_PATH`, which must be absolute); it
//! does not depend on `--enable-proxmox`. Stopped containers get no `pct df`:
//! PVE would have to mount their volumes to answer. A container whose
//! `pct df` fails, hangs, or gives no usable row is left out and named in
//! [`Lxc::skipped`]; the others are still reported. `pct list` failing fails
//! the run.
//!
//! Each `pct df` takes the container's config lock and costs about a second,
//! so one run is bounded: [`BUDGET`] in all (and never past the caller's
//! deadline), [`DF_TIMEOUT`] per container so one hung container leaves time
//! for the rest, 64 KiB of output per command. Containers not reached in
//! time are skipped with that reason.
//!
//! The parsers are pure and take any text. Rows they cannot vouch for are
//! dropped rather than guessed at: a path must be absolute, already clean
//! and free of control characters, so nothing from a container's own
//! configuration can smuggle a `..` or an escape sequence into the report.
//! Nothing here formats wire JSON (`report::proxmox_lxc` does).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::exec::{self, Tool};
use crate::root::Root;

/// The module's name in `agent.modules[]`, `/status` and the collectors.
pub const MODULE: &str = "proxmox-lxc-filesystems";
/// One whole run: `pct list` and every `pct df` (the stock agent's 10 s).
pub const BUDGET: Duration = Duration::from_secs(10);
/// One `pct df`: a hung container costs this much of [`BUDGET`], not all of it.
pub const DF_TIMEOUT: Duration = Duration::from_secs(5);
/// Cap on the output of `pct list` and of each `pct df`.
pub const OUTPUT_CAP: usize = 64 * 1024;
/// Running containers asked per run (the lowest VMIDs).
pub const MAX_CONTAINERS: usize = 128;
/// Filesystems kept per container: `rootfs` and `mp0`..`mp255`.
pub const MAX_DISKS: usize = 257;
/// Proxmox's VMID range.
pub const VMID_MIN: u32 = 100;
pub const VMID_MAX: u32 = 999_999_999;
/// `pct list` is fixed-width: `VMID(10) Status(10) Lock(12)`, one space
/// after each, so the name starts at this byte.
pub const NAME_COLUMN: usize = 35;
/// Longest container name, volume and path taken (the stock agent's limits).
const MAX_NAME_BYTES: usize = 256;
const MAX_TEXT_BYTES: usize = 512;
/// Where PVE installs pct, before `PATH`.
pub const DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// A container `pct list` says is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub vmid: u32,
    pub name: String,
}

/// One filesystem of a container (a `disks[]` entry in the §3.6 shape).
#[derive(Debug, Clone, PartialEq)]
pub struct Disk {
    /// The PVE volume (`local-lvm:vm-100-disk-0`).
    pub device: String,
    /// The path inside the container.
    pub mountpoint: String,
    /// `rootfs` or `mpN`, lowercased (the wire's `type`).
    pub kind: String,
    pub total: u64,
    /// Clamped to `total`.
    pub used: u64,
    /// Clamped to `total`.
    pub free: u64,
    /// `Use%` as pct printed it, 0–100.
    pub usage: f64,
}

/// One running container and its filesystems.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    pub vmid: u32,
    pub name: String,
    pub disks: Vec<Disk>,
}

/// A running container left out of this run, and why (one line, for a
/// warning and the module's status; not sent in `proxmoxLxc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub vmid: u32,
    pub name: String,
    pub reason: String,
}

/// What one run found. No timestamp: the caller stamps `collectedAt`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Lxc {
    /// Running containers with their filesystems, by VMID.
    pub containers: Vec<Container>,
    /// Running containers whose filesystems could not be read this run.
    pub skipped: Vec<Skipped>,
}

/// `pct list` → the running containers, by VMID, at most
/// [`MAX_CONTAINERS`] (the lowest VMIDs).
///
/// Empty output means no containers (pct prints no header then). Otherwise a
/// `VMID Status Lock Name` header must come first: anything else is not pct's
/// answer (a wrapper's message, say), and saying "nothing runs" would be a
/// lie. Rows whose status is not `running` (any case), whose VMID is not
/// digits within [`VMID_MIN`]..=[`VMID_MAX`], that repeat a VMID, or whose
/// name holds control characters are left out.
pub fn parse_list(text: &str) -> Result<Vec<Running>, String> {
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return Ok(Vec::new());
    };
    let head: Vec<&str> = header.split_whitespace().take(5).collect();
    if head != ["VMID", "Status", "Lock", "Name"] {
        return Err(format!(
            "pct list: no \"VMID Status Lock Name\" header (first line {:?})",
            clip(header)
        ));
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().take(3).collect();
        let (Some(id), Some(status)) = (fields.first(), fields.get(1)) else {
            continue;
        };
        let Some(vmid) = vmid(id) else { continue };
        if !status.eq_ignore_ascii_case("running") || !seen.insert(vmid) {
            continue;
        }
        let name = name_of(line);
        if !printable(&name, MAX_NAME_BYTES) {
            continue;
        }
        out.push(Running { vmid, name });
    }
    out.sort_by_key(|r| r.vmid);
    out.truncate(MAX_CONTAINERS);
    Ok(out)
}

/// A VMID: ASCII digits only (no sign) within Proxmox's range.
fn vmid(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>()
        .ok()
        .filter(|v| (VMID_MIN..=VMID_MAX).contains(v))
}

/// The name column: from byte [`NAME_COLUMN`] on, trimmed (so a name with
/// spaces stays whole; a blank column is an empty name, never the lock). A
/// shorter line, or one where that byte falls inside a multi-byte character
/// (so the columns before it were not pct's), gives its last field when it
/// has at least three, else nothing.
fn name_of(line: &str) -> String {
    if line.len() > NAME_COLUMN {
        if let Some(rest) = line.get(NAME_COLUMN..) {
            return rest.trim().to_string();
        }
    }
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() >= 3 {
        fields[fields.len() - 1].to_string()
    } else {
        String::new()
    }
}

/// `pct df <vmid>` → the container's filesystems, `/` first, then by path.
///
/// Rows are `MP Volume Size Used Avail Use% Path`; a row is used when it has
/// at least 7 fields and
/// - MP is `rootfs` or `mp0`..`mp255` (any case; the header's `MP` is not);
/// - Volume is at most 512 bytes without control characters;
/// - Size, Used and Avail are decimal numbers with an optional `K`, `M`, `G`
///   or `T` (powers of 1024; none means bytes), below 2^63 bytes; Size is
///   not 0;
/// - Use% (an optional `%` after it) is within 0–100;
/// - Path, the rest of the line from the 7th field on (inner spaces kept),
///   is absolute, already clean (no `//`, `.`, `..` or trailing `/`), at
///   most 512 bytes and free of control characters.
///
/// Used and Avail are clamped to Size. A path already given (compared
/// without case, as the stock agent does) is dropped; at most
/// [`MAX_DISKS`] rows are read.
pub fn parse_df(text: &str) -> Vec<Disk> {
    let mut out: Vec<Disk> = Vec::new();
    let mut seen = HashSet::new();
    for raw in text.split('\n') {
        let line = raw.trim();
        let mut fields = line.split_whitespace();
        let mut f: [&str; 7] = [""; 7];
        let mut n = 0;
        for slot in f.iter_mut() {
            match fields.next() {
                Some(x) => {
                    *slot = x;
                    n += 1;
                }
                None => break,
            }
        }
        if n < 7 {
            continue;
        }
        let kind = f[0].to_ascii_lowercase();
        if kind != "rootfs" && !mount_key(&kind) {
            continue;
        }
        let device = f[1];
        if !printable(device, MAX_TEXT_BYTES) {
            continue;
        }
        let (Some(total), Some(used), Some(free), Some(usage)) =
            (size(f[2]), size(f[3]), size(f[4]), percent(f[5]))
        else {
            continue;
        };
        if total == 0 {
            continue;
        }
        // The 7th field is a slice of `line`: the path starts there.
        let start = f[6].as_ptr() as usize - line.as_ptr() as usize;
        let path = &line[start..];
        if !valid_path(path) || !seen.insert(path.to_ascii_lowercase()) {
            continue;
        }
        out.push(Disk {
            device: device.to_string(),
            mountpoint: path.to_string(),
            kind,
            total,
            used: used.min(total),
            free: free.min(total),
            usage,
        });
        if out.len() == MAX_DISKS {
            break;
        }
    }
    out.sort_by(|a, b| {
        (a.mountpoint != "/", &a.mountpoint).cmp(&(b.mountpoint != "/", &b.mountpoint))
    });
    out
}

/// `mp0`..`mp255` (lowercase already), digits only.
fn mount_key(s: &str) -> bool {
    s.strip_prefix("mp").is_some_and(|n| {
        (1..=3).contains(&n.len())
            && n.bytes().all(|b| b.is_ascii_digit())
            && n.parse::<u16>().is_ok_and(|v| v <= 255)
    })
}

/// A decimal number, digits with at most one `.` (no sign, exponent, `inf`
/// or `nan`: pct prints none of them).
fn decimal(s: &str) -> Option<f64> {
    let mut dots = 0;
    let mut digits = 0;
    for b in s.bytes() {
        match b {
            b'0'..=b'9' => digits += 1,
            b'.' => dots += 1,
            _ => return None,
        }
    }
    if digits == 0 || dots > 1 {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// `8.0G` → bytes, rounded; `None` at or past 2^63 (the wire's int64).
fn size(s: &str) -> Option<u64> {
    let (num, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        b'T' | b't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let bytes = (decimal(num)? * mult as f64).round();
    // 2^63 is exact as an f64; below it the cast cannot saturate.
    (bytes < 9_223_372_036_854_775_808.0).then_some(bytes as u64)
}

/// `25.0` or `25%` → 25.0, only within 0–100.
fn percent(s: &str) -> Option<f64> {
    let v = decimal(s.strip_suffix('%').unwrap_or(s))?;
    (v <= 100.0).then_some(v)
}

/// Absolute, clean, printable, not too long.
fn valid_path(p: &str) -> bool {
    printable(p, MAX_TEXT_BYTES)
        && p.starts_with('/')
        && (p == "/"
            || (!p.ends_with('/')
                && p[1..]
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != "..")))
}

/// At most `max` bytes, no control characters (C0 and DEL), and no U+FFFD
/// (what a lossy decoding leaves of bytes that were not UTF-8).
fn printable(s: &str, max: usize) -> bool {
    s.len() <= max
        && !s
            .chars()
            .any(|c| c < ' ' || c == '\u{7f}' || c == '\u{fffd}')
}

/// A line shortened for an error message.
fn clip(s: &str) -> String {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Runs `pct list` and `pct df` for each running container.
pub struct Collector {
    root: Root,
    /// `PULSE_PCT_PATH`, if set.
    pct_path: Option<PathBuf>,
    tool: Tool,
}

impl Collector {
    /// `pct_path`: `PULSE_PCT_PATH` (a privilege helper answering `list`
    /// and `df <vmid>` like pct), else pct is looked for under `root`.
    pub fn new(root: Root, pct_path: Option<PathBuf>) -> Collector {
        Collector {
            root,
            pct_path,
            tool: Tool::new("pct"),
        }
    }

    /// A pct run since the last call did not answer in time.
    pub fn take_hung(&mut self) -> bool {
        self.tool.take_hung()
    }

    /// One run. `Ok(None)`: no pct here (not a Proxmox VE node). `Err`: pct
    /// is here (or configured) but `pct list` failed, or `PULSE_PCT_PATH` is
    /// not absolute. Returns by `deadline` (or [`BUDGET`] from now, if
    /// sooner).
    pub fn collect(&mut self, deadline: Instant) -> Result<Option<Lxc>, String> {
        let end = deadline.min(Instant::now() + BUDGET);
        let pct = match &self.pct_path {
            Some(p) if !p.is_absolute() => {
                return Err(format!(
                    "PULSE_PCT_PATH must be an absolute path (got {})",
                    p.display()
                ));
            }
            Some(p) => p.clone(),
            None => match self.root.program("pct", DIRS) {
                Some(p) => p,
                None => return Ok(None),
            },
        };
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("pct list: no time left before the deadline".into());
        }
        let out = self.tool.run(&pct, &["list"], left, OUTPUT_CAP)?;
        if out.code != Some(0) {
            return Err(format!("pct list: {}", exec::failure(&out)));
        }
        let running = parse_list(&String::from_utf8_lossy(&out.stdout))?;

        let mut lxc = Lxc::default();
        for r in running {
            let skip = |reason: String| Skipped {
                vmid: r.vmid,
                name: r.name.clone(),
                reason,
            };
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                lxc.skipped.push(skip(format!(
                    "pct df {}: not asked, the run's time was used up",
                    r.vmid
                )));
                continue;
            }
            let id = r.vmid.to_string();
            let disks = match self
                .tool
                .run(&pct, &["df", &id], left.min(DF_TIMEOUT), OUTPUT_CAP)
            {
                Err(e) => Err(e),
                Ok(o) if o.code != Some(0) => Err(format!("pct df {id}: {}", exec::failure(&o))),
                Ok(o) => match parse_df(&String::from_utf8_lossy(&o.stdout)) {
                    d if d.is_empty() => Err(format!("pct df {id}: no usable filesystem row")),
                    d => Ok(d),
                },
            };
            match disks {
                Ok(disks) => lxc.containers.push(Container {
                    vmid: r.vmid,
                    name: r.name,
                    disks,
                }),
                Err(reason) => lxc.skipped.push(skip(reason)),
            }
        }
        Ok(Some(lxc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size("8.0G"), Some(8 << 30));
        assert_eq!(size("512.0g"), Some(512 << 30));
        assert_eq!(size("1.5K"), Some(1536));
        assert_eq!(size("1T"), Some(1 << 40));
        assert_eq!(size("4096"), Some(4096));
        assert_eq!(size("0.0004K"), Some(0));
        assert_eq!(size("7.8G"), Some(8_375_186_227));
        for bad in [
            "", "G", "-1G", "+1G", "1e3", "inf", "NaN", "1.2.3M", "1P", "1 G", "0x10",
        ] {
            assert_eq!(size(bad), None, "{bad}");
        }
        // 2^63 bytes and past: not an int64.
        assert_eq!(size("8388608T"), None);
        assert!(size("8388607.99999T").is_some_and(|b| b < 1 << 63));
        assert_eq!(size(&"9".repeat(400)), None);
    }

    #[test]
    fn percents_and_keys() {
        assert_eq!(percent("25.0"), Some(25.0));
        assert_eq!(percent("100%"), Some(100.0));
        assert_eq!(percent("100.1"), None);
        assert_eq!(percent("-1"), None);
        assert_eq!(percent("%"), None);
        for ok in ["mp0", "mp9", "mp10", "mp255", "mp007"] {
            assert!(mount_key(ok), "{ok}");
        }
        for bad in [
            "mp", "mp256", "mp1000", "mp+1", "mp-0", "mpa", "rootfs", "mp٣",
        ] {
            assert!(!mount_key(bad), "{bad}");
        }
    }

    #[test]
    fn paths() {
        for ok in ["/", "/srv/data", "/mnt/My Data", "/a/b.c/..d"] {
            assert!(valid_path(ok), "{ok}");
        }
        for bad in [
            "",
            "relative",
            "/a/../b",
            "/a/./b",
            "/a//b",
            "/a/",
            "/..",
            "/.",
            "/a\tb",
            "/a\0b",
            "/a\u{7f}",
            "/a\u{fffd}",
        ] {
            assert!(!valid_path(bad), "{bad:?}");
        }
        assert!(!valid_path(&format!("/{}", "a".repeat(512))));
        assert!(valid_path(&format!("/{}", "a".repeat(511))));
    }

    #[test]
    fn names() {
        let line = "100        running                 web server 1        ";
        assert_eq!(name_of(line), "web server 1");
        assert_eq!(name_of("100 running web"), "web");
        assert_eq!(name_of("100 running"), "");
        assert_eq!(name_of("100        running    backup              "), "");
        // Byte 35 inside a two-byte character: the columns are not pct's.
        let odd = format!("{}é{}", "1".repeat(34), " x y zed");
        assert!(!odd.is_char_boundary(NAME_COLUMN));
        assert_eq!(name_of(&odd), "zed");
    }
}
