//! How the worker binaries are linked (plugins/build.rs): their start-up code gathered in
//! `.text.hot` by `worker/hot-text.ld`, and no libm among the libraries they load.

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

const WORKERS: [&str; 3] = [
    env!("CARGO_BIN_EXE_echo-worker"),
    env!("CARGO_BIN_EXE_ticker-worker"),
    env!("CARGO_BIN_EXE_files-worker"),
];

/// Functions every worker runs to start and answer a call: C's `main`, and Rust functions
/// by their symbol up to the hash (every instance of them): `run_with` and the body of
/// `router::dispatch` (the async block every request runs).
const START_UP: [&str; 3] = [
    "main",
    "_ZN16plugvisor_worker3run8run_with17h",
    "_ZN16plugvisor_worker6router8dispatch28_$u7b$$u7b$closure$u7d$$u7d$17h",
];

/// True when `name` is the symbol of `function` (an entry of [`START_UP`]).
fn is(function: &str, name: &str) -> bool {
    match function.starts_with("_ZN") {
        true => name.starts_with(function),
        false => name == function,
    }
}

/// Runs `check` on each of [`WORKERS`], parsed.
fn each_worker(mut check: impl FnMut(&str, &object::File)) {
    for path in WORKERS {
        let data = std::fs::read(path).unwrap();
        check(path, &object::File::parse(&*data).unwrap());
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn start_up_code_lies_in_the_hot_text() {
    each_worker(|path, elf| {
        let hot = elf
            .section_by_name(".text.hot")
            .unwrap_or_else(|| panic!("{path} has no .text.hot: worker/hot-text.ld was not used"));
        let range = hot.address()..hot.address() + hot.size();
        let text = elf.section_by_name(".text").unwrap();
        assert!(
            text.size() > 0,
            "{path}: the rest of the code stays in .text"
        );
        for prefix in START_UP {
            let found: Vec<_> = elf
                .symbols()
                .filter(|s| s.name().is_ok_and(|n| is(prefix, n)))
                .filter(|s| s.size() > 0)
                .collect();
            assert!(!found.is_empty(), "{path}: no symbol {prefix}…");
            for symbol in found {
                assert!(
                    range.contains(&symbol.address()),
                    "{path}: {} at {:#x} is outside .text.hot {range:x?}",
                    symbol.name().unwrap(),
                    symbol.address()
                );
            }
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn workers_do_not_load_libm() {
    each_worker(|path, elf| {
        let needed = needed_libraries(elf);
        assert!(
            needed.iter().any(|l| l.starts_with("libc.so")),
            "{path}: {needed:?} (the check reads the dynamic section)"
        );
        assert!(
            !needed.iter().any(|l| l.starts_with("libm.so")),
            "{path} loads libm: {needed:?}"
        );
        let pow = elf.symbols().find(|s| s.name() == Ok("pow")).unwrap();
        assert!(
            pow.is_definition(),
            "{path}: pow is not defined in the binary"
        );
    });
}

/// The `DT_NEEDED` entries of a 64-bit little-endian ELF's dynamic section.
fn needed_libraries(elf: &object::File) -> Vec<String> {
    let dynamic = elf.section_by_name(".dynamic").unwrap().data().unwrap();
    let dynstr = elf.section_by_name(".dynstr").unwrap().data().unwrap();
    const DT_NEEDED: u64 = 1;
    dynamic
        .chunks_exact(16)
        .filter_map(|entry| {
            let tag = u64::from_le_bytes(entry[..8].try_into().unwrap());
            let value = u64::from_le_bytes(entry[8..].try_into().unwrap()) as usize;
            (tag == DT_NEEDED).then(|| {
                let name = &dynstr[value..];
                let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                String::from_utf8_lossy(&name[..end]).into_owned()
            })
        })
        .collect()
}
