//! `bench-identity-worker`: the worker of the bench's identity plugin (`bench/src/identity.rs`),
//! for the call scenarios (P1, P2, P23, P24).

#[path = "../identity.rs"]
mod identity;

fn main() {
    plugvisor_worker::run(identity::Identity)
}
