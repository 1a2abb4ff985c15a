//! The state directory and durable writes.
//!
//! Everything the agent persists (the agent ID, the runtime token, spooled
//! reports) is written the same way: to a temporary file in the same
//! directory, `fsync`ed, renamed over the target, and the directory `fsync`ed,
//! so a crash or power loss leaves either the old file or the new one, never a
//! torn one. Files are created 0600 and the directory 0700.
//!
//! Nothing here is called while reports are being delivered normally: the
//! happy path writes nothing to disk (flash on NAS boxes and SD cards wears out).
//!
//! One agent per state directory: [`Lock`] holds `flock(2)` on
//! `STATE-DIR/lock` for the life of the process, so a second agent (a manual
//! `--once` beside the service) never renames or deletes the first one's
//! spool files. The lock file stays empty: the second agent finds the
//! holder's PID in the kernel's `/proc/locks`, so taking the lock writes
//! nothing (a `--once` timer every minute would otherwise write every minute).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates `dir` (and parents) if needed and makes it 0700. Failing to
/// tighten the mode of an existing directory is reported, not fatal.
pub fn ensure_dir(dir: &Path) -> io::Result<Option<String>> {
    fs::create_dir_all(dir)?;
    let meta = fs::metadata(dir)?;
    if meta.permissions().mode() & 0o777 != 0o700 {
        if let Err(e) = fs::set_permissions(dir, fs::Permissions::from_mode(0o700)) {
            return Ok(Some(format!(
                "cannot make {} mode 0700: {e}",
                dir.display()
            )));
        }
    }
    Ok(None)
}

/// Writes `data` to `path` atomically and durably, mode 0600.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, data, 0o600)
}

/// [`write_atomic`] with the file ending as `mode`. Each call has its own
/// temporary name, so threads writing the same path at once never share
/// one (the last rename wins, whole).
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        if mode != 0o600 {
            f.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `fsync` on a directory, so a rename or unlink in it survives power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a small state file, trimmed; `None` when absent or empty.
pub fn read_trimmed(path: &Path, cap: u64) -> io::Result<Option<String>> {
    use std::io::Read;
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut s = String::new();
    f.take(cap).read_to_string(&mut s)?;
    let t = s.trim();
    Ok((!t.is_empty()).then(|| t.to_string()))
}

/// Writes `value` to `path` only if the file does not already hold it, so an
/// unchanged agent ID costs no flash write.
pub fn write_if_changed(path: &Path, value: &str) -> io::Result<bool> {
    if read_trimmed(path, 4096).ok().flatten().as_deref() == Some(value) {
        return Ok(false);
    }
    write_atomic(path, value.as_bytes())?;
    Ok(true)
}

/// The name of the lock file in the state directory.
pub const LOCK_FILE: &str = "lock";

/// The state directory's lock. Released when dropped or when the process
/// ends, however it ends (the kernel drops `flock` locks with the file).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Why [`Lock::try_take`] did not take the lock.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it; its PID, if the lock file names one.
    Held(Option<u32>),
    /// The lock file cannot be opened or locked.
    Io(PathBuf, io::Error),
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Held(Some(pid)) => write!(f, "held by PID {pid}"),
            LockError::Held(None) => f.write_str("held by another process"),
            LockError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl Lock {
    /// Takes the lock on `dir` without waiting.
    pub fn try_take(dir: &Path) -> Result<Lock, LockError> {
        Lock::try_take_file(&dir.join(LOCK_FILE))
    }

    /// Takes the lock on the file `path` (created empty if needed) without
    /// waiting.
    pub fn try_take_file(path: &Path) -> Result<Lock, LockError> {
        let path = path.to_path_buf();
        let io_err = |e| LockError::Io(path.clone(), e);
        // O_CLOEXEC (std sets it anyway; said here because it matters): a
        // child program (smartctl, a re-exec) must not inherit the
        // descriptor and hold the lock after the agent is gone.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err)?;
        if !crate::sys::try_lock_exclusive(file.as_fd()).map_err(io_err)? {
            let holder = file.metadata().ok().and_then(|m| {
                // The agent's own kernel, like /proc/self: not the host
                // telemetry that --root redirects.
                let mut locks = Vec::new();
                File::open("/proc/locks")
                    .and_then(|f| {
                        io::Read::read_to_end(&mut io::Read::take(f, 1 << 20), &mut locks)
                    })
                    .ok()?;
                flock_holder(&String::from_utf8_lossy(&locks), m.dev(), m.ino())
            });
            return Err(LockError::Held(holder));
        }
        Ok(Lock { _file: file })
    }
}

/// The PID that holds an exclusive `flock` on the file with device `dev`
/// and inode `ino`, from `/proc/locks` lines such as
/// `1: FLOCK  ADVISORY  WRITE 2119 fd:01:1575937 0 EOF` (device as hex
/// `major:minor`). Lines of blocked waiters (`1: -> FLOCK ...`) are skipped.
pub fn flock_holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|line| {
        let mut f = line.split_whitespace().skip(1);
        if f.next()? != "FLOCK" {
            return None;
        }
        let (_, mode, pid, file) = (f.next()?, f.next()?, f.next()?, f.next()?);
        let mut id = file.split(':');
        let ma = u32::from_str_radix(id.next()?, 16).ok()?;
        let mi = u32::from_str_radix(id.next()?, 16).ok()?;
        let inode: u64 = id.next()?.parse().ok()?;
        let pid: u32 = pid.parse().ok()?;
        (mode == "WRITE" && ma == major && mi == minor && inode == ino && pid > 0).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_and_modes() {
        let dir = std::env::temp_dir().join(format!("pulse-state-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert!(ensure_dir(&dir).unwrap().is_none());
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let f = dir.join("agent-id");
        write_atomic(&f, b"abc").unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), "abc");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!write_if_changed(&f, "abc").unwrap());
        assert!(write_if_changed(&f, "def").unwrap());
        assert_eq!(read_trimmed(&f, 10).unwrap().as_deref(), Some("def"));
        assert_eq!(read_trimmed(&dir.join("none"), 10).unwrap(), None);
        // No temporary files left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn two_agents_on_one_state_dir_the_second_is_refused_and_told_the_pid() {
        let dir = std::env::temp_dir().join(format!("pulse-state-lock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        ensure_dir(&dir).unwrap();
        // flock locks belong to the open file: a second open in this process
        // conflicts just as another process would.
        let first = Lock::try_take(&dir).unwrap();
        let pid = std::process::id();
        // Nothing is written: the holder is found in /proc/locks.
        assert_eq!(fs::read_to_string(dir.join(LOCK_FILE)).unwrap(), "");
        match Lock::try_take(&dir) {
            Err(LockError::Held(Some(p))) => assert_eq!(p, pid),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            fs::metadata(dir.join(LOCK_FILE))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        // A child started while the lock is held does not inherit it: once
        // the agent lets go, the lock is free although the child still runs.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        drop(first);
        // Other tests of this process fork too: a child between fork and
        // exec briefly shares the descriptor. A leaked one would hold it
        // for the 5 s the child sleeps.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let again = loop {
            match Lock::try_take(&dir) {
                Err(LockError::Held(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other,
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        again.expect("free once the holder is gone");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flock_holder_is_read_from_proc_locks() {
        let dev = libc::makedev(0xfd, 0x01);
        let locks = "1: POSIX  ADVISORY  WRITE 77 fd:01:1575937 0 EOF\n\
                     2: FLOCK  ADVISORY  READ  88 fd:01:1575937 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 2119 fd:01:1575937 0 EOF\n\
                     3: -> FLOCK  ADVISORY  WRITE 3000 fd:01:1575937 0 EOF\n";
        assert_eq!(flock_holder(locks, dev, 1575937), Some(2119));
        assert_eq!(flock_holder(locks, dev, 1575938), None);
        assert_eq!(flock_holder(locks, libc::makedev(0xfd, 2), 1575937), None);
        assert_eq!(flock_holder("", dev, 1), None);
        assert_eq!(
            flock_holder("1: FLOCK ADVISORY WRITE x zz:01:1\n9:", dev, 1),
            None
        );
    }
}
