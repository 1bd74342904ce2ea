//! The ground truth: the exact uplinks each meter sends, as a pure function of the
//! resolved [`SimConfig`] and the meter's index. Tests regenerate them to compare with
//! what the service stored, so nothing here reads a clock or depends on scheduling.
//!
//! Per meter (absolute index `i`, id `m{i:06}`), with its [`MeterProfile`] and
//! [`Scenario`]:
//! - messages have `seq` 1, 2, …, `messages_per_meter` (half of them for a
//!   comms-loss meter); message `s` carries readings `(s-1)·K .. s·K` of the meter's
//!   reading stream (K = `readings_per_message`);
//! - reading `j` is stamped `start_ts_ms + j·interval_ms` (strictly ascending, and
//!   across messages too);
//! - `reg` is a cumulative forward register in litres: it starts at the profile's
//!   value and grows by the interval's use, wrapping to 0 at the size's capacity
//!   (the service's default register digits); `rev` grows only under backflow;
//! - use follows a diurnal curve ([`HOURLY_SHAPE`], UTC hours) around the profile's
//!   daily volume: a high chance of zero use at night and a low one at the morning
//!   and evening peaks. Two guarantees keep a healthy meter clear of every alert: the
//!   **quiet hours** 02:00–04:00 have no use at all (with reads of an hour or
//!   shorter, every day has a zero-flow hour, so no leak), and an interval's average
//!   flow stays below [`HEALTHY_MAX_LPH`] (under the default burst threshold);
//! - `flow` is a plausible maximum flow for the interval in L/h: 0 without use,
//!   otherwise 1.5–6× the interval's mean flow, never below the mean, capped at the
//!   size's permanent flow Q3;
//! - `temp` is a random walk in 8.0–20.0 °C (80..=200 in 0.1 °C);
//! - `battery` is fixed per meter, `rssi` drawn per message, `flags` empty unless a
//!   scenario sets them; `mac` is set when the config has [`crate::MacKeys`];
//! - scenarios change the stream as [`Scenario`] describes; message-level faults
//!   ([`MessageFaults`]) come from their own stream and never change the readings.

use meterflow_model::codec;
use meterflow_model::mac;
use meterflow_model::time::DAY_MS;
use meterflow_model::uplink::{DeviceFlag, Flags, Reading, UPLINK_VERSION, Uplink};

use crate::config::{SimConfig, meter_id_string};
use crate::faults::{Malformed, MessageFaults};
use crate::profile::MeterProfile;
use crate::rng::{SplitMix64, Stream, meter_stream};
use crate::scenario::{self, Scenario, StreamShape};

const HOUR_MS: i64 = 3_600_000;

/// Relative water use per UTC hour: a night trough with two quiet hours, a morning
/// peak (showers) and a longer evening peak (cooking, washing).
pub const HOURLY_SHAPE: [u32; 24] = [
    3, 2, 0, 0, 2, 6, 30, 60, 55, 40, 32, 30, 34, 30, 26, 26, 32, 45, 58, 60, 50, 40, 24, 10,
];
const SHAPE_SUM: u64 = {
    let mut sum = 0u64;
    let mut h = 0;
    while h < 24 {
        sum += HOURLY_SHAPE[h] as u64;
        h += 1;
    }
    sum
};
const SHAPE_MAX: u64 = 60;

/// Highest average flow of a healthy meter's interval, L/h: below the default burst
/// threshold (1,500 L/h), so only burst scenarios cross it.
pub const HEALTHY_MAX_LPH: u64 = 1_200;
/// Chance of an interval without any use, per mille, at the busiest and the quietest
/// hour; in between it scales with the hour's share of use.
const ZERO_USE_PERMILLE: (u64, u64) = (100, 900);
/// Peak-to-mean flow within an interval, percent: taps run in short bursts.
const PEAK_FACTOR_PERCENT: (u64, u64) = (150, 600);
/// Water temperature range, 0.1 °C: mains water between 8 and 20 °C.
const TEMP_RANGE: (i16, i16) = (80, 200);
const RSSI_DBM: (u64, u64) = (70, 110);
/// Out-of-order messages are daytime ones: every reading of the held message and of
/// the one overtaking it lies in 05:00–24:00 UTC, so the gap the service estimates
/// while the held message is missing never covers the quiet hours.
const REORDER_HOURS: std::ops::Range<i64> = 5..24;

/// The messages of one meter, generated lazily in `seq` order.
#[derive(Clone, Debug)]
pub struct MeterMessages {
    rng: SplitMix64,
    faults: SplitMix64,
    profile: MeterProfile,
    scenario: Option<Scenario>,
    /// Seq of the next message.
    next_seq: u64,
    last_seq: u64,
    readings_per_message: usize,
    /// Index of the next reading in the meter's stream.
    next_reading: u64,
    start_ts: i64,
    interval_ms: i64,
    register: u64,
    reverse: u64,
    temp: i16,
    battery: u8,
    mac_key: Option<Vec<u8>>,
    /// Percent rates of the message-level faults.
    duplicate_pct: f64,
    out_of_order_pct: f64,
    malformed_pct: f64,
    /// The previous message was held back (no two in a row).
    held_previous: bool,
}

/// The uplinks meter `meter_index` (absolute, as in its id) sends under `config`.
///
/// `config.start_ts_ms` must be resolved ([`SimConfig::resolved`]) for the result to
/// be reproducible; if it is not, it is resolved here against the wall clock.
pub fn meter_messages(config: &SimConfig, meter_index: usize) -> MeterMessages {
    let start_ts = match config.start_ts_ms {
        Some(ts) => ts,
        None => config
            .clone()
            .resolved_now()
            .start_ts_ms
            .unwrap_or_default(),
    };
    let stream = |kind| meter_stream(config.seed, &config.tenant, meter_index, kind);
    let mut traits = stream(Stream::Traits);
    let profile = MeterProfile::draw(config, &mut traits);
    let shape = StreamShape {
        messages: config.messages_per_meter,
        readings_per_message: config.readings_per_message as u64,
        interval_ms: config.interval_ms,
        start_ts_ms: start_ts,
    };
    let scenario = scenario::assign(&config.scenarios, &profile, &shape, &mut traits);
    let last_seq = match scenario {
        Some(Scenario::CommsLoss { messages }) => messages,
        _ => config.messages_per_meter,
    };
    let register = match scenario {
        Some(Scenario::Rollover { start_register }) => start_register,
        _ => profile.start_register,
    };
    let battery = match scenario {
        Some(Scenario::LowBattery { percent }) => percent,
        _ => profile.battery,
    };
    MeterMessages {
        rng: stream(Stream::Readings),
        faults: stream(Stream::Faults),
        scenario,
        next_seq: 1,
        last_seq,
        readings_per_message: config.readings_per_message,
        next_reading: 0,
        start_ts,
        interval_ms: config.interval_ms,
        register,
        reverse: 0,
        temp: profile.temp,
        battery,
        mac_key: config
            .mac_keys
            .as_ref()
            .map(|keys| keys.key_for(&meter_id_string(meter_index))),
        duplicate_pct: config.scenarios.duplicates,
        out_of_order_pct: config.scenarios.out_of_order,
        malformed_pct: config.scenarios.malformed,
        held_previous: false,
        profile,
    }
}

impl MeterMessages {
    /// Messages not generated yet.
    pub fn remaining(&self) -> u64 {
        self.last_seq + 1 - self.next_seq
    }

    pub fn profile(&self) -> &MeterProfile {
        &self.profile
    }

    /// The meter's scenario, if it has one.
    pub fn scenario(&self) -> Option<&Scenario> {
        self.scenario.as_ref()
    }

    /// Writes the next message into `uplink`, reusing its readings buffer, and says
    /// which faults go with it. `None` when the meter has sent everything (`uplink`
    /// is then untouched).
    pub fn fill_next(&mut self, uplink: &mut Uplink) -> Option<MessageFaults> {
        if self.next_seq > self.last_seq {
            return None;
        }
        let seq = self.next_seq;
        uplink.v = UPLINK_VERSION;
        uplink.seq = seq;
        uplink.readings.clear();
        for _ in 0..self.readings_per_message {
            let reading = self.next_reading();
            uplink.readings.push(reading);
        }
        uplink.flags = match self.scenario {
            Some(Scenario::Tamper { from_seq, to_seq }) if (from_seq..=to_seq).contains(&seq) => {
                [DeviceFlag::Tamper].into_iter().collect()
            }
            _ => Flags::empty(),
        };
        uplink.battery = Some(self.battery);
        let rssi = self.rng.between(RSSI_DBM);
        uplink.rssi = Some(-i16::try_from(rssi).unwrap_or(110));
        uplink.mac = None;
        if let Some(key) = &self.mac_key {
            mac::sign(key, uplink);
        }
        self.next_seq += 1;
        Some(self.draw_faults(seq))
    }

    /// Four draws per message whatever the rates, so changing one rate never moves
    /// another fault.
    fn draw_faults(&mut self, seq: u64) -> MessageFaults {
        let duplicate = self.faults.chance_percent(self.duplicate_pct);
        let reorder = self.faults.chance_percent(self.out_of_order_pct);
        let malformed = self.faults.chance_percent(self.malformed_pct);
        let kind = self.faults.between((0, Malformed::ALL.len() as u64 - 1));
        let held_back = reorder
            && !self.held_previous
            && seq < self.last_seq
            && Scenario::allows_reordering(self.scenario.as_ref())
            && self.daytime_messages(seq, 2);
        self.held_previous = held_back;
        let malformed = malformed.then(|| Malformed::ALL[kind as usize]);
        MessageFaults {
            duplicate,
            held_back,
            malformed,
        }
    }

    /// Whether every reading of messages `seq .. seq + count` is stamped in
    /// [`REORDER_HOURS`] of one day.
    fn daytime_messages(&self, seq: u64, count: u64) -> bool {
        let k = self.readings_per_message as i64;
        let first = (seq as i64 - 1) * k;
        let last = first + count as i64 * k - 1;
        let ts = |j: i64| self.start_ts + j * self.interval_ms;
        let day = |t: i64| t.div_euclid(DAY_MS);
        let hour = |t: i64| (t - 1).rem_euclid(DAY_MS) / HOUR_MS;
        // The interval before the first reading must not reach back into the night.
        let from = ts(first) - self.interval_ms;
        day(from) == day(ts(last) - 1)
            && REORDER_HOURS.contains(&(from.rem_euclid(DAY_MS) / HOUR_MS))
            && REORDER_HOURS.contains(&hour(ts(last)))
    }

    fn next_reading(&mut self) -> Reading {
        let index = self.next_reading;
        self.next_reading += 1;
        let ts = self.start_ts + index as i64 * self.interval_ms;
        let mut usage = self.healthy_use(ts);
        let mut peak_lph = None;
        match self.scenario {
            Some(Scenario::Leak { from_reading, lph }) if index >= from_reading => {
                usage += self.litres_at(lph).max(1);
            }
            Some(Scenario::Burst {
                from_reading,
                readings,
                lph,
            }) if (from_reading..from_reading + readings).contains(&index) => {
                usage = self.litres_at(lph);
                peak_lph = Some(lph);
            }
            Some(Scenario::Backflow {
                from_reading,
                readings,
                litres,
            }) if (from_reading..from_reading + readings).contains(&index) => {
                // Water runs backwards: the forward register stands still.
                usage = 0;
                let step = index - from_reading;
                self.reverse += litres * (step + 1) / readings - litres * step / readings;
            }
            _ => {}
        }
        self.register = (self.register + usage) % self.profile.capacity;

        let peak_percent = self.rng.between(PEAK_FACTOR_PERCENT);
        let q3 = self.profile.size.max_flow_lph() * 4 / 5;
        let flow = if usage == 0 {
            0
        } else {
            let mean = (usage * HOUR_MS as u64).div_ceil(self.interval_ms as u64);
            let peak = peak_lph.unwrap_or((mean * peak_percent / 100).min(q3));
            u32::try_from(peak.max(mean)).unwrap_or(u32::MAX)
        };

        let step = i16::try_from(self.rng.between((0, 4))).unwrap_or(2) - 2;
        self.temp = (self.temp + step).clamp(TEMP_RANGE.0, TEMP_RANGE.1);

        Reading {
            ts,
            reg: self.register,
            rev: self.reverse,
            flow,
            temp: Some(self.temp),
        }
    }

    /// Litres of the interval ending at `ts` of a healthy meter: the diurnal curve,
    /// zero in the quiet hours, average flow at most [`HEALTHY_MAX_LPH`].
    fn healthy_use(&mut self, ts: i64) -> u64 {
        // The interval ending at `ts` lies in the hour of its last millisecond.
        let hour = ((ts - 1).rem_euclid(DAY_MS) / HOUR_MS) as usize;
        let weight = u64::from(HOURLY_SHAPE[hour]);
        let zero_permille = ZERO_USE_PERMILLE.0
            + (ZERO_USE_PERMILLE.1 - ZERO_USE_PERMILLE.0) * (SHAPE_MAX - weight) / SHAPE_MAX;
        let used = !self.rng.chance(zero_permille);
        // Two draws either way, so the stream does not shift with the outcome.
        let (u1, u2) = (self.rng.between((0, 999)), self.rng.between((0, 999)));
        if !used || weight == 0 {
            return 0;
        }
        // Expected millilitres in this interval, then scaled up because the zero-use
        // intervals carry none of it.
        let expected_ml = u128::from(self.profile.daily_litres)
            * 1000
            * u128::from(weight)
            * self.interval_ms as u128
            / (u128::from(SHAPE_SUM) * HOUR_MS as u128);
        let mean_ml = expected_ml * 1000 / u128::from(1000 - zero_permille);
        // u1 + u2 is triangular on 0..=1998 with mean 999: mean_ml on average.
        let ml = mean_ml * u128::from(u1 + u2) / 999;
        let litres = u64::try_from((ml + 500) / 1000).unwrap_or(u64::MAX);
        litres.min(self.litres_at(HEALTHY_MAX_LPH))
    }

    /// Litres one interval holds at `lph` average flow.
    fn litres_at(&self, lph: u64) -> u64 {
        u64::try_from(u128::from(lph) * self.interval_ms as u128 / HOUR_MS as u128)
            .unwrap_or(u64::MAX)
    }
}

impl Iterator for MeterMessages {
    type Item = Uplink;

    fn next(&mut self) -> Option<Uplink> {
        let mut uplink = Uplink::new(0, Vec::with_capacity(self.readings_per_message));
        self.fill_next(&mut uplink).map(|_| uplink)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining()).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

/// The wire payload of `uplink`: JSON, or binary (`0x01` + bincode) when `binary`.
pub fn encode_payload(uplink: &Uplink, binary: bool) -> Vec<u8> {
    if binary {
        codec::encode_binary(uplink)
    } else {
        codec::encode_json(uplink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MacKeys;
    use crate::rng::mix64;
    use crate::scenario::ScenarioRates;
    use crate::truth::meter_truth;
    use meterflow_model::MeterSize;
    use meterflow_model::check::{check_payload_size, check_uplink};
    use meterflow_model::limits::{DEFAULT_MAX_READINGS, Limits};

    const DEFAULT_INTERVAL: i64 = crate::config::DEFAULT_INTERVAL_MS;
    /// Midnight UTC.
    const START: i64 = 1_763_856_000_000;

    fn config() -> SimConfig {
        SimConfig {
            meters: 3,
            messages_per_meter: 50,
            readings_per_message: 24,
            start_ts_ms: Some(START),
            ..SimConfig::default()
        }
    }

    /// Hour of day (UTC) of the interval ending at `ts`.
    fn hour_of(ts: i64) -> i64 {
        (ts - 1).rem_euclid(DAY_MS) / HOUR_MS
    }

    #[test]
    fn same_config_same_messages() {
        let a: Vec<_> = meter_messages(&config(), 1).collect();
        let b: Vec<_> = meter_messages(&config(), 1).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 50);
        // Another meter, seed or tenant differs.
        assert_ne!(a, meter_messages(&config(), 2).collect::<Vec<_>>());
        let reseeded = SimConfig {
            seed: 7,
            ..config()
        };
        assert_ne!(a, meter_messages(&reseeded, 1).collect::<Vec<_>>());
        let other_tenant = SimConfig {
            tenant: "north".into(),
            ..config()
        };
        assert_ne!(a, meter_messages(&other_tenant, 1).collect::<Vec<_>>());
    }

    #[test]
    fn generation_is_pinned() {
        // Guards the ground truth against accidental change: stored data from an
        // earlier run must still compare equal after a refactor.
        let first = meter_messages(&config(), 0).next().unwrap();
        let digest = first.readings.iter().fold(0u64, |acc, r| {
            mix64(acc ^ r.reg ^ (u64::from(r.flow) << 32))
        });
        assert_eq!(first.readings[0].ts, START);
        assert_eq!(
            (first.readings[0].reg, digest),
            (PINNED_FIRST_REG, PINNED_DIGEST),
            "{first:?}"
        );
    }
    const PINNED_FIRST_REG: u64 = 83_195;
    const PINNED_DIGEST: u64 = 4_600_580_786_510_602_681;

    #[test]
    fn seq_and_timestamps_ascend_and_registers_never_fall() {
        for meter in 0..3 {
            let mut last: Option<Reading> = None;
            for (uplink, expected_seq) in meter_messages(&config(), meter).zip(1..) {
                assert_eq!(uplink.seq, expected_seq);
                assert_eq!(uplink.readings.len(), 24);
                for r in &uplink.readings {
                    if let Some(prev) = last {
                        assert_eq!(r.ts, prev.ts + DEFAULT_INTERVAL);
                        assert!(r.reg >= prev.reg);
                    }
                    assert_eq!(r.rev, 0);
                    assert!((80..=200).contains(&r.temp.unwrap()));
                    last = Some(*r);
                }
            }
        }
    }

    #[test]
    fn usage_looks_like_a_household() {
        // Many days of one meter: plausible totals, quiet nights, and flow
        // consistent with usage.
        let long = SimConfig {
            messages_per_meter: 96 * 4,
            readings_per_message: 24,
            ..config()
        };
        let readings: Vec<Reading> = meter_messages(&long, 5).flat_map(|u| u.readings).collect();
        let days = readings.len() as u64 * DEFAULT_INTERVAL as u64 / DAY_MS as u64;
        let total = readings.last().unwrap().reg - readings.first().unwrap().reg;
        let per_day = total / days;
        assert!((60..=900).contains(&per_day), "{per_day} L/day");
        let mut night = (0, 0);
        for pair in readings.windows(2) {
            let used = pair[1].reg - pair[0].reg;
            assert_eq!(used == 0, pair[1].flow == 0);
            assert!(u64::from(pair[1].flow) <= 2_500.max(used * 4));
            let hour = hour_of(pair[1].ts);
            if (0..=4).contains(&hour) {
                night.0 += 1;
                night.1 += u32::from(used == 0);
            }
        }
        assert!(night.1 * 10 > night.0 * 7, "night zero-use {night:?}");
        assert!(readings.first().unwrap().reg >= 10_000);
    }

    #[test]
    fn healthy_meters_stay_clear_of_every_alert_threshold() {
        // Three days of every size, 15-minute and hourly reads.
        for interval_ms in [DEFAULT_INTERVAL, HOUR_MS] {
            let fleet = SimConfig {
                meters: 60,
                messages_per_meter: 72,
                readings_per_message: 4,
                interval_ms,
                sizes: MeterSize::ALL.into_iter().map(|s| (s, 1)).collect(),
                ..config()
            };
            for meter in 0..60 {
                let mut previous: Option<Reading> = None;
                let mut zero_hours_per_day = std::collections::BTreeMap::new();
                for uplink in meter_messages(&fleet, meter) {
                    assert!(uplink.flags.is_empty());
                    assert!(uplink.battery.unwrap() >= 60);
                    for r in uplink.readings {
                        if let Some(p) = previous {
                            let litres = r.reg - p.reg;
                            let lph = litres * HOUR_MS as u64 / interval_ms as u64;
                            assert!(lph <= HEALTHY_MAX_LPH, "meter {meter}: {lph} L/h");
                            if (2..4).contains(&hour_of(r.ts)) {
                                assert_eq!(litres, 0, "meter {meter} used water at {}", r.ts);
                                *zero_hours_per_day.entry(r.ts / DAY_MS).or_insert(0) += 1;
                            }
                        }
                        assert_eq!(r.rev, 0);
                        previous = Some(r);
                    }
                }
                let days = 72 * 4 * interval_ms / DAY_MS;
                assert_eq!(zero_hours_per_day.len() as i64, days, "meter {meter}");
            }
        }
    }

    fn with_scenario(rates: ScenarioRates) -> SimConfig {
        SimConfig {
            meters: 20,
            messages_per_meter: 48,
            readings_per_message: 4,
            scenarios: rates,
            ..config()
        }
    }

    fn readings(config: &SimConfig, meter: usize) -> Vec<Reading> {
        meter_messages(config, meter)
            .flat_map(|u| u.readings)
            .collect()
    }

    #[test]
    fn leaks_never_rest_and_bursts_run_above_the_threshold() {
        let leaks = with_scenario(ScenarioRates {
            leak: 100.0,
            ..ScenarioRates::default()
        });
        for meter in 0..20 {
            let Some(&Scenario::Leak { from_reading, lph }) =
                meter_messages(&leaks, meter).scenario()
            else {
                panic!("meter {meter} has no leak");
            };
            let rs = readings(&leaks, meter);
            let per_interval = lph * DEFAULT_INTERVAL as u64 / HOUR_MS as u64;
            for (j, pair) in rs.windows(2).enumerate() {
                if j + 1 >= from_reading as usize {
                    assert!(pair[1].reg - pair[0].reg >= per_interval.max(1));
                }
            }
        }
        let bursts = with_scenario(ScenarioRates {
            burst: 100.0,
            ..ScenarioRates::default()
        });
        for meter in 0..20 {
            let Some(&Scenario::Burst {
                from_reading,
                readings: n,
                lph,
            }) = meter_messages(&bursts, meter).scenario()
            else {
                panic!("meter {meter} has no burst");
            };
            let rs = readings(&bursts, meter);
            let from = from_reading as usize;
            for j in from..from + n as usize {
                let litres = rs[j].reg - rs[j - 1].reg;
                assert_eq!(litres * 4, lph - lph % 4, "meter {meter} reading {j}");
                assert!(litres * 4 >= 1_500);
            }
            // Outside the burst the meter is healthy again.
            let after = rs[from + n as usize + 1].reg - rs[from + n as usize].reg;
            assert!(after * 4 <= HEALTHY_MAX_LPH);
        }
    }

    #[test]
    fn backflow_tamper_battery_comms_loss_and_rollover_show_in_the_stream() {
        let all = |rates: ScenarioRates| {
            let config = with_scenario(rates);
            (0..20)
                .map(move |m| meter_truth(&config, m))
                .collect::<Vec<_>>()
        };
        for truth in all(ScenarioRates {
            backflow: 100.0,
            ..ScenarioRates::default()
        }) {
            let Some(Scenario::Backflow { litres, .. }) = truth.scenario else {
                panic!("{truth:?}");
            };
            assert_eq!(truth.backflow_l, litres);
        }
        let config = with_scenario(ScenarioRates {
            tamper: 100.0,
            ..ScenarioRates::default()
        });
        for meter in 0..20 {
            let generator = meter_messages(&config, meter);
            let Some(&Scenario::Tamper { from_seq, to_seq }) = generator.scenario() else {
                panic!("no tamper");
            };
            for uplink in generator {
                let flagged = uplink.flags.contains(DeviceFlag::Tamper);
                assert_eq!(flagged, (from_seq..=to_seq).contains(&uplink.seq));
            }
        }
        let config = with_scenario(ScenarioRates {
            low_battery: 100.0,
            ..ScenarioRates::default()
        });
        assert!(meter_messages(&config, 3).all(|u| u.battery.unwrap() <= 9));
        for truth in all(ScenarioRates {
            comms_loss: 100.0,
            ..ScenarioRates::default()
        }) {
            assert_eq!(truth.messages, 24);
            assert_eq!(truth.readings, 96);
        }
        for truth in all(ScenarioRates {
            rollover: 100.0,
            ..ScenarioRates::default()
        }) {
            assert_eq!(truth.rollovers, 1, "{truth:?}");
            assert!(truth.usage_l > 0 && truth.usage_l < 2 * 600, "{truth:?}");
        }
    }

    #[test]
    fn faults_follow_their_rates_and_rules() {
        let config = SimConfig {
            meters: 40,
            messages_per_meter: 96,
            readings_per_message: 4,
            scenarios: ScenarioRates {
                duplicates: 10.0,
                out_of_order: 20.0,
                malformed: 5.0,
                leak: 25.0,
                ..ScenarioRates::default()
            },
            ..config()
        };
        let (mut duplicates, mut held, mut malformed) = (0, 0, Vec::new());
        for meter in 0..40 {
            let mut generator = meter_messages(&config, meter);
            let reorderable = Scenario::allows_reordering(generator.scenario());
            let mut uplink = Uplink::new(0, Vec::new());
            let mut held_previous = false;
            while let Some(faults) = generator.fill_next(&mut uplink) {
                duplicates += u32::from(faults.duplicate);
                if faults.held_back {
                    held += 1;
                    assert!(reorderable, "a scenario meter was reordered");
                    assert!(!held_previous, "two held back in a row");
                    assert!(uplink.seq < 96);
                    // The held message and its successor are daytime readings.
                    let first = uplink.readings[0].ts - DEFAULT_INTERVAL;
                    assert!((5..24).contains(&(first.rem_euclid(DAY_MS) / HOUR_MS)));
                    assert!(hour_of(uplink.readings[3].ts + 4 * DEFAULT_INTERVAL) >= 5);
                }
                held_previous = faults.held_back;
                malformed.extend(faults.malformed);
            }
        }
        let messages = 40 * 96;
        assert!(
            (messages / 14..=messages / 7).contains(&duplicates),
            "{duplicates}"
        );
        assert!(held > 200, "{held}");
        assert!((messages / 30..=messages / 12).contains(&(malformed.len() as u32)));
        for kind in Malformed::ALL {
            assert!(malformed.contains(&kind));
        }
    }

    #[test]
    fn messages_pass_the_contract_at_the_limits() {
        let now = START + 400 * DEFAULT_INTERVAL;
        let max = SimConfig {
            messages_per_meter: 1,
            readings_per_message: DEFAULT_MAX_READINGS,
            mac_keys: Some(MacKeys::PerMeter("secret".into())),
            ..config()
        };
        let uplink = meter_messages(&max, 0).next().unwrap();
        assert_eq!(uplink.readings.len(), 256);
        check_uplink(&uplink, &Limits::default(), now).unwrap();
        for binary in [false, true] {
            let payload = encode_payload(&uplink, binary);
            check_payload_size(payload.len(), &Limits::default()).unwrap();
            assert_eq!(codec::decode(&payload).unwrap(), uplink);
        }
        assert!(mac::verify(b"secret.m000000", &uplink));
    }

    #[test]
    fn fill_next_matches_the_iterator_and_stops() {
        let mut generator = meter_messages(&config(), 2);
        let mut uplink = Uplink::new(0, Vec::new());
        let expected: Vec<_> = meter_messages(&config(), 2).collect();
        for want in &expected {
            assert!(generator.fill_next(&mut uplink).is_some());
            assert_eq!(&uplink, want);
        }
        assert_eq!(generator.remaining(), 0);
        assert!(generator.fill_next(&mut uplink).is_none());
    }
}
