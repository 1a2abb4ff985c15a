//! Command line and environment → [`Args`] ("what was typed").
//!
//! One table, [`FLAGS`], defines every flag once: its name, type, environment
//! variable, and help text. It drives parsing, `--help`, and the test that
//! checks `man/pulse-agent.8`. The syntax is the stock agent's (Go's `flag`
//! package), so existing systemd units and install commands keep working:
//! `-url x`, `--url x`, `-url=x`, `--url=x`; booleans as `--insecure` or
//! `--insecure=false` (never `--insecure false`). Environment variables give
//! defaults and flags win; list flags (`--tag`, ...) are the environment's
//! comma-separated items followed by the flags' items.
//!
//! This module only collects values and rejects what cannot be parsed; what
//! the values mean is checked in `config.rs`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::time::Duration;

use crate::config::Secret;

/// The type of a flag's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Str,
    /// A string that is never shown: held in a [`Secret`], so no `Debug` of
    /// [`Args`], a [`Setting`] or a [`Value`] can print it.
    Secret,
    /// Go duration syntax: `30s`, `1m30s`, `2h`, `1.5m`.
    Duration,
    Int,
    /// Repeatable; merged with a comma-separated environment variable.
    List,
}

/// Where the flag is listed in `--help` and the man page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    Server,
    Identity,
    Collection,
    Modules,
    Local,
    Compatibility,
    General,
}

impl Section {
    pub fn title(self) -> &'static str {
        match self {
            Section::Server => "Pulse server",
            Section::Identity => "Identity",
            Section::Collection => "Collection",
            Section::Modules => "Modules",
            Section::Local => "Local listener and logging",
            Section::Compatibility => "Accepted for compatibility with the stock agent",
            Section::General => "General",
        }
    }
}

#[derive(Debug)]
pub struct Flag {
    pub name: &'static str,
    pub kind: Kind,
    /// Environment variables that set the default, first one wins.
    pub env: &'static [&'static str],
    /// Placeholder for the value in help (`URL`, `FILE`, ...); empty for booleans.
    pub value: &'static str,
    pub section: Section,
    pub help: &'static str,
}

const fn flag(
    name: &'static str,
    kind: Kind,
    env: &'static [&'static str],
    value: &'static str,
    section: Section,
    help: &'static str,
) -> Flag {
    Flag {
        name,
        kind,
        env,
        value,
        section,
        help,
    }
}

use Kind::*;
use Section::*;

/// Every flag of `pulse-agent`, once.
#[rustfmt::skip]
pub static FLAGS: &[Flag] = &[
    flag("url", Str, &["PULSE_URL"], "URL", Server,
        "Pulse server base URL, e.g. https://pulse.example:7655; needs a token. Without it the agent runs standalone and sends nothing."),
    flag("token", Secret, &[], "TOKEN", Server,
        "API token. Visible to other users in the process list: prefer --token-file."),
    flag("token-file", Str, &[], "FILE", Server,
        "File whose trimmed content is the API token."),
    flag("insecure", Bool, &["PULSE_INSECURE_SKIP_VERIFY"], "", Server,
        "Do not verify the server's TLS certificate."),
    flag("allow-plaintext-http", Bool, &["PULSE_AGENT_ALLOW_PLAINTEXT_HTTP"], "", Server,
        "Allow http:// to a server that is not on this machine or a local network."),
    flag("cacert", Str, &["PULSE_CACERT"], "FILE", Server,
        "PEM bundle of CA certificates to trust besides the built-in roots."),
    flag("server-fingerprint", Str, &["PULSE_SERVER_FINGERPRINT"], "SHA256", Server,
        "Trust exactly the server certificate with this SHA-256 fingerprint (64 hex digits, colons allowed)."),
    flag("enroll", Bool, &[], "", Server,
        "Exchange the bootstrap token for a runtime token at start."),
    flag("spool-reports", Int, &["PULSE_SPOOL_REPORTS"], "N", Server,
        "Unsent reports kept on disk while the server cannot be reached, oldest dropped first (default 60; 0 keeps none)."),
    flag("hostname", Str, &["PULSE_HOSTNAME"], "NAME", Identity,
        "Report this hostname instead of the system's."),
    flag("agent-id", Str, &["PULSE_AGENT_ID"], "ID", Identity,
        "Agent ID to report (default: from the agent-id file, else the machine ID)."),
    flag("agent-id-file", Str, &["PULSE_AGENT_ID_FILE"], "FILE", Identity,
        "File that stores the agent ID (default: STATE-DIR/agent-id)."),
    flag("state-dir", Str, &["PULSE_STATE_DIR"], "DIR", Identity,
        "Directory for the agent's state (default: /var/lib/pulse-agent)."),
    flag("report-ip", Str, &["PULSE_REPORT_IP"], "IP", Identity,
        "IP address to report for this host (for hosts with several networks)."),
    flag("tag", List, &["PULSE_TAGS"], "TAG", Identity,
        "Tag to attach to this host; repeatable."),
    flag("interval", Duration, &["PULSE_INTERVAL"], "DURATION", Collection,
        "Time between reports, Go syntax (30s, 1m, 1m30s). Default 30s."),
    flag("disk-exclude", List, &["PULSE_DISK_EXCLUDE"], "PATTERN", Collection,
        "Leave out filesystems and disks matching PATTERN (*text*, text*, *text or exact); repeatable."),
    flag("disk-include", List, &["PULSE_DISK_INCLUDE"], "PATTERN", Collection,
        "Report filesystems matching PATTERN even if the automatic filter would drop them; repeatable."),
    flag("once", Bool, &[], "", Collection,
        "Collect once, print the host report (and the docker report) as JSON on standard output, and exit."),
    flag("root", Str, &[], "DIR", Collection,
        "Read the host's /proc, /sys, /etc and /run below DIR (e.g. /host in a container, or a captured host); DIR must hold proc/."),
    flag("smartctl", Str, &["PULSE_SMARTCTL_PATH"], "PATH", Collection,
        "smartctl to run for disk health, an absolute path (default: smartctl from PATH). Set, it is reported as a privilege helper."),
    flag("smart-interval", Duration, &["PULSE_SMART_INTERVAL"], "DURATION", Collection,
        "Time between SMART refreshes; reports carry the latest (default 5m; 0 turns SMART off)."),
    flag("smart-max-age", Duration, &["PULSE_SMART_MAX_AGE"], "DURATION", Collection,
        "A disk idle since its last SMART probe is probed again only after this long, so idle disks can spin down (default 6h)."),
    flag("enable-host", Bool, &["PULSE_ENABLE_HOST"], "", Modules,
        "Report this host (default true)."),
    flag("enable-docker", Bool, &["PULSE_ENABLE_DOCKER"], "", Modules,
        "Report Docker or Podman containers (default: when a container engine socket answers)."),
    flag("docker-runtime", Str, &["PULSE_DOCKER_RUNTIME"], "RUNTIME", Modules,
        "Container runtime: auto, docker or podman."),
    flag("docker-socket", Str, &["PULSE_DOCKER_SOCKET"], "PATH", Modules,
        "The Docker or Podman API socket (PATH or unix://PATH); default: DOCKER_HOST, CONTAINER_HOST, PODMAN_HOST, then the usual sockets."),
    flag("disable-docker-update-checks", Bool, &["PULSE_DISABLE_DOCKER_UPDATE_CHECKS"], "", Modules,
        "Do not check registries for newer images (this agent never does)."),
    flag("disable-registry-credentials", Bool, &["PULSE_DISABLE_REGISTRY_CREDENTIALS"], "", Modules,
        "Do not read registry credentials (this agent never does)."),
    flag("enable-proxmox", Bool, &["PULSE_ENABLE_PROXMOX"], "", Modules,
        "Report the Proxmox VE cluster peers' temperatures (clusterSensors), asked from the local pulse-sensor-proxy; no SSH key here. No Proxmox API token is created."),
    flag("sensor-proxy-socket", Str, &["PULSE_SENSOR_PROXY_SOCKET"], "PATH", Modules,
        "The pulse-sensor-proxy socket for --enable-proxmox (default /run/pulse-sensor-proxy/pulse-sensor-proxy.sock, else /mnt/pulse-proxy/pulse-sensor-proxy.sock in a container)."),
    flag("disable-ceph", Bool, &["PULSE_DISABLE_CEPH"], "", Modules,
        "Do not poll Ceph status."),
    flag("disable-auto-update", Bool, &["PULSE_DISABLE_AUTO_UPDATE"], "", Modules,
        "Never update this binary (pulse-agent update still works)."),
    flag("update-url", Str, &["PULSE_UPDATE_URL"], "URL", Modules,
        "This agent's signed release channel (https; http only where --url could be). Without it the agent never updates itself."),
    flag("update-key-file", Str, &["PULSE_UPDATE_KEY_FILE"], "FILE", Modules,
        "Trusted release keys besides the built-in ones, one base64 Ed25519 public key per line; used only when owned by root and writable by nobody else (default /etc/pulse-agent/update-keys)."),
    flag("check", Bool, &[], "", Modules,
        "With pulse-agent update: only say whether a newer version is available; change nothing."),
    flag("health-addr", Str, &["PULSE_HEALTH_ADDR"], "ADDR", Local,
        "Address of the local health and metrics listener: HOST:PORT (default 127.0.0.1:9191), :PORT for every IPv4 address (0.0.0.0:PORT; [::]:PORT for IPv6), or off, none, disabled or empty (--health-addr=) for no listener."),
    flag("log-level", Str, &["LOG_LEVEL"], "LEVEL", Local,
        "trace, debug, info, warn, error or disabled (default info)."),
    flag("log-file", Str, &["PULSE_LOG_FILE"], "FILE", Local,
        "Also write logs to FILE (created mode 0600), which never grows past 1 MiB (one older file is kept as FILE.1)."),
    flag("enable-commands", Bool, &["PULSE_ENABLE_COMMANDS"], "", Compatibility,
        "Ignored: this agent is read-only and never runs commands from the server."),
    flag("disable-commands", Bool, &["PULSE_DISABLE_COMMANDS"], "", Compatibility,
        "Ignored: commands are always off."),
    flag("deploy-ssh-user", Str, &["PULSE_DEPLOY_SSH_USER"], "USER", Compatibility,
        "Ignored: used only by the stock agent's command channel."),
    flag("observers-file", Str, &["PULSE_OBSERVERS_FILE"], "FILE", Compatibility,
        "Not supported: reports go to --url only (a warning is logged)."),
    flag("custom-sensors-file", Str, &["PULSE_CUSTOM_SENSORS_FILE"], "FILE", Compatibility,
        "Not supported: custom sensors are not collected (a warning is logged)."),
    flag("proxmox-type", Str, &["PULSE_PROXMOX_TYPE"], "TYPE", Compatibility,
        "pve, pbs or auto; checked, otherwise unused."),
    flag("enable-kubernetes", Bool, &["PULSE_ENABLE_KUBERNETES"], "", Compatibility,
        "Refused: this agent has no Kubernetes module."),
    flag("kubeconfig", Str, &["PULSE_KUBECONFIG"], "FILE", Compatibility,
        "Refused: Kubernetes only."),
    flag("kube-context", Str, &["PULSE_KUBE_CONTEXT"], "NAME", Compatibility,
        "Refused: Kubernetes only."),
    flag("kube-include-all-pods", Bool, &[ "PULSE_KUBE_INCLUDE_ALL_PODS", "PULSE_KUBE_INCLUDE_ALL_POD_FILES", ], "", Compatibility,
        "Refused: Kubernetes only."),
    flag("kube-include-all-deployments", Bool, &["PULSE_KUBE_INCLUDE_ALL_DEPLOYMENTS"], "", Compatibility,
        "Refused: Kubernetes only."),
    flag("kube-max-pods", Int, &["PULSE_KUBE_MAX_PODS"], "N", Compatibility,
        "Refused: Kubernetes only."),
    flag("kube-include-namespace", List, &["PULSE_KUBE_INCLUDE_NAMESPACES"], "NS", Compatibility,
        "Refused: Kubernetes only."),
    flag("kube-exclude-namespace", List, &["PULSE_KUBE_EXCLUDE_NAMESPACES"], "NS", Compatibility,
        "Refused: Kubernetes only."),
    flag("self-test", Bool, &[], "", General,
        "Load the configuration, log \"Self-test passed\" and exit 0."),
    flag("version", Bool, &[], "", General,
        "Print the version and exit."),
    flag("help", Bool, &[], "", General,
        "Print this help and exit (also -h)."),
];

/// Looks a flag up by name.
pub fn find(name: &str) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.name == name)
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env(&'static str),
}

/// A typed value. Its `Debug` never shows a secret: [`Kind::Secret`] values
/// are held in a [`Secret`], and the password of a `scheme://user:pass@host`
/// string (refused as `--url`, but typed all the same) is redacted.
#[derive(Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Str(String),
    Secret(Secret),
    Duration(Duration),
    Int(i64),
    List(Vec<String>),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => f.debug_tuple("Bool").field(b).finish(),
            Value::Str(s) => f.debug_tuple("Str").field(&redact_userinfo(s)).finish(),
            Value::Secret(s) => f.debug_tuple("Secret").field(s).finish(),
            Value::Duration(d) => f.debug_tuple("Duration").field(d).finish(),
            Value::Int(i) => f.debug_tuple("Int").field(i).finish(),
            Value::List(v) => f
                .debug_tuple("List")
                .field(&v.iter().map(|s| redact_userinfo(s)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// `scheme://user:pass@host/...` with the user info replaced by `[redacted]`;
/// anything else unchanged. For messages and `Debug` output.
pub fn redact_userinfo(s: &str) -> std::borrow::Cow<'_, str> {
    let Some(i) = s.find("://") else {
        return s.into();
    };
    let authority_start = i + 3;
    let rest = &s[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_len].rfind('@') {
        Some(at) => format!(
            "{}[redacted]{}",
            &s[..authority_start],
            &s[authority_start + at..]
        )
        .into(),
        None => s.into(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub value: Value,
    pub origin: Origin,
}

/// What was typed: every flag or environment variable that was set, by flag
/// name. `Debug` is safe to print: secrets are redacted by [`Value`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Args {
    pub values: BTreeMap<&'static str, Setting>,
    /// Environment values that could not be used (logged once the logger is up).
    pub ignored_env: Vec<String>,
}

impl Args {
    fn get(&self, name: &str) -> Option<&Setting> {
        debug_assert!(find(name).is_some(), "no flag named {name}");
        self.values.get(name)
    }

    pub fn is_set(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn bool(&self, name: &str) -> Option<bool> {
        match self.get(name)?.value {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn flag(&self, name: &str) -> bool {
        self.bool(name).unwrap_or(false)
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        match &self.get(name)?.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value of a [`Kind::Secret`] flag.
    pub fn secret(&self, name: &str) -> Option<&Secret> {
        match &self.get(name)?.value {
            Value::Secret(s) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        match self.get(name)?.value {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }

    pub fn duration(&self, name: &str) -> Option<Duration> {
        match self.get(name)?.value {
            Value::Duration(d) => Some(d),
            _ => None,
        }
    }

    pub fn list(&self, name: &str) -> &[String] {
        match self.get(name).map(|s| &s.value) {
            Some(Value::List(v)) => v,
            _ => &[],
        }
    }

    pub fn origin(&self, name: &str) -> Option<&Origin> {
        self.get(name).map(|s| &s.origin)
    }

    /// The flags given on the command line (not the environment's, which a
    /// child inherits), as `--name=value` words that parse back to the same
    /// values; secrets and the flags named in `skip` are left out.
    pub fn to_flags(&self, skip: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for (name, setting) in &self.values {
            if setting.origin != Origin::Flag || skip.contains(name) {
                continue;
            }
            match &setting.value {
                Value::Secret(_) => {}
                Value::Bool(b) => out.push(format!("--{name}={b}")),
                Value::Str(s) => out.push(format!("--{name}={s}")),
                Value::Int(i) => out.push(format!("--{name}={i}")),
                Value::Duration(d) => out.push(format!("--{name}={}ns", d.as_nanos())),
                Value::List(items) => {
                    out.extend(items.iter().map(|i| format!("--{name}={i}")));
                }
            }
        }
        out
    }
}

/// A command line that cannot be understood. Exit status 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// Parses `args` (without the program name) and the environment (through `env`).
pub fn parse<I>(args: I, env: &dyn Fn(&str) -> Option<String>) -> Result<Args, UsageError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut out = Args::default();
    apply_env(&mut out, env);

    let args = go_style(args.into_iter().map(Into::into).collect())?;
    let mut p = lexopt::Parser::from_args(args);
    let mut flag_lists: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    loop {
        let arg = p.next().map_err(|e| usage(e.to_string()))?;
        let Some(arg) = arg else { break };
        let name = match arg {
            lexopt::Arg::Short('h') => "help",
            lexopt::Arg::Short(c) => return Err(usage(format!("unknown flag '-{c}'"))),
            lexopt::Arg::Long(n) => n,
            lexopt::Arg::Value(v) => {
                return Err(usage(format!(
                    "unexpected argument '{}' (booleans take their value as --flag=false)",
                    v.to_string_lossy()
                )));
            }
        };
        let f = find(name).ok_or_else(|| usage(format!("unknown flag '--{name}'")))?;
        let value = match f.kind {
            Kind::Bool => match p.optional_value() {
                None => Value::Bool(true),
                Some(v) => {
                    let v = v.to_string_lossy();
                    Value::Bool(parse_go_bool(&v).ok_or_else(|| {
                        usage(format!(
                            "invalid value '{v}' for --{}: want true or false",
                            f.name
                        ))
                    })?)
                }
            },
            _ => {
                let v = p
                    .value()
                    .map_err(|_| usage(format!("flag --{} needs a value", f.name)))?;
                let v = v.into_string().map_err(|v| {
                    if f.kind == Kind::Secret {
                        usage(format!("the value of --{} is not UTF-8", f.name))
                    } else {
                        usage(format!("value for --{} is not UTF-8: {v:?}", f.name))
                    }
                })?;
                match f.kind {
                    Kind::List => {
                        flag_lists
                            .entry(f.name)
                            .or_default()
                            .push(v.trim().to_string());
                        continue;
                    }
                    _ => typed(f, &v).map_err(|why| {
                        usage(format!("invalid value '{v}' for --{}: {why}", f.name))
                    })?,
                }
            }
        };
        out.values.insert(
            f.name,
            Setting {
                value,
                origin: Origin::Flag,
            },
        );
    }
    for (name, items) in flag_lists {
        let setting = out.values.entry(name).or_insert(Setting {
            value: Value::List(Vec::new()),
            origin: Origin::Flag,
        });
        if let Value::List(v) = &mut setting.value {
            v.extend(items.into_iter().filter(|s| !s.is_empty()));
        }
        setting.origin = Origin::Flag;
    }
    Ok(out)
}

/// Rewrites Go's single-dash long flags (`-url`, `-insecure=false`) to
/// `--url`, so an unknown one is reported whole rather than as `-u -r -l`.
/// Only arguments in flag position are touched: the word after a value flag
/// given without `=` is its value, even if it starts with a dash (`-1`,
/// `-foo`), unless it is a flag itself ([`is_flag_word`]): then the value
/// was most likely forgotten (`--token-file --once`) and this is an error.
/// Such a value is written `--token-file=--once`.
fn go_style(args: Vec<OsString>) -> Result<Vec<OsString>, UsageError> {
    let mut out = Vec::with_capacity(args.len());
    let mut value_for: Option<&'static str> = None;
    for arg in args {
        let s = arg.to_str();
        if let Some(name) = value_for.take() {
            if let Some(word) = s.filter(|w| is_flag_word(w)) {
                // Only the flag's name: what follows its `=` may be a
                // secret (`--url --token=...`), and errors reach the journal.
                let shown = match word.split_once('=') {
                    Some((flag, _)) => format!("{flag}=..."),
                    None => word.to_string(),
                };
                return Err(usage(format!(
                    "--{name} needs a value, but the next argument is the flag '{shown}' (if that is the value, write --{name}={shown})"
                )));
            }
            out.push(arg);
            continue;
        }
        let Some(s) = s else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            out.push(arg);
            continue;
        }
        let long = match s.strip_prefix("--") {
            Some(rest) => Some(rest),
            None => s.strip_prefix('-').filter(|rest| {
                rest.len() > 1 && rest.starts_with(|c: char| c.is_ascii_alphabetic())
            }),
        };
        let Some(rest) = long else {
            out.push(arg);
            continue;
        };
        let (name, has_value) = match rest.split_once('=') {
            Some((n, _)) => (n, true),
            None => (rest, false),
        };
        value_for = find(name)
            .filter(|f| !has_value && f.kind != Kind::Bool)
            .map(|f| f.name);
        out.push(OsString::from(format!("--{rest}")));
    }
    Ok(out)
}

/// A word that is a flag, not a value: anything that starts with `--`, and
/// `-h` or `-NAME[=...]` for a flag of this agent. Other words that start
/// with one dash are values (`--spool-reports -1`, `--hostname -foo`).
fn is_flag_word(w: &str) -> bool {
    if w.starts_with("--") {
        return true;
    }
    let Some(rest) = w.strip_prefix('-') else {
        return false;
    };
    let name = rest.split_once('=').map_or(rest, |(n, _)| n);
    name == "h" || find(name).is_some()
}

fn apply_env(out: &mut Args, env: &dyn Fn(&str) -> Option<String>) {
    for f in FLAGS {
        // A variable set to nothing (`KEY=` in a unit or env file) is unset.
        let Some((var, raw)) = f.env.iter().find_map(|var| {
            env(var)
                .map(|v| (*var, v.trim().to_string()))
                .filter(|(_, v)| !v.is_empty())
        }) else {
            continue;
        };
        let value = match f.kind {
            // Environment booleans are lenient, like the stock agent: anything
            // but a recognised "true" is false.
            Kind::Bool => Value::Bool(parse_env_bool(&raw)),
            Kind::List => Value::List(split_csv(&raw)),
            _ => match typed(f, &raw) {
                Ok(v) => v,
                Err(why) => {
                    out.ignored_env
                        .push(format!("{var}={raw:?} ignored: {why}"));
                    continue;
                }
            },
        };
        out.values.insert(
            f.name,
            Setting {
                value,
                origin: Origin::Env(var),
            },
        );
    }
}

fn typed(f: &Flag, v: &str) -> Result<Value, String> {
    match f.kind {
        Kind::Str => Ok(Value::Str(v.to_string())),
        Kind::Secret => Ok(Value::Secret(Secret::new(v.to_string()))),
        Kind::Duration => parse_duration(v).map(Value::Duration),
        Kind::Int => v
            .trim()
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| "not a whole number".to_string()),
        Kind::Bool => parse_go_bool(v)
            .map(Value::Bool)
            .ok_or_else(|| "want true or false".into()),
        Kind::List => Ok(Value::List(split_csv(v))),
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The stock agent's environment booleans: `1 true yes y on`, any case.
pub fn parse_env_bool(s: &str) -> bool {
    matches!(
        s.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "y" | "on"
    )
}

fn split_csv(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// Go's `time.ParseDuration`: a sequence of decimal numbers with units
/// `ns us µs ms s m h`, e.g. `300ms`, `1.5h`, `2h45m`; `0` alone is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.starts_with('-') {
        return Err("negative duration".into());
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {s:?} (try {s}s)"))?;
        let (num, tail) = rest.split_at(num_len);
        let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("missing unit in duration {s:?} (try {s}s)")),
            u => return Err(format!("unknown unit {u:?} in duration {s:?}")),
        };
        total += n * scale;
        rest = tail;
    }
    if !total.is_finite() || total > 1e10 {
        return Err(format!("duration {s:?} is too long"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// `--help` text, generated from [`FLAGS`].
pub fn help() -> String {
    let mut out = String::from(
        "pulse-agent: report this host to a Pulse server\n\n\
         Usage: pulse-agent [FLAGS]\n       \
         pulse-agent --once              print this host's report and exit\n\n\
         Flags take one or two dashes and a value as --flag VALUE or --flag=VALUE\n\
         (a value that starts with -- or is a flag, like -once: --flag=VALUE only);\n\
         booleans as --flag or --flag=false. Environment variables in [brackets]\n\
         give defaults; flags win.\n",
    );
    let mut sections: Vec<Section> = FLAGS.iter().map(|f| f.section).collect();
    sections.dedup();
    for section in sections {
        out.push_str(&format!("\n{}:\n", section.title()));
        for f in FLAGS.iter().filter(|f| f.section == section) {
            let head = if f.value.is_empty() {
                format!("  --{}", f.name)
            } else {
                format!("  --{} {}", f.name, f.value)
            };
            out.push_str(&head);
            out.push('\n');
            let mut text = f.help.to_string();
            if !f.env.is_empty() {
                text.push_str(&format!(" [{}]", f.env.join(", ")));
            }
            for line in wrap(&text, 72) {
                out.push_str("        ");
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    out.push_str("\nSee pulse-agent(8) for files, token precedence and exit status.\n");
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() && cur.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn p(args: &[&str]) -> Result<Args, UsageError> {
        parse(args.iter().copied(), &no_env)
    }

    #[test]
    fn go_spellings() {
        for args in [
            &["-url", "https://x"][..],
            &["--url", "https://x"],
            &["-url=https://x"],
            &["--url=https://x"],
        ] {
            assert_eq!(p(args).unwrap().str("url"), Some("https://x"), "{args:?}");
        }
        let a = p(&["-insecure", "--once", "--enroll=false", "-enable-host=0"]).unwrap();
        assert_eq!(a.bool("insecure"), Some(true));
        assert_eq!(a.bool("once"), Some(true));
        assert_eq!(a.bool("enroll"), Some(false));
        assert_eq!(a.bool("enable-host"), Some(false));
    }

    #[test]
    fn errors_are_one_clear_line() {
        let e = p(&["--nope"]).unwrap_err().0;
        assert_eq!(e, "unknown flag '--nope'");
        let e = p(&["-nope"]).unwrap_err().0;
        assert_eq!(e, "unknown flag '--nope'");
        assert!(
            p(&["--insecure", "false"])
                .unwrap_err()
                .0
                .contains("--flag=false")
        );
        assert!(
            p(&["--insecure=maybe"])
                .unwrap_err()
                .0
                .contains("want true or false")
        );
        assert!(p(&["--interval=5"]).unwrap_err().0.contains("missing unit"));
        assert!(p(&["--url"]).unwrap_err().0.contains("needs a value"));
        assert!(p(&["-x"]).unwrap_err().0.contains("'-x'"));
        for e in [p(&["--nope"]), p(&["--interval=x"])] {
            assert!(!e.unwrap_err().0.contains('\n'));
        }
    }

    #[test]
    fn env_defaults_and_flags_win() {
        let env = |k: &str| match k {
            "PULSE_URL" => Some(" https://env ".to_string()),
            "PULSE_INSECURE_SKIP_VERIFY" => Some("yes".to_string()),
            "PULSE_TAGS" => Some("a, b,,c".to_string()),
            "PULSE_INTERVAL" => Some("garbage".to_string()),
            _ => None,
        };
        let a = parse(["--url=https://flag", "--tag", "d", "-tag=e"], &env).unwrap();
        assert_eq!(a.str("url"), Some("https://flag"));
        assert_eq!(a.bool("insecure"), Some(true));
        assert_eq!(
            a.origin("insecure"),
            Some(&Origin::Env("PULSE_INSECURE_SKIP_VERIFY"))
        );
        assert_eq!(a.list("tag"), ["a", "b", "c", "d", "e"]);
        assert_eq!(a.duration("interval"), None);
        assert_eq!(a.ignored_env.len(), 1);
        let a = parse(Vec::<String>::new(), &env).unwrap();
        assert_eq!(a.str("url"), Some("https://env"));
    }

    #[test]
    fn values_that_start_with_a_dash_are_values() {
        let a = p(&["--hostname", "-foo", "-once"]).unwrap();
        assert_eq!(a.str("hostname"), Some("-foo"));
        assert_eq!(a.bool("once"), Some(true));
        let a = p(&["-tag", "-x", "--tag=--y", "-tag=-once"]).unwrap();
        assert_eq!(a.list("tag"), ["-x", "--y", "-once"]);
        let a = p(&["--spool-reports", "-1", "-kube-max-pods", "-5"]).unwrap();
        assert_eq!(a.int("spool-reports"), Some(-1));
        assert_eq!(a.int("kube-max-pods"), Some(-5));
    }

    /// Issue 12: `--token-file --once` took `--once` as the file name.
    #[test]
    fn value_flag_followed_by_a_flag_is_refused() {
        for (args, flag, word) in [
            (&["--token-file", "--once"][..], "--token-file", "--once"),
            (&["-token-file", "-once"], "--token-file", "-once"),
            (&["--token-file", "-once=true"], "--token-file", "-once=..."),
            (&["-url", "--token=S3CRET"], "--url", "--token=..."),
            (
                &["--hostname", "--no-such-flag"],
                "--hostname",
                "--no-such-flag",
            ),
            (&["--tag", "--y"], "--tag", "--y"),
            (&["--interval", "-h"], "--interval", "-h"),
            (&["--log-file", "--"], "--log-file", "--"),
        ] {
            let e = p(args).unwrap_err().0;
            assert!(
                e.starts_with(&format!("{flag} needs a value")),
                "{args:?}: {e}"
            );
            assert!(e.contains(&format!("'{word}'")), "{args:?}: {e}");
            assert!(e.contains(&format!("{flag}={word}")), "{args:?}: {e}");
            assert!(!e.contains('\n'));
            // The value after a flag's `=` is never echoed: it may be the token.
            assert!(!e.contains("S3CRET") && !e.contains("=true"), "{e}");
        }
        let a = p(&["--token-file=--once", "-hostname=-once"]).unwrap();
        assert_eq!(a.str("token-file"), Some("--once"));
        assert_eq!(a.str("hostname"), Some("-once"));
        assert!(!a.is_set("once"));
    }

    #[test]
    fn empty_environment_values_are_unset() {
        let env = |k: &str| match k {
            "PULSE_ENABLE_HOST" | "PULSE_HEALTH_ADDR" | "PULSE_URL" => Some("  ".to_string()),
            _ => None,
        };
        let a = parse(Vec::<String>::new(), &env).unwrap();
        assert!(!a.is_set("enable-host"));
        assert!(!a.is_set("health-addr"));
        assert!(!a.is_set("url"));
    }

    /// Issue 12: `Args`' own `Debug` hid `--token`, but the `Setting` and
    /// `Value` inside it printed it (`{:?}` of `args.values`, of a setting).
    #[test]
    fn debug_of_args_never_shows_the_token() {
        let token = "s3cr3t-value";
        let env = |k: &str| (k == "PULSE_TOKEN").then(|| format!("env-{token}"));
        let url = "https://agent:pa55w0rd@pulse.example/x";
        for args in [
            vec![format!("--token={token}")],
            vec!["--token".into(), token.into()],
            vec![format!("-token={token}"), "--enroll".into()],
            vec!["-token".into(), token.into()],
            vec![],
        ] {
            let mut args = args;
            args.push(format!("--url={url}"));
            args.push(format!("--tag={url}"));
            let a = parse(args.iter().cloned(), &env).unwrap();
            let shown = [
                format!("{a:?}"),
                format!("{a:#?}"),
                format!("{:?}", a.values),
                format!("{:?}", a.values.get("token")),
                format!("{:?}", a.values.get("token").map(|s| &s.value)),
                format!("{:?}", a.values.get("url")),
                format!("{:?}", a.values.get("tag")),
            ];
            for d in shown {
                assert!(!d.contains(token), "{args:?}: {d}");
                assert!(!d.contains("pa55w0rd"), "{args:?}: {d}");
            }
            let d = format!("{a:?}");
            assert!(d.contains("pulse.example/x"), "{d}");
            if args.len() > 2 {
                assert!(d.contains("[redacted]"), "{d}");
                assert_eq!(a.secret("token").map(Secret::expose), Some(token));
            }
        }
    }

    #[test]
    fn userinfo_is_redacted() {
        assert_eq!(
            redact_userinfo("https://u:p@h:1/a@b?c@d"),
            "https://[redacted]@h:1/a@b?c@d"
        );
        assert_eq!(redact_userinfo("https://h/a@b"), "https://h/a@b");
        assert_eq!(redact_userinfo("not a url @ all"), "not a url @ all");
        assert_eq!(redact_userinfo("unix://@x"), "unix://[redacted]@x");
    }

    #[test]
    fn flags_render_back_to_the_same_values_without_secrets() {
        let env = |k: &str| (k == "PULSE_INTERVAL").then(|| "2m".to_string());
        let a = parse(
            [
                "--url=https://p.example",
                "--token=s3cret",
                "-insecure",
                "--tag=a,b",
                "--tag",
                "c",
                "--smart-interval=90s",
                "--spool-reports=7",
                "--once",
            ],
            &env,
        )
        .unwrap();
        let words = a.to_flags(&["once"]);
        assert!(
            !words
                .iter()
                .any(|w| w.contains("s3cret") || w.contains("once"))
        );
        assert!(
            !words.iter().any(|w| w.starts_with("--interval=")),
            "{words:?}"
        );
        let back = parse(words, &no_env).unwrap();
        for f in ["url", "insecure", "tag", "smart-interval", "spool-reports"] {
            assert_eq!(
                back.values.get(f).map(|s| &s.value),
                a.values.get(f).map(|s| &s.value),
                "{f}"
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "5", "-1s", "1x", "s", "1.2.3s", "9999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bools() {
        assert!(parse_env_bool("Yes"));
        assert!(parse_env_bool(" on "));
        assert!(!parse_env_bool("garbage"));
        assert_eq!(parse_go_bool("T"), Some(true));
        assert_eq!(parse_go_bool("yes"), None);
    }

    #[test]
    fn help_lists_every_flag() {
        let h = help();
        for f in FLAGS {
            assert!(h.contains(&format!("--{}", f.name)), "{}", f.name);
            for e in f.env {
                assert!(h.contains(e), "{e}");
            }
        }
    }
}
