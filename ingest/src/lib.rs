//! The meterflow service: the meter endpoint (MQTT), sharded batching workers, the
//! sink stage that makes batches durable and then answers the meters, and the HTTP
//! API. See `ARCHITECTURE.md` for how the parts hand data to each other.

pub mod backends;
pub mod cache_writer;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod dead_letter_limit;
pub mod dormant;
pub mod endpoint;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod notifier;
pub mod restart;
pub mod rollup_seed;
pub mod service;
pub mod shard;
pub mod sink;
pub mod tenants;

pub use config::Config;
pub use service::Service;
