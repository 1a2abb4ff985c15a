//! Replays the saved fuzz inputs on every `cargo test`, without libFuzzer.
//!
//! `vendor-free-tests/fuzz/TARGET/` holds, for each target of
//! `pulse_agent::fuzz::TARGETS`, hand-made seeds and every input a fuzz run
//! found a defect with (named after the defect). Each must go through its
//! target without a panic (the test profile has overflow checks on) and
//! within a generous hang limit. `contrib/fuzz/run` starts from the same
//! folders.

use pulse_agent::fuzz::{TARGETS, target};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Far above any linear parse of these small files, even unoptimised: only
/// a hang gets near it.
const HANG: Duration = Duration::from_secs(60);

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor-free-tests/fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn every_target_has_a_corpus_folder_and_every_folder_a_target() {
    for t in TARGETS {
        let dir = corpus_root().join(t.name);
        assert!(
            dir.is_dir() && !files(&dir).is_empty(),
            "target {} has no saved inputs in {}",
            t.name,
            dir.display()
        );
    }
    for e in std::fs::read_dir(corpus_root()).expect("corpus root") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        assert!(
            target(&name).is_some(),
            "vendor-free-tests/fuzz/{name} matches no target in pulse_agent::fuzz::TARGETS"
        );
    }
}

#[test]
fn saved_fuzz_inputs_run_without_panic_or_hang() {
    let mut failures = Vec::new();
    let mut count = 0;
    for t in TARGETS {
        for path in files(&corpus_root().join(t.name)) {
            count += 1;
            let data = std::fs::read(&path).expect("read input");
            let (tx, rx) = mpsc::channel();
            let run = t.run;
            let worker = std::thread::spawn(move || {
                let outcome = std::panic::catch_unwind(|| run(&data));
                let _ = tx.send(outcome.is_ok());
            });
            let shown = path.strip_prefix(corpus_root()).unwrap_or(&path).display();
            match rx.recv_timeout(HANG) {
                Ok(true) => {
                    let _ = worker.join();
                }
                Ok(false) => {
                    let _ = worker.join();
                    failures.push(format!("{shown}: panicked (message above)"));
                }
                Err(_) => failures.push(format!("{shown}: still running after {HANG:?}")),
            }
        }
    }
    assert!(count > 0, "no saved inputs at all");
    assert!(
        failures.is_empty(),
        "{} of {count} saved fuzz inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
