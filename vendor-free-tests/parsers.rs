//! Every pure parser of /proc, /sys and /etc formats, fed hostile input:
//! empty, every truncation of a real sample, 10 MB of repetition, binary
//! garbage, NUL bytes and absurd numbers. Each must return (an error or an
//! empty result), never panic, and never hang: every call runs on a thread
//! with a generous limit.

use std::sync::mpsc;
use std::time::Duration;

use pulse_agent::collect::{cpu, diskio, identity, loadavg, memory, mounts, network, uptime};
use pulse_agent::root::parse_ip_addr;

type Parser = fn(&str);

/// (name, parser, a realistic sample)
const PARSERS: &[(&str, Parser, &str)] = &[
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
        "unescape",
        |s| drop(mounts::unescape(s)),
        "/a\\040b\\011c\\134",
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
