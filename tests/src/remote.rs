//! Remote workers for tests: a private CA and certificates made by `plugvisor tls-certs`, and
//! standalone workers started the way Kubernetes or systemd would start them (`--listen
//! tcp://…` with TLS, no host pipe), owned and killed by the test.

use crate::bin;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The files `plugvisor tls-certs` writes.
#[derive(Debug, Clone)]
pub struct Certs {
    /// The directory holding them.
    pub dir: PathBuf,
}

impl Certs {
    /// Makes a fresh CA, worker certificate (localhost, 127.0.0.1 and `names`), client
    /// certificate and token in `dir`.
    pub fn make(dir: &Path, names: &[&str]) -> Self {
        let mut cmd = Command::new(bin("plugvisor"));
        cmd.arg("tls-certs").arg("--out").arg(dir);
        for name in ["localhost", "127.0.0.1"].iter().chain(names) {
            cmd.args(["--name", name]);
        }
        let out = cmd.output().expect("run plugvisor tls-certs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The path of file `name` (`ca.crt`, `tls.crt`, `tls.key`, `client.crt`, `client.key`,
    /// `token`).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.file("token"))
            .expect("token")
            .trim()
            .to_owned()
    }
}

/// Adds what a standalone TLS worker on `addr` needs to `cmd` (whose program, or whose last
/// argument, is the worker): `--listen tcp://ADDR`, the certificate, key and token files, no
/// host pipe, quiet logs, stdout piped for the handshake line.
pub fn tls_worker_args(cmd: &mut Command, certs: &Certs, addr: &str) {
    cmd.arg("--listen")
        .arg(format!("tcp://{addr}"))
        .arg("--tls-cert")
        .arg(certs.file("tls.crt"))
        .arg("--tls-key")
        .arg(certs.file("tls.key"))
        .arg("--token-file")
        .arg(certs.file("token"))
        .env_remove("PLUGVISOR_WATCH_STDIN")
        .env("PLUGVISOR_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
}

/// The handshake line a started worker printed on its piped stdout.
pub fn handshake(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("handshake line");
    line
}

/// A worker started by the test, listening on TCP with TLS; killed when dropped.
#[derive(Debug)]
pub struct RemoteWorker {
    child: Child,
    /// Its pid.
    pub pid: u32,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

impl RemoteWorker {
    /// Starts the bundled `<worker>-worker` on `addr` (`127.0.0.1:0` picks a port) serving
    /// TLS with `certs`, plus `extra` arguments; waits for its handshake line.
    pub fn start(worker: &str, certs: &Certs, addr: &str, extra: &[&str]) -> Self {
        let mut cmd = Command::new(bin(&format!("{worker}-worker")));
        tls_worker_args(&mut cmd, certs, addr);
        cmd.args(extra);
        let mut child = cmd.spawn().expect("start a remote worker");
        let line = handshake(&mut child);
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in handshake {line:?}"));
        Self {
            pid: child.id(),
            child,
            port,
        }
    }

    /// `https://localhost:<port>`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// SIGKILLs it (a crash, as far as anyone can tell) and reaps it, then removes the private
    /// transfer directory it could not remove itself, as its orchestrator would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_private_dirs(self.pid);
    }

    /// SIGTERMs it (a clean stop: drain, clean up, exit) and waits for its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().expect("wait for the worker")
    }

    /// True while the process runs (not reaped, not a zombie).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for RemoteWorker {
    /// A clean stop when it is still running (SIGTERM; SIGKILL if that takes over 5 s).
    fn drop(&mut self) {
        if self.is_running() {
            let pid = nix::unistd::Pid::from_raw(self.pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while self.is_running() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        self.kill();
    }
}

/// Removes `$TMPDIR/plugvisor-worker-<pid>-*` (a remote worker's private transfer directory).
pub fn remove_private_dirs(pid: u32) {
    for dir in private_dirs_of(pid) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The private transfer directories the remote worker `pid` left (for leak checks).
pub fn private_dirs_of(pid: u32) -> Vec<std::path::PathBuf> {
    let prefix = format!("plugvisor-worker-{pid}-");
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// A file of `mib` MiB of a repeating pattern at `path`, and its SHA-256 (hex).
pub fn pattern_file(path: &Path, mib: usize) -> String {
    use sha2::{Digest, Sha256};
    let block: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::create(path).expect("create the pattern file");
    for _ in 0..mib {
        std::io::Write::write_all(&mut file, &block).expect("write the pattern file");
        hasher.update(&block);
    }
    format!("{:x}", hasher.finalize())
}
