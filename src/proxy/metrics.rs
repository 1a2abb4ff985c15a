//! The proxy's own Prometheus families (`pulse_proxy_*`, spec §10) and the
//! listener that serves them (`127.0.0.1:9127` by default, `GET /metrics`
//! only).
//!
//! [`Metrics`] is shared by every thread that handles a request; each call
//! takes one short lock. [`Metrics::render`] writes every family of §10, with
//! its HELP and TYPE even before it has a series, in the table's order, with
//! the stock help texts and histogram buckets.
//!
//! Label values can come from the other side of a socket (a peer's UID, a
//! node name once it passed validation, a method name), so each labelled
//! family keeps at most [`MAX_SERIES`] series: past that, a new value of its
//! open label (`method`, `node`, `peer`; `reason` for the validator family)
//! is counted under [`OVERFLOW`] instead, its other labels kept. A family
//! therefore never has more than `MAX_SERIES` plus a handful of series.
//! Node labels are sanitised ([`sanitize_node`]) before that.
//!
//! The listener answers `GET`/`HEAD /metrics` and nothing else (404, 405),
//! over `https.rs`'s small HTTP/1.1 reader and worker pool: the request head
//! must arrive within 5 s (Go's `ReadHeaderTimeout`) and fit 16 KiB; one
//! request per connection. It does not serve `process_*` families (the stock
//! proxy's registry is private too).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::metrics::{escape_label, family};
use crate::proxy::https::{self, HeadError};

/// Series kept per labelled family before new label values fold into
/// [`OVERFLOW`].
pub const MAX_SERIES: usize = 256;
/// The label value that stands for every value past [`MAX_SERIES`].
pub const OVERFLOW: &str = "_overflow";

const RPC_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0];
const SSH_BUCKETS: [f64; 7] = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Go's `ReadHeaderTimeout` on the stock listener.
const READ_HEADER: Duration = Duration::from_secs(5);
const WRITE: Duration = Duration::from_secs(10);
/// Scrapes served at once (plus one thread that answers 503 past that).
const WORKERS: usize = 2;
/// Rendering and one request head need little.
const STACK: usize = 128 * 1024;

/// Label values (in the family's label order) to a value.
type Series<T> = BTreeMap<Vec<String>, T>;

#[derive(Debug, Default)]
struct Histogram {
    /// Cumulative: `counts[i]` observations were `<= buckets[i]`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, buckets: &[f64], v: f64) {
        self.counts.resize(buckets.len(), 0);
        for (c, le) in self.counts.iter_mut().zip(buckets) {
            if v <= *le {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct Inner {
    rpc: Series<u64>,
    rpc_latency: Series<Histogram>,
    ssh: Series<u64>,
    ssh_latency: Series<Histogram>,
    queue_depth: i64,
    rate_limit_hits: u64,
    rejections: Series<u64>,
    global_inflight: u64,
    penalties: Series<u64>,
    active_peers: u64,
    validation_failures: Series<u64>,
    read_timeouts: u64,
    write_timeouts: u64,
    hostkey_changes: Series<u64>,
    ssh_oversized: Series<u64>,
}

/// The proxy's metrics; share it as `Arc<Metrics>`.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// The series for `values`, created if the family has room; otherwise the
/// one with `values[open]` replaced by [`OVERFLOW`].
fn series<T: Default>(s: &mut Series<T>, mut values: Vec<String>, open: usize) -> &mut T {
    if s.len() >= MAX_SERIES && !s.contains_key(&values) {
        values[open] = OVERFLOW.to_string();
    }
    s.entry(values).or_default()
}

fn owned(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    fn with(&self, f: impl FnOnce(&mut Inner)) {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// One handled RPC: `result` is `success`, `error` or `unauthorized`.
    pub fn rpc(&self, method: &str, result: &str, latency: Duration) {
        self.with(|m| {
            *series(&mut m.rpc, owned(&[method, result]), 0) += 1;
            series(&mut m.rpc_latency, owned(&[method]), 0)
                .observe(&RPC_BUCKETS, latency.as_secs_f64());
        });
    }

    /// One SSH execution on `node` (sanitised here).
    pub fn ssh(&self, node: &str, ok: bool, latency: Duration) {
        let node = sanitize_node(node);
        let result = if ok { "success" } else { "error" };
        self.with(|m| {
            *series(&mut m.ssh, vec![node.clone(), result.into()], 0) += 1;
            series(&mut m.ssh_latency, vec![node], 0).observe(&SSH_BUCKETS, latency.as_secs_f64());
        });
    }

    /// Connections being handled: +1 when one starts, -1 when it ends.
    pub fn queue_depth(&self, delta: i64) {
        self.with(|m| m.queue_depth = m.queue_depth.saturating_add(delta));
    }

    /// A limiter rejection (`rate`, `global_concurrency`,
    /// `peer_concurrency`) of `peer` (`uid:N`, `range:A-B`); also counts in
    /// `pulse_proxy_rate_limit_hits_total`.
    pub fn limiter_rejection(&self, reason: &str, peer: &str) {
        self.with(|m| {
            m.rate_limit_hits += 1;
            *series(&mut m.rejections, owned(&[reason, peer]), 1) += 1;
        });
    }

    /// Global concurrency slots in use.
    pub fn global_inflight(&self, n: u64) {
        self.with(|m| m.global_inflight = n);
    }

    /// A penalty sleep after a validation failure.
    pub fn penalty(&self, reason: &str, peer: &str) {
        self.with(|m| *series(&mut m.penalties, owned(&[reason, peer]), 1) += 1);
    }

    /// Peers the limiter tracks.
    pub fn active_peers(&self, n: u64) {
        self.with(|m| m.active_peers = n);
    }

    /// The node validator refused a node (`node_not_allowlisted`, ...).
    pub fn node_validation_failure(&self, reason: &str) {
        self.with(|m| *series(&mut m.validation_failures, owned(&[reason]), 0) += 1);
    }

    pub fn read_timeout(&self) {
        self.with(|m| m.read_timeouts += 1);
    }

    pub fn write_timeout(&self) {
        self.with(|m| m.write_timeouts += 1);
    }

    /// A host key of `node` (sanitised here) did not match `known_hosts`.
    pub fn hostkey_change(&self, node: &str) {
        let node = sanitize_node(node);
        self.with(|m| *series(&mut m.hostkey_changes, vec![node], 0) += 1);
    }

    /// SSH output from `node` (sanitised here) was over the size cap.
    pub fn ssh_output_oversized(&self, node: &str) {
        let node = sanitize_node(node);
        self.with(|m| *series(&mut m.ssh_oversized, vec![node], 0) += 1);
    }

    /// The exposition page (text format 0.0.4).
    pub fn render(&self) -> String {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut o = String::with_capacity(4096);
        counters(
            &mut o,
            "rpc_requests_total",
            "Total RPC requests handled by method and result.",
            &["method", "result"],
            &m.rpc,
        );
        histograms(
            &mut o,
            "rpc_latency_seconds",
            "RPC handler latency.",
            "method",
            &RPC_BUCKETS,
            &m.rpc_latency,
        );
        counters(
            &mut o,
            "ssh_requests_total",
            "SSH command executions by node and result.",
            &["node", "result"],
            &m.ssh,
        );
        histograms(
            &mut o,
            "ssh_latency_seconds",
            "SSH command latency per node.",
            "node",
            &SSH_BUCKETS,
            &m.ssh_latency,
        );
        scalar(
            &mut o,
            "queue_depth",
            "gauge",
            "Concurrent RPC requests being processed.",
            &m.queue_depth,
        );
        scalar(
            &mut o,
            "rate_limit_hits_total",
            "counter",
            "Number of RPC requests rejected due to rate limiting.",
            &m.rate_limit_hits,
        );
        counters(
            &mut o,
            "limiter_rejections_total",
            "Limiter rejections by reason.",
            &["reason", "peer"],
            &m.rejections,
        );
        scalar(
            &mut o,
            "global_concurrency_inflight",
            "gauge",
            "Current global concurrency slots in use.",
            &m.global_inflight,
        );
        counters(
            &mut o,
            "limiter_penalties_total",
            "Penalty sleeps applied after validation failures.",
            &["reason", "peer"],
            &m.penalties,
        );
        scalar(
            &mut o,
            "limiter_active_peers",
            "gauge",
            "Number of peers tracked by the rate limiter.",
            &m.active_peers,
        );
        counters(
            &mut o,
            "node_validation_failures_total",
            "Node validation failures by reason.",
            &["reason"],
            &m.validation_failures,
        );
        scalar(
            &mut o,
            "read_timeouts_total",
            "counter",
            "Number of socket read timeouts.",
            &m.read_timeouts,
        );
        scalar(
            &mut o,
            "write_timeouts_total",
            "counter",
            "Number of socket write timeouts.",
            &m.write_timeouts,
        );
        counters(
            &mut o,
            "hostkey_changes_total",
            "Detected SSH host key changes by node.",
            &["node"],
            &m.hostkey_changes,
        );
        counters(
            &mut o,
            "ssh_output_oversized_total",
            "Number of SSH responses rejected for exceeding size limits.",
            &["node"],
            &m.ssh_oversized,
        );
        family(
            &mut o,
            "pulse_proxy_build_info",
            "gauge",
            "Proxy build metadata.",
        );
        let _ = writeln!(
            o,
            "pulse_proxy_build_info{{version=\"{}\"}} 1",
            escape_label(crate::proxy::version())
        );
        o
    }
}

fn scalar(o: &mut String, name: &str, kind: &str, help: &str, v: &dyn std::fmt::Display) {
    family(o, &format!("pulse_proxy_{name}"), kind, help);
    let _ = writeln!(o, "pulse_proxy_{name} {v}");
}

/// `a="x",b="y"`.
fn labels(names: &[&str], values: &[String]) -> String {
    let mut s = String::new();
    for (n, v) in names.iter().zip(values) {
        if !s.is_empty() {
            s.push(',');
        }
        let _ = write!(s, "{n}=\"{}\"", escape_label(v));
    }
    s
}

fn counters(o: &mut String, name: &str, help: &str, names: &[&str], s: &Series<u64>) {
    family(o, &format!("pulse_proxy_{name}"), "counter", help);
    for (values, v) in s {
        let _ = writeln!(o, "pulse_proxy_{name}{{{}}} {v}", labels(names, values));
    }
}

fn histograms(
    o: &mut String,
    name: &str,
    help: &str,
    label: &str,
    buckets: &[f64],
    s: &Series<Histogram>,
) {
    let name = format!("pulse_proxy_{name}");
    family(o, &name, "histogram", help);
    for (values, h) in s {
        let l = labels(&[label], values);
        for (le, c) in buckets.iter().zip(&h.counts) {
            let _ = writeln!(o, "{name}_bucket{{{l},le=\"{le}\"}} {c}");
        }
        let _ = writeln!(o, "{name}_bucket{{{l},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(o, "{name}_sum{{{l}}} {}", h.sum);
        let _ = writeln!(o, "{name}_count{{{l}}} {}", h.count);
    }
}

/// A node name as a label value (§10): lowercased, every character outside
/// `[a-z0-9._-]` replaced by `_`, at most 63 characters, `unknown` when empty.
pub fn sanitize_node(node: &str) -> String {
    let out: String = node
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    if out.is_empty() {
        "unknown".into()
    } else {
        out
    }
}

/// Serves `GET /metrics` on `addr` (`127.0.0.1:9127`): an accept thread
/// named `metrics`, [`WORKERS`] small-stack workers, and one more that
/// answers 503 when they are all busy.
pub fn serve(addr: &str, metrics: Arc<Metrics>) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr)?;
    log::info!(
        "metrics listener on http://{}/metrics",
        listener.local_addr()?
    );
    let work = move |conn: TcpStream, busy: bool| scrape(conn, &metrics, busy);
    https::pool(listener, "metrics", WORKERS, STACK, Arc::new(work))
}

/// Answers one connection.
fn scrape(conn: TcpStream, metrics: &Metrics, busy: bool) {
    let mut conn = https::Timed::new(conn, Instant::now() + READ_HEADER);
    let head = https::read_head(&mut conn);
    conn.until = Instant::now() + WRITE;
    let text = "text/plain; charset=utf-8";
    let head = match head {
        Ok(head) => head,
        Err(HeadError::Io(_)) => return,
        Err(HeadError::TooLarge) => {
            let _ = https::write_response(&mut conn, 431, text, b"request too large\n");
            return conn.close();
        }
        Err(HeadError::Malformed(_)) => {
            let _ = https::write_response(&mut conn, 400, text, b"bad request\n");
            return conn.close();
        }
    };
    let (status, ctype, body) = match (head.method.as_str(), head.path()) {
        _ if busy => (503, text, "busy\n".to_string()),
        ("GET" | "HEAD", "/metrics") => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        (_, "/metrics") => (405, text, "method not allowed\n".into()),
        _ => (404, text, "404 page not found\n".into()),
    };
    let body = if head.method == "HEAD" { "" } else { &body };
    let _ = https::write_response(&mut conn, status, ctype, body.as_bytes());
    conn.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(&SSH_BUCKETS, 0.7);
        h.observe(&SSH_BUCKETS, 40.0);
        assert_eq!(h.counts, [0, 0, 1, 1, 1, 1, 1]);
        assert_eq!(h.count, 2);
    }
}
