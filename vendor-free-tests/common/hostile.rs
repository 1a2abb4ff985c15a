#![allow(dead_code)] // the benchmark uses only the generator
//! A hostile host, shared by the fixture test and the cycle benchmark: a
//! container host's 10,000 mounts (100 real ext4 filesystems, the rest tmpfs
//! and Docker overlays) and a 10 MB meminfo, as a captured root.

use std::path::Path;

/// How many real filesystems the mount table holds.
pub const REAL_FILESYSTEMS: usize = 100;
/// MemTotal of the meminfo, in bytes.
pub const MEM_TOTAL: u64 = 16_303_748 * 1024;

/// Writes the host under `dir` (which must exist).
pub fn write_big_host(dir: &Path) {
    let w = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    let mut mountinfo = String::new();
    let mut statvfs = String::new();
    for i in 0..10_000u32 {
        let (mp, fstype, dev) = match i % 100 {
            0 => (format!("/srv/disk{i}"), "ext4", format!("/dev/sd{i}")),
            1..=9 => (format!("/run/user/{i}"), "tmpfs", "tmpfs".to_string()),
            _ => (
                format!("/var/lib/docker/overlay2/{i:064x}/merged"),
                "overlay",
                "overlay".into(),
            ),
        };
        mountinfo.push_str(&format!(
            "{} 1 {}:{} / {mp} rw,relatime - {fstype} {dev} rw\n",
            i + 100,
            8 + i / 1000,
            i % 1000
        ));
        statvfs.push_str(&format!("{mp} 4096 {} 500 400\n", 1000 + i));
    }
    w("proc/1/mountinfo", &mountinfo);
    w(".capture/statvfs", &statvfs);
    w(".capture/ip-addr", "");
    let mut meminfo = String::from(
        "MemTotal:       16303748 kB\nMemFree:         2097152 kB\nMemAvailable:   10485760 kB\n",
    );
    while meminfo.len() < 10 * 1024 * 1024 {
        meminfo.push_str("Garbage_Key_That_Repeats:    123456789 kB\n");
    }
    w("proc/meminfo", &meminfo);
    w("proc/sys/kernel/hostname", "big\n");
}
