//! The `pulse-sensor-proxy` command line (being written by the lead; this
//! stand-in only dispatches `sensors` and `version` for the ssh tests).

use std::process::ExitCode;

use crate::root::Root;

pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["version"] => {
            println!("pulse-sensor-proxy {}", super::version());
            ExitCode::SUCCESS
        }
        ["sensors"] => super::sensors::command(&Root::host()),
        ["sensors", "--root", dir] => match Root::new(dir) {
            Ok(root) => super::sensors::command(&root),
            Err(e) => {
                eprintln!("pulse-sensor-proxy: error: {dir}: {e}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("pulse-sensor-proxy: not built yet");
            ExitCode::from(1)
        }
    }
}
