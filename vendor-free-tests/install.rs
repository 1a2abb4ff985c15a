//! End-to-end: the installer (`contrib/install.sh`), as `pulse-release
//! publish-installer` publishes it, run with `--dest-root` against a
//! loopback HTTPS release channel made with the release tool and a CA made
//! here, and `--uninstall` against the Pulse stand-in.
//!
//! * installs the right files with the right modes; the token is never in
//!   any process's argv (strace) and only in a 0600 file;
//! * refuses, with a clear message and nothing installed: a tampered binary,
//!   a binary whose signature does not match, a badly signed index, an
//!   expired index, an untrusted key, a wrong size, no verifier;
//! * the OpenSSL-only and ssh-keygen-only paths (PATH restricted to a
//!   directory of symlinks) both work; dash and busybox sh; shellcheck;
//! * the units it installs are the repository's, byte for byte (drift);
//! * upgrade in place keeps the token; --uninstall tells the stand-in with
//!   the right token, removes what it installed and keeps the state unless
//!   --purge.
//!
//! Needs the `pulse-release` example (a plain `cargo test` builds it; for
//! `cargo test --test install` alone run `cargo build --example pulse-release`
//! first), dash, busybox, strace, openssl, ssh-keygen and shellcheck
//! (`.ci/run` installs them). The real-systemd part (systemctl, the
//! NoNewPrivileges probe, /readyz) runs in the guest test.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::channel::Channel;
use common::standin::{Pki, REPORT_TOKEN, StandIn};
use common::{ok, release_tool};

const UNITS: [&str; 5] = [
    "pulse-agent.service",
    "pulse-agent-once.service",
    "pulse-agent.timer",
    "pulse-agent-update.service",
    "pulse-agent-update.timer",
];
const TOKEN: &str = "install-test-token-5f0c2a9e81d34b7c";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn release(args: &[&str]) -> String {
    ok(&Command::new(release_tool()).args(args).output().unwrap())
}

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("install-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The units the installer must carry: contrib/systemd/NAME (hardened) and
/// contrib/systemd/compat/NAME for the services (the timers are shared).
fn units_dir(at: &Path) -> PathBuf {
    let dir = at.join("units");
    fs::create_dir_all(dir.join("compat")).unwrap();
    let src = repo().join("contrib/systemd");
    for name in UNITS {
        fs::copy(src.join(name), dir.join(name)).unwrap();
        if !name.ends_with(".timer") {
            fs::copy(src.join("compat").join(name), dir.join("compat").join(name)).unwrap();
        }
    }
    dir
}

/// The file a unit of `variant` comes from in `units_dir`.
fn unit_source(units: &Path, variant: &str, name: &str) -> PathBuf {
    if variant == "compat" && !name.ends_with(".timer") {
        units.join("compat").join(name)
    } else {
        units.join(name)
    }
}

/// One channel, its key, a published installer and an empty root.
struct Lab {
    dir: PathBuf,
    channel: Channel,
    key: PathBuf,
    installer: PathBuf,
    ca: PathBuf,
    root: PathBuf,
    token_file: PathBuf,
}

impl Lab {
    /// A channel signed by a fresh key, serving the built agent as
    /// linux-amd64 at the package version; `tamper` may change the channel
    /// directory (it must replace, not edit, the hard-linked binary).
    fn new(name: &str, tamper: impl FnOnce(&Path, &Path)) -> Lab {
        let dir = tmp(name);
        let ch = dir.join("channel");
        fs::create_dir_all(&ch).unwrap();
        let key = dir.join("key");
        release(&["keygen", "--out", s(&key)]);
        fs::hard_link(
            env!("CARGO_BIN_EXE_pulse-agent"),
            ch.join("pulse-agent-linux-amd64"),
        )
        .unwrap();
        release(&[
            "index",
            "--key",
            s(&key),
            "--version",
            env!("CARGO_PKG_VERSION"),
            s(&ch),
        ]);
        tamper(&ch, &key);
        let channel = Channel::start(ch.clone(), Pki::new("install-channel"));
        let ca = channel.ca_file();
        let units = units_dir(&dir);
        let out = dir.join("published");
        release(&[
            "publish-installer",
            "--key",
            s(&key),
            "--channel",
            &channel.url(),
            "--units",
            s(&units),
            s(&repo().join("contrib/install.sh")),
            s(&out),
        ]);
        let root = dir.join("root");
        fs::create_dir_all(&root).unwrap();
        let token_file = dir.join("token-in");
        fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        Lab {
            installer: out.join("install.sh"),
            dir,
            channel,
            key,
            ca,
            root,
            token_file,
        }
    }

    /// Runs the installer with `shell` and `args` (plus --dest-root), with
    /// PATH as given (None: the test's own) and `stdin` on standard input.
    fn run_with(&self, shell: &str, path: Option<&Path>, stdin: &str, args: &[&str]) -> Output {
        let mut c = Command::new(shell);
        c.arg(&self.installer)
            .args(args)
            .args(["--dest-root", s(&self.root)])
            .env("TMPDIR", &self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = path {
            c.env("PATH", p);
        }
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// The usual first install: --url, --token-file, --cacert.
    fn install_args(&self) -> Vec<String> {
        vec![
            "--url".into(),
            "https://pulse.example:7655".into(),
            "--token-file".into(),
            s(&self.token_file).into(),
            "--cacert".into(),
            s(&self.ca).into(),
        ]
    }

    fn install(&self, shell: &str, path: Option<&Path>) -> Output {
        let args = self.install_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run_with(shell, path, "", &args)
    }

    fn at(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// Refused with exit 1, `needle` in the message, and nothing installed
    /// or left behind.
    #[track_caller]
    fn refused(&self, o: &Output, needle: &str) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "stderr:\n{err}");
        assert!(
            err.contains("pulse-agent install: error: ") && err.contains(needle),
            "{needle:?} not in:\n{err}"
        );
        self.nothing_installed();
    }

    #[track_caller]
    fn nothing_installed(&self) {
        for p in [
            "/usr/local/bin/pulse-agent",
            "/etc/pulse-agent",
            "/etc/systemd/system/pulse-agent.service",
        ] {
            assert!(!self.at(p).exists(), "{p} exists");
        }
        let bin_dir = self.at("/usr/local/bin");
        if bin_dir.exists() {
            let left: Vec<_> = fs::read_dir(&bin_dir).unwrap().flatten().collect();
            assert!(left.is_empty(), "left in bin: {left:?}");
        }
        let temps: Vec<_> = fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("pulse-agent-install.")
            })
            .collect();
        assert!(temps.is_empty(), "temporary files left: {temps:?}");
    }
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A directory of symlinks to every program in the usual places but `omit`.
fn path_without(at: &Path, omit: &[&str]) -> PathBuf {
    let dir = at.join(format!("path-without-{}", omit.join("-")));
    fs::create_dir_all(&dir).unwrap();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let Ok(entries) = fs::read_dir(d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if omit.iter().any(|o| name == *o) {
                continue;
            }
            let _ = std::os::unix::fs::symlink(e.path(), dir.join(&name));
        }
    }
    dir
}

/// Replaces `file` in `dir` with a copy whose byte at the middle is flipped.
fn flip_a_byte(dir: &Path, file: &str) {
    let p = dir.join(file);
    let mut b = fs::read(&p).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    fs::remove_file(&p).unwrap();
    fs::write(&p, b).unwrap();
}

/// Edits release.json with `f` and signs it again with the channel's key.
fn resign_index(dir: &Path, key: &Path, f: impl FnOnce(String) -> String) {
    let p = dir.join("release.json");
    let text = f(fs::read_to_string(&p).unwrap());
    fs::write(&p, text).unwrap();
    release(&["sign", "--key", s(key), s(&p)]);
}

#[test]
fn installs_the_files_with_their_modes_and_the_token_never_in_argv() {
    let lab = Lab::new("files", |_, _| {});
    let log = lab.dir.join("execve.log");
    let args = lab.install_args();
    let mut strace = vec![
        "-f",
        "-qq",
        "-e",
        "trace=execve",
        "-s",
        "4096",
        "-o",
        s(&log),
        "dash",
        s(&lab.installer),
    ];
    strace.extend(args.iter().map(String::as_str));
    strace.extend(["--dest-root", s(&lab.root)]);
    let out = ok(&Command::new("strace")
        .args(&strace)
        .env("TMPDIR", &lab.dir)
        .output()
        .unwrap());
    assert!(out.contains("installed pulse-agent"), "{out}");
    let trace = fs::read_to_string(&log).unwrap();
    assert!(trace.contains("curl"), "strace saw no curl:\n{trace}");
    assert!(!trace.contains(TOKEN), "the token is in an argv:\n{trace}");

    let bin = lab.at("/usr/local/bin/pulse-agent");
    assert_eq!(
        fs::read(&bin).unwrap(),
        fs::read(env!("CARGO_BIN_EXE_pulse-agent")).unwrap()
    );
    assert_eq!(mode(&bin), 0o755);
    assert!(!lab.at("/usr/local/bin/pulse-agent.previous").exists());
    assert_eq!(mode(&lab.at("/etc/pulse-agent")), 0o755);
    let token = lab.at("/etc/pulse-agent/token");
    assert_eq!(fs::read_to_string(&token).unwrap(), format!("{TOKEN}\n"));
    assert_eq!(mode(&token), 0o600);
    let env = fs::read_to_string(lab.at("/etc/pulse-agent/env")).unwrap();
    assert_eq!(
        env,
        format!(
            "PULSE_URL=https://pulse.example:7655\nPULSE_UPDATE_URL={}\nPULSE_CACERT=/etc/pulse-agent/ca.pem\n",
            lab.channel.url()
        )
    );
    assert!(!env.contains(TOKEN));
    // 0600: PULSE_URL may carry credentials (user:pass@).
    assert_eq!(mode(&lab.at("/etc/pulse-agent/env")), 0o600);
    assert_eq!(
        fs::read_to_string(lab.at("/etc/pulse-agent/ca.pem")).unwrap(),
        lab.channel.pki.ca_pem
    );
    let public = release(&["pubkey", "--key", s(&lab.key)]);
    let keys = fs::read_to_string(lab.at("/etc/pulse-agent/update-keys")).unwrap();
    let listed: Vec<&str> = keys.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(listed, [public.trim()]);
    assert_eq!(mode(&lab.at("/etc/pulse-agent/update-keys")), 0o644);
    let manifest = fs::read_to_string(lab.at("/etc/pulse-agent/installed")).unwrap();
    for line in [
        "bin /usr/local/bin/pulse-agent",
        "unit pulse-agent.service",
        "variant hardened",
        "mode service",
    ] {
        assert!(
            manifest.lines().any(|l| l == line),
            "{line:?} not in\n{manifest}"
        );
    }
    assert_eq!(mode(&lab.at("/var/lib/pulse-agent")), 0o700);
    if unsafe_free_is_root() {
        use std::os::unix::fs::MetadataExt;
        for p in [
            "/etc/pulse-agent/token",
            "/etc/pulse-agent/update-keys",
            "/usr/local/bin/pulse-agent",
        ] {
            assert_eq!(fs::metadata(lab.at(p)).unwrap().uid(), 0, "{p}");
        }
    }
}

fn unsafe_free_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
}

#[test]
fn the_installed_units_are_the_repositorys_byte_for_byte() {
    let lab = Lab::new("units", |_, _| {});
    let units = units_dir(&lab.dir);
    ok(&lab.install("dash", None));
    let installed = lab.at("/etc/systemd/system");
    assert_eq!(
        fs::read(installed.join("pulse-agent.service")).unwrap(),
        fs::read(units.join("pulse-agent.service")).unwrap()
    );
    // Timer mode, compat: the other service goes, the four timer-mode units
    // come from the compat set.
    ok(&lab.run_with("dash", None, "", &["--mode", "timer", "--compat"]));
    assert!(!installed.join("pulse-agent.service").exists());
    for name in &UNITS[1..] {
        assert_eq!(
            fs::read(installed.join(name)).unwrap(),
            fs::read(unit_source(&units, "compat", name)).unwrap(),
            "{name}"
        );
    }
    let manifest = fs::read_to_string(lab.at("/etc/pulse-agent/installed")).unwrap();
    assert!(
        manifest.contains("variant compat\nmode timer\n"),
        "{manifest}"
    );
}

/// Run from a checkout (no units embedded), the installer takes them from
/// contrib/systemd beside it; the compat set shares the timers.
#[test]
fn the_installer_from_a_checkout_takes_its_units_from_contrib_systemd() {
    let lab = Lab::new("checkout", |_, _| {});
    let keys = lab.dir.join("keys");
    fs::write(&keys, release(&["pubkey", "--key", s(&lab.key)])).unwrap();
    let mut args = lab.install_args();
    for a in [
        "--mode",
        "timer",
        "--compat",
        "--channel",
        &lab.channel.url(),
    ] {
        args.push(a.into());
    }
    args.extend(["--key-file".into(), s(&keys).into()]);
    let o = Command::new("dash")
        .arg(repo().join("contrib/install.sh"))
        .args(&args)
        .args(["--dest-root", s(&lab.root)])
        .env("TMPDIR", &lab.dir)
        .output()
        .unwrap();
    ok(&o);
    let src = repo().join("contrib/systemd");
    for name in &UNITS[1..] {
        assert_eq!(
            fs::read(lab.at("/etc/systemd/system").join(name)).unwrap(),
            fs::read(unit_source(&src, "compat", name)).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn an_upgrade_keeps_the_compat_units_chosen_with_compat() {
    let lab = Lab::new("compat-kept", |_, _| {});
    let units = units_dir(&lab.dir);
    let mut args = lab.install_args();
    args.push("--compat".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&lab.run_with("dash", None, "", &args));
    // Again without --compat: still the compat units.
    let out = ok(&lab.run_with("dash", None, "", &[]));
    assert!(out.contains("kept from the last install"), "{out}");
    assert_eq!(
        fs::read(lab.at("/etc/systemd/system/pulse-agent.service")).unwrap(),
        fs::read(units.join("compat/pulse-agent.service")).unwrap()
    );
    // --hardened undoes it (with --dest-root the probe is not run).
    ok(&lab.run_with("dash", None, "", &["--hardened"]));
    assert_eq!(
        fs::read(lab.at("/etc/systemd/system/pulse-agent.service")).unwrap(),
        fs::read(units.join("pulse-agent.service")).unwrap()
    );
    ok(&lab.run_with("dash", None, "", &[]));
    assert_eq!(
        fs::read(lab.at("/etc/systemd/system/pulse-agent.service")).unwrap(),
        fs::read(units.join("pulse-agent.service")).unwrap()
    );
}

#[test]
fn an_upgrade_never_goes_back_to_an_older_release_unless_asked() {
    let lab = Lab::new("downgrade", |_, _| {});
    ok(&lab.install("dash", None));
    // The installed version is now newer than what the channel offers, as
    // when a mirror replays an old (still unexpired) index.
    let manifest = lab.at("/etc/pulse-agent/installed");
    let text = fs::read_to_string(&manifest).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    let newer = text.replace(&format!("version {version}\n"), "version 999.0.0\n");
    assert_ne!(newer, text);
    fs::write(&manifest, newer).unwrap();
    let before = fs::read(lab.at("/usr/local/bin/pulse-agent")).unwrap();
    fs::write(lab.at("/usr/local/bin/pulse-agent"), b"the newer binary").unwrap();
    let o = lab.run_with("dash", None, "", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("older than the installed 999.0.0"), "{err}");
    assert_eq!(
        fs::read(lab.at("/usr/local/bin/pulse-agent")).unwrap(),
        b"the newer binary"
    );
    ok(&lab.run_with("dash", None, "", &["--allow-downgrade"]));
    assert_eq!(
        fs::read(lab.at("/usr/local/bin/pulse-agent")).unwrap(),
        before
    );
}

#[test]
fn version_order_puts_prereleases_before_their_release() {
    // `older A B` from the script itself, sourced up to its options.
    let script = fs::read_to_string(repo().join("contrib/install.sh")).unwrap();
    let start = script.find("older() {").unwrap();
    let end = start + script[start..].find("\n}\n").unwrap() + 3;
    let older = &script[start..end];
    for (a, b, want) in [
        ("1.2.3", "1.2.4", true),
        ("1.2.10", "1.2.9", false),
        ("1.10.0", "1.9.9", false),
        ("2.0.0", "10.0.0", true),
        ("1.0.0-rc.1", "1.0.0", true),
        ("1.0.0", "1.0.0-rc.1", false),
        ("1.0.0-alpha", "1.0.0-beta", true),
        ("1.0.0", "1.0.0", false),
    ] {
        let o = Command::new("dash")
            .args(["-c", &format!("{older}\nolder \"$1\" \"$2\""), "sh", a, b])
            .output()
            .unwrap();
        assert_eq!(o.status.success(), want, "older {a} {b}");
    }
}

#[test]
fn upgrade_in_place_keeps_the_token_the_settings_and_the_previous_binary() {
    let lab = Lab::new("upgrade", |_, _| {});
    ok(&lab.install("dash", None));
    // An admin's own line in env survives.
    let env_path = lab.at("/etc/pulse-agent/env");
    let mut env = fs::read_to_string(&env_path).unwrap();
    env.insert_str(0, "PULSE_INTERVAL=60s\n");
    fs::write(&env_path, &env).unwrap();
    // Again under busybox sh, with no options at all: everything from before.
    let o = Command::new("busybox")
        .args(["sh", s(&lab.installer), "--dest-root", s(&lab.root)])
        .env("TMPDIR", &lab.dir)
        .output()
        .unwrap();
    let out = ok(&o);
    assert!(out.contains("upgraded pulse-agent"), "{out}");
    assert_eq!(
        fs::read_to_string(lab.at("/etc/pulse-agent/token")).unwrap(),
        format!("{TOKEN}\n")
    );
    assert_eq!(fs::read_to_string(&env_path).unwrap(), env);
    assert!(lab.at("/usr/local/bin/pulse-agent.previous").is_file());
    // A new token from standard input replaces it, never through argv.
    let new = "second-token-0a1b2c3d4e5f";
    ok(&lab.run_with("dash", None, &format!("{new}\n"), &["--token-stdin"]));
    let token = lab.at("/etc/pulse-agent/token");
    assert_eq!(fs::read_to_string(&token).unwrap(), format!("{new}\n"));
    assert_eq!(mode(&token), 0o600);
}

#[test]
fn openssl_only_and_ssh_keygen_only_hosts_both_install() {
    let lab = Lab::new("verifiers", |_, _| {});
    let no_ssh = path_without(&lab.dir, &["ssh-keygen"]);
    let out = ok(&lab.install("dash", Some(&no_ssh)));
    assert!(out.contains("signatures: openssl"), "{out}");
    fs::remove_dir_all(&lab.root).unwrap();
    fs::create_dir_all(&lab.root).unwrap();
    let no_openssl = path_without(&lab.dir, &["openssl"]);
    let out = ok(&lab.install("dash", Some(&no_openssl)));
    assert!(out.contains("signatures: ssh-keygen"), "{out}");
    assert!(lab.at("/usr/local/bin/pulse-agent").is_file());
}

#[test]
fn no_verifier_is_refused_with_what_to_install() {
    let lab = Lab::new("no-verifier", |_, _| {});
    let neither = path_without(&lab.dir, &["openssl", "ssh-keygen"]);
    let o = lab.install("dash", Some(&neither));
    lab.refused(&o, "no signature verifier: install OpenSSL 3.0 or later");
}

/// Each refusal under both verifiers.
fn refused_by_both(name: &str, tamper: impl Fn(&Path, &Path), needle: &str) {
    let lab = Lab::new(name, tamper);
    for omit in ["ssh-keygen", "openssl"] {
        let path = path_without(&lab.dir, &[omit]);
        let o = lab.install("dash", Some(&path));
        lab.refused(&o, needle);
    }
}

#[test]
fn a_tampered_binary_is_refused() {
    refused_by_both(
        "tampered",
        |ch, _| flip_a_byte(ch, "pulse-agent-linux-amd64"),
        "release.json says",
    );
}

#[test]
fn a_binary_whose_signature_does_not_match_is_refused() {
    // The index is made again over the tampered binary, so size and hash
    // match; the binary's .sig and .sshsig are the old ones.
    refused_by_both(
        "binary-sig",
        |ch, key| {
            let keep: Vec<(PathBuf, Vec<u8>)> = ["sig", "sshsig"]
                .iter()
                .map(|e| {
                    let p = ch.join(format!("pulse-agent-linux-amd64.{e}"));
                    let b = fs::read(&p).unwrap();
                    (p, b)
                })
                .collect();
            flip_a_byte(ch, "pulse-agent-linux-amd64");
            release(&[
                "index",
                "--key",
                s(key),
                "--version",
                env!("CARGO_PKG_VERSION"),
                s(ch),
            ]);
            for (p, b) in keep {
                fs::write(p, b).unwrap();
            }
        },
        "pulse-agent-linux-amd64's signature does not verify",
    );
}

#[test]
fn a_badly_signed_index_is_refused() {
    refused_by_both(
        "index-sig",
        |ch, _| {
            let p = ch.join("release.json");
            let text = fs::read_to_string(&p)
                .unwrap()
                .replace("\"size\": ", "\"size\": 1");
            fs::write(p, text).unwrap();
        },
        "release.json's signature does not verify with any trusted key",
    );
}

#[test]
fn an_expired_index_is_refused() {
    refused_by_both(
        "expired",
        |ch, key| {
            resign_index(ch, key, |t| {
                let line = t
                    .lines()
                    .find(|l| l.contains("\"expires\""))
                    .unwrap()
                    .to_owned();
                t.replace(&line, "  \"expires\": \"2021-01-01T00:00:00Z\",")
            })
        },
        "release.json expired at 2021-01-01T00:00:00Z",
    );
}

#[test]
fn a_wrong_size_is_refused() {
    refused_by_both(
        "size",
        |ch, key| {
            let size = fs::metadata(ch.join("pulse-agent-linux-amd64"))
                .unwrap()
                .len();
            resign_index(ch, key, |t| {
                t.replace(
                    &format!("\"size\": {size},"),
                    &format!("\"size\": {},", size + 1),
                )
            })
        },
        "release.json says",
    );
}

#[test]
fn a_channel_signed_by_a_key_the_installer_does_not_trust_is_refused() {
    let lab = Lab::new("untrusted", |_, _| {});
    // Publish the installer again with another key: it trusts only that one.
    let other = lab.dir.join("other-key");
    release(&["keygen", "--out", s(&other)]);
    release(&[
        "publish-installer",
        "--key",
        s(&other),
        "--channel",
        &lab.channel.url(),
        "--units",
        s(&units_dir(&lab.dir)),
        s(&repo().join("contrib/install.sh")),
        s(lab.installer.parent().unwrap()),
    ]);
    for omit in ["ssh-keygen", "openssl"] {
        let path = path_without(&lab.dir, &[omit]);
        let o = lab.install("dash", Some(&path));
        lab.refused(
            &o,
            "release.json's signature does not verify with any trusted key",
        );
    }
    // --key-file adds the channel's key: then it installs.
    let keys = lab.dir.join("extra-keys");
    let public = release(&["pubkey", "--key", s(&lab.key)]);
    fs::write(&keys, format!("# the channel's key\n{public}")).unwrap();
    let mut args = lab.install_args();
    args.extend(["--key-file".into(), s(&keys).into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&lab.run_with("dash", None, "", &args));
}

#[test]
fn appliances_without_systemd_and_usage_errors_are_refused_clearly() {
    let lab = Lab::new("refusals", |_, _| {});
    fs::create_dir_all(lab.at("/etc/config")).unwrap();
    fs::write(lab.at("/etc/config/qpkg.conf"), "").unwrap();
    let o = lab.install("dash", None);
    lab.refused(&o, "QNAP QTS has no systemd");
    fs::remove_dir_all(lab.at("/etc/config")).unwrap();
    fs::write(lab.at("/etc/alpine-release"), "3.20.0\n").unwrap();
    let o = lab.install("dash", None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("OpenRC (Alpine)"), "{err}");
    fs::remove_file(lab.at("/etc/alpine-release")).unwrap();
    fs::remove_dir(lab.at("/etc")).unwrap();

    let o = lab.run_with("dash", None, "", &["--url", "https://p", "--token", TOKEN]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--token is not accepted"));
    let o = lab.run_with("dash", None, "", &["--url", "https://p"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("a token is needed"));
    lab.nothing_installed();
}

#[test]
fn the_script_passes_shellcheck_and_runs_under_dash_and_busybox() {
    let o = Command::new("shellcheck")
        .args(["-s", "sh"])
        .arg(repo().join("contrib/install.sh"))
        .output()
        .expect("shellcheck is installed (.ci/run installs it)");
    ok(&o);
    for shell in [&["dash"][..], &["busybox", "sh"]] {
        let lab = Lab::new(&format!("shell-{}", shell.join("-")), |_, _| {});
        let args = lab.install_args();
        let o = Command::new(shell[0])
            .args(&shell[1..])
            .arg(&lab.installer)
            .args(&args)
            .args(["--dest-root", s(&lab.root)])
            .env("TMPDIR", &lab.dir)
            .output()
            .unwrap();
        ok(&o);
        assert!(lab.at("/usr/local/bin/pulse-agent").is_file(), "{shell:?}");
    }
}

/// A channel and a stand-in behind one CA, installed, with an agent ID.
fn installed_beside_standin(name: &str) -> (Lab, StandIn) {
    let lab = Lab::new(name, |_, _| {});
    let standin = StandIn::start_with(Pki {
        ca_pem: lab.channel.pki.ca_pem.clone(),
        leaf_der: lab.channel.pki.leaf_der.clone(),
        leaf_key_der: lab.channel.pki.leaf_key_der.clone(),
    });
    fs::write(&lab.token_file, format!("{REPORT_TOKEN}\n")).unwrap();
    let args = [
        "--url",
        &standin.url(),
        "--token-file",
        s(&lab.token_file),
        "--cacert",
        s(&lab.ca),
    ];
    ok(&lab.run_with("dash", None, "", &args));
    fs::write(lab.at("/var/lib/pulse-agent/agent-id"), "agent-one\n").unwrap();
    (lab, standin)
}

#[test]
fn uninstall_tells_the_server_with_the_token_removes_what_it_installed_and_keeps_state() {
    let (lab, standin) = installed_beside_standin("uninstall");
    standin.own_agent("agent-one", REPORT_TOKEN);
    // A second install leaves a .previous, which goes too.
    ok(&lab.run_with("dash", None, "", &[]));
    assert!(lab.at("/usr/local/bin/pulse-agent.previous").is_file());
    let log = lab.dir.join("execve.log");
    let o = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=execve",
            "-s",
            "4096",
            "-o",
            s(&log),
            "dash",
        ])
        .arg(&lab.installer)
        .args(["--uninstall", "--dest-root", s(&lab.root)])
        .env("TMPDIR", &lab.dir)
        .output()
        .unwrap();
    let out = ok(&o);
    assert!(out.contains("agent agent-one is uninstalled"), "{out}");
    let trace = fs::read_to_string(&log).unwrap();
    assert!(trace.contains("curl"), "{trace}");
    assert!(
        !trace.contains(REPORT_TOKEN),
        "the token is in an argv:\n{trace}"
    );
    assert_eq!(
        standin.uninstalled(),
        [("agent-one".to_string(), REPORT_TOKEN.to_string())]
    );
    for p in [
        "/usr/local/bin/pulse-agent",
        "/usr/local/bin/pulse-agent.previous",
        "/etc/pulse-agent",
        "/etc/systemd/system/pulse-agent.service",
    ] {
        assert!(!lab.at(p).exists(), "{p} is still there");
    }
    assert_eq!(
        fs::read_to_string(lab.at("/var/lib/pulse-agent/agent-id")).unwrap(),
        "agent-one\n"
    );
    // Nothing left to uninstall: said clearly.
    let o = lab.run_with("dash", None, "", &["--uninstall"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing here was installed"));
}

#[test]
fn uninstall_goes_on_when_the_server_refuses_and_purge_removes_state() {
    let (lab, standin) = installed_beside_standin("purge");
    // A file the admin put in /etc/pulse-agent is not the installer's to
    // remove: it stays, with the directory, and a warning says so.
    fs::write(lab.at("/etc/pulse-agent/notes"), "mine\n").unwrap();
    // The token does not own agent-one: 403, a warning, and the uninstall goes on.
    let o = lab.run_with("dash", None, "", &["--uninstall", "--purge"]);
    let out = ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("warning: the server refused (403)"), "{err}");
    assert!(out.contains("and its state"), "{out}");
    assert!(standin.uninstalled().is_empty());
    assert!(!lab.at("/var/lib/pulse-agent").exists());
    assert!(
        err.contains("it holds files this installer did not write"),
        "{err}"
    );
    let left: Vec<_> = fs::read_dir(lab.at("/etc/pulse-agent"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["notes"]);
    assert!(!lab.at("/usr/local/bin/pulse-agent").exists());
}
