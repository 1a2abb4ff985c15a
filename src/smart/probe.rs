//! Asking smartctl about one disk (`spec/pulse-collectors.md` §1.4-§1.5,
//! §1.7): the attempts with their `-d` types, the standby guard, one deadline
//! for all attempts, exit-status rules, the fallback for builds without JSON,
//! merging what several attempts learned, and sysfs refinement.
//!
//! Every command that reaches a disk which is or may be rotational carries
//! `-n standby,3`: smartctl then asks the drive for its power mode (a command
//! that does not spin it up) and gives up with exit status 3 if it sleeps.

use std::path::Path;
use std::time::Instant;

use super::discover::{self, SysfsDisk, Target};
use super::parse::{self, Disk, Health, ParseError, Status};
use crate::exec;
use crate::root::Root;

/// smartctl's answer is at most this long (a full `-x` dump is ~100 KB).
pub const OUTPUT_CAP: usize = exec::STDOUT_CAP;

/// What probing one target came to.
#[derive(Debug)]
pub enum Probe {
    /// A row (possibly merged from several attempts).
    Row(Disk),
    /// The disk sleeps; nothing was read.
    Standby(Disk),
    /// No attempt gave data; the last error.
    Failed(String),
    /// A smartctl from this or an earlier probe cannot be killed.
    Stuck(exec::Stuck, String),
}

/// The argv after the program name.
pub fn args(dtype: &str, guard: bool, json: bool, path: &str) -> Vec<String> {
    let mut a: Vec<String> = Vec::with_capacity(9);
    if !dtype.is_empty() {
        a.extend(["-d".into(), dtype.into()]);
    }
    if guard {
        a.extend(["-n".into(), "standby,3".into()]);
    }
    a.extend(["-i", "-A", "-H"].map(String::from));
    if json {
        a.push("--json=o".into());
    }
    a.push(path.into());
    a
}

/// Whether a probe of `target` needs the standby guard: always, unless
/// sysfs says the disk is not rotational (controller members always do).
pub fn needs_guard(root: &Root, target: &Target) -> bool {
    target.multiplexed() || !discover::certainly_solid_state(root, &target.block)
}

/// Probes `target` until a row with a temperature, the attempts run out, or
/// `deadline`.
pub fn probe(smartctl: &Path, root: &Root, target: &Target, deadline: Instant) -> Probe {
    let transport = target.transport(root);
    let guard = needs_guard(root, target);
    let mut merged: Option<Disk> = None;
    let mut last_error = String::from("no attempt was made");
    for dtype in discover::attempt_types(target, transport) {
        if Instant::now() >= deadline {
            last_error = "the probe deadline passed".into();
            break;
        }
        match attempt(smartctl, &dtype, guard, &target.path, deadline) {
            // A sleeping disk answered (smartctl 7.5 prints a document with
            // `power_mode`): other `-d` types would only ask it again.
            Attempt::Row(d) if d.standby && merged.is_none() => return Probe::Standby(d),
            Attempt::Row(d) => {
                let m = match &mut merged {
                    Some(m) => {
                        merge(m, &d);
                        m
                    }
                    None => merged.insert(d),
                };
                if m.temperature > 0 {
                    break;
                }
            }
            Attempt::Standby(d) => {
                if merged.is_none() {
                    return Probe::Standby(d);
                }
                break;
            }
            Attempt::Failed(e) => last_error = e,
            Attempt::Stuck(s, e) => return Probe::Stuck(s, e),
        }
    }
    match merged {
        Some(d) => Probe::Row(d),
        None => Probe::Failed(last_error),
    }
}

enum Attempt {
    Row(Disk),
    Standby(Disk),
    Failed(String),
    Stuck(exec::Stuck, String),
}

fn attempt(smartctl: &Path, dtype: &str, guard: bool, path: &str, deadline: Instant) -> Attempt {
    let run = |json: bool| {
        let a = args(dtype, guard, json, path);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        exec::run(smartctl, &a, deadline, OUTPUT_CAP)
    };
    let out = match run(true) {
        Ok(o) => o,
        Err(exec::Error::Timeout(p, d, stuck)) if stuck.is_stuck() => {
            let e = exec::Error::Timeout(p, d, stuck.clone()).to_string();
            return Attempt::Stuck(stuck, e);
        }
        Err(e) => return Attempt::Failed(e.to_string()),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if no_json_support(&stdout, &out.stderr) {
        // An old build (Synology DSM 6): ask again in plain text.
        return match run(false) {
            Ok(o) if o.code == Some(3) && o.stdout.trim_ascii().is_empty() && guard => {
                Attempt::Standby(parse::standby(path, dtype))
            }
            Ok(o) => from_parse(
                parse::text(&String::from_utf8_lossy(&o.stdout), path, dtype),
                &o,
            ),
            Err(e) => Attempt::Failed(e.to_string()),
        };
    }
    if stdout.trim().is_empty() {
        if out.code == Some(3) && guard {
            return Attempt::Standby(parse::standby(path, dtype));
        }
        return Attempt::Failed(exit_error(&out));
    }
    // Any exit status with output: the output is what counts (smartctl sets
    // bits for failing disks and logged errors).
    match parse::json(&out.stdout, path, dtype) {
        Err(ParseError::NotJson) => from_parse(parse::text(&stdout, path, dtype), &out),
        r => from_parse(r, &out),
    }
}

fn from_parse(r: Result<Disk, ParseError>, out: &exec::Output) -> Attempt {
    match r {
        Ok(d) => Attempt::Row(d),
        Err(_) if out.stdout.is_empty() => Attempt::Failed(exit_error(out)),
        Err(_) => Attempt::Failed(match json_error(&out.stdout) {
            Some(m) => format!("no usable SMART data: {m}"),
            None => "no usable SMART data".into(),
        }),
    }
}

/// smartctl's own error message in a JSON answer (`smartctl.messages[]`).
fn json_error(stdout: &[u8]) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(stdout).ok()?;
    doc["smartctl"]["messages"]
        .as_array()?
        .iter()
        .find(|m| m["severity"] == "error")?["string"]
        .as_str()
        .map(str::to_string)
}

fn exit_error(out: &exec::Output) -> String {
    let why = out
        .stderr
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("smartctl ") && !l.starts_with("Copyright"))
        .unwrap_or("")
        .to_string();
    match out.code {
        Some(c) if why.is_empty() => format!("smartctl exited with status {c}"),
        Some(c) => format!("smartctl exited with status {c}: {why}"),
        None => "smartctl was killed by a signal".into(),
    }
}

/// smartctl older than 7.0 rejects `--json`.
fn no_json_support(stdout: &str, stderr: &str) -> bool {
    let all = format!("{stdout}\n{stderr}").to_ascii_lowercase();
    all.contains("json")
        && [
            "unrecognized option",
            "unknown option",
            "invalid option",
            "unrecognized command line option",
        ]
        .iter()
        .any(|m| all.contains(m))
}

/// Folds a later attempt's findings into the first row.
pub fn merge(into: &mut Disk, from: &Disk) {
    for (a, b) in [
        (&mut into.model, &from.model),
        (&mut into.serial, &from.serial),
        (&mut into.wwn, &from.wwn),
        (&mut into.controller, &from.controller),
    ] {
        if a.is_empty() {
            a.clone_from(b);
        }
    }
    if into.size_bytes == 0 {
        into.size_bytes = from.size_bytes;
    }
    if (into.kind.is_empty() || into.kind == "scsi") && !from.kind.is_empty() {
        into.kind.clone_from(&from.kind);
    }
    if into.temperature <= 0 {
        into.temperature = from.temperature;
    }
    into.health = match (into.health, from.health) {
        (_, Health::Failed) | (Health::Failed, _) => Health::Failed,
        (Health::Unset | Health::Unknown, Health::Passed) => Health::Passed,
        (h, _) => h,
    };
    match (&mut into.attributes, &from.attributes) {
        (Some(a), Some(b)) => a.merge(b),
        (a @ None, Some(b)) => *a = Some(*b),
        _ => {}
    }
    let sticky = |a: &mut Status, b: Status| {
        if a.state.is_empty() || (b.state == "available" && a.state != "available") {
            *a = b;
        }
    };
    sticky(&mut into.collection.serial, from.collection.serial);
    sticky(
        &mut into.collection.temperature,
        from.collection.temperature,
    );
    sticky(&mut into.collection.controller, from.collection.controller);
}

/// What sysfs adds to a probed row: the block name, controller and SCSI
/// address, a better type, and identity smartctl did not give.
pub fn refine(d: &mut Disk, target: &Target, sys: &SysfsDisk, transport: Option<&str>) {
    if target.multiplexed() {
        d.controller.clone_from(&target.block);
        d.target.clone_from(&target.dtype);
        d.collection.controller = Status::new("available", "smartctl_scan", "");
        d.member = true;
        return;
    }
    d.device.clone_from(&target.block);
    d.controller.clone_from(&sys.controller);
    d.target.clone_from(&sys.target);
    d.collection.controller = controller_status(sys);
    if let Some(t) = target.native_transport {
        // Unraid's word for an array member wins over smartctl's.
        d.kind = t.to_string();
    } else if d.kind.is_empty() || d.kind == "scsi" {
        if let Some(t) = transport {
            d.kind = t.to_string();
        }
    }
    if d.model.is_empty() {
        d.model.clone_from(&sys.model);
    }
    if d.serial.is_empty() && !sys.serial.is_empty() {
        d.serial.clone_from(&sys.serial);
        d.collection.serial = Status::new("available", "sysfs", "");
    }
    if d.wwn.is_empty() {
        d.wwn.clone_from(&sys.wwn);
    }
    if sys.size_bytes > 0 {
        d.size_bytes = sys.size_bytes;
    }
}

fn controller_status(sys: &SysfsDisk) -> Status {
    if sys.controller.is_empty() {
        Status::new(
            "missing",
            "sysfs",
            "controller association was not reported",
        )
    } else {
        Status::new("available", "sysfs", "")
    }
}

/// A row from sysfs alone, for a disk smartctl gave nothing for; `None` for
/// controller members and disks without a size (empty card readers).
pub fn identity_only(target: &Target, sys: &SysfsDisk, transport: Option<&str>) -> Option<Disk> {
    if target.multiplexed() || sys.size_bytes == 0 {
        return None;
    }
    let hint = target.dtype.to_ascii_lowercase();
    let kind = match transport {
        Some(t) => t,
        None if target.block.starts_with("nvme") => "nvme",
        None if hint.starts_with("nvme") => "nvme",
        None if hint.starts_with("sat") => "sata",
        None => "",
    };
    let mut d = Disk {
        device: target.block.clone(),
        model: sys.model.clone(),
        serial: sys.serial.clone(),
        wwn: sys.wwn.clone(),
        kind: kind.to_string(),
        controller: sys.controller.clone(),
        target: sys.target.clone(),
        size_bytes: sys.size_bytes,
        health: Health::Unknown,
        ..Disk::default()
    };
    d.collection.temperature = Status::new(
        "unavailable",
        "smartctl",
        "SMART probe returned no usable temperature data",
    );
    d.collection.serial = if sys.serial.is_empty() {
        Status::new("missing", "sysfs", "disk serial was not reported")
    } else {
        Status::new("available", "sysfs", "")
    };
    d.collection.controller = controller_status(sys);
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_shapes() {
        assert_eq!(
            args("sat", true, true, "/dev/sda").join(" "),
            "-d sat -n standby,3 -i -A -H --json=o /dev/sda"
        );
        assert_eq!(
            args("", false, true, "/dev/nvme0").join(" "),
            "-i -A -H --json=o /dev/nvme0"
        );
        assert_eq!(
            args("", true, false, "/dev/sata1").join(" "),
            "-n standby,3 -i -A -H /dev/sata1"
        );
    }

    #[test]
    fn smartctl_errors_are_quoted() {
        let doc = br#"{"smartctl":{"messages":[{"string":"/dev/vda: Unable to detect device type","severity":"error"}],"exit_status":1}}"#;
        assert_eq!(
            json_error(doc).as_deref(),
            Some("/dev/vda: Unable to detect device type")
        );
        assert_eq!(json_error(b"{}"), None);
    }

    #[test]
    fn old_builds_are_recognised() {
        assert!(no_json_support(
            "=======> UNRECOGNIZED OPTION: json=o",
            "smartctl: unrecognized option '--json=o'"
        ));
        assert!(!no_json_support("{\"json_format_version\":[1,0]}", ""));
    }

    #[test]
    fn merging_keeps_failed_and_fills_gaps() {
        let mut a = Disk {
            kind: "scsi".into(),
            health: Health::Passed,
            ..Disk::default()
        };
        let b = Disk {
            kind: "sata".into(),
            model: "M".into(),
            temperature: 54,
            health: Health::Failed,
            ..Disk::default()
        };
        merge(&mut a, &b);
        assert_eq!((a.kind.as_str(), a.model.as_str()), ("sata", "M"));
        assert_eq!((a.temperature, a.health), (54, Health::Failed));
    }
}
