// A stand-in for a release build of pulse-agent, compiled by the updater's
// tests with rustc: it prints the version it was compiled with and passes,
// fails or hangs `--self-test` as compiled (FAKE_VERSION, FAKE_SELF_TEST).
// It records the arguments and environment of its self-test runs in the
// file named by FAKE_RECORD, so the test can check that no token reached
// argv or the environment.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version") {
        println!("v{}", env!("FAKE_VERSION"));
        return;
    }
    if args.iter().any(|a| a == "--self-test") {
        let mut record = format!("args={args:?}\n");
        for (k, v) in std::env::vars() {
            record.push_str(&format!("env {k}={v}\n"));
        }
        if let Some(file) = args.iter().find_map(|a| a.strip_prefix("--token-file=")) {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
            let token = std::fs::read_to_string(file).unwrap_or_default();
            record.push_str(&format!("token-file-mode={mode:o}\ntoken={token}\n"));
        }
        let _ = std::fs::write(env!("FAKE_RECORD"), record);
        match env!("FAKE_SELF_TEST") {
            "pass" => {}
            "fail" => {
                eprintln!("self-test: cannot load the configuration");
                std::process::exit(1);
            }
            _ => loop {
                std::thread::sleep(std::time::Duration::from_secs(60));
            },
        }
    }
}
