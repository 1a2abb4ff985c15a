//! Prometheus text exposition (format 0.0.4) of the agent's own state.
//!
//! The `pulse_agent_*` families the stock agent documents, with its help
//! texts and labels exactly (spec §5), then this agent's own: per-collector
//! duration and success, report and delivery counters, the spool, and the
//! `process_*` basics. Rendered by the health thread on the first scrape
//! after a cycle and kept until the next one (never by a cycle nobody
//! scrapes); every scrape appends the `process_*` lines, cheap syscalls.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::collect::{Outcome, SourceStatus};
use crate::report::{Module, ModuleState};

/// What the agent knows about its own delivery.
#[derive(Debug, Clone, Default)]
pub struct DeliveryState {
    /// A server URL is configured.
    pub configured: bool,
    /// Result of the most recent attempt; `None` before the first.
    pub last_ok: Option<bool>,
    pub last_error: Option<String>,
    pub delivered: u64,
    pub failed: u64,
    pub dropped: u64,
    pub spooled: usize,
    /// Of `dropped`: reports the full spool dropped (oldest first), since start.
    pub spool_dropped: u64,
}

/// Everything the metrics page shows, gathered by the main thread.
#[derive(Debug, Clone)]
pub struct State<'a> {
    pub version: &'a str,
    pub modules: &'a [Module],
    pub sources: &'a [SourceStatus],
    pub delivery: &'a DeliveryState,
    /// The docker report's delivery, when the docker module runs.
    pub docker_delivery: Option<&'a DeliveryState>,
    /// Containers in the last docker report.
    pub docker_containers: Option<usize>,
    pub reports_built: u64,
    pub last_report: Option<SystemTime>,
    pub update: &'a crate::update::Status,
}

pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn b(v: bool) -> u8 {
    u8::from(v)
}

fn secs(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

pub(crate) fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The page without the `process_*` families.
pub fn render(s: &State) -> String {
    let mut o = String::with_capacity(4096);
    let enabled = |name: &str| s.modules.iter().any(|m| m.name == name && m.enabled);
    family(
        &mut o,
        "pulse_agent_info",
        "gauge",
        "Information about the Pulse agent",
    );
    let _ = writeln!(
        o,
        "pulse_agent_info{{docker_enabled=\"{}\",host_enabled=\"{}\",kubernetes_enabled=\"{}\",version=\"{}\"}} 1",
        enabled("docker"),
        enabled("host"),
        enabled("kubernetes"),
        escape_label(s.version)
    );
    family(
        &mut o,
        "pulse_agent_up",
        "gauge",
        "Whether the Pulse agent is running (1 = up, 0 = down)",
    );
    o.push_str("pulse_agent_up 1\n");
    let mut modules: Vec<&Module> = s.modules.iter().collect();
    modules.sort_by_key(|m| m.name);
    family(
        &mut o,
        "pulse_agent_module_enabled",
        "gauge",
        "Whether a Pulse Unified Agent module is configured to run (1 = enabled, 0 = disabled)",
    );
    for m in &modules {
        let _ = writeln!(
            o,
            "pulse_agent_module_enabled{{module=\"{}\"}} {}",
            m.name,
            b(m.enabled)
        );
    }
    family(
        &mut o,
        "pulse_agent_module_ready",
        "gauge",
        "Whether a configured Pulse Unified Agent module initialized successfully (1 = ready, 0 = not ready)",
    );
    for m in &modules {
        let ready = m.enabled && m.state == ModuleState::Running;
        let _ = writeln!(
            o,
            "pulse_agent_module_ready{{module=\"{}\"}} {}",
            m.name,
            b(ready)
        );
    }
    let d = s.delivery;
    let streams: Vec<(&str, &DeliveryState)> = std::iter::once(("host", d))
        .chain(s.docker_delivery.map(|dd| ("docker", dd)))
        .filter(|(_, d)| d.configured)
        .collect();
    let dest =
        |module: &str| format!("destination=\"primary\",module=\"{module}\",role=\"primary\"");
    if !streams.is_empty() {
        family(
            &mut o,
            "pulse_agent_destination_configured",
            "gauge",
            "Configured Pulse report destinations by module and authority role.",
        );
        for (m, _) in &streams {
            let _ = writeln!(o, "pulse_agent_destination_configured{{{}}} 1", dest(m));
        }
    }
    if streams.iter().any(|(_, d)| d.last_ok.is_some()) {
        family(
            &mut o,
            "pulse_agent_destination_delivery_up",
            "gauge",
            "Whether the most recent report delivery to a Pulse destination succeeded.",
        );
        for (m, d) in &streams {
            if let Some(ok) = d.last_ok {
                let _ = writeln!(
                    o,
                    "pulse_agent_destination_delivery_up{{{}}} {}",
                    dest(m),
                    b(ok)
                );
            }
        }
    }
    if let Some(n) = s.docker_containers {
        family(
            &mut o,
            "pulse_agent_docker_containers",
            "gauge",
            "Containers in the last docker report.",
        );
        let _ = writeln!(o, "pulse_agent_docker_containers {n}");
    }

    family(
        &mut o,
        "pulse_agent_collector_duration_seconds",
        "gauge",
        "How long each host collector took in the last cycle.",
    );
    for src in s.sources {
        let _ = writeln!(
            o,
            "pulse_agent_collector_duration_seconds{{collector=\"{}\"}} {}",
            src.name,
            secs(src.duration)
        );
    }
    family(
        &mut o,
        "pulse_agent_collector_success",
        "gauge",
        "Whether each host collector produced data in the last cycle (0 when its source is absent or failed).",
    );
    for src in s.sources {
        let _ = writeln!(
            o,
            "pulse_agent_collector_success{{collector=\"{}\"}} {}",
            src.name,
            b(src.outcome == Outcome::Ok)
        );
    }
    family(
        &mut o,
        "pulse_agent_reports_built_total",
        "counter",
        "Host reports built since start.",
    );
    let _ = writeln!(o, "pulse_agent_reports_built_total {}", s.reports_built);
    if let Some(t) = s.last_report {
        family(
            &mut o,
            "pulse_agent_last_report_timestamp_seconds",
            "gauge",
            "When the last host report was built (Unix time).",
        );
        let _ = writeln!(
            o,
            "pulse_agent_last_report_timestamp_seconds {}",
            secs(t.duration_since(UNIX_EPOCH).unwrap_or_default())
        );
    }
    if d.configured {
        family(
            &mut o,
            "pulse_agent_reports_delivered_total",
            "counter",
            "Host reports the server accepted since start.",
        );
        let _ = writeln!(o, "pulse_agent_reports_delivered_total {}", d.delivered);
        family(
            &mut o,
            "pulse_agent_delivery_failures_total",
            "counter",
            "Delivery attempts that failed since start.",
        );
        let _ = writeln!(o, "pulse_agent_delivery_failures_total {}", d.failed);
        family(
            &mut o,
            "pulse_agent_reports_dropped_total",
            "counter",
            "Host reports given up on since start (spool full, or refused by the server).",
        );
        let _ = writeln!(o, "pulse_agent_reports_dropped_total {}", d.dropped);
        family(
            &mut o,
            "pulse_agent_spool_reports",
            "gauge",
            "Host reports waiting in the spool to be delivered.",
        );
        let _ = writeln!(o, "pulse_agent_spool_reports {}", d.spooled);
    }
    if !streams.is_empty() {
        family(
            &mut o,
            "pulse_agent_spool_dropped_total",
            "counter",
            "Reports dropped since start because the spool was full (the oldest go first).",
        );
        for (m, d) in &streams {
            let _ = writeln!(
                o,
                "pulse_agent_spool_dropped_total{{module=\"{m}\"}} {}",
                d.spool_dropped
            );
        }
    }
    render_update(&mut o, s.update);
    o
}

/// The `pulse_agent_update_*` families.
fn render_update(o: &mut String, u: &crate::update::Status) {
    family(
        o,
        "pulse_agent_update_state",
        "gauge",
        "The self-updater's state (1 for the current one).",
    );
    for st in crate::update::State::ALL {
        let _ = writeln!(
            o,
            "pulse_agent_update_state{{state=\"{}\"}} {}",
            st.as_str(),
            b(st == u.state)
        );
    }
    if let Some(v) = &u.available {
        family(
            o,
            "pulse_agent_update_available",
            "gauge",
            "A newer version the release channel offers.",
        );
        let _ = writeln!(
            o,
            "pulse_agent_update_available{{version=\"{}\"}} 1",
            escape_label(v)
        );
    }
    for (name, help, v) in [
        ("checks", "Update checks since start.", u.checks),
        (
            "failures",
            "Update checks or installs that failed since start.",
            u.failures,
        ),
        ("installs", "Versions installed since start.", u.installs),
        (
            "rollbacks",
            "Versions rolled back (in this run's start-up).",
            u.rollbacks,
        ),
    ] {
        let name = format!("pulse_agent_update_{name}_total");
        family(o, &name, "counter", help);
        let _ = writeln!(o, "{name} {v}");
    }
    for (name, help, t) in [
        (
            "last_check",
            "When the release channel was last checked.",
            u.last_checked,
        ),
        (
            "last_success",
            "When a version was last installed.",
            u.last_success,
        ),
    ] {
        if let Some(t) = t {
            let name = format!("pulse_agent_update_{name}_timestamp_seconds");
            family(o, &name, "gauge", help);
            let at = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let _ = writeln!(o, "{name} {}", at.as_secs());
        }
    }
}

/// The `process_*` families, read at scrape time (syscalls and /proc/self).
pub fn process(start: SystemTime) -> String {
    let mut o = String::with_capacity(768);
    let p = crate::sys::process_stats();
    family(
        &mut o,
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
    );
    let _ = writeln!(
        o,
        "process_cpu_seconds_total {}",
        secs(crate::sys::process_cpu_time())
    );
    if let Some((vsz, rss)) = p.memory {
        family(
            &mut o,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        let _ = writeln!(o, "process_resident_memory_bytes {rss}");
        family(
            &mut o,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
        );
        let _ = writeln!(o, "process_virtual_memory_bytes {vsz}");
    }
    if let Some(n) = p.max_fds {
        family(
            &mut o,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
        );
        let _ = writeln!(o, "process_max_fds {n}");
    }
    family(
        &mut o,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
    );
    let _ = writeln!(
        o,
        "process_start_time_seconds {}",
        secs(start.duration_since(UNIX_EPOCH).unwrap_or_default())
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_families_and_labels() {
        let at = UNIX_EPOCH;
        let m = |name, enabled, state| Module {
            name,
            enabled,
            state,
            last_error: None,
            updated_at: at,
        };
        let modules = [
            m("host", true, ModuleState::Running),
            m("docker", false, ModuleState::Disabled),
            m("kubernetes", false, ModuleState::Disabled),
        ];
        let d = DeliveryState {
            configured: true,
            ..DeliveryState::default()
        };
        let sources = [SourceStatus {
            name: "memory",
            outcome: Outcome::Ok,
            duration: Duration::from_micros(42),
            warnings: vec![],
        }];
        let s = State {
            version: "v0.1.0",
            modules: &modules,
            sources: &sources,
            delivery: &d,
            docker_delivery: None,
            docker_containers: None,
            reports_built: 3,
            last_report: None,
            update: &crate::update::Status::default(),
        };
        let page = render(&s);
        assert!(page.contains("pulse_agent_info{docker_enabled=\"false\",host_enabled=\"true\",kubernetes_enabled=\"false\",version=\"v0.1.0\"} 1\n"));
        assert!(page.contains(
            "# HELP pulse_agent_up Whether the Pulse agent is running (1 = up, 0 = down)\n"
        ));
        assert!(page.contains("pulse_agent_module_ready{module=\"docker\"} 0\npulse_agent_module_ready{module=\"host\"} 1\n"));
        assert!(page.contains("pulse_agent_destination_configured{destination=\"primary\",module=\"host\",role=\"primary\"} 1\n"));
        assert!(
            !page.contains("pulse_agent_destination_delivery_up"),
            "absent before the first attempt"
        );
        assert!(
            page.contains(
                "pulse_agent_collector_duration_seconds{collector=\"memory\"} 0.000042\n"
            )
        );
        let d2 = DeliveryState {
            last_ok: Some(false),
            ..d.clone()
        };
        let page = render(&State { delivery: &d2, ..s });
        assert!(page.contains("pulse_agent_destination_delivery_up{destination=\"primary\",module=\"host\",role=\"primary\"} 0\n"));
        let d3 = DeliveryState {
            spool_dropped: 7,
            ..d.clone()
        };
        let page = render(&State { delivery: &d3, ..s });
        assert!(page.contains("pulse_agent_spool_dropped_total{module=\"host\"} 7\n"));
        // Every sample line belongs to a family declared just before it.
        let mut declared = std::collections::HashSet::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{line}");
            }
        }
        assert!(process(UNIX_EPOCH).contains("process_cpu_seconds_total "));
    }

    #[test]
    fn update_families_show_the_state_an_available_version_and_times() {
        let u = crate::update::Status {
            state: crate::update::State::Error,
            auto_update: true,
            available: Some("1.2.3".into()),
            last_checked: Some(std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            checks: 4,
            failures: 1,
            ..crate::update::Status::default()
        };
        let mut o = String::new();
        render_update(&mut o, &u);
        for line in [
            "pulse_agent_update_state{state=\"error\"} 1",
            "pulse_agent_update_state{state=\"idle\"} 0",
            "pulse_agent_update_available{version=\"1.2.3\"} 1",
            "pulse_agent_update_checks_total 4",
            "pulse_agent_update_failures_total 1",
            "pulse_agent_update_last_check_timestamp_seconds 1800000000",
        ] {
            assert!(o.lines().any(|l| l == line), "{line} not in\n{o}");
        }
        assert!(!o.contains("last_success"), "no install, no time: {o}");
    }
}
