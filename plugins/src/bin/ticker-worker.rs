//! `ticker-worker`: the ticker plugin as a worker process.

fn main() {
    plugvisor_worker::run(plugvisor_plugins::Ticker)
}
