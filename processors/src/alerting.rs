//! Alerting: alert episodes from device flags and from rules recomputed over
//! interval data (DESIGN §4). Thresholds are per tenant ([`AlertRules`], defaults
//! explained there).
//!
//! Episodes: at most one open per (meter, kind); an episode is *opened*, then
//! *updated* when another source confirms it or, while its condition holds, at most
//! every `update_interval_ms`, and *cleared* when no source holds any more. An
//! episode has two possible sources — the device's own flag and a rule — and stays
//! open while either holds.
//!
//! Leak, burst and no-consumption are consumption rules: a district's bulk (inflow)
//! meter (`bulk_meters`) is exempt from them — its flow never stops and is no one's use.
//!
//! Rules, over the meter's non-suspect rows newer than the last one seen (late rows
//! and VEE corrections are ignored; estimated rows count, they carry the gap's
//! litres), where an interval is the time and litres between consecutive rows:
//! - **leak**: no complete hour of zero consumption in `leak_window_ms` (a run of
//!   zero-litre intervals spanning ≥ 1 h is a zero hour); clears at the next one.
//!   Only evidence counts: actual reads at most `leak_evidence_interval_ms` apart.
//!   An estimated row or an outage restarts the window and releases the rule.
//! - **burst**: intervals whose average flow is ≥ `burst_flow_lph`, in a run lasting
//!   ≥ `burst_duration_ms`; clears at the first interval below it.
//! - **backflow**: the reverse register grew by ≥ `backflow_min_l`; clears once it
//!   has not grown for `backflow_clear_ms`.
//! - **no consumption**: no litre for `no_consumption_days`; clears on consumption.
//! - **freeze**: a water temperature ≤ `freeze_temp`; clears at ≥ `freeze_clear_temp`.
//! - **low battery**: the status's battery ≤ `low_battery_pct`; clears at ≥
//!   `low_battery_clear_pct`.
//! - **no communication**: no message for `no_communication_ms` — only time can show
//!   it, so the sweep ([`AlertingProcessor::sweep`]) opens it; any message clears it.
//! - **device flags** (leak, burst, backflow, tamper, magnetic, cut cable, dry pipe,
//!   low battery, freeze, register error): every message's status counts, folded by
//!   reading time — a raised flag opens its kind, a newer status without it
//!   releases it. A status older than the newest one folded (late) only adds: a
//!   flag it raises at a time no open episode covers becomes a closed episode from
//!   its time to the next thing known (the open episode's start, or the newest
//!   status). Exact equality with in-order arrival would need the status history;
//!   this keeps every raised flag visible and never strands an episode open.
//!
//! Event times are data times (the reading's or status's `ts`), except for
//! no-communication, which uses the service clock of the sweep and the message's
//! `received_at`.

use std::sync::Arc;

use meterflow_model::alert::{AlertState, OpenAlert, SOURCE_DEVICE, SOURCE_RULE};
use meterflow_model::{
    AlertEvent, AlertKind, AlertRules, DeviceFlag, DeviceStatus, EpisodeState, MeterKey,
    MeterState, Outputs, Quality, SealedBatch, StoredReading,
};

use crate::Processor;
use crate::calendar::HOUR_MS;
use crate::tenants::TenantDirectory;

const DAY_MS: i64 = 24 * HOUR_MS;

/// Device flags and the alert kind each opens.
const FLAG_KINDS: [(DeviceFlag, AlertKind); 10] = [
    (DeviceFlag::Leak, AlertKind::Leak),
    (DeviceFlag::Burst, AlertKind::Burst),
    (DeviceFlag::Backflow, AlertKind::Backflow),
    (DeviceFlag::Tamper, AlertKind::Tamper),
    (DeviceFlag::Magnetic, AlertKind::Magnetic),
    (DeviceFlag::CutCable, AlertKind::CutCable),
    (DeviceFlag::DryPipe, AlertKind::DryPipe),
    (DeviceFlag::LowBattery, AlertKind::LowBattery),
    (DeviceFlag::Freeze, AlertKind::Freeze),
    (DeviceFlag::RegisterError, AlertKind::RegisterError),
];

/// The alerting stage; its per-meter state is `MeterState::alerts`.
pub struct AlertingProcessor {
    directory: Arc<TenantDirectory>,
}

impl AlertingProcessor {
    pub fn with_directory(directory: Arc<TenantDirectory>) -> Self {
        Self { directory }
    }

    /// Opens no-communication episodes for meters silent for too long at `now_ms`
    /// (service clock). Returns the meters whose state changed: persist them.
    pub fn sweep<'a>(
        &mut self,
        now_ms: i64,
        states: impl Iterator<Item = (&'a MeterKey, &'a mut MeterState)>,
        out: &mut Outputs,
    ) -> Vec<MeterKey> {
        states
            .filter_map(|(key, state)| {
                self.sweep_meter(now_ms, key, state, out)
                    .then(|| key.clone())
            })
            .collect()
    }
}

impl Processor for AlertingProcessor {
    fn name(&self) -> &'static str {
        "alerting"
    }

    fn process(&mut self, batch: &mut SealedBatch, out: &mut Outputs) {
        for meter in &mut batch.meters {
            let settings = &self.directory.get(&meter.key.tenant).settings;
            let rules = &settings.alert_rules;
            // A bulk meter's flow is a district's inflow: it never stops and is not
            // a customer's use, so the consumption rules do not apply to it.
            let consumer = !settings.is_bulk(&meter.key.meter);
            let mut log = EpisodeLog {
                key: &meter.key,
                update_interval_ms: rules.update_interval_ms,
                events: &mut out.alerts,
            };
            let alerts = &mut meter.state.alerts;
            note_contact(&mut log, alerts, &meter.readings, &meter.statuses);
            for row in &meter.readings {
                fold_row(&mut log, rules, alerts, row, consumer);
            }
            // By reading time (in place; stable: equal times keep their arrival order).
            meter.statuses.sort_by_key(|s| s.ts);
            for status in &meter.statuses {
                fold_status(&mut log, rules, alerts, status);
            }
        }
    }

    fn sweep_meter(
        &mut self,
        now_ms: i64,
        key: &MeterKey,
        state: &mut MeterState,
        out: &mut Outputs,
    ) -> bool {
        let rules = &self.directory.get(&key.tenant).settings.alert_rules;
        let alerts = &mut state.alerts;
        let Some(seen) = alerts.last_seen_at else {
            return false;
        };
        let silent = now_ms - seen;
        if silent < rules.no_communication_ms {
            return false;
        }
        let mut log = EpisodeLog {
            key,
            update_interval_ms: rules.update_interval_ms,
            events: &mut out.alerts,
        };
        log.raise(
            &mut alerts.open,
            AlertKind::NoCommunication,
            SOURCE_RULE,
            now_ms,
            || format!("no message for {} h", silent / HOUR_MS),
        )
    }
}

/// Opens, updates and clears episodes, recording each step.
struct EpisodeLog<'a> {
    key: &'a MeterKey,
    update_interval_ms: i64,
    events: &'a mut Vec<AlertEvent>,
}

impl EpisodeLog<'_> {
    fn record(&mut self, alert: &OpenAlert, state: EpisodeState, at: i64, detail: String) {
        self.events.push(AlertEvent {
            tenant: self.key.tenant.to_string(),
            meter: self.key.meter.to_string(),
            kind: alert.kind,
            priority: alert.kind.priority(),
            state,
            opened_at: alert.opened_at,
            at,
            detail,
        });
    }

    /// `source` holds for `kind` at `at`. Returns whether anything changed.
    fn raise(
        &mut self,
        open: &mut Vec<OpenAlert>,
        kind: AlertKind,
        source: u8,
        at: i64,
        detail: impl FnOnce() -> String,
    ) -> bool {
        if let Some(alert) = open.iter_mut().find(|a| a.kind == kind) {
            let new_source = alert.sources & source == 0;
            if !new_source && at - alert.last_event_at < self.update_interval_ms {
                return false;
            }
            alert.sources |= source;
            alert.last_event_at = alert.last_event_at.max(at);
            let alert = *alert;
            self.record(&alert, EpisodeState::Updated, at, detail());
        } else {
            let alert = OpenAlert {
                kind,
                opened_at: at,
                last_event_at: at,
                sources: source,
            };
            open.push(alert);
            self.record(&alert, EpisodeState::Opened, at, detail());
        }
        true
    }

    /// `source` no longer holds for `kind`; the episode clears when no source does.
    fn release(
        &mut self,
        open: &mut Vec<OpenAlert>,
        kind: AlertKind,
        source: u8,
        at: i64,
        detail: impl FnOnce() -> String,
    ) -> bool {
        let Some(index) = open.iter().position(|a| a.kind == kind) else {
            return false;
        };
        if open[index].sources & source == 0 {
            return false;
        }
        open[index].sources &= !source;
        if open[index].sources == 0 {
            let alert = open.remove(index);
            self.record(&alert, EpisodeState::Cleared, at, detail());
        }
        true
    }
}

/// Any message proves the meter can talk: it clears no-communication.
fn note_contact(
    log: &mut EpisodeLog<'_>,
    alerts: &mut AlertState,
    readings: &[StoredReading],
    statuses: &[DeviceStatus],
) {
    let newest = readings
        .iter()
        .map(|r| r.received_at)
        .chain(statuses.iter().map(|s| s.received_at))
        .max();
    if let Some(seen) = newest {
        alerts.last_seen_at = alerts.last_seen_at.max(Some(seen));
        log.release(
            &mut alerts.open,
            AlertKind::NoCommunication,
            SOURCE_RULE,
            seen,
            || "meter reported again".into(),
        );
    }
}

fn fold_row(
    log: &mut EpisodeLog<'_>,
    rules: &AlertRules,
    alerts: &mut AlertState,
    row: &StoredReading,
    consumer: bool,
) {
    if row.quality == Quality::Suspect {
        return;
    }
    let reading = row.reading;
    let ts = reading.ts;
    if let Some(temp) = reading.temp {
        if temp <= rules.freeze_temp {
            log.raise(&mut alerts.open, AlertKind::Freeze, SOURCE_RULE, ts, || {
                format!("water at {:.1} °C", f64::from(temp) / 10.0)
            });
        } else if temp >= rules.freeze_clear_temp {
            log.release(&mut alerts.open, AlertKind::Freeze, SOURCE_RULE, ts, || {
                format!("water back at {:.1} °C", f64::from(temp) / 10.0)
            });
        }
    }
    let Some(last_ts) = alerts.last_ts else {
        alerts.first_ts = Some(ts);
        alerts.last_ts = Some(ts);
        alerts.last_rev = Some(reading.rev);
        return;
    };
    if ts <= last_ts {
        return;
    }
    let litres = row.interval_l.unwrap_or(0);
    let first_ts = alerts.first_ts.unwrap_or(last_ts);
    if litres > 0 {
        alerts.last_consumption_ts = Some(ts);
    }
    if consumer {
        fold_leak(log, rules, alerts, row.quality, last_ts, ts, litres);
    }

    if consumer {
        fold_burst(log, rules, alerts, last_ts, ts, litres);
    }

    // Backflow: the reverse register grows.
    let reverse_growth = alerts
        .last_rev
        .map_or(0, |rev| reading.rev.saturating_sub(rev));
    if reverse_growth > 0 {
        alerts.backflow_l = alerts.backflow_l.saturating_add(reverse_growth);
        alerts.last_backflow_ts = Some(ts);
        if alerts.backflow_l >= rules.backflow_min_l {
            let total = alerts.backflow_l;
            log.raise(
                &mut alerts.open,
                AlertKind::Backflow,
                SOURCE_RULE,
                ts,
                || format!("reverse register grew {total} L"),
            );
        }
    } else if alerts
        .last_backflow_ts
        .is_some_and(|t| ts - t >= rules.backflow_clear_ms)
    {
        alerts.backflow_l = 0;
        alerts.last_backflow_ts = None;
        log.release(
            &mut alerts.open,
            AlertKind::Backflow,
            SOURCE_RULE,
            ts,
            || "reverse register steady".into(),
        );
    }

    if consumer {
        fold_idle(log, rules, alerts, ts, first_ts);
    }

    alerts.last_ts = Some(ts);
    alerts.last_rev = Some(reading.rev);
}

/// Burst: intervals whose average flow is at or above `burst_flow_lph`, in a run
/// lasting `burst_duration_ms`; released at the first interval below it.
fn fold_burst(
    log: &mut EpisodeLog<'_>,
    rules: &AlertRules,
    alerts: &mut AlertState,
    last_ts: i64,
    ts: i64,
    litres: u64,
) {
    let elapsed = ts - last_ts;
    let average_lph = u128::from(litres) * HOUR_MS as u128 / elapsed as u128;
    if average_lph >= u128::from(rules.burst_flow_lph) {
        let since = *alerts.burst_since.get_or_insert(last_ts);
        if ts - since >= rules.burst_duration_ms {
            log.raise(&mut alerts.open, AlertKind::Burst, SOURCE_RULE, ts, || {
                format!(
                    "average flow {average_lph} L/h for {} min",
                    (ts - since) / 60_000
                )
            });
        }
    } else {
        alerts.burst_since = None;
        log.release(&mut alerts.open, AlertKind::Burst, SOURCE_RULE, ts, || {
            format!("flow down to {average_lph} L/h")
        });
    }
}

/// No consumption for `no_consumption_days` (since the first read when nothing was
/// ever used); released when water is used again.
fn fold_idle(
    log: &mut EpisodeLog<'_>,
    rules: &AlertRules,
    alerts: &mut AlertState,
    ts: i64,
    first_ts: i64,
) {
    let consumed_at = alerts.last_consumption_ts.unwrap_or(first_ts);
    let idle = ts - consumed_at;
    if idle >= i64::from(rules.no_consumption_days) * DAY_MS {
        log.raise(
            &mut alerts.open,
            AlertKind::NoConsumption,
            SOURCE_RULE,
            ts,
            || format!("no consumption for {} days", idle / DAY_MS),
        );
    } else {
        log.release(
            &mut alerts.open,
            AlertKind::NoConsumption,
            SOURCE_RULE,
            ts,
            || "consumption resumed".into(),
        );
    }
}

/// Leak: no zero-consumption hour for `leak_window_ms` — counted only over evidence.
/// Actual reads at most `leak_evidence_interval_ms` apart are evidence; an estimated
/// row or a longer interval (an outage) says nothing about quiet hours, so it
/// restarts the window at its end and releases the rule: a gap never opens, nor
/// keeps open, a leak.
fn fold_leak(
    log: &mut EpisodeLog<'_>,
    rules: &AlertRules,
    alerts: &mut AlertState,
    quality: Quality,
    last_ts: i64,
    ts: i64,
    litres: u64,
) {
    let span = ts - last_ts;
    if quality != Quality::Actual || span > rules.leak_evidence_interval_ms {
        alerts.zero_run_since = None;
        alerts.last_zero_hour_ts = Some(ts);
        log.release(&mut alerts.open, AlertKind::Leak, SOURCE_RULE, ts, || {
            if quality == Quality::Actual {
                format!("no leak evidence across a {} min gap", span / 60_000)
            } else {
                "no leak evidence in estimated readings".into()
            }
        });
        return;
    }
    if litres == 0 {
        let since = *alerts.zero_run_since.get_or_insert(last_ts);
        if ts - since >= HOUR_MS {
            alerts.last_zero_hour_ts = Some(ts);
        }
    } else {
        alerts.zero_run_since = None;
    }
    let first_ts = alerts.first_ts.unwrap_or(last_ts);
    let leak_since = alerts.last_zero_hour_ts.unwrap_or(first_ts).max(first_ts);
    if ts - leak_since >= rules.leak_window_ms {
        log.raise(&mut alerts.open, AlertKind::Leak, SOURCE_RULE, ts, || {
            format!("no zero-flow hour for {} h", (ts - leak_since) / HOUR_MS)
        });
    } else {
        log.release(&mut alerts.open, AlertKind::Leak, SOURCE_RULE, ts, || {
            "zero-flow hour seen".into()
        });
    }
}

fn fold_status(
    log: &mut EpisodeLog<'_>,
    rules: &AlertRules,
    alerts: &mut AlertState,
    status: &DeviceStatus,
) {
    let at = status.ts;
    if let Some(newest) = alerts.last_status_ts.filter(|newest| at < *newest) {
        fold_late_status(log, alerts, status, newest);
        return;
    }
    alerts.last_status_ts = Some(at);
    alerts.last_status_flags = status.flags.bits();
    for (flag, kind) in FLAG_KINDS {
        if status.flags.contains(flag) {
            log.raise(&mut alerts.open, kind, SOURCE_DEVICE, at, || {
                format!("device flag {}", flag.name())
            });
        } else {
            log.release(&mut alerts.open, kind, SOURCE_DEVICE, at, || {
                format!("device flag {} lowered", flag.name())
            });
        }
    }
    if let Some(battery) = status.battery {
        if battery <= rules.low_battery_pct {
            log.raise(
                &mut alerts.open,
                AlertKind::LowBattery,
                SOURCE_RULE,
                at,
                || format!("battery at {battery} %"),
            );
        } else if battery >= rules.low_battery_clear_pct {
            log.release(
                &mut alerts.open,
                AlertKind::LowBattery,
                SOURCE_RULE,
                at,
                || format!("battery at {battery} %"),
            );
        }
    }
}

/// A status older than the newest one folded (it arrived late). Its raised flags
/// still count: a flag raised at a time no open episode of its kind covers gets a
/// closed episode from this status to the next thing known after it — the open
/// episode's start, or else the newest status (which does not raise it). Its
/// lowered flags and battery level are older news than what is known and change
/// nothing.
fn fold_late_status(
    log: &mut EpisodeLog<'_>,
    alerts: &mut AlertState,
    status: &DeviceStatus,
    newest: i64,
) {
    for (flag, kind) in FLAG_KINDS {
        if !status.flags.contains(flag) {
            continue;
        }
        let open = alerts.open.iter().find(|a| a.kind == kind);
        if open.is_some_and(|a| a.opened_at <= status.ts) {
            continue;
        }
        let until = open.map_or(newest, |a| a.opened_at);
        let episode = OpenAlert {
            kind,
            opened_at: status.ts,
            last_event_at: status.ts,
            sources: SOURCE_DEVICE,
        };
        log.record(
            &episode,
            EpisodeState::Opened,
            status.ts,
            format!("device flag {} (reported late)", flag.name()),
        );
        log.record(
            &episode,
            EpisodeState::Cleared,
            until,
            format!("device flag {} lowered by a newer message", flag.name()),
        );
    }
}
