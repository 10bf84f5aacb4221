//! Links the worker binaries with packed relative relocations (see `link_flags`).

fn main() {
    link_flags();
}

/// On Linux with glibc, `-z pack-relative-relocs` (GNU ld ≥ 2.38, glibc ≥ 2.36) stores a
/// position-independent binary's ≈ 13 000 relative relocations as a bitmap of a few KiB
/// instead of a 320 KB table that the dynamic loader reads at every start: an idle
/// echo-worker maps ≈ 0.45 MiB less (docs/PERFORMANCE.md, "Packed relocations"). The binary
/// stays position-independent. A worker crate of your own can add the same two lines.
fn link_flags() {
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    if target("CARGO_CFG_TARGET_OS") == "linux" && target("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
