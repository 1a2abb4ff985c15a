//! The release channel's signed index (`release.json`), the trusted keys
//! and version comparison. Pure functions: bytes in, verdicts out.
//!
//! The index is verified before a single field of it is believed: its
//! signature first (over the exact bytes served), then its name, its expiry
//! (a frozen or replayed old index is refused) and its version (strictly
//! newer than the running one: never a downgrade).

use std::cmp::Ordering;
use std::time::SystemTime;

use ed25519_compact::{PublicKey, Signature};
use serde_json::Value;

use crate::remote_config::{base64_decode, parse_rfc3339};

/// The program name an index must carry.
pub const NAME: &str = "pulse-agent";
/// The largest index read.
pub const MAX_INDEX: u64 = 64 * 1024;
/// The largest `.sig` file read (one line of 88 characters is expected).
pub const MAX_SIG: u64 = 1024;

/// One build of a release, for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    /// A plain file name in the channel (no `/`, not `.` or `..`).
    pub file: String,
    pub size: u64,
    pub sha256: [u8; 32],
}

/// A parsed (and not yet judged) index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub name: String,
    pub version: String,
    pub released: SystemTime,
    pub expires: SystemTime,
    /// By target name (`linux-amd64`, ...), in the document's order.
    pub assets: Vec<(String, Asset)>,
}

impl Release {
    pub fn asset(&self, target: &str) -> Option<&Asset> {
        self.assets
            .iter()
            .find(|(t, _)| t == target)
            .map(|(_, a)| a)
    }
}

/// Parses `release.json`. Every field is required; an unknown field is
/// ignored (a later index may add some).
pub fn parse(bytes: &[u8]) -> Result<Release, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let s = |k: &str| -> Result<String, String> {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("no string \"{k}\""))
    };
    let time = |k: &str| -> Result<SystemTime, String> {
        let t = s(k)?;
        parse_rfc3339(&t).ok_or_else(|| format!("\"{k}\" {t:?} is not an RFC 3339 time"))
    };
    let version = s("version")?;
    if parse_version(&version).is_none() {
        return Err(format!("\"version\" {version:?} is not X.Y.Z"));
    }
    let assets = v
        .get("assets")
        .and_then(Value::as_object)
        .ok_or("no object \"assets\"")?
        .iter()
        .map(|(target, a)| Ok((target.clone(), asset(target, a)?)))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Release {
        name: s("name")?,
        version,
        released: time("released")?,
        expires: time("expires")?,
        assets,
    })
}

fn asset(target: &str, a: &Value) -> Result<Asset, String> {
    let bad = |why: &str| format!("asset {target:?}: {why}");
    let file = a
        .get("file")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no \"file\""))?;
    // A name, never a path: the URL is the channel's, and nothing else.
    if !plain_file_name(file) {
        return Err(bad(&format!("\"file\" {file:?} is not a plain file name")));
    }
    let size = a
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("no integer \"size\""))?;
    let hex = a
        .get("sha256")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no \"sha256\""))?;
    let sha256 = parse_sha256(hex).ok_or_else(|| bad("\"sha256\" is not 64 hex digits"))?;
    Ok(Asset {
        file: file.to_string(),
        size,
        sha256,
    })
}

/// A name in the channel's directory: no path, nothing a terminal or a URL
/// would treat specially (the release tool writes only such names).
pub fn plain_file_name(f: &str) -> bool {
    !f.is_empty()
        && f != "."
        && f != ".."
        && f.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let b = hex.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// A `.sig` file: one line, standard base64 with padding, of a 64-byte
/// Ed25519 signature.
pub fn parse_signature(text: &[u8]) -> Result<Signature, String> {
    let line = std::str::from_utf8(text)
        .map_err(|_| "not text".to_string())?
        .trim();
    if line.is_empty() {
        return Err("empty".into());
    }
    if line.len() % 4 != 0 || line.contains(char::is_whitespace) {
        return Err("not one line of padded base64".into());
    }
    let raw = base64_decode(line).ok_or("not base64")?;
    Signature::from_slice(&raw).map_err(|_| format!("{} bytes, not 64", raw.len()))
}

/// Whether any of `keys` signed the contents of `file`, read in chunks:
/// memory does not grow with the file (a 90 MiB binary is never in memory).
pub fn verify_file(
    keys: &[PublicKey],
    file: &std::path::Path,
    sig: &Signature,
) -> std::io::Result<bool> {
    use std::io::Read;
    let mut buf = vec![0u8; 64 * 1024];
    for key in keys {
        let Ok(mut state) = key.verify_incremental(sig) else {
            continue;
        };
        let mut f = std::fs::File::open(file)?;
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => state.absorb(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if state.verify().is_ok() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether any of `keys` signed `message`.
pub fn verify(keys: &[PublicKey], message: &[u8], sig: &Signature) -> bool {
    keys.iter().any(|k| k.verify(message, sig).is_ok())
}

/// A list of trusted keys: base64 of raw 32-byte Ed25519 public keys,
/// separated by commas or newlines; `#` starts a comment. Returns the keys
/// and what could not be used (each a message naming the entry's line).
pub fn parse_keys(text: &str) -> (Vec<PublicKey>, Vec<String>) {
    let mut keys = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for item in line.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let key = (item.len() == 44)
                .then(|| base64_decode(item))
                .flatten()
                .and_then(|raw| PublicKey::from_slice(&raw).ok());
            match key {
                Some(k) if !keys.contains(&k) => keys.push(k),
                Some(_) => {}
                None => bad.push(format!(
                    "line {}: not the base64 of a 32-byte Ed25519 public key",
                    n + 1
                )),
            }
        }
    }
    (keys, bad)
}

/// A version as the stock agent compares them: a leading `v` and `+build`
/// dropped; `major.minor.patch` (missing parts 0, each its leading digits);
/// `-prerelease` identifiers. `None` when there is no leading digit at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    core: [u64; 3],
    pre: Vec<String>,
}

pub fn parse_version(s: &str) -> Option<Version> {
    let s = s.trim();
    let s = s.strip_prefix('v').unwrap_or(s);
    let s = s.split('+').next().unwrap_or("");
    let (core, pre) = match s.split_once('-') {
        Some((c, p)) => (c, p),
        None => (s, ""),
    };
    if !core.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut parts = [0u64; 3];
    for (slot, part) in parts.iter_mut().zip(core.split('.')) {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        *slot = digits.parse().ok()?;
    }
    Some(Version {
        core: parts,
        pre: pre
            .split('.')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.core.cmp(&other.core).then_with(|| {
            match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                // A release is newer than any of its prereleases.
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => {
                    for (a, b) in self.pre.iter().zip(&other.pre) {
                        let o = match (a.parse::<u64>(), b.parse::<u64>()) {
                            (Ok(x), Ok(y)) => x.cmp(&y),
                            (Ok(_), Err(_)) => Ordering::Less,
                            (Err(_), Ok(_)) => Ordering::Greater,
                            (Err(_), Err(_)) => a.as_bytes().cmp(b.as_bytes()),
                        };
                        if o != Ordering::Equal {
                            return o;
                        }
                    }
                    self.pre.len().cmp(&other.pre.len())
                }
            }
        })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Whether `candidate` is strictly newer than `running`; a version that
/// cannot be read is never newer.
pub fn is_newer(candidate: &str, running: &str) -> bool {
    match (parse_version(candidate), parse_version(running)) {
        (Some(c), Some(r)) => c > r,
        _ => false,
    }
}

/// The same version, however written (`v1.2.3` and `1.2.3+build`).
pub fn same_version(a: &str, b: &str) -> bool {
    match (parse_version(a), parse_version(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a.trim() == b.trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn newer(a: &str, b: &str) -> bool {
        is_newer(a, b)
    }

    #[test]
    fn versions_compare_like_the_stock_agent() {
        assert!(newer("0.2.0", "v0.1.0"));
        assert!(newer("1.0.0", "0.99.99"));
        assert!(newer("1.10.0", "1.9.0"));
        assert!(!newer("v0.1.0", "0.1.0"));
        assert!(!newer("0.1.0+build.7", "0.1.0"));
        assert!(!newer("0.0.9", "0.1.0"));
        // Prereleases: below the release, numeric below alphanumeric,
        // numbers numerically, a shorter list lower.
        assert!(newer("1.0.0", "1.0.0-rc.1"));
        assert!(newer("1.0.0-rc.2", "1.0.0-rc.1"));
        assert!(newer("1.0.0-rc.10", "1.0.0-rc.9"));
        assert!(newer("1.0.0-alpha", "1.0.0-1"));
        assert!(newer("1.0.0-rc.1.1", "1.0.0-rc.1"));
        // Missing parts are 0; a part takes its leading digits.
        assert!(same_version("1", "1.0.0"));
        assert!(same_version("1.2x.3", "1.2.3"));
        // Unreadable is never newer, never a downgrade target.
        assert!(!newer("latest", "0.1.0"));
        assert!(!newer("99999999999999999999999.0.0", "0.1.0"));
    }

    fn doc() -> String {
        r#"{"name":"pulse-agent","version":"1.2.3","released":"2026-12-01T00:00:00Z",
            "expires":"2027-03-01T00:00:00Z","extra":1,
            "assets":{"linux-amd64":{"file":"pulse-agent-linux-amd64","size":3,
            "sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}}}"#
            .into()
    }

    #[test]
    fn an_index_parses_field_by_field() {
        let r = parse(doc().as_bytes()).unwrap();
        assert_eq!(r.name, "pulse-agent");
        assert_eq!(r.version, "1.2.3");
        let a = r.asset("linux-amd64").unwrap();
        assert_eq!(
            (a.file.as_str(), a.size, a.sha256[0]),
            ("pulse-agent-linux-amd64", 3, 0xba)
        );
        assert!(r.asset("linux-arm64").is_none());
    }

    #[test]
    fn an_index_with_a_path_for_a_file_name_is_refused() {
        for file in ["../pulse-agent", "a/b", "..", ".", "", "x y", "http://x"] {
            let d = doc().replace(
                "\"file\":\"pulse-agent-linux-amd64\"",
                &format!("\"file\":{file:?}"),
            );
            let e = parse(d.as_bytes()).unwrap_err();
            assert!(e.contains("not a plain file name"), "{file}: {e}");
        }
    }

    #[test]
    fn an_index_missing_or_mistyping_a_field_is_refused() {
        for (from, to) in [
            ("\"version\":\"1.2.3\"", "\"version\":\"latest\""),
            (
                "\"expires\":\"2027-03-01T00:00:00Z\"",
                "\"expires\":\"soon\"",
            ),
            ("\"size\":3", "\"size\":-3"),
            ("\"size\":3", "\"size\":3.5"),
            ("ba7816bf", "zz7816bf"),
            ("\"name\":\"pulse-agent\",", ""),
        ] {
            assert!(parse(doc().replace(from, to).as_bytes()).is_err(), "{to}");
        }
        assert!(parse(b"").is_err());
        assert!(parse(b"[]").is_err());
    }

    #[test]
    fn signatures_are_one_line_of_padded_base64_of_64_bytes() {
        let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([7; 32]));
        let sig = kp.sk.sign(b"msg", None);
        let line = crate::remote_config::base64_encode(sig.as_ref());
        let parsed = parse_signature(format!("{line}\n").as_bytes()).unwrap();
        assert!(verify(&[kp.pk], b"msg", &parsed));
        assert!(!verify(&[kp.pk], b"msh", &parsed));
        assert!(parse_signature(line.trim_end_matches('=').as_bytes()).is_err());
        assert!(parse_signature(b"").is_err());
        assert!(parse_signature(b"AAAA").is_err());
        assert!(parse_signature(format!("{} {}", &line[..40], &line[40..]).as_bytes()).is_err());
        // The same verdicts, streamed from a file.
        let f = std::env::temp_dir().join(format!("pulse-verify-{}", std::process::id()));
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&f, &big).unwrap();
        let sig = kp.sk.sign(&big, None);
        let other = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([8; 32])).pk;
        assert!(verify_file(&[other, kp.pk], &f, &sig).unwrap());
        assert!(!verify_file(&[other], &f, &sig).unwrap());
        assert!(!verify_file(&[kp.pk], &f, &parsed).unwrap());
        std::fs::remove_file(&f).unwrap();
    }

    #[test]
    fn key_lists_take_commas_newlines_and_comments() {
        let a = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([1; 32])).pk;
        let b = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([2; 32])).pk;
        let (ea, eb) = (
            crate::remote_config::base64_encode(a.as_ref()),
            crate::remote_config::base64_encode(b.as_ref()),
        );
        let (keys, bad) = parse_keys(&format!(
            "# release key\n{ea}, {eb}\n\n{ea} # again\nnot-a-key\n"
        ));
        assert_eq!(keys, vec![a, b]);
        assert_eq!(
            bad,
            vec!["line 5: not the base64 of a 32-byte Ed25519 public key".to_string()]
        );
    }
}
