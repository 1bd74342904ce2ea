//! The ground truth: the exact uplinks each meter sends, as a pure function of the
//! resolved [`SimConfig`] and the meter's index. Tests regenerate them to compare with
//! what the service stored, so nothing here reads a clock or depends on scheduling.
//!
//! Per meter (absolute index `i`, id `m{i:06}`):
//! - messages have `seq` 1, 2, …, `messages_per_meter`; message `s` carries readings
//!   `(s-1)·K .. s·K` of the meter's reading stream (K = `readings_per_message`);
//! - reading `j` is stamped `start_ts_ms + j·interval_ms` (strictly ascending, and
//!   across messages too);
//! - `reg` is a cumulative forward register in litres: it starts at a seeded value of
//!   10–100 m³ and grows by the interval's usage, so it never decreases; `rev` is 0;
//! - usage follows a household's diurnal curve ([`HOURLY_SHAPE`], UTC hours): a
//!   seeded daily volume of 120–600 L, spread by hour, with a high chance of zero
//!   usage at night and a low one at the morning and evening peaks;
//! - `flow` is a plausible maximum flow for the interval in L/h: 0 without usage,
//!   otherwise 1.5–6× the interval's mean flow, never below the mean, capped at a
//!   residential meter's nominal flow;
//! - `temp` is a random walk in 8.0–20.0 °C (80..=200 in 0.1 °C);
//! - `battery` is fixed per meter, `rssi` drawn per message, `flags` empty; `mac` is
//!   set when the config has [`crate::MacKeys`].
//!
//! Randomness comes from SplitMix64 (below), a fixed algorithm with integer-only use,
//! so the same config gives the same bytes on every platform and every build.

use meterflow_model::codec;
use meterflow_model::mac;
use meterflow_model::time::DAY_MS;
use meterflow_model::uplink::{Flags, Reading, UPLINK_VERSION, Uplink};

use crate::config::{SimConfig, meter_id_string};

const HOUR_MS: i64 = 3_600_000;

/// Relative water use per UTC hour of a residential household: a night trough, a
/// morning peak (showers) and a longer evening peak (cooking, washing).
pub const HOURLY_SHAPE: [u32; 24] = [
    3, 2, 1, 1, 2, 6, 30, 60, 55, 40, 32, 30, 34, 30, 26, 26, 32, 45, 58, 60, 50, 40, 24, 10,
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

/// Daily household volume, litres: one to four people at 100–150 L each.
const DAILY_LITRES: (u64, u64) = (120, 600);
/// Register at the first reading, litres: a meter a few years into service.
const START_REGISTER_L: (u64, u64) = (10_000, 99_999);
/// Chance of an interval without any use, per mille, at the busiest and the quietest
/// hour; in between it scales with the hour's share of use.
const ZERO_USE_PERMILLE: (u64, u64) = (100, 900);
/// Peak-to-mean flow within an interval, percent: taps run in short bursts.
const PEAK_FACTOR_PERCENT: (u64, u64) = (150, 600);
/// Highest flow reported, L/h: Q3 of a DN15–DN20 residential meter is 2.5–4 m³/h.
const FLOW_CAP_LPH: u64 = 3_000;
/// Water temperature range, 0.1 °C: mains water between 8 and 20 °C.
const TEMP_RANGE: (i16, i16) = (80, 200);
/// Starting temperature range, 0.1 °C.
const TEMP_START: (u64, u64) = (100, 160);
const BATTERY_PERCENT: (u64, u64) = (60, 100);
const RSSI_DBM: (u64, u64) = (70, 110);

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and fixed forever, which is what
/// a ground truth needs.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in `lo..=hi` (Lemire's multiply-shift; the tiny bias is irrelevant here).
    fn between(&mut self, (lo, hi): (u64, u64)) -> u64 {
        let span = hi - lo + 1;
        lo + ((u128::from(self.next()) * u128::from(span)) >> 64) as u64
    }

    /// True with probability `permille`/1000.
    fn chance(&mut self, permille: u64) -> bool {
        self.between((0, 999)) < permille
    }
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The messages of one meter, generated lazily in `seq` order.
#[derive(Clone, Debug)]
pub struct MeterMessages {
    rng: SplitMix64,
    /// Seq of the next message.
    next_seq: u64,
    last_seq: u64,
    readings_per_message: usize,
    /// Timestamp of the next reading.
    next_ts: i64,
    interval_ms: i64,
    register: u64,
    temp: i16,
    daily_litres: u64,
    battery: u8,
    mac_key: Option<Vec<u8>>,
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
    let fleet = SplitMix64(config.seed).next();
    let mut rng = SplitMix64(fleet ^ mix64(meter_index as u64));
    let register = rng.between(START_REGISTER_L);
    let daily_litres = rng.between(DAILY_LITRES);
    // The ranges fit the target types, so these conversions cannot saturate.
    let temp = i16::try_from(rng.between(TEMP_START)).unwrap_or(TEMP_RANGE.0);
    let battery = u8::try_from(rng.between(BATTERY_PERCENT)).unwrap_or(100);
    let mac_key = config
        .mac_keys
        .as_ref()
        .map(|keys| keys.key_for(&meter_id_string(meter_index)));
    MeterMessages {
        rng,
        next_seq: 1,
        last_seq: config.messages_per_meter,
        readings_per_message: config.readings_per_message,
        next_ts: start_ts,
        interval_ms: config.interval_ms,
        register,
        temp,
        daily_litres,
        battery,
        mac_key,
    }
}

impl MeterMessages {
    /// Messages not generated yet.
    pub fn remaining(&self) -> u64 {
        self.last_seq + 1 - self.next_seq
    }

    /// Writes the next message into `uplink`, reusing its readings buffer. `false`
    /// when the meter has sent everything (`uplink` is then untouched).
    pub fn fill_next(&mut self, uplink: &mut Uplink) -> bool {
        if self.next_seq > self.last_seq {
            return false;
        }
        uplink.v = UPLINK_VERSION;
        uplink.seq = self.next_seq;
        uplink.readings.clear();
        for _ in 0..self.readings_per_message {
            let reading = self.next_reading();
            uplink.readings.push(reading);
        }
        uplink.flags = Flags::empty();
        uplink.battery = Some(self.battery);
        let rssi = self.rng.between(RSSI_DBM);
        uplink.rssi = Some(-i16::try_from(rssi).unwrap_or(110));
        uplink.mac = None;
        if let Some(key) = &self.mac_key {
            mac::sign(key, uplink);
        }
        self.next_seq += 1;
        true
    }

    fn next_reading(&mut self) -> Reading {
        let ts = self.next_ts;
        self.next_ts = ts.saturating_add(self.interval_ms);
        // The interval ending at `ts` lies in the hour of its last millisecond.
        let hour = ((ts - 1).rem_euclid(DAY_MS) / HOUR_MS) as usize;
        let weight = u64::from(HOURLY_SHAPE[hour]);

        let zero_permille = ZERO_USE_PERMILLE.0
            + (ZERO_USE_PERMILLE.1 - ZERO_USE_PERMILLE.0) * (SHAPE_MAX - weight) / SHAPE_MAX;
        let used = !self.rng.chance(zero_permille);
        // Two draws either way, so the stream does not shift with the outcome.
        let (u1, u2) = (self.rng.between((0, 999)), self.rng.between((0, 999)));
        let peak_percent = self.rng.between(PEAK_FACTOR_PERCENT);
        let usage = if used {
            // Expected millilitres in this interval, then scaled up because the
            // zero-use intervals carry none of it.
            let expected_ml = u128::from(self.daily_litres)
                * 1000
                * u128::from(weight)
                * self.interval_ms as u128
                / (u128::from(SHAPE_SUM) * HOUR_MS as u128);
            let mean_ml = expected_ml * 1000 / u128::from(1000 - zero_permille);
            // u1 + u2 is triangular on 0..=1998 with mean 999: mean_ml on average.
            let ml = mean_ml * u128::from(u1 + u2) / 999;
            u64::try_from((ml + 500) / 1000).unwrap_or(u64::MAX)
        } else {
            0
        };
        self.register = self.register.saturating_add(usage);

        let flow = if usage == 0 {
            0
        } else {
            let interval = self.interval_ms as u128;
            let mean_lph = (u128::from(usage) * HOUR_MS as u128).div_ceil(interval);
            let peak = (mean_lph * u128::from(peak_percent) / 100).min(u128::from(FLOW_CAP_LPH));
            u32::try_from(peak.max(mean_lph)).unwrap_or(u32::MAX)
        };

        let step = i16::try_from(self.rng.between((0, 4))).unwrap_or(2) - 2;
        self.temp = (self.temp + step).clamp(TEMP_RANGE.0, TEMP_RANGE.1);

        Reading {
            ts,
            reg: self.register,
            rev: 0,
            flow,
            temp: Some(self.temp),
        }
    }
}

impl Iterator for MeterMessages {
    type Item = Uplink;

    fn next(&mut self) -> Option<Uplink> {
        let mut uplink = Uplink::new(0, Vec::with_capacity(self.readings_per_message));
        self.fill_next(&mut uplink).then_some(uplink)
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
    use meterflow_model::check::{check_payload_size, check_uplink};
    use meterflow_model::limits::{DEFAULT_MAX_READINGS, Limits};

    const START: i64 = 1_763_800_000_000 - 1_763_800_000_000 % DEFAULT_INTERVAL;
    const DEFAULT_INTERVAL: i64 = crate::config::DEFAULT_INTERVAL_MS;

    fn config() -> SimConfig {
        SimConfig {
            meters: 3,
            messages_per_meter: 50,
            readings_per_message: 24,
            start_ts_ms: Some(START),
            ..SimConfig::default()
        }
    }

    #[test]
    fn same_config_same_messages() {
        let a: Vec<_> = meter_messages(&config(), 1).collect();
        let b: Vec<_> = meter_messages(&config(), 1).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 50);
        // Another meter or another seed differs.
        assert_ne!(a, meter_messages(&config(), 2).collect::<Vec<_>>());
        let reseeded = SimConfig {
            seed: 7,
            ..config()
        };
        assert_ne!(a, meter_messages(&reseeded, 1).collect::<Vec<_>>());
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
        assert_eq!(first.readings[0].reg, 40_900, "{first:?}");
        assert_eq!(digest, 9_696_521_424_275_524_386, "{first:?}");
    }

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
        // Many days of one meter: plausible totals, zero-use intervals at night, and
        // flow consistent with usage.
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
            assert!(u64::from(pair[1].flow) <= FLOW_CAP_LPH.max(used * 4));
            let hour = (pair[1].ts - 1).rem_euclid(DAY_MS) / HOUR_MS;
            if (1..=4).contains(&hour) {
                night.0 += 1;
                night.1 += u32::from(used == 0);
            }
        }
        assert!(night.1 * 10 > night.0 * 7, "night zero-use {night:?}");
        assert!(readings.first().unwrap().reg >= 10_000);
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
            assert!(generator.fill_next(&mut uplink));
            assert_eq!(&uplink, want);
        }
        assert_eq!(generator.remaining(), 0);
        assert!(!generator.fill_next(&mut uplink));
    }
}
