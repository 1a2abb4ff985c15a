//! Which disks to ask, and what sysfs knows about them
//! (`spec/pulse-collectors.md` §1.2-§1.4, §1.7).
//!
//! Targets are the union of `smartctl --scan` (never `--scan-open`, which
//! opens every device) and `/sys/block` (or `lsblk` when sysfs cannot be
//! read), minus virtual devices and `--disk-exclude`. For each disk sysfs
//! gives the transport (which `-d` types are worth trying), whether it is
//! certainly not rotational (the only case where the standby guard may be
//! left out), its controller and SCSI address, and its identity for disks
//! smartctl cannot read. Reads go through [`Root`]; nothing here runs a
//! program or touches a device.

use serde_json::Value;

use crate::collect::patterns::any_matches;
use crate::root::Root;

/// One disk to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What smartctl is given: `/dev/sda`, `/dev/nvme0`, `/dev/bus/0`.
    pub path: String,
    /// The scan's `-d` type (`sat`, `nvme`, `megaraid,7`), or empty.
    pub dtype: String,
    /// The block device in `/sys/block` this target is (`nvme0` → `nvme0n1`).
    pub block: String,
    /// How Unraid says the disk is attached (`sata`, `sas`, `nvme`, `usb`):
    /// for an array member it overrides what sysfs suggests.
    pub native_transport: Option<&'static str>,
}

impl Target {
    /// Member of a RAID controller (`megaraid,7`, `cciss,1`, `areca,1/1`):
    /// probed only with its own `-d` type, since without it smartctl would
    /// read the array, not the disk.
    pub fn multiplexed(&self) -> bool {
        is_multiplexed(&self.dtype)
    }

    /// How the disk is attached: Unraid's word for a member, else sysfs's.
    pub fn transport(&self, root: &Root) -> Option<&'static str> {
        self.native_transport
            .or_else(|| transport(root, &self.block))
    }

    /// One name for the cache: path and type.
    pub fn key(&self) -> String {
        if self.dtype.is_empty() {
            self.path.clone()
        } else {
            format!("{} -d {}", self.path, self.dtype)
        }
    }
}

const VIRTUAL_PREFIXES: [&str; 12] = [
    "dm-", "drbd", "loop", "md", "nbd", "pmem", "ram", "rbd", "vd", "xvd", "zd", "zram",
];
const VIRTUAL_MODELS: [&str; 9] = [
    "hyper-v",
    "msft virtual",
    "parallels",
    "qemu",
    "vbox",
    "virtual disk",
    "virtual hd",
    "virtualbox",
    "vmware",
];
const VIRTUAL_SUBSYSTEMS: [&str; 6] = ["drbd", "nbd", "vmbus", "virtio", "xen", "zfs"];

/// A `-d` type whose `,` is followed by a digit: a controller member. Not
/// `sat,12`/`sat,16` (a SAT command length) nor the USB bridges' options.
pub fn is_multiplexed(dtype: &str) -> bool {
    let Some((kind, rest)) = dtype.split_once(',') else {
        return false;
    };
    let kind = kind.to_ascii_lowercase();
    rest.starts_with(|c: char| c.is_ascii_digit())
        && !kind.starts_with("sat")
        && !kind.starts_with("usb")
}

fn virtual_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    VIRTUAL_PREFIXES.iter().any(|p| n.starts_with(p))
}

fn excluded(exclude: &[String], name: &str) -> bool {
    any_matches(exclude, &[name, &format!("/dev/{name}")])
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `smartctl --scan` lines → `(path, type)`, virtual and excluded devices
/// dropped, duplicates removed, an untyped line dropped when the same path
/// also has a typed one.
pub fn parse_scan(text: &str, exclude: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(&path) = fields.first() else {
            continue;
        };
        if !path.starts_with('/') && !path.starts_with('-') {
            continue;
        }
        let dtype = fields
            .iter()
            .position(|&f| f == "-d")
            .and_then(|i| fields.get(i + 1))
            .map_or("", |s| *s);
        let name = basename(path);
        if virtual_name(name) || excluded(exclude, name) {
            continue;
        }
        if out.iter().any(|(p, t)| p == path && t == dtype) {
            continue;
        }
        out.push((path.to_string(), dtype.to_string()));
    }
    let typed: Vec<String> = out
        .iter()
        .filter(|(_, t)| !t.is_empty())
        .map(|(p, _)| p.clone())
        .collect();
    out.retain(|(p, t)| !t.is_empty() || !typed.contains(p));
    out
}

/// Why sysfs says `/sys/block/<name>` is not a disk to ask, if it does.
pub fn sysfs_skip_reason(root: &Root, name: &str) -> Option<&'static str> {
    if virtual_name(name) {
        return Some("virtual device name");
    }
    let dir = format!("/sys/block/{name}");
    if root
        .real_path(&dir)
        .is_some_and(|p| p.contains("/virtual/"))
    {
        return Some("virtual block device");
    }
    if root
        .real_path(&format!("{dir}/device/subsystem"))
        .is_some_and(|p| VIRTUAL_SUBSYSTEMS.iter().any(|s| p.contains(s)))
    {
        return Some("virtual bus");
    }
    let meta = format!(
        "{} {}",
        root.read_trimmed(&format!("{dir}/device/vendor"))
            .unwrap_or_default(),
        root.read_trimmed(&format!("{dir}/device/model"))
            .unwrap_or_default()
    )
    .to_ascii_lowercase();
    if VIRTUAL_MODELS.iter().any(|m| meta.contains(m)) {
        return Some("virtual disk model");
    }
    None
}

/// Disks in `/sys/block`, sorted, without virtual and excluded ones.
pub fn sysfs_disks(root: &Root, exclude: &[String]) -> Result<Vec<String>, crate::root::ReadError> {
    Ok(root
        .read_dir("/sys/block")?
        .into_iter()
        .filter(|n| !excluded(exclude, n) && sysfs_skip_reason(root, n).is_none())
        .collect())
}

/// `lsblk -J -d -o NAME,TYPE,TRAN,MODEL,VENDOR,SUBSYSTEMS` → disks, for hosts
/// whose `/sys/block` cannot be read.
pub fn parse_lsblk(json: &[u8], exclude: &[String]) -> Vec<String> {
    let Ok(doc) = serde_json::from_slice::<Value>(json) else {
        return Vec::new();
    };
    let s = |v: &Value| v.as_str().unwrap_or("").to_ascii_lowercase();
    let Some(devices) = doc["blockdevices"].as_array() else {
        return Vec::new();
    };
    devices
        .iter()
        .filter(|d| s(&d["type"]) == "disk")
        .filter_map(|d| {
            let name = d["name"].as_str()?.to_string();
            let meta = format!("{} {}", s(&d["vendor"]), s(&d["model"]));
            let skip = virtual_name(&name)
                || s(&d["tran"]) == "virtio"
                || VIRTUAL_SUBSYSTEMS
                    .iter()
                    .any(|v| s(&d["subsystems"]).contains(v))
                || VIRTUAL_MODELS.iter().any(|m| meta.contains(m))
                || excluded(exclude, &name);
            (!skip).then_some(name)
        })
        .collect()
}

/// The block device a scan path stands for: `nvmeN` (the controller) is its
/// lowest-numbered namespace `nvmeNn<k>`; anything else its own basename.
pub fn canonical_block(root: &Root, path: &str) -> String {
    let name = basename(path);
    let is_controller = name
        .strip_prefix("nvme")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !is_controller {
        return name.to_string();
    }
    let prefix = format!("{name}n");
    root.read_dir("/sys/block")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|b| {
            let ns: u64 = b.strip_prefix(&prefix)?.parse().ok()?;
            Some((ns, b))
        })
        .min()
        .map_or_else(|| name.to_string(), |(_, b)| b)
}

/// Scan targets first, in scan order; then every sysfs disk no scan target
/// covers, untyped. Exclusions apply again to the block name a scan path
/// stands for (`nvme0` → `nvme0n1`).
pub fn union(
    root: &Root,
    scan: &[(String, String)],
    disks: &[String],
    exclude: &[String],
) -> Vec<Target> {
    let mut targets: Vec<Target> = scan
        .iter()
        .map(|(path, dtype)| Target {
            path: path.clone(),
            dtype: dtype.clone(),
            block: canonical_block(root, path),
            native_transport: None,
        })
        .filter(|t| t.multiplexed() || !excluded(exclude, &t.block))
        .collect();
    for d in disks {
        let covered = targets
            .iter()
            .any(|t| basename(&t.path) == d || t.block == *d);
        if !covered {
            targets.push(Target {
                path: format!("/dev/{d}"),
                dtype: String::new(),
                block: d.clone(),
                native_transport: None,
            });
        }
    }
    targets
}

/// How a disk is attached, from sysfs: `nvme`, `sas`, `sata` or `usb`.
pub fn transport(root: &Root, block: &str) -> Option<&'static str> {
    let dev = format!("/sys/block/{block}/device");
    for file in ["protocol", "transport"] {
        if let Some(v) = root.read_trimmed(&format!("{dev}/{file}")) {
            let v = v.to_ascii_lowercase();
            for (word, t) in [
                ("nvme", "nvme"),
                ("sas", "sas"),
                ("sata", "sata"),
                ("ata", "sata"),
                ("usb", "usb"),
            ] {
                if v.contains(word) {
                    return Some(t);
                }
            }
        }
    }
    let real = root.real_path(&dev).unwrap_or_default();
    if real.contains("/usb") {
        return Some("usb");
    }
    let ata_path = real.contains("/ata");
    if root
        .read_trimmed(&format!("{dev}/vendor"))
        .is_some_and(|v| v.eq_ignore_ascii_case("ATA"))
    {
        // Before sas_address: SATA disks behind a SAS HBA stay SATA.
        return Some("sata");
    }
    if root.read_trimmed(&format!("{dev}/sas_address")).is_some() {
        return Some("sas");
    }
    ata_path.then_some("sata")
}

/// The disk is certainly not rotational (`queue/rotational` reads `0`), so a
/// probe cannot spin it up. Anything else keeps the standby guard.
pub fn certainly_solid_state(root: &Root, block: &str) -> bool {
    root.read_trimmed(&format!("/sys/block/{block}/queue/rotational"))
        .is_some_and(|v| v == "0")
}

/// The `-d` types to try for `target`, in order (`""` = no `-d`).
pub fn attempt_types(target: &Target, transport: Option<&str>) -> Vec<String> {
    if target.multiplexed() {
        return vec![target.dtype.clone()];
    }
    let mut types: Vec<String> = Vec::new();
    if !target.dtype.is_empty() {
        let t = target.dtype.to_ascii_lowercase();
        let fits = match transport {
            Some("sata") => !t.starts_with("scsi"),
            Some("sas") => !t.starts_with("sat"),
            _ => true,
        };
        if fits {
            types.push(target.dtype.clone());
        }
    }
    types.push(String::new());
    if inferable(&target.block) {
        match transport {
            Some("sata") | None => types.push("sat".into()),
            Some("sas") => types.push("scsi".into()),
            _ => {}
        }
    }
    let mut seen = Vec::new();
    types.retain(|t| {
        let new = !seen.contains(t);
        seen.push(t.clone());
        new
    });
    types
}

/// `sd*`, `hd*` or Synology's `sataN`: names whose `-d` type can be guessed.
fn inferable(name: &str) -> bool {
    let letters = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase());
    name.strip_prefix("sd").is_some_and(letters)
        || name.strip_prefix("hd").is_some_and(letters)
        || name
            .strip_prefix("sata")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// What sysfs says about a disk's identity and place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SysfsDisk {
    pub model: String,
    pub serial: String,
    pub wwn: String,
    pub size_bytes: u64,
    /// PCI address of the controller (`0000:00:17.0`), else the device before
    /// `hostN`.
    pub controller: String,
    /// SCSI address `H:C:T:L`, if any.
    pub target: String,
}

pub fn sysfs_disk(root: &Root, block: &str) -> SysfsDisk {
    let dir = format!("/sys/block/{block}");
    let read = |rel: &str| {
        root.read_trimmed(&format!("{dir}/{rel}"))
            .unwrap_or_default()
    };
    let wwn = ["device/wwid", "wwid", "device/wwn"]
        .iter()
        .map(|f| read(f))
        .find(|v| !v.is_empty())
        .unwrap_or_default();
    let (controller, target) = root
        .real_path(&format!("{dir}/device"))
        .map(|p| topology(&p))
        .unwrap_or_default();
    SysfsDisk {
        model: read("device/model"),
        serial: read("device/serial"),
        wwn,
        size_bytes: read("size").parse::<u64>().unwrap_or(0).saturating_mul(512),
        controller,
        target,
    }
}

/// `(controller, target)` from a resolved sysfs device path.
fn topology(path: &str) -> (String, String) {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let pci = |s: &str| {
        let b = s.as_bytes();
        b.len() == 12
            && b[4] == b':'
            && b[7] == b':'
            && b[10] == b'.'
            && (b'0'..=b'7').contains(&b[11])
            && b.iter()
                .enumerate()
                .filter(|(i, _)| ![4, 7, 10, 11].contains(i))
                .all(|(_, c)| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let controller = segs
        .iter()
        .rev()
        .find(|s| pci(s))
        .map(|s| s.to_string())
        .or_else(|| {
            let host = segs.iter().position(|s| {
                s.strip_prefix("host")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })?;
            segs.get(host.checked_sub(1)?).map(|s| s.to_string())
        })
        .unwrap_or_default();
    let hctl = |s: &str| {
        let parts: Vec<&str> = s.split(':').collect();
        parts.len() == 4
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    let target = segs
        .iter()
        .rev()
        .find(|s| hctl(s))
        .map(|s| s.to_string())
        .unwrap_or_default();
    (controller, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_lines() {
        let text = "/dev/sda -d sat # /dev/sda, ATA device\n/dev/sda # dup\n\
                    /dev/bsg/sssraid0 -d sssraid,0,1 # x\n/dev/sdb -d megaraid,0 # a\n\
                    /dev/sdb -d megaraid,1 # b\n/dev/sdc # plain\n# comment only\n\
                    garbage line\n/dev/loop0 -d scsi\n/dev/sda -d sat\n";
        let got = parse_scan(text, &["sdc".to_string()]);
        let want = [
            ("/dev/sda", "sat"),
            ("/dev/bsg/sssraid0", "sssraid,0,1"),
            ("/dev/sdb", "megaraid,0"),
            ("/dev/sdb", "megaraid,1"),
        ];
        let got: Vec<(&str, &str)> = got.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn multiplexed_types() {
        for t in [
            "megaraid,7",
            "cciss,1",
            "areca,1/1",
            "aacraid,0",
            "sssraid,0,1",
        ] {
            assert!(is_multiplexed(t), "{t}");
        }
        for t in [
            "",
            "sat",
            "nvme",
            "sat,12",
            "sat,16",
            "usbjmicron,0",
            "scsi",
        ] {
            assert!(!is_multiplexed(t), "{t}");
        }
    }

    #[test]
    fn topology_of_sata_and_nvme() {
        assert_eq!(
            topology("/sys/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0"),
            ("0000:00:17.0".into(), "0:0:0:0".into())
        );
        assert_eq!(
            topology("/sys/devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0"),
            ("0000:3d:00.0".into(), String::new())
        );
        assert_eq!(
            topology("/sys/devices/platform/soc/usb1/host3/target3:0:0/3:0:0:0"),
            ("usb1".into(), "3:0:0:0".into())
        );
    }

    #[test]
    fn attempt_order() {
        let t = |path: &str, dtype: &str| Target {
            path: path.into(),
            dtype: dtype.into(),
            block: basename(path).into(),
            native_transport: None,
        };
        assert_eq!(
            attempt_types(&t("/dev/sda", "scsi"), Some("sata")),
            ["", "sat"]
        );
        assert_eq!(
            attempt_types(&t("/dev/sdf", "scsi"), Some("sas")),
            ["scsi", ""]
        );
        assert_eq!(attempt_types(&t("/dev/sda", ""), None), ["", "sat"]);
        assert_eq!(attempt_types(&t("/dev/sda", ""), Some("usb")), [""]);
        assert_eq!(
            attempt_types(&t("/dev/sda", "sat"), Some("sata")),
            ["sat", ""]
        );
        assert_eq!(
            attempt_types(&t("/dev/nvme0", "nvme"), Some("nvme")),
            ["nvme", ""]
        );
        assert_eq!(
            attempt_types(&t("/dev/bus/0", "megaraid,3"), None),
            ["megaraid,3"]
        );
        assert_eq!(attempt_types(&t("/dev/sata1", ""), None), ["", "sat"]);
    }

    #[test]
    fn lsblk_fallback() {
        let j = br#"{"blockdevices":[{"name":"sda","type":"disk","tran":"sata","model":"WDC","vendor":"ATA"},
            {"name":"sda1","type":"part"},{"name":"vda","type":"disk","tran":"virtio"},
            {"name":"sdb","type":"disk","model":"QEMU HARDDISK"},{"name":"sr0","type":"rom"},
            {"name":"nvme0n1","type":"disk","tran":"nvme"}]}"#;
        assert_eq!(parse_lsblk(j, &[]), ["sda", "nvme0n1"]);
        assert!(parse_lsblk(b"not json", &[]).is_empty());
    }
}
