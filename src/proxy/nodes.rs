//! Which nodes the proxy may SSH to (spec §6, §7.4): the node-name syntax,
//! the SSRF guard ([`Validator`]: allow-list, cluster membership, strict or
//! permissive), and cluster discovery from `pvecm status` /
//! `pvesh get /cluster/status`.
//!
//! Parsers are pure functions over captured output; [`discover_cluster`]
//! runs the programs through `crate::exec` (no shell, 10 s deadline, output
//! cap). The validator takes its cluster and local-address sources as
//! functions so tests inject them. DNS is asked only for a node *name* when
//! the allow-list holds CIDRs; nothing else here touches the network.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::config::Config;
use crate::root::Root;

/// Rejection reasons (the `reason` label of
/// `pulse_proxy_node_validation_failures_total`).
pub mod reason {
    pub const NOT_ALLOWLISTED: &str = "node_not_allowlisted";
    pub const NOT_CLUSTER_MEMBER: &str = "node_not_cluster_member";
    pub const CLUSTER_QUERY_FAILED: &str = "cluster_query_failed";
    pub const NOT_LOCALHOST: &str = "node_not_localhost";
    pub const NO_VALIDATION_SOURCES: &str = "no_validation_sources";
    pub const RESOLUTION_FAILED: &str = "allowlist_resolution_failed";
}

/// How long cluster membership is trusted once read.
pub const CLUSTER_CACHE_TTL: Duration = Duration::from_secs(300);
/// How long a failed cluster query is remembered (so an IPC-denied host does
/// not run `pvecm` for every request).
pub const CLUSTER_FAILURE_TTL: Duration = Duration::from_secs(30);
/// Deadline for `pvecm` and `pvesh`.
const DISCOVERY_DEADLINE: Duration = Duration::from_secs(10);
const DISCOVERY_OUTPUT_CAP: usize = 1024 * 1024;

/// An IP network: `addr/prefix`. A bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `192.168.0.0/24`, `fd00::/8`, or a bare address.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => {
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (ip, Some(p.parse::<u8>().ok()?))
            }
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is inside. An IPv4-mapped IPv6 address counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Spec §6 name syntax: a dotted quad, any IP address (optionally in
/// `[...]`), or `^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$`. A name never starts
/// with `-`, so it cannot become an `ssh` option.
pub fn valid_name(node: &str) -> bool {
    if node.is_empty() {
        return false;
    }
    let dotted_quad = {
        let parts: Vec<&str> = node.split('.').collect();
        parts.len() == 4
            && parts
                .iter()
                .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    };
    if dotted_quad || parse_ip(node).is_some() {
        return true;
    }
    let b = node.as_bytes();
    b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn strip_brackets(s: &str) -> &str {
    match s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(inner) if !inner.is_empty() => inner,
        _ => s,
    }
}

/// The node as an IP address (brackets stripped, IPv4-mapped made IPv4).
fn parse_ip(s: &str) -> Option<IpAddr> {
    strip_brackets(s.trim())
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
}

/// How an entry or a node is compared: the canonical IP text, else the
/// lowercased name.
pub fn normalize(entry: &str) -> String {
    match parse_ip(entry) {
        Some(ip) => ip.to_string(),
        None => entry.trim().to_ascii_lowercase(),
    }
}

/// Why the validator refused a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// One of [`reason`].
    pub reason: &'static str,
    /// The text returned to the client: `node "<n>" rejected by validator
    /// (<reason>)`, or `resolve node "<h>": ...`.
    pub message: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Rejection {}

/// Cluster members (IPs and lowercased names), or why they are unknown.
pub type ClusterFn = Box<dyn Fn() -> Result<Vec<String>, String> + Send + Sync>;
/// This host's names and addresses.
pub type LocalFn = Box<dyn Fn() -> Vec<String> + Send + Sync>;
/// Name -> addresses.
pub type ResolveFn = Box<dyn Fn(&str) -> Result<Vec<IpAddr>, String> + Send + Sync>;
/// Called with the reason of every validation failure (metrics).
pub type FailureHook = Box<dyn Fn(&'static str) + Send + Sync>;

#[derive(Default)]
struct Allow {
    hosts: HashSet<String>,
    cidrs: Vec<Cidr>,
}

impl Allow {
    fn new(entries: &[String]) -> Allow {
        let mut a = Allow::default();
        for e in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            match e.contains('/').then(|| Cidr::parse(e)).flatten() {
                Some(c) => a.cidrs.push(c),
                None => {
                    a.hosts.insert(normalize(e));
                }
            }
        }
        a
    }

    fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.cidrs.is_empty()
    }

    fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.hosts.contains(&ip.to_canonical().to_string())
            || self.cidrs.iter().any(|c| c.contains(ip))
    }
}

type Members = Result<Arc<HashSet<String>>, String>;

/// The SSRF guard. Mode (spec §6), chosen at construction: allow-list when
/// there are entries; else cluster membership on a Proxmox host; else deny
/// everything when strict; else permissive.
pub struct Validator {
    allow: Mutex<Arc<Allow>>,
    cluster_enabled: bool,
    strict: bool,
    cluster: ClusterFn,
    local: LocalFn,
    resolver: ResolveFn,
    cache: Mutex<Option<(Instant, Members)>>,
    ttl: Duration,
    failure_ttl: Duration,
    hook: Option<FailureHook>,
}

/// Whether this is a Proxmox host: `pve_dir` is a directory or `pvecm` is
/// on `$PATH`.
pub fn is_proxmox_host(cfg: &Config) -> bool {
    cfg.pve_dir.is_dir() || cfg.pvecm.is_some()
}

fn dns(host: &str) -> Result<Vec<IpAddr>, String> {
    let addrs = (host, 0u16).to_socket_addrs().map_err(|e| e.to_string())?;
    let ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
    if ips.is_empty() {
        return Err(format!("no IPs resolved for {host}"));
    }
    Ok(ips)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these values half-written (they are
    // replaced whole), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Validator {
    /// A validator for `cfg`: `cluster` lists the members (called at most
    /// once per 5 minutes), `local` this host's names and addresses (used
    /// when the cluster query fails).
    pub fn new(cfg: &Config, cluster: ClusterFn, local: LocalFn) -> Validator {
        let allow = Allow::new(&cfg.allowed_nodes);
        let cluster_enabled = allow.is_empty() && is_proxmox_host(cfg);
        if !allow.is_empty() {
            log::info!(
                "node allow-list configured: {} host(s), {} CIDR(s)",
                allow.hosts.len(),
                allow.cidrs.len()
            );
        } else if cluster_enabled {
            log::info!("node validator using Proxmox cluster membership");
        } else if cfg.strict_node_validation {
            log::warn!(
                "strict_node_validation is on but there is no allow-list and no cluster: every node is refused"
            );
        } else {
            log::warn!(
                "SECURITY: node validator is permissive (no allow-list, not a Proxmox host): every node is allowed; configure allowed_nodes to restrict"
            );
        }
        Validator {
            allow: Mutex::new(Arc::new(allow)),
            cluster_enabled,
            strict: cfg.strict_node_validation,
            cluster,
            local,
            resolver: Box::new(dns),
            cache: Mutex::new(None),
            ttl: CLUSTER_CACHE_TTL,
            failure_ttl: CLUSTER_FAILURE_TTL,
            hook: None,
        }
    }

    /// Replaces the DNS lookup (tests).
    pub fn set_resolver(&mut self, resolver: ResolveFn) {
        self.resolver = resolver;
    }

    /// Replaces how long cluster membership (and a failed query) is cached.
    pub fn set_cache_ttl(&mut self, members: Duration, failure: Duration) {
        self.ttl = members;
        self.failure_ttl = failure;
    }

    /// Called with every failure reason, including `cluster_query_failed`
    /// when the local fallback then allows the node (the stock metric counts
    /// that too).
    pub fn set_failure_hook(&mut self, hook: FailureHook) {
        self.hook = Some(hook);
    }

    /// Allows or refuses `node` (already checked with [`valid_name`]).
    pub fn check(&self, node: &str) -> Result<(), Rejection> {
        let allow = Arc::clone(&lock(&self.allow));
        if !allow.is_empty() {
            return self.check_allowlist(&allow, node);
        }
        if self.cluster_enabled {
            return match self.members() {
                Ok(m) if m.contains(&normalize(node)) => Ok(()),
                Ok(_) => Err(self.deny(node, reason::NOT_CLUSTER_MEMBER)),
                Err(e) => {
                    self.record(reason::CLUSTER_QUERY_FAILED);
                    log::warn!(
                        "SECURITY: cluster validation unavailable ({e}); only this host is allowed. Configure allowed_nodes for cluster-wide access"
                    );
                    self.check_local(node)
                }
            };
        }
        if self.strict {
            return Err(self.deny(node, reason::NO_VALIDATION_SOURCES));
        }
        Ok(())
    }

    /// Replaces the allow-list wholesale (control-plane sync).
    pub fn replace_allowlist(&self, nodes: Vec<String>) {
        let allow = Allow::new(&nodes);
        if allow.is_empty() {
            log::warn!("control plane allow-list update produced an empty set");
        } else {
            log::info!(
                "node allow-list updated from the control plane: {} host(s), {} CIDR(s)",
                allow.hosts.len(),
                allow.cidrs.len()
            );
        }
        *lock(&self.allow) = Arc::new(allow);
    }

    fn check_allowlist(&self, allow: &Allow, node: &str) -> Result<(), Rejection> {
        if allow.hosts.contains(&normalize(node)) {
            return Ok(());
        }
        if let Some(ip) = parse_ip(node) {
            if allow.ip_allowed(ip) {
                return Ok(());
            }
            return Err(self.deny(node, reason::NOT_ALLOWLISTED));
        }
        if allow.cidrs.is_empty() {
            return Err(self.deny(node, reason::NOT_ALLOWLISTED));
        }
        let host = strip_brackets(node.trim());
        match (self.resolver)(host) {
            Ok(ips) if ips.iter().any(|ip| allow.ip_allowed(*ip)) => Ok(()),
            Ok(_) => Err(self.deny(node, reason::NOT_ALLOWLISTED)),
            Err(e) => {
                self.record(reason::RESOLUTION_FAILED);
                log::warn!("node allow-list resolution failed for {node:?}: {e}");
                Err(Rejection {
                    reason: reason::RESOLUTION_FAILED,
                    message: format!("resolve node {host:?}: {e}"),
                })
            }
        }
    }

    fn check_local(&self, node: &str) -> Result<(), Rejection> {
        let local = (self.local)();
        if local.is_empty() {
            return Err(self.deny(node, reason::CLUSTER_QUERY_FAILED));
        }
        let n = normalize(node);
        if local.iter().any(|l| normalize(l) == n) {
            return Ok(());
        }
        Err(self.deny(node, reason::NOT_LOCALHOST))
    }

    /// Cluster members, from the cache when fresh. The lock is held while
    /// querying, so concurrent requests share one `pvecm` run.
    fn members(&self) -> Members {
        let mut cache = lock(&self.cache);
        if let Some((until, m)) = cache.as_ref() {
            if Instant::now() < *until {
                return m.clone();
            }
        }
        let fresh: Members =
            (self.cluster)().map(|list| Arc::new(list.iter().map(|m| normalize(m)).collect()));
        let ttl = if fresh.is_ok() {
            self.ttl
        } else {
            self.failure_ttl
        };
        if let Ok(m) = &fresh {
            log::debug!("cluster membership refreshed: {} entries", m.len());
        }
        *cache = Some((Instant::now() + ttl, fresh.clone()));
        fresh
    }

    fn record(&self, reason: &'static str) {
        if let Some(h) = &self.hook {
            h(reason);
        }
    }

    fn deny(&self, node: &str, reason: &'static str) -> Rejection {
        self.record(reason);
        log::warn!("potential SSRF attempt blocked: node={node:?} reason={reason}");
        Rejection {
            reason,
            message: format!("node {node:?} rejected by validator ({reason})"),
        }
    }
}

/// What `pvecm status` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PvecmResult {
    /// Member addresses from the membership table (qdevice lines skipped).
    Members(Vec<IpAddr>),
    /// Not in a cluster: the members are this host's own addresses.
    Standalone,
    /// A cluster exists but its IPC is closed to us (a sandboxed service,
    /// a container): not standalone.
    IpcDenied(String),
    Failed(String),
}

/// Parses `pvecm status` (stdout when it succeeded; stderr and stdout
/// together when it failed), spec §7.4.
pub fn parse_pvecm_status(out: &str, exit_ok: bool) -> PvecmResult {
    let excerpt = || {
        let t = out.trim();
        let end = (0..=t.len().min(300))
            .rev()
            .find(|&i| t.is_char_boundary(i))
            .unwrap_or(0);
        t[..end].to_string()
    };
    if !exit_ok {
        if out.contains("ipcc_send_rec") || out.contains("access control list") {
            return PvecmResult::IpcDenied(format!(
                "pvecm cluster IPC access denied (check systemd restrictions or run outside container): {}",
                excerpt()
            ));
        }
        let lower = out.to_ascii_lowercase();
        let standalone = [
            "does not exist",
            "not found",
            "no such file",
            "not part of a cluster",
            "no cluster",
            "standalone",
        ];
        if standalone.iter().any(|s| lower.contains(s)) {
            return PvecmResult::Standalone;
        }
        return PvecmResult::Failed(format!("failed to get cluster status: {}", excerpt()));
    }
    let mut ips = Vec::new();
    for line in out.lines() {
        if line.to_ascii_lowercase().contains("qdevice") {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 2 {
            continue;
        }
        if let Some(ip) = fields.iter().find_map(|f| f.parse::<IpAddr>().ok()) {
            ips.push(ip.to_canonical());
        }
    }
    if ips.is_empty() {
        return PvecmResult::Failed("no cluster nodes found with IP addresses".into());
    }
    PvecmResult::Members(ips)
}

/// A `type: node` entry of `pvesh get /cluster/status --output-format json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    pub name: String,
    /// May be empty (the field is missing for some offline nodes).
    pub ip: String,
    pub local: bool,
    pub online: bool,
}

/// Parses `pvesh get /cluster/status --output-format json`: the node
/// entries (the `type: cluster` entry is skipped).
pub fn parse_pvesh_cluster_status(json: &str) -> Result<Vec<ClusterNode>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("pvesh output is not JSON: {e}"))?;
    let list = v.as_array().ok_or("pvesh output is not a JSON array")?;
    let flag = |e: &serde_json::Value, k: &str| match &e[k] {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_i64().is_some_and(|n| n != 0),
        _ => false,
    };
    let mut out = Vec::new();
    for e in list {
        if e["type"].as_str() != Some("node") {
            continue;
        }
        let Some(name) = e["name"].as_str().filter(|n| !n.is_empty()) else {
            continue;
        };
        out.push(ClusterNode {
            name: name.to_string(),
            ip: e["ip"].as_str().unwrap_or_default().to_string(),
            local: flag(e, "local"),
            online: flag(e, "online"),
        });
    }
    if out.is_empty() {
        return Err("pvesh output lists no nodes".into());
    }
    Ok(out)
}

/// This host's lowercased hostname and its addresses, skipping loopback,
/// link-local and unspecified ones.
pub fn local_addresses(root: &Root) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(h) = root.read_trimmed("/proc/sys/kernel/hostname") {
        if !h.is_empty() {
            out.push(h.to_ascii_lowercase());
        }
    }
    match root.interface_addrs() {
        Ok(addrs) => {
            for a in addrs {
                let ip = a.cidr.split('/').next().unwrap_or_default();
                let Ok(ip) = ip.parse::<IpAddr>() else {
                    continue;
                };
                let ip = ip.to_canonical();
                let link_local = match ip {
                    IpAddr::V4(v4) => v4.is_link_local(),
                    IpAddr::V6(v6) => v6.is_unicast_link_local(),
                };
                if ip.is_loopback() || ip.is_unspecified() || link_local {
                    continue;
                }
                let s = ip.to_string();
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        Err(e) => log::warn!("cannot list interface addresses: {e}"),
    }
    out
}

/// Cluster members for the validator and `register_nodes`: `pvecm status`
/// (10 s), falling back to `pvesh get /cluster/status` when pvecm is
/// missing or fails; a standalone node answers with [`local_addresses`].
/// Members are IP addresses (pvecm) or addresses and lowercased names (pvesh).
pub fn discover_cluster(root: &Root, pvecm: &Path, pvesh: &Path) -> Result<Vec<String>, String> {
    let pvecm_error = match crate::exec::run(pvecm, &["status"], deadline(), DISCOVERY_OUTPUT_CAP) {
        Ok(out) => {
            let ok = out.code == Some(0);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let text = if ok {
                stdout.into_owned()
            } else {
                format!("{}\n{stdout}", out.stderr)
            };
            match parse_pvecm_status(&text, ok) {
                PvecmResult::Members(ips) => {
                    return Ok(ips.iter().map(IpAddr::to_string).collect());
                }
                PvecmResult::Standalone => {
                    log::info!("standalone Proxmox node: validating against local addresses");
                    let local = local_addresses(root);
                    if local.is_empty() {
                        return Err("no local host addresses found".into());
                    }
                    return Ok(local);
                }
                PvecmResult::IpcDenied(e) | PvecmResult::Failed(e) => e,
            }
        }
        Err(e) => e.to_string(),
    };
    let args = ["get", "/cluster/status", "--output-format", "json"];
    match crate::exec::run(pvesh, &args, deadline(), DISCOVERY_OUTPUT_CAP) {
        Ok(out) if out.code == Some(0) => {
            let nodes = parse_pvesh_cluster_status(&String::from_utf8_lossy(&out.stdout))
                .map_err(|e| format!("{pvecm_error}; {e}"))?;
            let mut members = Vec::new();
            for n in nodes {
                if let Some(ip) = parse_ip(&n.ip) {
                    members.push(ip.to_string());
                }
                members.push(n.name.to_ascii_lowercase());
            }
            Ok(members)
        }
        _ => Err(pvecm_error),
    }
}

fn deadline() -> Instant {
    Instant::now() + DISCOVERY_DEADLINE
}
