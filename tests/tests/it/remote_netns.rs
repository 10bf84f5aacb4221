//! A remote worker on another "machine": its own network namespace (reached over a veth pair
//! with addresses this test makes) and its own mount namespace with private `/tmp` and
//! `/dev/shm`, so host and worker share no transfer area and talk only over TCP + TLS. The
//! host attaches by IP with the certificate checked against a DNS name (`tls_server_name`),
//! calls it, loses it when the link goes down (calls fail at once) and re-admits it when the
//! link comes back. Needs root and iproute2; CI sets `PLUGVISOR_NETNS_TEST=require`.

use crate::api::{info_until, load_plugins, Api};
use plugvisor_manager::api::ApiOptions;
use plugvisor_tests::remote::{handshake, tls_worker_args, Certs};
use plugvisor_tests::{bin, serially};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A network namespace with a veth pair to it, removed when dropped.
struct Netns {
    name: String,
    host_if: String,
    subnet: u8,
}

impl Netns {
    fn make() -> Self {
        let id = std::process::id() % 100_000;
        let net = Self {
            name: format!("pvtest{id}"),
            host_if: format!("pvh{id}"),
            subnet: (id % 200) as u8 + 20,
        };
        let peer = format!("pvw{id}");
        let (host_ip, worker_ip) = (net.ip(1), net.ip(2));
        net.ip_cmd(&["netns", "add", &net.name]);
        let link = [
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
        ];
        net.ip_cmd(&[&link[..], &[net.name.as_str()]].concat());
        net.ip_cmd(&["addr", "add", &format!("{host_ip}/30"), "dev", &net.host_if]);
        net.ip_cmd(&["link", "set", &net.host_if, "up"]);
        let inside = ["-n", net.name.as_str()];
        net.ip_cmd(
            &[
                &inside[..],
                &["addr", "add", &format!("{worker_ip}/30"), "dev", &peer],
            ]
            .concat(),
        );
        net.ip_cmd(&[&inside[..], &["link", "set", &peer, "up"]].concat());
        net.ip_cmd(&[&inside[..], &["link", "set", "lo", "up"]].concat());
        net
    }

    fn ip(&self, host: u8) -> String {
        format!("10.213.{}.{host}", self.subnet)
    }

    fn ip_cmd(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Takes the host's end of the link down or up (a network partition and its end).
    fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        self.ip_cmd(&["link", "set", &self.host_if, state]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A process of the test's own, stopped (SIGTERM, SIGKILL after 5 s) and reaped when dropped
/// (a failed assertion must not leave it running); a worker's private directory goes with it.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..500 {
                if !matches!(self.0.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        plugvisor_tests::remote::remove_private_dirs(self.0.id());
    }
}

/// The chaos worker inside `net`, in a mount namespace of its own with private /tmp and
/// /dev/shm, listening with TLS on the namespace's address.
///
/// The build's `target` directory (the worker binary, the certificates) stays visible: when
/// the checkout itself lives under /tmp or /dev/shm, it is opened before the tmpfs covers it
/// and bound back at its path afterwards (`--no-canonicalize`, so `mount` binds the opened
/// directory, not whatever its old path names now).
fn start_worker(net: &Netns, certs: &Certs) -> (Owned, u32) {
    let script = "exec 3<\"$KEEP\" && mount -t tmpfs tmpfs /tmp && mount -t tmpfs tmpfs /dev/shm \
         && case \"$KEEP\" in /tmp/*|/dev/shm/*) mkdir -p \"$KEEP\" \
         && mount --no-canonicalize --bind /proc/self/fd/3 \"$KEEP\";; esac \
         && exec 3<&- && exec \"$0\" \"$@\"";
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &net.name,
        "unshare",
        "--mount",
        "--propagation",
        "private",
    ])
    .args(["sh", "-c", script])
    .arg(bin("chaos-worker"))
    .env("KEEP", target_dir());
    tls_worker_args(&mut cmd, certs, &format!("{}:7443", net.ip(2)));
    let mut child = cmd.spawn().expect("start the worker in its namespace");
    let line = handshake(&mut child);
    assert!(line.starts_with("plugvisor 1 tcp 10.213."), "{line:?}");
    let pid = child.id();
    (Owned(child), pid)
}

/// The build's `target` directory, which `start_worker` keeps visible to the worker.
fn target_dir() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is target/tmp")
}

/// The first component under /tmp of the `target` directory, when the checkout lives there
/// (then the worker's private /tmp holds the way back to it).
fn kept_under_tmp() -> Option<&'static std::ffi::OsStr> {
    target_dir()
        .strip_prefix("/tmp")
        .ok()
        .and_then(|rest| rest.iter().next())
}

fn runnable() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && ip {
        return true;
    }
    let why = format!("needs root and iproute2 (root: {root}, ip: {ip})");
    assert!(
        std::env::var("PLUGVISOR_NETNS_TEST").as_deref() != Ok("require"),
        "PLUGVISOR_NETNS_TEST=require but the test cannot run: {why}"
    );
    eprintln!("skipping the network-namespace test: {why}");
    false
}

fn replica_state(info: &Value) -> String {
    info["workers"][0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_worker_in_its_own_network_and_mount_namespaces_is_attached_lost_and_readmitted() {
    if !runnable() {
        return;
    }
    serially(async {
        // Certificates live outside /tmp: the worker's /tmp is a tmpfs of its own.
        let keep = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let certs = Certs::make(keep.path(), &["worker.test"]);
        let net = Netns::make();
        let (mut worker, pid) = start_worker(&net, &certs);

        // It shares neither our network namespace nor our /tmp.
        let ns = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/net")).unwrap();
        assert_ne!(
            ns(pid),
            ns(std::process::id()),
            "the worker has a network of its own"
        );
        // Its /tmp is a fresh tmpfs holding only its own transfer directory, which ours lacks.
        let its_tmp: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root/tmp"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        let own = format!("plugvisor-worker-{pid}-");
        // Beside it only the way to a checkout under /tmp, bound back by `start_worker`.
        let (transfer, others): (Vec<_>, Vec<_>) = its_tmp
            .iter()
            .map(|n| n.as_os_str())
            .partition(|n| n.to_string_lossy().starts_with(&own));
        let kept: Vec<_> = kept_under_tmp().into_iter().collect();
        assert!(transfer.len() == 1 && others == kept, "{its_tmp:?}");
        assert!(!std::path::Path::new("/tmp").join(transfer[0]).exists());
        assert!(
            keep.path().join("token").exists(),
            "ours still holds our files"
        );

        let manifest = format!(
            "name = \"far\"\nversion = \"0.1.0\"\nattach = \"https://{}:7443\"\n\
             tls_server_name = \"worker.test\"\ntoken_file = \"{}\"\ntls_ca = \"{}\"\n",
            net.ip(2),
            certs.file("token").display(),
            certs.file("ca.crt").display()
        );
        let api = Api::start(&[("far".to_owned(), manifest)], ApiOptions::default()).await;
        let c = &api.client;
        load_plugins(c, &["far"]).await;
        let body = json!({"plugin_id": "far", "input": {"fault": "sleep", "ms": 1}});
        let call = || c.post("/api/plugins/execute", &body);
        let slow = json!({"plugin_id": "far", "input": {"fault": "sleep", "ms": 3000}});
        let answer = call().await;
        assert_eq!(answer.json()["output"]["pid"], pid, "{}", answer.text());

        // A partition under a call: no answer and no reset ever come, so the host's health
        // probes find it; the call in flight fails then (it does not hang), and the replica
        // is ejected: later calls fail at once.
        let in_flight = c.post("/api/plugins/execute", &slow);
        let cut = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            net.link(false);
        };
        let (lost, ()) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(15), in_flight),
            cut
        );
        let lost = lost.expect("the call in flight fails once the link is declared lost");
        assert_eq!(lost.error_kind(), "worker_crashed", "{}", lost.text());
        assert!(lost.text().contains("disconnected"), "{}", lost.text());
        let away = |i: &Value| !matches!(replica_state(i).as_str(), "ready" | "unhealthy");
        info_until(c, "far", away).await;
        let during = tokio::time::timeout(Duration::from_secs(5), call()).await;
        let during = during.expect("no waiting while the worker is unreachable");
        assert_eq!(during.error_kind(), "unavailable", "{}", during.text());

        // The link is back: re-admitted, and the same worker answers.
        net.link(true);
        info_until(c, "far", |i| replica_state(i) == "ready").await;
        let answer = call().await;
        assert_eq!(answer.json()["output"]["pid"], pid, "{}", answer.text());

        api.finish().await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = worker.0.wait().unwrap();
        assert!(
            status.success(),
            "it drained and exited 0 on SIGTERM: {status}"
        );
        drop(net);
        let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let left = String::from_utf8_lossy(&left.stdout).into_owned();
        assert!(
            !left.contains(&format!("pvtest{}", std::process::id() % 100_000)),
            "{left}"
        );
    });
}

/// A network namespace with only its loopback, and its own `/etc/hosts` (what `ip netns exec`
/// binds over `/etc/hosts` for the processes it runs there); all removed when dropped.
struct DnsNetns {
    name: String,
    etc: std::path::PathBuf,
}

impl DnsNetns {
    fn make(hosts: &str) -> Self {
        let name = format!("pvdns{}", std::process::id() % 100_000);
        let etc = std::path::Path::new("/etc/netns").join(&name);
        std::fs::create_dir_all(&etc).unwrap();
        // Without `multi on`, glibc answers only the first /etc/hosts line of a name.
        std::fs::write(etc.join("host.conf"), "multi on\n").unwrap();
        let net = Self { name, etc };
        net.hosts(hosts);
        let ok = |args: &[&str]| {
            assert!(
                Command::new("ip").args(args).status().unwrap().success(),
                "ip {args:?}"
            );
        };
        ok(&["netns", "add", &net.name]);
        ok(&["-n", &net.name, "link", "set", "lo", "up"]);
        net
    }

    /// Rewrites the namespace's /etc/hosts in place (the bind mount shows the new text).
    fn hosts(&self, names: &str) {
        std::fs::write(
            self.etc.join("hosts"),
            format!("127.0.0.1 localhost\n{names}"),
        )
        .unwrap();
    }

    fn exec(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]);
        cmd
    }
}

impl Drop for DnsNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// A TLS chaos worker on `addr` inside `net`.
fn dns_worker(net: &DnsNetns, certs: &Certs, addr: &str) -> (Owned, u32) {
    let mut cmd = net.exec();
    cmd.arg(bin("chaos-worker"));
    tls_worker_args(&mut cmd, certs, &format!("{addr}:7443"));
    let mut child = cmd.spawn().expect("start a worker in the namespace");
    let line = handshake(&mut child);
    assert!(line.contains(addr), "{line:?}");
    let pid = child.id();
    (Owned(child), pid)
}

/// The pids of the plugin's replicas as the server inside `net` reports them.
fn replica_pids(net: &DnsNetns, api: &str) -> Vec<u64> {
    let out = net
        .exec()
        .args(["curl", "-s", &format!("{api}/api/plugins/far")])
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut pids: Vec<u64> = info["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["state"] == "ready")
        .filter_map(|w| w["pid"].as_u64())
        .collect();
    pids.sort_unstable();
    pids
}

fn wait_for_pids(net: &DnsNetns, api: &str, want: &[u32]) {
    let mut want: Vec<u64> = want.iter().map(|p| u64::from(*p)).collect();
    want.sort_unstable();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let now = replica_pids(net, api);
        if now == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replicas {now:?}, wanted {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_name_that_comes_to_resolve_to_more_or_fewer_addresses_adds_and_removes_replicas() {
    if !runnable() {
        return;
    }
    let keep = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let certs = Certs::make(keep.path(), &["workers.test"]);
    let net = DnsNetns::make("127.0.0.2 workers.test\n");
    let (a, pid_a) = dns_worker(&net, &certs, "127.0.0.2");
    let (b, pid_b) = dns_worker(&net, &certs, "127.0.0.3");
    let plugins = keep.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let manifest = format!(
        "name = \"far\"\nversion = \"0.1.0\"\nattach = \"https://workers.test:7443\"\n\
         resolve_every = \"200ms\"\ntoken_file = \"{}\"\ntls_ca = \"{}\"\n",
        certs.file("token").display(),
        certs.file("ca.crt").display()
    );
    std::fs::write(plugins.join("far.toml"), manifest).unwrap();
    let mut serve = net
        .exec()
        .arg(bin("plugvisor"))
        .args(["serve", "--listen", "127.0.0.1:0", "--plugins"])
        .arg(&plugins)
        .env("PLUGVISOR_RUNTIME_DIR", keep.path().join("run"))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    let mut stderr = BufReader::new(serve.stderr.take().unwrap());
    while !banner.contains("serving") {
        banner.clear();
        assert!(
            stderr.read_line(&mut banner).unwrap() > 0,
            "serve ended early"
        );
    }
    let serve = Owned(serve);
    let api = banner
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("the API address")
        .to_owned();

    // One address, one replica.
    wait_for_pids(&net, &api, &[pid_a]);
    // The name gains an address: a replica joins.
    net.hosts("127.0.0.2 workers.test\n127.0.0.3 workers.test\n");
    wait_for_pids(&net, &api, &[pid_a, pid_b]);
    // It loses one: that replica leaves, the other stays.
    net.hosts("127.0.0.3 workers.test\n");
    wait_for_pids(&net, &api, &[pid_b]);

    let pid = nix::unistd::Pid::from_raw(serve.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut serve = serve;
    assert!(serve.0.wait().unwrap().success(), "serve stops cleanly");
    drop((a, b));
    for pid in [pid_a, pid_b] {
        assert!(
            plugvisor_tests::remote::private_dirs_of(pid).is_empty(),
            "left behind"
        );
    }
    drop(net);
    assert!(!std::path::Path::new("/etc/netns")
        .join(format!("pvdns{}", std::process::id() % 100_000))
        .exists());
}
