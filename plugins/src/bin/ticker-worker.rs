//! `ticker-worker`: the ticker plugin as a worker process.

fn main() {
    plugvisor_worker::run_routed(plugvisor_plugins::Ticker)
}
