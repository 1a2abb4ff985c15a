//! HTTPS to the Pulse server: TLS set-up, the HTTP client, and what an answer
//! to a report means.
//!
//! TLS is rustls (TLS 1.2 and 1.3 only), plugged into ureq as its connector so
//! that the agent, not ureq, decides what to trust:
//! * default: the Mozilla roots (webpki-roots), the system's CA store (found
//!   as Go's crypto/x509 finds it on Linux, `SSL_CERT_FILE`/`SSL_CERT_DIR`
//!   first, read once at start-up with size caps; a certificate it cannot use
//!   is skipped, never fatal) and every certificate of `--cacert`;
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

/// The rustls client configuration for these options; `system` is read
/// only when certificates are verified against roots (not with a pin or
/// `--insecure`).
pub fn tls_config(opts: &TlsOptions, system: &SystemStore) -> Result<Arc<ClientConfig>, Error> {
    let provider = Arc::new(client_provider());
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
        let mut trusted = system.load(&mut roots).trusted;
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
            trusted.extend(certs.iter().map(|c| sha256(c)));
        }
        trusted.sort_unstable();
        trusted.dedup();
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
                trusted,
                algorithms,
            }))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// ring's provider without its private-key loader: the agent never
/// presents a client certificate, and the loader's RSA, ECDSA and Ed25519
/// signers are about 60 KB of the binary that nothing could reach.
///
/// And AES-GCM only, without ChaCha20-Poly1305 (about 48 KB of ring's
/// assembly): every TLS 1.3 server has AES-128-GCM (RFC 8446 makes it
/// mandatory) and Go's server has AES-GCM in TLS 1.2 too; ChaCha's edge,
/// speed on a CPU without AES instructions (a Raspberry Pi's), does not
/// matter for a report of tens of kilobytes every 30 s, and ring's software
/// AES is constant-time. rustls's `default_provider()` cannot be the base:
/// its cipher list alone keeps the ChaCha code linked, so every field is
/// named here, as rustls 0.23's ring provider sets it.
fn client_provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::{cipher_suite as suite, kx_group};
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        signature_verification_algorithms: SIGNATURE_ALGORITHMS,
        secure_random: &KernelRandom,
        key_provider: &NoClientKeys,
    }
}

/// What rustls's ring provider verifies signatures with (its
/// `SUPPORTED_SIG_ALGS`, 0.23): every algorithm webpki has with ring, and
/// for each TLS signature scheme the ones it may mean (in TLS 1.2 the
/// curve is not fixed by the scheme).
static SIGNATURE_ALGORITHMS: rustls::crypto::WebPkiSupportedAlgorithms = {
    use rustls::SignatureScheme as S;
    use webpki::ring as alg;
    rustls::crypto::WebPkiSupportedAlgorithms {
        all: &[
            alg::ECDSA_P256_SHA256,
            alg::ECDSA_P256_SHA384,
            alg::ECDSA_P384_SHA256,
            alg::ECDSA_P384_SHA384,
            alg::ED25519,
            alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
            alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
            alg::RSA_PKCS1_2048_8192_SHA256,
            alg::RSA_PKCS1_2048_8192_SHA384,
            alg::RSA_PKCS1_2048_8192_SHA512,
            alg::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
            alg::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
            alg::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
        ],
        mapping: &[
            (
                S::ECDSA_NISTP384_SHA384,
                &[alg::ECDSA_P384_SHA384, alg::ECDSA_P256_SHA384],
            ),
            (
                S::ECDSA_NISTP256_SHA256,
                &[alg::ECDSA_P256_SHA256, alg::ECDSA_P384_SHA256],
            ),
            (S::ED25519, &[alg::ED25519]),
            (
                S::RSA_PSS_SHA512,
                &[alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY],
            ),
            (
                S::RSA_PSS_SHA384,
                &[alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY],
            ),
            (
                S::RSA_PSS_SHA256,
                &[alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
            ),
            (S::RSA_PKCS1_SHA512, &[alg::RSA_PKCS1_2048_8192_SHA512]),
            (S::RSA_PKCS1_SHA384, &[alg::RSA_PKCS1_2048_8192_SHA384]),
            (S::RSA_PKCS1_SHA256, &[alg::RSA_PKCS1_2048_8192_SHA256]),
        ],
    }
};

/// TLS's randomness from the kernel ([`crate::sys::getrandom`]).
#[derive(Debug)]
struct KernelRandom;

impl rustls::crypto::SecureRandom for KernelRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        crate::sys::getrandom(buf).map_err(|_| rustls::crypto::GetRandomFailed)
    }
}

#[derive(Debug)]
struct NoClientKeys;

impl rustls::crypto::KeyProvider for NoClientKeys {
    fn load_private_key(
        &self,
        _key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
        Err(rustls::Error::General(
            "the agent has no client certificate".into(),
        ))
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The bundle files of Go's crypto/x509 on Linux, in its order: the first
/// one that can be read is used.
pub const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Gentoo, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",   // Fedora, RHEL 6
    "/etc/ssl/ca-bundle.pem",             // openSUSE
    "/etc/pki/tls/cacert.pem",            // OpenELEC
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // CentOS, RHEL 7
    "/etc/ssl/cert.pem",                  // Alpine
];
/// Go's certificate directories on Linux: every file in each is read.
pub const SYSTEM_CA_DIRS: &[&str] = &["/etc/ssl/certs", "/etc/pki/tls/certs"];
/// No bundle file is larger (Debian's 146 roots are 220 KiB); a larger one
/// is skipped.
const MAX_CA_FILE: u64 = 4 * 1024 * 1024;
/// All the files of the store together.
const MAX_CA_BYTES: u64 = 16 * 1024 * 1024;
/// Files looked at in one directory (Debian's /etc/ssl/certs has ~300).
const MAX_CA_DIR_ENTRIES: usize = 4096;

/// Where the system's CA certificates are. This is the agent's own trust
/// configuration, like `--cacert`, read from the machine the agent runs on:
/// not host telemetry, so not through `Root` (a captured or mounted host's
/// store must not decide whom this process trusts).
#[derive(Debug, Clone, Default)]
pub struct SystemStore {
    /// Candidates; the first that can be read is used.
    pub files: Vec<std::path::PathBuf>,
    /// Every file in each is read.
    pub dirs: Vec<std::path::PathBuf>,
}

impl SystemStore {
    /// As Go's crypto/x509 finds it: `SSL_CERT_FILE` replaces the bundle
    /// list, `SSL_CERT_DIR` (colon-separated) the directories.
    pub fn from_env(env: &dyn Fn(&str) -> Option<std::ffi::OsString>) -> SystemStore {
        let set = |k: &str| env(k).filter(|v| !v.is_empty());
        let files = match set("SSL_CERT_FILE") {
            Some(f) => vec![f.into()],
            None => SYSTEM_CA_FILES.iter().map(Into::into).collect(),
        };
        let dirs = match set("SSL_CERT_DIR") {
            Some(d) => {
                use std::os::unix::ffi::OsStrExt;
                d.as_bytes()
                    .split(|b| *b == b':')
                    .filter(|p| !p.is_empty())
                    .map(|p| std::ffi::OsStr::from_bytes(p).into())
                    .collect()
            }
            None => SYSTEM_CA_DIRS.iter().map(Into::into).collect(),
        };
        SystemStore { files, dirs }
    }

    /// Adds the store's CA certificates to `roots` (those not there already)
    /// and returns the SHA-256 of every usable certificate it holds. Nothing
    /// here is fatal: what cannot be read or used is skipped, counted and
    /// logged.
    fn load(&self, roots: &mut RootCertStore) -> Loaded {
        let mut load = Load {
            roots,
            seen: std::collections::HashSet::new(),
            files: std::collections::HashSet::new(),
            trusted: Vec::new(),
            budget: MAX_CA_BYTES,
            added: 0,
            skipped: 0,
            read: Vec::new(),
        };
        for file in &self.files {
            if load.file(file) {
                break;
            }
        }
        for dir in &self.dirs {
            load.dir(dir);
        }
        let loaded = Loaded {
            trusted: load.trusted,
            skipped: load.skipped,
        };
        log::debug!(
            "system CA store: {} certificates ({} besides the built-in roots) from {}; {} unusable, skipped",
            loaded.trusted.len(),
            load.added,
            if load.read.is_empty() {
                "nowhere".to_string()
            } else {
                load.read.join(", ")
            },
            loaded.skipped
        );
        loaded
    }
}

/// What [`SystemStore::load`] found.
struct Loaded {
    /// SHA-256 of each usable certificate.
    trusted: Vec<[u8; 32]>,
    /// Sections and certificates that could not be used.
    skipped: usize,
}

/// One reading of the system store.
struct Load<'a> {
    roots: &'a mut RootCertStore,
    /// SHA-256 of every certificate met, used or not.
    seen: std::collections::HashSet<[u8; 32]>,
    /// SHA-256 of the usable ones.
    trusted: Vec<[u8; 32]>,
    /// Device and inode of each file read: Debian's bundle is also in
    /// /etc/ssl/certs, and is not read twice.
    files: std::collections::HashSet<(u64, u64)>,
    budget: u64,
    added: usize,
    skipped: usize,
    /// The files and directories something was read from, for the log.
    read: Vec<String>,
}

impl Load<'_> {
    /// Reads one file's certificates; false when it could not be read.
    fn file(&mut self, path: &std::path::Path) -> bool {
        match self.open(path) {
            Ok(pem) => {
                self.pem(pem);
                self.read.push(path.display().to_string());
                true
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::debug!("system CA store: {}: {e}", path.display());
                }
                false
            }
        }
    }

    /// Every file of a directory, in name order, except links to another
    /// name in the same directory (OpenSSL's hash links), as Go does.
    fn dir(&mut self, dir: &std::path::Path) {
        let mut names: Vec<std::ffi::OsString> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .flatten()
                .take(MAX_CA_DIR_ENTRIES)
                .map(|e| e.file_name())
                .collect(),
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::debug!("system CA store: {}: {e}", dir.display());
                }
                return;
            }
        };
        names.sort();
        let mut any = false;
        for name in names {
            let path = dir.join(&name);
            let same_dir_link = std::fs::read_link(&path)
                .is_ok_and(|t| !t.as_os_str().as_encoded_bytes().contains(&b'/'));
            if same_dir_link {
                continue;
            }
            if let Ok(pem) = self.open(&path) {
                self.pem(pem);
                any = true;
            }
        }
        if any {
            self.read.push(dir.display().to_string());
        }
    }

    /// Opens a regular file (a FIFO would block) no larger than
    /// [`MAX_CA_FILE`] and what is left of the budget. It is parsed as it is
    /// read, never held whole: a bundle is ~220 KiB, a certificate ~1 KiB.
    fn open(&mut self, path: &std::path::Path) -> std::io::Result<impl Read + use<>> {
        use std::io::{Error, ErrorKind};
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        if !meta.is_file() {
            return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
        }
        if self.files.contains(&(meta.dev(), meta.ino())) {
            return Err(Error::new(ErrorKind::AlreadyExists, "read already"));
        }
        if meta.len() > MAX_CA_FILE.min(self.budget) {
            let why = if meta.len() > MAX_CA_FILE {
                "larger than 4 MiB"
            } else {
                "the store is larger than 16 MiB in all"
            };
            log::warn!("system CA store: {} skipped: {why}", path.display());
            return Err(Error::new(ErrorKind::InvalidData, why));
        }
        let file = std::fs::File::open(path)?;
        self.files.insert((meta.dev(), meta.ino()));
        self.budget -= meta.len();
        // A file that grows meanwhile is read only as far as it was.
        Ok(file.take(meta.len()))
    }

    /// The `CERTIFICATE` sections of one PEM file (other sections are not
    /// certificates and are passed over; a broken one is skipped).
    fn pem(&mut self, pem: impl Read) {
        for item in CertificateDer::pem_reader_iter(pem) {
            let Ok(der) = item else {
                self.skipped += 1;
                continue;
            };
            let hash = sha256(&der);
            if !self.seen.insert(hash) {
                continue; // the same certificate again (a bundle and its directory)
            }
            let mut one = RootCertStore::empty();
            let anchor = match one.add(der) {
                Ok(()) => one.roots.pop(),
                Err(e) => {
                    log::debug!("system CA store: a certificate is skipped: {e}");
                    None
                }
            };
            let Some(anchor) = anchor else {
                self.skipped += 1;
                continue;
            };
            self.trusted.push(hash);
            // Most of a distribution's store is the Mozilla list the
            // built-in roots are: those are not added twice.
            if !self.roots.roots.contains(&anchor) {
                self.roots.roots.push(anchor);
                self.added += 1;
            }
        }
    }
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

/// The web roots, the system store and `--cacert`, verified by webpki; a
/// server certificate that is itself in the system store or the `--cacert`
/// bundle (a self-signed certificate, as `openssl req -x509` makes them,
/// which webpki refuses as a CA used as an end entity) is trusted as it is,
/// for the name it carries, as Go trusts a certificate in its root pool.
#[derive(Debug)]
struct Bundle {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    /// SHA-256 of each of those certificates, sorted (32 bytes each, not
    /// the certificates: a system store holds ~150).
    trusted: Vec<[u8; 32]>,
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
            Err(e) if self.trusted.binary_search(&sha256(end_entity)).is_ok() => {
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
        let got = sha256(end_entity);
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

/// Size of each of a connection's two I/O buffers. ureq zero-fills them,
/// so all of it is resident for as long as the connection is pooled.
/// 8 KiB is nginx's own limit on an upstream's response head
/// (`proxy_buffer_size`, one page of 4 or 8 KiB).
pub const IO_BUFFER: usize = 8 * 1024;

/// The largest response head accepted. Below [`IO_BUFFER`], so a head that
/// would not fit is refused as too large rather than ending as a
/// connection that "made no progress".
pub const MAX_HEAD: usize = IO_BUFFER - 1024;

/// A ureq agent for requests to `url`'s host: rustls with `tls`, the
/// environment's proxy, no redirects followed (a 3xx is an answer for the
/// caller to judge), HTTP errors as answers, `timeout` for a whole request.
pub fn http_agent(
    url: &ServerUrl,
    tls: Arc<ClientConfig>,
    user_agent: &str,
    timeout: Duration,
) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .user_agent(user_agent)
        .proxy(proxy_for(url, &|k| std::env::var(k).ok()))
        .timeout_global(Some(timeout))
        .max_idle_connections(2)
        .max_idle_connections_per_host(1)
        .max_idle_age(Duration::from_secs(120))
        // ureq's 128 KiB default buffers are allocated zeroed, so each
        // pooled connection kept 256 KiB resident; a Pulse answer's head is
        // well under 1 KiB and bodies stream through in chunks.
        .input_buffer_size(IO_BUFFER)
        .output_buffer_size(IO_BUFFER)
        .max_response_header_size(MAX_HEAD)
        .build();
    let connector =
        ().chain(ConnectProxyConnector::default())
            .chain(TcpConnector::default())
            .chain(TlsConnector { config: tls });
    ureq::Agent::with_parts(config, connector, KeptResolver::default())
}

/// How long a server name's addresses are used without a new lookup.
const RESOLVE_KEEP: Duration = Duration::from_secs(60);

/// ureq looks the host up before every request, even one that goes over a
/// pooled connection, and on a thread of its own when the request has a
/// timeout (every one here has). An IP address needs no lookup at all, and a
/// name's last answer is used for [`RESOLVE_KEEP`]: a report every 30 s and
/// the config every minute then start no thread and send no DNS query each.
#[derive(Debug, Default)]
struct KeptResolver {
    lookup: DefaultResolver,
    /// `host:port`, when it was looked up, and its addresses.
    last: std::sync::Mutex<Option<(String, std::time::Instant, Addrs)>>,
}

type Addrs = ureq::unversioned::resolver::ResolvedSocketAddrs;

impl ureq::unversioned::resolver::Resolver for KeptResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<Addrs, ureq::Error> {
        let key = uri
            .scheme()
            .zip(uri.authority())
            .and_then(|(scheme, authority)| DefaultResolver::host_and_port(scheme, authority));
        let Some(key) = key else {
            return self.lookup.resolve(uri, config, timeout);
        };
        // `host:port` and `[v6]:port` parse as socket addresses.
        if let Ok(addr) = key.parse::<std::net::SocketAddr>() {
            if config
                .ip_family()
                .keep_wanted(std::iter::once(addr))
                .next()
                .is_none()
            {
                return Err(ureq::Error::HostNotFound);
            }
            let mut out = self.empty();
            out.push(addr);
            return Ok(out);
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, at, addrs)) = &*last {
            if *k == key && at.elapsed() < RESOLVE_KEEP {
                return Ok(addrs.clone());
            }
        }
        let addrs = self.lookup.resolve(uri, config, timeout)?;
        *last = Some((key, std::time::Instant::now(), addrs.clone()));
        Ok(addrs)
    }
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
        let tls = tls_config(tls, &SystemStore::from_env(&|k| std::env::var_os(k)))?;
        Ok(Client {
            agent: http_agent(url, tls, user_agent, REPORT_TIMEOUT),
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
pub fn describe(e: &ureq::Error) -> String {
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

/// The strings of a JSON array (other items skipped); empty when it is
/// missing or not an array.
pub fn json_strings(v: Option<&serde_json::Value>) -> Vec<String> {
    v.and_then(|x| x.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The start of an error body, on one line, for a log message.
pub fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(300)]);
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The provider is rustls's ring provider but for its ChaCha20 suites
    /// and key loader: the same AES-GCM suites in the same order, the same
    /// key-exchange groups, and signature algorithms equal to rustls's own
    /// (a rustls upgrade that changes them fails here, not in the field).
    #[test]
    fn the_tls_provider_is_rustls_ring_without_chacha() {
        let ours = client_provider();
        let stock = rustls::crypto::ring::default_provider();
        let names = |p: &rustls::crypto::CryptoProvider| -> Vec<String> {
            p.cipher_suites
                .iter()
                .map(|s| format!("{:?}", s.suite()))
                .collect()
        };
        let without_chacha: Vec<String> = names(&stock)
            .into_iter()
            .filter(|n| !n.contains("CHACHA20"))
            .collect();
        assert_eq!(names(&ours), without_chacha);
        assert!(without_chacha.len() >= 6, "{without_chacha:?}");
        let groups = |p: &rustls::crypto::CryptoProvider| -> Vec<String> {
            p.kx_groups
                .iter()
                .map(|g| format!("{:?}", g.name()))
                .collect()
        };
        assert_eq!(groups(&ours), groups(&stock));
        // Each algorithm by its key and signature identifiers (the Debug of
        // the table names only the schemes).
        let id = |a: &&dyn rustls::pki_types::SignatureVerificationAlgorithm| {
            format!("{:?}/{:?}", a.public_key_alg_id(), a.signature_alg_id())
        };
        let table = |p: &rustls::crypto::CryptoProvider| {
            let t = p.signature_verification_algorithms;
            let all: Vec<String> = t.all.iter().map(id).collect();
            let mapping: Vec<(String, Vec<String>)> = t
                .mapping
                .iter()
                .map(|(scheme, algs)| (format!("{scheme:?}"), algs.iter().map(id).collect()))
                .collect();
            (all, mapping)
        };
        assert_eq!(table(&ours), table(&stock));
        assert_eq!(table(&ours).0.len(), 14);
        let mut r = [0u8; 32];
        ours.secure_random.fill(&mut r).unwrap();
        assert_ne!(r, [0u8; 32]);
    }

    /// ureq looked the server up before every request, on a new thread (the
    /// requests have a timeout), pooled connection or not. An address is
    /// not looked up at all; a name once per RESOLVE_KEEP.
    #[test]
    fn the_server_is_looked_up_once_a_minute_not_for_every_request() {
        use ureq::unversioned::resolver::Resolver;
        let r = KeptResolver::default();
        let config = ureq::Agent::config_builder().build();
        let resolve = |uri: &str| {
            let uri: ureq::http::Uri = uri.parse().unwrap();
            r.resolve(&uri, &config, NextTimeout::default()).unwrap()
        };
        let addr = |a: &str| a.parse::<std::net::SocketAddr>().unwrap();
        assert_eq!(
            &resolve("https://127.0.0.1:7655/api")[..],
            [addr("127.0.0.1:7655")]
        );
        assert_eq!(&resolve("https://[::1]/api")[..], [addr("[::1]:443")]);
        assert!(r.last.lock().unwrap().is_none(), "an address was looked up");
        let first = resolve("http://localhost:7655/api");
        assert!(
            first
                .iter()
                .all(|a| a.port() == 7655 && a.ip().is_loopback())
        );
        let at = r.last.lock().unwrap().as_ref().map(|(_, at, _)| *at);
        assert!(at.is_some(), "a name's answer is kept");
        assert_eq!(resolve("http://localhost:7655/api"), first);
        let again = r.last.lock().unwrap().as_ref().map(|(_, at, _)| *at);
        assert_eq!(at, again, "looked up again within RESOLVE_KEEP");
        // Another name (or port) is looked up.
        resolve("http://localhost:7656/api");
        let other = r.last.lock().unwrap().as_ref().map(|(k, _, _)| k.clone());
        assert_eq!(other.as_deref(), Some("localhost:7656"));
    }
    use std::path::Path;

    /// Answers one request on a loopback port with a head of about `head`
    /// bytes (padded with an `X-Pad` header) and the body `{}`.
    fn answer_with_head(head: usize) -> (String, std::thread::JoinHandle<()>) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    return;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let pad = "a".repeat(head.saturating_sub(80));
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: {pad}\r\nConnection: close\r\n\r\n{{}}"
            );
            let _ = s.write_all(reply.as_bytes());
        });
        (url, t)
    }

    fn get_from(url: &str) -> Reply {
        let url = crate::config::parse_url(url, false, &|_| None).unwrap();
        let client = Client::new(&url, None, &TlsOptions::default(), "test").unwrap();
        client.get("/api/x", Duration::from_secs(5), None)
    }

    /// The connection buffers were cut from ureq's 128 KiB to 8 KiB: an
    /// answer whose head is just under the limit is still read whole.
    #[test]
    fn a_response_head_just_under_the_limit_is_read() {
        let (url, t) = answer_with_head(MAX_HEAD - 256);
        match get_from(&url) {
            Reply::Status(200, body) => assert_eq!(body, b"{}"),
            other => panic!("{other:?}"),
        }
        t.join().unwrap();
    }

    /// A head larger than the buffer is a failed request that says why, not
    /// a hang or a truncated answer taken for a whole one.
    #[test]
    fn a_response_head_larger_than_the_io_buffer_is_refused() {
        let (url, t) = answer_with_head(IO_BUFFER + 4096);
        match get_from(&url) {
            Reply::Failed(why) => assert!(why.contains("header"), "{why}"),
            other => panic!("{other:?}"),
        }
        t.join().unwrap();
    }

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
        let none = SystemStore::default();
        let e = tls_config(
            &TlsOptions {
                cacert: Some(empty),
                ..TlsOptions::default()
            },
            &none,
        )
        .unwrap_err();
        assert!(e.to_string().contains("holds no certificate"), "{e}");
        let e = tls_config(
            &TlsOptions {
                cacert: Some(dir.join("missing.pem")),
                ..TlsOptions::default()
            },
            &none,
        )
        .unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(tls_config(&TlsOptions::default(), &none).is_ok());
    }

    #[test]
    fn the_system_store_is_looked_for_where_go_looks() {
        let store = SystemStore::from_env(&|_| None);
        assert_eq!(
            store.files[0],
            Path::new("/etc/ssl/certs/ca-certificates.crt")
        );
        assert_eq!(store.files.len(), 6);
        assert_eq!(
            store.dirs,
            [Path::new("/etc/ssl/certs"), Path::new("/etc/pki/tls/certs")]
        );
        let env = |k: &str| match k {
            "SSL_CERT_FILE" => Some("/x/bundle.pem".into()),
            "SSL_CERT_DIR" => Some("/a::/b".into()),
            _ => None,
        };
        let store = SystemStore::from_env(&env);
        assert_eq!(store.files, [Path::new("/x/bundle.pem")]);
        assert_eq!(store.dirs, [Path::new("/a"), Path::new("/b")]);
        let empty = SystemStore::from_env(&|_| Some("".into()));
        assert_eq!(empty.files.len(), 6, "an empty variable is unset");
    }

    fn ca(name: &str) -> String {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.self_signed(&KeyPair::generate().unwrap()).unwrap().pem()
    }

    /// Only the first bundle that can be read; every file of the directories
    /// except same-directory links; broken and duplicate certificates skipped.
    #[test]
    fn a_system_store_with_broken_certificates_still_loads() {
        let dir = std::env::temp_dir().join(format!("pulse-sysca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        let (a, b, c, d) = (ca("a"), ca("b"), ca("c"), ca("d"));
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let not_der = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        std::fs::write(
            dir.join("bundle.pem"),
            format!("{broken}{a}{not_der}{key}{b}"),
        )
        .unwrap();
        std::fs::write(dir.join("second.pem"), &d).unwrap();
        std::fs::write(dir.join("certs/c.pem"), &c).unwrap();
        std::fs::write(dir.join("certs/again.pem"), &a).unwrap();
        std::fs::write(dir.join("certs/README"), "not a certificate\n").unwrap();
        std::os::unix::fs::symlink("c.pem", dir.join("certs/1234abcd.0")).unwrap();
        // Debian's bundle is also in its directory: read once.
        std::os::unix::fs::symlink("../bundle.pem", dir.join("certs/ca-certificates.crt")).unwrap();
        std::fs::create_dir(dir.join("certs/sub")).unwrap();
        let store = SystemStore {
            files: vec![
                dir.join("missing.pem"),
                dir.join("bundle.pem"),
                dir.join("second.pem"),
            ],
            dirs: vec![dir.join("certs"), dir.join("no-such-dir")],
        };
        let mut roots = RootCertStore::empty();
        let got = store.load(&mut roots);
        assert_eq!(roots.roots.len(), 3, "a, b and c; not d (second bundle)");
        assert_eq!(got.trusted.len(), 3);
        assert_eq!(
            got.skipped, 2,
            "the broken section and the one that is no certificate"
        );
        let again = store.load(&mut roots);
        assert_eq!(
            roots.roots.len(),
            3,
            "anchors already there are not added twice"
        );
        assert_eq!(again.trusted.len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
