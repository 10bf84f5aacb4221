//! Reading a process's resident memory from `/proc`.

/// Resident set size of `pid` in bytes, or `None` if it cannot be read (e.g. it exited).
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_our_own_rss() {
        let rss = super::rss_bytes(std::process::id()).unwrap();
        assert!(rss > 1024 * 1024, "{rss}");
        assert_eq!(super::rss_bytes(u32::MAX), None);
    }
}
