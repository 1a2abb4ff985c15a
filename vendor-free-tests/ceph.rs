//! The Ceph source (`ceph`, spec/pulse-collectors.md §6.1, pulse-protocol.md
//! §3.10): the parsers on our fixtures (Squid without `mons`, a Nautilus
//! status with `mons` and a nested `osdmap`, `ceph df`, and the answers of a
//! real Pacific cluster), the report function against the stock agent's
//! shape and the wire schema, hostile documents, the collector on fake
//! programs (absent, failing, hung, garbage), and then a real one-monitor
//! cluster (common/ceph.rs) compared with what the cluster says of itself.
//!
//! The real cluster needs root and `ceph-mon ceph-mgr ceph-common`; without
//! them the test fails and says what to install, unless
//! `PULSE_TEST_SKIP_CEPH=1`.

#[path = "common/ceph.rs"]
mod ceph_cluster;
#[allow(dead_code)] // the docker report's half is not used here
#[path = "common/wire.rs"]
mod wire;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pulse_agent::collect::ceph::{self, Ceph, Collector, parse_df, parse_status};
use pulse_agent::report;
use pulse_agent::root::Root;
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("vendor-free-tests/fixtures/ceph")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// 2027-01-15T08:00:00.25Z: the fraction shows `collectedAt` drops it.
fn pinned() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_800_000_000_250)
}

fn scratch(name: &str) -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ceph-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn services(c: &Ceph) -> Vec<(&'static str, u64, u64)> {
    c.services
        .iter()
        .map(|s| (s.kind, s.running, s.total))
        .collect()
}

fn wire_ok(c: &Ceph) -> Value {
    let v = report::ceph(c, pinned());
    let errs = wire::check_section("ceph", &v);
    assert!(errs.is_empty(), "{errs:#?}\n{v:#}");
    v
}

#[test]
fn squid_status_without_mons_counts_monitors_from_num_mons_and_quorum() {
    let c = parse_status(&fixture("squid-status.json")).unwrap();
    assert_eq!(c.fsid, "3f1c9a52-7d4e-4b0a-9e61-5c2d8a7b1e90");
    assert_eq!(c.health.status, "HEALTH_WARN");
    let down = &c.health.checks["OSD_DOWN"];
    assert_eq!(down.severity, "HEALTH_WARN");
    assert_eq!(down.message, "1 osds down");
    assert_eq!(down.detail, ["osd.7 (root=default,host=stor3) is down"]);
    assert!(c.health.checks["PG_DEGRADED"].detail.is_empty());
    assert_eq!((c.mon_map.epoch, c.mon_map.num_mons), (9, 5));
    assert!(c.mon_map.monitors.is_empty());
    let m = &c.mgr_map;
    assert_eq!((m.available, m.num_mgrs, m.standbys), (true, 3, 2));
    assert_eq!(m.active_mgr, "");
    let o = &c.osd_map;
    assert_eq!(
        (
            o.epoch, o.num_osds, o.num_up, o.num_in, o.num_down, o.num_out
        ),
        (4410, 12, 11, 10, 1, 2)
    );
    let p = &c.pg_map;
    assert_eq!(p.num_pgs, 257);
    assert_eq!(
        (p.bytes_total, p.bytes_used, p.bytes_available, p.data_bytes),
        (11995870887936, 412316860416, 11583554027520, 134217728000)
    );
    assert!((p.usage_percent - 412316860416.0 / 11995870887936.0 * 100.0).abs() < 1e-9);
    assert_eq!((p.degraded_ratio, p.misplaced_ratio), (0.021906, 0.0005));
    assert_eq!(
        (
            p.read_bytes_per_sec,
            p.write_bytes_per_sec,
            p.read_ops_per_sec,
            p.write_ops_per_sec
        ),
        (5242880, 1048576, 310, 47)
    );
    assert_eq!(
        services(&c),
        [("mon", 5, 5), ("mgr", 1, 3), ("osd", 11, 12)]
    );
    wire_ok(&c);
}

#[test]
fn only_a_quorum_list_still_counts_the_monitors() {
    // Neither num_mons nor mons: the quorum is all there is (#1626).
    let c = parse_status(r#"{"fsid":"f","quorum":[0,1,2],"monmap":{"epoch":2}}"#).unwrap();
    assert_eq!(c.mon_map.num_mons, 3);
    assert_eq!(services(&c)[0], ("mon", 3, 3));
    let c =
        parse_status(r#"{"fsid":"f","quorum_names":["a","b"],"monmap":{"num_mons":3}}"#).unwrap();
    assert_eq!((c.mon_map.num_mons, services(&c)[0]), (3, ("mon", 2, 3)));
}

#[test]
fn legacy_status_with_mons_and_a_nested_osdmap() {
    let c = parse_status(&fixture("legacy-status.json")).unwrap();
    assert_eq!(c.fsid, "legacy-cluster-0001");
    assert_eq!(c.health.status, "HEALTH_ERR");
    assert_eq!(c.health.checks.len(), 2);
    assert_eq!(
        c.health.checks["OSD_FULL"].detail,
        ["osd.2 is full", "osd.2 has 97% used"]
    );
    assert_eq!((c.mon_map.epoch, c.mon_map.num_mons), (14, 4));
    let mons: Vec<(&str, u64, &str)> = c
        .mon_map
        .monitors
        .iter()
        .map(|m| (m.name.as_str(), m.rank, m.addr.as_str()))
        .collect();
    assert_eq!(
        mons,
        [
            ("alpha", 0, "192.168.7.11:6789/0"),
            ("beta", 1, "192.168.7.12:6789/0"),
            ("gamma", 2, "192.168.7.13:6789/0"),
            ("delta", 3, "192.168.7.14:6789/0"),
        ]
    );
    let m = &c.mgr_map;
    assert_eq!(
        (m.available, m.num_mgrs, m.standbys, m.active_mgr.as_str()),
        (true, 3, 2, "alpha")
    );
    let o = &c.osd_map;
    assert_eq!(
        (
            o.epoch, o.num_osds, o.num_up, o.num_in, o.num_down, o.num_out
        ),
        (77, 4, 3, 4, 1, 0)
    );
    assert_eq!(c.pg_map.usage_percent, 75.0);
    // No quorum fields: every monitor counts as running.
    assert_eq!(services(&c), [("mon", 4, 4), ("mgr", 1, 3), ("osd", 3, 4)]);
}

#[test]
fn ceph_df_pools_and_percentages() {
    let df = parse_df(&fixture("df.json")).unwrap();
    let pools: Vec<(u64, &str, u64, u64, u64)> = df
        .pools
        .iter()
        .map(|p| {
            (
                p.id,
                p.name.as_str(),
                p.bytes_used,
                p.bytes_available,
                p.objects,
            )
        })
        .collect();
    assert_eq!(
        pools,
        [
            (1, ".mgr", 5760000, 3661373210624, 2),
            (2, "vm-disks", 386547056640, 3661373210624, 31002),
            (3, "cephfs_data", 16106127360, 3661373210624, 1280),
            (4, "cephfs_metadata", 3145728, 3661373210624, 22),
        ]
    );
    let pct: Vec<f64> = df.pools.iter().map(|p| p.percent_used).collect();
    // A ratio (0–1) becomes a percentage; 45.5 already is one; absent is 0.
    assert!((pct[0] - 0.000157).abs() < 1e-12, "{pct:?}");
    assert!((pct[1] - 3.34).abs() < 1e-9, "{pct:?}");
    assert_eq!(&pct[2..], [45.5, 0.0]);
    assert!((df.percent_used - 3.44).abs() < 1e-9);

    // The status's own usage wins; df's fills in only a 0.
    let mut c = parse_status(&fixture("squid-status.json")).unwrap();
    let own = c.pg_map.usage_percent;
    c.apply_df(df.clone());
    assert_eq!((c.pools.len(), c.pg_map.usage_percent), (4, own));
    let mut c = parse_status(r#"{"fsid":"f","pgmap":{"bytes_total":0}}"#).unwrap();
    c.apply_df(df);
    assert!((c.pg_map.usage_percent - 3.44).abs() < 1e-9);
    wire_ok(&c);
}

#[test]
fn pacific_answers_captured_from_a_real_cluster() {
    // `ceph status/df --format json` of Debian 12's 16.2.15 cluster that
    // common/ceph.rs builds (one monitor, one manager, one pool, no OSDs).
    let mut c = parse_status(&fixture("pacific-status.json")).unwrap();
    assert_eq!(c.fsid, "d5f7bf16-953a-4a26-ad84-97b29f0d7b39");
    assert_eq!(c.health.status, "HEALTH_WARN");
    let names: Vec<&str> = c.health.checks.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "AUTH_INSECURE_GLOBAL_ID_RECLAIM_ALLOWED",
            "MON_DISK_LOW",
            "TOO_FEW_OSDS"
        ]
    );
    assert_eq!(
        c.health.checks["TOO_FEW_OSDS"].message,
        "OSD count 0 < osd_pool_default_size 3"
    );
    assert_eq!((c.mon_map.epoch, c.mon_map.num_mons), (1, 1));
    assert!(
        c.mon_map.monitors.is_empty(),
        "Pacific's status has no mons"
    );
    let m = &c.mgr_map;
    assert_eq!(
        (m.available, m.num_mgrs, m.standbys, m.active_mgr.as_str()),
        (true, 1, 0, "")
    );
    assert_eq!(
        (c.osd_map.epoch, c.osd_map.num_osds, c.osd_map.num_down),
        (2, 0, 0)
    );
    assert_eq!(
        (
            c.pg_map.num_pgs,
            c.pg_map.bytes_total,
            c.pg_map.usage_percent
        ),
        (8, 0, 0.0)
    );
    assert_eq!(services(&c), [("mon", 1, 1), ("mgr", 1, 1), ("osd", 0, 0)]);
    let df = parse_df(&fixture("pacific-df.json")).unwrap();
    assert_eq!(
        df.percent_used, 0.0,
        "Pacific's df has no stats.percent_used"
    );
    c.apply_df(df);
    assert_eq!(c.pools.len(), 1);
    assert_eq!(
        (
            c.pools[0].id,
            c.pools[0].name.as_str(),
            c.pools[0].percent_used
        ),
        (1, "rbd-test", 0.0)
    );
    wire_ok(&c);
}

/// The whole section for the legacy fixture and df, key by key: what Go's
/// `encoding/json` writes for the stock agent's `CephCluster`.
#[test]
fn report_has_the_stock_agents_shape() {
    let mut c = parse_status(&fixture("legacy-status.json")).unwrap();
    c.apply_df(parse_df(r#"{"pools":[{"id":3,"name":"rbd","stats":{"bytes_used":10,"max_avail":90,"objects":1,"percent_used":0.1}}]}"#).unwrap());
    let v = wire_ok(&c);
    let want = json!({
        "fsid": "legacy-cluster-0001",
        "health": {"status": "HEALTH_ERR", "checks": {
            "MON_DOWN": {"severity": "HEALTH_WARN", "message": "1/4 mons down, quorum alpha,beta,gamma",
                         "detail": ["mon.delta (rank 3) addr 192.168.7.14:6789/0 is down (out of quorum)"]},
            "OSD_FULL": {"severity": "HEALTH_ERR", "message": "1 full osd(s)",
                         "detail": ["osd.2 is full", "osd.2 has 97% used"]}}},
        "monMap": {"epoch": 14, "numMons": 4, "monitors": [
            {"name": "alpha", "rank": 0, "addr": "192.168.7.11:6789/0"},
            {"name": "beta", "rank": 1, "addr": "192.168.7.12:6789/0"},
            {"name": "gamma", "rank": 2, "addr": "192.168.7.13:6789/0"},
            {"name": "delta", "rank": 3, "addr": "192.168.7.14:6789/0"}]},
        "mgrMap": {"available": true, "numMgrs": 3, "activeMgr": "alpha", "standbys": 2},
        "osdMap": {"epoch": 77, "numOsds": 4, "numUp": 3, "numIn": 4, "numDown": 1},
        "pgMap": {"numPgs": 128, "bytesTotal": 4000000000000u64, "bytesUsed": 3000000000000u64,
                  "bytesAvailable": 1000000000000u64, "usagePercent": 75.0},
        "pools": [{"id": 3, "name": "rbd", "bytesUsed": 10, "bytesAvailable": 90, "objects": 1, "percentUsed": 10.0}],
        "services": [{"type": "mon", "running": 4, "total": 4}, {"type": "mgr", "running": 1, "total": 3},
                     {"type": "osd", "running": 3, "total": 4}],
        "collectedAt": "2027-01-15T08:00:00Z"
    });
    assert_eq!(v, want, "{v:#}");
}

/// An empty status: the structs and counts without `omitempty` are still
/// there, as zeros; everything with it is gone.
#[test]
fn report_of_an_empty_status_keeps_the_structs() {
    let c = parse_status(r#"{"fsid":""}"#).unwrap();
    let v = wire_ok(&c);
    assert_eq!(
        v,
        json!({
            "fsid": "",
            "health": {"status": ""},
            "monMap": {"epoch": 0, "numMons": 0},
            "mgrMap": {"available": false, "numMgrs": 0, "standbys": 0},
            "osdMap": {"epoch": 0, "numOsds": 0, "numUp": 0, "numIn": 0},
            "pgMap": {"numPgs": 0, "bytesTotal": 0, "bytesUsed": 0, "bytesAvailable": 0, "usagePercent": 0.0},
            "services": [{"type": "mon", "running": 0, "total": 0}, {"type": "mgr", "running": 0, "total": 0},
                         {"type": "osd", "running": 0, "total": 0}],
            "collectedAt": "2027-01-15T08:00:00Z"
        })
    );
}

#[test]
fn the_wire_schema_catches_a_wrong_section() {
    let mut v = report::ceph(
        &parse_status(&fixture("squid-status.json")).unwrap(),
        pinned(),
    );
    v["osdMap"]["numUp"] = json!(1.5);
    v["monMap"].as_object_mut().unwrap().remove("numMons");
    v["extra"] = json!(1);
    let errs = wire::check_section("ceph", &v);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(!wire::check_section("no-such-section", &v).is_empty());
}

// ---- hostile documents ----

#[test]
fn a_document_that_is_not_a_ceph_status_is_a_clear_error() {
    for (text, want) in [
        ("", "not JSON"),
        (
            "Error initializing cluster client: ObjectNotFound('RADOS object not found')",
            "not JSON",
        ),
        ("{\"fsid\":", "not JSON"),
        ("[]", "an array"),
        ("42", "a number"),
        ("null", "null"),
        ("{\"pools\":[]}", "an object without any of its sections"),
    ] {
        let e = parse_status(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
    assert!(
        parse_df("{\"fsid\":\"x\"}")
            .unwrap_err()
            .to_string()
            .contains("ceph df")
    );
    assert!(parse_df("[]").is_err());
}

#[test]
fn wrong_types_and_absurd_numbers_count_as_absent() {
    let c = parse_status(
        r#"{"fsid": 7, "health": "HEALTH_OK", "quorum": {"a": 1}, "quorum_names": "a",
            "monmap": {"epoch": -3, "num_mons": "2", "mons": [{"name": 1, "rank": "x"}, "junk", null]},
            "mgrmap": {"available": "true", "active_name": ["m"], "num_standbys": 1e30, "standbys": {}},
            "osdmap": {"epoch": 5.9, "num_osds": 3, "num_up_osds": 9, "num_in_osds": -1},
            "pgmap": {"num_pgs": 18446744073709551615, "bytes_total": 100, "bytes_used": 1000,
                      "degraded_ratio": "NaN", "misplaced_ratio": -0.5, "read_bytes_sec": "12"}}"#,
    )
    .unwrap();
    assert_eq!(c.fsid, "");
    assert_eq!(c.health.status, "");
    assert_eq!((c.mon_map.epoch, c.mon_map.num_mons), (0, 3));
    assert_eq!(c.mon_map.monitors.len(), 3);
    assert_eq!(
        (
            c.mon_map.monitors[0].name.as_str(),
            c.mon_map.monitors[0].rank
        ),
        ("", 0)
    );
    let m = &c.mgr_map;
    assert_eq!(
        (m.available, m.active_mgr.as_str(), m.standbys, m.num_mgrs),
        (false, "", 0, 0)
    );
    let o = &c.osd_map;
    // More up than there are is nonsense; down never goes below 0.
    assert_eq!(
        (
            o.epoch, o.num_osds, o.num_up, o.num_in, o.num_down, o.num_out
        ),
        (5, 3, 9, 0, 0, 3)
    );
    assert_eq!(c.pg_map.num_pgs, 0);
    assert_eq!(c.pg_map.usage_percent, 1000.0);
    assert_eq!(
        (
            c.pg_map.degraded_ratio,
            c.pg_map.misplaced_ratio,
            c.pg_map.read_bytes_per_sec
        ),
        (0.0, 0.0, 12)
    );
    wire_ok(&c);
    let df = parse_df(r#"{"stats":[],"pools":[1,{"id":-1,"name":null,"stats":{"percent_used":"abc","bytes_used":1.5e300}}]}"#).unwrap();
    assert_eq!(df.pools.len(), 2);
    assert_eq!(
        (
            df.pools[1].id,
            df.pools[1].bytes_used,
            df.pools[1].percent_used
        ),
        (0, 0, 0.0)
    );
}

/// Nesting deeper than serde_json's limit (128) is refused as "not JSON",
/// without a stack overflow.
#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    for depth in [200, 100_000] {
        let text = format!(
            "{{\"fsid\":\"f\",\"health\":{}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let e = within(move || parse_status(&text).map(|_| ()).unwrap_err().to_string());
        assert!(e.contains("recursion limit"), "{e}");
        let text = format!("{}{}", "{\"pools\":".repeat(depth), "}".repeat(depth));
        within(move || drop(parse_df(&text)));
    }
    // Within the limit, nesting in unknown places is simply ignored.
    let text = format!(
        "{{\"fsid\":\"f\",\"fsmap\":{}1{}}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    assert_eq!(parse_status(&text).unwrap().fsid, "f");
}

/// Runs `f` on a thread with a generous limit: a hang or superlinear
/// work fails the test instead of stalling it.
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()).unwrap());
    rx.recv_timeout(Duration::from_secs(20))
        .expect("finishes in time")
}

/// Documents of the output cap (4 MiB): many checks, details, monitors and
/// pools, and one huge string. They parse in linear time, the lists are
/// capped and strings cut, so the section stays a bounded size.
#[test]
fn a_four_mebibyte_document_is_linear_and_capped() {
    let cap = ceph::OUTPUT_CAP;
    let mut checks = String::new();
    let mut i = 0;
    while checks.len() < cap / 2 {
        checks.push_str(&format!(
            "\"C{i}\":{{\"severity\":\"HEALTH_WARN\",\"summary\":{{\"message\":\"m\"}},\"detail\":[{}]}},",
            vec!["{\"message\":\"d\"}"; 60].join(",")
        ));
        i += 1;
    }
    checks.pop();
    let mons = vec!["{\"name\":\"m\",\"rank\":1}"; 20_000].join(",");
    let status = format!(
        "{{\"fsid\":\"{}\",\"health\":{{\"status\":\"HEALTH_WARN\",\"checks\":{{{checks}}}}},\"monmap\":{{\"mons\":[{mons}]}}}}",
        "f".repeat(500_000)
    );
    assert!(status.len() <= cap + 600_000);
    let pools = vec!["{\"id\":1,\"name\":\"p\",\"stats\":{\"bytes_used\":1}}"; 80_000].join(",");
    let df = format!("{{\"pools\":[{pools}]}}");
    assert!(df.len() <= cap);
    let started = Instant::now();
    let (c, v) = within(move || {
        let mut c = parse_status(&status).unwrap();
        c.apply_df(parse_df(&df).unwrap());
        let v = report::ceph(&c, pinned());
        (c, v)
    });
    // Unoptimised and on a shared machine this is well under a second;
    // anything quadratic in 4 MiB would take minutes.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(c.fsid.len(), ceph::MAX_TEXT);
    assert_eq!(c.health.checks.len(), ceph::MAX_ITEMS);
    assert!(
        c.health
            .checks
            .values()
            .all(|k| k.detail.len() == ceph::MAX_DETAIL)
    );
    assert_eq!(c.mon_map.monitors.len(), ceph::MAX_ITEMS);
    assert_eq!(c.mon_map.num_mons, 20_000, "the count is not capped");
    assert_eq!(c.pools.len(), ceph::MAX_ITEMS);
    assert!(wire::check_section("ceph", &v).is_empty());
}

// ---- the collector, on fake programs ----

/// A captured root whose `ceph` is vendor-free-tests/fake-program with
/// `answers` (file name under .capture/cmd/ → content).
fn fake_root(name: &str, answers: &[(&str, &str)]) -> (Root, PathBuf) {
    let dir = scratch(name);
    let cmd = dir.join(".capture/cmd");
    std::fs::create_dir_all(&cmd).unwrap();
    std::fs::create_dir_all(dir.join(".capture/bin")).unwrap();
    std::os::unix::fs::symlink(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor-free-tests/fake-program"),
        dir.join(".capture/bin/ceph"),
    )
    .unwrap();
    std::fs::write(cmd.join("calls.log"), "").unwrap();
    for (k, v) in answers {
        std::fs::write(cmd.join(k), v).unwrap();
    }
    std::fs::create_dir_all(dir.join("etc/ceph")).unwrap();
    std::fs::write(dir.join("etc/ceph/ceph.conf"), "[global]\n").unwrap();
    (Root::new(&dir).unwrap(), cmd.join("calls.log"))
}

fn calls(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

const STATUS: &str = "ceph status --format json";
const DF: &str = "ceph df --format json";

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

/// The platform worker moves the collector and its result to its thread.
#[test]
fn the_collector_and_its_result_can_move_to_a_worker_thread() {
    fn send<T: Send + 'static>() {}
    fn shared<T: Send + Sync + Clone + PartialEq + std::fmt::Debug + 'static>() {}
    send::<Collector>();
    shared::<Ceph>();
    assert_eq!(ceph::MODULE, "ceph");
}

#[test]
fn no_ceph_program_is_no_section() {
    let dir = scratch("absent");
    std::fs::create_dir_all(dir.join(".capture")).unwrap();
    let mut c = Collector::new(Root::new(&dir).unwrap());
    assert_eq!(c.collect(soon()), Ok(None));
    assert_eq!(c.last_reason(), Some("ceph is not installed"));
}

/// Proxmox VE installs `ceph` on every node: on one without a cluster,
/// `ceph status` (a Python process, about a quarter of a second of CPU) ran
/// every minute only to fail. Without /etc/ceph/ceph.conf or the admin
/// keyring nothing is run; a dangling ceph.conf (a Proxmox link into an
/// /etc/pve that is not mounted) counts as none; either file is enough.
#[test]
fn ceph_installed_without_a_config_runs_nothing() {
    let (root, log) = fake_root("unconfigured", &[(STATUS, &fixture("squid-status.json"))]);
    let base = root.path("/");
    std::fs::remove_file(base.join("etc/ceph/ceph.conf")).unwrap();
    let mut c = Collector::new(root.clone());
    assert_eq!(c.collect(soon()), Ok(None));
    assert!(calls(&log).is_empty(), "{:?}", calls(&log));
    assert_eq!(c.last_reason(), Some(ceph::NOT_CONFIGURED));
    assert!(!ceph::configured(&root));

    // Proxmox's link, dangling while /etc/pve is not mounted.
    std::os::unix::fs::symlink("/etc/pve/ceph.conf", base.join("etc/ceph/ceph.conf")).unwrap();
    assert_eq!(c.collect(soon()), Ok(None));
    assert!(calls(&log).is_empty(), "a dangling link ran ceph");

    std::fs::write(
        base.join("etc/ceph/ceph.client.admin.keyring"),
        "[client.admin]\n",
    )
    .unwrap();
    assert!(ceph::configured(&root));
    assert!(c.collect(soon()).unwrap().is_some());
    assert_eq!(calls(&log).len(), 2, "{:?}", calls(&log));
}

/// With `--root /host` the link `/etc/ceph/ceph.conf -> /etc/pve/ceph.conf`
/// names the host's /etc/pve: it is followed inside the root, never to a
/// file of the machine the agent runs on (here a file every Linux machine
/// has stands in for the container's own).
#[test]
fn a_linked_ceph_conf_is_followed_inside_the_root() {
    let (root, log) = fake_root("linked", &[(STATUS, &fixture("squid-status.json"))]);
    let base = root.path("/");
    let conf = base.join("etc/ceph/ceph.conf");
    std::fs::remove_file(&conf).unwrap();
    assert!(Path::new("/proc/self/status").exists());
    std::os::unix::fs::symlink("/proc/self/status", &conf).unwrap();
    let mut c = Collector::new(root.clone());
    assert!(!ceph::configured(&root), "followed out of the root");
    assert_eq!(c.collect(soon()), Ok(None));
    assert!(calls(&log).is_empty(), "{:?}", calls(&log));

    std::fs::remove_file(&conf).unwrap();
    std::os::unix::fs::symlink("/etc/pve/ceph.conf", &conf).unwrap();
    std::fs::create_dir_all(base.join("etc/pve")).unwrap();
    std::fs::write(base.join("etc/pve/ceph.conf"), "[global]\n").unwrap();
    assert!(ceph::configured(&root));
    assert!(c.collect(soon()).unwrap().is_some());
    assert_eq!(calls(&log).len(), 2, "{:?}", calls(&log));
}

#[test]
fn both_commands_with_exactly_these_arguments() {
    let (root, log) = fake_root(
        "both",
        &[
            (STATUS, &fixture("squid-status.json")),
            (DF, &fixture("df.json")),
        ],
    );
    let mut c = Collector::new(root);
    let got = c.collect(soon()).unwrap().unwrap();
    assert_eq!(calls(&log), [STATUS, DF]);
    assert_eq!(got.pools.len(), 4);
    assert_eq!(got.mon_map.num_mons, 5);
    assert_eq!(c.last_reason(), None);
    assert_eq!(ceph::STATUS_ARGS, ["status", "--format", "json"]);
    assert_eq!(ceph::DF_ARGS, ["df", "--format", "json"]);
}

/// Proxmox VE installs ceph-common everywhere: `ceph status` failing is
/// the usual non-Ceph node, left out without an error, its reason kept.
#[test]
fn a_failing_ceph_status_is_not_a_ceph_node() {
    let (root, log) = fake_root(
        "status-fails",
        &[
            (&format!("{STATUS}.exit"), "1"),
            (
                &format!("{STATUS}.stderr"),
                "Error initializing cluster client: ObjectNotFound('RADOS object not found (error calling conf_read_file)')\n",
            ),
        ],
    );
    let mut c = Collector::new(root);
    assert_eq!(c.collect(soon()), Ok(None));
    assert_eq!(calls(&log), [STATUS], "ceph df is not run");
    let why = c.last_reason().unwrap();
    assert!(
        why.starts_with("not a Ceph node: ceph status --format json: exit 1: Error initializing"),
        "{why}"
    );
}

#[test]
fn a_failing_ceph_df_sends_the_status_alone() {
    let (root, _) = fake_root(
        "df-fails",
        &[
            (STATUS, &fixture("legacy-status.json")),
            (&format!("{DF}.exit"), "13"),
        ],
    );
    let mut c = Collector::new(root);
    let got = c.collect(soon()).unwrap().unwrap();
    assert!(got.pools.is_empty());
    assert_eq!(got.fsid, "legacy-cluster-0001");
    assert!(
        c.last_reason()
            .unwrap()
            .starts_with("pools left out: ceph df --format json: exit 13")
    );
    let v = report::ceph(&got, pinned());
    assert!(v.get("pools").is_none());
    // A df that is not a df is the same: status alone.
    let (root, _) = fake_root(
        "df-garbage",
        &[(STATUS, &fixture("legacy-status.json")), (DF, "[1,2]")],
    );
    let mut c = Collector::new(root);
    assert!(c.collect(soon()).unwrap().unwrap().pools.is_empty());
    assert!(
        c.last_reason().unwrap().contains("an array"),
        "{:?}",
        c.last_reason()
    );
}

#[test]
fn a_status_that_is_not_one_is_an_error_of_this_source() {
    let (root, _) = fake_root("garbage", &[(STATUS, "\u{1}\u{2}binary")]);
    let mut c = Collector::new(root);
    let e = c.collect(soon()).unwrap_err();
    assert!(e.starts_with("ceph status --format json: not JSON"), "{e}");
    assert!(!e.contains('\n'));
}

/// A hung `ceph` (monitors unreachable) costs the caller's deadline, not
/// the 10 s per command, and leaves the section out.
#[test]
fn a_hung_ceph_status_ends_at_the_deadline() {
    let (root, _) = fake_root("hang", &[(&format!("{STATUS}.hang"), "")]);
    let mut c = Collector::new(root);
    let started = Instant::now();
    assert_eq!(
        c.collect(Instant::now() + Duration::from_millis(700)),
        Ok(None)
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        c.last_reason().unwrap().contains("no answer"),
        "{:?}",
        c.last_reason()
    );
    assert!(c.take_hung());
}

#[test]
fn a_passed_deadline_starts_nothing() {
    let (root, log) = fake_root(
        "late",
        &[(STATUS, &fixture("squid-status.json")), (DF, "{}")],
    );
    let mut c = Collector::new(root);
    // Past deadline: nothing is started at all.
    assert_eq!(c.collect(Instant::now()), Ok(None));
    assert!(calls(&log).is_empty());
    assert!(c.last_reason().unwrap().contains("no time left"));
}

// ---- a real cluster ----

/// A one-monitor Pacific cluster on 127.0.0.1 (monitor `a`, managers `x`
/// active and `y` standby, one pool, no OSDs); the collector runs the real
/// `ceph` with the agent's clean environment, which reads the cluster's
/// `/etc/ceph/ceph.conf` in a private mount namespace. Its result must be
/// what the cluster says of itself.
#[test]
fn a_real_ceph_monitor() {
    if let Some(why) = ceph_cluster::missing() {
        if std::env::var("PULSE_TEST_SKIP_CEPH").as_deref() == Ok("1") {
            eprintln!("\n*** SKIPPED (PULSE_TEST_SKIP_CEPH=1): {why} ***\n");
            return;
        }
        panic!("{why}; set PULSE_TEST_SKIP_CEPH=1 to skip this test");
    }
    let started = Instant::now();
    let dir = scratch("cluster");
    let mut cluster = ceph_cluster::Cluster::start(&dir.join("cluster"));
    eprintln!("cluster up in {:?}", started.elapsed());
    let root_dir = dir.join("root");
    let log = cluster.captured_root(&root_dir);
    let mut collector = Collector::new(Root::new(&root_dir).unwrap());

    if let Ok(out) = std::env::var("PULSE_CEPH_CAPTURE_DIR") {
        // Refreshes the pacific-*.json fixtures.
        std::fs::write(
            Path::new(&out).join("pacific-status.json"),
            cluster.ceph(&["status", "--format", "json"]),
        )
        .unwrap();
        std::fs::write(
            Path::new(&out).join("pacific-df.json"),
            cluster.ceph(&["df", "--format", "json"]),
        )
        .unwrap();
    }

    // Health can change between two questions (a manager check appearing):
    // the answer counts when `ceph health` said the same before and after.
    let mut tries = 0;
    let (got, health) = loop {
        let before = cluster.json(&["health"]);
        let got = collector.collect(Instant::now() + Duration::from_secs(30));
        let after = cluster.json(&["health"]);
        if before == after || tries == 4 {
            break (got, after);
        }
        tries += 1;
    };
    let got = got
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()))
        .unwrap_or_else(|| {
            panic!(
                "no section: {:?}\n{}",
                collector.last_reason(),
                cluster.logs()
            )
        });
    assert_eq!(collector.last_reason(), None);
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines, "status --format json\ndf --format json\n");

    assert_eq!(got.fsid, cluster.fsid);
    assert_eq!(got.health.status, health["status"].as_str().unwrap());
    let want_checks: Vec<(String, String, String)> = health["checks"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v["severity"].as_str().unwrap().to_string(),
                v["summary"]["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let got_checks: Vec<(String, String, String)> = got
        .health
        .checks
        .iter()
        .map(|(k, v)| (k.clone(), v.severity.clone(), v.message.clone()))
        .collect();
    assert_eq!(got_checks, want_checks);
    // Set by this cluster's own configuration (Pacific's default).
    assert!(
        got.health
            .checks
            .contains_key("AUTH_INSECURE_GLOBAL_ID_RECLAIM_ALLOWED"),
        "{:?}",
        got.health
    );

    let mon_dump = cluster.json(&["mon", "dump"]);
    assert_eq!(got.mon_map.epoch, mon_dump["epoch"].as_u64().unwrap());
    assert_eq!(got.mon_map.num_mons, 1);
    let quorum = cluster.json(&["quorum_status"]);
    assert_eq!(quorum["quorum_names"], json!(["a"]));

    let m = &got.mgr_map;
    assert_eq!((m.available, m.standbys, m.num_mgrs), (true, 1, 2));
    assert!(m.active_mgr.is_empty() || m.active_mgr == "x", "{m:?}");
    let osd_dump = cluster.json(&["osd", "dump"]);
    let o = &got.osd_map;
    assert_eq!(o.epoch, osd_dump["epoch"].as_u64().unwrap());
    assert_eq!(
        (o.num_osds, o.num_up, o.num_in, o.num_down, o.num_out),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(got.pg_map.num_pgs, ceph_cluster::POOL_PGS);
    assert_eq!((got.pg_map.bytes_total, got.pg_map.usage_percent), (0, 0.0));
    let pools: Vec<(u64, &str)> = got.pools.iter().map(|p| (p.id, p.name.as_str())).collect();
    let listed = cluster.json(&["osd", "pool", "ls", "detail"]);
    let want_pools: Vec<(u64, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["pool_id"].as_u64().unwrap(),
                p["pool_name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(pools, want_pools);
    assert!(pools.iter().any(|(_, n)| *n == ceph_cluster::POOL));
    assert_eq!(
        services(&got),
        [("mon", 1, 1), ("mgr", 1, 2), ("osd", 0, 0)]
    );
    let v = wire_ok(&got);
    assert_eq!(v["collectedAt"], "2027-01-15T08:00:00Z");

    // The monitor gone: `ceph status` hangs; the run ends at its deadline
    // and the section is left out, with the reason.
    cluster.stop_monitor();
    let t = Instant::now();
    assert_eq!(
        collector.collect(Instant::now() + Duration::from_secs(2)),
        Ok(None)
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let why = collector.last_reason().unwrap().to_string();
    assert!(
        why.starts_with("not a Ceph node: ceph status --format json"),
        "{why}"
    );
    drop(cluster);
    assert!(!dir.join("cluster").exists());
    eprintln!("real Ceph test took {:?}", started.elapsed());
}
