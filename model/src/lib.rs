//! meterflow's vocabulary: what a meter sends, what the pipeline keeps, and the rules
//! both sides agree on. No I/O, no clocks, no threads — every function here takes
//! values and returns values, so the endpoint, the simulator and the storage layer
//! all speak exactly the same contract (DESIGN §3).
//!
//! - [`ids`]: tenant and meter ids (`[A-Za-z0-9_-]{1,64}`) and the key that joins them;
//! - [`uplink`]: the uplink v1 message, its readings and device flags;
//! - [`codec`]: JSON and binary (`0x01` + bincode 2) wire forms, and the encoding of
//!   persisted records;
//! - [`topic`]: the MQTT topic scheme;
//! - [`limits`] and [`check`]: what an acceptable uplink is;
//! - [`reject`]: every reason an uplink can be dead-lettered, as stable codes;
//! - [`mac`]: the payload MAC that authenticates a meter;
//! - [`credentials`]: per-meter MQTT passwords derived from a tenant's secret;
//! - [`seq_window`]: per-meter dedupe and the durable ack watermark;
//! - [`state`] and [`batch`]: what the shard workers hand to processors and storage;
//! - [`status`]: a meter's device status (flags, battery, signal);
//! - [`vee`], [`billing`], [`alert`], [`analytics`]: what the processors keep per meter
//!   and emit — register epochs, tariffs and bill lines, alert episodes, district
//!   aggregates;
//! - [`exception`]: validation exceptions and the operator orders that settle them;
//! - [`processing`]: the processors' configuration (per tenant: tariff, rules,
//!   districts);
//! - [`outputs`]: what processors emit for the hot cache and the API.

pub mod ack;
pub mod alert;
pub mod analytics;
pub mod batch;
pub mod billing;
pub mod check;
pub mod codec;
pub mod credentials;
pub mod exception;
pub mod ids;
pub mod limits;
pub mod mac;
pub mod outputs;
pub mod processing;
pub mod reject;
pub mod seq_window;
pub mod state;
mod state_v1;
mod state_v2;
mod state_v4;
mod state_v5;
mod state_v6;
mod state_v7;
mod state_v8;
pub mod status;
mod status_log;
pub mod time;
pub mod topic;
pub mod uplink;
pub mod vee;

pub use alert::{AlertEvent, AlertKind, AlertRules, EpisodeState, NotificationLimits, Priority};
pub use analytics::{DistrictUsage, Resolution, TopConsumers, UsageSketch};
pub use batch::{DeadLetter, MeterBatch, SealedBatch, StoredReading};
pub use billing::{BillLine, Tariff, TariffTier, TierCharge};
pub use exception::{
    Decision, ExceptionReason, ExceptionRef, ExceptionState, OrderAction, ReadException,
    RegisterOrder,
};
pub use ids::{MeterId, MeterKey, TenantId};
pub use limits::Limits;
pub use outputs::{MeterPage, MeterQuery, MeterView, Outputs, TenantSummary};
pub use processing::{ProcessorsConfig, TenantProcessing};
pub use reject::Reject;
pub use seq_window::{Admission, SeqWindow};
pub use state::{MeterState, Quality, UsageState};
pub use status::DeviceStatus;
pub use uplink::{DeviceFlag, Flags, Reading, Uplink};
pub use vee::{MeterSize, VeeRules};
