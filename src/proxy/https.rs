//! HTTPS mode (spec §12): `GET /temps?node=<name>` and `GET /health` for a
//! Pulse that cannot reach the Unix socket, behind TLS and a bearer token.
//!
//! TLS is rustls with the ring provider: TLS 1.2 and 1.3, rustls' default
//! cipher suites and key-exchange groups (all AEAD with forward secrecy; the
//! stock proxy's list of four ECDHE-GCM suites is a subset of them), ALPN
//! `http/1.1` only. Certificate chain and key are PEM files (read at start,
//! at most 1 MiB each).
//!
//! HTTP is a minimal HTTP/1.1 reader of our own (tiny_http's TLS features
//! would pull an old rustls): one request per connection, answered with
//! `Connection: close`; the request head must fit [`MAX_HEAD`] (16 KiB, where
//! the stock proxy allows 1 MiB: a real request is a few hundred bytes) and
//! arrive, TLS handshake included, within `read_timeout`; the answer must be
//! written within `write_timeout`. A request body is never read. A client
//! that speaks plain HTTP to the port gets Go's one-line 400 and is closed.
//!
//! Threads: an accept thread (`https`) hands connections to [`WORKERS`]
//! workers; when all are busy, a connection goes to one more thread that
//! only answers 503 `server busy` (its queue is short; past it, connections
//! are closed at once). A slow or silent client therefore holds one worker
//! for at most `read_timeout + write_timeout` plus the backend's time and a
//! 1 s lingering close (what it still sends is read and dropped, so the close
//! does not reset the connection under the answer).
//!
//! Per request, in the stock middleware order: source IP
//! ([`Backend::source_allowed`], 403) → rate limiter under a synthetic UID
//! per client IP ([`synthetic_uid`], 429/503) → bearer token (constant-time,
//! 401) → route. An answer of 400 or more other than 429, given after the
//! limiter admitted the request, is penalised (`http_error`): the limiter
//! slots are released, then [`Backend::penalize`] runs (it may sleep), then
//! the answer goes out. `http_request` audit events are written where the
//! stock proxy writes them: the source-IP, limiter and token refusals and a
//! successful `/temps`.
//!
//! The limiter and validator record their own metrics (as on the socket);
//! this listener adds its read and write timeouts to
//! `pulse_proxy_{read,write}_timeouts_total`.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::proxy::audit::Event;
use crate::proxy::metrics::Metrics;

/// Largest request head (request line and headers) read.
pub const MAX_HEAD: usize = 16 * 1024;
/// Requests handled at once.
pub const WORKERS: usize = 4;
/// Connections waiting for their 503 while every worker is busy.
const OVERFLOW_QUEUE: usize = 8;
/// How long the 503 answerer gives a connection (handshake and head).
const BUSY_WAIT: Duration = Duration::from_secs(2);
/// A TLS handshake (RSA-4096 signing, in a debug build too) fits easily.
const STACK: usize = 512 * 1024;
/// The text [`Backend::temperature`] returns when the per-node gate gave up
/// (answered 503; any other error is a 500).
pub const NODE_BUSY: &str = "request cancelled while waiting for node";

/// What the HTTPS listener asks of the rest of the daemon.
pub trait Backend: Send + Sync {
    /// Source IP allowed? (`allowed_source_subnets`)
    fn source_allowed(&self, ip: IpAddr) -> bool;
    /// Rate limiter for a synthetic peer key; `Err(reason)` when rejected
    /// (`rate`, `global_concurrency`, `peer_concurrency`; any other reason
    /// answers 503 `rate limiter not available`). The guard releases the
    /// slots on drop.
    fn admit(&self, synthetic_uid: u32) -> Result<Box<dyn Send>, &'static str>;
    /// The penalty after a failed request (may sleep; records its metric).
    fn penalize(&self, synthetic_uid: u32, reason: &str);
    /// Node-name syntax (spec §6 `validateNodeName`); false answers 400.
    fn valid_node_name(&self, node: &str) -> bool;
    /// The node validator (SSRF guard); `Err` answers 403 `node not allowed`.
    fn validate_node(&self, node: &str) -> Result<(), String>;
    /// The SSH fetch through the per-node gate; `Err` text is the error
    /// body: `failed to get temperatures: ...` (500) or [`NODE_BUSY`] (503).
    fn temperature(&self, node: &str) -> Result<String, String>;
    /// Writes an audit event.
    fn audit(&self, event: Event);
}

/// The limiter key of an HTTP client (spec §4): a 31-multiplier hash of the
/// IP's text, wrapping, mapped into `100000..1000000`.
pub fn synthetic_uid(ip: &str) -> u32 {
    let h = ip
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    100_000 + h % 900_000
}

/// The listener's configuration (`http_*`, `read_timeout`, `write_timeout`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub token: String,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

/// Why the listener did not start.
#[derive(Debug)]
pub enum Error {
    Cert(PathBuf, String),
    Key(PathBuf, String),
    /// `http_auth_token` is empty.
    NoToken,
    Tls(String),
    Listen(String, io::Error),
    Thread(io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Cert(p, e) => write!(f, "TLS certificate {}: {e}", p.display()),
            Error::Key(p, e) => write!(f, "TLS key {}: {e}", p.display()),
            Error::NoToken => f.write_str("HTTP mode needs an auth token"),
            Error::Tls(e) => write!(f, "TLS configuration: {e}"),
            Error::Listen(a, e) => write!(f, "listen on {a}: {e}"),
            Error::Thread(e) => write!(f, "start thread: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// Starts the HTTPS listener; returns the accept thread.
pub fn serve(
    settings: Settings,
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
) -> Result<JoinHandle<()>, Error> {
    if settings.token.is_empty() {
        return Err(Error::NoToken);
    }
    let tls = tls_config(&settings.cert, &settings.key)?;
    let listener = TcpListener::bind(&settings.listen)
        .map_err(|e| Error::Listen(settings.listen.clone(), e))?;
    if let Ok(a) = listener.local_addr() {
        log::info!("HTTPS listener on https://{a} (/temps /health)");
    }
    let server = Server {
        tls,
        token: Sha256::digest(settings.token.as_bytes()).into(),
        backend,
        metrics,
        read_timeout: settings.read_timeout,
        write_timeout: settings.write_timeout,
    };
    let work = move |conn, busy| server.connection(conn, busy);
    pool(listener, "https", WORKERS, STACK, Arc::new(work)).map_err(Error::Thread)
}

fn read_pem(path: &Path) -> io::Result<Vec<u8>> {
    let mut pem = Vec::new();
    std::fs::File::open(path)?
        .take(1024 * 1024)
        .read_to_end(&mut pem)?;
    Ok(pem)
}

fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, Error> {
    let bad_cert = |e: String| Error::Cert(cert.into(), e);
    let pem = read_pem(cert).map_err(|e| bad_cert(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_cert(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad_cert("holds no certificate".into()));
    }
    let pem = read_pem(key).map_err(|e| Error::Key(key.into(), e.to_string()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| Error::Key(key.into(), format!("no PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

struct Server {
    tls: Arc<rustls::ServerConfig>,
    /// SHA-256 of the token: compared with the offered token's digest, so
    /// the comparison takes the same time whatever is offered.
    token: [u8; 32],
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    read_timeout: Duration,
    write_timeout: Duration,
}

/// Go's answer to plain HTTP on a TLS port.
const PLAIN_HTTP: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

fn error_body(text: &str) -> String {
    serde_json::json!({ "error": text }).to_string() + "\n"
}

impl Server {
    /// Handshake, one request, one answer; `busy` answers 503.
    fn connection(&self, sock: TcpStream, busy: bool) {
        // Go reports a v4-mapped address as IPv4: same audit text, same key.
        let remote = sock
            .peer_addr()
            .ok()
            .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()));
        let wait = if busy {
            self.read_timeout.min(BUSY_WAIT)
        } else {
            self.read_timeout
        };
        let mut sock = Timed::new(sock, Instant::now() + wait);
        match sock.first_byte() {
            Ok(0x16) => {} // a TLS handshake record
            Ok(b) => {
                if b.is_ascii_alphabetic() {
                    sock.until = Instant::now() + self.write_timeout;
                    let _ = sock.write_all(PLAIN_HTTP);
                }
                return sock.close();
            }
            Err(e) => return self.failed(&e, true),
        }
        let Ok(tls) = rustls::ServerConnection::new(self.tls.clone()) else {
            return;
        };
        let mut s = rustls::StreamOwned::new(tls, sock);
        let (status, body) = match read_head(&mut s) {
            Ok(_) if busy => (503, error_body("server busy")),
            Ok(head) => self.answer(&head, remote),
            Err(HeadError::Io(e)) => return self.failed(&e, true),
            Err(HeadError::TooLarge) => (431, error_body("request header too large")),
            Err(HeadError::Malformed(_)) => (400, error_body("bad request")),
        };
        s.sock.until = Instant::now() + self.write_timeout;
        let sent =
            write_response(&mut s, status, "application/json", body.as_bytes()).and_then(|()| {
                s.conn.send_close_notify();
                s.flush()
            });
        if let Err(e) = sent {
            self.failed(&e, false);
        }
        s.sock.close();
    }

    fn failed(&self, e: &io::Error, reading: bool) {
        if e.kind() == io::ErrorKind::TimedOut {
            if reading {
                self.metrics.read_timeout();
            } else {
                self.metrics.write_timeout();
            }
        }
    }

    /// The middleware chain and the routes: status and JSON body.
    fn answer(&self, head: &Head, remote: Option<SocketAddr>) -> (u16, String) {
        let audit = |status: u16, reason: &str| {
            self.backend.audit(Event {
                event_type: "http_request",
                remote_addr: remote.map(|a| a.to_string()).unwrap_or_default(),
                command: head.method.clone(),
                target: head.path().into(),
                exit_code: Some(i64::from(status)),
                reason: reason.into(),
                ..Event::default()
            })
        };
        let Some(remote) = remote else {
            audit(403, "invalid_source_ip");
            return (403, error_body("invalid source IP"));
        };
        if !self.backend.source_allowed(remote.ip()) {
            log::warn!(
                "HTTP request from unauthorized source IP {} ({})",
                remote.ip(),
                head.path()
            );
            audit(403, "source_ip_not_allowed");
            return (403, error_body("source IP not allowed"));
        }
        let uid = synthetic_uid(&remote.ip().to_string());
        let guard = match self.backend.admit(uid) {
            Ok(g) => g,
            Err(reason @ ("rate" | "global_concurrency" | "peer_concurrency")) => {
                log::warn!("HTTP rate limit exceeded: {} ({reason})", remote.ip());
                audit(429, &format!("rate_limit_{reason}"));
                return (429, error_body("rate limit exceeded"));
            }
            Err(_) => return (503, error_body("rate limiter not available")),
        };
        let (status, body) = self.route(head, &audit);
        if status >= 400 && status != 429 {
            drop(guard);
            self.backend.penalize(uid, "http_error");
        }
        (status, body)
    }

    /// Bearer auth, then `/temps` and `/health`.
    fn route(&self, head: &Head, audit: &dyn Fn(u16, &str)) -> (u16, String) {
        let refuse = |why: &str, text: &str| {
            audit(401, why);
            (401, error_body(text))
        };
        let token = match head.header("authorization").map(bearer) {
            None => return refuse("missing_auth_header", "missing authorization header"),
            Some(None) => return refuse("invalid_auth_format", "invalid authorization format"),
            Some(Some(token)) => token,
        };
        let offered: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if offered
            .iter()
            .zip(&self.token)
            .fold(0, |d, (a, b)| d | (a ^ b))
            != 0
        {
            return refuse("invalid_token", "invalid token");
        }
        let path = head.path();
        if !matches!(path, "/temps" | "/health") {
            return (404, error_body("404 page not found"));
        }
        if head.method != "GET" {
            return (405, error_body("method not allowed"));
        }
        if path == "/health" {
            let ok = serde_json::json!({"status": "ok", "version": crate::proxy::version()});
            return (200, format!("{ok}\n"));
        }
        let node = query_param(head.query(), "node").unwrap_or_default();
        if node.is_empty() {
            return (400, error_body("missing 'node' query parameter"));
        }
        // Not UTF-8: not a node name either.
        let node = String::from_utf8(node).unwrap_or_default();
        let node = node.trim();
        if !self.backend.valid_node_name(node) {
            return (400, error_body("invalid node name format"));
        }
        if let Err(e) = self.backend.validate_node(node) {
            log::warn!("node validation failed for {node:?}: {e}");
            return (403, error_body("node not allowed"));
        }
        match self.backend.temperature(node) {
            Ok(t) => {
                audit(200, "temperature_success");
                let ok = serde_json::json!({"node": node, "temperature": t});
                (200, format!("{ok}\n"))
            }
            Err(e) if e == NODE_BUSY => (503, error_body(&e)),
            Err(e) => {
                log::warn!("HTTP temperature request for {node}: {e}");
                (500, error_body(&e))
            }
        }
    }
}

/// The token of an `Authorization` value `Bearer <token>` (Go: split at the
/// first space, the scheme exactly `Bearer`).
pub fn bearer(value: &str) -> Option<&str> {
    match value.split_once(' ') {
        Some(("Bearer", token)) => Some(token),
        _ => None,
    }
}

/// A request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The request target as sent (`/path?query`).
    pub target: String,
    /// Names as sent, values trimmed of spaces and tabs.
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    /// The first header called `name` (any case) with a non-empty value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// Why no request head was read.
#[derive(Debug)]
pub enum HeadError {
    /// Longer than [`MAX_HEAD`] (431).
    TooLarge,
    /// Not an HTTP/1.x request head (400).
    Malformed(&'static str),
    /// The connection failed, timed out or closed first.
    Io(io::Error),
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a request head: the request line and the header lines up to the
/// blank line (CRLF or bare LF line ends).
pub fn parse_head(bytes: &[u8]) -> Result<Head, HeadError> {
    let bad = HeadError::Malformed;
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
    // Only whole lines: a last piece without its line end is not one.
    let mut lines = text
        .split_inclusive('\n')
        .map_while(|l| l.strip_suffix('\n'))
        .map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("request line"));
    };
    if !is_token(method) || !target.starts_with('/') || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
    {
        return Err(bad("request line"));
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            return Ok(Head {
                method: method.into(),
                target: target.into(),
                headers,
            });
        }
        let (k, v) = line.split_once(':').ok_or(bad("header line"))?;
        if !is_token(k) {
            return Err(bad("header name"));
        }
        headers.push((k.into(), v.trim_matches([' ', '\t']).into()));
    }
    Err(bad("no blank line"))
}

/// Reads a request head (what follows it stays unread or is dropped).
pub fn read_head(r: &mut impl Read) -> Result<Head, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HeadError::Io(e)),
        };
        let from = buf.len().saturating_sub(2);
        buf.extend_from_slice(&chunk[..n]);
        let end = buf[from..]
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .find_map(|(i, _)| {
                let rest = &buf[from + i + 1..];
                match rest {
                    [b'\n', ..] => Some(from + i + 2),
                    [b'\r', b'\n', ..] => Some(from + i + 3),
                    _ => None,
                }
            });
        match end {
            Some(end) if end <= MAX_HEAD => return parse_head(&buf[..end]),
            Some(_) => return Err(HeadError::TooLarge),
            None if buf.len() > MAX_HEAD => return Err(HeadError::TooLarge),
            None => {}
        }
    }
}

/// The first value of `key` in a query string, percent-decoded with `+` as
/// space (Go's `URL.Query().Get`: pairs with a `;` or a bad escape are
/// skipped).
pub fn query_param(query: &str, key: &str) -> Option<Vec<u8>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.contains(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (unescape(k)?, unescape(v)?);
            (k == key.as_bytes()).then_some(v)
        })
}

fn unescape(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
            }
            b => b,
        });
    }
    Some(out)
}

/// Writes a whole answer with `Connection: close`.
pub(crate) fn write_response(
    w: &mut impl Write,
    status: u16,
    ctype: &str,
    body: &[u8],
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    w.write_all(&out)?;
    w.flush()
}

/// A TCP stream whose reads and writes all end by one deadline.
pub(crate) struct Timed {
    pub sock: TcpStream,
    pub until: Instant,
}

impl Timed {
    pub fn new(sock: TcpStream, until: Instant) -> Timed {
        Timed { sock, until }
    }

    fn left(&self) -> io::Result<Duration> {
        self.until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::ErrorKind::TimedOut.into())
    }

    /// The first byte the client sends, left unread.
    fn first_byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8];
        self.sock.set_read_timeout(Some(self.left()?))?;
        match self.sock.peek(&mut b).map_err(timed_out)? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            _ => Ok(b[0]),
        }
    }
}

impl Timed {
    /// Ends the connection after an answer: our side shut, then what the
    /// client still sends read and dropped (up to 64 KiB, 1 s) so that the
    /// close does not reset the connection and lose the answer in flight.
    pub fn close(mut self) {
        let _ = self.sock.shutdown(Shutdown::Write);
        self.until = self.until.min(Instant::now() + Duration::from_secs(1));
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            if !matches!(self.read(&mut buf), Ok(n) if n > 0) {
                break;
            }
        }
    }
}

/// `SO_RCVTIMEO`/`SO_SNDTIMEO` expiry shows as `WouldBlock`.
fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::ErrorKind::TimedOut.into()
    } else {
        e
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.set_read_timeout(Some(self.left()?))?;
        self.sock.read(buf).map_err(timed_out)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.set_write_timeout(Some(self.left()?))?;
        self.sock.write(buf).map_err(timed_out)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a pool thread does with a connection; `true`: answer "busy".
pub(crate) type Work = Arc<dyn Fn(TcpStream, bool) + Send + Sync>;

/// Accepts on `listener` in a thread called `name` and hands each connection
/// to one of `workers` threads; when all are busy, to one more thread that
/// answers "busy" (a short queue; past it the connection is closed).
pub(crate) fn pool(
    listener: TcpListener,
    name: &str,
    workers: usize,
    stack: usize,
    work: Work,
) -> io::Result<JoinHandle<()>> {
    let thread = || {
        std::thread::Builder::new()
            .name(format!("{name}-worker"))
            .stack_size(stack)
    };
    let (tx, rx) = mpsc::channel::<TcpStream>();
    let rx = Arc::new(Mutex::new(rx));
    // Connections handed to workers and not finished; only the accept
    // thread adds, so a connection is sent only when a worker is free.
    let taken = Arc::new(AtomicUsize::new(0));
    for _ in 0..workers {
        let (rx, taken, work) = (rx.clone(), taken.clone(), work.clone());
        thread().spawn(move || {
            loop {
                let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok(conn) = next else { return };
                work(conn, false);
                taken.fetch_sub(1, Ordering::SeqCst);
            }
        })?;
    }
    let (over, over_rx) = mpsc::sync_channel::<TcpStream>(OVERFLOW_QUEUE);
    thread().spawn(move || {
        for conn in over_rx {
            work(conn, true);
        }
    })?;
    let name = name.to_string();
    std::thread::Builder::new()
        .name(name.clone())
        .stack_size(stack)
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(conn) if taken.load(Ordering::SeqCst) < workers => {
                        taken.fetch_add(1, Ordering::SeqCst);
                        let _ = tx.send(conn);
                    }
                    // Full too: dropped, which closes it.
                    Ok(conn) => drop(over.try_send(conn)),
                    Err(e) => {
                        // Out of descriptors: back off instead of spinning.
                        log::debug!("{name} listener: accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_uid_matches_the_go_hash() {
        // h("1") = 49; h("10") = 49*31+48 = 1567.
        assert_eq!(synthetic_uid("1"), 100_049);
        assert_eq!(synthetic_uid("10"), 101_567);
        assert_eq!(synthetic_uid(""), 100_000);
        let u = synthetic_uid("2001:db8::1234:5678:9abc:def0");
        assert!((100_000..1_000_000).contains(&u));
    }

    #[test]
    fn query_values_decode_like_go() {
        let q = |s: &str| query_param(s, "node").map(|v| String::from_utf8(v).unwrap());
        assert_eq!(q("node=pve1"), Some("pve1".into()));
        assert_eq!(q("a=1&node=pve%2D1+x&node=second"), Some("pve-1 x".into()));
        assert_eq!(
            q("node=%zz&node=ok"),
            Some("ok".into()),
            "bad escape skipped"
        );
        assert_eq!(
            q("node=a;b&node=ok"),
            Some("ok".into()),
            "semicolon pair skipped"
        );
        assert_eq!(q("node"), Some(String::new()));
        assert_eq!(q("nodes=x"), None);
        assert_eq!(q("node=%4"), None);
    }

    #[test]
    fn bearer_wants_the_exact_scheme() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("Bearer  abc"), Some(" abc"));
        assert_eq!(bearer("bearer abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Basic abc"), None);
    }

    #[test]
    fn request_heads() {
        let h = parse_head(
            b"GET /temps?node=a HTTP/1.1\r\nHost: x\r\nAuthorization:  Bearer t \r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (h.method.as_str(), h.path(), h.query()),
            ("GET", "/temps", "node=a")
        );
        assert_eq!(h.header("AUTHORIZATION"), Some("Bearer t"));
        assert!(parse_head(b"GET /x HTTP/1.0\n\n").is_ok(), "bare LF");
        for bad in [
            &b"GET /x\r\n\r\n"[..],
            b"GET  /x HTTP/1.1\r\n\r\n",
            b"GET x HTTP/1.1\r\n\r\n",
            b"GET /x HTTP/2.0\r\n\r\n",
            b"GET /x HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET /x HTTP/1.1\r\nbad name: v\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: x\r\n",
            b"G\xffT /x HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(bad), Err(HeadError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn read_head_stops_at_the_blank_line_and_the_size_cap() {
        let mut r: &[u8] = b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody";
        assert_eq!(read_head(&mut r).unwrap().headers.len(), 1);
        let big = format!("GET / HTTP/1.1\r\nA: {}\r\n\r\n", "x".repeat(MAX_HEAD));
        assert!(matches!(
            read_head(&mut big.as_bytes()),
            Err(HeadError::TooLarge)
        ));
        let mut cut: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(matches!(read_head(&mut cut), Err(HeadError::Io(_))));
    }
}
