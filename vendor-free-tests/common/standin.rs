//! A loopback stand-in for the Pulse server, for the delivery tests.
//!
//! It validates like the real server (spec/pulse-protocol.md §7.1-§7.2):
//! token from `X-API-Token` (first value) or `Authorization: Bearer`, scopes,
//! the 256 KiB encoded / 1.5 MiB decoded limits, `Content-Encoding` (none or
//! gzip), JSON types (a type mismatch is a 400 `invalid_json`), a non-blank
//! hostname, and report ordering by `sequenceId` (a replay or a report of a
//! retired stream gets a 200 but is discarded). It serves lookup, config and
//! enroll as well, and the installer's uninstall call. On command it fails: any status, slow answers, connection
//! resets, redirects, or down (nothing listening on its port).
//!
//! TLS is real: a CA and a server certificate made here with rcgen.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

/// A CA and a server certificate signed by it, for `localhost` and 127.0.0.1.
pub struct Pki {
    pub ca_pem: String,
    pub leaf_der: Vec<u8>,
    pub leaf_key_der: Vec<u8>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        Pki::with_names(name, &["localhost", "127.0.0.1"])
    }

    /// As [`Pki::new`], the server certificate for `names` (the systemd
    /// guest reaches the host as `pulse.test`).
    pub fn with_names(name: &str, names: &[&str]) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let mut leaf =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        leaf.distinguished_name.push(DnType::CommonName, names[0]);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            leaf_der: leaf_cert.der().to_vec(),
            leaf_key_der: leaf_key.serialize_der(),
        }
    }

    /// One self-signed certificate, marked as a CA, that the server presents
    /// itself (what `openssl req -x509` makes); `ca_pem` is that certificate.
    pub fn self_signed(name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            leaf_der: cert.der().to_vec(),
            leaf_key_der: key.serialize_der(),
        }
    }

    /// SHA-256 of the server certificate, as `--server-fingerprint` wants it.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(&self.leaf_der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(self.leaf_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key_der.clone())),
            )
            .unwrap();
        Arc::new(cfg)
    }
}

/// How the stand-in answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Normal,
    /// Every request gets this status (with a body like the server's).
    Status(u16),
    /// Answers after this delay.
    Slow(Duration),
    /// Reads the request, then closes the connection without answering.
    Reset,
    /// 302 to this location.
    Redirect(String),
}

/// One report the stand-in received and validated.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub status: u16,
    pub doc: Option<Value>,
    /// Accepted into the host's history (not a replay, not a stale stream).
    pub accepted: bool,
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
struct State {
    mode: Option<Mode>,
    tokens: HashMap<String, Vec<String>>,
    bootstrap_tokens: HashMap<String, String>,
    reports: Vec<Received>,
    docker_reports: Vec<Received>,
    /// Docker agent IDs whose monitoring was stopped in Pulse.
    removed_docker: HashSet<String>,
    /// Token → the docker agent ID it first reported as.
    docker_bindings: HashMap<String, String>,
    /// Schema departures (unknown fields and the like) the real server would
    /// silently accept: tests assert there are none.
    schema_notes: Vec<String>,
    current_stream: Option<(String, u64)>,
    retired: HashSet<String>,
    hosts: BTreeMap<String, String>,
    settings: Option<Value>,
    config_requests: usize,
    lookup_requests: usize,
    enroll_requests: Vec<Value>,
    connections: usize,
    /// Agent ID → the token that reported as it (what "owns" it).
    owners: HashMap<String, String>,
    /// Agent IDs the installer's uninstall call removed, with its token.
    uninstalled: Vec<(String, String)>,
}

pub struct StandIn {
    pub addr: SocketAddr,
    pub pki: Pki,
    state: Arc<(Mutex<State>, Condvar)>,
    up: Arc<AtomicBool>,
    listener_gen: Arc<Mutex<u64>>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

pub const REPORT_TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

impl StandIn {
    /// Starts on an ephemeral loopback port; `REPORT_TOKEN` carries the
    /// standard install scopes.
    pub fn start() -> StandIn {
        StandIn::start_with(Pki::new("pulse-standin"))
    }

    /// Starts with the given certificates.
    pub fn start_with(pki: Pki) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let s = StandIn {
            addr,
            pki,
            state: Arc::new((Mutex::new(State::default()), Condvar::new())),
            up: Arc::new(AtomicBool::new(true)),
            listener_gen: Arc::new(Mutex::new(0)),
            open: Arc::new(Mutex::new(Vec::new())),
        };
        s.add_token(
            REPORT_TOKEN,
            &[
                "agent:report",
                "agent:config:read",
                "agent:manage",
                "docker:report",
                "kubernetes:report",
            ],
        );
        s.serve(listener);
        s
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn ca_file(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let p = dir.join("standin-ca.pem");
        std::fs::write(&p, &self.pki.ca_pem).unwrap();
        p
    }

    pub fn add_token(&self, token: &str, scopes: &[&str]) {
        self.lock()
            .tokens
            .insert(token.into(), scopes.iter().map(|s| s.to_string()).collect());
    }

    pub fn add_bootstrap_token(&self, token: &str, runtime: &str) {
        self.lock()
            .bootstrap_tokens
            .insert(token.into(), runtime.into());
        self.add_token(token, &["agent:enroll"]);
    }

    pub fn set_mode(&self, mode: Mode) {
        self.lock().mode = Some(mode);
    }

    pub fn set_settings(&self, settings: Option<Value>) {
        self.lock().settings = settings;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.0.lock().unwrap()
    }

    pub fn docker_reports(&self) -> Vec<Received> {
        self.lock().docker_reports.clone()
    }

    /// Stops monitoring a docker agent, as removing it in Pulse does.
    pub fn remove_docker_agent(&self, id: &str) {
        self.lock().removed_docker.insert(id.to_string());
    }

    /// Binds `token` to another docker agent ID, as if another host used it first.
    pub fn bind_docker_token(&self, token: &str, id: &str) {
        self.lock()
            .docker_bindings
            .insert(token.to_string(), id.to_string());
    }

    pub fn reports(&self) -> Vec<Received> {
        self.lock().reports.clone()
    }

    /// The accepted reports' sequence numbers, in arrival order.
    pub fn accepted_sequence(&self) -> Vec<(String, u64)> {
        self.lock()
            .reports
            .iter()
            .filter(|r| r.accepted)
            .filter_map(|r| r.doc.as_ref()?.get("sequenceId")?.as_str().map(split_seq))
            .flatten()
            .collect()
    }

    pub fn schema_notes(&self) -> Vec<String> {
        self.lock().schema_notes.clone()
    }

    pub fn config_requests(&self) -> usize {
        self.lock().config_requests
    }

    /// TLS connections that completed their handshake.
    pub fn connections(&self) -> usize {
        self.lock().connections
    }

    /// Makes `token` the owner of agent `id`, as its reports would.
    pub fn own_agent(&self, id: &str, token: &str) {
        self.lock().owners.insert(id.into(), token.into());
    }

    /// The (agent ID, token) of every accepted uninstall call, in order.
    pub fn uninstalled(&self) -> Vec<(String, String)> {
        self.lock().uninstalled.clone()
    }

    pub fn enroll_requests(&self) -> Vec<Value> {
        self.lock().enroll_requests.clone()
    }

    /// Waits until `pred` holds over the received reports, or `timeout`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> bool {
        self.wait_on(timeout, |st| &st.reports, pred)
    }

    /// Waits until `pred` holds for the docker reports received so far.
    pub fn wait_for_docker(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> bool {
        self.wait_on(timeout, |st| &st.docker_reports, pred)
    }

    fn wait_on(
        &self,
        timeout: Duration,
        pick: fn(&State) -> &Vec<Received>,
        pred: impl Fn(&[Received]) -> bool,
    ) -> bool {
        let (m, cv) = &*self.state;
        let deadline = Instant::now() + timeout;
        let mut st = m.lock().unwrap();
        loop {
            if pred(pick(&st)) {
                return true;
            }
            let left = match deadline.checked_duration_since(Instant::now()) {
                Some(d) => d,
                None => return false,
            };
            st = cv.wait_timeout(st, left).unwrap().0;
        }
    }

    /// Stops listening and drops every open connection: the agent sees
    /// "connection refused", as with a stopped server.
    pub fn go_down(&self) {
        self.up.store(false, Ordering::SeqCst);
        *self.listener_gen.lock().unwrap() += 1;
        // Wake the accept loop so it drops the listener.
        let _ = TcpStream::connect(self.addr);
        for c in self.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // The port is free once the accept thread has dropped the listener.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok() {
            assert!(Instant::now() < deadline, "stand-in did not go down");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Listens again on the same port.
    pub fn come_up(&self) {
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        self.up.store(true, Ordering::SeqCst);
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let cfg = self.pki.server_config();
        let state = self.state.clone();
        let up = self.up.clone();
        let gen_now = *self.listener_gen.lock().unwrap();
        let listener_gen = self.listener_gen.clone();
        let open = self.open.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if !up.load(Ordering::SeqCst) || *listener_gen.lock().unwrap() != gen_now {
                    break;
                }
                let Ok(conn) = conn else { continue };
                if let Ok(c) = conn.try_clone() {
                    open.lock().unwrap().push(c);
                }
                let cfg = cfg.clone();
                let state = state.clone();
                std::thread::spawn(move || connection(conn, cfg, state));
            }
        });
    }
}

/// `v1:<stream>:<n>` → (stream, n).
pub fn split_seq(s: &str) -> Option<(String, u64)> {
    let mut p = s.split(':');
    let (Some("v1"), Some(stream), Some(n)) = (p.next(), p.next(), p.next()) else {
        return None;
    };
    Some((stream.to_string(), n.parse().ok()?))
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn connection(tcp: TcpStream, cfg: Arc<rustls::ServerConfig>, state: Arc<(Mutex<State>, Condvar)>) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let conn = match rustls::ServerConnection::new(cfg) {
        Ok(c) => c,
        Err(_) => return,
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            return; // e.g. the client refused our certificate
        }
    }
    state.0.lock().unwrap().connections += 1;
    let mut reader = BufReader::new(tls);
    loop {
        let Some(req) = read_request(&mut reader) else {
            return;
        };
        let mode = state.0.lock().unwrap().mode.clone().unwrap_or(Mode::Normal);
        let (status, ctype, body, close) = match &mode {
            Mode::Reset => {
                let _ = reader.get_ref().sock.shutdown(Shutdown::Both);
                return;
            }
            Mode::Redirect(to) => (
                302,
                "text/plain",
                format!("redirect to {to}").into_bytes(),
                false,
            ),
            Mode::Status(s) => {
                if req.path.ends_with("/report") {
                    let doc = serde_json::from_slice(&req.body).ok();
                    record(&mut state.0.lock().unwrap(), &req, *s, doc, false);
                    state.1.notify_all();
                }
                let (ctype, body) = error_body(*s);
                (*s, ctype, body, false)
            }
            Mode::Slow(d) => {
                std::thread::sleep(*d);
                let (s, c, b) = handle(&req, &state);
                (s, c, b, false)
            }
            Mode::Normal => {
                let (s, c, b) = handle(&req, &state);
                (s, c, b, false)
            }
        };
        let close = close
            || req
                .headers
                .get("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let mut head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Mode::Redirect(to) = &mode {
            head.push_str(&format!("Location: {to}\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let w = reader.get_mut();
        if w.write_all(head.as_bytes())
            .and_then(|_| w.write_all(&body))
            .and_then(|_| w.flush())
            .is_err()
            || close
        {
            return;
        }
    }
}

fn read_request<R: BufRead>(r: &mut R) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        // The server reads the first value of a repeated header.
        headers
            .entry(k.trim().to_ascii_lowercase())
            .or_insert_with(|| v.trim().to_string());
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    // Read at most one byte past the server's limit; more is never needed.
    let limit = match path.as_str() {
        DOCKER_PATH => DOCKER_ENCODED_LIMIT,
        _ => 256 * 1024,
    };
    let mut body = vec![0u8; len.min(limit + 1)];
    r.read_exact(&mut body).ok()?;
    if len > body.len() {
        std::io::copy(&mut r.take((len - body.len()) as u64), &mut std::io::sink()).ok()?;
    }
    Some(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

/// An HTTP answer: status, content type, body.
type Answer = (u16, &'static str, Vec<u8>);

fn api_error(status: u16, code: &str, msg: &str) -> Answer {
    let body = json!({"error": msg, "code": code, "status_code": status, "timestamp": 1787410347, "details": {}});
    (status, "application/json", body.to_string().into_bytes())
}

fn error_body(status: u16) -> (&'static str, Vec<u8>) {
    match status {
        401 => ("text/plain; charset=utf-8", b"Invalid API token".to_vec()),
        403 => (
            "application/json",
            br#"{"error":"missing_scope","requiredScope":"agent:report"}"#.to_vec(),
        ),
        _ => {
            let (_, c, b) = api_error(status, "internal_error", "stand-in told to fail");
            (c, b)
        }
    }
}

fn token_of(req: &Request) -> Option<String> {
    if let Some(t) = req.headers.get("x-api-token").filter(|t| !t.is_empty()) {
        return Some(t.clone());
    }
    let a = req.headers.get("authorization")?;
    let (scheme, rest) = a.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim().to_string())
}

/// Authenticates and checks one of `scopes`; `Err` is the server's answer.
fn authorize(req: &Request, st: &State, scopes: &[&str]) -> Result<String, Answer> {
    let Some(token) = token_of(req) else {
        return Err((
            401,
            "text/plain; charset=utf-8",
            b"API token required via Authorization header or X-API-Token header".to_vec(),
        ));
    };
    let Some(have) = st.tokens.get(&token) else {
        return Err((
            401,
            "text/plain; charset=utf-8",
            b"Invalid API token".to_vec(),
        ));
    };
    if have
        .iter()
        .any(|s| s == "*" || scopes.contains(&s.as_str()))
    {
        Ok(token)
    } else {
        let body = json!({"error": "missing_scope", "requiredScope": scopes[0]});
        Err((403, "application/json", body.to_string().into_bytes()))
    }
}

const DOCKER_PATH: &str = "/api/agents/docker/report";
/// Spec §7.3: the docker report's limits.
const DOCKER_ENCODED_LIMIT: usize = 2 * 1024 * 1024;
const DOCKER_DECODED_LIMIT: usize = 10 * 1024 * 1024;

fn too_large(dimension: &str, limit: usize, actual: usize) -> Answer {
    let body = json!({"error": "Docker / Podman report exceeds the server size limit (2 MiB encoded HTTP body or 10 MiB decoded JSON)",
        "code": "report_too_large", "status_code": 413, "timestamp": 1787410347,
        "details": {"actualBytes": actual.to_string(), "dimension": dimension, "limitBytes": limit.to_string()}});
    (413, "application/json", body.to_string().into_bytes())
}

/// `POST /api/agents/docker/report`, validated as the server does (§7.3).
fn docker_report(req: &Request, st: &mut State) -> Answer {
    if req.method != "POST" {
        return api_error(405, "method_not_allowed", "Method not allowed");
    }
    let token = match authorize(req, st, &["docker:report"]) {
        Ok(t) => t,
        Err(e) => {
            record_docker(st, req, e.0, None);
            return e;
        }
    };
    let (status, doc, answer) = validate_docker(req, st, &token);
    record_docker(st, req, status, doc);
    answer
}

fn record_docker(st: &mut State, req: &Request, status: u16, doc: Option<Value>) {
    st.docker_reports
        .push(received(req, status, doc, status == 200));
}

fn validate_docker(req: &Request, st: &mut State, token: &str) -> (u16, Option<Value>, Answer) {
    if req.body.len() > DOCKER_ENCODED_LIMIT {
        let e = too_large("encoded_http_body", DOCKER_ENCODED_LIMIT, req.body.len());
        return (413, None, e);
    }
    let bad_gzip = api_error(400, "invalid_compression", "invalid gzip stream");
    let decoded = match decode_body(req, DOCKER_DECODED_LIMIT, bad_gzip) {
        Ok(d) => d,
        Err(e) => return (e.0, None, e),
    };
    if decoded.len() > DOCKER_DECODED_LIMIT {
        return (
            413,
            None,
            too_large("decoded_json", DOCKER_DECODED_LIMIT, decoded.len()),
        );
    }
    let doc: Value = match serde_json::from_slice(&decoded) {
        Ok(v) => v,
        Err(err) => return (400, None, api_error(400, "invalid_json", &err.to_string())),
    };
    let problems = super::wire::check_docker_report(&doc);
    let (type_errors, notes): (Vec<String>, Vec<String>) = problems
        .into_iter()
        .partition(|p| !p.ends_with("not in the schema") && !p.contains("blank"));
    st.schema_notes
        .extend(notes.iter().filter(|n| !n.contains("blank")).cloned());
    if !type_errors.is_empty() {
        let e = api_error(400, "invalid_json", &type_errors.join("; "));
        return (400, Some(doc), e);
    }
    let text = |p: &str| {
        doc.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string()
    };
    if text("/host/hostname").is_empty() {
        let e = api_error(400, "invalid_report", "docker report missing hostname");
        return (400, Some(doc), e);
    }
    // Identity: agent.id → host.machineId → host.hostname.
    let id = ["/agent/id", "/host/machineId", "/host/hostname"]
        .iter()
        .map(|p| text(p))
        .find(|s| !s.is_empty())
        .unwrap_or_default();
    if st.removed_docker.contains(&id) {
        let msg = format!(
            "docker agent {id:?} had monitoring stopped at 2026-08-22T14:00:00Z; remove the block in Pulse to let it report again"
        );
        return (400, Some(doc), api_error(400, "invalid_report", &msg));
    }
    match st.docker_bindings.get(token) {
        Some(bound) if *bound != id => {
            let msg = format!("API token is already in use by agent {bound:?}");
            return (400, Some(doc), api_error(400, "invalid_report", &msg));
        }
        _ => {
            st.docker_bindings.insert(token.to_string(), id.clone());
        }
    }
    let n = doc["containers"].as_array().map_or(0, Vec::len);
    let ack = json!({"success": true, "agentId": id, "containers": n, "lastSeen": "2026-08-22T14:52:23.71Z"});
    (
        200,
        Some(doc),
        (200, "application/json", ack.to_string().into_bytes()),
    )
}

fn handle(req: &Request, state: &Arc<(Mutex<State>, Condvar)>) -> Answer {
    let (m, cv) = &**state;
    let mut st = m.lock().unwrap();
    let out = match req.path.as_str() {
        "/api/agents/agent/report" | "/api/agents/host/report" => report(req, &mut st),
        DOCKER_PATH => docker_report(req, &mut st),
        "/api/agents/agent/lookup" => lookup(req, &mut st),
        "/api/agents/agent/enroll" => enroll(req, &mut st),
        "/api/agents/agent/uninstall" => uninstall(req, &mut st),
        p if p.starts_with("/api/agents/agent/") && p.ends_with("/config") => config(req, &mut st),
        _ => (404, "text/plain", b"404 page not found".to_vec()),
    };
    cv.notify_all();
    out
}

fn report(req: &Request, st: &mut State) -> Answer {
    if req.method != "POST" {
        return api_error(405, "method_not_allowed", "Method not allowed");
    }
    let token = match authorize(req, st, &["agent:report"]) {
        Ok(t) => t,
        Err(e) => {
            record(st, req, e.0, None, false);
            return e;
        }
    };
    let (status, doc, accepted, answer) = validate_report(req, st);
    if status == 200 {
        if let Some(id) = serde_json::from_slice::<Value>(&answer.2)
            .ok()
            .and_then(|a| a.get("agentId")?.as_str().map(str::to_owned))
        {
            st.owners.entry(id).or_insert(token);
        }
    }
    record(st, req, status, doc, accepted);
    answer
}

fn record(st: &mut State, req: &Request, status: u16, doc: Option<Value>, accepted: bool) {
    st.reports.push(received(req, status, doc, accepted));
}

fn received(req: &Request, status: u16, doc: Option<Value>, accepted: bool) -> Received {
    Received {
        at: Instant::now(),
        status,
        doc,
        accepted,
        headers: req.headers.clone(),
    }
}

/// The body as JSON bytes: as sent, or gunzipped (at most `limit` + 1
/// bytes, so a larger one shows as larger); `bad_gzip` for a broken stream,
/// 415 for another encoding.
fn decode_body(req: &Request, limit: usize, bad_gzip: Answer) -> Result<Vec<u8>, Answer> {
    match req
        .headers
        .get("content-encoding")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") => Ok(req.body.clone()),
        Some("gzip") => {
            let mut out = Vec::new();
            let mut d = flate2::read::GzDecoder::new(&req.body[..]).take(limit as u64 + 1);
            match d.read_to_end(&mut out) {
                Ok(_) => Ok(out),
                Err(_) => Err(bad_gzip),
            }
        }
        Some(other) => Err(api_error(
            415,
            "unsupported_encoding",
            &format!("unsupported Content-Encoding: {other}"),
        )),
    }
}

fn validate_report(req: &Request, st: &mut State) -> (u16, Option<Value>, bool, Answer) {
    if req.body.len() > 256 * 1024 {
        let e = api_error(400, "invalid_json", "http: request body too large");
        return (400, None, false, e);
    }
    let bad_gzip = api_error(415, "unsupported_encoding", "invalid gzip");
    let decoded = match decode_body(req, 1_572_864, bad_gzip) {
        Ok(d) => d,
        Err(e) => return (e.0, None, false, e),
    };
    if decoded.len() > 1_572_864 {
        let e = api_error(
            400,
            "invalid_json",
            "decompressed payload exceeds 1572864 byte limit",
        );
        return (400, None, false, e);
    }
    let doc: Value = match serde_json::from_slice(&decoded) {
        Ok(v) => v,
        Err(err) => {
            let e = api_error(400, "invalid_json", &err.to_string());
            return (400, None, false, e);
        }
    };
    // Type mismatches are decode errors for the server; unknown fields are not.
    let problems = super::wire::check_host_report(&doc);
    let (type_errors, notes): (Vec<String>, Vec<String>) = problems.into_iter().partition(|p| {
        !p.ends_with("not in the schema") && !p.contains("blank") && !p.contains("sequenceId")
    });
    st.schema_notes
        .extend(notes.iter().filter(|n| !n.contains("blank")).cloned());
    if !type_errors.is_empty() {
        let e = api_error(400, "invalid_json", &type_errors.join("; "));
        return (400, Some(doc), false, e);
    }
    let hostname = doc
        .pointer("/host/hostname")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_string();
    if hostname.is_empty() {
        let e = api_error(400, "invalid_report", "host report missing hostname");
        return (400, Some(doc), false, e);
    }
    let accepted = match doc
        .get("sequenceId")
        .and_then(Value::as_str)
        .and_then(split_seq)
    {
        None => true,
        Some((stream, n)) => {
            if st.retired.contains(&stream) {
                false
            } else {
                match &st.current_stream {
                    Some((cur, last)) if *cur == stream => {
                        if n > *last {
                            st.current_stream = Some((stream, n));
                            true
                        } else {
                            false
                        }
                    }
                    Some((cur, _)) => {
                        st.retired.insert(cur.clone());
                        st.current_stream = Some((stream, n));
                        true
                    }
                    None => {
                        st.current_stream = Some((stream, n));
                        true
                    }
                }
            }
        }
    };
    let id = ["/host/id", "/host/machineId", "/agent/id", "/host/hostname"]
        .iter()
        .find_map(|p| {
            doc.pointer(p)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .map(sanitise)
        .unwrap_or_default();
    st.hosts.insert(hostname.to_ascii_lowercase(), id.clone());
    let ack = json!({"success": true, "agentId": id, "lastSeen": "2026-08-22T14:52:22.317002541Z",
        "platform": "linux", "serverVersion": "v6.3.0"});
    (
        200,
        Some(doc),
        accepted,
        (200, "application/json", ack.to_string().into_bytes()),
    )
}

/// The server's identity sanitiser: lower case, runs of other characters → `-`.
pub fn sanitise(s: &str) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            out.push(c);
            dash = false;
        } else if !dash {
            out.push('-');
            dash = true;
        }
    }
    out.chars()
        .take(48)
        .collect::<String>()
        .trim_matches('-')
        .to_string()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?');
                out.push(h);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn lookup(req: &Request, st: &mut State) -> Answer {
    st.lookup_requests += 1;
    if let Err(e) = authorize(req, st, &["agent:report"]) {
        return e;
    }
    let Some(host) = query_param(&req.query, "hostname") else {
        return api_error(400, "missing_lookup_param", "hostname required");
    };
    match st.hosts.get(&host.to_ascii_lowercase()) {
        Some(id) => {
            let body = json!({"success": true, "agent": {"id": id, "hostname": host, "displayName": host,
                "status": "online", "connected": true, "lastSeen": "2026-08-22T14:52:22Z", "agentVersion": "v0"}});
            (200, "application/json", body.to_string().into_bytes())
        }
        None => api_error(404, "agent_not_found", "agent not found"),
    }
}

fn config(req: &Request, st: &mut State) -> Answer {
    st.config_requests += 1;
    if let Err(e) = authorize(
        req,
        st,
        &[
            "agent:config:read",
            "agent:report",
            "agent:manage",
            "settings:write",
        ],
    ) {
        return e;
    }
    let id = req
        .path
        .trim_start_matches("/api/agents/agent/")
        .trim_end_matches("/config")
        .to_string();
    if !st.hosts.values().any(|h| *h == id) {
        return api_error(404, "agent_not_found", "agent not found");
    }
    let mut cfg = serde_json::Map::new();
    let hash_input = match &st.settings {
        Some(s) => {
            cfg.insert("settings".into(), s.clone());
            format!(
                "{{\"version\":\"host-agent-config/v1\",\"settings\":{}}}",
                canonical(s)
            )
        }
        None => "{\"version\":\"host-agent-config/v1\"}".to_string(),
    };
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(hash_input.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    cfg.insert(
        "desiredConfig".into(),
        json!({"version": "host-agent-config/v1", "hash": format!("sha256:{hash}")}),
    );
    let body = json!({"success": true, "agentId": id, "config": cfg});
    (200, "application/json", body.to_string().into_bytes())
}

/// Compact JSON with sorted keys (serde_json's maps are sorted already).
fn canonical(v: &Value) -> String {
    v.to_string()
}

/// `POST /api/agents/agent/uninstall` `{"agentId":"ID"}` (the installer's
/// `--uninstall`): 405 for another method, the token checks, 400 for a body
/// that is not that JSON, 403 when the token does not own the agent (it
/// never reported as it), else 200 `{"success":true}`, recorded.
fn uninstall(req: &Request, st: &mut State) -> Answer {
    if req.method != "POST" {
        return api_error(405, "method_not_allowed", "Method not allowed");
    }
    let token = match authorize(req, st, &["agent:report", "agent:manage"]) {
        Ok(t) => t,
        Err(e) => return e,
    };
    let id = match serde_json::from_slice::<Value>(&req.body) {
        Ok(v) => match v.get("agentId").and_then(Value::as_str) {
            Some(id) if !id.trim().is_empty() => id.to_string(),
            _ => return api_error(400, "invalid_json", "agentId is required"),
        },
        Err(e) => return api_error(400, "invalid_json", &e.to_string()),
    };
    if st.owners.get(&id) != Some(&token) {
        return api_error(403, "forbidden", "token does not own this agent");
    }
    st.uninstalled.push((id, token));
    (200, "application/json", br#"{"success":true}"#.to_vec())
}

fn enroll(req: &Request, st: &mut State) -> Answer {
    if req.method != "POST" {
        return api_error(405, "method_not_allowed", "Method not allowed");
    }
    let token = match authorize(req, st, &["agent:enroll"]) {
        Ok(t) => t,
        Err(e) => return e,
    };
    let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
    st.enroll_requests.push(body.clone());
    let Some(runtime) = st.bootstrap_tokens.remove(&token) else {
        return api_error(409, "token_already_consumed", "token already consumed");
    };
    let host = body
        .get("hostname")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if host.is_empty() {
        return api_error(400, "missing_hostname", "missing hostname");
    }
    st.tokens.insert(
        runtime.clone(),
        vec!["agent:report".into(), "agent:config:read".into()],
    );
    let out = json!({"agentId": format!("agent-{host}"), "runtimeToken": runtime, "runtimeTokenId": "rt-1", "reportInterval": "30s"});
    (200, "application/json", out.to_string().into_bytes())
}
