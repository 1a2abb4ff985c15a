//! The `pulse-sensor-proxy` command line (being written).

use std::process::ExitCode;

pub fn main() -> ExitCode {
    eprintln!("pulse-sensor-proxy: not built yet");
    ExitCode::from(1)
}
