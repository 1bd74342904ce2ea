//! End-to-end tests of the `meterflow` binary against real MQTT clients: our
//! simulator (rumqttc), Debian's mosquitto clients, and hand-made bad input. Each test
//! runs its own meterflow process on free loopback ports with its own data directory.

mod backends;
mod bad_input;
mod crash;
mod csv;
#[cfg(feature = "kafka")]
mod distributed;
#[cfg(feature = "kafka")]
mod distributed_events;
#[cfg(feature = "kafka")]
mod distributed_orders;
mod e2e;
mod endpoint;
mod exceptions;
mod fleet;
mod grafana;
mod http_limits;
mod interop;
mod late_aggregates;
mod late_status;
mod logs;
mod meter_list;
mod openapi;
mod processing;
mod restart_aggregates;
mod retention;
// The storage crate's helpers for real servers (reachability, unique names, the TCP
// proxy that simulates outages), shared rather than copied.
#[allow(dead_code)]
#[path = "../../../storage/tests/integration/servers.rs"]
mod server_support;
mod utils;
mod water_balance;
mod withdrawn_rows;
