//! libFuzzer driver: runs the target named by `PULSE_FUZZ_TARGET` (one of
//! `pulse_agent::fuzz::TARGETS`) on every input libFuzzer makes.
//!
//! A panic or an overflow aborts (libFuzzer saves the input as a crash); an
//! input that takes longer than libFuzzer's `-timeout` is saved as a hang;
//! and an input that costs more CPU than a linear budget for its size
//! (`BASE + PER_BYTE × len`) panics here, so superlinear work in a parser
//! is a finding, not just a slow run.

#![no_main]

use pulse_agent::fuzz::{Target, target};
use std::sync::OnceLock;
use std::time::Duration;

/// Fixed cost allowed for any input (thread start-up, a temp directory).
const BASE: Duration = Duration::from_millis(200);
/// Per input byte. Linear parsers of this instrumented build spend well
/// under 1 µs a byte; quadratic work on a 64 KiB input spends seconds.
const PER_BYTE: Duration = Duration::from_micros(4);

fn chosen() -> &'static Target {
    static CHOSEN: OnceLock<&'static Target> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        let name = std::env::var("PULSE_FUZZ_TARGET").unwrap_or_default();
        target(&name).unwrap_or_else(|| {
            let names: Vec<_> = pulse_agent::fuzz::TARGETS.iter().map(|t| t.name).collect();
            eprintln!(
                "pulse-fuzz: set PULSE_FUZZ_TARGET to one of: {}",
                names.join(" ")
            );
            std::process::exit(2)
        })
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let t = chosen();
    let start = pulse_agent::sys::thread_cpu_time();
    (t.run)(data);
    let spent = pulse_agent::sys::thread_cpu_time().saturating_sub(start);
    let budget = BASE + PER_BYTE * u32::try_from(data.len()).unwrap_or(u32::MAX);
    if spent > budget {
        panic!(
            "{}: {} input bytes took {spent:?} of CPU, over the linear budget of {budget:?}",
            t.name,
            data.len()
        );
    }
});
