//! End-to-end: the maintainer's release tool (`contrib/release/pulse-release.rs`,
//! the `pulse-release` example) run on temporary directories: keys, the
//! channel files it writes, and its checks.
//!
//! Cargo builds examples for a plain `cargo test`, not for
//! `cargo test --test release_tool` alone: then run
//! `cargo build --example pulse-release` first (a stale build is tested as it is).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use pulse_agent::remote_config::{base64_decode, base64_encode, parse_rfc3339};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The built tool, beside the agent binary Cargo builds for this test.
fn tool() -> PathBuf {
    let agent = Path::new(env!("CARGO_BIN_EXE_pulse-agent"));
    let path = agent
        .parent()
        .expect("the agent binary is in a directory")
        .join("examples/pulse-release");
    assert!(
        path.is_file(),
        "{} is missing: `cargo test` builds it, `cargo test --test release_tool` \
         does not; run `cargo build --example pulse-release` first",
        path.display()
    );
    path
}

fn run(args: &[&str]) -> Output {
    Command::new(tool())
        .args(args)
        .env_clear()
        .output()
        .expect("run pulse-release")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

#[track_caller]
fn fails(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{err}",
        stdout(o)
    );
    assert!(err.starts_with("pulse-release: error: "), "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

/// A temporary directory, removed when the test ends.
struct Temp(PathBuf);

impl Temp {
    fn new(name: &str) -> Temp {
        let dir = std::env::temp_dir().join(format!("pulse-release-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        Temp(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn str(&self, name: &str) -> String {
        self.path(name)
            .to_str()
            .expect("UTF-8 temp path")
            .to_owned()
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `keygen --out DIR/key`, returning the printed public key.
fn keygen(t: &Temp) -> String {
    let out = ok(&run(&["keygen", "--out", &t.str("key")]));
    out.trim_end().to_owned()
}

fn public_key(b64: &str) -> ed25519_compact::PublicKey {
    let bytes = base64_decode(b64).expect("public key is base64");
    ed25519_compact::PublicKey::from_slice(&bytes).expect("a 32-byte public key")
}

/// A `.sig` file: exactly one line of padded base64 of 64 bytes.
#[track_caller]
fn read_sig(path: &Path) -> ed25519_compact::Signature {
    let text = fs::read_to_string(path).expect("read .sig");
    let line = text.strip_suffix('\n').expect(".sig ends in a newline");
    assert_eq!(line.len(), 88, "{line:?}");
    let bytes = base64_decode(line).expect(".sig is base64");
    assert_eq!(base64_encode(&bytes), line, "padded, canonical base64");
    ed25519_compact::Signature::from_slice(&bytes).expect("a 64-byte signature")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn help_and_usage_errors() {
    let help = ok(&run(&["--help"]));
    for cmd in [
        "keygen --out",
        "pubkey --key",
        "sign --key",
        "index --key",
        "verify --pubkey",
    ] {
        assert!(help.contains(cmd), "{cmd:?} not in --help");
    }
    fails(&run(&[]), 2, "no command");
    fails(&run(&["publish"]), 2, "unknown command");
    fails(&run(&["keygen"]), 2, "--out");
    fails(&run(&["pubkey", "--out", "x"]), 2, "--out");
    fails(
        &run(&["verify", "--pubkey", "not-a-key", "/nonexistent"]),
        2,
        "--pubkey",
    );
}

#[test]
fn keygen_writes_a_0600_key_and_prints_its_public_key() {
    let t = Temp::new("keygen");
    let public = keygen(&t);
    assert_eq!(public.len(), 44, "{public:?}");
    public_key(&public);
    let meta = fs::metadata(t.path("key")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = fs::read_to_string(t.path("key")).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(base64_decode(lines[0]).map(|s| s.len()), Some(32));
    assert!(
        text.lines()
            .any(|l| l.starts_with('#') && l.contains(&public)),
        "a comment names the public key:\n{text}"
    );
    assert_eq!(
        ok(&run(&["pubkey", "--key", &t.str("key")])).trim_end(),
        public
    );
}

#[test]
fn keygen_refuses_to_overwrite_an_existing_file() {
    let t = Temp::new("overwrite");
    keygen(&t);
    let before = fs::read(t.path("key")).unwrap();
    fails(
        &run(&["keygen", "--out", &t.str("key")]),
        1,
        "already exists",
    );
    assert_eq!(fs::read(t.path("key")).unwrap(), before);
    fs::write(t.path("other"), "not a key\n").unwrap();
    fails(
        &run(&["keygen", "--out", &t.str("other")]),
        1,
        "already exists",
    );
    assert_eq!(fs::read_to_string(t.path("other")).unwrap(), "not a key\n");
}

#[test]
fn a_group_or_world_readable_key_is_refused() {
    let t = Temp::new("mode");
    keygen(&t);
    fs::write(t.path("file"), "x").unwrap();
    for mode in [0o644, 0o640, 0o604] {
        fs::set_permissions(t.path("key"), fs::Permissions::from_mode(mode)).unwrap();
        fails(&run(&["pubkey", "--key", &t.str("key")]), 1, "too open");
        fails(
            &run(&["sign", "--key", &t.str("key"), &t.str("file")]),
            1,
            "too open",
        );
    }
    assert!(!t.path("file.sig").exists());
}

#[test]
fn sign_writes_a_signature_that_verifies() {
    let t = Temp::new("sign");
    let public = public_key(&keygen(&t));
    fs::write(t.path("a"), b"first").unwrap();
    fs::write(t.path("b"), b"").unwrap();
    ok(&run(&[
        "sign",
        "--key",
        &t.str("key"),
        &t.str("a"),
        &t.str("b"),
    ]));
    public
        .verify(b"first", &read_sig(&t.path("a.sig")))
        .unwrap();
    public.verify(b"", &read_sig(&t.path("b.sig"))).unwrap();
}

#[test]
fn index_refuses_a_bad_version_an_expiry_in_the_past_and_an_empty_dir() {
    let t = Temp::new("refusals");
    keygen(&t);
    let (key, dir) = (t.str("key"), t.str(""));
    for v in [
        "v1.2.3",
        "1.2",
        "1.2.3.4",
        "01.2.3",
        "1.2.3-",
        "1.2.3+build",
        "1.2.x",
    ] {
        fails(
            &run(&["index", "--key", &key, "--version", v, &dir]),
            2,
            "--version",
        );
    }
    fails(
        &run(&[
            "index",
            "--key",
            &key,
            "--version",
            "1.2.3",
            "--expires",
            "2001-01-01T00:00:00Z",
            &dir,
        ]),
        2,
        "not in the future",
    );
    fails(
        &run(&[
            "index",
            "--key",
            &key,
            "--version",
            "1.2.3",
            "--released",
            "2001-01-01T00:00:00Z",
            "--expires",
            "30d",
            &dir,
        ]),
        2,
        "not in the future",
    );
    fails(
        &run(&[
            "index",
            "--key",
            &key,
            "--version",
            "1.2.3",
            "--expires",
            "90x",
            &dir,
        ]),
        2,
        "--expires",
    );
    fails(
        &run(&["index", "--key", &key, "--version", "1.2.3-rc.1", &dir]),
        1,
        "pulse-agent-linux-amd64",
    );
    assert!(!t.path("release.json").exists());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn index_refuses_an_amd64_binary_named_linux_arm64() {
    let t = Temp::new("misnamed");
    keygen(&t);
    // The header is all the check reads; the rest of the copy does not matter.
    let agent = fs::read(env!("CARGO_BIN_EXE_pulse-agent")).unwrap();
    fs::write(t.path("pulse-agent-linux-arm64"), &agent[..4096]).unwrap();
    fails(
        &run(&[
            "index",
            "--key",
            &t.str("key"),
            "--version",
            "1.2.3",
            &t.str(""),
        ]),
        1,
        "pulse-agent-linux-arm64: named for linux-arm64 but is an ELF for linux-amd64",
    );
    assert!(!t.path("release.json").exists());
    assert!(!t.path("pulse-agent-linux-arm64.sig").exists());
}

/// One index and verify of the real agent binary (its debug build is tens of
/// MB, so the checks that need a signed release share it).
#[cfg(target_arch = "x86_64")]
#[test]
fn index_signs_the_built_binary_and_verify_catches_a_flipped_byte_and_an_edited_index() {
    let t = Temp::new("index");
    let b64 = keygen(&t);
    let public = public_key(&b64);
    let asset = t.path("pulse-agent-linux-amd64");
    fs::copy(env!("CARGO_BIN_EXE_pulse-agent"), &asset).unwrap();
    let before = SystemTime::now() - Duration::from_secs(1);
    let out = ok(&run(&[
        "index",
        "--key",
        &t.str("key"),
        "--version",
        "1.2.3-rc.1",
        "--expires",
        "30d",
        &t.str(""),
    ]));
    assert!(out.contains("pulse-agent-linux-amd64"), "{out}");

    // release.json: the documented fields, in the documented order, and the
    // signature over exactly its bytes.
    let json = fs::read(t.path("release.json")).unwrap();
    assert!(json.ends_with(b"}\n"));
    public
        .verify(&json, &read_sig(&t.path("release.json.sig")))
        .expect("release.json.sig verifies with the printed key");
    let text = String::from_utf8(json.clone()).unwrap();
    let order: Vec<usize> = [
        "\"name\"",
        "\"version\"",
        "\"released\"",
        "\"expires\"",
        "\"assets\"",
    ]
    .iter()
    .map(|k| text.find(k).expect("key present"))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    let doc: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(doc["name"], "pulse-agent");
    assert_eq!(doc["version"], "1.2.3-rc.1");
    let released_s = doc["released"].as_str().unwrap();
    let expires_s = doc["expires"].as_str().unwrap();
    assert!(
        released_s.ends_with('Z') && expires_s.ends_with('Z'),
        "{text}"
    );
    let released = parse_rfc3339(released_s).unwrap();
    let expires = parse_rfc3339(expires_s).unwrap();
    assert!(
        released >= before && released <= SystemTime::now(),
        "{released_s}"
    );
    assert_eq!(
        expires.duration_since(released).unwrap(),
        Duration::from_secs(30 * 86_400)
    );
    let assets = doc["assets"].as_object().unwrap();
    assert_eq!(assets.keys().collect::<Vec<_>>(), ["linux-amd64"]);
    let bytes = fs::read(&asset).unwrap();
    let a = &assets["linux-amd64"];
    assert_eq!(a["file"], "pulse-agent-linux-amd64");
    assert_eq!(a["size"].as_u64(), Some(bytes.len() as u64));
    assert_eq!(a["sha256"].as_str(), Some(sha256_hex(&bytes).as_str()));
    public
        .verify(&bytes, &read_sig(&t.path("pulse-agent-linux-amd64.sig")))
        .expect("the asset's .sig verifies with the printed key");
    drop(bytes);

    // verify: passes as written.
    let out = ok(&run(&["verify", "--pubkey", &b64, &t.str("")]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok") && l.contains("linux-amd64")),
        "{out}"
    );

    // Another key: refused at release.json.sig.
    let other = Temp::new("index-other-key");
    let other_b64 = keygen(&other);
    fails(
        &run(&["verify", "--pubkey", &other_b64, &t.str("")]),
        1,
        "release.json.sig",
    );

    // An edited release.json: its signature no longer holds.
    let edited = text.replace("1.2.3-rc.1", "1.2.4");
    fs::write(t.path("release.json"), &edited).unwrap();
    fails(
        &run(&["verify", "--pubkey", &b64, &t.str("")]),
        1,
        "release.json.sig",
    );
    fs::write(t.path("release.json"), &json).unwrap();

    // One flipped byte in the asset: size holds, hash and signature do not.
    let mut bytes = fs::read(&asset).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    fs::write(&asset, &bytes).unwrap();
    drop(bytes);
    let o = run(&["verify", "--pubkey", &b64, &t.str("")]);
    fails(&o, 1, "1 of 1 asset(s) failed");
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| l.starts_with("FAILED") && l.contains("linux-amd64"))
        .unwrap_or_else(|| panic!("no FAILED line for the asset:\n{out}"));
    assert!(
        line.contains("sha256") && line.contains("signature"),
        "{line}"
    );
}
