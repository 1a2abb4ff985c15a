//! The proxy's hash-chained audit log (spec §5) and its verifier.
//!
//! Writes one JSON line per security event, in the stock proxy's on-disk
//! shape (zerolog at info level: `{"level":"info", <fields in sorted key
//! order>, "time": <unix seconds>}`), to a file opened
//! `O_APPEND|O_CREAT|O_WRONLY` mode 0640, or to stderr (the journal) when that
//! file cannot be opened. `seq` and the chain restart at every process start,
//! so one file holds several runs.
//!
//! The hash rule is the stock one (`cmd/pulse-sensor-proxy/audit.go` at
//! `cf52b5f51`): `event_hash = hex(SHA-256(prev || J))` where `prev` is the
//! previous event's raw 32-byte digest (empty for `seq` 1) and `J` is Go's
//! `json.Marshal` of the `AuditEvent` struct with `event_hash` set to "":
//! declared field order, `omitempty` fields left out when empty (pointer
//! fields only when absent), and Go's string escaping (`<`, `>`, `&`, U+2028,
//! U+2029 as `\u003c`...). The on-disk line has another key order, so
//! [`verify`] rebuilds `J` from each line; it therefore also checks logs the
//! stock proxy wrote. `level` and `time` are outside the hash (as in the
//! stock proxy); any other key the hash does not cover is refused.
//!
//! What it will not do: it never panics or blocks the caller on a failing
//! disk beyond one `write`; it does not create the log's directory; it cannot
//! notice lines removed from the *end* of a run (nothing follows them).

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// One audit event; fields left None/empty are omitted as the spec says.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// `connection.accepted`, `connection.denied`, `limiter.rejection`,
    /// `command.start`, `command.finish`, `command.validation_failed`,
    /// `http_request`.
    pub event_type: &'static str,
    /// "" before the request is parsed.
    pub correlation_id: String,
    /// Written as `peer_uid`, `peer_gid`, `peer_pid`.
    pub peer: Option<crate::proxy::Peer>,
    pub remote_addr: String,
    pub command: String,
    /// Written as a one-element array (the stock field is `[]string`; the
    /// stock proxy never fills it).
    pub args: String,
    pub target: String,
    pub decision: &'static str,
    pub reason: String,
    pub limiter: String,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<i64>,
    pub error: String,
}

/// The audit log writer; one per process, shared by every connection thread.
pub struct Audit {
    inner: Mutex<Chain>,
    is_file: bool,
}

struct Chain {
    out: Box<dyn Write + Send>,
    seq: u64,
    /// Raw digest of the last event; `None` before the first.
    prev: Option<[u8; 32]>,
    /// The last write failed (logged once until a write succeeds again).
    failing: bool,
}

impl Audit {
    /// Opens `path` O_APPEND|O_CREAT|O_WRONLY mode 0640 (the directory must
    /// exist); if it cannot be opened, logs a warning naming the path and the
    /// error and writes to stderr.
    pub fn open(path: &Path) -> Audit {
        use std::os::unix::fs::OpenOptionsExt;
        let opened = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path);
        match opened {
            Ok(f) => {
                log::info!("audit log: {}", path.display());
                Audit::new(Box::new(f), true)
            }
            Err(e) => {
                log::warn!(
                    "cannot open audit log {}: {e}; audit events go to stderr",
                    path.display()
                );
                Audit::new(Box::new(std::io::stderr()), false)
            }
        }
    }

    /// An audit log on any writer (tests).
    pub fn to_writer(w: Box<dyn Write + Send>) -> Audit {
        Audit::new(w, false)
    }

    fn new(out: Box<dyn Write + Send>, is_file: bool) -> Audit {
        let chain = Chain {
            out,
            seq: 0,
            prev: None,
            failing: false,
        };
        Audit {
            inner: Mutex::new(chain),
            is_file,
        }
    }

    /// Appends one line (seq, ts now, chain); never panics; a write error is
    /// logged once per state change. Like the stock proxy, an event that could
    /// not be written still takes its place in the chain, so the loss shows up
    /// as a gap when the file is verified.
    pub fn log(&self, event: Event) {
        let mut c = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        // Inside the lock, so `ts` never goes backwards as `seq` goes up.
        let now = SystemTime::now();
        let ts = crate::report::rfc3339(now);
        let time = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        c.seq += 1;
        let prev_hash = c.prev.map(|p| crate::deliver::hex(&p)).unwrap_or_default();
        let peer = event.peer;
        let rec = Record {
            seq: c.seq,
            ts: &ts,
            event_type: event.event_type,
            correlation_id: &event.correlation_id,
            peer_uid: peer.map(|p| i64::from(p.uid)),
            peer_gid: peer.map(|p| i64::from(p.gid)),
            peer_pid: peer.map(|p| i64::from(p.pid)),
            remote_addr: &event.remote_addr,
            command: &event.command,
            args: if event.args.is_empty() {
                Vec::new()
            } else {
                vec![event.args.as_str()]
            },
            target: &event.target,
            decision: event.decision,
            reason: &event.reason,
            limiter: &event.limiter,
            exit_code: event.exit_code,
            duration_ms: event.duration_ms,
            stdout_sha256: "",
            stderr_sha256: "",
            error: &event.error,
            prev_hash: &prev_hash,
        };
        let hash = rec.hash(c.prev.as_ref());
        let line = rec.line(&crate::deliver::hex(&hash), time);
        c.prev = Some(hash);
        let written = c
            .out
            .write_all(line.as_bytes())
            .and_then(|()| c.out.flush());
        match written {
            Err(e) if !c.failing => {
                c.failing = true;
                log::warn!("cannot write the audit log: {e}; audit events are being lost");
            }
            Ok(()) if c.failing => {
                c.failing = false;
                log::info!("audit log writable again");
            }
            _ => {}
        }
    }

    /// False when it fell back to stderr (or writes to a test writer).
    pub fn is_file(&self) -> bool {
        self.is_file
    }
}

/// The fields the hash covers, in Go's declared order of `AuditEvent`.
struct Record<'a> {
    seq: u64,
    ts: &'a str,
    event_type: &'a str,
    correlation_id: &'a str,
    peer_uid: Option<i64>,
    peer_gid: Option<i64>,
    peer_pid: Option<i64>,
    remote_addr: &'a str,
    command: &'a str,
    args: Vec<&'a str>,
    target: &'a str,
    decision: &'a str,
    reason: &'a str,
    limiter: &'a str,
    exit_code: Option<i64>,
    duration_ms: Option<i64>,
    stdout_sha256: &'a str,
    stderr_sha256: &'a str,
    error: &'a str,
    prev_hash: &'a str,
}

/// A JSON object written key by key (keys are plain ASCII, never escaped).
struct Obj {
    s: String,
    /// Go's `encoding/json` string escaping (else zerolog's).
    go: bool,
}

impl Obj {
    fn new(go: bool) -> Obj {
        Obj {
            s: String::from("{"),
            go,
        }
    }
    fn key(&mut self, k: &str) {
        if self.s.len() > 1 {
            self.s.push(',');
        }
        self.s.push('"');
        self.s.push_str(k);
        self.s.push_str("\":");
    }
    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        put_str(&mut self.s, v, self.go);
    }
    /// `omitempty` string.
    fn opt_str(&mut self, k: &str, v: &str) {
        if !v.is_empty() {
            self.str(k, v);
        }
    }
    fn opt_int(&mut self, k: &str, v: Option<i64>) {
        if let Some(v) = v {
            self.key(k);
            self.s.push_str(&v.to_string());
        }
    }
    fn args(&mut self, v: &[&str]) {
        if !v.is_empty() {
            self.key("args");
            self.s.push('[');
            for (i, a) in v.iter().enumerate() {
                if i > 0 {
                    self.s.push(',');
                }
                put_str(&mut self.s, a, self.go);
            }
            self.s.push(']');
        }
    }
    fn end(mut self) -> String {
        self.s.push('}');
        self.s
    }
}

/// A JSON string; `go` adds Go's HTML-safe escapes (zerolog's lines have
/// none).
fn put_str(out: &mut String, s: &str, go: bool) {
    crate::remote_config::json_string(s, out, go);
}

impl Record<'_> {
    /// `SHA-256(prev || json.Marshal(event with event_hash ""))`.
    fn hash(&self, prev: Option<&[u8; 32]>) -> [u8; 32] {
        let mut o = Obj::new(true);
        o.key("seq");
        o.s.push_str(&self.seq.to_string());
        o.str("ts", self.ts);
        o.str("event_type", self.event_type);
        o.opt_str("correlation_id", self.correlation_id);
        o.opt_int("peer_uid", self.peer_uid);
        o.opt_int("peer_gid", self.peer_gid);
        o.opt_int("peer_pid", self.peer_pid);
        o.opt_str("remote_addr", self.remote_addr);
        o.opt_str("command", self.command);
        o.args(&self.args);
        o.opt_str("target", self.target);
        o.opt_str("decision", self.decision);
        o.opt_str("reason", self.reason);
        o.opt_str("limiter", self.limiter);
        o.opt_int("exit_code", self.exit_code);
        o.opt_int("duration_ms", self.duration_ms);
        o.opt_str("stdout_sha256", self.stdout_sha256);
        o.opt_str("stderr_sha256", self.stderr_sha256);
        o.opt_str("error", self.error);
        o.str("prev_hash", self.prev_hash);
        o.str("event_hash", "");
        let mut h = Sha256::new();
        if let Some(p) = prev {
            h.update(p);
        }
        h.update(o.end().as_bytes());
        h.finalize().into()
    }

    /// The on-disk line, newline included: zerolog's shape, keys sorted.
    fn line(&self, event_hash: &str, time: u64) -> String {
        let mut o = Obj::new(false);
        o.str("level", "info");
        o.args(&self.args);
        o.opt_str("command", self.command);
        o.str("correlation_id", self.correlation_id);
        o.str("decision", self.decision);
        o.opt_int("duration_ms", self.duration_ms);
        o.opt_str("error", self.error);
        o.str("event_hash", event_hash);
        o.str("event_type", self.event_type);
        o.opt_int("exit_code", self.exit_code);
        o.opt_str("limiter", self.limiter);
        o.opt_int("peer_gid", self.peer_gid);
        o.opt_int("peer_pid", self.peer_pid);
        o.opt_int("peer_uid", self.peer_uid);
        o.str("prev_hash", self.prev_hash);
        o.opt_str("reason", self.reason);
        o.opt_str("remote_addr", self.remote_addr);
        o.key("seq");
        o.s.push_str(&self.seq.to_string());
        o.opt_str("stderr_sha256", self.stderr_sha256);
        o.opt_str("stdout_sha256", self.stdout_sha256);
        o.opt_str("target", self.target);
        o.str("ts", self.ts);
        o.key("time");
        o.s.push_str(&time.to_string());
        let mut s = o.end();
        s.push('\n');
        s
    }
}

/// Result of checking a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Events (lines) checked.
    pub lines: u64,
    /// Runs: a line with `seq` 1 and `prev_hash` "" starts one.
    pub chains: u64,
}

/// Where a log's chain breaks (1-based line numbers) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// Reading the log failed.
    Io {
        line: u64,
        error: String,
    },
    /// A line longer than [`MAX_LINE`].
    TooLong {
        line: u64,
    },
    /// The last line has no newline and is not complete JSON.
    Truncated {
        line: u64,
    },
    NotJson {
        line: u64,
        error: String,
    },
    MissingField {
        line: u64,
        field: &'static str,
    },
    /// A field of the wrong JSON type (or out of range).
    BadField {
        line: u64,
        field: String,
    },
    /// A field the hash does not cover (it could be added undetected).
    UnknownField {
        line: u64,
        field: String,
    },
    SeqGap {
        line: u64,
        expected: u64,
        found: u64,
    },
    /// `prev_hash` is not the hash of the event before it in its run.
    PrevHashMismatch {
        line: u64,
    },
    /// `event_hash` is not the hash of the line's own fields.
    HashMismatch {
        line: u64,
    },
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::Io { line, error } => write!(f, "line {line}: read error: {error}"),
            VerifyError::TooLong { line } => {
                write!(f, "line {line}: longer than {MAX_LINE} bytes")
            }
            VerifyError::Truncated { line } => write!(
                f,
                "line {line}: truncated last line (no newline, incomplete JSON)"
            ),
            VerifyError::NotJson { line, error } => {
                write!(f, "line {line}: not a JSON object: {error}")
            }
            VerifyError::MissingField { line, field } => {
                write!(f, "line {line}: field \"{field}\" missing")
            }
            VerifyError::BadField { line, field } => {
                write!(f, "line {line}: field \"{field}\" has the wrong type")
            }
            VerifyError::UnknownField { line, field } => write!(
                f,
                "line {line}: field \"{field}\" is not part of an audit event (added?)"
            ),
            VerifyError::SeqGap {
                line,
                expected,
                found,
            } => write!(
                f,
                "line {line}: seq {found} where {expected} was expected \
                 (lines removed or reordered, or events the proxy could not write)"
            ),
            VerifyError::PrevHashMismatch { line } => write!(
                f,
                "line {line}: prev_hash is not the hash of the event before it \
                 (a line removed, inserted or reordered)"
            ),
            VerifyError::HashMismatch { line } => write!(
                f,
                "line {line}: event_hash does not match the event (the line was changed)"
            ),
        }
    }
}

impl std::error::Error for VerifyError {}

/// Lines longer than this are refused (stock lines are well under 4 KiB).
pub const MAX_LINE: usize = 1 << 20;

/// Checks every run of a log: `seq` 1, 2, 3... from a line with `seq` 1 and
/// `prev_hash` "", each `prev_hash` the previous `event_hash`, each
/// `event_hash` recomputed. Stops at the first break.
pub fn verify(mut reader: impl BufRead) -> Result<Verified, VerifyError> {
    let mut done = Verified {
        lines: 0,
        chains: 0,
    };
    let mut last: Option<(u64, [u8; 32])> = None;
    let mut buf = Vec::new();
    loop {
        let line = done.lines + 1;
        buf.clear();
        let limit = (MAX_LINE + 1) as u64;
        let n = (&mut reader)
            .take(limit)
            .read_until(b'\n', &mut buf)
            .map_err(|e| VerifyError::Io {
                line,
                error: e.to_string(),
            })?;
        if n == 0 {
            return Ok(done);
        }
        let body = match buf.strip_suffix(b"\n") {
            Some(b) => b,
            None if n > MAX_LINE => return Err(VerifyError::TooLong { line }),
            None => &buf[..],
        };
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) if body.len() == buf.len() => return Err(VerifyError::Truncated { line }),
            Err(e) => {
                return Err(VerifyError::NotJson {
                    line,
                    error: e.to_string(),
                });
            }
        };
        let Value::Object(map) = value else {
            let error = "not an object".to_string();
            return Err(VerifyError::NotJson { line, error });
        };
        let rec = record(&map, line)?;
        let prev = match last {
            _ if rec.seq == 1 => {
                if !rec.prev_hash.is_empty() {
                    return Err(VerifyError::PrevHashMismatch { line });
                }
                done.chains += 1;
                None
            }
            Some((seq, hash)) if seq.checked_add(1) == Some(rec.seq) => {
                if rec.prev_hash != crate::deliver::hex(&hash) {
                    return Err(VerifyError::PrevHashMismatch { line });
                }
                Some(hash)
            }
            _ => {
                let expected = last.map_or(1, |(seq, _)| seq.saturating_add(1));
                return Err(VerifyError::SeqGap {
                    line,
                    expected,
                    found: rec.seq,
                });
            }
        };
        let hash = rec.hash(prev.as_ref());
        if str_field(&map, "event_hash", line)? != crate::deliver::hex(&hash) {
            return Err(VerifyError::HashMismatch { line });
        }
        last = Some((rec.seq, hash));
        done.lines = line;
    }
}

/// The keys a stock line may hold besides the hashed ones.
const UNHASHED: [&str; 3] = ["level", "time", "event_hash"];
const HASHED: [&str; 20] = [
    "seq",
    "ts",
    "event_type",
    "correlation_id",
    "peer_uid",
    "peer_gid",
    "peer_pid",
    "remote_addr",
    "command",
    "args",
    "target",
    "decision",
    "reason",
    "limiter",
    "exit_code",
    "duration_ms",
    "stdout_sha256",
    "stderr_sha256",
    "error",
    "prev_hash",
];

fn record<'a>(m: &'a Map<String, Value>, line: u64) -> Result<Record<'a>, VerifyError> {
    if let Some(k) = m
        .keys()
        .find(|k| !HASHED.contains(&k.as_str()) && !UNHASHED.contains(&k.as_str()))
    {
        return Err(VerifyError::UnknownField {
            line,
            field: k.clone(),
        });
    }
    let bad = |field: &str| VerifyError::BadField {
        line,
        field: field.to_string(),
    };
    let opt_str = |k: &str| match m.get(k) {
        None => Ok(""),
        Some(v) => v.as_str().ok_or_else(|| bad(k)),
    };
    let opt_int = |k: &str| match m.get(k) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| bad(k)),
    };
    let args = match m.get("args") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().ok_or_else(|| bad("args")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("args")),
    };
    let seq = match m.get("seq") {
        None => return Err(VerifyError::MissingField { line, field: "seq" }),
        Some(v) => v.as_u64().ok_or_else(|| bad("seq"))?,
    };
    Ok(Record {
        seq,
        ts: str_field(m, "ts", line)?,
        event_type: str_field(m, "event_type", line)?,
        correlation_id: str_field(m, "correlation_id", line)?,
        peer_uid: opt_int("peer_uid")?,
        peer_gid: opt_int("peer_gid")?,
        peer_pid: opt_int("peer_pid")?,
        remote_addr: opt_str("remote_addr")?,
        command: opt_str("command")?,
        args,
        target: opt_str("target")?,
        decision: str_field(m, "decision", line)?,
        reason: opt_str("reason")?,
        limiter: opt_str("limiter")?,
        exit_code: opt_int("exit_code")?,
        duration_ms: opt_int("duration_ms")?,
        stdout_sha256: opt_str("stdout_sha256")?,
        stderr_sha256: opt_str("stderr_sha256")?,
        error: opt_str("error")?,
        prev_hash: str_field(m, "prev_hash", line)?,
    })
}

/// A string field every line has.
fn str_field<'a>(
    m: &'a Map<String, Value>,
    field: &'static str,
    line: u64,
) -> Result<&'a str, VerifyError> {
    match m.get(field) {
        None => Err(VerifyError::MissingField { line, field }),
        Some(v) => v.as_str().ok_or(VerifyError::BadField {
            line,
            field: field.to_string(),
        }),
    }
}

/// `pulse-sensor-proxy audit verify FILE`: prints "FILE: intact, N events in
/// K runs" (exit 0) or "FILE: broken at line N: ..." (exit 1) on stdout; if
/// the file cannot be opened or read, `pulse-sensor-proxy: error: FILE: ...`
/// on stderr and exit 2 (nothing could be concluded about the chain).
pub fn verify_command(path: &Path) -> ExitCode {
    let (code, message) = verify_report(path);
    if code == 2 {
        eprintln!("pulse-sensor-proxy: error: {message}");
    } else {
        println!("{message}");
    }
    ExitCode::from(code)
}

fn verify_report(path: &Path) -> (u8, String) {
    let shown = path.display();
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return (2, format!("{shown}: {e}")),
    };
    match verify(std::io::BufReader::new(file)) {
        Ok(v) => (
            0,
            format!("{shown}: intact, {} events in {} runs", v.lines, v.chains),
        ),
        Err(e @ VerifyError::Io { .. }) => (2, format!("{shown}: {e}")),
        Err(e) => (1, format!("{shown}: broken at {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_escaping_differs_from_zerolog_only_in_html_characters() {
        let s = "a<b>&c\"\\\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}\u{2028}\u{2029}é";
        let mut go = String::new();
        put_str(&mut go, s, true);
        assert_eq!(
            go,
            r#""a\u003cb\u003e\u0026c\"\\\n\r\t\b\f\u0001\u001f"#.to_string()
                + "\u{7f}\\u2028\\u2029é\""
        );
        let mut zl = String::new();
        put_str(&mut zl, s, false);
        assert_eq!(
            zl,
            "\"a<b>&c\\\"\\\\\\n\\r\\t\\b\\f\\u0001\\u001f\u{7f}\u{2028}\u{2029}é\""
        );
        // Both are JSON for the same string.
        for out in [go, zl] {
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s);
        }
    }

    /// Go's `json.Marshal` of the first event of `make_stock_sample.py`
    /// (written by hand from the struct tags) and its SHA-256, from
    /// `printf '%s' '<json>' | sha256sum`.
    #[test]
    fn first_event_hash_matches_go_marshal_by_hand() {
        let json = r#"{"seq":1,"ts":"2025-11-03T10:15:42.123456789Z","event_type":"connection.accepted","peer_uid":100000,"peer_gid":100000,"peer_pid":4242,"decision":"allowed","prev_hash":"","event_hash":""}"#;
        let want = crate::deliver::hex(&Sha256::digest(json.as_bytes()));
        assert_eq!(
            want,
            "d9b02a3fb678905e308985639137020c3db21b0c3063035ef0190289cea6c0dc"
        );
        let rec = Record {
            seq: 1,
            ts: "2025-11-03T10:15:42.123456789Z",
            event_type: "connection.accepted",
            correlation_id: "",
            peer_uid: Some(100_000),
            peer_gid: Some(100_000),
            peer_pid: Some(4242),
            remote_addr: "",
            command: "",
            args: Vec::new(),
            target: "",
            decision: "allowed",
            reason: "",
            limiter: "",
            exit_code: None,
            duration_ms: None,
            stdout_sha256: "",
            stderr_sha256: "",
            error: "",
            prev_hash: "",
        };
        assert_eq!(crate::deliver::hex(&rec.hash(None)), want);
    }

    #[test]
    fn verify_report_says_where_and_why() {
        let dir = std::env::temp_dir().join(format!("pulse-audit-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        let a = Audit::open(&path);
        for _ in 0..3 {
            a.log(Event {
                event_type: "connection.accepted",
                ..Event::default()
            });
        }
        let (code, msg) = verify_report(&path);
        assert_eq!(
            (code, msg),
            (0, format!("{}: intact, 3 events in 1 runs", path.display()))
        );
        let log = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = log.lines().collect();
        lines.remove(1);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let (code, msg) = verify_report(&path);
        assert_eq!(code, 1);
        assert!(
            msg.contains("broken at line 2: seq 3 where 2 was expected"),
            "{msg}"
        );
        let (code, msg) = verify_report(&dir.join("absent"));
        assert_eq!(code, 2);
        assert!(
            msg.contains("absent") && msg.contains("No such file"),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
