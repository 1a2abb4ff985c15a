//! SMART: what the agent asks smartctl and when, checked on the argv a fake
//! smartctl records (`fake-smartctl`), plus the parsers on smartctl
//! documents (`fixtures/smart/`) and hostile answers.
//!
//! The cadence tests drive `Smart::refresh` with an injected clock on a copy
//! of the `nas-smart` fixture, changing its `/proc/diskstats` between
//! refreshes the way disk activity would.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pulse_agent::root::Root;
use pulse_agent::smart::{self, Refresh, Settings, Smart};
use serde_json::Value;

const ASLEEP: [&str; 4] = ["sdc", "sdf", "sdi", "sdl"];

/// A writable copy of the nas-smart fixture whose fake records its calls.
struct Nas {
    dir: PathBuf,
}

impl Nas {
    fn new(name: &str) -> Nas {
        let dir = std::env::temp_dir().join(format!("pulse-smart-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let case = common::fixtures_dir().join("nas-smart");
        let ok = Command::new("cp")
            .arg("-a")
            .arg(case.join("root"))
            .arg(case.join("smartctl"))
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let link = dir.join("smartctl/smartctl");
        std::fs::remove_file(&link).unwrap();
        let fake = common::fixtures_dir()
            .parent()
            .unwrap()
            .join("fake-smartctl");
        std::os::unix::fs::symlink(fake, &link).unwrap();
        std::fs::write(dir.join("smartctl/calls.log"), "").unwrap();
        Nas { dir }
    }

    fn smart(&self) -> Smart {
        Smart::new(
            Root::new(self.dir.join("root")).unwrap(),
            Settings {
                smartctl: Some(self.dir.join("smartctl/smartctl")),
                max_age: Duration::from_secs(6 * 3600),
                ..Settings::default()
            },
        )
    }

    fn answers(&self) -> PathBuf {
        self.dir.join("smartctl")
    }

    /// The calls since the last time, sorted (probes run in parallel).
    fn take_calls(&self) -> Vec<String> {
        let log = self.answers().join("calls.log");
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::write(&log, "").unwrap();
        let mut calls: Vec<String> = text.lines().map(str::to_string).collect();
        calls.sort();
        calls
    }

    fn woken(&self) -> String {
        std::fs::read_to_string(self.answers().join("woken.log")).unwrap_or_default()
    }

    /// Adds I/O to a disk's `/proc/diskstats` line, as if it were used.
    fn use_disk(&self, name: &str) {
        let p = self.dir.join("root/proc/diskstats");
        let text = std::fs::read_to_string(&p).unwrap();
        let out: Vec<String> = text
            .lines()
            .map(|l| {
                let mut f: Vec<String> = l.split_whitespace().map(str::to_string).collect();
                if f[2] == name {
                    f[3] = (f[3].parse::<u64>().unwrap() + 100).to_string();
                }
                f.join(" ")
            })
            .collect();
        std::fs::write(&p, out.join("\n") + "\n").unwrap();
    }
}

impl Drop for Nas {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn probe_of(dev: &str, dtype: &str, guard: bool) -> String {
    smart::probe::args(dtype, guard, true, dev).join(" ")
}

/// Every call a first refresh of nas-smart makes.
fn first_refresh_calls() -> Vec<String> {
    let mut want = vec!["--scan".to_string()];
    // The SSD: not rotational, so no guard; its temperature ends the attempts.
    want.push(probe_of("/dev/sda", "", false));
    // The scan says `-d scsi`; sysfs says SATA, so the type is dropped and the
    // untyped probe answers. Every disk that may spin carries the guard.
    for d in "bcdefghijkl".chars() {
        want.push(probe_of(&format!("/dev/sd{d}"), "", true));
    }
    for n in 0..2 {
        want.push(probe_of(&format!("/dev/nvme{n}"), "nvme", false));
    }
    for n in 0..4 {
        want.push(probe_of("/dev/bus/7", &format!("megaraid,{n}"), true));
    }
    // The RAID volume and the card reader give nothing: every attempt is made.
    want.push(probe_of("/dev/sdm", "", true));
    want.push(probe_of("/dev/sdm", "sat", true));
    want.push(probe_of("/dev/sdn", "", true));
    want.sort();
    want
}

fn row<'a>(r: &'a Refresh, device: &str) -> &'a smart::Disk {
    r.rows
        .iter()
        .find(|d| d.device == device)
        .unwrap_or_else(|| panic!("no row {device}"))
}

#[test]
fn every_call_is_guarded_unless_the_disk_cannot_spin() {
    let nas = Nas::new("argv");
    let r = nas.smart().refresh(Instant::now());
    assert_eq!(nas.take_calls(), first_refresh_calls());
    assert_eq!(nas.woken(), "", "no unguarded call reached a sleeping disk");
    assert_eq!(r.rows.len(), 19);
    assert_eq!(r.standby, 4);
    for d in ASLEEP {
        let s = row(&r, d);
        assert!(s.standby && s.temperature == 0, "{s:?}");
    }
}

#[test]
fn idle_disks_are_not_probed_again_before_max_age() {
    let nas = Nas::new("idle");
    let mut smart = nas.smart();
    let t0 = Instant::now();
    smart.refresh(t0);
    nas.take_calls();

    // Five minutes later only sdb was used.
    nas.use_disk("sdb");
    let r = smart.refresh(t0 + Duration::from_secs(300));
    let want = vec!["--scan".to_string(), probe_of("/dev/sdb", "", true)];
    assert_eq!(nas.take_calls(), want);
    assert_eq!(r.idle, 19, "12 SATA, 2 NVMe, 4 members, sdm, sdn; less sdb");
    // Idle disks keep what was last seen, sleeping ones still asleep.
    assert_eq!(r.rows.len(), 19);
    assert_eq!(row(&r, "sdd").health, smart::parse::Health::Passed);
    assert!(ASLEEP.iter().all(|d| row(&r, d).standby));

    // A busy disk is probed every interval. Controller members have no
    // counters of their own: the controller's volume (sdm) stands in.
    nas.use_disk("sdb");
    nas.use_disk("sdm");
    smart.refresh(t0 + Duration::from_secs(600));
    let mut want = vec![
        "--scan".to_string(),
        probe_of("/dev/sdb", "", true),
        probe_of("/dev/sdm", "", true),
        probe_of("/dev/sdm", "sat", true),
    ];
    for n in 0..4 {
        want.push(probe_of("/dev/bus/7", &format!("megaraid,{n}"), true));
    }
    want.sort();
    assert_eq!(nas.take_calls(), want);

    // Past --smart-max-age every disk is asked again, still guarded.
    smart.refresh(t0 + Duration::from_secs(6 * 3600 + 600));
    assert_eq!(nas.take_calls(), first_refresh_calls());
    assert_eq!(nas.woken(), "");
}

#[test]
fn a_disk_found_asleep_keeps_its_last_known_values() {
    let nas = Nas::new("fallasleep");
    std::fs::remove_file(nas.answers().join("sdc.asleep")).unwrap();
    let mut smart = nas.smart();
    let t0 = Instant::now();
    let awake = row(&smart.refresh(t0), "sdc").clone();
    assert!(!awake.standby && awake.temperature > 0);
    assert_eq!(awake.serial, "WD-VGH1002K");

    // It was used, then spun down: the next probe finds it asleep.
    std::fs::write(nas.answers().join("sdc.asleep"), "").unwrap();
    nas.use_disk("sdc");
    let r = smart.refresh(t0 + Duration::from_secs(300));
    let asleep = row(&r, "sdc");
    assert!(asleep.standby);
    assert_eq!(asleep.temperature, 0, "no stale temperature");
    assert_eq!(asleep.serial, awake.serial);
    assert_eq!(asleep.health, awake.health);
    assert_eq!(asleep.attributes, awake.attributes);
    assert_eq!(nas.woken(), "");

    // Idle since: not asked again, still reported asleep.
    nas.take_calls();
    let r = smart.refresh(t0 + Duration::from_secs(600));
    assert!(!nas.take_calls().iter().any(|c| c.ends_with("/dev/sdc")));
    assert!(row(&r, "sdc").standby);
}

#[test]
fn hostile_answers_give_rows_or_identity_never_a_hang() {
    let nas = Nas::new("hostile");
    let a = nas.answers();
    let put = |name: &str, content: &[u8]| std::fs::write(a.join(name), content).unwrap();
    let rm = |name: &str| std::fs::remove_file(a.join(name)).unwrap();
    rm("sdb.json");
    put("sdb.garbage", b"\x00\xff{{{\x89PNG\r\n garbage");
    rm("sdd.json");
    put("sdd.flood", b"");
    rm("sde.json");
    put("sde.hang", b"");
    rm("sdg.json");
    put("sdg.nojson", b"");
    put(
        "sdg.txt",
        b"smartctl 6.5 (build date Sep 26 2022) [x86_64-linux-4.4.302+] (local build)\n\
          Device Model:     WDC WD40EFRX-68N32N0\nSerial Number:    WD-WCC7K0000001\n\
          SMART overall-health self-assessment test result: PASSED\n\
          194 Temperature_Celsius     0x0022   117   104   000    Old_age   Always       -       33\n",
    );
    let sdh = std::fs::read_to_string(a.join("sdh.json")).unwrap();
    put(
        "sdh.json",
        sdh.replace("\"passed\": true", "\"passed\": false")
            .as_bytes(),
    );
    put("sdh.exit", b"24\n");
    put(
        "sdj.json",
        br#"{"model_name": "Hostile Disk", "serial_number": ["x"], "smart_status": {"passed": "yes"},
            "device": {"protocol": 7}, "temperature": {"current": -5}, "user_capacity": {"bytes": 1e30},
            "ata_smart_attributes": {"table": [{"id": 9, "raw": {"value": "x", "string": "1234 h"}},
                {"id": "5", "raw": {"value": 3}}, {"id": 12, "raw": {"value": 1e3}}, 17]},
            "nvme_smart_health_information_log": "none",
            "power_on_time": {"hours": 18446744073709551616}}"#,
    );
    let started = Instant::now();
    let r = nas.smart().refresh(Instant::now());
    let took = started.elapsed();
    assert!(
        took < smart::PROBE_DEADLINE + Duration::from_secs(3),
        "one hung disk costs one deadline: {took:?}"
    );
    // Garbage, a flood and a hang: the disk is still listed, from sysfs.
    for d in ["sdb", "sdd", "sde"] {
        let x = row(&r, d);
        assert_eq!(x.health, smart::parse::Health::Unknown, "{d}: {x:?}");
        assert_eq!(x.model, "WDC WD80EFZZ-68B", "{d}");
    }
    // smartctl 6 without --json: asked again in text.
    let g = row(&r, "sdg");
    assert_eq!((g.serial.as_str(), g.temperature), ("WD-WCC7K0000001", 33));
    assert_eq!(g.collection.serial.source, "smartctl_text");
    let calls = nas.take_calls();
    assert!(calls.contains(&"-n standby,3 -i -A -H /dev/sdg".to_string()));
    // A failing disk: smartctl's exit bits do not hide the document.
    assert_eq!(row(&r, "sdh").health, smart::parse::Health::Failed);
    // Wrong types: unreadable fields left out, the rest kept.
    let j = row(&r, "sdj");
    assert_eq!((j.model.as_str(), j.temperature), ("Hostile Disk", 0));
    assert_eq!(j.health, smart::parse::Health::Unknown);
    let a = j.attributes.expect("the readable attribute row");
    assert_eq!(a.power_on_hours, Some(1234));
    assert_eq!((a.reallocated_sectors, a.power_cycles), (None, None));
    assert_eq!(j.size_bytes, 8001563222016, "from sysfs");
    // The other disks are unaffected.
    assert_eq!(row(&r, "sdk").health, smart::parse::Health::Passed);
}

#[test]
fn a_hung_smartctl_does_not_hold_the_report_past_its_wait() {
    let nas = Nas::new("hungscan");
    std::fs::write(nas.answers().join("scan.hang"), "").unwrap();
    for d in "abdeghjk".chars() {
        std::fs::write(nas.answers().join(format!("sd{d}.hang")), "").unwrap();
    }
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pulse-agent"))
        .arg("--once")
        .arg(format!("--root={}", nas.dir.join("root").display()))
        .arg(format!(
            "--smartctl={}",
            nas.answers().join("smartctl").display()
        ))
        .arg("--state-dir=/nonexistent/pulse-agent-test")
        .env_clear()
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < pulse_agent::agent::SMART_WAIT + Duration::from_secs(5),
        "{took:?}"
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        doc["metrics"]["memory"]["totalBytes"].as_u64().unwrap() > 0,
        "the host report is complete"
    );
    assert!(
        doc["sensors"].get("smart").is_none(),
        "the refresh had not finished: no rows rather than a partial list"
    );
    assert!(common::wire::check_host_report(&doc).is_empty());
}

/// Each `fixtures/smart/NAME.json|txt` parses to its `NAME.expect.json` row.
#[test]
fn smartctl_documents_parse_as_expected() {
    let dir = common::fixtures_dir().join("smart");
    let mut seen = 0;
    let mut failed = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let Some(name) = p
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .strip_suffix(".expect.json")
        else {
            continue;
        };
        seen += 1;
        let case = std::panic::catch_unwind(|| check_case(&dir, name, &p));
        if let Err(e) = case {
            failed.push(name.to_string());
            drop(e);
        }
    }
    assert!(seen >= 20, "only {seen} cases");
    assert!(
        failed.is_empty(),
        "cases that failed (see above): {failed:?}"
    );
}

fn check_case(dir: &Path, name: &str, expect_path: &Path) {
    let expect: Value = serde_json::from_slice(&std::fs::read(expect_path).unwrap()).unwrap();
    let path = expect["path"].as_str().unwrap();
    let dtype = expect["type"].as_str().unwrap_or("");
    let json = dir.join(format!("{name}.json"));
    let parsed = if json.exists() {
        let bytes = std::fs::read(&json).unwrap();
        match smart::parse::json(&bytes, path, dtype) {
            Err(smart::parse::ParseError::NotJson) => {
                smart::parse::text(&String::from_utf8_lossy(&bytes), path, dtype)
            }
            r => r,
        }
    } else {
        let text = std::fs::read_to_string(dir.join(format!("{name}.txt"))).unwrap();
        smart::parse::text(&text, path, dtype)
    };
    let want = &expect["row"];
    let got = match parsed {
        Ok(d) => pulse_agent::report::smart_row(&d, std::slice::from_ref(&d), &[]),
        Err(e) => {
            assert!(want.is_null(), "{name}: {e:?}, expected {want}");
            return;
        }
    };
    assert!(!want.is_null(), "{name}: expected no row, got {got}");
    let mut got = got;
    let collection = got["collection"].take();
    got.as_object_mut().unwrap().remove("collection");
    let mut want = want.clone();
    let want_collection = want
        .as_object_mut()
        .unwrap()
        .remove("collection")
        .unwrap_or(Value::Null);
    assert_eq!(got, want, "{name}");
    for k in ["serial", "temperature"] {
        if !want_collection[k].is_null() {
            assert_eq!(collection[k], want_collection[k], "{name}: collection.{k}");
        }
    }
    let keys: BTreeSet<&str> = collection
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["controller", "io", "pool", "serial", "temperature"]),
        "{name}"
    );
}

#[test]
fn the_guard_stays_unless_sysfs_says_the_disk_cannot_spin() {
    let nas = Nas::new("guard");
    // No rotational flag: it may spin. A controller member behind an SSD's
    // name: the member itself may spin.
    std::fs::remove_file(nas.dir.join("root/sys/block/nvme0n1/queue/rotational")).unwrap();
    let a = nas.answers();
    let scan = std::fs::read_to_string(a.join("scan.txt")).unwrap();
    std::fs::write(
        a.join("scan.txt"),
        format!("{scan}/dev/sda -d megaraid,9\n"),
    )
    .unwrap();
    std::fs::copy(a.join("7@megaraid_0.json"), a.join("sda@megaraid_9.json")).unwrap();
    nas.smart().refresh(Instant::now());
    let calls = nas.take_calls();
    assert!(
        calls.contains(&probe_of("/dev/nvme0", "nvme", true)),
        "{calls:?}"
    );
    assert!(calls.contains(&probe_of("/dev/nvme1", "nvme", false)));
    assert!(calls.contains(&probe_of("/dev/sda", "megaraid,9", true)));
}

#[test]
fn an_excluded_nvme_namespace_is_not_probed_through_its_controller() {
    let nas = Nas::new("exclude");
    let mut smart = Smart::new(
        Root::new(nas.dir.join("root")).unwrap(),
        Settings {
            smartctl: Some(nas.answers().join("smartctl")),
            exclude: vec!["nvme0n1".into(), "/dev/sdb".into()],
            ..Settings::default()
        },
    );
    let r = smart.refresh(Instant::now());
    let calls = nas.take_calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.ends_with("/dev/nvme0") || c.ends_with("/dev/sdb")),
        "{calls:?}"
    );
    assert!(
        r.rows
            .iter()
            .all(|d| d.device != "nvme0n1" && d.device != "sdb")
    );
    assert!(r.rows.iter().any(|d| d.device == "nvme1n1"));
}

#[test]
fn a_swapped_disk_does_not_inherit_the_old_ones_values() {
    let nas = Nas::new("swap");
    std::fs::remove_file(nas.answers().join("sdc.asleep")).unwrap();
    let mut smart = nas.smart();
    let t0 = Instant::now();
    assert_eq!(row(&smart.refresh(t0), "sdc").serial, "WD-VGH1002K");
    // Another disk in the same bay, asleep when first asked.
    let dev = nas.dir.join("root/sys/block/sdc/device");
    std::fs::write(dev.join("wwid"), "naa.5000c500deadbeef\n").unwrap();
    std::fs::write(nas.answers().join("sdc.asleep"), "").unwrap();
    nas.use_disk("sdc");
    let r = smart.refresh(t0 + Duration::from_secs(300));
    let sdc = row(&r, "sdc");
    assert!(sdc.standby);
    assert_eq!(sdc.serial, "", "not the old disk's serial");
    assert_eq!(sdc.wwn, "naa.5000c500deadbeef");
    assert_eq!(sdc.health, smart::parse::Health::Unset);
}
