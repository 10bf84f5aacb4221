//! The long-lived spawner thread every worker (and the keeper) is forked from.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process, and
//! tokio retires idle blocking threads. So every worker is forked from one thread that lives as
//! long as the host process: if the host dies, the kernel SIGKILLs the workers.

use std::io;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// Work for the spawner thread.
type Job = Box<dyn FnOnce() + Send>;

static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();

/// Runs `job` on the spawner thread (whose death is the parent-death signal of what it forks).
pub(crate) fn on_spawner_thread(job: impl FnOnce() + Send + 'static) -> io::Result<()> {
    sender()?
        .send(Box::new(job))
        .map_err(|_| io::Error::other("the spawner thread is gone"))
}

fn sender() -> io::Result<mpsc::Sender<Job>> {
    let cell = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("plugvisor-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the spawner thread");
        }
        Mutex::new(tx)
    });
    cell.lock()
        .map(|tx| tx.clone())
        .map_err(|_| io::Error::other("spawner lock poisoned"))
}
