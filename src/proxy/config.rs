//! `config.yaml`, `allowed_nodes.yaml` and the `PULSE_SENSOR_PROXY_*`
//! environment (spec §1, §3, §4, §9) -> a validated [`Config`]; plus the
//! `config validate` and `config set-allowed-nodes` subcommands.
//!
//! The stock daemon reads its files with a full YAML library. We read the
//! subset those files actually use, written by hand: mappings of scalars,
//! block lists (`- x`), one-line flow lists (`[a, b]`), lists of mappings
//! (`allowed_peers`), one level of nested mapping (`rate_limit:`,
//! `pulse_control_plane:`), comments, quoted strings, booleans, integers and
//! Go durations. Everything else (anchors, aliases, tags, several documents,
//! block scalars, flow mappings, multi-line values, tabs in indentation) is
//! refused with the file name and line number, never guessed at. Unknown keys
//! are warned about and ignored, like the stock loader ignores them.
//!
//! Nothing here reads a file other than the ones named (config, allow-list),
//! each capped at 1 MiB; the environment comes in as a lookup function so
//! tests inject it.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::caps;
use super::nodes::{self, Cidr};

/// Where the stock installer keeps the configuration.
pub const DEFAULT_DIR: &str = "/etc/pulse-sensor-proxy";
/// `config.yaml` inside [`DEFAULT_DIR`].
pub const CONFIG_FILE: &str = "config.yaml";
/// `allowed_nodes.yaml` inside [`DEFAULT_DIR`].
pub const ALLOWED_NODES_FILE: &str = "allowed_nodes.yaml";
/// `metrics_address: default`.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9127";
/// The control-plane token when `pulse_control_plane.token_file` is unset.
pub const DEFAULT_CONTROL_TOKEN: &str = "/etc/pulse-sensor-proxy/.pulse-control-token";
/// Header of every file the config CLI writes.
pub const MANAGED_HEADER: &str = "# Managed by pulse-sensor-proxy config CLI\n";
/// Second header line of `allowed_nodes.yaml`.
const DO_NOT_EDIT: &str = "# Do not edit manually while service is running\n";

const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_SSH_OUTPUT: usize = 1024 * 1024;
const DEFAULT_RATE_INTERVAL: Duration = Duration::from_millis(500);
const DEFAULT_RATE_BURST: u32 = 10;
const DEFAULT_REFRESH_SECS: u64 = 60;
/// Cap on any file read here: the stock files are a few hundred bytes.
const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Deepest nesting the parser follows (the stock files use three levels).
const MAX_DEPTH: usize = 16;

/// HTTPS mode (spec §12), present only when `http_enabled` is true.
#[derive(Clone, PartialEq, Eq)]
pub struct Http {
    pub listen_addr: String,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// The bearer token; never logged (Debug redacts it).
    pub auth_token: String,
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http")
            .field("listen_addr", &self.listen_addr)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("auth_token", &"<redacted>")
            .finish()
    }
}

/// Control-plane sync (spec §9.3), present only when a URL is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlane {
    pub url: String,
    pub token_file: PathBuf,
    pub refresh_interval: Duration,
    pub insecure_skip_verify: bool,
}

/// The validated configuration of the proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Source subnets for the `from=` clause and HTTPS filtering; bare IPs
    /// become /32 or /128. Empty means "auto-detect" (the daemon does that).
    pub allowed_source_subnets: Vec<Cidr>,
    /// `None` = metrics disabled.
    pub metrics_address: Option<String>,
    pub log_level: log::LevelFilter,
    /// Config + `PULSE_SENSOR_PROXY_ALLOWED_NODES` + `allowed_nodes_file`,
    /// trimmed, de-duplicated case-insensitively (first spelling kept).
    pub allowed_nodes: Vec<String>,
    pub allowed_nodes_file: Option<PathBuf>,
    pub strict_node_validation: bool,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub max_ssh_output_bytes: usize,
    pub require_proxmox_hostkeys: bool,
    /// `allowed_peers`: uid and capability bits ([`caps`]); never 0
    /// (an empty or unknown list means read); duplicate uids OR-ed together.
    pub allowed_peers: Vec<(u32, u8)>,
    pub allow_idmapped_root: bool,
    pub allowed_peer_uids: Vec<u32>,
    pub allowed_peer_gids: Vec<u32>,
    pub allowed_idmap_users: Vec<String>,
    pub rate_interval: Duration,
    pub rate_burst: u32,
    pub http: Option<Http>,
    pub control_plane: Option<ControlPlane>,
    /// `PULSE_SENSOR_PROXY_SOCKET`.
    pub socket: PathBuf,
    /// `PULSE_SENSOR_PROXY_SSH_DIR`.
    pub ssh_dir: PathBuf,
    /// `PULSE_SENSOR_PROXY_AUDIT_LOG`.
    pub audit_log: PathBuf,
    /// `PULSE_SENSOR_PROXY_USER`: who the daemon drops to when started as root.
    pub user: String,
    /// Where `cleanup-request.json` goes (ours: `PULSE_SENSOR_PROXY_WORK_DIR`).
    pub work_dir: PathBuf,
    /// `/etc/pve` (ours: `PULSE_SENSOR_PROXY_PVE_DIR`, for tests).
    pub pve_dir: PathBuf,
    /// `pvecm` and `pvesh` found on `$PATH`, if any.
    pub pvecm: Option<PathBuf>,
    pub pvesh: Option<PathBuf>,
    /// SSH port of the nodes (ours: `ssh_port` key, `PULSE_SENSOR_PROXY_SSH_PORT`).
    pub ssh_port: u16,
    /// `PULSE_SENSOR_PROXY_SUPPRESS_CONTAINER_WARNING`.
    pub suppress_container_warning: bool,
}

/// Why a configuration could not be loaded.
#[derive(Debug)]
pub enum ConfigError {
    /// A named file could not be read.
    Read(PathBuf, io::Error),
    /// The YAML is outside the subset we read, or a value has the wrong type.
    Syntax {
        file: String,
        line: usize,
        msg: String,
    },
    /// The values are well-formed but not usable together.
    Invalid(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read(p, e) => write!(f, "failed to read {}: {e}", p.display()),
            ConfigError::Syntax { file, line, msg } => write!(f, "{file} line {line}: {msg}"),
            ConfigError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------
// The YAML subset.

/// A parsed YAML value with the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    pub value: Yaml,
}

/// The values the subset knows.
#[derive(Debug, Clone, PartialEq)]
pub enum Yaml {
    Null,
    /// Any scalar, as text (its type is decided by the key that reads it).
    Str(String),
    List(Vec<Node>),
    /// Keys in file order, duplicates kept (the reader decides).
    Map(Vec<(String, Node)>),
}

struct Line {
    no: usize,
    indent: usize,
    text: String,
}

struct Parser<'a> {
    file: &'a str,
    lines: Vec<Line>,
    i: usize,
    depth: usize,
}

fn syntax(file: &str, line: usize, msg: impl Into<String>) -> ConfigError {
    ConfigError::Syntax {
        file: file.to_string(),
        line,
        msg: msg.into(),
    }
}

/// Parses `text` (named `file` in errors) as the YAML subset.
pub fn parse_yaml(text: &str, file: &str) -> Result<Node, ConfigError> {
    let lines = split_lines(text, file)?;
    let Some(first) = lines.first() else {
        return Ok(Node {
            line: 1,
            value: Yaml::Null,
        });
    };
    let indent = first.indent;
    let mut p = Parser {
        file,
        lines,
        i: 0,
        depth: 0,
    };
    let node = p.block(indent)?;
    if let Some(l) = p.lines.get(p.i) {
        return Err(syntax(file, l.no, "unexpected indentation"));
    }
    Ok(node)
}

/// Lines with content: indentation measured, comments cut, document and
/// directive markers checked.
fn split_lines(text: &str, file: &str) -> Result<Vec<Line>, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out: Vec<Line> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let no = n + 1;
        let body = raw.trim_start_matches([' ', '\t']);
        let lead = &raw[..raw.len() - body.len()];
        let body = strip_comment(body).trim_end();
        if body.is_empty() {
            continue;
        }
        if lead.contains('\t') {
            return Err(syntax(file, no, "tabs are not allowed in indentation"));
        }
        if lead.is_empty() {
            if body == "---" && out.is_empty() {
                continue; // an explicit start of the one document
            }
            if body.starts_with("---") || body.starts_with("...") {
                return Err(syntax(
                    file,
                    no,
                    "multiple YAML documents are not supported by pulse-sensor-proxy",
                ));
            }
            if body.starts_with('%') {
                return Err(syntax(
                    file,
                    no,
                    "YAML directives are not supported by pulse-sensor-proxy",
                ));
            }
        }
        out.push(Line {
            no,
            indent: lead.len(),
            text: body.to_string(),
        });
    }
    Ok(out)
}

/// Cuts a `#` comment: one at the start or after whitespace, outside quotes.
/// A quote only opens at the start of a scalar (after `: `, `- `, `[`, `,`),
/// so the apostrophe in `it's` is text.
fn strip_comment(s: &str) -> &str {
    let b = s.as_bytes();
    let mut quote: Option<u8> = None;
    let mut prev: Option<u8> = None;
    let mut prev_sig: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match quote {
            Some(b'"') => {
                if c == b'\\' {
                    prev = Some(c);
                    i += 2;
                    continue;
                }
                if c == b'"' {
                    quote = None;
                }
            }
            Some(_) => {
                if c == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    quote = None;
                }
            }
            None => {
                let after_space = matches!(prev, None | Some(b' ' | b'\t'));
                if c == b'#' && after_space {
                    return &s[..i];
                }
                if (c == b'"' || c == b'\'')
                    && matches!(prev_sig, None | Some(b':' | b'-' | b'[' | b','))
                    && (after_space || matches!(prev, Some(b'[' | b',')))
                {
                    quote = Some(c);
                }
                if c != b' ' && c != b'\t' {
                    prev_sig = Some(c);
                }
            }
        }
        prev = Some(c);
        i += 1;
    }
    s
}

fn is_dash(text: &str) -> bool {
    text == "-" || text.starts_with("- ") || text.starts_with("-\t")
}

/// The indicators whose features we refuse, checked where a key or value starts.
fn refuse_start(text: &str) -> Option<&'static str> {
    let c = text.chars().next()?;
    let after = text[c.len_utf8()..].chars().next();
    Some(match c {
        '&' => "YAML anchors are not supported by pulse-sensor-proxy",
        '*' => "YAML aliases are not supported by pulse-sensor-proxy",
        '!' => "YAML tags are not supported by pulse-sensor-proxy",
        '|' | '>' => "YAML block scalars (| and >) are not supported by pulse-sensor-proxy",
        '?' if matches!(after, None | Some(' ' | '\t')) => {
            "YAML complex keys (?) are not supported by pulse-sensor-proxy"
        }
        '@' | '`' => "reserved YAML indicator (@ or `) at the start of a value",
        '{' if text.trim() != "{}" => {
            "YAML flow mappings ({...}) are not supported by pulse-sensor-proxy"
        }
        '<' if text.starts_with("<<") => {
            "YAML merge keys (<<) are not supported by pulse-sensor-proxy"
        }
        _ => return None,
    })
}

/// Splits `key: rest` (rest may be empty). `None` when the line is not a key.
fn split_key(text: &str) -> Option<(String, &str)> {
    let sep = |s: &str| s.is_empty() || s.starts_with([' ', '\t']);
    if text.starts_with(['"', '\'']) {
        let (key, after) = quoted(text).ok()?;
        let after = after.trim_start();
        let rest = after.strip_prefix(':')?;
        return sep(rest).then(|| (key, rest.trim()));
    }
    if text.starts_with(['[', '{']) {
        return None;
    }
    let b = text.as_bytes();
    let pos = (0..b.len()).find(|&i| b[i] == b':' && sep(&text[i + 1..]))?;
    let key = text[..pos].trim_end();
    if key.is_empty() {
        return None;
    }
    Some((key.to_string(), text[pos + 1..].trim()))
}

/// A quoted scalar at the start of `s`: its value and what follows it.
fn quoted(s: &str) -> Result<(String, &str), &'static str> {
    let mut chars = s.char_indices();
    let q = match chars.next() {
        Some((_, c @ ('"' | '\''))) => c,
        _ => return Err("expected a quoted string"),
    };
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        if q == '\'' {
            if c == '\'' {
                if s[i + 1..].starts_with('\'') {
                    chars.next();
                    out.push('\'');
                    continue;
                }
                return Ok((out, &s[i + 1..]));
            }
            out.push(c);
            continue;
        }
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => {
                let Some((_, e)) = chars.next() else {
                    break;
                };
                let hex = |n: usize, chars: &mut std::str::CharIndices<'_>| {
                    let mut v = 0u32;
                    for _ in 0..n {
                        let d = chars.next().and_then(|(_, c)| c.to_digit(16))?;
                        v = v * 16 + d;
                    }
                    char::from_u32(v)
                };
                let ch = match e {
                    '\\' | '"' | '/' | ' ' => Some(e),
                    'n' => Some('\n'),
                    't' => Some('\t'),
                    'r' => Some('\r'),
                    '0' => Some('\0'),
                    'x' => hex(2, &mut chars),
                    'u' => hex(4, &mut chars),
                    'U' => hex(8, &mut chars),
                    _ => None,
                };
                out.push(ch.ok_or("unsupported escape in a double-quoted string")?);
            }
            _ => out.push(c),
        }
    }
    Err("unterminated quoted string (quoted strings must end on the same line)")
}

impl Parser<'_> {
    fn err(&self, line: usize, msg: impl Into<String>) -> ConfigError {
        syntax(self.file, line, msg)
    }

    /// The value that starts at line `self.i`, indented `indent`.
    fn block(&mut self, indent: usize) -> Result<Node, ConfigError> {
        self.depth += 1;
        let (no, text) = {
            let l = &self.lines[self.i];
            (l.no, l.text.clone())
        };
        if self.depth > MAX_DEPTH {
            return Err(self.err(no, "nesting too deep"));
        }
        let node = if is_dash(&text) {
            self.list(indent)?
        } else if let Some(msg) = refuse_start(&text) {
            return Err(self.err(no, msg));
        } else if split_key(&text).is_some() {
            self.map(indent)?
        } else {
            // A lone value (`[a, b]` as a whole document, say).
            self.i += 1;
            let value = self.inline(&text, no)?;
            self.no_deeper(indent)?;
            Node { line: no, value }
        };
        self.depth -= 1;
        Ok(node)
    }

    /// Fails if the next line is indented deeper than `indent`: a value
    /// continued on the next line, which the subset does not read.
    fn no_deeper(&self, indent: usize) -> Result<(), ConfigError> {
        match self.lines.get(self.i) {
            Some(l) if l.indent > indent => Err(self.err(
                l.no,
                "unexpected indentation (values continued on the next line are not supported)",
            )),
            _ => Ok(()),
        }
    }

    fn map(&mut self, indent: usize) -> Result<Node, ConfigError> {
        let start = self.lines[self.i].no;
        let mut pairs = Vec::new();
        while let Some(l) = self.lines.get(self.i) {
            if l.indent < indent {
                break;
            }
            let no = l.no;
            if l.indent > indent {
                return Err(self.err(no, "unexpected indentation"));
            }
            if is_dash(&l.text) {
                return Err(self.err(no, "a list item where `key: value` was expected"));
            }
            if let Some(msg) = refuse_start(&l.text) {
                return Err(self.err(no, msg));
            }
            let Some((key, rest)) = split_key(&l.text) else {
                return Err(self.err(no, "expected `key: value`"));
            };
            let rest = rest.to_string();
            self.i += 1;
            let value = if rest.is_empty() {
                match self.lines.get(self.i) {
                    Some(n) if n.indent > indent => self.block(n.indent)?,
                    // `key:` followed by `- x` at the key's own indentation.
                    Some(n) if n.indent == indent && is_dash(&n.text) => self.list(indent)?,
                    _ => Node {
                        line: no,
                        value: Yaml::Null,
                    },
                }
            } else {
                let value = self.inline(&rest, no)?;
                self.no_deeper(indent)?;
                Node { line: no, value }
            };
            pairs.push((key, value));
        }
        Ok(Node {
            line: start,
            value: Yaml::Map(pairs),
        })
    }

    fn list(&mut self, indent: usize) -> Result<Node, ConfigError> {
        let start = self.lines[self.i].no;
        let mut items = Vec::new();
        while let Some(l) = self.lines.get(self.i) {
            let no = l.no;
            if l.indent > indent {
                return Err(self.err(no, "unexpected indentation"));
            }
            if l.indent < indent || !is_dash(&l.text) {
                break;
            }
            let rest = l.text[1..].trim_start();
            let col = indent + (l.text.len() - rest.len());
            if rest.is_empty() {
                self.i += 1;
                let item = match self.lines.get(self.i) {
                    Some(n) if n.indent > indent => self.block(n.indent)?,
                    _ => Node {
                        line: no,
                        value: Yaml::Null,
                    },
                };
                items.push(item);
            } else if is_dash(rest) {
                return Err(self.err(no, "nested lists on one line (`- - x`) are not supported"));
            } else if refuse_start(rest).is_none() && split_key(rest).is_some() {
                // `- uid: 1000`: a mapping whose keys sit at the column of `uid`.
                let rest = rest.to_string();
                self.lines[self.i] = Line {
                    no,
                    indent: col,
                    text: rest,
                };
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(self.err(no, "nesting too deep"));
                }
                items.push(self.map(col)?);
                self.depth -= 1;
            } else {
                let rest = rest.to_string();
                self.i += 1;
                let value = self.inline(&rest, no)?;
                self.no_deeper(indent)?;
                items.push(Node { line: no, value });
            }
        }
        Ok(Node {
            line: start,
            value: Yaml::List(items),
        })
    }

    /// A value written on the line of its key or dash.
    fn inline(&self, text: &str, no: usize) -> Result<Yaml, ConfigError> {
        if let Some(msg) = refuse_start(text) {
            return Err(self.err(no, msg));
        }
        if text.starts_with('{') {
            return Ok(Yaml::Map(Vec::new())); // `{}`, checked above
        }
        if text.starts_with('[') {
            return self.flow_list(text, no);
        }
        if text.starts_with(['"', '\'']) {
            let (s, after) = quoted(text).map_err(|m| self.err(no, m))?;
            if !after.trim().is_empty() {
                return Err(self.err(no, "unexpected text after a quoted string"));
            }
            return Ok(Yaml::Str(s));
        }
        plain(text).map_err(|m| self.err(no, m))
    }

    fn flow_list(&self, text: &str, no: usize) -> Result<Yaml, ConfigError> {
        let mut items = Vec::new();
        let mut rest = text[1..].trim_start();
        loop {
            if let Some(after) = rest.strip_prefix(']') {
                if !after.trim().is_empty() {
                    return Err(self.err(no, "unexpected text after `]`"));
                }
                return Ok(Yaml::List(items));
            }
            if rest.is_empty() {
                return Err(self.err(
                    no,
                    "a flow list must end on the same line (multi-line `[...]` is not supported)",
                ));
            }
            if rest.starts_with(['[', '{']) {
                return Err(self.err(no, "nested flow collections are not supported"));
            }
            if let Some(msg) = refuse_start(rest) {
                return Err(self.err(no, msg));
            }
            let value = if rest.starts_with(['"', '\'']) {
                let (s, after) = quoted(rest).map_err(|m| self.err(no, m))?;
                rest = after.trim_start();
                Yaml::Str(s)
            } else {
                let end = rest.find([',', ']']).unwrap_or(rest.len());
                let item = rest[..end].trim();
                if item.is_empty() {
                    return Err(self.err(no, "empty entry in a flow list"));
                }
                rest = &rest[end..];
                plain(item).map_err(|m| self.err(no, m))?
            };
            items.push(Node { line: no, value });
            if let Some(after) = rest.strip_prefix(',') {
                rest = after.trim_start();
            } else if !rest.starts_with(']') {
                return Err(self.err(no, "expected `,` or `]` in a flow list"));
            }
        }
    }
}

/// A plain (unquoted) scalar.
fn plain(text: &str) -> Result<Yaml, &'static str> {
    if text.contains(": ") || text.contains(":\t") || text.ends_with(':') {
        return Err("a value containing `: ` must be quoted");
    }
    Ok(match text {
        "~" | "null" | "Null" | "NULL" => Yaml::Null,
        _ => Yaml::Str(text.to_string()),
    })
}

// ---------------------------------------------------------------------------
// Reading typed values out of the tree.

struct Reader<'a> {
    file: &'a str,
}

impl Reader<'_> {
    fn err(&self, n: &Node, msg: String) -> ConfigError {
        syntax(self.file, n.line, msg)
    }

    fn string(&self, key: &str, n: &Node) -> Result<Option<String>, ConfigError> {
        match &n.value {
            Yaml::Null => Ok(None),
            Yaml::Str(s) => Ok(Some(s.clone())),
            _ => Err(self.err(n, format!("`{key}` must be a single value"))),
        }
    }

    fn boolean(&self, key: &str, n: &Node) -> Result<Option<bool>, ConfigError> {
        let Some(s) = self.string(key, n)? else {
            return Ok(None);
        };
        match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" => Ok(Some(true)),
            "false" | "no" | "off" => Ok(Some(false)),
            _ => Err(self.err(n, format!("`{key}` must be true or false, not {s:?}"))),
        }
    }

    fn int(&self, key: &str, n: &Node) -> Result<Option<i64>, ConfigError> {
        let Some(s) = self.string(key, n)? else {
            return Ok(None);
        };
        s.strip_prefix('+')
            .unwrap_or(&s)
            .parse::<i64>()
            .map(Some)
            .map_err(|_| self.err(n, format!("`{key}` must be an integer, not {s:?}")))
    }

    fn list<'n>(&self, key: &str, n: &'n Node) -> Result<&'n [Node], ConfigError> {
        match &n.value {
            Yaml::Null => Ok(&[]),
            Yaml::List(items) => Ok(items),
            _ => Err(self.err(n, format!("`{key}` must be a list"))),
        }
    }

    fn strings(&self, key: &str, n: &Node) -> Result<Vec<String>, ConfigError> {
        let mut out = Vec::new();
        for item in self.list(key, n)? {
            if let Some(s) = self.string(key, item)? {
                out.push(s);
            }
        }
        Ok(out)
    }

    fn ids(&self, key: &str, n: &Node) -> Result<Vec<u32>, ConfigError> {
        let mut out = Vec::new();
        for item in self.list(key, n)? {
            if let Some(v) = self.int(key, item)? {
                let id = u32::try_from(v).map_err(|_| {
                    self.err(item, format!("`{key}` entries must be 0..=4294967295"))
                })?;
                out.push(id);
            }
        }
        Ok(out)
    }

    fn map<'n>(&self, key: &str, n: &'n Node) -> Result<&'n [(String, Node)], ConfigError> {
        match &n.value {
            Yaml::Null => Ok(&[]),
            Yaml::Map(pairs) => Ok(pairs),
            _ => Err(self.err(n, format!("`{key}` must be a mapping of `key: value`"))),
        }
    }

    /// A Go duration; `Ok(Some(None))` for zero or negative (the caller
    /// keeps its default, with a warning).
    fn duration(&self, key: &str, n: &Node) -> Result<Option<Option<Duration>>, ConfigError> {
        let Some(s) = self.string(key, n)? else {
            return Ok(None);
        };
        if s.trim_start().starts_with('-') {
            return Ok(Some(None));
        }
        match crate::cli::parse_duration(&s) {
            Ok(d) if d.is_zero() => Ok(Some(None)),
            Ok(d) => Ok(Some(Some(d))),
            Err(e) => Err(self.err(n, format!("`{key}`: {e}"))),
        }
    }

    fn unknown(&self, section: &str, key: &str, n: &Node) {
        log::warn!(
            "{} line {}: unknown key `{section}{key}` ignored",
            self.file,
            n.line
        );
    }
}

/// What the file said, before the environment and the defaults.
#[derive(Default)]
struct Raw {
    subnets: Vec<String>,
    metrics: Option<String>,
    log_level: Option<String>,
    nodes: Vec<String>,
    nodes_file: Option<String>,
    strict: Option<bool>,
    read_timeout: Option<Option<Duration>>,
    write_timeout: Option<Option<Duration>>,
    max_ssh: Option<i64>,
    require_hostkeys: Option<bool>,
    peers: Vec<(u32, u8)>,
    idmapped_root: Option<bool>,
    uids: Vec<u32>,
    gids: Vec<u32>,
    idmap_users: Option<Vec<String>>,
    rate_interval_ms: Option<i64>,
    rate_burst: Option<i64>,
    http_enabled: Option<bool>,
    http_addr: Option<String>,
    http_cert: Option<String>,
    http_key: Option<String>,
    http_token: Option<String>,
    cp_url: Option<String>,
    cp_token_file: Option<String>,
    cp_refresh: Option<i64>,
    cp_insecure: Option<bool>,
    ssh_port: Option<u16>,
}

fn read_raw(root: &Node, file: &str) -> Result<Raw, ConfigError> {
    let r = Reader { file };
    let pairs = match &root.value {
        Yaml::Null => return Ok(Raw::default()),
        Yaml::Map(p) => p,
        _ => {
            return Err(syntax(
                file,
                root.line,
                "expected a mapping of `key: value` at the top level",
            ));
        }
    };
    let mut raw = Raw::default();
    let mut seen = HashSet::new();
    let mut duplicate_node_blocks = 0;
    for (key, n) in pairs {
        if !seen.insert(key.as_str()) {
            if key == "allowed_nodes" {
                duplicate_node_blocks += 1;
                continue;
            }
            return Err(r.err(n, format!("duplicate key `{key}`")));
        }
        let k = key.as_str();
        match k {
            "allowed_source_subnets" => raw.subnets = r.strings(k, n)?,
            "metrics_address" => raw.metrics = r.string(k, n)?,
            "log_level" => raw.log_level = r.string(k, n)?,
            "allowed_nodes" => raw.nodes = r.strings(k, n)?,
            "allowed_nodes_file" => raw.nodes_file = r.string(k, n)?,
            "strict_node_validation" => raw.strict = r.boolean(k, n)?,
            "read_timeout" => raw.read_timeout = r.duration(k, n)?,
            "write_timeout" => raw.write_timeout = r.duration(k, n)?,
            "max_ssh_output_bytes" => raw.max_ssh = r.int(k, n)?,
            "require_proxmox_hostkeys" => raw.require_hostkeys = r.boolean(k, n)?,
            "allowed_peers" => raw.peers = read_peers(&r, n)?,
            "allow_idmapped_root" => raw.idmapped_root = r.boolean(k, n)?,
            "allowed_peer_uids" => raw.uids = r.ids(k, n)?,
            "allowed_peer_gids" => raw.gids = r.ids(k, n)?,
            "allowed_idmap_users" => raw.idmap_users = Some(r.strings(k, n)?),
            "rate_limit" => {
                for (sub, v) in r.map(k, n)? {
                    match sub.as_str() {
                        "per_peer_interval_ms" => raw.rate_interval_ms = r.int(sub, v)?,
                        "per_peer_burst" => raw.rate_burst = r.int(sub, v)?,
                        _ => r.unknown("rate_limit.", sub, v),
                    }
                }
            }
            "http_enabled" => raw.http_enabled = r.boolean(k, n)?,
            "http_listen_addr" => raw.http_addr = r.string(k, n)?,
            "http_tls_cert" => raw.http_cert = r.string(k, n)?,
            "http_tls_key" => raw.http_key = r.string(k, n)?,
            "http_auth_token" => raw.http_token = r.string(k, n)?,
            "pulse_control_plane" => {
                for (sub, v) in r.map(k, n)? {
                    match sub.as_str() {
                        "url" => raw.cp_url = r.string(sub, v)?,
                        "token_file" => raw.cp_token_file = r.string(sub, v)?,
                        "refresh_interval" => raw.cp_refresh = r.int(sub, v)?,
                        "insecure_skip_verify" => raw.cp_insecure = r.boolean(sub, v)?,
                        _ => r.unknown("pulse_control_plane.", sub, v),
                    }
                }
            }
            "ssh_port" => {
                if let Some(p) = r.int(k, n)? {
                    let port = u16::try_from(p)
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| r.err(n, "`ssh_port` must be 1..=65535".into()))?;
                    raw.ssh_port = Some(port);
                }
            }
            _ => r.unknown("", k, n),
        }
    }
    if duplicate_node_blocks > 0 {
        log::warn!(
            "CONFIG SANITIZED (in-memory only): {file} has {duplicate_node_blocks} duplicate \
             allowed_nodes block(s); the first is used. Run 'pulse-sensor-proxy config \
             migrate-to-file' to fix the file"
        );
    }
    Ok(raw)
}

fn read_peers(r: &Reader<'_>, n: &Node) -> Result<Vec<(u32, u8)>, ConfigError> {
    let mut out: Vec<(u32, u8)> = Vec::new();
    for item in r.list("allowed_peers", n)? {
        let mut uid = 0u32;
        let mut bits = 0u8;
        for (key, v) in r.map("allowed_peers", item)? {
            match key.as_str() {
                "uid" => {
                    if let Some(u) = r.int("uid", v)? {
                        uid = u32::try_from(u)
                            .map_err(|_| r.err(v, "`uid` must be 0..=4294967295".into()))?;
                    }
                }
                "capabilities" => {
                    for word in r.strings("capabilities", v)? {
                        bits |= match word.trim().to_ascii_lowercase().as_str() {
                            "read" => caps::READ,
                            "write" => caps::WRITE,
                            "admin" => caps::ADMIN,
                            other => {
                                log::warn!(
                                    "{} line {}: unknown capability {other:?} ignored",
                                    r.file,
                                    v.line
                                );
                                0
                            }
                        };
                    }
                }
                _ => r.unknown("allowed_peers.", key, v),
            }
        }
        if bits == 0 {
            bits = caps::READ;
        }
        match out.iter_mut().find(|(u, _)| *u == uid) {
            Some(e) => e.1 |= bits,
            None => out.push((uid, bits)),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The environment and the defaults.

/// `1,true,yes,on` / `0,false,no,off` (any case).
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// Trims, drops empty entries and case-insensitive duplicates (first kept).
pub fn normalize_nodes(nodes: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for n in nodes {
        let t = n.trim();
        if !t.is_empty() && seen.insert(t.to_ascii_lowercase()) {
            out.push(t.to_string());
        }
    }
    out
}

/// `trace` .. `panic`, `disabled`/`none`; unknown -> info with a warning.
pub fn parse_log_level(s: &str) -> log::LevelFilter {
    use log::LevelFilter as L;
    match s.trim().to_ascii_lowercase().as_str() {
        "trace" => L::Trace,
        "debug" => L::Debug,
        "info" => L::Info,
        "warn" | "warning" => L::Warn,
        "error" | "fatal" | "panic" => L::Error,
        "disabled" | "none" => L::Off,
        _ => {
            log::warn!("unknown log level {s:?}, using info");
            L::Info
        }
    }
}

/// An executable called `name` in one of the `:`-separated `path` dirs.
fn find_program(path: Option<&str>, name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path?
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    /// A non-empty value (the stock loader ignores empty variables).
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.is_empty())
    }

    fn bool(&self, name: &str) -> Option<bool> {
        let v = self.get(name)?;
        let b = parse_bool(&v);
        if b.is_none() {
            log::warn!("invalid {name} value {v:?} ignored (use true/false)");
        }
        b
    }

    fn parsed<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        let v = self.get(name)?;
        let t = v.trim().parse().ok();
        if t.is_none() {
            log::warn!("invalid {name} value {v:?} ignored");
        }
        t
    }

    fn duration(&self, name: &str) -> Option<Option<Duration>> {
        let v = self.get(name)?;
        if v.trim_start().starts_with('-') {
            return Some(None);
        }
        match crate::cli::parse_duration(&v) {
            Ok(d) => Some(Some(d).filter(|d| !d.is_zero())),
            Err(e) => {
                log::warn!("invalid {name} value {v:?} ignored: {e}");
                None
            }
        }
    }

    fn ids(&self, name: &str) -> Vec<u32> {
        let Some(v) = self.get(name) else {
            return Vec::new();
        };
        let ids: Result<Vec<u32>, _> = split_list(&v).iter().map(|s| s.parse()).collect();
        ids.unwrap_or_else(|_| {
            log::warn!("invalid {name} value {v:?} ignored (a comma-separated list of ids)");
            Vec::new()
        })
    }

    fn path(&self, name: &str, default: &str) -> PathBuf {
        PathBuf::from(self.get(name).unwrap_or_else(|| default.to_string()))
    }
}

fn positive_or(d: Option<Option<Duration>>, default: Duration, key: &str) -> Duration {
    match d {
        None => default,
        Some(Some(d)) => d,
        Some(None) => {
            log::warn!("{key} must be positive; using {} s", default.as_secs());
            default
        }
    }
}

impl Config {
    /// Loads the configuration: `path` (`--config`), else
    /// `$PULSE_SENSOR_PROXY_CONFIG`, else `/etc/pulse-sensor-proxy/config.yaml`.
    /// A missing default file means all defaults; a missing named file is an
    /// error. The allow-list file (`allowed_nodes_file`, else
    /// `/etc/pulse-sensor-proxy/allowed_nodes.yaml` if it exists) is appended
    /// to the allow-list; a broken one is warned about, like the stock daemon.
    pub fn load(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::load_from(path, env, Path::new(DEFAULT_DIR))
    }

    /// [`Config::load`] with the default directory `etc_dir` instead of
    /// `/etc/pulse-sensor-proxy` (tests).
    pub fn load_from(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        etc_dir: &Path,
    ) -> Result<Config, ConfigError> {
        let named = path
            .map(Path::to_path_buf)
            .or_else(|| Env(env).get("PULSE_SENSOR_PROXY_CONFIG").map(PathBuf::from));
        let (file, required) = match named {
            Some(p) => (p, true),
            None => (etc_dir.join(CONFIG_FILE), false),
        };
        let text = match read_capped(&file) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(ConfigError::Read(file, e)),
        };
        let name = file_name(&file);
        let mut cfg = Config::from_text(&text, &name, env)?;
        if cfg.allowed_nodes_file.is_none() {
            let default = etc_dir.join(ALLOWED_NODES_FILE);
            if default.exists() {
                cfg.allowed_nodes_file = Some(default);
            }
        }
        if let Some(f) = &cfg.allowed_nodes_file {
            match read_allowed_nodes_file(f) {
                Ok(extra) => {
                    let all = std::mem::take(&mut cfg.allowed_nodes)
                        .into_iter()
                        .chain(extra);
                    cfg.allowed_nodes = normalize_nodes(all);
                }
                Err(e) => log::warn!("failed to load allowed nodes file: {e}"),
            }
        }
        Ok(cfg)
    }

    /// Parses config text (named `file` in errors) and applies the
    /// environment. Reads no file: `allowed_nodes_file` is only recorded.
    pub fn from_text(
        text: &str,
        file: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw = read_raw(&parse_yaml(text, file)?, file)?;
        finish(raw, &Env(env))
    }
}

fn finish(raw: Raw, env: &Env<'_>) -> Result<Config, ConfigError> {
    let read_timeout = positive_or(
        env.duration("PULSE_SENSOR_PROXY_READ_TIMEOUT")
            .or(raw.read_timeout),
        DEFAULT_READ_TIMEOUT,
        "read_timeout",
    );
    let write_timeout = positive_or(
        env.duration("PULSE_SENSOR_PROXY_WRITE_TIMEOUT")
            .or(raw.write_timeout),
        DEFAULT_WRITE_TIMEOUT,
        "write_timeout",
    );

    let mut subnet_text = raw.subnets;
    if let Some(v) = env.get("PULSE_SENSOR_PROXY_ALLOWED_SUBNETS") {
        subnet_text.extend(v.split(',').map(str::to_string));
    }
    let mut allowed_source_subnets: Vec<Cidr> = Vec::new();
    for s in &subnet_text {
        let s = s.trim();
        if s.is_empty() {
            continue;
        }
        let c = Cidr::parse(s).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "invalid subnet configuration: invalid subnet or address: {s}"
            ))
        })?;
        if !allowed_source_subnets.contains(&c) {
            allowed_source_subnets.push(c);
        }
    }

    let max_ssh = env
        .parsed::<i64>("PULSE_SENSOR_PROXY_MAX_SSH_OUTPUT_BYTES")
        .or(raw.max_ssh);
    let max_ssh_output_bytes = match max_ssh {
        None => DEFAULT_MAX_SSH_OUTPUT,
        Some(v) if v > 0 => usize::try_from(v).unwrap_or(usize::MAX),
        Some(v) => {
            log::warn!("max_ssh_output_bytes must be positive (got {v}); using 1 MiB");
            DEFAULT_MAX_SSH_OUTPUT
        }
    };

    let mut allowed_nodes = raw.nodes;
    if let Some(v) = env.get("PULSE_SENSOR_PROXY_ALLOWED_NODES") {
        allowed_nodes.extend(split_list(&v));
    }

    let mut allowed_idmap_users = raw.idmap_users.unwrap_or_else(|| vec!["root".into()]);
    if let Some(v) = env.get("PULSE_SENSOR_PROXY_ALLOWED_IDMAP_USERS") {
        let users = split_list(&v);
        if !users.is_empty() {
            allowed_idmap_users = users;
        }
    }
    let mut allowed_peer_uids = raw.uids;
    allowed_peer_uids.extend(env.ids("PULSE_SENSOR_PROXY_ALLOWED_PEER_UIDS"));
    let mut allowed_peer_gids = raw.gids;
    allowed_peer_gids.extend(env.ids("PULSE_SENSOR_PROXY_ALLOWED_PEER_GIDS"));

    let metrics = env
        .get("PULSE_SENSOR_PROXY_METRICS_ADDR")
        .or(raw.metrics)
        .unwrap_or_default();
    let metrics_address = match metrics.trim() {
        "" | "default" => Some(DEFAULT_METRICS_ADDR.to_string()),
        m if m.eq_ignore_ascii_case("disabled") => None,
        m => Some(m.to_string()),
    };
    let log_level = env
        .get("PULSE_SENSOR_PROXY_LOG_LEVEL")
        .or(raw.log_level)
        .map_or(log::LevelFilter::Info, |l| parse_log_level(&l));

    let rate_interval = match raw.rate_interval_ms {
        Some(ms) if ms > 0 => Duration::from_millis(ms.unsigned_abs()),
        _ => DEFAULT_RATE_INTERVAL,
    };
    let rate_burst = match raw.rate_burst {
        Some(b) if b > 0 => u32::try_from(b).unwrap_or(u32::MAX),
        _ => DEFAULT_RATE_BURST,
    };

    let trimmed = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let http_enabled = env
        .bool("PULSE_SENSOR_PROXY_HTTP_ENABLED")
        .or(raw.http_enabled)
        .unwrap_or(false);
    let http = if http_enabled {
        let token = trimmed(
            env.get("PULSE_SENSOR_PROXY_HTTP_AUTH_TOKEN")
                .or(raw.http_token),
        );
        let cert = trimmed(
            env.get("PULSE_SENSOR_PROXY_HTTP_TLS_CERT")
                .or(raw.http_cert),
        );
        let key = trimmed(env.get("PULSE_SENSOR_PROXY_HTTP_TLS_KEY").or(raw.http_key));
        let addr = trimmed(env.get("PULSE_SENSOR_PROXY_HTTP_ADDR").or(raw.http_addr));
        let Some(auth_token) = token else {
            return Err(ConfigError::Invalid(
                "http_enabled=true requires http_auth_token to be configured".into(),
            ));
        };
        let (Some(cert), Some(key)) = (cert, key) else {
            return Err(ConfigError::Invalid(
                "http_enabled=true requires both http_tls_cert and http_tls_key".into(),
            ));
        };
        Some(Http {
            listen_addr: addr.unwrap_or_else(|| "0.0.0.0:8443".into()),
            tls_cert: cert.into(),
            tls_key: key.into(),
            auth_token,
        })
    } else {
        None
    };

    let control_plane = trimmed(raw.cp_url).map(|url| ControlPlane {
        url,
        token_file: trimmed(raw.cp_token_file)
            .unwrap_or_else(|| DEFAULT_CONTROL_TOKEN.into())
            .into(),
        refresh_interval: Duration::from_secs(match raw.cp_refresh {
            Some(s) if s > 0 => s.unsigned_abs(),
            _ => DEFAULT_REFRESH_SECS,
        }),
        insecure_skip_verify: raw.cp_insecure.unwrap_or(false),
    });

    let path_var = (env.0)("PATH");
    Ok(Config {
        allowed_source_subnets,
        metrics_address,
        log_level,
        allowed_nodes: normalize_nodes(allowed_nodes),
        allowed_nodes_file: trimmed(raw.nodes_file).map(PathBuf::from),
        strict_node_validation: env
            .bool("PULSE_SENSOR_PROXY_STRICT_NODE_VALIDATION")
            .or(raw.strict)
            .unwrap_or(false),
        read_timeout,
        write_timeout,
        max_ssh_output_bytes,
        require_proxmox_hostkeys: env
            .bool("PULSE_SENSOR_PROXY_REQUIRE_PROXMOX_HOSTKEYS")
            .or(raw.require_hostkeys)
            .unwrap_or(false),
        allowed_peers: raw.peers,
        allow_idmapped_root: env
            .bool("PULSE_SENSOR_PROXY_ALLOW_IDMAPPED_ROOT")
            .or(raw.idmapped_root)
            .unwrap_or(true),
        allowed_peer_uids,
        allowed_peer_gids,
        allowed_idmap_users,
        rate_interval,
        rate_burst,
        http,
        control_plane,
        socket: env.path(
            "PULSE_SENSOR_PROXY_SOCKET",
            "/run/pulse-sensor-proxy/pulse-sensor-proxy.sock",
        ),
        ssh_dir: env.path(
            "PULSE_SENSOR_PROXY_SSH_DIR",
            "/var/lib/pulse-sensor-proxy/ssh",
        ),
        audit_log: env.path(
            "PULSE_SENSOR_PROXY_AUDIT_LOG",
            "/var/log/pulse/sensor-proxy/audit.log",
        ),
        user: env
            .get("PULSE_SENSOR_PROXY_USER")
            .unwrap_or_else(|| "pulse-sensor-proxy".into()),
        work_dir: env.path("PULSE_SENSOR_PROXY_WORK_DIR", "/var/lib/pulse-sensor-proxy"),
        pve_dir: env.path("PULSE_SENSOR_PROXY_PVE_DIR", "/etc/pve"),
        pvecm: find_program(path_var.as_deref(), "pvecm"),
        pvesh: find_program(path_var.as_deref(), "pvesh"),
        ssh_port: env
            .parsed::<u16>("PULSE_SENSOR_PROXY_SSH_PORT")
            .filter(|p| *p != 0)
            .or(raw.ssh_port)
            .unwrap_or(22),
        suppress_container_warning: env
            .bool("PULSE_SENSOR_PROXY_SUPPRESS_CONTAINER_WARNING")
            .unwrap_or(false),
    })
}

// ---------------------------------------------------------------------------
// allowed_nodes.yaml

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn read_capped(path: &Path) -> io::Result<String> {
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "file is larger than 1 MiB",
        ));
    }
    String::from_utf8(buf).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

/// The entries of an `allowed_nodes.yaml` in any of its three forms: a
/// mapping with an `allowed_nodes:` list, a bare list, or plain lines
/// (`#` comments, optional `- `). Normalised like [`normalize_nodes`].
pub fn parse_allowed_nodes(text: &str, file: &str) -> Result<Vec<String>, ConfigError> {
    let first = text
        .lines()
        .map(|l| strip_comment(l.trim()).trim())
        .find(|l| !l.is_empty() && *l != "---");
    let Some(first) = first else {
        return Ok(Vec::new());
    };
    // Plain lines: the first entry is neither a list item, a flow list nor a key.
    if !is_dash(first) && !first.starts_with('[') && split_key(first).is_none() {
        let nodes = text
            .lines()
            .map(|l| strip_comment(l.trim()).trim())
            .filter(|l| !l.is_empty())
            .map(|l| l.strip_prefix('-').unwrap_or(l).trim().to_string());
        return Ok(normalize_nodes(nodes));
    }
    let root = parse_yaml(text, file)?;
    let r = Reader { file };
    let list = match &root.value {
        Yaml::Map(pairs) => {
            let mut found = None;
            for (key, n) in pairs {
                if key == "allowed_nodes" {
                    found.get_or_insert(n);
                } else {
                    r.unknown("", key, n);
                }
            }
            match found {
                Some(n) => r.strings("allowed_nodes", n)?,
                None => Vec::new(),
            }
        }
        _ => r.strings("allowed_nodes", &root)?,
    };
    Ok(normalize_nodes(list))
}

/// Reads and parses an allow-list file.
pub fn read_allowed_nodes_file(path: &Path) -> Result<Vec<String>, ConfigError> {
    let text = read_capped(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
    parse_allowed_nodes(&text, &file_name(path))
}

/// Whether `entry` may go into the allow-list: a node name ([`nodes::valid_name`])
/// or a CIDR.
pub fn valid_entry(entry: &str) -> bool {
    nodes::valid_name(entry) || (entry.contains('/') && Cidr::parse(entry).is_some())
}

/// The text `config set-allowed-nodes` writes.
pub fn render_allowed_nodes(nodes: &[String]) -> String {
    let mut out = format!("{MANAGED_HEADER}{DO_NOT_EDIT}");
    if nodes.is_empty() {
        out.push_str("allowed_nodes: []\n");
        return out;
    }
    out.push_str("allowed_nodes:\n");
    for n in nodes {
        // `[::1]`, `::1` and words YAML would read as booleans or null are
        // quoted so any YAML reader sees the same string.
        let lower = n.to_ascii_lowercase();
        let needs_quotes = !n.starts_with(|c: char| c.is_ascii_alphanumeric())
            || matches!(
                lower.as_str(),
                "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null" | "~"
            );
        if needs_quotes {
            out.push_str(&format!("    - \"{n}\"\n"));
        } else {
            out.push_str(&format!("    - {n}\n"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// CLI: config validate / config set-allowed-nodes

/// `config validate [--config P] [--allowed-nodes P]`: loads the config as
/// the daemon would, then parses the allow-list file (the flag, else
/// `allowed_nodes_file`, else `allowed_nodes.yaml` beside the config) if it
/// exists. Prints `Configuration valid` to `out`, or
/// `Config validation failed: ...` / `Allowed nodes validation failed: ...`
/// to `err` and exits 1. Entries that can never match are warned about only
/// (the stock command accepts them too).
pub fn validate_command(
    config: Option<&Path>,
    allowed_nodes: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    let cfg_path = config
        .map(Path::to_path_buf)
        .or_else(|| Env(env).get("PULSE_SENSOR_PROXY_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| Path::new(DEFAULT_DIR).join(CONFIG_FILE));
    // Loaded as the daemon loads it: a missing default file means defaults.
    let cfg = match Config::load_from(config, env, Path::new(DEFAULT_DIR)) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "Config validation failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let nodes_path = allowed_nodes
        .map(Path::to_path_buf)
        .or(cfg.allowed_nodes_file)
        .unwrap_or_else(|| {
            cfg_path
                .parent()
                .unwrap_or(Path::new("."))
                .join(ALLOWED_NODES_FILE)
        });
    if nodes_path.exists() {
        match read_allowed_nodes_file(&nodes_path) {
            Ok(nodes) => {
                for n in nodes.iter().filter(|n| !valid_entry(n)) {
                    log::warn!(
                        "{}: entry {n:?} is neither a node name nor a CIDR and never matches",
                        nodes_path.display()
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(err, "Allowed nodes validation failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let _ = writeln!(out, "Configuration valid");
    ExitCode::SUCCESS
}

/// `config set-allowed-nodes [--allowed-nodes P] --merge X.. [--replace]`:
/// merges (or replaces) the allow-list file under an exclusive lock on
/// `<file>.lock`, writing a temporary file beside it and renaming it into
/// place. `--merge` values may hold several entries separated by commas (as
/// the stock flag did). Exit 2 for a usage error (nothing to do, an invalid
/// entry), 1 when the file cannot be updated.
pub fn set_allowed_nodes_command(
    file: Option<&Path>,
    merge: &[String],
    replace: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> ExitCode {
    let path = file.map_or_else(
        || Path::new(DEFAULT_DIR).join(ALLOWED_NODES_FILE),
        Path::to_path_buf,
    );
    let entries: Vec<String> = merge.iter().flat_map(|m| split_list(m)).collect();
    if entries.is_empty() && !replace {
        let _ = writeln!(
            err,
            "pulse-sensor-proxy: error: no nodes specified (use --merge, or --replace to clear)"
        );
        return ExitCode::from(2);
    }
    if let Some(bad) = entries.iter().find(|e| !valid_entry(e)) {
        let _ = writeln!(
            err,
            "pulse-sensor-proxy: error: invalid node {bad:?} (a host name, an IP address or a CIDR)"
        );
        return ExitCode::from(2);
    }
    match set_allowed_nodes(&path, &entries, replace) {
        Ok(()) => {
            let _ = if replace {
                writeln!(out, "Replaced allowed nodes with {} entries", entries.len())
            } else {
                writeln!(
                    out,
                    "Merged {} nodes into allowed nodes list",
                    entries.len()
                )
            };
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(err, "Failed to update allowed nodes: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The locked read-merge-write of [`set_allowed_nodes_command`]. An existing
/// file that cannot be parsed is an error: merging into it would drop its
/// entries.
pub fn set_allowed_nodes(path: &Path, entries: &[String], replace: bool) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("failed to create config directory {}: {e}", dir.display()))?;
    let mut lock_name = path.as_os_str().to_owned();
    lock_name.push(".lock");
    let _lock = lock_file(Path::new(&lock_name))?;
    let mut all = Vec::new();
    if !replace {
        match read_allowed_nodes_file(path) {
            Ok(existing) => all = existing,
            Err(ConfigError::Read(_, e)) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("existing file not changed: {e}")),
        }
    }
    all.extend(entries.iter().cloned());
    let text = render_allowed_nodes(&normalize_nodes(all));
    atomic_write(path, text.as_bytes())
}

/// Opens (creating) the lock file, forces it to 0600 (so no other user can
/// hold the lock and stall the installer), and waits for the exclusive lock.
/// The lock file is never deleted: it outlives the renames of the data file.
fn lock_file(path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("failed to open lock file {}: {e}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("failed to set lock file permissions: {e}"))?;
    crate::sys::lock_exclusive(std::os::fd::AsFd::as_fd(&f))
        .map_err(|e| format!("failed to acquire file lock: {e}"))?;
    Ok(f)
}

/// Temp file beside `path`, fsync, mode 0644, rename over `path`, fsync
/// the directory (`state::write_atomic_mode`).
fn atomic_write(path: &Path, data: &[u8]) -> Result<(), String> {
    crate::state::write_atomic_mode(path, data, 0o644)
        .map_err(|e| format!("failed to write {}: {e}", path.display()))
}
