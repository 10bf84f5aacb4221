//! `echo-worker`: the echo plugin as a worker process.

fn main() {
    plugvisor_worker::Worker::new(plugvisor_plugins::Echo::default())
        .routes()
        .methods()
        .events()
        .run()
}
