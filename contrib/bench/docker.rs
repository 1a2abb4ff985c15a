//! What one docker collection costs, with 50 running containers: its wall
//! time, this agent's CPU, and the CPU dockerd (and the whole engine:
//! dockerd, containerd, the shims) spends answering it, against what one
//! `docker stats --no-stream` of the same containers costs, in the same run.
//! Also what the calls the agent never makes would cost dockerd.
//!
//! Needs a running dockerd (as root): `PULSE_TEST_DOCKER_HOST=unix:///path`
//! (default /var/run/docker.sock), Debian's docker.io client and
//! busybox-static. Run: `cargo bench --bench docker`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pulse_agent::config::DockerRuntime;
use pulse_agent::docker::engine::Engine;
use pulse_agent::docker::{Docker, Settings};

const CONTAINERS: usize = 50;
const CYCLES: usize = 20;
const STATS_RUNS: usize = 5;
const IMAGE: &str = "pulse-busybox:test";

fn socket() -> PathBuf {
    let host = std::env::var("PULSE_TEST_DOCKER_HOST")
        .unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    PathBuf::from(host.strip_prefix("unix://").unwrap_or(&host))
}

fn docker(sock: &Path, args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", format!("unix://{}", sock.display()))
        .output()
        .expect("docker client");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes the benchmark's containers (whichever exist).
fn remove(sock: &Path, names: &[String]) {
    let _ = Command::new("docker")
        .arg("rm")
        .arg("-f")
        .args(names)
        .env("DOCKER_HOST", format!("unix://{}", sock.display()))
        .output();
}

fn ensure_image(sock: &Path) {
    if !docker(sock, &["images", "-q", IMAGE]).is_empty() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pulse-bench-rootfs-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox");
    std::fs::copy(bb, dir.join("bin/busybox")).unwrap();
    for a in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(a)).unwrap();
    }
    let tar = dir.with_extension("tar");
    assert!(
        Command::new("tar")
            .args([
                "-C",
                dir.to_str().unwrap(),
                "-cf",
                tar.to_str().unwrap(),
                "."
            ])
            .status()
            .unwrap()
            .success()
    );
    docker(sock, &["import", tar.to_str().unwrap(), IMAGE]);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&tar);
}

/// CPU time (user + system) of every process whose name is one of `names`.
fn cpu_of(names: &[&str]) -> Duration {
    let hz = 100.0; // USER_HZ on Linux
    let mut ticks = 0u64;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        if !names.contains(&comm) {
            continue;
        }
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        ticks += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    }
    Duration::from_secs_f64(ticks as f64 / hz)
}

const DOCKERD: &[&str] = &["dockerd"];
// /proc's comm is cut at 15 characters.
const ENGINE: &[&str] = &[
    "dockerd",
    "containerd",
    "containerd-shim",
    "containerd-shim-runc-v2",
    "containerd-shi",
];

fn self_cpu() -> Duration {
    pulse_agent::sys::process_cpu_time()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let sock = socket();
    ensure_image(&sock);
    let names: Vec<String> = (0..CONTAINERS)
        .map(|i| format!("pulse-bench-{i:02}"))
        .collect();
    remove(&sock, &names);
    for n in &names {
        docker(&sock, &["run", "-d", "--name", n, IMAGE, "sleep", "3600"]);
    }
    let running = docker(&sock, &["ps", "-q"]).lines().count();
    println!("containers running: {running} ({CONTAINERS} made by this benchmark)");
    std::thread::sleep(Duration::from_secs(2));

    let settings = Settings {
        socket: Some(sock.clone()),
        runtime: DockerRuntime::Auto,
        api_version: None,
        env: Default::default(),
        uid: 0,
        user_agent: "pulse-agent-bench".into(),
    };
    let mut d = Docker::new(settings);
    // First collection: every container is inspected.
    let (e0, c0, t0) = (cpu_of(DOCKERD), self_cpu(), Instant::now());
    let first = d.collect().expect("collect");
    let (first_wall, first_cpu, first_dockerd) =
        (t0.elapsed(), self_cpu() - c0, cpu_of(DOCKERD) - e0);
    println!(
        "first collection: {} containers, {} stats + {} inspect calls, wall {}, agent CPU {}, dockerd CPU {}",
        first.containers.len(),
        first.stats_calls,
        first.inspect_calls,
        ms(first_wall),
        ms(first_cpu),
        ms(first_dockerd)
    );

    // Steady state: the interval's cycles (inspects cached).
    let mut wall = Duration::ZERO;
    let mut agent = Duration::ZERO;
    let mut inspects = 0;
    let (d0, g0) = (cpu_of(DOCKERD), cpu_of(ENGINE));
    for _ in 0..CYCLES {
        let (c, t) = (self_cpu(), Instant::now());
        let s = d.collect().expect("collect");
        wall += t.elapsed();
        agent += self_cpu() - c;
        inspects += s.inspect_calls;
        std::thread::sleep(Duration::from_millis(500));
    }
    let (dockerd, engine) = (
        (cpu_of(DOCKERD) - d0) / CYCLES as u32,
        (cpu_of(ENGINE) - g0) / CYCLES as u32,
    );
    let n = CYCLES as u32;
    println!(
        "per collection (mean of {CYCLES}): wall {}, agent CPU {}, dockerd CPU {}, engine CPU (dockerd+containerd+shims) {}, inspects {}",
        ms(wall / n),
        ms(agent / n),
        ms(dockerd),
        ms(engine),
        inspects
    );

    // The same containers through `docker stats --no-stream`.
    let (d0, g0, t) = (cpu_of(DOCKERD), cpu_of(ENGINE), Instant::now());
    for _ in 0..STATS_RUNS {
        let mut args = vec!["stats", "--no-stream"];
        args.extend(names.iter().map(String::as_str));
        docker(&sock, &args);
    }
    let k = STATS_RUNS as u32;
    let (sd, sg) = ((cpu_of(DOCKERD) - d0) / k, (cpu_of(ENGINE) - g0) / k);
    println!(
        "docker stats --no-stream (mean of {STATS_RUNS}): wall {}, dockerd CPU {}, engine CPU {}",
        ms(t.elapsed() / k),
        ms(sd),
        ms(sg)
    );
    println!(
        "dockerd CPU, agent collection / docker stats: {:.2}",
        dockerd.as_secs_f64() / sd.as_secs_f64().max(1e-9)
    );

    // What the calls the agent never makes would cost dockerd.
    let e = Engine::open(&sock, None, "pulse-agent-bench").expect("engine");
    for path in [
        "/system/df?type=container&type=image&type=volume&type=build-cache&verbose=1",
        "/system/df",
        "/images/json?all=1&shared-size=1",
        "/volumes",
        "/networks",
    ] {
        let (d0, t) = (cpu_of(DOCKERD), Instant::now());
        for _ in 0..STATS_RUNS {
            e.get_json(path, Duration::from_secs(60), 64 << 20)
                .expect(path);
        }
        println!(
            "GET {path}: wall {}, dockerd CPU {} (mean of {STATS_RUNS})",
            ms(t.elapsed() / k),
            ms((cpu_of(DOCKERD) - d0) / k)
        );
    }
    remove(&sock, &names);
}
