//! Fixture-tree tests: each case under `fixtures/` is a captured or
//! synthesized host; its report (time, sequence and privilege pinned) must
//! match the case's golden `report.json` and the wire schema. Plus hosts built
//! in temporary directories: huge and hostile pseudo-files, hung and slow mounts.
//!
//! `UPDATE_GOLDEN=1 cargo test --test fixtures` rewrites the golden files.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::wire::check_host_report;
use pulse_agent::collect::{self, Host, Options, Outcome};
use pulse_agent::root::Root;
use serde_json::{Value, json};

fn golden(case: &str) -> Value {
    let doc = common::pinned_report(case);
    let errs = check_host_report(&doc);
    assert!(errs.is_empty(), "{case}: wire errors:\n{}", errs.join("\n"));
    common::assert_golden(case, &doc);
    doc
}

#[test]
fn debian12_vm() {
    let doc = golden("debian12-vm");
    assert_eq!(doc["host"]["osName"], "debian");
    assert_eq!(doc["host"]["id"], "3d1219c7-c4c5-404a-aa1f-6d2a48adfda4");
}

#[test]
fn gpu_vm_16core() {
    let doc = golden("gpu-vm-16core");
    assert_eq!(doc["host"]["cpuCount"], 16);
    assert_eq!(doc["host"]["osName"], "ubuntu");
    assert_eq!(doc["host"]["osVersion"], "24.04");
    // No /etc/machine-id: the first non-virtual interface's MAC stands in.
    assert_eq!(doc["host"]["id"], "mac-02fc00000001");
    assert_eq!(
        doc["disks"].as_array().unwrap().len(),
        1,
        "only / survives the filters"
    );
}

#[test]
fn nas_synology() {
    let doc = golden("nas-synology");
    assert_eq!(doc["host"]["osName"], "Synology DSM");
    let mounts = mountpoints(&doc);
    assert!(mounts.contains(&"/volume1".to_string()), "{mounts:?}");
    assert!(
        !mounts.iter().any(|m| m.contains("@docker")),
        "docker subvolumes folded into /volume1: {mounts:?}"
    );
    assert!(
        !mounts.iter().any(|m| m.starts_with("/mnt/")),
        "network mounts are filtered: {mounts:?}"
    );
}

#[test]
fn nas_smart() {
    let doc = golden("nas-smart");
    let rows = doc["sensors"]["smart"].as_array().unwrap();
    let devices: Vec<&str> = rows.iter().map(|r| r["device"].as_str().unwrap()).collect();
    // 12 SATA, 2 NVMe (by namespace), 4 MegaRAID members, and the RAID
    // volume from sysfs alone; no md, loop, dm, zram or empty card reader.
    assert_eq!(rows.len(), 19, "{devices:?}");
    assert_eq!(devices.iter().filter(|d| d.starts_with("sd")).count(), 13);
    assert!(devices.contains(&"nvme0n1") && devices.contains(&"nvme1n1"));
    assert_eq!(
        devices.iter().filter(|d| d.contains("[megaraid,")).count(),
        4
    );
    let asleep: Vec<&str> = rows
        .iter()
        .filter(|r| r["standby"] == true)
        .map(|r| r["device"].as_str().unwrap())
        .collect();
    assert_eq!(asleep, ["sdc", "sdf", "sdi", "sdl"]);
    for r in rows {
        let h = r["health"].as_str().unwrap_or("");
        assert!(["", "PASSED", "FAILED", "UNKNOWN"].contains(&h), "{r}");
    }
    let sdh = rows.iter().find(|r| r["device"] == "sdh").unwrap();
    assert_eq!(sdh["attributes"]["reallocatedSectors"], 8);
    assert_eq!(sdh["attributes"]["pendingSectors"], 2);
    let sdm = rows.iter().find(|r| r["device"] == "sdm").unwrap();
    assert_eq!(
        sdm["health"], "UNKNOWN",
        "the RAID volume itself has no SMART"
    );
}

#[test]
fn unraid_nas() {
    let doc = golden("unraid-nas");
    assert_eq!(doc["host"]["osName"], "Unraid");
    let rows = doc["sensors"]["smart"].as_array().unwrap();
    let devices: Vec<&str> = rows.iter().map(|r| r["device"].as_str().unwrap()).collect();
    // Unraid's four spun-down members first, by device, from Unraid's facts
    // alone (sdh is not even in the scan); then the probed disks; then the
    // flash drive smartctl could not read.
    assert_eq!(
        devices,
        [
            "sdc", "sde", "sdf", "sdh", "sdb", "sdd", "sdg", "nvme0n1", "nvme1n1", "sda"
        ]
    );
    for r in &rows[..4] {
        assert_eq!(r["standby"], true, "{r}");
        assert_eq!(r["health"], "UNKNOWN", "{r}");
        assert_eq!(r["type"], "sata", "{r}");
        assert_eq!(r["temperature"], 0, "{r}");
        assert_eq!(r["collection"]["temperature"]["source"], "unraid", "{r}");
        assert_eq!(
            r["collection"]["temperature"]["reason"], "disk is reported spun down",
            "{r}"
        );
        assert_eq!(r["collection"]["serial"]["source"], "unraid", "{r}");
    }
    let sde = &rows[1];
    assert_eq!(sde["model"], "WDC WD80EFZZ-68BTXN0");
    assert_eq!(sde["serial"], "WD-CA0DISK2");
    assert_eq!(sde["sizeBytes"], 15628053168u64 * 512);
    for r in &rows[4..9] {
        assert!(r["standby"].is_null(), "awake members are probed: {r}");
        assert_eq!(r["health"], "PASSED", "{r}");
    }
    assert_eq!(rows[7]["type"], "nvme");
    assert_eq!(rows[9]["type"], "usb", "Unraid's transport for the flash");

    // The array itself: a parity check at 50 %; the counts are the members'
    // own (mdcmd's stale mdNumMissing=3 is not sent).
    let u = &doc["unraid"];
    assert_eq!(u["arrayStarted"], true);
    assert_eq!(u["syncAction"], "check p q");
    assert_eq!(u["syncProgress"], 50.0);
    assert_eq!(
        (&u["numDisabled"], &u["numMissing"]),
        (&json!(1), &json!(1))
    );
    let members = u["disks"].as_array().unwrap();
    assert_eq!(members.len(), 11);
    let spun: Vec<&str> = members
        .iter()
        .filter(|d| d["spunDown"] == true)
        .map(|d| d["device"].as_str().unwrap())
        .collect();
    assert_eq!(spun, ["/dev/sde", "/dev/sdf", "/dev/sdh", "/dev/sdc"]);
    let cache: Vec<&Value> = members.iter().filter(|d| d["role"] == "cache").collect();
    assert!(cache.len() == 2 && cache.iter().all(|d| d["transport"] == "nvme"));
    assert!(
        doc["agent"]["modules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "unraid" && m["state"] == "running")
    );
}

#[test]
fn nas_truenas() {
    let doc = golden("nas-truenas");
    let zfs: Vec<&Value> = doc["disks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["type"] == "zfs")
        .collect();
    let pools: Vec<&str> = zfs.iter().map(|d| d["device"].as_str().unwrap()).collect();
    assert_eq!(pools, ["boot-pool", "tank"], "one entry per pool");
    assert!(
        !mountpoints(&doc)
            .iter()
            .any(|m| m.starts_with("/mnt/.ix-apps/docker"))
    );
}

#[test]
fn sbc_rpi4() {
    let doc = golden("sbc-rpi4");
    assert_eq!(doc["host"]["cpuModel"], "ARM Cortex-A72");
    assert_eq!(doc["host"]["architecture"], "aarch64");
    assert_eq!(doc["host"]["osName"], "raspbian");
    // /dev/root is resolved through /sys/dev/block.
    let root = doc["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["mountpoint"] == "/")
        .unwrap();
    assert_eq!(root["device"], "/dev/mmcblk0p2");
}

#[test]
fn lxc_debian() {
    let doc = golden("lxc-debian");
    assert_eq!(doc["host"]["cpuCount"], 2);
    // The host's ARC (visible in /proc/spl) is not taken off the container's memory.
    assert_eq!(doc["metrics"]["memory"]["usedBytes"], 346030080u64);
    let root = doc["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["mountpoint"] == "/")
        .unwrap();
    assert_eq!(
        root["device"], "/dev/mapper/pve-vm--105--disk--0",
        "unresolvable mapper names stay as they are"
    );
    assert_eq!(doc["network"][0]["name"], "eth0");
    // A ZFS dataset bind-mounted into the container, at a path with a space:
    // named after its pool, not the bind's subdirectory.
    let consume = doc["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["mountpoint"] == "/mnt/Paperless Consume")
        .expect("the \\040-escaped mount point");
    assert_eq!(consume["device"], "rpool");
}

#[test]
fn pve_ceph() {
    let doc = golden("pve-ceph");
    assert_eq!(doc["host"]["osName"], "Proxmox VE");
    assert_eq!(doc["host"]["osVersion"], "8.3.2");
    assert_eq!(doc["host"]["hostname"], "pve1");
    // What the case's answers promise (README.md), then what the report
    // makes of them.
    let cmd = common::case_root("pve-ceph").join(".capture/cmd");
    let json = |key: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(cmd.join(key)).unwrap()).unwrap()
    };
    let status = json("ceph status --format json");
    assert_eq!(status["health"]["status"], "HEALTH_WARN");
    assert_eq!(status["health"]["checks"].as_object().unwrap().len(), 1);
    assert!(
        status["monmap"].get("mons").is_none(),
        "Squid: no mons array"
    );
    assert_eq!(status["quorum_names"].as_array().unwrap().len(), 3);
    assert_eq!(status["osdmap"]["num_up_osds"], 5);
    assert_eq!(status["osdmap"]["num_in_osds"], 6);
    assert_eq!(status["mgrmap"]["num_standbys"], 1);
    let pools = json("ceph df --format json");
    assert_eq!(pools["pools"].as_array().unwrap().len(), 3);
    let list = std::fs::read_to_string(cmd.join("pct list")).unwrap();
    let running = collect::pct::parse_list(&list).unwrap();
    assert_eq!(
        running.iter().map(|r| r.vmid).collect::<Vec<_>>(),
        [100, 101, 103],
        "102 is stopped"
    );

    let c = &doc["ceph"];
    assert_eq!(c["health"]["status"], "HEALTH_WARN");
    assert_eq!(c["monMap"]["numMons"], 3, "counted from the quorum (Squid)");
    assert_eq!(
        (&c["mgrMap"]["numMgrs"], &c["mgrMap"]["standbys"]),
        (&json!(2), &json!(1))
    );
    assert_eq!(
        (&c["osdMap"]["numUp"], &c["osdMap"]["numDown"]),
        (&json!(5), &json!(1))
    );
    assert_eq!(c["pools"].as_array().unwrap().len(), 3);
    let lxc = &doc["proxmoxLxc"]["containers"];
    let got: Vec<(u64, Vec<&str>)> = lxc
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mounts = c["disks"].as_array().unwrap();
            let paths = mounts.iter().map(|d| d["mountpoint"].as_str().unwrap());
            (c["vmid"].as_u64().unwrap(), paths.collect())
        })
        .collect();
    assert_eq!(
        got,
        [
            (100, vec!["/"]),
            (101, vec!["/", "/mnt/nextcloud data"]),
            (103, vec!["/", "/srv/media"])
        ]
    );
    let modules: Vec<(&str, &str)> = doc["agent"]["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["state"].as_str().unwrap()))
        .collect();
    assert!(modules.contains(&("ceph", "running")), "{modules:?}");
    assert!(modules.contains(&("proxmox-lxc-filesystems", "running")));
}

/// Every case directory has a named test above.
#[test]
fn every_case_is_tested() {
    let src = std::fs::read_to_string(file!()).unwrap();
    for case in common::cases() {
        assert!(
            src.contains(&format!("golden(\"{case}\")")),
            "fixture case {case} has no test"
        );
    }
}

fn mountpoints(doc: &Value) -> Vec<String> {
    doc["disks"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|x| x["mountpoint"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A scratch host tree under the test target's temporary directory.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // A captured root: no fact (addresses, statvfs) comes from this machine.
        std::fs::create_dir_all(dir.join(".capture")).unwrap();
        Scratch(dir)
    }

    fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn root(&self) -> Root {
        Root::new(&self.0).unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn source<'a>(snap: &'a collect::HostSnapshot, name: &str) -> &'a collect::SourceStatus {
    snap.sources.iter().find(|s| s.name == name).unwrap()
}

/// 10,000 mounts (a container host) and a 10 MB meminfo: the report still
/// comes out, with every real filesystem in it.
#[test]
fn huge_mountinfo_and_meminfo() {
    let s = Scratch::new("huge");
    common::hostile::write_big_host(&s.0);
    let started = Instant::now();
    let mut host = Host::new(s.root(), Options::default());
    let snap = host.collect();
    let took = started.elapsed();
    assert_eq!(
        snap.filesystems.len(),
        100,
        "every ext4 mount, nothing else"
    );
    assert_eq!(snap.memory.unwrap().total, 16303748 * 1024);
    assert_eq!(source(&snap, "filesystems").outcome, Outcome::Ok);
    eprintln!("10,000 mounts + 10 MB meminfo: one collection took {took:?}");
}

/// Garbage, binary and truncated files in every source: each source fails or
/// is absent on its own and the report is still built and well-typed.
#[test]
fn hostile_files_fail_only_their_own_source() {
    let s = Scratch::new("hostile");
    let garbage: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for f in [
        "proc/uptime",
        "proc/loadavg",
        "proc/stat",
        "proc/meminfo",
        "proc/diskstats",
        "proc/net/dev",
        "proc/1/mountinfo",
        "proc/cpuinfo",
        "etc/os-release",
    ] {
        s.write(f, &garbage);
    }
    s.write("proc/sys/kernel/hostname", "hostile\n");
    let mut config =
        common::config_for(&["--once".into(), "--root".into(), s.0.display().to_string()]);
    config.agent_id_file = common::no_state_dir().join("agent-id");
    let doc = common::report_for(&config);
    let errs = check_host_report(&doc);
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    assert_eq!(doc["host"]["hostname"], "hostile");
}

fn nfs_host(line: &str) -> Scratch {
    let s = Scratch::new("nfs");
    s.write(
        "proc/1/mountinfo",
        "27 1 254:0 / / rw - ext4 /dev/vda rw\n40 27 0:50 / /mnt/nfs rw - nfs4 srv:/export rw\n41 27 254:1 / /data rw - xfs /dev/vdb rw\n",
    );
    s.write(
        ".capture/statvfs",
        format!("/ 4096 100 50 40\n/data 4096 200 100 100\n{line}\n"),
    );
    s
}

fn options_including_nfs(timeout: Duration) -> Options {
    Options {
        disk_include: vec!["/mnt/nfs".into()],
        statfs_timeout: timeout,
        statfs_budget: timeout * 4,
        ..Options::default()
    }
}

/// A hung NFS mount costs one deadline, is left out, and is not asked again
/// while its call is still hanging; the other mounts are reported every time.
#[test]
fn hung_mount_is_skipped_and_not_retried() {
    let s = nfs_host("/mnt/nfs hang");
    let mut host = Host::new(s.root(), options_including_nfs(Duration::from_millis(300)));
    for cycle in 0..3 {
        let snap = host.collect();
        let mps: Vec<&str> = snap
            .filesystems
            .iter()
            .map(|f| f.mountpoint.as_str())
            .collect();
        assert_eq!(mps, ["/", "/data"], "cycle {cycle}");
        let warnings = &source(&snap, "filesystems").warnings;
        let want = if cycle == 0 {
            "did not answer in time"
        } else {
            "has not returned since an earlier cycle"
        };
        assert!(
            warnings.iter().any(|w| w.contains(want)),
            "cycle {cycle}: {warnings:?}"
        );
    }
}

fn hanging_host(name: &str) -> Scratch {
    let s = Scratch::new(name);
    s.write(
        "proc/1/mountinfo",
        "27 1 254:0 / / rw - ext4 /dev/vda rw\n\
         41 27 254:1 / /a rw - xfs /dev/vdb rw\n\
         42 27 254:2 / /b rw - xfs /dev/vdc rw\n\
         43 27 254:3 / /c rw - xfs /dev/vdd rw\n\
         44 27 254:4 / /d rw - xfs /dev/vde rw\n",
    );
    s.write(
        ".capture/statvfs",
        "/ 4096 100 50 40\n/a hang\n/b 4096 200 100 100\n/c hang\n/d 4096 300 100 100\n",
    );
    s
}

/// The mounts of a cycle go to the statvfs thread together; one that hangs
/// costs its deadline, and the mounts after it are still measured (by a
/// fresh thread) in the same cycle.
#[test]
fn mounts_after_a_hung_one_are_measured_in_the_same_cycle() {
    let s = hanging_host("hangs");
    let opts = Options {
        statfs_timeout: Duration::from_millis(200),
        ..Options::default()
    };
    let mut host = Host::new(s.root(), opts);
    for cycle in 0..2 {
        let snap = host.collect();
        assert_eq!(mounted(&snap), ["/", "/b", "/d"], "cycle {cycle}");
        let warnings = &source(&snap, "filesystems").warnings;
        let want = if cycle == 0 {
            "did not answer in time"
        } else {
            "has not returned since an earlier cycle"
        };
        for mp in ["/a", "/c"] {
            assert!(
                warnings
                    .iter()
                    .any(|w| w.contains(&format!("statvfs({mp}) {want}"))),
                "cycle {cycle}: {warnings:?}"
            );
        }
    }
}

/// The cycle's statvfs budget ends the waiting: a hung mount met after it
/// is given only what is left, and the mounts after that wait for the next
/// cycle.
#[test]
fn statfs_budget_leaves_the_rest_for_the_next_cycle() {
    let s = hanging_host("budget");
    let opts = Options {
        statfs_timeout: Duration::from_millis(300),
        statfs_budget: Duration::from_millis(500),
        ..Options::default()
    };
    let mut host = Host::new(s.root(), opts);
    let started = Instant::now();
    let snap = host.collect();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(mounted(&snap), ["/", "/b"]);
    let warnings = &source(&snap, "filesystems").warnings;
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("1 mount(s) left out this cycle")),
        "{warnings:?}"
    );
    // Next cycle: /a and /c are still hanging and not asked; /d is measured.
    let snap = host.collect();
    assert_eq!(mounted(&snap), ["/", "/b", "/d"]);
}

/// A slow mount that misses the deadline comes back once its call returns.
#[test]
fn slow_mount_is_reported_again_after_it_answers() {
    let s = nfs_host("/mnt/nfs slow 0.6 4096 1000 10 10");
    let mut host = Host::new(s.root(), options_including_nfs(Duration::from_millis(200)));
    let first = host.collect();
    assert!(!first.filesystems.iter().any(|f| f.mountpoint == "/mnt/nfs"));
    std::thread::sleep(Duration::from_millis(800));
    let later = host.collect();
    assert!(
        later.filesystems.iter().any(|f| f.mountpoint == "/mnt/nfs"),
        "{:?}",
        later.filesystems
    );
}

/// A mount point mounted twice: the later mount is the one in use (and the
/// one statvfs measures), so it is reported. This is deliberate: the stock
/// agent keeps the first entry, and so drops `/data` behind a systemd
/// automount (autofs first, the real filesystem second).
#[test]
fn repeated_mount_point_reports_the_mount_in_use() {
    let s = Scratch::new("automount");
    s.write(
        "proc/1/mountinfo",
        "27 1 254:0 / / rw - ext4 /dev/vda rw\n\
         40 27 0:50 / /data rw - autofs systemd-1 rw\n\
         41 40 254:16 / /data rw - ext4 /dev/vdb rw\n",
    );
    s.write(
        ".capture/statvfs",
        "/ 4096 100 50 40\n/data 4096 200 100 100\n",
    );
    let snap = Host::new(s.root(), Options::default()).collect();
    let data = snap
        .filesystems
        .iter()
        .find(|f| f.mountpoint == "/data")
        .expect("/data reported");
    assert_eq!(
        (data.device.as_str(), data.fstype.as_str()),
        ("/dev/vdb", "ext4")
    );
}

fn mounted(snap: &collect::HostSnapshot) -> Vec<&str> {
    snap.filesystems
        .iter()
        .map(|f| f.mountpoint.as_str())
        .collect()
}

const TWO_MOUNTS: &str = "27 1 254:0 / / rw - ext4 /dev/vda rw\n\
                          41 27 254:16 / /data rw - xfs /dev/vdb rw\n";

fn mounts_host(name: &str, table: &str) -> Scratch {
    let s = Scratch::new(name);
    s.write(table, TWO_MOUNTS);
    s.write(
        ".capture/statvfs",
        "/ 4096 100 50 40\n/data 4096 200 100 100\n/new 4096 300 100 100\n/date 4096 400 100 100\n",
    );
    s
}

/// The mount table was read and parsed every cycle although it rarely
/// changes. It is read once, then only when it changed: here a captured
/// file whose stamp (device, inode, size, mtime) stays put.
#[test]
fn unchanged_mount_table_is_not_parsed_again() {
    let s = mounts_host("mounts-same", "proc/1/mountinfo");
    let mut host = Host::new(s.root(), Options::default());
    for cycle in 0..4 {
        let snap = host.collect();
        assert_eq!(mounted(&snap), ["/", "/data"], "cycle {cycle}");
        assert_eq!(source(&snap, "filesystems").outcome, Outcome::Ok);
    }
    assert_eq!(host.mount_table_reads(), 1);
}

/// A mount table rewritten in place (a mount added) or replaced by a rename
/// (same size, another inode) is seen on the very next cycle.
#[test]
fn changed_mount_table_is_seen_on_the_next_cycle() {
    let s = mounts_host("mounts-changed", "proc/1/mountinfo");
    let mut host = Host::new(s.root(), Options::default());
    assert_eq!(mounted(&host.collect()), ["/", "/data"]);

    s.write(
        "proc/1/mountinfo",
        format!("{TWO_MOUNTS}42 27 254:32 / /new rw - ext4 /dev/vdc rw\n"),
    );
    assert_eq!(mounted(&host.collect()), ["/", "/data", "/new"]);
    assert_eq!(host.mount_table_reads(), 2);
    assert_eq!(mounted(&host.collect()), ["/", "/data", "/new"]);
    assert_eq!(host.mount_table_reads(), 2);

    // Same length, written beside it and renamed over it.
    let same_size = format!("{TWO_MOUNTS}42 27 254:32 / /date rw - ext4 /dev/vdc rw\n");
    s.write("proc/1/mountinfo.new", &same_size);
    std::fs::rename(
        s.0.join("proc/1/mountinfo.new"),
        s.0.join("proc/1/mountinfo"),
    )
    .unwrap();
    assert_eq!(mounted(&host.collect()), ["/", "/data", "/date"]);
    assert_eq!(host.mount_table_reads(), 3);

    // A table that goes away fails the source; one that comes back is read.
    std::fs::remove_file(s.0.join("proc/1/mountinfo")).unwrap();
    let snap = host.collect();
    assert!(snap.filesystems.is_empty());
    assert_eq!(source(&snap, "filesystems").outcome, Outcome::Absent);
    s.write("proc/1/mountinfo", TWO_MOUNTS);
    assert_eq!(mounted(&host.collect()), ["/", "/data"]);
}

/// Without PID 1's table (another mount namespace the agent may not read)
/// the agent's own is used, and watched the same way.
#[test]
fn mount_table_falls_back_to_the_agents_own_and_is_watched() {
    let s = mounts_host("mounts-self", "proc/self/mountinfo");
    let mut host = Host::new(s.root(), Options::default());
    assert_eq!(mounted(&host.collect()), ["/", "/data"]);
    assert_eq!(mounted(&host.collect()), ["/", "/data"]);
    assert_eq!(host.mount_table_reads(), 1);
    s.write(
        "proc/self/mountinfo",
        format!("{TWO_MOUNTS}42 27 254:32 / /new rw - ext4 /dev/vdc rw\n"),
    );
    assert_eq!(mounted(&host.collect()), ["/", "/data", "/new"]);
    assert_eq!(host.mount_table_reads(), 2);
}

/// The mounts to measure are kept with the table; other patterns on the
/// same kept table are applied, not the ones it was first filtered with.
#[test]
fn kept_mount_table_follows_new_disk_patterns() {
    use collect::filesystems::{self, Mounts, StatfsGuard};
    let s = mounts_host("mounts-patterns", "proc/1/mountinfo");
    let root = s.root();
    let (mut mounts, mut guard) = (Mounts::new(), StatfsGuard::new(root.clone()));
    let names = |opts: &Options, mounts: &mut Mounts, guard: &mut StatfsGuard| {
        let out = filesystems::collect(&root, opts, mounts, guard).unwrap();
        out.filesystems
            .into_iter()
            .map(|f| f.mountpoint)
            .collect::<Vec<_>>()
    };
    let all = Options::default();
    let no_data = Options {
        disk_exclude: vec!["/data".into()],
        ..Options::default()
    };
    assert_eq!(names(&all, &mut mounts, &mut guard), ["/", "/data"]);
    assert_eq!(names(&no_data, &mut mounts, &mut guard), ["/"]);
    assert_eq!(names(&all, &mut mounts, &mut guard), ["/", "/data"]);
}

/// On a captured root nothing signals a change of interfaces: they are read
/// every cycle, so a changed MAC or a new address shows on the next one.
#[test]
fn interfaces_of_a_captured_root_are_read_every_cycle() {
    let s = Scratch::new("net-captured");
    s.write(
        "proc/net/dev",
        "Inter-| Receive | Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed\n  eth0: 100 1 0 0 0 0 0 0 200 2 0 0 0 0 0 0\n",
    );
    s.write("sys/class/net/eth0/flags", "0x1003\n");
    s.write("sys/class/net/eth0/type", "1\n");
    s.write("sys/class/net/eth0/address", "02:00:00:00:00:01\n");
    s.write(
        ".capture/ip-addr",
        "2: eth0    inet 10.0.0.5/24 scope global eth0\n",
    );
    let mut host = Host::new(s.root(), Options::default());
    let first = host.collect();
    assert_eq!(first.network.len(), 1);
    assert_eq!(first.network[0].mac, "02:00:00:00:00:01");
    assert_eq!(first.network[0].rx_bytes, 100);
    s.write("sys/class/net/eth0/address", "02:00:00:00:00:02\n");
    let second = host.collect();
    assert_eq!(second.network[0].mac, "02:00:00:00:00:02");
    assert_eq!(host.interface_reads(), 2);
}

/// Red Hat family hosts are named from the release file, which has the point
/// release, before os-release.
#[test]
fn red_hat_release_names_the_os() {
    let cases = [
        (
            "CentOS Linux release 7.9.2009 (Core)",
            "ID=\"centos\"\nVERSION_ID=\"7\"\n",
            ("centos", "7.9.2009"),
        ),
        (
            "Red Hat Enterprise Linux release 9.3 (Plow)",
            "ID=\"rhel\"\nVERSION_ID=\"9.3\"\n",
            ("redhat", "9.3"),
        ),
    ];
    for (release, os_release, (name, version)) in cases {
        let s = Scratch::new("redhat");
        s.write("etc/redhat-release", format!("{release}\n"));
        s.write("etc/os-release", os_release);
        assert_eq!(
            pulse_agent::collect::identity::os(&s.root()),
            (name.to_string(), version.to_string())
        );
    }
}

/// Without --disk-include, network filesystems are never asked at all.
#[test]
fn network_mounts_are_never_asked() {
    let s = nfs_host("/mnt/nfs hang");
    let mut host = Host::new(
        s.root(),
        Options {
            statfs_timeout: Duration::from_secs(600),
            statfs_budget: Duration::from_secs(600),
            ..Options::default()
        },
    );
    let snap = host.collect();
    assert_eq!(snap.filesystems.len(), 2);
    assert!(source(&snap, "filesystems").warnings.is_empty());
}

/// `--disk-exclude` drops filesystems and disks; patterns match mount points,
/// devices and device names without /dev/.
#[test]
fn disk_exclude_patterns() {
    let mut args = common::case_args("debian12-vm");
    args.extend(["--disk-exclude".into(), "vda".into()]);
    let config = common::config_for(&args);
    let doc = common::report_for(&config);
    assert!(
        doc.get("disks").is_none(),
        "/dev/vda excluded by its bare name"
    );
    assert!(
        doc.get("diskIO").is_none(),
        "vda excluded from disk I/O too"
    );
    assert_eq!(doc["agent"]["diskExclude"], serde_json::json!(["vda"]));
}
