//! Unraid (`spec/pulse-collectors.md` §6.2, §1.7): the `disks.ini` and
//! `mdcmd status` parsers on the cases in `fixtures/unraid/` (expected
//! `unraid` JSON beside each), every status, role and transport rule, the
//! merge by slot and the #1612 count reconciliation, hostile input, the
//! collector on scratch roots (absent, mdcmd failing or hanging), the wire
//! schema, and SMART on a copy of the `unraid-nas` case: a member Unraid says
//! is spun down receives no smartctl command at all.
//!
//! `UPDATE_GOLDEN=1 cargo test --test unraid` rewrites the expected files.

mod common;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pulse_agent::collect::unraid::{
    self, Collector, ParseError, Unraid, UnraidDisk, merge, parse_disks_ini, parse_mdcmd, reconcile,
};
use pulse_agent::report;
use pulse_agent::root::Root;
use pulse_agent::smart::{Settings, Smart};
use serde_json::{Value, json};

fn cases_dir() -> PathBuf {
    common::fixtures_dir().join("unraid")
}

/// What the collector makes of a case's `NAME.mdcmd` and `NAME.disks.ini`.
fn parse_case(name: &str) -> Unraid {
    let read = |ext: &str| std::fs::read_to_string(cases_dir().join(format!("{name}.{ext}"))).ok();
    let md = read("mdcmd").map(|t| parse_mdcmd(&t).expect("mdcmd parses"));
    let ini = read("disks.ini")
        .map(|t| parse_disks_ini(&t).expect("disks.ini parses"))
        .unwrap_or_default();
    reconcile(merge(md, ini))
}

/// The case's `unraid` JSON, checked against the wire schema and its
/// `NAME.expect.json`.
fn golden(name: &str) -> Value {
    let doc = report::unraid(&parse_case(name));
    assert_schema(&doc);
    let path = cases_dir().join(format!("{name}.expect.json"));
    let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
    } else {
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
        assert_eq!(want, text, "{name}: differs from {}", path.display());
    }
    doc
}

/// `v` as a host report's `unraid` conforms to the wire schema.
fn assert_schema(v: &Value) {
    let doc = json!({
        "agent": {"id": "a"},
        "host": {"hostname": "tower"},
        "metrics": {"memory": {}},
        "sensors": {},
        "timestamp": "2026-08-22T14:52:27Z",
        "unraid": v,
    });
    let errs = common::wire::check_host_report(&doc);
    assert!(errs.is_empty(), "wire errors:\n{}", errs.join("\n"));
}

fn disk<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no disk {name} in {doc}"))
}

#[test]
fn issue1612_missing_count_comes_from_the_members_not_mdcmd() {
    let doc = golden("issue1612");
    assert_eq!(doc["arrayStarted"], true);
    assert_eq!(doc["arrayState"], "STARTED");
    assert_eq!(doc["syncAction"], "check");
    assert_eq!(doc["syncProgress"], 50.0);
    assert_eq!(doc["disks"].as_array().unwrap().len(), 7);
    assert_eq!(doc["numMissing"], 1, "mdcmd said 3; one member is missing");
    assert!(doc.get("numDisabled").is_none() && doc.get("numInvalid").is_none());
    assert_eq!(doc["numProtected"], 1);
    let d1 = disk(&doc, "disk1");
    assert_eq!(d1["model"], "TOSHIBA MG10ACA20TE");
    assert_eq!(d1["serial"], "X1P0A002");
    assert_eq!(d1["sizeBytes"], 39063650304u64 * 512);
    assert_eq!(d1["status"], "online");
    assert_eq!(d1["device"], "/dev/sdc");
    assert_eq!(disk(&doc, "disk6")["status"], "missing");
    assert_eq!(disk(&doc, "disk3")["spunDown"], true);
    assert_eq!(disk(&doc, "disk4")["transport"], "usb");
    assert_eq!(disk(&doc, "disk5")["transport"], "sas");
    assert_eq!(disk(&doc, "parity")["transport"], "sata");
    assert_eq!(disk(&doc, "parity")["role"], "parity");
    assert_eq!(disk(&doc, "disk2")["role"], "data");
}

#[test]
fn legacy_mdcmd_key_names() {
    let doc = golden("legacy-keys");
    // mdResync stands in for mdResyncPos; without a size, mdResyncPct.
    assert_eq!(doc["syncAction"], "recon d5");
    assert_eq!(doc["syncProgress"], 12.5);
    assert_eq!(doc["syncErrors"], 4);
    let p = disk(&doc, "parity");
    assert_eq!(p["device"], "/dev/sdb", "diskDevice");
    assert_eq!(p["status"], "online", "diskState");
    assert_eq!(p["serial"], "ZA1SERIAL0", "diskSerial");
    assert_eq!(p["sizeBytes"], 976762584u64 * 1024, "rdevSize in KiB");
    let d1 = disk(&doc, "disk1");
    assert_eq!(
        d1["serial"], "ST1000DM003_Z1D0SER1",
        "diskId is the serial as a whole"
    );
    assert_eq!(d1["filesystem"], "xfs");
    assert_eq!(d1["status"], "invalid");
    assert_eq!(disk(&doc, "disk2")["status"], "wrong");
    assert_eq!(disk(&doc, "disk3")["status"], "disabled");
    assert_eq!(disk(&doc, "disk4")["status"], "error");
    // disk5: DISK_NP without a device; slot 6 has only rdevSize (not a slot
    // key); slot 7 an unknown state, slot 8 an empty slot.
    assert_eq!(disk(&doc, "disk5")["status"], "missing");
    assert_eq!(disk(&doc, "disk7")["status"], "strange_state");
    let names: Vec<&str> = doc["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "parity", "disk1", "disk2", "disk3", "disk4", "disk5", "disk7"
        ]
    );
    // Re-counted: disk3 disabled, disk1 invalid, disk5 missing.
    assert_eq!(
        (&doc["numDisabled"], &doc["numInvalid"], &doc["numMissing"]),
        (&json!(1), &json!(1), &json!(1))
    );
}

#[test]
fn without_member_states_mdcmd_counts_stand() {
    let doc = golden("aggregates-only");
    assert_eq!(doc["arrayStarted"], false);
    assert_eq!(doc["arrayState"], "STOPPED");
    assert!(
        doc.get("syncAction").is_none(),
        "mdResyncPos 0: no sync runs"
    );
    assert!(doc.get("syncProgress").is_none());
    assert_eq!(
        (&doc["numDisabled"], &doc["numInvalid"], &doc["numMissing"]),
        (&json!(1), &json!(2), &json!(3))
    );
    assert!(doc.get("disks").is_none());
}

#[test]
fn disks_ini_alone_follows_every_rule() {
    let doc = golden("ini-only");
    assert_eq!(doc["arrayStarted"], false, "always sent");
    let p = disk(&doc, "parity");
    assert_eq!(p["model"], "WDC WD120EFBX-68B0EN0");
    assert_eq!(p["serial"], "D7H1ABCD");
    assert_eq!(p["transport"], "sata", "ATA, any case");
    assert_eq!(p["sizeBytes"], 23437770752u64 * 512);
    assert_eq!(p["temperature"], 38);
    assert!(p.get("spunDown").is_none(), "no");
    assert_eq!(
        (&p["readCount"], &p["writeCount"]),
        (&json!(123), &json!(45))
    );
    let d1 = disk(&doc, "disk1");
    assert_eq!(d1["device"], "/dev/sdc");
    assert_eq!(d1["serial"], "D7H1EFGH", "idSb");
    assert_eq!(d1["role"], "data", "array");
    assert_eq!(d1["status"], "disabled");
    assert_eq!(d1["sizeBytes"], 11718885376u64 * 1024, "size in KiB");
    assert_eq!(
        (&d1["usedBytes"], &d1["freeBytes"]),
        (&json!(1024000), &json!(2048000))
    );
    assert!(d1.get("temperature").is_none(), "na");
    assert_eq!(d1["spunDown"], true);
    assert_eq!(d1["errorCount"], 7);
    let d2 = disk(&doc, "disk2");
    assert_eq!(d2["model"], "NOUNDERSCORESERIAL");
    assert_eq!(
        d2["serial"], "NOUNDERSCORESERIAL",
        "no underscore: the whole id"
    );
    assert_eq!(d2["status"], "missing");
    assert_eq!(d2["transport"], "ssd", "rotational 0");
    assert_eq!(d2["sizeBytes"], 1024 * 1024, "sizeSb in KiB");
    assert_eq!(d2["spunDown"], true, "on");
    assert_eq!(d2["role"], "data", "from the name");
    let cache = disk(&doc, "cache");
    assert_eq!(
        (&cache["role"], &cache["transport"]),
        (&json!("cache"), &json!("nvme"))
    );
    assert_eq!(cache["model"], "Samsung SSD 980 PRO 2TB");
    let pool2 = disk(&doc, "pool2");
    assert_eq!(pool2["role"], "cache", "pool*");
    assert_eq!(pool2["status"], "online", "no status but a device");
    assert_eq!(pool2["transport"], "scsi", "kept, lowercased");
    assert!(pool2.get("sizeBytes").is_none() && pool2.get("temperature").is_none());
    // Two sections in slot 9: the later one's set fields win.
    let d9 = disk(&doc, "disk9");
    assert_eq!(
        (&d9["status"], &d9["rawStatus"]),
        (&json!("wrong"), &json!("DISK_WRONG"))
    );
    assert_eq!(
        (&d9["device"], &d9["temperature"]),
        (&json!("/dev/sdi"), &json!(33))
    );
    let flash = disk(&doc, "flash");
    assert_eq!(
        (&flash["role"], &flash["transport"]),
        (&json!("flash"), &json!("usb"))
    );
    assert_eq!(
        flash["serial"], "raw\\tid",
        "a raw `...` literal keeps its backslash"
    );
    let q = disk(&doc, "tab\there");
    assert_eq!(q["status"], "online", "unquoted OK");
    assert_eq!(q["role"], "c", "a 'c' rune literal");
    assert!(
        !doc["disks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "nameless"),
        "a section without a name is no member"
    );
    // Counts: disk1 disabled, disk2 missing; the flash and the rest online.
    assert_eq!(
        (&doc["numDisabled"], &doc["numMissing"]),
        (&json!(1), &json!(1))
    );
}

/// Every `status` mapping of the spec's table, through mdcmd's per-slot
/// keys (with and without a device) and through `disks.ini`.
#[test]
fn every_status_mapping() {
    let table = [
        ("DISK_OK", "sdb", "online"),
        ("OK", "sdb", "online"),
        ("disk_ok", "", "online"),
        ("DISK_DSBL", "sdb", "disabled"),
        ("DISK_DSBL_NEW", "sdb", "disabled"),
        ("DISABLED", "sdb", "disabled"),
        ("DISK_NP", "sdb", "missing"),
        ("DISK_NP_DSBL", "sdb", "missing"),
        ("MISSING", "sdb", "missing"),
        ("NOT_INSTALLED", "sdb", "missing"),
        ("DISK_INVALID", "sdb", "invalid"),
        ("DISK_WRONG", "sdb", "wrong"),
        ("DISK_ERROR", "sdb", "error"),
        ("", "sdb", "online"),
        ("", "", ""),
        ("Odd_State", "sdb", "odd_state"),
    ];
    for (raw, dev, want) in table {
        let md = parse_mdcmd(&format!(
            "mdState=STARTED\ndiskName.3=disk3\nrdevStatus.3={raw}\nrdevName.3={dev}\n"
        ))
        .unwrap();
        assert_eq!(md.disks[0].status, want, "mdcmd {raw:?} {dev:?}");
        assert_eq!(md.disks[0].raw_status, raw);
        let ini = parse_disks_ini(&format!(
            "[\"disk3\"]\nidx=\"3\"\nstatus=\"{raw}\"\ndevice=\"{dev}\"\n"
        ))
        .unwrap();
        assert_eq!(ini[0].status, want, "disks.ini {raw:?} {dev:?}");
    }
}

/// Every `role` rule: `type` (lowercased, `array` → `data`), else the name,
/// else the slot.
#[test]
fn every_role_mapping() {
    let ini = |name: &str, idx: &str, typ: &str| {
        let typ = if typ.is_empty() {
            String::new()
        } else {
            format!("type=\"{typ}\"\n")
        };
        let d = parse_disks_ini(&format!(
            "[\"{name}\"]\nidx=\"{idx}\"\ndevice=\"sdx\"\n{typ}"
        ))
        .unwrap();
        d[0].role.clone()
    };
    for (name, idx, typ, want) in [
        ("x", "5", "Parity", "parity"),
        ("x", "5", "Data", "data"),
        ("x", "5", "array", "data"),
        ("x", "5", "Cache", "cache"),
        ("x", "5", "Flash", "flash"),
        ("x", "5", "Special", "special"),
        ("parity2", "5", "", "parity"),
        ("disk7", "0", "", "data"),
        ("cache_nvme", "0", "", "cache"),
        ("pool2", "0", "", "cache"),
        ("flash", "0", "", "flash"),
        ("x", "0", "", "parity"),
        ("x", "29", "", "parity"),
        ("x", "1", "", "data"),
        ("x", "28", "", "data"),
        ("x", "30", "", "cache"),
        ("x", "-1", "", ""),
    ] {
        assert_eq!(ini(name, idx, typ), want, "{name} {idx} {typ}");
    }
    // mdcmd: no type, and unnamed slots get their default names.
    let md =
        parse_mdcmd("rdevName.0=sda\nrdevName.29=sdb\nrdevName.4=sdc\nrdevName.31=sdd\n").unwrap();
    let got: Vec<(&str, &str)> = md
        .disks
        .iter()
        .map(|d| (d.name.as_str(), d.role.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("parity", "parity"),
            ("disk4", "data"),
            ("parity29", "parity"),
            ("", "cache")
        ]
    );
}

#[test]
fn every_transport_mapping() {
    for (t, rot, want) in [
        ("ata", "1", "sata"),
        ("ATA", "0", "sata"),
        ("sata", "1", "sata"),
        ("sas", "0", "sas"),
        ("nvme", "0", "nvme"),
        ("usb", "1", "usb"),
        ("", "0", "ssd"),
        ("scsi", "0", "ssd"),
        ("scsi", "1", "scsi"),
        ("", "1", ""),
        ("", "", ""),
    ] {
        let d = parse_disks_ini(&format!(
            "[\"d\"]\ndevice=\"sdb\"\ntransport=\"{t}\"\nrotational=\"{rot}\"\n"
        ))
        .unwrap();
        assert_eq!(d[0].transport, want, "{t:?} {rot:?}");
    }
}

#[test]
fn size_temperature_and_identity_rules() {
    let one = |body: &str| {
        parse_disks_ini(&format!("[\"d\"]\ndevice=\"sdb\"\n{body}")).unwrap()[0].clone()
    };
    assert_eq!(
        one("sectors=\"10\"\nsector_size=\"4096\"\nsize=\"1\"").size_bytes,
        40960
    );
    assert_eq!(
        one("sectors=\"10\"\nsize=\"3\"").size_bytes,
        3072,
        "no sector size"
    );
    assert_eq!(one("size=\"\"\nsizeSb=\"2\"").size_bytes, 2048);
    // A product past 2^63 is not a disk: the KiB size stands in.
    assert_eq!(
        one("sectors=\"9223372036854775807\"\nsector_size=\"512\"\nsize=\"5\"").size_bytes,
        5120
    );
    assert_eq!(
        one("size=\"9223372036854775807\"").size_bytes,
        0,
        "KiB past 2^63 bytes"
    );
    assert_eq!(
        one("fsUsed=\"99999999999999999999\"").used_bytes,
        0,
        "past i64"
    );
    for (t, want) in [
        ("*", 0),
        ("na", 0),
        ("NA", 0),
        ("-4", 0),
        ("x", 0),
        ("45", 45),
    ] {
        assert_eq!(one(&format!("temp=\"{t}\"")).temperature, want, "{t}");
    }
    for (v, want) in [
        ("1", true),
        ("true", true),
        ("YES", true),
        ("on", true),
        ("0", false),
        ("no", false),
        ("", false),
    ] {
        assert_eq!(one(&format!("spundown=\"{v}\"")).spun_down, want, "{v}");
    }
    let d = one("id=\"Hitachi_HUS724040ALE641_PK1334PBH0XXXX\"");
    assert_eq!(
        (d.model.as_str(), d.serial.as_str()),
        ("Hitachi HUS724040ALE641", "PK1334PBH0XXXX")
    );
    let d = one("id=\"ENDS_\"");
    assert_eq!((d.model.as_str(), d.serial.as_str()), ("ENDS ", "ENDS_"));
}

#[test]
fn merge_by_slot_ini_wins_for_set_fields_and_for_spin_state() {
    let md = parse_mdcmd(
        "mdState=STARTED\ndiskName.1=disk1\nrdevName.1=sdb\nrdevStatus.1=DISK_DSBL\n\
         rdevSerial.1=MDSERIAL\ndiskFsType.1=xfs\ndiskSize.1=100\n\
         diskName.2=disk2\nrdevName.2=sdc\nrdevStatus.2=DISK_OK\n",
    )
    .unwrap();
    let ini = parse_disks_ini(
        "[\"disk1\"]\nidx=\"1\"\nstatus=\"\"\nid=\"M_INISERIAL\"\nspundown=\"1\"\ntemp=\"*\"\n\
         [\"cache\"]\nidx=\"30\"\ndevice=\"nvme0n1\"\ntransport=\"nvme\"\n",
    )
    .unwrap();
    let u = reconcile(merge(Some(md), ini));
    let names: Vec<&str> = u.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["disk1", "disk2", "cache"], "by slot");
    let d1 = &u.disks[0];
    assert_eq!(
        d1.device, "/dev/sdb",
        "disks.ini had no device: mdcmd's stays"
    );
    assert_eq!(
        d1.status, "disabled",
        "disks.ini's empty status does not win"
    );
    assert_eq!(d1.serial, "INISERIAL", "disks.ini's serial wins");
    assert_eq!(d1.model, "M");
    assert_eq!((d1.filesystem.as_str(), d1.size_bytes), ("xfs", 102400));
    assert!(d1.spun_down);
    assert_eq!(u.num_disabled, 1);
    assert!(u.array_started);
    // mdcmd failed: disks.ini alone, counts from it.
    let alone = reconcile(merge(
        None,
        parse_disks_ini("[\"disk1\"]\nidx=\"1\"\nstatus=\"DISK_NP\"\nid=\"A_B\"").unwrap(),
    ));
    assert!(!alone.array_started);
    assert_eq!(alone.num_missing, 1);
}

#[test]
fn mdcmd_without_key_value_lines_is_an_error() {
    for text in [
        "",
        "\n\n",
        "garbage\nno equals here\n",
        "=value\n",
        "\0\0\0",
    ] {
        assert_eq!(parse_mdcmd(text), Err(ParseError::NoFields), "{text:?}");
    }
    assert_eq!(ParseError::NoFields.to_string(), "no key=value fields");
}

// ---- hostile input ----

/// Runs `f` on a thread; it must finish within `limit` (a hang or
/// quadratic time would not).
fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what}: not done within {limit:?}"))
}

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn a_million_sections_or_slots_are_refused_quickly() {
    let ini: String = (0..1_000_000)
        .map(|i| format!("[\"d{i}\"]\nidx=\"{i}\"\n"))
        .collect();
    let r = within("1e6 sections", LIMIT, move || parse_disks_ini(&ini));
    assert_eq!(r, Err(ParseError::TooManyMembers));
    assert!(ParseError::TooManyMembers.to_string().contains("4096"));
    let md: String = (0..1_000_000)
        .map(|i| format!("diskName.{i}=d\n"))
        .collect();
    let r = within("1e6 slots", LIMIT, move || parse_mdcmd(&md));
    assert_eq!(r, Err(ParseError::TooManyMembers));
    // A million sections sharing 100 slots is just as many: refused too.
    let shared: String = (0..1_000_000)
        .map(|i| format!("[d]\nidx=\"{}\"\n", i % 100))
        .collect();
    assert!(within("1e6 shared", LIMIT, move || parse_disks_ini(&shared)).is_err());
}

#[test]
fn duplicate_slots_and_keys_fold_in_linear_time() {
    // 4096 sections, all in slot 7: one member, the last set values.
    let mut ini: String = (0..unraid::MAX_MEMBERS - 1)
        .map(|i| format!("[\"disk7\"]\nidx=\"7\"\ntemp=\"{}\"\n", i % 50 + 1))
        .collect();
    ini.push_str("[\"disk7\"]\nidx=\"7\"\ndevice=\"sdq\"\n");
    let disks = within("dup sections", LIMIT, move || {
        parse_disks_ini(&ini).unwrap()
    });
    assert_eq!(disks.len(), unraid::MAX_MEMBERS);
    let u = merge(None, disks);
    assert_eq!(u.disks.len(), 1);
    assert_eq!(u.disks[0].device, "/dev/sdq");
    assert_eq!(u.disks[0].temperature, 45, "the last one set");
    // A million repeats of one mdcmd key: the last wins.
    let mut md = "diskName.1=a\n".repeat(1_000_000);
    md.push_str("diskName.1=last\n");
    let u = within("dup keys", LIMIT, move || parse_mdcmd(&md).unwrap());
    assert_eq!(u.disks.len(), 1);
    assert_eq!(u.disks[0].name, "last");
}

#[test]
fn long_lines_nul_bytes_and_huge_numbers_do_not_panic() {
    let long = "x".repeat(10 * 1024 * 1024);
    let l1 = long.clone();
    within("long ini line", LIMIT, move || {
        let _ = parse_disks_ini(&l1);
        let _ = parse_disks_ini(&format!("[\"d\"]\nid=\"{l1}\"\n"));
        let _ = parse_disks_ini(&format!("[{l1}]\n"));
    });
    within("long mdcmd line", LIMIT, move || {
        let _ = parse_mdcmd(&long);
        let _ = parse_mdcmd(&format!("diskName.1={long}\n"));
        let _ = parse_mdcmd(&format!("{long}=1\n"));
    });
    let nul = "\0".repeat(100_000);
    assert!(parse_disks_ini(&nul).unwrap().is_empty());
    assert!(parse_mdcmd(&nul).is_err());
    let u = parse_mdcmd("mdState=STA\0RTED\ndiskName.1=d\0isk\nrdevStatus.1=DISK_\0OK\n").unwrap();
    assert!(!u.array_started);
    assert_eq!(u.disks[0].name, "d\0isk");
    let huge = "184467440737095516159999";
    let u = parse_mdcmd(&format!(
        "mdState=STARTED\nmdResyncPos={huge}\nmdResyncSize={huge}\nmdResyncAction=check\n\
         mdResyncPct={huge}\nmdNumMissing={huge}\nmdResyncCorr=-{huge}\n\
         diskName.{huge}=x\ndiskName.1=d\ndiskSize.1={huge}\n"
    ))
    .unwrap();
    assert_eq!(
        (u.sync_action.as_str(), u.sync_progress),
        ("", 0.0),
        "no valid position"
    );
    assert_eq!((u.num_missing, u.sync_errors), (0, 0));
    assert_eq!(u.disks.len(), 1);
    assert_eq!(u.disks[0].size_bytes, 0);
    // A progress past 100 %, negative, or NaN is clamped or left out.
    for (pct, want) in [("250", 100.0), ("-3", 0.0), ("NaN", 0.0), ("inf", 100.0)] {
        let u = parse_mdcmd(&format!(
            "mdResync=1\nmdResyncAction=check\nmdResyncPct={pct}\n"
        ))
        .unwrap();
        assert_eq!(u.sync_progress, want, "{pct}");
        assert_schema(&report::unraid(&u));
    }
    let u = parse_mdcmd("mdResyncPos=300\nmdResyncSize=100\nmdResyncAction=check\n").unwrap();
    assert_eq!(u.sync_progress, 100.0);
    // Garbage of every byte.
    let mut x = 1u32;
    let garbage: Vec<u8> = (0..200_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    let g = String::from_utf8_lossy(&garbage).into_owned();
    let _ = parse_disks_ini(&g);
    let _ = parse_mdcmd(&g);
    // Broken quoting and escapes are kept as written.
    let d =
        parse_disks_ini("[\"d\"]\nname=\"a\\\"\nid=\"\\xZZ_\\777\"\ntype=\"\\u00e9\"\n").unwrap();
    assert_eq!(d[0].name, "\"a\\\"");
    assert_eq!(d[0].role, "é");
}

// ---- the report function ----

#[test]
fn report_omits_empty_fields_and_always_sends_array_started() {
    assert_eq!(
        report::unraid(&Unraid::default()),
        json!({"arrayStarted": false})
    );
    let u = Unraid {
        array_started: true,
        array_state: "STARTED".into(),
        sync_action: "check".into(),
        sync_progress: 12.5,
        sync_errors: 3,
        num_protected: 2,
        num_missing: 1,
        disks: vec![
            UnraidDisk::default(),
            UnraidDisk {
                name: "disk1".into(),
                device: "/dev/sdb".into(),
                role: "data".into(),
                status: "online".into(),
                raw_status: "DISK_OK".into(),
                model: "M".into(),
                serial: "S".into(),
                filesystem: "xfs".into(),
                transport: "sata".into(),
                size_bytes: 8001563222016,
                used_bytes: 1024,
                free_bytes: 2048,
                temperature: 35,
                spun_down: true,
                read_count: -1,
                write_count: 2,
                error_count: 3,
                slot: 1,
            },
        ],
        ..Unraid::default()
    };
    let v = report::unraid(&u);
    assert_schema(&v);
    assert_eq!(
        v,
        json!({
            "arrayStarted": true, "arrayState": "STARTED", "syncAction": "check",
            "syncProgress": 12.5, "syncErrors": 3, "numProtected": 2, "numMissing": 1,
            "disks": [
                {"name": ""},
                {"name": "disk1", "device": "/dev/sdb", "role": "data", "status": "online",
                 "rawStatus": "DISK_OK", "model": "M", "serial": "S", "filesystem": "xfs",
                 "transport": "sata", "sizeBytes": 8001563222016u64, "usedBytes": 1024,
                 "freeBytes": 2048, "temperature": 35, "spunDown": true, "readCount": -1,
                 "writeCount": 2, "errorCount": 3, "slot": 1}
            ]
        })
    );
    let text = serde_json::to_string(&v).unwrap();
    assert!(
        text.contains("\"sizeBytes\":8001563222016"),
        "integers: {text}"
    );
}

#[test]
fn wire_schema_rejects_a_mistyped_unraid() {
    let doc = json!({
        "agent": {"id": "a"}, "host": {"hostname": "h"}, "metrics": {"memory": {}},
        "sensors": {}, "timestamp": "2026-08-22T14:52:27Z",
        "unraid": {"disks": [{"sizeBytes": 1.5, "bogus": 1}]},
    });
    let errs = common::wire::check_host_report(&doc).join("\n");
    for want in [
        "$.unraid.arrayStarted: missing",
        "$.unraid.disks[0].name: missing",
        "$.unraid.disks[0].sizeBytes",
        "$.unraid.disks[0].bogus",
    ] {
        assert!(errs.contains(want), "{want} not in:\n{errs}");
    }
}

// ---- the collector on scratch roots ----

/// A captured root in a temporary directory.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("unraid-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(".capture/bin")).unwrap();
        std::fs::create_dir_all(dir.join(".capture/cmd")).unwrap();
        Scratch(dir)
    }
    fn write(&self, rel: &str, text: &str) {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    fn with_mdcmd(&self) {
        std::os::unix::fs::symlink(common::fake_program(), self.0.join(".capture/bin/mdcmd"))
            .unwrap();
    }
    fn collector(&self) -> Collector {
        Collector::new(Root::new(&self.0).unwrap())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

const INI: &str = "[\"disk1\"]\nidx=\"1\"\ndevice=\"sdb\"\nstatus=\"DISK_OK\"\n";

#[test]
fn not_unraid_is_absent_without_running_anything() {
    let s = Scratch::new("absent");
    s.with_mdcmd();
    s.write(".capture/cmd/calls.log", "");
    s.write("var/local/emhttp/disks.ini", INI);
    assert_eq!(s.collector().collect(soon()), Ok(None));
    assert_eq!(
        std::fs::read_to_string(s.0.join(".capture/cmd/calls.log")).unwrap(),
        ""
    );
    assert_eq!(unraid::MODULE, "unraid");
}

#[test]
fn unraid_version_that_cannot_be_checked_is_an_error() {
    let s = Scratch::new("stat-error");
    s.write("etc", "a file where /etc should be a directory");
    let e = s.collector().collect(soon()).unwrap_err();
    assert!(e.contains("/etc/unraid-version"), "{e}");
}

#[test]
fn mdcmd_and_disks_ini_are_merged() {
    let s = Scratch::new("both");
    s.write("etc/unraid-version", "version=\"7.1.4\"\n");
    s.write("var/local/emhttp/disks.ini", INI);
    s.with_mdcmd();
    s.write(
        ".capture/cmd/mdcmd status",
        "mdState=STARTED\ndiskName.1=disk1\nrdevStatus.1=DISK_DSBL\nmdNumDisabled=0\n",
    );
    let mut c = s.collector();
    let u = c.collect(soon()).unwrap().unwrap();
    assert!(u.array_started);
    assert_eq!((u.disks.len(), u.disks[0].status.as_str()), (1, "online"));
    assert_eq!(u.num_disabled, 0);
    assert_eq!(c.note(), None);
}

#[test]
fn mdcmd_failing_leaves_disks_ini_alone_with_a_note() {
    let s = Scratch::new("mdcmd-fails");
    s.write("etc/unraid-version", "version=\"7.1.4\"\n");
    s.write("var/local/emhttp/disks.ini", INI);
    // No mdcmd at all.
    let mut c = s.collector();
    let u = c.collect(soon()).unwrap().unwrap();
    assert_eq!((u.array_started, u.disks.len()), (false, 1));
    assert!(
        c.note().unwrap().contains("mdcmd not found"),
        "{:?}",
        c.note()
    );
    // mdcmd exits 1.
    s.with_mdcmd();
    s.write(".capture/cmd/mdcmd status.exit", "1\n");
    s.write(".capture/cmd/mdcmd status.stderr", "md: not ready\n");
    let u = c.collect(soon()).unwrap().unwrap();
    assert_eq!(u.disks.len(), 1);
    assert!(
        c.note().unwrap().contains("exit 1: md: not ready"),
        "{:?}",
        c.note()
    );
    // Without disks.ini, the failure is the run's error.
    std::fs::remove_file(s.0.join("var/local/emhttp/disks.ini")).unwrap();
    let e = c.collect(soon()).unwrap_err();
    assert!(e.starts_with("mdcmd status: exit 1"), "{e}");
}

#[test]
fn a_hung_mdcmd_costs_at_most_its_timeout() {
    let s = Scratch::new("mdcmd-hangs");
    s.write("etc/unraid-version", "version=\"7.1.4\"\n");
    s.write("var/local/emhttp/disks.ini", INI);
    s.with_mdcmd();
    s.write(".capture/cmd/mdcmd status.hang", "");
    let mut c = s.collector();
    let started = Instant::now();
    let u = c
        .collect(started + Duration::from_secs(30))
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(
        took < unraid::MDCMD_TIMEOUT + Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(u.disks.len(), 1);
    assert!(
        c.note().unwrap().contains("no answer within 3 s"),
        "{:?}",
        c.note()
    );
    // A deadline nearer than the timeout is kept.
    std::fs::remove_file(s.0.join("var/local/emhttp/disks.ini")).unwrap();
    let started = Instant::now();
    let _ = c.collect(started + Duration::from_millis(500));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn mdcmd_output_on_stderr_counts_and_an_oversized_disks_ini_is_not_used() {
    let s = Scratch::new("stderr");
    s.write("etc/unraid-version", "version=\"7.1.4\"\n");
    s.with_mdcmd();
    s.write(".capture/cmd/mdcmd status", "mdState=STARTED\n");
    s.write(
        ".capture/cmd/mdcmd status.stderr",
        "diskName.2=disk2\nrdevName.2=sdc\n",
    );
    s.write(
        "var/local/emhttp/disks.ini",
        &format!("{INI}; {}\n", "x".repeat(unraid::DISKS_INI_CAP)),
    );
    let mut c = s.collector();
    let u = c.collect(soon()).unwrap().unwrap();
    let names: Vec<&str> = u.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["disk2"], "combined output; disks.ini refused");
    assert!(c.note().unwrap().contains("larger than"), "{:?}", c.note());
}

// ---- SMART on Unraid ----

/// A writable copy of the unraid-nas case whose fakes record their calls.
struct Tower(PathBuf);

impl Tower {
    fn new(name: &str) -> Tower {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("unraid-smart-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let case = common::fixtures_dir().join("unraid-nas");
        common::copy_tree(&case.join("root"), &dir.join("root"));
        common::copy_tree(&case.join("smartctl"), &dir.join("smartctl"));
        // The links are relative to the case: point them at the fakes.
        let fix = |link: PathBuf, to: PathBuf| {
            std::fs::remove_file(&link).unwrap();
            std::os::unix::fs::symlink(to, &link).unwrap();
        };
        fix(
            dir.join("smartctl/smartctl"),
            common::fixtures_dir()
                .parent()
                .unwrap()
                .join("fake-smartctl"),
        );
        fix(dir.join("root/.capture/bin/mdcmd"), common::fake_program());
        std::fs::write(dir.join("smartctl/calls.log"), "").unwrap();
        std::fs::write(dir.join("root/.capture/cmd/calls.log"), "").unwrap();
        Tower(dir)
    }

    fn smart(&self, exclude: &[&str], max_age: Duration) -> Smart {
        Smart::new(
            Root::new(self.0.join("root")).unwrap(),
            Settings {
                smartctl: Some(self.0.join("smartctl/smartctl")),
                max_age,
                exclude: exclude.iter().map(|s| s.to_string()).collect(),
                ..Settings::default()
            },
        )
    }

    fn take(&self, rel: &str) -> String {
        let p = self.0.join(rel);
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        std::fs::write(&p, "").unwrap();
        text
    }

    fn use_all_disks(&self) {
        let p = self.0.join("root/proc/diskstats");
        let text = std::fs::read_to_string(&p).unwrap();
        let out: Vec<String> = text
            .lines()
            .map(|l| {
                let mut f: Vec<String> = l.split_whitespace().map(str::to_string).collect();
                f[3] = (f[3].parse::<u64>().unwrap() + 100).to_string();
                f.join(" ")
            })
            .collect();
        std::fs::write(&p, out.join("\n") + "\n").unwrap();
    }
}

impl Drop for Tower {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SPUN_DOWN: [&str; 4] = ["sdc", "sde", "sdf", "sdh"];

fn naming(calls: &str, dev: &str) -> Vec<String> {
    calls
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == format!("/dev/{dev}")))
        .map(str::to_string)
        .collect()
}

#[test]
fn disks_unraid_spun_down_receive_no_smartctl_command() {
    let t = Tower::new("spun-down");
    let mut smart = t.smart(&[], Duration::from_secs(6 * 3600));
    let r = smart.refresh(Instant::now());
    let calls = t.take("smartctl/calls.log");
    for dev in SPUN_DOWN {
        assert!(
            naming(&calls, dev).is_empty(),
            "{dev} was asked: {:?}",
            naming(&calls, dev)
        );
    }
    assert_eq!(t.take("smartctl/woken.log"), "");
    // The awake members were asked, with Unraid's transport (SATA: `-d sat`).
    for dev in ["sdb", "sdd", "sdg"] {
        assert_eq!(
            naming(&calls, dev),
            [format!("-d sat -n standby,3 -i -A -H --json=o /dev/{dev}")],
            "{calls}"
        );
    }
    assert!(
        calls.contains("/dev/nvme0") && !calls.contains("--scan-open"),
        "{calls}"
    );
    assert_eq!(t.take("root/.capture/cmd/calls.log"), "mdcmd status\n");
    let devices: Vec<&str> = r.rows.iter().map(|d| d.device.as_str()).collect();
    assert_eq!(
        &devices[..4],
        SPUN_DOWN,
        "Unraid's sleeping members first, by device"
    );
    for d in &r.rows[..4] {
        assert!(d.standby);
        assert_eq!(d.health.as_str(), "UNKNOWN");
        assert_eq!(d.collection.temperature.source, "unraid");
        assert_eq!(
            d.collection.temperature.reason,
            "disk is reported spun down"
        );
    }
    assert_eq!(r.rows.iter().filter(|d| d.standby).count(), 4);
    assert_eq!(r.standby, 4);

    // Later refreshes: the disks were used and --smart-max-age passed; still
    // nothing reaches them, and Unraid is read again each time.
    t.use_all_disks();
    let mut eager = t.smart(&[], Duration::ZERO);
    for _ in 0..2 {
        let r = eager.refresh(Instant::now());
        assert_eq!(
            &r.rows.iter().map(|d| d.device.as_str()).collect::<Vec<_>>()[..4],
            SPUN_DOWN
        );
    }
    let calls = t.take("smartctl/calls.log");
    for dev in SPUN_DOWN {
        assert!(
            naming(&calls, dev).is_empty(),
            "{dev} was asked later: {calls}"
        );
    }
    assert!(
        !naming(&calls, "sdb").is_empty(),
        "awake disks are asked again"
    );
    assert_eq!(
        t.take("root/.capture/cmd/calls.log"),
        "mdcmd status\nmdcmd status\n"
    );
    assert_eq!(t.take("smartctl/woken.log"), "");
}

#[test]
fn a_sleeping_member_nobody_lists_still_gets_its_row_and_excluded_ones_none() {
    let t = Tower::new("unlisted");
    let ini = t.0.join("root/var/local/emhttp/disks.ini");
    let mut text = std::fs::read_to_string(&ini).unwrap();
    text.push_str("[\"disk7\"]\nidx=\"7\"\nname=\"disk7\"\ndevice=\"sdz\"\nspundown=\"1\"\ntransport=\"sas\"\nsize=\"4\"\n");
    std::fs::write(&ini, text).unwrap();
    let mut smart = t.smart(&["sde"], Duration::from_secs(6 * 3600));
    let r = smart.refresh(Instant::now());
    let devices: Vec<&str> = r.rows.iter().map(|d| d.device.as_str()).collect();
    assert_eq!(&devices[..4], ["sdc", "sdf", "sdh", "sdz"]);
    assert!(!devices.contains(&"sde"), "excluded: {devices:?}");
    let sdz = &r.rows[3];
    assert_eq!(
        (sdz.kind.as_str(), sdz.size_bytes, sdz.serial.as_str()),
        ("sas", 4096, "")
    );
    assert_eq!(sdz.collection.serial.state, "missing");
    let calls = t.take("smartctl/calls.log");
    for dev in ["sdc", "sde", "sdf", "sdh", "sdz"] {
        assert!(naming(&calls, dev).is_empty(), "{dev}: {calls}");
    }
}

#[test]
fn without_mdcmd_disks_ini_still_keeps_smartctl_away() {
    let t = Tower::new("no-mdcmd");
    std::fs::write(t.0.join("root/.capture/cmd/mdcmd status.exit"), "1\n").unwrap();
    let r = t
        .smart(&[], Duration::from_secs(3600))
        .refresh(Instant::now());
    assert!(r.rows[..4].iter().all(|d| d.standby));
    let calls = t.take("smartctl/calls.log");
    for dev in SPUN_DOWN {
        assert!(naming(&calls, dev).is_empty(), "{dev}: {calls}");
    }
}

#[test]
fn unraid_transport_decides_the_probe_types_and_the_row_type() {
    let t = Tower::new("transport");
    let ini = t.0.join("root/var/local/emhttp/disks.ini");
    let text = std::fs::read_to_string(&ini).unwrap();
    // disk1 (sdd): sysfs and smartctl say SATA; Unraid says SAS.
    let text = text.replacen(
        "device=\"sdd\"\nid=\"ST16000NM001G-2KK103_ZL2DISK01\"\ntype=\"Data\"\nstatus=\"DISK_OK\"\nfsType=\"xfs\"\ntransport=\"ata\"",
        "device=\"sdd\"\nid=\"ST16000NM001G-2KK103_ZL2DISK01\"\ntype=\"Data\"\nstatus=\"DISK_OK\"\nfsType=\"xfs\"\ntransport=\"sas\"",
        1,
    );
    assert!(text.contains("transport=\"sas\""), "the fixture changed");
    std::fs::write(&ini, text).unwrap();
    let r = t
        .smart(&[], Duration::from_secs(3600))
        .refresh(Instant::now());
    let calls = t.take("smartctl/calls.log");
    // The scan's `-d sat` does not fit a SAS disk: untyped first.
    assert_eq!(
        naming(&calls, "sdd"),
        ["-n standby,3 -i -A -H --json=o /dev/sdd"],
        "{calls}"
    );
    let sdd = r.rows.iter().find(|d| d.device == "sdd").unwrap();
    assert_eq!(sdd.kind, "sas", "Unraid's word wins over smartctl's");
    let sdb = r.rows.iter().find(|d| d.device == "sdb").unwrap();
    assert_eq!(sdb.kind, "sata");
}
