//! One container engine endpoint: where it is, which API version it speaks,
//! whether it is Docker or Podman, and GET requests to it over a small pool
//! of kept-alive connections.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::{self, Conn, Response};
use crate::config::DockerRuntime;

/// The newest API version this agent asks for, and the oldest it accepts
/// (spec §4.5).
pub const MAX_API: (u32, u32) = (1, 55);
pub const MIN_API: (u32, u32) = (1, 40);
/// Connections kept open between requests (one per stats thread).
const POOL: usize = 4;
/// Time for `/_ping` plus `/info` when choosing an endpoint.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const PING_CAP: u64 = 4096;
pub const INFO_CAP: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Podman,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
        }
    }
}

/// A connected engine.
pub struct Engine {
    pub socket: PathBuf,
    /// `unix:///path`, as users write it.
    pub endpoint: String,
    /// `1.41`.
    pub api_version: String,
    prefix: String,
    user_agent: String,
    idle: Mutex<Vec<Conn>>,
}

impl Engine {
    /// Connects to `socket` and settles the API version: `forced` (from
    /// `DOCKER_API_VERSION`), else min(the daemon's `Api-Version`, 1.55).
    pub fn open(socket: &Path, forced: Option<&str>, user_agent: &str) -> Result<Engine, String> {
        let mut e = Engine {
            socket: socket.to_path_buf(),
            endpoint: format!("unix://{}", socket.display()),
            api_version: String::new(),
            prefix: String::new(),
            user_agent: user_agent.to_string(),
            idle: Mutex::new(Vec::new()),
        };
        let version = match forced {
            Some(v) => v.trim_start_matches('v').to_string(),
            None => e.negotiate()?,
        };
        e.prefix = format!("/v{version}");
        e.api_version = version;
        Ok(e)
    }

    /// `HEAD /_ping`, falling back to `GET /_ping`; the `Api-Version`
    /// header. A socket that does not answer HTTP is not asked twice.
    fn negotiate(&self) -> Result<String, String> {
        let mut header = None;
        let mut last_error = String::new();
        for method in ["HEAD", "GET"] {
            let r = self.request(method, "/_ping", PROBE_TIMEOUT, PING_CAP)?;
            header = r.header("api-version").map(str::to_string);
            if header.is_some() {
                break;
            }
            last_error = match r.status {
                400.. => self.status_error(method, "/_ping", &r),
                _ => format!(
                    "{method} /_ping on {}: no Api-Version header",
                    self.endpoint
                ),
            };
        }
        let header = header.ok_or(last_error)?;
        let daemon = parse_version(&header)
            .ok_or_else(|| format!("{}: Api-Version {header:?} is not a version", self.endpoint))?;
        if daemon < MIN_API {
            return Err(format!(
                "{} speaks Engine API {header}; {}.{} or later is needed",
                self.endpoint, MIN_API.0, MIN_API.1
            ));
        }
        let v = daemon.min(MAX_API);
        Ok(format!("{}.{}", v.0, v.1))
    }

    /// `GET /v<version><path>`: the body of a 2xx answer as JSON.
    pub fn get_json(&self, path: &str, timeout: Duration, cap: u64) -> Result<Value, String> {
        let full = format!("{}{path}", self.prefix);
        let r = self.request("GET", &full, timeout, cap)?;
        if !(200..300).contains(&r.status) {
            return Err(self.status_error("GET", &full, &r));
        }
        serde_json::from_slice(&r.body).map_err(|e| {
            format!(
                "GET {full} on {}: the answer is not JSON: {e}",
                self.endpoint
            )
        })
    }

    fn status_error(&self, method: &str, path: &str, r: &Response) -> String {
        let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
        let msg = match v.get("message").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => crate::deliver::snippet(&r.body),
        };
        format!(
            "{method} {path} on {}: status {}: {msg}",
            self.endpoint, r.status
        )
    }

    /// One request on a kept connection (or a new one). A kept connection
    /// the daemon has closed is replaced at once; a fresh connection that
    /// fails is tried once more after 200 ms (as the stock agent does).
    fn request(
        &self,
        method: &str,
        path: &str,
        timeout: Duration,
        cap: u64,
    ) -> Result<Response, String> {
        let deadline = Instant::now() + timeout;
        let named =
            |e: &dyn std::fmt::Display| format!("{method} {path} on {}: {e}", self.endpoint);
        let mut retried = false;
        loop {
            let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let from_pool = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                None => match Conn::connect(&self.socket) {
                    Ok(c) => c,
                    Err(e) if !retried && transient(&e) && room(deadline) => {
                        retried = true;
                        std::thread::sleep(RETRY_PAUSE);
                        continue;
                    }
                    Err(e) => return Err(named(&e)),
                },
            };
            match conn.request(method, path, &self.user_agent, deadline, cap) {
                Ok(r) => {
                    if conn.reusable() {
                        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                        if idle.len() < POOL {
                            idle.push(conn);
                        }
                    }
                    return Ok(r);
                }
                Err(e) if from_pool && e.is_stale_connection() => continue,
                Err(e) if !retried && transient(&e) && room(deadline) => {
                    retried = true;
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(e) => return Err(named(&e)),
            }
        }
    }
}

const RETRY_PAUSE: Duration = Duration::from_millis(200);

fn room(deadline: Instant) -> bool {
    deadline.saturating_duration_since(Instant::now()) > RETRY_PAUSE * 2
}

fn transient(e: &http::Error) -> bool {
    match e {
        http::Error::Connect(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        e => e.is_stale_connection(),
    }
}

/// `1.41` → (1, 41).
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (major, minor) = v.trim().trim_start_matches('v').split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Where to look, in order (spec §4.6), as socket paths. `--docker-socket`
/// alone when given. Endpoints that are not `unix://` are left out with a
/// note: this agent speaks to local sockets only.
pub fn candidates(
    preference: DockerRuntime,
    socket: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    uid: u32,
) -> (Vec<PathBuf>, Vec<String>) {
    if let Some(s) = socket {
        return (vec![s.to_path_buf()], Vec::new());
    }
    let mut urls: Vec<String> = Vec::new();
    let podman = |urls: &mut Vec<String>| {
        if let Some(h) = env("PODMAN_HOST") {
            urls.push(h);
        }
        urls.push(format!("unix:///run/user/{uid}/podman/podman.sock"));
        urls.push("unix:///run/podman/podman.sock".into());
        urls.push("unix:///var/run/podman/podman.sock".into());
    };
    if preference == DockerRuntime::Podman {
        podman(&mut urls);
    }
    match env("DOCKER_HOST") {
        Some(h) => urls.push(h),
        None => urls.push("unix:///var/run/docker.sock".into()),
    }
    if let Some(h) = env("CONTAINER_HOST") {
        urls.push(h);
    }
    if preference == DockerRuntime::Auto {
        podman(&mut urls);
    }
    if preference != DockerRuntime::Podman {
        urls.push("unix:///var/run/docker.sock".into());
        // Rootless Docker.
        let runtime_dir = env("XDG_RUNTIME_DIR").unwrap_or_else(|| format!("/run/user/{uid}"));
        urls.push(format!("unix://{runtime_dir}/docker.sock"));
    }
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut notes = Vec::new();
    for u in urls {
        let u = u.trim();
        if u.is_empty() {
            continue;
        }
        match u.strip_prefix("unix://") {
            Some(p) if p.starts_with('/') => {
                let p = PathBuf::from(p);
                if !paths.contains(&p) {
                    paths.push(p);
                }
            }
            _ => notes.push(format!("{u} is not a unix:// socket; left out")),
        }
    }
    (paths, notes)
}

/// Docker or Podman, by the spec's rules (§4.6), first match wins.
pub fn detect_runtime(endpoint: &str, info: &Value, preference: DockerRuntime) -> Runtime {
    let has = |s: &str| s.to_ascii_lowercase().contains("podman");
    if has(endpoint) || endpoint.to_ascii_lowercase().contains("libpod") {
        return Runtime::Podman;
    }
    let text = |k: &str| info.get(k).and_then(Value::as_str).unwrap_or("");
    if has(text("InitBinary")) || has(text("ServerVersion")) {
        return Runtime::Podman;
    }
    let strings_in = |k: &str| -> bool {
        fn any(v: &Value, f: &dyn Fn(&str) -> bool) -> bool {
            match v {
                Value::String(s) => f(s),
                Value::Array(a) => a.iter().any(|x| any(x, f)),
                _ => false,
            }
        }
        info.get(k).is_some_and(|v| any(v, &has))
    };
    if strings_in("DriverStatus") || strings_in("SecurityOptions") {
        return Runtime::Podman;
    }
    if endpoint.to_ascii_lowercase().contains("docker") {
        return Runtime::Docker;
    }
    match preference {
        DockerRuntime::Podman => Runtime::Podman,
        _ => Runtime::Docker,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn candidate_order_follows_the_preference() {
        let env = |k: &str| match k {
            "DOCKER_HOST" => Some("unix:///srv/d.sock".to_string()),
            "CONTAINER_HOST" => Some("tcp://10.0.0.1:2375".to_string()),
            "PODMAN_HOST" => Some("unix:///srv/p.sock".to_string()),
            _ => None,
        };
        let (auto, notes) = candidates(DockerRuntime::Auto, None, &env, 1000);
        let auto: Vec<_> = auto.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            auto,
            [
                "/srv/d.sock",
                "/srv/p.sock",
                "/run/user/1000/podman/podman.sock",
                "/run/podman/podman.sock",
                "/var/run/podman/podman.sock",
                "/var/run/docker.sock",
                "/run/user/1000/docker.sock",
            ]
        );
        assert_eq!(
            notes,
            ["tcp://10.0.0.1:2375 is not a unix:// socket; left out"]
        );
        let (p, _) = candidates(DockerRuntime::Podman, None, &env, 0);
        assert_eq!(p[0], Path::new("/srv/p.sock"));
        assert!(
            !p.contains(&PathBuf::from("/var/run/docker.sock")) || p[1] == Path::new("/srv/d.sock")
        );
        let (d, _) = candidates(DockerRuntime::Docker, None, &|_| None, 0);
        assert_eq!(
            d,
            [
                PathBuf::from("/var/run/docker.sock"),
                PathBuf::from("/run/user/0/docker.sock")
            ]
        );
        let (only, _) = candidates(DockerRuntime::Auto, Some(Path::new("/x.sock")), &env, 0);
        assert_eq!(only, [PathBuf::from("/x.sock")]);
    }

    #[test]
    fn podman_is_recognised_by_the_spec_rules() {
        let docker = json!({"ServerVersion": "27.3.1", "InitBinary": "docker-init"});
        assert_eq!(
            detect_runtime("unix:///var/run/docker.sock", &docker, DockerRuntime::Auto),
            Runtime::Docker
        );
        assert_eq!(
            detect_runtime(
                "unix:///run/podman/podman.sock",
                &docker,
                DockerRuntime::Auto
            ),
            Runtime::Podman
        );
        let podman = json!({"ServerVersion": "4.9.3", "SecurityOptions": ["name=seccomp", "name=rootless"],
            "DriverStatus": [["Backing Filesystem", "extfs"], ["Podman", "yes"]]});
        assert_eq!(
            detect_runtime("unix:///srv/c.sock", &podman, DockerRuntime::Auto),
            Runtime::Podman
        );
        let plain = json!({"ServerVersion": "4.9.3"});
        assert_eq!(
            detect_runtime("unix:///srv/c.sock", &plain, DockerRuntime::Auto),
            Runtime::Docker
        );
        assert_eq!(
            detect_runtime("unix:///srv/c.sock", &plain, DockerRuntime::Podman),
            Runtime::Podman
        );
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("1.41"), Some((1, 41)));
        assert_eq!(parse_version("v1.55"), Some((1, 55)));
        assert_eq!(parse_version("x"), None);
        assert!((1, 39) < MIN_API && (1, 60).min(MAX_API) == (1, 55));
    }
}
