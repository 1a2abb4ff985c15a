//! End-to-end delivery: the built binary reporting to the loopback Pulse
//! stand-in over HTTPS with a CA made in the test. Outages, SIGKILL and
//! restart, 401/403, certificates, redirects, remote config, enrollment,
//! stopping, and the health listener under a connection flood.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::proc::{Agent, Dir, args, free_port, with_listener};
use common::standin::{Mode, REPORT_TOKEN, StandIn, split_seq};
use serde_json::{Value, json};

fn seqs(s: &StandIn) -> Vec<u64> {
    s.accepted_sequence().into_iter().map(|(_, n)| n).collect()
}

#[test]
fn reports_arrive_every_interval_with_increasing_sequence_ids() {
    let s = StandIn::start();
    let dir = Dir::new("steady");
    let agent = Agent::start(&dir, &args(&s, &dir, &[]));
    assert!(
        s.wait_for(Duration::from_secs(20), |r| r.len() >= 4),
        "log:\n{}",
        agent.log()
    );
    let reports = s.reports();
    assert!(reports.iter().all(|r| r.status == 200 && r.accepted));
    assert_eq!(seqs(&s)[..4], [1, 2, 3, 4]);
    let streams: std::collections::HashSet<String> = s
        .accepted_sequence()
        .into_iter()
        .map(|(st, _)| st)
        .collect();
    assert_eq!(streams.len(), 1, "one stream per process");
    // On a fixed grid: the n-th report n seconds after the first, give or
    // take scheduling (a loop that slept a full interval after each cycle
    // would drift by the cycle's length every time).
    for (n, r) in reports.iter().enumerate() {
        let since = (r.at - reports[0].at).as_secs_f64();
        assert!((since - n as f64).abs() < 0.5, "report {n} at {since:.3} s");
    }
    let h = &reports[0].headers;
    assert_eq!(h.get("x-api-token").map(String::as_str), Some(REPORT_TOKEN));
    assert_eq!(
        h.get("authorization").cloned(),
        Some(format!("Bearer {REPORT_TOKEN}"))
    );
    assert!(
        h.get("user-agent")
            .is_some_and(|u| u.starts_with("pulse-agent/"))
    );
    assert_eq!(
        h.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert!(s.schema_notes().is_empty(), "{:?}", s.schema_notes());
    assert!(
        dir.spooled().is_empty(),
        "the happy path writes no spool file"
    );
    // The server's agent ID is saved for the next start.
    let saved = std::fs::read_to_string(dir.state().join("agent-id")).unwrap();
    assert_eq!(saved.trim(), "3d1219c7-c4c5-404a-aa1f-6d2a48adfda4");
}

#[test]
fn an_outage_of_ten_intervals_loses_nothing_and_keeps_order() {
    let s = StandIn::start();
    let dir = Dir::new("outage");
    let agent = Agent::start(&dir, &args(&s, &dir, &[]));
    assert!(s.wait_for(Duration::from_secs(20), |r| r.len() >= 2));
    s.go_down();
    std::thread::sleep(Duration::from_secs(10));
    let spooled = dir.spooled().len();
    assert!(
        spooled >= 8,
        "reports kept during the outage: {spooled}; log:\n{}",
        agent.log()
    );
    s.come_up();
    let want = seqs(&s).len() + spooled;
    assert!(s.wait_for(
        Duration::from_secs(20),
        |r| r.iter().filter(|x| x.accepted).count() > want
    ));
    let got = seqs(&s);
    let expected: Vec<u64> = (1..=got.len() as u64).collect();
    assert_eq!(got, expected, "every report once, in order");
    // Only the report in flight when the server went away can arrive twice
    // (the server took it, the agent did not hear back); the server drops the copy.
    let replays = s.reports().iter().filter(|r| !r.accepted).count();
    assert!(replays <= 1, "{replays} replays");
    assert!(
        s.wait_for(Duration::from_secs(5), |_| dir.spooled().is_empty()),
        "spool drained"
    );
    let log = agent.log();
    assert!(
        log.contains("delivery to") && log.contains("failed"),
        "{log}"
    );
    assert!(log.contains("works again"), "{log}");
}

#[test]
fn sigkill_during_an_outage_then_restart_loses_nothing() {
    let s = StandIn::start();
    let dir = Dir::new("sigkill");
    let mut first = Agent::start(&dir, &args(&s, &dir, &[]));
    assert!(s.wait_for(Duration::from_secs(20), |r| !r.is_empty()));
    s.go_down();
    std::thread::sleep(Duration::from_millis(4500));
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(5)).expect("killed");
    let spooled = dir.spooled().len();
    assert!(spooled >= 3, "{spooled}");
    // The last report the killed process built is the highest number it spooled.
    let numbers = dir.spooled_sequence();
    assert_eq!(numbers.len(), spooled, "every spooled report is readable");
    let built = *numbers.iter().max().unwrap();
    s.come_up();
    let second = Agent::start(&dir, &args(&s, &dir, &[]));
    assert!(s.wait_for(
        Duration::from_secs(20),
        |r| r.iter().filter(|x| x.accepted).count() as u64 > built
    ));
    let got = s.accepted_sequence();
    let first_stream = &got[0].0;
    let from_first: Vec<u64> = got
        .iter()
        .filter(|(st, _)| st == first_stream)
        .map(|(_, n)| *n)
        .collect();
    // A report in flight when the server went away may have arrived and been
    // spooled too: its second copy is discarded by the server as a replay.
    assert_eq!(
        from_first,
        (1..=built).collect::<Vec<_>>(),
        "every report of the killed run arrived once, in order"
    );
    // Then the new process's stream, which starts at 1.
    let second_stream: Vec<&(String, u64)> =
        got.iter().filter(|(st, _)| st != first_stream).collect();
    assert_eq!(second_stream[0].1, 1, "{got:?}\n{}", second.log());
}

#[test]
fn unauthorized_and_forbidden_reports_are_dropped_not_spooled() {
    for (token, scopes, status) in [
        ("unknown-token-aaaa", None, 401),
        ("docker-only-token", Some(&["docker:report"][..]), 403),
    ] {
        let s = StandIn::start();
        if let Some(scopes) = scopes {
            s.add_token(token, scopes);
        }
        let dir = Dir::new(&format!("auth{status}"));
        let mut a = args(&s, &dir, &[]);
        a[2] = format!("--token-file={}", dir.token_file(token).display());
        let agent = Agent::start(&dir, &a);
        assert!(s.wait_for(Duration::from_secs(20), |r| r.len() >= 3));
        assert!(s.reports().iter().all(|r| r.status == status));
        assert!(dir.spooled().is_empty(), "{status}: nothing spooled");
        let log = agent.log();
        assert_eq!(
            log.matches(&format!("({status})")).count(),
            1,
            "logged once, not every cycle:\n{log}"
        );
    }
}

#[test]
fn unauthorized_during_a_flush_drops_the_whole_spool() {
    let s = StandIn::start();
    let dir = Dir::new("flush401");
    let _agent = Agent::start(&dir, &args(&s, &dir, &[]));
    assert!(s.wait_for(Duration::from_secs(20), |r| !r.is_empty()));
    s.go_down();
    std::thread::sleep(Duration::from_secs(3));
    let spooled = dir.spooled_sequence();
    assert!(!spooled.is_empty());
    let newest_spooled = *spooled.iter().max().unwrap();
    s.set_mode(Mode::Status(401));
    s.come_up();
    assert!(
        s.wait_for(Duration::from_secs(10), |_| dir.spooled().is_empty()),
        "{:?}",
        dir.spooled()
    );
    // One refusal dropped the whole spool: of the spooled reports only the
    // oldest was ever tried (later 401s are fresh reports of later cycles).
    let tried: Vec<u64> = s
        .reports()
        .iter()
        .filter(|r| r.status == 401)
        .filter_map(|r| Some(split_seq(r.doc.as_ref()?.get("sequenceId")?.as_str()?)?.1))
        .filter(|&n| n <= newest_spooled)
        .collect();
    assert_eq!(tried, [spooled[0]], "spooled {spooled:?}");
}

#[test]
fn a_server_error_keeps_the_report_for_later() {
    let s = StandIn::start();
    let dir = Dir::new("500");
    s.set_mode(Mode::Status(500));
    let _agent = Agent::start(&dir, &args(&s, &dir, &[]));
    assert!(s.wait_for(Duration::from_secs(20), |_| dir.spooled().len() >= 2));
    s.set_mode(Mode::Normal);
    assert!(s.wait_for(
        Duration::from_secs(20),
        |r| r.iter().filter(|x| x.accepted).count() >= 3
    ));
    let got = seqs(&s);
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
}

/// `--once` with a URL: exit 0 only when the server took the report.
fn once(s: &StandIn, dir: &Dir, extra: &[&str]) -> std::process::Output {
    let mut a = args(s, dir, extra);
    a.push("--once".into());
    Command::new(env!("CARGO_BIN_EXE_pulse-agent"))
        .args(&a)
        .env_clear()
        .output()
        .unwrap()
}

#[test]
fn once_with_a_url_delivers_and_tells_by_its_exit_status() {
    let s = StandIn::start();
    let dir = Dir::new("once");
    let o = once(&s, &dir, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        o.stdout.is_empty(),
        "with --url the report is sent, not printed"
    );
    assert_eq!(s.reports().len(), 1);
    s.set_mode(Mode::Status(503));
    let o = once(&s, &dir, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(dir.spooled().len(), 1, "kept for the next run");
    s.set_mode(Mode::Normal);
    let o = once(&s, &dir, &[]);
    assert!(o.status.success());
    let got = s.accepted_sequence();
    assert_eq!(
        got.len(),
        3,
        "the spooled report went first, then the new one: {got:?}"
    );
    assert!(dir.spooled().is_empty());
}

#[test]
fn certificates_are_checked_unless_told_otherwise() {
    let s = StandIn::start();
    let dir = Dir::new("tls");
    let mut no_ca = args(&s, &dir, &["--once"]);
    no_ca.retain(|a| !a.starts_with("--cacert"));
    let run = |a: &[String]| {
        Command::new(env!("CARGO_BIN_EXE_pulse-agent"))
            .args(a)
            .env_clear()
            .output()
            .unwrap()
    };
    let o = run(&no_ca);
    assert_eq!(o.status.code(), Some(1), "an unknown CA is refused");
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .to_lowercase()
            .contains("certificate"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(s.reports().is_empty());
    // A CA that did not sign this server is refused too.
    let other = common::standin::Pki::new("other");
    let other_ca = dir.0.join("other.pem");
    std::fs::write(&other_ca, &other.ca_pem).unwrap();
    let mut wrong = no_ca.clone();
    wrong.push(format!("--cacert={}", other_ca.display()));
    assert_eq!(run(&wrong).status.code(), Some(1));
    for ok in [
        format!("--cacert={}", s.ca_file(&dir.0).display()),
        "--insecure".to_string(),
        format!("--server-fingerprint={}", s.pki.fingerprint()),
    ] {
        let mut a = no_ca.clone();
        a.push(ok.clone());
        let o = run(&a);
        assert!(
            o.status.success(),
            "{ok}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let mut pinned_wrong = no_ca.clone();
    pinned_wrong.push(format!("--server-fingerprint={}", other.fingerprint()));
    let o = run(&pinned_wrong);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not match --server-fingerprint"));
    // The refused runs kept their reports (a TLS failure may be temporary);
    // the first trusted run delivered them, oldest first, before its own.
    let got = s.accepted_sequence();
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(
        dir.spooled().len(),
        1,
        "the wrongly pinned run kept its report"
    );
}

#[test]
fn once_fails_when_the_new_report_is_refused_even_after_a_flush() {
    let s = StandIn::start();
    let dir = Dir::new("once400");
    s.set_mode(Mode::Status(503));
    assert_eq!(once(&s, &dir, &[]).status.code(), Some(1));
    assert_eq!(dir.spooled().len(), 1);
    s.set_mode(Mode::Status(400));
    let o = once(&s, &dir, &[]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the new report was refused: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        dir.spooled().is_empty(),
        "both refused for good, neither kept"
    );
}

#[test]
fn a_self_signed_server_certificate_is_trusted_through_cacert() {
    let s = StandIn::start_with(common::standin::Pki::self_signed("pulse.lan"));
    let dir = Dir::new("selfsigned");
    let o = once(&s, &dir, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut no_ca = args(&s, &dir, &["--once"]);
    no_ca.retain(|a| !a.starts_with("--cacert"));
    let o = Command::new(env!("CARGO_BIN_EXE_pulse-agent"))
        .args(&no_ca)
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "not without it");
}

#[test]
fn proxy_variables_do_not_apply_to_a_server_on_this_machine() {
    let s = StandIn::start();
    let dir = Dir::new("proxy");
    // A proxy that does not exist: using it would fail the delivery.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut a = args(&s, &dir, &["--once"]);
    a[1] = format!("--url=https://localhost:{}", s.addr.port());
    let o = Command::new(env!("CARGO_BIN_EXE_pulse-agent"))
        .args(&a)
        .env_clear()
        .env("HTTPS_PROXY", &dead)
        .env("HTTP_PROXY", &dead)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(s.reports().len(), 1);
}

#[test]
fn redirects_are_refused() {
    let s = StandIn::start();
    let dir = Dir::new("redirect");
    s.set_mode(Mode::Redirect(
        "https://evil.example/api/agents/agent/report".into(),
    ));
    let o = once(&s, &dir, &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("redirects are not followed"), "{err}");
    assert!(!err.contains(REPORT_TOKEN));
}

#[test]
fn a_reset_connection_keeps_the_report_for_the_next_run() {
    let s = StandIn::start();
    let dir = Dir::new("reset");
    s.set_mode(Mode::Reset);
    let o = once(&s, &dir, &[]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(dir.spooled().len(), 1);
    s.set_mode(Mode::Normal);
    assert!(once(&s, &dir, &[]).status.success());
    assert_eq!(
        s.accepted_sequence().len(),
        2,
        "the kept report, then the new one"
    );
}

#[test]
fn reports_the_server_will_never_take_are_dropped() {
    let s = StandIn::start();
    let dir = Dir::new("413");
    s.set_mode(Mode::Status(413));
    let o = once(&s, &dir, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        dir.spooled().is_empty(),
        "a 413 would block every later report"
    );
}

#[test]
fn remote_config_sets_the_interval_and_is_reported() {
    let s = StandIn::start();
    let dir = Dir::new("remote");
    // The host is known to the server, with a profile that sets 1 s.
    let seed = once(&s, &dir, &[]);
    assert!(seed.status.success());
    s.set_settings(Some(json!({"interval": "1s"})));
    let _agent = Agent::start(&dir, &args(&s, &dir, &["--interval=1m"]));
    assert!(
        s.wait_for(Duration::from_secs(15), |r| r.len() >= 4),
        "reports at the remote interval, not 1 minute"
    );
    let last = s.reports().last().unwrap().doc.clone().unwrap();
    assert_eq!(last["agent"]["intervalSeconds"], 1);
    assert_eq!(
        last["agent"]["appliedConfig"]["version"],
        "host-agent-config/v1"
    );
    assert!(
        last["agent"]["appliedConfig"]["hash"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(s.config_requests() >= 1);
}

/// After the first, configs are fetched every 60 s: a profile changed on
/// the server is applied at the next refresh (not before: the first fetch's
/// answer holds for a minute), and reports and config share one connection
/// (a refresh that raced a report handshook a second one).
#[test]
fn a_profile_changed_on_the_server_is_applied_at_the_next_refresh() {
    let s = StandIn::start();
    let dir = Dir::new("refresh");
    // The host is known to the server, with no profile yet.
    assert!(once(&s, &dir, &[]).status.success());
    let connections = s.connections();
    let _agent = Agent::start(&dir, &args(&s, &dir, &["--interval=2s"]));
    assert!(s.wait_for(Duration::from_secs(15), |r| r.len() >= 3));
    let started = s.reports()[1].at;
    let configs = s.config_requests();
    s.set_settings(Some(json!({"interval": "1s"})));
    let at_one = |r: &[common::standin::Received]| {
        r.last()
            .and_then(|x| x.doc.as_ref())
            .is_some_and(|d| d["agent"]["intervalSeconds"] == 1)
    };
    assert!(
        s.wait_for(Duration::from_secs(80), at_one),
        "the new profile was never applied"
    );
    let took = s.reports().last().unwrap().at - started;
    assert!(
        (Duration::from_secs(57)..Duration::from_secs(64)).contains(&took),
        "applied {took:?} after the first report, not at the 60 s refresh"
    );
    assert_eq!(s.config_requests(), configs + 1, "one refresh");
    assert!(s.wait_for(Duration::from_secs(5), |r| r.len() >= 6));
    assert_eq!(
        s.connections() - connections,
        1,
        "reports and config on one connection"
    );
}

#[test]
fn enrollment_trades_the_bootstrap_token_once() {
    let s = StandIn::start();
    let dir = Dir::new("enroll");
    let runtime = "runtime-token-5e0c9a1f";
    s.add_bootstrap_token("bootstrap-1", runtime);
    let mut a = args(&s, &dir, &["--enroll", "--once"]);
    a[2] = format!("--token-file={}", dir.token_file("bootstrap-1").display());
    let o = Command::new(env!("CARGO_BIN_EXE_pulse-agent"))
        .args(&a)
        .env_clear()
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(dir.state().join("runtime.token")).unwrap(),
        runtime
    );
    let r = &s.reports()[0];
    assert_eq!(
        r.headers.get("x-api-token").map(String::as_str),
        Some(runtime)
    );
    assert_eq!(s.enroll_requests()[0]["hostname"], "vm");
    // The next start uses the saved runtime token and does not enroll again.
    let o = Command::new(env!("CARGO_BIN_EXE_pulse-agent"))
        .args(&a)
        .env_clear()
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(s.enroll_requests().len(), 1);
}

#[test]
fn sigterm_stops_within_two_seconds_even_when_the_server_hangs() {
    let s = StandIn::start();
    let dir = Dir::new("sigterm");
    let mut agent = Agent::start(&dir, &args(&s, &dir, &[]));
    assert!(s.wait_for(Duration::from_secs(20), |r| !r.is_empty()));
    s.set_mode(Mode::Slow(Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(1500)); // a POST is now hanging
    let asked = Instant::now();
    agent.signal("TERM");
    let status = agent.wait_exit(Duration::from_secs(5)).expect("exited");
    let took = asked.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    assert_eq!(
        dir.spooled().len(),
        1,
        "the report in flight was kept:\n{}",
        agent.log()
    );

    // With a responsive server it stops at once.
    s.set_mode(Mode::Normal);
    let mut agent = Agent::start(&dir, &args(&s, &dir, &[]));
    assert!(s.wait_for(
        Duration::from_secs(20),
        |r| r.iter().filter(|x| x.accepted).count() >= 3
    ));
    let asked = Instant::now();
    agent.signal("INT");
    assert!(
        agent
            .wait_exit(Duration::from_secs(3))
            .expect("exited")
            .success()
    );
    assert!(asked.elapsed() < Duration::from_secs(2));
}

fn get(port: u16, path: &str) -> (u16, String) {
    let (status, _, body) = common::proc::ask(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        Duration::from_secs(5),
    );
    (status, body)
}

fn proc_status(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn health_listener_endpoints() {
    let (s, dir) = (StandIn::start(), Dir::new("health"));
    let (_agent, port) = with_listener(&s, &dir);
    assert_eq!(get(port, "/healthz"), (200, "ok".into()));
    let (st, body) = get(port, "/readyz");
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["modules"].as_array().unwrap().len(), 3);
    assert!(!body.contains(REPORT_TOKEN));
    let (_, status) = get(port, "/status");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&status).unwrap()["delivery"]["lastOk"],
        true
    );
    let (st, metrics) = get(port, "/metrics");
    assert_eq!(st, 200);
    for family in [
        "pulse_agent_info{",
        "pulse_agent_up 1",
        "pulse_agent_module_enabled{module=\"host\"} 1",
        "pulse_agent_module_ready{module=\"host\"} 1",
        "pulse_agent_destination_configured{",
        "pulse_agent_destination_delivery_up{destination=\"primary\",module=\"host\",role=\"primary\"} 1",
        "pulse_agent_collector_duration_seconds{collector=\"memory\"}",
        "pulse_agent_collector_success{collector=\"network\"} 1",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    let (st, report) = get(port, "/report");
    assert_eq!(st, 200);
    let doc: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(doc["host"]["hostname"], "vm");
    assert_eq!(get(port, "/nope").0, 404);
}

/// A client that sends an endless header is cut off with 431 before tiny_http
/// buffers it, and the agent's memory does not grow.
#[test]
fn answers_end_the_connection_as_they_say() {
    use std::io::{Read, Write};
    let (s, dir) = (StandIn::start(), Dir::new("close"));
    let (_agent, port) = with_listener(&s, &dir);
    // A keep-alive request (no `Connection: close`) and a HEAD: the answer
    // says `Connection: close` and the connection ends right after it.
    for req in [
        "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.write_all(req.as_bytes()).unwrap();
        let started = Instant::now();
        let mut got = Vec::new();
        c.read_to_end(&mut got).expect("closed, not timed out");
        assert!(started.elapsed() < Duration::from_secs(1), "{req:?}");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.to_lowercase().contains("connection: close"), "{text}");
    }
}

#[test]
fn endless_request_headers_are_refused() {
    use std::io::{Read, Write};
    let (s, dir) = (StandIn::start(), Dir::new("bighdr"));
    let (agent, port) = with_listener(&s, &dir);
    let rss_before = proc_status(agent.pid(), "VmRSS:");
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nX-A: ").unwrap();
    let chunk = vec![b'A'; 64 * 1024];
    let mut sent = 0;
    while sent < 8 * 1024 * 1024 && c.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{answer:?} after {sent} bytes"
    );
    let rss_after = proc_status(agent.pid(), "VmRSS:");
    assert!(
        rss_after < rss_before + 4096,
        "RSS {rss_before} → {rss_after} kB"
    );
    assert_eq!(get(port, "/healthz"), (200, "ok".into()), "still serving");
}

/// 500 idle connections to the listener while it is scraped: reports keep
/// coming every interval, scrapes are answered, threads and memory stay bounded.
#[test]
fn five_hundred_idle_connections_change_nothing() {
    let (s, dir) = (StandIn::start(), Dir::new("flood"));
    let (agent, port) = with_listener(&s, &dir);
    let threads_before = proc_status(agent.pid(), "Threads:");
    let idle: Vec<std::net::TcpStream> = (0..500)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let n0 = s.reports().len();
    let started = Instant::now();
    let mut scrapes = 0;
    while started.elapsed() < Duration::from_secs(5) {
        let (st, _) = get(port, "/metrics");
        assert_eq!(st, 200, "scrapes are answered during the flood");
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let threads = proc_status(agent.pid(), "Threads:");
    let rss_kb = proc_status(agent.pid(), "VmHWM:");
    let during = s.reports().len() - n0;
    assert!(during >= 4, "reports kept flowing: {during} in 5 s");
    assert!(
        threads <= threads_before + 4,
        "threads {threads_before} → {threads}"
    );
    assert!(rss_kb < 32 * 1024, "peak RSS {rss_kb} kB");
    eprintln!(
        "flood: {scrapes} scrapes answered, {during} reports, threads {threads_before} → {threads}, peak RSS {rss_kb} kB"
    );
    drop(idle);
}

#[test]
fn a_hung_smartctl_holds_only_the_first_report_and_only_for_its_wait() {
    let s = StandIn::start();
    let dir = Dir::new("hungsmart");
    let fake = dir.0.join("smartctl-answers");
    std::fs::create_dir_all(&fake).unwrap();
    let bare = common::fake_smartctl("debian12-vm");
    std::os::unix::fs::symlink(&bare, fake.join("smartctl")).unwrap();
    std::fs::write(fake.join("scan.hang"), "").unwrap();
    let started = Instant::now();
    let smartctl = format!("--smartctl={}", fake.join("smartctl").display());
    let _agent = Agent::start(&dir, &args(&s, &dir, &[&smartctl]));
    let wait = pulse_agent::agent::SMART_WAIT;
    assert!(s.wait_for(wait + Duration::from_secs(10), |r| r.len() >= 4));
    let reports = s.reports();
    let first = (reports[0].at - started).as_secs_f64();
    assert!(
        first < wait.as_secs_f64() + 2.0,
        "the first report waited for SMART at most {wait:?}: {first:.1} s"
    );
    // Later reports never wait for the hung refresh.
    for pair in reports.windows(2) {
        let gap = (pair[1].at - pair[0].at).as_secs_f64();
        assert!(gap < 1.6, "reports {gap:.2} s apart");
    }
    assert!(reports.iter().all(|r| r.accepted));
}

/// mdadm, zpool, zfs and nvidia-smi all hang: the first report waits the
/// hardware wait at most, and later reports come every interval (the hung
/// workers are not waited for again).
#[test]
fn hung_hardware_programs_hold_only_the_first_report() {
    let s = StandIn::start();
    let dir = Dir::new("hunghw");
    let root = dir.0.join("root");
    common::hung_tools_root(&root);
    let started = Instant::now();
    let mut a = args(&s, &dir, &[]);
    a[0] = format!("--root={}", root.display());
    let _agent = Agent::start(&dir, &a);
    let wait = pulse_agent::hardware::WAIT;
    assert!(s.wait_for(wait + Duration::from_secs(12), |r| r.len() >= 6));
    let reports = s.reports();
    let first = (reports[0].at - started).as_secs_f64();
    assert!(
        first < wait.as_secs_f64() + 2.0,
        "the first report waited at most {wait:?}: {first:.1} s"
    );
    for pair in reports.windows(2) {
        let gap = (pair[1].at - pair[0].at).as_secs_f64();
        assert!(gap < 1.6, "reports {gap:.2} s apart");
    }
    assert!(reports.iter().all(|r| r.accepted));
}

/// `--once` without `--cacert`, with only these environment variables.
fn once_with_env(s: &StandIn, dir: &Dir, env: &[(&str, &std::path::Path)]) -> std::process::Output {
    let mut a = args(s, dir, &["--once"]);
    a.retain(|x| !x.starts_with("--cacert"));
    Command::new(env!("CARGO_BIN_EXE_pulse-agent"))
        .args(&a)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Issue 12: a private CA installed system-wide is trusted without
/// `--cacert`. The store is found as Go's crypto/x509 finds it, so the test
/// points `SSL_CERT_FILE` and `SSL_CERT_DIR` at its own, never the machine's.
#[test]
fn the_system_ca_store_is_not_ignored() {
    let s = StandIn::start();
    let dir = Dir::new("sysca");
    let empty = dir.0.join("no-certs");
    std::fs::create_dir(&empty).unwrap();
    // A bundle as distributions make them, with an entry nobody can use and
    // another CA before the one that signed the server.
    let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let other = common::standin::Pki::new("other");
    let bundle = dir.0.join("ca-certificates.crt");
    std::fs::write(&bundle, format!("{broken}{}{}", other.ca_pem, s.pki.ca_pem)).unwrap();
    let o = once_with_env(
        &s,
        &dir,
        &[("SSL_CERT_FILE", &bundle), ("SSL_CERT_DIR", &empty)],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The same CA as one file in a certificate directory.
    let certs = dir.0.join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(certs.join("private-ca.pem"), &s.pki.ca_pem).unwrap();
    let o = once_with_env(
        &s,
        &dir,
        &[
            ("SSL_CERT_FILE", &dir.0.join("missing")),
            ("SSL_CERT_DIR", &certs),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(s.accepted_sequence().len(), 2);
}

/// The other half of issue 12: the system store is what made the difference.
#[test]
fn without_the_private_ca_in_the_system_store_the_server_is_refused() {
    let s = StandIn::start();
    let dir = Dir::new("nosysca");
    let empty = dir.0.join("no-certs");
    std::fs::create_dir(&empty).unwrap();
    let other = common::standin::Pki::new("other");
    let bundle = dir.0.join("ca-certificates.crt");
    std::fs::write(&bundle, &other.ca_pem).unwrap();
    for file in [dir.0.join("missing"), bundle] {
        let o = once_with_env(
            &s,
            &dir,
            &[("SSL_CERT_FILE", &file), ("SSL_CERT_DIR", &empty)],
        );
        assert_eq!(o.status.code(), Some(1), "{}", file.display());
        let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
        assert!(err.contains("certificate"), "{err}");
    }
    assert!(s.reports().is_empty());
}

/// A spool left with a file named `u64::MAX` (and names past it): the debug
/// build panicked with an integer overflow while scanning. Now the reports
/// are renumbered in order and the files that are not spool files stay.
#[test]
fn a_spool_file_with_a_huge_sequence_number_does_not_crash_the_agent() {
    let s = StandIn::start();
    let dir = Dir::new("hugeid");
    let spool = dir.state().join("spool");
    common::copy_tree(&common::fixtures_dir().join("spool/huge-ids"), &spool);
    s.set_mode(Mode::Status(503));
    let o = once(&s, &dir, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "not delivered, not a panic:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("ignoring 3 file(s)") && err.contains("99999999999999999999999.json"),
        "{err}"
    );
    let body = |id: u64| std::fs::read_to_string(spool.join(format!("{id:020}.json"))).unwrap();
    assert!(body(1).contains("fixture:1"));
    assert!(body(2).contains("fixture:7"));
    assert!(body(3).contains("fixture:max"), "renumbered in order");
    assert!(body(4).contains("\"hostname\""), "then this run's report");
    let mut names = dir.spooled();
    names.sort();
    assert_eq!(
        names,
        [
            "00000000000000000001.json",
            "00000000000000000002.json",
            "00000000000000000003.json",
            "00000000000000000004.json",
            "18446744073709551616.json",
            "5.json",
            "99999999999999999999999.json",
        ],
        "files the agent did not write are left alone"
    );
}

/// The service and a manual `--once` on one state directory overwrote each
/// other's spool files. Now the first holds a lock: a second service exits 1
/// at once naming its PID, and `--once` waits up to 10 s for it.
#[test]
fn two_agents_on_one_state_dir_the_second_exits_naming_the_first() {
    let s = StandIn::start();
    let dir = Dir::new("lock");
    let first = Agent::start(&dir, &args(&s, &dir, &[]));
    assert!(s.wait_for(Duration::from_secs(20), |r| !r.is_empty()));
    let pid = first.pid();
    let busy = |err: &str| {
        err.lines().last().is_some_and(|l| {
            l.starts_with("pulse-agent: error: the state directory")
                && l.contains(&format!("is in use by another pulse-agent (PID {pid})"))
        })
    };

    // A second service: exit 1 at once.
    let mut second = Agent::start(&dir, &args(&s, &dir, &[]));
    let status = second
        .wait_exit(Duration::from_secs(5))
        .expect("the second service exits");
    assert_eq!(status.code(), Some(1), "{}", second.log());
    assert!(busy(&second.log()), "{}", second.log());
    let lock = std::fs::read_to_string(dir.state().join("lock")).unwrap();
    assert_eq!(lock, "", "taking the lock writes nothing");

    // --once waits for the lock, then gives up with the same message.
    let started = Instant::now();
    let o = once(&s, &dir, &[]);
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(busy(&err) && err.contains("waited 10 s"), "{err}");
    assert!(
        took >= pulse_agent::agent::ONCE_LOCK_WAIT - Duration::from_millis(200)
            && took < pulse_agent::agent::ONCE_LOCK_WAIT + Duration::from_secs(5),
        "{took:?}"
    );

    // --once started while the service runs goes ahead once it has stopped.
    let mut a = args(&s, &dir, &[]);
    a.push("--once".into());
    let mut waiting = Agent::start(&dir, &a);
    // Stop the service only once the --once run has met its lock.
    let asked = Instant::now();
    while !waiting.log().contains("waiting up to 10 s") && asked.elapsed() < Duration::from_secs(8)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        waiting.log().contains("waiting up to 10 s"),
        "{}",
        waiting.log()
    );
    assert!(waiting.child.try_wait().unwrap().is_none(), "still waiting");
    first.signal("TERM");
    let status = waiting
        .wait_exit(Duration::from_secs(15))
        .expect("--once finished");
    assert!(status.success(), "{}", waiting.log());
    assert!(dir.spooled().is_empty(), "{:?}", dir.spooled());
    let got = s.accepted_sequence();
    assert_eq!(
        got.last().map(|(_, n)| *n),
        Some(1),
        "the --once report arrived last, as its own stream: {got:?}"
    );
}

/// SIGHUP killed the daemon (the default action). Now it reopens the log
/// file (logrotate renamed the old one) and re-reads the token file.
#[test]
fn sighup_reopens_the_log_file_and_rereads_the_token_instead_of_killing_the_agent() {
    let s = StandIn::start();
    let dir = Dir::new("sighup");
    let new_token = "feedfacefeedfacefeedfacefeedfacefeedfacefeedfacefeedfacefeedface";
    s.add_token(new_token, &["agent:report", "agent:config:read"]);
    let log = dir.0.join("agent.log");
    let mut agent = Agent::start(
        &dir,
        &args(&s, &dir, &[&format!("--log-file={}", log.display())]),
    );
    assert!(s.wait_for(Duration::from_secs(20), |r| r.len() >= 2));
    let rotated = dir.0.join("agent.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    dir.token_file(new_token);
    agent.signal("HUP");
    let new_token_seen = |r: &[common::standin::Received]| {
        r.iter()
            .any(|x| x.headers.get("x-api-token").map(String::as_str) == Some(new_token))
    };
    assert!(
        s.wait_for(Duration::from_secs(10), new_token_seen),
        "the next report carries the new token; log:\n{}",
        agent.log()
    );
    assert!(agent.child.try_wait().unwrap().is_none(), "still running");
    assert!(
        s.reports().iter().all(|r| r.status == 200),
        "every report taken"
    );
    let after = std::fs::read_to_string(&log).expect("a new log file");
    assert!(
        after.contains("SIGHUP: reopened the log file")
            && after.contains("re-read the token file")
            && after.contains("a new token"),
        "{after}"
    );
    assert!(!after.contains(new_token) && !agent.log().contains(new_token));
    let before = std::fs::read_to_string(&rotated).unwrap();
    assert!(!before.contains("SIGHUP"), "{before}");
    // An emptied token file is no token: the one in use is kept.
    std::fs::write(dir.0.join("token"), "").unwrap();
    agent.signal("HUP");
    let n = s.reports().len();
    assert!(s.wait_for(Duration::from_secs(10), |r| r.len() >= n + 2));
    assert!(agent.child.try_wait().unwrap().is_none(), "still running");
    let last = s.reports().last().unwrap().clone();
    assert_eq!(last.status, 200);
    assert_eq!(
        last.headers.get("x-api-token").map(String::as_str),
        Some(new_token)
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("token: empty; keeping the token in use"),
        "{}",
        agent.log()
    );
    agent.signal("TERM");
    assert!(agent.wait_exit(Duration::from_secs(5)).unwrap().success());
    let after = std::fs::read_to_string(&log).unwrap();
    assert!(
        after.contains("stopped"),
        "later lines go to the new file:\n{after}"
    );
}

/// "spool full, dropped the oldest" was logged every cycle. Now the change
/// is logged (dropping starts, there is room again) and the drops are
/// counted in /status and /metrics.
#[test]
fn a_full_spool_logs_dropping_once_and_counts_the_drops() {
    let s = StandIn::start();
    let dir = Dir::new("spoolfull");
    let port = free_port();
    let mut a = args(&s, &dir, &["--spool-reports=2"]);
    a.retain(|x| x != "--health-addr=");
    a.push(format!("--health-addr=127.0.0.1:{port}"));
    s.go_down();
    let agent = Agent::start(&dir, &a);
    let dropped = || -> u64 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            return 0; // not listening yet
        }
        let (_, status) = get(port, "/status");
        serde_json::from_str::<serde_json::Value>(&status)
            .ok()
            .and_then(|v| v["delivery"]["spoolDropped"].as_u64())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while dropped() < 4 {
        assert!(Instant::now() < deadline, "log:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, metrics) = get(port, "/metrics");
    let counted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pulse_agent_spool_dropped_total{module=\"host\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no spool counter:\n{metrics}"));
    assert!(counted >= 4, "{counted}");
    assert!(metrics.contains("# TYPE pulse_agent_spool_dropped_total counter"));
    assert_eq!(dir.spooled().len(), 2);
    let log = agent.log();
    assert_eq!(log.matches("spool: full").count(), 1, "{log}");
    s.come_up();
    assert!(
        s.wait_for(Duration::from_secs(10), |_| dir.spooled().is_empty()),
        "{:?}",
        dir.spooled()
    );
    assert!(s.wait_for(Duration::from_secs(10), |r| r.len() >= 3));
    let log = agent.log();
    assert_eq!(log.matches("spool: full").count(), 1, "{log}");
    assert_eq!(log.matches("spool: has room again").count(), 1, "{log}");
}

/// The agent as systemd runs it (`Type=notify`, `WatchdogSec=`): every
/// datagram it sends to `NOTIFY_SOCKET`, with when it arrived.
struct Notified {
    agent: std::process::Child,
    got: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
    _dir: Dir,
}

impl Notified {
    fn start(name: &str, args: &[String], watchdog: Duration) -> Notified {
        use std::os::unix::net::UnixDatagram;
        let dir = Dir::new(name);
        let path = dir.0.join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                into.lock().unwrap().push((Instant::now(), msg));
            }
        });
        let agent = Command::new(env!("CARGO_BIN_EXE_pulse-agent"))
            .args(args)
            .env_clear()
            .env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("agent.log")).unwrap())
            .spawn()
            .unwrap();
        Notified {
            agent,
            got,
            _dir: dir,
        }
    }

    fn got(&self) -> Vec<(Instant, String)> {
        self.got.lock().unwrap().clone()
    }

    /// The longest time between two watchdog pings from the first one on.
    fn longest_silence(&self) -> Duration {
        let pings: Vec<Instant> = self
            .got()
            .into_iter()
            .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
            .map(|(at, _)| at)
            .collect();
        let mut longest = pings.windows(2).map(|w| w[1] - w[0]).max();
        if let Some(last) = pings.last() {
            longest = longest.max(Some(last.elapsed()));
        }
        longest.unwrap_or(Duration::MAX)
    }
}

impl Drop for Notified {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

/// The watchdog was fed only between cycles, so a cycle that flushed a long
/// spool to a slow (but answering) server looked like a hang: with
/// `WatchdogSec=` shorter than the flush, systemd would kill a healthy
/// agent in the middle of catching up. Every request now feeds it.
#[test]
fn a_long_spool_flush_to_a_slow_server_keeps_feeding_the_watchdog() {
    let s = StandIn::start();
    s.set_mode(Mode::Status(503));
    let state = Dir::new("flush-watchdog");
    let a = args(&s, &state, &[]);
    let watchdog = Duration::from_secs(3);
    let n = Notified::start("flush-watchdog-notify", &a, watchdog);
    assert!(
        s.wait_for(Duration::from_secs(20), |_| state.spooled().len() >= 8),
        "reports spooled during the outage"
    );
    // 9 and more reports at 0.7 s each: one cycle of 6 s and more, twice
    // WatchdogSec=, every request well inside it.
    let from = Instant::now();
    s.set_mode(Mode::Slow(Duration::from_millis(700)));
    assert!(
        s.wait_for(Duration::from_secs(30), |_| state.spooled().is_empty()),
        "the spool drained"
    );
    let flushed_in = from.elapsed();
    assert!(flushed_in > watchdog * 2, "flushed in {flushed_in:?}");
    let silence = n.longest_silence();
    assert!(
        silence < watchdog,
        "{silence:?} without WATCHDOG=1 (WatchdogSec=3s): {:?}",
        n.got()
    );
    let ready = n
        .got()
        .iter()
        .filter(|(_, m)| m.contains("READY=1"))
        .count();
    assert_eq!(ready, 1, "{:?}", n.got());
}

/// With `--enroll`, READY=1 came only after the first cycle, which waits
/// for enrollment: a server that was not up yet held `systemctl start`
/// until TimeoutStartSec= killed the agent (and Restart= hammered the
/// server again), and the watchdog was not fed while it waited. Now the
/// agent says READY=1 with why it waits, and feeds the watchdog.
#[test]
fn enrollment_waiting_for_the_server_is_ready_and_feeds_the_watchdog() {
    let s = StandIn::start();
    s.add_bootstrap_token("bootstrap-2", "runtime-token-77");
    s.set_mode(Mode::Status(503));
    let state = Dir::new("enroll-watchdog");
    let mut a = args(&s, &state, &["--enroll"]);
    a[2] = format!("--token-file={}", state.token_file("bootstrap-2").display());
    let watchdog = Duration::from_secs(2);
    let n = Notified::start("enroll-watchdog-notify", &a, watchdog);
    // The first attempt fails; the retry is 5 s later.
    std::thread::sleep(Duration::from_secs(4));
    let got = n.got();
    let first = got.first().map(|g| g.1.as_str()).unwrap_or("");
    assert!(
        first.starts_with("READY=1\nWATCHDOG=1\nSTATUS=waiting to enroll with the server: "),
        "{got:?}"
    );
    let silence = n.longest_silence();
    assert!(
        silence < watchdog,
        "{silence:?} without WATCHDOG=1: {got:?}"
    );
    // Once the server is there, the agent enrolls and reports; still one READY=1.
    s.set_mode(Mode::Normal);
    assert!(
        s.wait_for(Duration::from_secs(20), |r| r.iter().any(|x| x.accepted)),
        "reports after enrollment"
    );
    assert!(state.state().join("runtime.token").exists());
    let ready = n
        .got()
        .iter()
        .filter(|(_, m)| m.contains("READY=1"))
        .count();
    assert_eq!(ready, 1, "{:?}", n.got());
    assert!(n.longest_silence() < watchdog, "{:?}", n.got());
}

/// The Proxmox node of the pve-ceph case, reporting through `s`, with the
/// server's settings `settings` and the command line's `extra`: the
/// reports' `ceph` sections and `ceph` module.
fn ceph_reports(name: &str, settings: Value, extra: &[&str]) -> Vec<(bool, Value)> {
    let s = StandIn::start();
    let dir = Dir::new(name);
    let root = dir.0.join("root");
    common::copy_case("pve-ceph", &root);
    let mut a = args(&s, &dir, extra);
    a[0] = format!("--root={}", root.display());
    // The host is known to the server, with a profile.
    let mut seed = a.clone();
    seed.push("--once".into());
    let o = Command::new(env!("CARGO_BIN_EXE_pulse-agent"))
        .args(&seed)
        .env_clear()
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    s.set_settings(Some(settings));
    let _agent = Agent::start(&dir, &a);
    assert!(s.wait_for(Duration::from_secs(20), |r| r.len() >= 4));
    s.reports()[1..]
        .iter()
        .map(|r| {
            let doc = r.doc.clone().unwrap();
            let module = doc["agent"]["modules"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == "ceph")
                .cloned()
                .unwrap_or(Value::Null);
            (doc.get("ceph").is_some(), module)
        })
        .collect()
}

#[test]
fn remote_disable_ceph_switches_ceph_off() {
    let reports = ceph_reports("ceph-off", json!({"disable_ceph": true}), &[]);
    for (has_ceph, module) in reports {
        assert!(
            !has_ceph,
            "no ceph section once the server says disable_ceph"
        );
        assert_eq!(module["enabled"], false);
        assert_eq!(module["state"], "disabled");
    }
}

#[test]
fn remote_disable_ceph_false_overrides_the_flag() {
    let reports = ceph_reports(
        "ceph-on",
        json!({"disable_ceph": false}),
        &["--disable-ceph"],
    );
    for (has_ceph, module) in reports {
        assert!(
            has_ceph,
            "the server's disable_ceph: false switches Ceph on"
        );
        assert_eq!(module["state"], "running");
    }
}

/// A platform source that fails shows in its module on `/status` and
/// `/metrics`, and does not make `/readyz` fail (it is optional, like the
/// cluster sensors).
#[test]
fn a_failing_platform_source_shows_in_status_and_metrics_but_keeps_the_agent_ready() {
    let (s, dir) = (StandIn::start(), Dir::new("platform-ready"));
    let root = dir.0.join("root");
    common::copy_case("pve-ceph", &root);
    std::fs::remove_file(root.join(".capture/cmd/pct list")).unwrap();
    std::fs::write(root.join(".capture/cmd/pct list.exit"), "2").unwrap();
    std::fs::write(
        root.join(".capture/cmd/pct list.stderr"),
        "ipcc_send_rec[1] failed: Connection refused\n",
    )
    .unwrap();
    let port = free_port();
    let mut a = args(&s, &dir, &[]);
    a[0] = format!("--root={}", root.display());
    a.retain(|x| x != "--health-addr=");
    a.push(format!("--health-addr=127.0.0.1:{port}"));
    let _agent = Agent::start(&dir, &a);
    assert!(s.wait_for(Duration::from_secs(20), |r| r.len() >= 2));

    let (st, body) = get(port, "/readyz");
    assert_eq!(st, 200, "{body}");
    let (_, status) = get(port, "/status");
    let v: Value = serde_json::from_str(&status).unwrap();
    let module = |name: &str| {
        v["modules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} module: {status}"))
    };
    let pct = module("proxmox-lxc-filesystems");
    assert_eq!(pct["state"], "retrying");
    assert!(
        pct["lastError"]
            .as_str()
            .unwrap()
            .contains("Connection refused")
    );
    assert_eq!(module("ceph")["state"], "running");
    let (_, metrics) = get(port, "/metrics");
    for line in [
        "pulse_agent_module_enabled{module=\"ceph\"} 1",
        "pulse_agent_module_ready{module=\"ceph\"} 1",
        "pulse_agent_module_ready{module=\"proxmox-lxc-filesystems\"} 0",
        "pulse_agent_collector_success{collector=\"ceph\"} 1",
        "pulse_agent_collector_success{collector=\"proxmox-lxc-filesystems\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    let doc = s.reports().last().unwrap().doc.clone().unwrap();
    assert!(doc.get("ceph").is_some() && doc.get("proxmoxLxc").is_none());
}
