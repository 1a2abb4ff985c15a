//! What the forced command prints on a cluster node: `sensors -j` shaped
//! JSON (`pulse-sensor-proxy sensors [--root DIR]`).
//!
//! The node runs our own reader of the kernel's hwmon and thermal-zone
//! directories ([`crate::collect::hwmon`]) and prints the chips the way
//! lm-sensors does (`{"coretemp-isa-0000": {"Adapter": "ISA adapter",
//! "Package id 0": {"temp1_input": 45.0}}}`), so a node needs no lm-sensors
//! and the Pulse backend parses the text it always parsed. Only when our
//! reader finds nothing does it run `sensors -j` and pass its output on.
//! It never writes anything and never reads `drivetemp` chips (see hwmon.rs).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::collect::hwmon::{self, Chip, Kind};
use crate::root::Root;

/// The hwmon chips as `sensors -j` JSON; the thermal zones too when hwmon
/// has no temperature (a zone with a hwmon twin would be counted twice,
/// under another chip name); an error when there is no reading at all.
pub fn render(root: &Root) -> Result<String, String> {
    let mut chips = hwmon::read_sysfs(root).unwrap_or_default();
    let has_temp = |c: &Chip| c.features.iter().any(|f| f.kind == Kind::Temp);
    if !chips.iter().any(has_temp) {
        chips.extend(hwmon::read_thermal_zones(root));
    }
    if chips.is_empty() {
        return Err("no hwmon or thermal-zone temperature on this host".into());
    }
    Ok(render_chips(&chips))
}

/// `chips` as `sensors -j` JSON. Features are numbered per kind in their
/// order (`temp1_input`, `temp2_input`, `fan1_input`), which is the order
/// [`hwmon::parse_sensors_json`] restores. A label used twice in one chip
/// (JSON keys must differ) keys the later feature by its attribute name.
pub fn render_chips(chips: &[Chip]) -> String {
    let mut doc = Map::new();
    for chip in chips {
        let mut obj = Map::new();
        obj.insert("Adapter".into(), Value::from(adapter(&chip.name)));
        let (mut temps, mut fans) = (0, 0);
        for f in &chip.features {
            let attr = match f.kind {
                Kind::Temp => {
                    temps += 1;
                    format!("temp{temps}")
                }
                Kind::Fan => {
                    fans += 1;
                    format!("fan{fans}")
                }
            };
            let key = if obj.contains_key(&f.name) {
                attr.clone()
            } else {
                f.name.clone()
            };
            let mut sub = Map::new();
            sub.insert(format!("{attr}_input"), Value::from(f.value));
            obj.insert(key, Value::Object(sub));
        }
        doc.insert(chip.name.clone(), Value::Object(obj));
    }
    Value::Object(doc).to_string()
}

/// lm-sensors' adapter text for a chip name's bus part.
fn adapter(chip: &str) -> &'static str {
    let bus = chip.split('-').nth(1).unwrap_or("");
    match bus {
        "isa" => "ISA adapter",
        "pci" => "PCI adapter",
        "acpi" => "ACPI interface",
        "i2c" => "SMBus adapter",
        "scsi" => "SCSI adapter",
        _ => "Virtual device",
    }
}

/// `pulse-sensor-proxy sensors`: prints [`render`]'s JSON, else the output
/// of `sensors -j` (5 s), else fails with exit status 1.
pub fn command(root: &Root) -> ExitCode {
    let why = match render(root) {
        Ok(json) => {
            println!("{json}");
            return ExitCode::SUCCESS;
        }
        Err(why) => why,
    };
    let Some(sensors) = root.program("sensors", &["/usr/bin", "/usr/local/bin"]) else {
        eprintln!("pulse-sensor-proxy: {why}; no `sensors` program either");
        return ExitCode::from(1);
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    match crate::exec::run(&sensors, &["-j"], deadline, crate::exec::STDOUT_CAP) {
        Ok(out) if out.code == Some(0) && !out.stdout.trim_ascii().is_empty() => {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            if stdout.write_all(&out.stdout).is_err() {
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Ok(out) => {
            eprintln!(
                "pulse-sensor-proxy: {why}; sensors -j failed: {}",
                out.stderr.trim()
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("pulse-sensor-proxy: {why}; {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::hwmon::Feature;

    fn feature(name: &str, kind: Kind, value: f64) -> Feature {
        Feature {
            name: name.into(),
            kind,
            value,
        }
    }

    #[test]
    fn rendered_chips_parse_back_to_the_same_chips() {
        let chips = vec![
            Chip {
                name: "coretemp-isa-0000".into(),
                features: vec![
                    feature("Package id 0", Kind::Temp, 45.0),
                    feature("Core 0", Kind::Temp, 41.5),
                    feature("fan1", Kind::Fan, 1013.0),
                ],
            },
            Chip {
                name: "nvme-pci-0400".into(),
                features: vec![feature("Composite", Kind::Temp, 38.85)],
            },
        ];
        let text = render_chips(&chips);
        assert!(text.contains(r#""Adapter":"ISA adapter""#), "{text}");
        assert!(
            text.contains(r#""Package id 0":{"temp1_input":45.0}"#),
            "{text}"
        );
        assert_eq!(hwmon::parse_sensors_json(&text).unwrap(), chips);
    }

    #[test]
    fn a_label_used_twice_keeps_both_readings() {
        let chips = vec![Chip {
            name: "nct6775-isa-0290".into(),
            features: vec![
                feature("AUXTIN0", Kind::Temp, 30.0),
                feature("AUXTIN0", Kind::Temp, 31.0),
            ],
        }];
        let back = hwmon::parse_sensors_json(&render_chips(&chips)).unwrap();
        let values: Vec<f64> = back[0].features.iter().map(|f| f.value).collect();
        assert_eq!(values, [30.0, 31.0]);
    }
}
