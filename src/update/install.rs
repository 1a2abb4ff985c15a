//! The binary on disk: the temporary file beside it, executable checks, the
//! trial runs of a candidate, the swap, the rollback and leftovers.
//!
//! The installed path never lacks a complete binary: the old one gets a
//! second name (`PATH.previous`, a hard link, else a durable copy) before one
//! atomic `rename` puts the new one over the path, with `fsync` of the file
//! and the directory around it. A run killed at any step leaves the whole old
//! or the whole new binary at the path; what it left beside it (a temporary
//! file) is removed by the next run.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::exe::{self, Elf, Kind};
use crate::state::sync_dir;

/// `PATH.previous`: the binary before the last install.
pub fn previous_path(binary: &Path) -> PathBuf {
    let mut p = binary.as_os_str().to_owned();
    p.push(".previous");
    PathBuf::from(p)
}

fn dir_of(binary: &Path) -> &Path {
    binary
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn temp_prefix(binary: &Path) -> OsString {
    let mut p = OsString::from(".");
    p.push(binary.file_name().unwrap_or_default());
    p.push(".update-");
    p
}

/// Creates the temporary file for a download beside `binary` (same
/// filesystem, so the final rename is atomic): new, mode 0600.
pub fn create_temp(binary: &Path) -> io::Result<(PathBuf, File)> {
    let mut name = temp_prefix(binary);
    name.push(std::process::id().to_string());
    let path = dir_of(binary).join(name);
    // A file of that name is a leftover of a run with the same PID.
    let _ = fs::remove_file(&path);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&path)?;
    Ok((path, file))
}

/// Removes what an interrupted run left beside `binary` (temporary files);
/// returns what was removed. Called with the update lock held, so no other
/// run's file is touched.
pub fn remove_leftovers(binary: &Path) -> Vec<PathBuf> {
    let prefix = temp_prefix(binary);
    let prefix = prefix.as_encoded_bytes();
    // A half-made copy of the old binary (copy_durably) too.
    let mut copy = previous_path(binary).into_os_string();
    copy.push(".tmp");
    let copy = PathBuf::from(copy);
    let copy_name = copy.file_name().unwrap_or_default();
    let Ok(entries) = fs::read_dir(dir_of(binary)) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let is_ours = (name.as_encoded_bytes().starts_with(prefix) || name == copy_name)
            && e.file_type().is_ok_and(|t| t.is_file());
        if is_ours && fs::remove_file(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

/// The executable checks: a known magic, and for ELF the class, byte order
/// and machine of `want`. Returns `(check, why)` on failure.
pub fn check_executable(path: &Path, want: Elf) -> Result<(), (&'static str, String)> {
    let mut header = Vec::with_capacity(exe::HEADER_LEN);
    File::open(path)
        .and_then(|f| f.take(exe::HEADER_LEN as u64).read_to_end(&mut header))
        .map_err(|e| ("executable", format!("{}: {e}", path.display())))?;
    match exe::identify(&header) {
        None => Err((
            "executable",
            "not an executable (no ELF, Mach-O or PE magic)".into(),
        )),
        Some(Kind::MachO) => Err(("machine", "a Mach-O executable (macOS), not Linux".into())),
        Some(Kind::Pe) => Err(("machine", "a PE executable (Windows), not Linux".into())),
        Some(Kind::Elf(elf)) if elf != want => Err((
            "machine",
            format!(
                "an ELF for {} (class {}, byte order {}, machine {}); this CPU needs {} (class {}, byte order {}, machine {})",
                describe(elf),
                elf.class,
                elf.data,
                elf.machine,
                describe(want),
                want.class,
                want.data,
                want.machine
            ),
        )),
        Some(Kind::Elf(_)) => Ok(()),
    }
}

fn describe(elf: Elf) -> String {
    let names: Vec<_> = exe::targets_of(elf).collect();
    if names.is_empty() {
        "another CPU".into()
    } else {
        names.join("/")
    }
}

/// Makes the verified candidate executable (0755) and durable.
pub fn seal(file: &File) -> io::Result<()> {
    file.set_permissions(fs::Permissions::from_mode(0o755))?;
    file.sync_all()
}

/// Runs `candidate args..` with `env` (nothing else of the agent's
/// environment) until `deadline`. Returns its standard output, or why it
/// failed (exit status, signal, deadline) with the start of its stderr.
pub fn trial_run(
    candidate: &Path,
    args: &[OsString],
    env: &[(OsString, OsString)],
    deadline: Instant,
) -> Result<String, String> {
    let mut tries = 0;
    let result = loop {
        match crate::exec::run_with_env(candidate, args, env, deadline, 64 * 1024) {
            // A child another thread forked while the file was open for
            // writing holds it for a moment (until its own exec).
            Err(crate::exec::Error::Spawn(_, e))
                if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 10 =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => break other,
        }
    };
    match result {
        Ok(out) if out.code == Some(0) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => {
            let how = match out.code {
                Some(c) => format!("exited with status {c}"),
                None => "was killed by a signal".into(),
            };
            let err = crate::deliver::snippet(out.stderr.as_bytes());
            Err(if err.is_empty() {
                how
            } else {
                format!("{how}: {err}")
            })
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Puts `temp` (complete, sealed) at `binary`, keeping the old binary as
/// `PATH.previous`. The path holds a complete binary at every moment.
pub fn swap(temp: &Path, binary: &Path) -> io::Result<()> {
    let dir = dir_of(binary);
    let previous = previous_path(binary);
    match fs::remove_file(&previous) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("{}: {e}", previous.display()),
            ));
        }
    }
    if let Err(e) = fs::hard_link(binary, &previous) {
        // A filesystem without hard links (FAT on a NAS's boot stick): a
        // durable copy, put in place by rename.
        log::debug!("cannot link {}: {e}; copying it", previous.display());
        copy_durably(binary, &previous)?;
    }
    sync_dir(dir)?;
    fs::rename(temp, binary)
        .map_err(|e| io::Error::new(e.kind(), format!("rename over {}: {e}", binary.display())))?;
    // Installed: a failing fsync now cannot undo that, only delay it.
    if let Err(e) = sync_dir(dir) {
        log::warn!("fsync of {} after the install: {e}", dir.display());
    }
    Ok(())
}

/// Copies `from` to `to` through `to.tmp`: fsync'd, renamed, directory fsync'd.
pub fn copy_durably(from: &Path, to: &Path) -> io::Result<()> {
    let mut tmp = to.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut src = File::open(from)?;
        let mode = src.metadata()?.permissions().mode() & 0o777;
        let mut dst = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        io::copy(&mut src, &mut dst)?;
        dst.sync_all()?;
        fs::rename(&tmp, to)?;
        sync_dir(dir_of(to))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Puts `PATH.previous` back at `binary` (one rename).
pub fn restore_previous(binary: &Path) -> io::Result<()> {
    let previous = previous_path(binary);
    fs::rename(&previous, binary)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", previous.display())))?;
    sync_dir(dir_of(binary))
}

/// Appliance persistence (spec §7): Unraid runs from a RAM disk and QNAP
/// rebuilds parts of its root at boot, so an update must also reach the copy
/// they start from. `root` is `/` (a test's directory in tests). Failures
/// are returned as messages to log; the install itself has succeeded.
pub fn persist(root: &Path, binary: &Path, state_dir: &Path) -> Vec<String> {
    let name = binary.file_name().unwrap_or_default();
    let mut targets = Vec::new();
    if root.join("etc/unraid-version").exists() {
        let plugin = root.join("boot/config/plugins").join(name).join(name);
        if plugin.exists() {
            targets.push(plugin);
        }
    }
    let qnap = root.join("sbin/getcfg").exists() || root.join("etc/config/qpkg.conf").exists();
    if qnap && state_dir.is_dir() {
        targets.push(state_dir.join(name));
    }
    targets
        .into_iter()
        .filter_map(|t| {
            copy_durably(binary, &t)
                .err()
                .map(|e| format!("cannot update the persistent copy {}: {e}", t.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pulse-install-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn swap_keeps_the_old_binary_as_previous_and_restore_puts_it_back() {
        let d = tmpdir("swap");
        let bin = d.join("pulse-agent");
        fs::write(&bin, b"old").unwrap();
        let (tmp, f) = create_temp(&bin).unwrap();
        fs::write(&tmp, b"new").unwrap();
        seal(&f).unwrap();
        swap(&tmp, &bin).unwrap();
        assert_eq!(fs::read(&bin).unwrap(), b"new");
        assert_eq!(fs::read(previous_path(&bin)).unwrap(), b"old");
        assert!(!tmp.exists());
        restore_previous(&bin).unwrap();
        assert_eq!(fs::read(&bin).unwrap(), b"old");
        assert!(!previous_path(&bin).exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn leftovers_of_this_binary_only_are_removed() {
        let d = tmpdir("leftovers");
        let bin = d.join("pulse-agent");
        for f in [
            "pulse-agent",
            ".pulse-agent.update-12",
            ".pulse-agent.update-x",
            ".other.update-1",
            "pulse-agent.previous",
            "pulse-agent.previous.tmp",
        ] {
            fs::write(d.join(f), b"x").unwrap();
        }
        let mut removed = remove_leftovers(&bin);
        removed.sort();
        assert_eq!(
            removed,
            vec![
                d.join(".pulse-agent.update-12"),
                d.join(".pulse-agent.update-x"),
                d.join("pulse-agent.previous.tmp"),
            ]
        );
        assert!(d.join(".other.update-1").exists() && previous_path(&bin).exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unraid_and_qnap_copies_are_kept_up_to_date() {
        let d = tmpdir("persist");
        let root = d.join("root");
        let bin = d.join("pulse-agent");
        fs::write(&bin, b"new").unwrap();
        let state = d.join("state");
        fs::create_dir_all(&state).unwrap();
        // Neither platform: nothing written.
        assert!(persist(&root, &bin, &state).is_empty());
        assert!(!state.join("pulse-agent").exists());
        // Unraid with the plugin's copy, and QNAP.
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/unraid-version"), "version=\"6.12\"").unwrap();
        let plugin = root.join("boot/config/plugins/pulse-agent/pulse-agent");
        fs::create_dir_all(plugin.parent().unwrap()).unwrap();
        fs::write(&plugin, b"old").unwrap();
        fs::create_dir_all(root.join("etc/config")).unwrap();
        fs::write(root.join("etc/config/qpkg.conf"), "").unwrap();
        assert!(persist(&root, &bin, &state).is_empty());
        assert_eq!(fs::read(&plugin).unwrap(), b"new");
        assert_eq!(fs::read(state.join("pulse-agent")).unwrap(), b"new");
        fs::remove_dir_all(&d).unwrap();
    }
}
