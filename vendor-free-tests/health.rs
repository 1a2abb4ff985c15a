//! The health listener end to end: the built binary with its listener on a
//! loopback port, asked with methods it does not serve.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::proc::{Agent, Dir, args};
use common::standin::StandIn;

/// The agent with its health listener on a free port, after two reports (the
/// first has been published).
fn with_listener(s: &StandIn, dir: &Dir) -> (Agent, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut a = args(s, dir, &[]);
    a.retain(|x| x != "--health-addr=");
    a.push(format!("--health-addr=127.0.0.1:{port}"));
    let agent = Agent::start(dir, &a);
    assert!(s.wait_for(Duration::from_secs(20), |r| r.len() >= 2));
    (agent, port)
}

/// Sends `request` on a new connection and reads the answer to its end:
/// the status, the head and the body (status 0: no answer in `wait`).
fn ask(port: u16, request: &str, wait: Duration) -> (u16, String, String) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(wait)).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_string(), body.to_string())
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
