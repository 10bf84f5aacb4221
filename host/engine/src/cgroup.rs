//! Control groups for sandboxed workers: a group per worker that holds its `memory_mib` and
//! `pids` limits, counts the OOM kills behind the `memory_limit` crash cause, and kills the
//! worker's whole process tree (cgroup v2 `cgroup.kill`), also when the host dies (the keeper).
//!
//! Layout, beside the host's own group in each hierarchy used:
//!
//! ```text
//! <own group>/plugvisor-<host pid>-<rand>/     one per host process (the keeper kills it)
//!   w<n>/                                      one per sandboxed worker
//! ```
//!
//! Limits use the v2 group when the v2 hierarchy has the controller, else the v1 hierarchy of
//! that controller (hybrid machines such as this project's CI). The tree kill needs v2.

use nix::libc;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Prefix of a host process's group.
const HOST_GROUP_PREFIX: &str = "plugvisor-";
/// How long removing a worker's group waits for its last processes to die.
const EMPTY_WAIT: Duration = Duration::from_secs(2);

/// Why a worker's cgroup could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct GroupError(pub(crate) String);

/// The limits a worker's group enforces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GroupLimits {
    /// Memory (and memory + swap) limit, MiB.
    pub(crate) memory_mib: Option<u64>,
    /// Most processes and threads.
    pub(crate) pids: Option<u64>,
}

/// The per-process groups, one per hierarchy that could be used.
#[derive(Debug, Default)]
struct HostGroups {
    /// In the v2 hierarchy: the tree kill, and limits where v2 has the controllers.
    v2: Option<PathBuf>,
    /// The v1 `memory` hierarchy's group, when v2 has no memory controller here.
    memory_v1: Option<PathBuf>,
    /// The v1 `pids` hierarchy's group, when v2 has no pids controller here.
    pids_v1: Option<PathBuf>,
}

/// One worker's groups: created before the spawn, joined by the child, removed (waiting
/// briefly for them to empty) when dropped after its exit.
#[derive(Debug, Default)]
pub(crate) struct WorkerGroup {
    leaves: Vec<PathBuf>,
    kill: Option<PathBuf>,
    oom: Option<(PathBuf, &'static str)>,
}

/// The `cgroup.procs` files the child writes itself into, opened by the host.
#[derive(Debug)]
pub(crate) struct Joiner(Vec<OwnedFd>);

impl Joiner {
    /// Moves the calling process into every group (first in `pre_exec`, so that every later
    /// fork is inside). Raw `write` only; allocates nothing.
    pub(crate) fn join(&self) -> io::Result<()> {
        for fd in &self.0 {
            // SAFETY: a write of a 1-byte static buffer to an fd this process owns.
            let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl WorkerGroup {
    /// Creates a worker's groups with `limits`. The tree kill is included when the machine
    /// has a usable v2 hierarchy (`tree` of the result says so).
    ///
    /// # Errors
    /// A requested limit no hierarchy here can enforce, or a group that cannot be created.
    pub(crate) fn create(limits: GroupLimits) -> Result<(Self, Joiner), GroupError> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let groups = host_groups();
        let name = format!("w{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut made = Made::default();
        let built = build(groups, &name, limits, &mut made);
        match built {
            Ok(()) => Ok((made.group, Joiner(made.procs))),
            // Dropping what was made removes it.
            Err(e) => Err(e),
        }
    }

    /// True when the whole tree can be killed through this group.
    pub(crate) fn contains_tree(&self) -> bool {
        self.kill.is_some()
    }

    /// Kills every process in the group (v2 `cgroup.kill`), including escapees in new
    /// sessions. Without v2 this does nothing; the process-group kill still runs.
    pub(crate) fn kill_tree(&self) {
        if let Some(kill) = &self.kill {
            if let Err(e) = fs::write(kill, "1") {
                tracing::warn!(path = %kill.display(), error = %e, "cgroup.kill");
            }
        }
    }

    /// How many processes the kernel's OOM killer ended in this group.
    pub(crate) fn oom_kills(&self) -> u64 {
        let Some((path, key)) = &self.oom else {
            return 0;
        };
        let text = fs::read_to_string(path).unwrap_or_default();
        keyed_value(&text, key).unwrap_or(0)
    }
}

impl Drop for WorkerGroup {
    /// Waits (bounded) until the groups are empty, then removes them.
    fn drop(&mut self) {
        for leaf in self.leaves.iter().rev() {
            remove_group(leaf);
        }
    }
}

#[derive(Debug, Default)]
struct Made {
    group: WorkerGroup,
    procs: Vec<OwnedFd>,
}

fn build(
    groups: &HostGroups,
    name: &str,
    limits: GroupLimits,
    made: &mut Made,
) -> Result<(), GroupError> {
    let v2_has = |c: &str| groups.v2.as_deref().is_some_and(|g| has_controller(g, c));
    if let Some(v2) = &groups.v2 {
        let leaf = made.add(v2, name)?;
        made.group.kill = Some(leaf.join("cgroup.kill"));
        if limits.memory_mib.is_some() && v2_has("memory") {
            made.group.oom = Some((leaf.join("memory.events"), "oom_kill"));
        }
    }
    if let Some(mib) = limits.memory_mib {
        let bytes = mib.saturating_mul(1 << 20).to_string();
        if v2_has("memory") {
            let leaf = made.leaf(0);
            write_limit(&leaf, "memory.max", &bytes)?;
            write_limit(&leaf, "memory.swap.max", "0").ok();
        } else {
            let Some(v1) = &groups.memory_v1 else {
                return Err(missing("memory_mib", "memory"));
            };
            let leaf = made.add(v1, name)?;
            write_limit(&leaf, "memory.limit_in_bytes", &bytes)?;
            // Memory + swap, where swap accounting exists: no escape into swap.
            write_limit(&leaf, "memory.memsw.limit_in_bytes", &bytes).ok();
            made.group.oom = Some((leaf.join("memory.oom_control"), "oom_kill"));
        }
    }
    if let Some(pids) = limits.pids {
        let leaf = match (v2_has("pids"), &groups.pids_v1) {
            (true, _) => made.leaf(0),
            (false, Some(v1)) => made.add(v1, name)?,
            (false, None) => return Err(missing("pids", "pids")),
        };
        write_limit(&leaf, "pids.max", &pids.to_string())?;
    }
    Ok(())
}

impl Made {
    /// Creates `parent/name`, opens its `cgroup.procs` for the child, records it for removal.
    fn add(&mut self, parent: &Path, name: &str) -> Result<PathBuf, GroupError> {
        let leaf = parent.join(name);
        fs::create_dir(&leaf).map_err(|e| group_error(&leaf, &e))?;
        self.group.leaves.push(leaf.clone());
        let procs = leaf.join("cgroup.procs");
        let fd = fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(|e| group_error(&procs, &e))?;
        self.procs.push(fd.into());
        Ok(leaf)
    }

    fn leaf(&self, i: usize) -> PathBuf {
        self.group.leaves[i].clone()
    }
}

fn write_limit(leaf: &Path, file: &str, value: &str) -> Result<(), GroupError> {
    let path = leaf.join(file);
    fs::write(&path, value).map_err(|e| group_error(&path, &e))
}

fn group_error(path: &Path, e: &io::Error) -> GroupError {
    GroupError(format!("cgroup {}: {e}", path.display()))
}

fn missing(field: &str, controller: &str) -> GroupError {
    GroupError(format!(
        "{field} needs the cgroup `{controller}` controller, which this host cannot use \
         (no v1 `{controller}` hierarchy, and none delegated in cgroup v2)"
    ))
}

fn has_controller(group: &Path, controller: &str) -> bool {
    fs::read_to_string(group.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|x| x == controller))
}

/// `value` of the `key value` line in a cgroup stats file.
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Removes an (emptying) group, waiting up to [`EMPTY_WAIT`] for its processes to go.
fn remove_group(dir: &Path) {
    let deadline = std::time::Instant::now() + EMPTY_WAIT;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) if std::time::Instant::now() >= deadline => {
                tracing::warn!(path = %dir.display(), error = %e, "could not remove a cgroup");
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// The host's groups, created once per process (with the keeper, for v2).
fn host_groups() -> &'static HostGroups {
    static GROUPS: OnceLock<HostGroups> = OnceLock::new();
    GROUPS.get_or_init(|| {
        let own = own_groups();
        let name = format!(
            "{HOST_GROUP_PREFIX}{}-{}",
            std::process::id(),
            crate::dirs::short_id()
        );
        let make = |parent: &Option<PathBuf>| -> Option<PathBuf> {
            let parent = parent.as_ref()?;
            sweep_stale(parent);
            let dir = parent.join(&name);
            match fs::create_dir(&dir) {
                Ok(()) => Some(dir),
                Err(e) => {
                    tracing::debug!(path = %dir.display(), error = %e, "no cgroup here");
                    None
                }
            }
        };
        let v2 = make(&own.v2);
        if let Some(v2) = &v2 {
            // Hand the controllers this group may use down to the workers' groups.
            let offered = fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
            for c in ["memory", "pids"].iter().filter(|c| offered.contains(*c)) {
                let _ = fs::write(v2.join("cgroup.subtree_control"), format!("+{c}"));
            }
        }
        let v2_has = |c| v2.as_deref().is_some_and(|g| has_controller(g, c));
        let memory_v1 = if v2_has("memory") {
            None
        } else {
            make(&own.memory_v1)
        };
        let pids_v1 = if v2_has("pids") {
            None
        } else {
            make(&own.pids_v1)
        };
        let made: Vec<&PathBuf> = [&v2, &memory_v1, &pids_v1].into_iter().flatten().collect();
        if !made.is_empty() {
            if let Err(e) = crate::keeper::start(v2.as_deref(), &made) {
                tracing::warn!(error = %e, "no keeper: escapees may outlive a host that dies");
            }
        }
        HostGroups {
            v2,
            memory_v1,
            pids_v1,
        }
    })
}

/// This process's own group directories (parsed from mountinfo and `/proc/self/cgroup`).
fn own_groups() -> HostGroups {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let membership = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    own_groups_from(&mounts, &membership)
}

fn own_groups_from(mountinfo: &str, membership: &str) -> HostGroups {
    let mut groups = HostGroups::default();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let mut right = right.split(' ');
        let (Some(fstype), _, Some(options)) = (right.next(), right.next(), right.next()) else {
            continue;
        };
        let (Some(root), Some(mount)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let own = |controller: &str| own_path(membership, controller, root, mount);
        match fstype {
            "cgroup2" => groups.v2 = own(""),
            "cgroup" => {
                let has = |c: &str| options.split(',').any(|o| o == c);
                if has("memory") {
                    groups.memory_v1 = own("memory");
                }
                if has("pids") {
                    groups.pids_v1 = own("pids");
                }
            }
            _ => {}
        }
    }
    groups
}

/// The directory of this process's group for `controller` ("" = v2) under `mount`, whose
/// root within the hierarchy is `root`.
fn own_path(membership: &str, controller: &str, root: &str, mount: &str) -> Option<PathBuf> {
    let path = membership.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match controller {
            "" => controllers.is_empty(),
            c => controllers.split(',').any(|x| x == c),
        };
        matches.then_some(path)
    })?;
    let inside = path
        .strip_prefix(root.trim_end_matches('/'))
        .unwrap_or(path);
    let dir = Path::new(mount).join(inside.trim_start_matches('/'));
    dir.is_dir().then_some(dir)
}

/// Removes the groups of host processes that are gone (their keeper could not, or there
/// was none), killing what is still inside first.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(rest) = name.strip_prefix(HOST_GROUP_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if pid.is_none() || alive {
            continue;
        }
        let dir = entry.path();
        let _ = fs::write(dir.join("cgroup.kill"), "1");
        if let Ok(leaves) = fs::read_dir(&dir) {
            leaves
                .flatten()
                .filter(|l| l.path().is_dir())
                .for_each(|l| remove_group(&l.path()));
        }
        remove_group(&dir);
        tracing::info!(path = %dir.display(), "swept a dead host's cgroup");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn own_groups_come_from_mountinfo_and_membership() {
        let membership = "8:pids:/\n4:memory:/nope/abc\n0::/\n";
        let groups = own_groups_from(MOUNTINFO, membership);
        // Only directories that exist count; these two do on any Linux with /sys mounted
        // like this machine's, and the made-up memory path does not.
        assert_eq!(groups.memory_v1, None);
        if Path::new("/sys/fs/cgroup/unified").is_dir() {
            assert_eq!(groups.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        }
    }

    #[test]
    fn keyed_values_are_read_by_name() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(text, "oom_kill"), Some(3));
        assert_eq!(keyed_value(text, "oom"), None);
        assert_eq!(
            keyed_value("low 0\nmax 2\noom 1\noom_kill 1\n", "oom_kill"),
            Some(1)
        );
    }
}
