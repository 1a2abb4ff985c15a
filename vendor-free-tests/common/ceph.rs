//! A real one-monitor Ceph cluster on loopback, for the Ceph source's test.
//! Include it with `#[path = "common/ceph.rs"] mod ceph_cluster;` (it
//! depends on nothing else in `common/`).
//!
//! Debian 12's `ceph-mon`, `ceph-mgr` and `ceph-common` (Pacific): keyrings
//! made with `ceph-authtool`, a monmap with `monmaptool --create` holding
//! monitor `a` on `127.0.0.1:<free port>` (msgr2), `ceph-mon --mkfs`, then
//! `ceph-mon -f -i a` and two managers (`x` and `y`: one active, one standby) as children
//! of the test, every file (data, run, logs, sockets) in a scratch
//! directory. The daemons are told their configuration with `-c`; a client
//! of the cluster finds it as `/etc/ceph/ceph.conf` only through
//! [`Cluster::captured_root`]'s `ceph`, which enters a private mount
//! namespace (`unshare --mount --propagation private`) where the scratch
//! `etc/` is bind-mounted over `/etc/ceph`. The machine's own `/etc/ceph` is
//! never read or written. [`Drop`] kills the daemons and removes the
//! directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CEPH_MON: &str = "/usr/bin/ceph-mon";
pub const CEPH_MGR: &str = "/usr/bin/ceph-mgr";
pub const CEPH: &str = "/usr/bin/ceph";
/// The packages the cluster needs (Debian 12).
pub const PACKAGES: &str = "ceph-mon ceph-mgr ceph-common";
/// The pool the cluster is given, so `ceph df` has one.
pub const POOL: &str = "pulse-test";
pub const POOL_PGS: u64 = 8;
/// Manager modules neither always on nor needed: not loaded, which halves
/// a manager's start (each module is seconds of Python on a busy machine).
const MGR_UNUSED: &str = "alerts diskprediction_local influx insights iostat localpool mirroring nfs \
     osd_perf_query osd_support prometheus restful selftest snap_schedule stats telegraf \
     test_orchestrator zabbix";

pub struct Cluster {
    pub dir: PathBuf,
    pub fsid: String,
    pub port: u16,
    /// What the client sees as `/etc/ceph`: `ceph.conf` and the admin keyring.
    pub etc: PathBuf,
    children: Vec<Child>,
}

/// Why this machine cannot run the cluster; `None` when it can.
pub fn missing() -> Option<String> {
    if !nix_is_root() {
        return Some(format!(
            "the Ceph test needs root (it bind-mounts /etc/ceph in a private mount namespace) and the packages {PACKAGES} (apt-get install --no-install-recommends {PACKAGES})"
        ));
    }
    for p in [
        CEPH_MON,
        CEPH_MGR,
        CEPH,
        "/usr/bin/monmaptool",
        "/usr/bin/ceph-authtool",
    ] {
        if !Path::new(p).exists() {
            return Some(format!(
                "{p} is missing: install {PACKAGES} (apt-get install --no-install-recommends {PACKAGES})"
            ));
        }
    }
    if !Path::new("/etc/ceph").is_dir() {
        return Some("/etc/ceph is missing (ceph-common makes it)".into());
    }
    None
}

fn nix_is_root() -> bool {
    // `id -u` rather than libc: this file stays free of unsafe code.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run(program: &str, args: &[&str]) -> String {
    let o = Command::new(program)
        .args(args)
        .env_remove("CEPH_CONF")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        o.status.success(),
        "{program} {args:?}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl Cluster {
    /// Makes and starts the cluster in `dir` (made fresh), with one pool,
    /// and waits until `ceph status` shows the monitor in quorum, manager
    /// `x` active, `y` standby and the pool's placement groups.
    pub fn start(dir: &Path) -> Cluster {
        let _ = std::fs::remove_dir_all(dir);
        let etc = dir.join("etc");
        for d in ["etc", "mon", "mgr/ceph-x", "mgr/ceph-y", "run", "log"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let fsid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
            .unwrap()
            .trim()
            .to_string();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.display();
        // The disk thresholds are lowered so a full CI disk neither warns
        // nor stops the monitor (it refuses to run below 5 % by default).
        std::fs::write(
            etc.join("ceph.conf"),
            format!(
                "[global]\n\
                 fsid = {fsid}\n\
                 mon_host = [v2:127.0.0.1:{port}]\n\
                 auth_cluster_required = cephx\n\
                 auth_service_required = cephx\n\
                 auth_client_required = cephx\n\
                 ms_bind_ipv4 = true\n\
                 ms_bind_ipv6 = false\n\
                 run_dir = {d}/run\n\
                 mon_data_avail_warn = 1\n\
                 mon_data_avail_crit = 0\n\
                 mgr_initial_modules =\n\
                 mgr_disabled_modules = {MGR_UNUSED}\n\
                 [mon]\n\
                 mon_data = {d}/mon/$cluster-$id\n\
                 log_file = {d}/log/$cluster-$name.log\n\
                 admin_socket = {d}/run/$cluster-$name.asok\n\
                 [mgr]\n\
                 mgr_data = {d}/mgr/$cluster-$id\n\
                 keyring = {d}/mgr/$cluster-$id/keyring\n\
                 log_file = {d}/log/$cluster-$name.log\n\
                 admin_socket = {d}/run/$cluster-$name.asok\n"
            ),
        )
        .unwrap();
        let conf = etc.join("ceph.conf").display().to_string();
        let mon_keyring = dir.join("mon.keyring").display().to_string();
        let admin = etc.join("ceph.client.admin.keyring").display().to_string();
        let monmap = dir.join("monmap").display().to_string();
        run(
            "ceph-authtool",
            &[
                "--create-keyring",
                &mon_keyring,
                "--gen-key",
                "-n",
                "mon.",
                "--cap",
                "mon",
                "allow *",
            ],
        );
        run(
            "ceph-authtool",
            &[
                "--create-keyring",
                &admin,
                "--gen-key",
                "-n",
                "client.admin",
                "--cap",
                "mon",
                "allow *",
                "--cap",
                "osd",
                "allow *",
                "--cap",
                "mds",
                "allow *",
                "--cap",
                "mgr",
                "allow *",
            ],
        );
        run("ceph-authtool", &[&mon_keyring, "--import-keyring", &admin]);
        let addr = format!("[v2:127.0.0.1:{port}]");
        run(
            "monmaptool",
            &["--create", "--fsid", &fsid, "--addv", "a", &addr, &monmap],
        );
        run(
            CEPH_MON,
            &[
                "-c",
                &conf,
                "--mkfs",
                "-i",
                "a",
                "--monmap",
                &monmap,
                "--keyring",
                &mon_keyring,
            ],
        );
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            fsid,
            port,
            etc,
            children: Vec::new(),
        };
        cluster.spawn(CEPH_MON, "a");
        cluster.wait_for("the monitor's quorum", |s| {
            s["quorum_names"] == serde_json::json!(["a"])
        });
        for id in ["x", "y"] {
            let keyring = cluster.ceph(&[
                "auth",
                "get-or-create",
                &format!("mgr.{id}"),
                "mon",
                "allow profile mgr",
                "osd",
                "allow *",
                "mds",
                "allow *",
            ]);
            std::fs::write(dir.join(format!("mgr/ceph-{id}/keyring")), keyring).unwrap();
        }
        // Both managers load every Python module (about 10 s of CPU each):
        // started together, one becomes active and the other its standby.
        cluster.spawn(CEPH_MGR, "x");
        cluster.spawn(CEPH_MGR, "y");
        cluster.ceph(&["osd", "pool", "create", POOL, &POOL_PGS.to_string()]);
        cluster.wait_for("an active manager, a standby and the pool's PGs", |s| {
            s["mgrmap"]["available"] == serde_json::json!(true)
                && s["mgrmap"]["num_standbys"] == serde_json::json!(1)
                && s["pgmap"]["num_pgs"] == serde_json::json!(POOL_PGS)
        });
        cluster
    }

    fn spawn(&mut self, program: &str, id: &str) {
        let conf = self.etc.join("ceph.conf");
        let log = std::fs::File::create(self.dir.join(format!("log/{id}.stderr"))).unwrap();
        let child = Command::new(program)
            .arg("-c")
            .arg(&conf)
            .args(["-f", "-i", id])
            .env_remove("CEPH_CONF")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        self.children.push(child);
    }

    /// Polls `ceph status` (0.5 s apart: each call is a Python program
    /// that costs CPU the daemons need; 90 s at most) until `ready` holds.
    fn wait_for(&mut self, what: &str, ready: impl Fn(&serde_json::Value) -> bool) {
        let until = Instant::now() + Duration::from_secs(90);
        loop {
            for c in &mut self.children {
                if let Some(st) = c.try_wait().unwrap() {
                    panic!(
                        "a Ceph daemon exited ({st}) waiting for {what}:\n{}",
                        self.logs()
                    );
                }
            }
            let status = self.status();
            if ready(&status) {
                return;
            }
            assert!(
                Instant::now() < until,
                "no {what} within 90 s; last status {status}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn status(&self) -> serde_json::Value {
        let text = self.ceph(&["status", "--format", "json"]);
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// `ceph ARGS` as the cluster's admin, with the configuration given by
    /// `-c` (for the test's own view of the cluster).
    pub fn ceph(&self, args: &[&str]) -> String {
        let conf = self.etc.join("ceph.conf").display().to_string();
        let keyring = self
            .etc
            .join("ceph.client.admin.keyring")
            .display()
            .to_string();
        let mut all = vec![
            "-c",
            conf.as_str(),
            "--keyring",
            keyring.as_str(),
            "--connect-timeout",
            "10",
        ];
        all.extend_from_slice(args);
        run(CEPH, &all)
    }

    /// `ceph ARGS --format json`, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--format", "json"]);
        let text = self.ceph(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("ceph {args:?}: {e}: {text}"))
    }

    /// A captured root at `root` whose only program is `ceph`: the real
    /// one, started with its arguments unchanged in a private mount
    /// namespace where `/etc/ceph` is this cluster's `etc/`. Each call's
    /// arguments are appended to `root/.capture/calls.log`.
    pub fn captured_root(&self, root: &Path) -> PathBuf {
        let bin = root.join(".capture/bin");
        std::fs::create_dir_all(&bin).unwrap();
        // What the collector checks before it runs `ceph` (the wrapper below
        // gives the real one the cluster's /etc/ceph).
        std::fs::create_dir_all(root.join("etc/ceph")).unwrap();
        std::fs::copy(self.etc.join("ceph.conf"), root.join("etc/ceph/ceph.conf")).unwrap();
        let log = root.join(".capture/calls.log");
        std::fs::write(&log, "").unwrap();
        let script = format!(
            "#!/bin/sh\n\
             printf '%s\\n' \"$*\" >>'{log}'\n\
             exec unshare --mount --propagation private -- /bin/sh -c \
             'mount --bind \"$0\" /etc/ceph && exec {CEPH} \"$@\"' '{etc}' \"$@\"\n",
            log = log.display(),
            etc = self.etc.display(),
        );
        let p = bin.join("ceph");
        std::fs::write(&p, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        log
    }

    /// The daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.join("log")) {
            for e in rd.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out.push_str(&format!("--- {}\n", e.path().display()));
                for l in tail.iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Stops the monitor (and so every client's answer).
    pub fn stop_monitor(&mut self) {
        if !self.children.is_empty() {
            let mut mon = self.children.remove(0);
            let _ = mon.kill();
            let _ = mon.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
