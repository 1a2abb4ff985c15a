//! The systemd notification protocol (`sd_notify(3)`), by hand: one
//! datagram per message to the unix socket systemd names in `NOTIFY_SOCKET`
//! (a path, or `@name` in the abstract namespace). Without that variable
//! nothing is sent, so the agent behaves the same outside systemd.
//!
//! The service says `READY=1` once its first report is collected (or as
//! soon as enrollment has to wait for the server), `STATUS=` with its last
//! delivery, `WATCHDOG=1` at least every half of `WATCHDOG_USEC` (when
//! systemd asks for it, for this PID), and `STOPPING=1` on a stop signal.
//! A message that cannot be sent is dropped: systemd's view of the agent is
//! never a reason to stop reporting.
//!
//! The watchdog is fed by the main thread only, between cycles and at each
//! step inside one ([`Notifier::keepalive`]): a cycle is a chain of bounded
//! steps (collectors with deadlines, requests with a 15 s timeout), but a
//! chain of any length (a spool of many reports to a slow server) must not
//! look like a hang, while a step that never returns must.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where to send, and how often the watchdog wants to hear from us.
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
    watchdog: Option<Duration>,
    /// The last `WATCHDOG=1` sent, and whether `READY=1` was.
    sent: Mutex<Sent>,
}

#[derive(Debug, Default)]
struct Sent {
    ping: Option<Instant>,
    ready: bool,
}

/// The variables systemd sets for the service (and no child must inherit).
pub const VARIABLES: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

impl Notifier {
    /// From the environment (read through `env`); `None` outside systemd or
    /// when the socket address cannot be used (logged).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Option<Notifier> {
        let path = env("NOTIFY_SOCKET").filter(|p| !p.is_empty())?;
        let addr = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())
            }
            None if path.starts_with('/') => SocketAddr::from_pathname(&path),
            None => {
                log::warn!(
                    "NOTIFY_SOCKET {path:?} is neither a path nor @name; not notifying systemd"
                );
                return None;
            }
        };
        let addr = match addr {
            Ok(a) => a,
            Err(e) => {
                log::warn!("NOTIFY_SOCKET {path:?}: {e}; not notifying systemd");
                return None;
            }
        };
        let sock = match UnixDatagram::unbound() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("cannot make a socket to notify systemd: {e}");
                return None;
            }
        };
        let ours = env("WATCHDOG_PID")
            .is_none_or(|p| p.trim().parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = env("WATCHDOG_USEC")
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && ours)
            .map(|u| Duration::from_micros(u) / 2);
        Some(Notifier {
            sock,
            addr,
            watchdog,
            sent: Mutex::new(Sent::default()),
        })
    }

    /// How often to send `WATCHDOG=1` (half of systemd's `WatchdogSec=`);
    /// `None` when no watchdog is asked for.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `msg` (newline-separated `KEY=value` assignments).
    pub fn send(&self, msg: &str) {
        if let Err(e) = self.sock.send_to_addr(msg.as_bytes(), &self.addr) {
            log::debug!("notifying systemd: {e}");
        }
    }

    /// `STATUS=status`, preceded by `READY=1` the first time `ready` is
    /// true and by `WATCHDOG=1` when a watchdog is asked for (any message
    /// from the main thread shows it is alive).
    pub fn status(&self, status: &str, ready: bool) {
        let mut sent = self.lock();
        let first = if ready && !sent.ready {
            "READY=1\n"
        } else {
            ""
        };
        sent.ready |= ready;
        let ping = match self.watchdog {
            Some(_) => {
                sent.ping = Some(Instant::now());
                "WATCHDOG=1\n"
            }
            None => "",
        };
        self.send(&format!("{first}{ping}{}", status_line(status)));
    }

    /// `READY=1` with `STATUS=status` the first time; after that, only
    /// [`Notifier::keepalive`].
    pub fn ready(&self, status: &str) {
        if self.lock().ready {
            self.keepalive();
        } else {
            self.status(status, true);
        }
    }

    /// `WATCHDOG=1` when the last one is a quarter of `WatchdogSec=` old or
    /// more: called at every step of a cycle, so the gap between two pings
    /// is at most that quarter plus the longest single step.
    /// Nothing before `READY=1`: systemd starts the watchdog when the start
    /// is over (`TimeoutStartSec=` covers the time before), and an early
    /// ping would start it sooner.
    pub fn keepalive(&self) {
        let Some(every) = self.watchdog else { return };
        let mut sent = self.lock();
        if !sent.ready || sent.ping.is_some_and(|p| p.elapsed() < every / 2) {
            return;
        }
        sent.ping = Some(Instant::now());
        self.send("WATCHDOG=1");
    }

    /// When the main loop must wake at the latest to feed the watchdog.
    pub fn next_ping(&self) -> Option<Instant> {
        let every = self.watchdog?;
        let sent = self.lock();
        if !sent.ready {
            return None;
        }
        Some(sent.ping.map_or_else(Instant::now, |p| p + every))
    }

    /// `WATCHDOG=1` now if [`Notifier::next_ping`] has come.
    pub fn ping_if_due(&self) {
        if self.next_ping().is_some_and(|at| Instant::now() >= at) {
            let mut sent = self.lock();
            sent.ping = Some(Instant::now());
            drop(sent);
            self.send("WATCHDOG=1");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sent> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One line for `STATUS=`: no newline can end the assignment early.
pub fn status_line(text: &str) -> String {
    let one: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("STATUS={}", one.chars().take(400).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, String)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn messages_reach_a_path_socket_and_the_watchdog_is_ours_only() {
        let dir = std::env::temp_dir().join(format!("pulse-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listen = UnixDatagram::bind(&path).unwrap();
        let vars = [
            ("NOTIFY_SOCKET", path.display().to_string()),
            ("WATCHDOG_USEC", "3000000".to_string()),
            ("WATCHDOG_PID", std::process::id().to_string()),
        ];
        let n = Notifier::from_env(&env(&vars)).unwrap();
        assert_eq!(n.watchdog_every(), Some(Duration::from_millis(1500)));
        n.send("READY=1\nSTATUS=ok");
        let mut buf = [0u8; 64];
        let len = listen.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=ok");
        // Another process's watchdog (a parent that exec'd us?) is not ours.
        let vars = [
            ("NOTIFY_SOCKET", path.display().to_string()),
            ("WATCHDOG_USEC", "3000000".to_string()),
            ("WATCHDOG_PID", "1".to_string()),
        ];
        assert_eq!(
            Notifier::from_env(&env(&vars)).unwrap().watchdog_every(),
            None
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_abstract_socket_works_and_nothing_is_set_up_without_one() {
        let name = format!("pulse-notify-test-{}", std::process::id());
        let addr = {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
        };
        let listen = UnixDatagram::bind_addr(&addr).unwrap();
        let vars = [("NOTIFY_SOCKET", format!("@{name}"))];
        let n = Notifier::from_env(&env(&vars)).unwrap();
        assert_eq!(n.watchdog_every(), None);
        n.send("STOPPING=1");
        let mut buf = [0u8; 32];
        let len = listen.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
        assert!(Notifier::from_env(&|_| None).is_none());
        assert!(Notifier::from_env(&env(&[("NOTIFY_SOCKET", "relative".to_string())])).is_none());
    }

    #[test]
    fn the_watchdog_is_fed_only_after_ready_and_at_most_every_quarter() {
        let dir = std::env::temp_dir().join(format!("pulse-notify-wd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listen = UnixDatagram::bind(&path).unwrap();
        listen.set_nonblocking(true).unwrap();
        let vars = [
            ("NOTIFY_SOCKET", path.display().to_string()),
            ("WATCHDOG_USEC", "400000".to_string()),
        ];
        let n = Notifier::from_env(&env(&vars)).unwrap();
        let drain = || {
            let mut buf = [0u8; 256];
            let mut got = Vec::new();
            while let Ok(len) = listen.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
            }
            got
        };
        n.keepalive();
        n.ping_if_due();
        assert_eq!(n.next_ping(), None);
        assert!(drain().is_empty(), "nothing before READY=1");
        n.ready("collected");
        n.ready("again");
        n.keepalive();
        assert_eq!(drain(), ["READY=1\nWATCHDOG=1\nSTATUS=collected"]);
        std::thread::sleep(Duration::from_millis(110));
        n.keepalive();
        assert_eq!(drain(), ["WATCHDOG=1"]);
        assert!(n.next_ping().unwrap() > Instant::now());
        std::thread::sleep(Duration::from_millis(210));
        n.ping_if_due();
        assert_eq!(drain(), ["WATCHDOG=1"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_status_line_is_one_line() {
        assert_eq!(status_line("a\nREADY=1"), "STATUS=a READY=1");
        assert_eq!(status_line(&"x".repeat(1000)).len(), "STATUS=".len() + 400);
    }
}
