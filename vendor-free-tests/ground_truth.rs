//! Ground truth on the machine running the tests, on purpose: the agent's
//! numbers for this host must equal what the kernel and standard tools say.
//! These are the only tests that read the real /proc and /sys.

mod common;

use std::process::Command;

use common::wire::check_host_report;
use pulse_agent::collect::{Host, Options, identity};
use pulse_agent::root::Root;
use serde_json::Value;

/// The README's first command: `pulse-agent --once` on this host.
fn live_report() -> Value {
    let o = Command::new(env!("CARGO_BIN_EXE_pulse-agent"))
        .args(["--once", "--state-dir"])
        .arg(common::no_state_dir())
        .env_clear()
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn readme_first_command_prints_this_hosts_report() {
    let doc = live_report();
    let errs = check_host_report(&doc);
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(doc["host"]["hostname"], hostname.trim());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(doc["host"]["kernelVersion"], kernel.trim());
}

fn meminfo_kb(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/meminfo"))
}

#[test]
fn memory_totals_equal_proc_meminfo() {
    let mut host = Host::new(Root::host(), Options::default());
    let m = host.collect().memory.expect("memory");
    assert_eq!(m.total, meminfo_kb("MemTotal") * 1024);
    assert_eq!(m.swap_total, meminfo_kb("SwapTotal") * 1024);
    // used + available = total, to within what moved between the two reads.
    let avail = meminfo_kb("MemAvailable") * 1024;
    let drift = (m.total - m.used).abs_diff(avail);
    assert!(
        drift < 256 * 1024 * 1024,
        "used {} vs available {avail}",
        m.used
    );
}

/// `stat -f` (coreutils) is the independent statvfs.
#[test]
fn every_reported_filesystem_total_equals_statvfs() {
    let mut host = Host::new(Root::host(), Options::default());
    let fs = host.collect().filesystems;
    assert!(!fs.is_empty(), "this host has at least its root filesystem");
    for f in fs.iter().filter(|f| f.fstype != "zfs") {
        let out = Command::new("stat")
            .args(["-f", "-c", "%S %b"])
            .arg(&f.mountpoint)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let n: Vec<u64> = text
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(f.total, n[0] * n[1], "{}: total", f.mountpoint);
    }
}

#[test]
fn cpu_count_equals_online_cpus() {
    let id = identity::collect(&Root::host(), None);
    let out = Command::new("getconf")
        .arg("_NPROCESSORS_ONLN")
        .output()
        .unwrap();
    let online: u64 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(id.cpu_count, online);
    assert_eq!(Some(id.cpu_count), pulse_agent::sys::online_cpus());
}

#[test]
fn network_addresses_equal_ip_addr() {
    let mut host = Host::new(Root::host(), Options::default());
    let ours = host.collect().network;
    let out = Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .expect("ip(8) from iproute2 (.ci/run installs it)");
    let theirs = pulse_agent::root::parse_ip_addr(&String::from_utf8_lossy(&out.stdout));
    let mut want = pulse_agent::collect::network::by_interface(theirs);
    // Loopbacks are not reported.
    want.retain(|name, _| {
        let flags =
            std::fs::read_to_string(format!("/sys/class/net/{name}/flags")).unwrap_or_default();
        u64::from_str_radix(flags.trim().trim_start_matches("0x"), 16)
            .map_or(true, |f| f & 0x8 == 0)
    });
    let got: std::collections::BTreeMap<String, Vec<String>> =
        ours.into_iter().map(|i| (i.name, i.addresses)).collect();
    assert!(
        !want.is_empty(),
        "this host has at least one non-loopback address"
    );
    assert_eq!(got, want, "interfaces and their addresses");
}

/// `agent.privilege` says what the kernel enforces on the process, not
/// what a unit meant to set: run under `setpriv` with no new privileges and
/// a bounding set of the two SMART capabilities, the report shows exactly
/// that (as root; as a user, no capability at all).
#[test]
fn privilege_reports_the_sandbox_the_kernel_enforces() {
    let root = tests_run_as_root();
    let mut c = Command::new("setpriv");
    c.arg("--no-new-privs");
    if root {
        c.arg("--bounding-set=-all,+sys_rawio,+sys_admin");
    }
    let o = c
        .arg(env!("CARGO_BIN_EXE_pulse-agent"))
        .args(["--once", "--state-dir"])
        .arg(common::no_state_dir())
        .env_clear()
        .output()
        .expect("setpriv (util-linux) runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    let p = &doc["agent"]["privilege"];
    assert_eq!(p["noNewPrivileges"], true, "{p}");
    assert_eq!(p["profile"], if root { "root" } else { "non-root" }, "{p}");
    let want: &[&str] = if root {
        &["CAP_SYS_RAWIO", "CAP_SYS_ADMIN"]
    } else {
        &[]
    };
    assert_eq!(p["capabilities"], serde_json::json!(want), "{p}");

    // Without setpriv: the agent inherits this test's capabilities, listed
    // unless they are every one the kernel has (plain root).
    let doc = live_report();
    let p = &doc["agent"]["privilege"];
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let all = (1u64 << (last + 1)) - 1;
    if eff == all {
        assert_eq!(p["capabilities"], Value::Null, "{p}");
    } else {
        let listed = p["capabilities"].as_array().map(Vec::len);
        assert_eq!(listed, Some(eff.count_ones() as usize), "{p}");
    }
    let nnp = status.lines().any(|l| l == "NoNewPrivs:\t1");
    assert_eq!(p["noNewPrivileges"].as_bool().unwrap_or(false), nnp, "{p}");
}

/// Whether the tests run as root, from `id -u` (no unsafe in tests).
fn tests_run_as_root() -> bool {
    let o = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim() == "0"
}
