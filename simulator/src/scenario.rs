//! Injected scenarios: what goes wrong in a real fleet, how often, and which alerts
//! the service should raise for it.
//!
//! [`ScenarioRates`] sets the rates. Meter scenarios ([`Scenario`]) are a percentage
//! of meters each; a meter gets at most one, drawn from its traits stream, so the
//! alerts each meter should raise are known exactly ([`Scenario::expected_alerts`],
//! against the service's default [`AlertRules`]; no-communication needs the service's
//! silence threshold to pass after the meter's last message). A scenario the meter's
//! span of readings is too short to show (a leak needs a day of data) is not applied,
//! and the ground truth says so.
//!
//! Meters without a scenario never cross an alert threshold: the generator keeps
//! their use below the burst flow and gives them a quiet hour every night, which is
//! what tells a household from a leak (see `generator`).
//!
//! Message-level faults (duplicates, out-of-order, malformed payloads) are a
//! percentage of messages, drawn from a separate stream (`faults`); reconnect storms
//! are fleet-wide events on a timer (`lib.rs`).

use std::fmt;
use std::str::FromStr;

use meterflow_model::time::DAY_MS;
use meterflow_model::{AlertKind, AlertRules};
use serde::{Deserialize, Serialize};

use crate::profile::MeterProfile;
use crate::rng::SplitMix64;

const HOUR_MS: i64 = 3_600_000;

/// Rates of every injected scenario. All zero by default: a healthy fleet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScenarioRates {
    /// Percent of meters with a continuous leak (10–40 L/h, never a quiet hour).
    pub leak: f64,
    /// Percent of meters with a 2-hour daytime burst (2,000–2,800 L/h).
    pub burst: f64,
    /// Percent of meters whose reverse register grows 15–60 L within an hour.
    pub backflow: f64,
    /// Percent of meters that flag tamper on a quarter of their messages.
    pub tamper: f64,
    /// Percent of meters reporting a 3–9 % battery.
    pub low_battery: f64,
    /// Percent of meters that fall silent after half their messages.
    pub comms_loss: f64,
    /// Percent of meters whose register starts just below its capacity and wraps.
    pub rollover: f64,
    /// Percent of messages published once more after their ack (a lost ack).
    pub duplicates: f64,
    /// Percent of messages held back and sent after the next one.
    pub out_of_order: f64,
    /// Percent of messages followed by a malformed payload on the same topic.
    pub malformed: f64,
    /// Seconds between reconnect storms; 0: none.
    pub storm_every_s: f64,
    /// Percent of meters that drop their connection at once in each storm.
    pub storm_meters: f64,
}

impl ScenarioRates {
    /// Every problem with these rates, for config validation.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in self.percentages() {
            if !(value.is_finite() && (0.0..=100.0).contains(&value)) {
                problems.push(format!(
                    "scenario {name} must be a percentage 0..=100, got {value}"
                ));
            }
        }
        let meter_rates = self.meter_rates();
        let meter_share: f64 = meter_rates.iter().map(|(_, rate)| rate).sum();
        if meter_share > 100.0 + 1e-9 {
            let names: Vec<&str> = meter_rates.iter().map(|(name, _)| *name).collect();
            problems.push(format!(
                "meter scenarios ({}) add up to {meter_share} %: a meter has at most one, so they must add up to 100 or less",
                names.join(", ")
            ));
        }
        if !(self.storm_every_s.is_finite() && self.storm_every_s >= 0.0) {
            problems.push(format!(
                "scenario storm_every_s must be 0 (no storms) or a positive number of seconds, got {}",
                self.storm_every_s
            ));
        }
        problems
    }

    /// The meter scenarios by name, in the order their rates are stacked.
    fn meter_rates(&self) -> [(&'static str, f64); 7] {
        [
            ("leak", self.leak),
            ("burst", self.burst),
            ("backflow", self.backflow),
            ("tamper", self.tamper),
            ("low_battery", self.low_battery),
            ("comms_loss", self.comms_loss),
            ("rollover", self.rollover),
        ]
    }

    /// Every rate that is a percentage, by name.
    fn percentages(&self) -> impl Iterator<Item = (&'static str, f64)> {
        self.meter_rates().into_iter().chain([
            ("duplicates", self.duplicates),
            ("out_of_order", self.out_of_order),
            ("malformed", self.malformed),
            ("storm_meters", self.storm_meters),
        ])
    }

    /// Whether reconnect storms are configured.
    pub fn storms(&self) -> bool {
        self.storm_every_s > 0.0 && self.storm_meters > 0.0
    }
}

/// `leak=1,burst=0.5,storm_every_s=10` — the command-line form.
impl FromStr for ScenarioRates {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut fields = serde_json::Map::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not name=percent (e.g. leak=1.5)"))?;
            let value: f64 = value
                .trim()
                .parse()
                .map_err(|_| format!("{pair:?}: {value:?} is not a number"))?;
            fields.insert(name.trim().replace('-', "_"), serde_json::json!(value));
        }
        serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| e.to_string())
    }
}

impl fmt::Display for ScenarioRates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set: Vec<String> = self
            .percentages()
            .chain([("storm_every_s", self.storm_every_s)])
            .filter(|(_, v)| *v != 0.0)
            .map(|(name, v)| format!("{name}={v}"))
            .collect();
        if set.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&set.join(","))
        }
    }
}

/// What happens to one meter. Reading indices count the meter's readings from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scenario {
    /// From reading `from_reading` on, `lph` more litres per hour, day and night.
    Leak { from_reading: u64, lph: u64 },
    /// `readings` intervals at `lph` average flow, in daytime.
    Burst {
        from_reading: u64,
        readings: u64,
        lph: u64,
    },
    /// The reverse register grows `litres` over `readings` intervals (no forward use).
    Backflow {
        from_reading: u64,
        readings: u64,
        litres: u64,
    },
    /// Messages `from_seq..=to_seq` carry the tamper flag.
    Tamper { from_seq: u64, to_seq: u64 },
    /// Every message reports this battery level.
    LowBattery { percent: u8 },
    /// The meter sends only its first `messages` messages, then stays silent.
    CommsLoss { messages: u64 },
    /// The register starts here, just below its capacity, and wraps to 0.
    Rollover { start_register: u64 },
}

impl Scenario {
    /// The alert kinds the service opens for this meter under default rules.
    pub fn expected_alerts(&self) -> &'static [AlertKind] {
        match self {
            Scenario::Leak { .. } => &[AlertKind::Leak],
            Scenario::Burst { .. } => &[AlertKind::Burst],
            Scenario::Backflow { .. } => &[AlertKind::Backflow],
            Scenario::Tamper { .. } => &[AlertKind::Tamper],
            Scenario::LowBattery { .. } => &[AlertKind::LowBattery],
            Scenario::CommsLoss { .. } => &[AlertKind::NoCommunication],
            Scenario::Rollover { .. } => &[],
        }
    }

    /// The scenario's name, as in [`ScenarioRates`] and the JSON `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Scenario::Leak { .. } => "leak",
            Scenario::Burst { .. } => "burst",
            Scenario::Backflow { .. } => "backflow",
            Scenario::Tamper { .. } => "tamper",
            Scenario::LowBattery { .. } => "low_battery",
            Scenario::CommsLoss { .. } => "comms_loss",
            Scenario::Rollover { .. } => "rollover",
        }
    }

    /// Whether message-level faults that move readings in time (out-of-order) may
    /// touch this meter: not when a scenario's alert depends on the timing of rows.
    pub(crate) fn allows_reordering(scenario: Option<&Scenario>) -> bool {
        matches!(scenario, None | Some(Scenario::Rollover { .. }))
    }
}

/// The shape of one meter's stream, which decides what a scenario can show.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamShape {
    pub(crate) messages: u64,
    pub(crate) readings_per_message: u64,
    pub(crate) interval_ms: i64,
    pub(crate) start_ts_ms: i64,
}

impl StreamShape {
    fn readings(&self) -> u64 {
        self.messages * self.readings_per_message
    }

    /// Timestamp of reading `index`.
    fn ts(&self, index: u64) -> i64 {
        self.start_ts_ms + index as i64 * self.interval_ms
    }

    /// Readings needed to cover `ms`, at least one.
    fn readings_for(&self, ms: i64) -> u64 {
        (ms.max(1) as u64).div_ceil(self.interval_ms.max(1) as u64)
    }
}

/// Burst flow, L/h: above the default burst threshold (1,500), below a DN15's Q4
/// (3,125) so VEE does not call the reads implausible.
const BURST_LPH: (u64, u64) = (2_000, 2_800);
const BURST_MS: i64 = 2 * HOUR_MS;
/// Bursts start in working hours (UTC), away from the quiet night hours.
const BURST_START_HOURS: std::ops::Range<i64> = 8..18;
const LEAK_LPH: (u64, u64) = (10, 40);
const BACKFLOW_L: (u64, u64) = (15, 60);
const LOW_BATTERY_PERCENT: (u64, u64) = (3, 9);

/// Draws the scenario of a meter with `profile` and `shape` under `rates`, or `None`
/// (healthy, or its scenario cannot show in this span).
pub(crate) fn assign(
    rates: &ScenarioRates,
    profile: &MeterProfile,
    shape: &StreamShape,
    traits: &mut SplitMix64,
) -> Option<Scenario> {
    let pick = traits.between((0, 99_999)) as f64 / 1000.0;
    let mut stacked = 0.0;
    let chosen = rates.meter_rates().into_iter().find_map(|(name, rate)| {
        stacked += rate;
        (pick < stacked).then_some(name)
    })?;
    // Two more draws whatever was chosen, so each scenario's parameters come from
    // the same positions of the stream.
    let (a, b) = (traits.next(), traits.next());
    let within = |(lo, hi): (u64, u64), draw: u64| lo + draw % (hi - lo + 1);
    let readings = shape.readings();
    let rules = AlertRules::default();
    match chosen {
        "leak" => {
            // Starts in the first quarter; the alert needs a whole leak window of
            // data after the start, plus an hour for the last interval to land.
            let from_reading = within((1, (readings / 4).max(1)), a);
            let needed = shape.ts(from_reading) + rules.leak_window_ms + HOUR_MS;
            (readings > from_reading && shape.ts(readings - 1) >= needed).then_some(
                Scenario::Leak {
                    from_reading,
                    lph: within(LEAK_LPH, b),
                },
            )
        }
        "burst" => {
            let span = shape.readings_for(BURST_MS);
            if shape.interval_ms > BURST_MS / 2 {
                return None;
            }
            // The first reading from a random point in the first half whose
            // interval starts in working hours.
            let earliest = within((1, (readings / 2).max(1)), a);
            let from_reading = (earliest..readings).find(|&i| {
                let start_hour = (shape.ts(i) - shape.interval_ms).rem_euclid(DAY_MS) / HOUR_MS;
                BURST_START_HOURS.contains(&start_hour)
            })?;
            (from_reading + span <= readings).then_some(Scenario::Burst {
                from_reading,
                readings: span,
                lph: within(BURST_LPH, b),
            })
        }
        "backflow" => {
            let span = shape.readings_for(HOUR_MS);
            (readings > span).then(|| Scenario::Backflow {
                from_reading: within((1, readings - span), a),
                readings: span,
                litres: within(BACKFLOW_L, b),
            })
        }
        "tamper" => {
            let from_seq = within((1, shape.messages), a);
            let to_seq = (from_seq + (shape.messages / 4).max(1) - 1).min(shape.messages);
            Some(Scenario::Tamper { from_seq, to_seq })
        }
        "low_battery" => Some(Scenario::LowBattery {
            percent: u8::try_from(within(LOW_BATTERY_PERCENT, a)).unwrap_or(5),
        }),
        "comms_loss" => (shape.messages >= 2).then_some(Scenario::CommsLoss {
            messages: shape.messages / 2,
        }),
        "rollover" => {
            // Wraps within the first half day of use.
            let headroom = within((1, (profile.daily_litres / 2).max(1)), a);
            Some(Scenario::Rollover {
                start_register: profile.capacity - headroom,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SimConfig;
    use crate::rng::{Stream, meter_stream};

    fn shape(messages: u64) -> StreamShape {
        StreamShape {
            messages,
            readings_per_message: 4,
            interval_ms: 15 * 60_000,
            // Midnight UTC.
            start_ts_ms: 1_763_856_000_000,
        }
    }

    fn assign_many(rates: &ScenarioRates, shape: &StreamShape) -> Vec<Option<Scenario>> {
        (0..2_000)
            .map(|i| {
                let mut traits = meter_stream(3, "t", i, Stream::Traits);
                let profile = MeterProfile::draw(&SimConfig::default(), &mut traits);
                assign(rates, &profile, shape, &mut traits)
            })
            .collect()
    }

    #[test]
    fn rates_parse_from_the_command_line_form() {
        let rates: ScenarioRates = "leak=1.5, burst=2,storm-every-s=10".parse().unwrap();
        assert_eq!(rates.leak, 1.5);
        assert_eq!(rates.burst, 2.0);
        assert_eq!(rates.storm_every_s, 10.0);
        assert_eq!(rates.to_string(), "leak=1.5,burst=2,storm_every_s=10");
        assert!("leak".parse::<ScenarioRates>().is_err());
        assert!(
            "leek=1"
                .parse::<ScenarioRates>()
                .unwrap_err()
                .contains("leek")
        );
        assert!("leak=x".parse::<ScenarioRates>().is_err());
        assert_eq!(
            "".parse::<ScenarioRates>().unwrap(),
            ScenarioRates::default()
        );
    }

    #[test]
    fn bad_rates_are_all_reported() {
        let rates = ScenarioRates {
            leak: 60.0,
            burst: 50.0,
            malformed: -1.0,
            storm_every_s: f64::NAN,
            ..ScenarioRates::default()
        };
        assert_eq!(rates.problems().len(), 3, "{:?}", rates.problems());
        assert!(ScenarioRates::default().problems().is_empty());
    }

    #[test]
    fn each_scenario_gets_its_share_and_fits_the_span() {
        let rates = ScenarioRates {
            leak: 10.0,
            burst: 10.0,
            backflow: 10.0,
            tamper: 10.0,
            low_battery: 10.0,
            comms_loss: 10.0,
            rollover: 10.0,
            ..ScenarioRates::default()
        };
        // Three days of 15-minute reads: every scenario can show.
        let shape = shape(72);
        let assigned = assign_many(&rates, &shape);
        let mut counts = std::collections::BTreeMap::new();
        for scenario in assigned.iter().flatten() {
            let name = serde_json::to_value(scenario).unwrap()["kind"].clone();
            assert_eq!(name, scenario.kind());
            *counts.entry(scenario.kind()).or_insert(0) += 1;
            match *scenario {
                Scenario::Leak { from_reading, .. } => {
                    assert!(shape.ts(287) - shape.ts(from_reading) >= 25 * HOUR_MS)
                }
                Scenario::Burst {
                    from_reading,
                    readings,
                    lph,
                } => {
                    assert_eq!(readings, 8);
                    assert!(from_reading + readings <= 288);
                    assert!(BURST_LPH.0 <= lph && lph <= BURST_LPH.1);
                    let start_hour =
                        (shape.ts(from_reading) - shape.interval_ms).rem_euclid(DAY_MS) / HOUR_MS;
                    assert!(BURST_START_HOURS.contains(&start_hour));
                }
                Scenario::Tamper { from_seq, to_seq } => {
                    assert!(1 <= from_seq && from_seq <= to_seq && to_seq <= 72)
                }
                Scenario::CommsLoss { messages } => assert_eq!(messages, 36),
                _ => {}
            }
        }
        assert_eq!(counts.len(), 7, "{counts:?}");
        for (name, n) in &counts {
            assert!((140..=260).contains(n), "{name}: {n}");
        }
        let healthy = assigned.iter().filter(|s| s.is_none()).count();
        assert!((500..=700).contains(&healthy), "{healthy}");
    }

    #[test]
    fn a_short_span_gets_no_leak() {
        let rates = ScenarioRates {
            leak: 100.0,
            ..ScenarioRates::default()
        };
        // Twelve hours of data cannot show a 24-hour leak window.
        assert!(assign_many(&rates, &shape(12)).iter().all(Option::is_none));
        assert!(assign_many(&rates, &shape(40)).iter().all(Option::is_some));
    }
}
