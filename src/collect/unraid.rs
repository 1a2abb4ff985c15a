//! Unraid array topology (`unraid`, `spec/pulse-collectors.md` §6.2,
//! protocol §3.10): which disks are members, in which slot and role, their
//! state, and whether Unraid has spun them down.
//!
//! The host is Unraid when `/etc/unraid-version` exists. Two sources, in this
//! order: `/var/local/emhttp/disks.ini` (emhttp's own list of members, read
//! first because it is there even when `mdcmd` is slow or missing) and
//! `mdcmd status` (the md driver's `key=value` state: started, sync, counts,
//! per-slot disks). They are merged by slot, `disks.ini` winning for each
//! field it has, and the disabled/invalid/missing counts are re-counted from
//! the members' own statuses whenever any member has one (#1612: mdcmd's
//! aggregate counters can be stale and would raise false alarms). When
//! `mdcmd` fails, `disks.ini` alone is reported and the failure is kept as a
//! note ([`Collector::note`]), not an error.
//!
//! The SMART thread reads this too (§1.7): a member Unraid says is spun down
//! gets no smartctl command at all.
//!
//! The parsers are pure, take any text, run in linear time and never panic;
//! more than [`MAX_MEMBERS`] sections or slots is refused as not Unraid's.
//! Nothing here writes anything or runs anything but `mdcmd status`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use crate::exec;
use crate::root::Root;

/// The name in `agent.modules`.
pub const MODULE: &str = "unraid";
/// Present on every Unraid host.
pub const VERSION_FILE: &str = "/etc/unraid-version";
/// emhttp's list of members.
pub const DISKS_INI: &str = "/var/local/emhttp/disks.ini";
/// A real `disks.ini` is about 1.5 KB per member.
pub const DISKS_INI_CAP: usize = 1024 * 1024;
/// `mdcmd status` gets this long (the stock agent's).
pub const MDCMD_TIMEOUT: Duration = Duration::from_secs(3);
/// Its combined output is at most this long (a real one is a few KB).
pub const MDCMD_CAP: usize = 1024 * 1024;
/// Where `mdcmd` is looked for before `PATH`, in this order.
pub const MDCMD_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/sbin",
    "/sbin",
    "/usr/local/bin",
    "/usr/bin",
    "/bin",
];
/// More `disks.ini` sections or `mdcmd` slots than this is not an Unraid
/// array (30 array slots and a few pools of devices are real).
pub const MAX_MEMBERS: usize = 4096;

/// The array as the server sees it (wire `unraid`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Unraid {
    pub array_started: bool,
    /// `mdState` uppercased (`STARTED`, `STOPPED`, ...).
    pub array_state: String,
    /// `check`, `recon`, `clear`, ...; empty when no sync runs.
    pub sync_action: String,
    /// 0..=100.
    pub sync_progress: f64,
    pub sync_errors: i64,
    pub num_protected: i64,
    pub num_disabled: i64,
    pub num_invalid: i64,
    pub num_missing: i64,
    /// By slot.
    pub disks: Vec<UnraidDisk>,
}

/// One member (wire `unraid.disks[]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnraidDisk {
    pub name: String,
    /// `/dev/sdb`; empty for a member that is not there.
    pub device: String,
    /// `parity`, `data`, `cache`, `flash` (or what `disks.ini` says).
    pub role: String,
    /// `online`, `disabled`, `missing`, `invalid`, `wrong`, `error`, or the
    /// raw status lowercased.
    pub status: String,
    /// `DISK_OK`, `DISK_DSBL`, ...
    pub raw_status: String,
    pub model: String,
    pub serial: String,
    pub filesystem: String,
    /// `sata`, `sas`, `nvme`, `usb`, `ssd`, or the raw value lowercased.
    pub transport: String,
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    /// °C; 0 when unknown (`*` for a spun-down disk).
    pub temperature: i64,
    pub spun_down: bool,
    pub read_count: i64,
    pub write_count: i64,
    pub error_count: i64,
    pub slot: i64,
}

/// Why a `disks.ini` or an `mdcmd status` text was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// `mdcmd status` printed no `key=value` line.
    NoFields,
    /// More members than [`MAX_MEMBERS`].
    TooManyMembers,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NoFields => write!(f, "no key=value fields"),
            ParseError::TooManyMembers => {
                write!(f, "more than {MAX_MEMBERS} members (not an Unraid array)")
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// Reads the array on each [`Collector::collect`].
pub struct Collector {
    root: Root,
    tool: exec::Tool,
    /// Why the last run reported `disks.ini` alone, if it did.
    note: Option<String>,
}

impl Collector {
    pub fn new(root: Root) -> Collector {
        Collector {
            root,
            tool: exec::Tool::new("mdcmd"),
            note: None,
        }
    }

    /// The array, `Ok(None)` on a host that is not Unraid. `mdcmd` runs for
    /// at most [`MDCMD_TIMEOUT`] and never past `deadline`.
    pub fn collect(&mut self, deadline: Instant) -> Result<Option<Unraid>, String> {
        match std::fs::metadata(self.root.path(VERSION_FILE)) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{VERSION_FILE}: {e}")),
        }
        let (ini, ini_note) = self.disks_ini();
        let status = self.mdcmd(deadline);
        match status {
            Ok(s) => {
                self.set_note(ini_note);
                Ok(Some(reconcile(merge(Some(s), ini))))
            }
            Err(e) if !ini.is_empty() => {
                self.set_note(Some(format!("{e}; reporting {DISKS_INI} alone")));
                Ok(Some(reconcile(merge(None, ini))))
            }
            Err(e) => {
                self.set_note(None);
                Err(match ini_note {
                    Some(n) => format!("{e} ({n})"),
                    None => e,
                })
            }
        }
    }

    /// Why the last run left something out while still answering (mdcmd
    /// failed and `disks.ini` stood in, or `disks.ini` could not be used).
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    fn set_note(&mut self, note: Option<String>) {
        if note != self.note {
            match &note {
                Some(n) => log::info!("unraid: {n}"),
                None => log::info!("unraid: mdcmd status and {DISKS_INI} read again"),
            }
        }
        self.note = note;
    }

    /// `disks.ini`'s members (none when absent), and why it was not used.
    fn disks_ini(&self) -> (Vec<UnraidDisk>, Option<String>) {
        match self.root.read_capped(DISKS_INI, DISKS_INI_CAP) {
            Ok(c) if c.truncated => (
                Vec::new(),
                Some(format!(
                    "{DISKS_INI}: larger than {DISKS_INI_CAP} bytes, not used"
                )),
            ),
            Ok(c) => match parse_disks_ini(&c.text) {
                Ok(d) => (d, None),
                Err(e) => (Vec::new(), Some(format!("{DISKS_INI}: {e}"))),
            },
            Err(e) if e.is_not_found() => (Vec::new(), None),
            Err(e) => (Vec::new(), Some(format!("cannot read {e}"))),
        }
    }

    fn mdcmd(&mut self, deadline: Instant) -> Result<Unraid, String> {
        let Some(path) = self.root.program("mdcmd", MDCMD_DIRS) else {
            return Err(format!(
                "mdcmd not found in {} or PATH",
                MDCMD_DIRS.join(", ")
            ));
        };
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .min(MDCMD_TIMEOUT);
        if timeout.is_zero() {
            return Err("mdcmd status: no time left before the deadline".into());
        }
        let out = self.tool.run(&path, &["status"], timeout, MDCMD_CAP)?;
        if out.code != Some(0) {
            return Err(format!("mdcmd status: {}", exec::failure(&out)));
        }
        // Combined output, as the stock agent reads it.
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.stderr.is_empty() {
            text.push('\n');
            text.push_str(&out.stderr);
        }
        parse_mdcmd(&text).map_err(|e| format!("mdcmd status: {e}"))
    }
}

// ---- mdcmd status ----

/// The per-slot keys of `mdcmd status`, in the order their values are
/// preferred for one field.
const MD_DISK_KEYS: [&str; 13] = [
    "diskName",
    "rdevName",
    "diskDevice",
    "rdevStatus",
    "diskState",
    "rdevSerial",
    "diskSerial",
    "rdevId",
    "diskId",
    "diskFsType",
    "fsType",
    "diskSize",
    "rdevSize",
];
/// Keys whose presence makes a slot exist (the others only add to one).
const MD_INDEXING: [&str; 9] = [
    "diskName",
    "diskSize",
    "diskState",
    "diskFsType",
    "diskId",
    "rdevName",
    "rdevStatus",
    "rdevSerial",
    "rdevId",
];
const MD_GLOBAL_KEYS: [&str; 12] = [
    "mdState",
    "mdResyncPos",
    "mdResync",
    "mdResyncAction",
    "mdResyncSize",
    "mdSize",
    "mdResyncPct",
    "mdResyncCorr",
    "mdNumProtected",
    "mdNumDisabled",
    "mdNumInvalid",
    "mdNumMissing",
];

#[derive(Default)]
struct MdSlot {
    indexed: bool,
    values: [Option<String>; MD_DISK_KEYS.len()],
}

/// `mdcmd status` output → the array, its counts and its per-slot disks
/// (later lines win for a repeated key).
pub fn parse_mdcmd(text: &str) -> Result<Unraid, ParseError> {
    let mut any = false;
    let mut global: [Option<&str>; MD_GLOBAL_KEYS.len()] = Default::default();
    let mut slots: BTreeMap<i64, MdSlot> = BTreeMap::new();
    for line in text.split('\n') {
        let line = line.trim();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            continue;
        }
        any = true;
        if let Some(i) = MD_GLOBAL_KEYS.iter().position(|k| *k == key) {
            global[i] = Some(value);
            continue;
        }
        let Some((prefix, n)) = key.split_once('.') else {
            continue;
        };
        let Some(field) = MD_DISK_KEYS.iter().position(|k| *k == prefix) else {
            continue;
        };
        let Ok(idx) = n.parse::<i64>() else {
            continue;
        };
        // Values are looked up under the slot's canonical key (`diskName.1`,
        // not `diskName.01`), so only those count; any form makes the slot.
        let canonical = n == idx.to_string();
        if !slots.contains_key(&idx) && slots.len() >= MAX_MEMBERS {
            return Err(ParseError::TooManyMembers);
        }
        let slot = slots.entry(idx).or_default();
        slot.indexed |= MD_INDEXING.contains(&prefix);
        if canonical {
            slot.values[field] = Some(value.to_string());
        }
    }
    if !any {
        return Err(ParseError::NoFields);
    }
    let g = |k: &str| {
        MD_GLOBAL_KEYS
            .iter()
            .position(|x| *x == k)
            .and_then(|i| global[i])
            .unwrap_or("")
    };
    let pos = first_i64(&[g("mdResyncPos"), g("mdResync")]);
    let sync_action = if pos > 0 {
        sync_action(g("mdResyncAction"))
    } else {
        String::new()
    };
    let sync_progress = if sync_action.is_empty() {
        0.0
    } else {
        let size = first_i64(&[g("mdResyncSize"), g("mdSize")]);
        if size > 0 {
            clamp_percent(pos as f64 / size as f64 * 100.0)
        } else {
            g("mdResyncPct").parse::<f64>().map_or(0.0, clamp_percent)
        }
    };
    let state = g("mdState");
    let mut u = Unraid {
        array_state: state.to_ascii_uppercase(),
        array_started: state.eq_ignore_ascii_case("STARTED"),
        sync_action,
        sync_progress,
        sync_errors: first_i64(&[g("mdResyncCorr")]),
        num_protected: first_i64(&[g("mdNumProtected")]),
        num_disabled: first_i64(&[g("mdNumDisabled")]),
        num_invalid: first_i64(&[g("mdNumInvalid")]),
        num_missing: first_i64(&[g("mdNumMissing")]),
        disks: Vec::new(),
    };
    for (idx, slot) in slots {
        if !slot.indexed {
            continue;
        }
        let v = |k: &str| {
            MD_DISK_KEYS
                .iter()
                .position(|x| *x == k)
                .and_then(|i| slot.values[i].as_deref())
                .unwrap_or("")
        };
        let name = v("diskName").to_string();
        let device = block_device(first_non_empty(&[v("rdevName"), v("diskDevice")]));
        let raw_status = first_non_empty(&[v("rdevStatus"), v("diskState")]).to_string();
        let mut d = UnraidDisk {
            role: infer_role(&name, idx).to_string(),
            status: disk_status(&raw_status, &device),
            name,
            device,
            raw_status,
            serial: first_non_empty(&[v("rdevSerial"), v("diskSerial"), v("rdevId"), v("diskId")])
                .to_string(),
            filesystem: first_non_empty(&[v("diskFsType"), v("fsType")]).to_string(),
            size_bytes: kib(first_non_empty(&[v("diskSize"), v("rdevSize")])),
            slot: idx,
            ..UnraidDisk::default()
        };
        if let Some(d) = finish(&mut d, idx) {
            u.disks.push(d);
        }
    }
    Ok(u)
}

/// The shared end of both parsers: drop empty slots, name the unnamed.
fn finish(d: &mut UnraidDisk, idx: i64) -> Option<UnraidDisk> {
    if empty_slot(d) {
        return None;
    }
    if d.name.is_empty() {
        d.name = default_name(&d.role, idx);
    }
    if d.name.is_empty()
        && d.device.is_empty()
        && d.raw_status.is_empty()
        && d.serial.is_empty()
        && d.size_bytes == 0
    {
        return None;
    }
    Some(std::mem::take(d))
}

fn sync_action(action: &str) -> String {
    let a = action.trim().to_ascii_lowercase();
    match a.as_str() {
        "" | "idle" | "none" | "unknown" => String::new(),
        _ => a,
    }
}

fn clamp_percent(p: f64) -> f64 {
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) }
}

// ---- disks.ini ----

/// The `disks.ini` keys read; others are ignored.
const INI_KEYS: [&str; 21] = [
    "idx",
    "name",
    "type",
    "device",
    "status",
    "fsType",
    "transport",
    "rotational",
    "sectors",
    "sector_size",
    "size",
    "sizeSb",
    "fsUsed",
    "fsFree",
    "temp",
    "spundown",
    "numReads",
    "numWrites",
    "numErrors",
    "id",
    "idSb",
];

struct Section {
    name: String,
    values: [Option<String>; INI_KEYS.len()],
}

impl Section {
    fn get(&self, k: &str) -> &str {
        INI_KEYS
            .iter()
            .position(|x| *x == k)
            .and_then(|i| self.values[i].as_deref())
            .unwrap_or("")
    }
}

/// `disks.ini` → one disk per named section, in file order (sections
/// sharing a slot are folded together by [`merge`]).
pub fn parse_disks_ini(text: &str) -> Result<Vec<UnraidDisk>, ParseError> {
    let mut disks = Vec::new();
    let mut current: Option<Section> = None;
    let mut sections = 0usize;
    let flush = |s: Option<Section>, disks: &mut Vec<UnraidDisk>| {
        if let Some(s) = s {
            if let Some(d) = ini_disk(&s) {
                disks.push(d);
            }
        }
    };
    for line in text.split('\n') {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections += 1;
            if sections > MAX_MEMBERS {
                return Err(ParseError::TooManyMembers);
            }
            flush(current.take(), &mut disks);
            current = Some(Section {
                name: name.trim().trim_matches('"').to_string(),
                values: Default::default(),
            });
            continue;
        }
        let Some(section) = current.as_mut() else {
            continue;
        };
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if let Some(i) = INI_KEYS.iter().position(|k| *k == key) {
            section.values[i] = Some(go_unquote(value).unwrap_or_else(|| value.to_string()));
        }
    }
    flush(current.take(), &mut disks);
    Ok(disks)
}

fn ini_disk(s: &Section) -> Option<UnraidDisk> {
    if s.name.is_empty() {
        return None;
    }
    let idx = first_i64(&[s.get("idx")]);
    let name = first_non_empty(&[s.get("name"), &s.name]).to_string();
    let role = role(first_non_empty(&[s.get("type"), infer_role(&name, idx)]));
    let device = block_device(s.get("device"));
    let raw_status = s.get("status").trim().to_string();
    let id = first_non_empty(&[s.get("id"), s.get("idSb")]);
    let (model, mut serial) = identity(id);
    if serial.is_empty() {
        serial = id.to_string();
    }
    let mut d = UnraidDisk {
        status: disk_status(&raw_status, &device),
        name,
        device,
        role,
        raw_status,
        model,
        serial,
        filesystem: s.get("fsType").trim().to_string(),
        transport: transport(s.get("transport"), s.get("rotational")),
        size_bytes: ini_size(s),
        used_bytes: kib(s.get("fsUsed")),
        free_bytes: kib(s.get("fsFree")),
        temperature: temperature(s.get("temp")),
        spun_down: matches!(
            s.get("spundown").trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        ),
        read_count: first_i64(&[s.get("numReads")]),
        write_count: first_i64(&[s.get("numWrites")]),
        error_count: first_i64(&[s.get("numErrors")]),
        slot: idx,
    };
    finish(&mut d, idx)
}

/// `sectors` × `sector_size`, else `size` or `sizeSb` in KiB. A product
/// past 2^63 is not a disk: the KiB sizes are used instead.
fn ini_size(s: &Section) -> u64 {
    let sectors = first_i64(&[s.get("sectors")]);
    let sector_size = first_i64(&[s.get("sector_size")]);
    if sectors > 0 && sector_size > 0 {
        if let Some(b) = sectors.checked_mul(sector_size) {
            return b.unsigned_abs();
        }
    }
    kib(first_non_empty(&[s.get("size"), s.get("sizeSb")]))
}

/// `MODEL_WITH_UNDERSCORES_SERIAL` → (`MODEL WITH UNDERSCORES`, `SERIAL`).
fn identity(id: &str) -> (String, String) {
    let id = id.trim();
    if id.is_empty() {
        return (String::new(), String::new());
    }
    match id.rfind('_') {
        Some(i) if i > 0 && i < id.len() - 1 => (
            id[..i].trim().replace('_', " "),
            id[i + 1..].trim().to_string(),
        ),
        _ => (id.replace('_', " "), String::new()),
    }
}

fn temperature(v: &str) -> i64 {
    let v = v.trim();
    if v.is_empty() || v == "*" || v.eq_ignore_ascii_case("na") {
        return 0;
    }
    v.parse::<i64>().ok().filter(|t| *t >= 0).unwrap_or(0)
}

/// `ata` → `sata`; `nvme`, `sata`, `sas`, `usb` kept; else `ssd` for a
/// non-rotational disk, else the value lowercased.
fn transport(t: &str, rotational: &str) -> String {
    let t = t.trim().to_ascii_lowercase();
    match t.as_str() {
        "ata" => "sata".into(),
        "nvme" | "sata" | "sas" | "usb" => t,
        _ if rotational.trim() == "0" => "ssd".into(),
        _ => t,
    }
}

fn role(r: &str) -> String {
    let r = r.trim().to_ascii_lowercase();
    if r == "array" { "data".into() } else { r }
}

// ---- shared rules ----

/// The role a slot's name or number implies.
fn infer_role(name: &str, idx: i64) -> &'static str {
    let n = name.trim().to_ascii_lowercase();
    if n.starts_with("parity") {
        "parity"
    } else if n.starts_with("disk") {
        "data"
    } else if n.starts_with("cache") || n.starts_with("pool") {
        "cache"
    } else if n == "flash" {
        "flash"
    } else {
        match idx {
            0 | 29 => "parity",
            1..=28 => "data",
            30.. => "cache",
            _ => "",
        }
    }
}

fn default_name(role: &str, idx: i64) -> String {
    match role {
        "parity" if idx <= 0 => "parity".into(),
        "parity" => format!("parity{idx}"),
        "data" => format!("disk{idx}"),
        _ => String::new(),
    }
}

/// `DISK_OK` → `online` and so on (spec §6.2); no status but a device is
/// `online`.
fn disk_status(raw: &str, device: &str) -> String {
    let s = raw.trim().to_ascii_uppercase();
    let has = |w: &str| s.contains(w);
    if s.is_empty() {
        return if device.is_empty() { "" } else { "online" }.into();
    }
    if has("DISK_OK") || s == "OK" {
        "online"
    } else if has("DISK_DSBL") || has("DISABLED") {
        "disabled"
    } else if has("DISK_NP") || has("MISSING") || has("NOT_INSTALLED") {
        "missing"
    } else if has("INVALID") {
        "invalid"
    } else if has("WRONG") {
        "wrong"
    } else if has("ERROR") {
        "error"
    } else {
        return s.to_ascii_lowercase();
    }
    .into()
}

/// A slot with nothing in it: not present and nothing known.
fn empty_slot(d: &UnraidDisk) -> bool {
    (d.raw_status.to_ascii_uppercase().contains("DISK_NP") || d.status == "missing")
        && d.name.trim().is_empty()
        && d.device.trim().is_empty()
        && d.serial.trim().is_empty()
        && d.filesystem.trim().is_empty()
        && d.size_bytes == 0
}

fn block_device(d: &str) -> String {
    let d = d.trim();
    if d.is_empty() || d.starts_with("/dev/") {
        d.to_string()
    } else {
        format!("/dev/{d}")
    }
}

fn first_non_empty<'a>(values: &[&'a str]) -> &'a str {
    values
        .iter()
        .map(|v| v.trim())
        .find(|v| !v.is_empty())
        .unwrap_or("")
}

/// The first value that is a decimal integer, else 0.
fn first_i64(values: &[&str]) -> i64 {
    values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .find_map(|v| v.parse::<i64>().ok())
        .unwrap_or(0)
}

/// KiB → bytes; not positive, or past 2^63 bytes, is 0 (left out).
fn kib(v: &str) -> u64 {
    let k = first_i64(&[v]);
    if k <= 0 {
        return 0;
    }
    k.checked_mul(1024).map_or(0, i64::unsigned_abs)
}

/// Go's `strconv.Unquote`: a `"..."` (with escapes), `` `...` `` or `'c'`
/// literal making up the whole value; `None` when it is not one (the value
/// is then used as written).
fn go_unquote(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let quote = *b.first()?;
    // Only an ASCII quote may open a literal; anything else (a multibyte
    // character too) is a bare value, and `s[1..]` is a char boundary.
    if b.len() < 2 || !matches!(quote, b'`' | b'"' | b'\'') {
        return None;
    }
    let inner = &s[1..];
    match quote {
        b'`' => {
            let end = inner.find('`')?;
            if end + 2 != s.len() {
                return None;
            }
            Some(inner[..end].replace('\r', ""))
        }
        b'"' | b'\'' => {
            let q = quote as char;
            let end = inner.find(q)?;
            let lit = &inner[..end];
            if !lit.contains('\\') && !lit.contains('\n') {
                let valid = quote == b'"' || lit.chars().count() == 1;
                if valid {
                    return (end + 2 == s.len()).then(|| lit.to_string());
                }
            }
            let mut out: Vec<u8> = Vec::with_capacity(inner.len());
            let mut rest = inner;
            let mut chars = 0;
            while let Some(c) = rest.chars().next() {
                if c == q {
                    break;
                }
                if c == '\n' {
                    return None;
                }
                let (bytes, after) = unquote_char(rest, q)?;
                out.extend_from_slice(&bytes);
                rest = after;
                chars += 1;
                if quote == b'\'' {
                    break;
                }
            }
            if quote == b'\'' && chars != 1 {
                return None;
            }
            // The closing quote must end the value.
            if rest.len() != 1 || !rest.starts_with(q) {
                return None;
            }
            Some(String::from_utf8_lossy(&out).into_owned())
        }
        _ => None,
    }
}

/// One character or escape of a quoted Go literal: its bytes and the rest.
fn unquote_char(s: &str, quote: char) -> Option<(Vec<u8>, &str)> {
    let c = s.chars().next()?;
    if c != '\\' {
        let mut buf = [0u8; 4];
        return Some((
            c.encode_utf8(&mut buf).as_bytes().to_vec(),
            &s[c.len_utf8()..],
        ));
    }
    let rest = &s[1..];
    let e = rest.chars().next()?;
    let rest = &rest[e.len_utf8()..];
    let simple = |b: u8| Some((vec![b], rest));
    match e {
        'a' => simple(7),
        'b' => simple(8),
        'f' => simple(12),
        'n' => simple(b'\n'),
        'r' => simple(b'\r'),
        't' => simple(b'\t'),
        'v' => simple(11),
        '\\' => simple(b'\\'),
        '\'' | '"' if e == quote => simple(e as u8),
        'x' | 'u' | 'U' => {
            let n = match e {
                'x' => 2,
                'u' => 4,
                _ => 8,
            };
            let digits = rest.get(..n)?;
            if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let v = u32::from_str_radix(digits, 16).ok()?;
            let rest = &rest[n..];
            if e == 'x' {
                return Some((vec![u8::try_from(v).ok()?], rest));
            }
            let ch = char::from_u32(v)?;
            let mut buf = [0u8; 4];
            Some((ch.encode_utf8(&mut buf).as_bytes().to_vec(), rest))
        }
        '0'..='7' => {
            let digits = rest.get(..2)?;
            if !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                return None;
            }
            let v = (e as u32 - '0' as u32) * 64 + u32::from_str_radix(digits, 8).ok()?;
            Some((vec![u8::try_from(v).ok()?], &rest[2..]))
        }
        _ => None,
    }
}

// ---- merge and counts ----

/// `mdcmd`'s array (if it answered) with `disks.ini`'s members folded in by
/// slot: a `disks.ini` field that is set wins; its spin state always wins.
/// Sorted by slot.
pub fn merge(status: Option<Unraid>, ini: Vec<UnraidDisk>) -> Unraid {
    let mut u = status.unwrap_or_default();
    if ini.is_empty() {
        return u;
    }
    let mut merged = std::mem::take(&mut u.disks);
    let mut by_slot: HashMap<i64, usize> = merged
        .iter()
        .enumerate()
        .map(|(i, d)| (d.slot, i))
        .collect();
    for d in ini {
        match by_slot.get(&d.slot) {
            Some(&i) => merge_disk(&mut merged[i], d),
            None => {
                by_slot.insert(d.slot, merged.len());
                merged.push(d);
            }
        }
    }
    merged.sort_by_key(|d| d.slot);
    u.disks = merged;
    u
}

fn merge_disk(out: &mut UnraidDisk, from: UnraidDisk) {
    for (a, b) in [
        (&mut out.name, &from.name),
        (&mut out.device, &from.device),
        (&mut out.role, &from.role),
        (&mut out.status, &from.status),
        (&mut out.raw_status, &from.raw_status),
        (&mut out.model, &from.model),
        (&mut out.serial, &from.serial),
        (&mut out.filesystem, &from.filesystem),
        (&mut out.transport, &from.transport),
    ] {
        let b = b.trim();
        if !b.is_empty() {
            *a = b.to_string();
        }
    }
    for (a, b) in [
        (&mut out.size_bytes, from.size_bytes),
        (&mut out.used_bytes, from.used_bytes),
        (&mut out.free_bytes, from.free_bytes),
    ] {
        if b > 0 {
            *a = b;
        }
    }
    for (a, b) in [
        (&mut out.temperature, from.temperature),
        (&mut out.read_count, from.read_count),
        (&mut out.write_count, from.write_count),
        (&mut out.error_count, from.error_count),
    ] {
        if b > 0 {
            *a = b;
        }
    }
    out.spun_down = from.spun_down;
    if from.slot > 0 || out.slot == 0 {
        out.slot = from.slot;
    }
}

/// The disabled, invalid and missing counts from the members' own statuses,
/// when any member has one (#1612); mdcmd's aggregates otherwise.
pub fn reconcile(mut u: Unraid) -> Unraid {
    let mut any = false;
    let (mut disabled, mut invalid, mut missing) = (0, 0, 0);
    for d in &u.disks {
        if empty_slot(d) {
            continue;
        }
        match d.status.trim().to_ascii_lowercase().as_str() {
            "" => continue,
            "disabled" => disabled += 1,
            "invalid" => invalid += 1,
            "missing" => missing += 1,
            _ => {}
        }
        any = true;
    }
    if any {
        u.num_disabled = disabled;
        u.num_invalid = invalid;
        u.num_missing = missing;
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_unquote_rules() {
        assert_eq!(go_unquote(r#""sdb""#).as_deref(), Some("sdb"));
        assert_eq!(
            go_unquote(r#""a\tb\x41\101\u00e9""#).as_deref(),
            Some("a\tbAAé")
        );
        assert_eq!(go_unquote("`raw\\n`").as_deref(), Some("raw\\n"));
        assert_eq!(go_unquote("'x'").as_deref(), Some("x"));
        for bad in [
            r#""open"#,
            r#""a"b""#,
            r#""\q""#,
            "'xy'",
            "plain",
            "\"",
            r#""\400""#,
        ] {
            assert_eq!(go_unquote(bad), None, "{bad}");
        }
    }

    /// Found by fuzzing: `s[1..]` was taken before checking that the first
    /// byte is a quote, and panicked inside a multibyte first character.
    #[test]
    fn a_value_starting_with_a_multibyte_character_is_not_a_literal() {
        assert_eq!(go_unquote("\u{fffd}ST16000_X\""), None);
        assert_eq!(go_unquote("é"), None);
        let d = parse_disks_ini("[\"d\"]\nid=\"\u{fffd}A_B\"\nname=\u{fffd}x\n").unwrap();
        assert_eq!(d[0].name, "\u{fffd}x");
    }

    #[test]
    fn identity_splits_at_the_last_underscore() {
        assert_eq!(
            identity("WDC_WD80EFZZ-68BTXN0_WD-VGH1001K"),
            ("WDC WD80EFZZ-68BTXN0".into(), "WD-VGH1001K".into())
        );
        assert_eq!(identity("NOSERIAL"), ("NOSERIAL".into(), String::new()));
        assert_eq!(identity("_X"), (" X".into(), String::new()));
        assert_eq!(identity("A_"), ("A ".into(), String::new()));
    }
}
