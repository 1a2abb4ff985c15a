//! The updater: this agent replaces itself only with a build from its own
//! signed release channel, never with the stock Go agent a Pulse server
//! serves.
//!
//! One check-and-install, in this order (each failure names its check, in
//! the log and in `agent.update.lastError`, and leaves the installed binary
//! byte-identical with nothing of the download left behind):
//! 1. `index`, `index signature`: `release.json` (≤ 64 KiB, 30 s) and its
//!    `.sig` verify against a trusted key;
//! 2. `name`, `expiry`: the index is for `pulse-agent` and not expired; a
//!    version not newer than the running one is "up to date" (never a
//!    downgrade), one that was rolled back before is not installed again;
//! 3. `architecture`: the index has a build for this CPU;
//! 4. `download`: streamed into a temporary file beside the binary, hashed on
//!    the way, never more than min(100 MiB, the index's size) on disk;
//! 5. `size`, `sha256`, `binary signature`;
//! 6. `executable`, `machine`: a known magic; an ELF for this CPU;
//! 7. `--version`, `self-test`: the candidate, 0755, prints the index's
//!    version and passes `--self-test` with the agent's flags (the token in
//!    a 0600 file, never in argv), each within a deadline;
//! 8. `install`: `PATH.previous` keeps the old binary, one rename puts the
//!    new one in place (see `install.rs`); then appliance persistence.
//!
//! A new version is on trial (`record.rs`) until it has delivered a report;
//! the agent rolls it back when it crashes twice or the server refuses its
//! first three reports.

pub mod exe;
pub mod fetch;
pub mod index;
pub mod install;
pub mod record;

use std::ffi::OsString;
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ed25519_compact::PublicKey;

use crate::config::{Secret, ServerUrl};
use crate::deliver::{self, SystemStore, TlsOptions};
use fetch::Channel;
use index::{Asset, Release};
use record::{Record, Trial};

/// The largest binary ever downloaded.
pub const MAX_BINARY: u64 = 100 * 1024 * 1024;
/// First check after the daemon starts.
pub const FIRST_CHECK: Duration = Duration::from_secs(5);
/// Time between checks (plus up to a tenth of it, at random).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// The default key file.
pub const DEFAULT_KEY_FILE: &str = "/etc/pulse-agent/update-keys";
/// Keys compiled in from the build environment.
pub const BUILT_IN_KEYS: Option<&str> = option_env!("PULSE_UPDATE_KEYS");
/// The update lock, in the state directory: one check-and-install at a time.
pub const LOCK_FILE: &str = "update.lock";

/// Deadlines and caps; tests shorten them.
#[derive(Debug, Clone)]
pub struct Limits {
    pub index: Duration,
    pub download: Duration,
    pub run: Duration,
    pub max_binary: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            index: Duration::from_secs(30),
            download: Duration::from_secs(600),
            run: Duration::from_secs(30),
            max_binary: MAX_BINARY,
        }
    }
}

/// Everything one check-and-install needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub channel: ServerUrl,
    /// Trust for the channel: roots, system store and `--cacert`.
    pub cacert: Option<PathBuf>,
    pub keys: Vec<PublicKey>,
    /// The installed binary (symlinks resolved): what is replaced.
    pub binary: PathBuf,
    /// The running version (`v0.1.0`).
    pub running: String,
    pub target: &'static str,
    pub elf: exe::Elf,
    pub state_dir: PathBuf,
    /// The candidate's `--self-test` arguments: the agent's own flags
    /// (without the token, which goes in a file).
    pub self_test_args: Vec<OsString>,
    /// The candidate's environment: the agent's, without `PULSE_TOKEN`.
    pub env: Vec<(OsString, OsString)>,
    pub token: Option<Secret>,
    pub limits: Limits,
    /// `/`: where the Unraid and QNAP markers are looked for.
    pub platform_root: PathBuf,
    /// [`file_identity`] of `binary` when this process started.
    pub identity: Option<(u64, u64)>,
}

impl Settings {
    /// The settings of this agent, or why it cannot update itself (no
    /// channel, no trusted key, a CPU the channel has no name for, no path
    /// to its own binary). Key-file problems are logged.
    pub fn from_config(config: &crate::config::Config) -> Result<Settings, String> {
        let channel = config
            .update_url
            .clone()
            .ok_or("no release channel: set --update-url")?;
        let (keys, warnings) = trusted_keys(BUILT_IN_KEYS, &config.update_key_file);
        for w in warnings {
            log::warn!("{w}");
        }
        if keys.is_empty() {
            return Err(format!(
                "no trusted release key: this build has none (PULSE_UPDATE_KEYS) and {} lists none; a signature is never optional",
                config.update_key_file.display()
            ));
        }
        if config.url.is_none() {
            return Err(
                "no --url: a new version is on trial until it delivers a report, so updates need a server".into(),
            );
        }
        let target =
            exe::running_target().ok_or("the release channel has no builds for this CPU")?;
        // The agent's own executable (like /proc/self), symlinks resolved:
        // the file that is replaced.
        let binary = std::env::current_exe()
            .and_then(std::fs::canonicalize)
            .map_err(|e| format!("cannot find this program's own file: {e}"))?;
        Ok(Settings {
            channel,
            cacert: config.cacert.clone(),
            keys,
            running: crate::agent::version(),
            target,
            elf: exe::running(),
            state_dir: config.state_dir.clone(),
            self_test_args: config.flag_words.iter().map(Into::into).collect(),
            // Without the token, and without systemd's notification
            // variables: only the service's own process talks to systemd.
            env: std::env::vars_os()
                .filter(|(k, _)| {
                    k != "PULSE_TOKEN" && !crate::notify::VARIABLES.iter().any(|v| k == v)
                })
                .collect(),
            token: config.token.clone(),
            limits: Limits::default(),
            platform_root: PathBuf::from("/"),
            identity: file_identity(&binary),
            binary,
        })
    }
}

/// Device and inode of a file: whether the installed binary is still the
/// one this process started from.
pub fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A failed check: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub check: &'static str,
    pub detail: String,
}

impl Error {
    pub fn new(check: &'static str, detail: impl Into<String>) -> Error {
        Error {
            check,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} check failed: {}", self.check, self.detail)
    }
}

impl std::error::Error for Error {}

/// What a check-and-install came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The channel's version is not newer than this one.
    UpToDate {
        latest: String,
    },
    /// Newer, and not installed (`--check`).
    Available {
        version: String,
    },
    /// Newer, but rolled back before: never installed again.
    Refused {
        version: String,
    },
    /// A version installed earlier has not proven itself yet.
    OnTrial {
        version: String,
    },
    Installed {
        version: String,
    },
    /// Another run (`pulse-agent update`, a package) replaced the binary
    /// this process runs: restart into it.
    Replaced,
}

/// `agent.update` (spec §9).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum State {
    #[default]
    Idle,
    Checking,
    Updating,
    Error,
    Disabled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Checking => "checking",
            State::Updating => "updating",
            State::Error => "error",
            State::Disabled => "disabled",
        }
    }

    pub const ALL: [State; 5] = [
        State::Idle,
        State::Checking,
        State::Updating,
        State::Error,
        State::Disabled,
    ];
}

/// The updater's state as reports, `/status` and `/metrics` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    pub auto_update: bool,
    pub available: Option<String>,
    pub last_checked: Option<SystemTime>,
    pub last_attempt: Option<SystemTime>,
    pub last_success: Option<SystemTime>,
    pub last_error: Option<String>,
    pub checks: u64,
    pub failures: u64,
    pub installs: u64,
    pub rollbacks: u64,
}

impl Status {
    /// Off, with the reason (no channel, no key, switched off).
    pub fn disabled(why: Option<String>) -> Status {
        Status {
            state: State::Disabled,
            last_error: why,
            ..Status::default()
        }
    }

    /// What the record in the state directory says of earlier runs: the
    /// last install, and a rollback of the version this build replaced.
    pub fn restore(&mut self, record: &Record) {
        self.last_success = record.last_install;
        if let Some(r) = &record.rollback {
            self.state = State::Error;
            self.last_error = Some(rollback_message(r));
            self.rollbacks = 1;
        }
    }
}

fn rollback_message(r: &record::Rollback) -> String {
    format!("rolled back from {}: {}", r.from, r.why)
}

/// The trusted keys: the built-in ones and the key file's. The file is
/// used only when owned by root and writable by nobody else; problems come
/// back as warnings.
pub fn trusted_keys(built_in: Option<&str>, key_file: &Path) -> (Vec<PublicKey>, Vec<String>) {
    let mut warnings = Vec::new();
    let (mut keys, bad) = index::parse_keys(built_in.unwrap_or(""));
    warnings.extend(
        bad.into_iter()
            .map(|b| format!("built-in update keys: {b}")),
    );
    match std::fs::metadata(key_file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warnings.push(format!("{}: {e}", key_file.display())),
        Ok(meta) => {
            use std::os::unix::fs::MetadataExt;
            if meta.uid() != 0 || meta.mode() & 0o022 != 0 || !meta.is_file() {
                warnings.push(format!(
                    "{}: not used: it must be a file owned by root and writable by nobody else (owner {}, mode {:o})",
                    key_file.display(),
                    meta.uid(),
                    meta.mode() & 0o7777
                ));
            } else {
                match crate::state::read_trimmed(key_file, 64 * 1024) {
                    Ok(text) => {
                        let (more, bad) = index::parse_keys(text.as_deref().unwrap_or(""));
                        warnings.extend(
                            bad.into_iter()
                                .map(|b| format!("{}: {b}", key_file.display())),
                        );
                        for k in more {
                            if !keys.contains(&k) {
                                keys.push(k);
                            }
                        }
                    }
                    Err(e) => warnings.push(format!("{}: {e}", key_file.display())),
                }
            }
        }
    }
    (keys, warnings)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One check (and, with `install`, install), holding the update lock.
/// `status` is kept current as it goes.
pub fn run(s: &Settings, status: &Mutex<Status>, install: bool) -> Result<Outcome, Error> {
    let now = SystemTime::now();
    {
        let mut st = lock(status);
        st.state = State::Checking;
        st.checks += 1;
    }
    let result = run_locked(s, status, install);
    let mut st = lock(status);
    st.last_checked = Some(now);
    match &result {
        Ok(Outcome::Installed { .. }) => {
            st.state = State::Idle;
            st.available = None;
            st.last_error = None;
            st.last_success = Some(SystemTime::now());
            st.installs += 1;
        }
        Ok(Outcome::Refused { version }) => {
            st.state = State::Error;
            st.available = Some(version.clone());
            let rollback = Record::load(&s.state_dir).rollback;
            st.last_error = Some(match rollback {
                Some(r) if index::same_version(&r.from, version) => {
                    format!("{}; not installing it again", rollback_message(&r))
                }
                _ => format!("{version} was rolled back before; not installing it again"),
            });
        }
        Ok(Outcome::Available { version }) => {
            st.state = State::Idle;
            st.available = Some(version.clone());
            st.last_error = None;
        }
        Ok(Outcome::UpToDate { .. } | Outcome::OnTrial { .. } | Outcome::Replaced) => {
            st.state = State::Idle;
            st.available = None;
            st.last_error = None;
        }
        Err(e) => {
            st.state = State::Error;
            st.last_error = Some(e.to_string());
            st.failures += 1;
        }
    }
    result
}

fn run_locked(s: &Settings, status: &Mutex<Status>, install: bool) -> Result<Outcome, Error> {
    // `--check` changes nothing on disk: no lock file, no cleaning up.
    let _lock = if install {
        if let Some(why) = crate::state::ensure_dir(&s.state_dir)
            .map_err(|e| Error::new("state", format!("{}: {e}", s.state_dir.display())))?
        {
            log::warn!("{why}");
        }
        let lock = crate::state::Lock::try_take_file(&s.state_dir.join(LOCK_FILE))
            .map_err(|e| Error::new("lock", format!("another update is running ({e})")))?;
        let left = install::remove_leftovers(&s.binary)
            .into_iter()
            .chain(remove_token_copies(&s.state_dir));
        for p in left {
            log::info!("removed {}, left by an interrupted update", p.display());
        }
        Some(lock)
    } else {
        None
    };
    if s.identity.is_some() && file_identity(&s.binary) != s.identity {
        return Ok(Outcome::Replaced);
    }
    let mut record = Record::load(&s.state_dir);
    if let Some(t) = &record.trial {
        if index::same_version(&t.to, &s.running) {
            return Ok(Outcome::OnTrial {
                version: t.to.clone(),
            });
        }
        // Recorded, but the binary this process runs is still in place:
        // the rename never happened (or was undone). Stale.
        record.trial = None;
        if install {
            save(&record, s)?;
        }
    }
    let tls = deliver::tls_config(
        &TlsOptions {
            cacert: s.cacert.clone(),
            ..TlsOptions::default()
        },
        &SystemStore::from_env(&|k| std::env::var_os(k)),
    )
    .map_err(|e| Error::new("index", e.to_string()))?;
    let channel = Channel::new(
        &s.channel,
        tls,
        &format!("pulse-agent/{} (update)", s.running),
    );
    let (release, asset) = match check(s, &channel)? {
        Checked::UpToDate(latest) => return Ok(Outcome::UpToDate { latest }),
        Checked::Newer(release, asset) => (release, asset),
    };
    let version = release.version.clone();
    if record.is_refused(&version) {
        return Ok(Outcome::Refused { version });
    }
    lock(status).available = Some(version.clone());
    if !install {
        return Ok(Outcome::Available { version });
    }
    {
        let mut st = lock(status);
        st.state = State::Updating;
        st.last_attempt = Some(SystemTime::now());
    }
    log::info!("installing pulse-agent {version} (running {})", s.running);
    download_and_install(s, &channel, &release, &asset, &mut record)?;
    Ok(Outcome::Installed { version })
}

fn save(record: &Record, s: &Settings) -> Result<(), Error> {
    record.save(&s.state_dir).map_err(|e| {
        Error::new(
            "state",
            format!("{}: {e}", record::path(&s.state_dir).display()),
        )
    })
}

enum Checked {
    UpToDate(String),
    Newer(Release, Asset),
}

/// Checks 1-3: the index, its signature, name, expiry, version, asset.
fn check(s: &Settings, channel: &Channel) -> Result<Checked, Error> {
    let bytes = channel
        .small("release.json", index::MAX_INDEX, s.limits.index)
        .map_err(|e| Error::new("index", e))?;
    let sig = channel
        .small("release.json.sig", index::MAX_SIG, s.limits.index)
        .map_err(|e| Error::new("index signature", e))?;
    let sig = index::parse_signature(&sig)
        .map_err(|e| Error::new("index signature", format!("release.json.sig: {e}")))?;
    if !index::verify(&s.keys, &bytes, &sig) {
        return Err(Error::new(
            "index signature",
            "release.json is not signed by a trusted key",
        ));
    }
    let release = index::parse(&bytes).map_err(|e| Error::new("index", e))?;
    if release.name != index::NAME {
        return Err(Error::new(
            "name",
            format!("the index is for {:?}, not {:?}", release.name, index::NAME),
        ));
    }
    if release.expires <= SystemTime::now() {
        return Err(Error::new(
            "expiry",
            format!(
                "the index expired at {} (a stale or replayed index)",
                crate::report::rfc3339(release.expires)
            ),
        ));
    }
    if !index::is_newer(&release.version, &s.running) {
        return Ok(Checked::UpToDate(release.version));
    }
    let asset = release.asset(s.target).cloned().ok_or_else(|| {
        Error::new(
            "architecture",
            format!(
                "version {} has no build for {} (it has {})",
                release.version,
                s.target,
                release
                    .assets
                    .iter()
                    .map(|(t, _)| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    if asset.size > s.limits.max_binary {
        return Err(Error::new(
            "size",
            format!(
                "the index says {} bytes, over the limit of {}",
                asset.size, s.limits.max_binary
            ),
        ));
    }
    Ok(Checked::Newer(release, asset))
}

/// Removes a file when dropped, unless disarmed.
struct Cleanup(Option<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Checks 4-8 and the install.
fn download_and_install(
    s: &Settings,
    channel: &Channel,
    release: &Release,
    asset: &Asset,
    record: &mut Record,
) -> Result<(), Error> {
    let (temp, mut file) = install::create_temp(&s.binary).map_err(|e| {
        Error::new(
            "download",
            format!("cannot create a file beside {}: {e}", s.binary.display()),
        )
    })?;
    let mut cleanup = Cleanup(Some(temp.clone()));
    let limit = asset.size.min(s.limits.max_binary);
    let (size, sha256) = channel
        .download(&asset.file, &mut file, limit, s.limits.download)
        .map_err(|e| Error::new("download", e.to_string()))?;
    if size != asset.size {
        return Err(Error::new(
            "size",
            format!("downloaded {size} bytes; the index says {}", asset.size),
        ));
    }
    if sha256 != asset.sha256 {
        return Err(Error::new(
            "sha256",
            format!(
                "the download's SHA-256 is {}; the index says {}",
                deliver::hex(&sha256),
                deliver::hex(&asset.sha256)
            ),
        ));
    }
    let sig_file = format!("{}.sig", asset.file);
    let sig = channel
        .small(&sig_file, index::MAX_SIG, s.limits.index)
        .map_err(|e| Error::new("binary signature", e))?;
    let sig = index::parse_signature(&sig)
        .map_err(|e| Error::new("binary signature", format!("{sig_file}: {e}")))?;
    // Read back from disk (in chunks): what is verified is what would be
    // installed.
    let signed = index::verify_file(&s.keys, &temp, &sig)
        .map_err(|e| Error::new("binary signature", format!("{}: {e}", temp.display())))?;
    if !signed {
        return Err(Error::new(
            "binary signature",
            format!("{} is not signed by a trusted key", asset.file),
        ));
    }
    install::check_executable(&temp, s.elf).map_err(|(check, why)| Error::new(check, why))?;
    install::seal(&file).map_err(|e| Error::new("install", format!("{}: {e}", temp.display())))?;
    drop(file);
    let deadline = || Instant::now() + s.limits.run;
    let printed = install::trial_run(&temp, &["--version".into()], &s.env, deadline())
        .map_err(|e| Error::new("--version", e))?;
    if !index::same_version(printed.trim(), &release.version) {
        return Err(Error::new(
            "--version",
            format!(
                "the new binary says it is {:?}; the index says {}",
                printed.trim(),
                release.version
            ),
        ));
    }
    self_test(s, &temp, deadline())?;
    // Recorded before the rename: a new binary at the path always finds
    // its trial.
    record.trial = Some(Trial {
        from: s.running.clone(),
        to: release.version.clone(),
        installed_at: SystemTime::now(),
        running: false,
        crashes: 0,
        refusals: 0,
    });
    let before = record.clone();
    record.rollback = None;
    record.last_install = record.trial.as_ref().map(|t| t.installed_at);
    save(record, s)?;
    if let Err(e) = install::swap(&temp, &s.binary) {
        // Nothing was installed: the record says what it said before.
        *record = before;
        if let Err(e) = save(record, s) {
            log::warn!("{e}");
        }
        return Err(Error::new("install", e.to_string()));
    }
    cleanup.0 = None;
    for why in install::persist(&s.platform_root, &s.binary, &s.state_dir) {
        log::warn!("{why}");
    }
    log::info!(
        "installed pulse-agent {} at {} (was {}; the old binary is {})",
        release.version,
        s.binary.display(),
        s.running,
        install::previous_path(&s.binary).display()
    );
    Ok(())
}

const TOKEN_COPY: &str = ".self-test-token-";

/// Token copies a self-test run left when the agent was stopped during it.
fn remove_token_copies(state_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .as_encoded_bytes()
                .starts_with(TOKEN_COPY.as_bytes())
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .map(|e| e.path())
        .collect()
}

/// `<candidate> <flags> --self-test`, the token in a 0600 file.
fn self_test(s: &Settings, candidate: &Path, deadline: Instant) -> Result<(), Error> {
    let fail = |why: String| Error::new("self-test", why);
    let mut args = s.self_test_args.clone();
    let mut token_file = Cleanup(None);
    if let Some(token) = &s.token {
        let path = s
            .state_dir
            .join(format!("{TOKEN_COPY}{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| fail(format!("{}: {e}", path.display())))?;
        token_file.0 = Some(path.clone());
        f.write_all(token.expose().as_bytes())
            .map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let mut arg = OsString::from("--token-file=");
        arg.push(&path);
        args.push(arg);
    }
    args.push("--self-test".into());
    install::trial_run(candidate, &args, &s.env, deadline).map_err(fail)?;
    Ok(())
}

/// Where a trial stands after a start or a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No trial, or this run is not the version on trial.
    None,
    /// On trial; `from` is what reports say in `agent.updatedFrom`.
    Pending { from: String },
    /// The version proved itself (a report was delivered).
    Passed { from: String },
    /// It failed its trial: roll back.
    RollBack(String),
}

/// Called when the agent starts with a URL: counts a run that ended
/// without a clean stop, and marks this one as running.
pub fn trial_start(state_dir: &Path, running: &str) -> Verdict {
    let mut record = Record::load(state_dir);
    let Some(t) = record.trial.as_mut() else {
        return Verdict::None;
    };
    if !index::same_version(&t.to, running) {
        return Verdict::None;
    }
    if t.running {
        t.crashes += 1;
    }
    if t.crashes >= 2 {
        return Verdict::RollBack(format!("it exited abnormally {} times", t.crashes));
    }
    t.running = true;
    let from = t.from.clone();
    if let Err(e) = record.save(state_dir) {
        log::warn!("cannot record the update trial: {e}");
    }
    Verdict::Pending { from }
}

/// Called with the HTTP statuses the server gave reports this version
/// built (a server that could not be reached gave none). A 2xx ends the
/// trial; three refusals (4xx but 408 and 429) fail it.
pub fn trial_answers(state_dir: &Path, running: &str, statuses: &[u16]) -> Verdict {
    if statuses.is_empty() {
        return Verdict::None;
    }
    let mut record = Record::load(state_dir);
    let Some(t) = record.trial.as_mut() else {
        return Verdict::None;
    };
    if !index::same_version(&t.to, running) {
        return Verdict::None;
    }
    for &status in statuses {
        if (200..300).contains(&status) {
            let from = t.from.clone();
            record.trial = None;
            if let Err(e) = record.save(state_dir) {
                log::warn!("cannot record the end of the update trial: {e}");
            }
            return Verdict::Passed { from };
        }
        // A busy server or a failing proxy in front of it (5xx, 408, 429)
        // is one that cannot be reached: not this version's doing.
        if !(400..500).contains(&status) || status == 408 || status == 429 {
            continue;
        }
        t.refusals += 1;
        if t.refusals >= 3 {
            return Verdict::RollBack(format!(
                "the server refused its first {} reports (last status {status})",
                t.refusals
            ));
        }
    }
    let from = t.from.clone();
    if let Err(e) = record.save(state_dir) {
        log::warn!("cannot record the update trial: {e}");
    }
    Verdict::Pending { from }
}

/// Called at a clean stop during a trial.
pub fn trial_stop(state_dir: &Path, running: &str) {
    let mut record = Record::load(state_dir);
    if let Some(t) = record.trial.as_mut() {
        if index::same_version(&t.to, running) && t.running {
            t.running = false;
            if let Err(e) = record.save(state_dir) {
                log::warn!("cannot record the update trial: {e}");
            }
        }
    }
}

/// Puts the previous binary back after a failed trial and records why, so
/// the restored binary reports it and never installs this version again.
///
/// `running` is the [`file_identity`] of the program running: when the
/// file at `binary` is no longer it (a package replaced it meanwhile),
/// nothing is put back over it.
pub fn roll_back(
    state_dir: &Path,
    binary: &Path,
    version: &str,
    running: Option<(u64, u64)>,
    why: &str,
) -> Result<(), String> {
    let mut record = Record::load(state_dir);
    let from = record
        .trial
        .as_ref()
        .map_or_else(String::new, |t| t.from.clone());
    record.trial = None;
    record.refuse(version);
    let restored = if running.is_some() && file_identity(binary) != running {
        Err(std::io::Error::other(format!(
            "{} was replaced since this version started; left as it is",
            binary.display()
        )))
    } else {
        install::restore_previous(binary)
    };
    if restored.is_ok() {
        // The appliance's persistent copy too, or the next boot brings the
        // refused version back.
        for why in install::persist(Path::new("/"), binary, state_dir) {
            log::warn!("{why}");
        }
    }
    record.rollback = Some(record::Rollback {
        from: version.to_string(),
        to: from,
        why: match &restored {
            Ok(()) => why.to_string(),
            Err(e) => format!("{why}; but the previous binary could not be restored: {e}"),
        },
        at: SystemTime::now(),
    });
    if let Err(e) = record.save(state_dir) {
        log::warn!("cannot record the rollback: {e}");
    }
    restored.map_err(|e| e.to_string())
}

/// The background updater: first check after [`FIRST_CHECK`], then every
/// [`CHECK_INTERVAL`] plus jitter. `installed` is called with the new
/// version after an install (`None`: the binary was replaced by someone
/// else); the thread then waits for the process to re-execute itself.
pub fn start(
    settings: Settings,
    status: Arc<Mutex<Status>>,
    first: Duration,
    installed: Box<dyn Fn(Option<String>) + Send>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("updater".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let mut wait = first;
            loop {
                std::thread::sleep(wait);
                wait = CHECK_INTERVAL + jitter(CHECK_INTERVAL / 10);
                let before = lock(&status).last_error.clone();
                match run(&settings, &status, true) {
                    Ok(Outcome::Installed { version }) => {
                        installed(Some(version));
                        loop {
                            std::thread::park();
                        }
                    }
                    Ok(Outcome::Replaced) => {
                        log::info!(
                            "{} was replaced; restarting into it",
                            settings.binary.display()
                        );
                        installed(None);
                        loop {
                            std::thread::park();
                        }
                    }
                    Ok(Outcome::UpToDate { latest }) => {
                        log::debug!("update check: up to date (the channel has {latest})")
                    }
                    Ok(other) => log::debug!("update check: {other:?}"),
                    Err(e) => {
                        // Said once while it stays the same.
                        if before.as_deref() != Some(&e.to_string()) {
                            log::warn!("update failed: {e}");
                        }
                    }
                }
            }
        })
        .map(|_| ())
}

fn jitter(max: Duration) -> Duration {
    let mut b = [0u8; 8];
    let _ = crate::sys::getrandom(&mut b);
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(u64::from_le_bytes(b) % ms)
}
