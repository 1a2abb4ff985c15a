//! Fuzz entry points: one function per family of input that a file, a
//! program, a socket or a server can hand the agent.
//!
//! Each entry takes raw bytes and runs every parser of its family on them
//! (plus what is built from their results: the wire JSON, the merges), so a
//! seed of any one format exercises the others too. An entry returns
//! normally for any input; a panic, an overflow (the fuzz build has
//! overflow checks on), a hang or superlinear time is a defect.
//!
//! The same table drives the coverage-guided harness in `contrib/fuzz/`
//! (libFuzzer on stable Rust) and the replay of the saved inputs in
//! `vendor-free-tests/fuzz/` that `cargo test --test fuzz_corpus` runs.
//! Nothing here runs in the agent.

use crate::collect::{
    cpu, diskio, gpu, hwmon, identity, loadavg, memory, mounts, network, raid, uptime, zfs,
};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One family of untrusted input.
pub struct Target {
    /// The name used by `contrib/fuzz/run`, the corpus folder and the replay test.
    pub name: &'static str,
    /// What the bytes are.
    pub about: &'static str,
    pub run: fn(&[u8]),
}

/// Every family, in the order `contrib/fuzz/run` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "proc",
        about: "/proc and /sys text: uptime, loadavg, stat, meminfo, arcstats, cpuinfo, diskstats, net/dev, os-release, ip addr, /proc/self/status (privilege)",
        run: proc_files,
    },
    Target {
        name: "mountinfo",
        about: "/proc/self/mountinfo and /proc/mounts, with the filesystem filter",
        run: mountinfo,
    },
    Target {
        name: "mdadm",
        about: "/proc/mdstat and mdadm --detail, and their merge",
        run: mdadm,
    },
    Target {
        name: "smartctl",
        about: "smartctl --json=o and text output, smartctl --scan, lsblk --json",
        run: smartctl,
    },
    Target {
        name: "unraid",
        about: "Unraid's disks.ini and mdcmd status, their merge by slot and count reconciliation, the unraid JSON",
        run: unraid_inputs,
    },
    Target {
        name: "sensors",
        about: "sensors -j, and the key mapping of its chips",
        run: sensors,
    },
    Target {
        name: "nvidia-smi",
        about: "nvidia-smi --format=csv,noheader,nounits",
        run: nvidia_smi,
    },
    Target {
        name: "zfs",
        about: "zpool list -Hp, zfs list -Hp, zpool status -P",
        run: zfs_output,
    },
    Target {
        name: "docker-http",
        about: "an Engine API answer read from a unix socket (status line, headers, chunked, Content-Length or close-delimited body)",
        run: docker_http,
    },
    Target {
        name: "docker-json",
        about: "Engine API JSON: /info, /containers/json entries, inspect, stats; the docker report built from them",
        run: docker_json,
    },
    Target {
        name: "server",
        about: "the Pulse server's answers: remote config (hash, signature, times), report acknowledgements",
        run: server,
    },
    Target {
        name: "spool",
        about: "a spool directory left by an earlier run: file names and report bodies",
        run: spool,
    },
    Target {
        name: "update",
        about: "the release channel: release.json, .sig lines, key lists, versions, and the updater's own record",
        run: update,
    },
    Target {
        name: "cli",
        about: "argv and the environment: flags, values, durations, URLs, then the validated Config",
        run: cli,
    },
    Target {
        name: "audit",
        about: "a pulse-sensor-proxy audit log handed to `audit verify`",
        run: audit,
    },
    Target {
        name: "cluster",
        about: "pulse-sensor-proxy's answer to get_temperature, the peer output inside it (sensors -j or the installer wrapper), pvesh get /cluster/status JSON",
        run: cluster,
    },
    Target {
        name: "pct",
        about: "Proxmox's pct list and pct df <vmid>, and the proxmoxLxc section built from them",
        run: pct,
    },
    Target {
        name: "ceph",
        about: "ceph status --format json and ceph df --format json, and the ceph section built from them",
        run: ceph,
    },
    Target {
        name: "proxy-http",
        about: "an HTTP/1.1 request head sent to pulse-sensor-proxy's HTTPS or metrics listener: request line, headers, the node query and the bearer token",
        run: proxy_http,
    },
    Target {
        name: "proxy-config",
        about: "pulse-sensor-proxy: config.yaml and allowed_nodes.yaml (the YAML subset, then the Config), pvecm status, pvesh get /cluster/status JSON, node names and CIDRs",
        run: proxy_config,
    },
    Target {
        name: "proxy-socket",
        about: "pulse-sensor-proxy: a request on its socket (line reading, JSON, method, correlation ID), /etc/subuid and /etc/subgid, known_hosts",
        run: proxy_socket,
    },
    Target {
        name: "apt",
        about: "apt-get -s upgrade output (Inst lines, the summary), the inventory hash, and host.packageUpdates built from it",
        run: apt,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

fn proc_files(data: &[u8]) {
    let t = text(data);
    let t = t.as_ref();
    let _ = uptime::parse(t);
    let _ = loadavg::parse(t);
    let _ = cpu::parse(t);
    let _ = cpu::count_cpus(t);
    if let Ok(m) = memory::parse(t) {
        let _ = memory::compute(&m);
    }
    let _ = memory::parse_arc_size(t);
    let _ = identity::count_processors(t);
    let _ = identity::cpu_model(t);
    let _ = identity::parse_assignments(t);
    let _ = identity::dpkg_version(t, "pve-manager");
    let _ = identity::format_uuid(t.trim());
    let _ = network::parse_net_dev(t);
    let _ = crate::root::parse_ip_addr(t);
    let _ = crate::privilege::parse_status(t, Some(40));
    let _ = crate::privilege::parse_status(t, None);
    let disk_io = diskio::parse(t).unwrap_or_default();
    let snapshot = crate::collect::HostSnapshot {
        uptime_seconds: uptime::parse(t).ok(),
        load_average: loadavg::parse(t).ok(),
        disk_io,
        ..Default::default()
    };
    host_report(&snapshot);
}

fn mountinfo(data: &[u8]) {
    let t = text(data);
    for table in [mounts::parse_mountinfo(&t), mounts::parse_mounts(&t)] {
        for m in &table.mounts {
            let _ = crate::collect::filesystems::should_skip(&m.fstype, &m.mountpoint, 1, 0);
            let _ = zfs::member_keys(&m.source);
        }
    }
    let _ = mounts::unescape(&t);
}

fn mdadm(data: &[u8]) {
    let t = text(data);
    let arrays = raid::parse_mdstat(&t);
    let mut merged = Vec::new();
    for a in &arrays {
        if let Ok(d) = raid::parse_detail(&t, &a.device) {
            merged.push(raid::merge(d, a));
        }
    }
    if let Ok(d) = raid::parse_detail(&t, "/dev/md0") {
        merged.push(d);
    }
    merged.extend(arrays);
    host_report(&crate::collect::HostSnapshot {
        raid: merged,
        ..Default::default()
    });
}

fn unraid_inputs(data: &[u8]) {
    use crate::collect::unraid;
    let t = text(data);
    let ini = unraid::parse_disks_ini(&t).unwrap_or_default();
    let status = unraid::parse_mdcmd(&t).ok();
    let u = unraid::reconcile(unraid::merge(status, ini));
    let _ = crate::report::unraid(&u);
}

fn smartctl(data: &[u8]) {
    let exclude = ["sd[x-z]".to_string()];
    let mut disks = Vec::new();
    if let Ok(d) = crate::smart::parse::json(data, "/dev/sda", "sat") {
        disks.push(d);
    }
    let t = text(data);
    if let Ok(d) = crate::smart::parse::text(&t, "/dev/nvme0", "nvme") {
        disks.push(d);
    }
    if disks.len() == 2 {
        let other = disks[1].clone();
        crate::smart::probe::merge(&mut disks[0], &other);
    }
    let _ = crate::smart::discover::parse_scan(&t, &exclude);
    let _ = crate::smart::discover::parse_lsblk(data, &exclude);
    host_report(&crate::collect::HostSnapshot {
        smart: disks,
        ..Default::default()
    });
}

fn sensors(data: &[u8]) {
    let Ok(chips) = hwmon::parse_sensors_json(&text(data)) else {
        return;
    };
    host_report(&crate::collect::HostSnapshot {
        temperatures: hwmon::map(&chips),
        ..Default::default()
    });
}

fn nvidia_smi(data: &[u8]) {
    host_report(&crate::collect::HostSnapshot {
        gpus: gpu::parse(&text(data)),
        ..Default::default()
    });
}

fn zfs_output(data: &[u8]) {
    let t = text(data);
    if let Ok(pools) = zfs::parse_zpool_list(&t) {
        for stats in pools.values() {
            let _ = zfs::usable(*stats, u64::MAX / 3);
            let _ = zfs::usable(*stats, 0);
        }
    }
    let _ = zfs::parse_zfs_list(&t);
    let members = zfs::parse_zpool_status(&t);
    for k in members.keys() {
        let _ = zfs::member_keys(k);
        let _ = zfs::valid_pool_name(k);
    }
}

fn apt(data: &[u8]) {
    use crate::collect::packages;
    let (pending, error) = match packages::parse(&text(data)) {
        Ok(p) => (p, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let updates = packages::Updates {
        supported: true,
        manager: "apt".into(),
        inventory_hash: packages::inventory_hash(&pending),
        pending,
        reboot_required: true,
        error,
    };
    let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let _ = crate::report::package_updates(&updates, at).to_string();
}

fn docker_http(data: &[u8]) {
    use crate::docker::http::parse_response;
    for method in ["GET", "HEAD"] {
        // A cap the body may pass, and the one the collector uses for a list.
        for cap in [64, 4 << 20] {
            if let Ok(r) = parse_response(data, method, cap) {
                let _ = r.header("content-type");
            }
        }
    }
}

/// Input: one JSON document, or an array of them; each is used as a list
/// entry, its inspect and its stats at once (the fields do not overlap), so
/// one seed reaches every part of a container.
fn docker_json(data: &[u8]) {
    use crate::docker::collect as dc;
    use crate::docker::engine::Runtime;
    let t = text(data);
    let _ = dc::up_at_most(&t);
    let _ = dc::mask_env(&t);
    let _ = crate::docker::engine::parse_version(&t);
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let items: Vec<&Value> = match &v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let info = dc::parse_info(&v);
    for runtime in [Runtime::Docker, Runtime::Podman] {
        let mut containers = Vec::new();
        for item in &items {
            // Two stats samples: the second gives a CPU % against the first.
            let stats = [(*item).clone(), (*item).clone()];
            let Some(c) = dc::container_from_documents(item, item, &stats, runtime, info.ncpu, now)
            else {
                continue;
            };
            let _ = dc::up_at_most(&c.status);
            if let Some(lbl) = item.get("Labels").and_then(Value::as_object) {
                let labels = lbl
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect();
                let _ = dc::podman_labels(&labels);
            }
            containers.push(c);
        }
        let snapshot = dc::Snapshot {
            endpoint: "unix:///run/fuzz.sock".into(),
            api_version: "1.41".into(),
            runtime,
            info: info.clone(),
            containers,
            warnings: Vec::new(),
            took: Duration::from_millis(1),
            stats_calls: 0,
            inspect_calls: 0,
        };
        let identity = identity::Identity::default();
        let host = crate::collect::HostSnapshot::default();
        for lean in [false, true] {
            let doc = crate::report::docker(&crate::report::DockerReport {
                agent_id: "fuzz",
                version: "0.0.0",
                interval_seconds: 30,
                identity: &identity,
                snapshot: &host,
                docker: &snapshot,
                timestamp: now,
                lean,
            });
            let _ = serde_json::to_vec(&doc);
        }
    }
}

fn server(data: &[u8]) {
    use crate::remote_config as rc;
    let _ = crate::deliver::parse_ack(data);
    let _ = crate::deliver::snippet(data);
    let t = text(data);
    let _ = rc::parse_rfc3339(&t);
    let _ = rc::base64_decode(&t);
    let _ = crate::docker::engine::parse_version(&t);
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    walk_strings(&v, &mut |s| {
        let _ = rc::parse_rfc3339(s);
        let _ = rc::base64_decode(s);
        let _ = crate::cli::parse_duration(s);
    });
    let _ = rc::go_json(&v);
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    // A signature the fuzzer cannot forge fails either way; both settings
    // still parse everything before the signature check.
    for required in [false, true] {
        let trust = rc::Trust {
            public_keys: None,
            signature_required: required,
        };
        let _ = rc::verify(&v, "fuzz-agent", &trust, now);
    }
}

fn walk_strings(v: &Value, f: &mut dyn FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().for_each(|x| walk_strings(x, f)),
        Value::Object(o) => o.iter().for_each(|(k, x)| {
            f(k);
            walk_strings(x, f);
        }),
        _ => {}
    }
}

/// Input: records `name \0 body \0`; each becomes a file in a fresh spool
/// directory (names cut at 200 bytes, `/` dropped), which is then opened,
/// read, added to and drained.
fn spool(data: &[u8]) {
    let Ok(dir) = scratch_dir() else { return };
    let mut parts = data.split(|&b| b == 0);
    while let (Some(name), Some(body)) = (parts.next(), parts.next()) {
        let name: Vec<u8> = name
            .iter()
            .copied()
            .filter(|&b| b != b'/')
            .take(200)
            .collect();
        let name = String::from_utf8_lossy(&name).into_owned();
        if name.is_empty() || name == "." || name == ".." {
            continue;
        }
        let _ = std::fs::write(dir.join(name), body);
    }
    {
        let mut s = crate::spool::Spool::open(Some(&dir), 8, 64 * 1024);
        let _ = s.push(b"{}".to_vec());
        for _ in 0..16 {
            match s.front() {
                Ok(Some((id, _))) => s.remove(id),
                _ => break,
            }
        }
        let _ = s.push(b"{\"a\":1}".to_vec());
        let _ = (s.len(), s.dropped());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn scratch_dir() -> std::io::Result<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pulse-fuzz-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Input: arguments separated by `\0`; after a `\0\0`, `NAME=value`
/// environment entries separated by `\0`.
fn cli(data: &[u8]) {
    let (argv, env) = match data.windows(2).position(|w| w == [0, 0]) {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let args: Vec<String> = argv
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let env: Vec<(String, String)> = env
        .split(|&b| b == 0)
        .filter_map(|e| {
            let e = String::from_utf8_lossy(e);
            let (k, v) = e.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect();
    let lookup = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    for a in &args {
        let _ = crate::cli::parse_duration(a);
        let _ = crate::cli::parse_go_bool(a);
        let _ = crate::config::parse_fingerprint(a);
        let _ = crate::config::parse_log_level(a);
    }
    let Ok(parsed) = crate::cli::parse(args, &lookup) else {
        return;
    };
    let _ = format!("{parsed:?}");
    // Name lookups never leave the machine: every name is "not found".
    let resolve = |_: &str| None;
    let _ = crate::config::Config::from_args(&parsed, &lookup, &resolve);
}

/// Builds the host report around `snapshot`, as a cycle would.
fn host_report(snapshot: &crate::collect::HostSnapshot) {
    let identity = identity::Identity::default();
    let privilege = crate::report::Privilege {
        running_as_root: true,
        service_user: "root".into(),
        smartctl_helper: false,
        pct_helper: false,
        sandbox: Default::default(),
    };
    let doc = crate::report::host(&crate::report::HostReport {
        agent: crate::report::Agent {
            id: "fuzz",
            version: "0.0.0",
            interval_seconds: 30,
            hostname: "fuzz",
            disk_exclude: &[],
            modules: &[],
            privilege: &privilege,
            applied_config: None,
            update: &crate::update::Status::default(),
            updated_from: None,
        },
        identity: &identity,
        report_ip: None,
        tags: &[],
        snapshot,
        timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        sequence_id: "fuzz-1",
    });
    let _ = serde_json::to_vec(&doc);
}

fn update(data: &[u8]) {
    use crate::update::{exe, index, record};
    if let Ok(r) = index::parse(data) {
        let _ = r.asset("linux-amd64");
        let _ = index::is_newer(&r.version, "v0.1.0");
    }
    let _ = index::parse_signature(data);
    let _ = exe::identify(data);
    let t = text(data);
    let _ = index::parse_keys(&t);
    let _ = record::parse(&t);
    if let Some((a, b)) = t.split_once('\n') {
        let _ = index::is_newer(a, b);
        let _ = index::same_version(a, b);
    }
    let _ = crate::update::fetch::redirect_target("https://dl.example/ch/release.json", &t);
}

fn audit(data: &[u8]) {
    let _ = crate::proxy::audit::verify(data).map_err(|e| e.to_string());
}

fn cluster(data: &[u8]) {
    use crate::collect::cluster;
    let _ = cluster::parse_cluster_status(&text(data));
    // A whole proxy reply, or just the peer's output.
    let output = cluster::parse_reply(data).unwrap_or_else(|_| text(data).into_owned());
    let Ok(readings) = cluster::parse_temperature(&output) else {
        return;
    };
    host_report(&crate::collect::HostSnapshot {
        cluster: vec![cluster::NodeSensors {
            node: "pve2".into(),
            readings,
            collected_at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }],
        ..Default::default()
    });
}

/// The same bytes as `pct list` and as `pct df`: each running row becomes a
/// container holding the df rows (the first two, so the section's size
/// stays linear in the input).
fn pct(data: &[u8]) {
    use crate::collect::pct;
    let t = text(data);
    let disks = pct::parse_df(&t);
    let running = pct::parse_list(&t).unwrap_or_default();
    let lxc = pct::Lxc {
        containers: running
            .into_iter()
            .take(2)
            .map(|r| pct::Container {
                vmid: r.vmid,
                name: r.name,
                disks: disks.clone(),
            })
            .collect(),
        skipped: Vec::new(),
    };
    let doc = crate::report::proxmox_lxc(&lxc, UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let _ = serde_json::to_vec(&doc);
}

fn ceph(data: &[u8]) {
    use crate::collect::ceph;
    let t = text(data);
    let df = ceph::parse_df(&t);
    let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    if let Ok(mut c) = ceph::parse_status(&t) {
        let _ = crate::report::ceph(&c, at);
        if let Ok(df) = df {
            c.apply_df(df);
            let _ = crate::report::ceph(&c, at);
        }
    } else if let Ok(df) = df {
        let mut c = ceph::Ceph::default();
        c.apply_df(df);
        let _ = crate::report::ceph(&c, at);
    }
}

fn proxy_http(data: &[u8]) {
    use crate::proxy::https;
    let Ok(head) = https::read_head(&mut &data[..]) else {
        return;
    };
    let _ = https::query_param(head.query(), "node");
    let _ = head.header("authorization").map(https::bearer);
    let _ = https::synthetic_uid(head.path());
}

fn proxy_config(data: &[u8]) {
    use crate::proxy::{config, nodes};
    let t = text(data);
    let _ = config::parse_yaml(&t, "config.yaml");
    let env = |_: &str| None;
    if let Ok(c) = config::Config::from_text(&t, "config.yaml", &env) {
        let _ = format!("{c:?}");
        for s in &c.allowed_source_subnets {
            let _ = s.to_string();
        }
    }
    if let Ok(list) = config::parse_allowed_nodes(&t, "allowed_nodes.yaml") {
        let rendered = config::render_allowed_nodes(&list);
        let _ = config::parse_allowed_nodes(&rendered, "allowed_nodes.yaml");
    }
    let _ = nodes::parse_pvecm_status(&t, true);
    let _ = nodes::parse_pvecm_status(&t, false);
    let _ = nodes::parse_pvesh_cluster_status(&t);
    for line in t.lines().take(64) {
        let _ = nodes::valid_name(line);
        let _ = config::valid_entry(line);
        if let Some(c) = nodes::Cidr::parse(line) {
            let _ = c.contains(c.addr());
        }
    }
}

fn proxy_socket(data: &[u8]) {
    use crate::proxy::{peer, protocol, ssh};
    let limit = std::time::Duration::from_secs(1);
    if let Ok(line) = protocol::read_request(&mut &data[..], limit, |_, _| Ok(())) {
        if let Ok(req) = protocol::parse(&line) {
            let corr = req.correlation_id.clone();
            let _ = protocol::response(&corr, Ok(serde_json::Value::Object(req.params)));
        }
    }
    let t = text(data);
    let _ = protocol::canonical_uuid(&t);
    let users = ["root".to_string()];
    let _ = peer::parse_subid(&t, &users);
    let _ = ssh::host_keys(&t, "pve1", 22);
}
