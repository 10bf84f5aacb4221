//! The `guard` worker: a middleware with its own route (see `plugvisor_plugins::guard`).

fn main() {
    plugvisor_worker::Worker::new(plugvisor_plugins::guard::Guard::default())
        .routes()
        .middleware()
        .run()
}
