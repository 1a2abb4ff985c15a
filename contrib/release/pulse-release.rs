//! pulse-release: the maintainer's tool for pulse-agent's own signed release
//! channel (the format is in contrib/release/README.md; the updater in
//! src/update/ reads exactly that).
//!
//! It makes an Ed25519 key, prints its public key, signs files, writes a
//! channel directory's `release.json` and every signature in it, and checks a
//! directory before it is published. It reads the private key only from a
//! file its owner alone can read, never overwrites a key file, never prints
//! the seed, and uploads nothing: publishing is copying the directory.
//!
//! Beside every `.sig` it writes an OpenSSH signature (`.sshsig`,
//! PROTOCOL.sshsig, made with the same Ed25519 key) so that hosts without
//! this tool can check the channel with `ssh-keygen -Y verify`; and it
//! publishes the installer (`contrib/install.sh`) with the release keys, the
//! default channel and the unit files filled in, signed the way
//! `ssh-keygen -Y sign -n file` signs.
//!
//! Run it with `cargo run --release --example pulse-release -- --help`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_compact::{KeyPair, PublicKey, Seed, Signature};
use pulse_agent::remote_config::{base64_decode, base64_encode, parse_rfc3339};
use pulse_agent::report::rfc3339;
use pulse_agent::update::{exe, index};
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};

const USAGE: &str = "\
pulse-release: make and check pulse-agent's signed release channel

Usage:
  pulse-release keygen --out FILE
      Make an Ed25519 key: FILE is created mode 0600 (never overwritten);
      the public key (base64) is printed on standard output.
  pulse-release pubkey --key FILE
      Print the public key of a private key file.
  pulse-release sign --key FILE FILE...
      Write FILE.sig (base64 Ed25519 signature, one line) and FILE.sshsig
      (OpenSSH signature, namespace pulse-agent-release) for each FILE.
  pulse-release index --key FILE --version X.Y.Z [--expires DURATION|RFC3339]
                      [--released RFC3339] DIR
      Check, hash and sign every DIR/pulse-agent-<target>, then write
      DIR/release.json and DIR/release.json.sig (and a .sshsig beside
      every .sig).
      --expires: how long after --released the release stays valid (90d;
      units s, m, h, d) or a time; it must be in the future.
      --released: the release time (default now).
      Targets: linux-amd64 linux-arm64 linux-armv7 linux-armv6 linux-386
  pulse-release verify --pubkey BASE64 DIR
      Check DIR/release.json's signature and every asset's size, SHA-256 and
      signature (.sig and .sshsig); one line per asset; exit 1 if anything
      fails.
  pulse-release allowed-signers (--key FILE | --pubkey BASE64)
      Print the key as an ssh-keygen allowed_signers line
      (pulse-agent-release ssh-ed25519 AAAA...).
  pulse-release publish-installer --key FILE --channel URL
                      [--also-trust BASE64,...] [--units DIR] SCRIPT OUTDIR
      Copy SCRIPT (contrib/install.sh) to OUTDIR/install.sh with the release
      keys (this key and --also-trust), the default channel URL and the unit
      files of DIR (default: contrib/systemd beside SCRIPT; DIR/NAME hardened,
      DIR/compat/NAME compat) filled in, and write OUTDIR/install.sh.sshsig
      (namespace file, as ssh-keygen -Y sign -n file does).
  pulse-release --help

A private key file is text: '#' comment lines and one line holding the
standard base64 of the 32-byte Ed25519 seed. It is refused if its group or
others have any permission on it.

Exit status: 0 ok, 1 failure, 2 usage error.
";

/// The program name in `release.json` and in every asset's file name.
const NAME: &str = "pulse-agent";
const INDEX: &str = "release.json";
/// `--expires` when none is given.
const DEFAULT_EXPIRES: Duration = Duration::from_secs(90 * 86_400);
/// Read size when hashing: assets are streamed, not held in memory.
const CHUNK: usize = 64 * 1024;
/// A key file, a signature file or a release.json larger than this is not one.
const KEY_CAP: u64 = 4096;
const SIG_CAP: u64 = 1024;
const INDEX_CAP: u64 = 1 << 20;
/// The `.sshsig` namespace of channel files: a signature made for the
/// channel cannot pass for one over some other kind of file, and back.
const SSHSIG_NAMESPACE: &str = "pulse-agent-release";
/// The namespace `ssh-keygen -Y sign -n file` uses: the installer's.
const INSTALLER_NAMESPACE: &str = "file";
/// The principal in `allowed_signers` lines (ssh-keygen -I).
const PRINCIPAL: &str = "pulse-agent-release";
/// The unit files the installer carries, as contrib/systemd/ names them.
const UNITS: [&str; 5] = [
    "pulse-agent.service",
    "pulse-agent-once.service",
    "pulse-agent.timer",
    "pulse-agent-update.service",
    "pulse-agent-update.timer",
];
/// Ends each unit's here-document in the published installer.
const UNIT_END: &str = "PULSE_UNIT_END";
/// The marks `publish-installer` fills in: each ends exactly one line of
/// contrib/install.sh, and the whole line is replaced.
const MARK_KEYS: &str = "# pulse-release: keys";
const MARK_CHANNEL: &str = "# pulse-release: channel";
const MARK_UNITS: &str = "# pulse-release: units";
const SSHSIG_CAP: u64 = 4096;

#[derive(Debug)]
enum Error {
    /// The command line is wrong (exit 2).
    Usage(String),
    /// Anything else (exit 1).
    Failed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "{m} (see --help)"),
            Error::Failed(m) => f.write_str(m),
        }
    }
}

impl From<lexopt::Error> for Error {
    fn from(e: lexopt::Error) -> Self {
        Error::Usage(e.to_string())
    }
}

fn failed(m: impl Into<String>) -> Error {
    Error::Failed(m.into())
}

/// An I/O error, with the file it happened to.
fn io_error(what: &str, path: &Path, e: io::Error) -> Error {
    failed(format!("{what} {}: {e}", path.display()))
}

fn main() -> ExitCode {
    let result = parse(lexopt::Parser::from_env()).and_then(run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pulse-release: error: {e}");
            ExitCode::from(match e {
                Error::Usage(_) => 2,
                Error::Failed(_) => 1,
            })
        }
    }
}

/// `--expires`: a duration after the release time, or a time.
#[derive(Debug, Clone, Copy)]
enum Expires {
    After(Duration),
    At(SystemTime),
}

#[derive(Debug)]
enum Command {
    Help,
    Keygen {
        out: PathBuf,
    },
    Pubkey {
        key: PathBuf,
    },
    Sign {
        key: PathBuf,
        files: Vec<PathBuf>,
    },
    Index {
        key: PathBuf,
        version: String,
        expires: Expires,
        released: Option<SystemTime>,
        dir: PathBuf,
    },
    Verify {
        pubkey: PublicKey,
        dir: PathBuf,
    },
    AllowedSigners {
        key: Option<PathBuf>,
        pubkey: Option<PublicKey>,
    },
    PublishInstaller {
        key: PathBuf,
        channel: String,
        also_trust: Vec<PublicKey>,
        units: Option<PathBuf>,
        script: PathBuf,
        out: PathBuf,
    },
}

fn parse(mut p: lexopt::Parser) -> Result<Command, Error> {
    use lexopt::Arg::{Long, Short, Value};
    let cmd = match p.next()? {
        None => return Err(Error::Usage("no command given".into())),
        Some(Short('h') | Long("help")) => return Ok(Command::Help),
        Some(Value(v)) => v.into_string().unwrap_or_default(),
        Some(arg) => return Err(arg.unexpected().into()),
    };
    // Which options each command takes; all of them take a value.
    let allowed: &[&'static str] = match cmd.as_str() {
        "keygen" => &["out"],
        "pubkey" => &["key"],
        "sign" => &["key"],
        "index" => &["key", "version", "expires", "released"],
        "verify" => &["pubkey"],
        "allowed-signers" => &["key", "pubkey"],
        "publish-installer" => &["key", "channel", "also-trust", "units"],
        other => return Err(Error::Usage(format!("unknown command {other:?}"))),
    };
    let mut opts: BTreeMap<&'static str, OsString> = BTreeMap::new();
    let mut args: Vec<OsString> = Vec::new();
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Long(name) if allowed.contains(&name) => {
                let name = *allowed
                    .iter()
                    .find(|a| **a == name)
                    .expect("invariant: name is in allowed");
                let value = p.value()?;
                if opts.insert(name, value).is_some() {
                    return Err(Error::Usage(format!("--{name} given twice")));
                }
            }
            Value(v) => args.push(v),
            arg => return Err(arg.unexpected().into()),
        }
    }
    let mut take = |name: &str| -> Result<OsString, Error> {
        opts.remove(name)
            .ok_or_else(|| Error::Usage(format!("{cmd} needs --{name}")))
    };
    let text = |name: &str, v: OsString| -> Result<String, Error> {
        v.into_string()
            .map_err(|_| Error::Usage(format!("--{name} is not UTF-8")))
    };
    let one_dir = |args: Vec<OsString>| -> Result<PathBuf, Error> {
        match <[OsString; 1]>::try_from(args) {
            Ok([dir]) => Ok(dir.into()),
            Err(args) => Err(Error::Usage(format!(
                "{cmd} takes one directory, not {}",
                args.len()
            ))),
        }
    };
    let no_args = |args: &[OsString]| match args.first() {
        Some(a) => Err(Error::Usage(format!(
            "{cmd} takes no argument {:?}",
            a.to_string_lossy()
        ))),
        None => Ok(()),
    };
    Ok(match cmd.as_str() {
        "keygen" => {
            no_args(&args)?;
            Command::Keygen {
                out: take("out")?.into(),
            }
        }
        "pubkey" => {
            no_args(&args)?;
            Command::Pubkey {
                key: take("key")?.into(),
            }
        }
        "sign" => {
            let key = take("key")?.into();
            if args.is_empty() {
                return Err(Error::Usage("sign needs at least one FILE".into()));
            }
            Command::Sign {
                key,
                files: args.into_iter().map(PathBuf::from).collect(),
            }
        }
        "index" => {
            let key = take("key")?.into();
            let version = text("version", take("version")?)?;
            check_version(&version).map_err(|e| Error::Usage(format!("--version {e}")))?;
            let expires = match opts.remove("expires") {
                None => Expires::After(DEFAULT_EXPIRES),
                Some(v) => parse_expires(&text("expires", v)?).map_err(Error::Usage)?,
            };
            let released = match opts.remove("released") {
                None => None,
                Some(v) => {
                    let v = text("released", v)?;
                    Some(parse_rfc3339(&v).ok_or_else(|| {
                        Error::Usage(format!("--released {v:?} is not an RFC 3339 time"))
                    })?)
                }
            };
            Command::Index {
                key,
                version,
                expires,
                released,
                dir: one_dir(args)?,
            }
        }
        "verify" => {
            let v = text("pubkey", take("pubkey")?)?;
            let pubkey = parse_pubkey(&v).map_err(|e| Error::Usage(format!("--pubkey {e}")))?;
            Command::Verify {
                pubkey,
                dir: one_dir(args)?,
            }
        }
        "allowed-signers" => {
            no_args(&args)?;
            let key = opts.remove("key").map(PathBuf::from);
            let pubkey = match opts.remove("pubkey") {
                None => None,
                Some(v) => Some(
                    parse_pubkey(&text("pubkey", v)?)
                        .map_err(|e| Error::Usage(format!("--pubkey {e}")))?,
                ),
            };
            if key.is_some() == pubkey.is_some() {
                return Err(Error::Usage(
                    "allowed-signers needs one of --key and --pubkey".into(),
                ));
            }
            Command::AllowedSigners { key, pubkey }
        }
        "publish-installer" => {
            let key = take("key")?.into();
            let channel = text("channel", take("channel")?)?;
            check_channel(&channel).map_err(|e| Error::Usage(format!("--channel {e}")))?;
            let mut also_trust = Vec::new();
            if let Some(v) = opts.remove("also-trust") {
                for k in text("also-trust", v)?.split(',').map(str::trim) {
                    also_trust.push(
                        parse_pubkey(k)
                            .map_err(|e| Error::Usage(format!("--also-trust {k:?} {e}")))?,
                    );
                }
            }
            let units = opts.remove("units").map(PathBuf::from);
            let [script, out] = <[OsString; 2]>::try_from(args).map_err(|a| {
                Error::Usage(format!(
                    "publish-installer takes SCRIPT and OUTDIR, not {} argument(s)",
                    a.len()
                ))
            })?;
            Command::PublishInstaller {
                key,
                channel,
                also_trust,
                units,
                script: script.into(),
                out: out.into(),
            }
        }
        _ => unreachable!("invariant: every command is matched above"),
    })
}

fn run(cmd: Command) -> Result<(), Error> {
    match cmd {
        Command::Help => say(USAGE.trim_end()),
        Command::Keygen { out } => keygen(&out),
        Command::Pubkey { key } => {
            let kp = read_key(&key)?;
            say(&base64_encode(kp.pk.as_ref()))
        }
        Command::Sign { key, files } => {
            let kp = read_key(&key)?;
            for f in &files {
                let bytes = fs::read(f).map_err(|e| io_error("cannot read", f, e))?;
                let sig_path = sig_path_of(f);
                write_atomic(&sig_path, sig_line(&kp, &bytes).as_bytes())?;
                let sshsig_path = sshsig_path_of(f);
                write_atomic(
                    &sshsig_path,
                    sshsig(&kp, SSHSIG_NAMESPACE, &bytes).as_bytes(),
                )?;
                say(&format!(
                    "wrote {} and {}",
                    sig_path.display(),
                    sshsig_path.display()
                ))?;
            }
            Ok(())
        }
        Command::AllowedSigners { key, pubkey } => {
            let pk = match (key, pubkey) {
                (Some(key), _) => read_key(&key)?.pk,
                (None, Some(pk)) => pk,
                (None, None) => unreachable!("invariant: parse requires one of them"),
            };
            say(&allowed_signers_line(&pk))
        }
        Command::PublishInstaller {
            key,
            channel,
            also_trust,
            units,
            script,
            out,
        } => publish_installer(&key, &channel, &also_trust, units, &script, &out),
        Command::Index {
            key,
            version,
            expires,
            released,
            dir,
        } => index(&key, &version, expires, released, &dir),
        Command::Verify { pubkey, dir } => verify(&pubkey, &dir),
    }
}

/// One line on standard output; a closed or full stdout is a failure, not a panic.
fn say(line: &str) -> Result<(), Error> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| failed(format!("cannot write to standard output: {e}")))
}

// ---- keys -----------------------------------------------------------------

fn keygen(out: &Path) -> Result<(), Error> {
    let mut seed = [0u8; Seed::BYTES];
    pulse_agent::sys::getrandom(&mut seed)
        .map_err(|e| failed(format!("cannot get random bytes: {e}")))?;
    let kp = KeyPair::try_from_seed(Seed::new(seed))
        .map_err(|e| failed(format!("cannot make a key: {e}")))?;
    let public = base64_encode(kp.pk.as_ref());
    let text = format!(
        "# pulse-release Ed25519 private key: base64 of the 32-byte seed. Keep it secret.\n\
         # public key: {public}\n{}\n",
        base64_encode(&seed)
    );
    // O_CREAT|O_EXCL: an existing file (or a symlink planted in its place) is
    // never overwritten, and nobody else can have it open before it holds the key.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => failed(format!(
                "{} already exists: not overwriting it",
                out.display()
            )),
            _ => io_error("cannot create", out, e),
        })?;
    // The umask can only take bits away; set 0600 exactly so `read_key` accepts it.
    let written = f
        .set_permissions(fs::Permissions::from_mode(0o600))
        .and_then(|()| f.write_all(text.as_bytes()))
        .and_then(|()| f.sync_all());
    if let Err(e) = written {
        drop(f);
        let _ = fs::remove_file(out);
        return Err(io_error("cannot write", out, e));
    }
    say(&public)
}

/// Reads a private key file, refusing one that its group or others may use
/// (as ssh does): a key anyone else could read may already be someone else's.
fn read_key(path: &Path) -> Result<KeyPair, Error> {
    let f = File::open(path).map_err(|e| io_error("cannot open key", path, e))?;
    let meta = f
        .metadata()
        .map_err(|e| io_error("cannot stat key", path, e))?;
    if !meta.is_file() {
        return Err(failed(format!("{} is not a regular file", path.display())));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(failed(format!(
            "{}: permissions {mode:04o} are too open: a private key must be \
             accessible by its owner only (chmod 600 {0})",
            path.display()
        )));
    }
    let text = read_capped(f, KEY_CAP).map_err(|e| io_error("cannot read key", path, e))?;
    let text = String::from_utf8(text)
        .map_err(|_| failed(format!("{}: not a key file (not text)", path.display())))?;
    parse_key(&text).map_err(|e| failed(format!("{}: {e}", path.display())))
}

/// The key file's text → the key pair. Errors never quote the key line.
fn parse_key(text: &str) -> Result<KeyPair, String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines.next().ok_or("not a key file (no key line)")?;
    if lines.next().is_some() {
        return Err("not a key file (more than one key line)".into());
    }
    let seed = base64_decode(line)
        .filter(|b| b.len() == Seed::BYTES)
        .ok_or("not a key file (the key line is not base64 of a 32-byte seed)")?;
    let seed = Seed::from_slice(&seed).map_err(|e| e.to_string())?;
    KeyPair::try_from_seed(seed).map_err(|e| format!("not a usable key: {e}"))
}

/// A public key as the channel writes it: base64 of the raw 32 bytes.
fn parse_pubkey(s: &str) -> Result<PublicKey, String> {
    let bytes = base64_decode(s.trim())
        .filter(|b| b.len() == PublicKey::BYTES)
        .ok_or("is not base64 of a 32-byte Ed25519 public key")?;
    PublicKey::from_slice(&bytes).map_err(|e| e.to_string())
}

// ---- signatures -----------------------------------------------------------

/// `<file>.sig` beside `<file>`.
fn sig_path_of(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// A `.sig` file's content: the signature in padded base64, one line. Pure
/// Ed25519 (RFC 8032, deterministic): the same key and bytes give the same line.
fn sig_line(kp: &KeyPair, message: &[u8]) -> String {
    format!("{}\n", base64_encode(kp.sk.sign(message, None).as_ref()))
}

/// Reads a `.sig` file, accepting only the exact form the channel defines:
/// padded base64 of 64 bytes and one newline.
fn read_sig(path: &Path) -> Result<Signature, String> {
    let f = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let bytes =
        read_capped(f, SIG_CAP).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = std::str::from_utf8(&bytes).unwrap_or_default();
    let line = text.strip_suffix('\n').unwrap_or_default();
    base64_decode(line)
        .filter(|b| b.len() == Signature::BYTES && base64_encode(b) == line)
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or_else(|| {
            format!(
                "{} is not one line of padded base64 of a 64-byte signature",
                path.display()
            )
        })
}

// ---- OpenSSH signatures ---------------------------------------------------

/// `<file>.sshsig` beside `<file>`.
fn sshsig_path_of(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sshsig");
    PathBuf::from(s)
}

/// Appends an SSH wire `string`: a big-endian u32 length, then the bytes.
fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("invariant: SSH strings here are short");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The `ssh-ed25519` public key blob (RFC 8709): what `allowed_signers` and
/// an `.sshsig` carry.
fn ssh_public_blob(pk: &PublicKey) -> Vec<u8> {
    let mut blob = Vec::new();
    put_string(&mut blob, b"ssh-ed25519");
    put_string(&mut blob, pk.as_ref());
    blob
}

/// `pulse-agent-release ssh-ed25519 AAAA...`: one line of an ssh-keygen
/// `allowed_signers` file trusting this key.
fn allowed_signers_line(pk: &PublicKey) -> String {
    format!(
        "{PRINCIPAL} ssh-ed25519 {}",
        base64_encode(&ssh_public_blob(pk))
    )
}

/// What an SSHSIG signature signs (PROTOCOL.sshsig): the magic, the
/// namespace, an empty reserved field, the hash name and the message's hash.
fn sshsig_signed_data(namespace: &str, sha512: &[u8]) -> Vec<u8> {
    let mut data = b"SSHSIG".to_vec();
    put_string(&mut data, namespace.as_bytes());
    put_string(&mut data, b"");
    put_string(&mut data, b"sha512");
    put_string(&mut data, sha512);
    data
}

/// An armored OpenSSH signature of `message` in `namespace`, as
/// `ssh-keygen -Y sign -n NAMESPACE` writes it for an Ed25519 key: the same
/// bytes, since Ed25519 signatures are deterministic.
fn sshsig(kp: &KeyPair, namespace: &str, message: &[u8]) -> String {
    let hash = Sha512::digest(message);
    let signature = kp.sk.sign(sshsig_signed_data(namespace, &hash), None);
    let mut sig_blob = Vec::new();
    put_string(&mut sig_blob, b"ssh-ed25519");
    put_string(&mut sig_blob, signature.as_ref());
    let mut blob = b"SSHSIG".to_vec();
    blob.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut blob, &ssh_public_blob(&kp.pk));
    put_string(&mut blob, namespace.as_bytes());
    put_string(&mut blob, b"");
    put_string(&mut blob, b"sha512");
    put_string(&mut blob, &sig_blob);
    let b64 = base64_encode(&blob);
    let mut out = String::from("-----BEGIN SSH SIGNATURE-----\n");
    for line in b64.as_bytes().chunks(70) {
        out.push_str(std::str::from_utf8(line).expect("invariant: base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END SSH SIGNATURE-----\n");
    out
}

/// Reads SSH wire `string`s off the front of a slice.
struct Wire<'a>(&'a [u8]);

impl<'a> Wire<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.bytes(4)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }
}

/// Checks an armored `.sshsig` (ours or `ssh-keygen -Y sign`'s): made by
/// `pk`, in `namespace`, over a message whose SHA-512 is `sha512`.
fn check_sshsig(
    pk: &PublicKey,
    namespace: &str,
    sha512: &[u8],
    armored: &str,
) -> Result<(), String> {
    let body = armored
        .trim_end()
        .strip_prefix("-----BEGIN SSH SIGNATURE-----")
        .and_then(|s| s.strip_suffix("-----END SSH SIGNATURE-----"))
        .ok_or("not an armored SSH signature")?;
    let b64: String = body.split_whitespace().collect();
    let blob = base64_decode(&b64).ok_or("its body is not base64")?;
    let mut w = Wire(&blob);
    let malformed = || "malformed SSHSIG blob".to_string();
    if w.bytes(6) != Some(b"SSHSIG") || w.u32() != Some(1) {
        return Err("not an SSHSIG version 1 signature".into());
    }
    if w.string().ok_or_else(malformed)? != ssh_public_blob(pk).as_slice() {
        return Err("made by another key (or not an ssh-ed25519 key)".into());
    }
    let ns = w.string().ok_or_else(malformed)?;
    if ns != namespace.as_bytes() {
        return Err(format!(
            "namespace {:?}, not {namespace:?}",
            String::from_utf8_lossy(ns)
        ));
    }
    let _reserved = w.string().ok_or_else(malformed)?;
    if w.string().ok_or_else(malformed)? != b"sha512" {
        return Err("hash algorithm is not sha512".into());
    }
    let mut sig = Wire(w.string().ok_or_else(malformed)?);
    if !w.0.is_empty() || sig.string() != Some(b"ssh-ed25519") {
        return Err(malformed());
    }
    let raw = sig.string().ok_or_else(malformed)?;
    let signature = Signature::from_slice(raw).map_err(|_| malformed())?;
    pk.verify(sshsig_signed_data(namespace, sha512), &signature)
        .map_err(|_| "signature does not verify with this key".to_string())
}

/// Reads and checks the `.sshsig` beside `path`.
fn verify_sshsig_of(pk: &PublicKey, path: &Path, sha512: &[u8]) -> Result<(), String> {
    let sshsig_path = sshsig_path_of(path);
    let f = File::open(&sshsig_path)
        .map_err(|e| format!("cannot open {}: {e}", sshsig_path.display()))?;
    let bytes = read_capped(f, SSHSIG_CAP)
        .map_err(|e| format!("cannot read {}: {e}", sshsig_path.display()))?;
    let text = String::from_utf8(bytes).unwrap_or_default();
    check_sshsig(pk, SSHSIG_NAMESPACE, sha512, &text)
        .map_err(|e| format!("{}: {e}", sshsig_path.display()))
}

// ---- publish-installer -----------------------------------------------------

/// The default channel URL baked into the installer: https, and nothing a
/// single-quoted shell string could not hold.
fn check_channel(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url:?} is not an https:// URL"))?;
    if rest.is_empty()
        || !url
            .bytes()
            .all(|c| c.is_ascii_graphic() && c != b'\'' && c != b'\\')
    {
        return Err(format!(
            "{url:?} has a character an installer line cannot hold"
        ));
    }
    Ok(())
}

/// The shell function the published installer gets in place of its
/// `# pulse-release: units` line: `embedded_unit VARIANT NAME` prints one
/// unit file (hardened or compat) from a quoted here-document.
fn units_function(units: &Path) -> Result<String, Error> {
    let mut f = String::from(
        "# Filled in by pulse-release publish-installer from contrib/systemd/.\n\
         embedded_unit() {\n\tcase \"$1/$2\" in\n",
    );
    for (variant, dir) in [
        ("hardened", units.to_owned()),
        ("compat", units.join("compat")),
    ] {
        for name in UNITS {
            // Timers are shared: the installer takes the hardened copy for
            // both sets.
            if variant == "compat" && name.ends_with(".timer") {
                continue;
            }
            let path = dir.join(name);
            let text = fs::read_to_string(&path).map_err(|e| io_error("cannot read", &path, e))?;
            if text.lines().any(|l| l == UNIT_END) || !text.ends_with('\n') {
                return Err(failed(format!(
                    "{}: a line is {UNIT_END} or the file does not end in a newline",
                    path.display()
                )));
            }
            f.push_str(&format!(
                "\t{variant}/{name})\n\t\tcat <<'{UNIT_END}'\n{text}{UNIT_END}\n\t\t;;\n"
            ));
        }
    }
    f.push_str("\t*) return 1 ;;\n\tesac\n}\n");
    Ok(f)
}

fn publish_installer(
    key: &Path,
    channel: &str,
    also_trust: &[PublicKey],
    units: Option<PathBuf>,
    script: &Path,
    out: &Path,
) -> Result<(), Error> {
    let kp = read_key(key)?;
    let units = units.unwrap_or_else(|| script.parent().unwrap_or(Path::new(".")).join("systemd"));
    let text = fs::read_to_string(script).map_err(|e| io_error("cannot read", script, e))?;
    let mut keys = vec![base64_encode(kp.pk.as_ref())];
    for k in also_trust {
        let k = base64_encode(k.as_ref());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let units_fn = units_function(&units)?;
    let mut published = String::with_capacity(text.len() + units_fn.len());
    let mut seen = [0usize; 3];
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches('\n');
        if bare.ends_with(MARK_KEYS) {
            seen[0] += 1;
            published.push_str(&format!("RELEASE_KEYS='{}' {MARK_KEYS}\n", keys.join(" ")));
        } else if bare.ends_with(MARK_CHANNEL) {
            seen[1] += 1;
            published.push_str(&format!("DEFAULT_CHANNEL='{channel}' {MARK_CHANNEL}\n"));
        } else if bare.ends_with(MARK_UNITS) {
            seen[2] += 1;
            published.push_str(&units_fn);
        } else {
            published.push_str(line);
        }
    }
    for (n, mark) in seen.iter().zip([MARK_KEYS, MARK_CHANNEL, MARK_UNITS]) {
        if *n != 1 {
            return Err(failed(format!(
                "{}: {n} lines end in {mark:?}, expected exactly one",
                script.display()
            )));
        }
    }
    fs::create_dir_all(out).map_err(|e| io_error("cannot create", out, e))?;
    let path = out.join("install.sh");
    write_atomic(&path, published.as_bytes())?;
    let sig_path = sshsig_path_of(&path);
    write_atomic(
        &sig_path,
        sshsig(&kp, INSTALLER_NAMESPACE, published.as_bytes()).as_bytes(),
    )?;
    say(&format!(
        "wrote {} (channel {channel}, {} key(s), units from {}) and {}",
        path.display(),
        keys.len(),
        units.display(),
        sig_path.display()
    ))
}

// ---- index ----------------------------------------------------------------

/// One asset of a release, as release.json lists it.
struct Asset {
    target: &'static str,
    file: String,
    size: u64,
    sha256: String,
}

fn index(
    key: &Path,
    version: &str,
    expires: Expires,
    released: Option<SystemTime>,
    dir: &Path,
) -> Result<(), Error> {
    let kp = read_key(key)?;
    let now = SystemTime::now();
    // Whole seconds: the index is read by people too.
    let released = released.unwrap_or_else(|| {
        UNIX_EPOCH
            + Duration::from_secs(now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
    });
    let expires = match expires {
        Expires::After(d) => released
            .checked_add(d)
            .ok_or_else(|| Error::Usage("--expires is too far away".into()))?,
        Expires::At(t) => t,
    };
    if expires <= now {
        return Err(Error::Usage(format!(
            "--expires gives {}, which is not in the future",
            rfc3339(expires)
        )));
    }
    if expires <= released {
        return Err(Error::Usage(format!(
            "--expires gives {}, not after --released {}",
            rfc3339(expires),
            rfc3339(released)
        )));
    }

    let mut assets = Vec::new();
    for &(target, _) in exe::TARGETS {
        let file = format!("{NAME}-{target}");
        let path = dir.join(&file);
        match fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("cannot stat", &path, e)),
            Ok(m) if !m.is_file() => {
                return Err(failed(format!("{} is not a regular file", path.display())));
            }
            Ok(_) => {}
        }
        // The header first: a misnamed binary is refused before it is hashed.
        let in_file = |e: String| failed(format!("{}: {e}", path.display()));
        check_target(&read_header(&path).map_err(in_file)?, target).map_err(in_file)?;
        let scan = scan(&path, None).map_err(in_file)?;
        check_target(&scan.header, target).map_err(in_file)?;
        assets.push(Asset {
            target,
            file,
            size: scan.size,
            sha256: scan.sha256,
        });
    }
    if assets.is_empty() {
        let names: Vec<String> = exe::TARGETS
            .iter()
            .map(|(t, _)| format!("{NAME}-{t}"))
            .collect();
        return Err(failed(format!(
            "no asset in {}: expected at least one of {}",
            dir.display(),
            names.join(", ")
        )));
    }

    for a in &assets {
        // Ed25519 hashes the message twice (nonce, then challenge), so the
        // signer needs the whole file; the tool runs on a maintainer's machine.
        let path = dir.join(&a.file);
        let bytes = fs::read(&path).map_err(|e| io_error("cannot read", &path, e))?;
        if bytes.len() as u64 != a.size {
            return Err(failed(format!(
                "{} changed while it was being read",
                path.display()
            )));
        }
        write_atomic(&sig_path_of(&path), sig_line(&kp, &bytes).as_bytes())?;
        write_atomic(
            &sshsig_path_of(&path),
            sshsig(&kp, SSHSIG_NAMESPACE, &bytes).as_bytes(),
        )?;
    }

    let json = release_json(version, released, expires, &assets);
    let index_path = dir.join(INDEX);
    write_atomic(&index_path, json.as_bytes())?;
    write_atomic(
        &sig_path_of(&index_path),
        sig_line(&kp, json.as_bytes()).as_bytes(),
    )?;
    write_atomic(
        &sshsig_path_of(&index_path),
        sshsig(&kp, SSHSIG_NAMESPACE, json.as_bytes()).as_bytes(),
    )?;

    for a in &assets {
        say(&format!(
            "{:<12} {} {} bytes sha256 {}",
            a.target, a.file, a.size, a.sha256
        ))?;
    }
    say(&format!(
        "wrote {}, {INDEX}.sig and {INDEX}.sshsig: {NAME} {version}, released {}, expires {}, public key {}",
        index_path.display(),
        rfc3339(released),
        rfc3339(expires),
        base64_encode(kp.pk.as_ref())
    ))
}

/// release.json, pretty-printed in the documented key order, newline-ended.
/// Built by hand (serde_json sorts keys); strings go through serde_json for
/// escaping, though every one of them is already checked to be plain.
fn release_json(
    version: &str,
    released: SystemTime,
    expires: SystemTime,
    assets: &[Asset],
) -> String {
    let s = |v: &str| Value::from(v).to_string();
    let mut out = String::new();
    out.push_str("{\n");
    out.push_str(&format!("  \"name\": {},\n", s(NAME)));
    out.push_str(&format!("  \"version\": {},\n", s(version)));
    out.push_str(&format!("  \"released\": {},\n", s(&rfc3339(released))));
    out.push_str(&format!("  \"expires\": {},\n", s(&rfc3339(expires))));
    out.push_str("  \"assets\": {\n");
    for (i, a) in assets.iter().enumerate() {
        out.push_str(&format!("    {}: {{\n", s(a.target)));
        out.push_str(&format!("      \"file\": {},\n", s(&a.file)));
        out.push_str(&format!("      \"size\": {},\n", a.size));
        out.push_str(&format!("      \"sha256\": {}\n", s(&a.sha256)));
        out.push_str(if i + 1 < assets.len() {
            "    },\n"
        } else {
            "    }\n"
        });
    }
    out.push_str("  }\n}\n");
    out
}

// ---- verify ---------------------------------------------------------------

fn verify(pubkey: &PublicKey, dir: &Path) -> Result<(), Error> {
    let index_path = dir.join(INDEX);
    let json = File::open(&index_path)
        .and_then(|f| read_capped(f, INDEX_CAP))
        .map_err(|e| io_error("cannot read", &index_path, e))?;
    let sig = read_sig(&sig_path_of(&index_path)).map_err(failed)?;
    if pubkey.verify(&json, &sig).is_err() {
        say(&format!(
            "FAILED  {INDEX}: its signature does not verify with this key"
        ))?;
        return Err(failed(format!(
            "{INDEX}.sig is not a signature of {INDEX} by this key"
        )));
    }
    if let Err(e) = verify_sshsig_of(pubkey, &index_path, &Sha512::digest(&json)) {
        say(&format!("FAILED  {INDEX}: {e}"))?;
        return Err(failed(e));
    }
    let release = parse_release(&json, SystemTime::now())
        .map_err(|e| failed(format!("{}: {e}", index_path.display())))?;
    say(&format!(
        "ok      {INDEX}: {NAME} {}, released {}, expires {}, {} asset(s)",
        release.version,
        release.released,
        release.expires,
        release.assets.len()
    ))?;
    let mut bad = 0;
    for a in &release.assets {
        match verify_asset(pubkey, dir, a) {
            Ok(()) => say(&format!(
                "ok      {:<12} {} {} bytes",
                a.target, a.file, a.size
            ))?,
            Err(problems) => {
                bad += 1;
                say(&format!(
                    "FAILED  {:<12} {}: {}",
                    a.target,
                    a.file,
                    problems.join("; ")
                ))?;
            }
        }
    }
    if bad > 0 {
        return Err(failed(format!(
            "{bad} of {} asset(s) failed verification",
            release.assets.len()
        )));
    }
    Ok(())
}

/// release.json, read back and checked.
struct Release {
    version: String,
    released: String,
    expires: String,
    assets: Vec<Asset>,
}

fn parse_release(json: &[u8], now: SystemTime) -> Result<Release, String> {
    let doc: Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    let text = |key: &str| -> Result<String, String> {
        doc.get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("no string {key:?}"))
    };
    let name = text("name")?;
    if name != NAME {
        return Err(format!("name is {name:?}, not {NAME:?}"));
    }
    let version = text("version")?;
    check_version(&version).map_err(|e| format!("version {e}"))?;
    let time = |key: &str| -> Result<(String, SystemTime), String> {
        let s = text(key)?;
        let t = parse_rfc3339(&s).ok_or_else(|| format!("{key} {s:?} is not an RFC 3339 time"))?;
        Ok((s, t))
    };
    let (released, released_at) = time("released")?;
    let (expires, expires_at) = time("expires")?;
    if expires_at <= released_at {
        return Err(format!(
            "expires {expires} is not after released {released}"
        ));
    }
    if expires_at <= now {
        return Err(format!("expired at {expires}"));
    }
    let listed = doc
        .get("assets")
        .and_then(Value::as_object)
        .ok_or("no object \"assets\"")?;
    if listed.is_empty() {
        return Err("no assets".into());
    }
    if let Some(unknown) = listed
        .keys()
        .find(|k| !exe::TARGETS.iter().any(|(t, _)| t == k))
    {
        return Err(format!("asset {unknown:?} is not a known target"));
    }
    let mut assets = Vec::new();
    for &(target, _) in exe::TARGETS {
        let Some(a) = listed.get(target) else {
            continue;
        };
        let file = a
            .get("file")
            .and_then(Value::as_str)
            .filter(|f| index::plain_file_name(f))
            .ok_or_else(|| format!("asset {target}: \"file\" is not a plain file name"))?;
        let size = a
            .get("size")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("asset {target}: \"size\" is not a whole number"))?;
        let sha256 = a
            .get("sha256")
            .and_then(Value::as_str)
            .filter(|h| h.len() == 64 && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
            .ok_or_else(|| format!("asset {target}: \"sha256\" is not 64 lowercase hex digits"))?;
        assets.push(Asset {
            target,
            file: file.to_owned(),
            size,
            sha256: sha256.to_owned(),
        });
    }
    Ok(Release {
        version,
        released,
        expires,
        assets,
    })
}

/// Every problem with one asset (an empty list is never returned as `Err`).
fn verify_asset(pubkey: &PublicKey, dir: &Path, a: &Asset) -> Result<(), Vec<String>> {
    let path = dir.join(&a.file);
    let mut problems = Vec::new();
    let state = match read_sig(&sig_path_of(&path)) {
        Ok(sig) => match pubkey.verify_incremental(&sig) {
            Ok(state) => Some(state),
            Err(_) => {
                problems.push("signature invalid".to_owned());
                None
            }
        },
        Err(e) => {
            problems.push(e);
            None
        }
    };
    let had_state = state.is_some();
    let scan = match scan(&path, state) {
        Ok(scan) => scan,
        Err(e) => {
            problems.push(e);
            return Err(problems);
        }
    };
    if scan.size != a.size {
        problems.push(format!("size {}, release.json says {}", scan.size, a.size));
    }
    if scan.sha256 != a.sha256 {
        problems.push(format!(
            "sha256 {}, release.json says {}",
            scan.sha256, a.sha256
        ));
    }
    if had_state && !scan.signature_ok {
        problems.push("signature does not verify with this key".to_owned());
    }
    if let Err(e) = check_target(&scan.header, a.target) {
        problems.push(e);
    }
    if let Err(e) = verify_sshsig_of(pubkey, &path, &scan.sha512) {
        problems.push(e);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

// ---- files ----------------------------------------------------------------

/// What one streamed pass over a file found.
struct Scan {
    header: Vec<u8>,
    size: u64,
    sha256: String,
    /// The raw SHA-512, which an `.sshsig` signs.
    sha512: Vec<u8>,
    /// Whether the signature given to [`scan`] verifies over the whole file.
    signature_ok: bool,
}

/// Reads `path` once in [`CHUNK`]s: its first [`exe::HEADER_LEN`] bytes, its
/// size, its SHA-256 and, when given one, whether a signature verifies.
fn scan(
    path: &Path,
    mut verifying: Option<ed25519_compact::VerifyingState>,
) -> Result<Scan, String> {
    let mut f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut hasher = Sha256::new();
    let mut hasher512 = Sha512::new();
    let mut header = Vec::with_capacity(exe::HEADER_LEN);
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("cannot read: {e}")),
        };
        let chunk = &buf[..n];
        let want = exe::HEADER_LEN - header.len();
        header.extend_from_slice(&chunk[..want.min(n)]);
        hasher.update(chunk);
        hasher512.update(chunk);
        if let Some(v) = verifying.as_mut() {
            v.absorb(chunk);
        }
        size += n as u64;
    }
    Ok(Scan {
        header,
        size,
        sha256: pulse_agent::deliver::hex(&hasher.finalize()),
        sha512: hasher512.finalize().to_vec(),
        signature_ok: verifying.is_some_and(|v| v.verify().is_ok()),
    })
}

/// The first [`exe::HEADER_LEN`] bytes of a file (fewer if it is shorter).
fn read_header(path: &Path) -> Result<Vec<u8>, String> {
    let f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut header = Vec::with_capacity(exe::HEADER_LEN);
    f.take(exe::HEADER_LEN as u64)
        .read_to_end(&mut header)
        .map_err(|e| format!("cannot read: {e}"))?;
    Ok(header)
}

/// The header must be an ELF that the target name fits (the updater refuses
/// anything else; better to find out before publishing).
fn check_target(header: &[u8], target: &str) -> Result<(), String> {
    let elf = match exe::identify(header) {
        Some(exe::Kind::Elf(elf)) => elf,
        Some(kind) => return Err(format!("a {kind:?} executable, not a Linux ELF")),
        None => return Err("not an executable (no ELF header)".into()),
    };
    let fits: Vec<&str> = exe::targets_of(elf).collect();
    if fits.contains(&target) {
        return Ok(());
    }
    let bits = if elf.class == 2 { 64 } else { 32 };
    let is = if fits.is_empty() {
        format!(
            "an ELF for machine {} ({bits}-bit), no channel target",
            elf.machine
        )
    } else {
        format!("an ELF for {}", fits.join(" or "))
    };
    Err(format!("named for {target} but is {is}"))
}

/// At most `cap` bytes of a file; a longer one is an error, not a truncation.
fn read_capped(f: File, cap: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    f.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(io::Error::other(format!("larger than {cap} bytes")));
    }
    Ok(bytes)
}

/// Writes `path` (mode 0644) through a temporary file and a rename, so an
/// interrupted run leaves the old file or the new one, never half of one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let name = path
        .file_name()
        .ok_or_else(|| failed(format!("{} has no file name", path.display())))?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error("cannot write", path, e)
    })
}

// ---- argument values ------------------------------------------------------

/// `X.Y.Z` or `X.Y.Z-prerelease` (semver without build metadata): numbers
/// without leading zeros, pre-release identifiers of `[0-9A-Za-z-]`.
fn check_version(v: &str) -> Result<(), String> {
    let bad = || format!("{v:?} is not X.Y.Z or X.Y.Z-prerelease (no leading v)");
    let (core, pre) = match v.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (v, None),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    let number_ok = |n: &&str| {
        !n.is_empty()
            && n.bytes().all(|c| c.is_ascii_digit())
            && (n.len() == 1 || !n.starts_with('0'))
    };
    if numbers.len() != 3 || !numbers.iter().all(number_ok) {
        return Err(bad());
    }
    if let Some(pre) = pre {
        let ident_ok =
            |i: &str| !i.is_empty() && i.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
        if !pre.split('.').all(ident_ok) {
            return Err(bad());
        }
    }
    Ok(())
}

/// `90d`, `12h`, `30m`, `45s`, or an RFC 3339 time.
fn parse_expires(s: &str) -> Result<Expires, String> {
    if let Some(t) = parse_rfc3339(s) {
        return Ok(Expires::At(t));
    }
    let bad =
        || format!("--expires {s:?} is not a duration (90d, 12h, 30m, 45s) or an RFC 3339 time");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(unit).filter(|&s| s > 0).ok_or_else(bad)?;
    Ok(Expires::After(Duration::from_secs(secs)))
}
