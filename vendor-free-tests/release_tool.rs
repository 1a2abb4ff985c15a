//! End-to-end: the maintainer's release tool (`contrib/release/pulse-release.rs`,
//! the `pulse-release` example) run on temporary directories: keys, the
//! channel files it writes, and its checks.
//!
//! Cargo builds examples for a plain `cargo test`, not for
//! `cargo test --test release_tool` alone: then run
//! `cargo build --example pulse-release` first (a stale build is tested as it is).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use pulse_agent::remote_config::{base64_decode, base64_encode, parse_rfc3339};
use serde_json::Value;
use sha2::{Digest, Sha256};

use common::{ok, release_tool};

fn run(args: &[&str]) -> Output {
    Command::new(release_tool())
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

// ---- OpenSSH signatures and the installer ------------------------------------

/// An SSH wire `string`.
fn ssh_string(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn armor(kind: &str, blob: &[u8]) -> String {
    let b64 = base64_encode(blob);
    let mut out = format!("-----BEGIN {kind}-----\n");
    for line in b64.as_bytes().chunks(70) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {kind}-----\n"));
    out
}

/// The tool's key file as an unencrypted OpenSSH private key (PROTOCOL.key),
/// so that `ssh-keygen -Y sign` can sign with the very same key.
fn openssh_private_key(t: &Temp) -> PathBuf {
    let text = fs::read_to_string(t.path("key")).unwrap();
    let line = text.lines().find(|l| !l.starts_with('#')).unwrap();
    let seed = base64_decode(line).unwrap();
    let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::from_slice(&seed).unwrap());
    let mut public = Vec::new();
    ssh_string(&mut public, b"ssh-ed25519");
    ssh_string(&mut public, kp.pk.as_ref());
    let mut private = Vec::new();
    private.extend_from_slice(&[0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a]);
    ssh_string(&mut private, b"ssh-ed25519");
    ssh_string(&mut private, kp.pk.as_ref());
    ssh_string(&mut private, kp.sk.as_ref());
    ssh_string(&mut private, b"test");
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad += 1;
    }
    let mut blob = b"openssh-key-v1\0".to_vec();
    ssh_string(&mut blob, b"none");
    ssh_string(&mut blob, b"none");
    ssh_string(&mut blob, b"");
    blob.extend_from_slice(&1u32.to_be_bytes());
    ssh_string(&mut blob, &public);
    ssh_string(&mut blob, &private);
    let path = t.path("id_ed25519");
    fs::write(&path, armor("OPENSSH PRIVATE KEY", &blob)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `ssh-keygen -Y verify` of FILE against FILE.sshsig (or `sig`).
fn ssh_verify(allowed: &Path, namespace: &str, file: &Path, sig: &Path) -> Output {
    Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f"])
        .arg(allowed)
        .args(["-I", "pulse-agent-release", "-n", namespace, "-s"])
        .arg(sig)
        .stdin(fs::File::open(file).unwrap())
        .output()
        .expect("ssh-keygen (openssh-client) is installed")
}

#[test]
fn ssh_keygen_accepts_the_tools_sshsig_files_and_rejects_a_tampered_file() {
    let t = Temp::new("sshsig");
    let b64 = keygen(&t);
    let line = ok(&run(&["allowed-signers", "--key", &t.str("key")]));
    let by_pubkey = ok(&run(&["allowed-signers", "--pubkey", &b64]));
    assert_eq!(line, by_pubkey);
    assert!(
        line.starts_with("pulse-agent-release ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"),
        "{line}"
    );
    fs::write(t.path("allowed_signers"), &line).unwrap();

    let asset = t.path("pulse-agent-linux-amd64");
    fs::copy(env!("CARGO_BIN_EXE_pulse-agent"), &asset).unwrap();
    ok(&run(&[
        "index",
        "--key",
        &t.str("key"),
        "--version",
        "1.0.0",
        &t.str(""),
    ]));
    for f in ["release.json", "pulse-agent-linux-amd64"] {
        let file = t.path(f);
        let sig = t.path(&format!("{f}.sshsig"));
        let o = ssh_verify(
            &t.path("allowed_signers"),
            "pulse-agent-release",
            &file,
            &sig,
        );
        assert!(o.status.success(), "{f}: {}", stderr(&o));
        // Another namespace: refused (a channel signature is not a file one).
        let o = ssh_verify(&t.path("allowed_signers"), "file", &file, &sig);
        assert!(!o.status.success(), "{f} verified in namespace file");
    }
    ok(&run(&["verify", "--pubkey", &b64, &t.str("")]));

    // One flipped byte: ssh-keygen and verify both refuse.
    let mut json = fs::read(t.path("release.json")).unwrap();
    let i = json.len() / 2;
    json[i] ^= 1;
    fs::write(t.path("tampered.json"), &json).unwrap();
    let o = ssh_verify(
        &t.path("allowed_signers"),
        "pulse-agent-release",
        &t.path("tampered.json"),
        &t.path("release.json.sshsig"),
    );
    assert!(!o.status.success());
    let mut bin = fs::read(&asset).unwrap();
    let i = bin.len() / 2;
    bin[i] ^= 1;
    fs::write(&asset, &bin).unwrap();
    // (sha256 and .sig fail too; the .sshsig check says so on its own.)
    let o = run(&["verify", "--pubkey", &b64, &t.str("")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("pulse-agent-linux-amd64.sshsig: signature does not verify"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn the_tools_sshsig_is_byte_for_byte_what_ssh_keygen_sign_writes() {
    let t = Temp::new("sshsig-same");
    keygen(&t);
    let key = openssh_private_key(&t);
    let file = t.path("payload");
    fs::write(&file, b"pulse-agent release bytes\n").unwrap();
    for namespace in ["pulse-agent-release", "file"] {
        let o = Command::new("ssh-keygen")
            .args(["-q", "-Y", "sign", "-f"])
            .arg(&key)
            .args(["-n", namespace])
            .arg(&file)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let theirs = fs::read_to_string(t.path("payload.sig")).unwrap();
        fs::remove_file(t.path("payload.sig")).unwrap();
        let ours = if namespace == "file" {
            // publish-installer is the command that signs in namespace file.
            fs::create_dir_all(t.path("units/compat")).unwrap();
            for name in [
                "pulse-agent.service",
                "pulse-agent-once.service",
                "pulse-agent.timer",
                "pulse-agent-update.service",
                "pulse-agent-update.timer",
            ] {
                fs::write(t.path(&format!("units/{name}")), "[Unit]\n").unwrap();
                fs::write(t.path(&format!("units/compat/{name}")), "[Unit]\n").unwrap();
            }
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/install.sh");
            ok(&run(&[
                "publish-installer",
                "--key",
                &t.str("key"),
                "--channel",
                "https://example.org/channel",
                "--units",
                &t.str("units"),
                script.to_str().unwrap(),
                &t.str("out"),
            ]));
            let published = t.path("out/install.sh");
            let o = Command::new("ssh-keygen")
                .args(["-q", "-Y", "sign", "-f"])
                .arg(&key)
                .args(["-n", "file"])
                .arg(&published)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            let theirs = fs::read_to_string(t.path("out/install.sh.sig")).unwrap();
            let ours = fs::read_to_string(t.path("out/install.sh.sshsig")).unwrap();
            assert_eq!(ours, theirs, "install.sh.sshsig");
            continue;
        } else {
            ok(&run(&[
                "sign",
                "--key",
                &t.str("key"),
                &file.to_string_lossy(),
            ]));
            fs::read_to_string(t.path("payload.sshsig")).unwrap()
        };
        assert_eq!(ours, theirs, "namespace {namespace}");
    }
}

#[test]
fn publish_installer_fills_in_keys_channel_and_units_and_signs_for_ssh_keygen() {
    let t = Temp::new("publish");
    let b64 = keygen(&t);
    let other = Temp::new("publish-other");
    let other_b64 = keygen(&other);
    fs::create_dir_all(t.path("units/compat")).unwrap();
    let names = [
        "pulse-agent.service",
        "pulse-agent-once.service",
        "pulse-agent.timer",
        "pulse-agent-update.service",
        "pulse-agent-update.timer",
    ];
    for name in names {
        fs::write(
            t.path(&format!("units/{name}")),
            format!("# hardened {name}\n"),
        )
        .unwrap();
        // The timers are shared: compat has services only.
        if name.ends_with(".service") {
            fs::write(
                t.path(&format!("units/compat/{name}")),
                format!("# compat {name}\n"),
            )
            .unwrap();
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/install.sh");
    let publish = |units: &str, script: &Path| {
        run(&[
            "publish-installer",
            "--key",
            &t.str("key"),
            "--channel",
            "https://releases.example.org/pulse-agent",
            "--also-trust",
            &other_b64,
            "--units",
            units,
            script.to_str().unwrap(),
            &t.str("out"),
        ])
    };
    ok(&publish(&t.str("units"), &script));
    let text = fs::read_to_string(t.path("out/install.sh")).unwrap();
    assert!(
        text.contains(&format!(
            "\nRELEASE_KEYS='{b64} {other_b64}' # pulse-release: keys\n"
        )),
        "{text}"
    );
    assert!(text.contains(
        "\nDEFAULT_CHANNEL='https://releases.example.org/pulse-agent' # pulse-release: channel\n"
    ));
    for name in names {
        assert!(
            text.contains(&format!("# hardened {name}\nPULSE_UNIT_END\n")),
            "{name}"
        );
        assert_eq!(
            text.contains(&format!("# compat {name}\nPULSE_UNIT_END\n")),
            name.ends_with(".service"),
            "{name}"
        );
    }
    // The published script still parses, and prints a unit.
    let o = Command::new("dash")
        .arg("-c")
        .arg(format!(
            "eval \"$(sed -n '/^embedded_unit() {{/,/^}}/p' {})\"; embedded_unit compat pulse-agent-once.service",
            t.str("out/install.sh")
        ))
        .output()
        .unwrap();
    assert_eq!(
        stdout(&o),
        "# compat pulse-agent-once.service\n",
        "{}",
        stderr(&o)
    );

    // The README's check: ssh-keygen -Y verify -n file.
    fs::write(
        t.path("allowed_signers"),
        ok(&run(&["allowed-signers", "--key", &t.str("key")])),
    )
    .unwrap();
    let o = ssh_verify(
        &t.path("allowed_signers"),
        "file",
        &t.path("out/install.sh"),
        &t.path("out/install.sh.sshsig"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    fs::write(t.path("edited.sh"), text.replace("set -eu", "set -u")).unwrap();
    let o = ssh_verify(
        &t.path("allowed_signers"),
        "file",
        &t.path("edited.sh"),
        &t.path("out/install.sh.sshsig"),
    );
    assert!(!o.status.success());

    // A unit set without compat/, and a script without the marks: refused.
    fs::remove_dir_all(t.path("units/compat")).unwrap();
    fails(
        &publish(&t.str("units"), &script),
        1,
        "compat/pulse-agent.service",
    );
    fs::write(t.path("plain.sh"), "#!/bin/sh\n").unwrap();
    fs::create_dir_all(t.path("units/compat")).unwrap();
    for name in names {
        fs::write(t.path(&format!("units/compat/{name}")), "x\n").unwrap();
    }
    fails(
        &publish(&t.str("units"), &t.path("plain.sh")),
        1,
        "pulse-release: keys",
    );
    // A channel that is not https, or that a shell line cannot hold.
    for bad in ["http://example.org/c", "https://example.org/it's"] {
        let o = run(&[
            "publish-installer",
            "--key",
            &t.str("key"),
            "--channel",
            bad,
            &script.to_string_lossy(),
            &t.str("out"),
        ]);
        fails(&o, 2, "--channel");
    }
}
