//! The Proxmox LXC filesystems source (`proxmoxLxc`, spec/pulse-collectors.md
//! §6.4): the `pct list` and `pct df` parsers on the answers in
//! `fixtures/pct/` (including hostile rows), the collector on captured roots
//! whose `pct` is `fake-program` (which records every call), its deadlines,
//! and the section's JSON against the wire schema.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::proc::Dir;
use common::wire::check_host_report;
use pulse_agent::collect::pct::{self, Collector, Disk, Lxc, Running};
use pulse_agent::root::Root;
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    let p = common::fixtures_dir().join("pct").join(name);
    String::from_utf8(std::fs::read(&p).unwrap()).unwrap()
}

fn running(vmid: u32, name: &str) -> Running {
    Running {
        vmid,
        name: name.into(),
    }
}

fn disk(kind: &str, device: &str, mountpoint: &str, sizes: [u64; 3], usage: f64) -> Disk {
    Disk {
        device: device.into(),
        mountpoint: mountpoint.into(),
        kind: kind.into(),
        total: sizes[0],
        used: sizes[1],
        free: sizes[2],
        usage,
    }
}

const K: u64 = 1 << 10;
const G: u64 = 1 << 30;

// ---- pct list ----

#[test]
fn list_keeps_running_rows_only_by_vmid() {
    let got = pct::parse_list(&fixture("list-mixed.txt")).unwrap();
    assert_eq!(
        got,
        [
            running(100, "web"),
            // Locked for a backup, still running: asked like the others.
            running(102, "database"),
            running(103, "media server"),
            running(105, "ci-runner"),
            running(110, ""),
            running(111, "café"),
        ],
        "stopped (any case), paused, out-of-range, signed, non-numeric and \
         repeated VMIDs and a name with a control character are left out"
    );
}

#[test]
fn list_empty_output_is_no_container_and_a_foreign_answer_is_an_error() {
    assert_eq!(pct::parse_list(""), Ok(vec![]));
    assert_eq!(pct::parse_list("\n  \n"), Ok(vec![]));
    let e = pct::parse_list("permission denied - you are not root\n").unwrap_err();
    assert!(e.contains("pct list") && e.contains("header"), "{e}");
    // The header alone: nothing runs.
    assert_eq!(
        pct::parse_list("VMID       Status     Lock         Name\n"),
        Ok(vec![])
    );
}

#[test]
fn list_keeps_the_128_lowest_vmids() {
    let mut text = String::from("VMID       Status     Lock         Name                \n");
    for vmid in (100..400).rev() {
        text.push_str(&format!(
            "{vmid:<10} {:<10} {:<12} ct{vmid}\n",
            "running", ""
        ));
    }
    let got = pct::parse_list(&text).unwrap();
    assert_eq!(got.len(), pct::MAX_CONTAINERS);
    assert_eq!(got[0], running(100, "ct100"));
    assert_eq!(got[127], running(227, "ct227"));
}

// ---- pct df ----

#[test]
fn df_rows_root_first_with_a_path_holding_a_space() {
    let got = pct::parse_df(&fixture("df-100.txt"));
    assert_eq!(
        got,
        [
            disk(
                "rootfs",
                "local-lvm:vm-100-disk-0",
                "/",
                [8_375_186_227, 2_254_857_830, 5_690_831_667],
                26.9
            ),
            disk(
                "mp1",
                "tank:subvol-100-disk-2",
                "/mnt/media library",
                [1 << 40, 512 * G, 512 * G],
                50.0
            ),
            disk(
                "mp0",
                "local-lvm:vm-100-disk-1",
                "/var/lib/postgresql",
                [32 * G, 4 * G, 28_346_784_154],
                12.5
            ),
        ]
    );
}

#[test]
fn df_hostile_rows_are_dropped() {
    let got = pct::parse_df(&fixture("df-hostile.txt"));
    let paths: Vec<&str> = got.iter().map(|d| d.mountpoint.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/",
            // Inner spaces kept as pct printed them.
            "/mnt/two  spaces",
            "/percent-sign",
            "/plain-bytes",
            "/srv/over",
            "/upper-key"
        ],
        "dropped: Use% over 100 or negative, relative, `..`, `.`, `//` and \
         trailing-slash paths, ESC and NUL in a path, a control byte in a \
         volume, sizes past 2^63 or negative or in P or with an exponent, \
         mp256, mp+2, disk0, a short row, a zero size, a repeated path (also \
         in another case)"
    );
    let by = |p: &str| got.iter().find(|d| d.mountpoint == p).unwrap();
    // Used past the size is clamped.
    assert_eq!(
        by("/srv/over"),
        &disk(
            "mp0",
            "tank:subvol-105-disk-1",
            "/srv/over",
            [100 * G, 100 * G, 0],
            100.0
        )
    );
    // No suffix: bytes.
    assert_eq!(
        by("/plain-bytes"),
        &disk("mp8", "tank:h", "/plain-bytes", [G, G / 2, G / 2], 50.0)
    );
    assert_eq!(by("/upper-key").kind, "mp9", "the MP is lowercased");
    assert_eq!(by("/percent-sign").usage, 10.0);
}

#[test]
fn df_keeps_at_most_257_mounts_with_root_first() {
    let got = pct::parse_df(&fixture("df-300-mounts.txt"));
    assert_eq!(got.len(), pct::MAX_DISKS);
    assert_eq!(got[0].mountpoint, "/");
    assert_eq!(got[0].kind, "rootfs");
    assert_eq!(got[1].mountpoint, "/mnt/m000");
    // The first 257 rows: 256 mount points and `/` (row 200).
    assert_eq!(got[256].mountpoint, "/mnt/m256");
    let mut sorted: Vec<&str> = got[1..].iter().map(|d| d.mountpoint.as_str()).collect();
    sorted.sort();
    assert_eq!(
        sorted,
        got[1..]
            .iter()
            .map(|d| d.mountpoint.as_str())
            .collect::<Vec<_>>()
    );
    assert_eq!(got[5].total, G);
    assert_eq!(got[5].used, G / 2);
    assert_eq!(got[5].kind, "mp4");
}

#[test]
fn df_with_nothing_usable_is_empty() {
    assert!(pct::parse_df("").is_empty());
    assert!(pct::parse_df("MP Volume Size Used Avail Use% Path\n").is_empty());
    assert!(pct::parse_df("rootfs x 1K 1K 0 100.0 relative\n").is_empty());
    assert_eq!(
        pct::parse_df("rootfs x 1K 2K 0 100.0 /\n"),
        [disk("rootfs", "x", "/", [K, K, 0], 100.0)]
    );
}

// ---- the collector ----

/// A captured root whose `pct` answers `answers` (fake-program keys, e.g.
/// `pct df 100`, `pct df 100.exit`), with a calls log.
fn pct_root(dir: &Dir, answers: &[(&str, &str)]) -> PathBuf {
    let root = dir.0.join("root");
    let capture = root.join(".capture");
    std::fs::create_dir_all(capture.join("bin")).unwrap();
    std::fs::create_dir_all(capture.join("cmd")).unwrap();
    std::os::unix::fs::symlink(common::fake_program(), capture.join("bin/pct")).unwrap();
    for (key, text) in answers {
        std::fs::write(capture.join("cmd").join(key), text).unwrap();
    }
    std::fs::write(capture.join("cmd/calls.log"), "").unwrap();
    root
}

fn calls(root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join(".capture/cmd/calls.log"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn collect(root: &Path, deadline: Duration) -> Result<Option<Lxc>, String> {
    Collector::new(Root::new(root).unwrap(), None).collect(Instant::now() + deadline)
}

const ROOT_ONLY: &str = "MP     Volume                   Size  Used Avail Use% Path\n\
                         rootfs local-lvm:vm-102-disk-0   4.0G  1.0G  3.0G 25.0 /\n";

fn vmids(l: &Lxc) -> Vec<u32> {
    l.containers.iter().map(|c| c.vmid).collect()
}

fn skipped(l: &Lxc) -> Vec<u32> {
    l.skipped.iter().map(|s| s.vmid).collect()
}

#[test]
fn stopped_containers_get_no_pct_df_and_a_failed_one_is_skipped() {
    let dir = Dir::new("pct-mixed");
    let list = fixture("list-mixed.txt");
    let df100 = fixture("df-100.txt");
    let hostile = fixture("df-hostile.txt");
    let root = pct_root(
        &dir,
        &[
            ("pct list", &list),
            ("pct df 100", &df100),
            ("pct df 102", ROOT_ONLY),
            ("pct df 103.exit", "2"),
            (
                "pct df 103.stderr",
                "unable to get usage of rootfs: lock timeout\n",
            ),
            ("pct df 105", &hostile),
            // 110: no answer at all (fake-program exits 1).
            (
                "pct df 111",
                "MP Volume Size Used Avail Use% Path\nrootfs x 1G 1G 0 101.0 /\n",
            ),
        ],
    );
    let lxc = collect(&root, Duration::from_secs(30)).unwrap().unwrap();
    assert_eq!(
        calls(&root),
        [
            "pct list",
            "pct df 100",
            "pct df 102",
            "pct df 103",
            "pct df 105",
            "pct df 110",
            "pct df 111"
        ],
        "only running containers are asked (never 101, 104, 106)"
    );
    assert_eq!(vmids(&lxc), [100, 102, 105]);
    assert_eq!(lxc.containers[0].name, "web");
    assert_eq!(lxc.containers[0].disks, pct::parse_df(&df100));
    assert_eq!(lxc.containers[1].name, "database");
    assert_eq!(lxc.containers[2].disks, pct::parse_df(&hostile));
    assert_eq!(skipped(&lxc), [103, 110, 111]);
    let reasons: Vec<&str> = lxc.skipped.iter().map(|s| s.reason.as_str()).collect();
    assert_eq!(
        reasons[0],
        "pct df 103: exit 2: unable to get usage of rootfs: lock timeout"
    );
    assert!(
        reasons[1].starts_with("pct df 110: exit 1"),
        "{}",
        reasons[1]
    );
    assert_eq!(reasons[2], "pct df 111: no usable filesystem row");
    assert_eq!(lxc.skipped[0].name, "media server");
}

#[test]
fn no_pct_means_no_section() {
    let dir = Dir::new("pct-absent");
    let root = dir.0.join("root");
    std::fs::create_dir_all(root.join(".capture")).unwrap();
    assert_eq!(collect(&root, Duration::from_secs(5)), Ok(None));
}

#[test]
fn pct_list_failing_fails_the_run() {
    let dir = Dir::new("pct-list-fails");
    let root = pct_root(
        &dir,
        &[
            ("pct list.exit", "13"),
            (
                "pct list.stderr",
                "ipcc_send_rec[1] failed: Connection refused\n",
            ),
        ],
    );
    let e = collect(&root, Duration::from_secs(5)).unwrap_err();
    assert_eq!(
        e,
        "pct list: exit 13: ipcc_send_rec[1] failed: Connection refused"
    );
    assert_eq!(calls(&root), ["pct list"]);
}

#[test]
fn no_running_container_is_an_empty_section() {
    let dir = Dir::new("pct-none-running");
    let root = pct_root(
        &dir,
        &[(
            "pct list",
            "VMID       Status     Lock         Name\n101        stopped                 archive\n",
        )],
    );
    let lxc = collect(&root, Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(lxc, Lxc::default());
    assert_eq!(calls(&root), ["pct list"]);
    let doc = pulse_agent::report::proxmox_lxc(&lxc, common::pinned_now());
    assert_eq!(doc["containers"], json!([]));
}

#[test]
fn relative_pulse_pct_path_is_refused() {
    let dir = Dir::new("pct-relative");
    let root = pct_root(&dir, &[("pct list", &fixture("list-mixed.txt"))]);
    let mut c = Collector::new(Root::new(&root).unwrap(), Some(PathBuf::from("bin/pct")));
    let e = c
        .collect(Instant::now() + Duration::from_secs(5))
        .unwrap_err();
    assert_eq!(e, "PULSE_PCT_PATH must be an absolute path (got bin/pct)");
    assert!(calls(&root).is_empty(), "nothing ran");
}

#[test]
fn absolute_pulse_pct_path_is_the_program_used() {
    // The helper is the only pct: the root (a live one, no files read) has none.
    let dir = Dir::new("pct-helper");
    let helper = pct_root(&dir, &[("pct list", &fixture("list-mixed.txt"))]);
    let empty = dir.0.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut c = Collector::new(
        Root::new(&empty).unwrap(),
        Some(helper.join(".capture/bin/pct")),
    );
    let lxc = c
        .collect(Instant::now() + Duration::from_secs(30))
        .unwrap()
        .unwrap();
    assert!(lxc.containers.is_empty());
    assert_eq!(skipped(&lxc), [100, 102, 103, 105, 110, 111]);
    assert_eq!(calls(&helper)[0], "pct list");
    // A helper that is not there is an error, not "no Proxmox".
    let mut c = Collector::new(Root::new(&empty).unwrap(), Some(dir.0.join("missing/pct")));
    let e = c
        .collect(Instant::now() + Duration::from_secs(5))
        .unwrap_err();
    assert!(e.starts_with("pct list: cannot run"), "{e}");
}

const THREE: &str = "VMID       Status     Lock         Name\n\
                     100        running                 one\n\
                     102        running                 two\n\
                     103        running                 three\n";

#[test]
fn a_hung_pct_df_costs_its_own_timeout_not_the_others() {
    let dir = Dir::new("pct-hung");
    let root = pct_root(
        &dir,
        &[
            ("pct list", THREE),
            ("pct df 100", ROOT_ONLY),
            ("pct df 102.hang", ""),
            ("pct df 103", ROOT_ONLY),
        ],
    );
    let mut c = Collector::new(Root::new(&root).unwrap(), None);
    let started = Instant::now();
    let lxc = c
        .collect(Instant::now() + Duration::from_secs(60))
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= pct::DF_TIMEOUT && took < pct::DF_TIMEOUT + Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(vmids(&lxc), [100, 103]);
    assert_eq!(skipped(&lxc), [102]);
    assert_eq!(lxc.skipped[0].reason, "pct df 102: no answer within 5 s");
    assert!(c.take_hung());
}

#[test]
fn the_deadline_is_kept_and_containers_not_reached_are_named() {
    let dir = Dir::new("pct-deadline");
    let root = pct_root(
        &dir,
        &[
            ("pct list", THREE),
            ("pct df 100", ROOT_ONLY),
            ("pct df 102.hang", ""),
            ("pct df 103", ROOT_ONLY),
        ],
    );
    let started = Instant::now();
    let lxc = collect(&root, Duration::from_millis(1500))
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(vmids(&lxc), [100]);
    assert_eq!(skipped(&lxc), [102, 103]);
    assert!(
        lxc.skipped[0].reason.contains("no answer within"),
        "{:?}",
        lxc.skipped
    );
    assert_eq!(
        lxc.skipped[1].reason,
        "pct df 103: not asked, the run's time was used up"
    );
    assert!(!calls(&root).contains(&"pct df 103".to_string()));
}

#[test]
fn a_pct_df_past_64_kib_is_skipped() {
    let dir = Dir::new("pct-big");
    let mut big = String::from(ROOT_ONLY);
    while big.len() <= pct::OUTPUT_CAP {
        big.push_str("mp0 x 1G 1G 0 100.0 /same\n");
    }
    let root = pct_root(
        &dir,
        &[
            ("pct list", THREE),
            ("pct df 100", &big),
            ("pct df 102", ROOT_ONLY),
            ("pct df 103", ROOT_ONLY),
        ],
    );
    let lxc = collect(&root, Duration::from_secs(30)).unwrap().unwrap();
    assert_eq!(vmids(&lxc), [102, 103]);
    assert!(
        lxc.skipped[0].reason.contains("more than 65536 bytes"),
        "{:?}",
        lxc.skipped
    );
}

// ---- the report ----

/// `section` as the `proxmoxLxc` of an otherwise minimal host report,
/// checked against the wire schema.
fn wire_errors(section: &Value) -> Vec<String> {
    let doc = json!({
        "agent": {"id": "a"},
        "host": {"hostname": "pve1"},
        "metrics": {"memory": {}},
        "sensors": {},
        "timestamp": "2026-08-22T14:52:27Z",
        "proxmoxLxc": section,
    });
    check_host_report(&doc)
}

#[test]
fn report_section_has_the_wire_shape() {
    let dir = Dir::new("pct-report");
    let root = pct_root(
        &dir,
        &[
            ("pct list", THREE),
            ("pct df 100", &fixture("df-100.txt")),
            ("pct df 102", ROOT_ONLY),
        ],
    );
    let lxc = collect(&root, Duration::from_secs(30)).unwrap().unwrap();
    let doc = pulse_agent::report::proxmox_lxc(&lxc, common::pinned_now());
    assert_eq!(
        doc,
        json!({
            "containers": [
                {"vmid": 100, "name": "one", "disks": [
                    {"device": "local-lvm:vm-100-disk-0", "mountpoint": "/", "type": "rootfs",
                     "totalBytes": 8_375_186_227u64, "usedBytes": 2_254_857_830u64,
                     "freeBytes": 5_690_831_667u64, "usage": 26.9},
                    {"device": "tank:subvol-100-disk-2", "mountpoint": "/mnt/media library",
                     "type": "mp1", "totalBytes": 1u64 << 40, "usedBytes": 512 * G,
                     "freeBytes": 512 * G, "usage": 50.0},
                    {"device": "local-lvm:vm-100-disk-1", "mountpoint": "/var/lib/postgresql",
                     "type": "mp0", "totalBytes": 32 * G, "usedBytes": 4 * G,
                     "freeBytes": 28_346_784_154u64, "usage": 12.5},
                ]},
                {"vmid": 102, "name": "two", "disks": [
                    {"device": "local-lvm:vm-102-disk-0", "mountpoint": "/", "type": "rootfs",
                     "totalBytes": 4 * G, "usedBytes": G, "freeBytes": 3 * G, "usage": 25.0},
                ]},
            ],
            "collectedAt": "2026-08-22T14:52:27.123456789Z",
        })
    );
    let errs = wire_errors(&doc);
    assert!(errs.is_empty(), "{errs:?}");
    // Bytes are integers; a full disk's freeBytes and a zero usage are left
    // out (omitempty), the name is kept even when empty.
    let full = Lxc {
        containers: vec![pct::Container {
            vmid: 110,
            name: String::new(),
            disks: pct::parse_df("rootfs x 1K 2K 0 0.0 /\n"),
        }],
        skipped: vec![],
    };
    let doc = pulse_agent::report::proxmox_lxc(&full, common::pinned_now());
    assert_eq!(
        doc["containers"][0],
        json!({"vmid": 110, "name": "", "disks": [
            {"device": "x", "mountpoint": "/", "type": "rootfs", "totalBytes": 1024, "usedBytes": 1024}
        ]})
    );
    assert!(wire_errors(&doc).is_empty());
}

#[test]
fn the_wire_schema_catches_a_wrong_section() {
    // The check is real: a float VMID, a missing name, an unknown key.
    let bad = json!({
        "containers": [{"vmid": 100.5, "disks": [], "extra": 1}],
        "collectedAt": "yesterday",
    });
    let errs = wire_errors(&bad);
    for want in [
        "vmid",
        "name: missing",
        "extra: not in the schema",
        "collectedAt",
    ] {
        assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
    }
}

/// The pve-ceph fixture case's answers through the collector: what its
/// `proxmoxLxc` will hold once the platform sources run in `--once`.
#[test]
fn pve_ceph_case_containers() {
    let root = common::case_root("pve-ceph");
    let lxc = Collector::new(Root::new(&root).unwrap(), None)
        .collect(Instant::now() + Duration::from_secs(30))
        .unwrap()
        .unwrap();
    assert_eq!(vmids(&lxc), [100, 101, 103], "102 is stopped");
    assert!(lxc.skipped.is_empty(), "{:?}", lxc.skipped);
    let names: Vec<&str> = lxc.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["dns", "nextcloud", "media"]);
    let paths: Vec<&str> = lxc.containers[1]
        .disks
        .iter()
        .map(|d| d.mountpoint.as_str())
        .collect();
    assert_eq!(paths, ["/", "/mnt/nextcloud data"]);
    let errs = wire_errors(&pulse_agent::report::proxmox_lxc(
        &lxc,
        common::pinned_now(),
    ));
    assert!(errs.is_empty(), "{errs:?}");
}
