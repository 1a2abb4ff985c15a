//! The host report's wire types (spec/pulse-protocol.md §3), checked the way
//! the server decodes them: every field has the spec's JSON type, integers are
//! integers (Go rejects `1.0` for an int64 field), times are RFC 3339,
//! required fields are present, and no field is outside the schema (a typo
//! in a key would be silently ignored by the server).

use serde_json::Value;

#[derive(Clone, Copy)]
pub enum T {
    Str,
    /// A JSON integer (no fraction, no exponent).
    Int,
    /// An integer ≥ 0.
    UInt,
    Float,
    Bool,
    /// RFC 3339 string.
    Time,
    Obj(&'static [F]),
    Arr(&'static T),
    Map(&'static T),
    /// Allowed, not checked (optional sections this agent does not send yet).
    Any,
}

pub struct F(pub &'static str, pub T, pub Req);

#[derive(Clone, Copy, PartialEq)]
pub enum Req {
    Always,
    Opt,
}

use Req::*;
use T::*;

const MODULE: &[F] = &[
    F("name", Str, Always),
    F("enabled", Bool, Always),
    F("state", Str, Always),
    F("lastError", Str, Opt),
    F("updatedAt", Time, Always),
];
const UPDATE: &[F] = &[
    F("state", Str, Always),
    F("autoUpdate", Bool, Always),
    F("updatedFrom", Str, Opt),
    F("availableVersion", Str, Opt),
    F("lastCheckedAt", Time, Opt),
    F("lastAttemptAt", Time, Opt),
    F("lastSuccessAt", Time, Opt),
    F("lastError", Str, Opt),
];
const PRIVILEGE: &[F] = &[
    F("runningAsRoot", Bool, Always),
    F("serviceUser", Str, Opt),
    F("smartctlHelper", Bool, Opt),
    F("pctHelper", Bool, Opt),
    // Ours: the server decodes without DisallowUnknownFields and ignores
    // them; they show the profile and sandbox on /report and /status.
    F("profile", Str, Always),
    F("noNewPrivileges", Bool, Opt),
    F("seccomp", Bool, Opt),
    F("capabilities", Arr(&Str), Opt),
];
const APPLIED: &[F] = &[F("version", Str, Opt), F("hash", Str, Opt)];
const AGENT: &[F] = &[
    F("id", Str, Always),
    F("version", Str, Opt),
    F("type", Str, Opt),
    F("intervalSeconds", UInt, Opt),
    F("hostname", Str, Opt),
    F("updatedFrom", Str, Opt),
    F("commandsEnabled", Bool, Opt),
    F("operationReceiptVersion", Int, Opt),
    F("diskExclude", Arr(&Str), Opt),
    F("appliedConfig", Obj(APPLIED), Opt),
    F("update", Obj(UPDATE), Opt),
    F("modules", Arr(&Obj(MODULE)), Opt),
    F("privilege", Obj(PRIVILEGE), Opt),
];
const HOST: &[F] = &[
    F("id", Str, Opt),
    F("hostname", Str, Always),
    F("displayName", Str, Opt),
    F("machineId", Str, Opt),
    F("platform", Str, Opt),
    F("osName", Str, Opt),
    F("osVersion", Str, Opt),
    F("kernelVersion", Str, Opt),
    F("architecture", Str, Opt),
    F("cpuModel", Str, Opt),
    F("cpuCount", UInt, Opt),
    F("uptimeSeconds", UInt, Opt),
    F("loadAverage", Arr(&Float), Opt),
    F("reportIp", Str, Opt),
    F("packageUpdates", Obj(PACKAGE_UPDATES), Opt),
    F("storageCleanup", Obj(STORAGE_CLEANUP), Opt),
];
const PACKAGE: &[F] = &[
    F("name", Str, Always),
    F("installedVersion", Str, Opt),
    F("availableVersion", Str, Opt),
];
const PACKAGE_UPDATES: &[F] = &[
    F("supported", Bool, Always),
    F("manager", Str, Opt),
    F("inventoryHash", Str, Opt),
    F("pendingCount", UInt, Always),
    F("packages", Arr(&Obj(PACKAGE)), Opt),
    F("checkedAt", Time, Always),
    F("rebootRequired", Bool, Opt),
    F("error", Str, Opt),
];
const STORAGE_CLEANUP: &[F] = &[
    F("supported", Bool, Always),
    F("provider", Str, Opt),
    F("fingerprint", Str, Opt),
    F("reclaimableBytes", UInt, Always),
    F("checkedAt", Time, Always),
    F("error", Str, Opt),
];
const MEMORY: &[F] = &[
    F("totalBytes", UInt, Opt),
    F("usedBytes", UInt, Opt),
    F("freeBytes", UInt, Opt),
    F("cacheBytes", UInt, Opt),
    F("usage", Float, Opt),
    F("swapTotalBytes", UInt, Opt),
    F("swapUsedBytes", UInt, Opt),
];
const METRICS: &[F] = &[
    F("cpuUsagePercent", Float, Opt),
    F("memory", Obj(MEMORY), Always),
];
const DATASET: &[F] = &[
    F("name", Str, Always),
    F("type", Str, Opt),
    F("mountpoint", Str, Opt),
    F("usedBytes", UInt, Opt),
    F("availableBytes", UInt, Opt),
    F("referencedBytes", UInt, Opt),
];
const DISK: &[F] = &[
    F("device", Str, Opt),
    F("mountpoint", Str, Opt),
    F("filesystem", Str, Opt),
    F("type", Str, Opt),
    F("totalBytes", UInt, Opt),
    F("usedBytes", UInt, Opt),
    F("freeBytes", UInt, Opt),
    F("usage", Float, Opt),
    F("zfsDatasets", Arr(&Obj(DATASET)), Opt),
];
const DISK_IO: &[F] = &[
    F("device", Str, Always),
    F("readBytes", UInt, Opt),
    F("writeBytes", UInt, Opt),
    F("readOps", UInt, Opt),
    F("writeOps", UInt, Opt),
    F("readTimeMs", UInt, Opt),
    F("writeTimeMs", UInt, Opt),
    F("ioTimeMs", UInt, Opt),
];
const NETWORK: &[F] = &[
    F("name", Str, Always),
    F("mac", Str, Opt),
    F("addresses", Arr(&Str), Opt),
    F("rxBytes", UInt, Opt),
    F("txBytes", UInt, Opt),
    F("speedMbps", Int, Opt),
];
const STATUS: &[F] = &[
    F("state", Str, Always),
    F("source", Str, Opt),
    F("reason", Str, Opt),
];
/// Go encodes every key of this struct, set or not.
const COLLECTION: &[F] = &[
    F("serial", Obj(STATUS), Always),
    F("temperature", Obj(STATUS), Always),
    F("io", Obj(STATUS), Always),
    F("controller", Obj(STATUS), Always),
    F("pool", Obj(STATUS), Always),
];
const SMART_ATTRIBUTES: &[F] = &[
    F("powerOnHours", Int, Opt),
    F("powerCycles", Int, Opt),
    F("reallocatedSectors", Int, Opt),
    F("pendingSectors", Int, Opt),
    F("offlineUncorrectable", Int, Opt),
    F("udmaCrcErrors", Int, Opt),
    F("percentageUsed", Int, Opt),
    F("availableSpare", Int, Opt),
    F("mediaErrors", Int, Opt),
    F("unsafeShutdowns", Int, Opt),
];
const SMART: &[F] = &[
    F("device", Str, Always),
    F("model", Str, Opt),
    F("serial", Str, Opt),
    F("wwn", Str, Opt),
    F("type", Str, Opt),
    F("controller", Str, Opt),
    F("target", Str, Opt),
    F("sizeBytes", Int, Opt),
    F("temperature", Int, Always),
    F("health", Str, Opt),
    F("standby", Bool, Opt),
    F("pool", Str, Opt),
    F("io", Obj(DISK_IO), Opt),
    F("collection", Obj(COLLECTION), Opt),
    F("attributes", Obj(SMART_ATTRIBUTES), Opt),
];
const GPU: &[F] = &[
    F("id", Str, Opt),
    F("name", Str, Opt),
    F("temperatureCelsius", Float, Opt),
    F("utilizationPercent", Float, Opt),
    F("memoryUsedBytes", UInt, Opt),
    F("memoryTotalBytes", UInt, Opt),
];
const RAID_DEVICE: &[F] = &[
    F("device", Str, Opt),
    F("state", Str, Opt),
    F("slot", Int, Always),
];
/// `level`, `state`, the counts, `devices` and `rebuildPercent` have no
/// `omitempty` in the stock agent's struct.
const RAID: &[F] = &[
    F("device", Str, Always),
    F("name", Str, Opt),
    F("level", Str, Always),
    F("state", Str, Always),
    F("totalDevices", Int, Always),
    F("activeDevices", Int, Always),
    F("workingDevices", Int, Always),
    F("failedDevices", Int, Always),
    F("spareDevices", Int, Always),
    F("uuid", Str, Opt),
    F("devices", Arr(&Obj(RAID_DEVICE)), Always),
    F("rebuildPercent", Float, Always),
    F("rebuildSpeed", Str, Opt),
    F("operation", Str, Opt),
];
const SENSORS: &[F] = &[
    F("temperatureCelsius", Map(&Float), Opt),
    F("fanRpm", Map(&Float), Opt),
    F("powerWatts", Map(&Float), Opt),
    F("additional", Map(&Float), Opt),
    F("custom", Any, Opt),
    F("gpu", Arr(&Obj(GPU)), Opt),
    F("thermalState", Any, Opt),
    F("smart", Arr(&Obj(SMART)), Opt),
];
/// `clusterSensors[]`: a peer's `sensors -j` in the host's `sensors` shape.
const CLUSTER_NODE: &[F] = &[
    F("nodeName", Str, Always),
    F("sensors", Obj(SENSORS), Always),
    F("collectedAt", Time, Opt),
];
/// `proxmoxLxc.containers[]`: no `omitempty` in the stock struct.
const LXC_CONTAINER: &[F] = &[
    F("vmid", Int, Always),
    F("name", Str, Always),
    F("disks", Arr(&Obj(DISK)), Always),
];
/// `proxmoxLxc` (§3.10): `pct list` + `pct df`.
const PROXMOX_LXC: &[F] = &[
    F("containers", Arr(&Obj(LXC_CONTAINER)), Always),
    F("collectedAt", Time, Always),
];
/// `unraid` (§3.10): `arrayStarted` has no `omitempty`; counts and slots
/// are Go ints, sizes int64 that are never negative here.
const UNRAID_DISK: &[F] = &[
    F("name", Str, Always),
    F("device", Str, Opt),
    F("role", Str, Opt),
    F("status", Str, Opt),
    F("rawStatus", Str, Opt),
    F("model", Str, Opt),
    F("serial", Str, Opt),
    F("filesystem", Str, Opt),
    F("transport", Str, Opt),
    F("sizeBytes", UInt, Opt),
    F("usedBytes", UInt, Opt),
    F("freeBytes", UInt, Opt),
    F("temperature", Int, Opt),
    F("spunDown", Bool, Opt),
    F("readCount", Int, Opt),
    F("writeCount", Int, Opt),
    F("errorCount", Int, Opt),
    F("slot", Int, Opt),
];
pub const UNRAID: &[F] = &[
    F("arrayStarted", Bool, Always),
    F("arrayState", Str, Opt),
    F("syncAction", Str, Opt),
    F("syncProgress", Float, Opt),
    F("syncErrors", Int, Opt),
    F("numProtected", Int, Opt),
    F("numDisabled", Int, Opt),
    F("numInvalid", Int, Opt),
    F("numMissing", Int, Opt),
    F("disks", Arr(&Obj(UNRAID_DISK)), Opt),
];
/// `ceph` (§3.10; the stock agent's `CephCluster`): `monMap` and `mgrMap`
/// are structs, which Go's `omitempty` never drops.
const CEPH_CHECK: &[F] = &[
    F("severity", Str, Always),
    F("message", Str, Opt),
    F("detail", Arr(&Str), Opt),
];
const CEPH_SUMMARY: &[F] = &[F("severity", Str, Always), F("message", Str, Always)];
const CEPH_HEALTH: &[F] = &[
    F("status", Str, Always),
    F("checks", Map(&Obj(CEPH_CHECK)), Opt),
    F("summary", Arr(&Obj(CEPH_SUMMARY)), Opt),
];
const CEPH_MONITOR: &[F] = &[
    F("name", Str, Always),
    F("rank", Int, Always),
    F("addr", Str, Opt),
    F("status", Str, Opt),
];
const CEPH_MON_MAP: &[F] = &[
    F("epoch", Int, Always),
    F("numMons", Int, Always),
    F("monitors", Arr(&Obj(CEPH_MONITOR)), Opt),
];
const CEPH_MGR_MAP: &[F] = &[
    F("available", Bool, Always),
    F("numMgrs", Int, Always),
    F("activeMgr", Str, Opt),
    F("standbys", Int, Always),
];
const CEPH_OSD_MAP: &[F] = &[
    F("epoch", Int, Always),
    F("numOsds", Int, Always),
    F("numUp", Int, Always),
    F("numIn", Int, Always),
    F("numDown", Int, Opt),
    F("numOut", Int, Opt),
];
const CEPH_PG_MAP: &[F] = &[
    F("numPgs", Int, Always),
    F("bytesTotal", UInt, Always),
    F("bytesUsed", UInt, Always),
    F("bytesAvailable", UInt, Always),
    F("dataBytes", UInt, Opt),
    F("usagePercent", Float, Always),
    F("degradedRatio", Float, Opt),
    F("misplacedRatio", Float, Opt),
    F("readBytesPerSec", UInt, Opt),
    F("writeBytesPerSec", UInt, Opt),
    F("readOpsPerSec", UInt, Opt),
    F("writeOpsPerSec", UInt, Opt),
];
const CEPH_POOL: &[F] = &[
    F("id", Int, Always),
    F("name", Str, Always),
    F("bytesUsed", UInt, Always),
    F("bytesAvailable", UInt, Always),
    F("objects", UInt, Always),
    F("percentUsed", Float, Always),
];
const CEPH_SERVICE: &[F] = &[
    F("type", Str, Always),
    F("running", Int, Always),
    F("total", Int, Always),
    F("daemons", Arr(&Str), Opt),
];
const CEPH: &[F] = &[
    F("fsid", Str, Always),
    F("health", Obj(CEPH_HEALTH), Always),
    F("monMap", Obj(CEPH_MON_MAP), Always),
    F("mgrMap", Obj(CEPH_MGR_MAP), Always),
    F("osdMap", Obj(CEPH_OSD_MAP), Always),
    F("pgMap", Obj(CEPH_PG_MAP), Always),
    F("pools", Arr(&Obj(CEPH_POOL)), Opt),
    F("services", Arr(&Obj(CEPH_SERVICE)), Opt),
    F("collectedAt", Time, Always),
];
pub const HOST_REPORT: &[F] = &[
    F("agent", Obj(AGENT), Always),
    F("host", Obj(HOST), Always),
    F("metrics", Obj(METRICS), Always),
    F("disks", Arr(&Obj(DISK)), Opt),
    F("diskIO", Arr(&Obj(DISK_IO)), Opt),
    F("network", Arr(&Obj(NETWORK)), Opt),
    F("sensors", Obj(SENSORS), Always),
    F("raid", Arr(&Obj(RAID)), Opt),
    F("unraid", Obj(UNRAID), Opt),
    F("ceph", Obj(CEPH), Opt),
    F("libvirt", Any, Opt),
    F("xcpng", Any, Opt),
    F("proxmoxLxc", Obj(PROXMOX_LXC), Opt),
    F("clusterSensors", Arr(&Obj(CLUSTER_NODE)), Opt),
    F("availabilityResults", Any, Opt),
    F("tags", Arr(&Str), Opt),
    F("timestamp", Time, Always),
    F("sequenceId", Str, Opt),
];

// The docker report (spec §4).
const D_AGENT: &[F] = &[
    F("id", Str, Always),
    F("version", Str, Always),
    F("type", Str, Opt),
    F("intervalSeconds", Int, Always),
];
const D_SWARM: &[F] = &[
    F("nodeId", Str, Opt),
    F("nodeRole", Str, Opt),
    F("localState", Str, Opt),
    F("controlAvailable", Bool, Opt),
    F("clusterId", Str, Opt),
    F("clusterName", Str, Opt),
    F("scope", Str, Opt),
    F("error", Str, Opt),
];
const D_SECURITY: &[F] = &[F("authorizationPlugins", Arr(&Str), Opt)];
const D_HOST: &[F] = &[
    F("hostname", Str, Always),
    F("name", Str, Opt),
    F("machineId", Str, Opt),
    F("os", Str, Opt),
    F("runtime", Str, Opt),
    F("runtimeVersion", Str, Opt),
    F("kernelVersion", Str, Opt),
    F("architecture", Str, Opt),
    F("dockerVersion", Str, Opt),
    F("totalCpu", Int, Opt),
    F("totalMemoryBytes", Int, Opt),
    F("uptimeSeconds", Int, Opt),
    F("swarm", Obj(D_SWARM), Opt),
    F("cpuUsagePercent", Float, Opt),
    F("loadAverage", Arr(&Float), Opt),
    F("memory", Obj(MEMORY), Always),
    F("disks", Arr(&Obj(DISK)), Opt),
    F("network", Arr(&Obj(NETWORK)), Opt),
    F("security", Obj(D_SECURITY), Opt),
];
const D_PORT: &[F] = &[
    F("privatePort", Int, Always),
    F("publicPort", Int, Opt),
    F("protocol", Str, Always),
    F("ip", Str, Opt),
];
const D_NETWORK: &[F] = &[
    F("name", Str, Always),
    F("ipv4", Str, Opt),
    F("ipv6", Str, Opt),
];
const D_BLOCK_IO: &[F] = &[F("readBytes", UInt, Opt), F("writeBytes", UInt, Opt)];
const D_MOUNT: &[F] = &[
    F("type", Str, Opt),
    F("source", Str, Opt),
    F("destination", Str, Opt),
    F("mode", Str, Opt),
    F("rw", Bool, Always),
    F("propagation", Str, Opt),
    F("name", Str, Opt),
    F("driver", Str, Opt),
];
const D_PODMAN: &[F] = &[
    F("podName", Str, Opt),
    F("podId", Str, Opt),
    F("infra", Bool, Opt),
    F("composeProject", Str, Opt),
    F("composeService", Str, Opt),
    F("composeWorkdir", Str, Opt),
    F("composeConfigHash", Str, Opt),
    F("autoUpdatePolicy", Str, Opt),
    F("autoUpdateRestart", Str, Opt),
    F("userNamespace", Str, Opt),
];
const D_CONTAINER: &[F] = &[
    F("id", Str, Always),
    F("name", Str, Always),
    F("image", Str, Always),
    F("imageDigest", Str, Opt),
    F("createdAt", Time, Always),
    F("state", Str, Always),
    F("status", Str, Always),
    F("health", Str, Opt),
    F("healthcheckTargets", Arr(&Str), Opt),
    F("cpuPercent", Float, Always),
    F("memoryUsageBytes", Int, Always),
    F("memoryLimitBytes", Int, Always),
    F("memoryPercent", Float, Always),
    F("uptimeSeconds", Int, Always),
    F("restartCount", Int, Always),
    F("exitCode", Int, Always),
    F("oomKilled", Bool, Opt),
    F("startedAt", Time, Opt),
    F("finishedAt", Time, Opt),
    F("ports", Arr(&Obj(D_PORT)), Opt),
    F("labels", Map(&Str), Opt),
    F("env", Arr(&Str), Opt),
    F("networks", Arr(&Obj(D_NETWORK)), Opt),
    F("networkRxBytes", UInt, Opt),
    F("networkTxBytes", UInt, Opt),
    F("writableLayerBytes", Int, Opt),
    F("rootFilesystemBytes", Int, Opt),
    F("blockIo", Obj(D_BLOCK_IO), Opt),
    F("mounts", Arr(&Obj(D_MOUNT)), Opt),
    F("podman", Obj(D_PODMAN), Opt),
    F("updateStatus", Any, Opt),
];
pub const DOCKER_REPORT: &[F] = &[
    F("agent", Obj(D_AGENT), Always),
    F("host", Obj(D_HOST), Always),
    F("containers", Arr(&Obj(D_CONTAINER)), Always),
    F("images", Any, Opt),
    F("volumes", Any, Opt),
    F("networks", Any, Opt),
    F("services", Any, Opt),
    F("tasks", Any, Opt),
    F("nodes", Any, Opt),
    F("secrets", Any, Opt),
    F("configs", Any, Opt),
    F("storageUsage", Any, Opt),
    F("timestamp", Time, Always),
];

/// Every way `doc` departs from the docker report schema (spec §4), plus the
/// server's content rule: a non-blank `host.hostname`.
pub fn check_docker_report(doc: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    check(doc, &Obj(DOCKER_REPORT), "$", &mut errs);
    match doc.pointer("/host/hostname").and_then(Value::as_str) {
        Some(h) if !h.trim().is_empty() => {}
        _ => errs.push("$.host.hostname: blank (the server answers 400 invalid_report)".into()),
    }
    errs
}

/// Every way `doc` departs from the host report schema; empty when it conforms.
/// Also applies the server's one content rule: a non-blank `host.hostname`.
pub fn check_host_report(doc: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    check(doc, &Obj(HOST_REPORT), "$", &mut errs);
    match doc.pointer("/host/hostname").and_then(Value::as_str) {
        Some(h) if !h.trim().is_empty() => {}
        _ => errs.push("$.host.hostname: blank (the server answers 400 invalid_report)".into()),
    }
    if let Some(seq) = doc.get("sequenceId").and_then(Value::as_str) {
        let parts: Vec<&str> = seq.split(':').collect();
        let ok = parts.len() == 3
            && parts[0] == "v1"
            && parts[1].len() == 32
            && parts[1].bytes().all(|b| b.is_ascii_hexdigit())
            && parts[2].parse::<u64>().is_ok_and(|n| n > 0);
        if !ok {
            errs.push(format!("$.sequenceId: {seq:?} is not v1:<32 hex>:<n>"));
        }
    }
    errs
}

/// Every way `v` departs from the schema of the host report's top-level
/// section `name` (`ceph`, `unraid`, ...); the paths start at `$.name`.
/// An unknown section name is itself a departure.
pub fn check_section(name: &str, v: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    match HOST_REPORT.iter().find(|F(n, ..)| *n == name) {
        Some(F(_, t, _)) => check(v, t, &format!("$.{name}"), &mut errs),
        None => errs.push(format!("$.{name}: not a section of the host report")),
    }
    errs
}

fn check(v: &Value, t: &T, path: &str, errs: &mut Vec<String>) {
    let bad =
        |errs: &mut Vec<String>, want: &str| errs.push(format!("{path}: want {want}, got {v}"));
    match t {
        Any => {}
        Str => {
            if !v.is_string() {
                bad(errs, "string")
            }
        }
        Bool => {
            if !v.is_boolean() {
                bad(errs, "bool")
            }
        }
        Int => {
            if !(v.is_i64() || v.is_u64()) {
                bad(errs, "integer")
            }
        }
        UInt => {
            if !v.is_u64() {
                bad(errs, "non-negative integer")
            }
        }
        Float => {
            if !v.is_number() {
                bad(errs, "number")
            }
        }
        Time => match v.as_str() {
            Some(s) if is_rfc3339(s) => {}
            _ => bad(errs, "RFC 3339 time"),
        },
        Arr(inner) => match v.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    check(item, inner, &format!("{path}[{i}]"), errs);
                }
            }
            None => bad(errs, "array"),
        },
        Map(inner) => match v.as_object() {
            Some(m) => {
                for (k, item) in m {
                    check(item, inner, &format!("{path}.{k}"), errs);
                }
            }
            None => bad(errs, "object"),
        },
        Obj(fields) => match v.as_object() {
            Some(m) => {
                for F(name, ty, req) in fields.iter() {
                    match m.get(*name) {
                        Some(item) => check(item, ty, &format!("{path}.{name}"), errs),
                        None if *req == Always => errs.push(format!("{path}.{name}: missing")),
                        None => {}
                    }
                }
                for k in m.keys() {
                    if !fields.iter().any(|F(name, ..)| name == k) {
                        errs.push(format!("{path}.{k}: not in the schema"));
                    }
                }
            }
            None => bad(errs, "object"),
        },
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` with plausible field ranges.
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 20 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(99);
    if !(digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b[10] == b'T' || b[10] == b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19))
    {
        return false;
    }
    if !(1..=12).contains(&num(5..7))
        || !(1..=31).contains(&num(8..10))
        || num(11..13) > 23
        || num(14..16) > 59
        || num(17..19) > 60
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 9 {
            return false;
        }
        rest = &frac[n..];
    }
    rest == "Z"
        || rest == "z"
        || (rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && rest.as_bytes()[3] == b':')
}
