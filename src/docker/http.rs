//! A small HTTP/1.1 client over a Unix socket: what the Docker Engine API
//! needs and nothing more.
//!
//! One request at a time per connection, `Content-Length`, chunked and
//! close-delimited bodies, keep-alive when the server allows it. Every read
//! and write is bounded by the request's deadline (recomputed before each
//! syscall, so a peer that trickles one byte a second still ends at the
//! deadline), and the body by a size cap that is checked before the bytes
//! are read: a 100 MB answer costs a few KiB of memory, not 100 MB.
//!
//! What it will not do: follow redirects, speak TLS or TCP, decode gzip, or
//! accept a header block larger than [`MAX_HEAD`].

use std::fmt;
use std::io::{self, BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// A status line plus headers larger than this is not an Engine API answer.
pub const MAX_HEAD: usize = 64 * 1024;
/// The `Host` header the Docker client sends over a Unix socket.
const HOST: &str = "api.moby.localhost";

#[derive(Debug)]
pub enum Error {
    /// The socket could not be reached.
    Connect(io::Error),
    /// The deadline passed.
    Timeout,
    /// The body is larger than the cap.
    TooLarge(u64),
    /// The peer closed or reset the connection, or another I/O error.
    Io(io::Error),
    /// Not an HTTP/1.x answer.
    Malformed(String),
}

impl Error {
    /// The connection failed before any byte of the answer: worth one retry
    /// on a fresh connection when the old one came from the idle pool.
    pub fn is_stale_connection(&self) -> bool {
        matches!(self, Error::Io(e) if matches!(e.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "cannot connect: {e}"),
            Error::Timeout => f.write_str("no complete answer before the deadline"),
            Error::TooLarge(cap) => write!(f, "answer larger than {cap} bytes"),
            Error::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                f.write_str("connection closed before the answer was complete")
            }
            Error::Io(e) => write!(f, "{e}"),
            Error::Malformed(why) => write!(f, "not an HTTP answer: {why}"),
        }
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a connection talks over: the engine's Unix socket, or an answer
/// held in memory ([`parse_response`]).
pub trait Transport: io::Read + io::Write {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl Transport for UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, timeout)
    }
}

/// An answer in memory: reads give its bytes, then end of file; what is
/// written (the request) is dropped.
pub struct Recorded(io::Cursor<Vec<u8>>);

impl io::Read for Recorded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl io::Write for Recorded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Recorded {
    fn set_read_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
    fn set_write_timeout(&self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}

/// Reads `answer` as the reply to one `method` request, the body at most
/// `cap` bytes, through the same code as an answer on the socket (head,
/// Content-Length, chunked or close-delimited body). Pure: for tests and
/// fuzzing the engine's side of the protocol.
pub fn parse_response(answer: &[u8], method: &str, cap: u64) -> Result<Response, Error> {
    let mut conn = Conn {
        reader: BufReader::with_capacity(16 * 1024, Recorded(io::Cursor::new(answer.to_vec()))),
        reusable: true,
    };
    // Nothing here waits: the deadline is only there because requests have one.
    let deadline = Instant::now() + Duration::from_secs(3600);
    conn.request(method, "/", "pulse-agent", deadline, cap)
}

/// One connection to the socket (or, for [`parse_response`], to an answer
/// in memory).
pub struct Conn<T = UnixStream> {
    reader: BufReader<T>,
    /// The last answer left the connection usable for another request.
    reusable: bool,
}

impl Conn {
    /// Connects to the socket at `path`. (A Unix socket connect does not
    /// wait for the peer to accept: it succeeds or fails at once, except on
    /// a full backlog, which the caller's thread bears.)
    pub fn connect(path: &Path) -> Result<Conn, Error> {
        let stream = UnixStream::connect(path).map_err(Error::Connect)?;
        Ok(Conn {
            reader: BufReader::with_capacity(16 * 1024, stream),
            reusable: true,
        })
    }
}

impl<T: Transport> Conn<T> {
    pub fn reusable(&self) -> bool {
        self.reusable
    }

    /// Sends `method path` and reads the whole answer by `deadline`, the
    /// body at most `cap` bytes. `HEAD` answers have no body.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        user_agent: &str,
        deadline: Instant,
        cap: u64,
    ) -> Result<Response, Error> {
        self.reusable = false;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: {user_agent}\r\nAccept: application/json\r\n\r\n"
        );
        let stream = self.reader.get_mut();
        stream
            .set_write_timeout(Some(remaining(deadline)?))
            .map_err(Error::Io)?;
        stream
            .write_all(req.as_bytes())
            .map_err(|e| io_error(e, deadline))?;

        let head = self.read_head(deadline)?;
        let (status, headers, keep_alive) = parse_head(&head)?;
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let no_body = method == "HEAD" || status == 204 || status == 304 || status < 200;
        let chunked =
            get("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        let (body, framed) = if no_body {
            (Vec::new(), true)
        } else if chunked {
            (self.read_chunked(deadline, cap)?, true)
        } else if let Some(len) = get("content-length") {
            let len: u64 = len
                .trim()
                .parse()
                .map_err(|_| Error::Malformed(format!("Content-Length {len:?}")))?;
            // The peer's number: compared with the cap before it sizes anything.
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l as u64 <= cap)
                .ok_or(Error::TooLarge(cap))?;
            (self.read_exact(len, deadline)?, true)
        } else {
            (self.read_to_close(deadline, cap)?, false)
        };
        self.reusable = keep_alive && framed;
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// Reads the status line and headers, up to the blank line.
    fn read_head(&mut self, deadline: Instant) -> Result<Vec<u8>, Error> {
        let mut head = Vec::with_capacity(1024);
        loop {
            let line_start = head.len();
            self.read_line(&mut head, deadline, MAX_HEAD)?;
            let line = &head[line_start..];
            if line == b"\r\n" || line == b"\n" {
                if line_start == 0 {
                    // Tolerate a stray blank line before the status line.
                    head.clear();
                    continue;
                }
                return Ok(head);
            }
        }
    }

    /// Appends one line (with its `\n`) to `out`; `out` may not pass `cap`.
    fn read_line(&mut self, out: &mut Vec<u8>, deadline: Instant, cap: usize) -> Result<(), Error> {
        loop {
            let buf = self.fill(deadline)?;
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if out.len().saturating_add(take) > cap {
                return Err(Error::Malformed(format!(
                    "a line or header block over {cap} bytes"
                )));
            }
            out.extend_from_slice(&buf[..take]);
            self.reader.consume(take);
            if done {
                return Ok(());
            }
        }
    }

    /// The buffered bytes, reading more when there are none. EOF is an error:
    /// every caller expects more.
    fn fill(&mut self, deadline: Instant) -> Result<&[u8], Error> {
        let buf = self.fill_or_eof(deadline)?;
        if buf.is_empty() {
            return Err(Error::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(buf)
    }

    /// The buffered bytes, reading more when there are none; empty at EOF.
    /// A read interrupted by a signal (a child exiting) is simply retried.
    fn fill_or_eof(&mut self, deadline: Instant) -> Result<&[u8], Error> {
        loop {
            let timeout = remaining(deadline)?;
            self.reader
                .get_ref()
                .set_read_timeout(Some(timeout))
                .map_err(Error::Io)?;
            match self.reader.fill_buf() {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(e, deadline)),
                Ok(_) => break,
            }
        }
        Ok(self.reader.buffer())
    }

    fn read_exact(&mut self, len: usize, deadline: Instant) -> Result<Vec<u8>, Error> {
        let mut body = Vec::with_capacity(len.min(1 << 20));
        self.append(&mut body, len, deadline)?;
        Ok(body)
    }

    /// Appends exactly `n` bytes to `out`.
    fn append(&mut self, out: &mut Vec<u8>, mut n: usize, deadline: Instant) -> Result<(), Error> {
        while n > 0 {
            let buf = self.fill(deadline)?;
            let take = buf.len().min(n);
            out.extend_from_slice(&buf[..take]);
            self.reader.consume(take);
            n -= take;
        }
        Ok(())
    }

    fn read_chunked(&mut self, deadline: Instant, cap: u64) -> Result<Vec<u8>, Error> {
        let mut body = Vec::new();
        loop {
            let mut line = Vec::new();
            self.read_line(&mut line, deadline, 1024)?;
            let text = String::from_utf8_lossy(&line);
            let size = text.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16)
                .map_err(|_| Error::Malformed(format!("chunk size {size:?}")))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    let mut t = Vec::new();
                    self.read_line(&mut t, deadline, MAX_HEAD)?;
                    if t == b"\r\n" || t == b"\n" {
                        return Ok(body);
                    }
                }
            }
            // The size is the peer's (up to `ffffffffffffffff`): checked
            // arithmetic, and over the cap is an error before any byte is read.
            let size = (body.len() as u64)
                .checked_add(size)
                .filter(|&total| total <= cap)
                .and_then(|_| usize::try_from(size).ok())
                .ok_or(Error::TooLarge(cap))?;
            self.append(&mut body, size, deadline)?;
            let mut end = Vec::new();
            self.read_line(&mut end, deadline, 2)?;
            if end != b"\r\n" && end != b"\n" {
                return Err(Error::Malformed("chunk not followed by CRLF".into()));
            }
        }
    }

    fn read_to_close(&mut self, deadline: Instant, cap: u64) -> Result<Vec<u8>, Error> {
        let mut body = Vec::new();
        loop {
            let buf = self.fill_or_eof(deadline)?;
            if buf.is_empty() {
                return Ok(body);
            }
            let n = buf.len();
            if (body.len() as u64).saturating_add(n as u64) > cap {
                return Err(Error::TooLarge(cap));
            }
            body.extend_from_slice(buf);
            self.reader.consume(n);
        }
    }
}

/// Time left before `deadline`, or [`Error::Timeout`].
fn remaining(deadline: Instant) -> Result<Duration, Error> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::Timeout);
    }
    Ok(left)
}

fn io_error(e: io::Error, deadline: Instant) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
        _ if Instant::now() >= deadline => Error::Timeout,
        _ => Error::Io(e),
    }
}

/// Header names (lower case) and values.
type Headers = Vec<(String, String)>;

/// Status, lower-cased headers, and whether the connection may be kept.
fn parse_head(head: &[u8]) -> Result<(u16, Headers, bool), Error> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        let shown: String = status_line.chars().take(60).collect();
        return Err(Error::Malformed(format!("status line {shown:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| Error::Malformed(format!("status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((k, v)) = line.split_once(':') else {
            return Err(Error::Malformed(format!("header line {line:?}")));
        };
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let connection = headers
        .iter()
        .find(|(k, _)| k == "connection")
        .map(|(_, v)| v.to_ascii_lowercase());
    let keep_alive = match connection.as_deref() {
        Some(c) if c.contains("close") => false,
        Some(c) if c.contains("keep-alive") => true,
        _ => version == "HTTP/1.1",
    };
    Ok((status, headers, keep_alive))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    /// Serves `answers` (one per request, raw bytes) on a fresh socket.
    fn serve(answers: Vec<Vec<u8>>) -> (tempdir::Dir, std::path::PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            if answers.is_empty() {
                // A peer that never answers.
                std::thread::sleep(Duration::from_secs(3));
                return;
            }
            let mut r = BufReader::new(s.try_clone().unwrap());
            for a in answers {
                // Read one request head.
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let _ = s.write_all(&a);
            }
        });
        (dir, path)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "pulse-http-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn content_length_and_chunked_on_one_kept_connection() {
        let (_d, path) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nApi-Version: 1.41\r\n\r\nhello".to_vec(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n".to_vec(),
        ]);
        let mut c = Conn::connect(&path).unwrap();
        let r = c.request("GET", "/_ping", "t", soon(), 100).unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
        assert_eq!(r.header("api-version"), Some("1.41"));
        assert!(c.reusable());
        let r = c.request("GET", "/info", "t", soon(), 100).unwrap();
        assert_eq!(&r.body[..], b"abcde");
        assert!(c.reusable());
    }

    #[test]
    fn caps_deadlines_and_broken_answers() {
        // Declared too large: refused before reading.
        let (_d, p) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n".to_vec(),
        ]);
        let e = Conn::connect(&p)
            .unwrap()
            .request("GET", "/x", "t", soon(), 1000);
        assert!(matches!(e, Err(Error::TooLarge(1000))), "{e:?}");
        // Chunks adding up past the cap.
        let (_d, p) = serve(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n".to_vec(),
        ]);
        let e = Conn::connect(&p)
            .unwrap()
            .request("GET", "/x", "t", soon(), 1000);
        assert!(matches!(e, Err(Error::TooLarge(_))), "{e:?}");
        // A truncated chunk, then the peer closes.
        let (_d, p) = serve(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc".to_vec(),
        ]);
        let e = Conn::connect(&p)
            .unwrap()
            .request("GET", "/x", "t", soon(), 1000);
        assert!(e.as_ref().is_err_and(Error::is_stale_connection), "{e:?}");
        // Garbage.
        let (_d, p) = serve(vec![b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()]);
        let e = Conn::connect(&p)
            .unwrap()
            .request("GET", "/x", "t", soon(), 1000);
        assert!(matches!(e, Err(Error::Malformed(_))), "{e:?}");
        // A bad chunk size.
        let (_d, p) = serve(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        ]);
        let e = Conn::connect(&p)
            .unwrap()
            .request("GET", "/x", "t", soon(), 1000);
        assert!(matches!(e, Err(Error::Malformed(_))), "{e:?}");
        // Silence: the deadline ends it.
        let (_d, p) = serve(vec![]);
        let started = Instant::now();
        let mut c = Conn::connect(&p).unwrap();
        let e = c.request(
            "GET",
            "/x",
            "t",
            Instant::now() + Duration::from_millis(300),
            1000,
        );
        assert!(matches!(e, Err(Error::Timeout)), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // A close-delimited body is read to EOF and not kept.
        let (_d, p) = serve(vec![b"HTTP/1.0 200 OK\r\n\r\nall of it".to_vec()]);
        let mut c = Conn::connect(&p).unwrap();
        let r = c.request("GET", "/x", "t", soon(), 1000).unwrap();
        assert_eq!(&r.body[..], b"all of it");
        assert!(!c.reusable());
    }

    /// Fuzzing: `body.len() + size` overflowed (a panic in a debug build,
    /// a wrapped sum that passed the cap check in release) when a chunk size
    /// of `ffffffffffffffff` followed a first chunk.
    #[test]
    fn chunk_size_that_overflows_is_an_error_not_a_panic() {
        for (size, cap) in [
            ("ffffffffffffffff", 1000),
            ("ffffffffffffffff", u64::MAX),
            ("fffffffffffffffe", u64::MAX - 1),
        ] {
            let answer = format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n{size}\r\nbbbb"
            );
            let (_d, p) = serve(vec![answer.into_bytes()]);
            let e = Conn::connect(&p)
                .unwrap()
                .request("GET", "/x", "t", soon(), cap);
            assert!(matches!(e, Err(Error::TooLarge(_))), "{size}: {e:?}");
        }
        // Longer than 64 bits of hex: not a number at all.
        let (_d, p) = serve(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n".to_vec(),
        ]);
        let e = Conn::connect(&p)
            .unwrap()
            .request("GET", "/x", "t", soon(), 1000);
        assert!(matches!(e, Err(Error::Malformed(_))), "{e:?}");
    }

    /// A Content-Length at or past `u64::MAX`, negative or not an integer:
    /// an error, never a truncating cast or an allocation of that size.
    #[test]
    fn huge_content_length_is_an_error_not_a_panic() {
        for len in ["18446744073709551615", "18446744073709551616", "-1", "1e9"] {
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\nab");
            let (_d, p) = serve(vec![answer.into_bytes()]);
            let e = Conn::connect(&p)
                .unwrap()
                .request("GET", "/x", "t", soon(), 1000);
            assert!(
                matches!(e, Err(Error::TooLarge(_) | Error::Malformed(_))),
                "{len}: {e:?}"
            );
        }
    }

    #[test]
    fn parse_response_reads_an_answer_in_memory_like_the_socket() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "GET",
            100,
        )
        .unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"abc"[..]));
        let r = parse_response(b"HTTP/1.0 404 Nope\r\n\r\nall", "GET", 100).unwrap();
        assert_eq!((r.status, &r.body[..]), (404, &b"all"[..]));
        let e = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab",
            "GET",
            100,
        );
        assert!(e.as_ref().is_err_and(Error::is_stale_connection), "{e:?}");
        assert!(matches!(parse_response(b"", "GET", 100), Err(Error::Io(_))));
        // The overflowing chunk size, without a socket.
        let e = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\nffffffffffffffff\r\n",
            "GET",
            u64::MAX,
        );
        assert!(matches!(e, Err(Error::TooLarge(_))), "{e:?}");
    }

    #[test]
    fn head_answers_have_no_body_and_connection_close_is_honoured() {
        let (_d, p) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nApi-Version: 1.45\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK".to_vec(),
        ]);
        let mut c = Conn::connect(&p).unwrap();
        let r = c.request("HEAD", "/_ping", "t", soon(), 100).unwrap();
        assert!(r.body.is_empty() && c.reusable());
        let r = c.request("GET", "/_ping", "t", soon(), 100).unwrap();
        assert_eq!(&r.body[..], b"OK");
        assert!(!c.reusable());
    }
}
