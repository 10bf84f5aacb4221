//! `files-worker`: the files plugin as a worker process.

fn main() {
    plugvisor_worker::run(plugvisor_plugins::Files)
}
