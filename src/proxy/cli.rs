//! The `pulse-sensor-proxy` command line. The stock proxy's commands keep
//! their names and outputs (`version`, `keys`, `config validate`, `config
//! set-allowed-nodes`); ours add `keys rotate`, `audit verify`, `sensors`
//! (the nodes' forced command) and `call` (one request to the socket, in
//! place of socat or python3 in scripts).
//!
//! Exit status: 0 ok, 1 runtime failure, 2 usage or configuration error.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lexopt::prelude::*;
use serde_json::{Map, Value};

use super::config::Config;
use crate::root::Root;

const USAGE: &str = "\
Usage: pulse-sensor-proxy [--config FILE] [--root DIR]
       pulse-sensor-proxy COMMAND [ARGS]

Runs the daemon when no command is given.

Commands:
  version                        print the version
  keys                           print the proxy's public key
  keys install [--identity FILE] [--node NODE]...
                                 install the key on every node
  keys rotate [--dry-run | --rollback] [--identity FILE] [--node NODE]...
                                 make a new key, install it on every node,
                                 check it, then switch (or switch back)
  keys cleanup [--identity FILE] [--node NODE]...
                                 do what request_cleanup asked: remove the
                                 proxy's keys from the nodes
  config validate [--config FILE] [--allowed-nodes FILE]
  config set-allowed-nodes [--allowed-nodes FILE] --merge NODE... [--replace]
  audit verify FILE              check an audit log's hash chain
  sensors [--root DIR]           print this host's temperatures as sensors -j
                                 JSON (the nodes' forced command)
  call METHOD [--socket PATH] [--param KEY=VALUE]...
                                 send one request to the daemon, print the reply

Options:
  --config FILE   configuration (default /etc/pulse-sensor-proxy/config.yaml,
                  or $PULSE_SENSOR_PROXY_CONFIG)
  --root DIR      read /etc, /proc and /sys under DIR (tests, chroots)
  -h, --help      this text
  -V, --version   the version

See pulse-sensor-proxy(8).
";

/// A usage error: printed with a pointer to `--help`, exit 2.
struct Usage(String);

impl From<lexopt::Error> for Usage {
    fn from(e: lexopt::Error) -> Usage {
        Usage(e.to_string())
    }
}

fn usage(msg: impl Into<String>) -> Usage {
    Usage(msg.into())
}

pub fn main() -> ExitCode {
    match dispatch(std::env::args_os().skip(1).collect()) {
        Ok(code) => code,
        Err(Usage(m)) => {
            eprintln!("pulse-sensor-proxy: error: {m} (see 'pulse-sensor-proxy --help')");
            ExitCode::from(2)
        }
    }
}

fn fail(code: u8, msg: &str) -> ExitCode {
    eprintln!("pulse-sensor-proxy: error: {msg}");
    ExitCode::from(code)
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// Options common to several commands.
#[derive(Default)]
struct Opts {
    config: Option<PathBuf>,
    root: Option<PathBuf>,
    allowed_nodes: Option<PathBuf>,
    socket: Option<PathBuf>,
    identity: Option<PathBuf>,
    nodes: Vec<String>,
    merge: Vec<String>,
    params: Vec<(String, String)>,
    replace: bool,
    dry_run: bool,
    rollback: bool,
    help: bool,
    version: bool,
    words: Vec<String>,
}

fn parse(argv: Vec<OsString>) -> Result<Opts, Usage> {
    let mut o = Opts::default();
    let mut p = lexopt::Parser::from_args(argv);
    while let Some(arg) = p.next()? {
        match arg {
            Long("config") => o.config = Some(p.value()?.into()),
            Long("root") => o.root = Some(p.value()?.into()),
            Long("allowed-nodes") => o.allowed_nodes = Some(p.value()?.into()),
            Long("socket") => o.socket = Some(p.value()?.into()),
            Long("identity") => o.identity = Some(p.value()?.into()),
            Long("node") => o.nodes.push(p.value()?.string()?),
            Long("merge") => o.merge.push(p.value()?.string()?),
            Long("param") => {
                let kv = p.value()?.string()?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| usage(format!("--param {kv}: expected KEY=VALUE")))?;
                o.params.push((k.to_string(), v.to_string()));
            }
            Long("replace") => o.replace = true,
            Long("dry-run") => o.dry_run = true,
            Long("rollback") => o.rollback = true,
            Short('h') | Long("help") => o.help = true,
            Short('V') | Long("version") => o.version = true,
            Value(w) => o.words.push(w.string()?),
            _ => return Err(arg.unexpected().into()),
        }
    }
    Ok(o)
}

fn dispatch(argv: Vec<OsString>) -> Result<ExitCode, Usage> {
    let o = parse(argv)?;
    if o.help {
        print!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    let words: Vec<&str> = o.words.iter().map(String::as_str).collect();
    let root = || match &o.root {
        Some(d) => Root::new(d).map_err(|e| usage(format!("--root {}: {e}", d.display()))),
        None => Ok(Root::host()),
    };
    match words.as_slice() {
        [] if o.version => version(),
        [] => daemon(&o, root()?),
        ["version"] => version(),
        ["keys"] => keys(&o),
        ["keys", action @ ("install" | "rotate" | "cleanup")] => keys_admin(&o, root()?, action),
        ["config", "validate"] => Ok(super::config::validate_command(
            o.config.as_deref(),
            o.allowed_nodes.as_deref(),
            &env,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )),
        ["config", "set-allowed-nodes"] => Ok(super::config::set_allowed_nodes_command(
            o.allowed_nodes.as_deref(),
            &o.merge,
            o.replace,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )),
        ["audit", "verify", file] => Ok(super::audit::verify_command(file.as_ref())),
        ["sensors"] => Ok(super::sensors::command(&root()?)),
        ["call", method] => call(&o, method),
        _ => Err(usage(format!("unknown command {:?}", words.join(" ")))),
    }
}

fn version() -> Result<ExitCode, Usage> {
    println!("pulse-sensor-proxy {}", super::version());
    Ok(ExitCode::SUCCESS)
}

fn load(o: &Opts) -> Result<Config, ExitCode> {
    Config::load(o.config.as_deref(), &env).map_err(|e| fail(2, &e.to_string()))
}

fn daemon(o: &Opts, root: Root) -> Result<ExitCode, Usage> {
    let cfg = match load(o) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if let Err(e) = crate::logging::init_as("pulse-sensor-proxy", cfg.log_level, None) {
        return Ok(fail(1, &format!("logging: {e}")));
    }
    Ok(match super::server::run(cfg, root) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &e.to_string()),
    })
}

fn keys(o: &Opts) -> Result<ExitCode, Usage> {
    let cfg = match load(o) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let path = cfg.ssh_dir.join("id_ed25519.pub");
    Ok(match std::fs::read_to_string(&path) {
        Ok(k) => {
            let k = k.trim();
            println!("Proxy Public Key: {k}");
            println!("Sensors Public Key: {k}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, &format!("{}: {e}", path.display())),
    })
}

/// `keys install`, `keys rotate` and `keys cleanup`.
fn keys_admin(o: &Opts, root: Root, action: &str) -> Result<ExitCode, Usage> {
    use super::rotate::{self, Mode, Setup};
    if o.dry_run && o.rollback {
        return Err(usage("--dry-run and --rollback go separately"));
    }
    if let Some(bad) = o.nodes.iter().find(|n| !super::nodes::valid_name(n)) {
        return Err(usage(format!("--node {bad:?}: not a node name")));
    }
    let cfg = match load(o) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if let Err(e) = crate::logging::init_as("pulse-sensor-proxy", cfg.log_level, None) {
        return Ok(fail(1, &format!("logging: {e}")));
    }
    let setup = Setup {
        cfg: &cfg,
        root: &root,
        identity: o.identity.clone(),
        nodes: (!o.nodes.is_empty()).then(|| o.nodes.clone()),
    };
    let mut out = std::io::stdout();
    let done = match action {
        "install" => rotate::install(&setup, &mut out),
        "cleanup" => rotate::cleanup(&setup, &mut out),
        _ => {
            let mode = if o.rollback {
                Mode::Rollback
            } else {
                Mode::Rotate
            };
            rotate::rotate(&setup, mode, o.dry_run, &mut out)
        }
    };
    Ok(match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &e),
    })
}

/// `call METHOD`: one request, the reply printed as it came; exit 0 when
/// it says `"success": true`.
fn call(o: &Opts, method: &str) -> Result<ExitCode, Usage> {
    let socket = match (&o.socket, env("PULSE_SENSOR_PROXY_SOCKET")) {
        (Some(s), _) => s.clone(),
        (None, Some(s)) if !s.is_empty() => s.into(),
        _ => PathBuf::from("/run/pulse-sensor-proxy/pulse-sensor-proxy.sock"),
    };
    let params: Map<String, Value> = o
        .params
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut line = serde_json::to_vec(&serde_json::json!({
        "correlation_id": super::protocol::new_uuid(),
        "method": method,
        "params": params,
    }))
    .expect("invariant: a Value encodes");
    line.push(b'\n');
    let exchange = || -> std::io::Result<Vec<u8>> {
        let mut s = UnixStream::connect(&socket)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        // A refusal (unauthorized, rate limit) can come before the request
        // is read, and the daemon may have stopped reading: the reply is
        // still there to read after a failed write.
        let sent = s.write_all(&line);
        let _ = s.shutdown(std::net::Shutdown::Write);
        // One line; the daemon may hold the connection open a while
        // after it (the penalty), so the newline ends the wait, not EOF.
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        while !reply.ends_with(b"\n") && reply.len() < 2 << 20 {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                Err(e) if reply.is_empty() => return Err(sent.err().unwrap_or(e)),
                Err(_) => break,
            }
        }
        match sent {
            Err(e) if reply.is_empty() => Err(e),
            _ => Ok(reply),
        }
    };
    Ok(match exchange() {
        Ok(reply) => {
            let _ = std::io::stdout().write_all(&reply);
            let ok = serde_json::from_slice::<Value>(&reply)
                .is_ok_and(|v| v.get("success") == Some(&Value::Bool(true)));
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => fail(1, &format!("{}: {e}", socket.display())),
    })
}
