//! `pulse-sensor-proxy`: the host-side daemon that lets a containerised Pulse
//! read cluster temperatures without holding SSH keys
//! (`spec/pulse-sensor-proxy.md`). It runs on the Proxmox host, keeps the
//! proxy's SSH key there, and answers one JSON request per connection on a
//! Unix socket whose peers are identified by the kernel (`SO_PEERCRED`).
//!
//! Module map:
//! - [`cli`]: the subcommands (daemon, `version`, `keys`, `config ...`,
//!   `audit verify`, `sensors`, `call`);
//! - [`config`]: `config.yaml` / `allowed_nodes.yaml` (the YAML subset the
//!   stock files use) and the environment overrides;
//! - [`server`]: the socket, the accept loop and the five methods;
//! - [`protocol`]: request parsing and response encoding;
//! - [`peer`]: who may connect and with which capabilities;
//! - [`limit`]: per-peer token buckets, concurrency slots, penalties, the
//!   per-node gate;
//! - [`nodes`]: node-name syntax and the SSRF guard (allow-list, CIDRs,
//!   cluster membership);
//! - [`ssh`]: the system `ssh`/`ssh-keygen`, `known_hosts`, forced-command
//!   `authorized_keys` lines;
//! - [`sensors`]: what the forced command prints on a node (`sensors -j`
//!   shaped JSON from hwmon and thermal zones);
//! - [`audit`]: the hash-chained audit log and its verifier;
//! - [`metrics`]: the `pulse_proxy_*` families on `127.0.0.1:9127`.

pub mod audit;
pub mod cli;
pub mod config;
pub mod https;
pub mod limit;
pub mod metrics;
pub mod nodes;
pub mod peer;
pub mod protocol;
pub mod rotate;
pub mod sensors;
pub mod server;
pub mod ssh;

/// The proxy's version, as `get_status` and `version` report it.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// What the kernel says about the process at the other end of a Unix socket
/// (`SO_PEERCRED`), in the host's user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Capability bits (spec §3): only `ADMIN` gates anything (the three
/// privileged methods).
pub mod caps {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const ADMIN: u8 = 4;
    pub const ALL: u8 = READ | WRITE | ADMIN;
}
