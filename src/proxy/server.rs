//! The daemon: the Unix socket, the accept loop and the five methods
//! (spec §1 start-up, §2 processing order).
//!
//! Threads: the accept loop (main thread) identifies the peer, authorises
//! it and takes its limiter permit before anything is read, so a flood or
//! a silent client is turned away without a thread of its own; a permitted
//! connection gets a short-lived handler thread (at most [`super::limit::GLOBAL`]
//! at once); one `penalty` thread holds the connections of peers that sent
//! something invalid for two seconds before closing them; one `signals`
//! thread turns SIGTERM/SIGINT into a clean stop; `metrics` serves
//! `127.0.0.1:9127`.
//!
//! What it refuses to do: read a request before the peer is authorised,
//! run anything through a shell, hand ssh a node name that failed
//! [`nodes::valid_name`] or the validator, or answer more than one request
//! per connection.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value, json};

use super::audit::{Audit, Event};
use super::config::Config;
use super::limit::{Limiter, NodeGate, Permit};
use super::metrics::{self, Metrics};
use super::nodes::{self, Validator};
use super::peer::{self, Lists, Rules};
use super::protocol::{self, Method, ReadError};
use super::ssh::{self, Ssh};
use super::{Peer, caps, sensors};
use crate::root::Root;
use crate::sys;

/// Everything a method may take, from accept to reply.
const HANDLER_BUDGET: Duration = Duration::from_secs(30);
/// One SSH fetch.
const SSH_BUDGET: Duration = Duration::from_secs(15);
/// How long an invalid request's connection is held open.
const PENALTY: Duration = Duration::from_secs(2);
/// The reply to a node name that fails [`nodes::valid_name`].
const INVALID_NODE: &str = "invalid node name";
/// How long a refused connection stays open after its reply.
const LINGER: Duration = Duration::from_secs(1);
/// Connections held at once for penalties; past it they close at once.
const PENALTY_SLOTS: usize = 256;
/// Replies written from the accept loop must not stall it.
const QUICK_WRITE: Duration = Duration::from_millis(100);
/// Handler threads need little: no recursion, small buffers.
const HANDLER_STACK: usize = 256 * 1024;

/// Why the daemon could not start.
#[derive(Debug)]
pub enum Error {
    Signals(io::Error),
    NoUser(String),
    Drop(String, io::Error),
    Prepare(PathBuf, io::Error),
    Key(ssh::Error),
    Bind(PathBuf, io::Error),
    Metrics(String, io::Error),
    Https(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Signals(e) => write!(f, "cannot block signals: {e}"),
            Error::NoUser(u) => write!(
                f,
                "started as root but user {u:?} does not exist (create it, or set PULSE_SENSOR_PROXY_USER=root to stay root)"
            ),
            Error::Drop(u, e) => write!(f, "cannot drop privileges to {u}: {e}"),
            Error::Prepare(p, e) => write!(f, "{}: {e}", p.display()),
            Error::Key(e) => write!(f, "SSH key: {e}"),
            Error::Bind(p, e) => write!(f, "cannot listen on {}: {e}", p.display()),
            Error::Metrics(a, e) => write!(f, "metrics listener {a}: {e}"),
            Error::Https(e) => write!(f, "HTTPS mode: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// The running daemon's shared state.
pub struct Daemon {
    cfg: Config,
    root: Root,
    rules: Rules,
    limiter: Arc<Limiter>,
    audit: Audit,
    metrics: Arc<Metrics>,
    validator: Validator,
    ssh: Ssh,
    gate: NodeGate,
    penalty: PenaltyBox,
    /// The `from=` clause of the keys the proxy installs.
    from: Vec<String>,
    /// The same, parsed: who may use the HTTPS mode.
    sources: Vec<nodes::Cidr>,
}

/// Starts the daemon and serves until SIGTERM or SIGINT.
pub fn run(cfg: Config, root: Root) -> Result<(), Error> {
    // One malloc arena: a few short-lived threads, no contention worth
    // 64 MiB of address space (and its resident pages) each.
    sys::limit_malloc_arenas();
    sys::block_signals().map_err(Error::Signals)?;
    drop_privileges(&cfg)?;
    let read = |p: &str| root.read(p).ok();
    let idmap = cfg
        .allow_idmapped_root
        .then_some(cfg.allowed_idmap_users.as_slice());
    let lists = Lists {
        allowed_peers: &cfg.allowed_peers,
        allowed_peer_uids: &cfg.allowed_peer_uids,
        allowed_peer_gids: &cfg.allowed_peer_gids,
        idmap_users: idmap,
    };
    let rules = Rules::new(
        &lists,
        sys::geteuid(),
        sys::getegid(),
        read("/etc/subuid").as_deref(),
        read("/etc/subgid").as_deref(),
    );
    if cfg.allow_idmapped_root && !rules.has_ranges() {
        log::warn!(
            "allow_idmapped_root is on but /etc/subuid and /etc/subgid give no range for {:?}: container roots will be refused",
            cfg.allowed_idmap_users
        );
    }
    if cfg.control_plane.is_some() {
        log::warn!(
            "pulse_control_plane is set, but this proxy does not take its allow-list from Pulse (Pulse 5 disabled that API): nodes are checked against allowed_nodes and the cluster"
        );
    }
    let in_container = [
        "/.dockerenv",
        "/run/.containerenv",
        "/run/systemd/container",
    ]
    .iter()
    .any(|p| root.exists(p));
    if in_container && !cfg.suppress_container_warning {
        log::warn!(
            "running inside a container: the proxy belongs on the Proxmox host, where the keys stay out of reach of the container (PULSE_SENSOR_PROXY_SUPPRESS_CONTAINER_WARNING=true silences this)"
        );
    }
    let audit = Audit::open(&cfg.audit_log);
    let metrics = Arc::new(Metrics::new());
    let from = source_subnets(&cfg, &root);
    let (cluster_cfg, cluster_root, local_root) = (cfg.clone(), root.clone(), root.clone());
    let mut validator = Validator::new(
        &cfg,
        Box::new(move || cluster_members(&cluster_cfg, &cluster_root)),
        Box::new(move || nodes::local_addresses(&local_root)),
    );
    let hook_metrics = Arc::clone(&metrics);
    validator.set_failure_hook(Box::new(move |reason| {
        hook_metrics.node_validation_failure(reason)
    }));
    let ssh = ssh_client(&cfg, &cfg.ssh_dir);
    ssh.ensure_key().map_err(Error::Key)?;
    let listener = listen(&cfg.socket)?;
    if let Some(addr) = &cfg.metrics_address {
        metrics::serve(addr, Arc::clone(&metrics)).map_err(|e| Error::Metrics(addr.clone(), e))?;
    }
    let daemon = Arc::new(Daemon {
        limiter: Arc::new(Limiter::new(cfg.rate_interval, cfg.rate_burst)),
        penalty: PenaltyBox::start(),
        gate: NodeGate::default(),
        cfg,
        root,
        rules,
        audit,
        metrics,
        validator,
        ssh,
        sources: from.iter().filter_map(|c| nodes::Cidr::parse(c)).collect(),
        from,
    });
    if let Some(http) = &daemon.cfg.http {
        let settings = super::https::Settings {
            listen: http.listen_addr.clone(),
            cert: http.tls_cert.clone(),
            key: http.tls_key.clone(),
            token: http.auth_token.clone(),
            read_timeout: daemon.cfg.read_timeout,
            write_timeout: daemon.cfg.write_timeout,
        };
        let backend: Arc<dyn super::https::Backend> = Arc::clone(&daemon) as _;
        super::https::serve(settings, backend, Arc::clone(&daemon.metrics))
            .map_err(|e| Error::Https(e.to_string()))?;
        log::info!("HTTPS mode on {}", http.listen_addr);
    }
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(Arc::clone(&stop), daemon.cfg.socket.clone());
    log::info!(
        "pulse-sensor-proxy {} listening on {} (ssh dir {}, audit {})",
        super::version(),
        daemon.cfg.socket.display(),
        daemon.cfg.ssh_dir.display(),
        if daemon.audit.is_file() {
            daemon.cfg.audit_log.display().to_string()
        } else {
            "stderr".into()
        }
    );
    if let Some(n) = crate::notify::Notifier::from_env(&|k| std::env::var(k).ok()) {
        n.ready(&format!("listening on {}", daemon.cfg.socket.display()));
    }
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(stream) => daemon.accept(stream),
            Err(e) => {
                log::warn!("accept on {}: {e}", daemon.cfg.socket.display());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(&daemon.cfg.socket);
    log::info!("stopped; removed {}", daemon.cfg.socket.display());
    Ok(())
}

/// Started as root (outside the unit, which starts it as its user): become
/// the service user, after making the directories it will need its own.
fn drop_privileges(cfg: &Config) -> Result<(), Error> {
    if sys::geteuid() != 0 || cfg.user.is_empty() || cfg.user == "root" {
        return Ok(());
    }
    let user = sys::user_by_name(&cfg.user).ok_or_else(|| Error::NoUser(cfg.user.clone()))?;
    let socket_dir = cfg.socket.parent().unwrap_or(Path::new("/"));
    for (dir, mode) in [(socket_dir, 0o755), (cfg.ssh_dir.as_path(), 0o700)] {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)))
                .and_then(|()| std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid)))
                .map_err(|e| Error::Prepare(dir.to_path_buf(), e))?;
        }
    }
    sys::drop_to(&user).map_err(|e| Error::Drop(cfg.user.clone(), e))?;
    // ssh and ssh-keygen look for the home directory.
    // SAFETY of the environment: no other thread exists yet.
    unsafe {
        std::env::set_var("HOME", &user.home);
        std::env::set_var("USER", &user.name);
        std::env::set_var("LOGNAME", &user.name);
    }
    log::info!("dropped privileges to {} (uid {})", user.name, user.uid);
    Ok(())
}

/// The ssh client as the configuration sets it up, with the key in `dir`.
pub(crate) fn ssh_client(cfg: &Config, dir: &Path) -> Ssh {
    let mut ssh = Ssh::new(dir, &cfg.pve_dir);
    ssh.port = cfg.ssh_port;
    ssh.max_output = cfg.max_ssh_output_bytes;
    ssh.require_proxmox_hostkeys = cfg.require_proxmox_hostkeys;
    ssh.ssh = program("ssh");
    ssh.ssh_keygen = program("ssh-keygen");
    ssh.ssh_keyscan = program("ssh-keyscan");
    // Key pushes copy this program to the nodes: their forced command runs
    // `pulse-sensor-proxy sensors`.
    ssh.node_binary = std::env::current_exe().ok();
    ssh
}

fn program(name: &str) -> PathBuf {
    crate::exec::find_program(name).unwrap_or_else(|| PathBuf::from(format!("/usr/bin/{name}")))
}

/// Binds the socket: an old socket file is replaced, anything else at that
/// path is left alone (and the start fails). Mode 0666: access is decided
/// per connection by `SO_PEERCRED`, not by the file mode.
fn listen(path: &Path) -> Result<UnixListener, Error> {
    let err = |e| Error::Bind(path.to_path_buf(), e);
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .and_then(|()| {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                })
                .map_err(err)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
        Ok(_) => {
            return Err(err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )));
        }
        Err(_) => {}
    }
    let l = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    Ok(l)
}

/// SIGTERM/SIGINT: set `stop`, then wake the accept loop with a connection
/// of our own.
fn watch_signals(stop: Arc<AtomicBool>, socket: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            loop {
                let sig = sys::wait_signal();
                if sig == sys::SIGHUP {
                    continue;
                }
                log::info!("received signal {sig}; stopping");
                stop.store(true, Ordering::SeqCst);
                let _ = UnixStream::connect(&socket);
                return;
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the signal thread ({e}); stop with SIGKILL");
    }
}

/// Cluster members (addresses, or names from `pvesh`): `pvecm status`,
/// else `pvesh`.
pub(crate) fn cluster_members(cfg: &Config, root: &Root) -> Result<Vec<String>, String> {
    let missing = || PathBuf::from("pvecm");
    let pvecm = cfg.pvecm.clone().unwrap_or_else(missing);
    let pvesh = cfg.pvesh.clone().unwrap_or_else(|| PathBuf::from("pvesh"));
    nodes::discover_cluster(root, &pvecm, &pvesh)
}

/// Whether `node` names this host.
fn is_local(root: &Root, node: &str) -> bool {
    ["localhost", "127.0.0.1", "::1"]
        .iter()
        .any(|l| l.eq_ignore_ascii_case(node))
        || nodes::local_addresses(root)
            .iter()
            .any(|n| n.eq_ignore_ascii_case(node))
}

/// `allowed_source_subnets`, else this host's addresses as /32 and /128.
pub(crate) fn source_subnets(cfg: &Config, root: &Root) -> Vec<String> {
    if !cfg.allowed_source_subnets.is_empty() {
        return cfg
            .allowed_source_subnets
            .iter()
            .map(ToString::to_string)
            .collect();
    }
    nodes::local_addresses(root)
        .iter()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| match ip {
            IpAddr::V4(_) => format!("{ip}/32"),
            IpAddr::V6(_) => format!("{ip}/128"),
        })
        .collect()
}

/// Writes a reply without letting a slow reader hold the caller. What the
/// peer already sent is read and dropped (without waiting for more):
/// closing a Unix socket with unread data makes the peer's next read fail
/// with ECONNRESET, which would hide the reply from a client that reads
/// to EOF.
fn quick_reply(stream: &mut UnixStream, line: &[u8]) {
    let _ = stream.set_write_timeout(Some(QUICK_WRITE));
    let _ = stream.write_all(line);
    if stream.set_nonblocking(true).is_ok() {
        let mut sink = [0u8; 4096];
        for _ in 0..4 {
            if !matches!(stream.read(&mut sink), Ok(n) if n > 0) {
                break;
            }
        }
    }
}

fn peer_event(event_type: &'static str, decision: &'static str, peer: Option<Peer>) -> Event {
    Event {
        event_type,
        decision,
        peer,
        ..Event::default()
    }
}

impl Daemon {
    /// Spec §2 steps 1-5, on the accept thread: no read happens here.
    fn accept(self: &Arc<Self>, stream: UnixStream) {
        let peer = match sys::peer_cred(stream.as_raw_fd()) {
            Ok((pid, uid, gid)) => Peer { pid, uid, gid },
            Err(e) => {
                log::warn!("peer credentials unavailable: {e}");
                let mut ev = peer_event("connection.denied", "denied", None);
                ev.reason = "peer_credentials_unavailable".into();
                self.audit.log(ev);
                self.refuse_early(stream, "unauthorized");
                return;
            }
        };
        let caps = match self.rules.authorize(&peer) {
            Ok(c) => c,
            Err(reason) => {
                log::warn!(
                    "refused a connection from uid {} gid {} pid {}",
                    peer.uid,
                    peer.gid,
                    peer.pid
                );
                let mut ev = peer_event("connection.denied", "denied", Some(peer));
                ev.reason = reason;
                self.audit.log(ev);
                self.refuse_early(stream, "unauthorized");
                return;
            }
        };
        self.audit
            .log(peer_event("connection.accepted", "allowed", Some(peer)));
        let key = self.rules.limiter_key(&peer);
        let permit = match self.limiter.admit(&key) {
            Ok(p) => p,
            Err(reason) => {
                let mut ev = peer_event("limiter.rejection", "denied", Some(peer));
                ev.limiter = reason.into();
                self.audit.log(ev);
                self.metrics.limiter_rejection(reason, &key);
                self.refuse_early(stream, "rate limit exceeded");
                return;
            }
        };
        self.metrics
            .global_inflight(u64::from(self.limiter.inflight()));
        self.metrics.active_peers(self.limiter.peers() as u64);
        self.metrics.queue_depth(1);
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("request".into())
            .stack_size(HANDLER_STACK)
            .spawn(move || {
                me.handle(stream, peer, caps, &key, permit);
                me.metrics.queue_depth(-1);
                me.metrics.global_inflight(u64::from(me.limiter.inflight()));
            });
        if let Err(e) = spawned {
            // The stream and permit went with the closure and are dropped.
            log::warn!("cannot start a request thread: {e}");
            self.metrics.queue_depth(-1);
        }
    }

    /// A refusal from the accept loop: the reply, then the connection is
    /// held briefly (see [`PenaltyBox`]).
    fn refuse_early(&self, mut stream: UnixStream, error: &str) {
        quick_reply(&mut stream, &protocol::response("", Err(error.into())));
        self.penalty.hold(stream, LINGER);
    }

    /// Spec §2 steps 6-11.
    fn handle(&self, mut stream: UnixStream, peer: Peer, caps: u8, key: &str, permit: Permit) {
        let started = Instant::now();
        let line = protocol::read_request(&mut stream, self.cfg.read_timeout, |s, t| {
            s.set_read_timeout(Some(t))
        });
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                if matches!(e, ReadError::Timeout) {
                    self.metrics.read_timeout();
                }
                return self.refuse(stream, permit, peer, key, "", "", e.reply(), e.reason());
            }
        };
        let Ok(req) = protocol::parse(&line) else {
            let reply = "invalid request format";
            return self.refuse(stream, permit, peer, key, "", "", reply, "invalid_json");
        };
        let corr = req.correlation_id.as_str();
        let method = match req.method {
            Ok(m) => m,
            Err(name) => {
                let name: String = name.chars().take(64).collect();
                return self.refuse(
                    stream,
                    permit,
                    peer,
                    key,
                    corr,
                    &name,
                    "unknown method",
                    "unknown_method",
                );
            }
        };
        if method.privileged() && caps & caps::ADMIN == 0 {
            self.metrics
                .rpc(method.name(), "unauthorized", started.elapsed());
            let reply = "method requires admin capability";
            return self.refuse(
                stream,
                permit,
                peer,
                key,
                corr,
                method.name(),
                reply,
                "capability_denied",
            );
        }
        let mut ev = peer_event("command.start", "allowed", Some(peer));
        ev.correlation_id = corr.into();
        ev.command = method.name().into();
        self.audit.log(ev);
        log::debug!(
            "request corr_id={corr} uid={} pid={} method={}",
            peer.uid,
            peer.pid,
            method.name()
        );
        let result = self.call(method, &req.params, caps, started + HANDLER_BUDGET);
        let ok = result.is_ok();
        let mut ev = peer_event(
            "command.finish",
            if ok { "completed" } else { "failed" },
            Some(peer),
        );
        ev.correlation_id = corr.into();
        ev.command = method.name().into();
        ev.exit_code = Some(i64::from(!ok));
        ev.duration_ms = Some(started.elapsed().as_millis() as i64);
        if let Err(e) = &result {
            ev.error = e.clone();
        }
        self.audit.log(ev);
        // The slots go back before the reply: a client that reads it and
        // asks again at once must find them free.
        drop(permit);
        // A node name that could never be one (`-oProxyCommand=...`) is an
        // attack, not a mistake: penalised like the malformed requests
        // (the stock proxy penalises none of the handler's errors).
        let hostile = matches!(&result, Err(e) if e == INVALID_NODE);
        self.reply(&mut stream, &protocol::response(corr, result));
        let result = if ok { "success" } else { "error" };
        self.metrics.rpc(method.name(), result, started.elapsed());
        if hostile {
            self.metrics.penalty("invalid_node_name", key);
            self.penalty.hold(stream, PENALTY);
        }
    }

    fn reply(&self, stream: &mut UnixStream, line: &[u8]) {
        let _ = stream.set_write_timeout(Some(self.cfg.write_timeout));
        if let Err(e) = stream.write_all(line) {
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                self.metrics.write_timeout();
            }
        }
    }

    /// A bad request: audited, answered, its slots given back, then its
    /// connection held for the penalty.
    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &self,
        mut stream: UnixStream,
        permit: Permit,
        peer: Peer,
        key: &str,
        corr: &str,
        command: &str,
        reply: &str,
        reason: &'static str,
    ) {
        let mut ev = peer_event("command.validation_failed", "denied", Some(peer));
        ev.correlation_id = corr.into();
        ev.command = command.into();
        ev.reason = reason.into();
        self.audit.log(ev);
        self.reply(&mut stream, &protocol::response(corr, Err(reply.into())));
        drop(permit);
        self.metrics.penalty(reason, key);
        self.penalty.hold(stream, PENALTY);
    }

    fn call(
        &self,
        method: Method,
        params: &Map<String, Value>,
        caps: u8,
        deadline: Instant,
    ) -> Result<Value, String> {
        match method {
            Method::GetStatus => self.get_status(caps),
            Method::GetTemperature => self.get_temperature(params, deadline),
            Method::RegisterNodes => self.register_nodes(deadline),
            Method::EnsureClusterKeys => self.ensure_cluster_keys(params, deadline),
            Method::RequestCleanup => self.request_cleanup(params),
        }
    }

    /// The caller's own capabilities are listed (when it has any).
    fn get_status(&self, caps: u8) -> Result<Value, String> {
        let key = self
            .ssh
            .public_key()
            .map_err(|e| format!("failed to read public key: {e}"))?;
        let mut data = json!({
            "version": super::version(),
            "public_key": key,
            "ssh_dir": self.cfg.ssh_dir.display().to_string(),
        });
        if caps != 0 {
            data["capabilities"] = json!(peer::cap_names(caps));
        }
        Ok(data)
    }

    fn get_temperature(
        &self,
        params: &Map<String, Value>,
        deadline: Instant,
    ) -> Result<Value, String> {
        let node = match params.get("node") {
            None | Some(Value::Null) => return Err("missing 'node' parameter".into()),
            Some(Value::String(s)) => s.trim(),
            Some(_) => return Err("'node' parameter must be a string".into()),
        };
        if node.is_empty() {
            return Err("missing 'node' parameter".into());
        }
        if !nodes::valid_name(node) {
            return Err(INVALID_NODE.into());
        }
        // The validator logs and counts its refusals; its message is the
        // spec's text (`node "x" rejected by validator (reason)`, or
        // `resolve node "x": ...`).
        self.validator.check(node).map_err(|r| r.message)?;
        let out = self.temperature_of(node, deadline)?;
        Ok(json!({"node": node, "temperature": out}))
    }

    /// One node's temperatures (a validated node): through the node's gate,
    /// then ssh; this host's own sensors when ssh to itself fails.
    fn temperature_of(&self, node: &str, deadline: Instant) -> Result<String, String> {
        let Some(_turn) = self.gate.enter(node, deadline) else {
            return Err(super::https::NODE_BUSY.into());
        };
        let started = Instant::now();
        let fetched = self
            .ssh
            .fetch_temperatures(node, deadline.min(started + SSH_BUDGET));
        self.metrics.ssh(node, fetched.is_ok(), started.elapsed());
        match fetched {
            Ok(out) => Ok(out),
            Err(e) => {
                match &e {
                    ssh::Error::HostKeyChanged { .. } => self.metrics.hostkey_change(node),
                    ssh::Error::OutputTooLarge { .. } => self.metrics.ssh_output_oversized(node),
                    _ => {}
                }
                let refused = matches!(
                    e,
                    ssh::Error::OutputTooLarge { .. } | ssh::Error::HostKeyChanged { .. }
                );
                if refused || !is_local(&self.root, node) {
                    return Err(format!("failed to get temperatures: {e}"));
                }
                sensors::render(&self.root)
                    .map_err(|l| format!("failed to get temperatures: {e}; locally: {l}"))
            }
        }
    }

    /// The cluster's nodes, for the admin methods.
    fn members(&self, what: &str) -> Result<Vec<String>, String> {
        if !nodes::is_proxmox_host(&self.cfg) {
            return Err(format!("not running on Proxmox host{what}"));
        }
        cluster_members(&self.cfg, &self.root)
    }

    fn register_nodes(&self, deadline: Instant) -> Result<Value, String> {
        let members = self.members("").map_err(|e| {
            if e.starts_with("not running") {
                e
            } else {
                format!("failed to discover nodes: {e}")
            }
        })?;
        let nodes: Vec<Value> = members
            .iter()
            .map(|name| {
                let per = deadline.min(Instant::now() + SSH_BUDGET);
                match self.ssh.check_reachable(name, per) {
                    Ok(()) => json!({"name": name, "ssh_ready": true}),
                    Err(e) => json!({"name": name, "ssh_ready": false, "error": e.to_string()}),
                }
            })
            .collect();
        Ok(json!({"nodes": nodes}))
    }

    fn ensure_cluster_keys(
        &self,
        params: &Map<String, Value>,
        deadline: Instant,
    ) -> Result<Value, String> {
        let key_dir = match params.get("key_dir") {
            None | Some(Value::Null) => self.cfg.ssh_dir.clone(),
            Some(Value::String(d)) if d.is_empty() => self.cfg.ssh_dir.clone(),
            Some(Value::String(d)) => {
                let p = PathBuf::from(d);
                if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir)
                {
                    return Err("'key_dir' must be an absolute path without '..'".into());
                }
                p
            }
            Some(_) => return Err("'key_dir' parameter must be a string".into()),
        };
        let members = self.members(" - cannot discover cluster").map_err(|e| {
            if e.starts_with("not running") {
                e
            } else {
                format!("failed to discover cluster: {e}")
            }
        })?;
        let mut results = Map::new();
        let mut ok = 0;
        for name in &members {
            let per = deadline.min(Instant::now() + SSH_BUDGET);
            let r = if self.from.is_empty() {
                Err("no allowed source subnets configured or detected".to_string())
            } else {
                self.ssh
                    .push_key(name, &key_dir, &self.from, per)
                    .map_err(|e| e.to_string())
            };
            results.insert(
                name.clone(),
                match r {
                    Ok(()) => {
                        ok += 1;
                        json!({"success": true})
                    }
                    Err(e) => json!({"success": false, "error": e}),
                },
            );
        }
        Ok(json!({
            "nodes": members,
            "results": results,
            "success_count": ok,
            "total_count": members.len(),
        }))
    }

    /// Leaves `cleanup-request.json` in the work directory for the root
    /// cleanup unit (a `.path` unit watches it).
    fn request_cleanup(&self, params: &Map<String, Value>) -> Result<Value, String> {
        let text = |k: &str| match params.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) => Ok(String::new()),
            Some(_) => Err(format!("'{k}' parameter must be a string")),
        };
        let (host, reason) = (text("host")?, text("reason")?);
        // Root acts on this host (the cleanup unit logs in there): it must
        // be one the proxy may reach at all.
        if !host.is_empty() {
            if !nodes::valid_name(&host) {
                return Err("invalid node name".into());
            }
            self.validator.check(&host).map_err(|r| r.message)?;
        }
        let dir = &self.cfg.work_dir;
        std::fs::create_dir_all(dir).map_err(|e| format!("ensure cleanup directory: {e}"))?;
        let mut body = serde_json::to_vec(&json!({
            "requestedAt": crate::report::rfc3339(SystemTime::now()),
            "host": host,
            "reason": reason,
        }))
        .expect("invariant: a Value encodes");
        body.push(b'\n');
        // Atomic (a rename the cleanup unit's path watch sees once), 0600.
        crate::state::write_atomic(&dir.join("cleanup-request.json"), &body)
            .map_err(|e| format!("write cleanup payload: {e}"))?;
        log::info!("cleanup requested (host {host:?})");
        Ok(json!({"queued": true}))
    }
}

/// The HTTPS mode (spec §12) asks the same limiter, validator, gate and
/// audit log as the socket.
impl super::https::Backend for Daemon {
    fn source_allowed(&self, ip: IpAddr) -> bool {
        self.sources.iter().any(|c| c.contains(ip))
    }

    fn admit(&self, synthetic_uid: u32) -> Result<Box<dyn Send>, &'static str> {
        let key = format!("uid:{synthetic_uid}");
        match self.limiter.admit(&key) {
            Ok(p) => Ok(Box::new(p)),
            Err(reason) => {
                self.metrics.limiter_rejection(reason, &key);
                Err(reason)
            }
        }
    }

    /// Counted, not slept: a sleep would hold one of the listener's few
    /// workers (the socket's penalty holds only the connection).
    fn penalize(&self, synthetic_uid: u32, reason: &str) {
        self.metrics
            .penalty(reason, &format!("uid:{synthetic_uid}"));
    }

    fn valid_node_name(&self, node: &str) -> bool {
        nodes::valid_name(node)
    }

    fn validate_node(&self, node: &str) -> Result<(), String> {
        self.validator.check(node).map_err(|r| r.message)
    }

    fn temperature(&self, node: &str) -> Result<String, String> {
        self.temperature_of(node, Instant::now() + HANDLER_BUDGET)
    }

    fn audit(&self, event: Event) {
        self.audit.log(event);
    }
}

/// Held connections and when each may close.
type Held = Arc<(Mutex<Vec<(Instant, UnixStream)>>, Condvar)>;

/// Connections held open for a while by one thread: penalised ones (two
/// seconds), and refused ones (briefly, so a client that writes its
/// request after the refusal was sent reads the refusal instead of
/// failing with EPIPE).
struct PenaltyBox {
    held: Held,
}

impl PenaltyBox {
    fn start() -> PenaltyBox {
        let held: Held = Arc::default();
        let h = Arc::clone(&held);
        let spawned = std::thread::Builder::new()
            .name("penalty".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let (queue, cv) = &*h;
                let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    let now = Instant::now();
                    q.retain(|(until, _)| *until > now);
                    q = match q.iter().map(|(until, _)| *until).min() {
                        Some(next) => {
                            cv.wait_timeout(q, next - now)
                                .unwrap_or_else(|p| p.into_inner())
                                .0
                        }
                        None => cv.wait(q).unwrap_or_else(|p| p.into_inner()),
                    };
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the penalty thread ({e}); held connections close at once");
        }
        PenaltyBox { held }
    }

    /// Keeps `stream` open for `hold`; closes it at once when the box is
    /// full (it never holds more than [`PENALTY_SLOTS`]).
    fn hold(&self, stream: UnixStream, hold: Duration) {
        let (queue, cv) = &*self.held;
        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() < PENALTY_SLOTS {
            q.push((Instant::now() + hold, stream));
            cv.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_replaces_a_socket_but_not_a_file() {
        let dir = std::env::temp_dir().join(format!("psp-listen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sock = dir.join("run/p.sock");
        let l = listen(&sock).unwrap();
        drop(l);
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        listen(&sock).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, "keep").unwrap();
        assert!(listen(&file).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
