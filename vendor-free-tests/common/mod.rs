//! Helpers shared by the test targets: fixture cases, pinned time and
//! randomness, golden files, and the wire schema checker.
#![allow(dead_code)]

pub mod proc;
pub mod wire;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pulse_agent::cli;
use pulse_agent::config::Config;
use pulse_agent::report::{Privilege, Sequence};
use serde_json::Value;

/// 2026-08-22T14:52:27.123456789Z: every golden report is collected "then".
pub const PINNED_TIME: Duration = Duration::new(1_787_410_347, 123_456_789);
pub const PINNED_STREAM: [u8; 16] = [
    0x9b, 0x2e, 0x5d, 0x0c, 0x7a, 0x4f, 0x41, 0xe6, 0xb8, 0xc3, 0xd2, 0xa1, 0xf0, 0xe9, 0xd8, 0xc7,
];

pub fn pinned_now() -> SystemTime {
    UNIX_EPOCH + PINNED_TIME
}

pub fn pinned_privilege() -> Privilege {
    Privilege {
        running_as_root: true,
        service_user: "root".into(),
        smartctl_helper: false,
        pct_helper: false,
        sandbox: Default::default(),
    }
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor-free-tests/fixtures")
}

/// Every fixture case: a directory under fixtures/ with a `root/` tree.
pub fn cases() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("root").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn case_root(case: &str) -> PathBuf {
    fixtures_dir().join(case).join("root")
}

/// A state directory that does not exist, so no real agent-id file is read.
pub fn no_state_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-state-dir")
}

/// The command line of a case: `--once --root <root> --state-dir <none>` and
/// the case's own `args` file (one argument per line).
pub fn case_args(case: &str) -> Vec<String> {
    let mut args = vec![
        "--once".to_string(),
        "--root".to_string(),
        case_root(case).display().to_string(),
        "--state-dir".to_string(),
        no_state_dir().display().to_string(),
        // Never the machine's own smartctl: its scan would list this
        // machine's disks. A case's `smartctl/` holds its answers.
        format!("--smartctl={}", fake_smartctl(case).display()),
    ];
    if let Ok(extra) = std::fs::read_to_string(fixtures_dir().join(case).join("args")) {
        args.extend(
            extra
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    args
}

/// The fake smartctl for a fixture case: `fixtures/<case>/smartctl/smartctl`
/// (a link to `fake-smartctl` beside its answers) if the case has one, else
/// the bare fake, which knows no disk.
pub fn fake_smartctl(case: &str) -> PathBuf {
    let own = fixtures_dir().join(case).join("smartctl").join("smartctl");
    if own.exists() {
        return own;
    }
    fixtures_dir().parent().unwrap().join("fake-smartctl")
}

pub fn no_env(_: &str) -> Option<String> {
    None
}

pub fn no_dns(_: &str) -> Option<Vec<std::net::IpAddr>> {
    None
}

pub fn config_for(args: &[String]) -> Config {
    let a = cli::parse(args.iter().cloned(), &no_env).expect("args parse");
    Config::from_args(&a, &no_env, &no_dns).expect("config")
}

/// The case's report with time, sequence and privilege pinned.
pub fn pinned_report(case: &str) -> Value {
    report_for(&config_for(&case_args(case)))
}

/// One report for `config`, with time, sequence and privilege pinned.
pub fn report_for(config: &Config) -> Value {
    let mut seq = Sequence::with_stream(&PINNED_STREAM);
    pulse_agent::agent::once(config, pinned_now, &mut seq, &pinned_privilege()).expect("report")
}

/// Rewrites what differs between runs of the binary (time, the random stream,
/// who runs the test) to the pinned values, after checking their form.
pub fn pin_volatile(doc: &mut Value) {
    let now = pulse_agent::report::rfc3339(pinned_now());
    assert!(doc["timestamp"].as_str().is_some_and(wire::is_rfc3339));
    doc["timestamp"] = Value::String(now.clone());
    let seq = doc["sequenceId"].as_str().expect("sequenceId").to_string();
    assert!(seq.starts_with("v1:") && seq.ends_with(":1"), "{seq}");
    let stream: String = PINNED_STREAM.iter().map(|b| format!("{b:02x}")).collect();
    doc["sequenceId"] = Value::String(format!("v1:{stream}:1"));
    // The platform sections carry the time their run ended.
    let seconds = pulse_agent::report::rfc3339(
        std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(
                pinned_now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
            ),
    );
    for (section, field) in [
        ("/host/packageUpdates", "checkedAt"),
        ("/host/storageCleanup", "checkedAt"),
        ("/ceph", "collectedAt"),
        ("/proxmoxLxc", "collectedAt"),
    ] {
        if let Some(t) = doc.pointer_mut(section).and_then(|s| s.get_mut(field)) {
            let text = t.as_str().expect("a time").to_string();
            assert!(wire::is_rfc3339(&text), "{section}.{field}: {text}");
            // Ceph's is in whole seconds, like the stock agent's.
            *t = Value::String(match text.contains('.') {
                true => now.clone(),
                false => seconds.clone(),
            });
        }
    }
    if let Some(mods) = doc["agent"]["modules"].as_array_mut() {
        for m in mods {
            assert!(m["updatedAt"].as_str().is_some_and(wire::is_rfc3339));
            m["updatedAt"] = Value::String(now.clone());
        }
    }
    assert!(doc["agent"]["privilege"]["runningAsRoot"].is_boolean());
    // As pinned_privilege() renders: the test may run as any user, in any
    // sandbox.
    doc["agent"]["privilege"] =
        serde_json::json!({"profile": "root", "runningAsRoot": true, "serviceUser": "root"});
}

/// Compares `doc` with the case's golden `report.json`; `UPDATE_GOLDEN=1`
/// rewrites the file instead.
pub fn assert_golden(case: &str, doc: &Value) {
    let path = fixtures_dir().join(case).join("report.json");
    let text = serde_json::to_string_pretty(doc).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if want != text {
        let diff = line_diff(&want, &text);
        panic!(
            "{case}: report differs from {} (UPDATE_GOLDEN=1 rewrites it):\n{diff}",
            path.display()
        );
    }
}

fn line_diff(want: &str, got: &str) -> String {
    let w: Vec<&str> = want.lines().collect();
    let g: Vec<&str> = got.lines().collect();
    let mut out = String::new();
    for i in 0..w.len().max(g.len()) {
        match (w.get(i), g.get(i)) {
            (Some(a), Some(b)) if a == b => {}
            (a, b) => {
                out.push_str(&format!(
                    "line {}:\n  - {}\n  + {}\n",
                    i + 1,
                    a.unwrap_or(&""),
                    b.unwrap_or(&"")
                ));
                if out.len() > 4000 {
                    out.push_str("  ...\n");
                    break;
                }
            }
        }
    }
    out
}
pub mod channel;
pub mod hostile;
pub mod standin;

/// The built agent, as released at version 99.0.0 (`PULSE_AGENT_VERSION`),
/// built once into its own target directory (shared by the update and
/// systemd tests).
pub fn release_99() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("update-99-target");
            let status = std::process::Command::new(
                std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            )
            .args(["build", "--offline", "--bin", "pulse-agent", "--target-dir"])
            .arg(&target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("PULSE_AGENT_VERSION", "99.0.0")
            // Small enough to download quickly in a debug test.
            .env("CARGO_PROFILE_DEV_DEBUG", "false")
            .env("CARGO_PROFILE_DEV_STRIP", "true")
            .env_remove("RUSTFLAGS")
            .status()
            .expect("cargo runs");
            assert!(status.success(), "building pulse-agent 99.0.0");
            target.join("debug/pulse-agent")
        })
        .clone()
}

/// `vendor-free-tests/fake-program`: links to it in a root's `.capture/bin/`
/// answer from the root's `.capture/cmd/`.
pub fn fake_program() -> PathBuf {
    fixtures_dir().parent().unwrap().join("fake-program")
}

/// Copies the `debian12-vm` case to `dest` and gives it two md arrays, the
/// zfs module, and an mdadm, zpool, zfs and nvidia-smi that never answer.
pub fn hung_tools_root(dest: &Path) {
    copy_tree(&case_root("debian12-vm"), dest);
    let w = |rel: &str, text: &str| {
        let p = dest.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w(
        "proc/mdstat",
        "Personalities : [raid1]\nmd0 : active raid1 sdb1[1] sda1[0]\n      976630464 blocks super 1.2 [2/2] [UU]\n\n\
         md1 : active raid1 sdd1[1] sdc1[0]\n      976630464 blocks super 1.2 [2/1] [U_]\n\nunused devices: <none>\n",
    );
    w("sys/module/zfs/version", "2.1.11-1\n");
    std::fs::create_dir_all(dest.join(".capture/bin")).unwrap();
    for name in ["mdadm", "zpool", "zfs", "nvidia-smi"] {
        std::os::unix::fs::symlink(fake_program(), dest.join(".capture/bin").join(name)).unwrap();
    }
    for key in [
        "mdadm --version",
        "zpool list -Hp -o name,size,allocated,free",
        "zfs list -Hp -t filesystem,volume -o name,type,used,available,referenced,mountpoint",
        "zpool status -P",
        "nvidia-smi --query-gpu=index,name,temperature.gpu,utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits",
    ] {
        w(&format!(".capture/cmd/{key}.hang"), "");
    }
}

/// A copy of the fixture case's root at `dest`, its captured programs
/// linked to fake-program by absolute path (the case's relative links
/// would point nowhere from a temporary directory).
pub fn copy_case(case: &str, dest: &Path) {
    copy_tree(&case_root(case), dest);
    let bin = dest.join(".capture/bin");
    for e in std::fs::read_dir(&bin).into_iter().flatten() {
        let p = e.unwrap().path();
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(fake_program(), &p).unwrap();
    }
}

/// `cp -a` of a tree of files, directories and symlinks.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let t = e.file_type().unwrap();
        if t.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if t.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// `pulse-release`, the maintainers' release tool (a cargo example), built
/// beside the agent binary by a plain `cargo test`.
pub fn release_tool() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_pulse-agent"))
        .parent()
        .expect("invariant: the agent binary is in a directory")
        .join("examples/pulse-release");
    assert!(
        path.is_file(),
        "{} is missing: `cargo test` builds it, `cargo test --test NAME` \
         does not; run `cargo build --example pulse-release` first",
        path.display()
    );
    path
}

/// Standard output of a command that must have succeeded; both streams are
/// shown when it did not.
#[track_caller]
pub fn ok(o: &Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout,
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}
