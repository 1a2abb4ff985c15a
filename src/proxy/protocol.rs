//! The socket protocol (spec §2): one newline-terminated JSON request per
//! connection, one JSON response plus `\n`, then the server closes.
//!
//! `{"correlation_id"?, "method", "params"?}` in; `{"correlation_id"?,
//! "success", "data"?, "error"?}` out. It is not JSON-RPC 2.0. A correlation
//! ID that is not a UUID is replaced by a fresh random one, so what reaches
//! the audit log and the journal is always 36 safe characters.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

/// Requests larger than this are refused (`payload too large`).
pub const MAX_REQUEST: usize = 16 * 1024;

/// The five methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    GetStatus,
    GetTemperature,
    RegisterNodes,
    EnsureClusterKeys,
    RequestCleanup,
}

impl Method {
    pub const ALL: [Method; 5] = [
        Method::GetStatus,
        Method::GetTemperature,
        Method::RegisterNodes,
        Method::EnsureClusterKeys,
        Method::RequestCleanup,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::GetStatus => "get_status",
            Method::GetTemperature => "get_temperature",
            Method::RegisterNodes => "register_nodes",
            Method::EnsureClusterKeys => "ensure_cluster_keys",
            Method::RequestCleanup => "request_cleanup",
        }
    }

    /// Needs the `admin` capability.
    pub fn privileged(self) -> bool {
        matches!(
            self,
            Method::RegisterNodes | Method::EnsureClusterKeys | Method::RequestCleanup
        )
    }

    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The caller's UUID, lower-cased, or a fresh one.
    pub correlation_id: String,
    /// `Err(name)` for a method we do not have: the caller audits the name
    /// (cut short) before refusing it.
    pub method: Result<Method, String>,
    pub params: Map<String, Value>,
}

/// Why a request line could not be read (spec §2 step 6).
#[derive(Debug)]
pub enum ReadError {
    Timeout,
    TooLarge,
    Empty,
    Io(io::Error),
}

impl ReadError {
    /// The reply text.
    pub fn reply(&self) -> &'static str {
        match self {
            ReadError::Timeout => "read timeout",
            ReadError::TooLarge => "payload too large",
            ReadError::Empty => "empty request",
            ReadError::Io(_) => "failed to read request",
        }
    }

    /// The audit reason and penalty label.
    pub fn reason(&self) -> &'static str {
        match self {
            ReadError::Timeout => "read_timeout",
            ReadError::TooLarge => "payload_too_large",
            ReadError::Empty => "empty_request",
            ReadError::Io(_) => "read_error",
        }
    }
}

/// Reads up to the first `\n` (or EOF), at most [`MAX_REQUEST`] bytes, all
/// of it before `timeout` has passed (a client trickling a byte a second
/// gets no more time than one that sends nothing). `set_timeout` applies a
/// per-read timeout to the stream.
pub fn read_request<S: Read>(
    stream: &mut S,
    timeout: Duration,
    mut set_timeout: impl FnMut(&mut S, Duration) -> io::Result<()>,
) -> Result<Vec<u8>, ReadError> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Timeout);
        }
        set_timeout(stream, left).map_err(ReadError::Io)?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::Timeout);
            }
            Err(e) => return Err(ReadError::Io(e)),
        };
        let got = &chunk[..n];
        if let Some(nl) = got.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&got[..nl]);
            if buf.len() > MAX_REQUEST {
                return Err(ReadError::TooLarge);
            }
            break;
        }
        buf.extend_from_slice(got);
        if buf.len() > MAX_REQUEST {
            return Err(ReadError::TooLarge);
        }
        if n == 0 {
            break;
        }
    }
    if buf.trim_ascii().is_empty() {
        return Err(ReadError::Empty);
    }
    Ok(buf)
}

/// Parses one request line. `Err(())` is `invalid request format`.
#[allow(clippy::result_unit_err)]
pub fn parse(line: &[u8]) -> Result<Request, ()> {
    let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(line.trim_ascii()) else {
        return Err(());
    };
    let method = match o.remove("method") {
        Some(Value::String(m)) => Method::from_name(&m).ok_or(m),
        // Absent or not a string: nothing we could run.
        Some(_) | None => Err(String::new()),
    };
    let params = match o.remove("params") {
        Some(Value::Object(p)) => p,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(()),
    };
    let correlation_id = match o.get("correlation_id") {
        Some(Value::String(id)) => canonical_uuid(id),
        _ => None,
    }
    .unwrap_or_else(new_uuid);
    Ok(Request {
        correlation_id,
        method,
        params,
    })
}

/// A UUID in the textual forms Go's `uuid.Parse` takes (`8-4-4-4-12`,
/// `urn:uuid:` prefixed, braced, or 32 bare hex digits), as lower-case
/// `8-4-4-4-12`.
pub fn canonical_uuid(id: &str) -> Option<String> {
    let s = id.strip_prefix("urn:uuid:").unwrap_or(id);
    let s = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(s);
    let hex: String = match s.len() {
        36 => {
            let b = s.as_bytes();
            if [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
                return None;
            }
            s.chars().filter(|&c| c != '-').collect()
        }
        32 => s.to_string(),
        _ => return None,
    };
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let h = hex.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// A random (version 4) UUID.
pub fn new_uuid() -> String {
    let mut b = [0u8; 16];
    if crate::sys::getrandom(&mut b).is_err() {
        // Correlation IDs only tie log lines together; uniqueness within
        // this process is enough when the kernel's source fails.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b.copy_from_slice(&t.to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    canonical_uuid(&h).expect("invariant: 32 hex digits")
}

/// One response line: `{"correlation_id"?, "success", "data"?, "error"?}\n`.
pub fn response(correlation_id: &str, result: Result<Value, String>) -> Vec<u8> {
    let mut o = Map::new();
    if !correlation_id.is_empty() {
        o.insert("correlation_id".into(), json!(correlation_id));
    }
    match result {
        Ok(data) => {
            o.insert("success".into(), json!(true));
            if !data.is_null() {
                o.insert("data".into(), data);
            }
        }
        Err(e) => {
            o.insert("success".into(), json!(false));
            if !e.is_empty() {
                o.insert("error".into(), json!(e));
            }
        }
    }
    let mut line = serde_json::to_vec(&Value::Object(o)).expect("invariant: a Value encodes");
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request_and_keeps_a_valid_correlation_id() {
        let r = parse(br#"{"correlation_id":"0F0E0D0C-0B0A-4908-8706-050403020100","method":"get_temperature","params":{"node":"pve1"}}"#).unwrap();
        assert_eq!(r.correlation_id, "0f0e0d0c-0b0a-4908-8706-050403020100");
        assert_eq!(r.method, Ok(Method::GetTemperature));
        assert_eq!(r.params["node"], "pve1");
    }

    #[test]
    fn a_correlation_id_that_is_not_a_uuid_is_replaced() {
        let r = parse(br#"{"correlation_id":"x\n{evil}","method":"get_status"}"#).unwrap();
        assert_eq!(r.correlation_id.len(), 36);
        assert!(canonical_uuid(&r.correlation_id).is_some());
        assert_ne!(new_uuid(), new_uuid());
    }

    #[test]
    fn unknown_and_missing_methods_and_bad_json() {
        assert_eq!(
            parse(br#"{"method":"get_temp"}"#).unwrap().method,
            Err("get_temp".into())
        );
        assert_eq!(
            parse(br#"{"params":{}}"#).unwrap().method,
            Err(String::new())
        );
        assert!(parse(b"[1]").is_err());
        assert!(parse(b"{").is_err());
        assert!(parse(br#"{"method":"get_status","params":[1]}"#).is_err());
    }

    #[test]
    fn reads_to_the_newline_within_the_limit() {
        let ok = |s: &[u8]| read_request(&mut &s[..], Duration::from_secs(1), |_, _| Ok(()));
        assert_eq!(ok(b"{}\nrest").unwrap(), b"{}");
        assert_eq!(ok(b"{} ").unwrap(), b"{} ");
        assert!(matches!(ok(b" \n"), Err(ReadError::Empty)));
        assert!(matches!(ok(b""), Err(ReadError::Empty)));
        let big = vec![b' '; MAX_REQUEST + 2];
        assert!(matches!(ok(&big), Err(ReadError::TooLarge)));
        let mut exact = vec![b'x'; MAX_REQUEST];
        exact.push(b'\n');
        assert_eq!(ok(&exact).unwrap().len(), MAX_REQUEST);
    }

    #[test]
    fn responses_are_one_line() {
        let r = response("", Err("unauthorized".into()));
        assert_eq!(r, b"{\"error\":\"unauthorized\",\"success\":false}\n");
        let r = response("id", Ok(json!({"a":"x\ny"})));
        assert_eq!(r.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}
