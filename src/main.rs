//! `pulse-agent`: parse → Config → run → exit status.
//! 0 ok, 1 runtime failure, 2 usage or configuration error.

use std::io::Write;
use std::process::ExitCode;

use pulse_agent::config::{self, Config, Notice};
use pulse_agent::{agent, cli, logging};

fn main() -> ExitCode {
    let env = |k: &str| std::env::var(k).ok();
    let args = match cli::parse(std::env::args_os().skip(1), &env) {
        Ok(a) => a,
        Err(e) => return fail(2, &format!("{e} (see 'pulse-agent --help')")),
    };
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
        log::info!("Self-test passed");
        return ExitCode::SUCCESS;
    }
    match agent::run(&config, log_file) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &e.to_string()),
    }
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
