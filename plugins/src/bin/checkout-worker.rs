//! The `checkout` worker: prices orders through the `pricing` service, calling the host back
//! (see `plugvisor_plugins::shop`).

fn main() {
    plugvisor_worker::run(plugvisor_plugins::shop::Checkout)
}
