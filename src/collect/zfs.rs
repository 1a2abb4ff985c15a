//! ZFS (`spec/pulse-collectors.md` §4): pool capacity from `zpool list`,
//! datasets from `zfs list`, and pool membership of disks from
//! `zpool status -P`. Parsers and the pool-size rule only; the programs are
//! run by the hardware thread.

use std::collections::{BTreeMap, HashMap};

/// The arguments of the three commands (all pools at once).
pub const ZPOOL_LIST: [&str; 4] = ["list", "-Hp", "-o", "name,size,allocated,free"];
pub const ZFS_LIST: [&str; 6] = [
    "list",
    "-Hp",
    "-t",
    "filesystem,volume",
    "-o",
    "name,type,used,available,referenced,mountpoint",
];
pub const ZPOOL_STATUS: [&str; 2] = ["status", "-P"];

/// Where zpool and zfs are installed, before `PATH`.
pub const DIRS: &[&str] = &[
    "/usr/sbin",
    "/sbin",
    "/usr/local/sbin",
    "/usr/local/bin",
    "/opt/zfs/bin",
    "/usr/bin",
];

/// Datasets kept per pool.
pub const MAX_DATASETS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub size: u64,
    pub allocated: u64,
    pub free: u64,
}

/// One `disks[].zfsDatasets[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    pub name: String,
    /// `filesystem` or `volume`.
    pub kind: String,
    pub mountpoint: String,
    pub used: u64,
    pub available: u64,
    pub referenced: u64,
}

/// `zpool list -Hp -o name,size,allocated,free`: pool → sizes in bytes. Bad
/// lines are skipped; none good is an error.
pub fn parse_zpool_list(text: &str) -> Result<BTreeMap<String, PoolStats>, String> {
    let mut out = BTreeMap::new();
    let mut bad = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').map(str::trim).collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        match (f.len(), n(1), n(2), n(3)) {
            (4, Some(size), Some(allocated), Some(free)) if valid_pool_name(f[0]) => {
                out.insert(
                    f[0].to_string(),
                    PoolStats {
                        size,
                        allocated,
                        free,
                    },
                );
            }
            _ => bad += 1,
        }
    }
    if out.is_empty() {
        return Err(format!("zpool list: no usable line ({bad} unreadable)"));
    }
    Ok(out)
}

/// 1-255 characters of `[A-Za-z0-9_.:-]`, not starting with `-`.
pub fn valid_pool_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// `zfs list -Hp -t filesystem,volume -o name,type,used,available,referenced,mountpoint`:
/// pool → its datasets (not the pool's root dataset), sorted by name, at most
/// [`MAX_DATASETS`] per pool.
pub fn parse_zfs_list(text: &str) -> BTreeMap<String, Vec<Dataset>> {
    let mut out: BTreeMap<String, Vec<Dataset>> = BTreeMap::new();
    let mut rows: Vec<Dataset> = text
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 6 || !f[0].contains('/') || f[0].len() > 512 {
                return None;
            }
            if f[1] != "filesystem" && f[1] != "volume" {
                return None;
            }
            let n = |i: usize| f[i].trim().parse::<u64>().ok();
            let mountpoint = match f[5].trim() {
                "-" | "none" | "legacy" => "",
                m if m.len() > 1024 => return None,
                m => m,
            };
            Some(Dataset {
                name: f[0].to_string(),
                kind: f[1].to_string(),
                mountpoint: mountpoint.to_string(),
                used: n(2)?,
                available: n(3)?,
                referenced: n(4)?,
            })
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    for d in rows {
        let pool = d.name.split('/').next().unwrap_or("").to_string();
        if !valid_pool_name(&pool) {
            continue;
        }
        let list = out.entry(pool).or_default();
        if list.len() < MAX_DATASETS {
            list.push(d);
        }
    }
    out
}

/// `zpool status -P` (any number of pools): member key → pool. Keys are
/// those of [`member_keys`].
pub fn parse_zpool_status(text: &str) -> HashMap<String, String> {
    const STOP: [&str; 7] = [
        "errors:", "pool:", "state:", "scan:", "status:", "action:", "see:",
    ];
    const VDEV: [&str; 7] = [
        "logs", "log", "cache", "spares", "spare", "special", "dedup",
    ];
    let mut out = HashMap::new();
    let mut pool = String::new();
    let mut in_config = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(p) = t.strip_prefix("pool:") {
            // Every member key gets a copy of the name: only a real pool name
            // (at most 255 bytes) is copied, so a 1 MB name line followed by
            // many members cannot cost megabytes per member.
            let p = p.trim();
            pool = if valid_pool_name(p) {
                p.to_string()
            } else {
                String::new()
            };
            in_config = false;
            continue;
        }
        if t.starts_with("config:") {
            in_config = true;
            continue;
        }
        if !in_config || t.is_empty() || pool.is_empty() {
            continue;
        }
        if STOP.iter().any(|s| t.starts_with(s)) {
            in_config = false;
            continue;
        }
        let Some(word) = t.split_whitespace().next() else {
            continue;
        };
        let lower = word.to_ascii_lowercase();
        if word == "NAME"
            || word == pool
            || VDEV.contains(&lower.as_str())
            || ["mirror", "raidz", "draid", "replacing", "spare-"]
                .iter()
                .any(|p| lower.starts_with(p))
        {
            continue;
        }
        for k in member_keys(word) {
            out.entry(k).or_insert_with(|| pool.clone());
        }
    }
    out
}

/// The names a pool member may be known by, lowercased: the path, the name
/// without `/dev/` and `disk/by-*/`, that without a partition suffix, and for
/// `ata-`/`scsi-`/`nvme-`/`wwn-` names the serial or WWN inside.
pub fn member_keys(path: &str) -> Vec<String> {
    let raw = path.to_ascii_lowercase();
    let mut name = raw.strip_prefix("/dev/").unwrap_or(&raw);
    for p in [
        "disk/by-id/",
        "disk/by-path/",
        "disk/by-uuid/",
        "disk/by-partuuid/",
    ] {
        name = name.strip_prefix(p).unwrap_or(name);
    }
    let whole = strip_partition(name);
    let mut keys = vec![raw.clone(), name.to_string(), whole.to_string()];
    if let Some(hex) = whole.strip_prefix("wwn-0x") {
        keys.push(hex.to_string());
    } else if let Some(hex) = whole.strip_prefix("nvme-eui.") {
        keys.push(hex.to_string());
    } else if ["ata-", "scsi-", "nvme-"]
        .iter()
        .any(|p| whole.starts_with(p))
    {
        let mut id = whole;
        if whole.starts_with("nvme-") {
            // nvme-Samsung_SSD_980_PRO_1TB_S5GXNX0R123456_1: the namespace.
            if let Some((head, ns)) = id.rsplit_once('_') {
                if (1..=3).contains(&ns.len()) && ns.bytes().all(|b| b.is_ascii_digit()) {
                    id = head;
                }
            }
        }
        if let Some((_, serial)) = id.rsplit_once('_') {
            keys.push(serial.to_string());
        }
    }
    keys.retain(|k| !k.is_empty());
    keys.dedup();
    keys
}

/// `sda1` → `sda`, `nvme0n1p2` → `nvme0n1`, `ata-X-part1` → `ata-X`.
fn strip_partition(name: &str) -> &str {
    if let Some((head, n)) = name.rsplit_once("-part") {
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            return head;
        }
    }
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 || digits == name.len() {
        return name;
    }
    let head = &name[..name.len() - digits];
    if let Some(h) = head.strip_suffix('p') {
        if h.ends_with(|c: char| c.is_ascii_digit()) {
            return h; // nvme0n1p2, mmcblk0p1
        }
    }
    if head.ends_with(|c: char| c.is_ascii_alphabetic()) && !name.contains('-') {
        // sda1 → sda; not nvme0n1 (its digits follow 'n' but it is a disk).
        if !(head.starts_with("nvme") || head.starts_with("mmcblk") || head.starts_with("loop")) {
            return head;
        }
    }
    name
}

/// The pool of a disk known by `device` (`sda`, `/dev/nvme0n1`), `serial`
/// and `wwn`, if any member key matches (the device name first, then the
/// serial, then the WWN).
pub fn pool_of<'a>(
    members: &'a HashMap<String, String>,
    device: &str,
    serial: &str,
    wwn: &str,
) -> Option<&'a str> {
    let device = device.split_whitespace().next().unwrap_or("");
    let wwn = wwn.to_ascii_lowercase();
    // smartctl and sysfs spell it 0x…, eui.… or naa.…; by-id names wwn-0x….
    let wwn = ["0x", "eui.", "naa."]
        .iter()
        .find_map(|p| wwn.strip_prefix(p))
        .unwrap_or(&wwn)
        .to_string();
    member_keys(device)
        .into_iter()
        .chain([serial.to_ascii_lowercase(), wwn])
        .filter(|k| !k.is_empty())
        .find_map(|k| members.get(&k).map(String::as_str))
}

/// The pool's size as users see it: `zpool list` counts raw space (parity
/// included on RAIDZ), so when the pool's largest dataset reports free space
/// the total is scaled by the dataset's share of the raw free space.
/// Returns (total, used, free, usage%).
pub fn usable(stats: PoolStats, dataset_free: u64) -> (u64, u64, u64, f64) {
    let (mut total, mut free) = (stats.size, stats.free);
    if dataset_free > 0 && stats.free >= dataset_free {
        total = (stats.size as f64 * dataset_free as f64 / stats.free as f64) as u64;
        free = dataset_free;
    }
    let used = total.saturating_sub(free);
    let usage = if total > 0 {
        (used as f64 / total as f64 * 100.0).clamp(0.0, 100.0)
    } else {
        0.0
    };
    (total, used, free, usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raidz_usable_size() {
        let stats = PoolStats {
            size: 43_600_000_000_000,
            allocated: 7_000_000_000,
            free: 43_593_000_000_000,
        };
        let (total, used, free, usage) = usable(stats, 28_995_400_000_000);
        assert_eq!(free, 28_995_400_000_000);
        assert!((total as f64 - 29.0e12).abs() < 0.01e12, "{total}");
        assert!((used as f64 - 4.6e9).abs() < 0.1e9, "{used}");
        assert!(usage > 0.0 && usage < 0.1);
        // No dataset numbers: the raw pool.
        assert_eq!(usable(stats, 0).0, stats.size);
    }

    #[test]
    fn member_key_forms() {
        let k = member_keys("/dev/disk/by-id/ata-WDC_WD40EFRX-68N32N0_WD-WCC7K1234567-part1");
        assert!(k.contains(&"ata-wdc_wd40efrx-68n32n0_wd-wcc7k1234567".to_string()));
        assert!(k.contains(&"wd-wcc7k1234567".to_string()));
        let k = member_keys("/dev/sdb1");
        assert!(k.contains(&"sdb".to_string()), "{k:?}");
        let k = member_keys("/dev/nvme0n1p3");
        assert!(k.contains(&"nvme0n1".to_string()), "{k:?}");
        assert!(!member_keys("/dev/nvme0n1").contains(&"nvme0n".to_string()));
        let k = member_keys("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4");
        assert!(k.contains(&"5000c500a1b2c3d4".to_string()));
        let k = member_keys("/dev/disk/by-id/nvme-Samsung_SSD_980_PRO_1TB_S5GXNX0R123456_1-part1");
        assert!(k.contains(&"s5gxnx0r123456".to_string()), "{k:?}");
    }

    #[test]
    fn hostile_inputs() {
        assert!(parse_zpool_list("").is_err());
        assert!(parse_zpool_list("tank\t1\t2\n-bad\t1\t2\t3\nx\ty\tz\tw\n").is_err());
        let d = parse_zfs_list(
            "a/b\tfilesystem\t-1\t2\t3\t/x\nno-tabs\ntank\tfilesystem\t1\t2\t3\t/tank\nt/s\tsnapshot\t1\t2\t3\t-\n",
        );
        assert!(d.is_empty(), "{d:?}");
        assert!(parse_zpool_status("garbage\nconfig:\n\n").is_empty());
    }
}
