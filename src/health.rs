//! The local health and metrics listener (spec §5): `/healthz`, `/readyz`,
//! `/status`, `/metrics`, and `/report` (the last host report).
//!
//! Answers come from a [`Snapshot`] the main thread publishes after each
//! cycle; the listener never collects anything, never sees the token, and
//! never waits on anything but its sockets.
//!
//! tiny_http starts a thread for every connection it accepts and has no read
//! timeout, so it is not exposed directly. A gate thread accepts TCP
//! connections itself and keeps the ones that have not sent anything yet in a
//! `poll(2)` set (at most [`MAX_WAITING`], none for longer than the idle
//! timeout; no thread each). A connection that sends a request gets one of
//! [`MAX_CONNECTIONS`] relay slots (when all are busy it gets an immediate
//! 503) and is relayed to tiny_http over a unix socket in a private (0700)
//! directory, with an idle timeout, a write timeout and a lifetime cap. A
//! flood of idle or slow connections therefore costs a bounded number of
//! threads, descriptors and bytes, leaves the slots to clients that ask
//! something, and cannot delay a report: reports are built and sent by the
//! main thread.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Connections served at once; more get `503` and are closed.
pub const MAX_CONNECTIONS: usize = 8;
/// Connections kept open while they have not sent anything; past this the
/// oldest is closed.
pub const MAX_WAITING: usize = 256;
/// A connection that sends nothing for this long is closed.
const IDLE: Duration = Duration::from_secs(5);
/// A client that does not read its answer for this long is dropped.
const WRITE: Duration = Duration::from_secs(10);
/// No connection lives longer than this, however it trickles.
const LIFETIME: Duration = Duration::from_secs(60);
const RELAY_STACK: usize = 64 * 1024;

/// What the listener answers with, replaced whole after each cycle.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub ready: bool,
    /// `/status` and `/readyz` body (JSON, without the trailing newline).
    pub status: String,
    /// `/metrics` without the `process_*` families.
    pub metrics: String,
    /// The last host report, pretty JSON.
    pub report: Option<Arc<String>>,
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
    let local = public.local_addr()?;
    let dir = private_dir()?;
    let sock = dir.join("http.sock");
    let server =
        tiny_http::Server::http_unix(&sock).map_err(|e| io::Error::other(e.to_string()))?;

    std::thread::Builder::new()
        .name("health".into())
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

/// Accepts connections, holds the silent ones, relays the ones that speak.
fn gate(public: TcpListener, sock: PathBuf) {
    if public.set_nonblocking(true).is_err() {
        return;
    }
    let active = Arc::new(AtomicUsize::new(0));
    let mut waiting: std::collections::VecDeque<(TcpStream, Instant)> =
        std::collections::VecDeque::new();
    loop {
        let mut fds = Vec::with_capacity(waiting.len() + 1);
        fds.push(public.as_raw_fd());
        fds.extend(waiting.iter().map(|(c, _)| c.as_raw_fd()));
        let timeout = waiting
            .front()
            .map(|(_, at)| (*at + IDLE).saturating_duration_since(Instant::now()));
        let Ok(ready) = crate::sys::poll_readable(&fds, timeout) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        // Hand over (or refuse) the connections that have something to say.
        let mut still = std::collections::VecDeque::with_capacity(waiting.len());
        for ((conn, at), r) in waiting.drain(..).zip(ready.iter().skip(1)) {
            if !*r {
                if at.elapsed() < IDLE {
                    still.push_back((conn, at));
                }
                continue;
            }
            admit(conn, &active, &sock);
        }
        waiting = still;
        if ready[0] {
            while let Ok((conn, _)) = public.accept() {
                if waiting.len() >= MAX_WAITING {
                    waiting.pop_front();
                }
                waiting.push_back((conn, Instant::now()));
            }
        }
    }
}

fn admit(mut tcp: TcpStream, active: &Arc<AtomicUsize>, sock: &Path) {
    if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
        let _ = tcp.set_write_timeout(Some(Duration::from_millis(200)));
        let _ = tcp.write_all(BUSY);
        return;
    }
    active.fetch_add(1, Ordering::SeqCst);
    let slot = active.clone();
    let sock = sock.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("health-conn".into())
        .stack_size(RELAY_STACK)
        .spawn(move || {
            relay(tcp, &sock);
            slot.fetch_sub(1, Ordering::SeqCst);
        });
    if spawned.is_err() {
        // Out of threads: the connection is dropped and its slot freed.
        active.fetch_sub(1, Ordering::SeqCst);
    }
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

/// Relays one admitted connection to tiny_http and back.
fn relay(tcp: TcpStream, sock: &Path) {
    let _ = tcp.set_read_timeout(Some(IDLE));
    let _ = tcp.set_write_timeout(Some(WRITE));
    let Ok(unix) = UnixStream::connect(sock) else {
        return;
    };
    let _ = unix.set_write_timeout(Some(WRITE));
    let (Ok(mut tcp_back), Ok(mut unix_back)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let back = std::thread::Builder::new()
        .name("health-back".into())
        .stack_size(RELAY_STACK)
        .spawn(move || {
            let _ = pump(&mut unix_back, &mut tcp_back, None);
            let _ = tcp_back.shutdown(Shutdown::Both);
        });
    let (mut tcp, mut unix) = (tcp, unix);
    let _ = pump(&mut tcp, &mut unix, Some(Instant::now() + LIFETIME));
    let _ = unix.shutdown(Shutdown::Both);
    let _ = tcp.shutdown(Shutdown::Both);
    if let Ok(h) = back {
        let _ = h.join();
    }
}

/// Copies until end of stream, an error (including a timeout), or `until`.
fn pump(from: &mut impl Read, to: &mut impl Write, until: Option<Instant>) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        if until.is_some_and(|t| Instant::now() >= t) {
            return Ok(());
        }
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}

fn respond(rq: tiny_http::Request, published: &Published, started: SystemTime) {
    let path = rq.url().split('?').next().unwrap_or("").to_string();
    let snap = published.get();
    let json = "application/json";
    let text = "text/plain; charset=utf-8";
    let (status, ctype, body): (u16, &str, String) = match path.as_str() {
        "/healthz" => (200, text, "ok".into()),
        "/readyz" => (
            if snap.ready { 200 } else { 503 },
            json,
            format!("{}\n", snap.status),
        ),
        "/status" => (200, json, format!("{}\n", snap.status)),
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            format!("{}{}", snap.metrics, crate::metrics::process(started)),
        ),
        "/report" => match &snap.report {
            Some(r) => (200, json, format!("{r}\n")),
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
