//! The mount table: `/proc/1/mountinfo` (falling back to `/proc/self/mountinfo`
//! and, on kernels before 2.6.26, the `mounts` files) → a list of [`Mount`]s.
//!
//! PID 1's table is preferred because the agent may run in its own mount
//! namespace (systemd `ProtectSystem=`, containers). Mount points come back
//! with the kernel's octal escapes (`\040` for a space) decoded. A malformed
//! line is skipped and counted, never fatal for the rest of the table.
//!
//! [`Watch`] keeps the table between cycles and reads it again only when it
//! changed: procfs says so itself (`POLLPRI` on the open file, as systemd and
//! util-linux use it); any other file (a captured tree) is re-read when its
//! device, inode, size or modification time moves.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

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

fn parse(path: &'static str, format: Format, c: root::Capped) -> Table {
    let mut t = match format {
        Format::Mountinfo => parse_mountinfo(&c.text),
        Format::Mounts => parse_mounts(&c.text),
    };
    t.truncated = c.truncated;
    t.path = path;
    t
}

/// A mount table file kept open, read again only when it changed.
///
/// The first call reads the first of the candidate files that can be read
/// (PID 1's, then the agent's own) and keeps it open. On procfs the kernel
/// marks that open file with `POLLPRI | POLLERR` when the mount namespace's
/// table changes (mount, unmount, remount, move), so each later call costs
/// one `poll` with no wait, and a read only after a change. Elsewhere (a
/// captured tree, whose files never signal) a later call costs one `stat`
/// and reads again when the file's device, inode, size or modification time
/// differ. Any error drops the kept file: the next call starts over.
///
/// The table itself is not kept: the caller keeps what it needs of it.
#[derive(Default)]
pub struct Watch {
    kept: Option<Kept>,
    /// How many times a table was read and parsed.
    parses: u64,
}

struct Kept {
    path: &'static str,
    format: Format,
    file: File,
    /// `None` on procfs (the file signals); else the file's stamp when read.
    stamp: Option<Stamp>,
}

/// What changes when a regular file is rewritten or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        }
    }
}

impl Watch {
    pub fn new() -> Watch {
        Watch::default()
    }

    /// How many times a mount table was read and parsed: stays put while
    /// the table does not change.
    pub fn parses(&self) -> u64 {
        self.parses
    }

    /// Lets go of the file: the next call reads a table whatever changed.
    pub fn forget(&mut self) {
        self.kept = None;
    }

    /// The mount table if it is read for this call (the first call, and
    /// after every change); `None` when it has not changed since.
    pub fn read_if_changed(&mut self, root: &Root) -> Result<Option<Table>, Error> {
        let table = match self.kept.take() {
            Some(mut kept) => match kept.refresh(root) {
                Ok(table) => {
                    self.kept = Some(kept);
                    table
                }
                // Gone or unreadable now: look for a table again.
                Err(_) => Some(self.open(root)?),
            },
            None => Some(self.open(root)?),
        };
        if table.is_some() {
            self.parses += 1;
        }
        Ok(table)
    }

    /// The first candidate that can be opened and read, kept.
    fn open(&mut self, root: &Root) -> Result<Table, Error> {
        let mut last = None;
        for (path, format) in CANDIDATES {
            match Kept::read(root, path, format) {
                Ok((kept, table)) => {
                    self.kept = Some(kept);
                    return Ok(table);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(Error::Read(
            last.expect("invariant: CANDIDATES is not empty"),
        ))
    }
}

impl Kept {
    fn read(
        root: &Root,
        path: &'static str,
        format: Format,
    ) -> Result<(Kept, Table), root::ReadError> {
        let file = root.open(path)?;
        // Stamped before the read: a change during the read moves the stamp
        // again, so the file is read once more next time, never missed.
        let stamp = match crate::sys::is_procfs(file.as_fd()) {
            Ok(true) => None,
            _ => Some(Stamp::of(&file.metadata().map_err(|source| {
                root::ReadError {
                    path: path.to_string(),
                    source,
                }
            })?)),
        };
        let table = parse(path, format, root.reread(path, &file, root::MOUNTS)?);
        let kept = Kept {
            path,
            format,
            file,
            stamp,
        };
        Ok((kept, table))
    }

    /// The table, read again if the file changed since it was last read.
    fn refresh(&mut self, root: &Root) -> Result<Option<Table>, root::ReadError> {
        let path = self.path;
        match self.stamp {
            None => {
                let changed = crate::sys::poll_priority(self.file.as_fd()).map_err(|source| {
                    root::ReadError {
                        path: path.to_string(),
                        source,
                    }
                })?;
                if !changed {
                    return Ok(None);
                }
                // Polled before the read: a change during it is signalled
                // again.
                let c = root.reread(path, &self.file, root::MOUNTS)?;
                Ok(Some(parse(path, self.format, c)))
            }
            Some(stamp) => {
                // By path: a file replaced by a rename is another inode.
                if Stamp::of(&root.metadata(path)?) == stamp {
                    return Ok(None);
                }
                let (kept, table) = Kept::read(root, path, self.format)?;
                *self = kept;
                Ok(Some(table))
            }
        }
    }
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
