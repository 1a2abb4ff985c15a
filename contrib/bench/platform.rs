//! Benchmark: what the platform sources (Unraid, Ceph, Proxmox LXC,
//! package updates, apt's cache) add to a report cycle, with their caches
//! cold (the source runs its programs) and warm (the cycle takes the cached
//! result).
//!
//!     cargo bench --bench platform
//!
//! Cold: each collector run on its own, three times; wall time and CPU time
//! (this process plus the programs it ran and waited for: getrusage SELF +
//! CHILDREN), min / median / max. Sources:
//! - apt and apt's package cache: this machine's real apt;
//! - Ceph: a real one-monitor Pacific cluster on loopback (the test
//!   harness `vendor-free-tests/common/ceph.rs`, root only; its `ceph`
//!   enters a mount namespace first, a few ms), when this machine can run one;
//! - Unraid, Ceph, pct on the `unraid-nas` and `pve-ceph` fixture cases,
//!   where the programs are `fake-program` (a shell script): the agent's
//!   own share of the cost, not the real programs'.
//!
//! Warm: 20 report cycles of `Platform` (begin + finish) after a first one
//! that filled the caches, on this machine and on the fixture cases.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use pulse_agent::collect::{HostSnapshot, packages, pct, unraid};
use pulse_agent::platform::{AptSource, CephSource, Collect, Platform, Settings};
use pulse_agent::root::Root;
use pulse_agent::sys::{children_cpu_time, process_cpu_time};

#[path = "../../vendor-free-tests/common/ceph.rs"]
mod ceph_cluster;

const COLD_RUNS: usize = 3;
const WARM_CYCLES: u32 = 20;

fn cpu() -> Duration {
    process_cpu_time() + children_cpu_time()
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// min / median / max of three or more.
fn spread(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "{} / {} / {}",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1])
    )
}

/// Runs a fresh collector `COLD_RUNS` times; prints one table row.
fn cold<C: Collect>(what: &str, make: impl Fn() -> C) {
    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    let mut outcome = String::new();
    for _ in 0..COLD_RUNS {
        let mut c = make();
        let (w0, c0) = (Instant::now(), cpu());
        let r = c.collect(Instant::now() + Duration::from_secs(30));
        walls.push(w0.elapsed());
        cpus.push(cpu() - c0);
        outcome = match r {
            Ok(Some(_)) => "section".into(),
            Ok(None) => "absent".into(),
            Err(e) => format!("error: {e}"),
        };
    }
    println!(
        "| {what:<44} | {:>22} | {:>22} | {outcome} |",
        spread(walls),
        spread(cpus)
    );
}

/// One cycle's wall and CPU time.
fn cycle(p: &mut Platform) -> (Duration, Duration, HostSnapshot) {
    let (w0, c0) = (Instant::now(), cpu());
    let pending = p.begin(true);
    let mut snap = HostSnapshot::default();
    let mut modules = Vec::new();
    p.finish(pending, &mut snap, &mut modules, SystemTime::now());
    (w0.elapsed(), cpu() - c0, snap)
}

fn warm(what: &str, root: &Path) {
    let settings = Settings {
        pct_path: None,
        clock: SystemTime::now,
        once: true,
        apt_cache: None,
    };
    let mut p = Platform::new(Root::new(root).unwrap(), settings);
    let (w_first, c_first, snap) = cycle(&mut p);
    let sections: Vec<&str> = [
        ("unraid", snap.unraid.is_some()),
        ("ceph", snap.ceph.is_some()),
        ("proxmoxLxc", snap.lxc.is_some()),
        ("packageUpdates", snap.packages.is_some()),
        ("storageCleanup", snap.cleanup.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, on)| on.then_some(n))
    .collect();
    let (mut w, mut c) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..WARM_CYCLES {
        let (cw, cc, _) = cycle(&mut p);
        w += cw;
        c += cc;
    }
    println!(
        "| {what:<32} | {:>9} / {:>9} | {:>9} / {:>9} | {} |",
        ms(w_first),
        ms(c_first),
        ms(w / WARM_CYCLES),
        ms(c / WARM_CYCLES),
        sections.join(", ")
    );
}

/// A fixture case's root with its fake programs linked by absolute path.
fn case(name: &str, scratch: &Path) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor-free-tests");
    let dest = scratch.join(name);
    let _ = std::fs::remove_dir_all(&dest);
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(fixtures.join("fixtures").join(name).join("root"))
        .arg(&dest)
        .status()
        .unwrap();
    assert!(status.success());
    for e in std::fs::read_dir(dest.join(".capture/bin")).unwrap() {
        let p = e.unwrap().path();
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(fixtures.join("fake-program"), &p).unwrap();
    }
    dest
}

fn main() {
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-platform");
    std::fs::create_dir_all(&scratch).unwrap();
    let unraid_nas = case("unraid-nas", &scratch);
    let pve_ceph = case("pve-ceph", &scratch);

    println!("pulse-agent platform sources (release build, this machine)");
    println!();
    println!("Cold: one run of each source, min / median / max of {COLD_RUNS}, ms");
    println!();
    println!(
        "| source                                       |                   wall |    CPU (incl. programs) | result |"
    );
    println!(
        "|----------------------------------------------|------------------------|------------------------|--------|"
    );
    cold("apt-get -s upgrade (this machine's apt)", || {
        AptSource::new(Root::host(), None)
    });
    // The 30-minute check when nothing apt reads has changed: the inputs'
    // digest and the reboot flag, no apt.
    let mut apt = AptSource::new(Root::host(), None);
    let _ = apt.collect(Instant::now() + Duration::from_secs(30));
    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    for _ in 0..COLD_RUNS {
        let (w0, c0) = (Instant::now(), cpu());
        let _ = apt.collect(Instant::now() + Duration::from_secs(30));
        walls.push(w0.elapsed());
        cpus.push(cpu() - c0);
    }
    println!(
        "| {:<44} | {:>22} | {:>22} | section |",
        "apt check, its inputs unchanged (no apt run)",
        spread(walls),
        spread(cpus)
    );
    cold("apt's package cache (this machine)", || {
        packages::CleanupCollector::new(Root::host())
    });
    let ceph_root = scratch.join("ceph-root");
    let cluster = match ceph_cluster::missing() {
        None => {
            let c = ceph_cluster::Cluster::start(&scratch.join("ceph-cluster"));
            let _ = std::fs::remove_dir_all(&ceph_root);
            c.captured_root(&ceph_root);
            cold("ceph status + df (real Pacific monitor)", || {
                CephSource::new(Root::new(&ceph_root).unwrap())
            });
            Some(c)
        }
        Some(why) => {
            println!("| ceph (real monitor): not measured: {why} |");
            None
        }
    };
    cold("unraid: disks.ini + mdcmd (unraid-nas, fake)", || {
        unraid::Collector::new(Root::new(&unraid_nas).unwrap())
    });
    cold("ceph status + df (pve-ceph, fake ceph)", || {
        CephSource::new(Root::new(&pve_ceph).unwrap())
    });
    cold("pct list + 3 x pct df (pve-ceph, fake pct)", || {
        pct::Collector::new(Root::new(&pve_ceph).unwrap(), None)
    });
    cold("all absent (a Debian host without them)", || {
        unraid::Collector::new(Root::host())
    });

    println!();
    println!(
        "Warm: a report cycle of every platform source; the first (cold) cycle, then the mean of {WARM_CYCLES} with the caches filled, ms"
    );
    println!();
    println!(
        "| root                             |   first: wall / CPU   |    warm: wall / CPU   | sections |"
    );
    println!(
        "|----------------------------------|-----------------------|-----------------------|----------|"
    );
    warm("this machine", Path::new("/"));
    warm("unraid-nas (fake mdcmd)", &unraid_nas);
    warm("pve-ceph (fake ceph, pct)", &pve_ceph);
    if cluster.is_some() {
        warm("real Pacific monitor (ceph only)", &ceph_root);
    }
    drop(cluster);
}
