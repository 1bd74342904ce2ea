//! The alert fold: one meter's rows and device statuses, in reading time, folded into
//! its open episodes and the interval rules' trackers ([`AlertFold`]), with the
//! episode steps they make. Pure: the same items from the same fold give the same
//! steps, which is what makes the episodes independent of arrival order
//! (`alerting` folds the window again when data lands inside it).

use meterflow_model::alert::{
    AlertFold, EpisodeStep, FLAG_KINDS, OpenAlert, RuleRow, SOURCE_DEVICE, SOURCE_RULE, StatusPoint,
};
use meterflow_model::{AlertKind, AlertRules, EpisodeState, Flags};

use crate::calendar::HOUR_MS;

const DAY_MS: i64 = 24 * HOUR_MS;

/// One thing to fold, by reading time.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Item<'a> {
    Row(&'a RuleRow),
    Status(StatusPoint),
}

impl Item<'_> {
    /// Its place in the fold: reading time, a row before a status of the same time
    /// (a message's readings before its status; one status per time).
    pub(crate) fn key(&self) -> (i64, u8) {
        match self {
            Item::Row(row) => (row.ts, 0),
            Item::Status(status) => (status.ts, 1),
        }
    }
}

/// Rows and statuses (each by `ts`) merged into fold order.
pub(crate) fn merged<'a>(
    rows: impl IntoIterator<Item = &'a RuleRow>,
    statuses: impl IntoIterator<Item = StatusPoint>,
) -> impl Iterator<Item = Item<'a>> {
    let mut rows = rows.into_iter().peekable();
    let mut statuses = statuses.into_iter().peekable();
    std::iter::from_fn(move || match (rows.peek(), statuses.peek()) {
        (Some(row), Some(status)) if row.ts <= status.ts => rows.next().map(Item::Row),
        (_, Some(_)) => statuses.next().map(Item::Status),
        (Some(_), None) => rows.next().map(Item::Row),
        (None, None) => None,
    })
}

/// What the fold needs of the tenant's settings.
#[derive(Clone, Copy)]
pub(crate) struct FoldRules<'a> {
    pub(crate) rules: &'a AlertRules,
    /// Whether the consumption rules apply (not a district's bulk meter).
    pub(crate) consumer: bool,
}

/// Folds one item; appends the steps it makes.
pub(crate) fn fold_item(
    fold: &mut AlertFold,
    rules: FoldRules<'_>,
    item: Item<'_>,
    steps: &mut Vec<EpisodeStep>,
) {
    // The episodes apart from the trackers, so both can be borrowed (a Vec move).
    let mut open = std::mem::take(&mut fold.open);
    let mut log = Episodes {
        open: &mut open,
        update_interval_ms: rules.rules.update_interval_ms,
        steps,
    };
    match item {
        Item::Row(row) => fold_row(&mut log, fold, rules, row),
        Item::Status(status) => fold_status(&mut log, rules.rules, &status),
    }
    fold.open = open;
}

/// Opens, updates and clears episodes, recording each step.
pub(crate) struct Episodes<'a> {
    pub(crate) open: &'a mut Vec<OpenAlert>,
    pub(crate) update_interval_ms: i64,
    pub(crate) steps: &'a mut Vec<EpisodeStep>,
}

impl Episodes<'_> {
    fn record(&mut self, alert: &OpenAlert, state: EpisodeState, at: i64, detail: String) {
        self.steps.push(EpisodeStep {
            kind: alert.kind,
            state,
            opened_at: alert.opened_at,
            at,
            detail,
        });
    }

    /// `source` holds for `kind` at `at`: opens its episode, or updates it when the
    /// source is new to it or `update_interval_ms` has passed since its last step.
    pub(crate) fn raise(
        &mut self,
        kind: AlertKind,
        source: u8,
        at: i64,
        detail: impl FnOnce() -> String,
    ) {
        if let Some(alert) = self.open.iter_mut().find(|a| a.kind == kind) {
            let new_source = alert.sources & source == 0;
            if !new_source && at - alert.last_event_at < self.update_interval_ms {
                return;
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
            self.open.push(alert);
            self.record(&alert, EpisodeState::Opened, at, detail());
        }
    }

    /// `source` no longer holds for `kind`; the episode clears when no source does.
    pub(crate) fn release(
        &mut self,
        kind: AlertKind,
        source: u8,
        at: i64,
        detail: impl FnOnce() -> String,
    ) {
        let Some(index) = self.open.iter().position(|a| a.kind == kind) else {
            return;
        };
        if self.open[index].sources & source == 0 {
            return;
        }
        self.open[index].sources &= !source;
        if self.open[index].sources == 0 {
            let alert = self.open.remove(index);
            self.record(&alert, EpisodeState::Cleared, at, detail());
        }
    }
}

/// A status: each device flag holds its kind or no longer does, and the battery
/// level holds the battery rule (at or below `low_battery_pct`) or releases it (at
/// or above `low_battery_clear_pct`; between the two it changes nothing).
fn fold_status(log: &mut Episodes<'_>, rules: &AlertRules, status: &StatusPoint) {
    let at = status.ts;
    let flags = Flags::from_bits(status.flags).unwrap_or_default();
    // A clean status with no flag held (nearly every one) changes no flag's episode.
    if !flags.is_empty() || log.open.iter().any(|a| a.sources & SOURCE_DEVICE != 0) {
        for (flag, kind) in FLAG_KINDS {
            if flags.contains(flag) {
                log.raise(kind, SOURCE_DEVICE, at, || {
                    format!("device flag {}", flag.name())
                });
            } else {
                log.release(kind, SOURCE_DEVICE, at, || {
                    format!("device flag {} lowered", flag.name())
                });
            }
        }
    }
    let Some(level) = status.battery else {
        return;
    };
    let detail = || format!("battery at {level} %");
    if level <= rules.low_battery_pct {
        log.raise(AlertKind::LowBattery, SOURCE_RULE, at, detail);
    } else if level >= rules.low_battery_clear_pct {
        log.release(AlertKind::LowBattery, SOURCE_RULE, at, detail);
    }
}

/// A row of interval data, through the rules (over rows that are not suspect; an
/// interval is the time and litres since the previous row).
fn fold_row(log: &mut Episodes<'_>, fold: &mut AlertFold, rules: FoldRules<'_>, row: &RuleRow) {
    let FoldRules { rules, consumer } = rules;
    let ts = row.ts;
    if let Some(temp) = row.temp {
        if temp <= rules.freeze_temp {
            log.raise(AlertKind::Freeze, SOURCE_RULE, ts, || {
                format!("water at {:.1} °C", f64::from(temp) / 10.0)
            });
        } else if temp >= rules.freeze_clear_temp {
            log.release(AlertKind::Freeze, SOURCE_RULE, ts, || {
                format!("water back at {:.1} °C", f64::from(temp) / 10.0)
            });
        }
    }
    let Some(last_ts) = fold.last_ts else {
        fold.first_ts = Some(ts);
        fold.last_ts = Some(ts);
        fold.last_rev = Some(row.rev);
        return;
    };
    if ts <= last_ts {
        return;
    }
    let litres = row.interval_l;
    let first_ts = fold.first_ts.unwrap_or(last_ts);
    if litres > 0 {
        fold.last_consumption_ts = Some(ts);
    }
    if consumer {
        fold_leak(log, rules, fold, row.estimated, last_ts, ts, litres);
        fold_burst(log, rules, fold, last_ts, ts, litres);
    }
    fold_backflow(log, rules, fold, ts, row.rev);
    if consumer {
        fold_idle(log, rules, fold, ts, first_ts);
    }
    fold.last_ts = Some(ts);
    fold.last_rev = Some(row.rev);
}

/// Backflow: the reverse register grows by `backflow_min_l`; released once it has
/// not grown for `backflow_clear_ms`.
fn fold_backflow(
    log: &mut Episodes<'_>,
    rules: &AlertRules,
    fold: &mut AlertFold,
    ts: i64,
    rev: u64,
) {
    let reverse_growth = fold.last_rev.map_or(0, |last| rev.saturating_sub(last));
    if reverse_growth > 0 {
        fold.backflow_l = fold.backflow_l.saturating_add(reverse_growth);
        fold.last_backflow_ts = Some(ts);
        if fold.backflow_l >= rules.backflow_min_l {
            let total = fold.backflow_l;
            log.raise(AlertKind::Backflow, SOURCE_RULE, ts, || {
                format!("reverse register grew {total} L")
            });
        }
    } else if fold
        .last_backflow_ts
        .is_some_and(|t| ts - t >= rules.backflow_clear_ms)
    {
        fold.backflow_l = 0;
        fold.last_backflow_ts = None;
        log.release(AlertKind::Backflow, SOURCE_RULE, ts, || {
            "reverse register steady".into()
        });
    }
}

/// Burst: intervals whose average flow is at or above `burst_flow_lph`, in a run
/// lasting `burst_duration_ms`; released at the first interval below it.
fn fold_burst(
    log: &mut Episodes<'_>,
    rules: &AlertRules,
    fold: &mut AlertFold,
    last_ts: i64,
    ts: i64,
    litres: u64,
) {
    let elapsed = ts - last_ts;
    let average_lph = u128::from(litres) * HOUR_MS as u128 / elapsed as u128;
    if average_lph >= u128::from(rules.burst_flow_lph) {
        let since = *fold.burst_since.get_or_insert(last_ts);
        if ts - since >= rules.burst_duration_ms {
            log.raise(AlertKind::Burst, SOURCE_RULE, ts, || {
                format!(
                    "average flow {average_lph} L/h for {} min",
                    (ts - since) / 60_000
                )
            });
        }
    } else {
        fold.burst_since = None;
        log.release(AlertKind::Burst, SOURCE_RULE, ts, || {
            format!("flow down to {average_lph} L/h")
        });
    }
}

/// No consumption for `no_consumption_days` (since the first read when nothing was
/// ever used); released when water is used again.
fn fold_idle(log: &mut Episodes<'_>, rules: &AlertRules, fold: &AlertFold, ts: i64, first_ts: i64) {
    let consumed_at = fold.last_consumption_ts.unwrap_or(first_ts);
    let idle = ts - consumed_at;
    if idle >= i64::from(rules.no_consumption_days) * DAY_MS {
        log.raise(AlertKind::NoConsumption, SOURCE_RULE, ts, || {
            format!("no consumption for {} days", idle / DAY_MS)
        });
    } else {
        log.release(AlertKind::NoConsumption, SOURCE_RULE, ts, || {
            "consumption resumed".into()
        });
    }
}

/// Leak: no zero-consumption hour for `leak_window_ms` — counted only over evidence.
/// Actual reads at most `leak_evidence_interval_ms` apart are evidence; an estimated
/// row or a longer interval (an outage) says nothing about quiet hours, so it
/// restarts the window at its end and releases the rule: a gap never opens, nor
/// keeps open, a leak.
fn fold_leak(
    log: &mut Episodes<'_>,
    rules: &AlertRules,
    fold: &mut AlertFold,
    estimated: bool,
    last_ts: i64,
    ts: i64,
    litres: u64,
) {
    let span = ts - last_ts;
    if estimated || span > rules.leak_evidence_interval_ms {
        fold.zero_run_since = None;
        fold.last_zero_hour_ts = Some(ts);
        log.release(AlertKind::Leak, SOURCE_RULE, ts, || {
            if estimated {
                "no leak evidence in estimated readings".into()
            } else {
                format!("no leak evidence across a {} min gap", span / 60_000)
            }
        });
        return;
    }
    if litres == 0 {
        let since = *fold.zero_run_since.get_or_insert(last_ts);
        if ts - since >= HOUR_MS {
            fold.last_zero_hour_ts = Some(ts);
        }
    } else {
        fold.zero_run_since = None;
    }
    let first_ts = fold.first_ts.unwrap_or(last_ts);
    let leak_since = fold.last_zero_hour_ts.unwrap_or(first_ts).max(first_ts);
    if ts - leak_since >= rules.leak_window_ms {
        log.raise(AlertKind::Leak, SOURCE_RULE, ts, || {
            format!("no zero-flow hour for {} h", (ts - leak_since) / HOUR_MS)
        });
    } else {
        log.release(AlertKind::Leak, SOURCE_RULE, ts, || {
            "zero-flow hour seen".into()
        });
    }
}
