//! Benchmark: wall time of one SMART refresh of 24 disks whose smartctl takes
//! 200 ms each, probed in parallel (the agent's setting) and one at a time.
//!
//!     cargo bench --bench smart
//!
//! The host is a temporary tree (24 rotational SATA disks in `/sys/block`)
//! and smartctl is `vendor-free-tests/fake-smartctl`, answering each disk
//! with a full smartctl 7.3 document after a 200 ms sleep. Each run is a
//! first refresh (every disk probed once, one attempt each).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pulse_agent::root::Root;
use pulse_agent::smart::{PARALLEL, Settings, Smart};
use pulse_agent::sys::process_cpu_time;

const DISKS: usize = 24;
const DELAY: &str = "0.2";

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("pulse-bench-smart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let answers = dir.join("smartctl");
    std::fs::create_dir_all(&answers).unwrap();
    std::os::unix::fs::symlink(
        repo.join("vendor-free-tests/fake-smartctl"),
        answers.join("smartctl"),
    )
    .unwrap();
    let template = std::fs::read_to_string(
        repo.join("vendor-free-tests/fixtures/nas-smart/smartctl/sdb.json"),
    )
    .unwrap();
    let mut stats = String::new();
    for i in 0..DISKS {
        let name = disk_name(i);
        let real = dir.join(format!(
            "root/sys/devices/pci0000:00/0000:00:17.0/ata{i}/host{i}/target{i}:0:0/{i}:0:0:0"
        ));
        let block = real.join(format!("block/{name}"));
        write(&block.join("size"), "15628053168\n");
        write(&block.join("queue/rotational"), "1\n");
        write(&real.join("vendor"), "ATA\n");
        write(&real.join("model"), "WDC WD80EFZZ-68B\n");
        std::fs::create_dir_all(dir.join("root/sys/block")).unwrap();
        std::os::unix::fs::symlink(&block, dir.join(format!("root/sys/block/{name}"))).unwrap();
        std::os::unix::fs::symlink(&real, block.join("device")).unwrap();
        write(
            &answers.join(format!("{name}.json")),
            &template.replace("/dev/sdb", &format!("/dev/{name}")),
        );
        write(&answers.join(format!("{name}.delay")), DELAY);
        stats.push_str(&format!("8 {} {name} 1 0 8 1 1 0 8 1 0 1 1\n", i * 16));
    }
    write(&dir.join("root/proc/diskstats"), &stats);

    println!(
        "SMART refresh of {DISKS} disks, smartctl answering in {DELAY} s each (release build):\n"
    );
    println!("| probes at once | wall time | agent CPU (all threads) |");
    println!("|---|---|---|");
    for parallel in [PARALLEL, 1] {
        let mut smart = Smart::new(
            Root::new(dir.join("root")).unwrap(),
            Settings {
                smartctl: Some(answers.join("smartctl")),
                parallel,
                ..Settings::default()
            },
        );
        let (cpu0, t0) = (process_cpu_time(), Instant::now());
        let r = smart.refresh(Instant::now());
        let (wall, cpu) = (t0.elapsed(), process_cpu_time() - cpu0);
        assert_eq!(r.rows.len(), DISKS, "every disk answered");
        assert_eq!(r.probed, DISKS);
        let note = if parallel == PARALLEL {
            " (agent default)"
        } else {
            ""
        };
        println!(
            "| {parallel}{note} | {:.2} s | {:.1} ms |",
            wall.as_secs_f64(),
            ms(cpu)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn disk_name(i: usize) -> String {
    let letters = b"abcdefghijklmnopqrstuvwxyz";
    if i < 26 {
        format!("sd{}", letters[i] as char)
    } else {
        format!("sda{}", letters[i - 26] as char)
    }
}

fn write(p: &PathBuf, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
