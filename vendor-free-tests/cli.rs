//! End-to-end: the built `pulse-agent` binary, its command line, environment,
//! exit statuses and output, run against the fixture trees.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::wire::check_host_report;
use serde_json::Value;

/// The binary with an empty environment, so a developer's PULSE_* variables
/// cannot leak into a test.
fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pulse-agent"));
    c.env_clear();
    c
}

fn run(args: &[&str]) -> Output {
    agent().args(args).output().expect("run pulse-agent")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn report(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "exit {:?}, stderr:\n{}",
        o.status,
        stderr(o)
    );
    serde_json::from_slice(&o.stdout).expect("stdout is one JSON document")
}

fn case_args(case: &str) -> Vec<String> {
    common::case_args(case)
}

#[test]
fn once_prints_the_golden_report_for_every_case() {
    for case in common::cases() {
        let args = case_args(&case);
        let o = agent().args(&args).output().unwrap();
        let mut doc = report(&o);
        let errs = check_host_report(&doc);
        assert!(errs.is_empty(), "{case}: {}", errs.join("\n"));
        common::pin_volatile(&mut doc);
        let want: Value = serde_json::from_str(
            &std::fs::read_to_string(common::fixtures_dir().join(&case).join("report.json"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            doc, want,
            "{case}: the binary's report differs from report.json"
        );
    }
}

#[test]
fn go_style_single_dash_flags() {
    let root = common::case_root("debian12-vm");
    let state = common::no_state_dir();
    let o = run(&[
        "-once",
        &format!("-root={}", root.display()),
        "-state-dir",
        &state.display().to_string(),
        "-tag",
        "nas",
        "--tag=rack-2",
        "-interval=1m",
    ]);
    let doc = report(&o);
    assert_eq!(doc["tags"], serde_json::json!(["nas", "rack-2"]));
    assert_eq!(doc["agent"]["intervalSeconds"], 60);
}

#[test]
fn environment_gives_defaults_and_flags_win() {
    let args = case_args("debian12-vm");
    let o = agent()
        .args(&args)
        .arg("--hostname=from-flag")
        .env("PULSE_HOSTNAME", "from-env")
        .env("PULSE_TAGS", "a, b")
        .env("PULSE_DISK_EXCLUDE", "/")
        .env("PULSE_INTERVAL", "45s")
        .env("PULSE_REPORT_IP", "192.0.2.7")
        .output()
        .unwrap();
    let doc = report(&o);
    assert_eq!(doc["host"]["hostname"], "from-flag");
    assert_eq!(doc["tags"], serde_json::json!(["a", "b"]));
    assert!(
        doc.get("disks").is_none(),
        "PULSE_DISK_EXCLUDE=/ drops the root filesystem"
    );
    assert_eq!(doc["agent"]["intervalSeconds"], 45);
    assert_eq!(doc["host"]["reportIp"], "192.0.2.7");
}

/// `KEY=` lines in unit and env files mean "not set", not "set to nothing".
#[test]
fn empty_environment_values_are_unset() {
    let o = agent()
        .args(case_args("debian12-vm"))
        .env("PULSE_ENABLE_HOST", "")
        .env("PULSE_INTERVAL", " ")
        .env("PULSE_URL", "")
        .output()
        .unwrap();
    let doc = report(&o);
    assert_eq!(doc["agent"]["intervalSeconds"], 30);
}

#[test]
fn unusable_environment_values_are_logged_not_fatal() {
    let o = agent()
        .args(case_args("debian12-vm"))
        .env("PULSE_INTERVAL", "soon")
        .output()
        .unwrap();
    let doc = report(&o);
    assert_eq!(doc["agent"]["intervalSeconds"], 30);
    assert!(stderr(&o).contains("PULSE_INTERVAL"), "{}", stderr(&o));
}

#[test]
fn usage_errors_are_one_line_and_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--nope"], "unknown flag '--nope'"),
        (&["-nope"], "unknown flag '--nope'"),
        (
            &["--insecure", "false"],
            "booleans take their value as --flag=false",
        ),
        (&["--insecure=sometimes"], "want true or false"),
        (&["--interval=30"], "missing unit"),
        (&["--interval=0s"], "at least 1s"),
        (&["--url=ftp://pulse"], "scheme must be http or https"),
        (&["--url=http://pulse.example.com:7655"], "plain http"),
        (&["--report-ip=0.0.0.0"], "unspecified"),
        (&["--report-ip=pulse"], "not an IP address"),
        (&["--log-level=loud"], "--log-level"),
        (&["--docker-runtime=lxc"], "--docker-runtime"),
        (&["--server-fingerprint=abcd"], "64 hex digits"),
        (&["--enable-kubernetes"], "no Kubernetes module"),
        (&["--kube-max-pods=10"], "no Kubernetes module"),
        (&["--enable-host=false"], "nothing to run"),
        (&["--root=/no/such/dir", "--once"], "not a directory"),
        (&["--health-addr=nonsense"], "--health-addr"),
        (&["--smartctl=smartctl"], "must be an absolute path"),
        (&["--smart-interval=5"], "missing unit"),
        (&["--smart-interval=10s"], "at least 1m, or 0"),
        (
            &["--smart-max-age=0s"],
            "--smart-max-age must be at least 1m",
        ),
        (
            &["--enroll", "--url=https://pulse.example"],
            "bootstrap token",
        ),
    ];
    for (args, want) in cases {
        let o = run(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: want {want:?} in {err:?}");
        assert!(err.starts_with("pulse-agent: error: "), "{args:?}: {err:?}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line: {err:?}"
        );
        assert!(o.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn kubernetes_settings_in_the_environment_alone_are_ignored() {
    // An installer may export defaults; only an explicit request is refused.
    let o = agent()
        .args(case_args("debian12-vm"))
        .env("PULSE_KUBE_MAX_PODS", "200")
        .env("PULSE_ENABLE_KUBERNETES", "false")
        .output()
        .unwrap();
    report(&o);
    let o = agent()
        .args(case_args("debian12-vm"))
        .env("PULSE_ENABLE_KUBERNETES", "true")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn help_and_version() {
    for flag in ["--help", "-h", "-help"] {
        let o = run(&[flag]);
        assert!(o.status.success(), "{flag}");
        let out = String::from_utf8(o.stdout).unwrap();
        for f in pulse_agent::cli::FLAGS {
            assert!(
                out.contains(&format!("--{}", f.name)),
                "{flag}: --{}",
                f.name
            );
        }
    }
    let o = run(&["--version"]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8(o.stdout).unwrap().trim(),
        format!("v{}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn self_test_loads_config_and_exits_0() {
    let o = run(&["--self-test", "--url=https://pulse.example", "--token=abc"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("Self-test passed"));
    let o = run(&["--self-test", "--interval=0s"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a broken config fails the self-test"
    );
}

#[test]
fn the_token_never_reaches_output_or_logs() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("agent.log");
    let token = "pulse_tok_9f8e7d6c5b4a";
    for how in [
        vec![format!("--token={token}")],
        vec!["--enroll".to_string(), format!("--token={token}")],
    ] {
        let mut args = case_args("debian12-vm");
        args.extend([
            "--url=https://127.0.0.1:9".to_string(),
            "--log-level=trace".into(),
        ]);
        args.push(format!("--log-file={}", log.display()));
        args.extend(how);
        let o = agent()
            .args(&args)
            .env("PULSE_TOKEN", token)
            .output()
            .unwrap();
        let all = format!(
            "{}{}{}",
            String::from_utf8_lossy(&o.stdout),
            stderr(&o),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(!all.contains(token), "token leaked:\n{all}");
    }
    let bad = run(&["--url=https://pulse.example", "--token=has space"]);
    assert!(
        !stderr(&bad).contains("has space"),
        "a rejected token is not echoed"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn token_file_is_read_trimmed_and_its_permissions_checked() {
    use std::os::unix::fs::PermissionsExt;
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tokfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "  abc123\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&[
        "--self-test",
        "--url=https://pulse.example",
        &format!("--token-file={}", file.display()),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("readable by other users"),
        "{}",
        stderr(&o)
    );
    std::fs::write(&file, "   \n").unwrap();
    let o = run(&[
        "--self-test",
        "--url=https://pulse.example",
        &format!("--token-file={}", file.display()),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("file is empty"), "{}", stderr(&o));
    let o = run(&[
        "--self-test",
        "--url=https://pulse.example",
        "--token-file=/no/such/token",
    ]);
    assert_eq!(o.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn read_only_and_unsupported_flags_are_explained() {
    let mut args = case_args("debian12-vm");
    args.extend([
        "--enable-commands".into(),
        "--observers-file=/etc/pulse/observers.json".into(),
    ]);
    let o = agent().args(&args).output().unwrap();
    report(&o);
    let err = stderr(&o);
    assert!(err.contains("read-only by design"), "{err}");
    assert!(
        err.contains("observer destinations are not supported"),
        "{err}"
    );
}

#[test]
fn log_file_receives_the_log() {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("logfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("agent.log");
    let mut args = case_args("debian12-vm");
    args.extend([
        "--enable-commands".into(),
        format!("--log-file={}", log.display()),
    ]);
    report(&agent().args(&args).output().unwrap());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("read-only by design"), "{text}");
    assert!(
        common::wire::is_rfc3339(text.split(' ').next().unwrap()),
        "lines start with a UTC time: {text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A hung NFS mount that the user asked for (`--disk-include`) costs one
/// statvfs deadline, not the report.
#[test]
fn hung_nfs_mount_does_not_stall_the_report() {
    let mut args = case_args("nas-synology");
    args.extend(["--disk-include".into(), "/mnt/backup".into()]);
    let started = Instant::now();
    let o = agent().args(&args).output().unwrap();
    let took = started.elapsed();
    let doc = report(&o);
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let mps: Vec<&str> = doc["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["mountpoint"].as_str().unwrap())
        .collect();
    assert!(!mps.contains(&"/mnt/backup"), "{mps:?}");
    assert!(mps.contains(&"/volume1"));
    assert!(
        stderr(&o).contains("/mnt/backup"),
        "the hung mount is named in a warning: {}",
        stderr(&o)
    );
}

#[test]
fn smartctl_path_and_smart_switch() {
    let case = "nas-smart";
    let smartctl = common::fake_smartctl(case);
    let base = |extra: &[&str]| {
        let mut a = case_args(case);
        a.retain(|x| !x.starts_with("--smartctl"));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    // From the environment: the stock agent's variable, a privilege helper.
    let o = agent()
        .args(base(&[]))
        .env("PULSE_SMARTCTL_PATH", &smartctl)
        .output()
        .unwrap();
    let doc = report(&o);
    assert_eq!(doc["agent"]["privilege"]["smartctlHelper"], true);
    assert_eq!(doc["sensors"]["smart"].as_array().unwrap().len(), 19);
    // Off: no smartctl runs, no rows.
    let o = agent()
        .args(base(&["--smart-interval=0"]))
        .env("PULSE_SMARTCTL_PATH", &smartctl)
        .output()
        .unwrap();
    assert!(report(&o)["sensors"].get("smart").is_none());
    // A relative path in the stock agent's variable: SMART off, not a
    // refusal to start.
    let o = agent()
        .args(base(&[]))
        .env("PULSE_SMARTCTL_PATH", "smartctl")
        .output()
        .unwrap();
    assert!(report(&o)["sensors"].get("smart").is_none());
    assert!(stderr(&o).contains("PULSE_SMARTCTL_PATH must be an absolute path"));
    // A smartctl that does not exist: disks from sysfs, health UNKNOWN.
    let o = agent()
        .args(base(&["--smartctl=/nonexistent/smartctl"]))
        .output()
        .unwrap();
    let doc = report(&o);
    let rows = doc["sensors"]["smart"].as_array().unwrap();
    assert_eq!(rows.len(), 15, "12 SATA, 2 NVMe, the RAID volume: {rows:?}");
    assert!(rows.iter().all(|r| r["health"] == "UNKNOWN"));
}

/// A child process that is killed when dropped, so a failing test leaves
/// no agent running.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cmd`'s output; a run that has not exited after 20 s is killed and fails
/// the test (a command line taken for a service's would run forever).
fn output_within_20s(cmd: &mut Command) -> Output {
    use std::process::Stdio;
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = common::proc::Dir::new(&format!("output-{n}"));
    let (out, err) = (dir.0.join("stdout"), dir.0.join("stderr"));
    let mut child = Running(
        cmd.stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{cmd:?} still runs after 20 s: {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&out).unwrap(),
        stderr: std::fs::read(&err).unwrap(),
    }
}

/// Runs the binary and checks a usage error: exit 2, nothing on standard
/// output, one line `pulse-agent: error: ...` holding each of `want`.
fn assert_usage_error(args: &[String], env: &[(&str, &str)], want: &[&str]) {
    let o = output_within_20s(agent().args(args).envs(env.iter().copied()));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?} {env:?}: {err}");
    assert!(err.starts_with("pulse-agent: error: "), "{args:?}: {err:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err:?}");
    for w in want {
        assert!(err.contains(w), "{args:?} {env:?}: want {w:?} in {err:?}");
    }
    assert!(o.stdout.is_empty(), "{args:?}");
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Issue 12: `--health-addr :9191` (the stock agent's syntax for "every
/// address") was refused. It listens on 0.0.0.0: reachable on 127.0.0.2,
/// which a listener on 127.0.0.1 would not answer.
#[test]
fn health_addr_with_empty_host_means_all_addresses() {
    use std::io::{Read, Write};
    let dir = common::proc::Dir::new("health-all");
    for (flag, env) in [(Some(":0"), None), (None, Some(":0"))] {
        let mut args = case_args("debian12-vm");
        args.retain(|a| a != "--once");
        if let Some(v) = flag {
            args.extend(["--health-addr".to_string(), v.to_string()]);
        }
        let log = dir.0.join("agent.log");
        let mut cmd = agent();
        // The listener's private socket directory goes in the scratch
        // directory, which is removed when the test ends.
        cmd.args(&args)
            .env("RUNTIME_DIRECTORY", &dir.0)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(v) = env {
            cmd.env("PULSE_HEALTH_ADDR", v);
        }
        let mut child = Running(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("health listener on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
            if Instant::now() > deadline || child.0.try_wait().unwrap().is_some() {
                panic!("{flag:?} {env:?}: no listener; log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let port: u16 = addr.strip_prefix("0.0.0.0:").expect(&addr).parse().unwrap();
        for host in ["127.0.0.1", "127.0.0.2"] {
            let mut s = std::net::TcpStream::connect((host, port)).expect(host);
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            assert!(answer.starts_with("HTTP/1.0 200 "), "{host}: {answer}");
            assert!(answer.ends_with("ok"), "{host}: {answer}");
        }
        drop(child);
    }
}

/// Issue 12: `--health-addr off` was refused on the command line although
/// `--help` offered it; it now turns the listener off, as in the environment.
#[test]
fn health_addr_off_is_accepted_from_the_flag() {
    for args in [
        &["--self-test", "--health-addr", "off"][..],
        &["--self-test", "-health-addr=disabled"],
        &["--self-test", "--health-addr="],
    ] {
        let o = output_within_20s(agent().args(args));
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }
}

/// Issue 12: `--url` without any token was accepted, and every report went
/// out without credentials. The stock agent refuses to start.
#[test]
fn url_without_a_token_is_a_usage_error() {
    let mut args = case_args("debian12-vm");
    args.push("--url=https://127.0.0.1:9".into());
    assert_usage_error(
        &args,
        &[],
        &["--url https://127.0.0.1:9 needs an API token"],
    );
    let mut args = case_args("debian12-vm");
    args.retain(|a| a != "--once");
    assert_usage_error(
        &args,
        &[("PULSE_URL", "https://127.0.0.1:9")],
        &["needs an API token", "--token-file"],
    );
    // The updater's self-test runs with the agent's environment and no token.
    let o = output_within_20s(
        agent()
            .arg("--self-test")
            .env("PULSE_URL", "https://127.0.0.1:9"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Issue 12: `--token-file --once` took `--once` as the file name.
#[test]
fn a_flag_given_as_a_value_is_a_usage_error() {
    for (args, want) in [
        (
            &["--token-file", "--once"][..],
            "--token-file needs a value",
        ),
        (&["-token-file", "-once"], "--token-file needs a value"),
        (
            &["--url", "https://x", "--hostname", "--once"],
            "--hostname needs a value",
        ),
        (&["--tag", "--enroll"], "--tag needs a value"),
    ] {
        // On the fixture host, so a regression never collects this machine.
        let mut all = case_args("debian12-vm");
        all.retain(|a| a != "--once");
        all.extend(strings(args));
        assert_usage_error(&all, &[], &[want, "pulse-agent --help"]);
    }
    // Written with `=`, or a negative number, it is a value.
    let o = output_within_20s(agent().args([
        "--self-test",
        "--hostname=--once",
        "--spool-reports",
        "-1",
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--spool-reports must be between 0"),
        "{}",
        stderr(&o)
    );
}

/// Issue 12: a `--root` without `proc/` gave a report of `unknown-host` with
/// this machine's addresses.
#[test]
fn root_without_proc_is_a_usage_error() {
    let dir = common::proc::Dir::new("noproc");
    std::fs::create_dir_all(dir.0.join("sys")).unwrap();
    std::fs::create_dir_all(dir.0.join("etc")).unwrap();
    let args = strings(&["--once", &format!("--root={}", dir.0.display())]);
    assert_usage_error(
        &args,
        &[],
        &[&format!("--root {}: ", dir.0.display()), "no proc/"],
    );
    for case in common::cases() {
        assert!(common::case_root(&case).join("proc").is_dir(), "{case}");
    }
}

/// Issue 12: `--log-file` was created 0644, readable by every user.
#[test]
fn log_file_is_created_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::proc::Dir::new("logmode");
    let log = dir.0.join("agent.log");
    let mut args = case_args("debian12-vm");
    args.push(format!("--log-file={}", log.display()));
    report(&output_within_20s(agent().args(&args)));
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
}
