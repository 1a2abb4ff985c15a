//! The Debian package: `contrib/deb/build.sh` packs the built binary into
//! `pulse-agent_VERSION_ARCH.deb` with dpkg-deb alone; this checks its
//! fields, its files with their modes and owners, its units (the hardened
//! ones, run from /usr/bin without self-update) and its maintainer scripts.
//! Installing it is the QEMU guest test's part. Needs dpkg-deb and
//! systemd-analyze; without them it fails, never skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Builds the package from the test's binary into a scratch directory,
/// once for all the tests (xz on a debug binary takes a while).
fn build(name: &str) -> (PathBuf, PathBuf) {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let deb = BUILT.get_or_init(build_once).clone();
    let out = deb.parent().unwrap().join(name);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    (out, deb)
}

fn build_once() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/deb/build.sh");
    let o = run(Command::new("sh")
        .arg(&script)
        .args(["--binary", env!("CARGO_BIN_EXE_pulse-agent"), "--out"])
        .arg(&out));
    let printed = text(&o);
    let deb = PathBuf::from(
        printed
            .trim()
            .lines()
            .last()
            .expect("build.sh prints the path"),
    );
    assert!(deb.is_file(), "{}", deb.display());
    assert_eq!(deb.parent(), Some(out.as_path()));
    deb
}

fn arch() -> String {
    text(&run(Command::new("dpkg").arg("--print-architecture")))
        .trim()
        .to_string()
}

/// The package's file list: path → (mode string, owner/group).
fn contents(deb: &Path) -> Vec<(String, String, String)> {
    text(&run(Command::new("dpkg-deb").arg("-c").arg(deb)))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[5].to_string(), f[0].to_string(), f[1].to_string())
        })
        .collect()
}

#[test]
fn the_package_has_the_fields_files_and_modes_apt_expects() {
    let (out, deb) = build("fields");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        deb.file_name().unwrap().to_string_lossy(),
        format!("pulse-agent_{version}_{}.deb", arch())
    );
    let field = |f: &str| {
        text(&run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(f)))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "pulse-agent");
    assert_eq!(field("Version"), version);
    assert_eq!(field("Architecture"), arch());
    assert!(field("Maintainer").contains('<'), "{}", field("Maintainer"));
    assert!(field("Description").starts_with("small host agent"));
    // A static-friendly binary that needs only the C library (Essential).
    assert_eq!(field("Depends"), "");

    let files = contents(&deb);
    let entry = |p: &str| {
        files
            .iter()
            .find(|f| f.0 == p)
            .unwrap_or_else(|| panic!("{p} is not in the package: {files:?}"))
    };
    assert_eq!(entry("./usr/bin/pulse-agent").1, "-rwxr-xr-x");
    for unit in [
        "pulse-agent.service",
        "pulse-agent-once.service",
        "pulse-agent.timer",
    ] {
        assert_eq!(
            entry(&format!("./lib/systemd/system/{unit}")).1,
            "-rw-r--r--"
        );
    }
    assert_eq!(
        entry("./usr/share/man/man8/pulse-agent.8.gz").1,
        "-rw-r--r--"
    );
    assert_eq!(
        entry("./usr/share/doc/pulse-agent/copyright").1,
        "-rw-r--r--"
    );
    assert_eq!(entry("./etc/pulse-agent/env").1, "-rw-------");
    // apt owns the binary: no updater units, nothing in /usr/local.
    assert!(
        !files
            .iter()
            .any(|f| f.0.contains("update") || f.0.contains("/usr/local"))
    );
    for (path, mode, owner) in &files {
        assert_eq!(owner, "root/root", "{path}");
        assert!(!mode.starts_with('l'), "{path}");
    }

    // The packaged binary is the one given, unchanged.
    let x = out.join("x");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x));
    assert_eq!(
        std::fs::read(x.join("usr/bin/pulse-agent")).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_pulse-agent")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// `mktemp -d` makes a 0700 directory, and the first build packed it as
/// the package's `./`: dpkg would have set / to 0700 on install (or
/// refused), locking every user out of the file system.
#[test]
fn the_package_root_directory_is_0755_not_mktemps_0700() {
    let (out, deb) = build("root-mode");
    let files = contents(&deb);
    for (path, mode, _) in files.iter().filter(|f| f.1.starts_with('d')) {
        assert_eq!(mode, "drwxr-xr-x", "{path}");
    }
    assert!(files.iter().any(|f| f.0 == "./"));
    let _ = std::fs::remove_dir_all(&out);
}

/// The units in the package run /usr/bin/pulse-agent with
/// --disable-auto-update, are still the hardened ones (3.0 or less) and
/// pass `systemd-analyze verify`.
#[test]
fn the_packaged_units_run_the_packaged_binary_hardened() {
    let (out, deb) = build("units");
    let x = out.join("x");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x));
    let dir = x.join("lib/systemd/system");
    let verify = out.join("verify");
    std::fs::create_dir_all(&verify).unwrap();
    let mut files = Vec::new();
    for name in [
        "pulse-agent.service",
        "pulse-agent-once.service",
        "pulse-agent.timer",
    ] {
        let unit = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(!unit.contains("/usr/local/bin"), "{name}:\n{unit}");
        if name.ends_with(".service") {
            let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
            assert!(
                exec.starts_with("ExecStart=/usr/bin/pulse-agent --disable-auto-update "),
                "{exec}"
            );
            assert!(unit.contains("NoNewPrivileges=yes"));
            let o = run(Command::new("systemd-analyze")
                .args(["security", "--offline=true", "--no-pager"])
                .arg(dir.join(name))
                .env("SYSTEMD_COLORS", "0"));
            let line = text(&o)
                .lines()
                .find(|l| l.contains("Overall exposure level"))
                .unwrap()
                .to_string();
            let level: f64 = line
                .rsplit_once(": ")
                .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok())
                .unwrap();
            assert!(level <= 3.0, "{name}: {line}");
        }
        let unit = unit.replace("/usr/bin/pulse-agent", env!("CARGO_BIN_EXE_pulse-agent"));
        std::fs::write(verify.join(name), unit).unwrap();
        files.push(verify.join(name));
    }
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// Maintainer scripts: POSIX sh with `set -e`; postinst enables and
/// starts the service on a first install only when the token and PULSE_URL
/// are there, and on an upgrade only restarts a running one;
/// prerm stops it; postrm reloads systemd and, on purge, removes the state
/// and the configuration; /etc/pulse-agent/env is a conffile.
#[test]
fn the_maintainer_scripts_start_stop_and_purge() {
    let (out, deb) = build("scripts");
    let control = out.join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let read = |f: &str| std::fs::read_to_string(control.join(f)).unwrap();
    assert_eq!(read("conffiles").trim(), "/etc/pulse-agent/env");
    for script in ["postinst", "prerm", "postrm"] {
        let s = read(script);
        assert!(s.starts_with("#!/bin/sh\nset -e\n"), "{script}:\n{s}");
        assert!(!s.contains("#DEBHELPER#"), "{script}");
        run(Command::new("sh").arg("-n").arg(control.join(script)));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(control.join(script))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o755, "{script}");
    }
    postinst_decisions(&read("postinst"), &out);
    assert!(read("prerm").contains("systemctl stop pulse-agent.service"));
    let postrm = read("postrm");
    assert!(postrm.contains("daemon-reload"));
    assert!(postrm.contains("rm -rf /var/lib/pulse-agent /etc/pulse-agent"));
    let _ = std::fs::remove_dir_all(&out);
}

/// What postinst asks of systemctl, run against a fake systemctl with its
/// /etc/pulse-agent and /run/systemd/system moved into `dir`: a first
/// install enables and starts only a configured agent; an upgrade never
/// enables anything (the admin may have disabled it or chosen the timer)
/// and restarts only a running service.
fn postinst_decisions(postinst: &str, dir: &Path) {
    let etc = dir.join("etc-pulse-agent");
    let run_systemd = dir.join("run-systemd-system");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&run_systemd).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("systemctl.log");
    let fake = bin.join("systemctl");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$*\" >>'{}'\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = dir.join("postinst-under-test");
    std::fs::write(
        &script,
        postinst
            .replace("/etc/pulse-agent", etc.to_str().unwrap())
            .replace("/run/systemd/system", run_systemd.to_str().unwrap()),
    )
    .unwrap();
    let calls = |args: &[&str]| -> Vec<String> {
        let _ = std::fs::remove_file(&log);
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        run(Command::new("sh").arg(&script).args(args).env("PATH", path));
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };
    // A first install, not configured: nothing is enabled.
    assert_eq!(calls(&["configure", ""]), ["daemon-reload"]);
    // Configured: enabled and started.
    std::fs::write(etc.join("env"), "PULSE_URL=https://pulse.lan:7655\n").unwrap();
    std::fs::write(etc.join("token"), "t0ken\n").unwrap();
    assert_eq!(
        calls(&["configure", ""]),
        ["daemon-reload", "enable --now pulse-agent.service"]
    );
    // An upgrade: whatever the admin chose stays; a running service restarts.
    assert_eq!(
        calls(&["configure", "0.0.9"]),
        ["daemon-reload", "try-restart pulse-agent.service"]
    );
}
