//! CPU power (`sensors.powerWatts`, `spec/pulse-collectors.md` §3.3) from
//! energy counters: Intel (and AMD Zen) RAPL under
//! `/sys/class/powercap/intel-rapl`, else the `amd_energy` hwmon driver.
//!
//! The stock agent reads the counters twice, 100 ms apart, inside the report
//! cycle. This one reads them once per cycle and divides the difference by
//! the time measured between two cycles: no sleep, and an average over the
//! whole interval instead of a 100 ms glimpse. So the first report after a
//! start has no power. A RAPL counter wraps at `max_energy_range_uj`; a
//! counter that goes backwards without one (a reset) gives no value that time.

use std::time::Instant;

use crate::root::Root;

const RAPL: &str = "/sys/class/powercap/intel-rapl";
const HWMON: &str = "/sys/class/hwmon";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    Package,
    Core,
    Dram,
}

/// One counter reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Counter {
    /// Where it was read: matches the same counter in the next sample.
    pub path: String,
    pub domain: Domain,
    pub micro_joules: u64,
    /// The value after which the counter starts again at 0 (0: unknown).
    pub range: u64,
}

/// All counters read at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub counters: Vec<Counter>,
}

/// Watts per domain; 0 when not measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Watts {
    pub package: f64,
    pub core: f64,
    pub dram: f64,
}

/// Reads every counter now. `None` when the host has neither source, or
/// they cannot be read (`energy_uj` is root-only on current kernels).
pub fn sample(root: &Root, at: Instant) -> Option<Sample> {
    let mut counters = rapl(root);
    if counters.is_empty() {
        counters = amd_energy(root);
    }
    (!counters.is_empty()).then_some(Sample { at, counters })
}

fn rapl(root: &Root) -> Vec<Counter> {
    let mut out = Vec::new();
    let zones = |dir: &str| -> Vec<String> {
        root.read_dir(dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with("intel-rapl:"))
            .map(|n| format!("{dir}/{n}"))
            .collect()
    };
    for package in zones(RAPL) {
        let subs = zones(&package);
        for (dir, top) in
            std::iter::once((package, true)).chain(subs.into_iter().map(|s| (s, false)))
        {
            let name = root
                .read_trimmed(&format!("{dir}/name"))
                .unwrap_or_default()
                .to_ascii_lowercase();
            let domain = if name.starts_with("package") || (name.is_empty() && top) {
                Domain::Package
            } else if name == "core" {
                Domain::Core
            } else if name == "dram" {
                Domain::Dram
            } else {
                continue; // uncore, psys: not sent
            };
            let Some(uj) = read_u64(root, &format!("{dir}/energy_uj")) else {
                continue;
            };
            out.push(Counter {
                range: read_u64(root, &format!("{dir}/max_energy_range_uj")).unwrap_or(0),
                path: dir,
                domain,
                micro_joules: uj,
            });
        }
    }
    out
}

fn amd_energy(root: &Root) -> Vec<Counter> {
    let Some(dir) = root
        .read_dir(HWMON)
        .unwrap_or_default()
        .into_iter()
        .map(|h| format!("{HWMON}/{h}"))
        .find(|d| root.read_trimmed(&format!("{d}/name")).as_deref() == Some("amd_energy"))
    else {
        return Vec::new();
    };
    let mut inputs: Vec<(u32, String)> = root
        .read_dir(&dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| {
            let num = n
                .strip_prefix("energy")?
                .strip_suffix("_input")?
                .parse()
                .ok()?;
            Some((num, n))
        })
        .collect();
    inputs.sort();
    let mut out: Vec<Counter> = Vec::new();
    for (num, file) in inputs {
        let Some(uj) = read_u64(root, &format!("{dir}/{file}")) else {
            continue;
        };
        let label = root
            .read_trimmed(&format!("{dir}/energy{num}_label"))
            .unwrap_or_default()
            .to_ascii_lowercase();
        let domain = if label.contains("socket") || label.contains("package") {
            Domain::Package
        } else if label.contains("core") {
            Domain::Core
        } else {
            continue;
        };
        out.push(Counter {
            path: format!("{dir}/{file}"),
            domain,
            micro_joules: uj,
            range: 0,
        });
    }
    out
}

fn read_u64(root: &Root, path: &str) -> Option<u64> {
    root.read_trimmed(path)?.parse().ok()
}

/// Average watts between two samples.
pub fn watts(before: &Sample, after: &Sample) -> Watts {
    let secs = after.at.saturating_duration_since(before.at).as_secs_f64();
    let mut w = Watts::default();
    if secs <= 0.0 {
        return w;
    }
    for c in &after.counters {
        let Some(prev) = before.counters.iter().find(|p| p.path == c.path) else {
            continue;
        };
        let Some(delta) = energy_delta(prev.micro_joules, c.micro_joules, c.range) else {
            continue;
        };
        let watts = delta as f64 / 1e6 / secs;
        match c.domain {
            Domain::Package => w.package += watts,
            Domain::Core => w.core += watts,
            Domain::Dram => w.dram += watts,
        }
    }
    w
}

/// µJ used between two readings of a counter that wraps after `range`.
fn energy_delta(before: u64, after: u64, range: u64) -> Option<u64> {
    if after >= before {
        Some(after - before)
    } else if range > 0 && before <= range {
        Some(range - before + after)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn s(at: Instant, c: &[(&str, Domain, u64, u64)]) -> Sample {
        Sample {
            at,
            counters: c
                .iter()
                .map(|&(p, domain, micro_joules, range)| Counter {
                    path: p.into(),
                    domain,
                    micro_joules,
                    range,
                })
                .collect(),
        }
    }

    #[test]
    fn watts_over_the_measured_time() {
        let t0 = Instant::now();
        let a = s(
            t0,
            &[
                ("p0", Domain::Package, 1_000_000, 0),
                ("p1", Domain::Package, 0, 0),
                ("c", Domain::Core, 200_000, 0),
                ("d", Domain::Dram, 300_000, 0),
            ],
        );
        let b = s(
            t0 + Duration::from_secs(2),
            &[
                ("p0", Domain::Package, 21_000_000, 0),
                ("p1", Domain::Package, 10_000_000, 0),
                ("c", Domain::Core, 4_200_000, 0),
                ("d", Domain::Dram, 6_300_000, 0),
                ("new", Domain::Dram, 99, 0),
            ],
        );
        let w = watts(&a, &b);
        assert_eq!(w.package, 15.0);
        assert_eq!(w.core, 2.0);
        assert_eq!(w.dram, 3.0);
        assert_eq!(watts(&b, &b), Watts::default());
    }

    #[test]
    fn counters_wrap_at_their_range() {
        assert_eq!(energy_delta(10, 30, 0), Some(20));
        assert_eq!(
            energy_delta(262_143_328_850 - 100, 400, 262_143_328_850),
            Some(500)
        );
        assert_eq!(energy_delta(500, 400, 0), None);
        assert_eq!(energy_delta(900, 400, 800), None);
    }
}
