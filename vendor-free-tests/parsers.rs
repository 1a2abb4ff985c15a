//! Every pure parser of /proc, /sys and /etc formats, fed hostile input:
//! empty, every truncation of a real sample, 10 MB of repetition, binary
//! garbage, NUL bytes and absurd numbers. Each must return (an error or an
//! empty result), never panic, and never hang: every call runs on a thread
//! with a generous limit.

use std::sync::mpsc;
use std::time::Duration;

use pulse_agent::collect::{
    ceph, cpu, diskio, gpu, identity, loadavg, memory, mounts, network, packages, pct, raid,
    unraid, uptime, zfs,
};
use pulse_agent::root::parse_ip_addr;

type Parser = fn(&str);

/// (name, parser, a realistic sample)
const PARSERS: &[(&str, Parser, &str)] = &[
    (
        "disks.ini",
        |s| drop(unraid::parse_disks_ini(s)),
        "[\"disk1\"]\nidx=\"1\"\nname=\"disk1\"\ndevice=\"sdb\"\nid=\"WDC_WD80EFZZ_WD-1\"\nsectors=\"15628053168\"\nsector_size=\"512\"\nstatus=\"DISK_OK\"\ntemp=\"*\"\nspundown=\"1\"\n",
    ),
    (
        "mdcmd status",
        |s| drop(unraid::parse_mdcmd(s)),
        "mdState=STARTED\nmdResyncPos=5\nmdResyncSize=10\nmdResyncAction=check\nmdNumMissing=3\ndiskName.1=disk1\nrdevName.1=sdb\nrdevStatus.1=DISK_OK\ndiskSize.1=976762584\n",
    ),
    (
        "uptime",
        |s| drop(uptime::parse(s)),
        "864213.58 1712345.01\n",
    ),
    (
        "loadavg",
        |s| drop(loadavg::parse(s)),
        "0.42 0.37 0.31 1/207 425\n",
    ),
    (
        "stat",
        |s| {
            let _ = cpu::parse(s);
            let _ = cpu::count_cpus(s);
        },
        "cpu  57 0 464 40160 119 0 24 4 0 0\ncpu0 0 0 67 2473 3 0 21 0 0 0\nintr 1 2 3\nctxt 99\nbtime 1763800000\n",
    ),
    (
        "meminfo",
        |s| {
            if let Ok(m) = memory::parse(s) {
                let _ = memory::compute(&m);
            }
        },
        "MemTotal:       16303748 kB\nMemFree:         2097152 kB\nMemAvailable:   10485760 kB\nBuffers: 1 kB\nCached: 2 kB\nSwapTotal: 4 kB\nSwapFree: 3 kB\n",
    ),
    (
        "mountinfo",
        |s| drop(mounts::parse_mountinfo(s)),
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n36 35 98:0 /mnt1 /mnt\\0402 rw master:1 - ext3 /dev/root rw\n",
    ),
    (
        "mounts",
        |s| drop(mounts::parse_mounts(s)),
        "/dev/sda1 / ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\n",
    ),
    (
        "diskstats",
        |s| drop(diskio::parse(s)),
        " 254 0 vda 2854 914 1286066 1837 36 0 496 3 0 912 1842 7 0 288 0 7 0\n   8 0 sda 1 2 3 4 5 6 7 8 9 10 11\n",
    ),
    (
        "net/dev",
        |s| drop(network::parse_net_dev(s)),
        "Inter-| Receive | Transmit\n face |bytes packets|bytes\n  eth0: 625 10 0 0 0 0 0 0 1473 18 0 0 0 0 0 0\n",
    ),
    (
        "cpuinfo",
        |s| {
            let _ = identity::cpu_model(s);
            let _ = identity::count_processors(s);
        },
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n",
    ),
    (
        "os-release",
        |s| drop(identity::parse_assignments(s)),
        "ID=debian\nVERSION_ID=\"12\"\n[section]\n",
    ),
    (
        "dpkg status",
        |s| drop(identity::dpkg_version(s, "pve-manager")),
        "Package: pve-manager\nVersion: 8.2.4\n\n",
    ),
    (
        "ip -o addr",
        |s| drop(parse_ip_addr(s)),
        "2: eth0    inet 10.0.0.5/24 brd 10.0.0.255 scope global eth0\n",
    ),
    (
        "pct list",
        |s| drop(pct::parse_list(s)),
        "VMID       Status     Lock         Name\n100        running                 web\n101        stopped    backup       db\n",
    ),
    (
        "pct df",
        |s| drop(pct::parse_df(s)),
        "MP     Volume   Size  Used Avail Use% Path\nrootfs local:1 8.0G 2.0G 6.0G 25.0 /\nmp0 tank:2 1.0T 512G 512G 50.0 /srv/my data\n",
    ),
    (
        "apt-get -s upgrade",
        |s| drop(packages::parse(s)),
        "Calculating upgrade...\n1 upgraded, 1 newly installed, 0 to remove and 0 not upgraded.\nInst a [1:1.0-1] (1:1.0-2 Debian:12.1/stable, Debian-Security:12/stable-security [amd64]) [b:amd64 on a:amd64] [b:amd64 ]\nInst new (2.0 Debian:12.1/stable [all])\nConf a (1:1.0-2 Debian:12.1/stable [amd64])\n",
    ),
    (
        "unescape",
        |s| drop(mounts::unescape(s)),
        "/a\\040b\\011c\\134",
    ),
    (
        "ceph status",
        |s| {
            if let Ok(mut c) = ceph::parse_status(s) {
                if let Ok(df) = ceph::parse_df(s) {
                    c.apply_df(df);
                }
            }
        },
        r#"{"fsid":"f","health":{"status":"HEALTH_WARN","checks":{"OSD_DOWN":{"severity":"HEALTH_WARN","summary":{"message":"1 osds down"},"detail":[{"message":"osd.1 is down"}]}}},"quorum":[0,1],"monmap":{"epoch":3,"num_mons":2},"mgrmap":{"available":true,"num_standbys":1},"osdmap":{"epoch":9,"num_osds":3,"num_up_osds":2,"num_in_osds":3},"pgmap":{"num_pgs":64,"bytes_total":1000,"bytes_used":250,"bytes_avail":750,"degraded_ratio":0.5}}"#,
    ),
    (
        "ceph df",
        |s| drop(ceph::parse_df(s)),
        r#"{"stats":{"percent_used":0.25},"pools":[{"name":"rbd","id":1,"stats":{"bytes_used":10,"max_avail":90,"objects":1,"percent_used":0.1}}]}"#,
    ),
];

/// Runs `f(input)` on a thread; fails the test if it panics or takes longer
/// than a minute (a hang, not a speed target).
fn survives(name: &str, f: Parser, input: String, what: &str) {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        f(&input);
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => handle.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{name}: hung on {what}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{name}: panicked on {what}"),
    }
}

fn garbage(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn empty_and_whitespace() {
    for (name, f, _) in PARSERS {
        for input in ["", "\n", " \t \n\n", ":", " - ", "\\"] {
            survives(name, *f, input.to_string(), &format!("{input:?}"));
        }
    }
}

#[test]
fn every_truncation_of_a_real_sample() {
    for (name, f, sample) in PARSERS {
        for cut in 0..=sample.len() {
            if sample.is_char_boundary(cut) {
                f(&sample[..cut]); // inline: a panic here names the cut in the backtrace
            }
        }
        survives(name, *f, sample.to_string(), "the sample");
    }
}

#[test]
fn ten_megabytes() {
    for (name, f, sample) in PARSERS {
        let mut big = String::with_capacity(10 * 1024 * 1024 + sample.len());
        while big.len() < 10 * 1024 * 1024 {
            big.push_str(sample);
        }
        survives(name, *f, big, "10 MB of repetition");
        let one_line = "9".repeat(10 * 1024 * 1024);
        survives(name, *f, one_line, "one 10 MB line of digits");
    }
}

#[test]
fn binary_garbage_and_nul_bytes() {
    for (i, (name, f, sample)) in PARSERS.iter().enumerate() {
        for seed in 0..20u32 {
            let bytes = garbage(4096, seed + 1000 * i as u32);
            survives(
                name,
                *f,
                String::from_utf8_lossy(&bytes).into_owned(),
                &format!("garbage seed {seed}"),
            );
        }
        survives(name, *f, "\0".repeat(4096), "NUL bytes");
        survives(name, *f, sample.replace(' ', "\0"), "NUL instead of spaces");
        survives(name, *f, sample.replace('\n', "\r\n"), "CRLF lines");
    }
}

#[test]
fn absurd_numbers() {
    let huge = "184467440737095516159999";
    for (name, f, sample) in PARSERS {
        let mangled: String = sample
            .split_inclusive(|c: char| !c.is_ascii_digit())
            .map(|part| {
                if part.starts_with(|c: char| c.is_ascii_digit()) {
                    format!(
                        "{huge}{}",
                        part.trim_start_matches(|c: char| c.is_ascii_digit())
                    )
                } else {
                    part.to_string()
                }
            })
            .collect();
        survives(name, *f, mangled, "numbers past u64");
        survives(
            name,
            *f,
            sample.replace(|c: char| c.is_ascii_digit(), "-"),
            "minus signs for digits",
        );
    }
}

/// Spot checks that hostile input gives a clear error, not a silent zero.
#[test]
fn hostile_input_gives_errors_not_zeros() {
    assert!(uptime::parse("\0\0\0").is_err());
    assert!(loadavg::parse("1 2").is_err());
    assert!(cpu::parse("cpu x y z w").is_err());
    assert!(memory::parse("MemTotal: 18446744073709551616 kB").is_err());
    let e = memory::parse("").unwrap_err().to_string();
    assert!(e.contains("/proc/meminfo"), "errors name their file: {e}");
    assert!(diskio::parse("\u{fffd}\u{fffd}").is_err());
}

/// Runs `f` on a thread and returns its result; fails the test if it panics
/// or takes longer than `limit` (a hang check for inputs whose parse was
/// quadratic, not a speed target: the fixed parsers take well under a second
/// in a release build).
fn within<T: Send + 'static>(
    name: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{name}: not done after {limit:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{name}: panicked"),
    }
}

/// About `mb` MiB of `unit(i)` for i = 0, 1, ...
fn megabytes(mb: usize, mut unit: impl FnMut(usize) -> String) -> String {
    let mut s = String::with_capacity(mb << 20);
    let mut i = 0;
    while s.len() < mb << 20 {
        s.push_str(&unit(i));
        i += 1;
    }
    s
}

const HANG: Duration = Duration::from_secs(20);

/// Each distinct `CPU part` was looked up in a Vec of the ones seen: 1 MB of
/// distinct parts took 1.6 s in release, 4 MB 29 s. Now a set, and a model
/// names at most 8 core types.
#[test]
fn cpuinfo_with_many_distinct_cpu_parts_is_not_quadratic() {
    let mut text = String::from(
        "processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd05\n\
         processor\t: 1\nCPU implementer\t: 0x41\nCPU part\t: 0xd0b\n",
    );
    text.push_str(&megabytes(6, |i| {
        format!(
            "processor\t: {}\nCPU implementer\t: 0x41\nCPU part\t: 0x{:x}\n",
            i + 2,
            0x10000 + i
        )
    }));
    let (model, count) = within("cpu_model", HANG, move || {
        (
            identity::cpu_model(&text),
            identity::count_processors(&text),
        )
    });
    assert_eq!(
        model,
        "ARM Cortex-A55 + Cortex-A76 + part 0x10000 + part 0x10001 + part 0x10002 \
         + part 0x10003 + part 0x10004 + part 0x10005"
    );
    assert!(count > 100_000, "{count}");
}

/// The rebuild percentage was found by searching the rest of the line for
/// `%` after every `=`: a progress bar of 1 MB of `=` did not finish in 30 s.
#[test]
fn mdstat_progress_bar_of_megabytes_is_not_quadratic() {
    let bar = "=".repeat(4 << 20);
    let spaced = "= ".repeat(1 << 20);
    let text = format!(
        "Personalities : [raid1]\n\
         md0 : active raid1 sdb1[1] sda1[0]\n      1048512 blocks [2/1] [U_]\n      \
         [{bar}>]  recovery = 12.6% (1/2) finish=1.0min speed=1K/sec\n\n\
         md1 : active raid1 sdd1[1] sdc1[0]\n      1 blocks [2/2] [UU]\n      {spaced}\n\n\
         unused devices: <none>\n"
    );
    let arrays = within("parse_mdstat", HANG, move || raid::parse_mdstat(&text));
    assert_eq!(arrays.len(), 2);
    let a = &arrays[0];
    assert_eq!(
        (
            a.device.as_str(),
            a.operation.as_str(),
            a.rebuild_speed.as_str()
        ),
        ("/dev/md0", "recovery", "1K/sec")
    );
    assert!(
        (a.rebuild_percent - 12.6).abs() < 1e-9,
        "{}",
        a.rebuild_percent
    );
    assert_eq!((arrays[1].rebuild_percent, arrays[1].total), (0.0, 2));
}

/// Every member key got its own copy of the pool name: a 3 MB `pool:` line
/// followed by 3 MB of members cost megabytes per member and did not finish.
/// A name that is not a pool name (over 255 bytes) now names no pool.
#[test]
fn zpool_status_with_a_huge_pool_name_is_not_quadratic() {
    let mut text = format!(
        "  pool: {}\n state: ONLINE\nconfig:\n\n",
        "t".repeat(3 << 20)
    );
    text.push_str(&megabytes(3, |i| format!("\tsd{i} ONLINE 0 0 0\n")));
    text.push_str("\n  pool: tank\nconfig:\n\tNAME STATE\n\ttank ONLINE\n\t  sdzz ONLINE\n");
    let members = within("parse_zpool_status", HANG, move || {
        zfs::parse_zpool_status(&text)
    });
    assert_eq!(members.get("sdzz").map(String::as_str), Some("tank"));
    assert!(!members.contains_key("sd1"), "members of no valid pool");
    assert_eq!(members.len(), 1, "only sdzz's key");
}

/// Each row's ID was compared with every GPU before it: 1 MB of rows took
/// 3 s in release, 2 MB 13 s.
#[test]
fn nvidia_smi_with_many_gpus_is_not_quadratic() {
    let text = megabytes(6, |i| {
        format!("{i}, NVIDIA H100 80GB HBM3, 34, 0, 0, 81559\n")
    });
    let rows = text.lines().count();
    let gpus = within("gpu::parse", HANG, move || gpu::parse(&text));
    assert_eq!(gpus.len(), rows);
    assert_eq!(gpus[rows - 1].id, (rows - 1).to_string());
    let ids: std::collections::HashSet<&str> = gpus.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids.len(), rows);
}

/// `pct list` and `pct df` of megabytes: running rows with distinct VMIDs
/// (each checked against the ones seen), df rows that all repeat one path
/// in different cases and rows with distinct paths past the 257 kept: sets,
/// not scans of what came before.
#[test]
fn pct_output_of_megabytes_is_linear() {
    let mut list = String::from("VMID       Status     Lock         Name\n");
    list.push_str(&megabytes(6, |i| {
        format!("{:<10} running                 ct-{i}\n", 100 + i)
    }));
    let running = within("pct::parse_list", HANG, move || pct::parse_list(&list));
    assert_eq!(running.unwrap().len(), pct::MAX_CONTAINERS);
    let same = megabytes(6, |i| {
        let p = if i % 2 == 0 { "/Srv/Data" } else { "/srv/data" };
        format!("mp{} tank:{i} 1G 1G 0 100 {p}\n", i % 256)
    });
    let disks = within("pct::parse_df", HANG, move || pct::parse_df(&same));
    assert_eq!(disks.len(), 1);
    let distinct = megabytes(6, |i| format!("mp0 tank:{i} 1G 1G 0 100 /m/{i}/\n"));
    let disks = within("pct::parse_df", HANG, move || pct::parse_df(&distinct));
    assert!(disks.is_empty(), "a trailing slash is not clean");
}

/// Unraid: 6 MB of escapes in one quoted `disks.ini` value, every slot an
/// `mdcmd status` may have with megabytes of values, and megabytes of
/// sections folding into a few slots, each in linear time.
#[test]
fn unraid_escapes_and_slots_of_megabytes_are_not_quadratic() {
    let escapes = format!("[\"d\"]\nid=\"{}\"\n", "\\n\\x41\\101".repeat(1 << 19));
    let d = within("disks.ini escapes", HANG, move || {
        unraid::parse_disks_ini(&escapes)
    });
    assert_eq!(d.map(|d| d.len()), Ok(1));
    let slots = megabytes(6, |i| {
        format!("diskName.{}=disk{i}\n", i % unraid::MAX_MEMBERS)
    });
    let u = within("mdcmd slots", HANG, move || unraid::parse_mdcmd(&slots));
    assert_eq!(u.map(|u| u.disks.len()), Ok(unraid::MAX_MEMBERS));
    let sections = megabytes(6, |i| {
        if i < unraid::MAX_MEMBERS {
            format!("[\"d{i}\"]\nidx=\"{}\"\n", i % 8)
        } else {
            "temp=\"1\"\n".into()
        }
    });
    let d = within("disks.ini sections", HANG, move || {
        unraid::merge(None, unraid::parse_disks_ini(&sections).unwrap())
    });
    assert_eq!(d.disks.len(), 8);
}
