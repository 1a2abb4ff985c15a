//! pulse-sensor-proxy configuration: the YAML subset (every accepted form,
//! every refusal with its line number), the environment overrides (injected,
//! never `set_var`), defaults, the allow-list file in its three forms, the
//! `config validate` / `config set-allowed-nodes` subcommands, node-name
//! syntax, the node validator's modes, and the `pvecm`/`pvesh` parsers and
//! cluster discovery against fake programs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pulse_agent::proxy::caps;
use pulse_agent::proxy::config::{self, Config, ConfigError};
use pulse_agent::proxy::nodes::{self, Cidr, PvecmResult, Validator, reason};
use pulse_agent::root::Root;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("vendor-free-tests/fixtures/proxy-config")
        .join(name)
}

fn read_fixture(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_text(text, "config.yaml", &no_env)
}

fn parse_ok(text: &str) -> Config {
    parse(text).unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
}

fn parse_err(text: &str) -> String {
    match parse(text) {
        Ok(c) => panic!("accepted:\n{text}\n{c:?}"),
        Err(e) => e.to_string(),
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "proxy-config-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cidrs(c: &Config) -> Vec<String> {
    c.allowed_source_subnets
        .iter()
        .map(|c| c.to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// Accepted YAML forms

#[test]
fn installer_written_config_is_read_field_by_field() {
    let c = parse_ok(&read_fixture("config.yaml"));
    assert_eq!(c.allowed_peer_uids, vec![1000]);
    assert!(c.allow_idmapped_root);
    assert_eq!(c.allowed_idmap_users, vec!["root"]);
    assert_eq!(c.metrics_address.as_deref(), Some("127.0.0.1:9127"));
    assert_eq!(c.rate_interval, Duration::from_millis(333));
    assert_eq!(c.rate_burst, 10);
    assert_eq!(
        c.allowed_nodes_file.as_deref(),
        Some(Path::new("/etc/pulse-sensor-proxy/allowed_nodes.yaml"))
    );
    let cp = c.control_plane.as_ref().unwrap();
    assert_eq!(cp.url, "https://pulse.example.lan:7655");
    assert_eq!(
        cp.token_file,
        Path::new("/etc/pulse-sensor-proxy/.pulse-control-token")
    );
    assert_eq!(cp.refresh_interval, Duration::from_secs(60));
    assert!(!cp.insecure_skip_verify);
    let http = c.http.as_ref().unwrap();
    assert_eq!(http.listen_addr, "0.0.0.0:8443");
    assert_eq!(
        http.tls_cert,
        Path::new("/etc/pulse-sensor-proxy/tls/server.crt")
    );
    assert_eq!(
        http.tls_key,
        Path::new("/etc/pulse-sensor-proxy/tls/server.key")
    );
    assert_eq!(
        http.auth_token,
        "dGVzdC10b2tlbi1ub3QtYS1yZWFsLXNlY3JldC0wMDAw"
    );
    assert!(
        !format!("{c:?}").contains("dGVzdC10b2tl"),
        "Debug leaks the token"
    );
    assert_eq!(
        cidrs(&c),
        ["192.168.10.50/32", "127.0.0.1/32", "192.168.10.21/32"]
    );
}

#[test]
fn example_config_shape_is_read_field_by_field() {
    let c = parse_ok(&read_fixture("config.example.yaml"));
    assert_eq!(cidrs(&c), ["127.0.0.1/32", "192.168.0.0/24"]);
    assert_eq!(c.allowed_peers, vec![(0, caps::ALL), (100999, caps::READ)]);
    assert!(c.allowed_peer_uids.is_empty() && c.allowed_peer_gids.is_empty());
    assert_eq!(c.log_level, log::LevelFilter::Info);
    assert_eq!(c.metrics_address.as_deref(), Some("127.0.0.1:9127"));
    assert_eq!(c.read_timeout, Duration::from_secs(5));
    assert_eq!(c.write_timeout, Duration::from_secs(10));
    assert_eq!(c.max_ssh_output_bytes, 1048576);
    assert!(!c.require_proxmox_hostkeys && !c.strict_node_validation);
    assert_eq!(c.rate_interval, Duration::from_millis(1000));
    assert_eq!(c.rate_burst, 5);
    assert!(c.http.is_none(), "http_enabled: false");
    assert_eq!(
        c.control_plane.unwrap().url,
        "https://pulse.example.com:7655"
    );
}

#[test]
fn cli_written_config_with_four_space_indentation_is_read() {
    let c = parse_ok(&read_fixture("config-cli.yaml"));
    assert_eq!(c.allowed_peer_uids, vec![1000]);
    assert_eq!(cidrs(&c), ["10.0.0.0/24"]);
    assert_eq!(c.metrics_address.as_deref(), Some("127.0.0.1:9127"));
    let cp = c.control_plane.unwrap();
    assert_eq!(cp.refresh_interval, Duration::from_secs(120));
    assert_eq!(cp.url, "https://pulse.example.lan:7655");
    assert_eq!(c.rate_interval, Duration::from_millis(333));
}

#[test]
fn block_lists_at_the_key_indentation_and_flow_lists_are_the_same() {
    let a = parse_ok("allowed_nodes:\n- a\n- b\nlog_level: debug\n");
    let b = parse_ok("allowed_nodes: [a, \"b\"]\nlog_level: debug\n");
    let c = parse_ok("allowed_nodes:\n    - 'a'\n    - b   # trailing comment\nlog_level: debug\n");
    assert_eq!(a.allowed_nodes, ["a", "b"]);
    assert_eq!(a.allowed_nodes, b.allowed_nodes);
    assert_eq!(a.allowed_nodes, c.allowed_nodes);
    assert_eq!(c.log_level, log::LevelFilter::Debug);
    assert!(parse_ok("allowed_nodes: []\n").allowed_nodes.is_empty());
    assert!(parse_ok("allowed_nodes: [ ]\n").allowed_nodes.is_empty());
    assert!(parse_ok("allowed_nodes: [a, b, ]\n").allowed_nodes.len() == 2);
}

#[test]
fn list_of_peer_mappings_in_every_layout() {
    let c = parse_ok(
        "allowed_peers:\n\
         - uid: 1000\n  capabilities:\n    - read\n    - ADMIN\n\
         - capabilities: [write]\n  uid: 1001\n\
         -   uid: 1000\n    capabilities: [write]\n\
         - uid: 1002\n  capabilities: []\n\
         - uid: 1003\n  capabilities: [sudo]\n\
         - uid: 1004\n",
    );
    assert_eq!(
        c.allowed_peers,
        vec![
            (1000, caps::READ | caps::ADMIN | caps::WRITE),
            (1001, caps::WRITE),
            (1002, caps::READ),
            (1003, caps::READ),
            (1004, caps::READ),
        ]
    );
}

#[test]
fn scalars_quotes_comments_booleans_and_durations() {
    let c = parse_ok(
        "---\n\
         # comment\n\
         \"log_level\": 'warn'\n\
         strict_node_validation: yes\n\
         require_proxmox_hostkeys: On\n\
         allow_idmapped_root: False\n\
         metrics_address: \"127.0.0.1:9200\" # not part of it\n\
         allowed_idmap_users: ['it''s', \"a#b\", c#d, \"tab\\there\"]\n\
         read_timeout: 1m30s\n\
         write_timeout: 500ms\n\
         max_ssh_output_bytes: +2048\n\
         http_auth_token:\n\
         allowed_nodes_file: ~\n\
         ssh_port: 2222\n",
    );
    assert_eq!(c.log_level, log::LevelFilter::Warn);
    assert!(c.strict_node_validation && c.require_proxmox_hostkeys);
    assert!(!c.allow_idmapped_root);
    assert_eq!(c.metrics_address.as_deref(), Some("127.0.0.1:9200"));
    assert_eq!(c.allowed_idmap_users, ["it's", "a#b", "c#d", "tab\there"]);
    assert_eq!(c.read_timeout, Duration::from_secs(90));
    assert_eq!(c.write_timeout, Duration::from_millis(500));
    assert_eq!(c.max_ssh_output_bytes, 2048);
    assert_eq!(c.allowed_nodes_file, None);
    assert_eq!(c.ssh_port, 2222);
}

#[test]
fn empty_files_and_empty_mappings_mean_defaults() {
    for text in ["", "\n\n", "# only a comment\n", "---\n", "{}\n"] {
        assert_eq!(parse_ok(text), parse_ok(""), "{text:?}");
    }
}

#[test]
fn zero_or_negative_timeouts_and_limits_keep_the_defaults() {
    let c = parse_ok(
        "read_timeout: 0s\nwrite_timeout: -3s\nmax_ssh_output_bytes: 0\n\
         rate_limit:\n  per_peer_interval_ms: 0\n  per_peer_burst: -1\n\
         pulse_control_plane:\n  url: https://p\n  refresh_interval: 0\n",
    );
    assert_eq!(c.read_timeout, Duration::from_secs(5));
    assert_eq!(c.write_timeout, Duration::from_secs(10));
    assert_eq!(c.max_ssh_output_bytes, 1024 * 1024);
    assert_eq!(c.rate_interval, Duration::from_millis(500));
    assert_eq!(c.rate_burst, 10);
    assert_eq!(
        c.control_plane.unwrap().refresh_interval,
        Duration::from_secs(60)
    );
}

#[test]
fn unknown_keys_are_ignored_not_fatal() {
    let c = parse_ok(
        "frobnicate: 1\nrate_limit:\n  per_peer_burst: 3\n  bogus: x\nallowed_peers:\n  - uid: 5\n    colour: red\n",
    );
    assert_eq!(c.rate_burst, 3);
    assert_eq!(c.allowed_peers, vec![(5, caps::READ)]);
}

#[test]
fn duplicate_allowed_nodes_blocks_keep_the_first() {
    let c = parse_ok("allowed_nodes:\n  - a\nlog_level: info\nallowed_nodes:\n  - b\n");
    assert_eq!(c.allowed_nodes, ["a"]);
}

#[test]
fn defaults_match_the_spec() {
    let c = parse_ok("");
    assert!(c.allowed_source_subnets.is_empty());
    assert_eq!(c.metrics_address.as_deref(), Some("127.0.0.1:9127"));
    assert_eq!(c.log_level, log::LevelFilter::Info);
    assert!(c.allowed_nodes.is_empty() && c.allowed_nodes_file.is_none());
    assert!(!c.strict_node_validation);
    assert_eq!(c.read_timeout, Duration::from_secs(5));
    assert_eq!(c.write_timeout, Duration::from_secs(10));
    assert_eq!(c.max_ssh_output_bytes, 1024 * 1024);
    assert!(!c.require_proxmox_hostkeys);
    assert!(c.allowed_peers.is_empty());
    assert!(c.allow_idmapped_root);
    assert_eq!(c.allowed_idmap_users, ["root"]);
    assert_eq!(c.rate_interval, Duration::from_millis(500));
    assert_eq!(c.rate_burst, 10);
    assert!(c.http.is_none() && c.control_plane.is_none());
    assert_eq!(
        c.socket,
        Path::new("/run/pulse-sensor-proxy/pulse-sensor-proxy.sock")
    );
    assert_eq!(c.ssh_dir, Path::new("/var/lib/pulse-sensor-proxy/ssh"));
    assert_eq!(
        c.audit_log,
        Path::new("/var/log/pulse/sensor-proxy/audit.log")
    );
    assert_eq!(c.user, "pulse-sensor-proxy");
    assert_eq!(c.work_dir, Path::new("/var/lib/pulse-sensor-proxy"));
    assert_eq!(c.pve_dir, Path::new("/etc/pve"));
    assert_eq!(c.ssh_port, 22);
    assert!(c.pvecm.is_none() && c.pvesh.is_none());
    assert!(!c.suppress_container_warning);
}

#[test]
fn metrics_address_default_disabled_and_custom() {
    assert_eq!(
        parse_ok("metrics_address: default\n")
            .metrics_address
            .as_deref(),
        Some("127.0.0.1:9127")
    );
    assert_eq!(
        parse_ok("metrics_address: Disabled\n").metrics_address,
        None
    );
    assert_eq!(
        parse_ok("metrics_address: \"[::1]:9999\"\n")
            .metrics_address
            .as_deref(),
        Some("[::1]:9999")
    );
}

#[test]
fn log_levels() {
    use log::LevelFilter as L;
    for (text, want) in [
        ("trace", L::Trace),
        ("debug", L::Debug),
        ("INFO", L::Info),
        ("warning", L::Warn),
        ("error", L::Error),
        ("fatal", L::Error),
        ("panic", L::Error),
        ("disabled", L::Off),
        ("none", L::Off),
        ("chatty", L::Info),
    ] {
        assert_eq!(
            parse_ok(&format!("log_level: {text}\n")).log_level,
            want,
            "{text}"
        );
    }
}

// ---------------------------------------------------------------------------
// Refusals, each with its line number

#[test]
fn unsupported_yaml_is_refused_with_the_line_number() {
    let pad = "# a\n# b\nrequire_proxmox_hostkeys: false\n"; // three lines before the bad one
    let cases = [
        (
            "defaults: &d\n  x: 1\n",
            "line 4: YAML anchors are not supported by pulse-sensor-proxy",
        ),
        (
            "allowed_nodes:\n  - &n pve1\n",
            "line 5: YAML anchors are not supported by pulse-sensor-proxy",
        ),
        (
            "log_level: *lvl\n",
            "line 4: YAML aliases are not supported by pulse-sensor-proxy",
        ),
        (
            "<<: *d\n",
            "line 4: YAML merge keys (<<) are not supported by pulse-sensor-proxy",
        ),
        (
            "read_timeout: !!str 5s\n",
            "line 4: YAML tags are not supported by pulse-sensor-proxy",
        ),
        (
            "---\nlog_level: debug\n",
            "line 4: multiple YAML documents are not supported by pulse-sensor-proxy",
        ),
        (
            "...\n",
            "line 4: multiple YAML documents are not supported by pulse-sensor-proxy",
        ),
        (
            "http_auth_token: |\n  abc\n",
            "line 4: YAML block scalars (| and >) are not supported by pulse-sensor-proxy",
        ),
        (
            "http_auth_token: >-\n  abc\n",
            "line 4: YAML block scalars (| and >) are not supported by pulse-sensor-proxy",
        ),
        (
            "rate_limit: {per_peer_burst: 1}\n",
            "line 4: YAML flow mappings ({...}) are not supported by pulse-sensor-proxy",
        ),
        (
            "? log_level\n: info\n",
            "line 4: YAML complex keys (?) are not supported by pulse-sensor-proxy",
        ),
        (
            "rate_limit:\n\tper_peer_burst: 1\n",
            "line 5: tabs are not allowed in indentation",
        ),
        (
            "rate_limit:\n    per_peer_burst: 1\n  per_peer_interval_ms: 2\n",
            "line 6: unexpected indentation",
        ),
        ("  metrics_address: x\n", "line 4: unexpected indentation"),
        (
            "http_auth_token: abc\n  def\n",
            "line 5: unexpected indentation (values continued on the next line are not supported)",
        ),
        (
            "http_auth_token: \"abc\n",
            "line 4: unterminated quoted string",
        ),
        (
            "allowed_nodes: [a,\n  b]\n",
            "line 4: a flow list must end on the same line",
        ),
        (
            "allowed_nodes: [a, [b]]\n",
            "line 4: nested flow collections are not supported",
        ),
        (
            "allowed_nodes: [a,, b]\n",
            "line 4: empty entry in a flow list",
        ),
        (
            "allowed_nodes: [a] b\n",
            "line 4: unexpected text after `]`",
        ),
        (
            "allowed_nodes:\n  - - a\n",
            "line 5: nested lists on one line",
        ),
        (
            "http_auth_token: \"a\" b\n",
            "line 4: unexpected text after a quoted string",
        ),
        (
            "http_auth_token: a: b\n",
            "line 4: a value containing `: ` must be quoted",
        ),
        ("just some words\n", "line 4: expected `key: value`"),
        (
            "- a\n",
            "line 4: a list item where `key: value` was expected",
        ),
        ("read_timeout: 5\n", "line 4: `read_timeout`: missing unit"),
        ("read_timeout: soon\n", "line 4: `read_timeout`"),
        (
            "strict_node_validation: maybe\n",
            "line 4: `strict_node_validation` must be true or false, not \"maybe\"",
        ),
        (
            "max_ssh_output_bytes: 1MB\n",
            "line 4: `max_ssh_output_bytes` must be an integer",
        ),
        (
            "allowed_nodes: pve1\n",
            "line 4: `allowed_nodes` must be a list",
        ),
        (
            "log_level: [a]\n",
            "line 4: `log_level` must be a single value",
        ),
        ("rate_limit: 5\n", "line 4: `rate_limit` must be a mapping"),
        (
            "allowed_peer_uids: [-1]\n",
            "line 4: `allowed_peer_uids` entries must be 0..=4294967295",
        ),
        (
            "allowed_peers:\n  - uid: 99999999999\n",
            "line 5: `uid` must be 0..=4294967295",
        ),
        ("ssh_port: 70000\n", "line 4: `ssh_port` must be 1..=65535"),
        (
            "require_proxmox_hostkeys: true\n",
            "line 4: duplicate key `require_proxmox_hostkeys`",
        ),
        ("http_auth_token: \"\\q\"\n", "line 4: unsupported escape"),
    ];
    for (bad, want) in cases {
        let text = format!("{pad}{bad}");
        let err = parse_err(&text);
        assert!(
            err.starts_with(&format!("config.yaml {want}")),
            "{bad:?}\n got: {err}\nwant: config.yaml {want}"
        );
    }
    let err = parse_err("%YAML 1.2\n---\nlog_level: info\n");
    assert_eq!(
        err,
        "config.yaml line 1: YAML directives are not supported by pulse-sensor-proxy"
    );
}

#[test]
fn anchor_error_has_the_exact_wording() {
    let text = "# 1\n# 2\n# 3\n# 4\n# 5\n# 6\n# 7\n# 8\n# 9\n# 10\n# 11\nbase: &b 1\n";
    assert_eq!(
        parse_err(text),
        "config.yaml line 12: YAML anchors are not supported by pulse-sensor-proxy"
    );
}

#[test]
fn a_top_level_list_is_not_a_config() {
    assert_eq!(
        parse_err("[a, b]\n"),
        "config.yaml line 1: expected a mapping of `key: value` at the top level"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let mut text = String::new();
    for i in 0..200 {
        text.push_str(&" ".repeat(i));
        text.push_str("k:\n");
    }
    assert!(parse_err(&text).contains("nesting too deep"));
    let mut text = String::new();
    for i in 0..200 {
        text.push_str(&" ".repeat(i * 2));
        text.push_str("- \n");
    }
    assert!(parse_err(&text).contains("nesting too deep"));
    let mut text = String::new();
    for i in 0..200 {
        text.push_str(&" ".repeat(i * 2));
        text.push_str("- k:\n");
    }
    assert!(parse_err(&text).contains("nesting too deep"));
}

// ---------------------------------------------------------------------------
// Subnets

#[test]
fn source_subnets_bare_addresses_become_host_networks() {
    let c = parse_ok(
        "allowed_source_subnets:\n  - 10.0.0.5\n  - fd00::1\n  - 10.0.0.0/8\n  - 10.0.0.5\n",
    );
    assert_eq!(cidrs(&c), ["10.0.0.5/32", "fd00::1/128", "10.0.0.0/8"]);
}

#[test]
fn invalid_source_subnet_is_a_startup_error() {
    for bad in ["10.0.0.0/33", "pve1", "10.0.0.1/", "::1/129", "1.2.3.4/+8"] {
        assert_eq!(
            parse_err(&format!("allowed_source_subnets: [\"{bad}\"]\n")),
            format!("invalid subnet configuration: invalid subnet or address: {bad}")
        );
    }
}

#[test]
fn cidr_contains() {
    let net = Cidr::parse("192.168.10.0/24").unwrap();
    assert!(net.contains("192.168.10.200".parse().unwrap()));
    assert!(net.contains("::ffff:192.168.10.1".parse().unwrap()));
    assert!(!net.contains("192.168.11.1".parse().unwrap()));
    assert!(!net.contains("fd00::1".parse().unwrap()));
    assert!(
        Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap())
    );
    let v6 = Cidr::parse("fd00:10::/64").unwrap();
    assert!(v6.contains("fd00:10::21".parse().unwrap()));
    assert!(!v6.contains("fd00:11::21".parse().unwrap()));
    assert!(
        Cidr::parse("::/0")
            .unwrap()
            .contains("::1".parse().unwrap())
    );
    assert_eq!(Cidr::parse("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
}

// ---------------------------------------------------------------------------
// Environment

#[test]
fn environment_overrides_every_setting() {
    let env = env_of(&[
        ("PULSE_SENSOR_PROXY_SOCKET", "/tmp/p.sock"),
        ("PULSE_SENSOR_PROXY_SSH_DIR", "/tmp/ssh"),
        ("PULSE_SENSOR_PROXY_AUDIT_LOG", "/tmp/audit.log"),
        ("PULSE_SENSOR_PROXY_USER", "nobody"),
        ("PULSE_SENSOR_PROXY_WORK_DIR", "/tmp/work"),
        ("PULSE_SENSOR_PROXY_PVE_DIR", "/tmp/pve"),
        ("PULSE_SENSOR_PROXY_SSH_PORT", "2022"),
        (
            "PULSE_SENSOR_PROXY_ALLOWED_SUBNETS",
            "10.9.0.0/16, 10.8.0.1",
        ),
        ("PULSE_SENSOR_PROXY_ALLOWED_NODES", " PVE1 ,pve3,, pve4"),
        ("PULSE_SENSOR_PROXY_ALLOWED_PEER_UIDS", "2000, 2001"),
        ("PULSE_SENSOR_PROXY_ALLOWED_PEER_GIDS", "3000"),
        ("PULSE_SENSOR_PROXY_ALLOW_IDMAPPED_ROOT", "off"),
        ("PULSE_SENSOR_PROXY_ALLOWED_IDMAP_USERS", "root, lxcadmin"),
        ("PULSE_SENSOR_PROXY_STRICT_NODE_VALIDATION", "1"),
        ("PULSE_SENSOR_PROXY_MAX_SSH_OUTPUT_BYTES", "4096"),
        ("PULSE_SENSOR_PROXY_REQUIRE_PROXMOX_HOSTKEYS", "YES"),
        ("PULSE_SENSOR_PROXY_METRICS_ADDR", "disabled"),
        ("PULSE_SENSOR_PROXY_LOG_LEVEL", "Debug"),
        ("PULSE_SENSOR_PROXY_READ_TIMEOUT", "2s"),
        ("PULSE_SENSOR_PROXY_WRITE_TIMEOUT", "3s"),
        ("PULSE_SENSOR_PROXY_HTTP_ENABLED", "true"),
        ("PULSE_SENSOR_PROXY_HTTP_ADDR", "127.0.0.1:9443"),
        ("PULSE_SENSOR_PROXY_HTTP_TLS_CERT", "/tmp/c.crt"),
        ("PULSE_SENSOR_PROXY_HTTP_TLS_KEY", "/tmp/c.key"),
        ("PULSE_SENSOR_PROXY_HTTP_AUTH_TOKEN", " secret "),
        ("PULSE_SENSOR_PROXY_SUPPRESS_CONTAINER_WARNING", "true"),
    ]);
    let file = "allowed_source_subnets: [10.0.0.0/8]\nallowed_nodes: [pve1, pve2]\n\
                allowed_peer_uids: [1000]\nallowed_peer_gids: [1000]\nlog_level: error\n\
                metrics_address: 127.0.0.1:1\nssh_port: 2200\n";
    let c = Config::from_text(file, "config.yaml", &env).unwrap();
    assert_eq!(c.socket, Path::new("/tmp/p.sock"));
    assert_eq!(c.ssh_dir, Path::new("/tmp/ssh"));
    assert_eq!(c.audit_log, Path::new("/tmp/audit.log"));
    assert_eq!(c.user, "nobody");
    assert_eq!(c.work_dir, Path::new("/tmp/work"));
    assert_eq!(c.pve_dir, Path::new("/tmp/pve"));
    assert_eq!(c.ssh_port, 2022);
    assert_eq!(cidrs(&c), ["10.0.0.0/8", "10.9.0.0/16", "10.8.0.1/32"]);
    assert_eq!(c.allowed_nodes, ["pve1", "pve2", "pve3", "pve4"]);
    assert_eq!(c.allowed_peer_uids, [1000, 2000, 2001]);
    assert_eq!(c.allowed_peer_gids, [1000, 3000]);
    assert!(!c.allow_idmapped_root);
    assert_eq!(c.allowed_idmap_users, ["root", "lxcadmin"]);
    assert!(c.strict_node_validation && c.require_proxmox_hostkeys);
    assert_eq!(c.max_ssh_output_bytes, 4096);
    assert_eq!(c.metrics_address, None);
    assert_eq!(c.log_level, log::LevelFilter::Debug);
    assert_eq!(c.read_timeout, Duration::from_secs(2));
    assert_eq!(c.write_timeout, Duration::from_secs(3));
    let http = c.http.unwrap();
    assert_eq!(http.listen_addr, "127.0.0.1:9443");
    assert_eq!(http.tls_cert, Path::new("/tmp/c.crt"));
    assert_eq!(http.tls_key, Path::new("/tmp/c.key"));
    assert_eq!(http.auth_token, "secret");
    assert!(c.suppress_container_warning);
}

#[test]
fn invalid_environment_values_are_ignored() {
    let env = env_of(&[
        ("PULSE_SENSOR_PROXY_ALLOW_IDMAPPED_ROOT", "maybe"),
        ("PULSE_SENSOR_PROXY_STRICT_NODE_VALIDATION", "sure"),
        ("PULSE_SENSOR_PROXY_ALLOWED_PEER_UIDS", "1,two,3"),
        ("PULSE_SENSOR_PROXY_READ_TIMEOUT", "fast"),
        ("PULSE_SENSOR_PROXY_MAX_SSH_OUTPUT_BYTES", "lots"),
        ("PULSE_SENSOR_PROXY_SSH_PORT", "0"),
        ("PULSE_SENSOR_PROXY_ALLOWED_IDMAP_USERS", " , "),
        ("PULSE_SENSOR_PROXY_SOCKET", ""),
    ]);
    let c = Config::from_text(
        "allow_idmapped_root: true\nread_timeout: 7s\nallowed_peer_uids: [9]\n",
        "config.yaml",
        &env,
    )
    .unwrap();
    assert!(c.allow_idmapped_root && !c.strict_node_validation);
    assert_eq!(c.allowed_peer_uids, [9]);
    assert_eq!(c.read_timeout, Duration::from_secs(7));
    assert_eq!(c.max_ssh_output_bytes, 1024 * 1024);
    assert_eq!(c.ssh_port, 22);
    assert_eq!(c.allowed_idmap_users, ["root"]);
    assert_eq!(
        c.socket,
        Path::new("/run/pulse-sensor-proxy/pulse-sensor-proxy.sock")
    );
}

#[test]
fn http_mode_needs_a_token_and_a_key_pair() {
    assert_eq!(
        parse_err("http_enabled: true\nhttp_tls_cert: c\nhttp_tls_key: k\nhttp_auth_token: \"\"\n"),
        "http_enabled=true requires http_auth_token to be configured"
    );
    assert_eq!(
        parse_err("http_enabled: true\nhttp_tls_cert: c\nhttp_auth_token: t\n"),
        "http_enabled=true requires both http_tls_cert and http_tls_key"
    );
    let c = parse_ok("http_enabled: true\nhttp_tls_cert: c\nhttp_tls_key: k\nhttp_auth_token: t\n");
    assert_eq!(c.http.unwrap().listen_addr, "0.0.0.0:8443");
    let env = env_of(&[("PULSE_SENSOR_PROXY_HTTP_ENABLED", "false")]);
    let c = Config::from_text("http_enabled: true\n", "config.yaml", &env).unwrap();
    assert!(c.http.is_none());
}

#[test]
fn control_plane_needs_a_url() {
    assert!(
        parse_ok("pulse_control_plane:\n  refresh_interval: 5\n")
            .control_plane
            .is_none()
    );
    let cp =
        parse_ok("pulse_control_plane:\n  url: https://p:7655\n  insecure_skip_verify: true\n")
            .control_plane
            .unwrap();
    assert_eq!(cp.token_file, Path::new(config::DEFAULT_CONTROL_TOKEN));
    assert!(cp.insecure_skip_verify);
}

#[test]
fn pvecm_and_pvesh_are_found_on_the_injected_path() {
    let dir = TempDir::new("path");
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let pvecm = bin.join("pvecm");
    std::fs::write(&pvecm, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&pvecm, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(bin.join("pvesh"), "not executable").unwrap();
    let path = format!("/nonexistent:{}", bin.display());
    let env = env_of(&[("PATH", &path)]);
    let c = Config::from_text("", "config.yaml", &env).unwrap();
    assert_eq!(c.pvecm.as_deref(), Some(pvecm.as_path()));
    assert_eq!(c.pvesh, None);
}

// ---------------------------------------------------------------------------
// Loading files

#[test]
fn a_missing_default_file_means_defaults_but_a_missing_named_file_is_an_error() {
    let etc = TempDir::new("etc");
    let c = Config::load_from(None, &no_env, &etc.0).unwrap();
    assert_eq!(c, parse_ok(""));
    let missing = etc.join("nope.yaml");
    let e = Config::load_from(Some(&missing), &no_env, &etc.0).unwrap_err();
    assert!(matches!(e, ConfigError::Read(..)), "{e}");
    let env = env_of(&[("PULSE_SENSOR_PROXY_CONFIG", missing.to_str().unwrap())]);
    assert!(Config::load_from(None, &env, &etc.0).is_err());
}

#[test]
fn config_path_flag_wins_over_the_environment() {
    let dir = TempDir::new("flag");
    let a = dir.write("a.yaml", "log_level: debug\n");
    let b = dir.write("b.yaml", "log_level: error\n");
    let env = env_of(&[("PULSE_SENSOR_PROXY_CONFIG", b.to_str().unwrap())]);
    assert_eq!(
        Config::load_from(Some(&a), &env, &dir.0).unwrap().log_level,
        log::LevelFilter::Debug
    );
    assert_eq!(
        Config::load_from(None, &env, &dir.0).unwrap().log_level,
        log::LevelFilter::Error
    );
    // Errors name the file.
    let bad = dir.write("custom.yaml", "x: &a 1\n");
    let e = Config::load_from(Some(&bad), &no_env, &dir.0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "custom.yaml line 1: YAML anchors are not supported by pulse-sensor-proxy"
    );
}

#[test]
fn allow_list_file_and_env_nodes_are_merged_and_deduplicated() {
    let dir = TempDir::new("nodes");
    let nodes = dir.write("nodes.yaml", &read_fixture("allowed_nodes.mapping.yaml"));
    let cfg = dir.write(
        "config.yaml",
        &format!(
            "allowed_nodes: [pve1, 192.168.10.21]\nallowed_nodes_file: {}\n",
            nodes.display()
        ),
    );
    let env = env_of(&[("PULSE_SENSOR_PROXY_ALLOWED_NODES", "Pve1,pve9")]);
    let c = Config::load_from(Some(&cfg), &env, &dir.0).unwrap();
    assert_eq!(
        c.allowed_nodes,
        [
            "pve1",
            "192.168.10.21",
            "pve9",
            "pve2.example.lan",
            "10.10.0.0/16"
        ]
    );
}

#[test]
fn the_default_allow_list_file_is_used_when_it_exists() {
    let etc = TempDir::new("default-nodes");
    etc.write("allowed_nodes.yaml", "- pve7\n");
    let c = Config::load_from(None, &no_env, &etc.0).unwrap();
    assert_eq!(c.allowed_nodes, ["pve7"]);
    assert_eq!(c.allowed_nodes_file, Some(etc.join("allowed_nodes.yaml")));
}

#[test]
fn a_broken_allow_list_file_is_only_a_warning_at_load() {
    let dir = TempDir::new("broken-nodes");
    let nodes = dir.write("nodes.yaml", "allowed_nodes: &x [a]\n");
    let cfg = dir.write(
        "config.yaml",
        &format!(
            "allowed_nodes: [pve1]\nallowed_nodes_file: {}\n",
            nodes.display()
        ),
    );
    let c = Config::load_from(Some(&cfg), &no_env, &dir.0).unwrap();
    assert_eq!(c.allowed_nodes, ["pve1"]);
}

#[test]
fn allow_list_file_in_all_three_forms() {
    let want = ["192.168.10.21", "pve2.example.lan", "10.10.0.0/16"];
    for f in [
        "allowed_nodes.mapping.yaml",
        "allowed_nodes.list.yaml",
        "allowed_nodes.plain.yaml",
    ] {
        assert_eq!(
            config::read_allowed_nodes_file(&fixture(f)).unwrap(),
            want,
            "{f}"
        );
    }
    assert_eq!(
        config::parse_allowed_nodes("pve1\n", "a.yaml").unwrap(),
        ["pve1"]
    );
    assert_eq!(
        config::parse_allowed_nodes("[a, b]\n", "a.yaml").unwrap(),
        ["a", "b"]
    );
    assert_eq!(
        config::parse_allowed_nodes("# nothing\n", "a.yaml").unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        config::parse_allowed_nodes("other: 1\n", "a.yaml").unwrap(),
        Vec::<String>::new()
    );
    assert!(config::parse_allowed_nodes("allowed_nodes: x\n", "a.yaml").is_err());
}

/// The stock loader fell back to reading `allowed_nodes: []` (what its own
/// CLI writes for an empty list) as a plain line, turning it into the node
/// "allowed_nodes: []" and so into allow-list mode refusing everything.
#[test]
fn an_empty_cli_written_allow_list_is_empty_not_a_bogus_node() {
    let text = config::render_allowed_nodes(&[]);
    assert!(text.ends_with("allowed_nodes: []\n"));
    assert!(
        config::parse_allowed_nodes(&text, "a.yaml")
            .unwrap()
            .is_empty()
    );
}

// ---------------------------------------------------------------------------
// config validate

fn run_validate(config: Option<&Path>, nodes: Option<&Path>) -> (ExitCode, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = config::validate_command(config, nodes, &no_env, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn validate_command_outputs_and_exit_codes() {
    let dir = TempDir::new("validate");
    let nodes = dir.write(
        "allowed_nodes.yaml",
        "allowed_nodes:\n  - pve1\n  - 'bad name'\n",
    );
    let good = dir.write(
        "config.yaml",
        &format!("log_level: info\nallowed_nodes_file: {}\n", nodes.display()),
    );
    assert_eq!(
        run_validate(Some(&good), None),
        (
            ExitCode::SUCCESS,
            "Configuration valid\n".into(),
            String::new()
        )
    );

    let bad = dir.write("bad.yaml", "log_level: info\nread_timeout: 5\n");
    let (code, out, err) = run_validate(Some(&bad), None);
    assert_eq!(code, ExitCode::FAILURE);
    assert_eq!(out, "");
    assert!(
        err.starts_with("Config validation failed: bad.yaml line 2: `read_timeout`: missing unit"),
        "{err}"
    );

    let broken_nodes = dir.write("broken.yaml", "allowed_nodes:\n  - *ref\n");
    let (code, out, err) = run_validate(Some(&good), Some(&broken_nodes));
    assert_eq!(code, ExitCode::FAILURE);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "Allowed nodes validation failed: broken.yaml line 2: YAML aliases are not supported by pulse-sensor-proxy\n"
    );

    // Without --allowed-nodes and allowed_nodes_file: the file beside the config.
    let sub = TempDir::new("validate-beside");
    let cfg = sub.write("config.yaml", "log_level: info\n");
    assert_eq!(run_validate(Some(&cfg), None).0, ExitCode::SUCCESS);
    sub.write("allowed_nodes.yaml", "allowed_nodes: [a\n");
    let (code, _, err) = run_validate(Some(&cfg), None);
    assert_eq!(code, ExitCode::FAILURE);
    assert!(
        err.starts_with("Allowed nodes validation failed: allowed_nodes.yaml line 1:"),
        "{err}"
    );

    // No --config: $PULSE_SENSOR_PROXY_CONFIG names the file.
    for (file, want) in [(&good, ExitCode::SUCCESS), (&bad, ExitCode::FAILURE)] {
        let env = env_of(&[("PULSE_SENSOR_PROXY_CONFIG", file.to_str().unwrap())]);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = config::validate_command(None, None, &env, &mut out, &mut err);
        assert_eq!(code, want, "{}", file.display());
    }

    let (code, _, err) = run_validate(Some(&dir.join("missing.yaml")), None);
    assert_eq!(code, ExitCode::FAILURE);
    assert!(
        err.starts_with("Config validation failed: failed to read"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// config set-allowed-nodes

fn run_set(file: &Path, merge: &[&str], replace: bool) -> (ExitCode, String, String) {
    let merge: Vec<String> = merge.iter().map(|s| s.to_string()).collect();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = config::set_allowed_nodes_command(Some(file), &merge, replace, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

const HEADER: &str =
    "# Managed by pulse-sensor-proxy config CLI\n# Do not edit manually while service is running\n";

#[test]
fn set_allowed_nodes_merges_replaces_and_keeps_the_lock_file() {
    let dir = TempDir::new("set");
    let file = dir.join("etc/allowed_nodes.yaml"); // the directory is created
    let lock = dir.join("etc/allowed_nodes.yaml.lock");

    let (code, out, err) = run_set(&file, &["192.168.0.1", "pve2.lan,10.0.0.0/8"], false);
    assert_eq!((code, err.as_str()), (ExitCode::SUCCESS, ""));
    assert_eq!(out, "Merged 3 nodes into allowed nodes list\n");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("{HEADER}allowed_nodes:\n    - 192.168.0.1\n    - pve2.lan\n    - 10.0.0.0/8\n")
    );
    assert_eq!(mode(&file), 0o644);
    assert_eq!(mode(&lock), 0o600);

    let (code, ..) = run_set(&file, &["PVE2.lan", "[fd00::1]", "::1"], false);
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!(
            "{HEADER}allowed_nodes:\n    - 192.168.0.1\n    - pve2.lan\n    - 10.0.0.0/8\n    - \"[fd00::1]\"\n    - \"::1\"\n"
        )
    );
    assert_eq!(
        config::read_allowed_nodes_file(&file).unwrap(),
        ["192.168.0.1", "pve2.lan", "10.0.0.0/8", "[fd00::1]", "::1"]
    );

    let (code, out, _) = run_set(&file, &["pve9"], true);
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(out, "Replaced allowed nodes with 1 entries\n");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("{HEADER}allowed_nodes:\n    - pve9\n")
    );

    let (code, ..) = run_set(&file, &[], true);
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("{HEADER}allowed_nodes: []\n")
    );

    // The lock file stays, still 0600; no temporary file is left behind.
    assert_eq!(mode(&lock), 0o600);
    let names: Vec<String> = std::fs::read_dir(dir.join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".tmp-")), "{names:?}");
}

#[test]
fn set_allowed_nodes_forces_an_open_lock_file_to_0600() {
    let dir = TempDir::new("set-lock");
    let file = dir.join("allowed_nodes.yaml");
    let lock = dir.write("allowed_nodes.yaml.lock", "");
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(run_set(&file, &["pve1"], false).0, ExitCode::SUCCESS);
    assert_eq!(mode(&lock), 0o600);
}

#[test]
fn set_allowed_nodes_refuses_bad_input_and_leaves_the_file_alone() {
    let dir = TempDir::new("set-bad");
    let file = dir.write("allowed_nodes.yaml", "- pve1\n");
    for bad in ["-oProxyCommand=x", "a b", "a;b", "$(id)"] {
        let (code, out, err) = run_set(&file, &["pve2", bad], false);
        assert_eq!(code, ExitCode::from(2), "{bad}");
        assert_eq!(out, "");
        assert!(err.contains("invalid node"), "{err}");
    }
    let (code, _, err) = run_set(&file, &[], false);
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("no nodes specified"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "- pve1\n");

    // An existing file we cannot read is not silently replaced.
    let broken = dir.write("broken.yaml", "allowed_nodes: [a\n");
    let (code, _, err) = run_set(&broken, &["pve2"], false);
    assert_eq!(code, ExitCode::FAILURE);
    assert!(
        err.starts_with("Failed to update allowed nodes: existing file not changed"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&broken).unwrap(),
        "allowed_nodes: [a\n"
    );
}

#[test]
fn set_allowed_nodes_keeps_the_entries_of_a_plain_lines_file() {
    let dir = TempDir::new("set-plain");
    let file = dir.write(
        "allowed_nodes.yaml",
        &read_fixture("allowed_nodes.plain.yaml"),
    );
    assert_eq!(run_set(&file, &["pve3"], false).0, ExitCode::SUCCESS);
    assert_eq!(
        config::read_allowed_nodes_file(&file).unwrap(),
        ["192.168.10.21", "pve2.example.lan", "10.10.0.0/16", "pve3"]
    );
}

#[test]
fn concurrent_set_allowed_nodes_lose_no_entry() {
    let dir = TempDir::new("set-race");
    let file = Arc::new(dir.join("allowed_nodes.yaml"));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let file = Arc::clone(&file);
            std::thread::spawn(move || {
                for j in 0..5 {
                    config::set_allowed_nodes(&file, &[format!("node{i}-{j}")], false).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(config::read_allowed_nodes_file(&file).unwrap().len(), 40);
}

// ---------------------------------------------------------------------------
// Node names

#[test]
fn valid_name_accepts_names_and_addresses() {
    for ok in [
        "pve1",
        "PVE-1.example.lan",
        "node_2",
        "1.2.3.4",
        "999.1.1.1",
        "192.168.10.21",
        "fd00::1",
        "[::1]",
        "[fd00:10::21]",
        "::ffff:1.2.3.4",
        "a",
        &"a".repeat(64),
    ] {
        assert!(nodes::valid_name(ok), "{ok:?}");
    }
}

#[test]
fn valid_name_refuses_hostile_names() {
    for bad in [
        "",
        "-oProxyCommand=x",
        "-p",
        "a b",
        "a;b",
        "a|b",
        "$(id)",
        "`id`",
        "a\nb",
        "pve1\n",
        ".hidden",
        "_x",
        "[]",
        "[pve1]",
        "user@host",
        "host:22",
        "a/b",
        "ä",
        &"a".repeat(65),
    ] {
        assert!(!nodes::valid_name(bad), "{bad:?}");
    }
}

// ---------------------------------------------------------------------------
// Validator

fn no_cluster() -> nodes::ClusterFn {
    Box::new(|| Err("no cluster here".into()))
}

fn no_local() -> nodes::LocalFn {
    Box::new(Vec::new)
}

/// A config that is not on a Proxmox host.
fn off_proxmox(text: &str) -> Config {
    let env = env_of(&[("PULSE_SENSOR_PROXY_PVE_DIR", "/nonexistent/pve")]);
    Config::from_text(text, "config.yaml", &env).unwrap()
}

fn rejected(v: &Validator, node: &str) -> &'static str {
    match v.check(node) {
        Ok(()) => panic!("{node} was allowed"),
        Err(r) => r.reason,
    }
}

#[test]
fn validator_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Validator>();
}

#[test]
fn allow_list_mode_matches_names_ips_and_cidrs_after_normalisation() {
    let cfg =
        off_proxmox("allowed_nodes: [PVE1.lan, 192.168.10.21, \"fd00:0:0::21\", 10.20.0.0/16]\n");
    let lookups = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&lookups);
    let mut v = Validator::new(&cfg, no_cluster(), no_local());
    v.set_resolver(Box::new(move |host| {
        seen.fetch_add(1, Ordering::SeqCst);
        match host {
            "inside.lan" => Ok(vec!["10.20.3.4".parse().unwrap()]),
            "outside.lan" => Ok(vec!["10.21.3.4".parse().unwrap()]),
            _ => Err("no such host".into()),
        }
    }));
    for ok in [
        "pve1.lan",
        "PVE1.LAN",
        "192.168.10.21",
        "::ffff:192.168.10.21",
        "fd00::21",
        "[fd00::21]",
        "10.20.255.1",
        "inside.lan",
    ] {
        assert_eq!(v.check(ok), Ok(()), "{ok}");
    }
    assert_eq!(
        lookups.load(Ordering::SeqCst),
        1,
        "only inside.lan is resolved"
    );
    assert_eq!(rejected(&v, "192.168.10.22"), reason::NOT_ALLOWLISTED);
    assert_eq!(
        lookups.load(Ordering::SeqCst),
        1,
        "an IP that missed is not resolved"
    );
    assert_eq!(rejected(&v, "outside.lan"), reason::NOT_ALLOWLISTED);
    let r = v.check("ghost.lan").unwrap_err();
    assert_eq!(r.reason, reason::RESOLUTION_FAILED);
    assert_eq!(r.message, "resolve node \"ghost.lan\": no such host");
    let r = v.check("192.168.10.99").unwrap_err();
    assert_eq!(
        r.message,
        "node \"192.168.10.99\" rejected by validator (node_not_allowlisted)"
    );
}

#[test]
fn allow_list_without_cidrs_never_asks_dns() {
    let cfg = off_proxmox("allowed_nodes: [pve1, 10.0.0.1]\n");
    let mut v = Validator::new(&cfg, no_cluster(), no_local());
    v.set_resolver(Box::new(|_| panic!("DNS asked")));
    assert_eq!(rejected(&v, "pve2"), reason::NOT_ALLOWLISTED);
    assert_eq!(v.check("10.0.0.1"), Ok(()));
}

#[test]
fn the_control_plane_replaces_the_allow_list() {
    let cfg = off_proxmox("allowed_nodes: [pve1]\n");
    let mut v = Validator::new(&cfg, no_cluster(), no_local());
    v.set_resolver(Box::new(|_| Ok(vec!["192.0.2.1".parse().unwrap()])));
    assert_eq!(v.check("pve1"), Ok(()));
    v.replace_allowlist(vec!["pve2".into(), " 10.1.0.0/24 ".into()]);
    assert_eq!(rejected(&v, "pve1"), reason::NOT_ALLOWLISTED);
    assert_eq!(v.check("pve2"), Ok(()));
    assert_eq!(v.check("10.1.0.9"), Ok(()));
}

#[test]
fn cluster_mode_allows_members_and_caches_them() {
    let pve = TempDir::new("pve");
    let env = env_of(&[("PULSE_SENSOR_PROXY_PVE_DIR", pve.0.to_str().unwrap())]);
    let cfg = Config::from_text("", "config.yaml", &env).unwrap();
    assert!(nodes::is_proxmox_host(&cfg));
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let v = Validator::new(
        &cfg,
        Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(vec![
                "192.168.10.21".into(),
                "192.168.10.22".into(),
                "PVE3".into(),
            ])
        }),
        no_local(),
    );
    assert_eq!(v.check("192.168.10.21"), Ok(()));
    assert_eq!(v.check("[192.168.10.22]"), Ok(()));
    assert_eq!(v.check("pve3"), Ok(()));
    assert_eq!(rejected(&v, "192.168.10.99"), reason::NOT_CLUSTER_MEMBER);
    assert_eq!(rejected(&v, "pve1"), reason::NOT_CLUSTER_MEMBER);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "membership is cached");

    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let mut v = Validator::new(
        &cfg,
        Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(vec!["10.0.0.1".into()])
        }),
        no_local(),
    );
    v.set_cache_ttl(Duration::ZERO, Duration::ZERO);
    for _ in 0..3 {
        assert_eq!(v.check("10.0.0.1"), Ok(()));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[test]
fn a_failed_cluster_query_allows_only_this_host() {
    let pve = TempDir::new("pve-fail");
    let env = env_of(&[("PULSE_SENSOR_PROXY_PVE_DIR", pve.0.to_str().unwrap())]);
    let cfg = Config::from_text("", "config.yaml", &env).unwrap();
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let f = Arc::clone(&failures);
    let mut v = Validator::new(
        &cfg,
        Box::new(|| Err("pvecm cluster IPC access denied".into())),
        Box::new(|| vec!["pve1".into(), "192.168.10.21".into()]),
    );
    v.set_failure_hook(Box::new(move |r| f.lock().unwrap().push(r)));
    assert_eq!(v.check("PVE1"), Ok(()));
    assert_eq!(v.check("192.168.10.21"), Ok(()));
    assert_eq!(rejected(&v, "192.168.10.22"), reason::NOT_LOCALHOST);
    assert_eq!(
        *failures.lock().unwrap(),
        [
            reason::CLUSTER_QUERY_FAILED,
            reason::CLUSTER_QUERY_FAILED,
            reason::CLUSTER_QUERY_FAILED,
            reason::NOT_LOCALHOST
        ]
    );

    let v = Validator::new(&cfg, Box::new(|| Err("denied".into())), no_local());
    assert_eq!(rejected(&v, "pve1"), reason::CLUSTER_QUERY_FAILED);
}

#[test]
fn strict_mode_refuses_everything_without_sources() {
    let cfg = off_proxmox("strict_node_validation: true\n");
    assert!(!nodes::is_proxmox_host(&cfg));
    let v = Validator::new(&cfg, Box::new(|| panic!("cluster asked")), no_local());
    assert_eq!(rejected(&v, "pve1"), reason::NO_VALIDATION_SOURCES);
    assert_eq!(rejected(&v, "127.0.0.1"), reason::NO_VALIDATION_SOURCES);
}

#[test]
fn permissive_mode_allows_everything() {
    let cfg = off_proxmox("");
    let v = Validator::new(&cfg, Box::new(|| panic!("cluster asked")), no_local());
    assert_eq!(v.check("anything.example"), Ok(()));
    assert_eq!(v.check("10.9.9.9"), Ok(()));
}

// ---------------------------------------------------------------------------
// pvecm / pvesh

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn pvecm_status_of_a_cluster_lists_members_without_the_qdevice() {
    assert_eq!(
        nodes::parse_pvecm_status(&read_fixture("pvecm-cluster.txt"), true),
        PvecmResult::Members(ips(&["192.168.10.21", "192.168.10.22", "192.168.10.23"]))
    );
}

#[test]
fn pvecm_status_failures_are_classified() {
    assert_eq!(
        nodes::parse_pvecm_status(&read_fixture("pvecm-standalone.txt"), false),
        PvecmResult::Standalone
    );
    match nodes::parse_pvecm_status(&read_fixture("pvecm-ipc-denied.txt"), false) {
        PvecmResult::IpcDenied(m) => {
            assert!(m.starts_with("pvecm cluster IPC access denied"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    // IPC wording wins over standalone wording.
    assert!(matches!(
        nodes::parse_pvecm_status("Unable to load access control list: not found", false),
        PvecmResult::IpcDenied(_)
    ));
    assert_eq!(
        nodes::parse_pvecm_status("Quorum information\nNodes: 3\n", true),
        PvecmResult::Failed("no cluster nodes found with IP addresses".into())
    );
    assert!(matches!(
        nodes::parse_pvecm_status("segfault", false),
        PvecmResult::Failed(m) if m == "failed to get cluster status: segfault"
    ));
}

#[test]
fn pvesh_cluster_status_lists_the_nodes() {
    let n = nodes::parse_pvesh_cluster_status(&read_fixture("pvesh-cluster-status.json")).unwrap();
    assert_eq!(n.len(), 3);
    assert_eq!(
        n[0],
        nodes::ClusterNode {
            name: "pve1".into(),
            ip: "192.168.10.21".into(),
            local: true,
            online: true
        }
    );
    assert!(!n[1].local && n[1].online);
    assert!(!n[2].online);
    let b = nodes::parse_pvesh_cluster_status(
        r#"[{"type":"node","name":"x","local":true,"online":false}]"#,
    )
    .unwrap();
    assert_eq!(
        (b[0].ip.as_str(), b[0].local, b[0].online),
        ("", true, false)
    );
    assert!(nodes::parse_pvesh_cluster_status("not json").is_err());
    assert!(nodes::parse_pvesh_cluster_status("{}").is_err());
    assert!(nodes::parse_pvesh_cluster_status(r#"[{"type":"cluster"}]"#).is_err());
}

/// A fake program printing a fixture to stdout (or stderr) and exiting `code`.
fn fake(dir: &TempDir, name: &str, fixture_name: &str, stderr: bool, code: i32) -> PathBuf {
    let p = dir.join(name);
    let redirect = if stderr { " >&2" } else { "" };
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\ncat '{}'{redirect}\nexit {code}\n",
            fixture(fixture_name).display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn host_root() -> Root {
    Root::new(fixture("host")).unwrap()
}

#[test]
fn local_addresses_skip_loopback_and_link_local() {
    assert_eq!(
        nodes::local_addresses(&host_root()),
        ["pve1", "192.168.10.21", "fd00:10::21"]
    );
}

#[test]
fn discover_cluster_uses_pvecm_then_pvesh() {
    let dir = TempDir::new("discover");
    let root = host_root();
    let missing = dir.join("missing");

    let cluster = fake(&dir, "pvecm-cluster", "pvecm-cluster.txt", false, 0);
    assert_eq!(
        nodes::discover_cluster(&root, &cluster, &missing).unwrap(),
        ["192.168.10.21", "192.168.10.22", "192.168.10.23"]
    );

    let standalone = fake(&dir, "pvecm-standalone", "pvecm-standalone.txt", true, 2);
    assert_eq!(
        nodes::discover_cluster(&root, &standalone, &missing).unwrap(),
        ["pve1", "192.168.10.21", "fd00:10::21"]
    );

    let denied = fake(&dir, "pvecm-denied", "pvecm-ipc-denied.txt", true, 255);
    let e = nodes::discover_cluster(&root, &denied, &missing).unwrap_err();
    assert!(e.starts_with("pvecm cluster IPC access denied"), "{e}");

    let pvesh = fake(&dir, "pvesh", "pvesh-cluster-status.json", false, 0);
    let want = [
        "192.168.10.21",
        "pve1",
        "192.168.10.22",
        "pve2",
        "192.168.10.23",
        "pve3",
    ];
    assert_eq!(
        nodes::discover_cluster(&root, &denied, &pvesh).unwrap(),
        want
    );
    assert_eq!(
        nodes::discover_cluster(&root, &missing, &pvesh).unwrap(),
        want
    );

    let pvesh_fails = fake(&dir, "pvesh-fails", "pvecm-ipc-denied.txt", true, 1);
    let e = nodes::discover_cluster(&root, &denied, &pvesh_fails).unwrap_err();
    assert!(e.starts_with("pvecm cluster IPC access denied"), "{e}");
}
