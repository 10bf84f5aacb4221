//! A Python SDK worker as a remote worker (issue 13, docs/PROTOCOL.md §14): started by hand with
//! TLS and mutual TLS, no host pipe, attached to by the host, which sends it a file and takes
//! an output file back through real calls; stopped with SIGTERM, it leaves no process and no
//! private directory.

use plugvisor_host::{Attach, Plugin, SupervisorConfig, TlsClient, WorkerSpec, WorkerState};
use plugvisor_tests::remote::{
    handshake, pattern_file, private_dirs_of, remove_private_dirs, tls_worker_args, Certs,
};
use plugvisor_tests::{serially, World};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The plugin: hashes its input file in pieces, and writes an output file of it reversed.
const PLUGIN: &str = r#"
import hashlib
import plugvisor


class Files(plugvisor.Plugin):
    name = "pyfiles"
    version = "0.1.0"

    def execute(self, input):
        hasher, size = hashlib.sha256(), 0
        with input["file"].open() as f:
            for block in iter(lambda: f.read(1 << 16), b""):
                hasher.update(block)
                size += len(block)
        result = {"sha256": hasher.hexdigest(), "size": size}
        if input.get("op") == "reverse":
            out = plugvisor.output_file("reversed.bin")
            out.write(input["file"].read_bytes()[::-1])
            result["file"] = out
        return result


if __name__ == "__main__":
    plugvisor.run(Files())
"#;

/// Put before [`PLUGIN`] when `PYFILES_CORRUPT` is set: the worker's store adds a byte to every
/// upload after receiving it, as corruption on the way would (and names the digest of that).
const CORRUPTING: &str = r#"
import hashlib
import os
from plugvisor import _uploads

if os.environ.get("PYFILES_CORRUPT"):
    _receive = _uploads._receive

    async def corrupting(server, conn, part):
        await _receive(server, conn, part)
        with open(part, "ab") as f:
            f.write(b"!")
        with open(part, "rb") as f:
            data = f.read()
        return hashlib.sha256(data).hexdigest(), len(data)

    _uploads._receive = corrupting
"#;

/// A Python worker the test started; SIGTERMed (then SIGKILLed) and reaped when dropped.
struct PyWorker {
    child: Child,
    pid: u32,
    port: u16,
}

impl PyWorker {
    /// `python3 script` serving TLS with `certs` on a free loopback port, requiring client
    /// certificates of the same CA; waits for its handshake line.
    fn start(script: &Path, certs: &Certs) -> Self {
        Self::start_with(script, certs, &[])
    }

    /// As [`PyWorker::start`], with `env` set for the worker.
    fn start_with(script: &Path, certs: &Certs, env: &[(&str, &str)]) -> Self {
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python/src");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .env("PYTHONPATH", sdk)
            .envs(env.iter().copied());
        tls_worker_args(&mut cmd, certs, "127.0.0.1:0");
        cmd.arg("--tls-client-ca").arg(certs.file("ca.crt"));
        let mut child = cmd.spawn().expect("start python3");
        let line = handshake(&mut child);
        assert!(line.starts_with("plugvisor 1 tcp 127.0.0.1:"), "{line:?}");
        let port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
        Self {
            pid: child.id(),
            child,
            port,
        }
    }

    /// SIGTERM, and its exit status within 5 s.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit within 5 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PyWorker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        remove_private_dirs(self.pid);
    }
}

/// A scratch directory with certificates and `text` as the worker's script in it.
fn scripted(text: &str) -> (tempfile::TempDir, Certs, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path(), &[]);
    let script = dir.path().join("pyfiles.py");
    std::fs::write(&script, text).unwrap();
    (dir, certs, script)
}

/// How the host attaches to `worker`: its CA, its token, and (`client`) a client certificate.
fn attach(worker: &PyWorker, certs: &Certs, client: bool) -> WorkerSpec {
    let pair = (certs.file("client.crt"), certs.file("client.key"));
    let client = client.then_some((pair.0.as_path(), pair.1.as_path()));
    let tls = TlsClient::from_pem_files(&certs.file("ca.crt"), client, "localhost").unwrap();
    let url = format!("https://localhost:{}", worker.port);
    let attach = Attach::parse(&url, certs.token()).unwrap().with_tls(tls);
    WorkerSpec::attach(attach).name("pyfiles")
}

/// The worker's private transfer directory (exactly one).
fn private_dir(pid: u32) -> PathBuf {
    let dirs = private_dirs_of(pid);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.into_iter().next().unwrap()
}

#[test]
fn files_travel_both_ways_to_a_python_worker_attached_over_mutual_tls() {
    serially(async {
        let (dir, certs, script) = scripted(PLUGIN);
        let mut worker = PyWorker::start(&script, &certs);
        let its_dir = private_dir(worker.pid);

        let mut world = World::new().await;
        let sup = world
            .supervise_spec(attach(&worker, &certs, true), SupervisorConfig::default())
            .await;
        assert_eq!(sup.state(), WorkerState::Ready);

        // In: the host streams the file to the worker, which hashes its own copy.
        let input = dir.path().join("input.bin");
        let sha = pattern_file(&input, 4);
        let size = std::fs::metadata(&input).unwrap().len();
        let file = json!({"$file": {"path": input, "size": size}});
        let hashed = sup.execute(json!({"file": file})).await.unwrap();
        assert_eq!(hashed, json!({"sha256": sha, "size": size}));
        let cas = its_dir.join("cas").join(&sha);
        assert_eq!(std::fs::metadata(&cas).unwrap().len(), size);
        // Content the worker holds already is kept, not replaced: the same inode.
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cas).unwrap());

        // Out: the reversed copy comes back as a file of the host's; the worker's is removed.
        let out = sup
            .call_with(json!({"op": "reverse", "file": file}), Default::default())
            .await
            .unwrap();
        assert_eq!(out.value["sha256"], sha, "the same content");
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cas).unwrap()),
            inode,
            "content the worker holds is reused"
        );
        let local = out
            .files
            .first()
            .and_then(|f| f.path())
            .expect("an output file")
            .to_path_buf();
        assert!(local.starts_with(world.host.dir()), "{}", local.display());
        let mut back = std::fs::read(&local).unwrap();
        back.reverse();
        assert_eq!(back, std::fs::read(&input).unwrap());
        let outputs_left: Vec<_> = std::fs::read_dir(&its_dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("out-"))
            .collect();
        assert!(outputs_left.is_empty(), "{outputs_left:?}");
        drop(out);

        drop(sup);
        world.finish().await;
        assert!(worker.terminate().success(), "it exits 0 on SIGTERM");
        assert!(
            private_dirs_of(worker.pid).is_empty(),
            "the worker removes its private directory when it stops"
        );
        let gone = !Path::new(&format!("/proc/{}", worker.pid)).exists();
        assert!(gone, "the worker process is reaped");
    });
}

#[test]
fn a_python_worker_under_mutual_tls_refuses_a_host_without_a_client_certificate() {
    serially(async {
        let (dir, certs, script) = scripted(PLUGIN);
        let mut worker = PyWorker::start(&script, &certs);
        let world = World::new().await;

        // The positive control: with the client certificate the host attaches and calls.
        let good = world.host.spawn(attach(&worker, &certs, true)).await;
        let good = good.expect("attach with a client certificate");
        let input = dir.path().join("small.bin");
        std::fs::write(&input, b"abc").unwrap();
        let file = json!({"$file": {"path": input, "size": 3}});
        let answer = good.execute(json!({"file": file})).await.unwrap();
        assert_eq!(answer["size"], 3, "{answer}");

        // Without one, the worker refuses the handshake: no attach. (OpenSSL under asyncio
        // drops the connection without the alert rustls would send, so the host reads an end
        // of the TLS stream, or a reset, rather than "certificate required".)
        let anonymous = world.host.spawn(attach(&worker, &certs, false)).await;
        let err = anonymous.expect_err("mutual TLS needs a client certificate");
        let chain = plugvisor_host::error_chain(&err).to_lowercase();
        assert!(
            chain.contains("close_notify")
                || chain.contains("certificate")
                || chain.contains("reset by peer"),
            "refused at the TLS layer: {chain}"
        );

        drop(good);
        world.finish().await;
        assert!(worker.terminate().success(), "it exits 0 on SIGTERM");
        assert!(private_dirs_of(worker.pid).is_empty(), "left behind");
    });
}

#[test]
fn content_the_worker_stores_differently_from_what_was_sent_fails_the_call_and_is_removed() {
    serially(async {
        let (dir, certs, script) = scripted(&format!("{CORRUPTING}\n{PLUGIN}"));
        let input = dir.path().join("input.bin");
        let sha = pattern_file(&input, 1);
        let file = json!({"$file": {"path": input, "size": 1 << 20}});
        let world = World::new().await;

        // The positive control: the same script, not corrupting, takes the file.
        let mut honest = PyWorker::start(&script, &certs);
        let remote = world
            .host
            .spawn(attach(&honest, &certs, true))
            .await
            .unwrap();
        let answer = remote.execute(json!({"file": file})).await.unwrap();
        assert_eq!(answer["sha256"], sha, "{answer}");
        drop(remote);
        assert!(honest.terminate().success());

        // Corrupting: the host's digest of what it read and the worker's of what it stored
        // differ, so the call fails before the plugin runs, naming both, and the worker's
        // copy is removed.
        let mut lying = PyWorker::start_with(&script, &certs, &[("PYFILES_CORRUPT", "1")]);
        let its_dir = private_dir(lying.pid);
        let remote = world
            .host
            .spawn(attach(&lying, &certs, true))
            .await
            .unwrap();
        let err = remote.execute(json!({"file": file})).await.unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, plugvisor_host::PluginError::FileAccess(_)),
            "{err:?}"
        );
        assert!(message.contains("checksum mismatch"), "{message}");
        assert!(message.contains(&sha), "names the host's digest: {message}");
        let held: Vec<_> = std::fs::read_dir(its_dir.join("cas"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert!(held.is_empty(), "the corrupted copy is removed: {held:?}");
        assert!(remote.health().await.is_ok(), "the link stays up");

        drop(remote);
        world.finish().await;
        assert!(lying.terminate().success());
        assert!(private_dirs_of(lying.pid).is_empty(), "left behind");
    });
}
