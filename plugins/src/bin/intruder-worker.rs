//! The `intruder` worker: attempts sandbox escapes on demand (see `plugvisor_plugins::intruder`).

fn main() {
    plugvisor_worker::run(plugvisor_plugins::intruder::Intruder)
}
