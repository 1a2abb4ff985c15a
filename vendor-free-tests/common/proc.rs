//! Scratch directories and the agent as a child process, for end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::standin::{REPORT_TOKEN, StandIn, split_seq};

/// A scratch directory for one test: state dir, token file, CA file, logs.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(name: &str) -> Dir {
        let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("delivery-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    pub fn token_file(&self, token: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.0.join("token");
        std::fs::write(&p, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    pub fn state(&self) -> PathBuf {
        self.0.join("state")
    }

    /// The sequence numbers of the spooled reports, oldest first.
    pub fn spooled_sequence(&self) -> Vec<u64> {
        self.spooled()
            .iter()
            .filter_map(|f| std::fs::read(self.state().join("spool").join(f)).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter_map(|v| Some(split_seq(v["sequenceId"].as_str()?)?.1))
            .collect()
    }

    pub fn spooled(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.state().join("spool"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The agent as a child process; killed when dropped.
pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    pub fn start(dir: &Dir, args: &[String]) -> Agent {
        // One log per agent: two agents in one directory (the lock test)
        // must not write over each other's lines.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.0.join(format!("agent-{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_pulse-agent"))
            .args(args)
            .env_clear()
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
    }

    /// Waits for the process to exit; `None` if it is still running after `t`.
    pub fn wait_exit(&mut self, t: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + t;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Common flags: the fixture host, the stand-in, 1 s interval, no listener.
pub fn args(s: &StandIn, dir: &Dir, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        format!("--root={}", super::case_root("debian12-vm").display()),
        format!("--url={}", s.url()),
        format!("--token-file={}", dir.token_file(REPORT_TOKEN).display()),
        format!("--cacert={}", s.ca_file(&dir.0).display()),
        format!("--state-dir={}", dir.state().display()),
        "--interval=1s".to_string(),
        "--health-addr=".to_string(),
        // A smartctl that knows no disk, never the machine's own.
        format!(
            "--smartctl={}",
            super::fake_smartctl("debian12-vm").display()
        ),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// A free loopback port (bound and released: nothing listens on it now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The agent with its health listener on a free port, after two reports (the
/// first has been published).
pub fn with_listener(s: &StandIn, dir: &Dir) -> (Agent, u16) {
    let port = free_port();
    let mut a = args(s, dir, &[]);
    a.retain(|x| x != "--health-addr=");
    a.push(format!("--health-addr=127.0.0.1:{port}"));
    let agent = Agent::start(dir, &a);
    assert!(s.wait_for(Duration::from_secs(20), |r| r.len() >= 2));
    (agent, port)
}

/// Sends `request` on a new connection to the listener and reads the answer
/// to its end: the status, the head and the body (status 0: no answer in
/// `wait`).
pub fn ask(port: u16, request: &str, wait: Duration) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(wait)).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_string(), body.to_string())
}
