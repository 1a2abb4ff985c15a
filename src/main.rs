//! `pulse-agent`: parse → Config → run → exit status.
//! 0 ok, 1 runtime failure, 2 usage or configuration error.

use std::io::Write;
use std::process::ExitCode;

use pulse_agent::config::{self, Config, Notice};
use pulse_agent::{agent, cli, logging};

/// The stack of threads that do not ask for a size: tiny_http's acceptor and
/// its request pool, which parse request heads into small buffers. std's
/// 2 MiB would be 10 MiB of address space for those five.
const DEFAULT_THREAD_STACK: usize = 128 * 1024;

fn main() -> ExitCode {
    // Both before the first thread: a thread that allocates before the
    // arena limit is set gets a malloc arena of its own (64 MiB reserved).
    pulse_agent::sys::limit_malloc_arenas();
    pulse_agent::sys::set_default_thread_stack(DEFAULT_THREAD_STACK);
    let env = |k: &str| std::env::var(k).ok();
    let mut argv: Vec<_> = std::env::args_os().skip(1).collect();
    // `pulse-agent update [--check] [flags]`: one check-and-install.
    let update = argv.first().is_some_and(|a| a == "update");
    if update {
        argv.remove(0);
    }
    let args = match cli::parse(argv, &env) {
        Ok(a) => a,
        Err(e) => return fail(2, &format!("{e} (see 'pulse-agent --help')")),
    };
    if args.flag("check") && !update {
        return fail(
            2,
            "--check goes with the update command: pulse-agent update --check",
        );
    }
    if args.flag("help") {
        return print("the help", &cli::help());
    }
    if args.flag("version") {
        return print("the version", &format!("{}\n", agent::version()));
    }
    let config = match Config::from_args(&args, &env, &config::system_resolver) {
        Ok(c) => c,
        Err(e) => return fail(2, &e.to_string()),
    };
    let log_file = match logging::init(config.log_level, config.log_file.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            let file = config
                .log_file
                .as_deref()
                .unwrap_or(std::path::Path::new(""));
            return fail(2, &format!("--log-file {}: {e}", file.display()));
        }
    };
    config.notices.iter().for_each(Notice::log);
    if args.flag("self-test") {
        return match agent::self_test(&config) {
            Ok(()) => {
                log::info!("Self-test passed");
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, &format!("self-test: {e}")),
        };
    }
    if update {
        return run_update(&config, &args);
    }
    match agent::run(&config, log_file) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &e.to_string()),
    }
}

/// `pulse-agent update [--check]`: 0 installed or up to date, 1 failed; one
/// line on standard output says which.
fn run_update(config: &Config, args: &cli::Args) -> ExitCode {
    use pulse_agent::update::{self, Outcome};
    let settings = match update::Settings::from_config(config) {
        Ok(s) => s,
        Err(why) => return fail(1, &format!("cannot update: {why}")),
    };
    let status = std::sync::Mutex::new(update::Status::default());
    let install = !args.flag("check");
    let running = &settings.running;
    let line = match update::run(&settings, &status, install) {
        Ok(Outcome::UpToDate { latest }) => {
            format!("pulse-agent {running} is up to date (the channel has {latest})\n")
        }
        Ok(Outcome::Available { version }) => format!(
            "pulse-agent {version} is available (running {running}); 'pulse-agent update' installs it\n"
        ),
        Ok(Outcome::Installed { version }) => format!(
            "installed pulse-agent {version} at {} (was {running}); a running service switches to it at its next update check (restart one that runs with --disable-auto-update)\n",
            settings.binary.display()
        ),
        Ok(Outcome::OnTrial { version }) => {
            format!("pulse-agent {version} is installed and on trial until it delivers a report\n")
        }
        Ok(Outcome::Replaced) => {
            return fail(
                1,
                &format!(
                    "update: {} was replaced by someone else while this ran; nothing installed",
                    settings.binary.display()
                ),
            );
        }
        Ok(Outcome::Refused { version }) => {
            return fail(
                1,
                &format!("update: {version} was rolled back before; not installing it again"),
            );
        }
        Err(e) => return fail(1, &format!("update failed: {e}")),
    };
    print("the result", &line)
}

/// Writes `text` to standard output. `print!` would panic on a write error;
/// a closed pipe (`| head -c1`) is a quiet success, anything else exit 1.
fn print(what: &str, text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => fail(1, &format!("writing {what} to standard output: {e}")),
    }
}

fn fail(code: u8, msg: &str) -> ExitCode {
    // Not eprintln!: it panics when standard error cannot be written.
    let _ = writeln!(std::io::stderr(), "pulse-agent: error: {msg}");
    ExitCode::from(code)
}
