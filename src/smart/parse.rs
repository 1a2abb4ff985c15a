//! smartctl output → one [`Disk`] row (`spec/pulse-collectors.md` §1.5-§1.6).
//!
//! [`json`] reads `smartctl --json=o -i -A -H` documents (SATA/ATA, NVMe,
//! SAS/SCSI); [`text`] reads the plain output of builds without JSON (old
//! Synology DSM) and the `smartctl.output[]` lines a JSON document carries.
//! Both are tolerant: a field of the wrong type, a number out of range or a
//! missing object leaves that field empty and the rest is still read. Nothing
//! here looks at sysfs or runs anything.

use serde_json::Value;

/// The SMART health verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Health {
    /// Not sent (a disk found in standby without data).
    #[default]
    Unset,
    Passed,
    Failed,
    Unknown,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unset => "",
            Health::Passed => "PASSED",
            Health::Failed => "FAILED",
            Health::Unknown => "UNKNOWN",
        }
    }
}

/// One `collection` entry: where a fact came from, or why it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    pub state: &'static str,
    pub source: &'static str,
    pub reason: &'static str,
}

impl Status {
    pub const fn new(state: &'static str, source: &'static str, reason: &'static str) -> Status {
        Status {
            state,
            source,
            reason,
        }
    }
}

pub const STANDBY_REASON: &str = "disk is in standby";

/// The `collection` object; `io` is added when the report is built, `pool`
/// stays unset until pool membership is collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Collection {
    pub serial: Status,
    pub temperature: Status,
    pub controller: Status,
    pub pool: Status,
}

/// SMART counters, each present only when the disk reported it (0 included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attributes {
    pub power_on_hours: Option<i64>,
    pub power_cycles: Option<i64>,
    pub reallocated_sectors: Option<i64>,
    pub pending_sectors: Option<i64>,
    pub offline_uncorrectable: Option<i64>,
    pub udma_crc_errors: Option<i64>,
    pub percentage_used: Option<i64>,
    pub available_spare: Option<i64>,
    pub media_errors: Option<i64>,
    pub unsafe_shutdowns: Option<i64>,
}

impl Attributes {
    /// Wire names and values, in the server's field order.
    pub fn fields(&self) -> [(&'static str, Option<i64>); 10] {
        [
            ("powerOnHours", self.power_on_hours),
            ("powerCycles", self.power_cycles),
            ("reallocatedSectors", self.reallocated_sectors),
            ("pendingSectors", self.pending_sectors),
            ("offlineUncorrectable", self.offline_uncorrectable),
            ("udmaCrcErrors", self.udma_crc_errors),
            ("percentageUsed", self.percentage_used),
            ("availableSpare", self.available_spare),
            ("mediaErrors", self.media_errors),
            ("unsafeShutdowns", self.unsafe_shutdowns),
        ]
    }

    /// Fills fields `self` lacks from `other`.
    pub fn merge(&mut self, other: &Attributes) {
        let fill = |a: &mut Option<i64>, b: Option<i64>| {
            if a.is_none() {
                *a = b;
            }
        };
        fill(&mut self.power_on_hours, other.power_on_hours);
        fill(&mut self.power_cycles, other.power_cycles);
        fill(&mut self.reallocated_sectors, other.reallocated_sectors);
        fill(&mut self.pending_sectors, other.pending_sectors);
        fill(&mut self.offline_uncorrectable, other.offline_uncorrectable);
        fill(&mut self.udma_crc_errors, other.udma_crc_errors);
        fill(&mut self.percentage_used, other.percentage_used);
        fill(&mut self.available_spare, other.available_spare);
        fill(&mut self.media_errors, other.media_errors);
        fill(&mut self.unsafe_shutdowns, other.unsafe_shutdowns);
    }
}

/// One `sensors.smart[]` row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Disk {
    pub device: String,
    pub model: String,
    pub serial: String,
    pub wwn: String,
    /// Wire `type`: `sata`, `sas`, `scsi`, `nvme` or empty.
    pub kind: String,
    pub controller: String,
    pub target: String,
    pub size_bytes: u64,
    /// °C; 0 when the disk gave no valid reading.
    pub temperature: i64,
    pub health: Health,
    pub standby: bool,
    pub attributes: Option<Attributes>,
    pub collection: Collection,
    /// The ZFS pool the disk belongs to (set when the report is built).
    pub pool: String,
    /// A RAID controller member (`-d megaraid,N`): not on the wire; its I/O
    /// counters are the controller's, not its own.
    pub member: bool,
}

/// Why a document gave no row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not a JSON document: try the text parser.
    NotJson,
    /// Readable, but nothing a monitor can use (no health, temperature,
    /// attributes or standby state).
    NoData,
}

/// `basename(path)`, plus ` [type]` for a typed probe.
pub fn display_name(path: &str, dtype: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    if dtype.is_empty() {
        base.to_string()
    } else {
        format!("{base} [{dtype}]")
    }
}

/// A temperature the spec accepts: above 0 and below 150 °C.
pub fn valid_temperature(t: i64) -> bool {
    t > 0 && t < 150
}

/// Parses a `--json=o` document probed as `path` with `-d dtype`.
pub fn json(stdout: &[u8], path: &str, dtype: &str) -> Result<Disk, ParseError> {
    let doc: Value = serde_json::from_slice(stdout).map_err(|_| ParseError::NotJson)?;
    if !doc.is_object() {
        return Err(ParseError::NotJson);
    }
    let mut d = Disk {
        device: display_name(path, dtype),
        model: string(&doc["model_name"]),
        serial: string(&doc["serial_number"]),
        wwn: wwn(&doc["wwn"]),
        kind: disk_type(&doc),
        health: match doc["smart_status"]["passed"] {
            Value::Bool(true) => Health::Passed,
            Value::Bool(false) => Health::Failed,
            _ => Health::Unknown,
        },
        standby: power_mode_standby(&doc["power_mode"]),
        ..Disk::default()
    };
    d.size_bytes = match uint(&doc["nvme_total_capacity"]) {
        Some(n) if n > 0 => n,
        _ => uint(&doc["user_capacity"]["bytes"]).unwrap_or(0),
    };
    let table = doc["ata_smart_attributes"]["table"].as_array();
    let ata_raw = |id: i64| {
        table?
            .iter()
            .find(|row| row["id"].as_i64() == Some(id))
            .and_then(|row| raw_value(&row["raw"]))
    };
    d.temperature = [
        int(&doc["temperature"]["current"]),
        int(&doc["nvme_smart_health_information_log"]["temperature"]),
        int(&doc["ata_sct_status"]["current"]["value"]),
        ata_raw(194),
        ata_raw(190),
    ]
    .into_iter()
    .flatten()
    .find(|&t| valid_temperature(t))
    .unwrap_or(0);

    // The original text lines fill what the JSON lacked.
    let lines: Vec<&str> = doc["smartctl"]["output"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let t = TextFacts::read(lines.iter().copied());
    fill(&mut d.model, &t.model);
    fill(&mut d.serial, &t.serial);
    if d.health == Health::Unknown {
        if let Some(h) = t.health {
            d.health = h;
        }
    }
    if d.temperature == 0 {
        d.temperature = t.temperature;
    }
    d.standby |= t.standby;
    if d.kind.is_empty() || d.kind == "scsi" {
        if let Some(k) = t.kind {
            d.kind = k.to_string();
        }
    }

    d.attributes = attributes(&doc, &d.kind);
    d.collection = collection(&d, "smartctl");
    if d.health == Health::Unknown && d.temperature == 0 && d.attributes.is_none() && !d.standby {
        return Err(ParseError::NoData);
    }
    Ok(d)
}

/// Parses plain smartctl output (a build without `--json`).
pub fn text(stdout: &str, path: &str, dtype: &str) -> Result<Disk, ParseError> {
    let t = TextFacts::read(stdout.lines());
    let base = path.rsplit('/').next().unwrap_or(path);
    let kind = match t.kind {
        Some(k) => k.to_string(),
        None if dtype == "nvme" || ["nvme", "nvd", "nda"].iter().any(|p| base.starts_with(p)) => {
            "nvme".to_string()
        }
        None => "sata".to_string(),
    };
    let mut d = Disk {
        device: display_name(path, dtype),
        model: t.model,
        serial: t.serial,
        kind,
        temperature: t.temperature,
        health: t.health.unwrap_or(Health::Unknown),
        standby: t.standby,
        ..Disk::default()
    };
    d.collection = collection(&d, "smartctl_text");
    if d.health == Health::Unknown && d.temperature == 0 && !d.standby {
        return Err(ParseError::NoData);
    }
    Ok(d)
}

/// The standby answer to a guarded probe (exit 3, nothing printed).
pub fn standby(path: &str, dtype: &str) -> Disk {
    let mut d = Disk {
        device: display_name(path, dtype),
        standby: true,
        ..Disk::default()
    };
    d.collection = collection(&d, "smartctl");
    d.collection.serial = Status::new("unavailable", "smartctl", STANDBY_REASON);
    d
}

fn collection(d: &Disk, source: &'static str) -> Collection {
    Collection {
        serial: if d.serial.is_empty() {
            Status::new("missing", source, "disk serial was not reported")
        } else {
            Status::new("available", source, "")
        },
        temperature: if d.temperature > 0 {
            Status::new("available", source, "")
        } else if d.standby {
            Status::new("unavailable", source, STANDBY_REASON)
        } else {
            Status::new(
                "unsupported",
                source,
                "device did not expose a temperature reading",
            )
        },
        controller: Status::default(),
        pool: Status::default(),
    }
}

fn fill(field: &mut String, from: &str) {
    if field.is_empty() {
        *field = from.to_string();
    }
}

/// A string field, trimmed; anything else is empty.
fn string(v: &Value) -> String {
    v.as_str().map(|s| s.trim().to_string()).unwrap_or_default()
}

/// An integer field that fits in i64; floats, strings and huge numbers are absent.
fn int(v: &Value) -> Option<i64> {
    v.as_i64()
}

fn uint(v: &Value) -> Option<u64> {
    v.as_u64()
}

/// `naa-oui-id` in lowercase hex, only when `naa` is set.
fn wwn(v: &Value) -> String {
    match (uint(&v["naa"]), uint(&v["oui"]), uint(&v["id"])) {
        (Some(naa), oui, id) if naa != 0 => {
            format!("{naa:x}-{:x}-{:x}", oui.unwrap_or(0), id.unwrap_or(0))
        }
        _ => String::new(),
    }
}

/// `sata`, `sas`, `scsi`, `nvme` or empty, from `device.protocol`, else `device.type`.
fn disk_type(doc: &Value) -> String {
    let protocol = string(&doc["device"]["protocol"]).to_ascii_lowercase();
    let transport = string(&doc["scsi_transport_protocol"]["name"]).to_ascii_lowercase();
    let scsi = || {
        if transport.contains("sas") {
            "sas"
        } else {
            "scsi"
        }
    };
    let kind = if protocol.contains("nvme") {
        "nvme"
    } else if protocol.contains("sas") {
        "sas"
    } else if protocol.contains("scsi") {
        scsi()
    } else if protocol.contains("ata") {
        "sata"
    } else {
        let t = string(&doc["device"]["type"]).to_ascii_lowercase();
        if t.contains("nvme") {
            "nvme"
        } else if t.contains("scsi") {
            scsi()
        } else if t.starts_with("sat") {
            "sata"
        } else {
            ""
        }
    };
    kind.to_string()
}

/// `power_mode` as smartctl 7.5 (`{"name": ..}`) or older (`"STANDBY"`)
/// writes it; any other shape is ignored.
fn power_mode_standby(v: &Value) -> bool {
    let name = match v {
        Value::String(s) => s.as_str(),
        Value::Object(o) => o.get("name").and_then(Value::as_str).unwrap_or(""),
        _ => "",
    };
    let name = name.to_ascii_lowercase();
    name.contains("standby") || name.contains("sleep")
}

/// An ATA raw value: the leading digits of `raw.string` (Seagate packs more
/// into `raw.value`), else `raw.value`.
fn raw_value(raw: &Value) -> Option<i64> {
    if let Some(s) = raw["string"].as_str() {
        let digits: String = s
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if !digits.is_empty() {
            return digits.parse().ok();
        }
    }
    int(&raw["value"])
}

fn attributes(doc: &Value, kind: &str) -> Option<Attributes> {
    let mut a = Attributes::default();
    match kind {
        "nvme" => {
            let log = doc["nvme_smart_health_information_log"].as_object()?;
            let get = |k: &str| log.get(k).and_then(int);
            a.power_on_hours = get("power_on_hours");
            a.power_cycles = get("power_cycles");
            a.percentage_used = get("percentage_used");
            a.available_spare = get("available_spare");
            a.media_errors = get("media_errors");
            a.unsafe_shutdowns = get("unsafe_shutdowns");
            (a != Attributes::default()).then_some(a)
        }
        "sas" | "scsi" => {
            a.power_on_hours = int(&doc["power_on_time"]["hours"]);
            a.reallocated_sectors = int(&doc["scsi_grown_defect_list"]);
            a.percentage_used = int(&doc["scsi_percentage_used_endurance_indicator"]);
            (a != Attributes::default()).then_some(a)
        }
        _ => {
            let table = doc["ata_smart_attributes"]["table"].as_array()?;
            if table.is_empty() {
                return None;
            }
            for row in table {
                let value = raw_value(&row["raw"]);
                let slot = match row["id"].as_i64() {
                    Some(5) => &mut a.reallocated_sectors,
                    Some(9) => &mut a.power_on_hours,
                    Some(12) => &mut a.power_cycles,
                    Some(197) => &mut a.pending_sectors,
                    Some(198) => &mut a.offline_uncorrectable,
                    Some(199) => &mut a.udma_crc_errors,
                    _ => continue,
                };
                if slot.is_none() {
                    *slot = value;
                }
            }
            Some(a)
        }
    }
}

/// What plain smartctl lines say.
#[derive(Debug, Default)]
struct TextFacts {
    model: String,
    serial: String,
    health: Option<Health>,
    temperature: i64,
    standby: bool,
    kind: Option<&'static str>,
}

impl TextFacts {
    fn read<'a>(lines: impl Iterator<Item = &'a str>) -> TextFacts {
        let mut t = TextFacts::default();
        for raw in lines {
            let line = raw.trim();
            let lower = line.to_ascii_lowercase();
            if let Some((key, value)) = line.split_once(':') {
                let value = value.trim();
                match key.trim() {
                    "Device Model" | "Model Number" | "Product" if t.model.is_empty() => {
                        t.model = value.to_string()
                    }
                    "Serial Number" | "Serial number" if t.serial.is_empty() => {
                        t.serial = value.to_string()
                    }
                    "SMART overall-health self-assessment test result" | "SMART Health Status"
                        if t.health.is_none() =>
                    {
                        let v = value.to_ascii_lowercase();
                        if v.contains("passed") || v.contains("ok") {
                            t.health = Some(Health::Passed);
                        } else if v.contains("failed") {
                            t.health = Some(Health::Failed);
                        }
                    }
                    "Transport protocol" => {
                        let v = value.to_ascii_lowercase();
                        if v.contains("sas") {
                            t.kind = Some("sas");
                        } else if v.contains("nvme") {
                            t.kind = Some("nvme");
                        }
                    }
                    "SATA Version is" | "ATA Version is" if t.kind.is_none() => {
                        t.kind = Some("sata")
                    }
                    _ => {}
                }
            }
            if ["device is in standby", "device is in sleep", "standby (os)"]
                .iter()
                .any(|s| lower.contains(s))
            {
                t.standby = true;
            }
            if t.temperature == 0 {
                t.temperature = text_temperature(line, &lower)
                    .filter(|&v| valid_temperature(v))
                    .unwrap_or(0);
            }
        }
        t
    }
}

/// A temperature from one text line: `Current [Drive] Temperature: N`,
/// `Temperature: N Celsius`, or an ATA attribute row 190/194 (`... - N`).
fn text_temperature(line: &str, lower: &str) -> Option<i64> {
    for prefix in ["current temperature:", "current drive temperature:"] {
        if let Some(rest) = lower.strip_prefix(prefix) {
            return leading_number(rest.trim_start());
        }
    }
    if let Some(rest) = lower.strip_prefix("temperature:") {
        if lower.contains("celsius") {
            return leading_number(rest.trim_start());
        }
    }
    let mut words = line.split_whitespace();
    let id = words.next()?;
    if id != "190" && id != "194" {
        return None;
    }
    words.next()?;
    // The raw value follows the last "-" (WHEN_FAILED) column.
    let bytes = line.as_bytes();
    bytes
        .iter()
        .enumerate()
        .rev()
        .filter(|&(i, &b)| b == b'-' && i > id.len())
        .find_map(|(i, _)| {
            let rest = &line[i + 1..];
            if !rest.starts_with(|c: char| c.is_whitespace()) {
                return None;
            }
            leading_number(rest.trim_start())
        })
}

/// 1 to 3 digits at the start of `s`, ending at a word boundary.
fn leading_number(s: &str) -> Option<i64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 3 {
        return None;
    }
    let next = s[digits..].chars().next();
    if next.is_some_and(|c| c.is_alphanumeric() || c == '_') {
        return None;
    }
    s[..digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_rows_give_temperatures() {
        let row = "194 Temperature_Celsius     0x0022   031   040   000    Old_age   Always       -       31 (Min/Max 18/40)";
        assert_eq!(text_temperature(row, &row.to_ascii_lowercase()), Some(31));
        let row = "190 Airflow_Temperature_Cel 0x0032 061 045 000 Old_age Always - 39";
        assert_eq!(text_temperature(row, &row.to_ascii_lowercase()), Some(39));
        let row = "  9 Power_On_Hours          0x0032   095   095   000    Old_age   Always       -       4211";
        assert_eq!(text_temperature(row, &row.to_ascii_lowercase()), None);
        assert_eq!(text_temperature("194 x - 1234", "194 x - 1234"), None);
        assert_eq!(leading_number("41 C"), Some(41));
        assert_eq!(leading_number("41C"), None);
    }

    #[test]
    fn raw_strings_win_over_packed_values() {
        let raw = serde_json::json!({"value": 150323855943u64, "string": "16951 (223 173 0)"});
        assert_eq!(raw_value(&raw), Some(16951));
        assert_eq!(
            raw_value(&serde_json::json!({"value": 7, "string": "n/a"})),
            Some(7)
        );
        assert_eq!(raw_value(&serde_json::json!({"value": "x"})), None);
    }

    #[test]
    fn garbage_is_not_json_and_never_panics() {
        assert_eq!(
            json(b"\x00\xff{{", "/dev/sda", ""),
            Err(ParseError::NotJson)
        );
        assert_eq!(json(b"[1,2]", "/dev/sda", ""), Err(ParseError::NotJson));
        assert_eq!(json(b"{}", "/dev/sda", ""), Err(ParseError::NoData));
        assert_eq!(text("", "/dev/sda", ""), Err(ParseError::NoData));
    }
}
