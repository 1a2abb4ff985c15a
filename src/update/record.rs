//! What the updater remembers across restarts, in `STATE-DIR/update.json`:
//! the version on trial (installed, not yet proven by a delivered report),
//! versions that were rolled back and are never installed again, and the
//! last rollback, so the restored binary can say what happened.
//!
//! Written only when something changes (an install, a start or a clean stop
//! during a trial, the end of a trial, a rollback): never on the happy path.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::remote_config::parse_rfc3339;
use crate::report::rfc3339;
use crate::state;

pub const FILE: &str = "update.json";
/// Larger than any real record; a larger file is not read.
const MAX_BYTES: u64 = 64 * 1024;
/// Rolled-back versions remembered (oldest forgotten first).
const MAX_REFUSED: usize = 32;

/// A newly installed version until it has delivered one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trial {
    pub from: String,
    pub to: String,
    pub installed_at: SystemTime,
    /// A run of `to` has started and not yet stopped cleanly.
    pub running: bool,
    /// Runs of `to` that ended without a clean stop.
    pub crashes: u32,
    /// Reports of `to` the server answered with a status other than 2xx.
    pub refusals: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    pub from: String,
    pub to: String,
    pub why: String,
    pub at: SystemTime,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub trial: Option<Trial>,
    pub refused: Vec<String>,
    pub rollback: Option<Rollback>,
    /// When this agent last installed a version.
    pub last_install: Option<SystemTime>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

impl Record {
    /// The record in `state_dir`; empty when there is none. A record that
    /// cannot be read is empty too (and said so in the log): losing it costs
    /// at most a trial, never a binary.
    pub fn load(state_dir: &Path) -> Record {
        let p = path(state_dir);
        match state::read_trimmed(&p, MAX_BYTES) {
            Ok(Some(text)) => parse(&text).unwrap_or_else(|why| {
                log::warn!("{}: {why}; starting a new one", p.display());
                Record::default()
            }),
            Ok(None) => Record::default(),
            Err(e) => {
                log::warn!("{}: {e}", p.display());
                Record::default()
            }
        }
    }

    /// Writes the record durably (temp file, fsync, rename, fsync).
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        if let Some(why) = state::ensure_dir(state_dir)? {
            log::warn!("{why}");
        }
        let mut text = serde_json::to_string_pretty(&self.to_json())
            .expect("invariant: a serde_json::Value always serialises");
        text.push('\n');
        state::write_atomic(&path(state_dir), text.as_bytes())
    }

    pub fn is_refused(&self, version: &str) -> bool {
        self.refused
            .iter()
            .any(|v| super::index::same_version(v, version))
    }

    pub fn refuse(&mut self, version: &str) {
        if !self.is_refused(version) {
            self.refused.push(version.to_string());
        }
        if self.refused.len() > MAX_REFUSED {
            let extra = self.refused.len() - MAX_REFUSED;
            self.refused.drain(..extra);
        }
    }

    fn to_json(&self) -> Value {
        let mut o = Map::new();
        if let Some(t) = &self.trial {
            o.insert(
                "trial".into(),
                json!({"from": t.from, "to": t.to, "installedAt": rfc3339(t.installed_at),
                       "running": t.running, "crashes": t.crashes, "refusals": t.refusals}),
            );
        }
        o.insert("refused".into(), json!(self.refused));
        if let Some(r) = &self.rollback {
            o.insert(
                "rollback".into(),
                json!({"from": r.from, "to": r.to, "why": r.why, "at": rfc3339(r.at)}),
            );
        }
        if let Some(t) = self.last_install {
            o.insert("lastInstall".into(), json!(rfc3339(t)));
        }
        Value::Object(o)
    }
}

/// Parses a record (fuzzed: the file is ours, but a disk can hand back anything).
pub fn parse(text: &str) -> Result<Record, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let s = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
    let t = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).and_then(parse_rfc3339);
    let n = |o: &Value, k: &str| {
        o.get(k)
            .and_then(Value::as_u64)
            .map_or(0, |x| u32::try_from(x).unwrap_or(u32::MAX))
    };
    let trial = match v.get("trial") {
        Some(o) => Some(Trial {
            from: s(o, "from").ok_or("trial without \"from\"")?,
            to: s(o, "to").ok_or("trial without \"to\"")?,
            installed_at: t(o, "installedAt").ok_or("trial without \"installedAt\"")?,
            running: o.get("running").and_then(Value::as_bool).unwrap_or(false),
            crashes: n(o, "crashes"),
            refusals: n(o, "refusals"),
        }),
        None => None,
    };
    let rollback = match v.get("rollback") {
        Some(o) => Some(Rollback {
            from: s(o, "from").ok_or("rollback without \"from\"")?,
            to: s(o, "to").unwrap_or_default(),
            why: s(o, "why").unwrap_or_default(),
            at: t(o, "at").ok_or("rollback without \"at\"")?,
        }),
        None => None,
    };
    let refused = crate::deliver::json_strings(v.get("refused"));
    Ok(Record {
        trial,
        refused,
        rollback,
        last_install: t(&v, "lastInstall"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_record_survives_a_round_trip() {
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut r = Record {
            trial: Some(Trial {
                from: "v0.1.0".into(),
                to: "0.2.0".into(),
                installed_at: at,
                running: true,
                crashes: 1,
                refusals: 2,
            }),
            refused: vec!["0.1.5".into()],
            rollback: Some(Rollback {
                from: "0.1.5".into(),
                to: "v0.1.0".into(),
                why: "it exited abnormally twice".into(),
                at,
            }),
            last_install: Some(at),
        };
        let dir = std::env::temp_dir().join(format!("pulse-record-{}", std::process::id()));
        r.save(&dir).unwrap();
        assert_eq!(Record::load(&dir), r);
        r.refuse("v0.1.5");
        assert_eq!(r.refused.len(), 1, "the same version however written");
        for i in 0..40 {
            r.refuse(&format!("1.0.{i}"));
        }
        assert_eq!(r.refused.len(), MAX_REFUSED);
        assert!(r.is_refused("1.0.39") && !r.is_refused("1.0.0"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        for text in [
            "",
            "[]",
            "{\"trial\":{}}",
            "{\"trial\":{\"from\":1}}",
            "{\"refused\":7}",
        ] {
            let _ = parse(text);
        }
        assert!(parse("{\"trial\":{}}").is_err());
        assert_eq!(parse("{\"refused\":7}").unwrap(), Record::default());
    }
}
