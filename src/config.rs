//! [`Args`] (what was typed) + files → a validated [`Config`].
//!
//! Everything that can be wrong with a configuration is found here, before
//! anything runs: a URL the agent would refuse to send a token to, a token
//! file that cannot be read, an interval of zero, a flag for a module this
//! agent does not have. Each problem is one line naming the flag or file.
//!
//! Token precedence (documented in pulse-agent(8)): `--token`, then
//! `--token-file`, then `PULSE_TOKEN`, then `STATE-DIR/token`. The token is
//! kept in a [`Secret`], whose `Debug` never shows it.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::cli::{self, Args, Origin};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/pulse-agent";
pub const DEFAULT_HEALTH_ADDR: &str = "127.0.0.1:9191";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// A configuration that cannot be used. Exit status 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// A value that must never be printed: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where the token came from (safe to log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Flag,
    File(PathBuf),
    Env,
    StateDir(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A normalised Pulse server URL: scheme, lower-case host, optional port and
/// path prefix without a trailing slash; no user info, query or fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    pub scheme: Scheme,
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(p) => write!(f, "{scheme}://{host}:{p}{}", self.path),
            None => write!(f, "{scheme}://{host}{}", self.path),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerRuntime {
    Auto,
    Docker,
    Podman,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `None`: standalone, nothing is sent.
    pub url: Option<ServerUrl>,
    pub token: Option<Secret>,
    pub token_source: Option<TokenSource>,
    pub insecure: bool,
    pub allow_plaintext_http: bool,
    pub cacert: Option<PathBuf>,
    pub server_fingerprint: Option<[u8; 32]>,
    pub enroll: bool,
    pub hostname: Option<String>,
    pub agent_id: Option<String>,
    pub agent_id_file: PathBuf,
    pub state_dir: PathBuf,
    pub report_ip: Option<IpAddr>,
    pub tags: Vec<String>,
    pub interval: Duration,
    pub disk_exclude: Vec<String>,
    pub disk_include: Vec<String>,
    /// Unsent reports kept on disk at most (`--spool-reports`).
    pub spool_reports: usize,
    pub once: bool,
    pub root: PathBuf,
    pub enable_host: bool,
    pub enable_docker: Option<bool>,
    pub docker_runtime: DockerRuntime,
    /// `--docker-socket`: the only socket tried.
    pub docker_socket: Option<PathBuf>,
    /// `--enable-proxmox`: the cluster-sensors module (peers' temperatures
    /// through pulse-sensor-proxy).
    pub enable_proxmox: bool,
    /// `--sensor-proxy-socket`; `None`: the proxy's usual paths.
    pub sensor_proxy_socket: Option<PathBuf>,
    pub disable_ceph: bool,
    pub disable_auto_update: bool,
    /// `--update-url`: the release channel; `None`: no self-update.
    pub update_url: Option<ServerUrl>,
    /// `--update-key-file`: trusted release keys besides the built-in ones.
    pub update_key_file: PathBuf,
    /// The command line's flags as `--name=value` words, without the token
    /// and the one-shot flags: what a candidate binary's `--self-test` is
    /// given, to check it accepts this configuration.
    pub flag_words: Vec<String>,
    /// `None`: listener disabled.
    pub health_addr: Option<String>,
    pub log_level: log::LevelFilter,
    pub log_file: Option<PathBuf>,
    /// `--smartctl` / `PULSE_SMARTCTL_PATH` (absolute): a privilege helper
    /// may wrap smartctl; `None` looks smartctl up in `PATH`.
    pub smartctl_path: Option<PathBuf>,
    /// Time between SMART refreshes; zero turns SMART off.
    pub smart_interval: Duration,
    /// An idle disk is probed again only after this long.
    pub smart_max_age: Duration,
    /// `PULSE_PCT_PATH`: a privilege helper wraps Proxmox's pct.
    pub pct_path: Option<PathBuf>,
    /// Things to log once the logger runs: ignored flags, unusable environment values.
    pub notices: Vec<Notice>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Info(String),
    Warn(String),
}

impl Notice {
    /// Logs it at its level (once the logger is up).
    pub fn log(&self) {
        match self {
            Notice::Info(m) => log::info!("{m}"),
            Notice::Warn(m) => log::warn!("{m}"),
        }
    }
}

/// Resolves host names for the plain-HTTP rule; injected by tests.
pub type Resolver = dyn Fn(&str) -> Option<Vec<IpAddr>>;

impl Config {
    /// Validates `args`, reading the environment through `env` for the values
    /// that have no flag (`PULSE_TOKEN`, `PULSE_PCT_PATH`).
    pub fn from_args(
        args: &Args,
        env: &dyn Fn(&str) -> Option<String>,
        resolve: &Resolver,
    ) -> Result<Config, ConfigError> {
        let mut notices: Vec<Notice> = args.ignored_env.iter().cloned().map(Notice::Warn).collect();
        refuse_kubernetes(args)?;

        let state_dir =
            PathBuf::from(non_empty(args.str("state-dir")).unwrap_or(DEFAULT_STATE_DIR));
        let allow_plaintext_http = args.flag("allow-plaintext-http");
        let url = match non_empty(args.str("url")) {
            Some(raw) => Some(parse_url(raw, allow_plaintext_http, resolve)?),
            None => None,
        };

        let update_url = match non_empty(args.str("update-url")) {
            Some(raw) => Some(parse_url_of(
                "update-url",
                raw,
                allow_plaintext_http,
                resolve,
            )?),
            None => None,
        };

        let interval = args.duration("interval").unwrap_or(DEFAULT_INTERVAL);
        if interval < Duration::from_secs(1) {
            return Err(err(format!(
                "--interval must be at least 1s (got {interval:?})"
            )));
        }

        let mut smartctl_path = non_empty(args.str("smartctl").map(str::trim)).map(PathBuf::from);
        let mut smart_interval = args
            .duration("smart-interval")
            .unwrap_or(crate::smart::DEFAULT_INTERVAL);
        if let Some(p) = smartctl_path.as_ref().filter(|p| !p.is_absolute()) {
            let why = format!("must be an absolute path (got {})", p.display());
            if args.origin("smartctl") == Some(&crate::cli::Origin::Flag) {
                return Err(err(format!("--smartctl {why}")));
            }
            // The stock agent only fails SMART over this: so do we, rather
            // than refuse to start with an env file that worked before.
            notices.push(Notice::Warn(format!(
                "PULSE_SMARTCTL_PATH {why}; SMART is off"
            )));
            smartctl_path = None;
            smart_interval = Duration::ZERO;
        }
        let smart_max_age = args
            .duration("smart-max-age")
            .unwrap_or(crate::smart::DEFAULT_MAX_AGE);
        for (name, d) in [
            ("--smart-interval", smart_interval),
            ("--smart-max-age", smart_max_age),
        ] {
            let off = name == "--smart-interval" && d.is_zero();
            if d < Duration::from_secs(60) && !off {
                return Err(err(format!(
                    "{name} must be at least 1m{} (got {d:?})",
                    if name == "--smart-interval" {
                        ", or 0 to turn SMART off"
                    } else {
                        ""
                    }
                )));
            }
        }

        let spool_reports = match args.int("spool-reports") {
            None => crate::spool::DEFAULT_MAX_REPORTS,
            Some(n) if (0..=100_000).contains(&n) => n as usize,
            Some(n) => {
                return Err(err(format!(
                    "--spool-reports must be between 0 and 100000 (got {n})"
                )));
            }
        };

        let enroll = args.flag("enroll");
        let (token, token_source) = if url.is_some() || enroll {
            match resolve_token(args, env, &state_dir, &mut notices)? {
                Some((t, s)) => (Some(t), Some(s)),
                None => (None, None),
            }
        } else {
            (None, None)
        };
        if enroll && token.is_none() {
            return Err(err(
                "--enroll needs a bootstrap token (--token, --token-file or PULSE_TOKEN)",
            ));
        }
        // Like the stock agent ("Pulse API token is required"): every report
        // would be refused. `--self-test` is exempt, as there: the updater
        // runs it with the agent's environment and passes a token file only
        // when the agent has a token.
        if let (Some(url), None, false) = (&url, &token, args.flag("self-test")) {
            return Err(err(format!(
                "--url {url} needs an API token: give --token-file, --token or PULSE_TOKEN, or put it in {} (without --url nothing is sent and no token is needed)",
                state_dir.join("token").display()
            )));
        }

        let report_ip = match non_empty(args.str("report-ip")) {
            Some(s) => {
                let ip: IpAddr = s
                    .parse()
                    .map_err(|_| err(format!("--report-ip: '{s}' is not an IP address")))?;
                if ip.is_unspecified() {
                    return Err(err(format!("--report-ip: {s} is the unspecified address")));
                }
                Some(ip)
            }
            None => None,
        };

        let server_fingerprint = match non_empty(args.str("server-fingerprint")) {
            Some(s) => Some(parse_fingerprint(s)?),
            None => None,
        };

        let health_addr = match args.str("health-addr") {
            None => Some(DEFAULT_HEALTH_ADDR.to_string()),
            Some(s) => listen_addr(s)?,
        };

        let log_level = match non_empty(args.str("log-level")) {
            None => log::LevelFilter::Info,
            Some(l) => parse_log_level(l)?,
        };

        let docker_runtime = match args
            .str("docker-runtime")
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("" | "auto" | "default") => DockerRuntime::Auto,
            Some("docker") => DockerRuntime::Docker,
            Some("podman") => DockerRuntime::Podman,
            Some(other) => {
                return Err(err(format!(
                    "--docker-runtime: '{other}' is not auto, docker or podman"
                )));
            }
        };
        if let Some(t) = args.str("proxmox-type") {
            if !matches!(
                t.trim().to_ascii_lowercase().as_str(),
                "" | "auto" | "pve" | "pbs"
            ) {
                return Err(err(format!(
                    "--proxmox-type: '{t}' is not pve, pbs or auto"
                )));
            }
        }

        let enable_host = args.bool("enable-host").unwrap_or(true);
        let enable_docker = args.bool("enable-docker");
        if !enable_host && enable_docker != Some(true) {
            return Err(err(
                "nothing to run: --enable-host=false and the Docker module is not enabled",
            ));
        }

        if args.flag("enable-commands") {
            notices.push(Notice::Info(
                "--enable-commands ignored: this agent is read-only by design and never runs commands from the server".into(),
            ));
        }
        for (name, what) in [
            (
                "observers-file",
                "observer destinations are not supported; reports go to --url only",
            ),
            (
                "custom-sensors-file",
                "custom sensors are not supported and are not collected",
            ),
        ] {
            if let Some(v) = non_empty(args.str(name)) {
                notices.push(Notice::Warn(format!("--{name} {v}: {what}")));
            }
        }
        let enable_proxmox = args.flag("enable-proxmox");
        if enable_proxmox {
            notices.push(Notice::Info(
                "--enable-proxmox: cluster temperatures come from pulse-sensor-proxy; no Proxmox API token is created (add the node in Pulse)".into(),
            ));
        }
        let sensor_proxy_socket = match non_empty(args.str("sensor-proxy-socket")) {
            Some(s) if !s.starts_with('/') => {
                return Err(err(format!(
                    "--sensor-proxy-socket {s}: not an absolute path"
                )));
            }
            s => s.map(PathBuf::from),
        };
        let docker_socket = match non_empty(args.str("docker-socket")).map(str::trim) {
            None => None,
            Some(s) => {
                let path = s.strip_prefix("unix://").unwrap_or(s);
                if !path.starts_with('/') {
                    return Err(err(format!(
                        "--docker-socket {s}: not an absolute socket path or unix:// URL (this agent speaks to local sockets only)"
                    )));
                }
                Some(PathBuf::from(path))
            }
        };

        let root = PathBuf::from(non_empty(args.str("root")).unwrap_or("/"));
        if !root.is_dir() {
            return Err(err(format!("--root {}: not a directory", root.display())));
        }
        // Without proc/ every collector finds nothing and the report would
        // describe nobody ("unknown-host") with this machine's addresses.
        if !root.join("proc").is_dir() {
            return Err(err(format!(
                "--root {}: holds no proc/ directory; give the directory the host's /proc, /sys and /etc are under (e.g. /host)",
                root.display()
            )));
        }

        let mut tags: Vec<String> = Vec::new();
        for t in args.list("tag") {
            let t = t.trim();
            if !t.is_empty() && !tags.iter().any(|x| x == t) {
                tags.push(t.to_string());
            }
        }

        Ok(Config {
            url,
            token,
            token_source,
            insecure: args.flag("insecure"),
            allow_plaintext_http,
            cacert: non_empty(args.str("cacert")).map(PathBuf::from),
            server_fingerprint,
            enroll,
            hostname: non_empty(args.str("hostname")).map(str::to_string),
            agent_id: non_empty(args.str("agent-id")).map(str::to_string),
            agent_id_file: non_empty(args.str("agent-id-file"))
                .map(PathBuf::from)
                .unwrap_or_else(|| state_dir.join("agent-id")),
            state_dir,
            report_ip,
            tags,
            interval,
            disk_exclude: args.list("disk-exclude").to_vec(),
            disk_include: args.list("disk-include").to_vec(),
            spool_reports,
            once: args.flag("once"),
            root,
            enable_host,
            enable_docker,
            docker_runtime,
            docker_socket,
            enable_proxmox,
            sensor_proxy_socket,
            disable_ceph: args.flag("disable-ceph"),
            disable_auto_update: args.flag("disable-auto-update"),
            update_url,
            flag_words: args.to_flags(&[
                "token",
                "token-file",
                "check",
                "once",
                "self-test",
                "help",
                "version",
                "enroll",
            ]),
            update_key_file: PathBuf::from(
                non_empty(args.str("update-key-file")).unwrap_or(crate::update::DEFAULT_KEY_FILE),
            ),
            health_addr,
            log_level,
            log_file: non_empty(args.str("log-file")).map(PathBuf::from),
            smartctl_path,
            smart_interval,
            smart_max_age,
            pct_path: env_path(env, "PULSE_PCT_PATH"),
            notices,
        })
    }
}

fn env_path(env: &dyn Fn(&str) -> Option<String>, var: &str) -> Option<PathBuf> {
    env(var)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

/// Kubernetes flags are parsed so a stock command line is understood, and
/// refused so nobody believes their cluster is monitored.
fn refuse_kubernetes(args: &Args) -> Result<(), ConfigError> {
    let typed_kube = cli::FLAGS
        .iter()
        .filter(|f| f.name.starts_with("kube"))
        .find(|f| args.origin(f.name) == Some(&Origin::Flag));
    if args.flag("enable-kubernetes") {
        return Err(err(
            "this agent has no Kubernetes module (--enable-kubernetes / PULSE_ENABLE_KUBERNETES); use the stock agent for clusters",
        ));
    }
    if let Some(f) = typed_kube {
        return Err(err(format!(
            "--{}: this agent has no Kubernetes module; use the stock agent for clusters",
            f.name
        )));
    }
    Ok(())
}

fn resolve_token(
    args: &Args,
    env: &dyn Fn(&str) -> Option<String>,
    state_dir: &Path,
    notices: &mut Vec<Notice>,
) -> Result<Option<(Secret, TokenSource)>, ConfigError> {
    if let Some(t) = non_empty(args.secret("token").map(Secret::expose)) {
        return Ok(Some((check_token(t, "--token")?, TokenSource::Flag)));
    }
    if let Some(path) = non_empty(args.str("token-file")) {
        let path = PathBuf::from(path);
        let t = read_token_file(&path, notices)?
            .ok_or_else(|| err(format!("--token-file {}: file is empty", path.display())))?;
        return Ok(Some((t, TokenSource::File(path))));
    }
    if let Some(t) = env("PULSE_TOKEN").filter(|t| !t.trim().is_empty()) {
        return Ok(Some((
            check_token(t.trim(), "PULSE_TOKEN")?,
            TokenSource::Env,
        )));
    }
    let fallback = state_dir.join("token");
    match std::fs::symlink_metadata(&fallback) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        _ => Ok(read_token_file(&fallback, notices)?.map(|t| (t, TokenSource::StateDir(fallback)))),
    }
}

pub(crate) fn read_token_file(
    path: &Path,
    notices: &mut Vec<Notice>,
) -> Result<Option<Secret>, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let what = || format!("token file {}", path.display());
    let f = std::fs::File::open(path).map_err(|e| err(format!("{}: {e}", what())))?;
    let meta = f.metadata().map_err(|e| err(format!("{}: {e}", what())))?;
    if !meta.is_file() {
        return Err(err(format!("{}: not a regular file", what())));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        notices.push(Notice::Warn(format!(
            "{} is readable by other users; chmod 600 it",
            what()
        )));
    }
    let mut buf = String::new();
    f.take(MAX_TOKEN_FILE + 1)
        .read_to_string(&mut buf)
        .map_err(|e| err(format!("{}: {e}", what())))?;
    if buf.len() as u64 > MAX_TOKEN_FILE {
        return Err(err(format!("{}: larger than 64 KiB", what())));
    }
    let t = buf.trim();
    if t.is_empty() {
        return Ok(None);
    }
    check_token(t, &what()).map(Some)
}

fn check_token(t: &str, what: &str) -> Result<Secret, ConfigError> {
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        // Never echo the token itself.
        return Err(err(format!(
            "{what}: the token contains whitespace or control characters"
        )));
    }
    Ok(Secret(t.to_string()))
}

pub fn parse_log_level(l: &str) -> Result<log::LevelFilter, ConfigError> {
    Ok(match l.to_ascii_lowercase().as_str() {
        "trace" => log::LevelFilter::Trace,
        "debug" => log::LevelFilter::Debug,
        "info" => log::LevelFilter::Info,
        "warn" | "warning" => log::LevelFilter::Warn,
        "error" | "fatal" | "panic" => log::LevelFilter::Error,
        "disabled" | "off" | "none" => log::LevelFilter::Off,
        _ => {
            return Err(err(format!(
                "--log-level: '{l}' is not trace, debug, info, warn, error or disabled"
            )));
        }
    })
}

/// `--health-addr` / `PULSE_HEALTH_ADDR` → the address to bind, `None` for
/// no listener. The stock agent's syntax (Go's `net.Listen`): `HOST:PORT`,
/// `[IPv6]:PORT`, or `:PORT` for every address. Go makes that a dual-stack
/// socket; std cannot clear `IPV6_V6ONLY` before binding, so `[::]` would
/// take IPv4 only where `net.ipv6.bindv6only` allows: `:PORT` binds
/// `0.0.0.0:PORT` (IPv4), and `[::]:PORT` is there for IPv6. Empty, `off`,
/// `none` or `disabled` (any case) turn it off, from the flag and the
/// environment alike.
pub fn listen_addr(s: &str) -> Result<Option<String>, ConfigError> {
    let s = s.trim();
    if s.is_empty()
        || ["off", "none", "disabled"]
            .iter()
            .any(|w| s.eq_ignore_ascii_case(w))
    {
        return Ok(None);
    }
    let bad = || {
        err(format!(
            "--health-addr: '{s}' is not HOST:PORT, :PORT (every address) or off"
        ))
    };
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(Some(s.to_string()));
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    if host.is_empty() {
        return Ok(Some(format!("0.0.0.0:{port}")));
    }
    if host.contains(['/', ' ', ':', '[', ']']) {
        return Err(bad());
    }
    Ok(Some(s.to_string()))
}

/// 64 hex digits, colons allowed, any case → 32 bytes.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], ConfigError> {
    let hex: String = s.chars().filter(|&c| c != ':').collect();
    let bad = || err("--server-fingerprint: want the SHA-256 of the certificate, 64 hex digits");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Parses and normalises a server URL, and applies the plain-HTTP rule:
/// `http://` only to this machine or a local network, unless
/// `--allow-plaintext-http` (the token would cross the network in clear).
pub fn parse_url(
    raw: &str,
    allow_plaintext_http: bool,
    resolve: &Resolver,
) -> Result<ServerUrl, ConfigError> {
    parse_url_of("url", raw, allow_plaintext_http, resolve)
}

/// [`parse_url`] for the flag `--{flag}` (named in the messages).
pub fn parse_url_of(
    flag: &str,
    raw: &str,
    allow_plaintext_http: bool,
    resolve: &Resolver,
) -> Result<ServerUrl, ConfigError> {
    // A refused URL is echoed without its user info (it may hold a password).
    let shown = cli::redact_userinfo(raw);
    let bad = |why: &str| err(format!("--{flag} {shown}: {why}"));
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| bad("missing scheme (http:// or https://)"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        _ => return Err(bad("scheme must be http or https")),
    };
    if rest.contains(['?', '#']) {
        return Err(bad("must not have a query or fragment"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(bad("must not contain user info"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed [ in host"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("bad port"))?),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let host = host.to_ascii_lowercase();
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '%') {
        return Err(bad("missing or invalid host"));
    }
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| bad("bad port"))?,
        ),
        None => None,
    };
    let path = path.trim_end_matches('/').to_string();
    let url = ServerUrl {
        scheme,
        host,
        port,
        path,
    };
    if scheme == Scheme::Http && !allow_plaintext_http && !is_local_host(&url.host, resolve) {
        let what = if flag == "url" {
            "send the token"
        } else {
            "download updates"
        };
        return Err(err(format!(
            "--{flag} {url}: refusing to {what} over plain http to a host that is not local; use https, or --allow-plaintext-http"
        )));
    }
    Ok(url)
}

/// Loopback, a private/link-local/CGNAT address, a single-label or
/// local-suffix name, or a name whose addresses are all private.
pub fn is_local_host(host: &str, resolve: &Resolver) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return is_local_ip(ip);
    }
    if !host.contains('.') {
        return true;
    }
    if [".local", ".lan", ".home", ".home.arpa", ".internal"]
        .iter()
        .any(|s| host.ends_with(s))
    {
        return true;
    }
    resolve(host).is_some_and(|ips| !ips.is_empty() && ips.into_iter().all(is_local_ip))
}

pub fn is_local_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_local_ip(IpAddr::V4(v4)))
        }
    }
}

/// The system resolver with a 2 s limit (a lookup runs on its own thread so a
/// dead DNS server cannot stall start-up).
pub fn system_resolver(host: &str) -> Option<Vec<IpAddr>> {
    let (tx, rx) = mpsc::channel();
    let host = host.to_string();
    std::thread::Builder::new()
        .name("dns".into())
        // getaddrinfo runs whatever NSS modules the host configures; glibc's
        // resolver keeps packet buffers on the stack.
        .stack_size(256 * 1024)
        .spawn(move || {
            let ips = (host.as_str(), 0u16)
                .to_socket_addrs()
                .ok()
                .map(|it| it.map(|a| a.ip()).collect::<Vec<_>>());
            let _ = tx.send(ips);
        })
        .ok()?;
    rx.recv_timeout(Duration::from_secs(2)).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_dns(_: &str) -> Option<Vec<IpAddr>> {
        None
    }

    fn url(s: &str) -> Result<String, ConfigError> {
        parse_url(s, false, &no_dns).map(|u| u.to_string())
    }

    #[test]
    fn url_normalisation() {
        assert_eq!(
            url("HTTPS://Pulse.Example:7655/").unwrap(),
            "https://pulse.example:7655"
        );
        assert_eq!(
            url("https://x.example/pulse/").unwrap(),
            "https://x.example/pulse"
        );
        assert_eq!(
            url("https://[2001:db8::1]:8443").unwrap(),
            "https://[2001:db8::1]:8443"
        );
        for bad in [
            "pulse.example",
            "ftp://x",
            "https://u:p@x",
            "https://x/?a=1",
            "https://x#f",
            "https://:80",
            "https://x:0",
            "https://x:99999",
        ] {
            assert!(url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_http_only_to_local_hosts() {
        for ok in [
            "http://localhost:7655",
            "http://127.0.0.1:7655",
            "http://[::1]:7655",
            "http://192.168.1.10:7655",
            "http://10.1.2.3",
            "http://100.64.0.1",
            "http://[fd00::1]",
            "http://pulse:7655",
            "http://pulse.lan",
            "http://nas.home.arpa",
        ] {
            assert!(url(ok).is_ok(), "{ok}");
        }
        assert!(url("http://pulse.example.com").is_err());
        assert!(url("http://8.8.8.8").is_err());
        let private_dns = |_: &str| Some(vec!["192.168.1.5".parse().unwrap()]);
        assert!(parse_url("http://pulse.corp.example", false, &private_dns).is_ok());
        let mixed_dns = |_: &str| {
            Some(vec![
                "192.168.1.5".parse().unwrap(),
                "1.1.1.1".parse().unwrap(),
            ])
        };
        assert!(parse_url("http://pulse.corp.example", false, &mixed_dns).is_err());
        assert!(parse_url("http://pulse.example.com", true, &no_dns).is_ok());
    }

    #[test]
    fn fingerprints() {
        let hex = "AB".repeat(32);
        assert_eq!(parse_fingerprint(&hex).unwrap(), [0xab; 32]);
        let colons: Vec<String> = (0..32).map(|_| "0f".to_string()).collect();
        assert_eq!(parse_fingerprint(&colons.join(":")).unwrap(), [0x0f; 32]);
        assert!(parse_fingerprint("abc").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    /// A fixture host root (tests never use the machine's own /proc).
    fn fixture_root() -> String {
        format!(
            "--root={}/vendor-free-tests/fixtures/debian12-vm/root",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    fn config_with(args: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
        let env = |k: &str| {
            env.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        };
        let mut all = vec![
            fixture_root(),
            "--state-dir=/nonexistent/pulse-agent".into(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let a = cli::parse(all, &env).map_err(|e| e.0)?;
        Config::from_args(&a, &env, &no_dns).map_err(|e| e.0)
    }

    fn health(args: &[&str], env: &[(&str, &str)]) -> Option<String> {
        config_with(args, env).unwrap().health_addr
    }

    /// Issue 12: `--health-addr :9191`, the stock agent's own example for
    /// "listen on the network", was refused.
    #[test]
    fn health_addr_with_empty_host_means_all_addresses() {
        assert_eq!(
            health(&["--health-addr", ":9191"], &[]).as_deref(),
            Some("0.0.0.0:9191")
        );
        assert_eq!(
            health(&["-health-addr=:0"], &[]).as_deref(),
            Some("0.0.0.0:0")
        );
        assert_eq!(
            health(&[], &[("PULSE_HEALTH_ADDR", " :9191 ")]).as_deref(),
            Some("0.0.0.0:9191")
        );
        for kept in [
            "127.0.0.1:9191",
            "[::]:9191",
            "[::1]:9100",
            "localhost:9191",
            "0.0.0.0:1",
        ] {
            assert_eq!(health(&["--health-addr", kept], &[]).as_deref(), Some(kept));
        }
        assert_eq!(health(&[], &[]).as_deref(), Some(DEFAULT_HEALTH_ADDR));
        for bad in [":", ":x", ":99999", "9191", "a b:1", "::1:9191", "host"] {
            let e = config_with(&["--health-addr", bad], &[]).unwrap_err();
            assert!(e.starts_with("--health-addr: "), "{bad}: {e}");
            assert!(e.contains(":PORT"), "{bad}: {e}");
        }
    }

    /// Issue 12: `--help` said "empty or off disables it", but the flag
    /// refused `off` (only the environment took it).
    #[test]
    fn health_addr_off_disables_from_flag_and_env_alike() {
        for off in ["off", "OFF", "none", "disabled", " Off "] {
            assert_eq!(health(&["--health-addr", off], &[]), None, "flag {off}");
            assert_eq!(health(&[&format!("-health-addr={off}")], &[]), None);
            assert_eq!(
                health(&[], &[("PULSE_HEALTH_ADDR", off)]),
                None,
                "env {off}"
            );
        }
        assert_eq!(health(&["--health-addr="], &[]), None);
        assert_eq!(health(&["--health-addr", ""], &[]), None);
        // A flag wins over the environment either way.
        assert_eq!(
            health(&["--health-addr=off"], &[("PULSE_HEALTH_ADDR", ":9191")]),
            None
        );
        // Like every variable, one set to nothing is unset: the default.
        assert_eq!(
            health(&[], &[("PULSE_HEALTH_ADDR", "")]).as_deref(),
            Some(DEFAULT_HEALTH_ADDR)
        );
    }

    /// Issue 12: `--url` without any token was accepted and every report went
    /// out without credentials.
    #[test]
    fn url_without_a_token_is_refused() {
        let e = config_with(&["--url=https://pulse.example"], &[]).unwrap_err();
        assert!(e.contains("needs an API token"), "{e}");
        assert!(e.contains("--url https://pulse.example"), "{e}");
        let e = config_with(&["--once"], &[("PULSE_URL", "https://pulse.example")]).unwrap_err();
        assert!(e.contains("needs an API token"), "{e}");
        // What needs no token: no server, or the updater's self-test.
        assert!(config_with(&["--once"], &[]).unwrap().token.is_none());
        assert!(config_with(&[], &[]).is_ok());
        assert!(config_with(&["--url=https://pulse.example", "--self-test"], &[]).is_ok());
        // Any token source will do.
        assert!(config_with(&["--url=https://pulse.example", "--token=t"], &[]).is_ok());
        let c = config_with(&["--url=https://pulse.example"], &[("PULSE_TOKEN", "t")]).unwrap();
        assert_eq!(c.token_source, Some(TokenSource::Env));
    }

    /// Issue 12: a `--root` without `proc/` gave a report of `unknown-host`
    /// carrying this machine's addresses.
    #[test]
    fn root_without_proc_is_refused() {
        let dir = std::env::temp_dir().join(format!("pulse-noproc-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sys")).unwrap();
        let a = cli::parse(
            [format!("--root={}", dir.display()), "--once".into()],
            &|_| None,
        )
        .unwrap();
        let e = Config::from_args(&a, &|_| None, &no_dns).unwrap_err().0;
        assert!(e.starts_with(&format!("--root {}: ", dir.display())), "{e}");
        assert!(e.contains("proc/"), "{e}");
        std::fs::create_dir(dir.join("proc")).unwrap();
        assert!(Config::from_args(&a, &|_| None, &no_dns).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_refused_url_is_not_echoed_with_its_password() {
        let e = url("https://agent:pa55w0rd@pulse.example").unwrap_err().0;
        assert!(!e.contains("pa55w0rd"), "{e}");
        assert!(e.contains("user info"), "{e}");
    }

    #[test]
    fn secret_is_redacted() {
        let s = Secret("hunter2".into());
        assert_eq!(format!("{s:?}"), "[redacted]");
    }
}
