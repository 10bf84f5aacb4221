//! `echo-panel-worker`: the echo-panel UI plugin as a worker process (its panel is static
//! assets the host serves; see `plugvisor_plugins::echo_panel`).

fn main() {
    plugvisor_worker::run(plugvisor_plugins::echo_panel::EchoPanel)
}
