//! pulse-sensor-proxy's metrics (spec §10) and HTTPS mode (§12).
//!
//! The metrics page is checked family by family (name, type, help, bucket
//! sets, label sanitising, the cardinality cap) and scraped over loopback.
//! The HTTPS listener runs with a certificate made here (rcgen) and a stub
//! [`Backend`]; a rustls client walks the middleware order and every status
//! of §12, and raw sockets play a plain-HTTP client, silent clients and a
//! full worker pool.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proc::free_port;
use common::standin::Pki;
use pulse_agent::proxy::audit::Event;
use pulse_agent::proxy::https::{self, Backend, NODE_BUSY, Settings, synthetic_uid};
use pulse_agent::proxy::metrics::{MAX_SERIES, Metrics, OVERFLOW, sanitize_node, serve};
use serde_json::{Value, json};

// ---------------------------------------------------------------- metrics

/// Every family of §10: name, type, the stock help text.
const FAMILIES: [(&str, &str, &str); 16] = [
    (
        "pulse_proxy_rpc_requests_total",
        "counter",
        "Total RPC requests handled by method and result.",
    ),
    (
        "pulse_proxy_rpc_latency_seconds",
        "histogram",
        "RPC handler latency.",
    ),
    (
        "pulse_proxy_ssh_requests_total",
        "counter",
        "SSH command executions by node and result.",
    ),
    (
        "pulse_proxy_ssh_latency_seconds",
        "histogram",
        "SSH command latency per node.",
    ),
    (
        "pulse_proxy_queue_depth",
        "gauge",
        "Concurrent RPC requests being processed.",
    ),
    (
        "pulse_proxy_rate_limit_hits_total",
        "counter",
        "Number of RPC requests rejected due to rate limiting.",
    ),
    (
        "pulse_proxy_limiter_rejections_total",
        "counter",
        "Limiter rejections by reason.",
    ),
    (
        "pulse_proxy_global_concurrency_inflight",
        "gauge",
        "Current global concurrency slots in use.",
    ),
    (
        "pulse_proxy_limiter_penalties_total",
        "counter",
        "Penalty sleeps applied after validation failures.",
    ),
    (
        "pulse_proxy_limiter_active_peers",
        "gauge",
        "Number of peers tracked by the rate limiter.",
    ),
    (
        "pulse_proxy_node_validation_failures_total",
        "counter",
        "Node validation failures by reason.",
    ),
    (
        "pulse_proxy_read_timeouts_total",
        "counter",
        "Number of socket read timeouts.",
    ),
    (
        "pulse_proxy_write_timeouts_total",
        "counter",
        "Number of socket write timeouts.",
    ),
    (
        "pulse_proxy_hostkey_changes_total",
        "counter",
        "Detected SSH host key changes by node.",
    ),
    (
        "pulse_proxy_ssh_output_oversized_total",
        "counter",
        "Number of SSH responses rejected for exceeding size limits.",
    ),
    ("pulse_proxy_build_info", "gauge", "Proxy build metadata."),
];

fn has_line(page: &str, line: &str) -> bool {
    page.lines().any(|l| l == line)
}

fn assert_lines(page: &str, lines: &[&str]) {
    for line in lines {
        assert!(has_line(page, line), "{line:?} not in\n{page}");
    }
}

/// Every sample belongs to the family declared last before it.
fn assert_well_formed(page: &str) {
    let mut current = String::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            current = rest.split(' ').next().unwrap().to_string();
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| *b == current)
                .unwrap_or(name);
            assert_eq!(base, current, "{line}");
        }
    }
}

#[test]
fn an_empty_page_declares_every_family_in_the_spec_order() {
    let page = Metrics::new().render();
    let mut at = 0;
    for (name, kind, help) in FAMILIES {
        let decl = format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
        let found = page[at..]
            .find(&decl)
            .unwrap_or_else(|| panic!("{decl} not in order in\n{page}"));
        at += found + decl.len();
    }
    assert_lines(
        &page,
        &[
            "pulse_proxy_queue_depth 0",
            "pulse_proxy_rate_limit_hits_total 0",
            "pulse_proxy_read_timeouts_total 0",
            "pulse_proxy_limiter_active_peers 0",
            &format!(
                "pulse_proxy_build_info{{version=\"{}\"}} 1",
                pulse_agent::proxy::version()
            ),
        ],
    );
    assert_eq!(page.matches("# TYPE ").count(), FAMILIES.len());
    assert_well_formed(&page);
}

#[test]
fn every_recorder_shows_up_with_its_labels_and_buckets() {
    let m = Metrics::new();
    m.rpc("get_temperature", "success", Duration::from_millis(3));
    m.rpc("get_temperature", "success", Duration::from_secs(7));
    m.rpc("ensure_cluster_keys", "unauthorized", Duration::ZERO);
    m.ssh("PVE1", true, Duration::from_millis(700));
    m.ssh("pve1", false, Duration::from_secs(40));
    m.queue_depth(1);
    m.queue_depth(1);
    m.queue_depth(-1);
    m.limiter_rejection("rate", "uid:1000");
    m.limiter_rejection("peer_concurrency", "range:100000-165535");
    m.global_inflight(3);
    m.penalty("invalid_json", "uid:0");
    m.active_peers(5);
    m.node_validation_failure("node_not_allowlisted");
    m.read_timeout();
    m.write_timeout();
    m.write_timeout();
    m.hostkey_change("Node-2");
    m.ssh_output_oversized("");
    let page = m.render();
    let rpc = "pulse_proxy_rpc_latency_seconds";
    let ssh = "pulse_proxy_ssh_latency_seconds";
    assert_lines(
        &page,
        &[
            "pulse_proxy_rpc_requests_total{method=\"ensure_cluster_keys\",result=\"unauthorized\"} 1",
            "pulse_proxy_rpc_requests_total{method=\"get_temperature\",result=\"success\"} 2",
            &format!("{rpc}_bucket{{method=\"get_temperature\",le=\"0.001\"}} 0"),
            &format!("{rpc}_bucket{{method=\"get_temperature\",le=\"0.005\"}} 1"),
            &format!("{rpc}_bucket{{method=\"get_temperature\",le=\"5\"}} 1"),
            &format!("{rpc}_bucket{{method=\"get_temperature\",le=\"+Inf\"}} 2"),
            &format!("{rpc}_sum{{method=\"get_temperature\"}} 7.003"),
            &format!("{rpc}_count{{method=\"get_temperature\"}} 2"),
            &format!("{rpc}_bucket{{method=\"ensure_cluster_keys\",le=\"0.001\"}} 1"),
            // Node labels are sanitised: PVE1 and pve1 are one series.
            "pulse_proxy_ssh_requests_total{node=\"pve1\",result=\"error\"} 1",
            "pulse_proxy_ssh_requests_total{node=\"pve1\",result=\"success\"} 1",
            &format!("{ssh}_bucket{{node=\"pve1\",le=\"0.5\"}} 0"),
            &format!("{ssh}_bucket{{node=\"pve1\",le=\"1\"}} 1"),
            &format!("{ssh}_bucket{{node=\"pve1\",le=\"30\"}} 1"),
            &format!("{ssh}_bucket{{node=\"pve1\",le=\"+Inf\"}} 2"),
            &format!("{ssh}_count{{node=\"pve1\"}} 2"),
            "pulse_proxy_queue_depth 1",
            "pulse_proxy_rate_limit_hits_total 2",
            "pulse_proxy_limiter_rejections_total{reason=\"peer_concurrency\",peer=\"range:100000-165535\"} 1",
            "pulse_proxy_limiter_rejections_total{reason=\"rate\",peer=\"uid:1000\"} 1",
            "pulse_proxy_global_concurrency_inflight 3",
            "pulse_proxy_limiter_penalties_total{reason=\"invalid_json\",peer=\"uid:0\"} 1",
            "pulse_proxy_limiter_active_peers 5",
            "pulse_proxy_node_validation_failures_total{reason=\"node_not_allowlisted\"} 1",
            "pulse_proxy_read_timeouts_total 1",
            "pulse_proxy_write_timeouts_total 2",
            "pulse_proxy_hostkey_changes_total{node=\"node-2\"} 1",
            "pulse_proxy_ssh_output_oversized_total{node=\"unknown\"} 1",
        ],
    );
    // The bucket sets of §10, each in order, then +Inf.
    for (family, label, les) in [
        (
            rpc,
            "method=\"get_temperature\"",
            &[
                "0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "1", "2.5", "5", "+Inf",
            ][..],
        ),
        (
            ssh,
            "node=\"pve1\"",
            &["0.1", "0.5", "1", "2.5", "5", "10", "30", "+Inf"][..],
        ),
    ] {
        let prefix = format!("{family}_bucket{{{label},le=\"");
        let got: Vec<&str> = page
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|l| l.split('"').next().unwrap())
            .collect();
        assert_eq!(got, les, "{family}");
    }
    assert_well_formed(&page);
}

#[test]
fn node_labels_are_sanitised_like_the_stock_proxy() {
    for (node, want) in [
        ("pve1", "pve1"),
        ("PVE-1.Example.COM", "pve-1.example.com"),
        ("10.0.0.1", "10.0.0.1"),
        ("", "unknown"),
        ("node 1/evil\"x\n", "node_1_evil_x_"),
        ("[fe80::1]", "_fe80__1_"),
        ("pve_2", "pve_2"),
        ("Ünïcode", "_n_code"),
        // KELVIN SIGN lowercases to an ASCII k (Go's ToLower too).
        ("\u{212A}elvin", "kelvin"),
    ] {
        assert_eq!(sanitize_node(node), want, "{node:?}");
    }
    let long = "a".repeat(100);
    assert_eq!(sanitize_node(&long), "a".repeat(63));
    assert_eq!(sanitize_node(&"é".repeat(100)), "_".repeat(63));
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new();
    m.limiter_rejection("rate", "a\"b\\c\nd");
    assert!(
        m.render()
            .contains("{reason=\"rate\",peer=\"a\\\"b\\\\c\\nd\"} 1\n")
    );
}

#[test]
fn label_cardinality_is_capped_per_family_with_an_overflow_series() {
    let m = Metrics::new();
    let extra = 44;
    for uid in 0..MAX_SERIES + extra {
        m.limiter_rejection("rate", &format!("uid:{uid}"));
    }
    m.limiter_rejection("global_concurrency", "uid:999999");
    // A peer seen before the cap keeps its own series.
    m.limiter_rejection("rate", "uid:0");
    for i in 0..MAX_SERIES + 10 {
        m.ssh(&format!("node{i}"), true, Duration::from_millis(1));
        m.rpc(&format!("method{i}"), "error", Duration::ZERO);
    }
    let page = m.render();
    let count = |prefix: &str| page.lines().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(
        count("pulse_proxy_limiter_rejections_total{"),
        MAX_SERIES + 2
    );
    assert_lines(
        &page,
        &[
            &format!(
                "pulse_proxy_limiter_rejections_total{{reason=\"rate\",peer=\"{OVERFLOW}\"}} {extra}"
            ),
            &format!(
                "pulse_proxy_limiter_rejections_total{{reason=\"global_concurrency\",peer=\"{OVERFLOW}\"}} 1"
            ),
            "pulse_proxy_limiter_rejections_total{reason=\"rate\",peer=\"uid:0\"} 2",
            &format!(
                "pulse_proxy_rate_limit_hits_total {}",
                MAX_SERIES + extra + 2
            ),
            &format!("pulse_proxy_ssh_requests_total{{node=\"{OVERFLOW}\",result=\"success\"}} 10"),
            &format!("pulse_proxy_ssh_latency_seconds_count{{node=\"{OVERFLOW}\"}} 10"),
            &format!("pulse_proxy_rpc_requests_total{{method=\"{OVERFLOW}\",result=\"error\"}} 10"),
        ],
    );
    assert_eq!(count("pulse_proxy_ssh_requests_total{"), MAX_SERIES + 1);
    assert_eq!(
        count("pulse_proxy_ssh_latency_seconds_count{"),
        MAX_SERIES + 1
    );
}

/// One raw HTTP/1.1 exchange over loopback: the whole answer.
fn raw(port: u16, request: &[u8]) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(request).unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

/// Binds a free port, retrying if another test took it first.
fn serve_metrics(m: Arc<Metrics>) -> u16 {
    for _ in 0..20 {
        let port = free_port();
        if serve(&format!("127.0.0.1:{port}"), m.clone()).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

#[test]
fn the_metrics_listener_serves_get_metrics_only() {
    let m = Arc::new(Metrics::new());
    m.read_timeout();
    let port = serve_metrics(m.clone());
    let page = raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, body) = page.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"));
    assert!(head.contains("Connection: close"));
    assert!(head.contains(&format!("Content-Length: {}", body.len())));
    assert!(
        has_line(body, "pulse_proxy_read_timeouts_total 1"),
        "{body}"
    );
    // Live, not a snapshot.
    m.read_timeout();
    let page = raw(port, b"GET /metrics?x=1 HTTP/1.0\n\n");
    assert!(
        has_line(&page, "pulse_proxy_read_timeouts_total 2"),
        "{page}"
    );
    let head_only = raw(port, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert!(head_only.starts_with("HTTP/1.1 200") && head_only.ends_with("\r\n\r\n"));
    for (req, status) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "404"),
        (b"GET /metricsx HTTP/1.1\r\n\r\n", "404"),
        (b"GET /healthz HTTP/1.1\r\n\r\n", "404"),
        (
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "405",
        ),
        (b"hello\r\n\r\n", "400"),
    ] {
        let got = raw(port, req);
        assert!(
            got.starts_with(&format!("HTTP/1.1 {status} ")),
            "{}: {got}",
            String::from_utf8_lossy(req)
        );
    }
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert!(raw(port, huge.as_bytes()).starts_with("HTTP/1.1 431 "));
}

#[test]
fn a_silent_scraper_does_not_block_the_next_one() {
    let port = serve_metrics(Arc::new(Metrics::new()));
    let _silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let start = Instant::now();
    let page = raw(port, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(start.elapsed() < Duration::from_secs(3));
}

// ------------------------------------------------------------------ https

const TOKEN: &str = "s3cret-token";
const TEMPS: &str = r#"{"coretemp-isa-0000":{"Package id 0":{"temp1_input":45.0}}}"#;

/// A backend whose answers the test sets, and that records what it is asked.
#[derive(Default)]
struct Stub {
    refuse_source: AtomicBool,
    reject: Mutex<Option<&'static str>>,
    admitted: Mutex<Vec<u32>>,
    penalties: Mutex<Vec<(u32, String)>>,
    events: Mutex<Vec<Event>>,
    asked: Mutex<Vec<String>>,
}

impl Backend for Stub {
    fn source_allowed(&self, ip: IpAddr) -> bool {
        assert!(ip.is_loopback());
        !self.refuse_source.load(Ordering::SeqCst)
    }
    fn admit(&self, uid: u32) -> Result<Box<dyn Send>, &'static str> {
        self.admitted.lock().unwrap().push(uid);
        match *self.reject.lock().unwrap() {
            Some(r) => Err(r),
            None => Ok(Box::new(())),
        }
    }
    fn penalize(&self, uid: u32, reason: &str) {
        self.penalties.lock().unwrap().push((uid, reason.into()));
    }
    fn valid_node_name(&self, node: &str) -> bool {
        !node.is_empty()
            && !node.starts_with('-')
            && node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    }
    fn validate_node(&self, node: &str) -> Result<(), String> {
        match node {
            "forbidden" => Err("node_not_allowlisted".into()),
            _ => Ok(()),
        }
    }
    fn temperature(&self, node: &str) -> Result<String, String> {
        self.asked.lock().unwrap().push(node.into());
        match node {
            "broken" => Err("failed to get temperatures: exit status 255 (stderr: nope)".into()),
            "busy" => Err(NODE_BUSY.into()),
            "slow" => {
                std::thread::sleep(Duration::from_secs(2));
                Ok(TEMPS.into())
            }
            _ => Ok(TEMPS.into()),
        }
    }
    fn audit(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = pulse_agent::remote_config::base64_encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A fresh directory (tests run in parallel in one process).
fn tmp_dir() -> common::proc::Dir {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    common::proc::Dir::new(&format!("proxy-https-{}", N.fetch_add(1, Ordering::SeqCst)))
}

struct Proxy {
    port: u16,
    stub: Arc<Stub>,
    metrics: Arc<Metrics>,
    client: Arc<rustls::ClientConfig>,
    _dir: common::proc::Dir,
}

fn settings(dir: &std::path::Path, port: u16, read_timeout: Duration) -> Settings {
    Settings {
        listen: format!("127.0.0.1:{port}"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        token: TOKEN.into(),
        read_timeout,
        write_timeout: Duration::from_secs(5),
    }
}

fn start_proxy(read_timeout: Duration) -> Proxy {
    let pki = Pki::new("proxy");
    let dir = tmp_dir();
    std::fs::write(
        dir.0.as_path().join("server.crt"),
        pem("CERTIFICATE", &pki.leaf_der),
    )
    .unwrap();
    std::fs::write(
        dir.0.as_path().join("server.key"),
        pem("PRIVATE KEY", &pki.leaf_key_der),
    )
    .unwrap();
    let stub = Arc::new(Stub::default());
    let metrics = Arc::new(Metrics::new());
    let mut port = 0;
    for _ in 0..20 {
        let p = free_port();
        let s = settings(dir.0.as_path(), p, read_timeout);
        if https::serve(s, stub.clone(), metrics.clone()).is_ok() {
            port = p;
            break;
        }
    }
    assert_ne!(port, 0, "no free port");
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Proxy {
        port,
        stub,
        metrics,
        client: Arc::new(client),
        _dir: dir,
    }
}

use rustls::pki_types::pem::PemObject;

/// An answer: status, JSON body, the raw head.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
    head: String,
}

impl Proxy {
    fn request(&self, method: &str, target: &str, auth: Option<&str>) -> Answer {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n");
        if let Some(a) = auth {
            req += &format!("Authorization: {a}\r\n");
        }
        req += "\r\n";
        self.send(req.as_bytes())
    }

    fn get(&self, target: &str) -> Answer {
        self.request("GET", target, Some(&format!("Bearer {TOKEN}")))
    }

    fn send(&self, req: &[u8]) -> Answer {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(self.client.clone(), name).unwrap();
        let sock = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(req).unwrap();
        let mut out = Vec::new();
        tls.read_to_end(&mut out).unwrap();
        assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        let out = String::from_utf8(out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").expect("a whole answer");
        let status = head[9..12].parse().unwrap();
        assert!(
            head.contains("Content-Type: application/json\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(body.ends_with('\n'), "{body:?}");
        Answer {
            status,
            body: serde_json::from_str(body).unwrap(),
            head: head.into(),
        }
    }

    fn events(&self) -> Vec<Event> {
        std::mem::take(&mut self.stub.events.lock().unwrap())
    }

    fn penalties(&self) -> Vec<(u32, String)> {
        std::mem::take(&mut self.stub.penalties.lock().unwrap())
    }
}

fn error(text: &str) -> Value {
    json!({ "error": text })
}

fn local_uid() -> u32 {
    synthetic_uid("127.0.0.1")
}

#[test]
fn health_answers_with_the_token() {
    let p = start_proxy(Duration::from_secs(5));
    let a = p.get("/health");
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.head.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(a.head.ends_with("\r\nConnection: close"), "{}", a.head);
    assert_eq!(
        a.body,
        json!({"status": "ok", "version": pulse_agent::proxy::version()})
    );
    assert_eq!(*p.stub.admitted.lock().unwrap(), [local_uid()]);
    assert!(p.penalties().is_empty());
    assert!(p.events().is_empty(), "health is not audited");
}

#[test]
fn auth_failures_are_401_audited_and_penalised() {
    let p = start_proxy(Duration::from_secs(5));
    for (auth, text, reason) in [
        (None, "missing authorization header", "missing_auth_header"),
        (
            Some(""),
            "missing authorization header",
            "missing_auth_header",
        ),
        (
            Some("Basic czNjcmV0"),
            "invalid authorization format",
            "invalid_auth_format",
        ),
        (
            Some(&format!("bearer {TOKEN}")[..]),
            "invalid authorization format",
            "invalid_auth_format",
        ),
        (
            Some("Bearer"),
            "invalid authorization format",
            "invalid_auth_format",
        ),
        (Some("Bearer wrong"), "invalid token", "invalid_token"),
        (
            Some(&format!("Bearer {TOKEN}x")[..]),
            "invalid token",
            "invalid_token",
        ),
        (
            Some(&format!("Bearer  {TOKEN}")[..]),
            "invalid token",
            "invalid_token",
        ),
    ] {
        let a = p.request("GET", "/temps?node=pve1", auth);
        assert_eq!((a.status, &a.body), (401, &error(text)), "{auth:?}");
        let events = p.events();
        assert_eq!(events.len(), 1, "{auth:?}");
        let e = &events[0];
        assert_eq!(e.event_type, "http_request");
        assert_eq!(e.decision, "");
        assert_eq!(e.reason, reason);
        assert_eq!(e.command, "GET");
        assert_eq!(e.target, "/temps");
        assert_eq!(e.exit_code, Some(401));
        assert!(e.remote_addr.starts_with("127.0.0.1:"), "{e:?}");
        assert_eq!(p.penalties(), [(local_uid(), "http_error".to_string())]);
    }
    assert!(p.stub.asked.lock().unwrap().is_empty());
}

#[test]
fn a_refused_source_ip_is_403_before_the_limiter() {
    let p = start_proxy(Duration::from_secs(5));
    p.stub.refuse_source.store(true, Ordering::SeqCst);
    let a = p.get("/health");
    assert_eq!((a.status, a.body), (403, error("source IP not allowed")));
    assert!(p.stub.admitted.lock().unwrap().is_empty());
    assert!(p.penalties().is_empty());
    let events = p.events();
    assert_eq!(events[0].reason, "source_ip_not_allowed");
    assert_eq!(events[0].exit_code, Some(403));
}

#[test]
fn limiter_rejections_are_429_audited_not_penalised() {
    let p = start_proxy(Duration::from_secs(5));
    for reason in ["rate", "global_concurrency", "peer_concurrency"] {
        *p.stub.reject.lock().unwrap() = Some(reason);
        // The limiter runs before auth: no token needed to be limited.
        let a = p.request("GET", "/health", None);
        assert_eq!((a.status, a.body), (429, error("rate limit exceeded")));
        let events = p.events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, format!("rate_limit_{reason}"));
        assert_eq!(events[0].exit_code, Some(429));
    }
    *p.stub.reject.lock().unwrap() = Some("closed");
    let a = p.get("/health");
    assert_eq!(
        (a.status, a.body),
        (503, error("rate limiter not available"))
    );
    assert!(p.penalties().is_empty());
    assert!(p.events().is_empty());
}

#[test]
fn temps_answers_every_status_of_the_spec() {
    let p = start_proxy(Duration::from_secs(5));
    let a = p.get("/temps?node=pve1");
    assert_eq!(a.status, 200);
    assert_eq!(a.body, json!({"node": "pve1", "temperature": TEMPS}));
    let events = p.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, "temperature_success");
    assert_eq!(events[0].exit_code, Some(200));
    assert!(p.penalties().is_empty());
    // Decoded and trimmed before use.
    let a = p.get("/temps?x=1&node=%20pve%2D2+&node=other");
    assert_eq!(a.body["node"], "pve-2");
    assert_eq!(p.events().len(), 1);
    for (target, status, text) in [
        ("/temps", 400, "missing 'node' query parameter"),
        ("/temps?node=", 400, "missing 'node' query parameter"),
        ("/temps?node=%zz", 400, "missing 'node' query parameter"),
        (
            "/temps?node=-oProxyCommand=x",
            400,
            "invalid node name format",
        ),
        ("/temps?node=%20", 400, "invalid node name format"),
        ("/temps?node=a%2Fb", 400, "invalid node name format"),
        ("/temps?node=%ff", 400, "invalid node name format"),
        ("/temps?node=forbidden", 403, "node not allowed"),
        ("/temps?node=busy", 503, NODE_BUSY),
        (
            "/temps?node=broken",
            500,
            "failed to get temperatures: exit status 255 (stderr: nope)",
        ),
        ("/nope", 404, "404 page not found"),
    ] {
        let a = p.get(target);
        assert_eq!((a.status, a.body), (status, error(text)), "{target}");
        assert_eq!(
            p.penalties(),
            [(local_uid(), "http_error".to_string())],
            "{target}"
        );
        assert!(p.events().is_empty(), "{target}: not audited");
    }
    assert_eq!(
        *p.stub.asked.lock().unwrap(),
        ["pve1", "pve-2", "busy", "broken"]
    );
}

#[test]
fn other_methods_are_405_after_auth() {
    let p = start_proxy(Duration::from_secs(5));
    let auth = format!("Bearer {TOKEN}");
    for (method, target) in [
        ("POST", "/temps?node=pve1"),
        ("HEAD", "/health"),
        ("DELETE", "/health"),
    ] {
        let a = p.request(method, target, Some(&auth));
        assert_eq!(
            (a.status, &a.body),
            (405, &error("method not allowed")),
            "{method}"
        );
        assert_eq!(p.penalties().len(), 1);
    }
    let a = p.request("POST", "/health", None);
    assert_eq!(a.status, 401, "auth comes first");
    assert!(p.stub.asked.lock().unwrap().is_empty());
}

#[test]
fn malformed_and_oversized_requests_are_refused() {
    let p = start_proxy(Duration::from_secs(5));
    let a = p.send(b"GET /health\r\n\r\n");
    assert_eq!((a.status, a.body), (400, error("bad request")));
    let big = format!(
        "GET /health HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nX: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let a = p.send(big.as_bytes());
    assert_eq!(a.status, 431);
    assert!(p.stub.admitted.lock().unwrap().is_empty());
}

#[test]
fn plain_http_on_the_tls_port_is_answered_and_closed() {
    let p = start_proxy(Duration::from_secs(5));
    let start = Instant::now();
    let got = raw(p.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        got,
        "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    // Garbage that is not even HTTP: closed without an answer.
    assert_eq!(raw(p.port, b"\x00\x01\x02\r\n\r\n"), "");
    assert_eq!(p.get("/health").status, 200);
}

#[test]
fn silent_clients_do_not_block_others_and_time_out() {
    let p = start_proxy(Duration::from_secs(2));
    // A silent client holds one worker; the others serve.
    let silent = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    let start = Instant::now();
    let a = p.get("/health");
    assert_eq!(a.status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    // Its close frees the worker at once.
    drop(silent);
    std::thread::sleep(Duration::from_millis(300));
    // Every worker held by a silent client: the next connection gets 503 at
    // once, and service comes back when they time out.
    let silent: Vec<TcpStream> = (0..https::WORKERS)
        .map(|_| TcpStream::connect(("127.0.0.1", p.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let a = p.get("/health");
    assert_eq!((a.status, a.body), (503, error("server busy")));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(p.get("/health").status, 200);
    let page = p.metrics.render();
    let timeouts: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix("pulse_proxy_read_timeouts_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(timeouts >= https::WORKERS as u64, "{page}");
    drop(silent);
}

#[test]
fn a_slow_backend_request_does_not_block_others() {
    let p = Arc::new(start_proxy(Duration::from_secs(5)));
    let slow = {
        let p = p.clone();
        std::thread::spawn(move || p.get("/temps?node=slow"))
    };
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    assert_eq!(p.get("/temps?node=pve1").status, 200);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(slow.join().unwrap().status, 200);
}

#[test]
fn serve_refuses_bad_settings_without_showing_the_token() {
    let dir = tmp_dir();
    let stub: Arc<dyn Backend> = Arc::new(Stub::default());
    let m = Arc::new(Metrics::new());
    let mut s = settings(dir.0.as_path(), free_port(), Duration::from_secs(1));
    let e = https::serve(s.clone(), stub.clone(), m.clone()).unwrap_err();
    assert!(matches!(e, https::Error::Cert(..)), "{e}");
    std::fs::write(&s.cert, "not pem").unwrap();
    let e = https::serve(s.clone(), stub.clone(), m.clone()).unwrap_err();
    assert!(e.to_string().contains("holds no certificate"), "{e}");
    let pki = Pki::new("bad");
    std::fs::write(&s.cert, pem("CERTIFICATE", &pki.leaf_der)).unwrap();
    std::fs::write(&s.key, pem("CERTIFICATE", &pki.leaf_der)).unwrap();
    let e = https::serve(s.clone(), stub.clone(), m.clone()).unwrap_err();
    assert!(matches!(e, https::Error::Key(..)), "{e}");
    assert!(!e.to_string().contains(TOKEN));
    s.token = String::new();
    let e = https::serve(s, stub, m).unwrap_err();
    assert!(matches!(e, https::Error::NoToken), "{e}");
}
