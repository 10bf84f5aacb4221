//! The `chaos` worker: misbehaves on demand (see `plugvisor_plugins::chaos`), in calls, in its
//! route, in middleware hooks, its own health check and as an event subscriber.

fn main() {
    plugvisor_plugins::chaos::startup_fault();
    plugvisor_worker::Worker::new(plugvisor_plugins::chaos::Chaos::default())
        .routes()
        .middleware()
        .methods()
        .health_check()
        .events()
        .run()
}
