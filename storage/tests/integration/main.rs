//! Integration tests of meterflow-storage: the embedded store against a model, across
//! restarts and aborts, and its dead-letter and idempotency contracts; the ScyllaDB
//! store and the Redis cache against real servers (a single Redis and a Redis
//! Cluster, `servers.rs`).

mod cache_contract;
mod embedded_chunks;
mod embedded_contract;
mod embedded_durability;
mod embedded_model;
mod embedded_retention;
mod outputs_contract;
mod redis;
mod redis_cluster;
mod redis_series;
mod scylla;
mod servers;
mod utils;
