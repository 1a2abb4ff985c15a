//! `--enable-proxmox`: the cluster peers' temperatures (`clusterSensors[]`,
//! spec/pulse-collectors.md §3.5) asked from pulse-sensor-proxy's socket
//! (spec/pulse-sensor-proxy.md §2), end to end: the built agent (`--once`)
//! on a fixture root with a fake `pvesh`, a fake proxy on a Unix socket in a
//! temp directory that checks every request line the way the real one reads
//! it, and the loopback Pulse stand-in that validates the report. Then the
//! graceful fallbacks: no socket, a stale socket, a proxy that refuses.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proc::{Dir, args};
use common::standin::StandIn;
use pulse_agent::collect::cluster::{self, ProxyError};
use serde_json::{Value, json};

/// The proxy's request limit (`maxRequestBytes`).
const MAX_REQUEST: usize = 16 * 1024;

const CLUSTER_STATUS: &str = r#"[
 {"id":"cluster","type":"cluster","name":"lab","nodes":6,"quorate":1,"version":6},
 {"id":"node/pve1","type":"node","name":"pve1","ip":"10.0.0.1","local":1,"online":1,"nodeid":1},
 {"id":"node/PVE2","type":"node","name":"PVE2","ip":"10.0.0.2","local":0,"online":1,"nodeid":2},
 {"id":"node/pve3","type":"node","name":"pve3","ip":"10.0.0.3","local":0,"online":1,"nodeid":3},
 {"id":"node/pve4","type":"node","name":"pve4","ip":"10.0.0.4","local":0,"online":0,"nodeid":4},
 {"id":"node/pve5","type":"node","name":"pve5","ip":"10.0.0.5","local":0,"online":1,"nodeid":5},
 {"id":"node/pve6","type":"node","name":"pve6","ip":"10.0.0.6","local":0,"online":1,"nodeid":6}
]"#;

const CORETEMP: &str = r#"{"coretemp-isa-0000":{"Adapter":"ISA adapter","Package id 0":{"temp1_input":51.0,"temp1_max":80.0},"Core 0":{"temp2_input":48.0},"Core 1":{"temp3_input":50.0}},"nct6798-isa-0290":{"Adapter":"ISA adapter","CPU Fan":{"fan2_input":1200.0}}}"#;

/// A fixture root (debian12-vm) with `pvesh` answering `CLUSTER_STATUS`.
fn proxmox_root(dir: &Dir) -> PathBuf {
    let root = dir.0.join("root");
    common::copy_tree(&common::case_root("debian12-vm"), &root);
    let capture = root.join(".capture");
    std::fs::create_dir_all(capture.join("bin")).unwrap();
    std::fs::create_dir_all(capture.join("cmd")).unwrap();
    std::os::unix::fs::symlink(common::fake_program(), capture.join("bin/pvesh")).unwrap();
    std::fs::write(
        capture.join("cmd/pvesh get _cluster_status --output-format json"),
        CLUSTER_STATUS,
    )
    .unwrap();
    std::fs::write(capture.join("cmd/calls.log"), "").unwrap();
    root
}

fn pvesh_calls(root: &Path) -> usize {
    std::fs::read_to_string(root.join(".capture/cmd/calls.log"))
        .unwrap()
        .lines()
        .count()
}

/// A stand-in for pulse-sensor-proxy: reads one request line per connection
/// as the real one does (up to the first newline, at most 16 KiB), checks
/// it, answers `answer(node)` plus a newline, and closes.
struct FakeProxy {
    /// The `params.node` of every request, in arrival order.
    nodes: Arc<Mutex<Vec<String>>>,
    /// Every way a request departed from the protocol.
    problems: Arc<Mutex<Vec<String>>>,
}

impl FakeProxy {
    fn start(path: &Path, answer: impl Fn(&str) -> Value + Send + Sync + 'static) -> FakeProxy {
        let listener = UnixListener::bind(path).unwrap();
        let nodes = Arc::new(Mutex::new(Vec::new()));
        let problems = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(answer);
        let (n, p) = (nodes.clone(), problems.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { return };
                let (n, p, answer) = (n.clone(), p.clone(), answer.clone());
                std::thread::spawn(move || {
                    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !got.contains(&b'\n') && got.len() <= MAX_REQUEST {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(k) => got.extend_from_slice(&buf[..k]),
                        }
                    }
                    let problem = |m: String| p.lock().unwrap().push(m);
                    let Some(end) = got.iter().position(|&b| b == b'\n') else {
                        problem(format!("no newline in {} bytes", got.len()));
                        return;
                    };
                    if end > MAX_REQUEST {
                        problem(format!("request line of {end} bytes"));
                    }
                    if end + 1 != got.len() {
                        problem("bytes after the request line".into());
                    }
                    // The client half-closes after its line: EOF now.
                    if !matches!(c.read(&mut buf), Ok(0)) {
                        problem("no EOF after the request line".into());
                    }
                    let req: Value = match serde_json::from_slice(&got[..end]) {
                        Ok(v) => v,
                        Err(e) => return problem(format!("not JSON: {e}")),
                    };
                    let keys: Vec<&String> =
                        req.as_object().map_or(Vec::new(), |o| o.keys().collect());
                    if keys
                        .iter()
                        .any(|k| !["correlation_id", "method", "params"].contains(&k.as_str()))
                    {
                        problem(format!("unexpected keys {keys:?}"));
                    }
                    if req["method"] != "get_temperature" {
                        problem(format!("method {}", req["method"]));
                    }
                    let Some(node) = req["params"]["node"].as_str() else {
                        return problem(format!("params {}", req["params"]));
                    };
                    n.lock().unwrap().push(node.to_string());
                    let mut reply = answer(node).to_string();
                    reply.push('\n');
                    let _ = c.write_all(reply.as_bytes());
                });
            }
        });
        FakeProxy { nodes, problems }
    }

    fn nodes(&self) -> Vec<String> {
        let mut v = self.nodes.lock().unwrap().clone();
        v.sort();
        v
    }

    fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap().clone()
    }
}

fn ok(node: &str, temperature: &str) -> Value {
    json!({"success": true, "data": {"node": node, "temperature": temperature}})
}

fn refused(error: &str) -> Value {
    json!({"success": false, "error": error})
}

/// `--once --enable-proxmox` on `root`, delivered to the stand-in; the
/// report it took.
fn report_once(s: &StandIn, dir: &Dir, root: &Path, extra: &[&str]) -> Value {
    let mut a = args(s, dir, extra);
    a.retain(|x| !x.starts_with("--root="));
    a.push(format!("--root={}", root.display()));
    a.push("--enable-proxmox".into());
    a.push("--once".into());
    let o = Command::new(env!("CARGO_BIN_EXE_pulse-agent"))
        .args(&a)
        .env_clear()
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    let reports = s.reports();
    assert_eq!(reports.len(), 1, "{log}");
    assert_eq!(reports[0].status, 200, "{log}");
    assert!(s.schema_notes().is_empty(), "{:?}", s.schema_notes());
    reports[0].doc.clone().expect("a JSON report")
}

fn module(doc: &Value) -> Value {
    doc["agent"]["modules"]
        .as_array()
        .expect("agent.modules")
        .iter()
        .find(|m| m["name"] == cluster::MODULE)
        .cloned()
        .expect("the cluster-sensors module")
}

#[test]
fn peers_temperatures_come_through_the_proxy_as_cluster_sensors() {
    let s = StandIn::start();
    let dir = Dir::new("cs-peers");
    let root = proxmox_root(&dir);
    let socket = dir.0.join("proxy.sock");
    let wrapped = format!(
        r#"{{"sensors": {}, "smart": [{{"device":"/dev/sda","serial":"S1","wwn":"","model":"M","type":"sata","temperature":31,"lastUpdated":"2026-08-22T14:00:00Z","standbySkipped":false}}]}}"#,
        r#"{"k10temp-pci-00c3":{"Adapter":"PCI adapter","Tctl":{"temp1_input":61.5},"Tccd1":{"temp3_input":55.25}}}"#
    );
    let proxy = FakeProxy::start(&socket, move |node| match node {
        "10.0.0.2" => ok(node, CORETEMP),
        "10.0.0.3" => ok(node, &wrapped),
        // Answers, but has no temperature: left out.
        "10.0.0.5" => ok(node, "{}"),
        _ => refused(&format!(
            "node \"{node}\" rejected by validator (node_not_cluster_member)"
        )),
    });
    let doc = report_once(
        &s,
        &dir,
        &root,
        &[&format!("--sensor-proxy-socket={}", socket.display())],
    );
    assert!(proxy.problems().is_empty(), "{:?}", proxy.problems());
    // Online remote peers only: not pve1 (this node), not pve4 (offline).
    assert_eq!(
        proxy.nodes(),
        ["10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"]
    );
    let nodes = doc["clusterSensors"].as_array().expect("clusterSensors");
    let names: Vec<&str> = nodes
        .iter()
        .map(|n| n["nodeName"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["pve2", "pve3"],
        "lowercased; no peer without temperatures"
    );
    for n in nodes {
        assert!(common::wire::is_rfc3339(n["collectedAt"].as_str().unwrap()));
        assert!(n["collectedAt"].as_str().unwrap().ends_with('Z'), "UTC");
    }
    assert_eq!(
        nodes[0]["sensors"],
        json!({
            "temperatureCelsius": {"cpu_package": 51.0, "cpu_core_0": 48.0, "cpu_core_1": 50.0},
            "fanRpm": {"nct6798_cpu_fan": 1200.0},
        })
    );
    assert_eq!(
        nodes[1]["sensors"]["temperatureCelsius"]["cpu_package"],
        json!(61.5),
        "the installer wrapper's sensors member"
    );
    let m = module(&doc);
    assert_eq!(m["enabled"], true);
    assert_eq!(m["state"], "running", "{m}");
    let why = m["lastError"].as_str().expect("the refused peer is named");
    assert!(
        why.contains("pve6") && why.contains("rejected by validator"),
        "{why}"
    );
}

#[test]
fn without_the_proxy_socket_no_cluster_sensors_and_the_module_says_why() {
    let s = StandIn::start();
    let dir = Dir::new("cs-absent");
    let root = proxmox_root(&dir);
    // No --sensor-proxy-socket: the proxy's usual paths, under the root.
    let doc = report_once(&s, &dir, &root, &[]);
    assert!(doc.get("clusterSensors").is_none());
    let m = module(&doc);
    assert_eq!(m["state"], "retrying", "{m}");
    let why = m["lastError"].as_str().unwrap();
    let expected = root.join("run/pulse-sensor-proxy/pulse-sensor-proxy.sock");
    assert!(
        why.contains(&format!(
            "pulse-sensor-proxy socket {} not found",
            expected.display()
        )),
        "{why}"
    );
    assert_eq!(
        pvesh_calls(&root),
        0,
        "no proxy: the peers are not even listed"
    );
    // The rest of the report is there.
    assert!(doc["sensors"].is_object() && doc["host"]["hostname"].is_string());
}

#[test]
fn a_stale_socket_with_no_proxy_behind_it_is_reported_not_fatal() {
    let s = StandIn::start();
    let dir = Dir::new("cs-stale");
    let root = proxmox_root(&dir);
    let socket = dir.0.join("stale.sock");
    drop(UnixListener::bind(&socket).unwrap());
    let doc = report_once(
        &s,
        &dir,
        &root,
        &[&format!("--sensor-proxy-socket={}", socket.display())],
    );
    assert!(doc.get("clusterSensors").is_none());
    let m = module(&doc);
    assert_eq!(m["state"], "retrying");
    let why = m["lastError"].as_str().unwrap();
    assert!(
        why.contains("cannot connect to pulse-sensor-proxy"),
        "{why}"
    );
}

#[test]
fn a_proxy_that_refuses_this_agent_stops_the_run_and_shows_in_the_status() {
    for (answer, class) in [
        ("unauthorized", "unauthorized"),
        ("rate limit exceeded", "rate limit"),
    ] {
        let s = StandIn::start();
        let dir = Dir::new("cs-refused");
        let root = proxmox_root(&dir);
        let socket = dir.0.join("proxy.sock");
        let proxy = FakeProxy::start(&socket, move |_| refused(answer));
        let doc = report_once(
            &s,
            &dir,
            &root,
            &[&format!("--sensor-proxy-socket={}", socket.display())],
        );
        assert!(doc.get("clusterSensors").is_none());
        let m = module(&doc);
        assert_eq!(m["state"], "retrying", "{m}");
        let why = m["lastError"].as_str().unwrap();
        assert!(why.contains(class), "{why}");
        // Not asked again for every peer: each lane stops at the first.
        assert!(
            proxy.nodes().len() <= cluster::PARALLEL,
            "{:?}",
            proxy.nodes()
        );
        assert!(proxy.problems().is_empty(), "{:?}", proxy.problems());
    }
}

#[test]
fn after_a_failure_the_proxy_is_not_asked_again_until_the_pause_has_passed() {
    let dir = Dir::new("cs-backoff");
    let root = proxmox_root(&dir);
    let socket = dir.0.join("proxy.sock");
    let mut c = cluster::Collector::new(
        pulse_agent::root::Root::new(&root).unwrap(),
        Some(socket.clone()),
    );
    let first = c.collect();
    assert!(!first.ok());
    let why = first.failed.clone().unwrap();
    assert!(why.contains("not found"), "{why}");
    // The proxy comes up: the pause (30 s) still holds, with the same
    // message (so the status and the log do not change every cycle).
    let proxy = FakeProxy::start(&socket, |node| ok(node, CORETEMP));
    let second = c.collect();
    assert_eq!(second.failed.as_deref(), Some(why.as_str()));
    assert!(proxy.nodes().is_empty(), "asked during the pause");
    assert_eq!(pvesh_calls(&root), 0);
}

#[test]
fn get_temperature_keeps_its_deadline_and_its_size_cap() {
    let dir = Dir::new("cs-client");
    // A proxy that accepts and never answers.
    let silent = dir.0.join("silent.sock");
    let l = UnixListener::bind(&silent).unwrap();
    let held = std::thread::spawn(move || {
        let c = l.accept();
        std::thread::sleep(Duration::from_secs(3));
        drop(c);
    });
    let started = Instant::now();
    let r = cluster::get_temperature(
        &silent,
        "10.0.0.2",
        Instant::now() + Duration::from_millis(300),
    );
    assert!(matches!(r, Err(ProxyError::Timeout(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    held.join().unwrap();

    // A proxy whose answer never ends within the cap.
    let big = dir.0.join("big.sock");
    let l = UnixListener::bind(&big).unwrap();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = l.accept() {
            let chunk = vec![b' '; 64 * 1024];
            while c.write_all(&chunk).is_ok() {}
        }
    });
    let r = cluster::get_temperature(&big, "10.0.0.2", Instant::now() + Duration::from_secs(10));
    assert!(matches!(r, Err(ProxyError::BadReply(_))), "{r:?}");

    let missing = dir.0.join("none.sock");
    let r = cluster::get_temperature(
        &missing,
        "10.0.0.2",
        Instant::now() + Duration::from_secs(1),
    );
    assert!(matches!(r, Err(ProxyError::Missing(_))), "{r:?}");
}

#[path = "common/sshd.rs"]
mod sshd;

/// The agent and the real pulse-sensor-proxy together: the proxy's key
/// installed on a real sshd playing peer `pve-b` (127.0.0.1), the agent
/// asking the daemon's socket; `clusterSensors[]` carries the node's own
/// readings, and the stand-in accepts the report. Needs root (sshd).
#[test]
fn the_real_proxy_answers_the_agent() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|u| u.split_whitespace().next() == Some("0"))
        })
        .unwrap();
    if !uid {
        eprintln!("SKIPPED: needs root for sshd");
        return;
    }
    let proxy_bin = env!("CARGO_BIN_EXE_pulse-sensor-proxy");
    let dir = Dir::new("cs-real");
    let node_sys = common::fixtures_dir().join("proxy-ssh/node/sys");
    let Some(node) = sshd::Sshd::start(&dir.0.join("node"), Some(&node_sys)) else {
        return;
    };
    // The agent's host: pvesh names this node and the peer.
    let root = proxmox_root(&dir);
    std::fs::write(
        root.join(".capture/cmd/pvesh get _cluster_status --output-format json"),
        r#"[{"type":"node","name":"pve-a","ip":"10.0.0.1","local":1,"online":1},
            {"type":"node","name":"PVE-B","ip":"127.0.0.1","local":0,"online":1}]"#,
    )
    .unwrap();
    // The proxy, as root (PULSE_SENSOR_PROXY_USER=root), everything in `dir`.
    let p = dir.0.join("proxy");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("config.yaml"),
        format!(
            "allowed_nodes: [127.0.0.1]\nallowed_source_subnets: [127.0.0.1/32]\nssh_port: {}\n",
            node.port
        ),
    )
    .unwrap();
    let socket = p.join("proxy.sock");
    let env = [
        ("PULSE_SENSOR_PROXY_CONFIG", p.join("config.yaml")),
        ("PULSE_SENSOR_PROXY_SOCKET", socket.clone()),
        ("PULSE_SENSOR_PROXY_SSH_DIR", p.join("ssh")),
        ("PULSE_SENSOR_PROXY_AUDIT_LOG", p.join("audit.log")),
        ("PULSE_SENSOR_PROXY_USER", "root".into()),
        ("PULSE_SENSOR_PROXY_PVE_DIR", p.join("pve")),
        ("PULSE_SENSOR_PROXY_METRICS_ADDR", "disabled".into()),
        ("PULSE_SENSOR_PROXY_WORK_DIR", p.clone()),
    ];
    let mut daemon = Command::new(proxy_bin)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < until, "the proxy did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = Command::new(proxy_bin)
        .args(["keys", "install", "--node", "127.0.0.1", "--identity"])
        .arg(&node.admin_key)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let s = StandIn::start();
    let doc = report_once(
        &s,
        &dir,
        &root,
        &[&format!("--sensor-proxy-socket={}", socket.display())],
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
    let nodes = doc["clusterSensors"].as_array().expect("clusterSensors");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["nodeName"], "pve-b");
    let chips = pulse_agent::collect::hwmon::read_sysfs(
        &pulse_agent::root::Root::new(node_sys.parent().unwrap()).unwrap(),
    )
    .unwrap();
    let want = pulse_agent::collect::hwmon::map(&chips);
    let got = nodes[0]["sensors"]["temperatureCelsius"]
        .as_object()
        .unwrap();
    assert!(!want.temperatures.is_empty());
    assert_eq!(
        got.len(),
        want.temperatures.len(),
        "{got:?} vs {:?}",
        want.temperatures
    );
    for (k, v) in &want.temperatures {
        assert_eq!(got[k].as_f64(), Some(*v), "{k}");
    }
    assert_eq!(module(&doc)["state"], "running", "{}", module(&doc));
}
