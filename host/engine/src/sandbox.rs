//! The sandbox of one worker: what a spec asks for ([`Sandbox`]); what the host prepares
//! before the fork (a Landlock ruleset, compiled seccomp filters, the worker's cgroups, the
//! user to become, an allow-listed environment); what was really enforced ([`Enforced`]); and
//! the allocation-free steps the forked child takes before `exec`, in this order: a session of
//! its own, join the cgroups, leave the host's network namespace (bringing its own loopback
//! up if asked), no core dumps, drop to the user, `no_new_privs`, Landlock, seccomp last.

use landlock::{
    Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};
use nix::libc;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::cgroup::{GroupLimits, Joiner, WorkerGroup};

/// What a worker may touch. Every field has a safe default; see `SECURITY.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// Filesystem confinement (Landlock). Default [`FsPolicy::Strict`].
    pub filesystem: FsPolicy,
    /// Extra paths the worker may read (and execute) beneath.
    pub read: Vec<PathBuf>,
    /// Extra paths the worker may write beneath.
    pub write: Vec<PathBuf>,
    /// Network access. Default [`NetPolicy::None`].
    pub network: NetPolicy,
    /// Syscall filtering (seccomp). Default [`SyscallPolicy::Default`].
    pub syscalls: SyscallPolicy,
    /// Memory limit in MiB (a cgroup's); past it the kernel kills the worker and its crash
    /// cause is `memory_limit`. Default none.
    pub memory_mib: Option<u64>,
    /// Most processes and threads the worker's tree may have (a cgroup's `pids.max`), which
    /// stops a fork bomb inside it. Default none.
    pub pids: Option<u64>,
    /// The user to run as, by name or number; only a host running as root can switch. The
    /// worker then has no capabilities. Default: the host's user.
    pub user: Option<String>,
    /// Run even when the kernel cannot give a requested protection (the log says what is
    /// missing). Default false: the worker is not started, with an error naming it.
    pub allow_degraded: bool,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self {
            filesystem: FsPolicy::Strict,
            read: Vec::new(),
            write: Vec::new(),
            network: NetPolicy::None,
            syscalls: SyscallPolicy::Default,
            memory_mib: None,
            pids: None,
            user: None,
            allow_degraded: false,
        }
    }
}

/// Filesystem confinement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FsPolicy {
    /// Read: the worker's program, system libraries, a few system files, `read` paths and its
    /// transfer directory (inputs are read-only). Write: its `out/` area and `write` paths.
    /// Signals and abstract Unix sockets stay inside the sandbox. Needs Landlock ABI 6.
    Strict,
    /// No filesystem confinement.
    Off,
}

/// Network access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetPolicy {
    /// A network namespace of its own with nothing in it: every connect fails, no packet
    /// leaves. The Unix socket to the host still works.
    None,
    /// A network namespace of its own with only its own loopback up: it can talk to itself
    /// on 127.0.0.1, never to the host's loopback or beyond.
    Loopback,
    /// The host's network.
    Host,
}

/// Syscall filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyscallPolicy {
    /// Deny (EPERM) the syscalls a plugin has no business making: ptrace, process_vm_*,
    /// mount family, kexec, bpf, perf_event_open, keyrings, userfaultfd, modules,
    /// unshare/setns and namespace flags of clone, reboot, io_uring, and more (`SECURITY.md`).
    Default,
    /// No filter (`no_new_privs` is still set).
    Off,
}

/// Why a sandbox could not be prepared.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SandboxError(String);

/// What a worker's sandbox really enforces, as started (shown in logs, `status` and the API).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Enforced {
    /// `landlock` or `off`.
    pub filesystem: String,
    /// `none`, `loopback` or `host`.
    pub network: String,
    /// `seccomp` or `off`.
    pub syscalls: String,
    /// The cgroup memory limit, MiB.
    pub memory_mib: Option<u64>,
    /// The cgroup pids limit.
    pub pids: Option<u64>,
    /// How the whole process tree is killed: `cgroup` (v2 `cgroup.kill`, also on the host's
    /// death) or `process-group` (a descendant in a new session can escape).
    pub tree: String,
    /// The uid the worker runs as, when it was switched.
    pub uid: Option<u32>,
    /// What was asked for and could not be given (only with `allow_degraded`).
    pub missing: Vec<String>,
}

/// System files (beyond library directories) a normal dynamically linked program reads.
const SYSTEM_FILES: [&str; 12] = [
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/passwd",
    "/etc/group",
];

/// Directories of programs and libraries: read and execute.
const SYSTEM_DIRS: [&str; 6] = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin"];

/// Devices any program may read and write.
const DEVICES: [&str; 4] = ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"];

/// Host variables a sandboxed worker still gets (when the host has them); nothing else of the
/// host's environment reaches it.
const PASSED_ENV: [&str; 5] = ["PLUGVISOR_LOG", "RUST_LOG", "RUST_BACKTRACE", "LANG", "TZ"];

/// Where one worker lives, for its rules.
pub(crate) struct Places<'a> {
    pub(crate) program: &'a Path,
    pub(crate) transfer_dir: &'a Path,
    pub(crate) out_dir: &'a Path,
}

/// What the child applies before exec, prepared by the host.
#[derive(Debug)]
pub(crate) struct Prepared {
    ruleset: Option<OwnedFd>,
    filters: &'static [BpfProgram],
    network: NetPolicy,
    joiner: Option<Joiner>,
    identity: Option<(libc::uid_t, libc::gid_t)>,
    host_pid: libc::pid_t,
    /// What this sandbox enforces.
    pub(crate) enforced: Enforced,
}

impl Sandbox {
    /// Prepares the sandbox for a worker at `places`; the worker's cgroup (if any) comes back
    /// beside it, for the host to kill and remove after the exit.
    ///
    /// # Errors
    /// A requested protection the kernel cannot give (unless `allow_degraded`), a path that
    /// cannot be opened for a rule, a user that does not exist, or a filter that does not
    /// compile.
    pub(crate) fn prepare(
        &self,
        places: &Places<'_>,
    ) -> Result<(Prepared, Option<WorkerGroup>), SandboxError> {
        let mut missing = Vec::new();
        let ruleset = match self.filesystem {
            FsPolicy::Strict => self.ruleset(places)?,
            FsPolicy::Off => None,
        };
        if self.filesystem == FsPolicy::Strict && ruleset.is_none() {
            missing.push("filesystem: this kernel has no Landlock".to_owned());
        }
        let filters = match self.syscalls {
            SyscallPolicy::Default => default_filters()?,
            SyscallPolicy::Off => &[],
        };
        let identity = self.identity().or_else(|e| self.degrade(e, &mut missing))?;
        let (group, joiner) = self.group().or_else(|e| self.degrade(e, &mut missing))?;
        let enforced = Enforced {
            filesystem: if ruleset.is_some() { "landlock" } else { "off" }.to_owned(),
            network: self.network.as_str().to_owned(),
            syscalls: if filters.is_empty() { "off" } else { "seccomp" }.to_owned(),
            memory_mib: group.as_ref().and(self.memory_mib),
            pids: group.as_ref().and(self.pids),
            tree: match group.as_ref().is_some_and(WorkerGroup::contains_tree) {
                true => "cgroup",
                false => "process-group",
            }
            .to_owned(),
            uid: identity.map(|(uid, _)| uid),
            missing,
        };
        let prepared = Prepared {
            ruleset,
            filters,
            network: self.network,
            joiner,
            identity,
            host_pid: nix::unistd::getpid().as_raw(),
            enforced,
        };
        Ok((prepared, group))
    }

    /// With `allow_degraded`, records `e` as missing and goes on without it; else fails.
    fn degrade<T: Default>(
        &self,
        e: SandboxError,
        missing: &mut Vec<String>,
    ) -> Result<T, SandboxError> {
        if !self.allow_degraded {
            return Err(e);
        }
        tracing::warn!(error = %e, "sandbox degraded (allow_degraded)");
        missing.push(e.0);
        Ok(T::default())
    }

    /// The worker's cgroups: always tried for the tree kill, required for `memory_mib`/`pids`.
    fn group(&self) -> Result<(Option<WorkerGroup>, Option<Joiner>), SandboxError> {
        let limits = GroupLimits {
            memory_mib: self.memory_mib,
            pids: self.pids,
        };
        match WorkerGroup::create(limits) {
            Ok((group, joiner)) => Ok((Some(group), Some(joiner))),
            Err(e) if limits == GroupLimits::default() => {
                tracing::debug!(error = %e, "no cgroup for the tree kill");
                Ok((None, None))
            }
            Err(e) => Err(SandboxError(e.0)),
        }
    }

    /// The uid and gid to switch to, for `user` (a name or a number).
    fn identity(&self) -> Result<Option<(libc::uid_t, libc::gid_t)>, SandboxError> {
        let Some(user) = &self.user else {
            return Ok(None);
        };
        if !nix::unistd::geteuid().is_root() {
            return Err(SandboxError(format!(
                "user = {user:?} needs a host running as root"
            )));
        }
        let found = match user.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
            Err(_) => nix::unistd::User::from_name(user),
        };
        match found {
            Ok(Some(u)) if u.uid.is_root() => Err(SandboxError(format!(
                "user = {user:?} is root; name an unprivileged user"
            ))),
            Ok(Some(u)) => Ok(Some((u.uid.as_raw(), u.gid.as_raw()))),
            Ok(None) => Err(SandboxError(format!("user = {user:?}: no such user"))),
            Err(e) => Err(SandboxError(format!("user = {user:?}: {e}"))),
        }
    }

    /// The environment of a sandboxed worker: `PATH`, a few harmless host variables, then
    /// the spec's own (the host adds the protocol's variables after these).
    pub(crate) fn environment(&self) -> Vec<(OsString, OsString)> {
        let mut env = vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())];
        for name in PASSED_ENV {
            if let Some(value) = std::env::var_os(name) {
                env.push((name.into(), value));
            }
        }
        env
    }

    fn ruleset(&self, places: &Places<'_>) -> Result<Option<OwnedFd>, SandboxError> {
        // ABI 6 (Linux 6.12): files and directories, truncate, device ioctls, and the scopes
        // that keep signals and abstract Unix sockets inside the sandbox.
        let abi = ABI::V6;
        let level = if self.allow_degraded {
            CompatLevel::BestEffort
        } else {
            CompatLevel::HardRequirement
        };
        let read = AccessFs::from_read(abi);
        // Never device nodes: a root worker could mknod the disk beneath a writable path and
        // read it raw.
        let write = AccessFs::from_all(abi)
            & !(AccessFs::Execute | AccessFs::MakeBlock | AccessFs::MakeChar);
        let mut rules: Vec<(PathBuf, landlock::BitFlags<AccessFs>)> = Vec::new();
        let mut add = |path: &Path, access| rules.push((path.to_path_buf(), access));
        add(places.program, read);
        // Opened for each worker, never cached: a system file replaced by rename (as
        // resolv.conf often is) must be covered by its new inode.
        for dir in SYSTEM_DIRS.iter().chain(SYSTEM_FILES.iter()) {
            add(Path::new(dir), read);
        }
        for dev in DEVICES {
            add(Path::new(dev), AccessFs::ReadFile | AccessFs::WriteFile);
        }
        add(places.transfer_dir, AccessFs::ReadFile | AccessFs::ReadDir);
        add(places.out_dir, write);
        // Its socket lives in its transfer directory.
        add(places.transfer_dir, AccessFs::MakeSock.into());
        self.read.iter().for_each(|p| add(p, read));
        self.write.iter().for_each(|p| add(p, write));
        build_ruleset(abi, level, &rules)
    }
}

/// `path` opened for a rule, its rights narrowed to a file's when it is not a directory.
fn opened(
    path: &Path,
    access: landlock::BitFlags<AccessFs>,
    abi: ABI,
) -> Option<(PathFd, landlock::BitFlags<AccessFs>)> {
    let fd = PathFd::new(path).ok()?;
    // Directory-only rights (list, make, remove) mean nothing on a file.
    let access = match path.is_dir() {
        true => access,
        false => access & AccessFs::from_file(abi),
    };
    Some((fd, access))
}

/// Creates the Landlock ruleset with `rules` (paths that do not exist are skipped, except
/// the worker's own places, which exist by construction).
fn build_ruleset(
    abi: ABI,
    level: CompatLevel,
    rules: &[(PathBuf, landlock::BitFlags<AccessFs>)],
) -> Result<Option<OwnedFd>, SandboxError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        SandboxError(format!(
            "filesystem = \"strict\" needs Landlock (ABI {abi:?} or newer): {what}: {e}"
        ))
    };
    let mut created = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(abi))
        .map_err(|e| fail("handled access", &e))?
        .scope(Scope::from_all(abi))
        .map_err(|e| fail("scopes", &e))?
        .create()
        .map_err(|e| fail("create", &e))?;
    for (path, access) in rules {
        let Some((fd, access)) = opened(path, *access, abi) else {
            continue;
        };
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| fail(&path.display().to_string(), &e))?;
    }
    let fd: Option<OwnedFd> = created.into();
    if fd.is_none() && level == CompatLevel::HardRequirement {
        return Err(fail("ruleset", &"this kernel has no Landlock"));
    }
    Ok(fd)
}

/// The syscalls denied with EPERM by [`SyscallPolicy::Default`].
const DENIED: [i64; 35] = [
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_reboot,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_open_by_handle_at,
    libc::SYS_iopl,
    libc::SYS_ioperm,
];

/// Namespace flags that `clone` may not carry.
const NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// The default filters, compiled once per process.
fn default_filters() -> Result<&'static [BpfProgram], SandboxError> {
    static FILTERS: OnceLock<Result<Vec<BpfProgram>, String>> = OnceLock::new();
    match FILTERS.get_or_init(|| filters().map_err(|e| e.0)) {
        Ok(filters) => Ok(filters),
        Err(e) => Err(SandboxError(e.clone())),
    }
}

/// The x32 guard: syscall numbers with the x32 bit (`__X32_SYSCALL_BIT`) are refused with
/// EPERM, so the deny-list cannot be bypassed through x32 numbers on a kernel that has that
/// ABI (the other filter already checks the architecture, which stops i386 `int 0x80`).
fn x32_guard() -> BpfProgram {
    const LOAD_NR: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS, offset 0: seccomp_data.nr
    const JUMP_IF_AT_LEAST: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RETURN: u16 = 0x06; // BPF_RET | BPF_K
    const X32_BIT: u32 = 0x4000_0000;
    let op = |code, jt, jf, k| seccompiler::sock_filter { code, jt, jf, k };
    vec![
        op(LOAD_NR, 0, 0, 0),
        op(JUMP_IF_AT_LEAST, 0, 1, X32_BIT),
        op(RETURN, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        op(RETURN, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// The default filters: the deny-list (EPERM), `clone3` answered ENOSYS so that libc falls
/// back to `clone`, whose flags a filter can check (clone3 passes them in memory), and the
/// x32 guard.
fn filters() -> Result<Vec<BpfProgram>, SandboxError> {
    let bad = |e: seccompiler::BackendError| SandboxError(format!("seccomp filter: {e}"));
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(*flag),
                *flag,
            )?;
            SeccompRule::new(vec![cond])
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    deny.insert(libc::SYS_clone, clone_rules);
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let arch = TargetArch::x86_64;
    let deny = SeccompFilter::new(deny, SeccompAction::Allow, eperm, arch).map_err(bad)?;
    let clone3 = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let enosys = SeccompAction::Errno(libc::ENOSYS as u32);
    let clone3 = SeccompFilter::new(clone3, SeccompAction::Allow, enosys, arch).map_err(bad)?;
    let mut compiled = [deny, clone3]
        .into_iter()
        .map(|f| BpfProgram::try_from(f).map_err(|e| SandboxError(format!("seccomp: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    compiled.push(x32_guard());
    Ok(compiled)
}

impl NetPolicy {
    /// The manifest's name of the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Loopback => "loopback",
            Self::Host => "host",
        }
    }
}

impl Prepared {
    /// The uid and gid the worker will run as, when `user` switches it.
    pub(crate) fn identity(&self) -> Option<(u32, u32)> {
        self.identity
    }

    /// The child's sandbox steps, between fork and exec. Makes raw syscalls only; allocates
    /// nothing (every error is an errno).
    pub(crate) fn apply_in_child(&self) -> io::Result<()> {
        // A session of its own: no controlling terminal (no TIOCSTI), and the pgid the host
        // signals is its pid, as with the process group unsandboxed workers get.
        nix::unistd::setsid()?;
        if let Some(joiner) = &self.joiner {
            joiner.join()?;
        }
        if self.network != NetPolicy::Host {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        }
        if self.network == NetPolicy::Loopback {
            loopback_up()?;
        }
        // No core dumps: a crash must not write the worker's memory anywhere.
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)?;
        if let Some((uid, gid)) = self.identity {
            drop_to(uid, gid, self.host_pid)?;
        }
        nix::sys::prctl::set_no_new_privs()?;
        if let Some(ruleset) = &self.ruleset {
            // SAFETY: a plain syscall on a ruleset fd this process owns; no memory is passed.
            let rc =
                unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        for filter in self.filters {
            seccompiler::apply_filter(filter)
                .map_err(|_| io::Error::from_raw_os_error(libc::EPERM))?;
        }
        Ok(())
    }
}

/// Sets the loopback interface of the (new, empty) network namespace up.
fn loopback_up() -> io::Result<()> {
    let check = |rc: libc::c_int| match rc {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(rc),
    };
    // SAFETY: `ifr` is a zeroed local whose name is set to "lo"; the ioctls read and write
    // that struct only; the socket is closed before returning.
    unsafe {
        let fd = check(libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo") {
            *dst = *src as libc::c_char;
        }
        let mut result = check(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr));
        if result.is_ok() {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            result = check(libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr));
        }
        libc::close(fd);
        result.map(|_| ())
    }
}

/// Becomes `uid`/`gid` with no supplementary groups and no capabilities (none bounded,
/// permitted, effective or ambient), then restores the parent-death signal the switch
/// cleared and checks the host is still there.
fn drop_to(uid: libc::uid_t, gid: libc::gid_t, host: libc::pid_t) -> io::Result<()> {
    let check = |rc: libc::c_int| match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    };
    // SAFETY: raw syscalls with integer arguments (setgroups gets an empty list).
    unsafe {
        for cap in 0..=63 {
            // Capabilities past the kernel's last one answer EINVAL; the rest must drop.
            if libc::prctl(libc::PR_CAPBSET_DROP, cap) != 0
                && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
            {
                return Err(io::Error::last_os_error());
            }
        }
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(gid, gid, gid))?;
        check(libc::setresuid(uid, uid, uid))?;
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
    }
    if nix::unistd::getppid().as_raw() != host {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_filters_compile_and_the_environment_is_small() {
        let filters = filters().unwrap();
        assert_eq!(filters.len(), 3);
        assert!(filters.iter().all(|f| !f.is_empty()));
        let env = Sandbox::default().environment();
        assert_eq!(env[0].0, "PATH");
        assert!(env.len() <= 1 + PASSED_ENV.len());
        assert!(env
            .iter()
            .all(|(k, _)| k != "HOME" && k != "PLUGVISOR_API_TOKEN"));
    }

    #[test]
    fn a_strict_filesystem_prepares_a_ruleset_on_this_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let places = Places {
            program: Path::new("/bin/sh"),
            transfer_dir: dir.path(),
            out_dir: &out,
        };
        let (prepared, _group) = Sandbox::default().prepare(&places).unwrap();
        assert!(
            prepared.ruleset.is_some(),
            "this kernel has Landlock (ABI 7)"
        );
        assert_eq!(prepared.network, NetPolicy::None);
        assert_eq!(prepared.enforced.filesystem, "landlock");
        let open = Sandbox {
            filesystem: FsPolicy::Off,
            network: NetPolicy::Host,
            syscalls: SyscallPolicy::Off,
            ..Sandbox::default()
        };
        let (prepared, _group) = open.prepare(&places).unwrap();
        assert!(prepared.ruleset.is_none() && prepared.filters.is_empty());
        assert_eq!(prepared.enforced.network, "host");
        assert_eq!(prepared.enforced.syscalls, "off");
    }
}
