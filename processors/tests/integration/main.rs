//! Scenario and property tests of the processor chain: pure, no servers.

mod alert_order;
mod alerting;
mod analytics;
mod billing;
mod register_order;
mod skipped_months;
mod utils;
mod vee;
