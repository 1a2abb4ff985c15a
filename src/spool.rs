//! The spool: a durable, bounded FIFO of reports the server has not taken yet.
//!
//! Each report is one file, `<state-dir>/spool/<20-digit id>.json`, written
//! with `state::write_atomic` (temporary file, fsync, rename, fsync of the
//! directory), so a report in the spool survives SIGKILL and power loss. The
//! oldest report is sent first. Bounds: `max_reports` reports and
//! `max_bytes` bytes; past either, the oldest is dropped, like the stock
//! agent's 60-report buffer. Dropping is logged when it starts and when the
//! spool has room again, not for every report; the drops are counted.
//!
//! A file in the directory whose name is not one the spool writes (20
//! digits, `.json`) is left alone and named in one warning at start. IDs
//! never overflow: when the next ID would pass `u64::MAX` (only a planted or
//! corrupted file name can get there), the spool renumbers its reports
//! 1, 2, 3, ... in order first.
//!
//! What it will not do: write anything while deliveries succeed (the spool
//! is only used after a failure); stop the agent when the disk is full or
//! read-only (the report is then kept in memory, within the same bounds, and
//! the condition logged once); let a corrupt file block the queue (it is
//! logged, deleted and skipped).

use std::collections::VecDeque;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::state;

/// Default bound, the stock agent's.
pub const DEFAULT_MAX_REPORTS: usize = 60;
/// A report is a few KiB; this only guards small root filesystems against
/// very large ones.
pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// A spooled file larger than this is not a report the agent wrote.
const MAX_FILE: u64 = 8 * 1024 * 1024;

#[derive(Debug)]
struct Entry {
    id: u64,
    size: u64,
    /// Held in memory because it could not be written to disk.
    memory: Option<Vec<u8>>,
}

#[derive(Debug)]
pub struct Spool {
    dir: Option<PathBuf>,
    entries: VecDeque<Entry>,
    next_id: u64,
    bytes: u64,
    max_reports: usize,
    max_bytes: u64,
    disk_ok: bool,
    dropped: u64,
    /// The last push dropped a report: the spool is full.
    dropping: bool,
    /// Reports dropped since the spool was last not full.
    dropped_while_full: u64,
}

/// The ID in a spool file name: exactly 20 digits and `.json`, as
/// [`Spool::push`] writes them, from 1. Anything else (a sign, fewer digits,
/// 0, a number past `u64::MAX`) is not a spool file.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&id| id > 0)
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, taking over the reports a
    /// previous run left. `dir = None` keeps reports in memory only.
    pub fn open(dir: Option<&Path>, max_reports: usize, max_bytes: u64) -> Spool {
        let mut s = Spool {
            dir: dir.map(Path::to_path_buf),
            entries: VecDeque::new(),
            next_id: 1,
            bytes: 0,
            max_reports,
            max_bytes,
            disk_ok: true,
            dropped: 0,
            dropping: false,
            dropped_while_full: 0,
        };
        if let Some(dir) = dir {
            s.scan(dir);
        }
        s.enforce_bounds();
        if !s.entries.is_empty() {
            log::info!(
                "spool: {} report(s) from an earlier run will be sent first",
                s.entries.len()
            );
        }
        s
    }

    fn scan(&mut self, dir: &Path) {
        if let Err(e) = fs::create_dir_all(dir) {
            log::warn!(
                "spool: cannot create {}: {e}; keeping reports in memory",
                dir.display()
            );
            self.disk_ok = false;
            return;
        }
        let Ok(rd) = fs::read_dir(dir) else { return };
        let mut found = Vec::new();
        let mut foreign = Vec::new();
        for entry in rd.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.contains(".tmp-") {
                // A write interrupted by a crash: never renamed, never a report.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some(id) = parse_name(&name) else {
                foreign.push(name.into_owned());
                continue;
            };
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            found.push((id, size));
        }
        if !foreign.is_empty() {
            foreign.sort();
            let more = foreign.len().saturating_sub(5);
            foreign.truncate(5);
            log::warn!(
                "spool: ignoring {} file(s) in {} that the agent did not write: {}{}",
                foreign.len() + more,
                dir.display(),
                foreign.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
        }
        found.sort_unstable();
        for (id, size) in found {
            self.bytes += size;
            self.entries.push_back(Entry {
                id,
                size,
                memory: None,
            });
        }
        match self.entries.back().map(|e| e.id.checked_add(1)) {
            None => {}
            Some(Some(next)) => self.next_id = next,
            Some(None) => self.renumber(),
        }
    }

    /// Gives the reports the IDs 1, 2, 3, ... in their order, so the next ID
    /// has room. Renaming in ascending order never meets a file still to
    /// be renamed (the k-th report's ID is at least k), and a crash half-way
    /// leaves the order intact. A report that cannot be renamed is dropped.
    fn renumber(&mut self) {
        log::warn!("spool: report IDs are near their limit; renumbering the spooled reports");
        let old = std::mem::take(&mut self.entries);
        self.next_id = 1;
        for mut e in old {
            let new_id = self.next_id;
            if e.memory.is_none() && e.id != new_id {
                let (from, to) = self
                    .path(e.id)
                    .zip(self.path(new_id))
                    .expect("invariant: disk entries exist only with a spool directory");
                if let Err(err) = fs::rename(&from, &to) {
                    log::warn!(
                        "spool: cannot rename {} to {}: {err}; dropped it",
                        from.display(),
                        to.display()
                    );
                    self.bytes = self.bytes.saturating_sub(e.size);
                    self.dropped += 1;
                    continue;
                }
            }
            e.id = new_id;
            self.entries.push_back(e);
            // At most one per entry, and there are far fewer than u64::MAX.
            self.next_id += 1;
        }
        if let Some(dir) = &self.dir {
            let _ = state::sync_dir(dir);
        }
    }

    /// The ID for a new report; renumbers first when none is left.
    fn allocate(&mut self) -> u64 {
        if self.next_id == u64::MAX {
            // Using u64::MAX would leave no ID after it.
            self.renumber();
        }
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reports dropped because the spool was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether the last report pushed made the spool drop its oldest.
    pub fn is_dropping(&self) -> bool {
        self.dropping
    }

    fn path(&self, id: u64) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{id:020}.json")))
    }

    /// Appends a report. It is on disk when this returns, unless the disk
    /// refused it (then it is kept in memory).
    pub fn push(&mut self, body: Vec<u8>) -> Option<u64> {
        if self.max_reports == 0 {
            self.dropped += 1;
            return None;
        }
        let id = self.allocate();
        let size = body.len() as u64;
        let memory = match self.path(id) {
            Some(path) => match state::write_atomic(&path, &body) {
                Ok(()) => {
                    if !self.disk_ok {
                        log::info!("spool: writing to {} works again", path.display());
                        self.disk_ok = true;
                    }
                    None
                }
                Err(e) => {
                    if self.disk_ok {
                        log::warn!(
                            "spool: cannot write {}: {e}; keeping unsent reports in memory until it works",
                            path.display()
                        );
                        self.disk_ok = false;
                    }
                    Some(body)
                }
            },
            None => Some(body),
        };
        self.bytes += size;
        self.entries.push_back(Entry { id, size, memory });
        self.enforce_bounds();
        Some(id)
    }

    /// Drops the oldest reports past the bounds. Logs when dropping starts
    /// and when a report fits without a drop again, not every time.
    fn enforce_bounds(&mut self) {
        let before = self.dropped;
        while self.entries.len() > self.max_reports.max(1)
            || (self.bytes > self.max_bytes && self.entries.len() > 1)
        {
            if let Some(e) = self.entries.pop_front() {
                self.forget(&e);
                self.dropped += 1;
            }
        }
        let now = self.dropped - before;
        if now > 0 {
            if !self.dropping {
                log::warn!(
                    "spool: full ({} reports, {} bytes at most); dropping the oldest unsent report for each new one until there is room",
                    self.max_reports,
                    self.max_bytes
                );
                self.dropping = true;
            }
            self.dropped_while_full += now;
        } else {
            self.has_room();
        }
    }

    /// The spool is no longer dropping: say so once, with what it cost.
    fn has_room(&mut self) {
        if self.dropping {
            log::info!(
                "spool: has room again; dropped {} report(s) while it was full",
                self.dropped_while_full
            );
            self.dropping = false;
            self.dropped_while_full = 0;
        }
    }

    fn forget(&mut self, e: &Entry) {
        self.bytes = self.bytes.saturating_sub(e.size);
        if e.memory.is_none() {
            if let Some(p) = self.path(e.id) {
                // No fsync: a deleted report that reappears after a power loss
                // is sent again and dropped by the server as a replay.
                let _ = fs::remove_file(p);
            }
        }
    }

    /// The oldest report, `(id, body)`. A file that is not a report (corrupt,
    /// truncated, not JSON) is logged, deleted and skipped; one that cannot be
    /// read right now (out of descriptors, an I/O error) is kept and the error
    /// returned, so a passing problem never destroys reports.
    pub fn front(&mut self) -> Result<Option<(u64, Vec<u8>)>, std::io::Error> {
        loop {
            let Some(e) = self.entries.front() else {
                return Ok(None);
            };
            let id = e.id;
            if let Some(body) = &e.memory {
                return Ok(Some((id, body.clone())));
            }
            let path = self
                .path(id)
                .expect("invariant: disk entries exist only with a spool directory");
            match read_report(&path) {
                Ok(body) => return Ok(Some((id, body))),
                Err(Unreadable::NotAReport(why)) => {
                    log::warn!("spool: skipping {}: {why}", path.display());
                    let e = self.entries.pop_front().expect("invariant: front exists");
                    self.forget(&e);
                }
                Err(Unreadable::Io(err)) if err.kind() == std::io::ErrorKind::NotFound => {
                    // Removed behind our back: nothing left to send.
                    let e = self.entries.pop_front().expect("invariant: front exists");
                    self.forget(&e);
                }
                Err(Unreadable::Io(err)) => return Err(err),
            }
        }
    }

    /// Removes the report `id` once the server has taken it (or refused it for good).
    pub fn remove(&mut self, id: u64) {
        if self.entries.front().is_some_and(|e| e.id == id) {
            let e = self.entries.pop_front().expect("invariant: front exists");
            self.forget(&e);
            self.has_room();
        }
    }

    /// Drops every report (the server said the token is not valid).
    pub fn clear(&mut self) -> usize {
        let n = self.entries.len();
        while let Some(e) = self.entries.pop_front() {
            self.forget(&e);
        }
        self.has_room();
        n
    }
}

enum Unreadable {
    /// The file's content is not a report: it will never be sendable.
    NotAReport(String),
    /// The file could not be read now.
    Io(std::io::Error),
}

/// Reads a spooled report and checks it is a JSON object.
fn read_report(path: &Path) -> Result<Vec<u8>, Unreadable> {
    let f = fs::File::open(path).map_err(Unreadable::Io)?;
    let mut body = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut body)
        .map_err(Unreadable::Io)?;
    if body.len() as u64 > MAX_FILE {
        return Err(Unreadable::NotAReport("larger than any report".into()));
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) if v.is_object() => Ok(body),
        _ => Err(Unreadable::NotAReport("not a JSON report".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pulse-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn report(n: u32) -> Vec<u8> {
        format!("{{\"sequenceId\":\"v1:x:{n}\"}}").into_bytes()
    }

    #[test]
    fn fifo_survives_reopen() {
        let d = dir("reopen");
        let mut s = Spool::open(Some(&d), 60, DEFAULT_MAX_BYTES);
        for n in 1..=3 {
            s.push(report(n));
        }
        drop(s);
        let mut s = Spool::open(Some(&d), 60, DEFAULT_MAX_BYTES);
        assert_eq!(s.len(), 3);
        let (id, body) = s.front().unwrap().unwrap();
        assert_eq!(body, report(1));
        s.remove(id);
        s.push(report(4));
        let mut got = Vec::new();
        while let Some((id, body)) = s.front().unwrap() {
            got.push(body);
            s.remove(id);
        }
        assert_eq!(got, vec![report(2), report(3), report(4)]);
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0, "nothing left on disk");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bounded_by_count_and_bytes() {
        let d = dir("bounds");
        let mut s = Spool::open(Some(&d), 3, DEFAULT_MAX_BYTES);
        for n in 1..=5 {
            s.push(report(n));
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.dropped(), 2);
        assert_eq!(s.front().unwrap().unwrap().1, report(3));
        let mut s = Spool::open(None, 100, 50);
        for n in 1..=5 {
            s.push(report(n));
        }
        assert!(s.len() <= 2, "{}", s.len());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_entries_are_skipped_and_tmp_files_removed() {
        let d = dir("corrupt");
        let mut s = Spool::open(Some(&d), 60, DEFAULT_MAX_BYTES);
        s.push(report(1));
        s.push(report(2));
        drop(s);
        fs::write(d.join(format!("{:020}.json", 1)), b"{\"trunc").unwrap();
        fs::write(d.join(".00000000000000000009.json.tmp-1"), b"partial").unwrap();
        fs::write(d.join("unrelated.txt"), b"x").unwrap();
        let mut s = Spool::open(Some(&d), 60, DEFAULT_MAX_BYTES);
        assert_eq!(s.front().unwrap().unwrap().1, report(2));
        assert!(!d.join(".00000000000000000009.json.tmp-1").exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_read_error_keeps_the_entry() {
        let d = dir("ioerr");
        let mut s = Spool::open(Some(&d), 60, DEFAULT_MAX_BYTES);
        s.push(report(1));
        drop(s);
        // A directory where the report should be: reading it fails with EISDIR,
        // an I/O error, not bad content.
        let f = d.join(format!("{:020}.json", 1));
        fs::remove_file(&f).unwrap();
        fs::create_dir(&f).unwrap();
        let mut s = Spool::open(Some(&d), 60, DEFAULT_MAX_BYTES);
        assert!(s.front().is_err());
        assert_eq!(s.len(), 1, "kept for a later attempt");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unwritable_disk_keeps_reports_in_memory() {
        // A path under a regular file can never be created.
        let blocker =
            std::env::temp_dir().join(format!("pulse-spool-blocker-{}", std::process::id()));
        fs::write(&blocker, b"").unwrap();
        let mut s = Spool::open(Some(&blocker.join("spool")), 60, DEFAULT_MAX_BYTES);
        s.push(report(1));
        s.push(report(2));
        assert_eq!(s.len(), 2);
        let (id, body) = s.front().unwrap().unwrap();
        assert_eq!(body, report(1));
        s.remove(id);
        assert_eq!(s.front().unwrap().unwrap().1, report(2));
        assert_eq!(s.clear(), 1);
        fs::remove_file(&blocker).unwrap();
    }

    /// Review of issue 12: a file with ID 0 broke renumbering's rule (the
    /// k-th report's ID is at least k): 0 renamed onto 1 replaced report 1.
    #[test]
    fn renumbering_with_a_file_numbered_zero_loses_no_report() {
        let d = dir("zero");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("{:020}.json", 0)), report(0)).unwrap();
        fs::write(d.join(format!("{:020}.json", 1)), report(1)).unwrap();
        fs::write(d.join(format!("{}.json", u64::MAX)), report(2)).unwrap();
        let mut s = Spool::open(Some(&d), 60, DEFAULT_MAX_BYTES);
        let mut got = Vec::new();
        while let Some((id, body)) = s.front().unwrap() {
            got.push(body);
            s.remove(id);
        }
        assert_eq!(got, vec![report(1), report(2)]);
        assert!(
            d.join(format!("{:020}.json", 0)).exists(),
            "not ours: untouched"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn spool_scan_with_a_huge_sequence_number_does_not_overflow() {
        let d = dir("huge");
        fs::create_dir_all(&d).unwrap();
        let max = format!("{}.json", u64::MAX);
        fs::write(d.join(format!("{:020}.json", 3)), report(3)).unwrap();
        fs::write(d.join(&max), report(9)).unwrap();
        // Past u64::MAX, and not 20 digits: not spool files, left alone.
        for foreign in [
            "99999999999999999999999.json",
            "18446744073709551616.json",
            "+0000000000000000005.json",
            "5.json",
        ] {
            fs::write(d.join(foreign), report(5)).unwrap();
        }
        let mut s = Spool::open(Some(&d), 60, DEFAULT_MAX_BYTES);
        assert_eq!(s.len(), 2);
        // Renumbered in order, so the next ID has room.
        assert!(d.join(format!("{:020}.json", 1)).exists());
        assert!(d.join(format!("{:020}.json", 2)).exists());
        assert!(!d.join(&max).exists());
        assert_eq!(s.push(report(10)), Some(3));
        let mut got = Vec::new();
        while let Some((id, body)) = s.front().unwrap() {
            got.push(body);
            s.remove(id);
        }
        assert_eq!(got, vec![report(3), report(9), report(10)]);
        assert!(
            d.join("99999999999999999999999.json").exists(),
            "not ours: untouched"
        );
        fs::remove_dir_all(&d).unwrap();

        // The last ID before the limit: the push after it renumbers.
        let d = dir("huge2");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("{}.json", u64::MAX - 1)), report(1)).unwrap();
        let mut s = Spool::open(Some(&d), 60, DEFAULT_MAX_BYTES);
        assert_eq!(s.push(report(2)), Some(2), "u64::MAX itself is never used");
        assert_eq!(s.push(report(3)), Some(3));
        assert_eq!(s.front().unwrap().unwrap().1, report(1));
        fs::remove_dir_all(&d).unwrap();

        // Only in memory (the disk refused): renumbered the same way.
        let mut s = Spool::open(None, 60, DEFAULT_MAX_BYTES);
        s.next_id = u64::MAX - 1;
        assert_eq!(s.push(report(1)), Some(u64::MAX - 1));
        assert_eq!(s.push(report(2)), Some(2));
        assert_eq!(s.front().unwrap().unwrap().1, report(1));
    }

    #[test]
    fn spool_names_are_exactly_twenty_digits() {
        assert_eq!(parse_name("00000000000000000042.json"), Some(42));
        assert_eq!(parse_name(&format!("{}.json", u64::MAX)), Some(u64::MAX));
        for bad in [
            "18446744073709551616.json",
            "99999999999999999999999.json",
            "42.json",
            "+0000000000000000042.json",
            "0000000000000000004a.json",
            "00000000000000000042.json.tmp-1",
            "00000000000000000042",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn spool_full_tracks_when_dropping_starts_and_stops() {
        let mut s = Spool::open(None, 2, DEFAULT_MAX_BYTES);
        s.push(report(1));
        s.push(report(2));
        assert!(!s.is_dropping());
        for n in 3..=6 {
            s.push(report(n));
            assert!(s.is_dropping());
        }
        assert_eq!(s.dropped(), 4);
        assert_eq!(s.dropped_while_full, 4);
        let (id, _) = s.front().unwrap().unwrap();
        s.remove(id);
        assert!(!s.is_dropping(), "room again once a report went out");
        assert_eq!(s.dropped_while_full, 0);
        s.push(report(7));
        assert!(!s.is_dropping());
        assert_eq!(s.dropped(), 4, "counted since start");
    }

    #[test]
    fn zero_capacity_drops() {
        let mut s = Spool::open(None, 0, DEFAULT_MAX_BYTES);
        s.push(report(1));
        assert!(s.is_empty());
        assert_eq!(s.dropped(), 1);
    }
}
