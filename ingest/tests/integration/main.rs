//! End-to-end tests of the `meterflow` binary against real MQTT clients: our
//! simulator (rumqttc), Debian's mosquitto clients, and hand-made bad input. Each test
//! runs its own meterflow process on free loopback ports with its own data directory.

mod bad_input;
mod crash;
mod e2e;
mod interop;
mod utils;
