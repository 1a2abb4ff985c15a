//! RAID, temperatures and fans, GPUs and ZFS against fixtures:
//! - `fixtures/hwmon/<machine>/`: the kernel's hwmon tree and `sensors -j`
//!   of the same machine give the same keys and values (`expect.json`);
//! - `fixtures/raid/<case>/`: `/proc/mdstat` with and without
//!   `mdadm --detail` gives the expected `raid[]` entries;
//! - a hung mdadm, zpool, zfs and nvidia-smi hold `--once` only for the
//!   hardware wait, and the report still carries what did answer.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pulse_agent::collect::{hwmon, raid};
use pulse_agent::root::Root;
use serde_json::{Map, Value};

fn dirs(sub: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(common::fixtures_dir().join(sub))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

fn read_json(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The readings as `{temperatureCelsius, fanRpm, additional}`, empty maps left out.
fn readings_json(r: &hwmon::Readings) -> Value {
    let mut o = Map::new();
    for (k, m) in [
        ("temperatureCelsius", &r.temperatures),
        ("fanRpm", &r.fans),
        ("additional", &r.additional),
    ] {
        if !m.is_empty() {
            o.insert(
                k.into(),
                Value::Object(
                    m.iter()
                        .map(|(k, v)| (k.clone(), Value::from(*v)))
                        .collect(),
                ),
            );
        }
    }
    Value::Object(o)
}

/// Numbers compared as f64 (45 and 45.0 are the same reading).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-9
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w))
        }
        _ => a == b,
    }
}

#[test]
fn hwmon_and_sensors_json_give_the_same_readings() {
    let machines = dirs("hwmon");
    assert!(machines.len() >= 4, "{machines:?}");
    for m in machines {
        let name = m.file_name().unwrap().to_string_lossy().into_owned();
        let want = read_json(&m.join("expect.json"));
        let root = Root::new(m.join("root")).unwrap();
        let chips = hwmon::read_sysfs(&root).unwrap();
        let from_sysfs = readings_json(&hwmon::map(&chips));
        let text = std::fs::read_to_string(m.join("sensors.json")).unwrap();
        let from_sensors = readings_json(&hwmon::map(&hwmon::parse_sensors_json(&text).unwrap()));
        assert!(
            same(&from_sysfs, &want),
            "{name}: from /sys\n got {from_sysfs}\nwant {want}"
        );
        assert!(
            same(&from_sensors, &want),
            "{name}: from sensors -j\n got {from_sensors}\nwant {want}"
        );
        // The chip names are libsensors' names (chips without a temperature
        // or fan are in neither list).
        let mut sysfs_names: Vec<&str> = chips.iter().map(|c| c.name.as_str()).collect();
        sysfs_names.sort();
        let json_chips = hwmon::parse_sensors_json(&text).unwrap();
        // drivetemp is not even read from /sys (it can keep a disk awake).
        let mut json_names: Vec<&str> = json_chips
            .iter()
            .map(|c| c.name.as_str())
            .filter(|n| !n.starts_with("drivetemp"))
            .collect();
        json_names.sort();
        assert_eq!(sysfs_names, json_names, "{name}: chip names");
    }
}

/// The wire form of `raid[]` entries, through the report builder.
fn raid_json(arrays: Vec<raid::Array>) -> Value {
    let snap = pulse_agent::collect::HostSnapshot {
        raid: arrays,
        ..Default::default()
    };
    let identity = pulse_agent::collect::identity::Identity::default();
    let doc = pulse_agent::report::host(&pulse_agent::report::HostReport {
        agent: pulse_agent::report::Agent {
            id: "x",
            version: "v0",
            interval_seconds: 30,
            hostname: "h",
            disk_exclude: &[],
            modules: &[],
            privilege: &common::pinned_privilege(),
            applied_config: None,
            update: &pulse_agent::update::Status::default(),
            updated_from: None,
        },
        identity: &identity,
        report_ip: None,
        tags: &[],
        snapshot: &snap,
        timestamp: common::pinned_now(),
        sequence_id: "v1:00000000000000000000000000000000:1",
    });
    doc.get("raid").cloned().unwrap_or(Value::Array(Vec::new()))
}

#[test]
fn raid_fixtures_give_the_expected_arrays() {
    let cases = dirs("raid");
    assert!(cases.len() >= 12, "{cases:?}");
    for c in cases {
        let name = c.file_name().unwrap().to_string_lossy().into_owned();
        let mdstat = raid::parse_mdstat(&std::fs::read_to_string(c.join("mdstat")).unwrap());
        let alone = raid_json(mdstat.clone());
        let want_alone = read_json(&c.join("expect-mdstat-only.json"));
        assert!(
            same(&alone, &want_alone),
            "{name}: mdstat only\n got {alone}\nwant {want_alone}"
        );
        let merged: Vec<raid::Array> = mdstat
            .iter()
            .map(|base| {
                let file = c.join(format!(
                    "detail-{}",
                    base.device.trim_start_matches("/dev/")
                ));
                match std::fs::read_to_string(&file) {
                    Ok(text) => raid::merge(raid::parse_detail(&text, &base.device).unwrap(), base),
                    Err(_) => base.clone(),
                }
            })
            .collect();
        let got = raid_json(merged);
        let want = read_json(&c.join("expect.json"));
        assert!(
            same(&got, &want),
            "{name}: with mdadm\n got {got}\nwant {want}"
        );
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// mdadm, zpool, zfs and nvidia-smi all hang: `--once` prints its report
/// after the hardware wait (4 s), not after the programs' own deadlines
/// (2 + 5 s for mdadm, 5 s for nvidia-smi and zpool), with both arrays from
/// /proc/mdstat and every other section in place.
#[test]
fn hung_programs_hold_the_report_only_for_the_hardware_wait() {
    let root = scratch("hung-tools");
    common::hung_tools_root(&root);
    let mut args = common::case_args("debian12-vm");
    args[2] = root.display().to_string();
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pulse-agent"))
        .args(&args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wait = pulse_agent::hardware::WAIT;
    assert!(took >= wait - Duration::from_millis(100), "{took:?}");
    assert!(took < wait + Duration::from_secs(2), "{took:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let errs = common::wire::check_host_report(&doc);
    assert!(errs.is_empty(), "{errs:?}");
    let raid = doc["raid"].as_array().expect("arrays from /proc/mdstat");
    assert_eq!(raid.len(), 2);
    assert_eq!(raid[1]["state"], "active, degraded");
    assert_eq!(raid[1]["failedDevices"], 1);
    assert!(doc["sensors"].get("gpu").is_none());
    assert!(!doc["disks"].as_array().unwrap().is_empty());
    assert!(doc["metrics"]["memory"]["totalBytes"].as_u64().unwrap() > 0);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(
            "mdadm --version: no answer within 2 s; arrays are reported from /proc/mdstat"
        ),
        "{log}"
    );
    eprintln!("--once with hung mdadm, zpool, zfs and nvidia-smi: {took:?}");
    std::fs::remove_dir_all(&root).ok();
}

/// The real programs' outputs of the nas-smart case, through the agent:
/// the rebuilding mirror, the ZFS pool's usable size and datasets, and SMART
/// rows' pool membership.
#[test]
fn nas_storage_through_the_fake_programs() {
    let doc = common::pinned_report("nas-smart");
    let raid = doc["raid"].as_array().unwrap();
    let md1 = raid.iter().find(|a| a["device"] == "/dev/md1").unwrap();
    assert_eq!(md1["operation"], "recovery");
    assert_eq!(md1["rebuildSpeed"], "512000K/sec");
    assert_eq!(
        md1["failedDevices"], 0,
        "a recovering mirror has no failed disk"
    );
    assert_eq!(md1["devices"][1]["state"], "spare rebuilding");
    let tank = doc["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == "tank")
        .unwrap();
    let total = tank["totalBytes"].as_u64().unwrap();
    assert!(total < 39_994_735_984_640, "usable, not raw: {total}");
    let names: Vec<&str> = tank["zfsDatasets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tank/backups", "tank/media", "tank/vm-100-disk-0"]);
    let pools: Vec<(&str, &str)> = doc["sensors"]["smart"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| Some((r["device"].as_str()?, r.get("pool")?.as_str()?)))
        .collect();
    // sdb, sdd, sde by serial; sdc and sdf (asleep, no serial known) by WWN.
    assert_eq!(
        pools,
        [
            ("sdb", "tank"),
            ("sdc", "tank"),
            ("sdd", "tank"),
            ("sde", "tank"),
            ("sdf", "tank")
        ]
    );
    let t = &doc["sensors"]["temperatureCelsius"];
    assert_eq!(t["cpu_package"], 47.0);
    assert!(doc["sensors"]["fanRpm"]["nct6798_fan1"].is_number());
    assert!(
        !doc["sensors"]["additional"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("drivetemp") || k.contains("fan")),
        "no drivetemp, no fans in additional"
    );
}

/// RAPL counters of the nas-smart case, read twice with the counters moved
/// (the package counter wrapped at `max_energy_range_uj` in between).
#[test]
fn rapl_watts_between_two_samples() {
    use pulse_agent::collect::power;
    let dir = scratch("rapl");
    common::copy_tree(&common::case_root("nas-smart"), &dir);
    let rapl = dir.join("sys/devices/virtual/powercap/intel-rapl/intel-rapl:0");
    let range: u64 = 262_143_328_850;
    // The package counter 100 J before its wrap.
    std::fs::write(rapl.join("energy_uj"), format!("{}\n", range - 100_000_000)).unwrap();
    let root = Root::new(&dir).unwrap();
    let t0 = Instant::now();
    let before = power::sample(&root, t0).expect("RAPL counters");
    assert_eq!(before.counters.len(), 3);
    // 30 s at 20 W package (600 J, across the wrap), 8 W core, 2 W dram.
    std::fs::write(rapl.join("energy_uj"), "500000000\n").unwrap();
    std::fs::write(rapl.join("intel-rapl:0:0/energy_uj"), "51474567890\n").unwrap();
    std::fs::write(rapl.join("intel-rapl:0:1/energy_uj"), "9936543210\n").unwrap();
    let after = power::sample(&root, t0 + Duration::from_secs(30)).unwrap();
    let w = power::watts(&before, &after);
    assert!((w.package - 20.0).abs() < 1e-9, "{w:?}");
    assert!((w.core - 8.0).abs() < 1e-9, "{w:?}");
    assert!((w.dram - 2.0).abs() < 1e-9, "{w:?}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Garbage in every hwmon and thermal file: no panic, nothing invented.
#[test]
fn hostile_hwmon_files() {
    let dir = scratch("hostile-hwmon");
    let garbage: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let h = dir.join("sys/class/hwmon/hwmon0");
    std::fs::create_dir_all(&h).unwrap();
    std::fs::write(h.join("name"), "coretemp\n").unwrap();
    std::fs::write(h.join("temp1_input"), &garbage).unwrap();
    std::fs::write(h.join("temp1_label"), &garbage).unwrap();
    std::fs::write(h.join("temp2_input"), "99999999999999999999999\n").unwrap();
    std::fs::write(h.join("temp3_input"), "-9223372036854775808\n").unwrap();
    std::fs::write(h.join("fan1_input"), "-5\n").unwrap();
    std::fs::write(h.join("temp99999999999_input"), "45000\n").unwrap();
    std::fs::create_dir_all(dir.join("sys/class/hwmon/hwmon1")).unwrap(); // no name
    std::fs::write(dir.join("sys/class/hwmon/hwmon2"), "not a directory").unwrap();
    let z = dir.join("sys/class/thermal/thermal_zone0");
    std::fs::create_dir_all(&z).unwrap();
    std::fs::write(z.join("type"), &garbage).unwrap();
    std::fs::write(z.join("temp"), &garbage).unwrap();
    let root = Root::new(&dir).unwrap();
    let r = hwmon::map(&hwmon::read_sysfs(&root).unwrap());
    // Only the readable, plausible value survives: none here is.
    assert!(!r.fans.contains_key("coretemp_fan1"));
    for v in r.temperatures.values().chain(r.additional.values()) {
        assert!(v.is_finite());
    }
    let _ = hwmon::map(&hwmon::read_thermal_zones(&root));
    std::fs::remove_dir_all(&dir).ok();
}
