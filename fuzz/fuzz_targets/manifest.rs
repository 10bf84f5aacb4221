//! Fuzzes plugin manifests: `plugvisor_manager::manifest::Manifest::parse` on arbitrary UTF-8,
//! then `config_json` and `SupervisionManifest::to_config` on every manifest it accepts. Checks:
//! no panic, and an error's line number lies within the text.
//!
//! With `PLUGVISOR_FUZZ_STRICT=1` it also fails on two known defects that do not panic inside
//! `to_config` itself: a `max_concurrent` above tokio's `Semaphore::MAX_PERMITS` (the supervisor
//! panics later, in `Semaphore::new`), and an `rss_limit_mib` whose bytes do not fit in a `u64`
//! (the shift silently drops the high bits).
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugvisor_manager::manifest::Manifest;
use std::path::Path;
use std::sync::OnceLock;

fn strict() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("PLUGVISOR_FUZZ_STRICT").is_some_and(|v| v == "1"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Manifest::parse(text, Path::new("fuzz.toml")) {
        Ok(manifest) => {
            let _ = manifest.config_json();
            let config = manifest.supervision.to_config();
            if strict() {
                assert!(
                    config.max_concurrent <= tokio::sync::Semaphore::MAX_PERMITS,
                    "max_concurrent {} panics in Semaphore::new",
                    config.max_concurrent
                );
                if let Some(mib) = manifest.supervision.rss_limit_mib {
                    assert!(
                        mib.checked_mul(1 << 20).is_some(),
                        "rss_limit_mib {mib} overflows: rss_limit {:?}",
                        config.rss_limit
                    );
                }
            }
        }
        Err(err) => {
            if let Some(line) = err.line {
                let lines = text.matches('\n').count() + 1;
                assert!((1..=lines).contains(&line), "line {line} of {lines}: {err}");
            }
            let _ = err.to_string();
        }
    }
});
