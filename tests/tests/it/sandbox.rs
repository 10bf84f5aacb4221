//! Sandboxed workers: they still serve calls, streams and files, while what a hostile plugin
//! would try (reading host files, the network, ptrace, the host's environment) fails. Every
//! attempt runs twice: unsandboxed (the positive control: it works) and sandboxed.

use plugvisor_host::{FsPolicy, NetPolicy, Plugin, PluginError, RemotePlugin, Sandbox};
use plugvisor_proto::{json, CrashCause, FileRef, Value};
use plugvisor_tests::{eventually, serially, spec, World};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

#[test]
fn a_sandboxed_worker_still_serves_calls_streams_and_files() {
    serially(async {
        let world = World::new().await;
        let echo = world
            .host
            .spawn(spec("echo").sandbox(Sandbox::default()))
            .await
            .expect("a sandboxed echo starts");
        assert_eq!(echo.execute(json!("hi")).await.unwrap(), json!("hi"));
        let files = world
            .host
            .spawn(spec("files").sandbox(Sandbox::default()))
            .await
            .expect("a sandboxed files starts");
        let input = world.base.path().join("input.txt");
        std::fs::write(&input, vec![b'x'; 100_000]).unwrap();
        let file = FileRef::new(&input, 100_000);
        let hashed = files
            .execute(json!({"op": "sha256", "file": file}))
            .await
            .unwrap();
        assert_eq!(hashed["size"], json!(100_000));
        let zipped = files
            .call(json!({"op": "gzip", "file": file}))
            .await
            .unwrap();
        assert_eq!(zipped.files.len(), 1, "{:?}", zipped.value);
        let out: Value = zipped.value["file"].clone();
        let path = FileRef::from_value(&out).unwrap().unwrap().path;
        assert!(
            path.starts_with(files.transfer_dir().join("out")),
            "{path:?}"
        );
        drop(zipped);
        std::fs::remove_file(&input).unwrap();
        drop((echo, files));
        world.finish().await;
    })
}

/// An unsandboxed intruder (for the positive controls) and one in the default sandbox.
async fn intruders(world: &World) -> (RemotePlugin, RemotePlugin) {
    let free = world.host.spawn(spec("intruder")).await.unwrap();
    let sandboxed = spec("intruder").sandbox(Sandbox::default());
    let boxed = world.host.spawn(sandboxed).await.unwrap();
    (free, boxed)
}

/// The outcome of one intruder attempt, unsandboxed and sandboxed.
struct Pair {
    free: Value,
    boxed: Value,
}

/// Runs `attempt` on an unsandboxed and a sandboxed intruder.
async fn attempt(free: &RemotePlugin, boxed: &RemotePlugin, attempt: Value) -> Pair {
    let free = free
        .execute(attempt.clone())
        .await
        .expect("unsandboxed answer");
    let boxed = boxed.execute(attempt).await.expect("sandboxed answer");
    Pair { free, boxed }
}

/// Asserts the attempt worked without the sandbox (the positive control) and failed in it.
fn stopped(what: &str, pair: &Pair) {
    assert_eq!(
        pair.free["ok"],
        json!(true),
        "{what} unsandboxed: {}",
        pair.free
    );
    assert_eq!(
        pair.boxed["ok"],
        json!(false),
        "{what} sandboxed: {}",
        pair.boxed
    );
}

#[test]
fn an_intruder_is_stopped_where_it_succeeds_unsandboxed() {
    serially(async {
        let world = World::new().await;
        let (free, boxed) = intruders(&world).await;
        let sibling = world.host.spawn(spec("echo")).await.unwrap();
        let sibling_file = sibling.transfer_dir().join("secret-of-a-sibling");
        std::fs::write(&sibling_file, "not yours").unwrap();
        let outside = world.base.path().join("outside.txt");
        let host_pid = std::process::id();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_addr = udp.local_addr().unwrap().to_string();
        let abstract_name = format!("plugvisor-test-{host_pid}");
        let abstract_addr = {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap()
        };
        let abstract_listener =
            std::os::unix::net::UnixListener::bind_addr(&abstract_addr).unwrap();
        let v6 = std::net::TcpListener::bind("[::1]:0").unwrap();
        let v6_addr = v6.local_addr().unwrap().to_string();
        // Files in each worker's own transfer area: readable to it, never truncatable.
        let mine = |p: &RemotePlugin| p.transfer_dir().join("given.txt");
        std::fs::write(mine(&free), "given").unwrap();
        std::fs::write(mine(&boxed), "given").unwrap();

        let cases = [
            (
                "read /etc/shadow",
                json!({"op": "read", "path": "/etc/shadow"}),
            ),
            (
                "read a sibling's transfer area",
                json!({"op": "read", "path": sibling_file}),
            ),
            (
                "list the host's directory",
                json!({"op": "list", "path": world.host.dir()}),
            ),
            ("write outside", json!({"op": "write", "path": outside})),
            (
                "write into /etc",
                json!({"op": "write", "path": "/etc/plugvisor-intruder-probe"}),
            ),
            (
                "read a kernel knob",
                json!({"op": "read", "path": "/proc/sys/kernel/core_pattern"}),
            ),
            (
                "read the cgroup tree",
                json!({"op": "read", "path": "/sys/fs/cgroup/unified/cgroup.procs"}),
            ),
            (
                "read a sibling's environ",
                json!({"op": "environ", "pid": sibling.pid()}),
            ),
            (
                "ptrace a sibling",
                json!({"op": "ptrace", "pid": sibling.pid()}),
            ),
            (
                "connect over IPv6 loopback",
                json!({"op": "connect", "addr": v6_addr}),
            ),
            (
                "read the host's environ",
                json!({"op": "environ", "pid": host_pid}),
            ),
            (
                "connect to a loopback port",
                json!({"op": "connect", "addr": addr}),
            ),
            (
                "send a UDP datagram",
                json!({"op": "udp", "addr": udp_addr}),
            ),
            (
                "reach an abstract Unix socket",
                json!({"op": "abstract", "name": abstract_name}),
            ),
            (
                "signal the host",
                json!({"op": "signal", "pid": host_pid, "sig": 0}),
            ),
            (
                "signal a sibling",
                json!({"op": "signal", "pid": sibling.pid(), "sig": 0}),
            ),
        ];
        for (what, input) in cases {
            stopped(what, &attempt(&free, &boxed, input).await);
        }
        // Reading a sibling's memory at address 0: EFAULT means the call was permitted.
        let peek = json!({"op": "process_vm_readv", "pid": sibling.pid()});
        let pair = attempt(&free, &boxed, peek).await;
        assert_eq!(
            pair.free["errno"],
            json!(nix::libc::EFAULT),
            "{}",
            pair.free
        );
        assert_eq!(
            pair.boxed["errno"],
            json!(nix::libc::EPERM),
            "{}",
            pair.boxed
        );
        // Truncating a file of its own transfer area (different paths, so one pair by hand).
        let truncate = |p: &RemotePlugin| json!({"op": "truncate", "path": mine(p)});
        let pair = Pair {
            free: free.execute(truncate(&free)).await.unwrap(),
            boxed: boxed.execute(truncate(&boxed)).await.unwrap(),
        };
        stopped("truncate a read-only input", &pair);
        assert_eq!(std::fs::read(mine(&boxed)).unwrap(), b"given");
        assert!(
            !outside.exists(),
            "the unsandboxed write removed its own file"
        );
        for name in [
            "ptrace_traceme",
            "bpf",
            "perf_event_open",
            "keyctl",
            "userfaultfd",
            "unshare_user",
            "mount",
            "io_uring_setup",
        ] {
            let pair = attempt(&free, &boxed, json!({"op": "syscall", "name": name})).await;
            assert_ne!(
                pair.free["errno"],
                json!(nix::libc::EPERM),
                "{name} unsandboxed: {}",
                pair.free
            );
            assert_eq!(
                pair.boxed["errno"],
                json!(nix::libc::EPERM),
                "{name} sandboxed: {}",
                pair.boxed
            );
        }
        std::fs::remove_file(&sibling_file).unwrap();
        drop((listener, udp, abstract_listener, v6, free, boxed, sibling));
        world.finish().await;
    })
}

#[test]
fn a_sandboxed_plugin_cannot_change_the_callers_file_or_see_the_hosts_environment() {
    serially(async {
        let world = World::new().await;
        let (free, boxed) = intruders(&world).await;
        let callers = world.base.path().join("callers.txt");
        std::fs::write(&callers, "original").unwrap();
        let file = FileRef::new(&callers, 8);
        // Positive control: unsandboxed, the hard-linked input is the caller's own file.
        let free_answer = free
            .execute(json!({"op": "modify_input", "file": file}))
            .await
            .unwrap();
        assert_eq!(free_answer["ok"], json!(true), "{free_answer}");
        assert_ne!(std::fs::read(&callers).unwrap(), b"original");
        std::fs::write(&callers, "original").unwrap();
        let boxed_answer = boxed
            .execute(json!({"op": "modify_input", "file": file}))
            .await
            .unwrap();
        assert_eq!(boxed_answer["ok"], json!(false), "{boxed_answer}");
        assert_eq!(std::fs::read(&callers).unwrap(), b"original");

        // The host's environment stays home; the protocol's variables arrive.
        let names = |v: &Value| -> Vec<String> {
            v["names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_owned())
                .collect()
        };
        let free_env = names(&free.execute(json!({"op": "own_env"})).await.unwrap());
        let boxed_env = names(&boxed.execute(json!({"op": "own_env"})).await.unwrap());
        let inherited = free_env.iter().find(|n| n.starts_with("CARGO")).cloned();
        let inherited = inherited.expect("an unsandboxed worker inherits cargo's variables");
        assert!(!boxed_env.contains(&inherited), "{boxed_env:?}");
        // The protocol's variables arrive (the token too, which the runtime takes out of
        // the environment once read).
        assert!(
            boxed_env.iter().any(|n| n == "PLUGVISOR_TRANSFER_DIR"),
            "{boxed_env:?}"
        );
        assert!(
            !boxed_env.iter().any(|n| n == "PLUGVISOR_TOKEN"),
            "{boxed_env:?}"
        );
        // Seen from the host: no_new_privs and a seccomp filter on the sandboxed worker only.
        let field = |pid: u32, name: &str| -> String {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap()
                .to_owned();
            line.split_whitespace().nth(1).unwrap().to_owned()
        };
        assert_eq!(field(free.pid(), "NoNewPrivs:"), "0");
        assert_eq!(field(free.pid(), "Seccomp:"), "0");
        assert_eq!(field(boxed.pid(), "NoNewPrivs:"), "1");
        assert_eq!(field(boxed.pid(), "Seccomp:"), "2");
        let net = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
        assert_eq!(net(free.pid()), net(std::process::id()));
        assert_ne!(net(boxed.pid()), net(std::process::id()));
        // A session of its own (no controlling terminal to inject into with TIOCSTI), and no
        // core dumps; the unsandboxed worker shares the test's session.
        let stat = |pid: u32| -> Vec<String> {
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let after = text.rsplit_once(')').unwrap().1.to_owned();
            after.split_whitespace().map(str::to_owned).collect()
        };
        let session = |pid: u32| stat(pid)[3].parse::<u32>().unwrap();
        assert_eq!(session(boxed.pid()), boxed.pid());
        assert_eq!(stat(boxed.pid())[4], "0", "no controlling terminal");
        assert_eq!(session(free.pid()), session(std::process::id()));
        let core = |pid: u32| {
            let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
            let line = limits
                .lines()
                .find(|l| l.starts_with("Max core file size"))
                .unwrap();
            // "Max core file size <soft> <hard> bytes": the hard limit.
            line.split_whitespace().nth(5).unwrap().to_owned()
        };
        assert_eq!(core(boxed.pid()), "0");
        assert_ne!(
            core(free.pid()),
            "0",
            "the test's own hard limit allows cores"
        );
        // Only deliberate descriptors reach a worker (the same spawn path sandboxed or not;
        // a sandboxed worker cannot list its own /proc): no host file, socket or pipe but
        // its own.
        let fds = free.execute(json!({"op": "fds"})).await.unwrap();
        let host_dir = world.host.dir().to_string_lossy().into_owned();
        for target in fds["targets"].as_array().unwrap() {
            let target = target["target"].as_str().unwrap();
            let own = free.transfer_dir().to_string_lossy();
            let ok = target.starts_with("socket:")
                || target.starts_with("anon_inode:")
                || target.starts_with("pipe:")
                || target.starts_with(own.as_ref())
                || target.starts_with("/dev/null");
            assert!(
                ok && !target.starts_with(&host_dir) || target.starts_with(own.as_ref()),
                "{fds}"
            );
        }
        // Even its own /proc is out of reach.
        let own = boxed.execute(json!({"op": "status"})).await.unwrap();
        assert_eq!(own["ok"], json!(false), "{own}");
        std::fs::remove_file(&callers).unwrap();
        drop((free, boxed));
        world.finish().await;
    })
}

/// A sandbox with cgroup limits and a writable directory for the escapee's lock.
fn limited(lock_dir: &std::path::Path) -> Sandbox {
    Sandbox {
        memory_mib: Some(64),
        pids: Some(64),
        write: vec![lock_dir.to_path_buf()],
        ..Sandbox::default()
    }
}

/// True while some process holds an exclusive flock on `path`.
fn locked(path: &std::path::Path) -> bool {
    let file = std::fs::File::open(path).unwrap();
    file.try_lock().is_err()
}

#[test]
fn memory_pids_and_the_whole_tree_are_held_by_the_workers_cgroup() {
    serially(async {
        let world = World::new().await;
        let locks = tempfile::tempdir().unwrap();
        let free = world.host.spawn(spec("intruder")).await.unwrap();
        let boxed = world
            .host
            .spawn(spec("intruder").sandbox(limited(locks.path())))
            .await
            .expect("a worker with cgroup limits starts on this machine");
        let enforced = boxed.sandbox().expect("sandboxed").clone();
        assert_eq!(
            (enforced.memory_mib, enforced.pids, enforced.tree.as_str()),
            (Some(64), Some(64), "cgroup"),
            "{enforced:?}"
        );
        assert!(enforced.missing.is_empty(), "{enforced:?}");

        // pids: the unsandboxed fork bomb gets all its children, the sandboxed one hits the
        // limit (its threads count too) and the worker keeps serving.
        let bomb = attempt(&free, &boxed, json!({"op": "fork_bomb", "max": 200})).await;
        stopped("fork 200 children", &bomb);
        assert!(
            bomb.boxed["forked"].as_u64().unwrap() < 64,
            "{}",
            bomb.boxed
        );

        // The escapee: a new session, a double fork, SIGTERM ignored, a lock held.
        let free_lock = locks.path().join("free.lock");
        let boxed_lock = locks.path().join("boxed.lock");
        let free_escapee = free
            .execute(json!({"op": "escape", "lock": free_lock}))
            .await
            .unwrap();
        let boxed_escapee = boxed
            .execute(json!({"op": "escape", "lock": boxed_lock}))
            .await
            .unwrap();
        assert_eq!(free_escapee["locked"], json!(true), "{free_escapee}");
        assert_eq!(boxed_escapee["locked"], json!(true), "{boxed_escapee}");

        // memory: 32 MiB fit, 256 MiB unsandboxed fit, 256 MiB sandboxed kill the worker with
        // crash cause memory_limit.
        let small = boxed
            .execute(json!({"op": "alloc", "mib": 32}))
            .await
            .unwrap();
        assert_eq!(small["ok"], json!(true), "{small}");
        let big = json!({"op": "alloc", "mib": 256});
        assert_eq!(free.execute(big.clone()).await.unwrap()["ok"], json!(true));
        let Err(PluginError::WorkerCrashed(report)) = boxed.execute(big).await else {
            panic!("256 MiB in a 64 MiB sandbox must end the worker");
        };
        assert_eq!(report.cause, CrashCause::MemoryLimit, "{report:?}");

        // The sandboxed worker is gone, and its escapee with it; the unsandboxed one's escapee
        // outlives its worker's stop (the positive control), so the test ends it itself.
        let escaped = |v: &Value| v["pid"].as_u64().unwrap() as i32;
        assert!(
            eventually(Duration::from_secs(3), || !locked(&boxed_lock)).await,
            "the sandboxed escapee survived its worker"
        );
        free.shutdown().await;
        assert!(
            locked(&free_lock),
            "the unsandboxed escapee dies with its worker?"
        );
        let free_pid = nix::unistd::Pid::from_raw(escaped(&free_escapee));
        nix::sys::signal::kill(free_pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        assert!(eventually(Duration::from_secs(3), || !locked(&free_lock)).await);
        drop(boxed);
        world.finish().await;
    })
}

#[test]
fn loopback_gives_a_worker_its_own_loopback_and_nothing_else() {
    serially(async {
        let world = World::new().await;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host_port = json!({"op": "connect", "addr": listener.local_addr().unwrap()});
        let own = json!({"op": "loopback"});
        let free = world.host.spawn(spec("intruder")).await.unwrap();
        let looped = Sandbox {
            network: NetPolicy::Loopback,
            ..Sandbox::default()
        };
        let looped = world
            .host
            .spawn(spec("intruder").sandbox(looped))
            .await
            .unwrap();
        let none = world
            .host
            .spawn(spec("intruder").sandbox(Sandbox::default()))
            .await
            .unwrap();
        assert_eq!(looped.sandbox().unwrap().network, "loopback");
        stopped(
            "reach the host's loopback",
            &attempt(&free, &looped, host_port).await,
        );
        // Its own loopback works with `loopback`, not with `none` (where lo is down).
        let ok = |v: Value| v["ok"].clone();
        let answer = looped.execute(own.clone()).await.unwrap();
        assert_eq!(answer["ok"], json!(true), "{answer}");
        assert_eq!(ok(none.execute(own).await.unwrap()), json!(false));
        drop((listener, free, looped, none));
        world.finish().await;
    })
}

#[test]
fn user_runs_a_worker_as_another_user_without_capabilities() {
    serially(async {
        let world = World::new().await;
        // The other user must be able to pass through the test's private base directory.
        let traversable = std::fs::Permissions::from_mode(0o711);
        std::fs::set_permissions(world.base.path(), traversable).unwrap();
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let as_nobody = Sandbox {
            user: Some("nobody".to_owned()),
            ..Sandbox::default()
        };
        let files = world
            .host
            .spawn(spec("files").sandbox(as_nobody.clone()))
            .await
            .expect("a worker running as nobody starts");
        assert_eq!(files.sandbox().unwrap().uid, Some(nobody.uid.as_raw()));
        let field = |pid: u32, name: &str| -> String {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let uid = nobody.uid.as_raw().to_string();
        assert_eq!(field(files.pid(), "Uid:"), [uid.as_str(); 4].join(" "));
        for caps in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:"] {
            assert_eq!(field(files.pid(), caps), "0000000000000000", "{caps}");
        }
        // A caller's private (0600) file still reaches it, as a readable copy; its output
        // comes back.
        let input = world.base.path().join("private.txt");
        std::fs::write(&input, b"only root may read this").unwrap();
        std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o600)).unwrap();
        let file = FileRef::new(&input, 23);
        let hashed = files
            .execute(json!({"op": "sha256", "file": file}))
            .await
            .unwrap();
        assert_eq!(hashed["size"], json!(23), "{hashed}");
        let zipped = files
            .call(json!({"op": "gzip", "file": file}))
            .await
            .unwrap();
        assert_eq!(zipped.files.len(), 1, "{:?}", zipped.value);
        drop(zipped);

        // The uid protects by itself: with Landlock off, nobody still cannot read what only
        // root may (the positive control: the same read as root works).
        let dac_only = Sandbox {
            filesystem: FsPolicy::Off,
            ..as_nobody
        };
        let free = world.host.spawn(spec("intruder")).await.unwrap();
        let boxed = world
            .host
            .spawn(spec("intruder").sandbox(dac_only))
            .await
            .unwrap();
        let read = json!({"op": "read", "path": input});
        stopped("read a root-only file", &attempt(&free, &boxed, read).await);
        // A sibling's pathname socket (Landlock cannot guard those before ABI 9): the uid does.
        let sibling = world.host.spawn(spec("echo")).await.unwrap();
        let socket = std::fs::read_dir(world.host.dir())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "sock"))
            .expect("the unsandboxed sibling's socket");
        let connect = json!({"op": "unix", "path": socket});
        stopped(
            "connect to a sibling's socket",
            &attempt(&free, &boxed, connect).await,
        );
        std::fs::remove_file(&input).unwrap();
        drop((files, free, boxed, sibling));
        world.finish().await;
    })
}

#[test]
fn a_protection_the_host_cannot_give_is_an_error_unless_degraded() {
    serially(async {
        let world = World::new().await;
        // A protection that cannot be given: a user that does not exist.
        let ghost = Sandbox {
            user: Some("no-such-user-plugvisor".to_owned()),
            ..Sandbox::default()
        };
        let err = world
            .host
            .spawn(spec("echo").sandbox(ghost.clone()))
            .await
            .unwrap_err();
        assert!(format!("{err:?}").contains("no such user"), "{err:?}");
        let degraded = Sandbox {
            allow_degraded: true,
            ..ghost
        };
        let echo = world
            .host
            .spawn(spec("echo").sandbox(degraded))
            .await
            .unwrap();
        let enforced = echo.sandbox().unwrap();
        assert_eq!(enforced.uid, None);
        assert!(enforced.missing[0].contains("no such user"), "{enforced:?}");
        assert_eq!(echo.execute(json!(1)).await.unwrap(), json!(1));
        drop(echo);
        world.finish().await;
    })
}

#[test]
fn a_symlink_a_worker_returns_as_output_is_never_followed() {
    serially(async {
        let world = World::new().await;
        let boxed = world
            .host
            .spawn(spec("intruder").sandbox(Sandbox::default()))
            .await
            .unwrap();
        // The positive control: the link it made leads to the shadow file for anyone who
        // follows it as root, as the host would if it adopted the output.
        let shown = json!({"op": "symlink_out", "target": "/etc/shadow", "as_ref": false});
        let answer = boxed.execute(shown).await.unwrap();
        assert_eq!(answer["ok"], json!(true), "{answer}");
        let link = answer["path"].as_str().unwrap();
        assert!(
            !std::fs::read(link).unwrap().is_empty(),
            "following {link} reads the file"
        );
        // Returned as an output file, it is refused and nothing is read.
        let sent = json!({"op": "symlink_out", "target": "/etc/shadow"});
        let refused = boxed.call(sent).await.unwrap_err();
        let PluginError::Protocol(message) = &refused else {
            panic!("{refused:?}");
        };
        assert!(message.contains("not a regular file"), "{message}");
        drop(boxed);
        world.finish().await;
    })
}
