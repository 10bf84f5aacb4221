//! Records the compiler version for the benchmark's `machine` key, and links the bench's
//! binaries (the bare baseline too) with packed relative relocations, as the workers are; the
//! identity worker also with the workers' hot-text layout.

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PLUGVISOR_BENCH_RUSTC={version}");
    println!("cargo:rerun-if-env-changed=RUSTC");
    // The bare-spawn baseline is linked as the workers are, so P7 compares like with like
    // (plugins/build.rs says why).
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    if target("CARGO_CFG_TARGET_OS") == "linux" && target("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
        // The identity worker gets the workers' hot-text layout too (plugins/build.rs).
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../worker/hot-text.ld");
        println!("cargo:rerun-if-changed={}", script.display());
        if script.is_file() {
            println!(
                "cargo:rustc-link-arg-bin=bench-identity-worker=-Wl,-T,{}",
                script.display()
            );
        }
    }
}
