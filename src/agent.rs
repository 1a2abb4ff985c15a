//! Runs the agent: today, one collection cycle printed as the host report
//! (`--once`). The reporting daemon (scheduler, delivery, spool, health
//! listener) is not built yet; asking for it is an error, not a silent no-op.

use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use serde_json::Value;

use crate::collect::{self, Outcome, identity};
use crate::config::Config;
use crate::report::{self, Module, ModuleState, Privilege, Sequence};
use crate::root::Root;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug)]
pub enum Error {
    Root(std::path::PathBuf, std::io::Error),
    NotBuilt(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Root(p, e) => write!(f, "--root {}: {e}", p.display()),
            Error::NotBuilt(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for Error {}

/// `v` + the crate version: what `agent.version` and `--version` show.
pub fn version() -> String {
    format!("v{VERSION}")
}

/// Runs what the configuration asks for.
pub fn run(config: &Config) -> Result<(), Error> {
    if !config.once {
        return Err(Error::NotBuilt(
            "only --once is available in this build: the reporting daemon (delivery, spool, health listener) is not built yet",
        ));
    }
    let privilege = Privilege::current(config.smartctl_path.is_some(), config.pct_path.is_some());
    let doc = once(
        config,
        &SystemTime::now,
        &mut Sequence::random(),
        &privilege,
    )?;
    let text = serde_json::to_string_pretty(&doc)
        .expect("invariant: a serde_json::Value always serialises");
    println!("{text}");
    Ok(())
}

/// Collects one host report. The clock, sequence and the process's privilege
/// are passed in so tests can pin them.
pub fn once(
    config: &Config,
    clock: &dyn Fn() -> SystemTime,
    seq: &mut Sequence,
    privilege: &Privilege,
) -> Result<Value, Error> {
    let started = clock();
    let root = Root::new(&config.root).map_err(|e| Error::Root(config.root.clone(), e))?;
    let identity = identity::collect(&root, config.hostname.as_deref());
    if let Some(kind) = identity.container {
        log::debug!("running inside an {kind} container");
    }
    let mut opts = options(config);
    opts.zfs_arc_is_cache = identity.container.is_none();
    let mut host = collect::Host::new(root, opts);
    let snapshot = host.collect();
    for s in &snapshot.sources {
        if let Outcome::Failed(why) = &s.outcome {
            log::warn!("{}: {why}", s.name);
        }
        for w in &s.warnings {
            log::warn!("{}: {w}", s.name);
        }
    }
    let modules = modules(config, started);
    let agent_id = agent_id(config, &identity);
    let sequence_id = seq.next_id();
    let version = version();
    let report_ip = config.report_ip.map(|ip| ip.to_string());
    let doc = report::host(&report::HostReport {
        agent: report::Agent {
            id: &agent_id,
            version: &version,
            interval_seconds: config.interval.as_secs(),
            hostname: &identity.hostname,
            disk_exclude: &config.disk_exclude,
            modules: &modules,
            privilege,
        },
        identity: &identity,
        report_ip: report_ip.as_deref(),
        tags: &config.tags,
        snapshot: &snapshot,
        // The server orders reports by this: it is taken after collection.
        timestamp: clock(),
        sequence_id: &sequence_id,
    });
    Ok(doc)
}

/// Settings the collectors take from the configuration.
pub fn options(config: &Config) -> collect::Options {
    collect::Options {
        disk_exclude: config.disk_exclude.clone(),
        disk_include: config.disk_include.clone(),
        ..collect::Options::default()
    }
}

/// `agent.modules`: the host module, and the stock agent's other modules as
/// disabled so the server's module view is complete.
pub fn modules(config: &Config, at: SystemTime) -> Vec<Module> {
    let m = |name, enabled: bool, state| Module {
        name,
        enabled,
        state,
        last_error: None,
        updated_at: at,
    };
    vec![
        m("docker", false, ModuleState::Disabled),
        if config.enable_host {
            m("host", true, ModuleState::Running)
        } else {
            m("host", false, ModuleState::Disabled)
        },
        m("kubernetes", false, ModuleState::Disabled),
    ]
}

/// `agent.id`: `--agent-id`, else the agent-id file, else the machine ID,
/// else the hostname.
pub fn agent_id(config: &Config, identity: &identity::Identity) -> String {
    if let Some(id) = &config.agent_id {
        return id.clone();
    }
    if let Some(id) = read_agent_id_file(&config.agent_id_file) {
        return id;
    }
    if !identity.machine_id.is_empty() {
        return identity.machine_id.clone();
    }
    identity.hostname.clone()
}

fn read_agent_id_file(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let id = text.trim();
    (!id.is_empty() && id.len() <= 256).then(|| id.to_string())
}
