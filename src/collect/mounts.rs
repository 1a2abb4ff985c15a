//! The mount table: `/proc/1/mountinfo` (falling back to `/proc/self/mountinfo`
//! and, on kernels before 2.6.26, the `mounts` files) → a list of [`Mount`]s.
//!
//! PID 1's table is preferred because the agent may run in its own mount
//! namespace (systemd `ProtectSystem=`, containers). Mount points come back
//! with the kernel's octal escapes (`\040` for a space) decoded. A malformed
//! line is skipped and counted, never fatal for the rest of the table.

use super::Error;
use crate::root::{self, Root};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the mounted device; empty when read from `mounts`.
    pub major_minor: String,
    /// Root of the mount within its filesystem (`/` unless a bind or subvolume).
    pub root: String,
    pub mountpoint: String,
    pub fstype: String,
    /// Mount source as the kernel shows it (`/dev/sda1`, `tank/data`, `srv:/export`).
    pub source: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub mounts: Vec<Mount>,
    /// Lines that were not in the expected format.
    pub skipped_lines: usize,
    /// The file was larger than the read cap and its tail was not read.
    pub truncated: bool,
    /// Which file the table came from.
    pub path: &'static str,
}

const CANDIDATES: [(&str, Format); 4] = [
    ("/proc/1/mountinfo", Format::Mountinfo),
    ("/proc/self/mountinfo", Format::Mountinfo),
    ("/proc/1/mounts", Format::Mounts),
    ("/proc/self/mounts", Format::Mounts),
];

#[derive(Clone, Copy)]
enum Format {
    Mountinfo,
    Mounts,
}

/// Reads the first mount table that exists and can be read.
pub fn collect(root: &Root) -> Result<Table, Error> {
    let mut last = None;
    for (path, format) in CANDIDATES {
        match root.read_capped(path, root::MOUNTS) {
            Ok(c) => {
                let mut t = match format {
                    Format::Mountinfo => parse_mountinfo(&c.text),
                    Format::Mounts => parse_mounts(&c.text),
                };
                t.truncated = c.truncated;
                t.path = path;
                return Ok(t);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Read(
        last.expect("invariant: CANDIDATES is not empty"),
    ))
}

/// Parses `/proc/<pid>/mountinfo`:
/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`.
pub fn parse_mountinfo(text: &str) -> Table {
    let mut t = Table::default();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_mountinfo_line(line) {
            Some(m) => t.mounts.push(m),
            None => t.skipped_lines += 1,
        }
    }
    t
}

fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    // Escapes guarantee no field holds a space, so " - " separates the
    // optional fields from the filesystem-specific ones.
    let (head, tail) = line.split_once(" - ")?;
    let h: Vec<&str> = head.split(' ').filter(|f| !f.is_empty()).collect();
    if h.len() < 6 {
        return None;
    }
    let (major, minor) = h[2].split_once(':')?;
    if major.parse::<u32>().is_err() || minor.parse::<u32>().is_err() {
        return None;
    }
    let mut t = tail.split(' ').filter(|f| !f.is_empty());
    let fstype = t.next()?;
    let source = t.next().unwrap_or("");
    Some(Mount {
        major_minor: h[2].to_string(),
        root: unescape(h[3]),
        mountpoint: unescape(h[4]),
        fstype: unescape(fstype),
        source: unescape(source),
    })
}

/// Parses the older `/proc/<pid>/mounts`: `source mountpoint fstype opts 0 0`.
pub fn parse_mounts(text: &str) -> Table {
    let mut t = Table::default();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            t.skipped_lines += 1;
            continue;
        }
        t.mounts.push(Mount {
            major_minor: String::new(),
            root: "/".to_string(),
            mountpoint: unescape(f[1]),
            fstype: unescape(f[2]),
            source: unescape(f[0]),
        });
    }
    t
}

/// Decodes the kernel's `\ooo` octal escapes (space, tab, newline, backslash).
/// Anything that is not a valid three-digit escape is kept as written.
pub fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let d = &b[i + 1..i + 4];
            if d.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = u32::from(d[0] - b'0') * 64
                    + u32::from(d[1] - b'0') * 8
                    + u32::from(d[2] - b'0');
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let t = parse_mountinfo(
            "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n\
             36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue\n\
             40 27 0:50 / /srv/My\\040Share rw - cifs //nas/share rw\n\
             41 27 0:51 / /x rw - tmpfs  rw\n\
             garbage line\n\
             42 27 x:y / /y rw - ext4 /dev/sdb rw\n",
        );
        assert_eq!(t.mounts.len(), 4);
        assert_eq!(t.skipped_lines, 2);
        assert_eq!(t.mounts[1].root, "/mnt1");
        assert_eq!(t.mounts[1].mountpoint, "/mnt2");
        assert_eq!(t.mounts[1].source, "/dev/root");
        assert_eq!(t.mounts[2].mountpoint, "/srv/My Share");
        assert_eq!(t.mounts[3].source, "rw");
    }

    #[test]
    fn mounts_lines() {
        let t = parse_mounts("/dev/sda1 / ext4 rw 0 0\nnone\n");
        assert_eq!(t.mounts.len(), 1);
        assert_eq!(t.skipped_lines, 1);
        assert_eq!(t.mounts[0].fstype, "ext4");
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("tab\\011x\\134y"), "tab\tx\\y");
        assert_eq!(unescape("end\\04"), "end\\04");
        assert_eq!(unescape("\\777"), "\\777");
        assert_eq!(unescape("\\"), "\\");
        assert_eq!(unescape("plain"), "plain");
    }
}
