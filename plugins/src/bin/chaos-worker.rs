//! The `chaos` worker: misbehaves on demand (see `plugvisor_plugins::chaos`).

fn main() {
    plugvisor_plugins::chaos::startup_fault();
    plugvisor_worker::run_routed(plugvisor_plugins::chaos::Chaos::default())
}
