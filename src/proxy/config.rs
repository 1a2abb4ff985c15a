//! PLACEHOLDER
use super::nodes::Cidr;
use std::path::{Path, PathBuf};
use std::time::Duration;
#[derive(Debug, Clone)]
pub struct Config {
    pub allowed_source_subnets: Vec<Cidr>,
    pub metrics_address: Option<String>,
    pub log_level: log::LevelFilter,
    pub allowed_nodes: Vec<String>,
    pub strict_node_validation: bool,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub max_ssh_output_bytes: usize,
    pub require_proxmox_hostkeys: bool,
    pub allowed_peers: Vec<(u32, u8)>,
    pub allow_idmapped_root: bool,
    pub allowed_peer_uids: Vec<u32>,
    pub allowed_peer_gids: Vec<u32>,
    pub allowed_idmap_users: Vec<String>,
    pub rate_interval: Duration,
    pub rate_burst: u32,
    pub socket: PathBuf,
    pub ssh_dir: PathBuf,
    pub audit_log: PathBuf,
    pub user: String,
    pub work_dir: PathBuf,
    pub pve_dir: PathBuf,
    pub ssh_port: u16,
}
#[derive(Debug)]
pub struct ConfigError(pub String);
impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl Config {
    pub fn load(
        _p: Option<&Path>,
        _env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Err(ConfigError("placeholder".into()))
    }
}
pub fn validate_command(
    _c: Option<&Path>,
    _a: Option<&Path>,
    _e: &dyn Fn(&str) -> Option<String>,
) -> std::process::ExitCode {
    std::process::ExitCode::from(1)
}
pub fn set_allowed_nodes_command(
    _f: Option<&Path>,
    _m: &[String],
    _r: bool,
) -> std::process::ExitCode {
    std::process::ExitCode::from(1)
}
