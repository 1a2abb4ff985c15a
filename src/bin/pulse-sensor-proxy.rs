//! `pulse-sensor-proxy`: parse → run → exit status (0 ok, 1 runtime failure,
//! 2 usage or configuration error). Everything lives in `pulse_agent::proxy`.

fn main() -> std::process::ExitCode {
    pulse_agent::proxy::cli::main()
}
