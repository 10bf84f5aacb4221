//! Sandboxed workers: they still serve calls, streams and files, while what a hostile plugin
//! would try (reading host files, the network, ptrace, the host's environment) fails. Every
//! attempt runs twice: unsandboxed (the positive control: it works) and sandboxed.

use plugvisor_host::{Plugin, RemotePlugin, Sandbox};
use plugvisor_proto::{json, FileRef, Value};
use plugvisor_tests::{serially, spec, World};

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
        drop((listener, udp, abstract_listener, free, boxed, sibling));
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
        // Even its own /proc is out of reach.
        let own = boxed.execute(json!({"op": "status"})).await.unwrap();
        assert_eq!(own["ok"], json!(false), "{own}");
        std::fs::remove_file(&callers).unwrap();
        drop((free, boxed));
        world.finish().await;
    })
}
