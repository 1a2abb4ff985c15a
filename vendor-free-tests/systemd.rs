//! pulse-agent under a real systemd (issue 14, "Tests (in CI)").
//!
//! PID 1 of the machine running the tests is not systemd, so this target
//! boots a Debian 12 guest under QEMU: a root file system made with
//! mmdebstrap and `mke2fs -d` (`guest/build-image.sh`, cached under
//! `target/guest/image-<hash of that script>/`), its own kernel and initrd,
//! the root on a virtio disk behind a throwaway snapshot, and
//!
//! * disks for the collectors: two SATA disks on an emulated AHCI
//!   controller (one 7200 rpm, one solid state), an NVMe disk, and two more
//!   SATA disks the guest makes into an md RAID1;
//! * a 9p share (`/host` in the guest) with the binaries under test, the
//!   units, the guest scripts and an `out/` directory for results;
//! * guest → host networking only (user networking with `restrict=on`):
//!   `pulse.test:443` is the Pulse stand-in and `pulse.test:8443` the release
//!   channel, both served by this process on host loopback and reached
//!   through `guestfwd` and `guest/relay.rs` (one relay per connection);
//!   the certificates carry the name `pulse.test`.
//!
//! The image's only job is a oneshot unit that runs `/host/start` and
//! powers off. The guest script (`guest/scenario.sh`) records each step in
//! `out/steps`; the assertions on what reached the server are made here, on
//! the stand-in's recorded reports. The console log is printed when
//! something fails. The results (steps, exposure values, the collector ×
//! profile table) are printed and written to `target/guest/results.md`.
//!
//! KVM is used when `/dev/kvm` opens and the guest's kernel shows its first
//! line on the console within 15 s, TCG otherwise; `PULSE_GUEST_ACCEL=tcg` (or
//! `kvm`) forces one.
//!
//! Needs root, mmdebstrap, qemu-system-x86_64 and mke2fs; without them it
//! fails (never skips) and says that `sh .ci/run` installs them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::channel::Channel;
use common::release_tool;
use common::standin::{Pki, Received, StandIn};
use serde_json::Value;

/// What the guest reaches the host as (guest/build-image.sh puts it in
/// /etc/hosts), and the address QEMU forwards.
const HOST_NAME: &str = "pulse.test";
const HOST_ADDR: &str = "10.0.2.100";

/// How long a KVM guest may take to show its kernel's first line before
/// the test falls back to TCG.
const KVM_PROBE: Duration = Duration::from_secs(15);

/// The whole guest run, boot to power-off, under TCG on 2 cores.
const GUEST_DEADLINE: Duration = Duration::from_secs(10 * 60);

/// The scenario's phases; each uses its own token (`pulse-guest-PHASE`),
/// so the reports the stand-in received tell which phase sent them.
/// The upgrade and the uninstall use `hardened`'s token: the stand-in,
/// like Pulse, lets only the token that first reported a host remove it.
const PHASES: &[&str] = &[
    "hardened",
    "compat",
    "nonroot",
    "nonroot-sysadmin",
    "timer",
    "deb",
];

/// The profiles of the collector table: (column, phase).
const PROFILES: &[(&str, &str)] = &[
    ("root, hardened", "hardened"),
    ("root, compat", "compat"),
    ("non-root", "nonroot"),
    ("non-root + CAP_SYS_ADMIN", "nonroot-sysadmin"),
    ("root, timer mode", "timer"),
];

/// The units whose exposure is measured: (label, file the guest wrote).
const EXPOSURES: &[(&str, &str)] = &[
    ("pulse-agent.service (hardened)", "hardened"),
    ("pulse-agent.service (compat)", "compat"),
    ("pulse-agent-once.service (timer mode)", "timer"),
];

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn guest_src() -> PathBuf {
    manifest().join("vendor-free-tests/guest")
}

/// `target/guest`: the cached image, the relay, the runs and results.md.
fn guest_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("invariant: CARGO_TARGET_TMPDIR is target/tmp")
        .join("guest");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn token(phase: &str) -> String {
    format!("pulse-guest-{phase}")
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A program on PATH or in the sbin directories (mke2fs lives there and a
/// test's PATH may not have them).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Fails, naming what is missing and what installs it.
fn require_tools() {
    let mut missing = Vec::new();
    let uid = Command::new("id").arg("-u").output().map(|o| o.stdout);
    if !uid.is_ok_and(|u| u.trim_ascii() == b"0") {
        missing.push("root (mmdebstrap and the guest's disks need it)".to_string());
    }
    for (prog, package) in [
        ("mmdebstrap", "mmdebstrap"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("mke2fs", "e2fsprogs"),
    ] {
        if find_program(prog).is_none() {
            missing.push(format!("{prog} (package {package})"));
        }
    }
    assert!(
        missing.is_empty(),
        "the systemd guest test needs {}: `sh .ci/run` installs them (as root)",
        missing.join(", ")
    );
}

/// The guest image: built once per version of build-image.sh.
struct Image {
    dir: PathBuf,
    /// How long building it took in this run (None: it was cached).
    built_in: Option<Duration>,
}

fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let script = guest_src().join("build-image.sh");
        let key = sha256_hex(&std::fs::read(&script).unwrap());
        let dir = guest_dir().join(format!("image-{}", &key[..16]));
        if dir.join("root.ext4").is_file() {
            return Image {
                dir,
                built_in: None,
            };
        }
        // An image of an older script is 1.5 GB nobody will use again.
        for e in std::fs::read_dir(guest_dir()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("image-") && e.path() != dir {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let log = guest_dir().join("image-build.log");
        let t = Instant::now();
        let status = Command::new("sh")
            .arg(&script)
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .status()
            .expect("sh runs");
        let took = t.elapsed();
        assert!(
            status.success(),
            "building the guest image failed ({status}); the end of {}:\n{}",
            log.display(),
            tail(&std::fs::read_to_string(&log).unwrap_or_default(), 40)
        );
        eprintln!("guest image built in {:.0} s", took.as_secs_f64());
        Image {
            dir,
            built_in: Some(took),
        }
    })
}

/// `guest/relay.rs`, compiled once per test run.
fn relay() -> &'static Path {
    static RELAY: OnceLock<PathBuf> = OnceLock::new();
    RELAY.get_or_init(|| {
        let out = guest_dir().join("relay");
        let status = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .args(["--edition", "2021", "-O", "-o"])
            .arg(&out)
            .arg(guest_src().join("relay.rs"))
            .status()
            .expect("rustc runs");
        assert!(status.success(), "compiling guest/relay.rs");
        out
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One guest run's directory: `share/` (the guest's /host), its disks and
/// logs.
struct Run {
    dir: PathBuf,
}

impl Run {
    fn new(name: &str) -> Run {
        let dir = guest_dir().join(format!("run-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("share/out")).unwrap();
        std::fs::create_dir_all(dir.join("disks")).unwrap();
        Run { dir }
    }

    fn share(&self) -> PathBuf {
        self.dir.join("share")
    }

    fn out(&self) -> PathBuf {
        self.dir.join("share/out")
    }

    fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// Copies `from` into the share at `rel`, with its mode.
    fn put(&self, rel: &str, from: &Path) {
        let to = self.share().join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }

    fn write(&self, rel: &str, text: &str) {
        let to = self.share().join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, text).unwrap();
    }

    /// Everything the guest wrote about itself, for a failure message.
    fn diagnostics(&self) -> String {
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "--- out/steps:\n{}\n--- out/scenario.log (end):\n{}\n--- console ({}, end):\n{}",
            read(self.out().join("steps")),
            tail(&read(self.out().join("scenario.log")), 60),
            self.console().display(),
            tail(&read(self.console()), 80),
        )
    }
}

/// The disks the guest sees: (QEMU drive id, size in MiB).
const DISKS: &[(&str, u64)] = &[
    ("sata0", 64),
    ("sata1", 64),
    ("md0a", 64),
    ("md0b", 64),
    ("nvme0", 64),
];

/// The serial numbers the guest's SMART rows must show, by kernel name.
const SMART_DISKS: &[(&str, &str)] = &[
    ("sda", "PULSE-SATA0"),
    ("sdb", "PULSE-SATA1"),
    ("sdc", "PULSE-MD0A"),
    ("sdd", "PULSE-MD0B"),
    ("nvme0n1", "PULSE-NVME0"),
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Accel {
    Kvm,
    Tcg,
}

/// What one boot took.
struct Boot {
    accel: Accel,
    /// Why KVM was not used, when /dev/kvm opened but the guest did not boot.
    kvm_note: Option<String>,
    wall: Duration,
}

fn qemu_args(run: &Run, accel: Accel, forwards: &[(u16, u16)]) -> Vec<String> {
    let img = &image().dir;
    let mut a: Vec<String> = Vec::new();
    let mut push = |s: &[&str]| a.extend(s.iter().map(|x| x.to_string()));
    let machine = match accel {
        Accel::Kvm => "q35,accel=kvm",
        Accel::Tcg => "q35,accel=tcg",
    };
    push(&[
        "-machine", machine, "-cpu", "max", "-smp", "2", "-m", "1024",
    ]);
    push(&["-display", "none", "-monitor", "none", "-no-reboot"]);
    let console = format!("file:{}", run.console().display());
    push(&["-serial", &console]);
    let kernel = img.join("vmlinuz").display().to_string();
    let initrd = img.join("initrd.img").display().to_string();
    push(&["-kernel", &kernel, "-initrd", &initrd]);
    push(&["-append", "root=/dev/vda rw console=ttyS0 panic=-1"]);
    // snapshot=on: the guest's writes go to a temporary file QEMU deletes,
    // so the cached image stays as built.
    let root = format!(
        "file={},format=raw,if=virtio,snapshot=on",
        img.join("root.ext4").display()
    );
    push(&["-drive", &root]);
    push(&["-device", "ahci,id=ahci"]);
    for (i, (id, _)) in DISKS.iter().enumerate() {
        let file = run.dir.join("disks").join(format!("{id}.img"));
        let drive = format!("file={},format=raw,if=none,id={id}", file.display());
        push(&["-drive", &drive]);
        let serial = format!("PULSE-{}", id.to_ascii_uppercase());
        let device = if id.starts_with("nvme") {
            format!("nvme,drive={id},serial={serial}")
        } else {
            // One spinning disk, the others solid state: smartctl reports both.
            let rpm = if *id == "sata0" { 7200 } else { 1 };
            format!("ide-hd,bus=ahci.{i},drive={id},rotation_rate={rpm},serial={serial}")
        };
        push(&["-device", &device]);
    }
    let share = format!(
        "local,path={},mount_tag=host,security_model=none,id=host",
        run.share().display()
    );
    push(&["-virtfs", &share]);
    // Guest → host only: restrict=on cuts the guest off from everything but
    // these forwards, each connection relayed to a loopback port.
    let mut net = "user,id=n0,restrict=on".to_string();
    for (guest_port, host_port) in forwards {
        net.push_str(&format!(
            ",guestfwd=tcp:{HOST_ADDR}:{guest_port}-cmd:{} {host_port}",
            relay().display()
        ));
    }
    push(&["-netdev", &net, "-device", "virtio-net-pci,netdev=n0"]);
    a
}

/// Boots the guest, waits for it to power off (killing it past the
/// deadline) and says how it went.
fn boot(run: &Run, forwards: &[(u16, u16)], on_ask: &dyn Fn(&str)) -> Boot {
    for (id, mib) in DISKS {
        let f = std::fs::File::create(run.dir.join("disks").join(format!("{id}.img"))).unwrap();
        f.set_len(mib << 20).unwrap();
    }
    let forced = std::env::var("PULSE_GUEST_ACCEL").ok();
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let mut accel = match forced.as_deref() {
        Some("tcg") => Accel::Tcg,
        Some("kvm") => Accel::Kvm,
        Some(other) => panic!("PULSE_GUEST_ACCEL={other}: use kvm or tcg"),
        None if kvm_opens => Accel::Kvm,
        None => Accel::Tcg,
    };
    let mut kvm_note = None;
    loop {
        let t = Instant::now();
        let probe = forced.is_none() && accel == Accel::Kvm;
        match run_qemu(run, accel, forwards, probe, on_ask) {
            Ok(()) => {
                return Boot {
                    accel,
                    kvm_note,
                    wall: t.elapsed(),
                };
            }
            Err(why) if accel == Accel::Kvm && forced.is_none() => {
                eprintln!("guest: {why}; trying again with TCG");
                kvm_note = Some(why);
                accel = Accel::Tcg;
                let _ = std::fs::remove_dir_all(run.out());
                std::fs::create_dir_all(run.out()).unwrap();
            }
            Err(why) => panic!("guest: {why}\n{}", run.diagnostics()),
        }
    }
}

/// One QEMU run. With `probe`, a guest that prints nothing on its console
/// in 30 s (a /dev/kvm that opens but does not run guests) is an error, so
/// the caller can fall back to TCG.
///
/// The guest asks the host for things by creating `out/ask-WHAT`; this
/// calls `on_ask(WHAT)` and answers with `out/ack-WHAT`.
fn run_qemu(
    run: &Run,
    accel: Accel,
    forwards: &[(u16, u16)],
    probe: bool,
    on_ask: &dyn Fn(&str),
) -> Result<(), String> {
    let _ = std::fs::remove_file(run.console());
    let log = run.dir.join("qemu.log");
    let mut child = Command::new("qemu-system-x86_64")
        .args(qemu_args(run, accel, forwards))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let qemu = std::fs::read_to_string(&log).unwrap_or_default();
            if !status.success() {
                return Err(format!("QEMU ({accel:?}) exited with {status}: {qemu}"));
            }
            if !run.out().join("done").exists() {
                return Err(format!(
                    "the guest ({accel:?}) powered off before its script finished"
                ));
            }
            return Ok(());
        }
        for e in std::fs::read_dir(run.out()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(what) = name.strip_prefix("ask-") {
                let ack = run.out().join(format!("ack-{what}"));
                if !ack.exists() {
                    on_ask(what);
                    std::fs::write(ack, "").unwrap();
                }
            }
        }
        // The kernel's first line reaches the serial console within a
        // second under a working KVM. (Lines before it come from the
        // kernel's real-mode setup through the BIOS, and appear even where
        // KVM then hangs, as on a nested host that lacks CPU features.)
        if probe && start.elapsed() > KVM_PROBE {
            let console = std::fs::read(run.console()).unwrap_or_default();
            if !String::from_utf8_lossy(&console).contains("Linux version") {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "KVM: /dev/kvm opened but the kernel printed nothing in {} s",
                    KVM_PROBE.as_secs()
                ));
            }
        }
        if start.elapsed() > GUEST_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the guest ({accel:?}) ran past {} s and was killed",
                GUEST_DEADLINE.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One line of `out/steps`: `ok NAME SECONDS` or `FAIL NAME SECONDS`.
struct Step {
    ok: bool,
    name: String,
    secs: u64,
}

fn steps(run: &Run) -> Vec<Step> {
    std::fs::read_to_string(run.out().join("steps"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let ok = w.next()? == "ok";
            let name = w.next()?.to_string();
            let secs = w.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            Some(Step { ok, name, secs })
        })
        .collect()
}

/// The reports a phase's token delivered (status 200), oldest first.
fn phase_reports(standin: &StandIn, phase: &str) -> Vec<Value> {
    let t = token(phase);
    standin
        .reports()
        .into_iter()
        .filter(|r: &Received| r.status == 200)
        .filter(|r| r.headers.get("x-api-token") == Some(&t))
        .filter_map(|r| r.doc)
        .collect()
}

/// The SMART rows of a report, by device name.
fn smart_rows(doc: &Value) -> Vec<(String, &Value)> {
    doc.pointer("/sensors/smart")
        .and_then(Value::as_array)
        .map(|rows| {
            rows.iter()
                .map(|r| (r["device"].as_str().unwrap_or("").to_string(), r))
                .collect()
        })
        .unwrap_or_default()
}

/// Which collectors gave data in one report: (collector, verdict).
fn collector_verdicts(doc: &Value) -> Vec<(&'static str, String)> {
    let rows = smart_rows(doc);
    // A row with a verdict (not UNKNOWN: smartctl could not read the disk).
    let row_ok = |dev: &str| {
        rows.iter().find(|(d, _)| d == dev).is_some_and(|(_, r)| {
            (r["health"] == "PASSED" || r["health"] == "FAILED") && r["serial"].is_string()
        })
    };
    let sata: Vec<&str> = SMART_DISKS
        .iter()
        .map(|(d, _)| *d)
        .filter(|d| d.starts_with("sd"))
        .collect();
    let sata_ok = sata.iter().filter(|d| row_ok(d)).count();
    let yes_no = |b: bool| if b { "works" } else { "no" }.to_string();
    let raid = doc["raid"].as_array().cloned().unwrap_or_default();
    let md = raid.iter().find(|a| a["device"] == "/dev/md0");
    let arr = |p: &str| doc.pointer(p).and_then(Value::as_array).map_or(0, Vec::len);
    let temps = doc
        .pointer("/sensors/temperatureCelsius")
        .and_then(Value::as_object)
        .map_or(0, |m| m.len());
    vec![
        (
            "SMART, SATA (4 disks)",
            match sata_ok {
                n if n == sata.len() => "works".to_string(),
                0 => "no".to_string(),
                n => format!("{n} of {}", sata.len()),
            },
        ),
        ("SMART, NVMe", yes_no(row_ok("nvme0n1"))),
        ("md arrays (mdstat)", yes_no(md.is_some())),
        (
            "md arrays (mdadm --detail)",
            yes_no(md.is_some_and(|a| a["uuid"].is_string())),
        ),
        (
            "temperatures",
            // QEMU emulates no sensor chip; the NVMe driver's hwmon is the
            // only one in the guest.
            if temps > 0 {
                format!("works ({temps}: NVMe hwmon; QEMU has no sensor chips)")
            } else {
                "none (QEMU has no sensor chips)".to_string()
            },
        ),
        ("filesystems", yes_no(arr("/disks") > 0)),
        ("disk I/O", yes_no(arr("/diskIO") > 0)),
        ("network", yes_no(arr("/network") > 0)),
    ]
}

/// What the stand-in must have seen from a phase that reported as a
/// resident service with full privileges.
fn assert_full_report(standin: &StandIn, phase: &str, run: &Run) {
    let reports = phase_reports(standin, phase);
    let last = reports.last().unwrap_or_else(|| {
        panic!(
            "phase {phase}: no report reached the stand-in\n{}",
            run.diagnostics()
        )
    });
    let rows = smart_rows(last);
    let mut devices: Vec<&str> = rows.iter().map(|(d, _)| d.as_str()).collect();
    devices.sort();
    let mut want: Vec<&str> = SMART_DISKS.iter().map(|(d, _)| *d).collect();
    want.sort();
    assert_eq!(devices, want, "phase {phase}: SMART rows");
    // By serial: libata probes the AHCI ports at once, so which port's disk
    // becomes sdb is not fixed (seen under TCG); the kind of name is.
    for (dev, serial) in SMART_DISKS {
        let row = rows.iter().find(|(_, r)| r["serial"] == *serial);
        let (name, row) = row.unwrap_or_else(|| {
            panic!(
                "phase {phase}: no SMART row with serial {serial}; rows: {:?}",
                rows.iter().map(|(_, r)| &r["serial"]).collect::<Vec<_>>()
            )
        });
        assert_eq!(&name[..2], &dev[..2], "phase {phase}: {serial}: {row}");
        assert_eq!(row["health"], "PASSED", "phase {phase}: {serial}: {row}");
    }
    let raid = last["raid"].as_array().cloned().unwrap_or_default();
    let md0 = raid
        .iter()
        .find(|a| a["device"] == "/dev/md0")
        .unwrap_or_else(|| panic!("phase {phase}: no md0 in raid: {raid:?}"));
    assert_eq!(md0["level"], "raid1", "{md0}");
    assert_eq!(md0["activeDevices"], 2, "{md0}");
}

fn release(args: &[&str]) -> String {
    let o = Command::new(release_tool()).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "pulse-release {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Publishes `binary` as `version` on the channel in `dir`, signed by `key`.
fn publish(dir: &Path, key: &Path, binary: &Path, version: &str) {
    let asset = dir.join("pulse-agent-linux-amd64");
    let _ = std::fs::remove_file(&asset);
    std::fs::copy(binary, &asset).unwrap();
    let (key, dir) = (key.to_str().unwrap(), dir.to_str().unwrap());
    release(&["index", "--key", key, "--version", version, dir]);
}

/// The host side of a guest run: a stand-in and a signed release channel
/// on loopback, forwarded into the guest, and the share's contents.
struct Lab {
    standin: StandIn,
    channel: Channel,
    key: PathBuf,
    run: Run,
}

impl Lab {
    fn new(name: &str) -> Lab {
        let run = Run::new(name);
        let names = [HOST_NAME, "localhost", "127.0.0.1"];
        let standin = StandIn::start_with(Pki::with_names("pulse-standin", &names));
        let chan_dir = run.dir.join("channel");
        std::fs::create_dir_all(&chan_dir).unwrap();
        // The binary under test without its debug information: 11 MB
        // instead of 64 to download, hash and verify in an emulated guest.
        let agent = run.dir.join("pulse-agent");
        let stripped = Command::new("strip")
            .arg("-o")
            .arg(&agent)
            .arg(env!("CARGO_BIN_EXE_pulse-agent"))
            .status()
            .is_ok_and(|s| s.success());
        if !stripped {
            std::fs::copy(env!("CARGO_BIN_EXE_pulse-agent"), &agent).unwrap();
        }
        let key = run.dir.join("release.key");
        let public = release(&["keygen", "--out", key.to_str().unwrap()]);
        run.write("release.keys", &public);
        publish(&chan_dir, &key, &agent, env!("CARGO_PKG_VERSION"));
        let channel = Channel::start(chan_dir, Pki::with_names("channel", &names));
        for phase in PHASES {
            standin.add_token(
                &token(phase),
                &[
                    "agent:report",
                    "agent:config:read",
                    "agent:manage",
                    "docker:report",
                ],
            );
        }
        // One bundle with both CAs: the guest trusts it for both servers.
        run.write(
            "ca.pem",
            &format!("{}{}", standin.pki.ca_pem, channel.pki.ca_pem),
        );
        run.write(
            "env",
            &format!(
                "PULSE_TEST_URL=https://{HOST_NAME}\nPULSE_TEST_CHANNEL=https://{HOST_NAME}:8443/channel\n"
            ),
        );
        copy_dir(
            &manifest().join("contrib/systemd"),
            &run.share().join("contrib/systemd"),
        );
        run.put("contrib/install.sh", &manifest().join("contrib/install.sh"));
        for e in std::fs::read_dir(guest_src()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".sh") {
                run.put(&format!("guest/{name}"), &e.path());
            }
        }
        // The Debian package of the binary under test.
        let deb_dir = run.share().join("deb");
        let o = Command::new("sh")
            .arg(manifest().join("contrib/deb/build.sh"))
            .arg("--binary")
            .arg(&agent)
            .arg("--out")
            .arg(&deb_dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "contrib/deb/build.sh: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        run.write("start", "exec sh /host/guest/scenario.sh\n");
        Lab {
            standin,
            channel,
            key,
            run,
        }
    }

    fn boot(&self) -> Boot {
        let forwards = [
            (443, self.standin.addr.port()),
            (8443, self.channel.addr.port()),
        ];
        // Built before the guest asks for it (the test starts the build):
        // a cargo build inside the guest's deadline would eat it.
        let v99 = common::release_99();
        let on_ask = |what: &str| match what {
            "publish-v99" => publish(&self.channel.dir, &self.key, &v99, "99.0.0"),
            other => panic!("the guest asked for {other:?}"),
        };
        boot(&self.run, &forwards, &on_ask)
    }
}

/// `cp -r` of regular files and directories.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The exposure `systemd-analyze security` printed on its last line
/// ("→ Overall exposure level for X: 2.1 OK 🙂" → "2.1 OK").
fn exposure(run: &Run, label: &str) -> Option<String> {
    let text = std::fs::read_to_string(run.out().join(format!("security-{label}.txt"))).ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("Overall exposure level"))?;
    let value = line.rsplit(": ").next()?;
    Some(
        value
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Whether a docker report of `phase` reached the stand-in with the
/// guest's container.
fn docker_works(standin: &StandIn, phase: &str) -> bool {
    let t = token(phase);
    standin.docker_reports().iter().any(|r| {
        r.status == 200
            && r.headers.get("x-api-token") == Some(&t)
            && r.doc.as_ref().is_some_and(|d| {
                d["containers"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c.to_string().contains("pulse-guest-tiny")))
            })
    })
}

/// The markdown the test prints and writes to target/guest/results.md.
fn results(lab: &Lab, b: &Boot, total: Duration, steps: &[Step]) -> String {
    let image = image();
    let mut r = String::new();
    r.push_str("# pulse-agent under systemd, measured in the guest\n\n");
    r.push_str(&format!(
        "Accelerator: {:?}{}. Image build: {}. Guest run (boot, scenario, power-off): {:.0} s. Whole test: {:.0} s.\n\n",
        b.accel,
        b.kvm_note
            .as_deref()
            .and_then(|n| n.lines().next())
            .map(|n| format!(" (KVM failed: {n})"))
            .unwrap_or_default(),
        image
            .built_in
            .map_or("cached".to_string(), |d| format!("{:.0} s", d.as_secs_f64())),
        b.wall.as_secs_f64(),
        total.as_secs_f64(),
    ));
    if let Ok(boot) = std::fs::read_to_string(lab.run.out().join("boot.txt")) {
        r.push_str(&format!(
            "Guest boot, kernel start to the test unit (guest clock): {} s\n\n",
            boot.trim()
        ));
    }
    r.push_str("| step | result | s |\n| --- | --- | --- |\n");
    for s in steps {
        let verdict = if s.ok { "ok" } else { "FAIL" };
        r.push_str(&format!("| {} | {verdict} | {} |\n", s.name, s.secs));
    }
    r.push_str(
        "\n`systemd-analyze security`, live in the guest:\n\n| unit | exposure |\n| --- | --- |\n",
    );
    for (label, file) in EXPOSURES {
        let e = exposure(&lab.run, file).unwrap_or_else(|| "not measured".into());
        r.push_str(&format!("| {label} | {e} |\n"));
    }
    r.push_str("\nCollectors by profile, from each profile's last report at the stand-in:\n\n| collector |");
    for (col, _) in PROFILES {
        r.push_str(&format!(" {col} |"));
    }
    r.push_str("\n| --- |");
    for _ in PROFILES {
        r.push_str(" --- |");
    }
    r.push('\n');
    let verdicts: Vec<Option<Vec<(&str, String)>>> = PROFILES
        .iter()
        .map(|(_, phase)| {
            phase_reports(&lab.standin, phase)
                .last()
                .map(collector_verdicts)
        })
        .collect();
    let names: Vec<&str> = collector_verdicts(&Value::Null)
        .iter()
        .map(|(n, _)| *n)
        .collect();
    for (i, name) in names.iter().enumerate() {
        r.push_str(&format!("| {name} |"));
        for v in &verdicts {
            let cell = v
                .as_ref()
                .map_or("no report".to_string(), |v| v[i].1.clone());
            r.push_str(&format!(" {cell} |"));
        }
        r.push('\n');
    }
    r.push_str("| docker (a created container) |");
    for (_, phase) in PROFILES {
        let ok = docker_works(&lab.standin, phase);
        r.push_str(if ok { " works |" } else { " no |" });
    }
    r.push_str("\n\nagent.privilege as reported:\n\n");
    for (col, phase) in PROFILES {
        if let Some(doc) = phase_reports(&lab.standin, phase).last() {
            r.push_str(&format!("- {col}: `{}`\n", doc["agent"]["privilege"]));
        }
    }
    r
}

#[test]
fn systemd_guest() {
    require_tools();
    let t = Instant::now();
    // The 99.0.0 build (CPU) goes on while mmdebstrap downloads.
    let v99 = std::thread::spawn(common::release_99);
    image();
    v99.join().expect("building 99.0.0");
    let lab = Lab::new("scenario");
    let b = lab.boot();
    let steps = steps(&lab.run);
    for phase in PHASES {
        if let Some(doc) = phase_reports(&lab.standin, phase).last() {
            std::fs::write(
                guest_dir().join(format!("report-{phase}.json")),
                serde_json::to_string_pretty(doc).unwrap(),
            )
            .unwrap();
        }
    }
    let results = results(&lab, &b, t.elapsed(), &steps);
    std::fs::write(guest_dir().join("results.md"), &results).unwrap();
    eprintln!("{results}");

    let failed: Vec<&str> = steps
        .iter()
        .filter(|s| !s.ok)
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        failed.is_empty() && !steps.is_empty(),
        "guest steps failed: {failed:?}\n{}",
        lab.run.diagnostics()
    );
    // Every disk's SMART and the md array, as root, both unit variants.
    assert_full_report(&lab.standin, "hardened", &lab.run);
    assert_full_report(&lab.standin, "compat", &lab.run);
    assert!(
        docker_works(&lab.standin, "hardened"),
        "no docker report from the hardened unit"
    );
    // The profile the agent says it runs under.
    let profile = |phase: &str| {
        phase_reports(&lab.standin, phase)
            .last()
            .map(|d| d["agent"]["privilege"]["profile"].clone())
    };
    assert_eq!(profile("hardened"), Some(Value::from("root")));
    assert_eq!(profile("nonroot"), Some(Value::from("non-root")));
    // The timer's one-shot runs and the package's service reported.
    for phase in ["timer", "deb"] {
        assert!(
            !phase_reports(&lab.standin, phase).is_empty(),
            "phase {phase}: no report reached the stand-in"
        );
    }
    // The upgrade: the same token, now from 99.0.0.
    let versions: Vec<String> = phase_reports(&lab.standin, "hardened")
        .iter()
        .map(|d| d["agent"]["version"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        versions
            .first()
            .is_some_and(|v| v.contains(env!("CARGO_PKG_VERSION")))
            && versions.last().is_some_and(|v| v.contains("99.0.0")),
        "upgrade: versions reported {versions:?}"
    );
    // The uninstall told the server, with the installed token.
    let told = lab.standin.uninstalled();
    assert!(
        told.iter().any(|(_, t)| *t == token("hardened")),
        "the stand-in saw no uninstall call: {told:?}"
    );
}
