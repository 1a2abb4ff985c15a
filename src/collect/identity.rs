//! Who the host is: hostname, machine ID, operating system, kernel,
//! architecture, CPU model and count (`host.*` identity fields).
//!
//! Collected once at start; none of it changes while the agent runs (a
//! hostname change is picked up at the next start, like the stock agent).
//! Every field is best effort: a missing file leaves that field empty, it never
//! fails the report.
//!
//! The OS name follows the server's expectations: NAS firmware (Synology DSM,
//! QNAP QTS/QuTS, Unraid) and Proxmox VE are named as such; Debian and
//! Raspberry Pi OS report the point release from `/etc/debian_version`
//! (`12.5`, not os-release's `12`); everything else uses os-release `ID` and
//! `VERSION_ID`.

use std::collections::{HashMap, HashSet};

use super::cpu;
use crate::root::{self, Root};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub hostname: String,
    /// Stable machine ID (`host.id`), empty if none could be found.
    pub machine_id: String,
    pub os_name: String,
    pub os_version: String,
    pub kernel_version: String,
    pub architecture: String,
    pub cpu_model: String,
    pub cpu_count: u64,
    /// `lxc` when the agent runs inside an LXC container (only logged).
    pub container: Option<&'static str>,
}

pub fn collect(root: &Root, hostname_override: Option<&str>) -> Identity {
    let cpuinfo = root
        .read_capped("/proc/cpuinfo", root::LARGE)
        .map(|c| c.text)
        .unwrap_or_default();
    let mut cpu_count = count_processors(&cpuinfo);
    if cpu_count == 0 {
        cpu_count = root
            .read_capped("/proc/stat", root::LARGE)
            .map(|c| cpu::count_cpus(&c.text))
            .unwrap_or(0);
    }
    let (os_name, os_version) = os(root);
    Identity {
        hostname: hostname(root, hostname_override),
        machine_id: machine_id(root),
        os_name,
        os_version,
        kernel_version: root
            .read_trimmed("/proc/sys/kernel/osrelease")
            .unwrap_or_default(),
        architecture: root.machine().unwrap_or_default(),
        cpu_model: cpu_model(&cpuinfo),
        cpu_count,
        container: is_lxc(root).then_some("lxc"),
    }
}

/// `--hostname`, else the kernel's (UTS) hostname, else `/etc/hostname`,
/// else `unknown-host`.
pub fn hostname(root: &Root, hostname_override: Option<&str>) -> String {
    hostname_override
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .or_else(|| root.read_trimmed("/proc/sys/kernel/hostname"))
        .or_else(|| root.read_trimmed("/etc/hostname"))
        .unwrap_or_else(|| "unknown-host".to_string())
}

/// The machine ID the server keys hosts on, in the stock agent's order:
/// `/etc/machine-id` (as a UUID when it is 32 hex digits), the MAC of the
/// first physical-looking interface (`mac-…`), the DMI product UUID, the boot ID.
pub fn machine_id(root: &Root) -> String {
    if let Some(id) = root
        .read_trimmed("/etc/machine-id")
        .filter(|id| id.len() >= 8)
    {
        return format_uuid(&id);
    }
    if let Some(mac) = primary_mac(root) {
        return format!("mac-{mac}");
    }
    if let Some(uuid) = root.read_trimmed("/sys/class/dmi/id/product_uuid") {
        return uuid.to_ascii_lowercase();
    }
    root.read_trimmed("/proc/sys/kernel/random/boot_id")
        .map(|b| b.to_ascii_lowercase())
        .unwrap_or_default()
}

/// `4f1c2a9e0b7d4c3e8a6b5d4c3b2a1f0e` → `4f1c2a9e-0b7d-4c3e-8a6b-5d4c3b2a1f0e`
/// (case kept); anything else unchanged.
pub fn format_uuid(id: &str) -> String {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!(
            "{}-{}-{}-{}-{}",
            &id[..8],
            &id[8..12],
            &id[12..16],
            &id[16..20],
            &id[20..]
        )
    } else {
        id.to_string()
    }
}

const VIRTUAL_NAMES: [&str; 7] = ["docker", "veth", "br-", "cni", "flannel", "virbr", "zt"];

/// Lower-case hex MAC without separators of the first interface (by name)
/// that has one, preferring names that do not look virtual.
fn primary_mac(root: &Root) -> Option<String> {
    let names = root.read_dir("/sys/class/net").ok()?;
    let candidates: Vec<(String, String)> = names
        .into_iter()
        .filter(|n| n != "lo")
        .filter_map(|n| {
            let dir = format!("/sys/class/net/{n}");
            let flags = root.read_trimmed(&format!("{dir}/flags"))?;
            let flags = u64::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
            if flags & 0x8 != 0 {
                return None;
            }
            let mac = root
                .read_trimmed(&format!("{dir}/address"))?
                .to_ascii_lowercase();
            let hex: String = mac.split(':').collect();
            let real = !hex.is_empty()
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
                && hex.bytes().any(|b| b != b'0');
            real.then_some((n, hex))
        })
        .collect();
    let looks_virtual = |n: &str| VIRTUAL_NAMES.iter().any(|v| n.starts_with(v));
    candidates
        .iter()
        .find(|(n, _)| !looks_virtual(n))
        .or_else(|| candidates.first())
        .map(|(_, mac)| mac.clone())
}

/// Logical CPUs: `processor : N` lines.
pub fn count_processors(cpuinfo: &str) -> u64 {
    cpuinfo
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
        .count() as u64
}

/// Distinct ARM core types named in a model (big.LITTLE designs have up to
/// three): more is not a CPU, and would make a model name of megabytes.
const MAX_CORE_TYPES: usize = 8;

/// A human CPU name. x86 has `model name`; ARM kernels print only the
/// implementer and part numbers, which are named here the way `lscpu` does;
/// older ARM, MIPS, PowerPC and RISC-V kernels have a line of their own.
pub fn cpu_model(cpuinfo: &str) -> String {
    let mut first: HashMap<&str, &str> = HashMap::new();
    // Distinct (implementer, part) pairs in file order; the set keeps a
    // cpuinfo of many distinct parts linear (a Vec::contains was quadratic).
    let mut parts: Vec<(&str, &str)> = Vec::new();
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    let mut implementer = "";
    for line in cpuinfo.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if v.is_empty() {
            continue;
        }
        first.entry(k).or_insert(v);
        match k {
            "CPU implementer" => implementer = v,
            "CPU part" if parts.len() < MAX_CORE_TYPES && seen.insert((implementer, v)) => {
                parts.push((implementer, v))
            }
            _ => {}
        }
    }
    if let Some(m) = first.get("model name") {
        return squash_spaces(m);
    }
    if !parts.is_empty() {
        let names: Vec<String> = parts.iter().map(|(i, p)| arm_part_name(i, p)).collect();
        let vendor = arm_vendor(parts[0].0);
        return format!("{vendor} {}", names.join(" + "));
    }
    for key in ["Processor", "cpu model", "cpu", "uarch", "Hardware"] {
        if let Some(v) = first.get(key) {
            if !v.chars().all(|c| c.is_ascii_digit()) {
                return squash_spaces(v);
            }
        }
    }
    String::new()
}

fn squash_spaces(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn arm_vendor(implementer: &str) -> &'static str {
    match implementer.to_ascii_lowercase().as_str() {
        "0x41" => "ARM",
        "0x42" => "Broadcom",
        "0x43" => "Cavium",
        "0x48" => "HiSilicon",
        "0x4e" => "NVIDIA",
        "0x50" => "APM",
        "0x51" => "Qualcomm",
        "0x53" => "Samsung",
        "0x61" => "Apple",
        "0x6d" => "Microsoft",
        "0xc0" => "Ampere",
        _ => "ARM-compatible",
    }
}

/// Core names of Arm Ltd. designs (implementer 0x41), after util-linux's table.
fn arm_part_name(implementer: &str, part: &str) -> String {
    let p = part.to_ascii_lowercase();
    let name = if implementer.eq_ignore_ascii_case("0x41") {
        match p.as_str() {
            "0xb02" => Some("ARM11 MPCore"),
            "0xb36" => Some("ARM1136"),
            "0xb56" => Some("ARM1156"),
            "0xb76" => Some("ARM1176"),
            "0xc05" => Some("Cortex-A5"),
            "0xc07" => Some("Cortex-A7"),
            "0xc08" => Some("Cortex-A8"),
            "0xc09" => Some("Cortex-A9"),
            "0xc0d" | "0xc0e" => Some("Cortex-A17"),
            "0xc0f" => Some("Cortex-A15"),
            "0xd01" => Some("Cortex-A32"),
            "0xd03" => Some("Cortex-A53"),
            "0xd04" => Some("Cortex-A35"),
            "0xd05" => Some("Cortex-A55"),
            "0xd07" => Some("Cortex-A57"),
            "0xd08" => Some("Cortex-A72"),
            "0xd09" => Some("Cortex-A73"),
            "0xd0a" => Some("Cortex-A75"),
            "0xd0b" => Some("Cortex-A76"),
            "0xd0c" => Some("Neoverse-N1"),
            "0xd0d" => Some("Cortex-A77"),
            "0xd40" => Some("Neoverse-V1"),
            "0xd41" => Some("Cortex-A78"),
            "0xd44" => Some("Cortex-X1"),
            "0xd46" => Some("Cortex-A510"),
            "0xd47" => Some("Cortex-A710"),
            "0xd48" => Some("Cortex-X2"),
            "0xd49" => Some("Neoverse-N2"),
            "0xd4b" => Some("Cortex-A78C"),
            "0xd4d" => Some("Cortex-A715"),
            "0xd4e" => Some("Cortex-X3"),
            "0xd4f" => Some("Neoverse-V2"),
            "0xd80" => Some("Cortex-A520"),
            "0xd81" => Some("Cortex-A720"),
            "0xd82" => Some("Cortex-X4"),
            _ => None,
        }
    } else {
        None
    };
    name.map_or_else(|| format!("part {p}"), str::to_string)
}

/// `(name, version)` of the operating system.
pub fn os(root: &Root) -> (String, String) {
    if let Some(found) = synology(root)
        .or_else(|| qnap(root))
        .or_else(|| unraid(root))
        .or_else(|| proxmox(root))
    {
        return found;
    }
    // Red Hat family: the release file names the point release (`7.9.2009`)
    // where os-release has only the major; it comes first, as the server expects.
    for path in ["/etc/redhat-release", "/etc/system-release"] {
        if let Some(line) = root.read_trimmed(path) {
            let (name, version) = redhat(line.lines().next().unwrap_or(""));
            if !name.is_empty() {
                return (name, version);
            }
        }
    }
    let release = root
        .read("/etc/os-release")
        .or_else(|_| root.read("/usr/lib/os-release"))
        .map(|t| parse_assignments(&t))
        .unwrap_or_default();
    let id = release.get("id").cloned().unwrap_or_default();
    let debian_version = root.read_trimmed("/etc/debian_version");
    if let Some(dv) = debian_version.filter(|_| id.is_empty() || id == "debian" || id == "raspbian")
    {
        let name = if id == "raspbian" || root.exists("/usr/bin/raspi-config") {
            "raspbian"
        } else {
            "debian"
        };
        return (name.into(), dv.lines().next().unwrap_or("").to_string());
    }
    if !id.is_empty() {
        return (id, release.get("version_id").cloned().unwrap_or_default());
    }
    if let Some(v) = root.read_trimmed("/etc/alpine-release") {
        return ("alpine".into(), v);
    }
    let lsb = root
        .read("/etc/lsb-release")
        .map(|t| parse_assignments(&t))
        .unwrap_or_default();
    match lsb.get("distrib_id") {
        Some(id) => (
            id.to_ascii_lowercase(),
            lsb.get("distrib_release").cloned().unwrap_or_default(),
        ),
        None => (String::new(), String::new()),
    }
}

/// `CentOS Linux release 7.9.2009 (Core)` → (`centos`, `7.9.2009`);
/// `Red Hat Enterprise Linux release 9.3 (Plow)` → (`redhat`, `9.3`);
/// `Amazon Linux release 2023` → (`amzn`, `2023`).
fn redhat(line: &str) -> (String, String) {
    let lower = line.to_ascii_lowercase();
    let name = if lower.contains("red hat") {
        "redhat".to_string()
    } else {
        match lower.split_whitespace().next().unwrap_or("") {
            "amazon" => "amzn".to_string(),
            first => first.to_string(),
        }
    };
    let version = lower
        .split_once("release ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or("")
        .to_string();
    (name, version)
}

/// `KEY=value` / `key = "value"` files (os-release, Synology VERSION, QNAP
/// uLinux.conf): keys lower-cased, quotes trimmed, comments and `[sections]`
/// skipped, empty values dropped, first occurrence wins.
pub fn parse_assignments(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';', '[']) {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let k = k.trim().to_ascii_lowercase();
        let v = v.trim().trim_matches(|c| c == '"' || c == '\'').trim();
        if !k.is_empty() && !v.is_empty() {
            out.entry(k).or_insert_with(|| v.to_string());
        }
    }
    out
}

fn synology(root: &Root) -> Option<(String, String)> {
    let has_dir = root.exists("/usr/syno");
    for path in ["/etc.defaults/VERSION", "/etc/VERSION"] {
        let Ok(text) = root.read(path) else { continue };
        let v = parse_assignments(&text);
        let get = |k: &str| v.get(k).map(String::as_str).unwrap_or("");
        let versioned = [
            "majorversion",
            "minorversion",
            "buildnumber",
            "productversion",
        ]
        .iter()
        .any(|k| !get(k).is_empty());
        let hints = format!("{} {} {}", get("product"), get("unique"), get("buildphase"))
            .to_ascii_lowercase();
        let named = ["synology", "dsm", "diskstation"]
            .iter()
            .any(|h| hints.contains(h));
        if v.is_empty() || !(has_dir || versioned || named) {
            continue;
        }
        let mut version = get("productversion").to_string();
        if version.is_empty() {
            version = [get("majorversion"), get("minorversion")]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(".");
        }
        let build = get("buildnumber");
        if !build.is_empty() && !version.contains(build) {
            version = if version.is_empty() {
                build.to_string()
            } else {
                format!("{version}-{build}")
            };
        }
        let smallfix = get("smallfixnumber");
        if !smallfix.is_empty() && smallfix != "0" {
            version = if version.is_empty() {
                smallfix.to_string()
            } else {
                format!("{version} Update {smallfix}")
            };
        }
        return Some(("Synology DSM".into(), version));
    }
    None
}

fn qnap(root: &Root) -> Option<(String, String)> {
    for path in ["/etc/config/uLinux.conf", "/etc/default_config/uLinux.conf"] {
        let Ok(text) = root.read(path) else { continue };
        let v = parse_assignments(&text);
        if v.is_empty() {
            continue;
        }
        let get = |k: &str| v.get(k).map(String::as_str).unwrap_or("");
        let hints = [
            get("display_name"),
            get("platform"),
            get("system_name"),
            get("version"),
        ]
        .join(" ")
        .to_ascii_lowercase();
        let name = if hints.contains("quts") {
            "QNAP QuTS"
        } else {
            "QNAP QTS"
        };
        return Some((name.into(), get("version").to_string()));
    }
    (root.exists("/etc/config/qpkg.conf") || root.exists("/sbin/getcfg"))
        .then(|| ("QNAP QTS".into(), String::new()))
}

fn unraid(root: &Root) -> Option<(String, String)> {
    if !root.exists("/etc/unraid-version") {
        return None;
    }
    let text = root.read("/etc/unraid-version").unwrap_or_default();
    let version = text.lines().find_map(first_version).unwrap_or_default();
    Some(("Unraid".into(), version))
}

/// The first `1.2.3[-suffix]` (or bare number) in `line`.
fn first_version(line: &str) -> Option<String> {
    let b = line.as_bytes();
    let start = b.iter().position(u8::is_ascii_digit)?;
    let mut end = start;
    while end < b.len()
        && (b[end].is_ascii_alphanumeric() || matches!(b[end], b'.' | b'-' | b'+' | b'_'))
    {
        end += 1;
    }
    let v = line[start..end].trim_end_matches(['.', '-', '+', '_']);
    (!v.is_empty()).then(|| v.to_string())
}

/// Proxmox VE nodes: `pveversion` is installed; the version is the
/// `pve-manager` package's, read from dpkg's database rather than by running
/// `dpkg-query`.
fn proxmox(root: &Root) -> Option<(String, String)> {
    if !root.exists("/usr/bin/pveversion") {
        return None;
    }
    let status = root
        .read_capped("/var/lib/dpkg/status", 64 * 1024 * 1024)
        .map(|c| c.text)
        .unwrap_or_default();
    Some((
        "Proxmox VE".into(),
        dpkg_version(&status, "pve-manager").unwrap_or_default(),
    ))
}

/// The `Version:` of `package` in a dpkg status file.
pub fn dpkg_version(status: &str, package: &str) -> Option<String> {
    let mut in_pkg = false;
    for line in status.lines() {
        if let Some(name) = line.strip_prefix("Package:") {
            in_pkg = name.trim() == package;
        } else if line.is_empty() {
            in_pkg = false;
        } else if in_pkg {
            if let Some(v) = line.strip_prefix("Version:") {
                return Some(v.trim().to_string());
            }
        }
    }
    None
}

fn is_lxc(root: &Root) -> bool {
    root.read("/run/systemd/container")
        .is_ok_and(|t| t.contains("lxc"))
        || root
            .read("/proc/1/environ")
            .is_ok_and(|t| t.split('\0').any(|kv| kv == "container=lxc"))
        || root
            .read("/proc/1/cgroup")
            .is_ok_and(|t| t.contains("/lxc/") || t.contains("lxc.payload"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_format() {
        assert_eq!(
            format_uuid("4f1c2a9e0b7d4c3e8a6b5d4c3b2a1f0e"),
            "4f1c2a9e-0b7d-4c3e-8a6b-5d4c3b2a1f0e"
        );
        assert_eq!(
            format_uuid("ABCDEF0123456789ABCDEF0123456789"),
            "ABCDEF01-2345-6789-ABCD-EF0123456789"
        );
        assert_eq!(format_uuid("short-id-1"), "short-id-1");
    }

    #[test]
    fn cpu_models() {
        assert_eq!(
            cpu_model("processor\t: 0\nmodel name\t: Intel(R)  Xeon(R) Processor\n"),
            "Intel(R) Xeon(R) Processor"
        );
        let pi4 = "processor\t: 0\nBogoMIPS\t: 108.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n\
                   processor\t: 1\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\nHardware\t: BCM2835\nModel\t: Raspberry Pi 4 Model B Rev 1.4\n";
        assert_eq!(cpu_model(pi4), "ARM Cortex-A72");
        assert_eq!(count_processors(pi4), 2);
        let big_little =
            "CPU implementer : 0x41\nCPU part : 0xd05\nCPU implementer : 0x41\nCPU part : 0xd0b\n";
        assert_eq!(cpu_model(big_little), "ARM Cortex-A55 + Cortex-A76");
        assert_eq!(
            cpu_model("Processor\t: ARMv7 Processor rev 4 (v7l)\nprocessor\t: 0\n"),
            "ARMv7 Processor rev 4 (v7l)"
        );
        assert_eq!(
            cpu_model("CPU implementer : 0x51\nCPU part : 0x801\n"),
            "Qualcomm part 0x801"
        );
        assert_eq!(cpu_model(""), "");
    }

    #[test]
    fn assignments() {
        let v = parse_assignments(
            "majorversion=\"7\"\n[System]\nVersion = 5.1.0\n# c\nempty=\"\"\n=x\n",
        );
        assert_eq!(v.get("majorversion").map(String::as_str), Some("7"));
        assert_eq!(v.get("version").map(String::as_str), Some("5.1.0"));
        assert!(!v.contains_key("empty"));
    }

    #[test]
    fn versions() {
        assert_eq!(
            first_version("version=\"6.12.10\"").as_deref(),
            Some("6.12.10")
        );
        assert_eq!(
            first_version("7.0.0-beta.2").as_deref(),
            Some("7.0.0-beta.2")
        );
        assert_eq!(first_version("none"), None);
        assert_eq!(
            redhat("CentOS release 6.10 (Final)"),
            ("centos".into(), "6.10".into())
        );
        assert_eq!(
            redhat("Red Hat Enterprise Linux Server release 7.9 (Maipo)").0,
            "redhat"
        );
        let status = "Package: pve-docs\nVersion: 8.2.2\n\nPackage: pve-manager\nStatus: install ok installed\nVersion: 8.2.4\n";
        assert_eq!(
            dpkg_version(status, "pve-manager").as_deref(),
            Some("8.2.4")
        );
        assert_eq!(dpkg_version(status, "absent"), None);
    }
}
