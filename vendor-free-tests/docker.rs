//! The docker module end to end.
//!
//! Against a real dockerd (`.ci/run` installs and starts one; elsewhere set
//! `PULSE_TEST_DOCKER_HOST=unix:///path`): containers that are running,
//! exited with a code, restarting, paused, healthy, memory-limited and busy
//! on CPU, reported through the loopback Pulse stand-in and compared with
//! `docker inspect`.
//!
//! Against a fake Engine socket, for what a real daemon will not do on
//! demand: slow answers, garbage, a 100 MB body, a truncated chunk, a reset,
//! a peer that never answers. The agent never hangs past its deadlines and
//! never crashes.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proc::{Agent, Dir};
use common::standin::StandIn;
use serde_json::{Value, json};

fn agent_args(s: &StandIn, dir: &Dir, socket: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = common::proc::args(s, dir, extra);
    a.push(format!("--docker-socket={}", socket.display()));
    a
}

// ---------------------------------------------------------------- real dockerd

/// The socket of the dockerd under test. Missing is a failure, not a skip.
fn docker_socket() -> PathBuf {
    let host = std::env::var("PULSE_TEST_DOCKER_HOST")
        .unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let path = PathBuf::from(host.strip_prefix("unix://").unwrap_or(&host));
    assert!(
        UnixStream::connect(&path).is_ok(),
        "no dockerd answers on {} (start one as .ci/run does, or set PULSE_TEST_DOCKER_HOST)",
        path.display()
    );
    path
}

fn docker(socket: &Path, args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .output()
        .expect("the docker client (Debian's docker.io)");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const IMAGE: &str = "pulse-busybox:test";

/// A busybox image made with `docker import` (no registry is reachable).
fn ensure_image(socket: &Path, dir: &Dir) {
    let images = docker(socket, &["images", "-q", IMAGE]);
    if !images.is_empty() {
        return;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox (Debian's busybox-static)");
    let rootfs = dir.0.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "true", "false", "yes", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let tar = dir.0.join("rootfs.tar");
    let ok = Command::new("tar")
        .args([
            "-C",
            rootfs.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    docker(socket, &["import", tar.to_str().unwrap(), IMAGE]);
}

/// Containers made by one test run, removed when dropped.
struct Containers {
    socket: PathBuf,
    names: Vec<String>,
}

impl Drop for Containers {
    fn drop(&mut self) {
        let mut args = vec!["rm", "-f"];
        args.extend(self.names.iter().map(String::as_str));
        let _ = Command::new("docker")
            .args(&args)
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .output();
    }
}

fn inspect(socket: &Path, name: &str) -> Value {
    let v: Value = serde_json::from_str(&docker(socket, &["inspect", name])).unwrap();
    v[0].clone()
}

fn wait_until(what: &str, t: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + t;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn real_dockerd_matches_docker_inspect() {
    let socket = docker_socket();
    let dir = Dir::new("docker-e2e");
    ensure_image(&socket, &dir);
    let p = format!("pulse-e2e-{}-", std::process::id());
    let name = |n: &str| format!("{p}{n}");
    let mut made = Containers {
        socket: socket.clone(),
        names: Vec::new(),
    };
    let mut run = |n: &str, opts: &[&str], cmd: &[&str]| {
        let full = name(n);
        let mut args = vec!["run", "-d", "--name", full.as_str()];
        args.extend_from_slice(opts);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        docker(&socket, &args);
        made.names.push(full);
    };
    run(
        "running",
        &[
            "-e",
            "DB_PASSWORD=hunter2",
            "-e",
            "MODE=demo",
            "--label",
            "pulse.test=yes",
        ],
        &["sleep", "3600"],
    );
    run("exited", &[], &["sh", "-c", "exit 3"]);
    run(
        "restarting",
        &["--restart", "always"],
        &["sh", "-c", "sleep 1; exit 2"],
    );
    run("paused", &[], &["sleep", "3600"]);
    run(
        "healthy",
        &["--health-cmd", "true", "--health-interval", "1s"],
        &["sleep", "3600"],
    );
    run("memlimit", &["--memory", "64m"], &["sleep", "3600"]);
    run("busy", &[], &["sh", "-c", "while :; do :; done"]);
    docker(&socket, &["pause", &name("paused")]);
    wait_until("the health check", Duration::from_secs(30), || {
        inspect(&socket, &name("healthy"))["State"]["Health"]["Status"] == "healthy"
    });
    wait_until("the exit", Duration::from_secs(30), || {
        inspect(&socket, &name("exited"))["State"]["Status"] == "exited"
    });
    let restarts_before = inspect(&socket, &name("restarting"))["RestartCount"]
        .as_u64()
        .unwrap();

    let s = StandIn::start();
    let agent = Agent::start(&dir, &agent_args(&s, &dir, &socket, &["--enable-docker"]));
    // The first report has no CPU figures (no earlier sample); take the third.
    let ok = s.wait_for_docker(Duration::from_secs(30), |r| {
        r.iter().filter(|x| x.status == 200).count() >= 3
    });
    assert!(
        ok,
        "three docker reports accepted; agent log:\n{}",
        agent.log()
    );
    let reports = s.docker_reports();
    assert!(
        reports.iter().all(|r| r.status == 200),
        "every docker report accepted: {:?}",
        reports.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(s.schema_notes().is_empty(), "{:?}", s.schema_notes());
    let doc = reports.last().unwrap().doc.clone().unwrap();
    let restarts_after = inspect(&socket, &name("restarting"))["RestartCount"]
        .as_u64()
        .unwrap();

    assert_eq!(doc["host"]["runtime"], "docker");
    assert_eq!(doc["agent"]["type"], "unified");
    let ours: HashMap<String, &Value> = doc["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| Some((c["name"].as_str()?.strip_prefix(&p)?.to_string(), c)))
        .collect();
    assert_eq!(ours.len(), 7, "all seven containers: {:?}", ours.keys());

    for (short, c) in &ours {
        let truth = inspect(&socket, &name(short));
        assert_eq!(c["id"], truth["Id"], "{short}");
        assert_eq!(c["image"], IMAGE, "{short}");
        assert_eq!(c["imageDigest"], truth["Image"], "{short}");
        if *short == "restarting" {
            let st = c["state"].as_str().unwrap();
            assert!(matches!(st, "restarting" | "running" | "exited"), "{st}");
            let n = c["restartCount"].as_u64().unwrap();
            assert!(
                (restarts_before..=restarts_after).contains(&n),
                "restart count {n} within docker inspect's {restarts_before}..={restarts_after}"
            );
            // While it runs between two crashes the engine shows exit code 0
            // (and the list and the inspect may fall either side of a restart).
            let code = c["exitCode"].as_i64().unwrap();
            assert!(code == 2 || code == 0, "{st} with exit code {code}");
            continue;
        }
        assert_eq!(c["state"], truth["State"]["Status"], "{short}");
        assert_eq!(c["exitCode"], truth["State"]["ExitCode"], "{short}");
        assert_eq!(c["restartCount"], truth["RestartCount"], "{short}");
        assert_eq!(c["oomKilled"], truth["State"]["OOMKilled"], "{short}");
        let health = truth["State"]["Health"]["Status"].as_str().unwrap_or("");
        assert_eq!(c["health"].as_str().unwrap_or(""), health, "{short}");
        assert_eq!(c["startedAt"], truth["State"]["StartedAt"], "{short}");
        let running = matches!(c["state"].as_str(), Some("running" | "paused"));
        if running {
            assert!(c["memoryUsageBytes"].as_u64().unwrap() > 0, "{short}");
            assert!(c["uptimeSeconds"].as_u64().unwrap() < 3600, "{short}");
        } else {
            assert_eq!(c["memoryLimitBytes"], 0, "{short}: no stats when stopped");
            assert_eq!(c["finishedAt"], truth["State"]["FinishedAt"], "{short}");
        }
    }
    assert_eq!(ours["exited"]["exitCode"], 3);
    assert_eq!(ours["paused"]["state"], "paused");
    assert_eq!(ours["healthy"]["health"], "healthy");
    assert_eq!(ours["memlimit"]["memoryLimitBytes"], 64 * 1024 * 1024);
    assert_eq!(
        ours["memlimit"]["memoryLimitBytes"],
        inspect(&socket, &name("memlimit"))["HostConfig"]["Memory"]
    );
    let env: Vec<&str> = ours["running"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        env.contains(&"DB_PASSWORD=***") && env.contains(&"MODE=demo"),
        "{env:?}"
    );
    assert_eq!(ours["running"]["labels"]["pulse.test"], "yes");
    // One spinning shell: up to one CPU (100 %; less on a loaded CI machine),
    // never more than all of them, and far above a sleeping container.
    let ncpu = doc["host"]["totalCpu"].as_f64().unwrap();
    let busy = ours["busy"]["cpuPercent"].as_f64().unwrap();
    let idle = ours["running"]["cpuPercent"].as_f64().unwrap();
    assert!(idle < 5.0, "sleeping container at {idle} %");
    assert!(
        busy > 15.0 && busy > 10.0 * idle && busy <= 100.0 * ncpu + 5.0,
        "busy container at {busy} % of {ncpu} CPUs (sleeping one at {idle} %)"
    );
    assert_eq!(ours["paused"]["cpuPercent"], 0.0);
}

// ------------------------------------------------------------- the fake Engine

/// What the fake engine does with one request.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// A well-formed answer.
    Fine,
    /// Waits this long, then answers.
    Slow(Duration),
    /// Not HTTP.
    Garbage,
    /// A chunked body of 100 MB.
    Huge,
    /// Part of a chunk, then closes.
    Truncated,
    /// Reads the request and closes.
    Reset,
    /// Reads the request and says nothing.
    Silent,
}

/// A fake Engine API on a Unix socket; `rule` picks the act per path.
struct FakeEngine {
    path: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
    _dir: Dir,
}

fn container(id: &str, name: &str, state: &str) -> Value {
    json!({"Id": id, "Names": [format!("/{name}")], "Image": "busybox", "ImageID": "sha256:00",
        "Created": 1_787_400_000, "State": state, "Status": if state == "running" { "Up 2 hours" } else { "Exited (1) 1 hour ago" },
        "Labels": {}, "Ports": [], "Mounts": []})
}

fn fine_body(path: &str) -> Value {
    let path = path.split('?').next().unwrap_or(path);
    if path.ends_with("/info") {
        return json!({"Name": "fake", "ServerVersion": "26.1.0", "OperatingSystem": "Fake OS",
            "KernelVersion": "6.1.0", "Architecture": "x86_64", "NCPU": 4, "MemTotal": 8_000_000_000u64});
    }
    if path.ends_with("/containers/json") {
        return json!([
            container("aaa", "one", "running"),
            container("bbb", "two", "running"),
            container("ccc", "three", "exited")
        ]);
    }
    if path.ends_with("/stats") {
        return json!({"read": "2026-11-22T16:14:12.5Z", "memory_stats": {"usage": 1000, "limit": 4000},
            "cpu_stats": {"cpu_usage": {"total_usage": 10}, "system_cpu_usage": 100, "online_cpus": 4}});
    }
    json!({"RestartCount": 0, "State": {"Status": "running", "ExitCode": 0, "StartedAt": "2026-11-22T14:00:00Z",
        "FinishedAt": "0001-01-01T00:00:00Z"}, "Config": {"Env": []}})
}

impl FakeEngine {
    fn start(name: &str, rule: fn(&str) -> Act) -> FakeEngine {
        FakeEngine::start_in(Dir::new(&format!("fake-engine-{name}")), rule)
    }

    /// An engine listening on `dir`/engine.sock from now on.
    fn start_in(dir: Dir, rule: fn(&str) -> Act) -> FakeEngine {
        let path = dir.0.join("engine.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let log = log.clone();
                std::thread::spawn(move || serve(conn, rule, log));
            }
        });
        FakeEngine {
            path,
            requests,
            _dir: dir,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(conn: UnixStream, rule: fn(&str) -> Act, log: Arc<Mutex<Vec<String>>>) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut head = String::new();
        while head != "\r\n" {
            head.clear();
            if r.read_line(&mut head).unwrap_or(0) == 0 {
                return;
            }
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("").to_string(),
        );
        log.lock().unwrap().push(format!("{method} {path}"));
        let ok_head = |len: usize| {
            format!(
                "HTTP/1.1 200 OK\r\nApi-Version: 1.43\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
            )
        };
        match rule(&path) {
            Act::Fine | Act::Slow(_) => {
                if let Act::Slow(d) = rule(&path) {
                    std::thread::sleep(d);
                }
                let body = if path.starts_with("/_ping") {
                    "OK".to_string()
                } else {
                    fine_body(&path).to_string()
                };
                let head = ok_head(body.len());
                let out = if method == "HEAD" { head } else { head + &body };
                if w.write_all(out.as_bytes()).is_err() {
                    return;
                }
            }
            Act::Garbage => {
                let _ = w.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\nProtocol mismatch.\n");
                return;
            }
            Act::Huge => {
                let _ = w.write_all(
                    b"HTTP/1.1 200 OK\r\nApi-Version: 1.43\r\nTransfer-Encoding: chunked\r\n\r\n",
                );
                let chunk = vec![b' '; 1 << 20];
                for _ in 0..100 {
                    if w.write_all(b"100000\r\n")
                        .and_then(|_| w.write_all(&chunk))
                        .and_then(|_| w.write_all(b"\r\n"))
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = w.write_all(b"0\r\n\r\n");
            }
            Act::Truncated => {
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nApi-Version: 1.43\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n{\"Rest");
                return;
            }
            Act::Reset => return,
            Act::Silent => {
                std::thread::sleep(Duration::from_secs(120));
                return;
            }
        }
    }
}

/// `--once` against a fake engine: its exit status, stdout, stderr, time.
fn once(engine: &FakeEngine) -> (Option<i32>, String, String, Duration) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pulse-agent"))
        .args([
            "--once".to_string(),
            "--enable-docker".to_string(),
            format!("--docker-socket={}", engine.path.display()),
            format!("--root={}", common::case_root("debian12-vm").display()),
            format!("--state-dir={}", common::no_state_dir().display()),
            format!(
                "--smartctl={}",
                common::fake_smartctl("debian12-vm").display()
            ),
        ])
        .env_clear()
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// The JSON documents `--once` printed, in order.
fn documents(stdout: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(stdout)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_well_behaved_fake_engine_gives_a_valid_report() {
    let e = FakeEngine::start("fine", |_| Act::Fine);
    let (code, out, err, _) = once(&e);
    assert_eq!(code, Some(0), "{err}");
    let docs = documents(&out);
    assert_eq!(docs.len(), 2, "the host report, then the docker report");
    let d = &docs[1];
    assert!(
        common::wire::check_docker_report(d).is_empty(),
        "{:?}",
        common::wire::check_docker_report(d)
    );
    let names: Vec<&str> = d["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["one", "three", "two"]);
    assert_eq!(d["host"]["runtimeVersion"], "26.1.0");
    assert_eq!(d["containers"][0]["memoryLimitBytes"], 4000);
    // The negotiated version prefixes every call; stats only for running ones.
    let reqs = e.requests();
    assert!(reqs.iter().any(|r| r == "HEAD /_ping"), "{reqs:?}");
    assert!(
        reqs.iter().any(|r| r == "GET /v1.43/containers/json?all=1"),
        "{reqs:?}"
    );
    assert_eq!(
        reqs.iter().filter(|r| r.contains("/stats")).count(),
        2,
        "{reqs:?}"
    );
    assert!(
        !reqs
            .iter()
            .any(|r| r.contains("/system/df") || r.contains("/images")),
        "{reqs:?}"
    );
}

#[test]
fn a_misbehaving_engine_never_hangs_or_crashes_the_agent() {
    // (name, rule, what the error must say, the longest it may take)
    type Case = (&'static str, fn(&str) -> Act, &'static str, u64);
    let cases: [Case; 6] = [
        ("garbage", |_| Act::Garbage, "not an HTTP answer", 5),
        (
            "silent",
            |_| Act::Silent,
            "no complete answer before the deadline",
            12,
        ),
        (
            "huge-list",
            |p| {
                if p.contains("/containers/json") {
                    Act::Huge
                } else {
                    Act::Fine
                }
            },
            "answer larger than",
            10,
        ),
        (
            "reset-list",
            |p| {
                if p.contains("/containers/json") {
                    Act::Reset
                } else {
                    Act::Fine
                }
            },
            "connection closed",
            5,
        ),
        (
            "truncated-info",
            |p| {
                if p.contains("/info") {
                    Act::Truncated
                } else {
                    Act::Fine
                }
            },
            "connection closed",
            5,
        ),
        (
            "slow-list",
            |p| {
                if p.contains("/containers/json") {
                    Act::Slow(Duration::from_secs(25))
                } else {
                    Act::Fine
                }
            },
            "no complete answer before the deadline",
            25,
        ),
    ];
    let threads: Vec<_> = cases
        .into_iter()
        .map(|(name, rule, says, limit)| {
            std::thread::spawn(move || {
                let e = FakeEngine::start(name, rule);
                let (code, out, err, took) = once(&e);
                assert_eq!(
                    code,
                    Some(1),
                    "{name}: --once --enable-docker fails without a docker report\n{err}"
                );
                assert!(took < Duration::from_secs(limit), "{name}: took {took:?}");
                assert!(err.contains(says), "{name}: stderr says {says:?}:\n{err}");
                assert!(
                    err.contains(&e.path.display().to_string()),
                    "{name}: the error names the socket:\n{err}"
                );
                let docs = documents(&out);
                assert_eq!(docs.len(), 1, "{name}: the host report is still printed");
                assert!(common::wire::check_host_report(&docs[0]).is_empty());
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn one_broken_container_is_left_out_the_rest_are_reported() {
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    let e = FakeEngine::start("one-bad", |p| {
        SEEN.fetch_add(1, Ordering::Relaxed);
        if p.contains("/containers/bbb/stats") {
            Act::Huge
        } else if p.contains("/containers/aaa/json") {
            Act::Truncated
        } else {
            Act::Fine
        }
    });
    let (code, out, err, took) = once(&e);
    assert_eq!(code, Some(0), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let docs = documents(&out);
    let names: Vec<&str> = docs[1]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    // `one` has no inspect (left out); `two` has no stats (kept, without them).
    assert_eq!(names, ["three", "two"]);
    assert_eq!(docs[1]["containers"][1]["memoryUsageBytes"], 0);
    assert!(SEEN.load(Ordering::Relaxed) > 0);
}

#[test]
fn a_hung_engine_never_holds_the_host_report() {
    let e = FakeEngine::start("hung-daemon", |p| {
        if p.starts_with("/_ping") {
            Act::Fine
        } else {
            Act::Silent
        }
    });
    let s = StandIn::start();
    let dir = Dir::new("docker-hung");
    let started = Instant::now();
    let agent = Agent::start(&dir, &agent_args(&s, &dir, &e.path, &["--enable-docker"]));
    // Interval 1 s: the host reports keep their pace while docker hangs.
    assert!(
        s.wait_for(Duration::from_secs(8), |r| r
            .iter()
            .filter(|x| x.status == 200)
            .count()
            >= 5),
        "five host reports in 8 s; log:\n{}",
        agent.log()
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(s.docker_reports().is_empty());
    // The module says why.
    let last = s.reports().last().unwrap().doc.clone().unwrap();
    let module = last["agent"]["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "docker")
        .unwrap()
        .clone();
    assert_eq!(module["enabled"], true);
    assert_eq!(module["state"], "retrying", "{module}");
}

#[test]
fn docker_report_refusals_follow_the_server() {
    let e = FakeEngine::start("refusals", |_| Act::Fine);
    let s = StandIn::start();
    // A token without docker:report: 403, dropped, said once.
    let dir = Dir::new("docker-403");
    s.add_token(
        "feedfacefeedfacefeedfacefeedfacefeedfacefeedfacefeedfacefeedface",
        &["agent:report"],
    );
    let mut a = agent_args(&s, &dir, &e.path, &["--enable-docker"]);
    a[2] = format!(
        "--token-file={}",
        dir.token_file("feedfacefeedfacefeedfacefeedfacefeedfacefeedfacefeedfacefeedface")
            .display()
    );
    let agent = Agent::start(&dir, &a);
    assert!(s.wait_for_docker(Duration::from_secs(10), |r| r.len() >= 3));
    let log = agent.log();
    assert!(s.docker_reports().iter().all(|r| r.status == 403));
    assert_eq!(
        log.matches("lacks the docker:report scope").count(),
        1,
        "{log}"
    );
    assert!(
        !dir.state()
            .join("spool-docker")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some()),
        "nothing spooled"
    );
    // Host reports went through meanwhile.
    assert!(s.reports().iter().any(|r| r.status == 200));
    drop(agent);

    // Monitoring stopped for this host: 400, not retried, not spooled.
    let s = StandIn::start();
    let dir = Dir::new("docker-removed");
    let agent_id = "0f0e0d0c-0b0a-0908-0706-050403020100";
    s.remove_docker_agent(agent_id);
    let agent = Agent::start(
        &dir,
        &agent_args(
            &s,
            &dir,
            &e.path,
            &["--enable-docker", "--agent-id", agent_id],
        ),
    );
    assert!(s.wait_for_docker(Duration::from_secs(10), |r| r.len() >= 3));
    let statuses: Vec<u16> = s.docker_reports().iter().map(|r| r.status).collect();
    assert!(statuses.iter().all(|&c| c == 400), "{statuses:?}");
    // One report per cycle: the refused one is never sent again.
    let bodies: Vec<String> = s
        .docker_reports()
        .iter()
        .map(|r| r.doc.as_ref().unwrap()["timestamp"].to_string())
        .collect();
    let mut unique = bodies.clone();
    unique.dedup();
    assert_eq!(unique, bodies, "no report sent twice");
    assert!(
        agent.log().contains("stopped monitoring this host"),
        "{}",
        agent.log()
    );
}

/// Auto-detected (no `--enable-docker`): while there is no engine socket
/// the agent looks for one every 60 s, not every cycle (a `stat` per
/// candidate), so an engine started later is reported from the first look
/// after it, about a minute after the agent's start; one that looked every
/// cycle would find it within a second.
#[test]
fn an_engine_started_later_is_found_at_the_next_minutes_look() {
    let engine_dir = Dir::new("fake-engine-late");
    let socket = engine_dir.0.join("engine.sock");
    let s = StandIn::start();
    let dir = Dir::new("docker-late");
    let started = Instant::now();
    let agent = Agent::start(&dir, &agent_args(&s, &dir, &socket, &[]));
    assert!(s.wait_for(Duration::from_secs(15), |r| r.len() >= 3));
    let engine = FakeEngine::start_in(engine_dir, |_| Act::Fine);
    assert!(
        s.wait_for_docker(Duration::from_secs(80), |r| !r.is_empty()),
        "the engine was never found"
    );
    let found = started.elapsed();
    assert!(
        (Duration::from_secs(55)..Duration::from_secs(68)).contains(&found),
        "found {found:?} after the start, not at the 60 s look"
    );
    assert!(
        engine
            .requests()
            .iter()
            .any(|r| r.contains("/containers/json"))
    );
    drop(agent);
}

#[test]
fn a_down_server_spools_docker_reports_and_sends_them_in_order() {
    let e = FakeEngine::start("spool", |_| Act::Fine);
    let s = StandIn::start();
    let dir = Dir::new("docker-spool");
    s.go_down();
    let agent = Agent::start(&dir, &agent_args(&s, &dir, &e.path, &["--enable-docker"]));
    let spool = dir.state().join("spool-docker");
    wait_until(
        "three spooled docker reports",
        Duration::from_secs(15),
        || spool.read_dir().map(|d| d.count()).unwrap_or(0) >= 3,
    );
    s.come_up();
    assert!(s.wait_for_docker(Duration::from_secs(15), |r| {
        r.iter().filter(|x| x.status == 200).count() >= 4
    }));
    let times: Vec<String> = s
        .docker_reports()
        .iter()
        .filter_map(|r| Some(r.doc.as_ref()?["timestamp"].as_str()?.to_string()))
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "oldest first, the newest last");
    drop(agent);
}
