//! Key installation, rotation and removal, run by root on the Proxmox host
//! (`keys install`, `keys rotate [--dry-run | --rollback]`, `keys cleanup`).
//!
//! Rotation never leaves a node without a working key: the next key is
//! installed *beside* the current one, every node must answer with it,
//! and only then are the directories switched (`ssh` → `ssh.d/prev`,
//! `ssh.d/next` → `ssh`) and the old key's lines removed. A node that
//! fails stops the rotation before the switch, and the daemon (which reads
//! `ssh/id_ed25519` at every fetch) goes on with the current key. The stock
//! script replaced the key on the nodes first and checked afterwards.
//!
//! Keys are installed with root's own SSH access to the nodes (on Proxmox,
//! the cluster's root key; `--identity` names another): the proxy's key can
//! only print temperatures.
//!
//! Root never works *in* the service user's directories as root: that user
//! could plant symlinks there to turn root's writes, copies or chowns onto
//! any file. Every file operation there runs with the directory owner's
//! filesystem IDs (`sys::set_fs_ids`), and all ssh work uses copies of the
//! keys and a `known_hosts` in a private directory of root's.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::config::Config;
use super::ssh::Ssh;
use crate::root::Root;
use crate::sys;

/// Per node, for one install or check.
const PER_NODE: Duration = Duration::from_secs(60);

/// What `keys rotate` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Rotate,
    Rollback,
}

/// What the commands need besides the configuration.
pub struct Setup<'a> {
    pub cfg: &'a Config,
    pub root: &'a Root,
    /// Logs in to install and remove keys; `None`: root's own keys.
    pub identity: Option<PathBuf>,
    /// The nodes; `None`: the cluster's (`pvecm status`), else the
    /// allow-list's names and addresses.
    pub nodes: Option<Vec<String>>,
}

/// An ssh client with the key in `dir` and `work`'s private `known_hosts`.
fn client(s: &Setup<'_>, work: &Work, dir: &Path) -> Ssh {
    let mut ssh = super::server::ssh_client(s.cfg, dir);
    ssh.known_hosts_file = Some(work.dir.join("known_hosts"));
    ssh.admin_identity = s.identity.clone();
    ssh
}

fn nodes(s: &Setup<'_>) -> Result<Vec<String>, String> {
    if let Some(n) = &s.nodes {
        return Ok(n.clone());
    }
    if super::nodes::is_proxmox_host(s.cfg) {
        return super::server::cluster_members(s.cfg, s.root)
            .map_err(|e| format!("cannot list the cluster's nodes: {e}"));
    }
    let listed: Vec<String> = s
        .cfg
        .allowed_nodes
        .iter()
        .filter(|n| !n.contains('/'))
        .cloned()
        .collect();
    if listed.is_empty() {
        return Err(
            "not a Proxmox host and no allowed_nodes to go by: name the nodes with --node".into(),
        );
    }
    Ok(listed)
}

fn stamp() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

/// Root's private scratch directory (0700, a fresh name), removed on drop.
struct Work {
    dir: PathBuf,
}

impl Work {
    fn new() -> Result<Work, String> {
        let mut r = [0u8; 8];
        let _ = sys::getrandom(&mut r);
        let name: String = r.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("pulse-sensor-proxy-keys.{name}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_err("create", &dir, e))?;
        Ok(Work { dir })
    }

    /// A copy of `from`'s key pair (or its public half) in `self/name`.
    fn copy_key(
        &self,
        owner: &Owner,
        from: &Path,
        name: &str,
        private: bool,
    ) -> Result<PathBuf, String> {
        let to = self.dir.join(name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&to)
            .map_err(|e| io_err("create", &to, e))?;
        let mut files = vec!["id_ed25519.pub"];
        if private {
            files.push("id_ed25519");
        }
        for f in files {
            let bytes = owner.read(&from.join(f))?;
            write_new(&to.join(f), &bytes, 0o600)?;
        }
        Ok(to)
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates `path` (never through an existing name or symlink) with `bytes`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io_err("create", path, e))?;
    f.write_all(bytes).map_err(|e| io_err("write", path, e))
}

/// Who owns the proxy's state directory: file work there runs as them.
struct Owner {
    ids: Option<(u32, u32)>,
}

impl Owner {
    /// The owner of `state` (which must be a directory, not a symlink).
    fn of(state: &Path) -> Result<Owner, String> {
        let m = std::fs::symlink_metadata(state).map_err(|e| io_err("stat", state, e))?;
        if !m.is_dir() {
            return Err(format!("{}: not a directory", state.display()));
        }
        let ids = (sys::geteuid() == 0 && m.uid() != 0).then_some((m.uid(), m.gid()));
        Ok(Owner { ids })
    }

    /// Runs `f` with the owner's filesystem IDs (then root's again).
    fn run<T>(&self, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
        let Some((uid, gid)) = self.ids else {
            return f();
        };
        sys::set_fs_ids(uid, gid).map_err(|e| format!("cannot act as uid {uid}: {e}"))?;
        let out = f();
        sys::set_fs_ids(0, 0).map_err(|e| format!("cannot return to root: {e}"))?;
        out
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>, String> {
        self.run(|| {
            let m = std::fs::symlink_metadata(path).map_err(|e| io_err("stat", path, e))?;
            if !m.is_file() || m.len() > 64 * 1024 {
                return Err(format!("{}: not a key file", path.display()));
            }
            std::fs::read(path).map_err(|e| io_err("read", path, e))
        })
    }
}

/// `keys rotate` (or `--rollback`); progress goes to `out`.
pub fn rotate(s: &Setup<'_>, mode: Mode, dry_run: bool, out: &mut dyn Write) -> Result<(), String> {
    let current = s.cfg.ssh_dir.clone();
    let state = current
        .parent()
        .ok_or_else(|| format!("{}: no parent directory", current.display()))?
        .to_path_buf();
    let staging = state.join("ssh.d");
    let (next, prev) = (staging.join("next"), staging.join("prev"));
    let nodes = nodes(s)?;
    let from = super::server::source_subnets(s.cfg, s.root);
    let mut say = |m: String| {
        let _ = writeln!(out, "{}{m}", if dry_run { "[dry-run] " } else { "" });
    };
    say(format!("nodes: {}", nodes.join(", ")));
    let owner = Owner::of(&state)?;
    let has_prev = owner.run(|| Ok(prev.join("id_ed25519.pub").exists()))?;
    if mode == Mode::Rollback && !has_prev {
        return Err(format!(
            "nothing to roll back to: {} has no key",
            prev.display()
        ));
    }
    match mode {
        Mode::Rotate => say(format!("make a new ed25519 key for {}", next.display())),
        Mode::Rollback => say(format!("take the key of {}", prev.display())),
    }
    say("install it on every node, beside the current one".into());
    say("check that every node answers with it".into());
    say(match mode {
        Mode::Rotate => format!(
            "switch: {cur} -> {p}, {n} -> {cur}",
            cur = current.display(),
            p = prev.display(),
            n = next.display()
        ),
        Mode::Rollback => format!(
            "switch: {cur} -> {}/failed.<time>, {p} -> {cur}",
            staging.display(),
            cur = current.display(),
            p = prev.display()
        ),
    });
    say("remove the old key from every node".into());
    if dry_run {
        return Ok(());
    }
    let work = Work::new()?;
    let cur_copy = work.copy_key(&owner, &current, "current", false)?;
    let candidate = match mode {
        Mode::Rotate => {
            let dir = work.dir.join("next");
            client(s, &work, &dir)
                .ensure_key()
                .map_err(|e| e.to_string())?;
            dir
        }
        Mode::Rollback => work.copy_key(&owner, &prev, "prev", true)?,
    };
    let admin = client(s, &work, &cur_copy);
    let failed: Vec<String> = nodes
        .iter()
        .filter_map(|n| {
            let deadline = Instant::now() + PER_NODE;
            admin
                .push_key_keeping(n, &candidate, &from, Some(&cur_copy), deadline)
                .err()
                .map(|e| format!("{n}: {e}"))
        })
        .collect();
    if !failed.is_empty() {
        return Err(format!(
            "installing the key failed, nothing switched (the current key still works): {}",
            failed.join("; ")
        ));
    }
    let check = client(s, &work, &candidate);
    let failed: Vec<String> = nodes
        .iter()
        .filter_map(|n| {
            check
                .fetch_temperatures(n, Instant::now() + PER_NODE)
                .err()
                .map(|e| format!("{n}: {e}"))
        })
        .collect();
    if !failed.is_empty() {
        return Err(format!(
            "the new key does not work everywhere, nothing switched (the current key still works): {}",
            failed.join("; ")
        ));
    }
    say("every node answered with the new key".into());
    // The switch, as the directories' owner: renames only, and the new key
    // written into fresh files.
    owner.run(|| {
        let rename = |a: &Path, b: &Path| {
            std::fs::rename(a, b)
                .map_err(|e| format!("rename {} to {}: {e}", a.display(), b.display()))
        };
        match mode {
            Mode::Rotate => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&staging)
                    .map_err(|e| io_err("create", &staging, e))?;
                let _ = std::fs::remove_dir_all(&next);
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&next)
                    .map_err(|e| io_err("create", &next, e))?;
                for (f, mode) in [("id_ed25519", 0o600), ("id_ed25519.pub", 0o640)] {
                    let bytes = std::fs::read(candidate.join(f))
                        .map_err(|e| io_err("read", &candidate.join(f), e))?;
                    write_new(&next.join(f), &bytes, mode)?;
                }
                if std::fs::symlink_metadata(current.join("known_hosts")).is_ok_and(|m| m.is_file())
                {
                    let known = std::fs::read(current.join("known_hosts"))
                        .map_err(|e| io_err("read", &current.join("known_hosts"), e))?;
                    write_new(&next.join("known_hosts"), &known, 0o600)?;
                }
                if prev.exists() {
                    rename(&prev, &staging.join(format!("prev.{}", stamp())))?;
                }
                rename(&current, &prev)?;
                rename(&next, &current)
            }
            Mode::Rollback => {
                rename(&current, &staging.join(format!("failed.{}", stamp())))?;
                rename(&prev, &current)
            }
        }
    })?;
    say(format!(
        "switched: {} holds the key in use",
        current.display()
    ));
    // Now the old key can go.
    let mut left = Vec::new();
    for n in &nodes {
        if let Err(e) = check.push_key(n, &candidate, &from, Instant::now() + PER_NODE) {
            left.push(format!("{n}: {e}"));
        }
    }
    if left.is_empty() {
        say("removed the old key from every node".into());
        Ok(())
    } else {
        Err(format!(
            "switched, but the old key is still on: {} (run keys rotate again later)",
            left.join("; ")
        ))
    }
}

/// `keys install`: the key in use onto every node (the first install, or
/// a node added to the cluster), with the forced command and its program.
pub fn install(s: &Setup<'_>, out: &mut dyn Write) -> Result<(), String> {
    let nodes = nodes(s)?;
    let from = super::server::source_subnets(s.cfg, s.root);
    let state = s.cfg.ssh_dir.parent().unwrap_or(Path::new("/"));
    let owner = Owner::of(state)?;
    let work = Work::new()?;
    let key = work
        .copy_key(&owner, &s.cfg.ssh_dir, "current", false)
        .map_err(|e| format!("{e} (the daemon makes the key at its first start)"))?;
    let admin = client(s, &work, &key);
    let mut failed = Vec::new();
    for n in &nodes {
        match admin.push_key(n, &key, &from, Instant::now() + PER_NODE) {
            Ok(()) => {
                let _ = writeln!(out, "{n}: key installed");
            }
            Err(e) => failed.push(format!("{n}: {e}")),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// `keys cleanup`: what `request_cleanup` asked for, then the request is
/// deleted. The host it names must be one the proxy may reach (a node of
/// the cluster or the allow-list), as the daemon checked when it took it.
pub fn cleanup(s: &Setup<'_>, out: &mut dyn Write) -> Result<(), String> {
    let path = s.cfg.work_dir.join("cleanup-request.json");
    let owner = Owner::of(&s.cfg.work_dir)?;
    let text = owner.run(|| match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("stat", &path, e)),
        Ok(m) if !m.is_file() || m.len() > 64 * 1024 => {
            let _ = std::fs::remove_file(&path);
            Err(format!("{}: not a cleanup request", path.display()))
        }
        Ok(_) => {
            let text = std::fs::read_to_string(&path).map_err(|e| io_err("read", &path, e));
            let _ = std::fs::remove_file(&path);
            text.map(Some)
        }
    })?;
    let Some(text) = text else {
        let _ = writeln!(out, "no cleanup request ({})", path.display());
        return Ok(());
    };
    let request: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let host = request["host"].as_str().unwrap_or("").trim();
    let all = nodes(s)?;
    let nodes = if host.is_empty() {
        all
    } else if all.iter().any(|n| n.eq_ignore_ascii_case(host)) {
        vec![host.to_string()]
    } else {
        return Err(format!(
            "{}: {host:?} is not a node of this cluster or the allow-list",
            path.display()
        ));
    };
    let work = Work::new()?;
    let admin = client(s, &work, &work.dir);
    let mut failed = Vec::new();
    for n in &nodes {
        match admin.remove_keys(n, Instant::now() + PER_NODE) {
            Ok(()) => {
                let _ = writeln!(out, "{n}: proxy keys removed");
            }
            Err(e) => failed.push(format!("{n}: {e}")),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}
