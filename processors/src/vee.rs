//! VEE — validation, estimation and editing, the first processor of the chain
//! (DESIGN §4). It decides each reading's [`Quality`] and its `interval_l` (litres
//! since the previous stored row), adds estimated rows for gaps, and keeps the
//! meter's *continuous register* (see [`meterflow_model::vee`]) that billing
//! subtracts.
//!
//! Rules, per meter, over the batch's readings sorted by `ts` (readings are compared
//! with the newest read accepted as actual, the *base*):
//! - **growth**: `reg ≥ base.reg` and the delta is plausible → `Actual`, interval =
//!   delta. *Plausible* means at most the meter size's overload flow Q4 over the
//!   elapsed time, plus `jump_slack_l` ([`MeterSize::max_flow_lph`]).
//! - **implausible jump**: a larger delta → `Suspect`; the base stays.
//! - **rollover**: `reg < base.reg`, and wrapping at the register's capacity
//!   (`10^register_digits` litres) gives a plausible delta → `Actual`, interval =
//!   `capacity - base.reg + reg`; a new register epoch adds `capacity` to the offset.
//! - **meter exchange** (no explicit marker exists, so a heuristic): a register that
//!   drops below `exchange_threshold_l` and is not a rollover is stored `Suspect` and
//!   kept as a candidate. If the next read grows plausibly from it (and not from the
//!   old base), the exchange is confirmed: a new epoch continues the continuous
//!   register from the old meter's last read (usage between that read and the
//!   removal is unknowable and not billed), the new meter counts from zero, and the
//!   candidate is re-emitted as `Actual` with interval = its register. Otherwise the
//!   candidate stays suspect (a one-off glitch).
//! - **other regression** → `Suspect`.
//! - **gap**: an actual read more than 1.5 expected intervals after the base gets
//!   `Estimated` rows on the expected grid between them, linear on the continuous
//!   register (at most `max_estimated_reads`; longer gaps are not filled, the next
//!   actual carries the whole delta). The gap is remembered.
//! - **late read inside the remembered gap** (a lost message resent): `Actual`, with
//!   the estimates on both sides re-spread and re-emitted, and the read after the gap
//!   re-emitted with its corrected interval. Storage upserts by (meter, ts), so a real
//!   read or a corrected estimate simply overwrites the row it replaces.
//! - **other late reads** (older than the base): `Actual` unless ahead of the base's
//!   continuous register (then `Suspect`); no interval (their predecessor is unknown).
//! - **duplicates**: a read with the `ts` of the base, the candidate or a gap end is
//!   dropped from the batch (already stored). Other duplicates of older reads cannot
//!   be told from late reads and are stored again without an interval.
//!
//! Suspect reads are stored but excluded from billing, usage and analytics.
//! Downstream processors count a row's interval only when the row is newer than what
//! they have seen: re-emitted corrections move litres between rows but never add any.

use std::sync::Arc;

use meterflow_model::processing::TenantProcessing;
use meterflow_model::vee::{
    EpochCause, EstimatedGap, MAX_REGISTER_EPOCHS, RegisterEpoch, ValidatedRead, VeeState,
};
use meterflow_model::{MeterBatch, MeterId, Outputs, Quality, Reading, SealedBatch, StoredReading};

use crate::Processor;
use crate::calendar::HOUR_MS;
use crate::tenants::TenantDirectory;

/// What VEE needs to know about one meter.
#[derive(Clone, Copy, Debug)]
pub struct MeterRules {
    /// Raw register value at which the register wraps to zero.
    pub capacity: u64,
    /// Overload flow of the meter's size, L/h.
    pub max_flow_lph: u64,
    pub jump_slack_l: u64,
    pub expected_interval_ms: i64,
    pub max_estimated_reads: u32,
    pub exchange_threshold_l: u64,
}

impl MeterRules {
    pub fn new(settings: &TenantProcessing, meter: &MeterId) -> Self {
        let size = settings.meter_size(meter);
        let vee = &settings.vee;
        Self {
            capacity: vee.register_capacity(size),
            max_flow_lph: size.max_flow_lph(),
            jump_slack_l: vee.jump_slack_l,
            expected_interval_ms: vee.expected_interval_ms,
            max_estimated_reads: vee.max_estimated_reads,
            exchange_threshold_l: vee.exchange_threshold_l,
        }
    }

    /// Most litres the meter can register in `dt_ms`.
    fn plausible_litres(&self, dt_ms: i64) -> u64 {
        let litres = u128::from(self.max_flow_lph) * dt_ms.max(0) as u128 / HOUR_MS as u128;
        u64::try_from(litres)
            .unwrap_or(u64::MAX)
            .saturating_add(self.jump_slack_l)
    }

    /// Whether `later` grew plausibly from `earlier` on the same register.
    fn grows_from(&self, earlier: &Reading, later: &Reading) -> bool {
        later.reg >= earlier.reg
            && later.reg - earlier.reg <= self.plausible_litres(later.ts - earlier.ts)
    }
}

/// The VEE stage; its per-meter state is `MeterState::vee`.
pub struct VeeProcessor {
    directory: Arc<TenantDirectory>,
    /// Rows being built for the current meter (swapped into its batch).
    output: Vec<StoredReading>,
    /// Late reads of the current meter that fall inside its remembered gap.
    late_in_gap: Vec<StoredReading>,
}

impl VeeProcessor {
    pub fn new(directory: Arc<TenantDirectory>) -> Self {
        Self {
            directory,
            output: Vec::new(),
            late_in_gap: Vec::new(),
        }
    }
}

impl Processor for VeeProcessor {
    fn name(&self) -> &'static str {
        "vee"
    }

    fn process(&mut self, batch: &mut SealedBatch, _out: &mut Outputs) {
        for meter in &mut batch.meters {
            let settings = &self.directory.get(&meter.key.tenant).settings;
            let rules = MeterRules::new(settings, &meter.key.meter);
            validate_meter(&rules, meter, &mut self.output, &mut self.late_in_gap);
        }
    }
}

/// Runs the module's rules over one meter's readings, replacing them with the
/// validated rows (estimates included).
pub fn validate_meter(
    rules: &MeterRules,
    meter: &mut MeterBatch,
    output: &mut Vec<StoredReading>,
    late_in_gap: &mut Vec<StoredReading>,
) {
    if meter.readings.is_empty() {
        return;
    }
    let order = |r: &StoredReading| (r.reading.ts, r.seq, r.received_at);
    if !meter.readings.is_sorted_by_key(order) {
        meter.readings.sort_unstable_by_key(order);
    }
    output.clear();
    late_in_gap.clear();
    let state = &mut meter.state.vee;
    let base_ts = state.last.map(|l| l.reading.ts);
    let gap = state.gap;
    let first_fresh = meter
        .readings
        .partition_point(|r| base_ts.is_some_and(|base| r.reading.ts < base));
    let mut validator = Validator {
        rules,
        state,
        out: output,
    };
    for stored in &meter.readings[..first_fresh] {
        let ts = stored.reading.ts;
        match gap {
            Some(g) if g.from.reading.ts < ts && ts < g.to.reading.ts => late_in_gap.push(*stored),
            Some(g) if ts == g.from.reading.ts || ts == g.to.reading.ts => {}
            _ => validator.late_outside_gap(stored),
        }
    }
    if let Some(gap) = gap
        && !late_in_gap.is_empty()
    {
        validator.fill_gap(gap, late_in_gap);
    }
    for stored in &meter.readings[first_fresh..] {
        validator.in_order(stored);
    }
    meter.readings.clear();
    std::mem::swap(&mut meter.readings, output);
}

struct Validator<'a> {
    rules: &'a MeterRules,
    state: &'a mut VeeState,
    out: &'a mut Vec<StoredReading>,
}

fn validated(stored: &StoredReading, creg: u64) -> ValidatedRead {
    ValidatedRead {
        reading: stored.reading,
        creg,
        seq: stored.seq,
        received_at: stored.received_at,
    }
}

impl Validator<'_> {
    fn emit(&mut self, read: &ValidatedRead, quality: Quality, interval_l: Option<u64>) {
        self.out.push(StoredReading {
            reading: read.reading,
            seq: read.seq,
            received_at: read.received_at,
            quality,
            interval_l,
        });
    }

    fn suspect(&mut self, stored: &StoredReading) {
        self.out.push(StoredReading {
            quality: Quality::Suspect,
            interval_l: None,
            ..*stored
        });
    }

    fn push_epoch(&mut self, epoch: RegisterEpoch) {
        self.state.epochs.push(epoch);
        if self.state.epochs.len() > MAX_REGISTER_EPOCHS {
            self.state.epochs.remove(0);
        }
    }

    /// A read at or after the base (ts-sorted, so bases only move forward).
    fn in_order(&mut self, stored: &StoredReading) {
        let r = stored.reading;
        let seen_before = self.state.newest_seen_ts;
        self.state.newest_seen_ts = seen_before.max(Some(r.ts));
        let Some(mut base) = self.state.last else {
            let creg = self.state.continuous_register(r.ts, r.reg);
            let first = validated(stored, creg);
            self.emit(&first, Quality::Actual, None);
            self.state.last = Some(first);
            return;
        };
        if r.ts <= base.reading.ts {
            return; // the base itself, re-sent: already stored
        }
        if let Some(candidate) = self.state.exchange_candidate {
            if r.ts == candidate.reading.ts {
                return; // the candidate re-sent
            }
            if r.ts > candidate.reading.ts {
                self.state.exchange_candidate = None;
                if self.rules.grows_from(&candidate.reading, &r)
                    && !self.rules.grows_from(&base.reading, &r)
                {
                    base = self.confirm_exchange(base, candidate);
                }
            }
        }
        let limit = self.rules.plausible_litres(r.ts - base.reading.ts);
        if r.reg >= base.reading.reg {
            let delta = r.reg - base.reading.reg;
            if delta <= limit {
                self.accept(stored, base, delta, seen_before);
            } else {
                self.suspect(stored);
            }
        } else if let Some(wrapped) = self.rollover_delta(&base.reading, &r)
            && wrapped <= limit
        {
            let offset = self.state.current_offset();
            self.push_epoch(RegisterEpoch {
                cause: EpochCause::Rollover,
                after_ts: base.reading.ts,
                after_reg: base.reading.reg,
                first_ts: r.ts,
                offset: offset.saturating_add(self.rules.capacity),
                previous_offset: offset,
            });
            self.accept(stored, base, wrapped, seen_before);
        } else {
            if r.reg < self.rules.exchange_threshold_l {
                // Its continuous register is unknown until the exchange is confirmed.
                self.state.exchange_candidate = Some(validated(stored, 0));
            }
            self.suspect(stored);
        }
    }

    /// Litres across a wrap at the register capacity, when both registers fit in it.
    fn rollover_delta(&self, base: &Reading, r: &Reading) -> Option<u64> {
        let capacity = self.rules.capacity;
        (base.reg < capacity && r.reg < capacity).then(|| capacity - base.reg + r.reg)
    }

    /// Starts a new epoch at the candidate and re-emits it as actual; returns the new
    /// base.
    fn confirm_exchange(&mut self, base: ValidatedRead, candidate: ValidatedRead) -> ValidatedRead {
        let offset = base.creg;
        self.push_epoch(RegisterEpoch {
            cause: EpochCause::Exchange,
            after_ts: base.reading.ts,
            after_reg: base.reading.reg,
            first_ts: candidate.reading.ts,
            offset,
            previous_offset: self.state.current_offset(),
        });
        let new_base = ValidatedRead {
            creg: offset.saturating_add(candidate.reading.reg),
            ..candidate
        };
        self.emit(&new_base, Quality::Actual, Some(candidate.reading.reg));
        self.state.last = Some(new_base);
        self.state.gap = None;
        new_base
    }

    /// Accepts `stored`, `delta` litres after `base`, filling a gap before it (after
    /// the newest read seen, `seen_before`, suspect or not).
    fn accept(
        &mut self,
        stored: &StoredReading,
        base: ValidatedRead,
        delta: u64,
        seen_before: Option<i64>,
    ) {
        let read = validated(stored, base.creg.saturating_add(delta));
        let not_before = seen_before.unwrap_or(base.reading.ts);
        let (estimates, previous_creg) = self.estimate_between(&base, &read, not_before);
        if estimates > 0 {
            self.state.gap = Some(EstimatedGap {
                from: base,
                to: read,
            });
        }
        self.emit(&read, Quality::Actual, Some(read.creg - previous_creg));
        self.state.last = Some(read);
    }

    /// Emits estimates on the expected grid strictly between `from` and `to`, none
    /// within half an interval of `to` or of a read at `not_before`; returns how many
    /// and the continuous register of the last row before `to`.
    fn estimate_between(
        &mut self,
        from: &ValidatedRead,
        to: &ValidatedRead,
        not_before: i64,
    ) -> (u64, u64) {
        let step = self.rules.expected_interval_ms;
        let span = to.reading.ts - from.reading.ts;
        if span * 2 <= step * 3 || to.creg < from.creg {
            return (0, from.creg);
        }
        let slots = ((span - step / 2 - 1) / step) as u64;
        if slots == 0 || slots > u64::from(self.rules.max_estimated_reads) {
            return (0, from.creg);
        }
        let litres = to.creg - from.creg;
        let avg_flow_lph =
            u32::try_from(u128::from(litres) * HOUR_MS as u128 / span as u128).unwrap_or(u32::MAX);
        let rev_growth = to.reading.rev.saturating_sub(from.reading.rev);
        let share =
            |total: u64, elapsed: i64| (u128::from(total) * elapsed as u128 / span as u128) as u64;
        let mut previous = from.creg;
        let mut emitted = 0;
        for k in 1..=slots as i64 {
            let ts = from.reading.ts + k * step;
            if ts < not_before + step / 2 {
                continue;
            }
            let creg = from.creg + share(litres, ts - from.reading.ts);
            let mut reg = from.reading.reg.saturating_add(creg - from.creg);
            if reg >= self.rules.capacity && from.reading.reg < self.rules.capacity {
                reg -= self.rules.capacity; // the estimate lies past a rollover
            }
            self.out.push(StoredReading {
                reading: Reading {
                    ts,
                    reg,
                    rev: from.reading.rev + share(rev_growth, ts - from.reading.ts),
                    flow: avg_flow_lph,
                    temp: None,
                },
                seq: to.seq,
                received_at: to.received_at,
                quality: Quality::Estimated,
                interval_l: Some(creg - previous),
            });
            previous = creg;
            emitted += 1;
        }
        (emitted, previous)
    }

    /// Late actual reads inside the remembered gap (ts-sorted): each replaces an
    /// estimate; the estimates around them are re-spread.
    fn fill_gap(&mut self, gap: EstimatedGap, late: &[StoredReading]) {
        let mut from = gap.from;
        for stored in late {
            let r = stored.reading;
            if r.ts <= from.reading.ts {
                continue; // duplicate within the resent reads
            }
            let creg = self.state.continuous_register(r.ts, r.reg);
            let fits = creg >= from.creg
                && creg <= gap.to.creg
                && creg - from.creg <= self.rules.plausible_litres(r.ts - from.reading.ts);
            if !fits {
                self.suspect(stored);
                continue;
            }
            let read = validated(stored, creg);
            let (_, previous) = self.estimate_between(&from, &read, from.reading.ts);
            self.emit(&read, Quality::Actual, Some(creg - previous));
            from = read;
        }
        if from != gap.from {
            let (_, previous) = self.estimate_between(&from, &gap.to, from.reading.ts);
            self.emit(&gap.to, Quality::Actual, Some(gap.to.creg - previous));
            self.state.gap = Some(EstimatedGap { from, to: gap.to });
        }
    }

    /// A late read outside the remembered gap: stored, without an interval.
    fn late_outside_gap(&mut self, stored: &StoredReading) {
        let r = stored.reading;
        let creg = self.state.continuous_register(r.ts, r.reg);
        let ahead_of_base = self.state.last.is_some_and(|base| creg > base.creg);
        let quality = if ahead_of_base {
            Quality::Suspect
        } else {
            Quality::Actual
        };
        self.emit(&validated(stored, creg), quality, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{DAY0, batch_of, directory, stored};
    use meterflow_model::MeterState;

    const HOUR: i64 = HOUR_MS;

    fn run(state: MeterState, readings: Vec<StoredReading>) -> (Vec<StoredReading>, MeterState) {
        let mut batch = batch_of(state, readings);
        VeeProcessor::new(directory()).process(&mut batch, &mut Outputs::default());
        let meter = batch.meters.pop().unwrap();
        (meter.readings, meter.state)
    }

    fn summary(rows: &[StoredReading]) -> Vec<(i64, Quality, Option<u64>)> {
        rows.iter()
            .map(|r| ((r.reading.ts - DAY0) / 60_000, r.quality, r.interval_l))
            .collect()
    }

    fn hourly(regs: &[u64]) -> Vec<StoredReading> {
        regs.iter()
            .enumerate()
            .map(|(i, reg)| stored(DAY0 + i as i64 * HOUR, *reg))
            .collect()
    }

    #[test]
    fn a_rollover_is_usage_across_the_wrap() {
        // Default: 8 digits, wraps at 100,000,000 L.
        let (rows, state) = run(MeterState::default(), hourly(&[99_999_900, 50, 120]));
        assert_eq!(
            summary(&rows),
            vec![
                (0, Quality::Actual, None),
                (60, Quality::Actual, Some(150)),
                (120, Quality::Actual, Some(70))
            ]
        );
        assert_eq!(state.vee.last.unwrap().creg, 100_000_120);
        // A late read from before the wrap still maps to the old epoch.
        assert_eq!(
            state
                .vee
                .continuous_register(DAY0 + 30 * 60_000, 99_999_950),
            99_999_950
        );
    }

    #[test]
    fn regressions_and_implausible_jumps_are_suspect() {
        // 3,125 L/h is a DN15's overload flow: 7,000 L in two hours cannot be water.
        let (rows, state) = run(
            MeterState::default(),
            hourly(&[10_000, 9_000, 17_000, 10_100]),
        );
        assert_eq!(
            summary(&rows),
            vec![
                (0, Quality::Actual, None),
                (60, Quality::Suspect, None),
                (120, Quality::Suspect, None),
                (180, Quality::Actual, Some(100))
            ]
        );
        assert_eq!(state.vee.last.unwrap().reading.reg, 10_100);
    }

    #[test]
    fn gaps_get_linear_estimates_that_late_reads_replace() {
        // Reads at 00:00 and 04:00: 01:00, 02:00, 03:00 are estimated.
        let (rows, state) = run(
            MeterState::default(),
            vec![stored(DAY0, 1_000), stored(DAY0 + 4 * HOUR, 1_400)],
        );
        assert_eq!(
            summary(&rows),
            vec![
                (0, Quality::Actual, None),
                (60, Quality::Estimated, Some(100)),
                (120, Quality::Estimated, Some(100)),
                (180, Quality::Estimated, Some(100)),
                (240, Quality::Actual, Some(100))
            ]
        );
        // The 01:00 read arrives late: the rest of the gap is re-spread.
        let (rows, state) = run(state, vec![stored(DAY0 + HOUR, 1_250)]);
        assert_eq!(
            summary(&rows),
            vec![
                (60, Quality::Actual, Some(250)),
                (120, Quality::Estimated, Some(50)),
                (180, Quality::Estimated, Some(50)),
                (240, Quality::Actual, Some(50))
            ]
        );
        assert_eq!(state.vee.gap.unwrap().from.reading.ts, DAY0 + HOUR);
    }

    #[test]
    fn a_meter_exchange_continues_usage_from_the_new_register() {
        let (rows, state) = run(MeterState::default(), hourly(&[5_000_000, 5_000_100, 7]));
        assert_eq!(rows[2].quality, Quality::Suspect, "unconfirmed yet");
        let (rows, state) = run(state, vec![stored(DAY0 + 3 * HOUR, 57)]);
        assert_eq!(
            summary(&rows),
            vec![
                (120, Quality::Actual, Some(7)),
                (180, Quality::Actual, Some(50))
            ]
        );
        assert_eq!(state.vee.last.unwrap().creg, 5_000_157);
    }

    #[test]
    fn a_one_off_drop_to_zero_is_not_an_exchange() {
        let (rows, state) = run(MeterState::default(), hourly(&[5_000_000, 0, 5_000_200]));
        assert_eq!(
            summary(&rows),
            vec![
                (0, Quality::Actual, None),
                (60, Quality::Suspect, None),
                (120, Quality::Actual, Some(200))
            ]
        );
        assert!(state.vee.epochs.is_empty());
    }

    #[test]
    fn the_newest_read_resent_is_dropped() {
        let (_, state) = run(MeterState::default(), hourly(&[100, 200]));
        let (rows, _) = run(state, vec![stored(DAY0 + HOUR, 200)]);
        assert!(rows.is_empty());
    }
}
