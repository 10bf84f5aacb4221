//! The `pricing` worker: provides the `pricing` service (see `plugvisor_plugins::shop`).

fn main() {
    plugvisor_worker::run(plugvisor_plugins::shop::Pricing::default())
}
