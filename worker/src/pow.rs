//! `pow` defined in the worker binaries themselves, so they do not load glibc's libm at all.
//!
//! The one libm function a worker binary calls is `pow`, from tokio's multi-thread scheduler
//! (its average of task poll times, on the plugin runtime). Loading libm for it cost every
//! worker ≈ 0.5 MiB of RSS (ld.so runs libm's ifunc resolvers, which touch pages all over its
//! text) and one more shared library to map and relocate at each start. With `pow` defined
//! here the linker resolves it inside the binary, and with `--as-needed` (rustc's default)
//! libm is no longer a dependency (docs/PERFORMANCE.md, "No libm").
//!
//! The implementation is the `libm` crate's port of musl's `pow`, which is the same algorithm
//! as glibc's since 2.28 (Arm's optimized-routines, error < 0.52 ULP); unlike glibc's it does
//! not set `errno`, which Rust's `f64::powf` never reads. C code linked into a worker that
//! calls `pow` gets this one too.

/// `pow(x, y)`: `x` raised to the power `y` (the C library's contract, without `errno`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn pow_answers_as_the_c_library_does() {
        assert_eq!(super::pow(2.0, 10.0), 1024.0);
        assert_eq!(super::pow(-2.0, 3.0), -8.0);
        assert_eq!(super::pow(0.0, 0.0), 1.0);
        assert_eq!(super::pow(4.0, 0.5), 2.0);
        assert!(super::pow(-1.0, 0.5).is_nan());
        assert_eq!(super::pow(10.0, 400.0), f64::INFINITY);
        // tokio's use: 1 - (1 - alpha)^polls, alpha = 0.1.
        let decayed = super::pow(0.9, 3.0);
        assert!((decayed - 0.729).abs() < 1e-15, "{decayed}");
    }
}
