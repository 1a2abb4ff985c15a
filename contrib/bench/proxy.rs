//! pulse-sensor-proxy's numbers: idle RSS and threads of the daemon,
//! `get_temperature` latency to a loopback node (a real sshd whose forced
//! command is the proxy's own `sensors`), median and worst of 100, and a
//! flood: 200 connections and 20 silent ones from one peer while another
//! peer asks for its status.
//!
//! Needs root and Debian's openssh-server (sshd). Run:
//! `cargo bench --bench proxy` (the binary under test is the bench build:
//! the release profile with symbols).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../vendor-free-tests/common/sshd.rs"]
mod sshd;

const BIN: &str = env!("CARGO_BIN_EXE_pulse-sensor-proxy");
/// 100 calls back to back from one peer are above the default 2/s; the
/// flood part still meets a burst of 10.
const RATE: &str = "rate_limit:\n  per_peer_interval_ms: 20\n  per_peer_burst: 10\n";

fn status(pid: u32) -> (u64, u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let f = |k: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (f("VmRSS:"), f("VmSize:"), f("Threads:"))
}

fn ask(socket: &Path, line: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(line).unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    reply
}

fn envs(dir: &Path, socket: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("PULSE_SENSOR_PROXY_CONFIG", dir.join("config.yaml")),
        ("PULSE_SENSOR_PROXY_SOCKET", socket.into()),
        ("PULSE_SENSOR_PROXY_SSH_DIR", dir.join("ssh")),
        ("PULSE_SENSOR_PROXY_AUDIT_LOG", dir.join("audit.log")),
        ("PULSE_SENSOR_PROXY_USER", "root".into()),
        ("PULSE_SENSOR_PROXY_PVE_DIR", dir.join("pve")),
        ("PULSE_SENSOR_PROXY_METRICS_ADDR", "disabled".into()),
        ("PULSE_SENSOR_PROXY_WORK_DIR", dir.into()),
    ]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-proxy");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sys =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor-free-tests/fixtures/proxy-ssh/node/sys");
    let Some(node) = sshd::Sshd::start(&dir.join("node"), Some(&sys)) else {
        return;
    };
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "allowed_nodes: [127.0.0.1]\nallowed_source_subnets: [127.0.0.1/32]\nssh_port: {}\nallowed_peers:\n  - uid: 4243\n    capabilities: [read]\n{RATE}",
            node.port
        ),
    )
    .unwrap();
    let socket = dir.join("proxy.sock");
    let mut daemon: Child = Command::new(BIN)
        .envs(envs(&dir, &socket))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while UnixStream::connect(&socket).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = daemon.id();
    let out = Command::new(BIN)
        .args(["keys", "install", "--node", "127.0.0.1", "--identity"])
        .arg(&node.admin_key)
        .envs(envs(&dir, &socket))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The bench build keeps its symbols; `cargo build --release` and
    // `ls -l target/release/pulse-sensor-proxy` give the stripped size.
    let size = std::fs::metadata(BIN).unwrap().len();
    println!("binary, bench build (with symbols): {size} bytes");
    std::thread::sleep(Duration::from_millis(500));
    let (rss, vsz, threads) = status(pid);
    println!("idle: RSS {rss} KiB, virtual {vsz} KiB, {threads} threads");

    let req = b"{\"method\":\"get_temperature\",\"params\":{\"node\":\"127.0.0.1\"}}\n";
    assert!(ask(&socket, req).contains("\"success\":true"));
    let mut took = Vec::new();
    let mut peak = (0, 0);
    for _ in 0..100 {
        let t = Instant::now();
        let r = ask(&socket, req);
        took.push(t.elapsed());
        assert!(r.contains("\"success\":true"), "{r}");
        let (rss, _, th) = status(pid);
        peak = (peak.0.max(rss), peak.1.max(th));
    }
    took.sort();
    println!(
        "get_temperature to a loopback sshd node, 100 calls: min {:.1} ms, median {:.1} ms, worst {:.1} ms; peak RSS {} KiB, {} threads",
        took[0].as_secs_f64() * 1e3,
        took[50].as_secs_f64() * 1e3,
        took[99].as_secs_f64() * 1e3,
        peak.0,
        peak.1
    );

    // Flood: root opens 20 silent and 200 asking connections at once; a
    // read-only peer (uid 4243) asks for its status meanwhile.
    std::thread::sleep(Duration::from_secs(1)); // a full token bucket again
    let silent: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let t = Instant::now();
    let flood: Vec<UnixStream> = (0..200)
        .map(|_| {
            let mut s = UnixStream::connect(&socket).unwrap();
            let _ = s.write_all(b"{\"method\":\"get_status\"}\n");
            s
        })
        .collect();
    let opened = t.elapsed();
    let mut peak = (0, 0);
    let t = Instant::now();
    let other = Command::new("setpriv")
        .args([
            "--reuid",
            "4243",
            "--regid",
            "4243",
            "--clear-groups",
            BIN,
            "call",
            "get_status",
            "--socket",
        ])
        .arg(&socket)
        .output()
        .unwrap();
    let other_took = t.elapsed();
    for _ in 0..20 {
        let (rss, _, th) = status(pid);
        peak = (peak.0.max(rss), peak.1.max(th));
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut kinds = std::collections::BTreeMap::<String, u32>::new();
    for s in flood {
        let mut line = String::new();
        let _ = BufReader::new(s).read_line(&mut line);
        let k = if line.contains("\"success\":true") {
            "answered".to_string()
        } else {
            line.split("\"error\":\"")
                .nth(1)
                .and_then(|e| e.split('"').next())
                .unwrap_or("?")
                .to_string()
        };
        *kinds.entry(k).or_default() += 1;
    }
    drop(silent);
    println!(
        "flood: 200 connections opened in {:.1} ms: {kinds:?}; the other peer answered in {:.1} ms (setpriv + exec included, success: {}); peak RSS {} KiB, {} threads",
        opened.as_secs_f64() * 1e3,
        other_took.as_secs_f64() * 1e3,
        String::from_utf8_lossy(&other.stdout).contains("\"success\":true"),
        peak.0,
        peak.1
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
