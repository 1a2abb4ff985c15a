//! The health listener end to end: the built binary with its listener on a
//! loopback port, probed while local clients hold idle connections or send
//! requests slowly, and asked with methods it does not serve.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::proc::{Dir, ask, with_listener};
use common::standin::StandIn;

/// `n` connections to the listener, each having sent `first` (maybe nothing).
fn connections(port: u16, n: usize, first: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.write_all(first).unwrap();
            c
        })
        .collect()
}

fn healthz(port: u16) -> u16 {
    ask(
        port,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .0
}

/// Asks `/healthz` every 100 ms for `for_`; every answer must be 200.
fn healthz_keeps_answering(port: u16, for_: Duration, what: &str) {
    let started = Instant::now();
    let mut asked = 0;
    while started.elapsed() < for_ {
        let t = Instant::now();
        let status = healthz(port);
        assert_eq!(
            status,
            200,
            "{what}: /healthz answered {status} after {:?} (probe {asked}, {:?} in)",
            t.elapsed(),
            started.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{what}: slow answer");
        asked += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn healthz_answers_while_300_idle_connections_are_held() {
    let (s, dir) = (StandIn::start(), Dir::new("idle300"));
    let (_agent, port) = with_listener(&s, &dir);
    let idle = connections(port, 300, b"");
    // Past the listener's idle timeout, so the held connections reach the
    // gate (TCP_DEFER_ACCEPT hands them over once it gives up waiting).
    healthz_keeps_answering(port, Duration::from_secs(12), "300 idle connections");
    drop(idle);
}

/// What an https health checker pointed at the plain-http port leaves behind:
/// connections that sent the first bytes of a TLS handshake and wait.
#[test]
fn healthz_answers_while_300_connections_sit_on_their_first_bytes() {
    let (s, dir) = (StandIn::start(), Dir::new("bytes300"));
    let (_agent, port) = with_listener(&s, &dir);
    let waiting = connections(port, 300, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    healthz_keeps_answering(port, Duration::from_secs(6), "300 waiting connections");
    drop(waiting);
}

#[test]
fn healthz_answers_while_slow_clients_hold_partial_requests() {
    let (s, dir) = (StandIn::start(), Dir::new("partial"));
    let (_agent, port) = with_listener(&s, &dir);
    // More slow clients than relay workers, each with a request head it never
    // finishes and one more byte every second (before issue 12 each one held
    // a relay). The gate closes them 5 s after accept, so the test asks
    // within those 5 s.
    let mut slow = connections(port, 16, b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
    let started = Instant::now();
    let mut last_trickle = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        if last_trickle.elapsed() >= Duration::from_secs(1) {
            for c in &mut slow {
                let _ = c.write_all(b"X");
            }
            last_trickle = Instant::now();
        }
        healthz_keeps_answering(port, Duration::from_millis(300), "16 slow clients");
    }
    drop(slow);
}

#[test]
fn health_paths_answer_other_methods_with_405() {
    let (s, dir) = (StandIn::start(), Dir::new("methods"));
    let (_agent, port) = with_listener(&s, &dir);
    let wait = Duration::from_secs(3);
    for path in ["/healthz", "/readyz", "/status", "/metrics", "/report"] {
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let body = if matches!(method, "POST" | "PUT" | "PATCH") {
                "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
            } else {
                "\r\n"
            };
            let (status, head, _) = ask(
                port,
                &format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{body}"),
                wait,
            );
            assert_eq!(status, 405, "{method} {path}: {head}");
            assert!(
                head.lines()
                    .any(|l| l.eq_ignore_ascii_case("allow: GET, HEAD")),
                "{method} {path}: {head}"
            );
        }
        for method in ["GET", "HEAD"] {
            let (status, head, _) = ask(
                port,
                &format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                wait,
            );
            assert_eq!(status, 200, "{method} {path}: {head}");
        }
    }
    // Unknown paths stay 404 whatever the method.
    let (status, _, _) = ask(
        port,
        "POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        wait,
    );
    assert_eq!(status, 404);
}

/// The address ranges of `pid`'s thread stacks, in KiB: glibc and musl map
/// each as a read-write anonymous range directly above its guard page (an
/// inaccessible range ending where it starts).
fn thread_stacks_kib(pid: u32) -> Vec<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let rows: Vec<(u64, u64, String, bool)> = maps
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (a, b) = f[0].split_once('-').unwrap();
            let n = |x| u64::from_str_radix(x, 16).unwrap();
            (n(a), n(b), f[1].to_string(), f.len() < 6)
        })
        .collect();
    rows.windows(2)
        .filter(|w| w[0].2 == "---p" && w[0].1 == w[1].0 && w[1].2 == "rw-p" && w[1].3)
        .map(|w| (w[1].1 - w[1].0) / 1024)
        .collect()
}

/// tiny_http's acceptor and pool, the `health` thread and the DNS lookup
/// kept std's 2 MiB default stack: 12 MiB of address space, which counts
/// where overcommit is strict. No thread stack is 1 MiB or more now, with
/// the listener answering every endpoint.
#[test]
fn no_thread_keeps_a_default_2_mib_stack() {
    let (s, dir) = (StandIn::start(), Dir::new("stacks"));
    let (agent, port) = with_listener(&s, &dir);
    for path in ["/healthz", "/readyz", "/status", "/metrics", "/report"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_eq!(ask(port, &req, Duration::from_secs(3)).0, 200, "{path}");
    }
    let stacks = thread_stacks_kib(agent.pid());
    let threads = std::fs::read_dir(format!("/proc/{}/task", agent.pid()))
        .unwrap()
        .count();
    // Each thread but the main one has a stack range (glibc may keep a
    // few of ended threads for reuse).
    assert!(
        stacks.len() + 1 >= threads,
        "{stacks:?} for {threads} threads"
    );
    assert!(stacks.iter().all(|&k| k < 1024), "{stacks:?}");
}
