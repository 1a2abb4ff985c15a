//! Key rotation and removal, run by root on the Proxmox host
//! (`keys rotate [--dry-run | --rollback]`, `keys cleanup`).
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

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::config::Config;
use super::ssh::Ssh;
use crate::root::Root;

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

fn client(s: &Setup<'_>, dir: &Path) -> Ssh {
    let mut ssh = Ssh::new(dir, &s.cfg.pve_dir);
    ssh.port = s.cfg.ssh_port;
    ssh.max_output = s.cfg.max_ssh_output_bytes;
    ssh.require_proxmox_hostkeys = s.cfg.require_proxmox_hostkeys;
    ssh.admin_identity = s.identity.clone();
    ssh.node_binary = std::env::current_exe().ok();
    for (field, name) in [
        (&mut ssh.ssh, "ssh"),
        (&mut ssh.ssh_keygen, "ssh-keygen"),
        (&mut ssh.ssh_keyscan, "ssh-keyscan"),
    ] {
        if let Some(p) = crate::exec::find_program(name) {
            *field = p;
        }
    }
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

/// Gives `dir` and what it holds to `uid:gid` (the service user owns the
/// key; this command runs as root).
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let own = |p: &Path| {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(|e| io_err("chown", p, e))
    };
    own(dir)?;
    for e in std::fs::read_dir(dir).map_err(|e| io_err("read", dir, e))? {
        own(&e.map_err(|e| io_err("read", dir, e))?.path())?;
    }
    Ok(())
}

/// `keys rotate` (or `--rollback`); progress goes to `out`.
pub fn rotate(s: &Setup<'_>, mode: Mode, dry_run: bool, out: &mut dyn Write) -> Result<(), String> {
    let current = s.cfg.ssh_dir.clone();
    let staging = current
        .parent()
        .map(|p| p.join("ssh.d"))
        .ok_or_else(|| format!("{}: no parent directory", current.display()))?;
    let (next, prev) = (staging.join("next"), staging.join("prev"));
    let nodes = nodes(s)?;
    let from = super::server::source_subnets(s.cfg, s.root);
    let mut say = |m: String| {
        let _ = writeln!(out, "{}{m}", if dry_run { "[dry-run] " } else { "" });
    };
    say(format!("nodes: {}", nodes.join(", ")));
    let candidate = match mode {
        Mode::Rotate => next.clone(),
        Mode::Rollback => {
            if !prev.join("id_ed25519.pub").exists() {
                return Err(format!(
                    "nothing to roll back to: {} has no key",
                    prev.display()
                ));
            }
            prev.clone()
        }
    };
    if mode == Mode::Rotate {
        say(format!("make a new ed25519 key in {}", next.display()));
    }
    say(format!(
        "install the key of {} on every node, beside the current one",
        candidate.display()
    ));
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
    let owner = std::fs::metadata(&current).map_err(|e| io_err("stat", &current, e))?;
    if mode == Mode::Rotate {
        std::fs::create_dir_all(&staging).map_err(|e| io_err("create", &staging, e))?;
        let _ = std::fs::remove_dir_all(&next);
        client(s, &next).ensure_key().map_err(|e| e.to_string())?;
    }
    // The host keys the proxy already trusts go with the candidate key.
    let known = current.join("known_hosts");
    if known.exists() {
        std::fs::copy(&known, candidate.join("known_hosts"))
            .map_err(|e| io_err("copy", &known, e))?;
    }
    let admin = client(s, &current);
    let failed: Vec<String> = nodes
        .iter()
        .filter_map(|n| {
            let deadline = Instant::now() + PER_NODE;
            admin
                .push_key_keeping(n, &candidate, &from, Some(&current), deadline)
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
    let check = client(s, &candidate);
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
    let rename = |a: &Path, b: &Path| {
        std::fs::rename(a, b).map_err(|e| format!("rename {} to {}: {e}", a.display(), b.display()))
    };
    match mode {
        Mode::Rotate => {
            if prev.exists() {
                rename(&prev, &staging.join(format!("prev.{}", stamp())))?;
            }
            rename(&current, &prev)?;
            rename(&next, &current)?;
        }
        Mode::Rollback => {
            rename(&current, &staging.join(format!("failed.{}", stamp())))?;
            rename(&prev, &current)?;
        }
    }
    chown_tree(&current, owner.uid(), owner.gid())?;
    say(format!(
        "switched: {} holds the key in use",
        current.display()
    ));
    // Now the old key can go.
    let admin = client(s, &current);
    let mut left = Vec::new();
    for n in &nodes {
        if let Err(e) = admin.push_key(n, &current, &from, Instant::now() + PER_NODE) {
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
    let admin = client(s, &s.cfg.ssh_dir);
    admin.ensure_key().map_err(|e| e.to_string())?;
    let mut failed = Vec::new();
    for n in &nodes {
        match admin.push_key(n, &s.cfg.ssh_dir, &from, Instant::now() + PER_NODE) {
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
/// deleted.
pub fn cleanup(s: &Setup<'_>, out: &mut dyn Write) -> Result<(), String> {
    let path = s.cfg.work_dir.join("cleanup-request.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = writeln!(out, "no cleanup request ({})", path.display());
            return Ok(());
        }
        Err(e) => return Err(io_err("read", &path, e)),
    };
    let _ = std::fs::remove_file(&path);
    let request: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let host = request["host"].as_str().unwrap_or("").trim();
    let nodes = if host.is_empty() {
        nodes(s)?
    } else if super::nodes::valid_name(host) {
        vec![host.to_string()]
    } else {
        return Err(format!("{}: invalid host {host:?}", path.display()));
    };
    let admin = client(s, &s.cfg.ssh_dir);
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
