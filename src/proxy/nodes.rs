//! PLACEHOLDER
use super::config::Config;
use std::net::IpAddr;
use std::path::Path;
#[derive(Debug, Clone, PartialEq)]
pub struct Cidr;
impl Cidr {
    pub fn parse(_s: &str) -> Option<Cidr> {
        None
    }
    pub fn contains(&self, _ip: IpAddr) -> bool {
        false
    }
}
impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("x")
    }
}
pub fn valid_name(n: &str) -> bool {
    !n.starts_with('-')
}
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}
pub struct Validator;
impl Validator {
    pub fn new(
        _c: &Config,
        _cl: Box<dyn Fn() -> Result<Vec<IpAddr>, String> + Send + Sync>,
        _l: Box<dyn Fn() -> Vec<String> + Send + Sync>,
    ) -> Validator {
        Validator
    }
    pub fn check(&self, _n: &str) -> Result<(), Rejection> {
        Ok(())
    }
    pub fn replace_allowlist(&self, _n: Vec<String>) {}
}
pub fn discover_cluster(
    _r: &crate::root::Root,
    _a: &Path,
    _b: &Path,
) -> Result<Vec<IpAddr>, String> {
    Err("x".into())
}
