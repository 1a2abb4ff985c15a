//! The Docker/Podman module: containers read over the Engine API on a Unix
//! socket and sent as the docker report (spec §4).
//!
//! - `http.rs`: HTTP/1.1 over a Unix socket, deadlines and caps;
//! - `engine.rs`: candidate sockets, API version, Docker or Podman, requests;
//! - `collect.rs`: one collection (info, list, stats, cached inspect).
//!
//! The collection runs on its own **docker** thread (a [`Worker`]): the report
//! cycle asks for it before the host collectors run and takes the answer
//! after the host report is delivered, so a slow or hung daemon never holds
//! the host report.

pub mod collect;
pub mod engine;
pub mod http;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use collect::{Docker, Settings, Snapshot};

use crate::worker::{Ticket, Worker};

/// How long a cycle waits for the collection it asked for, from the ask.
pub const WAIT: Duration = Duration::from_secs(10);
/// `--once` waits for the whole collection (its own deadlines bound it).
pub const ONCE_WAIT: Duration = Duration::from_secs(60);

/// A finished collection, stamped so a cycle can tell a new one from one it
/// already sent.
#[derive(Debug)]
pub struct Run {
    pub result: Result<Snapshot, String>,
    pub finished: Instant,
}

/// The docker thread.
pub struct Service {
    worker: Worker<(), Run>,
    settings: Settings,
}

/// A request in flight.
pub type Pending = Ticket;

impl Service {
    pub fn start(settings: Settings) -> std::io::Result<Service> {
        let mut docker = Docker::new(settings.clone());
        let worker = Worker::start("docker", move |()| {
            let result = docker.collect();
            Run {
                result,
                finished: Instant::now(),
            }
        })?;
        Ok(Service { worker, settings })
    }

    /// Whether a socket the module would try exists (auto-detection).
    pub fn socket_present(&self) -> bool {
        self.settings.candidates().0.iter().any(|p| p.exists())
    }

    pub fn ask(&self) -> Pending {
        self.worker.ask(())
    }

    /// The newest finished collection, waiting until `wait` after the ask
    /// for the one asked for (not at all when an earlier one was still
    /// running then).
    pub fn answer(&self, p: Pending, wait: Duration) -> Option<Arc<Run>> {
        self.worker.latest_within(p, wait)
    }
}
