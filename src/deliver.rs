//! HTTPS to the Pulse server: TLS set-up, the HTTP client, and what an answer
//! to a report means.
//!
//! TLS is rustls (TLS 1.2 and 1.3 only), plugged into ureq as its connector so
//! that the agent, not ureq, decides what to trust:
//! * default: the Mozilla roots (webpki-roots) plus every certificate of
//!   `--cacert`;
//! * `--server-fingerprint`: exactly the certificate whose SHA-256 matches,
//!   whoever signed it;
//! * `--insecure`: any certificate.
//!
//! In every mode the server must still prove it holds the certificate's key
//! (handshake signatures are always verified).
//!
//! Requests carry `X-API-Token` and `Authorization: Bearer` (when there is a
//! token), never follow redirects (a 3xx is a failure: following one could
//! hand the token to another host), and time out. `HTTPS_PROXY`/`HTTP_PROXY`/
//! `NO_PROXY` are honoured like the stock agent's host client. Bodies are sent
//! uncompressed: a host report is a few KiB (see ARCHITECTURE.md).

use std::fmt;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
    StreamOwned,
};
use sha2::{Digest, Sha256};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{
    Buffers, ConnectProxyConnector, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout,
    TcpConnector, Transport, TransportAdapter,
};

use crate::config::{Secret, ServerUrl};

/// Timeout of a report POST (the stock agent's).
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(15);
/// Timeout of each remote-config request.
pub const CONFIG_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers are small JSON documents; nothing larger is read.
pub const MAX_ANSWER: u64 = 1024 * 1024;

/// Failures to set up TLS or the client (configuration errors).
#[derive(Debug)]
pub enum Error {
    CaCert(std::path::PathBuf, String),
    Tls(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::CaCert(p, why) => write!(f, "--cacert {}: {why}", p.display()),
            Error::Tls(why) => write!(f, "TLS set-up: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// What to trust.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub cacert: Option<std::path::PathBuf>,
    pub insecure: bool,
    pub fingerprint: Option<[u8; 32]>,
}

/// The rustls client configuration for these options.
pub fn tls_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let algorithms = provider.signature_verification_algorithms;
    let config = if let Some(fp) = opts.fingerprint {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                sha256: fp,
                algorithms,
            }))
            .with_no_client_auth()
    } else if opts.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate { algorithms }))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut bundle = Vec::new();
        if let Some(path) = &opts.cacert {
            let bad = |why: String| Error::CaCert(path.clone(), why);
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| bad(format!("not a PEM bundle: {e:?}")))?;
            if certs.is_empty() {
                return Err(bad("holds no certificate".into()));
            }
            let (added, _ignored) = roots.add_parsable_certificates(certs.iter().cloned());
            if added == 0 {
                return Err(bad("none of its certificates can be used as a CA".into()));
            }
            bundle = certs;
        }
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| Error::Tls(e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Bundle {
                webpki,
                bundle,
                algorithms,
            }))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// The handshake-signature checks every verifier here shares: the server
/// must hold its certificate's key, whatever is trusted about the certificate.
macro_rules! verify_signatures_with {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

/// Accepts exactly the leaf certificate with this SHA-256 (of its DER).
#[derive(Debug)]
struct Pinned {
    sha256: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

/// The web roots plus `--cacert`, verified by webpki; a server certificate
/// that is itself in the `--cacert` bundle (a self-signed certificate, as
/// `openssl req -x509` makes them, which webpki refuses as a CA used as an
/// end entity) is trusted as it is, for the name it carries.
#[derive(Debug)]
struct Bundle {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    bundle: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Bundle {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(v) => Ok(v),
            Err(e)
                if self
                    .bundle
                    .iter()
                    .any(|c| c.as_ref() == end_entity.as_ref()) =>
            {
                let parsed =
                    rustls::server::ParsedCertificate::try_from(end_entity).map_err(|_| e)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    verify_signatures_with!();
}

/// Accepts any certificate (`--insecure`).
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate SHA-256 {} does not match --server-fingerprint",
                hex(&got)
            )))
        }
    }

    verify_signatures_with!();
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    verify_signatures_with!();
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Wraps ureq's TCP (or proxy) transport in rustls for `https` URLs.
struct TlsConnector {
    config: Arc<ClientConfig>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsConnector")
    }
}

impl<In: Transport> Connector<In> for TlsConnector {
    type Out = Either<In, TlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let host = details
            .uri
            .host()
            .ok_or(ureq::Error::Tls("URL has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| ureq::Error::Tls("invalid server name"))?;
        let mut conn = ClientConnection::new(self.config.clone(), name)
            .map_err(|e| ureq::Error::Io(std::io::Error::other(e)))?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        sock.set_timeout(details.timeout);
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(TlsTransport {
            buffers,
            stream: StreamOwned { conn, sock },
        })))
    }
}

struct TlsTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

impl fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsTransport")
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

/// The proxy for requests to `url`, from the environment as Go reads it:
/// `HTTPS_PROXY` for an https server, `HTTP_PROXY` for an http one (either
/// case), none for a server on this machine or a host `NO_PROXY` lists.
pub fn proxy_for(url: &ServerUrl, env: &dyn Fn(&str) -> Option<String>) -> Option<ureq::Proxy> {
    let host = url.host.as_str();
    let loopback = host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return None;
    }
    let get = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|n| env(n))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some(no) = get(["NO_PROXY", "no_proxy"]) {
        if no
            .split(',')
            .any(|entry| no_proxy_matches(entry.trim(), host))
        {
            return None;
        }
    }
    let value = match url.scheme {
        crate::config::Scheme::Https => get(["HTTPS_PROXY", "https_proxy"]),
        crate::config::Scheme::Http => get(["HTTP_PROXY", "http_proxy"]),
    }?;
    match ureq::Proxy::new(&value) {
        Ok(p) => Some(p),
        Err(e) => {
            log::warn!("ignoring the proxy in the environment: {e}");
            None
        }
    }
}

/// One `NO_PROXY` entry: `*`, a host or domain (`example.com` also covers
/// `a.example.com`; a leading `.` or `*.` is the same), an IP, or an IP
/// range (`10.0.0.0/8`); a port on the entry is ignored.
fn no_proxy_matches(entry: &str, host: &str) -> bool {
    if entry == "*" {
        return true;
    }
    let entry = entry.to_ascii_lowercase();
    if let Some((net, bits)) = entry.split_once('/') {
        let (Ok(net), Ok(bits), Ok(ip)) = (
            net.parse::<std::net::IpAddr>(),
            bits.parse::<u32>(),
            host.parse::<std::net::IpAddr>(),
        ) else {
            return false;
        };
        return match (net, ip) {
            (std::net::IpAddr::V4(n), std::net::IpAddr::V4(i)) if bits <= 32 => {
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                u32::from(n) & mask == u32::from(i) & mask
            }
            (std::net::IpAddr::V6(n), std::net::IpAddr::V6(i)) if bits <= 128 => {
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        };
    }
    let entry = entry.trim_start_matches("*.").trim_start_matches('.');
    let entry = match entry.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
        _ => entry,
    };
    !entry.is_empty() && (host == entry || host.ends_with(&format!(".{entry}")))
}

/// A request's outcome at the HTTP level.
#[derive(Debug)]
pub enum Reply {
    /// Any HTTP status, with up to [`MAX_ANSWER`] bytes of body.
    Status(u16, Vec<u8>),
    /// No HTTP answer: connection, TLS, timeout, or a redirect that was not followed.
    Failed(String),
}

/// The HTTP client for one Pulse server. Clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<Secret>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token)
            .finish()
    }
}

impl Client {
    pub fn new(
        url: &ServerUrl,
        token: Option<Secret>,
        tls: &TlsOptions,
        user_agent: &str,
    ) -> Result<Client, Error> {
        let tls = tls_config(tls)?;
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(user_agent)
            .proxy(proxy_for(url, &|k| std::env::var(k).ok()))
            .timeout_global(Some(REPORT_TIMEOUT))
            .max_idle_connections(2)
            .max_idle_connections_per_host(1)
            .max_idle_age(Duration::from_secs(120))
            .build();
        let connector =
            ().chain(ConnectProxyConnector::default())
                .chain(TcpConnector::default())
                .chain(TlsConnector { config: tls });
        Ok(Client {
            agent: ureq::Agent::with_parts(config, connector, DefaultResolver::default()),
            base: url.to_string(),
            token,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn set_token(&mut self, token: Secret) {
        self.token = Some(token);
    }

    fn auth<B>(&self, mut req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        if let Some(t) = &self.token {
            req = req
                .header("X-API-Token", t.expose())
                .header("Authorization", format!("Bearer {}", t.expose()));
        }
        req
    }

    /// `POST base+path` with a JSON body.
    pub fn post_json(
        &self,
        path: &str,
        body: &[u8],
        timeout: Duration,
        user_agent: Option<&str>,
    ) -> Reply {
        let req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        answer(self.finish(req, timeout, user_agent).send(body))
    }

    /// `GET base+path_and_query`.
    pub fn get(&self, path_and_query: &str, timeout: Duration, user_agent: Option<&str>) -> Reply {
        let req = self
            .agent
            .get(format!("{}{path_and_query}", self.base))
            .header("Accept", "application/json");
        answer(self.finish(req, timeout, user_agent).call())
    }

    /// Adds the user agent, the token and the timeout every request carries.
    fn finish<B>(
        &self,
        mut req: ureq::RequestBuilder<B>,
        timeout: Duration,
        user_agent: Option<&str>,
    ) -> ureq::RequestBuilder<B> {
        if let Some(ua) = user_agent {
            req = req.header("User-Agent", ua);
        }
        self.auth(req)
            .config()
            .timeout_global(Some(timeout))
            .build()
    }
}

fn answer(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    match result {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            if (300..400).contains(&status) {
                let to = resp
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_string();
                return Reply::Failed(format!(
                    "server answered {status} redirecting to {to}; redirects are not followed"
                ));
            }
            let body = resp
                .body_mut()
                .with_config()
                .limit(MAX_ANSWER)
                .read_to_vec()
                .unwrap_or_default();
            Reply::Status(status, body)
        }
        Err(e) => Reply::Failed(describe(&e)),
    }
}

/// A transport error in one line, with the TLS reason when there is one.
fn describe(e: &ureq::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// What the server's answer to a report means for the report.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// 2xx: delivered; the acknowledgement's useful fields.
    Delivered(Ack),
    /// 401: the token is unknown or expired. Not worth keeping the report.
    Unauthorized,
    /// 403: the token lacks the `agent:report` scope. Not worth keeping the report.
    Forbidden,
    /// 400, 413, 415: the server will never take this report; keeping it would
    /// block every later one.
    Rejected(u16, String),
    /// Anything else (network, TLS, timeout, redirect, 429, 5xx, other 4xx): try again later.
    Failed(String),
}

/// The parts of a report acknowledgement the agent uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ack {
    pub agent_id: Option<String>,
    pub server_version: Option<String>,
}

pub fn classify(reply: Reply) -> Delivery {
    match reply {
        Reply::Failed(why) => Delivery::Failed(why),
        Reply::Status(s, body) if (200..300).contains(&s) => Delivery::Delivered(parse_ack(&body)),
        Reply::Status(401, _) => Delivery::Unauthorized,
        Reply::Status(403, _) => Delivery::Forbidden,
        Reply::Status(s @ (400 | 413 | 415), body) => Delivery::Rejected(s, snippet(&body)),
        Reply::Status(s, body) => {
            Delivery::Failed(format!("server answered {s}: {}", snippet(&body)))
        }
    }
}

/// Errors ignored, like the stock agent: a 2xx is a delivery whatever its body.
pub fn parse_ack(body: &[u8]) -> Ack {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    Ack {
        agent_id: json_str(&v, "agentId"),
        server_version: json_str(&v, "serverVersion"),
    }
}

/// A string member of a JSON answer, trimmed; `None` when missing or blank.
pub fn json_str(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(|x| x.as_str())
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
}

/// The start of an error body, on one line, for a log message.
pub fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(300)]);
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let ok = classify(Reply::Status(
            200,
            br#"{"success":true,"agentId":"abc","serverVersion":"v6.3.0"}"#.to_vec(),
        ));
        assert_eq!(
            ok,
            Delivery::Delivered(Ack {
                agent_id: Some("abc".into()),
                server_version: Some("v6.3.0".into())
            })
        );
        assert_eq!(
            classify(Reply::Status(202, b"garbage".to_vec())),
            Delivery::Delivered(Ack::default())
        );
        assert_eq!(classify(Reply::Status(401, vec![])), Delivery::Unauthorized);
        assert_eq!(classify(Reply::Status(403, vec![])), Delivery::Forbidden);
        assert!(matches!(
            classify(Reply::Status(413, vec![])),
            Delivery::Rejected(413, _)
        ));
        assert!(matches!(
            classify(Reply::Status(429, vec![])),
            Delivery::Failed(_)
        ));
        assert!(matches!(
            classify(Reply::Status(500, vec![])),
            Delivery::Failed(_)
        ));
        assert!(matches!(
            classify(Reply::Status(404, vec![])),
            Delivery::Failed(_)
        ));
    }

    #[test]
    fn proxies_by_scheme_never_for_loopback() {
        let url = |s: &str| crate::config::parse_url(s, true, &|_| None).unwrap();
        let env = |k: &str| match k {
            "HTTPS_PROXY" => Some("http://proxy.lan:3128".to_string()),
            "http_proxy" => Some("http://plain.lan:8080".to_string()),
            "NO_PROXY" => Some("internal.example, .corp.example:443, 10.0.0.0/8".to_string()),
            _ => None,
        };
        let host = |p: Option<ureq::Proxy>| p.map(|p| p.host().to_string());
        assert_eq!(
            host(proxy_for(&url("https://pulse.example"), &env)).as_deref(),
            Some("proxy.lan")
        );
        assert_eq!(
            host(proxy_for(&url("http://pulse.example"), &env)).as_deref(),
            Some("plain.lan")
        );
        for direct in [
            "https://localhost:7655",
            "https://127.0.0.1",
            "https://[::1]:7655",
            "https://internal.example",
            "https://pulse.internal.example",
            "https://x.corp.example",
            "https://10.1.2.3",
        ] {
            assert!(proxy_for(&url(direct), &env).is_none(), "{direct}");
        }
        assert!(proxy_for(&url("https://11.1.2.3"), &env).is_some());
        assert!(proxy_for(&url("https://pulse.example"), &|_| None).is_none());
        assert!(no_proxy_matches("*", "anything"));
        assert!(!no_proxy_matches("example.com", "notexample.com"));
    }

    #[test]
    fn cacert_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("pulse-cacert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        let e = tls_config(&TlsOptions {
            cacert: Some(empty),
            ..TlsOptions::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("holds no certificate"), "{e}");
        let e = tls_config(&TlsOptions {
            cacert: Some(dir.join("missing.pem")),
            ..TlsOptions::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(tls_config(&TlsOptions::default()).is_ok());
    }
}
