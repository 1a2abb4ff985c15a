//! The platform sources as the report sees them (`src/platform.rs`): a
//! hung `apt-get` or `pct` costs one report the hardware wait and later
//! reports nothing; apt is asked once per half hour; `--disable-ceph` and
//! the remote `disable_ceph` really switch Ceph.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use pulse_agent::collect::{HostSnapshot, Outcome};
use pulse_agent::hardware::WAIT;
use pulse_agent::platform::{Platform, Settings};
use pulse_agent::report::Module;
use pulse_agent::root::Root;

/// fake-program's key for the package check (see `packages::APT_ARGS`).
fn apt_key() -> String {
    let mut key = String::from("apt-get");
    for a in pulse_agent::collect::packages::APT_ARGS {
        key.push(' ');
        key.push_str(a);
    }
    key
}

/// A fresh copy of fixture case `case` in the test's own directory `name`.
fn copy(case: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("platform-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    common::copy_case(case, &dir);
    dir
}

/// A copy of the debian12-vm case with fake `apt-get`, `pct` and `ceph`,
/// answering from `answers` (key, file suffix, content).
fn host(name: &str, answers: &[(&str, &str, &str)]) -> PathBuf {
    let dir = copy("debian12-vm", name);
    let bin = dir.join(".capture/bin");
    std::fs::create_dir_all(&bin).unwrap();
    for p in ["apt-get", "pct", "ceph"] {
        let _ = std::fs::remove_file(bin.join(p));
        std::os::unix::fs::symlink(common::fake_program(), bin.join(p)).unwrap();
    }
    let cmd = dir.join(".capture/cmd");
    std::fs::create_dir_all(&cmd).unwrap();
    std::fs::write(cmd.join("calls.log"), "").unwrap();
    for (key, suffix, text) in answers {
        std::fs::write(cmd.join(format!("{key}{suffix}")), text).unwrap();
    }
    dir
}

fn platform(dir: &Path) -> Platform {
    Platform::new(
        Root::new(dir).unwrap(),
        Settings {
            pct_path: None,
            clock: SystemTime::now,
            once: false,
            apt_cache: None,
        },
    )
}

/// One cycle: its snapshot, modules and how long the report waited.
fn cycle(p: &mut Platform, modules: &mut Vec<Module>, ceph: bool) -> (HostSnapshot, Duration) {
    let started = Instant::now();
    let pending = p.begin(ceph);
    let mut snap = HostSnapshot::default();
    p.finish(pending, &mut snap, modules, SystemTime::now());
    (snap, started.elapsed())
}

fn outcome<'a>(snap: &'a HostSnapshot, name: &str) -> &'a Outcome {
    &snap
        .sources
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no status for {name}: {:?}", snap.sources))
        .outcome
}

fn calls(dir: &Path, program: &str) -> usize {
    std::fs::read_to_string(dir.join(".capture/cmd/calls.log"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(&format!("{program} ")))
        .count()
}

#[test]
fn a_hung_apt_get_and_pct_cost_one_report_the_wait_and_later_ones_nothing() {
    let dir = host(
        "hung",
        &[(&apt_key(), ".hang", ""), ("pct list", ".hang", "")],
    );
    let mut p = platform(&dir);
    let mut modules = Vec::new();
    let (snap, took) = cycle(&mut p, &mut modules, true);
    assert!(
        took >= WAIT,
        "the first report waits for the first runs: {took:?}"
    );
    assert!(took < WAIT + Duration::from_millis(700), "{took:?}");
    assert!(snap.packages.is_none() && snap.lxc.is_none());
    for name in ["package-updates", "proxmox-lxc-filesystems"] {
        match outcome(&snap, name) {
            Outcome::Failed(e) => assert!(e.contains("first run has not finished"), "{e}"),
            o => panic!("{name}: {o:?}"),
        }
    }
    // The runs are still going: the next reports do not wait for them.
    for _ in 0..2 {
        let (snap, took) = cycle(&mut p, &mut modules, true);
        assert!(took < Duration::from_millis(300), "{took:?}");
        assert!(snap.packages.is_none());
    }
}

#[test]
fn apt_is_asked_once_per_half_hour_and_the_answer_rides_with_every_report() {
    let dir = host(
        "cached",
        &[(
            &apt_key(),
            "",
            "Inst openssl [3.0.15-1~deb12u1] (3.0.17-1~deb12u2 Debian-Security:12/stable-security [amd64])\n\
             Conf openssl (3.0.17-1~deb12u2 Debian-Security:12/stable-security [amd64])\n\
             1 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n",
        )],
    );
    let mut p = platform(&dir);
    let mut modules = Vec::new();
    let mut first_at = None;
    for _ in 0..3 {
        let (snap, _) = cycle(&mut p, &mut modules, true);
        let pk = snap.packages.expect("packageUpdates in every report");
        assert_eq!(pk.value.pending.len(), 1);
        // The time it was checked, not the time of each report.
        assert_eq!(*first_at.get_or_insert(pk.at), pk.at);
    }
    assert_eq!(calls(&dir, "apt-get"), 1);
    assert!(modules.iter().any(|m| m.name == "package-updates"));
}

#[test]
fn switching_ceph_off_stops_asking_it_and_on_again_starts_from_a_new_run() {
    let dir = copy("pve-ceph", "ceph-switch");
    std::fs::write(dir.join(".capture/cmd/calls.log"), "").unwrap();
    let mut p = platform(&dir);
    let mut modules = Vec::new();
    let state = |modules: &[Module]| {
        let m = modules
            .iter()
            .find(|m| m.name == "ceph")
            .expect("ceph module");
        (m.enabled, m.state.as_str())
    };

    let (snap, _) = cycle(&mut p, &mut modules, true);
    assert_eq!(
        snap.ceph
            .expect("ceph on a Ceph node")
            .value
            .osd_map
            .num_osds,
        6
    );
    assert_eq!(state(&modules), (true, "running"));
    let asked = calls(&dir, "ceph");
    assert_eq!(asked, 2, "ceph status and ceph df");

    for _ in 0..2 {
        let (snap, _) = cycle(&mut p, &mut modules, false);
        assert!(snap.ceph.is_none());
        assert_eq!(state(&modules), (false, "disabled"));
    }
    assert_eq!(
        calls(&dir, "ceph"),
        asked,
        "ceph is not run while switched off"
    );

    // On again within the refresh: a new run, not the result from before.
    let (snap, _) = cycle(&mut p, &mut modules, true);
    assert!(snap.ceph.is_some());
    assert_eq!(state(&modules), (true, "running"));
    assert_eq!(calls(&dir, "ceph"), asked + 2);
}

#[test]
fn a_host_without_ceph_lists_no_ceph_module_even_switched_off() {
    let dir = copy("debian12-vm", "no-ceph");
    let mut p = platform(&dir);
    let mut modules = Vec::new();
    for on in [true, false] {
        let (snap, _) = cycle(&mut p, &mut modules, on);
        assert!(snap.ceph.is_none() && snap.unraid.is_none() && snap.lxc.is_none());
        assert!(
            modules.is_empty(),
            "no module for a platform that is not here: {modules:?}"
        );
        assert_eq!(outcome(&snap, "ceph"), &Outcome::Absent);
    }
}

/// A Proxmox VE node without a Ceph cluster has the `ceph` program but no
/// /etc/ceph/ceph.conf: `ceph status` ran every minute only to fail.
/// Now nothing runs, no worker thread starts, and Ceph is absent.
#[test]
fn a_node_with_the_ceph_program_but_no_config_runs_no_ceph() {
    let dir = host(
        "ceph-unconfigured",
        &[("ceph status --format json", "", "{\"health\":{}}")],
    );
    assert!(!dir.join("etc/ceph/ceph.conf").exists());
    let mut p = platform(&dir);
    let mut modules = Vec::new();
    for _ in 0..3 {
        let (snap, _) = cycle(&mut p, &mut modules, true);
        assert!(snap.ceph.is_none());
        assert_eq!(outcome(&snap, "ceph"), &Outcome::Absent);
    }
    assert_eq!(calls(&dir, "ceph"), 0, "ceph was run without a config");
    assert!(
        !modules.iter().any(|m| m.name == "ceph"),
        "a ceph module for a node without Ceph: {modules:?}"
    );
}

#[test]
fn a_ceph_node_whose_monitors_stop_answering_says_so_instead_of_vanishing() {
    let dir = copy("pve-ceph", "ceph-lost");
    let mut p = platform(&dir);
    let mut modules = Vec::new();
    let (snap, _) = cycle(&mut p, &mut modules, true);
    assert!(snap.ceph.is_some());

    let cmd = dir.join(".capture/cmd");
    std::fs::remove_file(cmd.join("ceph status --format json")).unwrap();
    std::fs::write(cmd.join("ceph status --format json.exit"), "1").unwrap();
    std::fs::write(
        cmd.join("ceph status --format json.stderr"),
        "monclient(hunting): authenticate timed out after 300\n",
    )
    .unwrap();
    // Off and on again: a new run now, not in a minute.
    cycle(&mut p, &mut modules, false);
    let (snap, _) = cycle(&mut p, &mut modules, true);
    assert!(snap.ceph.is_none());
    let m = modules.iter().find(|m| m.name == "ceph").unwrap();
    assert_eq!(m.state.as_str(), "retrying");
    let e = m.last_error.as_deref().unwrap();
    assert!(e.contains("authenticate timed out"), "{e}");
    match outcome(&snap, "ceph") {
        Outcome::Failed(e) => assert!(e.contains("ceph status")),
        o => panic!("{o:?}"),
    }
}

#[test]
fn apt_runs_again_only_when_what_it_reads_has_changed() {
    use pulse_agent::platform::{AptSource, Collect};
    let dir = host(
        "apt-inputs",
        &[(
            &apt_key(),
            "",
            "Inst bash [5.2.15-2+b7] (5.2.15-2+b8 Debian:12.11/stable [amd64])\n\
             1 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n",
        )],
    );
    let write = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write(
        "var/lib/dpkg/status",
        "Package: bash\nVersion: 5.2.15-2+b7\n",
    );
    write(
        "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease",
        "x",
    );
    let mut apt = AptSource::new(Root::new(&dir).unwrap(), None);
    let soon = || Instant::now() + Duration::from_secs(10);
    let first = apt.collect(soon()).unwrap().unwrap();
    assert_eq!(first.pending.len(), 1);
    assert!(!first.reboot_required);
    assert_eq!(calls(&dir, "apt-get"), 1);

    // Nothing apt reads has changed: no run, but the reboot flag is read.
    write("run/reboot-required", "*** System restart required ***\n");
    let again = apt.collect(soon()).unwrap().unwrap();
    assert_eq!(calls(&dir, "apt-get"), 1);
    assert!(again.reboot_required);
    assert_eq!(again.pending, first.pending);

    // `apt update` rewrote a list: apt runs again.
    write(
        "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease",
        "xy",
    );
    apt.collect(soon()).unwrap().unwrap();
    assert_eq!(calls(&dir, "apt-get"), 2);
    // dpkg installed something.
    write(
        "var/lib/dpkg/status",
        "Package: bash\nVersion: 5.2.15-2+b8\n",
    );
    apt.collect(soon()).unwrap().unwrap();
    assert_eq!(calls(&dir, "apt-get"), 3);
    // A new sources file.
    write(
        "etc/apt/sources.list.d/extra.list",
        "deb http://example.org/ x main\n",
    );
    apt.collect(soon()).unwrap().unwrap();
    assert_eq!(calls(&dir, "apt-get"), 4);
    apt.collect(soon()).unwrap().unwrap();
    assert_eq!(calls(&dir, "apt-get"), 4);
}

/// `--once` from a timer is a new process every minute: apt's answer is
/// kept in the state directory, so apt runs only when its inputs change.
#[test]
fn apts_answer_outlives_the_process_through_its_cache_file() {
    use pulse_agent::platform::{AptSource, Collect};
    let dir = host(
        "apt-cache-file",
        &[(
            &apt_key(),
            "",
            "Inst tzdata [2024a-0+deb12u1] (2025b-0+deb12u1 Debian:12.11/stable [all])\n\
             Inst newpkg (1.0-1 Debian:12.11/stable [amd64])\n\
             2 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n",
        )],
    );
    let cache = dir.join("state/packages.json");
    std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
    let soon = || Instant::now() + Duration::from_secs(10);
    let root = || Root::new(&dir).unwrap();

    let first = AptSource::new(root(), Some(cache.clone()))
        .collect(soon())
        .unwrap()
        .unwrap();
    assert_eq!(calls(&dir, "apt-get"), 1);
    assert!(cache.exists());
    let written = std::fs::metadata(&cache).unwrap().modified().unwrap();

    // Two more "processes": apt is not run, the answer is the same, and the
    // file is not written again.
    for _ in 0..2 {
        let again = AptSource::new(root(), Some(cache.clone()))
            .collect(soon())
            .unwrap()
            .unwrap();
        assert_eq!(again, first);
    }
    assert_eq!(calls(&dir, "apt-get"), 1);
    assert_eq!(
        std::fs::metadata(&cache).unwrap().modified().unwrap(),
        written
    );

    // A damaged file is no answer: apt runs.
    std::fs::write(&cache, "{\"inputs\": 5").unwrap();
    AptSource::new(root(), Some(cache.clone()))
        .collect(soon())
        .unwrap()
        .unwrap();
    assert_eq!(calls(&dir, "apt-get"), 2);
}
