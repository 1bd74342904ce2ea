//! The ground truth of a run, per meter: who it is, what it sent, how much water it
//! registered, which faults it injected and which alerts the service should open.
//! A pure function of the resolved configs ([`ground_truth`]), written by
//! `meterflow-sim --ground-truth FILE` so tests and benches can check results exactly.

use std::collections::BTreeMap;

use meterflow_model::{AlertKind, MeterSize, Uplink};
use serde::{Deserialize, Serialize};

use crate::config::{SimConfig, meter_id_string};
use crate::generator::meter_messages;
use crate::scenario::Scenario;

/// What one meter does in a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeterTruth {
    pub tenant: String,
    pub meter: String,
    pub district: Option<String>,
    pub size: MeterSize,
    pub scenario: Option<Scenario>,
    /// Distinct messages (seq 1..=messages).
    pub messages: u64,
    pub readings: u64,
    pub first_ts: i64,
    pub last_ts: i64,
    /// Litres registered from the first reading to the last (wraps included).
    pub usage_l: u64,
    /// Times the register wrapped to 0.
    pub rollovers: u32,
    /// Growth of the reverse register, litres.
    pub backflow_l: u64,
    /// Messages published again after their ack.
    pub duplicates: u64,
    /// Messages sent after their successor.
    pub out_of_order: u64,
    /// Broken payloads sent, by the dead-letter reason the service gives them.
    pub malformed: BTreeMap<String, u64>,
    /// Alert kinds the service opens for this meter under its default rules
    /// (no-communication once its silence threshold has passed).
    pub expected_alerts: Vec<AlertKind>,
}

/// Fleet-wide sums of [`MeterTruth`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TruthTotals {
    pub meters: u64,
    pub messages: u64,
    pub readings: u64,
    pub usage_l: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub malformed: BTreeMap<String, u64>,
    /// Meters per scenario kind.
    pub scenarios: BTreeMap<String, u64>,
    /// Meters per expected alert kind.
    pub expected_alerts: BTreeMap<AlertKind, u64>,
}

/// The ground truth of a whole run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub totals: TruthTotals,
    pub meters: Vec<MeterTruth>,
}

/// The truth of meter `index` of `config` (resolve the config first).
pub fn meter_truth(config: &SimConfig, index: usize) -> MeterTruth {
    let mut generator = meter_messages(config, index);
    let capacity = generator.profile().capacity;
    let mut truth = MeterTruth {
        tenant: config.tenant.clone(),
        meter: meter_id_string(index),
        district: generator.profile().district.clone(),
        size: generator.profile().size,
        scenario: generator.scenario().copied(),
        messages: 0,
        readings: 0,
        first_ts: 0,
        last_ts: 0,
        usage_l: 0,
        rollovers: 0,
        backflow_l: 0,
        duplicates: 0,
        out_of_order: 0,
        malformed: BTreeMap::new(),
        expected_alerts: generator
            .scenario()
            .map(|s| s.expected_alerts().to_vec())
            .unwrap_or_default(),
    };
    let mut uplink = Uplink::new(0, Vec::new());
    let mut previous = None;
    while let Some(faults) = generator.fill_next(&mut uplink) {
        truth.messages += 1;
        truth.duplicates += u64::from(faults.duplicate);
        truth.out_of_order += u64::from(faults.held_back);
        if let Some(kind) = faults.malformed {
            *truth
                .malformed
                .entry(kind.reason().code().to_owned())
                .or_insert(0) += 1;
        }
        for reading in &uplink.readings {
            truth.readings += 1;
            match previous {
                None => truth.first_ts = reading.ts,
                Some((reg, rev)) => {
                    if reading.reg < reg {
                        truth.rollovers += 1;
                        truth.usage_l += reading.reg + capacity - reg;
                    } else {
                        truth.usage_l += reading.reg - reg;
                    }
                    truth.backflow_l += reading.rev - rev;
                }
            }
            truth.last_ts = reading.ts;
            previous = Some((reading.reg, reading.rev));
        }
    }
    truth
}

/// The truth of every meter of every config, in order.
pub fn ground_truth(configs: &[SimConfig]) -> GroundTruth {
    let meters: Vec<MeterTruth> = configs
        .iter()
        .flat_map(|config| {
            config
                .meter_indices()
                .map(|index| meter_truth(config, index))
        })
        .collect();
    let mut totals = TruthTotals::default();
    for meter in &meters {
        totals.meters += 1;
        totals.messages += meter.messages;
        totals.readings += meter.readings;
        totals.usage_l += meter.usage_l;
        totals.duplicates += meter.duplicates;
        totals.out_of_order += meter.out_of_order;
        for (reason, n) in &meter.malformed {
            *totals.malformed.entry(reason.clone()).or_insert(0) += n;
        }
        if let Some(scenario) = &meter.scenario {
            *totals
                .scenarios
                .entry(scenario.kind().to_owned())
                .or_insert(0) += 1;
        }
        for &kind in &meter.expected_alerts {
            *totals.expected_alerts.entry(kind).or_insert(0) += 1;
        }
    }
    GroundTruth { totals, meters }
}
