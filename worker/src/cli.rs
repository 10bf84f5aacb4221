//! Command-line arguments of a worker binary and their resolution into a `WorkerConfig`.

use crate::error::WorkerError;
use crate::listener::ListenAddr;
use crate::options::ServeOptions;
use clap::Parser;
use plugvisor_proto::wire::{
    DEFAULT_MAX_BODY, MAX_BODY_ENV, TOKEN_ENV, TRANSFER_DIR_ENV, WATCH_STDIN_ENV,
};
use std::ffi::OsString;
use std::path::PathBuf;

/// Environment variable with the number of threads plugin code runs on (default 2); the
/// server itself runs on one more thread of its own.
pub const WORKER_THREADS_ENV: &str = "PLUGVISOR_WORKER_THREADS";

/// Environment variable with the log filter (`tracing-subscriber` syntax, default `info`).
pub const LOG_ENV: &str = "PLUGVISOR_LOG";

/// The arguments every worker binary accepts.
#[derive(Debug, PartialEq, Parser)]
#[command(
    about = "A plugvisor worker: serves one plugin over the plugvisor worker protocol.",
    long_about = None,
    after_help = "The token comes from the PLUGVISOR_TOKEN environment variable or --token-file. \
                  Once listening, the worker prints one handshake line on stdout."
)]
pub(crate) struct Args {
    /// Listen on a Unix socket at PATH (same as --listen unix:PATH).
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    socket: Option<PathBuf>,
    /// Listen on unix:PATH or tcp://HOST:PORT (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Read the bearer token from FILE (surrounding whitespace is ignored).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The only directory file references may point into.
    #[arg(long, value_name = "DIR", env = TRANSFER_DIR_ENV)]
    transfer_dir: Option<PathBuf>,
    /// Serve TLS with this PEM certificate chain (needs --listen tcp://… and --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by the CA in this PEM file (mutual TLS).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Largest request body in bytes.
    #[arg(long, value_name = "BYTES", env = MAX_BODY_ENV, default_value_t = DEFAULT_MAX_BODY)]
    max_body: u64,
}

/// Everything `run` needs, resolved from arguments and environment.
#[derive(Debug)]
pub(crate) struct WorkerConfig {
    pub listen: ListenAddr,
    pub options: ServeOptions,
    pub watch_stdin: bool,
    pub worker_threads: usize,
}

impl Args {
    /// This process's arguments. The form a host starts a worker with (`--socket PATH`, the
    /// rest from the environment) is read directly; any other goes through clap, which
    /// also answers `--help` and reports usage errors. Building clap's command (every option,
    /// its help and checks) made this step of a worker's start 85 µs instead of 34 µs, of
    /// ≈ 2 ms in all (docs/PERFORMANCE.md, P7); the result is the same either way (tested
    /// against clap).
    pub(crate) fn from_process() -> Self {
        let env = |key: &str| std::env::var_os(key);
        Self::host_form(std::env::args_os().skip(1), env).unwrap_or_else(Self::parse)
    }

    /// `--socket PATH` and nothing else, with the transfer directory and body limit from
    /// `env` as clap reads them; `None` for anything else (clap decides then), including
    /// values clap might read otherwise: an empty one, a path starting with `-`, a limit
    /// that is not a plain number.
    fn host_form(
        mut args: impl Iterator<Item = OsString>,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Option<Self> {
        let (flag, path) = (args.next()?, args.next()?);
        let plain = |v: &OsString| !v.is_empty() && !v.as_encoded_bytes().starts_with(b"-");
        if flag != "--socket" || !plain(&path) || args.next().is_some() {
            return None;
        }
        let transfer_dir = match env(TRANSFER_DIR_ENV) {
            None => None,
            Some(dir) if plain(&dir) => Some(PathBuf::from(dir)),
            Some(_) => return None,
        };
        let max_body = match env(MAX_BODY_ENV) {
            None => DEFAULT_MAX_BODY,
            Some(limit) => {
                let digits = limit
                    .to_str()
                    .filter(|l| l.bytes().all(|b| b.is_ascii_digit()))?;
                digits.parse().ok()?
            }
        };
        Some(Self {
            socket: Some(PathBuf::from(path)),
            listen: None,
            token_file: None,
            transfer_dir,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            max_body,
        })
    }

    /// Resolves the arguments; `Ok(None)` when no listen address was given at all.
    ///
    /// Reads the token from `PLUGVISOR_TOKEN` (then removes it from the environment, so that
    /// processes the plugin spawns do not inherit it) unless `--token-file` is given.
    pub(crate) fn resolve(self) -> Result<Option<WorkerConfig>, WorkerError> {
        let listen = match (self.socket, self.listen) {
            (Some(path), _) => ListenAddr::Unix(path),
            (None, Some(addr)) => addr.parse()?,
            (None, None) => return Ok(None),
        };
        let mut options = ServeOptions::new(read_token(self.token_file)?);
        crate::uploads::store_limit().map_err(WorkerError::Setting)?;
        options.transfer_dir = self.transfer_dir;
        options.max_body = self.max_body;
        let watch_stdin = std::env::var(WATCH_STDIN_ENV).is_ok_and(|v| v.trim() == "1");
        // TLS first: a bad certificate must not leave a private directory behind.
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            if !matches!(listen, ListenAddr::Tcp(_)) {
                return Err(WorkerError::Tls(
                    "--tls-cert needs --listen tcp://HOST:PORT".into(),
                ));
            }
            let client_ca = self.tls_client_ca.as_deref();
            options.tls = Some(crate::TlsServer::from_pem_files(cert, key, client_ca)?);
        }
        if !watch_stdin && options.transfer_dir.is_none() && matches!(listen, ListenAddr::Tcp(_)) {
            // A remote worker: files streamed to it (and its outputs) need a place of its own.
            let dir = private_transfer_dir()?;
            crate::watch::remove_on_forced_exit(dir.clone());
            options.transfer_dir = Some(dir);
            options.owns_transfer_dir = true;
        }
        Ok(Some(WorkerConfig {
            listen,
            options,
            watch_stdin,
            worker_threads: worker_threads(),
        }))
    }
}

/// A new directory of mode 0700 under the temporary directory, for a remote worker's files;
/// those that workers killed before they could remove theirs left are removed first.
fn private_transfer_dir() -> Result<PathBuf, WorkerError> {
    use std::os::unix::fs::DirBuilderExt;
    remove_abandoned(&std::env::temp_dir());
    let dir = std::env::temp_dir().join(format!(
        "plugvisor-worker-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| WorkerError::io("creating the transfer directory", e))?;
    Ok(dir)
}

/// Removes `plugvisor-worker-<pid>-*` directories in `tmp` that are ours (same owner) and whose
/// worker no longer runs (no `/proc/<pid>`): what a SIGKILLed remote worker leaves behind.
pub(crate) fn remove_abandoned(tmp: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    let uid = nix::unistd::geteuid().as_raw();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("plugvisor-worker-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let ours = entry
            .metadata()
            .is_ok_and(|m| m.is_dir() && m.uid() == uid && !m.file_type().is_symlink());
        if ours && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(dir = %entry.path().display(), "removing a dead worker's transfer directory");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The token from `--token-file`, else from `PLUGVISOR_TOKEN`.
fn read_token(file: Option<PathBuf>) -> Result<String, WorkerError> {
    let env_token = std::env::var(TOKEN_ENV).ok();
    // Single-threaded here (before the runtime starts), so editing the environment is sound.
    std::env::remove_var(TOKEN_ENV);
    crate::host::take_env();
    let (token, source) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                WorkerError::MissingToken(format!("cannot read {}: {e}", path.display()))
            })?;
            (text, format!("token file {}", path.display()))
        }
        None => match env_token {
            Some(token) => (token, TOKEN_ENV.to_owned()),
            None => {
                return Err(WorkerError::MissingToken(format!(
                    "set {TOKEN_ENV} or pass --token-file FILE"
                )))
            }
        },
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(WorkerError::MissingToken(format!("{source} is empty")));
    }
    Ok(token.to_owned())
}

/// Worker threads from `PLUGVISOR_WORKER_THREADS`, default 2.
fn worker_threads() -> usize {
    match std::env::var(WORKER_THREADS_ENV) {
        Ok(value) => match value.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                tracing::warn!(%value, "ignoring bad {WORKER_THREADS_ENV}; using 2");
                2
            }
        },
        Err(_) => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::{remove_abandoned, Args};
    use clap::Parser;
    use plugvisor_proto::wire::{DEFAULT_MAX_BODY, MAX_BODY_ENV, TRANSFER_DIR_ENV};
    use std::ffi::OsString;
    use std::path::PathBuf;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// The host's form, read directly, is what clap makes of it (with none of the
    /// environment's settings, which this process does not set).
    #[test]
    fn the_hosts_form_is_read_as_clap_reads_it() {
        for key in [TRANSFER_DIR_ENV, MAX_BODY_ENV] {
            assert!(
                std::env::var_os(key).is_none(),
                "{key} is set for the tests"
            );
        }
        let argv = ["w", "--socket", "/run/p/w.sock"];
        let direct = Args::host_form(os(&argv[1..]).into_iter(), |_| None);
        assert_eq!(direct, Some(Args::try_parse_from(argv).unwrap()));
        let none = |_: &str| None;
        let env = |dir: &'static str, limit: &'static str| {
            move |key: &str| match key {
                TRANSFER_DIR_ENV => Some(OsString::from(dir)),
                MAX_BODY_ENV => Some(OsString::from(limit)),
                _ => None,
            }
        };
        let read = Args::host_form(os(&argv[1..]).into_iter(), env("/t/d", "1024")).unwrap();
        assert_eq!(read.transfer_dir, Some(PathBuf::from("/t/d")));
        assert_eq!(
            (read.max_body, read.socket),
            (1024, Some("/run/p/w.sock".into()))
        );
        // Everything else is left to clap: other flags, other forms, odd values.
        for other in [
            &["--socket"][..],
            &["--socket=/s"],
            &["--socket", "/s", "--max-body", "9"],
            &["--socket", "-s"],
            &["--socket", ""],
            &["--listen", "tcp://127.0.0.1:0"],
            &["--help"],
            &[],
        ] {
            assert_eq!(
                Args::host_form(os(other).into_iter(), none),
                None,
                "{other:?}"
            );
        }
        for (dir, limit) in [
            ("", "1"),
            ("-x", "1"),
            ("/d", ""),
            ("/d", "+1"),
            ("/d", "1k"),
        ] {
            let odd = Args::host_form(os(&argv[1..]).into_iter(), env(dir, limit));
            assert_eq!(odd, None, "{dir:?} {limit:?}");
        }
        assert_eq!(
            DEFAULT_MAX_BODY,
            Args::try_parse_from(argv).unwrap().max_body
        );
    }

    #[test]
    fn only_a_dead_workers_own_directories_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dead = (1_000_000..4_000_000u32)
            .rev()
            .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .unwrap();
        let path = |name: String| tmp.path().join(name);
        let gone = path(format!("plugvisor-worker-{dead}-a"));
        let alive = path(format!("plugvisor-worker-{}-b", std::process::id()));
        let odd = path("plugvisor-worker-notapid-c".to_owned());
        let target = path("elsewhere".to_owned());
        for dir in [&gone, &alive, &odd, &target] {
            std::fs::create_dir(dir).unwrap();
        }
        std::fs::write(gone.join("left.bin"), b"x").unwrap();
        let link = path(format!("plugvisor-worker-{dead}-link"));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        remove_abandoned(tmp.path());
        assert!(!gone.exists(), "a dead worker's directory is removed");
        // The controls: a live worker's, a name that is no worker's, a link (never followed).
        assert!(alive.exists() && odd.exists() && target.exists());
        assert!(link.symlink_metadata().is_ok());
    }
}
