//! End-to-end tests of the `pulse-sensor-proxy` daemon: the built binary,
//! started on a socket in a temp directory, with clients that are real
//! other processes: other UIDs and GIDs (`setpriv`) and the root of a user
//! namespace mapped like an unprivileged Proxmox container (`unshare`).
//! Needs root (CI runs as root); each test says so and stops otherwise.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "common/sshd.rs"]
mod sshd;

const BIN: &str = env!("CARGO_BIN_EXE_pulse-sensor-proxy");

/// Where a test's proxy keeps everything, for the daemon and the commands.
fn proxy_env(d: &Path, socket: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("PULSE_SENSOR_PROXY_CONFIG", d.join("config.yaml")),
        ("PULSE_SENSOR_PROXY_SOCKET", socket.to_path_buf()),
        ("PULSE_SENSOR_PROXY_SSH_DIR", d.join("ssh")),
        ("PULSE_SENSOR_PROXY_AUDIT_LOG", d.join("audit.log")),
        ("PULSE_SENSOR_PROXY_USER", "root".into()),
        ("PULSE_SENSOR_PROXY_PVE_DIR", d.join("pve")),
        ("PULSE_SENSOR_PROXY_METRICS_ADDR", "disabled".into()),
        ("PULSE_SENSOR_PROXY_WORK_DIR", d.to_path_buf()),
    ]
}

/// A temp directory removed on drop.
struct Temp(PathBuf);

impl Temp {
    fn new(name: &str) -> Temp {
        let p = std::env::temp_dir().join(format!("psp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        // Other UIDs must reach the socket inside.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        Temp(p)
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_root() -> bool {
    // SAFETY-free: the uid of this process from /proc is not host data.
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(|u| u == "0"))
        .unwrap_or(false)
}

/// A daemon under test.
struct Proxy {
    child: Child,
    dir: Temp,
    socket: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory of fake programs that must never run: each records its argv.
fn tripwires(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for p in ["ssh", "ssh-keyscan"] {
        let f = bin.join(p);
        std::fs::write(
            &f,
            format!(
                "#!/bin/sh\necho \"$0 $*\" >> {}/tripped\nexit 255\n",
                dir.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

impl Proxy {
    /// Starts the daemon with `config` as its config.yaml (and a root tree
    /// holding `/etc/subuid` and `/etc/subgid` for the container test).
    fn start(name: &str, config: &str) -> Proxy {
        Proxy::start_with(name, config, true, &[])
    }

    /// `tripwires`: ssh and ssh-keyscan first in PATH are fakes that record
    /// being run (and fail); off, the real ones run.
    /// `env`: set after the test's own variables (they win).
    fn start_with(name: &str, config: &str, trip: bool, env: &[(&str, &str)]) -> Proxy {
        let dir = Temp::new(name);
        let d = &dir.0;
        std::fs::write(d.join("config.yaml"), config).unwrap();
        let root = d.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
        std::fs::write(root.join("proc/sys/kernel/hostname"), "proxyhost\n").unwrap();
        for f in ["subuid", "subgid"] {
            std::fs::write(root.join("etc").join(f), "root:100000:65536\n").unwrap();
        }
        let mut path = std::env::var("PATH").unwrap_or_default();
        if trip {
            path = format!("{}:{path}", tripwires(d).display());
        }
        let socket = d.join("run/pulse-sensor-proxy.sock");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(d.join("config.yaml"))
            .arg("--root")
            .arg(&root)
            .current_dir(d)
            .env_clear()
            .env("PATH", &path)
            .envs(proxy_env(d, &socket))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(d.join("stderr")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let mut p = Proxy { child, dir, socket };
        let until = Instant::now() + Duration::from_secs(20);
        // Up when it answers a whole request: a bare connect would be an
        // empty request, audited (and penalised) among the test's own.
        let ready = |socket: &Path| -> bool {
            let Ok(mut s) = UnixStream::connect(socket) else {
                return false;
            };
            let mut reply = String::new();
            s.write_all(b"{\"method\":\"get_status\"}\n").is_ok()
                && s.read_to_string(&mut reply).is_ok()
                && reply.contains("\"success\":true")
        };
        while !ready(&p.socket) {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("proxy exited {st}: {}", p.stderr());
            }
            assert!(
                Instant::now() < until,
                "proxy did not listen: {}",
                p.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("stderr")).unwrap_or_default()
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.0.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Sends raw bytes, returns the reply and how long the connection
    /// stayed open after it.
    fn raw(&self, bytes: &[u8]) -> (Value, Duration) {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(bytes).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while s.read(&mut byte).unwrap() == 1 {
            line.push(byte[0]);
            if byte[0] == b'\n' {
                break;
            }
        }
        let replied = Instant::now();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "one reply per connection");
        (serde_json::from_slice(&line).unwrap(), replied.elapsed())
    }

    /// `pulse-sensor-proxy call` run through `wrap` (setpriv, unshare).
    fn call_as(&self, wrap: &[&str], method: &str, params: &[&str]) -> Output {
        let mut argv: Vec<String> = wrap.iter().map(|s| s.to_string()).collect();
        argv.extend([BIN.into(), "call".into(), method.into(), "--socket".into()]);
        argv.push(self.socket.display().to_string());
        for p in params {
            argv.extend(["--param".into(), p.to_string()]);
        }
        Command::new(&argv[0]).args(&argv[1..]).output().unwrap()
    }
}

fn reply(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)))
}

const AS_4242: &[&str] = &[
    "setpriv",
    "--reuid",
    "4242",
    "--regid",
    "4242",
    "--clear-groups",
];
const AS_4243: &[&str] = &[
    "setpriv",
    "--reuid",
    "4243",
    "--regid",
    "4243",
    "--clear-groups",
];
/// Root of a user namespace whose 0 is the host's 100000: what an
/// unprivileged Proxmox container's root looks like from the host.
const AS_CONTAINER_ROOT: &[&str] = &[
    "setpriv",
    "--reuid",
    "100000",
    "--regid",
    "100000",
    "--clear-groups",
    "unshare",
    "--user",
    "--map-root-user",
];

const CONFIG: &str = "\
allowed_peers:
  - uid: 4243
    capabilities: [read]
allowed_peer_gids: [3000]
allowed_nodes:
  - 10.9.9.9
";

#[test]
fn peers_are_told_apart_by_the_kernel() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to run clients under other UIDs");
        return;
    }
    let p = Proxy::start("peers", CONFIG);
    // Root: everything.
    let o = p.call_as(&[], "get_status", &[]);
    let r = reply(&o);
    assert_eq!(r["success"], true, "{r}");
    assert!(
        r["data"]["public_key"]
            .as_str()
            .unwrap()
            .starts_with("ssh-ed25519 ")
    );
    // An unknown UID: refused, and audited with its UID.
    let r = reply(&p.call_as(AS_4242, "get_status", &[]));
    assert_eq!(r["error"], "unauthorized", "{r}");
    // A read-only peer: status yes, admin methods no.
    let r = reply(&p.call_as(AS_4243, "get_status", &[]));
    assert_eq!(r["success"], true, "{r}");
    let r = reply(&p.call_as(AS_4243, "register_nodes", &[]));
    assert_eq!(r["error"], "method requires admin capability", "{r}");
    // An unlisted UID whose group is listed: every capability (an admin
    // method runs: here it finds no cluster, which is not a refusal).
    let r = reply(&p.call_as(
        &[
            "setpriv",
            "--reuid",
            "4300",
            "--regid",
            "3000",
            "--clear-groups",
        ],
        "register_nodes",
        &[],
    ));
    assert_eq!(r["error"], "not running on Proxmox host", "{r}");
    // A container's root (host uid 100000 via /etc/subuid): read only.
    let r = reply(&p.call_as(AS_CONTAINER_ROOT, "get_status", &[]));
    assert_eq!(r["success"], true, "{r}");
    let r = reply(&p.call_as(AS_CONTAINER_ROOT, "request_cleanup", &[]));
    assert_eq!(r["error"], "method requires admin capability", "{r}");
    let audit = p.audit();
    let denied: Vec<&Value> = audit
        .iter()
        .filter(|e| e["event_type"] == "connection.denied")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["peer_uid"], 4242);
    assert_eq!(denied[0]["reason"], "unauthorized: uid=4242 gid=4242");
    assert!(
        audit
            .iter()
            .any(|e| e["event_type"] == "connection.accepted" && e["peer_uid"] == 100000),
        "the container root's connection is audited with its host UID"
    );
}

/// Every bad request of spec §2 gets its error, its audit reason and the
/// two-second penalty; none of them reaches ssh.
#[test]
fn bad_requests_are_refused_audited_and_penalised() {
    if !is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let p = Proxy::start("bad", CONFIG);
    let big = format!(
        "{{\"method\":\"get_status\",\"params\":{{\"x\":\"{}\"}}}}\n",
        "a".repeat(17 * 1024)
    );
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (big.into_bytes(), "payload too large", "payload_too_large"),
        (b"\n".to_vec(), "empty request", "empty_request"),
        (b"".to_vec(), "empty request", "empty_request"),
        (
            b"{\"method\":\n".to_vec(),
            "invalid request format",
            "invalid_json",
        ),
        (
            b"{\"method\":\"get_temp\"}\n".to_vec(),
            "unknown method",
            "unknown_method",
        ),
    ];
    for (bytes, error, reason) in &cases {
        let (r, held) = p.raw(bytes);
        assert_eq!(r["error"], *error, "{r}");
        assert_eq!(r["success"], false);
        assert!(
            held >= Duration::from_millis(1800),
            "{reason}: penalty {held:?}"
        );
        let a = p.audit();
        let last = a
            .iter()
            .rev()
            .find(|e| e["event_type"] == "command.validation_failed")
            .unwrap();
        assert_eq!(last["reason"], *reason);
    }
    // Admin method without the capability.
    let o = p.call_as(AS_4243, "ensure_cluster_keys", &[]);
    assert_eq!(reply(&o)["error"], "method requires admin capability");
    assert!(
        p.audit()
            .iter()
            .any(|e| e["reason"] == "capability_denied" && e["peer_uid"] == 4243)
    );
    // Hostile node names never reach ssh (nor the validator).
    for node in [
        "-oProxyCommand=touch /tmp/pwned",
        "a b",
        "a;b",
        "$(id)",
        "x\ny",
        "",
        "-p22",
    ] {
        let line = serde_json::json!({"method": "get_temperature", "params": {"node": node}});
        let (r, held) = p.raw(format!("{line}\n").as_bytes());
        let e = r["error"].as_str().unwrap();
        if node.is_empty() {
            assert_eq!(e, "missing 'node' parameter");
            continue;
        }
        assert_eq!(e, "invalid node name", "{node:?}: {r}");
        assert!(
            held >= Duration::from_millis(1800),
            "{node:?}: penalty {held:?}"
        );
        let a = p.audit();
        let last = a
            .iter()
            .rev()
            .find(|e| e["event_type"] == "command.finish")
            .unwrap();
        assert_eq!(last["error"], "invalid node name");
        assert_eq!(last["decision"], "failed");
    }
    let (r, _) = p.raw(b"{\"method\":\"get_temperature\",\"params\":{\"node\":7}}\n");
    assert_eq!(r["error"], "'node' parameter must be a string");
    // A well-formed name outside the allow-list: the validator's error.
    let (r, _) = p.raw(b"{\"method\":\"get_temperature\",\"params\":{\"node\":\"10.1.1.1\"}}\n");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("node \"10.1.1.1\" rejected by validator ("),
        "{r}"
    );
    assert!(
        !p.dir.0.join("tripped").exists(),
        "ssh ran: {}",
        std::fs::read_to_string(p.dir.0.join("tripped")).unwrap_or_default()
    );
    // Everything above is in an intact audit chain.
    let log = p.dir.0.join("audit.log");
    let o = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(String::from_utf8_lossy(&o.stdout).contains(": intact, "));
}

/// VmRSS (KiB) and thread count of a process: our own child, not host data.
fn rss_threads(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("Threads:"))
}

/// 200 connections from one peer, plus slow-loris connections that send
/// nothing: another peer is still answered within a second, and the
/// daemon's threads and memory stay bounded.
#[test]
fn a_flood_from_one_peer_does_not_starve_another() {
    if !is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let p = Proxy::start("flood", CONFIG);
    let pid = p.child.id();
    let (rss0, threads0) = rss_threads(pid);
    // Slow-loris: connected, silent.
    let silent: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&p.socket).unwrap())
        .collect();
    // The flood: 200 requests at once from root.
    let mut flood = Vec::new();
    for _ in 0..200 {
        let mut s = UnixStream::connect(&p.socket).unwrap();
        let _ = s.write_all(b"{\"method\":\"get_status\"}\n");
        flood.push(s);
    }
    let (mut max_rss, mut max_threads) = (rss0, threads0);
    let started = Instant::now();
    let o = p.call_as(AS_4243, "get_status", &[]);
    let took = started.elapsed();
    assert_eq!(reply(&o)["success"], true);
    assert!(
        took < Duration::from_secs(1),
        "the other peer waited {took:?}"
    );
    for _ in 0..10 {
        let (r, t) = rss_threads(pid);
        max_rss = max_rss.max(r);
        max_threads = max_threads.max(t);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut answers = std::collections::BTreeMap::<String, u32>::new();
    for mut s in flood {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let v: Value = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
        let k = v["error"]
            .as_str()
            .unwrap_or(if v["success"] == true { "ok" } else { "?" });
        *answers.entry(k.to_string()).or_default() += 1;
    }
    drop(silent);
    eprintln!(
        "flood: answers {answers:?}; other peer {took:?}; RSS {rss0} -> max {max_rss} KiB; threads {threads0} -> max {max_threads}"
    );
    assert!(
        answers.get("rate limit exceeded").copied().unwrap_or(0) >= 150,
        "{answers:?}"
    );
    assert_eq!(
        answers.get("?"),
        None,
        "every flood connection got a reply: {answers:?}"
    );
    assert!(
        max_threads <= threads0 + 8,
        "threads {threads0} -> {max_threads}"
    );
    assert!(max_rss < rss0 + 8 * 1024, "RSS {rss0} -> {max_rss} KiB");
    // The silent ones were cut at the read timeout and audited.
    let a = p.audit();
    assert!(
        a.iter()
            .any(|e| e["event_type"] == "limiter.rejection" && e["limiter"] == "rate")
    );
}

/// `pulse-sensor-proxy COMMAND...` with the test proxy's environment.
fn command(p: &Proxy, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(proxy_env(&p.dir.0, &p.socket))
        .output()
        .unwrap()
}

fn temperature(p: &Proxy) -> Value {
    reply(&p.call_as(&[], "get_temperature", &["node=127.0.0.1"]))
}

fn proxy_lines(keys: &Path) -> Vec<String> {
    std::fs::read_to_string(keys)
        .unwrap()
        .lines()
        .filter(|l| l.ends_with(" pulse-sensor-proxy"))
        .map(String::from)
        .collect()
}

/// The whole life of a key against a real sshd playing a cluster node:
/// the daemon refuses to guess before the key is installed, `keys install`
/// puts it there, `get_temperature` returns the node's forced-command
/// output, `keys rotate` and `--rollback` switch keys under the running
/// daemon, `request_cleanup` + `keys cleanup` take it off again, and a
/// changed host key is refused.
#[test]
fn temperatures_from_a_real_sshd_node_through_the_daemon() {
    if !is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor-free-tests/fixtures");
    let node_sys = fixtures.join("proxy-ssh/node/sys");
    let tmp = Temp::new("sshd-node");
    let Some(mut node) = sshd::Sshd::start(&tmp.0.join("node"), Some(&node_sys)) else {
        return;
    };
    let config = format!(
        "allowed_nodes:\n  - 127.0.0.1\nallowed_source_subnets:\n  - 127.0.0.1/32\nssh_port: {}\n\
         # Many calls in a row from one peer: above the default 2/s.\n\
         rate_limit:\n  per_peer_interval_ms: 10\n  per_peer_burst: 100\n",
        node.port
    );
    let p = Proxy::start_with("sshd", &config, false, &[]);
    let expected = pulse_agent::proxy::sensors::render(
        &pulse_agent::root::Root::new(node_sys.parent().unwrap()).unwrap(),
    )
    .unwrap();
    let admin = node.admin_key.display().to_string();

    // Not installed yet: a failure, not a guess.
    let r = temperature(&p);
    assert_eq!(r["success"], false, "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("failed to get temperatures: "),
        "{r}"
    );

    let o = command(
        &p,
        &[
            "keys",
            "install",
            "--identity",
            &admin,
            "--node",
            "127.0.0.1",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first = proxy_lines(&node.authorized_keys());
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        first[0].starts_with("from=\"127.0.0.1/32\",command=\""),
        "{first:?}"
    );

    let r = temperature(&p);
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["data"]["node"], "127.0.0.1");
    assert_eq!(
        r["data"]["temperature"].as_str().unwrap().trim(),
        expected.trim()
    );

    // Latency of get_temperature to a loopback node, through the socket.
    let mut took: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(temperature(&p)["success"], true);
            t.elapsed()
        })
        .collect();
    took.sort();
    eprintln!(
        "get_temperature (debug build, `call` client): median {:?}, worst {:?} of {}",
        took[took.len() / 2],
        took[took.len() - 1],
        took.len()
    );

    // Rotation: a new key, the old one kept in ssh.d/prev and gone from
    // the node; the running daemon uses the new one.
    let ssh = p.dir.0.join("ssh");
    let old_pub = std::fs::read_to_string(ssh.join("id_ed25519.pub")).unwrap();
    let o = command(
        &p,
        &[
            "keys",
            "rotate",
            "--identity",
            &admin,
            "--node",
            "127.0.0.1",
        ],
    );
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let new_pub = std::fs::read_to_string(ssh.join("id_ed25519.pub")).unwrap();
    assert_ne!(new_pub, old_pub);
    assert_eq!(
        std::fs::read_to_string(p.dir.0.join("ssh.d/prev/id_ed25519.pub")).unwrap(),
        old_pub
    );
    let lines = proxy_lines(&node.authorized_keys());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(new_pub.split_whitespace().nth(1).unwrap()));
    assert_eq!(temperature(&p)["success"], true);
    // A dry run changes nothing.
    let o = command(&p, &["keys", "rotate", "--dry-run", "--node", "127.0.0.1"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("[dry-run] "));
    assert_eq!(
        std::fs::read_to_string(ssh.join("id_ed25519.pub")).unwrap(),
        new_pub
    );

    // Rollback: the previous key is back, on the node too.
    let o = command(
        &p,
        &[
            "keys",
            "rotate",
            "--rollback",
            "--identity",
            &admin,
            "--node",
            "127.0.0.1",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(ssh.join("id_ed25519.pub")).unwrap(),
        old_pub
    );
    let lines = proxy_lines(&node.authorized_keys());
    assert_eq!(lines.len(), 1);
    assert!(lines[0].contains(old_pub.split_whitespace().nth(1).unwrap()));
    assert_eq!(temperature(&p)["success"], true);

    // The key directories belong to the service user, who could plant
    // symlinks there: root's `keys rotate` works in them as that user, so
    // a `ssh.d` pointing at a directory of root's gets nothing written.
    let chown = |uid: &str| {
        let o = Command::new("chown")
            .args(["-R", &format!("{uid}:{uid}")])
            .arg(&p.dir.0)
            .output()
            .unwrap();
        assert!(o.status.success());
    };
    chown("65534");
    let victim = tmp.0.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::rename(p.dir.0.join("ssh.d"), p.dir.0.join("ssh.d.real")).unwrap();
    std::os::unix::fs::symlink(&victim, p.dir.0.join("ssh.d")).unwrap();
    let o = command(
        &p,
        &[
            "keys",
            "rotate",
            "--identity",
            &admin,
            "--node",
            "127.0.0.1",
        ],
    );
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        std::fs::read_dir(&victim).unwrap().count(),
        0,
        "root wrote through the symlink"
    );
    assert_eq!(
        std::fs::read_to_string(ssh.join("id_ed25519.pub")).unwrap(),
        old_pub
    );
    std::fs::remove_file(p.dir.0.join("ssh.d")).unwrap();
    std::fs::rename(p.dir.0.join("ssh.d.real"), p.dir.0.join("ssh.d")).unwrap();
    chown("0");
    assert_eq!(temperature(&p)["success"], true);

    // A changed host key: refused, nothing fetched.
    node.new_host_key();
    let r = temperature(&p);
    assert_eq!(r["success"], false);
    assert!(r["error"].as_str().unwrap().contains("changed"), "{r}");
    let known = std::fs::read_to_string(ssh.join("known_hosts")).unwrap();
    assert!(!known.contains(node.host_key().split_whitespace().nth(1).unwrap()));

    // Cleanup: asked over the socket, done by `keys cleanup` (which trusts
    // the node's new key only through the operator: re-learn it first).
    std::fs::write(ssh.join("known_hosts"), "").unwrap();
    let r = reply(&p.call_as(&[], "request_cleanup", &["host=127.0.0.1", "reason=test"]));
    assert_eq!(r["data"]["queued"], true, "{r}");
    let request: Value = serde_json::from_str(
        &std::fs::read_to_string(p.dir.0.join("cleanup-request.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(request["host"], "127.0.0.1");
    let o = command(&p, &["keys", "cleanup", "--identity", &admin]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(proxy_lines(&node.authorized_keys()).is_empty());
    assert!(!p.dir.0.join("cleanup-request.json").exists());
}

/// Started as root (outside its unit), the daemon becomes its user before
/// it listens: the socket and key directories are made for that user, and
/// the process keeps no root UID or capability.
#[test]
fn started_as_root_it_drops_to_its_user() {
    if !is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let p = Proxy::start_with(
        "drop",
        CONFIG,
        true,
        &[("PULSE_SENSOR_PROXY_USER", "nobody")],
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id())).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(field("Uid:"), ["65534"; 4], "{status}");
    assert_eq!(field("Gid:"), ["65534"; 4], "{status}");
    assert_eq!(field("CapEff:"), ["0000000000000000"]);
    use std::os::unix::fs::MetadataExt;
    let key = std::fs::metadata(p.dir.0.join("ssh/id_ed25519")).unwrap();
    assert_eq!((key.uid(), key.mode() & 0o777), (65534, 0o600));
    // Root still gets in (always allowed), and is answered by the dropped
    // process.
    assert_eq!(reply(&p.call_as(&[], "get_status", &[]))["success"], true);
    assert!(
        p.stderr().contains("dropped privileges to nobody"),
        "{}",
        p.stderr()
    );
}

/// A user that does not exist is a refusal to start as root, not a daemon
/// left running as root.
#[test]
fn started_as_root_without_its_user_it_refuses() {
    if !is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let dir = Temp::new("nouser");
    std::fs::write(dir.0.join("config.yaml"), "").unwrap();
    let o = Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(proxy_env(&dir.0, &dir.0.join("s.sock")))
        .env("PULSE_SENSOR_PROXY_USER", "no-such-user-psp")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("\"no-such-user-psp\" does not exist"), "{err}");
    assert!(!dir.0.join("s.sock").exists());
}

/// `curl` over HTTPS, trusting `ca`; (status, body).
fn curl(ca: &Path, url: &str, token: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--max-time",
        "30",
        "--cacert",
    ])
    .arg(ca)
    .arg(url);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let o = c.output().expect("curl is needed (.ci/run installs it)");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The HTTPS mode of a running daemon (spec §12): the bearer token, the
/// node checks and the SSH fetch are the socket's; the token never reaches
/// the log.
#[test]
fn https_mode_serves_health_and_temps_behind_the_token() {
    if !is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let certs = Temp::new("https-certs");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (crt, pem_key) = (certs.0.join("server.crt"), certs.0.join("server.key"));
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&pem_key, key.serialize_pem()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    const TOKEN: &str = "s3cret-token-in-test";
    let config = format!(
        "allowed_nodes: [10.9.9.9]\nallowed_source_subnets: [127.0.0.1/32]\nhttp_enabled: true\n\
         http_listen_addr: 127.0.0.1:{port}\nhttp_tls_cert: {}\nhttp_tls_key: {}\nhttp_auth_token: {TOKEN}\n",
        crt.display(),
        pem_key.display()
    );
    let p = Proxy::start("https", &config);
    let base = format!("https://127.0.0.1:{port}");
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "no HTTPS listener: {}", p.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, body) = curl(&crt, &format!("{base}/health"), Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "ok"
    );
    let (code, body) = curl(&crt, &format!("{base}/health"), None);
    assert_eq!(
        (code, body.trim()),
        (401, r#"{"error":"missing authorization header"}"#)
    );
    let (code, _) = curl(&crt, &format!("{base}/health"), Some("wrong"));
    assert_eq!(code, 401);
    let (code, body) = curl(&crt, &format!("{base}/temps?node=10.1.1.1"), Some(TOKEN));
    assert_eq!(
        (code, body.trim()),
        (403, r#"{"error":"node not allowed"}"#)
    );
    let (code, _) = curl(
        &crt,
        &format!("{base}/temps?node=-oProxyCommand%3Dx"),
        Some(TOKEN),
    );
    assert_eq!(code, 400);
    // Allowed, then ssh (the tripwire, which fails): a 500 with the cause.
    let (code, body) = curl(&crt, &format!("{base}/temps?node=10.9.9.9"), Some(TOKEN));
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("failed to get temperatures"), "{body}");
    let tripped = std::fs::read_to_string(p.dir.0.join("tripped")).unwrap_or_default();
    assert!(
        tripped.contains("10.9.9.9") && !tripped.contains("ProxyCommand"),
        "{tripped}"
    );
    let audit = p.audit();
    assert!(
        audit
            .iter()
            .any(|e| e["event_type"] == "http_request" && e["reason"] == "invalid_token"),
        "{audit:?}"
    );
    let logs = p.stderr() + &std::fs::read_to_string(p.dir.0.join("audit.log")).unwrap();
    assert!(!logs.contains(TOKEN), "the token reached a log");
}

/// Found by hand: 50 `call`s in a row from one peer mostly ended in
/// "Broken pipe": the accept loop answered "rate limit exceeded" and closed
/// before the client had written its request. Refused connections now stay
/// open a moment, and clients read the reply even when their write fails.
#[test]
fn a_refused_client_reads_its_refusal_not_a_broken_pipe() {
    if !is_root() {
        eprintln!("SKIPPED: needs root");
        return;
    }
    let p = Proxy::start("epipe", CONFIG);
    let mut refused = 0;
    for _ in 0..30 {
        let o = p.call_as(&[], "get_status", &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !err.contains("Broken pipe") && !err.contains("reset"),
            "{err}"
        );
        let r = reply(&o);
        if r["error"] == "rate limit exceeded" {
            refused += 1;
        } else {
            assert_eq!(r["success"], true, "{r}");
        }
    }
    assert!(refused > 0, "the burst of 10 was never exceeded");
}
