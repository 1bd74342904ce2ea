//! The meterflow service: the embedded MQTT broker, the broker link loop, sharded
//! batching workers, the sink stage with its ack publisher, and the HTTP API. See
//! `ARCHITECTURE.md` for how the parts hand data to each other.

pub mod backends;
pub mod broker;
pub mod cache_writer;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod http;
pub mod link_loop;
pub mod metrics;
pub mod nodelay;
pub mod notifier;
pub mod service;
pub mod shard;
pub mod sink;
pub mod tenants;

pub use config::Config;
pub use service::Service;
