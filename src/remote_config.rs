//! Remote configuration (spec/pulse-protocol.md §2.3): at start and every 60 s
//! the agent asks the server which agent ID it has for this hostname, fetches
//! that agent's config, checks it, and applies what applies while running:
//! `interval`, `report_ip`, `disable_ceph` and `log_level`.
//!
//! Checks, all before anything is applied (a config that fails one is
//! discarded whole, and the agent keeps what it had):
//! * `desiredConfig.hash` must be the SHA-256 of the canonical JSON of the
//!   config's applied keys (Go `json.Marshal` encoding, keys sorted);
//! * a `signature`, when present, must be an Ed25519 signature by a trusted
//!   key (the server's embedded key, or `PULSE_AGENT_CONFIG_PUBLIC_KEYS`) over
//!   the agent ID and the validity window, which must hold now (±2 min);
//! * without a signature, `PULSE_AGENT_CONFIG_SIGNATURE_REQUIRED` rejects it.
//!
//! `commandsEnabled` is ignored: this agent never runs commands.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::deliver::{CONFIG_TIMEOUT, Client, Reply};

/// How often the config is fetched again (the stock agent's).
pub const REFRESH: Duration = Duration::from_secs(60);

/// When a refresh due at `due` is fetched: midway between two report
/// cycles of the grid `cycle_start + k × interval`, the midpoint nearest
/// `due` and not before `now`. The reports and the config share one pooled
/// connection; a fetch that races a report makes one of them open (and
/// handshake) a second connection, every minute. An interval longer than
/// [`REFRESH`] leaves `due` as it is: reports are rare enough, and aligning
/// would stretch the refresh to the interval.
pub fn fetch_at(
    due: std::time::Instant,
    cycle_start: std::time::Instant,
    interval: Duration,
    now: std::time::Instant,
) -> std::time::Instant {
    if interval.is_zero() || interval > REFRESH {
        return due.max(now);
    }
    let first_mid = cycle_start + interval / 2;
    let step = interval.as_nanos();
    // Midpoints are first_mid + k × interval, k ≥ 0 (the grid's start is a
    // cycle that has begun, so none lies before it).
    let k = match due.checked_duration_since(first_mid) {
        Some(after) => (after.as_nanos() + step / 2) / step,
        None => 0,
    };
    let mut at = first_mid + interval * u32::try_from(k).unwrap_or(u32::MAX);
    while at < now {
        at += interval;
    }
    at
}
const USER_AGENT: &str = "pulse-agent-config-client";
const DESIRED_VERSION: &str = "host-agent-config/v1";
/// Clock skew allowed around the signature's validity window.
const SKEW: Duration = Duration::from_secs(120);

/// The server's embedded config-signing key (Ed25519, SPKI PEM), as the stock
/// agent ships it.
const EMBEDDED_KEY_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAlbXZQRx8jgMzwpXbbjOGcnA+9TG0lms/auxbPzY+Tdo=\n-----END PUBLIC KEY-----";

/// Every key the server may send in `settings` that the stock agent applies;
/// only these enter the hash.
const APPLIED_KEYS: [&str; 14] = [
    "interval",
    "enable_host",
    "enable_docker",
    "enable_kubernetes",
    "enable_proxmox",
    "proxmox_type",
    "docker_runtime",
    "disable_auto_update",
    "disable_docker_update_checks",
    "kube_include_all_pods",
    "kube_include_all_deployments",
    "log_level",
    "report_ip",
    "disable_ceph",
];

/// What a fetched, verified config asks this agent to change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Remote {
    pub interval: Option<Duration>,
    /// `Some(None)`: the server clears the report IP.
    pub report_ip: Option<Option<IpAddr>>,
    pub disable_ceph: Option<bool>,
    pub log_level: Option<log::LevelFilter>,
    /// `agent.appliedConfig`: `(version, hash)`, when something was applied.
    pub applied: Option<(String, String)>,
}

/// The outcome of the last fetch handed on, to hand on only what differs.
pub struct Changes<T>(T);

impl<T: PartialEq + Clone> Changes<T> {
    pub fn from(first: T) -> Changes<T> {
        Changes(first)
    }

    /// Whether `outcome` differs from the last one; if so it becomes the last.
    pub fn is_new(&mut self, outcome: &T) -> bool {
        if *outcome == self.0 {
            return false;
        }
        self.0 = outcome.clone();
        true
    }
}

/// Trust settings, from the environment.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// `PULSE_AGENT_CONFIG_PUBLIC_KEYS`: replaces the embedded key.
    pub public_keys: Option<String>,
    /// `PULSE_AGENT_CONFIG_SIGNATURE_REQUIRED`.
    pub signature_required: bool,
}

/// Everything a fetch needs; moved to the remote-config thread.
pub struct Fetcher {
    pub client: Client,
    pub hostname: String,
    pub agent_id: String,
    pub trust: Trust,
    pub clock: fn() -> SystemTime,
}

impl Fetcher {
    /// Lookup and config within one [`CONFIG_TIMEOUT`] budget.
    pub fn fetch(&self) -> Result<Option<Remote>, String> {
        let deadline = std::time::Instant::now() + CONFIG_TIMEOUT;
        fetch(
            &self.client,
            &self.hostname,
            &self.agent_id,
            &self.trust,
            (self.clock)(),
            deadline,
        )
    }
}

/// Looks up this host's agent ID and fetches its config, both before
/// `deadline`. `Ok(None)`: the server has no config for it (yet).
pub fn fetch(
    client: &Client,
    hostname: &str,
    local_id: &str,
    trust: &Trust,
    now: SystemTime,
    deadline: std::time::Instant,
) -> Result<Option<Remote>, String> {
    let left = || {
        deadline
            .saturating_duration_since(std::time::Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut id = local_id.to_string();
    if !hostname.is_empty() {
        let path = format!(
            "/api/agents/agent/lookup?hostname={}",
            escape(hostname, true)
        );
        match client.get(&path, left(), Some(USER_AGENT)) {
            Reply::Status(200, body) => {
                let v: Value =
                    serde_json::from_slice(&body).map_err(|e| format!("lookup: bad JSON: {e}"))?;
                if v.get("success").and_then(Value::as_bool) == Some(true) {
                    if let Some(found) = v
                        .pointer("/agent/id")
                        .and_then(Value::as_str)
                        .map(str::trim)
                    {
                        if !found.is_empty() {
                            id = found.to_string();
                        }
                    }
                }
            }
            Reply::Status(404, _) => {}
            Reply::Status(s, body) => {
                return Err(format!(
                    "lookup: server answered {s}: {}",
                    crate::deliver::snippet(&body)
                ));
            }
            Reply::Failed(why) => return Err(format!("lookup: {why}")),
        }
    }
    let path = format!("/api/agents/agent/{}/config", escape(&id, false));
    let body = match client.get(&path, left(), Some(USER_AGENT)) {
        Reply::Status(200, body) => body,
        Reply::Status(404, _) => return Ok(None),
        Reply::Status(s, body) => {
            return Err(format!(
                "config: server answered {s}: {}",
                crate::deliver::snippet(&body)
            ));
        }
        Reply::Failed(why) => return Err(format!("config: {why}")),
    };
    let v: Value = serde_json::from_slice(&body).map_err(|e| format!("config: bad JSON: {e}"))?;
    verify(&v, &id, trust, now).map(Some)
}

/// Checks a config answer and extracts what this agent applies.
pub fn verify(
    answer: &Value,
    requested_id: &str,
    trust: &Trust,
    now: SystemTime,
) -> Result<Remote, String> {
    let empty = Map::new();
    let cfg = answer
        .get("config")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let commands = cfg.get("commandsEnabled").filter(|v| v.is_boolean());
    let settings: Map<String, Value> = cfg
        .get("settings")
        .and_then(Value::as_object)
        .map(|s| {
            s.iter()
                .filter(|(k, _)| APPLIED_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();

    let desired = cfg.get("desiredConfig").and_then(Value::as_object);
    if let Some(d) = desired {
        let mut canon = format!(
            "{{\"version\":{}",
            go_json(&Value::String(DESIRED_VERSION.into()))
        );
        close_canonical(&mut canon, commands, &settings);
        let want = format!(
            "sha256:{}",
            crate::deliver::hex(&Sha256::digest(canon.as_bytes()))
        );
        let got = d.get("hash").and_then(Value::as_str).unwrap_or("");
        if !got.eq_ignore_ascii_case(&want) {
            return Err(format!(
                "config hash {got} does not match its content ({want}); ignoring it"
            ));
        }
    }

    match cfg
        .get("signature")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        Some(sig) => verify_signature(
            answer,
            cfg,
            sig,
            requested_id,
            commands,
            &settings,
            trust,
            now,
        )?,
        None if trust.signature_required => {
            return Err("config is not signed and PULSE_AGENT_CONFIG_SIGNATURE_REQUIRED is set; ignoring it".into());
        }
        None => {}
    }

    let mut r = Remote::default();
    if let Some(v) = settings.get("interval") {
        r.interval = match v {
            Value::String(s) => crate::cli::parse_duration(s).ok(),
            Value::Number(n) => n
                .as_f64()
                .filter(|f| f.is_finite() && *f > 0.0 && *f < 1e9)
                .map(Duration::from_secs_f64),
            _ => None,
        }
        .filter(|d| *d >= Duration::from_secs(1));
    }
    if let Some(Value::String(s)) = settings.get("report_ip") {
        let s = s.trim();
        r.report_ip = if s.is_empty() {
            Some(None)
        } else {
            s.parse::<IpAddr>()
                .ok()
                .filter(|ip| !ip.is_unspecified())
                .map(Some)
        };
    }
    if let Some(Value::Bool(b)) = settings.get("disable_ceph") {
        r.disable_ceph = Some(*b);
    }
    if let Some(Value::String(s)) = settings.get("log_level") {
        r.log_level = crate::config::parse_log_level(s).ok();
    }
    let applied_any = r.interval.is_some()
        || r.report_ip.is_some()
        || r.disable_ceph.is_some()
        || r.log_level.is_some();
    if applied_any {
        if let Some(d) = desired {
            let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            r.applied = Some((s("version"), s("hash")));
        }
    }
    Ok(r)
}

#[allow(clippy::too_many_arguments)]
fn verify_signature(
    answer: &Value,
    cfg: &Map<String, Value>,
    sig: &str,
    requested_id: &str,
    commands: Option<&Value>,
    settings: &Map<String, Value>,
    trust: &Trust,
    now: SystemTime,
) -> Result<(), String> {
    let agent_id = answer.get("agentId").and_then(Value::as_str).unwrap_or("");
    if agent_id != requested_id {
        return Err(format!(
            "signed config is for agent {agent_id:?}, not {requested_id:?}; ignoring it"
        ));
    }
    let time = |k: &str| -> Result<SystemTime, String> {
        let s = cfg
            .get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("signed config has no {k}"))?;
        parse_rfc3339(s).ok_or_else(|| format!("signed config: {k} {s:?} is not a time"))
    };
    let (issued, expires) = (time("issuedAt")?, time("expiresAt")?);
    if now > expires + SKEW {
        return Err("signed config has expired; ignoring it".into());
    }
    if issued > now + SKEW {
        return Err(
            "signed config is issued in the future (check this host's clock); ignoring it".into(),
        );
    }
    let signature = base64_decode(sig).ok_or("config signature is not base64")?;
    let keys = trusted_keys(trust)?;
    // The signed payload names the agent `agentId` (Pulse 6.x) or `hostId`
    // (earlier servers); either, signed by a trusted key, proves the same thing.
    for id_key in ["agentId", "hostId"] {
        let mut canon = format!(
            "{{\"{id_key}\":{},\"issuedAt\":{},\"expiresAt\":{}",
            go_json(&Value::String(agent_id.into())),
            go_json(&Value::String(crate::report::rfc3339(issued))),
            go_json(&Value::String(crate::report::rfc3339(expires)))
        );
        close_canonical(&mut canon, commands, settings);
        let Ok(sig) = ed25519_compact::Signature::from_slice(&signature) else {
            return Err("config signature has the wrong length".into());
        };
        if keys
            .iter()
            .any(|k| k.verify(canon.as_bytes(), &sig).is_ok())
        {
            return Ok(());
        }
    }
    Err("config signature does not verify against any trusted key; ignoring it".into())
}

/// The optional tail both canonical documents share: `commandsEnabled` when
/// the server set it, the applied settings when there are any, and `}`.
fn close_canonical(canon: &mut String, commands: Option<&Value>, settings: &Map<String, Value>) {
    if let Some(c) = commands {
        let _ = write!(canon, ",\"commandsEnabled\":{c}");
    }
    if !settings.is_empty() {
        let _ = write!(
            canon,
            ",\"settings\":{}",
            go_json(&Value::Object(settings.clone()))
        );
    }
    canon.push('}');
}

fn trusted_keys(trust: &Trust) -> Result<Vec<ed25519_compact::PublicKey>, String> {
    let raw = trust
        .public_keys
        .as_deref()
        .unwrap_or(EMBEDDED_KEY_PEM)
        .trim();
    let mut keys = Vec::new();
    if raw.contains("BEGIN PUBLIC KEY") {
        for block in raw.split("-----BEGIN PUBLIC KEY-----").skip(1) {
            let body = block.split("-----END PUBLIC KEY-----").next().unwrap_or("");
            let b64: String = body.split_whitespace().collect();
            let der = base64_decode(&b64).ok_or("PULSE_AGENT_CONFIG_PUBLIC_KEYS: bad PEM")?;
            keys.push(ed25519_key(&der)?);
        }
    } else {
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bytes = base64_decode(part).ok_or("PULSE_AGENT_CONFIG_PUBLIC_KEYS: bad base64")?;
            keys.push(ed25519_key(&bytes)?);
        }
    }
    if keys.is_empty() {
        return Err("no trusted config keys".into());
    }
    Ok(keys)
}

/// A raw 32-byte key or an SPKI DER wrapping one.
fn ed25519_key(bytes: &[u8]) -> Result<ed25519_compact::PublicKey, String> {
    const SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let raw = match bytes.len() {
        32 => bytes,
        44 if bytes[..12] == SPKI_PREFIX => &bytes[12..],
        _ => return Err("trusted config key is not an Ed25519 public key".into()),
    };
    ed25519_compact::PublicKey::from_slice(raw).map_err(|e| e.to_string())
}

/// Standard base64 (with or without padding).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Standard base64 with padding (RFC 4648 §4), the form `base64_decode` reads
/// and the release channel's keys and signatures are written in.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Compact JSON as Go's `json.Marshal` writes it: object keys sorted, `<`,
/// `>`, `&`, U+2028 and U+2029 escaped, floats in Go's shortest form.
pub fn go_json(v: &Value) -> String {
    let mut out = String::new();
    write_go(v, &mut out);
    out
}

fn write_go(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&go_number(n)),
        Value::String(s) => go_string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go(x, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_string(k, out);
                out.push(':');
                write_go(&m[k], out);
            }
            out.push('}');
        }
    }
}

/// Go decodes JSON numbers into float64 and prints them with `'f'` format
/// between 1e-6 and 1e21, exponent format outside.
fn go_number(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        if i.unsigned_abs() < (1u64 << 53) {
            return i.to_string();
        }
    }
    let f = n.as_f64().unwrap_or(0.0);
    let abs = f.abs();
    if abs == 0.0 || (1e-6..1e21).contains(&abs) {
        format!("{f}")
    } else {
        let s = format!("{f:e}");
        // Rust: 1e21, 1.5e-7 → Go: 1e+21, 1.5e-7 (Go pads a positive exponent
        // to two digits and strips the zero padding of a negative one).
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        match exp.strip_prefix('-') {
            Some(digits) => format!("{mant}e-{}", digits.trim_start_matches('0')),
            None => format!("{mant}e+{exp:0>2}"),
        }
    }
}

fn go_string(s: &str, out: &mut String) {
    json_string(s, out, true);
}

/// A JSON string as Go (≥ 1.22) encodes it: `\b \f \n \r \t` short,
/// other controls `\u00XX`; with `html`, `encoding/json`'s HTML-safe escapes
/// of `<`, `>`, `&`, U+2028 and U+2029 too (zerolog leaves those alone).
pub(crate) fn json_string(s: &str, out: &mut String, html: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' || (html && matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}')) => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Percent-encodes for a query value (`query`) or a path segment.
pub fn escape(s: &str, query: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' if query => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// `2026-08-22T14:52:27.5Z` or with a `±HH:MM` offset → a time.
///
/// Works on bytes: the text comes from the server, and a multi-byte character
/// anywhere (`+1é00`) must give `None`, never a slice inside a character.
/// Every numeric field is exactly its digits (no sign, no spaces).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (
        digits(&b[0..4])?,
        digits(&b[5..7])?,
        digits(&b[8..10])?,
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    // Go's ranges (the server writes and reads these): no day 31 in a
    // 30-day month, no leap second.
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = match mo {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=12).contains(&mo) || !(1..=month_days).contains(&d) || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        let scale = 10i64.pow(9 - n as u32);
        nanos = u32::try_from(digits(&frac[..n])? * scale).ok()?;
        rest = &frac[n..];
    }
    let offset = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), hh @ .., b':', m1, m2] if hh.len() == 2 => {
            let sign = if *sign == b'-' { -1 } else { 1 };
            sign * (digits(hh)? * 3600 + digits(&[*m1, *m2])? * 60)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant), the inverse of report::civil_from_days.
    let (y, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// An unsigned decimal made only of ASCII digits (at most 9 of them).
fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 9 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0, |n, c| n * 10 + i64::from(c - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The refresh used to wake on the report's own tick (both start
    /// together, 60 s is two 30 s intervals): every minute one of them
    /// found the pooled connection taken and handshook a second one.
    #[test]
    fn config_fetch_lands_midway_between_reports_not_on_one() {
        let t0 = std::time::Instant::now();
        let s = Duration::from_secs;
        let half = Duration::from_millis(500);
        // Reports at t0, t0+30, t0+60...: a refresh due on a report's tick
        // (the thread started with the first report) moves to a midpoint.
        assert_eq!(fetch_at(t0 + s(60), t0, s(30), t0 + s(60)), t0 + s(75));
        // Due just after a midpoint: that midpoint, if it has not passed...
        assert_eq!(fetch_at(t0 + s(76), t0, s(30), t0 + s(70)), t0 + s(75));
        // ...else the next one.
        assert_eq!(fetch_at(t0 + s(76), t0, s(30), t0 + s(76)), t0 + s(105));
        // Due well before the grid's first midpoint: that midpoint.
        assert_eq!(fetch_at(t0, t0 + s(10), s(30), t0), t0 + s(25));
        // A 1 s interval: half a second after a report.
        assert_eq!(
            fetch_at(t0 + s(60), t0, s(1), t0 + s(60)),
            t0 + s(60) + half
        );
        // Reports rarer than refreshes: as due.
        assert_eq!(fetch_at(t0 + s(60), t0, s(300), t0), t0 + s(60));
        assert_eq!(fetch_at(t0 + s(60), t0, s(300), t0 + s(61)), t0 + s(61));
    }

    /// A fetch that ends as the one before (the same config, the same
    /// error) is not handed to the main loop (which would apply and log it
    /// again); any difference is, and a return to an earlier outcome counts
    /// as a difference.
    #[test]
    fn only_a_changed_outcome_is_handed_on() {
        let config = |secs| {
            Ok(Some(Remote {
                interval: Some(Duration::from_secs(secs)),
                ..Remote::default()
            }))
        };
        let failed: Result<Option<Remote>, String> = Err("status 404".into());
        let mut c = Changes::from(failed.clone());
        assert!(!c.is_new(&failed));
        assert!(c.is_new(&config(60)));
        assert!(!c.is_new(&config(60)));
        assert!(c.is_new(&config(30)));
        assert!(c.is_new(&Ok(None)));
        assert!(!c.is_new(&Ok(None)));
        assert!(c.is_new(&failed));
        assert!(c.is_new(&Err("status 500".into())));
    }

    /// Go 1.22 and later encode backspace and form feed as `\b` and `\f`
    /// (the server is Go 1.26); we wrote `\u0008` and `\u000c`, so a config
    /// value holding either would hash differently from the server's.
    #[test]
    fn go_json_escapes_backspace_and_form_feed_short() {
        let v = serde_json::json!({"k": "a\u{8}b\u{c}c\u{1}<"});
        assert_eq!(go_json(&v), r#"{"k":"a\bb\fc\u0001\u003c"}"#);
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_787_410_347)
    }

    #[test]
    fn spec_hash_vectors() {
        let trust = Trust::default();
        let empty = json!({"config": {"desiredConfig": {"version": "host-agent-config/v1",
            "hash": "sha256:6920d6e9952fc4c168bf4e6dad49b29ffb567767aced3476f429927fe879c8cd"}}});
        assert_eq!(
            verify(&empty, "a", &trust, now()).unwrap(),
            Remote::default()
        );
        let interval = json!({"config": {"settings": {"interval": "60s"}, "desiredConfig": {"version": "host-agent-config/v1",
            "hash": "sha256:331eae75e018ff14a61afd2f871bf24f735894dbcd53b97e7dccbf75af122fc9"}}});
        let r = verify(&interval, "a", &trust, now()).unwrap();
        assert_eq!(r.interval, Some(Duration::from_secs(60)));
        assert_eq!(
            r.applied.unwrap().1,
            "sha256:331eae75e018ff14a61afd2f871bf24f735894dbcd53b97e7dccbf75af122fc9"
        );
        let commands = json!({"config": {"commandsEnabled": false, "desiredConfig": {"version": "host-agent-config/v1",
            "hash": "sha256:59378fe4db8132c2ce1d9c16b492c16093156579d09357db44e34a0fab494bea"}}});
        assert!(verify(&commands, "a", &trust, now()).is_ok());
        let tampered = json!({"config": {"settings": {"interval": "5s"}, "desiredConfig": {"version": "host-agent-config/v1",
            "hash": "sha256:331eae75e018ff14a61afd2f871bf24f735894dbcd53b97e7dccbf75af122fc9"}}});
        assert!(
            verify(&tampered, "a", &trust, now())
                .unwrap_err()
                .contains("does not match")
        );
    }

    #[test]
    fn settings_types() {
        let s = json!({"config": {"settings": {"interval": 45, "report_ip": "192.0.2.9", "disable_ceph": true,
            "log_level": "debug", "enable_docker": "yes", "unknown": 1}}});
        let r = verify(&s, "a", &Trust::default(), now()).unwrap();
        assert_eq!(r.interval, Some(Duration::from_secs(45)));
        assert_eq!(r.report_ip, Some(Some("192.0.2.9".parse().unwrap())));
        assert_eq!(r.disable_ceph, Some(true));
        assert_eq!(r.log_level, Some(log::LevelFilter::Debug));
        assert_eq!(r.applied, None, "no desiredConfig, no fingerprint");
        let wrong = json!({"config": {"settings": {"interval": true, "disable_ceph": "yes", "report_ip": 5}}});
        assert_eq!(
            verify(&wrong, "a", &Trust::default(), now()).unwrap(),
            Remote::default()
        );
    }

    #[test]
    fn signatures() {
        let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7u8; 32]));
        let b64 = |b: &[u8]| {
            const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut s = String::new();
            for c in b.chunks(3) {
                let n = (u32::from(c[0]) << 16)
                    | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                    | u32::from(*c.get(2).unwrap_or(&0));
                for i in 0..4 {
                    if i <= c.len() {
                        s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                    } else {
                        s.push('=');
                    }
                }
            }
            s
        };
        let trust = Trust {
            public_keys: Some(b64(kp.pk.as_ref())),
            signature_required: true,
        };
        let payload = r#"{"agentId":"host-1","issuedAt":"2026-08-22T14:50:00Z","expiresAt":"2026-08-22T15:50:00Z","settings":{"interval":"2m"}}"#;
        let sig = b64(kp.sk.sign(payload, None).as_ref());
        let doc = |sig: &str, id: &str| {
            json!({"agentId": id, "config": {"settings": {"interval": "2m"}, "issuedAt": "2026-08-22T14:50:00Z",
                "expiresAt": "2026-08-22T15:50:00Z", "signature": sig}})
        };
        let r = verify(&doc(&sig, "host-1"), "host-1", &trust, now()).unwrap();
        assert_eq!(r.interval, Some(Duration::from_secs(120)));
        assert!(
            verify(&doc(&sig, "host-2"), "host-2", &trust, now()).is_err(),
            "signed for another agent"
        );
        assert!(
            verify(&doc(&sig, "host-1"), "other", &trust, now()).is_err(),
            "answer for another agent"
        );
        let late = now() + Duration::from_secs(7200);
        assert!(
            verify(&doc(&sig, "host-1"), "host-1", &trust, late)
                .unwrap_err()
                .contains("expired")
        );
        let mut bad = base64_decode(&sig).unwrap();
        bad[0] ^= 1;
        assert!(verify(&doc(&b64(&bad), "host-1"), "host-1", &trust, now()).is_err());
        let unsigned = json!({"config": {"settings": {"interval": "2m"}}});
        assert!(
            verify(&unsigned, "host-1", &trust, now())
                .unwrap_err()
                .contains("not signed")
        );
        // The embedded key parses.
        assert_eq!(trusted_keys(&Trust::default()).unwrap().len(), 1);
    }

    #[test]
    fn go_encoding() {
        assert_eq!(
            go_json(&json!({"b": "<a&b>", "a": [1, 2.5, 1e21, 0.0000001, null, true]})),
            r#"{"a":[1,2.5,1e+21,1e-7,null,true],"b":"\u003ca\u0026b\u003e"}"#
        );
        assert_eq!(escape("my host/x", true), "my+host%2Fx");
        assert_eq!(escape("a b", false), "a%20b");
        assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(base64_decode("!"), None);
        for n in 0..8 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 200) as u8).collect();
            assert_eq!(base64_decode(&base64_encode(&bytes)), Some(bytes));
        }
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
    }

    #[test]
    fn base64_encode_round_trips_through_base64_decode() {
        // RFC 4648 §10 test vectors, then every byte value at every length
        // modulo 3 (padding 0, 1 and 2).
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
        }
        let all: Vec<u8> = (0..=255).collect();
        for len in [253, 254, 255, 256] {
            let e = base64_encode(&all[..len]);
            assert_eq!(e.len() % 4, 0);
            assert_eq!(base64_decode(&e).as_deref(), Some(&all[..len]));
        }
        assert_eq!(base64_encode(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn times() {
        let t = parse_rfc3339("2026-08-22T14:52:27.123456789Z").unwrap();
        assert_eq!(crate::report::rfc3339(t), "2026-08-22T14:52:27.123456789Z");
        let t = parse_rfc3339("2026-08-22T16:52:27+02:00").unwrap();
        assert_eq!(crate::report::rfc3339(t), "2026-08-22T14:52:27Z");
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00Z")
                .map(crate::report::rfc3339)
                .as_deref(),
            Some("2000-02-29T00:00:00Z")
        );
        assert!(parse_rfc3339("2024-02-29T23:59:59Z").is_some());
        assert!(parse_rfc3339("9999-12-31T23:59:59.999999999Z").is_some());
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-08-22 14:52:27Z",
            "2026-08-22T14:52:27",
            "2026-08-22T14:52:27.Z",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad}");
        }
    }

    /// Day 31 of a 30-day month and second 60 passed, though Go (the server)
    /// refuses them: a container time passed on unchecked made the server
    /// refuse the whole docker report.
    #[test]
    fn rfc3339_outside_gos_ranges_is_rejected() {
        for bad in [
            "2026-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-08-22T14:52:60Z",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad}");
        }
    }

    /// Fuzzing found `+1é00` in an offset slicing inside `é` (a panic, so a
    /// config from the server could kill the agent). Every multi-byte
    /// character at every position, inserted or replacing a byte, gives
    /// `None` or a time, never a panic.
    #[test]
    fn rfc3339_with_multibyte_character_at_any_position_is_rejected_not_a_panic() {
        assert!(parse_rfc3339("2026-08-22T16:52:27+1é00").is_none());
        assert!(parse_rfc3339("2026-08-22T16:52:2é+02:00").is_none());
        assert!(parse_rfc3339("2026-08-22T16:52:27.1é").is_none());
        let valid = [
            "2026-08-22T16:52:27+02:00",
            "2026-08-22T14:52:27.123456789Z",
            "2026-08-22T14:52:27Z",
            "2026-08-22T14:52:27.5-11:30",
        ];
        for v in valid {
            assert!(parse_rfc3339(v).is_some(), "{v}");
            for c in ['é', '€', '𝄞', '\u{80}', '\u{2028}'] {
                for i in 0..=v.len() {
                    let mut inserted = v.to_string();
                    inserted.insert(i, c);
                    let _ = parse_rfc3339(&inserted);
                    if i < v.len() {
                        let mut replaced = v.to_string();
                        replaced.replace_range(i..i + 1, c.encode_utf8(&mut [0; 4]));
                        assert!(parse_rfc3339(&replaced).is_none(), "{replaced}");
                    }
                }
            }
        }
    }

    /// `str::parse::<i64>` took `-1` and `+5` as fields, so hour `-1` passed
    /// the range check and shifted the time.
    #[test]
    fn rfc3339_with_signed_or_spaced_fields_is_rejected() {
        for bad in [
            "2026-08-22T-1:52:27Z",
            "2026-08-22T+1:52:27Z",
            "+026-08-22T14:52:27Z",
            "2026-08-22T14:52:27+-1:00",
            "2026-08-22T14:52:27+01:+0",
            "2026-08-22T14:52: 7Z",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad}");
        }
    }
}
