//! The updater against a loopback HTTPS release channel with a CA and keys
//! made here. The "installed" binary is always a copy in a temp directory,
//! never the test runner or the built agent.
//!
//! * `adversarial_*`: one refused release each; the installed file is
//!   byte-identical afterwards, nothing of the download is left, and the
//!   error names the check.
//! * `crash_*`: the updater killed (strace fault injection) at each rename,
//!   link, unlink and fsync: the path holds the whole old or the whole new
//!   binary, and the next run succeeds.
//! * `daemon_*`: a running agent updates to a real build of version 99.0.0
//!   (built here with `PULSE_AGENT_VERSION=99.0.0`), keeps its PID and says
//!   `updatedFrom`; a version the server refuses is rolled back, for good.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use common::channel::{Channel, Serve};
use common::proc::Dir;
use common::release_99;
use common::standin::{Mode, Pki, Received, StandIn};
use ed25519_compact::{KeyPair, Seed};
use pulse_agent::remote_config::base64_encode;
use pulse_agent::report::rfc3339;
use pulse_agent::update::{self, Error, Limits, Outcome, Settings, Status, exe};

const DAY: Duration = Duration::from_secs(86400);

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("update-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn keypair(seed: u8) -> KeyPair {
    KeyPair::from_seed(Seed::new([seed; 32]))
}

fn sig_line(kp: &KeyPair, bytes: &[u8]) -> String {
    format!("{}\n", base64_encode(kp.sk.sign(bytes, None).as_ref()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fake release build (see `update/fake-release.rs`), compiled once per
/// (version, self-test behaviour).
fn fake_release(version: &str, self_test: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let key = format!("{version}-{self_test}");
    let mut built = BUILT.lock().unwrap();
    if let Some((_, p)) = built.iter().find(|(k, _)| *k == key) {
        return p.clone();
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("update-fakes");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("fake-{key}-{}", std::process::id()));
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor-free-tests/update/fake-release.rs");
    let status = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--edition", "2021", "-C", "opt-level=1", "-o"])
        .arg(&out)
        .arg(&src)
        .env("FAKE_VERSION", version)
        .env("FAKE_SELF_TEST", self_test)
        .env("FAKE_RECORD", out.with_extension("record"))
        .status()
        .expect("rustc runs");
    assert!(status.success(), "compiling {}", src.display());
    built.push((key, out.clone()));
    out
}

/// What a self-test run of a fake recorded.
fn fake_record(fake: &Path) -> String {
    std::fs::read_to_string(fake.with_extension("record")).unwrap_or_default()
}

/// A channel directory, its server, the keys, and an installed copy of the
/// agent to update.
struct Lab {
    dir: PathBuf,
    channel: Channel,
    key: KeyPair,
    binary: PathBuf,
    original: Vec<u8>,
    state: PathBuf,
}

impl Lab {
    fn new(name: &str) -> Lab {
        Lab::with_pki(name, Pki::new("channel"))
    }

    fn with_pki(name: &str, pki: Pki) -> Lab {
        let dir = tmp(name);
        let chan_dir = dir.join("channel");
        std::fs::create_dir_all(&chan_dir).unwrap();
        let bin_dir = dir.join("bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        let binary = bin_dir.join("pulse-agent");
        std::fs::copy(env!("CARGO_BIN_EXE_pulse-agent"), &binary).unwrap();
        let original = std::fs::read(&binary).unwrap();
        Lab {
            channel: Channel::start(chan_dir, pki),
            key: keypair(1),
            binary,
            original,
            state: dir.join("state"),
            dir,
        }
    }

    fn chan(&self, file: &str) -> PathBuf {
        self.channel.dir.join(file)
    }

    /// Publishes `bytes` as the asset for `target` and a signed index for
    /// `version`; `edit` may change the index before it is signed.
    fn publish(&self, version: &str, bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) {
        let file = "pulse-agent-linux-amd64";
        std::fs::write(self.chan(file), bytes).unwrap();
        std::fs::write(
            self.chan(&format!("{file}.sig")),
            sig_line(&self.key, bytes),
        )
        .unwrap();
        let now = SystemTime::now();
        let mut index = serde_json::json!({
            "name": "pulse-agent", "version": version,
            "released": rfc3339(now - DAY), "expires": rfc3339(now + 30 * DAY),
            "assets": {exe::running_target().unwrap(): {"file": file, "size": bytes.len(), "sha256": sha256_hex(bytes)}}
        });
        edit(&mut index);
        let text = serde_json::to_vec_pretty(&index).unwrap();
        std::fs::write(self.chan("release.json"), &text).unwrap();
        std::fs::write(self.chan("release.json.sig"), sig_line(&self.key, &text)).unwrap();
    }

    fn settings(&self) -> Settings {
        Settings {
            channel: pulse_agent::config::parse_url(&self.channel.url(), false, &|_| None).unwrap(),
            cacert: Some(self.channel.ca_file()),
            keys: vec![self.key.pk],
            binary: self.binary.clone(),
            running: pulse_agent::agent::version(),
            target: exe::running_target().unwrap(),
            elf: exe::running(),
            state_dir: self.state.clone(),
            self_test_args: vec!["--interval=5s".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            token: Some(pulse_agent::config::Secret::new(
                "t0ken-not-for-argv".into(),
            )),
            limits: Limits {
                index: Duration::from_secs(5),
                download: Duration::from_secs(5),
                run: Duration::from_secs(5),
                max_binary: update::MAX_BINARY,
            },
            platform_root: self.dir.join("no-platform"),
            identity: None,
        }
    }

    fn run(&self, s: &Settings) -> Result<Outcome, Error> {
        update::run(s, &Mutex::new(Status::default()), true)
    }

    /// The installed file is untouched and nothing of a download is left.
    fn assert_untouched(&self) {
        assert!(
            std::fs::read(&self.binary).unwrap() == self.original,
            "the installed binary changed"
        );
        let left: Vec<_> = std::fs::read_dir(self.binary.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "pulse-agent")
            .collect();
        assert!(left.is_empty(), "left beside the binary: {left:?}");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs one refused release and checks the verdict.
fn refused(lab: &Lab, s: &Settings, check: &str, detail: &str) {
    let e = lab.run(s).expect_err("the update must be refused");
    assert_eq!(e.check, check, "{e}");
    assert!(e.detail.contains(detail), "{e} lacks {detail:?}");
    lab.assert_untouched();
}

fn passing() -> Vec<u8> {
    std::fs::read(fake_release("99.0.0", "pass")).unwrap()
}

#[test]
fn adversarial_index_unsigned() {
    let lab = Lab::new("unsigned");
    lab.publish("99.0.0", &passing(), |_| {});
    std::fs::remove_file(lab.chan("release.json.sig")).unwrap();
    refused(&lab, &lab.settings(), "index signature", "answered 404");
}

#[test]
fn adversarial_index_badly_signed() {
    let lab = Lab::new("badly-signed");
    lab.publish("99.0.0", &passing(), |_| {});
    // A valid signature by the trusted key, over other bytes.
    std::fs::write(lab.chan("release.json.sig"), sig_line(&lab.key, b"{}")).unwrap();
    refused(
        &lab,
        &lab.settings(),
        "index signature",
        "not signed by a trusted key",
    );
    std::fs::write(lab.chan("release.json.sig"), "not base64 at all\n").unwrap();
    refused(&lab, &lab.settings(), "index signature", "release.json.sig");
}

#[test]
fn adversarial_index_wrongly_keyed() {
    let lab = Lab::new("wrong-key");
    lab.publish("99.0.0", &passing(), |_| {});
    let mut s = lab.settings();
    s.keys = vec![keypair(2).pk];
    refused(&lab, &s, "index signature", "not signed by a trusted key");
}

#[test]
fn adversarial_index_expired() {
    let lab = Lab::new("expired");
    let old = rfc3339(SystemTime::now() - DAY);
    lab.publish("99.0.0", &passing(), |i| i["expires"] = old.clone().into());
    refused(&lab, &lab.settings(), "expiry", "stale or replayed");
}

#[test]
fn adversarial_same_and_older_versions_are_up_to_date() {
    let lab = Lab::new("same-older");
    let running = pulse_agent::agent::version();
    for v in [
        running.trim_start_matches('v').to_string(),
        "0.0.1".to_string(),
    ] {
        lab.publish(&v, &passing(), |_| {});
        assert_eq!(
            lab.run(&lab.settings()).unwrap(),
            Outcome::UpToDate { latest: v }
        );
        lab.assert_untouched();
    }
    // Nothing but the index and its signature was fetched.
    let asked: Vec<_> = lab
        .channel
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.0.clone())
        .collect();
    assert!(
        asked
            .iter()
            .all(|p| p.ends_with("release.json") || p.ends_with("release.json.sig")),
        "{asked:?}"
    );
}

#[test]
fn adversarial_wrong_name() {
    let lab = Lab::new("name");
    lab.publish("99.0.0", &passing(), |i| {
        i["name"] = "pulse-agent-go".into()
    });
    refused(&lab, &lab.settings(), "name", "pulse-agent-go");
}

#[test]
fn adversarial_no_asset_for_this_architecture() {
    let lab = Lab::new("arch");
    lab.publish("99.0.0", &passing(), |i| {
        let a = i["assets"].as_object_mut().unwrap();
        let v = a.remove(exe::running_target().unwrap()).unwrap();
        a.insert("linux-riscv64".into(), v);
    });
    refused(&lab, &lab.settings(), "architecture", "linux-riscv64");
}

#[test]
fn adversarial_binary_signature_missing_bad_or_untrusted() {
    let lab = Lab::new("binary-sig");
    let bytes = passing();
    lab.publish("99.0.0", &bytes, |_| {});
    let sig = lab.chan("pulse-agent-linux-amd64.sig");
    std::fs::remove_file(&sig).unwrap();
    refused(&lab, &lab.settings(), "binary signature", "answered 404");
    std::fs::write(&sig, format!("{}\n", base64_encode(&[9u8; 64]))).unwrap();
    refused(
        &lab,
        &lab.settings(),
        "binary signature",
        "not signed by a trusted key",
    );
    std::fs::write(&sig, sig_line(&keypair(3), &bytes)).unwrap();
    refused(
        &lab,
        &lab.settings(),
        "binary signature",
        "not signed by a trusted key",
    );
}

#[test]
fn adversarial_sha256_mismatch() {
    let lab = Lab::new("sha");
    let bytes = passing();
    lab.publish("99.0.0", &bytes, |i| {
        let a = &mut i["assets"][exe::running_target().unwrap()];
        a["sha256"] = sha256_hex(b"something else").into();
    });
    refused(&lab, &lab.settings(), "sha256", "SHA-256");
}

#[test]
fn adversarial_size_mismatch() {
    let lab = Lab::new("size");
    let bytes = passing();
    lab.publish("99.0.0", &bytes, |i| {
        let a = &mut i["assets"][exe::running_target().unwrap()];
        a["size"] = (bytes.len() + 10).into();
    });
    refused(&lab, &lab.settings(), "size", "the index says");
}

#[test]
fn adversarial_body_longer_than_declared() {
    let lab = Lab::new("longer");
    let bytes = passing();
    // The index declares 1000 bytes less than the file; the server sends
    // no Content-Length, so only the stream limit can stop it.
    lab.publish("99.0.0", &bytes, |i| {
        let a = &mut i["assets"][exe::running_target().unwrap()];
        a["size"] = (bytes.len() - 1000).into();
    });
    lab.channel.rule("pulse-agent-linux-amd64", Serve::NoLength);
    refused(&lab, &lab.settings(), "download", "longer than");
}

#[test]
fn adversarial_endless_body_without_content_length() {
    let lab = Lab::new("endless");
    lab.publish("99.0.0", &passing(), |_| {});
    lab.channel.rule("pulse-agent-linux-amd64", Serve::Endless);
    refused(&lab, &lab.settings(), "download", "longer than");
}

#[test]
fn adversarial_content_length_over_the_cap() {
    let lab = Lab::new("over-cap");
    let bytes = passing();
    lab.publish("99.0.0", &bytes, |_| {});
    // Declared over the cap: refused before a byte of the body is read.
    lab.channel.rule(
        "pulse-agent-linux-amd64",
        Serve::Declare(update::MAX_BINARY + 1),
    );
    refused(&lab, &lab.settings(), "download", "over the limit");
    // An index that declares more than the cap is refused before the download.
    let mut s = lab.settings();
    s.limits.max_binary = bytes.len() as u64 - 1;
    lab.channel.clear_rules();
    refused(&lab, &s, "size", "over the limit");
    let asked = lab.channel.requests.lock().unwrap().len();
    refused(&lab, &s, "size", "over the limit");
    assert_eq!(
        lab.channel.requests.lock().unwrap().len(),
        asked + 2,
        "only the index and its signature"
    );
}

#[test]
fn adversarial_not_an_executable() {
    let lab = Lab::new("not-exe");
    lab.publish("99.0.0", b"#!/bin/sh\necho pwned\n", |_| {});
    refused(
        &lab,
        &lab.settings(),
        "executable",
        "no ELF, Mach-O or PE magic",
    );
    lab.publish(
        "99.0.0",
        b"\xcf\xfa\xed\xfe\x07\x00\x00\x01 a Mach-O header",
        |_| {},
    );
    refused(&lab, &lab.settings(), "machine", "Mach-O");
}

#[test]
fn adversarial_elf_for_another_machine() {
    let lab = Lab::new("foreign-elf");
    let mut bytes = passing();
    // The same program, its header saying AArch64: refused before it runs.
    bytes[18..20].copy_from_slice(&exe::EM_AARCH64.to_le_bytes());
    let fake = fake_release("99.0.0", "pass");
    let _ = std::fs::remove_file(fake.with_extension("record"));
    lab.publish("99.0.0", &bytes, |_| {});
    refused(&lab, &lab.settings(), "machine", "linux-arm64");
}

#[test]
fn adversarial_version_that_disagrees() {
    let lab = Lab::new("version");
    lab.publish("98.0.0", &passing(), |_| {});
    refused(&lab, &lab.settings(), "--version", "v99.0.0");
}

#[test]
fn adversarial_self_test_fails() {
    let lab = Lab::new("self-test-fails");
    lab.publish(
        "99.0.0",
        &std::fs::read(fake_release("99.0.0", "fail")).unwrap(),
        |_| {},
    );
    refused(
        &lab,
        &lab.settings(),
        "self-test",
        "cannot load the configuration",
    );
}

#[test]
fn adversarial_self_test_hangs() {
    let lab = Lab::new("self-test-hangs");
    lab.publish(
        "99.0.0",
        &std::fs::read(fake_release("99.0.0", "hang")).unwrap(),
        |_| {},
    );
    let mut s = lab.settings();
    s.limits.run = Duration::from_secs(2);
    let started = std::time::Instant::now();
    refused(&lab, &s, "self-test", "did not finish within");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn adversarial_redirect_to_http() {
    let lab = Lab::new("redirect");
    lab.publish("99.0.0", &passing(), |_| {});
    lab.channel.rule(
        "release.json",
        Serve::Redirect("http://127.0.0.1:9/release.json".into()),
    );
    refused(
        &lab,
        &lab.settings(),
        "index",
        "only https redirects are followed",
    );
    lab.channel.clear_rules();
    lab.channel.rule(
        "pulse-agent-linux-amd64",
        Serve::Redirect(format!(
            "http://127.0.0.1:{}/channel/x",
            lab.channel.addr.port()
        )),
    );
    refused(
        &lab,
        &lab.settings(),
        "download",
        "only https redirects are followed",
    );
}

#[test]
fn adversarial_wrong_tls_certificate() {
    let lab = Lab::new("wrong-cert");
    lab.publish("99.0.0", &passing(), |_| {});
    let mut s = lab.settings();
    // Trust another CA than the one that signed the channel's certificate.
    let other = lab.dir.join("other-ca.pem");
    std::fs::write(&other, Pki::new("other").ca_pem).unwrap();
    s.cacert = Some(other);
    refused(&lab, &s, "index", "certificate");
}

#[test]
fn adversarial_server_stalls_mid_body() {
    let lab = Lab::new("stall");
    lab.publish("99.0.0", &passing(), |_| {});
    lab.channel
        .rule("pulse-agent-linux-amd64", Serve::StallAfter(10_000));
    let mut s = lab.settings();
    s.limits.download = Duration::from_secs(2);
    let started = std::time::Instant::now();
    refused(&lab, &s, "download", "");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn adversarial_full_disk_beside_the_binary() {
    let lab = Lab::new("full-disk");
    lab.publish("99.0.0", &passing(), |_| {});
    // The binary's directory on a filesystem too small for the download.
    let small = lab.dir.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&small)
        .status()
        .expect("mount runs");
    assert!(
        mounted.success(),
        "this test mounts a 64 KiB tmpfs (it needs root)"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let mut s = lab.settings();
    s.binary = small.join("pulse-agent");
    std::fs::write(&s.binary, b"old binary").unwrap();
    let e = lab.run(&s).expect_err("refused");
    assert_eq!(e.check, "download", "{e}");
    assert!(e.detail.contains("No space left on device"), "{e}");
    assert_eq!(std::fs::read(&s.binary).unwrap(), b"old binary");
    let names: Vec<_> = std::fs::read_dir(&small)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("pulse-agent")]);
}

#[test]
fn adversarial_world_writable_key_file() {
    let dir = tmp("key-file");
    let file = dir.join("update-keys");
    std::fs::write(
        &file,
        format!("# ours\n{}\n", base64_encode(keypair(1).pk.as_ref())),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o646)).unwrap();
    let (keys, warnings) = update::trusted_keys(None, &file);
    assert!(keys.is_empty());
    assert!(
        warnings[0].contains("writable by nobody else"),
        "{warnings:?}"
    );
    // The agent says so and installs nothing.
    let lab = Lab::new("key-file-agent");
    lab.publish("99.0.0", &passing(), |_| {});
    let out = Command::new(&lab.binary)
        .args(["update", &format!("--update-url={}", lab.channel.url())])
        .arg(format!("--update-key-file={}", file.display()))
        .arg(format!("--state-dir={}", lab.state.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("writable by nobody else") && err.contains("no trusted release key"),
        "{err}"
    );
    lab.assert_untouched();
    // Root's and 0644, the same file is used.
    if unsafe_free_is_root() {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(update::trusted_keys(None, &file).0, vec![keypair(1).pk]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn unsafe_free_is_root() -> bool {
    pulse_agent::sys::geteuid() == 0
}

#[test]
fn an_update_installs_keeps_previous_and_hands_the_token_over_in_a_file() {
    let lab = Lab::new("happy");
    let new = passing();
    lab.publish("99.0.0", &new, |_| {});
    let status = Mutex::new(Status::default());
    let s = lab.settings();
    assert_eq!(
        update::run(&s, &status, false).unwrap(),
        Outcome::Available {
            version: "99.0.0".into()
        }
    );
    lab.assert_untouched();
    assert_eq!(
        update::run(&s, &status, true).unwrap(),
        Outcome::Installed {
            version: "99.0.0".into()
        }
    );
    assert_eq!(std::fs::read(&lab.binary).unwrap(), new);
    assert_eq!(
        std::fs::read(update::install::previous_path(&lab.binary)).unwrap(),
        lab.original
    );
    let mode = std::fs::metadata(&lab.binary).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
    // The self-test got the agent's flags and the token in a 0600 file,
    // never in argv or the environment; the file is gone.
    let record = fake_record(&fake_release("99.0.0", "pass"));
    let args_line = record.lines().next().unwrap();
    assert!(
        args_line.contains("--interval=5s") && args_line.contains("--token-file="),
        "{record}"
    );
    assert!(!args_line.contains("t0ken-not-for-argv"));
    assert!(
        !record
            .lines()
            .any(|l| l.starts_with("env ") && l.contains("t0ken")),
        "{record}"
    );
    assert!(
        record.contains("token-file-mode=600\ntoken=t0ken-not-for-argv"),
        "{record}"
    );
    assert!(
        !std::fs::read_dir(&lab.state)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("token"))
    );
    let st = status.lock().unwrap().clone();
    assert_eq!(st.state, update::State::Idle);
    assert!(st.last_success.is_some() && st.installs == 1);
    // No token ever went to the channel.
    for (path, headers) in lab.channel.requests.lock().unwrap().iter() {
        assert!(
            !headers
                .iter()
                .any(|h| h.to_ascii_lowercase().starts_with("authorization")
                    || h.to_ascii_lowercase().starts_with("x-api-token")),
            "{path}: {headers:?}"
        );
    }
    // The new version is on trial: no second install meanwhile.
    let mut s2 = s.clone();
    s2.running = "v99.0.0".into();
    assert_eq!(
        update::run(&s2, &status, true).unwrap(),
        Outcome::OnTrial {
            version: "99.0.0".into()
        }
    );
}

/// A key file the agent accepts: root's, mode 0644.
fn key_file(lab: &Lab) -> PathBuf {
    assert!(
        unsafe_free_is_root(),
        "the binary-level update tests need root: the agent trusts only a key file owned by root"
    );
    let p = lab.dir.join("update-keys");
    std::fs::write(
        &p,
        format!(
            "# test release key\n{}\n",
            base64_encode(lab.key.pk.as_ref())
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

/// A lab whose channel presents the stand-in's certificate, so one
/// `--cacert` serves both (as one organisation's CA would).
fn lab_beside(name: &str, standin: &StandIn) -> Lab {
    Lab::with_pki(
        name,
        Pki {
            ca_pem: standin.pki.ca_pem.clone(),
            leaf_der: standin.pki.leaf_der.clone(),
            leaf_key_der: standin.pki.leaf_key_der.clone(),
        },
    )
}

/// Starts the installed copy as a daemon reporting to `standin` every second.
fn start_daemon(lab: &Lab, standin: &StandIn, dir: &Dir) -> (std::process::Child, PathBuf) {
    start_daemon_with(lab, standin, dir, &[])
}

fn start_daemon_with(
    lab: &Lab,
    standin: &StandIn,
    dir: &Dir,
    extra: &[&str],
) -> (std::process::Child, PathBuf) {
    let mut args = common::proc::args(standin, dir, extra);
    args.push(format!("--update-url={}", lab.channel.url()));
    args.push(format!("--update-key-file={}", key_file(lab).display()));
    args.retain(|a| !a.starts_with("--state-dir="));
    args.push(format!("--state-dir={}", lab.state.display()));
    let log = lab.dir.join("agent.log");
    let child = Command::new(&lab.binary)
        .args(&args)
        .env_clear()
        .env("LOG_LEVEL", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, log)
}

fn version_of(r: &Received) -> String {
    r.doc
        .as_ref()
        .and_then(|d| d["agent"]["version"].as_str())
        .unwrap_or("")
        .to_string()
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn daemon_updates_to_99_keeps_its_pid_and_says_updated_from() {
    let standin = StandIn::start();
    let lab = lab_beside("daemon", &standin);
    let new = std::fs::read(release_99()).unwrap();
    lab.publish("99.0.0", &new, |_| {});
    let dir = Dir::new("update-daemon");
    let port = common::proc::free_port();
    let health = format!("--health-addr=127.0.0.1:{port}");
    let (child, log) = start_daemon_with(&lab, &standin, &dir, &[&health]);
    let mut child = Killed(child);
    let pid = child.0.id();
    let ok = standin.wait_for(Duration::from_secs(90), |r| {
        r.iter().filter(|x| version_of(x) == "v99.0.0").count() >= 2
    });
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ok, "no two reports of v99.0.0; log:\n{log_text}");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the process ended:\n{log_text}"
    );
    // The same process (PID) now runs the new binary.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, lab.binary, "{log_text}");
    assert_eq!(std::fs::read(&lab.binary).unwrap(), new);
    assert_eq!(
        std::fs::read(update::install::previous_path(&lab.binary)).unwrap(),
        lab.original
    );
    let reports = standin.reports();
    let old: Vec<_> = reports
        .iter()
        .filter(|r| version_of(r) == pulse_agent::agent::version())
        .collect();
    assert!(!old.is_empty(), "the old version reported first");
    let first_new = reports.iter().find(|r| version_of(r) == "v99.0.0").unwrap();
    let doc = first_new.doc.as_ref().unwrap();
    assert_eq!(
        doc["agent"]["updatedFrom"],
        pulse_agent::agent::version().as_str(),
        "{doc}"
    );
    assert_eq!(doc["agent"]["update"]["state"], "idle", "{doc}");
    assert_eq!(doc["agent"]["update"]["autoUpdate"], true);
    assert!(doc["agent"]["update"]["lastSuccessAt"].is_string(), "{doc}");
    // The trial passed with that delivery: later reports no longer say it.
    let later: Vec<_> = reports
        .iter()
        .filter(|r| version_of(r) == "v99.0.0")
        .skip(1)
        .collect();
    assert!(later.iter().all(|r| {
        r.doc.as_ref().unwrap()["agent"]
            .get("updatedFrom")
            .is_none()
    }));
    let record = std::fs::read_to_string(lab.state.join("update.json")).unwrap();
    assert!(!record.contains("\"trial\""), "{record}");
    assert!(
        standin.schema_notes().is_empty(),
        "{:?}",
        standin.schema_notes()
    );
    assert!(
        log_text.contains("installed pulse-agent 99.0.0") && log_text.contains("passed its trial"),
        "{log_text}"
    );
    // /status and /metrics of the new process show the updater too.
    let (code, _, body) =
        common::proc::ask(port, "GET /status HTTP/1.0\r\n\r\n", Duration::from_secs(5));
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["agent"]["version"], "v99.0.0");
    assert_eq!(status["update"]["autoUpdate"], true, "{status}");
    assert!(status["update"]["lastSuccessAt"].is_string(), "{status}");
    let (code, _, metrics) = common::proc::ask(
        port,
        "GET /metrics HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(code, 200);
    for line in [
        "pulse_agent_update_state{state=\"idle\"} 1",
        "pulse_agent_update_state{state=\"error\"} 0",
        "pulse_agent_update_installs_total 0",
        "pulse_agent_update_last_success_timestamp_seconds ",
    ] {
        assert!(
            metrics.contains(line),
            "/metrics lacks {line:?}:\n{metrics}"
        );
    }
}

#[test]
fn daemon_rolls_back_a_version_the_server_refuses_and_never_installs_it_again() {
    let standin = StandIn::start();
    let lab = lab_beside("rollback", &standin);
    let new = std::fs::read(release_99()).unwrap();
    lab.publish("99.0.0", &new, |_| {});
    standin.set_mode(Mode::Status(400));
    let dir = Dir::new("update-rollback");
    let (child, log) = start_daemon(&lab, &standin, &dir);
    let mut child = Killed(child);
    let pid = child.0.id();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let until = std::time::Instant::now() + Duration::from_secs(90);
        while !f() {
            assert!(
                std::time::Instant::now() < until,
                "waited for {what}; log:\n{}",
                read_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("the install", &|| {
        read_log().contains("installed pulse-agent 99.0.0")
    });
    wait("the rollback", &|| {
        read_log().contains("rolling back from pulse-agent v99.0.0")
    });
    wait("the old binary back", &|| {
        std::fs::read(&lab.binary).unwrap() == lab.original
    });
    standin.set_mode(Mode::Normal);
    assert!(
        standin.wait_for(Duration::from_secs(30), |r| r
            .iter()
            .any(|x| x.status == 200)),
        "no report after the rollback:\n{}",
        read_log()
    );
    // Past the restored binary's first check (5 s): it does not install 99 again.
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the process ended:\n{}",
        read_log()
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        lab.binary
    );
    assert_eq!(
        std::fs::read(&lab.binary).unwrap(),
        lab.original,
        "99.0.0 was installed again"
    );
    let last = standin
        .reports()
        .into_iter()
        .rev()
        .find(|r| r.status == 200)
        .unwrap();
    let doc = last.doc.unwrap();
    assert_eq!(
        doc["agent"]["version"],
        pulse_agent::agent::version().as_str()
    );
    let update = &doc["agent"]["update"];
    assert_eq!(update["state"], "error", "{doc}");
    let why = update["lastError"].as_str().unwrap();
    assert!(
        why.starts_with("rolled back from v99.0.0: the server refused its first 3 reports"),
        "{why}"
    );
    assert!(why.contains("not installing it again"), "{why}");
    assert_eq!(update["availableVersion"], "99.0.0");
    assert_eq!(
        read_log().matches("installed pulse-agent 99.0.0").count(),
        1,
        "{}",
        read_log()
    );
}

/// The syscalls an update makes that change the binary's directory or make
/// it durable, and how often each is made (an strace run without faults).
fn counted_syscalls(lab: &Lab, args: &[String]) -> Vec<(String, usize)> {
    let trace = lab.dir.join("strace.out");
    let names = "rename,renameat,renameat2,link,linkat,unlink,unlinkat,fsync,fdatasync";
    let st = Command::new("strace")
        .args(["-f", "-qq", "-e", &format!("trace={names}"), "-o"])
        .arg(&trace)
        .arg(&lab.binary)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("strace runs (apt-get install strace)");
    assert!(st.success());
    let text = std::fs::read_to_string(&trace).unwrap();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for line in text.lines() {
        let call = line.split_whitespace().nth(1).unwrap_or("");
        let name = call.split('(').next().unwrap_or("");
        if names.split(',').any(|n| n == name) {
            match counts.iter_mut().find(|(n, _)| n == name) {
                Some((_, c)) => *c += 1,
                None => counts.push((name.to_string(), 1)),
            }
        }
    }
    counts
}

#[test]
fn crash_at_every_rename_link_unlink_and_fsync_leaves_a_whole_binary() {
    let lab = Lab::new("crash");
    let new = std::fs::read(release_99()).unwrap();
    lab.publish("99.0.0", &new, |_| {});
    let token = lab.dir.join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let args = vec![
        "update".to_string(),
        // Never contacted by an update; a new version's trial needs a server.
        "--url=https://127.0.0.1:9".to_string(),
        format!("--token-file={}", token.display()),
        format!("--update-url={}", lab.channel.url()),
        format!("--update-key-file={}", key_file(&lab).display()),
        format!("--state-dir={}", lab.state.display()),
        format!("--cacert={}", lab.channel.ca_file().display()),
    ];
    let reset = || {
        let _ = std::fs::remove_dir_all(&lab.state);
        let _ = std::fs::remove_file(update::install::previous_path(&lab.binary));
        std::fs::write(&lab.binary, &lab.original).unwrap();
        std::fs::set_permissions(&lab.binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    reset();
    let counts = counted_syscalls(&lab, &args);
    assert_eq!(
        std::fs::read(&lab.binary).unwrap(),
        new,
        "the traced run installs"
    );
    for call in ["rename", "link", "unlink", "fsync"] {
        assert!(
            counts.iter().any(|(n, _)| n.starts_with(call)),
            "no {call} in {counts:?}"
        );
    }
    eprintln!("faults injected at: {counts:?}");
    let mut killed = 0;
    for (name, count) in &counts {
        for n in 1..=*count {
            reset();
            let out = Command::new("strace")
                .args(["-f", "-qq", "-o", "/dev/null", "-e"])
                .arg(format!("inject={name}:signal=KILL:when={n}"))
                .arg(&lab.binary)
                .args(&args)
                .output()
                .unwrap();
            let after = std::fs::read(&lab.binary).unwrap();
            let whole = after == lab.original || after == new;
            assert!(
                whole,
                "killed at {name} #{n}: the path holds neither binary whole"
            );
            killed += usize::from(!out.status.success());
            // The next run (of whatever is installed now) succeeds and ends
            // with the new version installed.
            let next = Command::new(&lab.binary).args(&args).output().unwrap();
            assert!(
                next.status.success(),
                "after a kill at {name} #{n}: {}{}",
                String::from_utf8_lossy(&next.stdout),
                String::from_utf8_lossy(&next.stderr)
            );
            assert_eq!(
                std::fs::read(&lab.binary).unwrap(),
                new,
                "after a kill at {name} #{n}"
            );
            let left: Vec<_> = std::fs::read_dir(lab.binary.parent().unwrap())
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.contains(".update-"))
                .collect();
            assert!(
                left.is_empty(),
                "after a kill at {name} #{n}, left: {left:?}"
            );
        }
    }
    assert!(
        killed >= counts.len(),
        "the faults killed only {killed} runs"
    );
}

#[test]
fn a_trial_counts_starts_without_a_clean_stop_and_rolls_back_at_the_second() {
    let dir = tmp("trial");
    let record = update::record::Record {
        trial: Some(update::record::Trial {
            from: "v0.1.0".into(),
            to: "99.0.0".into(),
            installed_at: SystemTime::now(),
            running: false,
            crashes: 0,
            refusals: 0,
        }),
        ..Default::default()
    };
    record.save(&dir).unwrap();
    let pending = update::Verdict::Pending {
        from: "v0.1.0".into(),
    };
    // Another version's start is not this trial's business.
    assert_eq!(update::trial_start(&dir, "v0.1.0"), update::Verdict::None);
    // Start, clean stop, start: no crash.
    assert_eq!(update::trial_start(&dir, "v99.0.0"), pending);
    update::trial_stop(&dir, "v99.0.0");
    assert_eq!(update::trial_start(&dir, "v99.0.0"), pending);
    // No stop: one crash; again: the second, and the verdict.
    assert_eq!(update::trial_start(&dir, "v99.0.0"), pending);
    assert_eq!(
        update::trial_start(&dir, "v99.0.0"),
        update::Verdict::RollBack("it exited abnormally 2 times".into())
    );
    // A server that cannot be reached gives no statuses: nothing counted.
    record.save(&dir).unwrap();
    assert_eq!(
        update::trial_answers(&dir, "v99.0.0", &[]),
        update::Verdict::None
    );
    // A busy server or a failing proxy is a server not reached either.
    assert_eq!(
        update::trial_answers(&dir, "v99.0.0", &[500, 502, 503, 429, 408]),
        pending
    );
    assert_eq!(update::trial_answers(&dir, "v99.0.0", &[500, 400]), pending);
    assert_eq!(update::trial_answers(&dir, "v99.0.0", &[401]), pending);
    assert_eq!(
        update::trial_answers(&dir, "v99.0.0", &[403]),
        update::Verdict::RollBack(
            "the server refused its first 3 reports (last status 403)".into()
        )
    );
    // A 2xx ends the trial.
    record.save(&dir).unwrap();
    assert_eq!(
        update::trial_answers(&dir, "v99.0.0", &[502, 200]),
        update::Verdict::Passed {
            from: "v0.1.0".into()
        }
    );
    assert_eq!(update::trial_start(&dir, "v99.0.0"), update::Verdict::None);
    let _ = std::fs::remove_dir_all(&dir);
}

fn dir_token(lab: &Lab) -> PathBuf {
    let p = lab.dir.join("token");
    std::fs::write(&p, format!("{}\n", common::standin::REPORT_TOKEN)).unwrap();
    p
}

/// Installs the 99.0.0 build on `lab` with `pulse-agent update`, as a user
/// would by hand; it is then on trial.
fn install_99_by_hand(lab: &Lab, standin: &StandIn) -> Vec<u8> {
    let new = std::fs::read(release_99()).unwrap();
    lab.publish("99.0.0", &new, |_| {});
    let out = Command::new(&lab.binary)
        .arg("update")
        .arg(format!("--url={}", standin.url()))
        .arg(format!("--token-file={}", dir_token(lab).display()))
        .arg(format!("--update-url={}", lab.channel.url()))
        .arg(format!("--update-key-file={}", key_file(lab).display()))
        .arg(format!("--state-dir={}", lab.state.display()))
        .arg(format!("--cacert={}", lab.channel.ca_file().display()))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.starts_with("installed pulse-agent 99.0.0"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&lab.binary).unwrap(), new);
    new
}

fn trial_of(lab: &Lab) -> serde_json::Value {
    let text = std::fs::read_to_string(lab.state.join("update.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["trial"].clone()
}

/// Waits until the agent's log says it is on trial.
fn wait_on_trial(log: &Path) {
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("is on trial")
    {
        assert!(
            std::time::Instant::now() < until,
            "{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn daemon_rolls_back_a_version_that_crashes_twice() {
    let standin = StandIn::start();
    let lab = lab_beside("crash-rollback", &standin);
    let new = install_99_by_hand(&lab, &standin);
    // The new version starts and is killed twice before it delivers: the
    // server is down meanwhile (which is not the version's fault).
    standin.set_mode(Mode::Status(503));
    let dir = Dir::new("update-crash-rollback");
    for _ in 0..2 {
        let (child, log) = start_daemon(&lab, &standin, &dir);
        let mut child = Killed(child);
        wait_on_trial(&log);
        child.0.kill().unwrap();
        let _ = child.0.wait();
    }
    assert_eq!(
        std::fs::read(&lab.binary).unwrap(),
        new,
        "not yet rolled back"
    );
    // The third start rolls back and runs the old binary.
    standin.set_mode(Mode::Normal);
    let (child, log) = start_daemon(&lab, &standin, &dir);
    let _child = Killed(child);
    let ok = standin.wait_for(Duration::from_secs(30), |r| {
        r.iter()
            .any(|x| x.status == 200 && version_of(x) == pulse_agent::agent::version())
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ok, "{text}");
    assert_eq!(std::fs::read(&lab.binary).unwrap(), lab.original);
    let doc = standin
        .reports()
        .into_iter()
        .rev()
        .find(|r| r.status == 200)
        .unwrap()
        .doc
        .unwrap();
    let why = doc["agent"]["update"]["lastError"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(
        why, "rolled back from v99.0.0: it exited abnormally 2 times",
        "{doc}"
    );
    assert!(
        text.contains("rolling back from pulse-agent v99.0.0: it exited abnormally 2 times"),
        "{text}"
    );
}

#[test]
fn daemon_without_a_key_or_switched_off_says_so_and_never_asks_the_channel() {
    let standin = StandIn::start();
    let lab = lab_beside("off", &standin);
    lab.publish("99.0.0", &passing(), |_| {});
    let dir = Dir::new("update-off");
    let no_keys = lab.dir.join("no-such-key-file");
    for (extra, state, why) in [
        (
            format!("--update-key-file={}", no_keys.display()),
            "disabled",
            Some("no trusted release key"),
        ),
        ("--disable-auto-update".to_string(), "disabled", None),
    ] {
        let mut args = common::proc::args(&standin, &dir, &[]);
        args.push(format!("--update-url={}", lab.channel.url()));
        args.push(extra.clone());
        let seen = standin.reports().len();
        let mut child = Killed(
            Command::new(&lab.binary)
                .args(&args)
                .env_clear()
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        // Past the first check's time (5 s after start).
        assert!(standin.wait_for(Duration::from_secs(30), |r| r.len() >= seen + 7));
        child.0.kill().unwrap();
        let _ = child.0.wait();
        let doc = standin.reports().last().unwrap().doc.clone().unwrap();
        let update = &doc["agent"]["update"];
        assert_eq!(update["state"], state, "{extra}: {doc}");
        assert_eq!(update["autoUpdate"], false, "{extra}");
        match why {
            Some(w) => assert!(
                update["lastError"].as_str().unwrap_or("").contains(w),
                "{extra}: {update}"
            ),
            None => assert!(update.get("lastError").is_none(), "{extra}: {update}"),
        }
    }
    assert!(
        lab.channel.requests.lock().unwrap().is_empty(),
        "the channel was asked"
    );
    lab.assert_untouched();
}

#[test]
fn the_update_command_needs_a_server_and_check_changes_nothing() {
    let lab = Lab::new("command");
    lab.publish("99.0.0", &passing(), |_| {});
    let base = |extra: &[&str]| {
        let mut c = Command::new(&lab.binary);
        c.arg("update")
            .arg(format!("--update-url={}", lab.channel.url()))
            .arg(format!("--update-key-file={}", key_file(&lab).display()))
            .arg(format!("--state-dir={}", lab.state.display()))
            .arg(format!("--cacert={}", lab.channel.ca_file().display()))
            .args(extra);
        c.output().unwrap()
    };
    // No server: a new version could never prove itself.
    let out = base(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no --url"),
        "{out:?}"
    );
    // --check says what is there and writes nothing, not even the state dir.
    let token = dir_token(&lab);
    let out = base(&[
        "--check",
        "--url=https://127.0.0.1:9",
        &format!("--token-file={}", token.display()),
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        said.starts_with("pulse-agent 99.0.0 is available (running v"),
        "{said}"
    );
    assert!(!lab.state.exists(), "--check created the state directory");
    lab.assert_untouched();
    // --check belongs to the update command.
    let out = Command::new(&lab.binary).arg("--check").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_stop_during_a_trial_with_a_hung_server_is_not_counted_as_a_crash() {
    let standin = StandIn::start();
    let lab = lab_beside("slow-stop", &standin);
    install_99_by_hand(&lab, &standin);
    // The server hangs: the cycle is still delivering when SIGTERM comes,
    // so the stop watchdog ends the process (exit 0) after its grace time.
    standin.set_mode(Mode::Slow(Duration::from_secs(30)));
    let dir = Dir::new("update-slow-stop");
    let (child, log) = start_daemon(&lab, &standin, &dir);
    let mut child = Killed(child);
    wait_on_trial(&log);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(trial_of(&lab)["running"], true);
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let trial = trial_of(&lab);
    assert_eq!(trial["running"], false, "{trial}");
    assert_eq!(trial["crashes"], 0, "{trial}");
}

#[test]
fn starts_that_fail_before_the_first_cycle_count_as_abnormal_exits() {
    let standin = StandIn::start();
    let lab = lab_beside("early-fail", &standin);
    let new = install_99_by_hand(&lab, &standin);
    // Another process holds the state directory's lock: the new version
    // exits 1 at start, before any cycle, twice.
    std::fs::create_dir_all(&lab.state).unwrap();
    let mut holder = Killed(
        // -o: flock holds the lock itself, so killing it releases it.
        Command::new("flock")
            .arg("-o")
            .arg(lab.state.join("lock"))
            .args(["sleep", "60"])
            .spawn()
            .expect("flock (util-linux) runs"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let dir = Dir::new("update-early-fail");
    for _ in 0..2 {
        let (child, log) = start_daemon(&lab, &standin, &dir);
        let mut child = Killed(child);
        let status = child.0.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(status.code(), Some(1), "{text}");
        assert!(text.contains("is on trial"), "{text}");
    }
    assert_eq!(std::fs::read(&lab.binary).unwrap(), new);
    assert_eq!(trial_of(&lab)["crashes"], 1);
    holder.0.kill().unwrap();
    let _ = holder.0.wait();
    // The third start rolls back.
    let (child, log) = start_daemon(&lab, &standin, &dir);
    let _child = Killed(child);
    let ok = standin.wait_for(Duration::from_secs(30), |r| {
        r.iter()
            .any(|x| version_of(x) == pulse_agent::agent::version())
    });
    assert!(ok, "{}", std::fs::read_to_string(&log).unwrap_or_default());
    assert_eq!(std::fs::read(&lab.binary).unwrap(), lab.original);
}

#[test]
fn a_rollback_never_goes_over_a_binary_replaced_since_the_version_started() {
    let dir = tmp("replaced");
    let state = dir.join("state");
    let binary = dir.join("pulse-agent");
    std::fs::write(&binary, b"v99, the version on trial").unwrap();
    let running = update::file_identity(&binary);
    std::fs::write(update::install::previous_path(&binary), b"v0.1.0").unwrap();
    // A package puts v3 in place (a new file, renamed over the path).
    let pkg = dir.join("pkg-new");
    std::fs::write(&pkg, b"v3 from the package").unwrap();
    std::fs::rename(&pkg, &binary).unwrap();
    let e = update::roll_back(
        &state,
        &binary,
        "v99.0.0",
        running,
        "it exited abnormally 2 times",
    )
    .unwrap_err();
    assert!(e.contains("was replaced since this version started"), "{e}");
    assert_eq!(std::fs::read(&binary).unwrap(), b"v3 from the package");
    // The same file still in place: rolled back.
    std::fs::write(&binary, b"v99 again").unwrap();
    let running = update::file_identity(&binary);
    update::roll_back(&state, &binary, "v99.0.0", running, "why").unwrap();
    assert_eq!(std::fs::read(&binary).unwrap(), b"v0.1.0");
    let record = update::record::Record::load(&state);
    assert!(record.is_refused("99.0.0"));
    let _ = std::fs::remove_dir_all(&dir);
}
