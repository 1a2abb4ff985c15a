//! Temperatures and fans (`sensors.temperatureCelsius`, `fanRpm`,
//! `additional`; `spec/pulse-collectors.md` §3.1-§3.2).
//!
//! Two readers produce the same [`Chip`] list: the kernel's hwmon directories
//! ([`read_sysfs`], always tried first; small hosts rarely have lm-sensors)
//! and `sensors -j` ([`parse_sensors_json`], used when the kernel gives no
//! reading, e.g. a container without `/sys/class/hwmon`). Chips are named the
//! way libsensors names them (`coretemp-isa-0000`, `nvme-pci-0400`), so the
//! one mapping, [`map`], gives the same keys from either.
//!
//! The mapping follows the spec's, with these differences, all deliberate:
//! - only `temp*` features are temperatures and only `fan*` features are fans;
//!   fans go to `fanRpm`, never to `additional` (the stock parser counts any
//!   `*_input` as a temperature, so a fan at 1200 RPM showed up as `1.2`);
//! - collisions are settled the same way every time (chips in name order,
//!   features in number order, first wins; `cpu_package` and `cpu_core_N`
//!   take the hottest) instead of by Go's random map order;
//! - `Tdie` is preferred over `Tctl` (Tctl carries an offset on some Ryzens);
//! - a GPU's `temp1` is matched by name, not as a substring (which would take
//!   `temp10`..`temp19` too);
//! - `drivetemp` chips are left out: reading one sends an ATA command that
//!   can keep a disk from spinning down, and SMART already reports each disk's
//!   temperature without waking it.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::root::Root;

/// One hwmon device (libsensors' "chip").
#[derive(Debug, Clone, PartialEq)]
pub struct Chip {
    /// libsensors' name: `<name>-<bus>-<address>`.
    pub name: String,
    pub features: Vec<Feature>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    /// The label, else `temp1`/`fan1`.
    pub name: String,
    pub kind: Kind,
    /// °C for temperatures, RPM for fans.
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Temp,
    Fan,
}

/// The three wire maps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Readings {
    pub temperatures: BTreeMap<String, f64>,
    pub fans: BTreeMap<String, f64>,
    pub additional: BTreeMap<String, f64>,
}

impl Readings {
    pub fn is_empty(&self) -> bool {
        self.temperatures.is_empty() && self.fans.is_empty() && self.additional.is_empty()
    }
}

const HWMON: &str = "/sys/class/hwmon";
const THERMAL: &str = "/sys/class/thermal";

/// Every hwmon chip with at least one readable temperature or fan.
/// `Ok(empty)` when the class exists but holds nothing; the read error when
/// `/sys/class/hwmon` itself cannot be listed.
pub fn read_sysfs(root: &Root) -> Result<Vec<Chip>, crate::root::ReadError> {
    let mut chips = Vec::new();
    for entry in root.read_dir(HWMON)? {
        let dir = format!("{HWMON}/{entry}");
        let Some(name) = root.read_trimmed(&format!("{dir}/name")) else {
            continue;
        };
        if is_drivetemp(&name) {
            continue; // not even read: see the module docs
        }
        // Kernels before 3.x (and a few drivers) keep the attributes in the
        // parent device's directory.
        let mut features = read_features(root, &dir);
        if features.is_empty() {
            features = read_features(root, &format!("{dir}/device"));
        }
        if !features.is_empty() {
            chips.push(Chip {
                name: chip_name(root, &dir, &name),
                features,
            });
        }
    }
    chips.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(chips)
}

fn read_features(root: &Root, dir: &str) -> Vec<Feature> {
    let Ok(names) = root.read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(Kind, u32, &str)> = names
        .iter()
        .filter_map(|n| {
            let (kind, num) = input_attribute(n)?;
            Some((kind, num, n.as_str()))
        })
        .collect();
    found.sort();
    found
        .into_iter()
        .filter_map(|(kind, num, file)| {
            // A sensor that is not connected answers EIO or ENODATA: no feature.
            let raw: i64 = root.read_trimmed(&format!("{dir}/{file}"))?.parse().ok()?;
            let prefix = match kind {
                Kind::Temp => "temp",
                Kind::Fan => "fan",
            };
            let name = root
                .read_trimmed(&format!("{dir}/{prefix}{num}_label"))
                .unwrap_or_else(|| format!("{prefix}{num}"));
            let value = match kind {
                Kind::Temp => raw as f64 / 1000.0,
                Kind::Fan => raw as f64,
            };
            Some(Feature { name, kind, value })
        })
        .collect()
}

/// `temp3_input` → (Temp, 3), `fan1_input` → (Fan, 1): the same names in
/// sysfs and in `sensors -j`; anything else (voltages, power, limits) is none.
fn input_attribute(name: &str) -> Option<(Kind, u32)> {
    let (kind, rest) = if let Some(r) = name.strip_prefix("temp") {
        (Kind::Temp, r)
    } else {
        (Kind::Fan, name.strip_prefix("fan")?)
    };
    Some((kind, rest.strip_suffix("_input")?.parse().ok()?))
}

/// libsensors' chip name for the hwmon directory `dir` whose `name` is `name`.
fn chip_name(root: &Root, dir: &str, name: &str) -> String {
    // The bus device: the hwmon's parent, or the parent's parent when that is
    // a class device (nvme's `nvme0` sits between the hwmon and the PCI
    // function).
    let mut device = format!("{dir}/device");
    for _ in 0..2 {
        let Some(real) = root.real_path(&device) else {
            break;
        };
        let dev_name = real.rsplit('/').next().unwrap_or("");
        let subsystem = root
            .real_path(&format!("{device}/subsystem"))
            .map(|s| s.rsplit('/').next().unwrap_or("").to_string())
            .unwrap_or_default();
        if let Some(suffix) = bus_suffix(&subsystem, dev_name) {
            return format!("{name}-{suffix}");
        }
        device.push_str("/device");
    }
    format!("{name}-virtual-0")
}

/// `pci-0a00`, `isa-0290`, `i2c-1-2d`, ... for a device `dev_name` on `subsystem`.
fn bus_suffix(subsystem: &str, dev_name: &str) -> Option<String> {
    match subsystem {
        "pci" => {
            // 0000:0a:00.0 → domain, bus, device, function.
            let (domain, rest) = dev_name.split_once(':')?;
            let (bus, rest) = rest.split_once(':')?;
            let (dev, func) = rest.split_once('.')?;
            // At most 16, 8, 5 and 3 bits: anything longer is not a PCI name.
            let n = |s: &str, max: u64| u64::from_str_radix(s, 16).ok().filter(|v| *v <= max);
            let addr = (n(domain, 0xffff)? << 16)
                + (n(bus, 0xff)? << 8)
                + (n(dev, 0x1f)? << 3)
                + n(func, 7)?;
            Some(format!("pci-{addr:04x}"))
        }
        "platform" | "of_platform" => {
            let addr = dev_name
                .rsplit_once('.')
                .and_then(|(_, n)| n.parse::<u32>().ok())
                .unwrap_or(0);
            Some(format!("isa-{addr:04x}"))
        }
        "i2c" => {
            let (bus, addr) = dev_name.split_once('-')?;
            let addr = u32::from_str_radix(addr, 16).ok()?;
            Some(format!("i2c-{bus}-{addr:02x}"))
        }
        "acpi" => Some("acpi-0".to_string()),
        "scsi" => {
            let mut p = dev_name.split(':');
            let host = p.next()?;
            let _channel = p.next()?;
            let id = p.next()?;
            Some(format!("scsi-{host}-{id}"))
        }
        "spi" | "hid" | "mdio_bus" | "sdio" | "usb" | "virtio" => Some(format!("{subsystem}-0")),
        _ => None,
    }
}

/// Thermal zones as chips (`<type>-virtual-0`, feature `temp1`), for hosts
/// whose kernel gives no hwmon temperature. `-` in a type becomes `_`, as the
/// kernel does when it makes a zone's hwmon name.
pub fn read_thermal_zones(root: &Root) -> Vec<Chip> {
    let mut chips: Vec<Chip> = root
        .read_dir(THERMAL)
        .unwrap_or_default()
        .into_iter()
        .filter(|z| z.starts_with("thermal_zone"))
        .filter_map(|z| {
            let dir = format!("{THERMAL}/{z}");
            let kind = root.read_trimmed(&format!("{dir}/type"))?.replace('-', "_");
            let raw: i64 = root.read_trimmed(&format!("{dir}/temp"))?.parse().ok()?;
            Some(Chip {
                name: format!("{kind}-virtual-0"),
                features: vec![Feature {
                    name: "temp1".into(),
                    kind: Kind::Temp,
                    value: raw as f64 / 1000.0,
                }],
            })
        })
        .collect();
    chips.sort_by(|a, b| a.name.cmp(&b.name));
    chips
}

/// `sensors -j` output: chip → feature → `{tempN_input: v, ...}`.
pub fn parse_sensors_json(text: &str) -> Result<Vec<Chip>, String> {
    let doc: Value =
        serde_json::from_str(text).map_err(|e| format!("sensors -j: not JSON: {e}"))?;
    sensors_chips(doc)
}

/// [`parse_sensors_json`] on a document already parsed (a peer's answer
/// that wraps `sensors -j` in an object of its own).
pub fn sensors_chips(doc: Value) -> Result<Vec<Chip>, String> {
    let Value::Object(chips) = doc else {
        return Err("sensors -j: not a JSON object".into());
    };
    let mut out = Vec::new();
    for (chip, features) in chips {
        let Value::Object(features) = features else {
            continue;
        };
        let mut found: Vec<(Kind, u32, Feature)> = features
            .iter()
            .filter_map(|(fname, sub)| {
                let Value::Object(sub) = sub else {
                    return None;
                };
                sub.iter().find_map(|(key, v)| {
                    let (kind, num) = input_attribute(key)?;
                    let mut value = json_number(v)?;
                    if kind == Kind::Temp && value.abs() >= 1000.0 {
                        value /= 1000.0; // millidegrees from a raw sysfs copy
                    }
                    Some((
                        kind,
                        num,
                        Feature {
                            name: fname.clone(),
                            kind,
                            value,
                        },
                    ))
                })
            })
            .collect();
        found.sort_by_key(|(k, n, _)| (*k, *n));
        let features: Vec<Feature> = found.into_iter().map(|(_, _, f)| f).collect();
        if !features.is_empty() {
            out.push(Chip {
                name: chip,
                features,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A number, or a string starting with one (`"+45.5°C"`, `"48.0"`).
fn json_number(v: &Value) -> Option<f64> {
    let n = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => {
            let s = s.trim().trim_start_matches('+');
            let end = s
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
                .unwrap_or(s.len());
            s[..end].parse().ok()?
        }
        _ => return None,
    };
    n.is_finite().then_some(n)
}

fn is_drivetemp(chip: &str) -> bool {
    chip.to_ascii_lowercase().starts_with("drivetemp")
}

const CPU_CHIPS: &[&str] = &[
    "coretemp",
    "k10temp",
    "zenpower",
    "k8temp",
    "acpitz",
    "it87",
    "nct6687",
    "nct6775",
    "nct6776",
    "nct6779",
    "nct6791",
    "nct6792",
    "nct6793",
    "nct6795",
    "nct6796",
    "nct6797",
    "nct6798",
    "w83627",
    "f71882",
    "cpu_thermal",
    "rp1_adc",
    "rpitemp",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Cpu,
    Nvme,
    Gpu,
    Other,
}

fn class(chip: &str) -> Class {
    let l = chip.to_ascii_lowercase();
    if CPU_CHIPS.iter().any(|c| l.contains(c)) {
        Class::Cpu
    } else if l.contains("nvme") {
        Class::Nvme
    } else if l.contains("amdgpu") || l.contains("nouveau") {
        Class::Gpu
    } else {
        Class::Other
    }
}

/// `nct6798-isa-0290` + `CPU Fan` → `nct6798_cpu_fan`.
pub fn key(chip: &str, feature: &str) -> String {
    let chip = chip.split('-').next().unwrap_or(chip).to_ascii_lowercase();
    let feature = feature.to_ascii_lowercase().replace([' ', '-'], "_");
    format!("{chip}_{feature}")
}

/// Chips → the wire maps (rules in the module docs).
pub fn map(chips: &[Chip]) -> Readings {
    let mut chips: Vec<&Chip> = chips.iter().filter(|c| !is_drivetemp(&c.name)).collect();
    chips.sort_by(|a, b| a.name.cmp(&b.name));

    let mut r = Readings::default();
    let mut explicit: Option<f64> = None;
    let mut fallback: Option<f64> = None;
    let mut nvme = 0;
    let hottest = |slot: &mut Option<f64>, v: f64| {
        if slot.is_none_or(|s| v > s) {
            *slot = Some(v);
        }
    };
    for chip in chips {
        let class = class(&chip.name);
        let temps = || chip.features.iter().filter(|f| f.kind == Kind::Temp);
        for f in chip.features.iter().filter(|f| f.kind == Kind::Fan) {
            if f.value > 0.0 {
                r.fans.entry(key(&chip.name, &f.name)).or_insert(f.value);
            }
        }
        match class {
            Class::Cpu => {
                let named = |pat: &str| temps().find(|f| f.name.contains(pat)).map(|f| f.value);
                let tctl = temps()
                    .find(|f| f.name.to_ascii_lowercase().contains("tctl"))
                    .map(|f| f.value);
                let package = named("Tdie").or(named("Package id")).or(tctl);
                let positive = |f: &&Feature| f.value > 0.0;
                if let Some(p) = package {
                    hottest(&mut explicit, p);
                } else {
                    let ccd = temps()
                        .filter(|f| f.name.starts_with("Tccd"))
                        .filter(positive)
                        .map(|f| f.value)
                        .reduce(f64::max);
                    let cpu_named = temps().filter(positive).find(|f| {
                        let l = f.name.to_ascii_lowercase();
                        l.contains("cputin")
                            || l.contains("cpu temperature")
                            || (l.contains("temp") && l.contains("cpu"))
                    });
                    let temp1 = temps()
                        .filter(positive)
                        .find(|f| f.name.eq_ignore_ascii_case("temp1"));
                    if let Some(v) = ccd.or(cpu_named.or(temp1).map(|f| f.value)) {
                        hottest(&mut fallback, v);
                    }
                }
                for f in temps().filter(|f| f.name.contains("Core ")) {
                    let k = format!("cpu_{}", f.name.to_ascii_lowercase().replace(' ', "_"));
                    let e = r.temperatures.entry(k).or_insert(f.value);
                    *e = e.max(f.value);
                }
            }
            Class::Nvme => {
                if let Some(f) = temps().find(|f| f.name.contains("Composite") && f.value > 0.0) {
                    r.temperatures.insert(format!("nvme{nvme}"), f.value);
                    nvme += 1;
                }
            }
            Class::Gpu => {
                for f in temps() {
                    let l = f.name.to_ascii_lowercase();
                    if ["edge", "junction", "mem"].iter().any(|p| l.contains(p)) || l == "temp1" {
                        r.temperatures
                            .entry(format!("{}_{}", chip.name, f.name))
                            .or_insert(f.value);
                    }
                }
            }
            Class::Other => {}
        }
        for f in temps() {
            if excluded(class, &f.name) || !(f.value > 0.0 && f.value < 150.0) {
                continue;
            }
            r.additional
                .entry(key(&chip.name, &f.name))
                .or_insert(f.value);
        }
    }
    let cores = r
        .temperatures
        .iter()
        .filter(|(k, _)| k.starts_with("cpu_core_"))
        .map(|(_, v)| *v)
        .reduce(f64::max);
    if let Some(p) = explicit.or(fallback).or(cores).filter(|p| *p > 0.0) {
        r.temperatures.insert("cpu_package".into(), p);
    }
    r
}

/// Features the class-specific rules already used: not "other".
fn excluded(class: Class, name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    match class {
        Class::Cpu => {
            name.contains("Package")
                || name.contains("Core ")
                || name.starts_with("Tccd")
                || ["tdie", "tctl", "cputin"].iter().any(|p| l.contains(p))
        }
        Class::Nvme => name.contains("Composite"),
        Class::Gpu => ["edge", "junction", "mem"].iter().any(|p| l.contains(p)),
        Class::Other => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chip(name: &str, feats: &[(&str, Kind, f64)]) -> Chip {
        Chip {
            name: name.into(),
            features: feats
                .iter()
                .map(|&(n, kind, value)| Feature {
                    name: n.into(),
                    kind,
                    value,
                })
                .collect(),
        }
    }

    #[test]
    fn bus_suffixes() {
        assert_eq!(bus_suffix("pci", "0000:0a:00.0").unwrap(), "pci-0a00");
        assert_eq!(bus_suffix("pci", "0000:00:18.3").unwrap(), "pci-00c3");
        assert_eq!(bus_suffix("platform", "nct6775.656").unwrap(), "isa-0290");
        assert_eq!(bus_suffix("platform", "coretemp.0").unwrap(), "isa-0000");
        assert_eq!(bus_suffix("i2c", "1-002d").unwrap(), "i2c-1-2d");
        assert_eq!(bus_suffix("scsi", "2:0:0:0").unwrap(), "scsi-2-0");
        assert_eq!(bus_suffix("nvme", "nvme0"), None);
        assert_eq!(bus_suffix("pci", "garbage"), None);
        assert_eq!(bus_suffix("pci", "ffffffff:ff:ff.ffffffff"), None);
    }

    #[test]
    fn tdie_wins_over_tctl_and_fans_never_become_temperatures() {
        let r = map(&[chip(
            "k10temp-pci-00c3",
            &[
                ("Tctl", Kind::Temp, 72.0),
                ("Tdie", Kind::Temp, 52.0),
                ("Tccd1", Kind::Temp, 49.0),
                ("fan1", Kind::Fan, 1200.0),
            ],
        )]);
        assert_eq!(r.temperatures["cpu_package"], 52.0);
        assert_eq!(r.fans["k10temp_fan1"], 1200.0);
        assert!(r.additional.is_empty(), "{:?}", r.additional);
    }

    #[test]
    fn fallbacks_and_hottest_core() {
        let r = map(&[chip("nct6775-isa-0290", &[("SYSTIN", Kind::Temp, 30.0)])]);
        assert!(!r.temperatures.contains_key("cpu_package"));
        assert_eq!(r.additional["nct6775_systin"], 30.0);
        let r = map(&[chip(
            "coretemp-isa-0000",
            &[("Core 0", Kind::Temp, 40.0), ("Core 1", Kind::Temp, 44.0)],
        )]);
        assert_eq!(r.temperatures["cpu_package"], 44.0);
        let r = map(&[chip("acpitz-acpi-0", &[("temp1", Kind::Temp, 27.8)])]);
        assert_eq!(r.temperatures["cpu_package"], 27.8);
        assert_eq!(r.additional["acpitz_temp1"], 27.8);
    }

    #[test]
    fn drivetemp_is_left_out_and_nonsense_is_ignored() {
        let r = map(&[
            chip("drivetemp-scsi-0-0", &[("temp1", Kind::Temp, 35.0)]),
            chip(
                "weird-virtual-0",
                &[
                    ("temp1", Kind::Temp, -273.0),
                    ("temp2", Kind::Temp, 255.0),
                    ("fan1", Kind::Fan, 0.0),
                ],
            ),
        ]);
        assert_eq!(r, Readings::default());
    }

    #[test]
    fn hostile_sensors_json() {
        for text in ["", "[]", "null", "{", "{\"a\":1}", "{\"a\":{\"b\":2}}"] {
            let chips = parse_sensors_json(text).unwrap_or_default();
            assert!(chips.is_empty(), "{text}: {chips:?}");
        }
        let chips = parse_sensors_json(
            r#"{"x-isa-0000":{"temp1":{"temp1_input":"+45.5°C"},"fan2":{"fan2_input":"n/a"},"t":{"temp3_input":42000}}}"#,
        )
        .unwrap();
        assert_eq!(chips[0].features.len(), 2);
        assert_eq!(chips[0].features[0].value, 45.5);
        assert_eq!(chips[0].features[1].value, 42.0);
    }
}
