//! Build script: release builds of the two binaries link without unwind
//! tables (`no-unwind-tables.ld` says why). Tests and debug builds keep them:
//! they unwind on panic, and their backtraces are read. So does a release
//! build with debug information (`--profile profiling`): profilers and
//! debuggers walk the stack with them.

fn main() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/link/no-unwind-tables.ld"
    );
    println!("cargo::rerun-if-changed={script}");
    println!("cargo::rerun-if-changed=contrib/link/build.rs");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    // PROFILE is "release" for every profile that inherits from release
    // (bench too), and those all set panic = "abort".
    let release = var("PROFILE") == "release" && var("DEBUG") == "false";
    // GNU ld and lld both read an INSERT script; other platforms are not
    // targets of this agent.
    let linux = var("CARGO_CFG_TARGET_OS") == "linux";
    // 32-bit Arm unwinds with .ARM.exidx, not .eh_frame: the script does
    // nothing there, so it is not passed.
    let eh_frame = var("CARGO_CFG_TARGET_ARCH") != "arm";
    if release && linux && eh_frame {
        println!("cargo::rustc-link-arg-bins=-Wl,-T,{script}");
    }
}
