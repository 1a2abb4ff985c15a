//! HTTP(S) to the release channel: small files read whole (the index and
//! signatures, capped), and a binary streamed into an open file with its
//! SHA-256 worked out on the way, never more than a limit on disk.
//!
//! The channel never sees the agent's token: this client has none. TLS trusts
//! the built-in roots, the system store and `--cacert`, never `--insecure` or
//! `--server-fingerprint` (those are about the Pulse server, not the channel).
//! Redirects are followed only to `https` URLs, at most [`MAX_REDIRECTS`].

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use sha2::{Digest, Sha256};

use crate::config::ServerUrl;
use crate::deliver;

pub const MAX_REDIRECTS: usize = 5;

/// The release channel at one base URL.
#[derive(Clone)]
pub struct Channel {
    agent: ureq::Agent,
    base: String,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("base", &self.base).finish()
    }
}

/// A download that did not end with the whole file on disk.
#[derive(Debug)]
pub enum Failed {
    /// The server declared more than the limit; nothing was read.
    Declared(u64, u64),
    /// The body went past the limit; reading stopped there.
    Longer(u64),
    /// Anything else: status, transport, deadline, disk.
    Other(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Declared(n, limit) => {
                write!(
                    f,
                    "Content-Length {n} is over the limit of {limit} bytes; not downloaded"
                )
            }
            Failed::Longer(limit) => {
                write!(f, "the body is longer than {limit} bytes; stopped there")
            }
            Failed::Other(why) => f.write_str(why),
        }
    }
}

impl Channel {
    pub fn new(url: &ServerUrl, tls: Arc<ClientConfig>, user_agent: &str) -> Channel {
        Channel {
            // Each request sets its own deadline.
            agent: deliver::http_agent(url, tls, user_agent, Duration::from_secs(30)),
            base: url.to_string(),
        }
    }

    pub fn url_of(&self, file: &str) -> String {
        format!("{}/{file}", self.base)
    }

    /// GETs `file`, following https redirects, until `deadline`. Returns
    /// the 200 answer; any other status is an error.
    fn get(
        &self,
        file: &str,
        deadline: Instant,
    ) -> Result<ureq::http::Response<ureq::Body>, String> {
        let mut url = self.url_of(file);
        for _ in 0..=MAX_REDIRECTS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("{url}: no time left"));
            }
            let resp = self
                .agent
                .get(&url)
                .config()
                .timeout_global(Some(left))
                .build()
                .call()
                .map_err(|e| format!("{url}: {}", deliver::describe(&e)))?;
            let status = resp.status().as_u16();
            if (300..400).contains(&status) {
                let location = resp
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                url = redirect_target(&url, location)
                    .map_err(|why| format!("{url}: answered {status}: {why}"))?;
                continue;
            }
            if status != 200 {
                return Err(format!("{url}: answered {status}"));
            }
            return Ok(resp);
        }
        Err(format!("{url}: more than {MAX_REDIRECTS} redirects"))
    }

    /// A small file, whole: at most `cap` bytes, or an error.
    pub fn small(&self, file: &str, cap: u64, timeout: Duration) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + timeout;
        let mut resp = self.get(file, deadline)?;
        if let Some(n) = resp.body().content_length() {
            if n > cap {
                return Err(format!(
                    "{}: {n} bytes, over the limit of {cap}",
                    self.url_of(file)
                ));
            }
        }
        let mut out = Vec::new();
        resp.body_mut()
            .as_reader()
            .take(cap + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("{}: {e}", self.url_of(file)))?;
        if out.len() as u64 > cap {
            return Err(format!(
                "{}: longer than the limit of {cap} bytes",
                self.url_of(file)
            ));
        }
        Ok(out)
    }

    /// Streams `file` into `out`, hashing as it goes, stopping past `limit`
    /// bytes (never more than `limit` written) or at `deadline`. Returns the
    /// size and SHA-256 of what was written.
    pub fn download(
        &self,
        file: &str,
        out: &mut impl Write,
        limit: u64,
        timeout: Duration,
    ) -> Result<(u64, [u8; 32]), Failed> {
        let deadline = Instant::now() + timeout;
        let mut resp = self.get(file, deadline).map_err(Failed::Other)?;
        if let Some(n) = resp.body().content_length() {
            if n > limit {
                return Err(Failed::Declared(n, limit));
            }
        }
        let mut body = resp.body_mut().as_reader();
        let mut hash = Sha256::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // One byte more than the limit is asked for, to see it is there;
            // it is never written.
            let want = (limit + 1 - total).min(buf.len() as u64) as usize;
            let n = match body.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failed::Other(format!("{}: {e}", self.url_of(file)))),
            };
            if total + n as u64 > limit {
                return Err(Failed::Longer(limit));
            }
            out.write_all(&buf[..n])
                .map_err(|e| Failed::Other(format!("writing the download: {e}")))?;
            hash.update(&buf[..n]);
            total += n as u64;
        }
        Ok((total, hash.finalize().into()))
    }
}

/// Where a redirect goes: `https://` only (an absolute URL, or a path on the
/// same https origin).
pub fn redirect_target(from: &str, location: &str) -> Result<String, String> {
    let location = location.trim();
    if location.is_empty() {
        return Err("a redirect without a Location".into());
    }
    if let Some((scheme, _)) = location.split_once("://") {
        return if scheme.eq_ignore_ascii_case("https") {
            Ok(location.to_string())
        } else {
            Err(format!(
                "redirect to {location}: only https redirects are followed"
            ))
        };
    }
    if location.starts_with('/') && !location.starts_with("//") && from.starts_with("https://") {
        let rest = &from["https://".len()..];
        let origin_len = "https://".len() + rest.find('/').unwrap_or(rest.len());
        return Ok(format!("{}{location}", &from[..origin_len]));
    }
    Err(format!(
        "redirect to {location}: only https redirects are followed"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_redirects_are_followed() {
        let from = "https://dl.example/ch/release.json";
        assert_eq!(
            redirect_target(from, "https://cdn.example/x").unwrap(),
            "https://cdn.example/x"
        );
        assert_eq!(
            redirect_target(from, "/other/x").unwrap(),
            "https://dl.example/other/x"
        );
        assert!(redirect_target(from, "http://cdn.example/x").is_err());
        assert!(redirect_target(from, "HTTP://cdn.example/x").is_err());
        assert!(redirect_target(from, "//cdn.example/x").is_err());
        assert!(redirect_target(from, "ftp://cdn.example/x").is_err());
        assert!(redirect_target(from, "").is_err());
        // A relative redirect from an http channel would stay on http.
        assert!(redirect_target("http://nas.lan/ch/a", "/b").is_err());
    }
}
