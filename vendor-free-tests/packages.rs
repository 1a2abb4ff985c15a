//! `host.packageUpdates` and `host.storageCleanup` (`collect/packages.rs`):
//! the `apt-get -s upgrade` parser on captured and written outputs and on
//! hostile input; the collectors on captured roots (a failing and a hung
//! apt-get, the package cache with links and apt's lock); the real apt of
//! the test machine, with a pending upgrade the test makes itself and while
//! dpkg holds its locks; and the JSON of both sections against the wire
//! schema.
//!
//! The real-apt tests need root and a Debian-like machine: they install a
//! dummy package and add a `file:` source, and remove both again (also what
//! an interrupted earlier run left). Without root they fail, unless
//! `PULSE_TEST_SKIP_APT=1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pulse_agent::collect::packages::{
    self, APT_ARGS, CACHE_PROVIDER, Cleanup, CleanupCollector, Collector, Package, Updates,
};
use pulse_agent::report;
use pulse_agent::root::Root;
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    common::fixtures_dir().join("packages")
}

/// `NAME INSTALLED AVAILABLE` lines (`-`: none) as packages.
fn expected(text: &str) -> Vec<Package> {
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 3, "bad expect line {l:?}");
            Package {
                name: f[0].into(),
                installed: (f[1] != "-").then(|| f[1].into()),
                available: f[2].into(),
            }
        })
        .collect()
}

#[test]
fn every_fixture_parses_to_its_expected_packages() {
    let mut n = 0;
    for e in std::fs::read_dir(fixtures()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "txt") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let want = expected(&std::fs::read_to_string(p.with_extension("expect")).unwrap());
        let got = packages::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(got, want, "{}", p.display());
        n += 1;
    }
    assert!(n >= 6, "only {n} fixtures");
}

#[test]
fn the_captured_debian_run_has_its_130_upgrades_in_apt_order() {
    let text = std::fs::read_to_string(fixtures().join("debian12-130-upgrades.txt")).unwrap();
    let got = packages::parse(&text).unwrap();
    assert_eq!(got.len(), 130);
    assert_eq!(got[0].name, "base-files");
    // `[libpam-modules:amd64 on libpam-modules-bin:amd64] [...]` tails.
    let pam = got.iter().find(|p| p.name == "libpam-modules-bin").unwrap();
    assert_eq!(pam.installed.as_deref(), Some("1.5.2-6+deb12u1"));
    assert_eq!(pam.available, "1.5.2-6+deb12u3");
    // Epochs stay in the version.
    let cap = got.iter().find(|p| p.name == "libcap2").unwrap();
    assert_eq!(cap.available, "1:2.66-4+deb12u3+b1");
}

#[test]
fn a_new_package_has_no_installed_version_not_its_architecture() {
    // The stock agent takes the first `[...]` of the line as the installed
    // version: for a new package that is `[amd64]`.
    let got = packages::parse(
        "1 upgraded, 1 newly installed, 0 to remove and 0 not upgraded.\n\
         Inst linux-image-6.1.0-31-amd64 (6.1.128-1 Debian-Security:12/stable-security [amd64])\n\
         Inst x [1] (2 s [all])\n",
    )
    .unwrap();
    assert_eq!(got[0].installed, None);
    assert_eq!(got[0].available, "6.1.128-1");
}

#[test]
fn hostile_outputs_are_clear_errors() {
    let summary = "1 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n";
    let cases: &[(&str, &str)] = &[
        ("", "no summary line"),
        ("Inst a [1] (2 s)\n", "no summary line"),
        (
            summary,
            "summary counts 1 packages to install, the simulation lists 0",
        ),
        (&format!("{summary}Inst\n"), "line 2: Inst line without"),
        (
            &format!("{summary}Inst a [1] (2 s)\nInst b [1] (2 s)\n"),
            "lists 2",
        ),
        (&format!("{summary}Inst a [1 (2 s)\n"), "line 2"),
        (
            &format!("{summary}Inst a [1]\n"),
            "without (available version)",
        ),
        (&format!("{summary}Inst a [1] (2\n"), "unclosed (available"),
        (
            &format!("{summary}Inst a\u{7}b [1] (2 s)\n"),
            "valid package name",
        ),
        (
            &format!("{summary}Inst a [1] ({} s)\n", "9".repeat(300)),
            "invalid available",
        ),
        (
            "18446744073709551615 upgraded, 1 newly installed, 0 to remove and 0 not upgraded.\n",
            "no summary line",
        ),
    ];
    for (input, want) in cases {
        let e = packages::parse(input).unwrap_err().to_string();
        assert!(e.starts_with("apt-get -s upgrade: "), "{input:?}: {e}");
        assert!(e.contains(want), "{input:?}: {e} (want {want:?})");
    }
}

#[test]
fn megabytes_of_inst_lines_parse_in_linear_time() {
    let mut text = String::new();
    let mut n = 0;
    while text.len() < 6 << 20 {
        text.push_str(&format!(
            "Inst p{n} [1.{n}] (2.{n} Debian:12/stable [amd64]) []\n"
        ));
        n += 1;
    }
    text.push_str(&format!(
        "{n} upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n"
    ));
    let started = Instant::now();
    assert_eq!(packages::parse(&text).unwrap().len(), n);
    // One long line of brackets, and one of `Inst ` repeated.
    let long = format!("Inst a [{}\n", "[".repeat(6 << 20));
    assert!(packages::parse(&long).is_err());
    let repeated = "Inst ".repeat(1 << 20);
    assert!(packages::parse(&repeated).is_err());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn the_inventory_hash_ignores_order_and_suites_but_not_versions() {
    let a = packages::parse(
        "2 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n\
         Inst a [1] (2 Debian:12.1/stable [all])\nInst b [1] (2 Debian:12.1/stable [all])\n",
    )
    .unwrap();
    let b = packages::parse(
        "2 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.\n\
         Inst b [1] (2 Debian:12.2/stable [all])\nInst a [1] (2 Debian:12.2/stable [all])\n",
    )
    .unwrap();
    let h = packages::inventory_hash(&a);
    assert_eq!(h, packages::inventory_hash(&b));
    assert!(h.starts_with("sha256:") && h.len() == 7 + 64, "{h}");
    let mut c = a.clone();
    c[0].available = "3".into();
    assert_ne!(h, packages::inventory_hash(&c));
    assert_ne!(h, packages::inventory_hash(&[]));
}

// ---- captured roots ----

const KEY: &str = "apt-get -s -o Debug::NoLocking=1 -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o Dir::Log::Planner= upgrade";

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("packages-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A captured root with a stand-in apt-get and `files` (`(rel, content)`).
fn captured(name: &str, apt: bool, files: &[(&str, &str)]) -> PathBuf {
    let d = tmp(name);
    std::fs::create_dir_all(d.join(".capture/cmd")).unwrap();
    std::fs::create_dir_all(d.join(".capture/bin")).unwrap();
    if apt {
        std::os::unix::fs::symlink(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor-free-tests/fake-program"),
            d.join(".capture/bin/apt-get"),
        )
        .unwrap();
    }
    for (rel, content) in files {
        let p = d.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    d
}

fn in_a_minute() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

#[test]
fn the_args_are_the_fake_programs_key() {
    assert_eq!(format!("apt-get {}", APT_ARGS.join(" ")), KEY);
}

#[test]
fn a_captured_root_answers_from_its_apt_get_and_reboot_flag() {
    let text = std::fs::read_to_string(fixtures().join("ubuntu2404-security.txt")).unwrap();
    let cmd = format!(".capture/cmd/{KEY}");
    let d = captured(
        "captured",
        true,
        &[
            (&cmd, &text),
            ("run/reboot-required", "*** System restart required ***\n"),
        ],
    );
    let u = Collector::new(Root::new(&d).unwrap())
        .collect(in_a_minute())
        .unwrap()
        .unwrap();
    let want = packages::parse(&text).unwrap();
    assert_eq!(
        u,
        Updates {
            supported: true,
            manager: "apt".into(),
            inventory_hash: packages::inventory_hash(&want),
            pending: want,
            reboot_required: true,
            error: None,
        }
    );
}

#[test]
fn no_apt_get_is_unsupported_not_an_error() {
    let d = captured("no-apt", false, &[("var/cache/apt/archives/a.deb", "x")]);
    let root = Root::new(&d).unwrap();
    let u = Collector::new(root.clone()).collect(in_a_minute()).unwrap();
    assert_eq!(u, Some(Updates::default()));
    let c = CleanupCollector::new(root).collect(in_a_minute()).unwrap();
    assert_eq!(c, Some(Cleanup::default()));
}

#[test]
fn a_failing_apt_get_is_the_sections_error_with_its_message() {
    let cmd = format!(".capture/cmd/{KEY}");
    let d = captured(
        "failing",
        true,
        &[
            (&format!("{cmd}.exit"), "100\n"),
            (
                &format!("{cmd}.stderr"),
                "E: Malformed entry 1 in list file /etc/apt/sources.list.d/x.list (URI parse) https://me:secret@repo.example/debian\n",
            ),
        ],
    );
    let u = Collector::new(Root::new(&d).unwrap())
        .collect(in_a_minute())
        .unwrap()
        .unwrap();
    assert!(u.supported && u.pending.is_empty() && u.inventory_hash.is_empty());
    let e = u.error.unwrap();
    assert!(
        e.starts_with("apt-get -s upgrade: exit 100: E: Malformed entry 1"),
        "{e}"
    );
    assert!(
        !e.contains("secret") && e.contains("https://***@repo.example"),
        "{e}"
    );
}

#[test]
fn a_hung_apt_get_returns_at_the_deadline_with_a_clear_error() {
    let cmd = format!(".capture/cmd/{KEY}.hang");
    let d = captured("hung", true, &[(&cmd, "")]);
    let mut c = Collector::new(Root::new(&d).unwrap());
    let started = Instant::now();
    let u = c
        .collect(Instant::now() + Duration::from_secs(1))
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let e = u.error.unwrap();
    assert_eq!(e, "apt-get -s upgrade: no answer within 1.0 s");
    assert!(c.hung());
    // A deadline already past runs nothing.
    let u = c.collect(Instant::now()).unwrap().unwrap();
    assert_eq!(
        u.error.unwrap(),
        "apt-get -s upgrade: no time left in this run"
    );
}

#[test]
fn a_live_root_other_than_slash_does_not_run_this_machines_apt() {
    let d = tmp("live-elsewhere");
    std::fs::create_dir_all(d.join("usr/bin")).unwrap();
    std::fs::write(d.join("usr/bin/apt-get"), "").unwrap();
    let u = Collector::new(Root::new(&d).unwrap())
        .collect(in_a_minute())
        .unwrap()
        .unwrap();
    assert!(u.supported);
    assert!(u.error.unwrap().contains("is not this machine"));
}

#[test]
fn the_cache_counts_what_apt_get_clean_removes_and_follows_no_link() {
    let d = captured(
        "cache",
        true,
        &[
            ("var/cache/apt/archives/a_1_all.deb", "aaaa"),
            ("var/cache/apt/archives/B_2_AMD64.DEB", "bb"),
            ("var/cache/apt/archives/lock", ""),
            ("var/cache/apt/archives/partial/c_3_all.deb.FAILED", "ccc"),
            (
                "var/cache/apt/archives/sub/deeper.deb",
                "not removed by clean",
            ),
            ("outside/huge.deb", &"x".repeat(10_000)),
        ],
    );
    let arch = d.join("var/cache/apt/archives");
    std::os::unix::fs::symlink(d.join("outside/huge.deb"), arch.join("link.deb")).unwrap();
    std::os::unix::fs::symlink("/etc", arch.join("partial/etc")).unwrap();
    let root = Root::new(&d).unwrap();
    let c = CleanupCollector::new(root.clone())
        .collect(in_a_minute())
        .unwrap()
        .unwrap();
    assert_eq!(c.reclaimable_bytes, 9);
    assert_eq!(
        (c.supported, c.provider.as_str(), &c.error),
        (true, CACHE_PROVIDER, &None)
    );
    assert!(c.fingerprint.starts_with("sha256:") && c.fingerprint.len() == 71);
    // Same files, same fingerprint; a new download changes it.
    let again = CleanupCollector::new(root.clone())
        .collect(in_a_minute())
        .unwrap()
        .unwrap();
    assert_eq!(again, c);
    std::fs::write(arch.join("d_1_all.deb"), "d").unwrap();
    let more = CleanupCollector::new(root)
        .collect(in_a_minute())
        .unwrap()
        .unwrap();
    assert_eq!(more.reclaimable_bytes, 10);
    assert_ne!(more.fingerprint, c.fingerprint);
}

#[test]
fn an_archives_link_out_of_the_root_is_an_error_and_none_is_empty() {
    let d = captured("cache-link", true, &[]);
    std::fs::create_dir_all(d.join("var/cache/apt")).unwrap();
    std::os::unix::fs::symlink("/var/cache/apt/archives", d.join("var/cache/apt/archives"))
        .unwrap();
    let c = CleanupCollector::new(Root::new(&d).unwrap())
        .collect(in_a_minute())
        .unwrap()
        .unwrap();
    assert_eq!(c.reclaimable_bytes, 0);
    assert!(c.error.unwrap().contains("leaves the root"));

    let d = captured("cache-none", true, &[]);
    let c = CleanupCollector::new(Root::new(&d).unwrap())
        .collect(in_a_minute())
        .unwrap()
        .unwrap();
    assert_eq!((c.reclaimable_bytes, c.error), (0, None));
    assert!(
        c.fingerprint.starts_with("sha256:e3b0c442"),
        "{}",
        c.fingerprint
    );
}

#[test]
fn a_cache_of_more_entries_than_the_cap_is_an_error() {
    let d = captured("cache-many", true, &[]);
    let arch = d.join("var/cache/apt/archives");
    std::fs::create_dir_all(&arch).unwrap();
    for i in 0..=packages::CACHE_ENTRIES {
        std::fs::File::create(arch.join(format!("{i}.deb"))).unwrap();
    }
    let c = CleanupCollector::new(Root::new(&d).unwrap())
        .collect(in_a_minute())
        .unwrap()
        .unwrap();
    assert!(c.error.unwrap().contains("more than 100000 entries"));
    std::fs::remove_dir_all(&d).unwrap();
}

// ---- the JSON ----

/// The smallest host report around `host` fields, checked as the server
/// decodes it.
fn wire_errors(field: &str, section: &Value) -> Vec<String> {
    let doc = json!({
        "agent": {"id": "a"},
        "host": {"hostname": "h", field: section},
        "metrics": {"memory": {}},
        "sensors": {},
        "timestamp": "2026-08-22T14:52:27Z",
    });
    common::wire::check_host_report(&doc)
}

#[test]
fn the_json_of_both_sections_follows_the_stock_agents_shape() {
    let at = common::pinned_now();
    let text = std::fs::read_to_string(fixtures().join("debian12-new-installs.txt")).unwrap();
    let pending = packages::parse(&text).unwrap();
    let u = Updates {
        supported: true,
        manager: "apt".into(),
        inventory_hash: packages::inventory_hash(&pending),
        pending,
        reboot_required: true,
        error: None,
    };
    let v = report::package_updates(&u, at);
    assert_eq!(
        v,
        json!({
            "supported": true, "manager": "apt", "inventoryHash": u.inventory_hash,
            "pendingCount": 2,
            "packages": [
                {"name": "linux-image-6.1.0-31-amd64", "availableVersion": "6.1.128-1"},
                {"name": "linux-image-amd64", "installedVersion": "6.1.124-1", "availableVersion": "6.1.128-1"}
            ],
            "checkedAt": "2026-08-22T14:52:27.123456789Z",
            "rebootRequired": true
        })
    );
    assert_eq!(wire_errors("packageUpdates", &v), Vec::<String>::new());

    // Unsupported and failed: the always-fields only, and the error.
    let v = report::package_updates(&Updates::default(), at);
    assert_eq!(
        v,
        json!({"supported": false, "pendingCount": 0, "checkedAt": "2026-08-22T14:52:27.123456789Z"})
    );
    assert_eq!(wire_errors("packageUpdates", &v), Vec::<String>::new());
    let failed = Updates {
        supported: true,
        manager: "apt".into(),
        error: Some("apt-get -s upgrade: exit 100: E: x".into()),
        ..Updates::default()
    };
    let v = report::package_updates(&failed, at);
    assert_eq!(v["error"], "apt-get -s upgrade: exit 100: E: x");
    assert!(v.get("inventoryHash").is_none() && v.get("packages").is_none());
    assert_eq!(wire_errors("packageUpdates", &v), Vec::<String>::new());

    let c = Cleanup {
        supported: true,
        provider: CACHE_PROVIDER.into(),
        fingerprint: format!("sha256:{}", "7".repeat(64)),
        reclaimable_bytes: 104_857_600,
        error: None,
    };
    let v = report::storage_cleanup(&c, at);
    assert_eq!(
        v,
        json!({
            "supported": true, "provider": "apt-package-cache", "fingerprint": c.fingerprint,
            "reclaimableBytes": 104857600, "checkedAt": "2026-08-22T14:52:27.123456789Z"
        })
    );
    assert_eq!(wire_errors("storageCleanup", &v), Vec::<String>::new());
    let v = report::storage_cleanup(&Cleanup::default(), at);
    assert_eq!(
        v,
        json!({"supported": false, "reclaimableBytes": 0, "checkedAt": "2026-08-22T14:52:27.123456789Z"})
    );
    assert_eq!(wire_errors("storageCleanup", &v), Vec::<String>::new());
    // The schema is typed: a string count is caught.
    let mut bad = v.clone();
    bad["reclaimableBytes"] = json!("0");
    assert!(!wire_errors("storageCleanup", &bad).is_empty());
}

#[test]
fn the_report_lists_200_packages_and_counts_them_all() {
    let pending: Vec<Package> = (0..250)
        .map(|i| Package {
            name: format!("p{i}"),
            installed: Some("1".into()),
            available: "2".into(),
        })
        .collect();
    let u = Updates {
        supported: true,
        manager: "apt".into(),
        inventory_hash: packages::inventory_hash(&pending),
        pending,
        ..Updates::default()
    };
    let v = report::package_updates(&u, common::pinned_now());
    assert_eq!(v["pendingCount"], 250);
    assert_eq!(
        v["packages"].as_array().unwrap().len(),
        packages::LISTED_MAX
    );
    assert_eq!(v["packages"][199]["name"], "p199");
}

// ---- the real apt of this machine ----

/// The real-apt tests change dpkg's database: one at a time.
static REAL_APT: Mutex<()> = Mutex::new(());

const DUMMY: &str = "pulse-agent-test-dummy";
const SOURCE: &str = "/etc/apt/sources.list.d/pulse-agent-test-dummy.list";
const LISTS: &str = "/var/lib/apt/lists";
/// apt-get -s as root rewrites this unless told not to (`Dir::Log::Planner=`).
const PLANNER_LOG: &str = "/var/log/apt/eipp.log.xz";

/// Whether to run: root on a machine with apt and dpkg-deb; else fail with
/// the reason, or skip with `PULSE_TEST_SKIP_APT=1`.
fn real_apt_here() -> bool {
    let skip = std::env::var_os("PULSE_TEST_SKIP_APT").is_some_and(|v| v == "1");
    let missing = if pulse_agent::sys::geteuid() != 0 {
        Some("not root")
    } else if !Path::new("/usr/bin/apt-get").exists() || !Path::new("/usr/bin/dpkg-deb").exists() {
        Some("no /usr/bin/apt-get or /usr/bin/dpkg-deb")
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if skip => {
            eprintln!("skipped (PULSE_TEST_SKIP_APT=1): {why}");
            false
        }
        Some(why) => panic!(
            "this test installs a dummy package with the machine's real apt and dpkg: {why}; \
             run it as root on a Debian-like machine, or set PULSE_TEST_SKIP_APT=1 to skip it"
        ),
    }
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Builds `DUMMY_VERSION_all.deb` in `dir`, with `preinst` if given.
fn build_deb(dir: &Path, version: &str, preinst: Option<&str>) -> PathBuf {
    let tree = dir.join(format!("tree-{version}"));
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    std::fs::write(
        tree.join("DEBIAN/control"),
        format!(
            "Package: {DUMMY}\nVersion: {version}\nArchitecture: all\nMaintainer: pulse-agent tests <tests@example.invalid>\nDescription: pulse-agent test package (safe to purge)\n"
        ),
    )
    .unwrap();
    if let Some(script) = preinst {
        use std::os::unix::fs::PermissionsExt;
        let p = tree.join("DEBIAN/preinst");
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let deb = dir.join(format!("{DUMMY}_{version}_all.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&tree)
        .arg(&deb));
    deb
}

/// The test's traces on the machine; removed on creation (an earlier run
/// that was killed) and on drop.
struct Traces {
    dir: PathBuf,
    lists_before: Vec<String>,
}

impl Traces {
    fn new(name: &str) -> Traces {
        let dir = std::env::temp_dir().join(format!("pulse-agent-{name}-{}", std::process::id()));
        Traces::clean_machine();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // apt reads a file: repository as its _apt user.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Traces {
            dir,
            lists_before: lists(),
        }
    }

    fn clean_machine() {
        let _ = std::fs::remove_file(SOURCE);
        let _ = Command::new("dpkg").args(["--purge", DUMMY]).output();
        for l in lists() {
            if l.contains("pulse-agent-test") {
                let _ = std::fs::remove_file(Path::new(LISTS).join(l));
            }
        }
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        Traces::clean_machine();
        for l in lists() {
            if !self.lists_before.contains(&l) {
                let _ = std::fs::remove_file(Path::new(LISTS).join(l));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn lists() -> Vec<String> {
    std::fs::read_dir(LISTS)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Makes v2 of the dummy visible to apt through a `file:` source (in the
/// sources only while the test runs), with v1 installed.
fn pending_dummy_upgrade(t: &Traces) {
    let repo = t.dir.join("pulse-agent-test-repo");
    std::fs::create_dir_all(&repo).unwrap();
    let v2 = build_deb(&repo, "2.0", None);
    let bytes = std::fs::read(&v2).unwrap();
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        repo.join("Packages"),
        format!(
            "Package: {DUMMY}\nVersion: 2.0\nArchitecture: all\nMaintainer: pulse-agent tests <tests@example.invalid>\nFilename: ./{}\nSize: {}\nSHA256: {sha}\nDescription: pulse-agent test package (safe to purge)\n\n",
            v2.file_name().unwrap().to_string_lossy(),
            bytes.len()
        ),
    )
    .unwrap();
    let line = format!("deb [trusted=yes] file:{} ./\n", repo.display());
    let only = t.dir.join("only.list");
    std::fs::write(&only, &line).unwrap();
    run(Command::new("apt-get")
        .arg("update")
        .arg("-o")
        .arg(format!("Dir::Etc::sourcelist={}", only.display()))
        .args([
            "-o",
            "Dir::Etc::sourceparts=-",
            "-o",
            "APT::Get::List-Cleanup=0",
        ]));
    let v1 = build_deb(&t.dir, "1.0", None);
    run(Command::new("dpkg").arg("-i").arg(&v1));
    std::fs::write(SOURCE, &line).unwrap();
}

/// What `apt-get -s upgrade` says, read by whitespace alone (without
/// replacing root's planner log, which only the collector's options stop).
fn apt_says() -> Vec<Package> {
    let out = run(Command::new("apt-get")
        .args(["-s", "-o", "Dir::Log::Planner=", "upgrade"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C"));
    out.lines()
        .filter(|l| l.starts_with("Inst "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (installed, avail) = if f[2].starts_with('[') {
                (
                    Some(f[2].trim_matches(|c| c == '[' || c == ']').to_string()),
                    f[3],
                )
            } else {
                (None, f[2])
            };
            Package {
                name: f[1].into(),
                installed,
                available: avail.trim_start_matches('(').trim_end_matches(')').into(),
            }
        })
        .collect()
}

#[test]
fn the_collector_sees_what_the_real_apt_get_says() {
    if !real_apt_here() {
        return;
    }
    let _one = REAL_APT.lock().unwrap_or_else(|p| p.into_inner());
    let traces = Traces::new("real-apt");
    pending_dummy_upgrade(&traces);
    let planner_log = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(PLANNER_LOG)
            .ok()
            .map(|m| (m.ino(), m.mtime(), m.mtime_nsec()))
    };
    let log_before = planner_log();
    let u = Collector::new(Root::host())
        .collect(in_a_minute())
        .unwrap()
        .unwrap();
    assert_eq!(
        planner_log(),
        log_before,
        "the simulation replaced {PLANNER_LOG}"
    );
    assert_eq!(u.error, None);
    assert!(u.supported);
    let dummy = u
        .pending
        .iter()
        .find(|p| p.name == DUMMY)
        .expect("the dummy's upgrade");
    assert_eq!(
        (dummy.installed.as_deref(), dummy.available.as_str()),
        (Some("1.0"), "2.0")
    );
    assert_eq!(u.pending, apt_says());
    assert_eq!(u.inventory_hash, packages::inventory_hash(&u.pending));
    drop(traces);
    assert!(!Path::new(SOURCE).exists());
    let status = Command::new("dpkg-query")
        .args(["-W", DUMMY])
        .output()
        .unwrap();
    assert!(!status.status.success(), "the dummy is still installed");
}

/// dpkg holds `/var/lib/dpkg/lock-frontend` and `lock` (fcntl write locks)
/// for the whole of an install; a package whose preinst waits keeps them
/// held while the collector runs.
#[test]
fn a_running_dpkg_holding_its_locks_neither_delays_nor_fails_the_collector() {
    if !real_apt_here() {
        return;
    }
    let _one = REAL_APT.lock().unwrap_or_else(|p| p.into_inner());
    let traces = Traces::new("locked");
    let (started, release) = (traces.dir.join("started"), traces.dir.join("release"));
    let deb = build_deb(
        &traces.dir,
        "1.0",
        Some(&format!(
            "#!/bin/sh\ntouch '{}'\ni=0\nwhile [ ! -e '{}' ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done\n",
            started.display(),
            release.display()
        )),
    );
    let reference = Collector::new(Root::host())
        .collect(in_a_minute())
        .unwrap()
        .unwrap();
    let reference_took = {
        let t = Instant::now();
        let _ = Collector::new(Root::host()).collect(in_a_minute());
        t.elapsed()
    };
    let mut dpkg = Command::new("dpkg")
        .arg("-i")
        .arg(&deb)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let waited = Instant::now();
    while !started.exists() {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "dpkg's preinst never ran"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let locked = || {
        ["/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock"]
            .iter()
            .all(|f| write_locked(Path::new(f)))
    };
    assert!(locked(), "dpkg does not hold its locks");
    let t = Instant::now();
    let u = Collector::new(Root::host())
        .collect(in_a_minute())
        .unwrap()
        .unwrap();
    let took = t.elapsed();
    assert!(
        locked(),
        "dpkg let go of its locks before the collector was done"
    );
    std::fs::write(&release, "").unwrap();
    assert!(dpkg.wait().unwrap().success());
    assert_eq!(u.error, None);
    assert_eq!(u.pending, reference.pending);
    // Not waiting for the lock: about as long as without it (generous, the
    // machine is shared).
    assert!(
        took < reference_took * 3 + Duration::from_secs(5),
        "{took:?} with dpkg running, {reference_took:?} without"
    );
    drop(traces);
}

/// Whether /proc/locks shows a POSIX write lock on `file`.
fn write_locked(file: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(file) else {
        return false;
    };
    let inode = format!(":{}", m.ino());
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 5 && f[1] == "POSIX" && f[3] == "WRITE" && f[5].ends_with(&inode)
        })
}
