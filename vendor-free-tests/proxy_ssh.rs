//! The proxy's SSH side against a real OpenSSH server (`common/sshd.rs`):
//! the key push and its forced command, host-key handling, output caps,
//! `from=`; and the node-side `sensors` JSON against fixture trees
//! (`fixtures/proxy-ssh/`: `node/sys` is the intel-nas hwmon tree,
//! `thermal-only/sys` a host with one thermal zone and no hwmon).

#[path = "common/sshd.rs"]
mod sshd;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pulse_agent::collect::hwmon;
use pulse_agent::proxy::sensors;
use pulse_agent::proxy::ssh::{self, Error, Ssh};
use pulse_agent::root::Root;
use sshd::Sshd;

const BIN: &str = env!("CARGO_BIN_EXE_pulse-sensor-proxy");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor-free-tests/fixtures")
}

fn node_sys() -> PathBuf {
    fixtures().join("proxy-ssh/node/sys")
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("proxy-ssh-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

/// What the node's forced command must print: our reader on the fixture.
fn node_json() -> String {
    let root = Root::new(node_sys().parent().unwrap()).unwrap();
    sensors::render(&root).unwrap() + "\n"
}

/// A proxy whose key is in `dir/ssh`, talking to `node`; the cluster file
/// `dir/pve/priv/known_hosts` does not exist unless a test writes it.
fn proxy(dir: &Path, node: &Sshd) -> Ssh {
    let mut s = Ssh::new(dir.join("ssh"), &dir.join("pve"));
    s.port = node.port;
    s.admin_identity = Some(node.admin_key.clone());
    s.node_binary = Some(BIN.into());
    s.ensure_key().unwrap();
    s
}

fn push(s: &Ssh, from: &str) -> Result<(), Error> {
    s.push_key("127.0.0.1", &s.dir, &[from.to_string()], soon())
}

/// `ssh` as a client that ignores the proxy's rules: the proxy's key, any
/// host key, the remote command `cmd`.
fn raw_ssh(s: &Ssh, cmd: &str) -> std::process::Output {
    Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "LogLevel=ERROR",
            "-T",
            "-p",
            &s.port.to_string(),
            "-i",
        ])
        .arg(s.dir.join("id_ed25519"))
        .args(["root@127.0.0.1", cmd])
        .output()
        .unwrap()
}

#[test]
fn rendered_fixtures_parse_back_to_the_same_chips() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures().join("hwmon"))
        .unwrap()
        .map(|e| e.unwrap().path().join("root"))
        .filter(|p| p.is_dir())
        .collect();
    cases.push(fixtures().join("proxy-ssh/node"));
    assert!(cases.len() >= 5);
    for case in cases {
        let root = Root::new(&case).unwrap();
        let chips = hwmon::read_sysfs(&root).unwrap();
        let text = sensors::render(&root).unwrap();
        assert_eq!(
            hwmon::parse_sensors_json(&text).unwrap(),
            chips,
            "{}",
            case.display()
        );
        // The agent's mapping sees the same readings as from lm-sensors.
        let lm = std::fs::read_to_string(case.parent().unwrap().join("sensors.json"));
        if let Ok(lm) = lm {
            let lm = hwmon::map(&hwmon::parse_sensors_json(&lm).unwrap());
            assert_eq!(hwmon::map(&chips), lm, "{}", case.display());
        }
    }
    // No hwmon at all: the thermal zone is the chip.
    let root = Root::new(fixtures().join("proxy-ssh/thermal-only")).unwrap();
    assert_eq!(
        sensors::render(&root).unwrap(),
        r#"{"x86_pkg_temp-virtual-0":{"Adapter":"Virtual device","temp1":{"temp1_input":51.0}}}"#
    );
}

#[test]
fn sensors_command_prints_the_tree_and_fails_on_an_empty_one() {
    let out = Command::new(BIN)
        .args(["sensors", "--root"])
        .arg(fixtures().join("proxy-ssh/node"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), node_json());
    let empty = scratch("empty-root");
    // PATH without lm-sensors: the fallback has nothing to run either.
    let out = Command::new(BIN)
        .args(["sensors", "--root"])
        .arg(&empty)
        .env("PATH", &empty)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

/// The whole path: the push installs the wrapper, our binary and the
/// forced-command line; the fetch gets the node's JSON; any other command
/// gets the same JSON instead of running; a second push changes nothing.
#[test]
fn fetch_returns_the_fixture_through_the_forced_command_push_key_installs() {
    let dir = scratch("fetch");
    let Some(node) = Sshd::start(&dir.join("node"), Some(&node_sys())) else {
        return;
    };
    let s = proxy(&dir, &node);
    push(&s, "127.0.0.1").unwrap();
    let lib = node.usr_local.join("libexec/pulse-sensor-proxy");
    assert!(lib.join("temp-wrapper").is_file());
    assert!(lib.join("pulse-sensor-proxy").is_file());
    let keys = std::fs::read_to_string(node.authorized_keys()).unwrap();
    let line = ssh::authorized_keys_line(
        &s.public_key().unwrap(),
        &["127.0.0.1".into()],
        ssh::FORCED_COMMAND,
    );
    assert_eq!(
        keys,
        format!("{} admin@test\n{line}\n", sshd::public_key(&node.admin_key))
    );

    assert_eq!(
        s.fetch_temperatures("127.0.0.1", soon()).unwrap(),
        node_json()
    );
    s.check_reachable("127.0.0.1", soon()).unwrap();

    let out = raw_ssh(&s, "id; touch /root/ran");
    assert_eq!(String::from_utf8_lossy(&out.stdout), node_json());
    assert!(!node.home.join("ran").exists());
    // No port forwarding for the key either.
    let out = Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            "127.0.0.1:0:127.0.0.1:22",
        ])
        .args(["-p", &s.port.to_string(), "-i"])
        .arg(s.dir.join("id_ed25519"))
        .args(["root@127.0.0.1", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "forwarding was allowed");

    push(&s, "127.0.0.1").unwrap();
    assert_eq!(
        std::fs::read_to_string(node.authorized_keys()).unwrap(),
        keys
    );
    assert_eq!(
        s.host_key_changes
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// Rotation (§8): the key in `ssh.d/next` replaces every older proxy line
/// (ours and the stock's doubled-comment and `pulse-temp-proxy` ones);
/// unrelated lines stay; the old key stops working.
#[test]
fn push_key_replaces_older_proxy_lines_and_keeps_the_others() {
    let dir = scratch("rotate");
    let Some(node) = Sshd::start(&dir.join("node"), Some(&node_sys())) else {
        return;
    };
    let s = proxy(&dir, &node);
    let admin = format!("{} admin@test", sshd::public_key(&node.admin_key));
    let others = [
        admin.as_str(),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOTHER someone@laptop",
        "# a comment line",
    ];
    let stale = [
        "from=\"10.0.0.0/8\",command=\"/usr/local/libexec/pulse-sensor-proxy/temp-wrapper.sh\",no-pty \
         ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISTOCK pulse-sensor-proxy pulse-sensor-proxy",
        "command=\"sensors -j\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILEGACY pulse-temp-proxy",
    ];
    std::fs::write(
        node.authorized_keys(),
        format!(
            "{}\n{}\n{}\n{}\n{}\n",
            others[0], stale[0], others[1], stale[1], others[2]
        ),
    )
    .unwrap();
    push(&s, "127.0.0.1").unwrap();
    let line = |s: &Ssh| {
        ssh::authorized_keys_line(
            &s.public_key().unwrap(),
            &["127.0.0.1".into()],
            ssh::FORCED_COMMAND,
        )
    };
    let want = format!(
        "{}\n{}\n{}\n{}\n",
        others[0],
        others[1],
        others[2],
        line(&s)
    );
    assert_eq!(
        std::fs::read_to_string(node.authorized_keys()).unwrap(),
        want
    );
    assert_eq!(
        s.fetch_temperatures("127.0.0.1", soon()).unwrap(),
        node_json()
    );

    // The rotation script's staging key, with its own comment.
    let next = dir.join("ssh.d/next");
    std::fs::create_dir_all(&next).unwrap();
    sshd::keygen(
        &next.join("id_ed25519"),
        "pulse-sensor-proxy rotation 20260101T000000Z",
    );
    s.push_key("127.0.0.1", &next, &["127.0.0.1".into()], soon())
        .unwrap();
    let mut rotated = Ssh::new(&next, &dir.join("pve"));
    rotated.port = node.port;
    let want = format!(
        "{}\n{}\n{}\n{}\n",
        others[0],
        others[1],
        others[2],
        line(&rotated)
    );
    assert_eq!(
        std::fs::read_to_string(node.authorized_keys()).unwrap(),
        want
    );
    assert!(want.trim_end().ends_with(" pulse-sensor-proxy"));
    assert!(!want.contains("rotation"));
    std::fs::copy(s.dir.join("known_hosts"), next.join("known_hosts")).unwrap();
    assert_eq!(
        rotated.fetch_temperatures("127.0.0.1", soon()).unwrap(),
        node_json()
    );
    let e = s.fetch_temperatures("127.0.0.1", soon()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Failed {
                code: Some(255),
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("failed to fetch temperatures: exit status 255 (stderr: "),
        "{e}"
    );
}

/// On Proxmox root's `authorized_keys` links to the cluster-wide
/// `/etc/pve/priv/authorized_keys`; the stock push `mv`ed a new file over the
/// link, cutting the node out of the cluster's shared keys.
#[test]
fn push_key_keeps_a_symlinked_authorized_keys_a_symlink() {
    let dir = scratch("symlink");
    let Some(node) = Sshd::start(&dir.join("node"), Some(&node_sys())) else {
        return;
    };
    let s = proxy(&dir, &node);
    let shared = node.home.join("pve-priv-authorized_keys");
    std::fs::rename(node.authorized_keys(), &shared).unwrap();
    std::os::unix::fs::symlink("../pve-priv-authorized_keys", node.authorized_keys()).unwrap();
    push(&s, "127.0.0.1").unwrap();
    let meta = std::fs::symlink_metadata(node.authorized_keys()).unwrap();
    assert!(meta.file_type().is_symlink());
    assert!(
        std::fs::read_to_string(&shared)
            .unwrap()
            .contains(" pulse-sensor-proxy\n")
    );
    assert_eq!(
        s.fetch_temperatures("127.0.0.1", soon()).unwrap(),
        node_json()
    );
}

#[test]
fn from_restricts_the_source_address() {
    let dir = scratch("from");
    let Some(node) = Sshd::start(&dir.join("node"), Some(&node_sys())) else {
        return;
    };
    let s = proxy(&dir, &node);
    push(&s, "10.9.9.9").unwrap();
    assert!(
        std::fs::read_to_string(node.authorized_keys())
            .unwrap()
            .contains("from=\"10.9.9.9\",")
    );
    let e = s.fetch_temperatures("127.0.0.1", soon()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Failed {
                code: Some(255),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("Permission denied"), "{e}");
    // An empty list is refused before anything runs.
    let e = s.push_key("127.0.0.1", &s.dir, &[], soon()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no allowed source subnets configured or detected"
    );
}

#[test]
fn a_changed_host_key_is_refused_counted_and_nothing_is_fetched() {
    let dir = scratch("hostkey");
    let Some(mut node) = Sshd::start(&dir.join("node"), Some(&node_sys())) else {
        return;
    };
    let s = proxy(&dir, &node);
    push(&s, "127.0.0.1").unwrap();
    s.fetch_temperatures("127.0.0.1", soon()).unwrap();
    let known = std::fs::read_to_string(s.dir.join("known_hosts")).unwrap();
    assert_eq!(
        known,
        format!("[127.0.0.1]:{} {}\n", node.port, node.host_key())
    );

    node.new_host_key();
    // The client notices (the host is cached as checked)...
    let e = s.fetch_temperatures("127.0.0.1", soon()).unwrap_err();
    assert!(matches!(e, Error::HostKeyChanged { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "failed to ensure host key for 127.0.0.1: knownhosts: host key for 127.0.0.1 changed"
    );
    assert_eq!(
        s.host_key_changes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // ...and so does a fresh start, from the scan, before any login.
    let mut fresh = Ssh::new(&s.dir, &dir.join("pve"));
    fresh.port = node.port;
    let e = fresh.fetch_temperatures("127.0.0.1", soon()).unwrap_err();
    assert!(matches!(e, Error::HostKeyChanged { .. }), "{e}");
    assert_eq!(
        fresh
            .host_key_changes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let e = s
        .push_key("127.0.0.1", &s.dir, &["127.0.0.1".into()], soon())
        .unwrap_err();
    assert!(matches!(e, Error::HostKeyChanged { .. }), "{e}");
    // The recorded key is never replaced.
    assert_eq!(
        std::fs::read_to_string(s.dir.join("known_hosts")).unwrap(),
        known
    );
    let logins = node.log().matches("Accepted publickey").count();
    assert_eq!(logins, 0, "{}", node.log());
}

#[test]
fn output_past_the_cap_is_refused() {
    let dir = scratch("cap");
    let Some(node) = Sshd::start(&dir.join("node"), Some(&node_sys())) else {
        return;
    };
    let mut s = proxy(&dir, &node);
    push(&s, "127.0.0.1").unwrap();
    s.max_output = 100;
    let e = s.fetch_temperatures("127.0.0.1", soon()).unwrap_err();
    assert!(matches!(e, Error::OutputTooLarge { cap: 100 }), "{e}");
    assert_eq!(e.to_string(), "ssh output exceeded 100 bytes");
}

/// Without our binary on the node the wrapper runs `sensors -j`, and
/// without that it fails.
#[test]
fn without_our_binary_the_wrapper_runs_sensors_j() {
    let dir = scratch("fallback");
    let Some(node) = Sshd::start(&dir.join("node"), None) else {
        return;
    };
    let mut s = proxy(&dir, &node);
    s.node_binary = None;
    push(&s, "127.0.0.1").unwrap();
    assert!(
        !node
            .usr_local
            .join("libexec/pulse-sensor-proxy/pulse-sensor-proxy")
            .exists()
    );
    let e = s.fetch_temperatures("127.0.0.1", soon()).unwrap_err();
    assert!(matches!(e, Error::Failed { code: Some(1), .. }), "{e}");
    assert!(e.to_string().contains("no temperature source"), "{e}");
    // The node's /usr/local/bin is in a session's PATH.
    let bin = node.usr_local.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = r#"{"k10temp-pci-00c3":{"Adapter":"PCI adapter","Tctl":{"temp1_input":50.000}}}"#;
    std::fs::write(
        bin.join("sensors"),
        format!("#!/bin/sh\n[ \"$1\" = -j ] && echo '{fake}'\n"),
    )
    .unwrap();
    std::fs::set_permissions(
        bin.join("sensors"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    assert_eq!(
        s.fetch_temperatures("127.0.0.1", soon()).unwrap(),
        format!("{fake}\n")
    );
}

#[test]
fn require_proxmox_hostkeys_takes_keys_from_the_cluster_file_only() {
    let dir = scratch("pve");
    let Some(node) = Sshd::start(&dir.join("node"), Some(&node_sys())) else {
        return;
    };
    // Without the cluster file: the scan is the fallback (already proven by
    // the other tests); with require_proxmox_hostkeys it is not tried.
    let mut s = proxy(&dir, &node);
    s.require_proxmox_hostkeys = true;
    s.ssh_keyscan = "/nonexistent/ssh-keyscan".into();
    let e = s.fetch_temperatures("127.0.0.1", soon()).unwrap_err();
    assert!(matches!(e, Error::NoHostKey { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("failed to ensure host key for 127.0.0.1: no entry in ")
    );
    assert!(!s.dir.join("known_hosts").exists());

    // The cluster file's plain entry (port 22 there) is taken; hashed and
    // other hosts' lines are not.
    let priv_dir = dir.join("pve/priv");
    std::fs::create_dir_all(&priv_dir).unwrap();
    let other = sshd::public_key(&node.admin_key); // any ed25519 key
    std::fs::write(
        priv_dir.join("known_hosts"),
        format!(
            "|1|c2FsdA==|aGFzaA== {other}\n127.0.0.10 {other}\npve1,127.0.0.1 {}\n",
            node.host_key()
        ),
    )
    .unwrap();
    push(&s, "127.0.0.1").unwrap();
    assert_eq!(
        s.fetch_temperatures("127.0.0.1", soon()).unwrap(),
        node_json()
    );
    let known = std::fs::read_to_string(s.dir.join("known_hosts")).unwrap();
    assert_eq!(
        known,
        format!("[127.0.0.1]:{} {}\n", node.port, node.host_key())
    );

    // A wrong key in the cluster file: the login is refused as a changed key.
    std::fs::write(priv_dir.join("known_hosts"), format!("127.0.0.1 {other}\n")).unwrap();
    let mut wrong = Ssh::new(dir.join("ssh2"), &dir.join("pve"));
    wrong.port = node.port;
    wrong.require_proxmox_hostkeys = true;
    wrong.ensure_key().unwrap();
    let e = wrong.fetch_temperatures("127.0.0.1", soon()).unwrap_err();
    assert!(matches!(e, Error::HostKeyChanged { .. }), "{e}");
}

/// A fake `ssh`/`ssh-keyscan`/`ssh-keygen` that records being run: a name
/// that `ssh` would read as an option is refused before any of them.
#[test]
fn a_node_name_starting_with_a_dash_never_reaches_ssh() {
    let dir = scratch("dash");
    let ran = dir.join("ran");
    let fake = dir.join("fake");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", ran.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut s = Ssh::new(dir.join("ssh"), &dir.join("pve"));
    (s.ssh, s.ssh_keyscan) = (fake.clone(), fake.clone());
    std::fs::create_dir_all(&s.dir).unwrap();
    std::fs::write(
        s.dir.join("id_ed25519.pub"),
        "ssh-ed25519 AAAAC3Nz pulse-sensor-proxy\n",
    )
    .unwrap();
    for node in ["-oProxyCommand=touch /tmp/pwned", "-p1", "-", "a b"] {
        let e = s.fetch_temperatures(node, soon()).unwrap_err();
        assert!(matches!(e, Error::BadNode(_)), "{e}");
        let e = s.check_reachable(node, soon()).unwrap_err();
        assert!(matches!(e, Error::BadNode(_)), "{e}");
        let e = s
            .push_key(node, &s.dir, &["10.0.0.0/8".into()], soon())
            .unwrap_err();
        assert!(matches!(e, Error::BadNode(_)), "{e}");
    }
    assert!(
        !ran.exists(),
        "ssh ran: {:?}",
        std::fs::read_to_string(&ran)
    );
    // The same fake does run for a good name (the check above can fail).
    let _ = s.fetch_temperatures("pve1", soon());
    assert!(ran.exists());
}
