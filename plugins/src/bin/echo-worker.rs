//! `echo-worker`: the echo plugin as a worker process.

fn main() {
    plugvisor_worker::run_routed(plugvisor_plugins::Echo::default())
}
