//! Integration tests of meterflow-storage: the embedded store against a model, across
//! restarts and aborts, and its dead-letter and idempotency contracts.

mod cache_contract;
mod embedded_chunks;
mod embedded_contract;
mod embedded_durability;
mod embedded_model;
mod embedded_retention;
mod outputs_contract;
mod redis;
mod redis_series;
mod scylla;
mod servers;
mod utils;
