//! Benchmark: CPU time of one host collection cycle on this machine, and of
//! building and encoding the report; plus one collection of a hostile host
//! (10,000 mounts, a 10 MB meminfo).
//!
//!     cargo bench --bench cycle
//!
//! CPU time is the process's user + system time (getrusage), so it includes
//! the statvfs helper thread. Cycles run back to back, often within one
//! kernel tick, so the CPU collector's 1 s spot sample (taken when
//! /proc/stat has not moved) is turned off here; in service the interval is
//! seconds and the sample is only taken at start.

use std::time::{Duration, Instant, SystemTime};

use pulse_agent::collect::{Host, Options, identity};
use pulse_agent::report::{self, Privilege, Sequence};
use pulse_agent::root::Root;
use pulse_agent::sys::process_cpu_time;

#[path = "../../vendor-free-tests/common/hostile.rs"]
mod hostile;

const CYCLES: u32 = 2000;

fn per_cycle(d: Duration, n: u32) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3 / f64::from(n))
}

fn main() {
    let root = Root::host();
    let identity = identity::collect(&root, None);
    let options = Options {
        cpu_spot_sample: Duration::ZERO,
        ..Options::default()
    };
    let mut host = Host::new(root, options);
    let first = host.collect();

    let (cpu0, wall0) = (process_cpu_time(), Instant::now());
    for _ in 0..CYCLES {
        std::hint::black_box(host.collect());
    }
    let (cpu, wall) = (process_cpu_time() - cpu0, wall0.elapsed());

    let privilege = Privilege::current(false, false);
    let modules = Vec::new();
    let mut seq = Sequence::random();
    let (rcpu0, rwall0) = (process_cpu_time(), Instant::now());
    for _ in 0..CYCLES {
        let id = seq.next_id();
        let doc = report::host(&report::HostReport {
            agent: report::Agent {
                id: &identity.machine_id,
                version: "v0",
                interval_seconds: 30,
                hostname: &identity.hostname,
                disk_exclude: &[],
                modules: &modules,
                privilege: &privilege,
                applied_config: None,
                update: &pulse_agent::update::Status::default(),
                updated_from: None,
            },
            identity: &identity,
            report_ip: None,
            tags: &[],
            snapshot: &first,
            timestamp: SystemTime::now(),
            sequence_id: &id,
        });
        std::hint::black_box(serde_json::to_vec(&doc).unwrap());
    }
    let (rcpu, rwall) = (process_cpu_time() - rcpu0, rwall0.elapsed());

    println!("pulse-agent cycle benchmark ({CYCLES} cycles, this machine, release build)");
    println!("| what                                  | CPU / cycle | wall / cycle |");
    println!("|---------------------------------------|-------------|--------------|");
    println!(
        "| host collection (all host collectors) | {:>11} | {:>12} |",
        per_cycle(cpu, CYCLES),
        per_cycle(wall, CYCLES)
    );
    println!(
        "| report build + JSON encoding          | {:>11} | {:>12} |",
        per_cycle(rcpu, CYCLES),
        per_cycle(rwall, CYCLES)
    );
    println!(
        "| one full cycle (sum)                  | {:>11} |              |",
        per_cycle(cpu + rcpu, CYCLES)
    );
    println!(
        "(this host: {} filesystems, {} disks, {} interfaces)",
        first.filesystems.len(),
        first.disk_io.len(),
        first.network.len()
    );

    hostile();
}

/// One collection of a host with 10,000 mounts and a 10 MB meminfo.
fn hostile() {
    let dir = std::env::temp_dir().join(format!("pulse-bench-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    hostile::write_big_host(&dir);
    let mut host = Host::new(Root::new(&dir).unwrap(), Options::default());
    let (cpu0, wall0) = (process_cpu_time(), Instant::now());
    let snap = host.collect();
    let (cpu, wall) = (process_cpu_time() - cpu0, wall0.elapsed());
    // The first cycle's CPU spot sample is sleep, not work: subtract it.
    let spot = snap
        .sources
        .iter()
        .find(|s| s.name == "cpu")
        .map(|s| s.duration)
        .unwrap_or_default();
    println!(
        "10,000-entry mountinfo + 10 MB meminfo: report in {:.1} ms wall ({:.1} ms excluding the CPU spot sample), {:.1} ms CPU; {} filesystems",
        wall.as_secs_f64() * 1e3,
        (wall - spot).as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e3,
        snap.filesystems.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
