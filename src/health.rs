//! The local health and metrics listener (spec §5): `/healthz`, `/readyz`,
//! `/status`, `/metrics`, and `/report` (the last host report).
//!
//! Answers come from a [`Snapshot`] the main thread publishes after each
//! cycle; the listener never collects anything, never sees the token, and
//! never waits on anything but its sockets. The snapshot holds what the cycle
//! found, not text: each page is rendered by the `health` thread on the first
//! request for it and kept until the next snapshot ([`Page`]), so an agent
//! nobody asks renders nothing.
//!
//! tiny_http starts a thread for every connection it accepts and has no read
//! timeout, so it is not exposed directly. A gate thread accepts TCP
//! connections itself and keeps each in a `poll(2)` set, reading what it
//! sends, until its request head is complete (at most [`MAX_WAITING`]
//! connections holding at most [`MAX_HELD_BYTES`]; past either the oldest is
//! closed; none longer than the idle timeout; no thread each). Only then does
//! it go to one of at most [`MAX_CONNECTIONS`] relay workers, plus
//! [`PROBE_SLOTS`] kept for `/healthz` and `/readyz` (when all are busy it gets
//! an immediate 503), which relays it to tiny_http over a unix socket in a
//! private (0700) directory, with an idle timeout, a write timeout and a
//! lifetime cap. A flood of idle connections or of slow, unfinished requests
//! therefore costs a bounded number of threads, descriptors and bytes, never
//! holds a relay worker, and cannot delay a report: reports are built and sent
//! by the main thread. Only `GET` and `HEAD` are answered (others: 405).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant, SystemTime};

/// Requests served at once; more get `503` and are closed.
pub const MAX_CONNECTIONS: usize = 8;
/// Relay workers besides those, only for `GET`/`HEAD` of `/healthz` and
/// `/readyz`: a liveness probe is answered while the others are busy.
pub const PROBE_SLOTS: usize = 2;
/// Connections kept open while their request head is not complete; past this
/// the oldest is closed. Lower when the descriptor limit is low.
pub const MAX_WAITING: usize = 256;
/// The request bytes those connections may hold between them; past this the
/// oldest is closed (a real request head arrives whole, in one segment).
pub const MAX_HELD_BYTES: usize = 1024 * 1024;
/// A connection whose request head is not complete this long after it was
/// accepted is closed (Go's `ReadTimeout` in the stock agent); a relayed
/// connection that sends nothing for this long is closed.
const IDLE: Duration = Duration::from_secs(5);
/// A client that does not read its answer for this long is dropped.
const WRITE: Duration = Duration::from_secs(10);
/// No connection lives longer than this: each carries one request (answers
/// close it), which takes milliseconds; a client that trickles is cut off.
const LIFETIME: Duration = Duration::from_secs(10);
/// A request is a GET with a few headers; tiny_http would buffer a header
/// line of any length, so more than this is refused (431) before it gets there.
const MAX_REQUEST: usize = 16 * 1024;
const TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\nContent-Length: 18\r\nConnection: close\r\n\r\nrequest too large\n";
const RELAY_STACK: usize = 64 * 1024;

/// What the listener answers with, replaced whole after each cycle. The
/// pages are rendered on the first request for them, not by the cycle.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub ready: bool,
    /// `/status` and `/readyz` body (JSON, without the trailing newline).
    pub status: Arc<Page>,
    /// `/metrics` without the `process_*` families.
    pub metrics: Arc<Page>,
    /// The last host report, pretty JSON (kept by the next snapshot when
    /// that cycle built none).
    pub report: Option<Arc<Page>>,
}

/// A page rendered from what its cycle kept, on the first request for it,
/// and then answered from that text for the rest of its snapshot's life:
/// a cycle nobody asks about renders nothing.
pub struct Page {
    render: Box<dyn Fn() -> String + Send + Sync>,
    text: OnceLock<String>,
}

impl Page {
    pub fn new(render: impl Fn() -> String + Send + Sync + 'static) -> Page {
        Page {
            render: Box::new(render),
            text: OnceLock::new(),
        }
    }

    /// The page, rendered now if this is the first request for it.
    pub fn text(&self) -> &str {
        self.text.get_or_init(|| (self.render)())
    }

    /// Whether anyone has asked for the page yet.
    pub fn is_rendered(&self) -> bool {
        self.text.get().is_some()
    }
}

impl Default for Page {
    fn default() -> Page {
        Page::new(String::new)
    }
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("text", &self.text.get())
            .finish_non_exhaustive()
    }
}

/// The published snapshot, shared between the main thread and the listener.
#[derive(Debug, Default)]
pub struct Published(Mutex<Arc<Snapshot>>);

impl Published {
    pub fn set(&self, s: Snapshot) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
    }

    pub fn get(&self) -> Arc<Snapshot> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A running listener; dropping it removes its private socket directory.
pub struct Listener {
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the listener on `addr` (e.g. `127.0.0.1:9191`).
pub fn start(addr: &str, published: Arc<Published>, started: SystemTime) -> io::Result<Listener> {
    let public = TcpListener::bind(addr)?;
    // Silent connections stay in the kernel; the gate sees requests. (Best
    // effort: the poll set below bounds them where this is not available.)
    let _ = crate::sys::defer_accept(public.as_raw_fd(), IDLE.as_secs() as i32);
    let local = public.local_addr()?;
    let dir = private_dir()?;
    let sock = dir.join("http.sock");
    let server =
        tiny_http::Server::http_unix(&sock).map_err(|e| io::Error::other(e.to_string()))?;

    std::thread::Builder::new()
        .name("health".into())
        // Renders /status, /metrics and /report: flat JSON and text.
        .stack_size(128 * 1024)
        .spawn(move || {
            while let Ok(rq) = server.recv() {
                respond(rq, &published, started);
            }
        })?;

    std::thread::Builder::new()
        .name("health-gate".into())
        .stack_size(RELAY_STACK)
        .spawn(move || gate(public, sock))?;
    log::info!("health listener on http://{local} (/healthz /readyz /status /metrics /report)");
    Ok(Listener { addr: local, dir })
}

/// A connection the gate holds until its request head is complete.
struct Held {
    conn: TcpStream,
    since: Instant,
    /// What it has sent so far.
    head: Vec<u8>,
}

/// Accepts connections, holds them until their request head is complete,
/// then hands them to the relays.
fn gate(public: TcpListener, sock: PathBuf) {
    if public.set_nonblocking(true).is_err() {
        return;
    }
    let mut relays = Relays::new(sock);
    // Leave descriptors for everything else even under a low RLIMIT_NOFILE.
    let max_waiting = crate::sys::process_stats()
        .max_fds
        .map_or(MAX_WAITING, |n| {
            MAX_WAITING.min((n.saturating_sub(64) / 2) as usize).max(8)
        });
    let mut held: std::collections::VecDeque<Held> = std::collections::VecDeque::new();
    let mut held_bytes = 0usize;
    let mut buf = vec![0u8; 4096];
    loop {
        let mut fds = Vec::with_capacity(held.len() + 1);
        fds.push(public.as_raw_fd());
        fds.extend(held.iter().map(|h| h.conn.as_raw_fd()));
        // Oldest first: the front is the next to time out.
        let timeout = held
            .front()
            .map(|h| (h.since + IDLE).saturating_duration_since(Instant::now()));
        let Ok(ready) = crate::sys::poll_readable(&fds, timeout) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let mut still = std::collections::VecDeque::with_capacity(held.len());
        for (h, r) in held.drain(..).zip(ready.iter().skip(1)) {
            held_bytes -= h.head.capacity();
            // The deadline counts from accept, whatever the client sends.
            let kept = if *r {
                feed(h, &mut relays, &mut buf)
            } else {
                Some(h)
            }
            .filter(|h| h.since.elapsed() < IDLE);
            if let Some(h) = kept {
                held_bytes += h.head.capacity();
                still.push_back(h);
            }
        }
        held = still;
        shed(&mut held, &mut held_bytes, max_waiting);
        if ready[0] {
            loop {
                let conn = match public.accept() {
                    Ok((conn, _)) => conn,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // Out of descriptors (EMFILE): poll would report the
                        // listener ready again at once; back off instead of spinning.
                        log::debug!("health listener: accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        break;
                    }
                };
                if conn.set_nonblocking(true).is_err() {
                    continue;
                }
                let h = Held {
                    conn,
                    since: Instant::now(),
                    head: Vec::new(),
                };
                // With TCP_DEFER_ACCEPT a new connection usually has its
                // whole request already: relayed without a trip through poll.
                if let Some(h) = feed(h, &mut relays, &mut buf) {
                    held_bytes += h.head.capacity();
                    held.push_back(h);
                }
                shed(&mut held, &mut held_bytes, max_waiting);
            }
        }
    }
}

/// Closes the oldest held connections until at most `max` are held with at
/// most [`MAX_HELD_BYTES`] of request bytes (allocated) between them.
fn shed(held: &mut std::collections::VecDeque<Held>, bytes: &mut usize, max: usize) {
    while held.len() > max || *bytes > MAX_HELD_BYTES {
        let Some(old) = held.pop_front() else { break };
        *bytes -= old.head.capacity();
    }
}

/// Reads what a held connection has sent. Hands it to the relays once its
/// request head is complete and answers 431 when the head is too large (both
/// end the gate's part: `None`), drops it when it closes or fails, and gives
/// it back while the head is still coming.
fn feed(mut h: Held, relays: &mut Relays, buf: &mut [u8]) -> Option<Held> {
    loop {
        match h.conn.read(buf) {
            Ok(0) => return None,
            Ok(n) => {
                let from = h.head.len().saturating_sub(3);
                h.head.extend_from_slice(&buf[..n]);
                if h.head[from..].windows(4).any(|w| w == b"\r\n\r\n") {
                    relays.admit(h.conn, h.head);
                    return None;
                }
                if h.head.len() > MAX_REQUEST {
                    // A few bytes into an empty send buffer: never blocks.
                    let _ = h.conn.write_all(TOO_LARGE);
                    return None;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(h),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// Whether a request head asks `/healthz` or `/readyz` with GET or HEAD.
fn is_probe(head: &[u8]) -> bool {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, target) = (parts.next(), parts.next());
    let path = target.and_then(|t| t.split(|b| *b == b'?').next());
    matches!(method, Some(b"GET" | b"HEAD")) && matches!(path, Some(b"/healthz" | b"/readyz"))
}

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n";

/// A 0700 directory for the internal socket: systemd's RuntimeDirectory when
/// there is one, else the temporary directory.
fn private_dir() -> io::Result<PathBuf> {
    let base = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next())
                .map(PathBuf::from)
        })
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let mut rand = [0u8; 8];
    let _ = crate::sys::getrandom(&mut rand);
    let dir = base.join(format!(
        "pulse-agent-{}-{}",
        std::process::id(),
        crate::deliver::hex(&rand)
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// A connection with a complete request head, and what it has sent.
type Job = (TcpStream, Vec<u8>);

/// The relay workers: started on demand, at most [`MAX_CONNECTIONS`] plus
/// [`PROBE_SLOTS`], kept for the next connection (starting a thread per
/// scrape would cost more than the scrape).
struct Relays {
    sock: PathBuf,
    jobs: mpsc::Sender<Job>,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    busy: Arc<AtomicUsize>,
    workers: usize,
}

impl Relays {
    fn new(sock: PathBuf) -> Relays {
        let (jobs, rx) = mpsc::channel();
        Relays {
            sock,
            jobs,
            queue: Arc::new(Mutex::new(rx)),
            busy: Arc::new(AtomicUsize::new(0)),
            workers: 0,
        }
    }

    /// Hands a connection to a free worker, or answers 503 when all are
    /// busy; the last [`PROBE_SLOTS`] workers take only probes.
    fn admit(&mut self, mut tcp: TcpStream, head: Vec<u8>) {
        let busy = self.busy.load(Ordering::SeqCst);
        let limit = if is_probe(&head) {
            MAX_CONNECTIONS + PROBE_SLOTS
        } else {
            MAX_CONNECTIONS
        };
        if busy >= limit {
            // Non-blocking: a few bytes into an empty send buffer.
            let _ = tcp.write_all(BUSY);
            return;
        }
        self.busy.fetch_add(1, Ordering::SeqCst);
        if busy >= self.workers {
            let (queue, busy, sock) = (self.queue.clone(), self.busy.clone(), self.sock.clone());
            let started = std::thread::Builder::new()
                .name("health-relay".into())
                .stack_size(RELAY_STACK)
                .spawn(move || {
                    loop {
                        let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((tcp, head)) = job else { return };
                        relay(tcp, &head, &sock);
                        busy.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            match started {
                Ok(_) => self.workers += 1,
                Err(_) => {
                    // Out of threads: the connection is dropped and its slot freed.
                    self.busy.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
            }
        }
        let _ = self.jobs.send((tcp, head));
    }
}

/// Relays one connection, whose request head the gate has read, to tiny_http
/// and back, both directions in one thread, until either side closes, the
/// client is idle for [`IDLE`], sends more than [`MAX_REQUEST`], or the
/// connection reaches [`LIFETIME`].
fn relay(mut tcp: TcpStream, head: &[u8], sock: &Path) {
    if tcp.set_nonblocking(false).is_err() {
        return;
    }
    let _ = tcp.set_write_timeout(Some(WRITE));
    // Answers are written in pieces; do not let Nagle hold them back.
    let _ = tcp.set_nodelay(true);
    let Ok(mut unix) = UnixStream::connect(sock) else {
        return;
    };
    let _ = unix.set_write_timeout(Some(WRITE));
    if unix.write_all(head).is_err() {
        return;
    }
    let end = Instant::now() + LIFETIME;
    let mut last_input = Instant::now();
    let mut received = head.len();
    let mut client_done = false;
    // One request per connection: the answer gets `Connection: close` and
    // the connection ends with it.
    let mut answer = Answer {
        head_request: head.starts_with(b"HEAD "),
        ..Answer::default()
    };
    let mut out = Vec::with_capacity(16 * 1024);
    // One read carries a whole /metrics answer.
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let deadline = (last_input + IDLE).min(end);
        let Some(wait) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        let fds = if client_done {
            vec![unix.as_raw_fd()]
        } else {
            vec![unix.as_raw_fd(), tcp.as_raw_fd()]
        };
        let Ok(ready) = crate::sys::poll_readable(&fds, Some(wait)) else {
            break;
        };
        if !ready.iter().any(|r| *r) {
            break; // idle, or too old
        }
        if ready[0] {
            match unix.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.clear();
                    let done = answer.relay(&buf[..n], &mut out);
                    if tcp.write_all(&out).is_err() || done {
                        break;
                    }
                }
            }
        }
        if !client_done && ready.get(1) == Some(&true) {
            match tcp.read(&mut buf) {
                Ok(0) | Err(_) => {
                    client_done = true;
                    let _ = unix.shutdown(Shutdown::Write);
                }
                Ok(n) => {
                    received += n;
                    if received > MAX_REQUEST {
                        let _ = tcp.write_all(TOO_LARGE);
                        break;
                    }
                    last_input = Instant::now();
                    if unix.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    }
    let _ = tcp.shutdown(Shutdown::Both);
}

/// An answer relayed from tiny_http: its head gets the `Connection: close`
/// tiny_http will not write, and its end (head, then `Content-Length` bytes
/// of body, none for HEAD) ends the connection, where tiny_http would wait
/// for a next request.
#[derive(Default)]
struct Answer {
    head: Vec<u8>,
    /// Body bytes still to come, once the head has gone by.
    left: Option<usize>,
    passing: bool,
    head_request: bool,
}

impl Answer {
    /// Appends what to send for `bytes` to `out`; true once the whole answer
    /// has gone by.
    fn relay(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> bool {
        if self.passing {
            out.extend_from_slice(bytes);
            if let Some(left) = &mut self.left {
                *left = left.saturating_sub(bytes.len());
            }
        } else {
            self.head.extend_from_slice(bytes);
            let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") else {
                if self.head.len() > MAX_REQUEST {
                    // Not a head we understand: pass it on as it is.
                    out.append(&mut self.head);
                    self.passing = true;
                }
                return false;
            };
            let head = String::from_utf8_lossy(&self.head[..end]).into_owned();
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            out.extend_from_slice(&self.head[..end]);
            out.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
            let body = &self.head[end + 4..];
            out.extend_from_slice(body);
            self.left = match (length, self.head_request) {
                (_, true) => Some(0),
                (Some(n), false) => Some(n.saturating_sub(body.len())),
                // No length (not what tiny_http sends for these answers):
                // the connection ends when either side closes.
                (None, false) => None,
            };
            self.head = Vec::new();
            self.passing = true;
        }
        self.left == Some(0)
    }
}

/// The paths served; anything else is 404.
const PATHS: [&str; 5] = ["/healthz", "/readyz", "/status", "/metrics", "/report"];

fn respond(rq: tiny_http::Request, published: &Published, started: SystemTime) {
    let path = rq.url().split('?').next().unwrap_or("").to_string();
    let snap = published.get();
    let json = "application/json";
    let text = "text/plain; charset=utf-8";
    // Everything here is read-only: a POST or PUT that got 200 would tell
    // its sender something was done.
    let read = matches!(
        rq.method(),
        tiny_http::Method::Get | tiny_http::Method::Head
    );
    if !read && PATHS.contains(&path.as_str()) {
        let allow = tiny_http::Header::from_bytes("Allow", "GET, HEAD")
            .expect("invariant: static header is valid");
        let ctype = tiny_http::Header::from_bytes("Content-Type", text)
            .expect("invariant: static header is valid");
        let _ = rq.respond(
            tiny_http::Response::from_string("method not allowed\n")
                .with_status_code(405)
                .with_header(ctype)
                .with_header(allow),
        );
        return;
    }
    let (status, ctype, body): (u16, &str, String) = match path.as_str() {
        "/healthz" => (200, text, "ok".into()),
        "/readyz" => (
            if snap.ready { 200 } else { 503 },
            json,
            format!("{}\n", snap.status.text()),
        ),
        "/status" => (200, json, format!("{}\n", snap.status.text())),
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            format!(
                "{}{}",
                snap.metrics.text(),
                crate::metrics::process(started)
            ),
        ),
        "/report" => match &snap.report {
            Some(r) => (200, json, format!("{}\n", r.text())),
            None => (503, text, "no report has been built yet\n".into()),
        },
        _ => (404, text, "404 page not found\n".into()),
    };
    let header = tiny_http::Header::from_bytes("Content-Type", ctype)
        .expect("invariant: static header is valid");
    let _ = rq.respond(
        tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(header),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(head_request: bool, pieces: &[&[u8]]) -> (Vec<u8>, Vec<bool>) {
        let mut a = Answer {
            head_request,
            ..Answer::default()
        };
        let (mut out, mut done) = (Vec::new(), Vec::new());
        for p in pieces {
            done.push(a.relay(p, &mut out));
        }
        (out, done)
    }

    #[test]
    fn the_head_gets_connection_close_and_the_body_ends_the_answer() {
        let (out, done) = relay(
            false,
            &[
                b"HTTP/1.1 200 OK\r\nContent-Le",
                b"ngth: 5\r\n\r\nab",
                b"cde",
            ],
        );
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde"
        );
        assert_eq!(done, [false, false, true]);
        let (_, done) = relay(true, &[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"]);
        assert_eq!(done, [true], "HEAD: no body follows");
        let (out, done) = relay(false, &[b"HTTP/1.1 200 OK\r\n\r\nxyz", b"more"]);
        assert_eq!(done, [false, false], "no length: until a side closes");
        assert!(out.ends_with(b"xyzmore"));
    }

    #[test]
    fn probes_are_get_or_head_of_healthz_or_readyz() {
        for yes in [
            &b"GET /healthz HTTP/1.1\r\n\r\n"[..],
            b"HEAD /readyz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(is_probe(yes), "{}", String::from_utf8_lossy(yes));
        }
        for no in [
            &b"POST /healthz HTTP/1.1\r\n\r\n"[..],
            b"GET /metrics HTTP/1.1\r\n\r\n",
            b"GET /healthzz HTTP/1.1\r\n\r\n",
            b"GET /status HTTP/1.1\r\nX: /healthz\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert!(!is_probe(no), "{}", String::from_utf8_lossy(no));
        }
    }

    /// Issue 12: with every relay worker busy (here: a tiny_http that never
    /// answers), a liveness probe is still relayed, anything else gets 503.
    #[test]
    fn a_probe_is_relayed_while_every_other_relay_is_busy() {
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("pulse-probe-slots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("http.sock");
        let silent = UnixListener::bind(&sock).unwrap();
        let (asked_tx, asked) = mpsc::channel();
        std::thread::spawn(move || {
            let mut open = Vec::new();
            for mut c in silent.incoming().flatten() {
                let mut buf = [0u8; 64];
                let n = c.read(&mut buf).unwrap_or(0);
                let _ = asked_tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                open.push(c); // held, never answered
            }
        });
        let public = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut clients = Vec::new();
        let mut connect = || {
            let c = TcpStream::connect(public.local_addr().unwrap()).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            clients.push(c.try_clone().unwrap());
            (c, public.accept().unwrap().0)
        };
        let mut relays = Relays::new(sock);
        let metrics = b"GET /metrics HTTP/1.1\r\n\r\n".to_vec();
        for _ in 0..MAX_CONNECTIONS {
            let (_, server_side) = connect();
            relays.admit(server_side, metrics.clone());
        }
        for _ in 0..MAX_CONNECTIONS {
            let got = asked.recv_timeout(Duration::from_secs(3)).unwrap();
            assert!(got.starts_with("GET /metrics"), "{got}");
        }
        let (mut refused, server_side) = connect();
        relays.admit(server_side, metrics.clone());
        let mut answer = String::new();
        let _ = refused.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
        let (_, server_side) = connect();
        relays.admit(server_side, b"HEAD /healthz HTTP/1.1\r\n\r\n".to_vec());
        let got = asked
            .recv_timeout(Duration::from_secs(3))
            .expect("the probe is relayed");
        assert!(got.starts_with("HEAD /healthz"), "{got}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
