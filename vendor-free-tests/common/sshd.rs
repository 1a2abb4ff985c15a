//! A real OpenSSH server on loopback standing in for a cluster node, for the
//! proxy's SSH tests. Include it with `#[path = "common/sshd.rs"] mod sshd;`
//! (it depends on nothing else in `common/`).
//!
//! `/usr/sbin/sshd -D -e` runs on `127.0.0.1:<free port>` with its own
//! ed25519 host key, inside `unshare --mount --propagation private`, where
//! the node's files are scratch directories bind-mounted over the real ones:
//! - `/root` ← `<dir>/home` (root's home: `.ssh/authorized_keys` is the file
//!   sshd reads and the key push writes);
//! - `/usr/local` ← `<dir>/usr-local` (the push installs
//!   `/usr/local/libexec/pulse-sensor-proxy/` there);
//! - `/sys` ← a fixture tree, when given (what the node's sensors read);
//! - `/run` and `/var/log`: empty tmpfs (sshd's privilege-separation
//!   directory, utmp/wtmp/lastlog).
//!
//! Every session the server starts inherits that namespace, so nothing of
//! the machine running the tests is read or written as "the node". The
//! server is run as root (tests do), with `UsePAM no`, `StrictModes no`,
//! `PermitRootLogin prohibit-password`, `PidFile none`. [`Sshd::admin_key`]
//! is an unrestricted key already in `authorized_keys` (the operator's /
//! Proxmox cluster root key, which the proxy's key push logs in with).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";

pub struct Sshd {
    pub port: u16,
    /// Scratch directory: config, host key, log, the node's bind sources.
    pub dir: PathBuf,
    /// The node's `/root`.
    pub home: PathBuf,
    /// The node's `/usr/local`.
    pub usr_local: PathBuf,
    /// Private key of an unrestricted `authorized_keys` line.
    pub admin_key: PathBuf,
    sys: Option<PathBuf>,
    child: Option<Child>,
}

/// `ssh-keygen -t ed25519` into `path` (no passphrase).
pub fn keygen(path: &Path, comment: &str) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen runs");
    assert!(st.success(), "ssh-keygen failed");
}

/// The `type base64` part of a `.pub` file.
pub fn public_key(private: &Path) -> String {
    let text = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Sshd {
    /// Starts a node in `dir` (made fresh). `None`, after a loud message,
    /// when this machine has no sshd.
    pub fn start(dir: &Path, sys: Option<&Path>) -> Option<Sshd> {
        if !Path::new(SSHD).exists() {
            eprintln!("\n*** SKIPPED: {SSHD} is missing (install openssh-server) ***\n");
            return None;
        }
        let _ = std::fs::remove_dir_all(dir);
        let home = dir.join("home");
        let usr_local = dir.join("usr-local");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::create_dir_all(&usr_local).unwrap();
        let admin_key = dir.join("admin_ed25519");
        keygen(&admin_key, "admin@test");
        std::fs::write(
            home.join(".ssh/authorized_keys"),
            format!("{} admin@test\n", public_key(&admin_key)),
        )
        .unwrap();
        keygen(&dir.join("host_ed25519"), "host");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1:{port}\n\
                 HostKey {}\n\
                 PidFile none\n\
                 AuthorizedKeysFile .ssh/authorized_keys\n\
                 PermitRootLogin prohibit-password\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PrintMotd no\n\
                 PrintLastLog no\n\
                 UseDNS no\n\
                 LogLevel VERBOSE\n",
                dir.join("host_ed25519").display()
            ),
        )
        .unwrap();
        let mut sshd = Sshd {
            port,
            dir: dir.to_path_buf(),
            home,
            usr_local,
            admin_key,
            sys: sys.map(Path::to_path_buf),
            child: None,
        };
        sshd.spawn();
        Some(sshd)
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("sshd.log")).unwrap();
        let script = r#"set -e
mount --bind "$1" /root
mount --bind "$2" /usr/local
if [ -n "$3" ]; then mount --bind "$3" /sys; fi
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -m 755 /run/sshd
mount -t tmpfs -o mode=755 tmpfs /var/log
exec /usr/sbin/sshd -D -e -f "$4""#;
        let sys = self
            .sys
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(script)
            .arg("sh")
            .arg(&self.home)
            .arg(&self.usr_local)
            .arg(sys)
            .arg(self.dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("unshare runs");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while !self.log().contains("Server listening on") {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("sshd exited ({st}):\n{}", self.log());
            }
            assert!(
                Instant::now() < until,
                "sshd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's own log (stderr of `sshd -e`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// The node's `/root/.ssh/authorized_keys`.
    pub fn authorized_keys(&self) -> PathBuf {
        self.home.join(".ssh/authorized_keys")
    }

    /// `ssh-ed25519 AAAA...` of the current host key.
    pub fn host_key(&self) -> String {
        public_key(&self.dir.join("host_ed25519"))
    }

    /// Stops the server (its own pid: unshare and sh exec into sshd).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts the server on the same port with a new host key.
    pub fn new_host_key(&mut self) {
        self.stop();
        keygen(&self.dir.join("host_ed25519"), "host");
        self.spawn();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}
