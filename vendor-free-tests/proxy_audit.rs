//! The proxy's audit log (`pulse_agent::proxy::audit`, spec §5): lines
//! written through `Audit` verify; a removed, changed, reordered or truncated
//! line is found at the right line; a log in the stock proxy's format
//! (`proxy_audit/stock.log`) verifies; `audit verify` exit codes.

use pulse_agent::proxy::Peer;
use pulse_agent::proxy::audit::{Audit, Event, Verified, VerifyError, verify, verify_command};
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pulse-audit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const PEER: Peer = Peer {
    pid: 4242,
    uid: 100_000,
    gid: 100_000,
};

/// One connection's worth of events, with strings Go and serde_json escape
/// differently (`<`, `>`, `&`, U+2028) and control characters.
fn session(audit: &Audit) {
    audit.log(Event {
        event_type: "connection.accepted",
        peer: Some(PEER),
        decision: "allowed",
        ..Event::default()
    });
    audit.log(Event {
        event_type: "command.start",
        correlation_id: "3f2c0f6e-5b1a-4c4e-9a51-0d7e0d1c2b3a".into(),
        peer: Some(PEER),
        command: "get_temperature".into(),
        args: "node=<pve2> & \u{2028}".into(),
        decision: "allowed",
        ..Event::default()
    });
    audit.log(Event {
        event_type: "command.finish",
        correlation_id: "3f2c0f6e-5b1a-4c4e-9a51-0d7e0d1c2b3a".into(),
        peer: Some(PEER),
        command: "get_temperature".into(),
        decision: "failed",
        exit_code: Some(1),
        duration_ms: Some(1377),
        error: "ssh <pve2> & \"x\"\n\t\u{1}\u{8}\u{c}\u{7f}é".into(),
        ..Event::default()
    });
    audit.log(Event {
        event_type: "http_request",
        remote_addr: "192.0.2.7:51234".into(),
        command: "GET".into(),
        target: "/temps?a&b".into(),
        exit_code: Some(0),
        reason: "temperature_success".into(),
        ..Event::default()
    });
}

fn written(audit: impl FnOnce(&Audit)) -> String {
    let buf = Shared::default();
    let a = Audit::to_writer(Box::new(buf.clone()));
    audit(&a);
    assert!(!a.is_file());
    String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
}

fn check(log: &str) -> Result<Verified, VerifyError> {
    verify(log.as_bytes())
}

/// Two runs of four events each.
fn two_runs() -> String {
    written(session) + &written(session)
}

fn lines(log: &str) -> Vec<String> {
    log.lines().map(|l| format!("{l}\n")).collect()
}

fn stock_log() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor-free-tests/proxy_audit/stock.log");
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn log_written_through_a_writer_verifies() {
    let log = written(session);
    assert_eq!(
        check(&log),
        Ok(Verified {
            lines: 4,
            chains: 1
        })
    );
    assert_eq!(
        check(&two_runs()),
        Ok(Verified {
            lines: 8,
            chains: 2
        })
    );
}

#[test]
fn lines_have_the_stock_shape() {
    let log = written(session);
    let mut prev = String::new();
    for (i, line) in log.lines().enumerate() {
        assert!(line.starts_with("{\"level\":\"info\","), "{line}");
        let v: Value = serde_json::from_str(line).unwrap();
        let o = v.as_object().unwrap();
        // zerolog's order: level, the fields sorted, time.
        let keys: Vec<&str> = line_keys(line);
        assert_eq!(keys.first(), Some(&"level"));
        assert_eq!(keys.last(), Some(&"time"));
        let mid = &keys[1..keys.len() - 1];
        assert!(
            mid.windows(2).all(|w| w[0] < w[1]),
            "keys not sorted: {keys:?}"
        );
        for always in [
            "ts",
            "event_type",
            "seq",
            "prev_hash",
            "event_hash",
            "decision",
            "correlation_id",
        ] {
            assert!(
                o.contains_key(always),
                "line {i}: {always} missing in {line}"
            );
        }
        assert_eq!(o["seq"], Value::from(i as u64 + 1));
        assert!(o["time"].is_u64());
        assert_eq!(o["prev_hash"].as_str().unwrap(), prev);
        let hash = o["event_hash"].as_str().unwrap();
        assert_eq!(hash.len(), 64);
        assert!(
            hash.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        prev = hash.to_string();
        let ts = o["ts"].as_str().unwrap();
        assert!(
            ts.ends_with('Z') && ts.len() >= 20 && &ts[10..11] == "T",
            "{ts}"
        );
    }
    let v: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(v[0]["peer_uid"], 100_000);
    assert_eq!(v[0]["peer_pid"], 4242);
    assert!(v[0].get("remote_addr").is_none() && v[0].get("reason").is_none());
    assert_eq!(v[1]["args"], serde_json::json!(["node=<pve2> & \u{2028}"]));
    assert_eq!(v[2]["exit_code"], 1);
    assert_eq!(v[2]["duration_ms"], 1377);
    assert_eq!(v[3]["exit_code"], 0, "exit_code 0 is written, not omitted");
    assert_eq!(v[3]["decision"], "");
    assert!(v[3].get("peer_uid").is_none());
}

/// The top-level keys of a flat JSON line, in order.
fn line_keys(line: &str) -> Vec<&str> {
    let v: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
    let mut keys: Vec<(usize, &str)> = v
        .keys()
        .map(|k| {
            let at = line.find(&format!("\"{k}\":")).unwrap();
            (at, &line[at + 1..at + 1 + k.len()])
        })
        .collect();
    keys.sort();
    keys.into_iter().map(|(_, k)| k).collect()
}

#[test]
fn open_creates_the_file_mode_0640_and_appends_one_run_per_instance() {
    let dir = temp_dir("open");
    let path = dir.join("audit.log");
    let first = Audit::open(&path);
    assert!(first.is_file());
    session(&first);
    drop(first);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        mode, 0o640,
        "mode {mode:o} (test umask must not be stricter than 022)"
    );
    // A restart: a second instance appends a second run after the first.
    let second = Audit::open(&path);
    session(&second);
    second.log(Event {
        event_type: "connection.denied",
        decision: "denied",
        ..Event::default()
    });
    let log = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        check(&log),
        Ok(Verified {
            lines: 9,
            chains: 2
        })
    );
    assert_eq!(verify_command(&path), ExitCode::SUCCESS);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn open_falls_back_to_stderr_when_the_directory_is_missing() {
    let dir = temp_dir("missing");
    let a = Audit::open(&dir.join("no-such-dir/audit.log"));
    assert!(!a.is_file());
    a.log(Event {
        event_type: "connection.accepted",
        ..Event::default()
    });
    assert!(
        !dir.join("no-such-dir").exists(),
        "the directory is not created"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn write_errors_do_not_panic_and_the_lost_event_shows_as_a_gap() {
    struct Flaky(Shared, Arc<Mutex<bool>>);
    impl Write for Flaky {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if *self.1.lock().unwrap() {
                return Err(std::io::Error::other("disk full"));
            }
            self.0.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Shared::default();
    let fail = Arc::new(Mutex::new(false));
    let a = Audit::to_writer(Box::new(Flaky(buf.clone(), fail.clone())));
    let ev = || Event {
        event_type: "connection.accepted",
        decision: "allowed",
        ..Event::default()
    };
    a.log(ev());
    *fail.lock().unwrap() = true;
    a.log(ev());
    a.log(ev());
    *fail.lock().unwrap() = false;
    a.log(ev());
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert_eq!(
        check(&log),
        Err(VerifyError::SeqGap {
            line: 2,
            expected: 2,
            found: 4
        })
    );
}

#[test]
fn audit_is_shared_between_threads() {
    let buf = Shared::default();
    let a = Arc::new(Audit::to_writer(Box::new(buf.clone())));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let a = a.clone();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    a.log(Event {
                        event_type: "connection.accepted",
                        ..Event::default()
                    });
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert_eq!(
        check(&log),
        Ok(Verified {
            lines: 100,
            chains: 1
        })
    );
}

#[test]
fn a_removed_line_is_found_where_the_chain_breaks() {
    let l = lines(&two_runs());
    // Middle of a run: a seq gap.
    let mut cut = l.clone();
    cut.remove(2);
    assert_eq!(
        check(&cut.concat()),
        Err(VerifyError::SeqGap {
            line: 3,
            expected: 3,
            found: 4
        })
    );
    // The first line of the file.
    assert_eq!(
        check(&l[1..].concat()),
        Err(VerifyError::SeqGap {
            line: 1,
            expected: 1,
            found: 2
        })
    );
    // The first line of the second run: seq 2 follows seq 4.
    let mut cut = l.clone();
    cut.remove(4);
    assert_eq!(
        check(&cut.concat()),
        Err(VerifyError::SeqGap {
            line: 5,
            expected: 5,
            found: 2
        })
    );
}

#[test]
fn a_removed_first_line_of_a_run_after_a_one_event_run_is_a_prev_hash_mismatch() {
    // Run 1 has one event, so run 2's seq 2 is what run 1 expects next: only
    // the hash chain shows that run 2's first line is gone.
    let one = written(|a| {
        a.log(Event {
            event_type: "connection.accepted",
            ..Event::default()
        })
    });
    let l = lines(&written(session));
    let log = one + &l[1..].concat();
    assert_eq!(check(&log), Err(VerifyError::PrevHashMismatch { line: 2 }));
}

#[test]
fn a_changed_line_is_a_hash_mismatch_on_that_line() {
    let l = lines(&two_runs());
    for (i, from, to) in [
        (2, "\"exit_code\":1", "\"exit_code\":0"),
        (5, "100000", "100001"),
        (7, "temperature_success", "temperature_failure"),
        (0, "\"decision\":\"allowed\"", "\"decision\":\"\""),
    ] {
        let mut changed = l.clone();
        assert!(changed[i].contains(from), "{from} not in line {i}");
        changed[i] = changed[i].replacen(from, to, 1);
        assert_eq!(
            check(&changed.concat()),
            Err(VerifyError::HashMismatch { line: i as u64 + 1 })
        );
    }
    // A field the hash does not cover cannot be slipped in.
    let mut added = l.clone();
    added[3] = added[3].replacen(
        "{\"level\":\"info\",",
        "{\"level\":\"info\",\"note\":\"hi\",",
        1,
    );
    let err = check(&added.concat()).unwrap_err();
    assert_eq!(
        err,
        VerifyError::UnknownField {
            line: 4,
            field: "note".into()
        }
    );
    // Nor can an optional field be dropped.
    let mut dropped = l.clone();
    dropped[2] = dropped[2].replacen("\"duration_ms\":1377,", "", 1);
    assert_eq!(
        check(&dropped.concat()),
        Err(VerifyError::HashMismatch { line: 3 })
    );
}

#[test]
fn reordered_lines_are_found_at_the_first_moved_line() {
    let mut l = lines(&two_runs());
    l.swap(5, 6);
    assert_eq!(
        check(&l.concat()),
        Err(VerifyError::SeqGap {
            line: 6,
            expected: 2,
            found: 3
        })
    );
    // Whole runs swapped still verify: each run is intact on its own.
    let l = lines(&two_runs());
    let swapped = l[4..].concat() + &l[..4].concat();
    assert_eq!(
        check(&swapped),
        Ok(Verified {
            lines: 8,
            chains: 2
        })
    );
}

#[test]
fn a_truncated_last_line_is_reported_as_truncated() {
    let log = two_runs();
    let cut = &log[..log.len() - 20];
    let err = check(cut).unwrap_err();
    assert_eq!(err, VerifyError::Truncated { line: 8 });
    assert!(
        err.to_string().contains("line 8") && err.to_string().contains("truncated"),
        "{err}"
    );
    // Only the newline lost: the event is whole and verifies.
    assert_eq!(
        check(&log[..log.len() - 1]),
        Ok(Verified {
            lines: 8,
            chains: 2
        })
    );
}

#[test]
fn bad_json_and_missing_fields_name_the_line() {
    let l = lines(&two_runs());
    let mut bad = l.clone();
    bad.insert(3, "not json\n".into());
    assert!(matches!(
        check(&bad.concat()),
        Err(VerifyError::NotJson { line: 4, .. })
    ));
    let mut blank = l.clone();
    blank.insert(1, "\n".into());
    assert!(matches!(
        check(&blank.concat()),
        Err(VerifyError::NotJson { line: 2, .. })
    ));
    let mut arr = l.clone();
    arr[0] = "[1]\n".into();
    assert!(matches!(
        check(&arr.concat()),
        Err(VerifyError::NotJson { line: 1, .. })
    ));
    let mut missing = l.clone();
    missing[1] = missing[1].replacen("\"correlation_id\":", "\"correlation\":", 1);
    assert_eq!(
        check(&missing.concat()),
        Err(VerifyError::UnknownField {
            line: 2,
            field: "correlation".into()
        })
    );
    let mut missing = l.clone();
    missing[1] = missing[1].replacen(
        ",\"correlation_id\":\"3f2c0f6e-5b1a-4c4e-9a51-0d7e0d1c2b3a\"",
        "",
        1,
    );
    assert_eq!(
        check(&missing.concat()),
        Err(VerifyError::MissingField {
            line: 2,
            field: "correlation_id"
        })
    );
    let mut typed = l.clone();
    typed[0] = typed[0].replacen("\"seq\":1", "\"seq\":1.0", 1);
    assert_eq!(
        check(&typed.concat()),
        Err(VerifyError::BadField {
            line: 1,
            field: "seq".into()
        })
    );
    assert_eq!(
        check(""),
        Ok(Verified {
            lines: 0,
            chains: 0
        })
    );
}

/// `proxy_audit/stock.log` was made by `proxy_audit/make_stock_sample.py`
/// (`python3 make_stock_sample.py > stock.log`): Python's json and hashlib
/// following the stock `audit.go` (cf52b5f51), independent of our code. It
/// holds two runs, strings with `<`, `>`, `&`, `"`, control characters and
/// U+2028 (Go escapes the first three and U+2028 in the hash input, zerolog
/// does not on disk), `args` and `stdout_sha256`, which the stock proxy
/// defines but never fills.
#[test]
fn a_log_in_the_stock_format_verifies() {
    let log = stock_log();
    assert_eq!(
        check(&log),
        Ok(Verified {
            lines: 8,
            chains: 2
        })
    );
    // The `<` in line 3 is hashed as Go writes it (\u003c); changing it to the
    // escape on disk changes the hash.
    let l = lines(&log);
    let mut changed = l.clone();
    changed[2] = changed[2].replacen("<pve2>", "\\u003cpve2>", 1);
    assert_eq!(
        serde_json::from_str::<Value>(&changed[2]).unwrap()["error"],
        serde_json::from_str::<Value>(&l[2]).unwrap()["error"]
    );
    assert_eq!(
        check(&changed.concat()),
        Ok(Verified {
            lines: 8,
            chains: 2
        }),
        "the same string, escaped differently on disk"
    );
    changed[6] = changed[6].replacen("\"x<y\"", "\"x>y\"", 1);
    assert_eq!(
        check(&changed.concat()),
        Err(VerifyError::HashMismatch { line: 7 })
    );
}

#[test]
fn our_log_appended_to_a_stock_log_verifies() {
    let log = stock_log() + &written(session);
    assert_eq!(
        check(&log),
        Ok(Verified {
            lines: 12,
            chains: 3
        })
    );
}

#[test]
fn verify_command_exit_codes() {
    let dir = temp_dir("cli");
    let good = dir.join("good.log");
    std::fs::write(&good, two_runs()).unwrap();
    assert_eq!(verify_command(&good), ExitCode::SUCCESS);
    let bad = dir.join("bad.log");
    let mut l = lines(&two_runs());
    l.remove(1);
    std::fs::write(&bad, l.concat()).unwrap();
    assert_eq!(verify_command(&bad), ExitCode::from(1));
    assert_eq!(verify_command(&dir.join("absent.log")), ExitCode::from(2));
    assert_eq!(
        verify_command(&dir),
        ExitCode::from(2),
        "a directory cannot be read"
    );
    let empty = dir.join("empty.log");
    std::fs::write(&empty, "").unwrap();
    assert_eq!(verify_command(&empty), ExitCode::SUCCESS);
    let _ = std::fs::remove_dir_all(&dir);
}
