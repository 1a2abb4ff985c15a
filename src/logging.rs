//! Logger set-up: a `log` logger writing one line per record on standard error.
//!
//! Under systemd (`JOURNAL_STREAM` set) each line starts with the kernel-style
//! priority prefix (`<4>`) so journald files it at the right level and adds
//! its own timestamps; otherwise lines read `pulse-agent: warning: ...`.
//! With `--log-file` the same records are also appended to that file with a
//! UTC timestamp; the file never grows past 1 MiB (the previous one is kept as
//! `FILE.1`), because a full root filesystem on a small NAS is worse than a
//! lost log line. On SIGHUP the service reopens the file by its name
//! ([`LogFile::reopen`]), so an outside logrotate can rename it. Nothing here
//! ever sees the token: callers do not log it.
//! A new log file is created 0600 (log lines name hosts, URLs and server
//! answers; the stock agent's log files are 0600 too); an existing one keeps
//! its mode, and so does the file that replaces it at rotation, so an
//! operator's `chmod 640` for a log-reading group survives.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use log::{Level, LevelFilter};

/// Size at which the log file is rotated.
pub const LOG_FILE_CAP: u64 = 1024 * 1024;
/// Mode of a log file this agent creates (before the umask).
pub const LOG_FILE_MODE: u32 = 0o600;

/// The log file the logger writes, shared with whoever reopens it on
/// SIGHUP. Empty without `--log-file`.
#[derive(Clone, Default)]
pub struct LogFile(Option<Arc<Mutex<CappedFile>>>);

impl LogFile {
    /// Opens the file by its path again, so lines go to a file of that
    /// name after someone renamed the old one. On failure the old file is
    /// kept. `None` without a log file.
    pub fn reopen(&self) -> Option<(PathBuf, io::Result<()>)> {
        let shared = self.0.as_ref()?;
        let mut f = shared.lock().unwrap_or_else(|p| p.into_inner());
        let result = CappedFile::open(f.path.clone(), f.cap).map(|new| *f = new);
        Some((f.path.clone(), result))
    }
}

/// Installs the global logger. Safe to call once; later calls do nothing.
/// The level can be changed later with [`set_level`] (remote configuration);
/// the libraries' own logs are capped at `warn` unless the level is `trace`.
pub fn init(level: LevelFilter, file: Option<&Path>) -> io::Result<LogFile> {
    init_as("pulse-agent", level, file)
}

/// [`init`] for a program that prefixes its lines with `program` (the
/// sensor proxy).
pub fn init_as(
    program: &'static str,
    level: LevelFilter,
    file: Option<&Path>,
) -> io::Result<LogFile> {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let file = match file {
        Some(p) => LogFile(Some(Arc::new(Mutex::new(CappedFile::open(
            p.to_path_buf(),
            LOG_FILE_CAP,
        )?)))),
        None => LogFile::default(),
    };
    let logger = Logger {
        program,
        journal,
        quiet_libraries: level < LevelFilter::Trace,
        out: Mutex::new(Tee { file: file.clone() }),
    };
    // A second initialisation (tests) keeps the first logger.
    let _ = log::set_logger(Box::leak(Box::new(logger)));
    set_level(level);
    Ok(file)
}

/// One line per record: `PROGRAM: LEVEL: message`, or `<PRIORITY>message`
/// under journald, on standard error and in the log file.
struct Logger {
    program: &'static str,
    journal: bool,
    /// Below trace, the libraries' own records only from warnings up.
    quiet_libraries: bool,
    out: Mutex<Tee>,
}

/// Crates whose debug records are about their internals, not the agent.
const NOISY: [&str; 4] = ["ureq", "ureq_proto", "rustls", "tiny_http"];

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        if m.level() > log::max_level() {
            return false;
        }
        let noisy = || {
            let krate = m.target().split("::").next().unwrap_or("");
            NOISY.contains(&krate)
        };
        !(self.quiet_libraries && m.level() > Level::Warn && noisy())
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = if self.journal {
            format!("<{}>{}\n", priority(record.level()), record.args())
        } else {
            format!(
                "{}: {}: {}\n",
                self.program,
                word(record.level()),
                record.args()
            )
        };
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = out.write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Changes the log level while running.
pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

fn priority(l: Level) -> u8 {
    match l {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

fn word(l: Level) -> &'static str {
    match l {
        Level::Error => "error",
        Level::Warn => "warning",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// Standard error, plus the log file when there is one.
struct Tee {
    file: LogFile,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stderr().write_all(buf)?;
        if let Some(f) = &self.file.0 {
            // Strip the journald prefix; the file gets its own timestamp.
            let line = match buf.strip_prefix(b"<") {
                Some(rest) if rest.get(1) == Some(&b'>') => &rest[2..],
                _ => buf,
            };
            let stamped = format!(
                "{} {}",
                crate::report::rfc3339(SystemTime::now()),
                String::from_utf8_lossy(line)
            );
            // A failing log file must not stop the agent.
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            let _ = f.write_all(stamped.as_bytes());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// An append-only file that is renamed to `PATH.1` when it reaches `cap` bytes.
pub struct CappedFile {
    path: PathBuf,
    file: File,
    size: u64,
    cap: u64,
}

impl CappedFile {
    pub fn open(path: PathBuf, cap: u64) -> io::Result<CappedFile> {
        let file = open_append(&path, LOG_FILE_MODE)?;
        let size = file.metadata()?.len();
        Ok(CappedFile {
            path,
            file,
            size,
            cap,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        let mode = self.file.metadata()?.permissions().mode() & 0o777;
        std::fs::rename(&self.path, &old)?;
        self.file = open_append(&self.path, mode)?;
        self.size = 0;
        Ok(())
    }
}

/// Opens `path` for appending; `mode` applies only if it is created.
fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(mode)
        .open(path)
}

impl Write for CappedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.cap {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Log;

    /// The logger that replaced env_logger keeps its filter: below trace,
    /// the HTTP and TLS libraries log warnings and errors only (by crate,
    /// not by prefix: `ureq_protox` is not `ureq_proto`).
    #[test]
    fn libraries_are_quiet_below_trace_and_the_agent_is_not() {
        log::set_max_level(LevelFilter::Trace);
        let at = |quiet: bool, target: &str, level: Level| {
            let l = Logger {
                program: "t",
                journal: false,
                quiet_libraries: quiet,
                out: Mutex::new(Tee {
                    file: LogFile::default(),
                }),
            };
            l.enabled(&log::Metadata::builder().target(target).level(level).build())
        };
        assert!(!at(true, "rustls::client::hs", Level::Debug));
        assert!(!at(true, "ureq_proto", Level::Info));
        assert!(at(true, "rustls::conn", Level::Warn));
        assert!(at(true, "pulse_agent::deliver", Level::Debug));
        assert!(at(true, "ureq_protox", Level::Debug));
        assert!(at(false, "rustls::client::hs", Level::Trace));
    }

    #[test]
    fn capped_file_rotates_and_never_exceeds_cap() {
        let dir = std::env::temp_dir().join(format!("pulse-log-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.log");
        let mut f = CappedFile::open(path.clone(), 100).unwrap();
        for _ in 0..50 {
            f.write_all(b"0123456789\n").unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
        assert!(std::fs::metadata(dir.join("agent.log.1")).unwrap().len() <= 100);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// Issue 12: `--log-file` was created 0644, readable by every user.
    #[test]
    fn log_file_is_created_owner_only() {
        let dir = std::env::temp_dir().join(format!("pulse-log-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.log");
        let mut f = CappedFile::open(path.clone(), 100).unwrap();
        f.write_all(b"line\n").unwrap();
        assert_eq!(mode(&path), 0o600);
        // A rotated file starts with the mode of the one it replaces.
        for _ in 0..20 {
            f.write_all(b"0123456789\n").unwrap();
        }
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.join("agent.log.1")), 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An existing log file keeps the mode its operator gave it, through
    /// rotation too (e.g. 0640 for a log-reading group).
    #[test]
    fn existing_log_file_keeps_its_mode() {
        let dir = std::env::temp_dir().join(format!("pulse-log-keep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.log");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut f = CappedFile::open(path.clone(), 100).unwrap();
        assert_eq!(mode(&path), 0o640);
        for _ in 0..20 {
            f.write_all(b"0123456789\n").unwrap();
        }
        assert_eq!(mode(&path), 0o640, "the file started after rotation");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
