//! The agent as an operating system sees it: what it does when standard
//! output cannot be written (a full disk, a closed pipe), and the systemd
//! units in contrib/systemd and contrib/systemd/compat (checked by reading
//! them, and with `systemd-analyze verify`; their sandboxing is checked in
//! units.rs).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pulse-agent"));
    c.env_clear();
    c
}

/// Runs the agent with standard output going to `out`.
fn run_to(args: &[String], out: Stdio) -> Output {
    agent()
        .args(args)
        .stdout(out)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `--once` (and `--help`, `--version`) with standard output on /dev/full:
/// one error line and exit 1, not a panic with a backtrace (exit 101 or 134).
#[test]
fn once_to_dev_full_is_one_error_line_and_exit_1() {
    let once = common::case_args("debian12-vm");
    let cases: [(Vec<String>, &str); 3] = [
        (once, "the report"),
        (vec!["--help".into()], "the help"),
        (vec!["--version".into()], "the version"),
    ];
    for (args, what) in cases {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let o = run_to(&args, Stdio::from(full));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        let want = format!(
            "pulse-agent: error: writing {what} to standard output: No space left on device (os error 28)\n"
        );
        assert!(err.ends_with(&want), "{args:?}:\n{err}");
        assert!(!err.contains("panicked"), "{args:?}:\n{err}");
        assert_eq!(
            err.lines().filter(|l| l.contains("error")).count(),
            1,
            "{args:?}:\n{err}"
        );
    }
}

/// `pulse-agent --once | head -c1`: the reader leaves early; like ripgrep and
/// most Unix tools, the agent stops writing and exits 0 without a word.
#[test]
fn once_into_a_closed_pipe_exits_quietly() {
    for args in [
        common::case_args("debian12-vm"),
        vec!["--help".to_string()],
        vec!["--version".to_string()],
    ] {
        // A socket pair whose other end is closed before the agent starts:
        // every write gets EPIPE, with no race against a reader.
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(ours);
        let o = run_to(&args, Stdio::from(std::os::fd::OwnedFd::from(theirs)));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}:\n{err}");
        assert!(!err.contains("error"), "{args:?}:\n{err}");
    }
}

/// One systemd unit file: section → (key → values, in order).
type Unit = HashMap<String, HashMap<String, Vec<String>>>;

fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (k, v) = line.split_once('=').expect("KEY=VALUE");
        unit.entry(section.clone())
            .or_default()
            .entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    unit
}

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd")
}

/// Every unit: contrib/systemd/NAME, and the compat variants as
/// `compat/NAME` (installed under NAME where NoNewPrivileges is refused).
fn units() -> Vec<(String, Unit, String)> {
    let mut v = Vec::new();
    for (dir, prefix) in [(units_dir(), ""), (units_dir().join("compat"), "compat/")] {
        for e in std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()) {
            if !e.file_type().unwrap().is_file() {
                continue;
            }
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            let text = std::fs::read_to_string(e.path()).unwrap();
            v.push((name, parse_unit(&text), text));
        }
    }
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn value<'a>(u: &'a Unit, section: &str, key: &str) -> Option<&'a str> {
    u.get(section)?.get(key)?.last().map(String::as_str)
}

/// `pulse-agent.timer` had no `Unit=`, so it started the service of its own
/// name, the resident `pulse-agent.service`, never the one-shot one. Every
/// timer must name an existing service that runs `--once`; the resident
/// service must not.
#[test]
fn the_timer_starts_the_once_service_not_the_resident_one() {
    let units = units();
    let services: HashMap<&str, &Unit> = units
        .iter()
        .filter(|(n, _, _)| n.ends_with(".service"))
        .map(|(n, u, _)| (n.as_str(), u))
        .collect();
    let timers: Vec<_> = units
        .iter()
        .filter(|(n, _, _)| n.ends_with(".timer"))
        .collect();
    assert!(!timers.is_empty(), "contrib/systemd has a timer");
    for (name, timer, _) in &timers {
        let target = value(timer, "Timer", "Unit").unwrap_or_else(|| {
            panic!("{name}: no Unit= (it would start the service of its own name)")
        });
        let service = services
            .get(target)
            .unwrap_or_else(|| panic!("{name}: Unit={target} is not in contrib/systemd"));
        let exec = value(service, "Service", "ExecStart").expect("ExecStart");
        // A one-shot job: a report (--once) or an update check.
        let words: Vec<&str> = exec.split_whitespace().collect();
        assert!(
            words.contains(&"--once") || words.get(1) == Some(&"update"),
            "{name} starts {target}, which runs neither --once nor update: {exec}"
        );
        assert_eq!(
            value(service, "Service", "Type"),
            Some("oneshot"),
            "{target}"
        );
    }
    let resident = services["pulse-agent.service"];
    let exec = value(resident, "Service", "ExecStart").unwrap();
    assert!(!exec.split_whitespace().any(|a| a == "--once"), "{exec}");
    // Every service runs the agent on the same state directory, the one the
    // lock in it guards.
    for (name, service) in &services {
        let exec = value(service, "Service", "ExecStart").unwrap();
        assert!(
            exec.contains("--state-dir /var/lib/pulse-agent"),
            "{name}: {exec}"
        );
    }
}

/// `systemd-analyze verify` on the units, with ExecStart pointing at the
/// built binary (the installed path does not exist here). Needs systemd's
/// tools (`.ci/run` installs them); without them it fails, never skips.
#[test]
fn systemd_analyze_verify_accepts_the_units() {
    let probe = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "systemd-analyze is needed for this test (apt-get install systemd)"
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("systemd-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Two sets, each as installed: the hardened units, and the compat
    // services (under the same names) with the timers that start them.
    let units = units();
    let compat: Vec<_> = units
        .iter()
        .filter(|u| u.0.starts_with("compat/"))
        .collect();
    assert_eq!(compat.len(), 3, "three compat services");
    for set in ["hardened", "compat"] {
        let into = dir.join(set);
        std::fs::create_dir_all(&into).unwrap();
        let mut files = Vec::new();
        for (name, _, text) in &units {
            let installed = match (set, name.strip_prefix("compat/")) {
                ("compat", Some(n)) => n,
                ("compat", None) if name.ends_with(".timer") => name.as_str(),
                ("hardened", None) => name.as_str(),
                _ => continue,
            };
            let text = text.replace(
                "/usr/local/bin/pulse-agent",
                env!("CARGO_BIN_EXE_pulse-agent"),
            );
            std::fs::write(into.join(installed), text).unwrap();
            files.push(into.join(installed));
        }
        // The non-root profile, a drop-in beside the service as installed
        // (verify reads drop-ins from the unit's directory and says what
        // it cannot use, which fails this test).
        let dropins = into.join("pulse-agent.service.d");
        std::fs::create_dir_all(&dropins).unwrap();
        let profile = std::fs::read_to_string(units_dir().join("profiles/non-root.conf"))
            .unwrap()
            .replace(
                "/usr/local/bin/pulse-agent",
                env!("CARGO_BIN_EXE_pulse-agent"),
            );
        std::fs::write(dropins.join("non-root.conf"), profile).unwrap();
        analyze_verify(set, &files);
    }
    // The sensor proxy's units, as installed beside each other.
    let into = dir.join("proxy");
    std::fs::create_dir_all(&into).unwrap();
    let mut files = Vec::new();
    for e in std::fs::read_dir(units_dir().join("proxy")).unwrap() {
        let e = e.unwrap();
        let text = std::fs::read_to_string(e.path()).unwrap().replace(
            "/usr/local/bin/pulse-sensor-proxy",
            env!("CARGO_BIN_EXE_pulse-sensor-proxy"),
        );
        std::fs::write(into.join(e.file_name()), text).unwrap();
        files.push(into.join(e.file_name()));
    }
    assert_eq!(
        files.len(),
        3,
        "the proxy, the cleanup path and its service"
    );
    analyze_verify("proxy", &files);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `systemd-analyze verify` accepts `files` and says nothing about them.
fn analyze_verify(set: &str, files: &[PathBuf]) {
    // --man=no: the pages are not installed where the test runs.
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(files)
        .output()
        .unwrap();
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "systemd-analyze verify ({set}):\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
}

/// Issue 12: the README's test command was `sudo .ci/run`, which fails on a
/// root machine without sudo. The command is `sh .ci/run`, and the script
/// itself runs as root or, for a user, through sudo.
#[test]
fn the_readme_test_command_works_as_root_and_as_a_user() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the README starts with a sh block");
    let commands: Vec<&str> = block
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert_eq!(commands[1], "sh .ci/run", "{commands:?}");
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(ci.contains("\"$(id -u)\" -eq 0") && ci.contains("as_root() { sudo \"$@\"; }"));
    for line in ci.lines().map(str::trim) {
        for needs_root in ["apt-get ", "dockerd ", "mkdir -p \"$ci\""] {
            if line.starts_with(needs_root) {
                panic!(".ci/run runs `{line}` without as_root");
            }
        }
    }
    // As a user without sudo it says what it needs, in one line, exit 1: a
    // PATH with only what the script needs before that point (no sudo), and,
    // when the tests run as root, the user nobody.
    let bin =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("no-sudo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&bin);
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["id", "dirname", "sh"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found"));
        std::os::unix::fs::symlink(found, bin.join(tool)).unwrap();
    }
    let as_root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    // Absolute paths: the child's PATH is the one without sudo.
    let sh = std::fs::read_link(bin.join("sh")).unwrap();
    let mut cmd = if as_root {
        let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("setpriv (util-linux)");
        let mut c = Command::new(setpriv);
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        c.arg(sh);
        c
    } else {
        Command::new(sh)
    };
    let o = cmd
        .arg(root.join(".ci/run"))
        .env("PATH", &bin)
        .stdin(Stdio::null())
        .output()
        .expect("run .ci/run");
    let _ = std::fs::remove_dir_all(&bin);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("run it as root, or as a user who has sudo"),
        "{}",
        stderr(&o)
    );
}

/// Under systemd (`Type=notify`): `READY=1` after the first cycle with a
/// `STATUS=`, `WATCHDOG=1` at half of `WATCHDOG_USEC` even when the report
/// interval is longer, and `STOPPING=1` on SIGTERM; sent to the socket in
/// `NOTIFY_SOCKET`, as systemd would receive them.
#[test]
fn the_service_tells_systemd_it_is_ready_alive_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut child = agent()
        .args(
            common::case_args("debian12-vm")
                .into_iter()
                .filter(|a| a != "--once"),
        )
        .args(["--interval=10s", "--health-addr="])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut got: Vec<(Instant, String)> = Vec::new();
    let recv = |got: &mut Vec<(Instant, String)>, until: Instant| {
        let mut buf = [0u8; 1024];
        while Instant::now() < until {
            if let Ok(n) = sock.recv(&mut buf) {
                got.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        }
    };
    let started = Instant::now();
    recv(&mut got, started + Duration::from_millis(4500));
    let first = got.first().map(|g| g.1.clone()).unwrap_or_default();
    assert!(
        first.starts_with("READY=1\nWATCHDOG=1\nSTATUS=standalone"),
        "{got:?}"
    );
    // Within one 10 s interval, the watchdog is fed every second.
    let pings = got.iter().filter(|g| g.1 == "WATCHDOG=1").count();
    assert!(pings >= 2, "{got:?}");
    assert_eq!(got.iter().filter(|g| g.1.contains("READY=1")).count(), 1);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    recv(&mut got, Instant::now() + Duration::from_secs(2));
    assert!(child.wait().unwrap().success());
    assert_eq!(
        got.last().map(|g| g.1.as_str()),
        Some("STOPPING=1"),
        "{got:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 15: with `pulse-sensor-proxy` as a second binary, the README's
/// first command (`cargo run --release -- --once`) stopped working: cargo
/// cannot tell which binary to run. `default-run` names the agent.
#[test]
fn cargo_run_in_the_readme_picks_the_agent_among_two_binaries() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let first = readme
        .lines()
        .find(|l| l.starts_with("cargo run"))
        .expect("the README's first command");
    assert!(!first.contains("--bin"), "{first}");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let bins = manifest.matches("[[bin]]").count();
    assert!(bins >= 2, "two binaries");
    let package = manifest.split("\n[").next().unwrap();
    assert!(
        package
            .lines()
            .any(|l| l.replace(' ', "") == "default-run=\"pulse-agent\""),
        "[package] has no default-run = \"pulse-agent\": `{first}` fails with {bins} binaries"
    );
}
