//! `/proc/diskstats` → cumulative block-device counters (`diskIO[]`).
//!
//! Whole disks only: partitions, device-mapper, loop, ram, zram and zvol
//! devices are left out (their I/O is already counted on the disk below, or is
//! not disk I/O at all), as are devices that have never done any I/O. A
//! device is a partition when sysfs says so (`/sys/class/block/<name>/partition`)
//! or when the server's naming heuristic does; the sysfs check catches what
//! the heuristic misses (`mmcblk0p1`, Synology's `sata1p1`), whose I/O the
//! server would otherwise count twice. The
//! server derives rates from these cumulative numbers. Sectors are always 512
//! bytes in this file, whatever the device's real sector size.

use super::patterns::any_matches;
use super::{Error, field_u64};
use crate::root::{self, Root};

const PATH: &str = "/proc/diskstats";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskIo {
    pub device: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
    pub read_time_ms: u64,
    pub write_time_ms: u64,
    pub io_time_ms: u64,
}

pub fn collect(root: &Root, exclude: &[String]) -> Result<Vec<DiskIo>, Error> {
    let rows = parse(&root.read_kept(PATH, root::LARGE)?.text)?;
    Ok(rows
        .into_iter()
        .filter(|d| {
            let dev = format!("/dev/{}", d.device);
            is_whole_physical(&d.device)
                && !root.exists(&format!("/sys/class/block/{}/partition", d.device))
                && !any_matches(exclude, &[&d.device, &dev])
        })
        .collect())
}

/// Every row with at least the 11 classic counters, sorted by name. Rows that
/// are malformed or never saw I/O are dropped; a file with no valid row at all
/// is an error.
pub fn parse(text: &str) -> Result<Vec<DiskIo>, Error> {
    let mut out = Vec::new();
    let mut lines = 0usize;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        lines += 1;
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 14 {
            continue;
        }
        let n = |i: usize| field_u64(&f, i - 1);
        let (
            Some(reads),
            Some(rsect),
            Some(rtime),
            Some(writes),
            Some(wsect),
            Some(wtime),
            Some(ticks),
        ) = (n(4), n(6), n(7), n(8), n(10), n(11), n(13))
        else {
            continue;
        };
        let d = DiskIo {
            device: f[2].to_string(),
            read_bytes: rsect.saturating_mul(512),
            write_bytes: wsect.saturating_mul(512),
            read_ops: reads,
            write_ops: writes,
            read_time_ms: rtime,
            write_time_ms: wtime,
            io_time_ms: ticks,
        };
        let idle = [
            d.read_bytes,
            d.write_bytes,
            d.read_ops,
            d.write_ops,
            d.read_time_ms,
            d.write_time_ms,
            d.io_time_ms,
        ]
        .iter()
        .all(|&v| v == 0);
        if !idle {
            out.push(d);
        }
    }
    if lines > 0 && out.is_empty() && !text.lines().any(|l| l.split_whitespace().count() >= 14) {
        return Err(Error::parse(
            PATH,
            "no line has the 14 fields of a disk row",
        ));
    }
    out.sort_by(|a, b| a.device.cmp(&b.device));
    Ok(out)
}

/// Partitions, by the server's naming heuristic. `mmcblk0p1` is deliberately
/// not matched (the server keeps it), nor are `sr0`, `md0` or `nvme0n1`.
pub fn is_partition(name: &str) -> bool {
    let b = name.as_bytes();
    if name.contains('n') {
        if let Some(p) = name.rfind('p') {
            if b.get(p + 1).is_some_and(u8::is_ascii_digit) {
                return true;
            }
        }
    }
    if b.len() > 2
        && b[b.len() - 1].is_ascii_digit()
        && (b[b.len() - 2].is_ascii_lowercase() || b[b.len() - 2].is_ascii_digit())
        && ["sd", "vd", "hd", "xvd"]
            .iter()
            .any(|p| name.starts_with(p))
    {
        return true;
    }
    name.starts_with("zd") && name.contains('p')
}

/// Device-mapper, loop, RAM disks, zram and ZFS zvols carry no disk I/O of their own.
pub fn is_virtual(name: &str) -> bool {
    let n = name
        .strip_prefix("/dev/")
        .unwrap_or(name)
        .to_ascii_lowercase();
    ["dm-", "loop", "ram", "zd", "zram"]
        .iter()
        .any(|p| n.starts_with(p))
}

fn is_whole_physical(name: &str) -> bool {
    !is_partition(name) && !is_virtual(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 vda 2854 914 1286066 1837 36 0 496 3 0 912 1842 7 0 288 0 7 0
 254       1 vda1 2000 0 1000 1 0 0 0 0 0 1 1
 259       0 nvme0n1 10 0 80 1 5 0 40 2 0 3 3
 259       1 nvme0n1p1 10 0 80 1 5 0 40 2 0 3 3
 179       0 mmcblk0 10 0 80 1 5 0 40 2 0 3 3
 179       1 mmcblk0p1 10 0 80 1 5 0 40 2 0 3 3
 253       0 dm-0 10 0 80 1 5 0 40 2 0 3 3
   8       0 sda 5 0 16 1
";

    #[test]
    fn rows_and_filters() {
        let rows = parse(SAMPLE).unwrap();
        let names: Vec<&str> = rows.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(
            names,
            [
                "dm-0",
                "mmcblk0",
                "mmcblk0p1",
                "nvme0n1",
                "nvme0n1p1",
                "vda",
                "vda1"
            ]
        );
        let vda = rows.iter().find(|d| d.device == "vda").unwrap();
        assert_eq!(vda.read_bytes, 1286066 * 512);
        assert_eq!(vda.write_ops, 36);
        assert_eq!(vda.io_time_ms, 912);
        let kept: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| is_whole_physical(n))
            .collect();
        assert_eq!(kept, ["mmcblk0", "mmcblk0p1", "nvme0n1", "vda"]);
    }

    #[test]
    fn partition_heuristic() {
        for p in ["sda1", "vda10", "xvda2", "hdb3", "nvme0n1p1", "zd0p1"] {
            assert!(is_partition(p), "{p}");
        }
        for d in ["sda", "sdaa", "nvme0n1", "md0", "sr0", "mmcblk0", "vd"] {
            assert!(!is_partition(d), "{d}");
        }
    }

    #[test]
    fn hostile() {
        assert!(parse("garbage\n").is_err());
        assert!(parse("").unwrap().is_empty());
        assert!(parse("8 0 sda x x x x x x x x x x x\n").unwrap().is_empty());
        let huge = format!("8 0 sda {0} 0 {0} 0 0 0 0 0 0 0 0\n", u64::MAX);
        assert_eq!(parse(&huge).unwrap()[0].read_bytes, u64::MAX);
    }
}
