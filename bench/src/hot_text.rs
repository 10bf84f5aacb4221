//! `plugvisor-bench hot-text`: finds the code the bundled workers run to start and answer
//! their first calls (valgrind's callgrind, each worker spawned by a real host), writes it as
//! the linker script `worker/hot-text.ld` that gathers that code at the front of the
//! executable text, and checks how much of it a build actually placed there
//! (docs/PERFORMANCE.md, "Hot text").
//!
//! Why: the kernel maps a binary's text 64 KiB around each page a process touches, so code
//! spread over the whole 3.3 MB text of a worker made an idle worker map 2.1–2.3 MiB of it.
//! Gathered, the same code is one run of pages.
//!
//! The script names functions by their symbol without its hash (`…17h*` for Rust's legacy
//! symbols, crate disambiguators as `Cs*_` in v0 symbols), so it keeps matching when a
//! feature, a dependency's version or the compiler changes the hashes; a function renamed or
//! no longer run only stays where it is. Generic functions match every instance, which costs
//! some unused bytes in the hot run.

use crate::procs::bin_dir;
use crate::scenario::callgrind::{available, valgrind_args};
use anyhow::{bail, Context as _, Result};
use futures_util::StreamExt as _;
use plugvisor_host::{Host, Plugin as _, WorkerSpec};
use plugvisor_proto::json;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The output section the script adds before `.text`.
const HOT_SECTION: &str = ".text.hot";

/// Code a worker runs that callgrind cannot see: the group guardian is a `clone(CLONE_VM)`
/// child, which valgrind does not support, so a worker under valgrind starts none
/// (docs/PROTOCOL.md §11). Its module, the functions of `nix` it calls that are not inlined,
/// and the worker's reaping of it at exit are placed hot by prefix.
const NATIVE_ONLY: &[&str] = &[
    "_ZN16plugvisor_worker8guardian",
    "_ZN3nix3sys6signal6SigSet",
    "_ZN3nix3sys6signal6killpg17h",
    "_ZN3nix3sys4wait",
];

/// `--check` fails when a worker's build places less than this share of the code it ran (by
/// size) in the hot run: the script has gone stale and `scripts/hot-text` regenerates it.
const MIN_COVERAGE: f64 = 0.8;

/// Profiles every bundled worker, prints how much of what each ran lies in the hot run of
/// its current build, and writes the script to `write` when given; without it, fails when a
/// worker's coverage is below [`MIN_COVERAGE`].
///
/// # Errors
/// When valgrind, `nm` or a worker is missing, a profile cannot be read, or (checking) the
/// coverage is too low.
pub async fn run(write: Option<&Path>) -> Result<()> {
    if !available() {
        bail!("valgrind is not installed (scripts/hot-text installs it)");
    }
    let scratch = crate::procs::scratch()?;
    let host = Host::new().context("creating the host")?;
    let mut patterns = BTreeSet::new();
    let mut low = Vec::new();
    for worker in workers()? {
        let out = scratch.path().join(format!(
            "callgrind.{}",
            worker.file_name().unwrap_or_default().to_string_lossy()
        ));
        let ran = profile(&host, &worker, &out).await?;
        let symbols = text_symbols(&worker)?;
        let coverage = coverage(&worker, &ran, &symbols)?;
        println!("{}: {coverage}", worker.display());
        if coverage.share() < MIN_COVERAGE {
            low.push(worker.display().to_string());
        }
        patterns.extend(with_aliases(&ran, &symbols).filter_map(pattern));
    }
    host.shutdown().await;
    patterns.extend(NATIVE_ONLY.iter().map(|p| format!("{p}*")));
    match write {
        Some(path) => {
            std::fs::write(path, script(&patterns))
                .with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {} ({} patterns)", path.display(), patterns.len());
            Ok(())
        }
        None if low.is_empty() => Ok(()),
        None => bail!(
            "less than {:.0} % of the code run at start lies in {HOT_SECTION} for {}: \
             run scripts/hot-text to regenerate worker/hot-text.ld",
            MIN_COVERAGE * 100.0,
            low.join(", ")
        ),
    }
}

/// The bundled worker binaries beside this executable (`*-worker`).
fn workers() -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(bin_dir()?)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with("-worker") && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    if found.is_empty() {
        bail!("no *-worker binaries beside the benchmark; build with `cargo build --release --workspace --bins`");
    }
    Ok(found)
}

/// Spawns `worker` under callgrind through `host`, makes two calls and a short stream (their
/// errors are part of the profile too: every bundled plugin gets the same input), stops it,
/// and returns the symbol of every function it ran.
async fn profile(host: &Host, worker: &Path, out: &Path) -> Result<BTreeSet<String>> {
    let mut spec = WorkerSpec::new("valgrind");
    for arg in valgrind_args(out) {
        spec = spec.arg(arg);
    }
    // Symbols as the linker names sections, not demangled.
    let spec = spec
        .arg("--demangle=no")
        .arg(worker)
        .start_timeout(Duration::from_secs(60))
        .stop_grace(Duration::from_secs(30));
    let plugin = host
        .spawn(spec)
        .await
        .with_context(|| format!("spawning {} under callgrind", worker.display()))?;
    for _ in 0..2 {
        let _answer = plugin.execute(json!({"greeting": "hello"})).await;
    }
    if let Ok(mut items) = plugin.execute_stream(json!({"n": 10, "bytes": 16})).await {
        while items.next().await.is_some() {}
    }
    plugin.shutdown().await;
    let text =
        std::fs::read_to_string(out).with_context(|| format!("reading {}", out.display()))?;
    Ok(executed(&text))
}

/// The function names of a callgrind profile: each is spelled out once, on the first `fn=`
/// or `cfn=` line that mentions its id (`fn=(12) name`).
fn executed(profile: &str) -> BTreeSet<String> {
    profile
        .lines()
        .filter_map(|l| l.strip_prefix("fn=(").or_else(|| l.strip_prefix("cfn=(")))
        .filter_map(|rest| rest.split_once(") "))
        .map(|(_, name)| name.to_owned())
        .collect()
}

/// The text symbols `binary` defines, with their addresses and sizes (`nm`).
fn text_symbols(binary: &Path) -> Result<HashMap<String, (u64, u64)>> {
    let out = Command::new("nm")
        .args(["--defined-only", "--print-size"])
        .arg(binary)
        .output()
        .context("running nm (binutils)")?;
    if !out.status.success() {
        bail!("nm {} failed", binary.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut symbols = HashMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [addr, size, kind, name] = fields[..] {
            if matches!(kind, "t" | "T" | "w" | "W") {
                let hex = |s: &str| u64::from_str_radix(s, 16).unwrap_or(0);
                symbols.insert(name.to_owned(), (hex(addr), hex(size)));
            }
        }
    }
    Ok(symbols)
}

/// The names in `ran` that `symbols` defines, with every other name at the same address: when
/// LLVM merges identical functions, callgrind reports one name of the function, while its
/// section is named after another.
fn with_aliases<'a>(
    ran: &BTreeSet<String>,
    symbols: &'a HashMap<String, (u64, u64)>,
) -> impl Iterator<Item = &'a str> {
    let addrs: BTreeSet<u64> = ran
        .iter()
        .filter_map(|name| symbols.get(name).map(|&(addr, _)| addr))
        .collect();
    symbols
        .iter()
        .filter(move |(_, (addr, _))| addrs.contains(addr))
        .map(|(name, _)| name.as_str())
}

/// The address range of `binary`'s hot run (`readelf`), if it has one.
fn hot_range(binary: &Path) -> Result<Option<(u64, u64)>> {
    let out = Command::new("readelf")
        .args(["--section-headers", "--wide"])
        .arg(binary)
        .output()
        .context("running readelf (binutils)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // `[17] .text.hot PROGBITS addr off size …`; `[ 1]` splits into two fields.
        if let Some(at) = fields.iter().position(|f| *f == HOT_SECTION) {
            let hex = |i: usize| {
                fields
                    .get(i)
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .unwrap_or(0)
            };
            let (addr, size) = (hex(at + 2), hex(at + 4));
            return Ok(Some((addr, addr + size)));
        }
    }
    Ok(None)
}

/// How much of the code a worker ran lies in its hot run.
struct Coverage {
    /// Bytes of the functions it ran.
    ran: u64,
    /// Of which in the hot run.
    hot: u64,
    /// Functions it ran.
    functions: usize,
}

impl Coverage {
    fn share(&self) -> f64 {
        if self.ran == 0 {
            return 0.0;
        }
        self.hot as f64 / self.ran as f64
    }
}

impl std::fmt::Display for Coverage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ran {} functions, {} KiB; {:.1} % of it in {HOT_SECTION}",
            self.functions,
            self.ran / 1024,
            self.share() * 100.0
        )
    }
}

fn coverage(
    binary: &Path,
    ran: &BTreeSet<String>,
    symbols: &HashMap<String, (u64, u64)>,
) -> Result<Coverage> {
    let range = hot_range(binary)?;
    let mut c = Coverage {
        ran: 0,
        hot: 0,
        functions: 0,
    };
    for (addr, size) in ran.iter().filter_map(|name| symbols.get(name)) {
        c.ran += size;
        c.functions += 1;
        if range.is_some_and(|(lo, hi)| (lo..hi).contains(addr)) {
            c.hot += size;
        }
    }
    Ok(c)
}

/// The linker-script pattern for the section of function `symbol`: its name without the
/// parts that change between builds, or `None` for a name the script cannot match safely.
fn pattern(symbol: &str) -> Option<String> {
    // LLVM's suffix for a function it made local (`….llvm.1234`).
    let symbol = symbol.split(".llvm.").next()?;
    if symbol.starts_with("_ZN") {
        // Legacy Rust: `_ZN<path>17h<16 hex digits>E`.
        let at = symbol.rfind("17h")?;
        let hash = &symbol[at + 3..];
        let hex = hash.len() == 17
            && hash.ends_with('E')
            && hash[..16].bytes().all(|b| b.is_ascii_hexdigit());
        return hex.then(|| format!("{}*", &symbol[..at + 3]));
    }
    if symbol.starts_with("_R") {
        return Some(v0_without_disambiguators(symbol));
    }
    let plain = symbol
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    (plain && !symbol.is_empty()).then(|| symbol.to_owned())
}

/// A v0 symbol with each crate's disambiguator (`Cs<base-62>_`) as a wildcard: they change
/// with the compiler (the standard library's) or the build's features.
fn v0_without_disambiguators(symbol: &str) -> String {
    let mut out = String::with_capacity(symbol.len());
    let mut rest = symbol;
    while let Some(at) = rest.find("Cs") {
        out.push_str(&rest[..at + 2]);
        let after = &rest[at + 2..];
        let digits = after.bytes().take_while(u8::is_ascii_alphanumeric).count();
        if digits > 0 && after.as_bytes().get(digits) == Some(&b'_') {
            out.push_str("*_");
            rest = &after[digits + 1..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The linker script: an output section before `.text` gathering the functions of `patterns`
/// (cold-marked ones too, which LLVM puts in `.text.unlikely.*`), one before `.rodata`
/// gathering their jump and lookup tables, and rustc's `.debug_gdb_scripts` moved in front of
/// that: every `main` reads it, and in its default place, between the exception tables,
/// that read mapped 64 KiB of unwind tables an idle worker never uses.
fn script(patterns: &BTreeSet<String>) -> String {
    let mut s = String::from(
        "/* Generated by scripts/hot-text (plugvisor-bench hot-text): the functions the bundled\n\
         \x20* workers run to start and answer their first calls, gathered before .text (their\n\
         \x20* tables before .rodata) so an idle worker maps one run of its text instead of pages\n\
         \x20* all over it (docs/PERFORMANCE.md, \"Hot text\"). Symbols without their hashes;\n\
         \x20* regenerate with scripts/hot-text when `plugvisor-bench hot-text` reports low\n\
         \x20* coverage. */\n",
    );
    s.push_str("SECTIONS\n{\n  .text.hot :\n  {\n");
    for p in patterns {
        s.push_str(&format!("    *(.text.{p} .text.unlikely.{p})\n"));
    }
    s.push_str("  }\n}\nINSERT BEFORE .text;\n\n");
    s.push_str("SECTIONS\n{\n  .rodata.hot :\n  {\n");
    for p in patterns {
        s.push_str(&format!("    *(.rodata.{p} .rodata..Lswitch.table.{p})\n"));
    }
    s.push_str("  }\n}\nINSERT BEFORE .rodata;\n\n");
    s.push_str(
        "SECTIONS\n{\n  .debug_gdb_scripts : { *(.debug_gdb_scripts) }\n}\n\
         INSERT BEFORE .rodata.hot;\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_drop_what_changes_between_builds() {
        assert_eq!(
            pattern("_ZN16plugvisor_worker3run8run_with17h82e3ef90b3039144E").as_deref(),
            Some("_ZN16plugvisor_worker3run8run_with17h*")
        );
        assert_eq!(
            pattern("_ZN4core3ptr13drop_in_place17h0123456789abcdefE.llvm.42").as_deref(),
            Some("_ZN4core3ptr13drop_in_place17h*")
        );
        assert_eq!(
            pattern("_RNvNtNtCsjrHSEGnQ3l9_3std6thread7current12init_current").as_deref(),
            Some("_RNvNtNtCs*_3std6thread7current12init_current")
        );
        assert_eq!(pattern("main").as_deref(), Some("main"));
        // Not a hash: left out rather than matched exactly with a hash that will change.
        assert_eq!(pattern("_ZN3foo3bar17hxyzE"), None);
        assert_eq!(pattern("weird name"), None);
    }

    #[test]
    fn profile_names_are_read_from_fn_and_cfn_lines() {
        let profile = "fn=(1) main\n0 3\ncfn=(2) _ZN3foo3bar17h0123456789abcdefE\ncalls=1 0\n\
                       fn=(2)\nfn=(3) memcpy\n";
        let names: Vec<String> = executed(profile).into_iter().collect();
        assert_eq!(names, ["_ZN3foo3bar17h0123456789abcdefE", "main", "memcpy"]);
    }

    #[test]
    fn the_script_inserts_its_sections_before_the_defaults() {
        let patterns: BTreeSet<String> = ["main".to_owned()].into();
        let s = script(&patterns);
        assert!(s.contains("*(.text.main .text.unlikely.main)"));
        assert!(s.contains("*(.rodata.main .rodata..Lswitch.table.main)"));
        for (section, before) in [
            (".text.hot", ".text"),
            (".rodata.hot", ".rodata"),
            (".debug_gdb_scripts", ".rodata.hot"),
        ] {
            let at = s.find(&format!("  {section} :")).expect(section);
            assert!(
                s[at..].contains(&format!("INSERT BEFORE {before};")),
                "{section}"
            );
        }
    }
}
