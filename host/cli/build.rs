//! Links the `plugvisor` binary with packed relative relocations, as the workers are.

fn main() {
    // Linux with glibc: the loader reads a bitmap of a few KiB instead of a relocation table
    // of some hundred KB at every start (plugins/build.rs and docs/PERFORMANCE.md say more).
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    if target("CARGO_CFG_TARGET_OS") == "linux" && target("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
