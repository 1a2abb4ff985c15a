//! Runs an external program (smartctl, lsblk, mdadm, zpool, zfs, nvidia-smi,
//! sensors) with a deadline and an output cap, never through a shell.
//!
//! The child gets its own process group, an empty stdin and a fixed
//! environment (`PATH` and `LC_ALL=C`, so its messages are the English ones the
//! parsers know; never the agent's token). Standard output is read up to a cap
//! and standard error up to a smaller one; going past the stdout cap, or the
//! deadline, kills the whole group. A child that cannot die (a process stuck in
//! uninterruptible sleep on a failing disk ignores SIGKILL until the kernel
//! lets go) is handed to a reaper thread instead of being waited for, so the
//! caller gets its answer at the deadline either way; [`Outcome::stuck`] then
//! tells it to leave that device alone until the reaper is done.

use std::fmt;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::sys;

/// Default cap on standard output: 1 MiB, like the stock agent's runner.
pub const STDOUT_CAP: usize = 1024 * 1024;
/// Cap on standard error, which only feeds error messages.
pub const STDERR_CAP: usize = 32 * 1024;
/// How long a killed child may take to die before the reaper takes it.
const DIE_WAIT: Duration = Duration::from_millis(500);
/// `PATH` for children: the usual places, sbin first (smartctl, mdadm, zpool).
const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a finished (or abandoned) run produced.
#[derive(Debug)]
pub struct Output {
    /// The exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    /// Standard error, lossily decoded and capped.
    pub stderr: String,
}

/// Why a run gave no [`Output`].
#[derive(Debug)]
pub enum Error {
    /// The program could not be started (missing, not executable).
    Spawn(PathBuf, std::io::Error),
    /// The deadline passed; the child was killed. `stuck` is set while a
    /// child that did not die is still being reaped.
    Timeout(PathBuf, Duration, Stuck),
    /// Standard output went past the cap; the child was killed.
    TooLarge(PathBuf, usize),
    /// Reading the pipes failed.
    Io(PathBuf, std::io::Error),
}

/// Set while an abandoned child is still alive.
#[derive(Debug, Clone, Default)]
pub struct Stuck(Arc<AtomicBool>);

impl Stuck {
    pub fn is_stuck(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Spawn(p, e) => write!(f, "cannot run {}: {e}", p.display()),
            Error::Timeout(p, d, _) => {
                write!(
                    f,
                    "{} did not finish within {} s",
                    p.display(),
                    d.as_secs_f64()
                )
            }
            Error::TooLarge(p, cap) => {
                write!(f, "{} wrote more than {cap} bytes of output", p.display())
            }
            Error::Io(p, e) => write!(f, "reading the output of {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// The program does not exist (as opposed to failing).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Spawn(_, e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// Runs `program args..` until `deadline`, keeping at most `cap` bytes of
/// standard output.
pub fn run(program: &Path, args: &[&str], deadline: Instant, cap: usize) -> Result<Output, Error> {
    let env = [("PATH", CHILD_PATH), ("LC_ALL", "C")].map(|(k, v)| (k.into(), v.into()));
    let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    run_with_env(program, &args, &env, deadline, cap)
}

/// [`run`] with exactly the environment `env` (the updater hands a
/// candidate binary the agent's configuration, without the token).
pub fn run_with_env(
    program: &Path,
    args: &[std::ffi::OsString],
    env: &[(std::ffi::OsString, std::ffi::OsString)],
    deadline: Instant,
    cap: usize,
) -> Result<Output, Error> {
    run_io(program, args, env, Stdio::null(), deadline, cap)
}

/// [`run_with_env`] with `stdin` as the child's standard input.
fn run_io(
    program: &Path,
    args: &[std::ffi::OsString],
    env: &[(std::ffi::OsString, std::ffi::OsString)],
    stdin: Stdio,
    deadline: Instant,
    cap: usize,
) -> Result<Output, Error> {
    let p = || program.to_path_buf();
    if Instant::now() >= deadline {
        return Err(Error::Timeout(p(), Duration::ZERO, Stuck::default()));
    }
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Spawn(p(), e))?;
    let started = Instant::now();
    let timeout = |child| {
        Error::Timeout(
            p(),
            deadline.saturating_duration_since(started),
            kill(child),
        )
    };
    match read_both(&mut child, deadline, cap) {
        Ok((stdout, stderr, status)) => {
            // The pipes are closed or the program has exited (a process it
            // left behind may still hold them: the group is cleaned up).
            let status = match status.or_else(|| wait_until(&mut child, deadline)) {
                Some(s) => s,
                None => return Err(timeout(child)),
            };
            if sys::process_group_alive(child.id()) {
                kill(child);
            }
            Ok(Output {
                code: status.code(),
                stdout,
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            })
        }
        Err(Stop::Deadline) => Err(timeout(child)),
        Err(Stop::Cap) => {
            kill(child);
            Err(Error::TooLarge(p(), cap))
        }
        Err(Stop::Io(e)) => {
            kill(child);
            Err(Error::Io(p(), e))
        }
    }
}

enum Stop {
    Deadline,
    Cap,
    Io(std::io::Error),
}

/// How long the pipes may stay open after the program itself has exited.
const LINGER: Duration = Duration::from_millis(200);

/// Reads stdout and stderr until both close (or the program has exited and
/// [`LINGER`] has passed), the deadline, or the cap. Returns the exit status
/// when it was seen.
#[allow(clippy::type_complexity)]
fn read_both(
    child: &mut Child,
    deadline: Instant,
    cap: usize,
) -> Result<(Vec<u8>, Vec<u8>, Option<std::process::ExitStatus>), Stop> {
    let mut out = child.stdout.take().expect("invariant: stdout is piped");
    let mut err = child.stderr.take().expect("invariant: stderr is piped");
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let (mut out_open, mut err_open) = (true, true);
    let mut exited: Option<(std::process::ExitStatus, Instant)> = None;
    let mut buf = [0u8; 16 * 1024];
    while out_open || err_open {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(Stop::Deadline)?;
        if exited.is_none() {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some((status, Instant::now()));
            }
        }
        if let Some((_, at)) = exited {
            if at.elapsed() >= LINGER {
                break;
            }
        }
        let mut fds = Vec::with_capacity(2);
        if out_open {
            fds.push(out.as_raw_fd());
        }
        if err_open {
            fds.push(err.as_raw_fd());
        }
        // Wake now and then to notice a program that exited while something
        // it started keeps the pipes open.
        let ready = sys::poll_readable(&fds, Some(left.min(LINGER))).map_err(Stop::Io)?;
        let mut i = 0;
        if out_open {
            if ready[i] {
                let n = out.read(&mut buf).map_err(Stop::Io)?;
                if n == 0 {
                    out_open = false;
                } else if stdout.len() + n > cap {
                    return Err(Stop::Cap);
                } else {
                    stdout.extend_from_slice(&buf[..n]);
                }
            }
            i += 1;
        }
        if err_open && ready[i] {
            let n = err.read(&mut buf).map_err(Stop::Io)?;
            if n == 0 {
                err_open = false;
            } else {
                // Past the cap stderr is drained and dropped, so the child
                // never blocks on a full pipe.
                let room = STDERR_CAP.saturating_sub(stderr.len());
                stderr.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    Ok((stdout, stderr, exited.map(|(s, _)| s)))
}

/// Waits for the child until `deadline`; `None` if it is still running.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => return None,
            // Already reaped or not ours: treat as gone, killed.
            Err(_) => return Some(std::process::ExitStatus::from_raw(9)),
        }
    }
}

/// Kills the child's process group and reaps the child. If the group does
/// not die within [`DIE_WAIT`] (a process stuck on a disk, or one the agent
/// may not signal, like a smartctl run through sudo), a reaper thread waits
/// for it and [`Stuck`] stays set until it is gone.
fn kill(mut child: Child) -> Stuck {
    let pgid = child.id();
    sys::kill_process_group(pgid);
    let stuck = Stuck::default();
    let until = Instant::now() + DIE_WAIT;
    let mut reaped = wait_until(&mut child, until).is_some();
    while reaped && sys::process_group_alive(pgid) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    if reaped && !sys::process_group_alive(pgid) {
        return stuck;
    }
    stuck.0.store(true, Ordering::SeqCst);
    let flag = stuck.clone();
    let spawned = std::thread::Builder::new()
        .name("reaper".into())
        .stack_size(32 * 1024)
        .spawn(move || {
            if !reaped {
                let _ = child.wait();
                reaped = true;
            }
            while reaped && sys::process_group_alive(pgid) {
                sys::kill_process_group(pgid);
                std::thread::sleep(Duration::from_secs(1));
            }
            flag.0.store(false, Ordering::SeqCst);
        });
    if spawned.is_err() {
        // No thread to wait with: the zombie stays until the agent exits.
        log::debug!("cannot start a reaper thread");
    }
    stuck
}

/// The first executable `name` in `PATH` (the agent's), then the sbin
/// directories a service's `PATH` often lacks.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    first_executable(
        name,
        std::env::split_paths(&path).chain(std::env::split_paths(CHILD_PATH)),
    )
}

/// The first executable `name` in `dirs` (the places a package installs it),
/// then in `PATH`. Absolute directories only: a relative `PATH` entry would
/// run whatever the working directory holds.
pub fn find_in(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    first_executable(
        name,
        dirs.iter()
            .map(PathBuf::from)
            .chain(std::env::split_paths(&path)),
    )
}

/// `dir/name` for the first absolute `dir` where it is executable.
fn first_executable(name: &str, dirs: impl Iterator<Item = PathBuf>) -> Option<PathBuf> {
    dirs.filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// [`run`] with the file `stdin` as standard input instead of an empty one
/// (the proxy streams its own binary to a node through `ssh`). The child
/// reads the file itself, so nothing here can block on a full pipe.
pub fn run_with_stdin(
    program: &Path,
    args: &[&str],
    stdin: std::fs::File,
    deadline: Instant,
    cap: usize,
) -> Result<Output, Error> {
    let env = [("PATH", CHILD_PATH), ("LC_ALL", "C")].map(|(k, v)| (k.into(), v.into()));
    let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    run_io(program, &args, &env, stdin.into(), deadline, cap)
}

/// A program that may hang: not started again while an earlier run of it
/// is still stuck in the kernel.
pub struct Tool {
    pub name: &'static str,
    stuck: Option<Stuck>,
    /// A run since the last [`Tool::take_hung`] did not answer in time.
    hung: bool,
}

impl Tool {
    pub fn new(name: &'static str) -> Tool {
        Tool {
            name,
            stuck: None,
            hung: false,
        }
    }

    pub fn take_hung(&mut self) -> bool {
        std::mem::take(&mut self.hung)
    }

    pub fn run(
        &mut self,
        program: &Path,
        args: &[&str],
        timeout: Duration,
        cap: usize,
    ) -> Result<Output, String> {
        let what = format!("{} {}", self.name, args.join(" "));
        if self.stuck.as_ref().is_some_and(Stuck::is_stuck) {
            self.hung = true;
            return Err(format!(
                "{what}: an earlier {} has not exited; not started again until it does",
                self.name
            ));
        }
        match run(program, args, Instant::now() + timeout, cap) {
            Ok(o) => Ok(o),
            Err(Error::Timeout(_, _, stuck)) => {
                self.stuck = Some(stuck);
                self.hung = true;
                Err(format!("{what}: no answer within {} s", timeout.as_secs()))
            }
            Err(e) => Err(format!("{what}: {e}")),
        }
    }
}

/// The first line of what a failed program said.
pub fn failure(o: &Output) -> String {
    let text = if o.stderr.trim().is_empty() {
        String::from_utf8_lossy(&o.stdout).into_owned()
    } else {
        o.stderr.clone()
    };
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let code = o
        .code
        .map_or_else(|| "killed by a signal".to_string(), |c| format!("exit {c}"));
    if line.is_empty() {
        code
    } else {
        format!("{code}: {}", line.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, secs: u64, cap: usize) -> Result<Output, Error> {
        run(
            Path::new("/bin/sh"),
            &["-c", script],
            Instant::now() + Duration::from_secs(secs),
            cap,
        )
    }

    #[test]
    fn output_and_exit_code() {
        let o = sh("echo out; echo err >&2; exit 3", 5, 100).unwrap();
        assert_eq!(o.code, Some(3));
        assert_eq!(o.stdout, b"out\n");
        assert_eq!(o.stderr, "err\n");
    }

    #[test]
    fn the_environment_is_not_inherited() {
        let o = sh("echo \"$PULSE_TOKEN|$LC_ALL\"", 5, 100).unwrap();
        assert_eq!(o.stdout, b"|C\n");
    }

    #[test]
    fn a_hang_is_killed_at_the_deadline_with_its_children() {
        let started = Instant::now();
        // The grandchild keeps the pipe open: killing only the child would
        // leave the read waiting.
        let e = sh("sleep 100 & sleep 100", 1, 100).unwrap_err();
        assert!(matches!(e, Error::Timeout(..)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn output_is_kept_when_a_leftover_process_holds_the_pipe() {
        let started = Instant::now();
        let o = sh("echo done; sleep 30 &", 5, 100).unwrap();
        assert_eq!(o.stdout, b"done\n");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_passed_deadline_starts_nothing() {
        let e = run(Path::new("/bin/sh"), &["-c", "exit 0"], Instant::now(), 10).unwrap_err();
        assert!(matches!(e, Error::Timeout(..)), "{e}");
    }

    #[test]
    fn output_past_the_cap_is_refused() {
        let e = sh("head -c 100000 /dev/zero", 5, 1000).unwrap_err();
        assert!(matches!(e, Error::TooLarge(_, 1000)), "{e}");
    }

    #[test]
    fn a_missing_program_is_told_apart() {
        let e = run(
            Path::new("/nonexistent/smartctl"),
            &[],
            Instant::now() + Duration::from_secs(1),
            10,
        )
        .unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }
}
