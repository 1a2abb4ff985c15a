//! The proxy's SSH side (spec §7, §8): its key, its `known_hosts`, the
//! temperature fetch and the forced-command `authorized_keys` line it
//! installs on cluster nodes.
//!
//! Everything goes through the system OpenSSH programs (`ssh`, `ssh-keygen`,
//! `ssh-keyscan`) run by [`crate::exec`]: an argument vector, a deadline and
//! an output cap, never a local shell, so no crypto enters this crate. The
//! client always runs with `StrictHostKeyChecking=yes` against the proxy's own
//! `known_hosts`, which is filled from the cluster's
//! `/etc/pve/priv/known_hosts` (plain entries; hashed ones cannot be matched
//! without the name) or, unless `require_proxmox_hostkeys`, `ssh-keyscan`.
//! A key that differs from the one already recorded is refused and counted,
//! never overwritten.
//!
//! On a node, the proxy's key may only run the forced command
//! [`FORCED_COMMAND`], a small POSIX sh script that [`Ssh::push_key`]
//! installs: it runs the proxy's own binary (`sensors`, see
//! [`super::sensors`]) when the push copied it there, else `sensors -j`, and
//! ignores whatever command the client asked for. Because that key can do
//! nothing else, the push itself logs in with a different, unrestricted
//! identity ([`Ssh::admin_identity`]; by default the running user's own
//! keys, which on a Proxmox node is root's cluster key that every node
//! already trusts). The first install on a node outside that trust is the
//! operator's or the installer's job.

use std::collections::HashSet;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::exec;

/// Where the node-side files live.
pub const NODE_DIR: &str = "/usr/local/libexec/pulse-sensor-proxy";
/// The forced command of the proxy's `authorized_keys` line.
pub const FORCED_COMMAND: &str = "/usr/local/libexec/pulse-sensor-proxy/temp-wrapper";
/// The comment that ends every line the proxy installs; the push removes
/// older lines ending with it (or with the stock's older `pulse-temp-proxy`),
/// and the stock's cleanup finds them the same way.
pub const MARKER: &str = "pulse-sensor-proxy";

/// Cap on what the key push and `ssh-keyscan` may print.
const SMALL_OUTPUT: usize = 64 * 1024;

/// The node-side forced command. It never looks at `SSH_ORIGINAL_COMMAND`.
const WRAPPER: &str = r#"#!/bin/sh
# pulse-sensor-proxy forced command, installed by ensure_cluster_keys.
# Prints sensors -j shaped JSON; the command the client asked for
# (SSH_ORIGINAL_COMMAND) is ignored.
d=/usr/local/libexec/pulse-sensor-proxy
if [ -x "$d/pulse-sensor-proxy" ]; then exec "$d/pulse-sensor-proxy" sensors; fi
if command -v sensors >/dev/null 2>&1; then exec sensors -j; fi
echo "pulse-sensor-proxy: no temperature source on this node" >&2
exit 1
"#;

/// The proxy's SSH state: key and `known_hosts` directory, client settings,
/// and the hosts whose key is already known this run.
#[derive(Debug)]
pub struct Ssh {
    /// Holds `id_ed25519`(`.pub`) and `known_hosts`.
    pub dir: PathBuf,
    /// The nodes' SSH port.
    pub port: u16,
    /// Cap on the forced command's output (`max_ssh_output_bytes`).
    pub max_output: usize,
    /// The cluster's host keys: `<pve dir>/priv/known_hosts`.
    pub pve_known_hosts: PathBuf,
    /// No `ssh-keyscan` fallback when the cluster file lacks a node.
    pub require_proxmox_hostkeys: bool,
    pub ssh: PathBuf,
    pub ssh_keygen: PathBuf,
    pub ssh_keyscan: PathBuf,
    /// The identity [`Ssh::push_key`] logs in with; `None`: the running
    /// user's default keys (`~/.ssh/id_*`).
    pub admin_identity: Option<PathBuf>,
    /// The binary [`Ssh::push_key`] copies to each node (the proxy's own, so
    /// nodes need no lm-sensors); `None` copies nothing.
    pub node_binary: Option<PathBuf>,
    /// `known_hosts` elsewhere than in [`Ssh::dir`]: the root-run key
    /// commands keep theirs in a private directory, never in one the
    /// service user can write.
    pub known_hosts_file: Option<PathBuf>,
    /// Host keys refused because they changed (`hostkey_changes_total`).
    pub host_key_changes: AtomicU64,
    /// `known_hosts` names (`node` or `[node]:port`) already checked; the
    /// lock also serialises writes to `known_hosts`.
    ensured: Mutex<HashSet<String>>,
}

/// Why an SSH operation failed.
#[derive(Debug)]
pub enum Error {
    /// The node name could be read as an option or a pattern.
    BadNode(String),
    /// The node's key differs from the recorded one.
    HostKeyChanged {
        node: String,
    },
    /// No key for the node could be found.
    NoHostKey {
        node: String,
        why: String,
    },
    /// The forced command printed more than the cap.
    OutputTooLarge {
        cap: usize,
    },
    /// A program exited unsuccessfully; `what` says what was being done.
    Failed {
        what: &'static str,
        code: Option<i32>,
        stderr: String,
    },
    Timeout {
        what: &'static str,
    },
    Spawn(String),
    Io {
        path: PathBuf,
        err: std::io::Error,
    },
    /// The public key or a `from=` entry cannot go into `authorized_keys`.
    BadKey(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadNode(n) => write!(f, "invalid node name {n:?}"),
            Error::HostKeyChanged { node } => write!(
                f,
                "failed to ensure host key for {node}: knownhosts: host key for {node} changed"
            ),
            Error::NoHostKey { node, why } => {
                write!(f, "failed to ensure host key for {node}: {why}")
            }
            Error::OutputTooLarge { cap } => write!(f, "ssh output exceeded {cap} bytes"),
            Error::Failed { what, code, stderr } => {
                match code {
                    Some(c) => write!(f, "failed to {what}: exit status {c}")?,
                    None => write!(f, "failed to {what}: signal: killed")?,
                }
                write!(f, " (stderr: {})", stderr.trim())
            }
            Error::Timeout { what } => write!(f, "failed to {what}: deadline exceeded"),
            Error::Spawn(e) => f.write_str(e),
            Error::Io { path, err } => write!(f, "{}: {err}", path.display()),
            Error::BadKey(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Error {}

impl Ssh {
    /// Defaults: port 22, 1 MiB output cap, the programs found in `PATH`,
    /// the running user's own keys for the push, no binary copied.
    pub fn new(dir: impl Into<PathBuf>, pve_dir: &Path) -> Ssh {
        Ssh {
            dir: dir.into(),
            port: 22,
            max_output: 1024 * 1024,
            pve_known_hosts: pve_dir.join("priv/known_hosts"),
            require_proxmox_hostkeys: false,
            ssh: "ssh".into(),
            ssh_keygen: "ssh-keygen".into(),
            ssh_keyscan: "ssh-keyscan".into(),
            admin_identity: None,
            node_binary: None,
            known_hosts_file: None,
            host_key_changes: AtomicU64::new(0),
            ensured: Mutex::new(HashSet::new()),
        }
    }

    fn key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    fn known_hosts(&self) -> PathBuf {
        self.known_hosts_file
            .clone()
            .unwrap_or_else(|| self.dir.join("known_hosts"))
    }

    /// Makes the key pair if it is missing (dir 0700, key 0600, `.pub` 0640).
    pub fn ensure_key(&self) -> Result<(), Error> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |err| Error::Io { path, err }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        set_mode(&self.dir, 0o700)?;
        let key = self.key();
        let public = key.with_extension("pub");
        if !key.exists() {
            // ssh-keygen asks before overwriting a stale half of a pair.
            let _ = std::fs::remove_file(&public);
            let path = key.to_string_lossy();
            let args = ["-q", "-t", "ed25519", "-N", "", "-C", MARKER, "-f", &path];
            let deadline = Instant::now() + Duration::from_secs(30);
            self.run(
                "generate the SSH key",
                &self.ssh_keygen,
                &args,
                deadline,
                SMALL_OUTPUT,
                None,
            )?;
            log::info!("generated SSH key {}", key.display());
        }
        set_mode(&key, 0o600)?;
        set_mode(&public, 0o640)
    }

    /// The raw `id_ed25519.pub` text, trailing newline included.
    pub fn public_key(&self) -> Result<String, Error> {
        let path = self.key().with_extension("pub");
        std::fs::read_to_string(&path).map_err(|err| Error::Io { path, err })
    }

    /// `node` in `known_hosts` form for this port.
    fn host_spec(&self, node: &str) -> String {
        if self.port == 22 {
            node.to_string()
        } else {
            format!("[{node}]:{}", self.port)
        }
    }

    /// Makes sure `known_hosts` holds the node's key: from the cluster's
    /// file, else (unless required) `ssh-keyscan`. A key that differs from
    /// a recorded one of the same type is [`Error::HostKeyChanged`].
    pub fn ensure_host_key(&self, node: &str, deadline: Instant) -> Result<(), Error> {
        check_node(node)?;
        let spec = self.host_spec(node);
        if self.ensured().contains(&spec) {
            return Ok(());
        }
        let pve = std::fs::read_to_string(&self.pve_known_hosts).unwrap_or_default();
        let mut keys = host_keys(&pve, node, self.port);
        if keys.is_empty() {
            if self.require_proxmox_hostkeys {
                return Err(Error::NoHostKey {
                    node: node.into(),
                    why: format!(
                        "no entry in {} and require_proxmox_hostkeys is set",
                        self.pve_known_hosts.display()
                    ),
                });
            }
            keys = self.keyscan(node, deadline)?;
        }
        let mut ensured = self.ensured();
        let path = self.known_hosts();
        let current = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(err) => return Err(Error::Io { path, err }),
        };
        let recorded = host_keys(&current, node, self.port);
        let mut add = String::new();
        for (kind, key) in &keys {
            match recorded.iter().find(|(k, _)| k == kind) {
                Some((_, old)) if old != key => {
                    self.host_key_changes.fetch_add(1, Ordering::Relaxed);
                    log::warn!("host key for {spec} changed ({kind}); refusing it");
                    return Err(Error::HostKeyChanged { node: node.into() });
                }
                Some(_) => {}
                None => add.push_str(&format!("{spec} {kind} {key}\n")),
            }
        }
        if !add.is_empty() {
            let io = |err| Error::Io {
                path: path.clone(),
                err,
            };
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(io)?;
            f.write_all(add.as_bytes()).map_err(io)?;
            log::info!("recorded the host key of {spec}");
        }
        ensured.insert(spec);
        Ok(())
    }

    fn ensured(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // A panic elsewhere cannot leave the set half-changed.
        self.ensured.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `ssh-keyscan -T 5 -p PORT node`, keeping this host's entries.
    fn keyscan(&self, node: &str, deadline: Instant) -> Result<Vec<(String, String)>, Error> {
        let port = self.port.to_string();
        let deadline = deadline.min(Instant::now() + Duration::from_secs(6));
        let out = self.run(
            "scan the host key",
            &self.ssh_keyscan,
            &["-T", "5", "-p", &port, "--", node],
            deadline,
            SMALL_OUTPUT,
            None,
        );
        let why = match out {
            Ok(text) => {
                let keys = host_keys(&text, node, self.port);
                if !keys.is_empty() {
                    return Ok(keys);
                }
                "knownhosts: no host keys discovered".to_string()
            }
            Err(e) => e.to_string(),
        };
        Err(Error::NoHostKey {
            node: node.into(),
            why,
        })
    }

    /// The client options every connection uses.
    fn ssh_args<'a>(&'a self, identity: Option<&'a str>, connect_timeout: &'a str) -> Vec<String> {
        let mut args: Vec<String> = Vec::with_capacity(24);
        let mut o = |k: &str, v: &str| {
            args.push("-o".into());
            args.push(format!("{k}={v}"));
        };
        o("StrictHostKeyChecking", "yes");
        o("BatchMode", "yes");
        o("UserKnownHostsFile", &self.known_hosts().to_string_lossy());
        o("GlobalKnownHostsFile", "/dev/null");
        o("LogLevel", "ERROR");
        o("ConnectTimeout", connect_timeout);
        if let Some(id) = identity {
            o("IdentitiesOnly", "yes");
            args.push("-i".into());
            args.push(id.into());
        }
        args.extend(["-T".into(), "-p".into(), self.port.to_string()]);
        args
    }

    /// Runs the node's forced command and returns what it printed.
    pub fn fetch_temperatures(&self, node: &str, deadline: Instant) -> Result<String, Error> {
        self.ensure_host_key(node, deadline)?;
        let key = self.key().to_string_lossy().into_owned();
        let mut args = self.ssh_args(Some(&key), "5");
        let target = format!("root@{node}");
        args.extend(["-n".into(), "--".into(), target, String::new()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run_ssh(
            node,
            "fetch temperatures",
            &args,
            deadline,
            self.max_output,
            None,
        )?;
        Ok(out)
    }

    /// `register_nodes`' test: the same login as [`Ssh::fetch_temperatures`].
    pub fn check_reachable(&self, node: &str, deadline: Instant) -> Result<(), Error> {
        self.fetch_temperatures(node, deadline).map(drop)
    }

    /// Installs the forced-command line for the key in `key_dir` on `node`
    /// (with `from=` limited to `from`), the node-side wrapper and, when set,
    /// [`Ssh::node_binary`]; removes older proxy lines and keeps every other
    /// line. Idempotent. Logs in with [`Ssh::admin_identity`].
    pub fn push_key(
        &self,
        node: &str,
        key_dir: &Path,
        from: &[String],
        deadline: Instant,
    ) -> Result<(), Error> {
        self.push_key_keeping(node, key_dir, from, None, deadline)
    }

    /// [`Ssh::push_key`], keeping the proxy line of the key in `keep` (if
    /// the node has it): key rotation installs the next key beside the
    /// current one, so a node that fails the check still answers to the
    /// key in use.
    pub fn push_key_keeping(
        &self,
        node: &str,
        key_dir: &Path,
        from: &[String],
        keep: Option<&Path>,
        deadline: Instant,
    ) -> Result<(), Error> {
        check_node(node)?;
        if from.is_empty() {
            return Err(Error::BadKey(
                "no allowed source subnets configured or detected".into(),
            ));
        }
        if let Some(bad) = from.iter().find(|s| !is_from_pattern(s)) {
            return Err(Error::BadKey(format!("invalid source subnet {bad:?}")));
        }
        let public = read_public_key(key_dir)?;
        let line = authorized_keys_line(&public, from, FORCED_COMMAND);
        self.ensure_host_key(node, deadline)?;
        let stdin = match &self.node_binary {
            Some(p) => Some(std::fs::File::open(p).map_err(|err| Error::Io {
                path: p.clone(),
                err,
            })?),
            None => None,
        };
        let keep = match keep {
            Some(dir) => read_public_key(dir)?
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_string(),
            None => String::new(),
        };
        let script = push_script(&line, &keep, stdin.is_some());
        let identity = self.admin_identity.as_ref().map(|p| p.to_string_lossy());
        let mut args = self.ssh_args(identity.as_deref(), "10");
        if stdin.is_none() {
            args.push("-n".into());
        }
        args.extend(["--".into(), format!("root@{node}"), script]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run_ssh(
            node,
            "install the key",
            &args,
            deadline,
            SMALL_OUTPUT,
            stdin,
        )?;
        log::info!("installed the proxy key on {node}");
        Ok(())
    }

    /// Removes every proxy line (ours, the stock proxy's and its
    /// installer's) from `node`'s root `authorized_keys`, and the
    /// node-side programs. Logs in with [`Ssh::admin_identity`].
    pub fn remove_keys(&self, node: &str, deadline: Instant) -> Result<(), Error> {
        check_node(node)?;
        self.ensure_host_key(node, deadline)?;
        let identity = self.admin_identity.as_ref().map(|p| p.to_string_lossy());
        let mut args = self.ssh_args(identity.as_deref(), "10");
        args.push("-n".into());
        args.extend(["--".into(), format!("root@{node}"), remove_script()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run_ssh(node, "remove the keys", &args, deadline, SMALL_OUTPUT, None)?;
        log::info!("removed the proxy keys from {node}");
        Ok(())
    }

    /// Runs `ssh`; a changed host key reported by the client is
    /// [`Error::HostKeyChanged`] (and forgets that the host was checked).
    fn run_ssh(
        &self,
        node: &str,
        what: &'static str,
        args: &[&str],
        deadline: Instant,
        cap: usize,
        stdin: Option<std::fs::File>,
    ) -> Result<String, Error> {
        match self.run(what, &self.ssh, args, deadline, cap, stdin) {
            Err(Error::Failed { stderr, .. })
                if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") =>
            {
                self.ensured().remove(&self.host_spec(node));
                self.host_key_changes.fetch_add(1, Ordering::Relaxed);
                log::warn!("host key for {node} changed; refusing it");
                Err(Error::HostKeyChanged { node: node.into() })
            }
            other => other,
        }
    }

    /// Runs a program; a non-zero exit is [`Error::Failed`].
    fn run(
        &self,
        what: &'static str,
        program: &Path,
        args: &[&str],
        deadline: Instant,
        cap: usize,
        stdin: Option<std::fs::File>,
    ) -> Result<String, Error> {
        let out = match stdin {
            Some(f) => exec::run_with_stdin(program, args, f, deadline, cap),
            None => exec::run(program, args, deadline, cap),
        };
        let out = out.map_err(|e| match e {
            exec::Error::TooLarge(_, cap) => Error::OutputTooLarge { cap },
            exec::Error::Timeout(..) => Error::Timeout { what },
            e => Error::Spawn(e.to_string()),
        })?;
        if out.code != Some(0) {
            return Err(Error::Failed {
                what,
                code: out.code,
                stderr: out.stderr,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|err| Error::Io {
        path: path.to_path_buf(),
        err,
    })
}

/// Refuses what `ssh` would read as an option (`-oProxyCommand=...`) and
/// what would be a pattern or a second name in `known_hosts`. Callers
/// validate node names already (§6); this is the last line.
fn check_node(node: &str) -> Result<(), Error> {
    let bad = node.is_empty()
        || node.starts_with('-')
        || node.len() > 255
        || node
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')));
    if bad {
        return Err(Error::BadNode(node.into()));
    }
    Ok(())
}

/// A `from=` pattern: addresses, CIDRs, host names, `*`/`?` wildcards and
/// `!` negation; nothing that could end the quoted option.
fn is_from_pattern(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '/' | '*' | '?' | '!' | '-' | '_')
        })
}

/// `dir/id_ed25519.pub`, checked to be a public key.
fn read_public_key(dir: &Path) -> Result<String, Error> {
    let path = dir.join("id_ed25519.pub");
    let public = std::fs::read_to_string(&path).map_err(|err| Error::Io {
        path: path.clone(),
        err,
    })?;
    if !is_public_key(&public) {
        return Err(Error::BadKey(format!(
            "{}: not an SSH public key",
            path.display()
        )));
    }
    Ok(public)
}

/// `type base64 [comment]` with a known type and base64 data.
fn is_public_key(text: &str) -> bool {
    let mut f = text.split_whitespace();
    let (Some(kind), Some(data)) = (f.next(), f.next()) else {
        return false;
    };
    (kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
        && kind.bytes().all(|b| b.is_ascii_graphic() && b != b'"')
        && data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

/// The `(type, key)` pairs `known_hosts` text holds for `node` on `port`:
/// plain names, comma lists and `[name]:port`; a plain name also counts for
/// another port (the cluster file records port 22 only). Hashed entries
/// (`|1|...`) and `@cert-authority`/`@revoked` lines are skipped.
pub fn host_keys(text: &str, node: &str, port: u16) -> Vec<(String, String)> {
    let bracketed = format!("[{node}]:{port}");
    let matches = |name: &str| {
        name.eq_ignore_ascii_case(node) || (name.starts_with('[') && name == bracketed)
    };
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let names = f.next()?;
            if names.starts_with(['#', '|', '@']) || !names.split(',').any(matches) {
                return None;
            }
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect()
}

/// The forced-command line for `pubkey` (its own comment is replaced by
/// [`MARKER`], so the line ends with exactly one). An empty `from` omits the
/// `from=` option.
pub fn authorized_keys_line(pubkey: &str, from: &[String], command: &str) -> String {
    let key: Vec<&str> = pubkey.split_whitespace().take(2).collect();
    let from = if from.is_empty() {
        String::new()
    } else {
        format!("from=\"{}\",", from.join(","))
    };
    format!(
        "{from}command=\"{command}\",no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty {} {MARKER}",
        key.join(" ")
    )
}

/// `s` as one POSIX sh word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The remote command of the key push: one POSIX sh script (the node name
/// never enters it). It installs the wrapper, then the binary from standard
/// input when `binary` (kept only if it runs there), then the line. A
/// symlinked `authorized_keys` (Proxmox links root's to the cluster-wide
/// `/etc/pve/priv/authorized_keys`) is rewritten at its target, so the link
/// stays.
fn push_script(line: &str, keep: &str, binary: bool) -> String {
    let binary = if binary {
        r#"cat > "$d/pulse-sensor-proxy.new"
chmod 755 "$d/pulse-sensor-proxy.new"
if "$d/pulse-sensor-proxy.new" version >/dev/null 2>&1; then
  mv -f "$d/pulse-sensor-proxy.new" "$d/pulse-sensor-proxy"
else
  rm -f "$d/pulse-sensor-proxy.new"; echo "pulse-sensor-proxy: the binary does not run on this node" >&2
fi
"#
    } else {
        ""
    };
    format!(
        r#"set -e
umask 022
d={NODE_DIR}
mkdir -p "$d"; chmod 755 "$d"
cat > "$d/temp-wrapper.new" <<'PULSE_WRAPPER_END'
{WRAPPER}PULSE_WRAPPER_END
chmod 755 "$d/temp-wrapper.new"; mv -f "$d/temp-wrapper.new" "$d/temp-wrapper"
{binary}umask 077
line={line}
keep={keep}
mkdir -p /root/.ssh; chmod 700 /root/.ssh
a=/root/.ssh/authorized_keys
[ -e "$a" ] || : > "$a"
a=$(readlink -f "$a")
if [ -z "$keep" ] && grep -qxF "$line" "$a" && [ "$(grep -c ' {MARKER}$' "$a")" = 1 ]; then exit 0; fi
{{ grep -v -e ' {MARKER}$' -e ' pulse-temp-proxy$' "$a" || true
  if [ -n "$keep" ]; then grep -F " $keep " "$a" | grep -e ' {MARKER}$' | grep -vxF "$line" || true; fi
  printf '%s\n' "$line"; }} > "$a.pulse-new"
chmod 600 "$a.pulse-new" 2>/dev/null || true
mv -f "$a.pulse-new" "$a"
"#,
        line = sh_quote(line),
        keep = sh_quote(keep)
    )
}

/// The remote command of [`Ssh::remove_keys`].
fn remove_script() -> String {
    format!(
        r#"set -e
umask 077
a=/root/.ssh/authorized_keys
if [ -e "$a" ]; then
  a=$(readlink -f "$a")
  {{ grep -v -e ' {MARKER}$' -e ' pulse-temp-proxy$' -e '# pulse-managed-key$' -e '# pulse-proxy-key$' "$a" || true; }} > "$a.pulse-new"
  chmod 600 "$a.pulse-new" 2>/dev/null || true
  mv -f "$a.pulse-new" "$a"
fi
rm -rf {NODE_DIR}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_ends_with_one_marker_and_restricts_everything() {
        let line = authorized_keys_line(
            "ssh-ed25519 AAAAC3Nz pulse-sensor-proxy rotation 2026\n",
            &["10.0.0.0/24".into(), "192.168.1.5".into()],
            FORCED_COMMAND,
        );
        assert_eq!(
            line,
            "from=\"10.0.0.0/24,192.168.1.5\",command=\"/usr/local/libexec/pulse-sensor-proxy/temp-wrapper\",\
             no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty ssh-ed25519 AAAAC3Nz pulse-sensor-proxy"
        );
    }

    #[test]
    fn host_keys_match_plain_listed_and_bracketed_names_only() {
        let text = "# comment\n\
                    |1|salt=|hash= ssh-ed25519 HASHED\n\
                    pve1,10.0.0.1 ssh-ed25519 K1\n\
                    [10.0.0.1]:2222 ssh-rsa K2\n\
                    [10.0.0.1]:22 ssh-rsa K3\n\
                    10.0.0.10 ssh-ed25519 K4\n\
                    @revoked 10.0.0.1 ssh-ed25519 K5\n";
        let keys = host_keys(text, "10.0.0.1", 2222);
        let want = [("ssh-ed25519", "K1"), ("ssh-rsa", "K2")].map(|(a, b)| (a.into(), b.into()));
        assert_eq!(keys, want);
        assert!(host_keys(text, "10.0.0", 22).is_empty());
    }

    #[test]
    fn node_names_that_ssh_could_read_as_options_are_refused() {
        for bad in [
            "-oProxyCommand=x",
            "",
            "a b",
            "a,b",
            "[a]:1",
            "a*",
            "root@a",
            "a\n",
        ] {
            assert!(check_node(bad).is_err(), "{bad:?}");
        }
        for good in ["pve1", "10.0.0.1", "fe80::1", "node-2.example.com"] {
            check_node(good).unwrap();
        }
    }

    #[test]
    fn the_push_script_quotes_the_line() {
        let s = push_script("it's \"x\" $HOME `id`", "", false);
        assert!(s.contains(r#"line='it'\''s "x" $HOME `id`'"#), "{s}");
        assert!(!s.contains("pulse-sensor-proxy.new"));
    }
}
