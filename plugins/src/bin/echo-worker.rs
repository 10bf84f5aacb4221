//! `echo-worker`: the echo plugin as a worker process.

fn main() {
    plugvisor_worker::run(plugvisor_plugins::Echo::default())
}
