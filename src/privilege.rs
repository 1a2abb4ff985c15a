//! What the agent process may do: the privilege profile it runs under and
//! the sandbox around it (`agent.privilege` in the report, `/status`).
//!
//! Two profiles are documented (pulse-agent(8), PRIVILEGE PROFILES): `root`,
//! full telemetry, the default; and `non-root`, a `pulse-agent` user with
//! the groups and ambient capabilities that its drop-in grants. Within the
//! root profile the hardened unit and the compat unit differ only in the
//! sandbox, which the kernel reports for the process itself in
//! `/proc/self/status` (`NoNewPrivs`, `Seccomp`, `CapEff`): the report says
//! what is in effect, not what a unit file meant to set.
//!
//! `/proc/self/status` is read directly, not below `--root`: it describes
//! this process, not the (possibly captured) host being reported.

/// Capability names by number (linux/capability.h), up to
/// CAP_CHECKPOINT_RESTORE (40), the last one Linux 6.x defines.
const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The sandbox the kernel reports for this process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// `NoNewPrivs: 1`: set by `NoNewPrivileges=` and everything that
    /// implies it (the hardened unit); never in the compat unit.
    pub no_new_privileges: bool,
    /// `Seccomp: 2`: a system call filter is in force (`SystemCallFilter=`).
    pub seccomp: bool,
    /// The effective capabilities by name, when they are fewer than every
    /// capability this kernel has (`None`: all of them, plain root). An
    /// unnamed bit (a kernel newer than this list) shows as `CAP_<n>`.
    pub capabilities: Option<Vec<String>>,
}

impl Sandbox {
    /// This process's sandbox; all defaults where `/proc` cannot be read.
    pub fn current() -> Sandbox {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        parse_status(&status, last_cap)
    }
}

/// The sandbox described by the text of a `/proc/PID/status` file.
/// `last_cap` is `/proc/sys/kernel/cap_last_cap` (the highest capability
/// number this kernel knows); without it, the last one in [`CAPABILITIES`].
/// Missing or malformed lines leave the defaults.
pub fn parse_status(status: &str, last_cap: Option<u32>) -> Sandbox {
    let mut out = Sandbox::default();
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "NoNewPrivs" => out.no_new_privileges = value == "1",
            "Seccomp" => out.seccomp = value == "2",
            "CapEff" => {
                let Ok(mask) = u64::from_str_radix(value, 16) else {
                    continue;
                };
                let last = last_cap.unwrap_or(CAPABILITIES.len() as u32 - 1).min(63);
                let all = u64::MAX >> (63 - last);
                out.capabilities = (mask & all != all).then(|| names(mask));
            }
            _ => {}
        }
    }
    out
}

fn names(mask: u64) -> Vec<String> {
    (0..64u32)
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|bit| match CAPABILITIES.get(bit as usize) {
            Some(name) => (*name).to_string(),
            None => format!("CAP_{bit}"),
        })
        .collect()
}

/// The profile name for a process with this effective UID.
pub fn profile(running_as_root: bool) -> &'static str {
    if running_as_root { "root" } else { "non-root" }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of a real `/proc/self/status`, from a shell started by the
    /// hardened unit's properties (`systemd-run -p NoNewPrivileges=yes -p
    /// SystemCallFilter=@system-service -p CapabilityBoundingSet=...`).
    const HARDENED: &str = "Name:\tcat\nUmask:\t0077\nState:\tR (running)\n\
        CapInh:\t0000000000000000\nCapPrm:\t0000000000220000\n\
        CapEff:\t0000000000220000\nCapBnd:\t0000000000220000\n\
        CapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n\
        Seccomp_filters:\t1\nSpeculation_Store_Bypass:\tthread vulnerable\n";

    #[test]
    fn a_hardened_unit_shows_its_filter_and_its_two_capabilities() {
        let s = parse_status(HARDENED, Some(40));
        assert!(s.no_new_privileges);
        assert!(s.seccomp);
        assert_eq!(
            s.capabilities,
            Some(vec!["CAP_SYS_RAWIO".into(), "CAP_SYS_ADMIN".into()])
        );
    }

    #[test]
    fn plain_root_has_every_capability_and_lists_none() {
        let s = parse_status(
            "CapEff:\t000001ffffffffff\nNoNewPrivs:\t0\nSeccomp:\t0\n",
            Some(40),
        );
        assert_eq!(s, Sandbox::default());
        // An older kernel with fewer capabilities: still all of them.
        let s = parse_status("CapEff:\t0000003fffffffff\n", Some(37));
        assert_eq!(s.capabilities, None);
    }

    #[test]
    fn a_user_without_capabilities_lists_an_empty_set() {
        let s = parse_status("CapEff:\t0000000000000000\nSeccomp:\t1\n", Some(40));
        assert_eq!(s.capabilities, Some(vec![]));
        // Strict mode 1 is not the filter mode systemd uses.
        assert!(!s.seccomp);
    }

    #[test]
    fn a_capability_newer_than_the_list_is_named_by_number() {
        let s = parse_status("CapEff:\t0000020000000001\n", Some(41));
        assert_eq!(
            s.capabilities,
            Some(vec!["CAP_CHOWN".into(), "CAP_41".into()])
        );
    }

    #[test]
    fn garbage_leaves_the_defaults() {
        for text in [
            "",
            "CapEff:\tzz\n",
            "CapEff",
            "NoNewPrivs: yes\n",
            "\u{0}:\u{0}",
        ] {
            assert_eq!(parse_status(text, None), Sandbox::default(), "{text:?}");
        }
        // cap_last_cap past 63 cannot overflow the shift.
        assert_eq!(
            parse_status("CapEff:\tffffffffffffffff\n", Some(99)).capabilities,
            None
        );
    }
}
