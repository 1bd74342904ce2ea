//! What processors derived, on ScyllaDB:
//! [`ReadingStore::write_outputs`](crate::ReadingStore::write_outputs) into `bills`,
//! `alerts` (+ `alert_days`) and `district_hourly` (+ `district_hourly_days`), and the
//! three readers. Tables, columns and encodings are in [`super::schema`] (migration 2).
//!
//! Writing one [`Outputs`]:
//! - only bills, alert events and `Resolution::Hour` district rows are stored (minute
//!   and day rows are cache-only); outputs without any write nothing and do not touch
//!   the breaker;
//! - rows are grouped per partition — bills per (tenant, period), alert episodes per
//!   (tenant, UTC day of `opened_at`), hours per (tenant, district, UTC day of the
//!   hour's start) — and each partition's rows go out as unlogged batches of at most
//!   `max_batch_rows`, alongside the partition's `*_days` index upsert (alerts and
//!   hours); partitions proceed concurrently under the store's `max_in_flight` bound;
//! - every statement is a prepared, idempotent upsert on the natural key, retried
//!   while transient, inside one breaker permit for the whole call; `Ok` means every
//!   statement was acknowledged at the configured consistency;
//! - within one call, a key given twice keeps its later row (bills, hours) or its
//!   latest event (alerts); across calls, a bill or hour row is replaced by the later
//!   write (client timestamps are monotonic);
//! - **latest event per episode**: an alert row is written `USING TIMESTAMP`
//!   `at` × 1000 µs + lifecycle step (opened 0, updated 1, cleared 2), so the cluster's
//!   own last-write-wins keeps the event with the greatest (`at`, step) whatever
//!   order writes arrive in: a replayed older event never reopens a cleared episode.
//!   (Two different events with the same `at` and step — not something the alerting
//!   processor emits — resolve per column by the cluster's tie rule, the greater
//!   value; the embedded store keeps the later write.)
//!
//! Reading:
//! - `bill`: one point read;
//! - `alerts`: `alert_days` newest first, then each day's partition in clustering order
//!   (opened_at, meter, kind, all descending), until `limit` episodes; with `open_only`,
//!   cleared ones are skipped client side, so a tenant with few open episodes costs a
//!   scan of its alert history (≤ `alerts_ttl_days` of it) — dashboards read open
//!   alerts from the hot cache, this is the durable fallback;
//! - `district_hourly`: `district_hourly_days` within the range's UTC days, then each
//!   day's rows with `from_ms <= hour < to_ms`, ascending.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};

use ::scylla::client::session::Session;
use ::scylla::statement::prepared::PreparedStatement;
use ::scylla::value::{CqlDate, CqlTimestamp, MaybeUnset};
use ::scylla::{DeserializeRow, SerializeRow};
use futures_util::stream::{FuturesUnordered, StreamExt};
use meterflow_model::alert::{AlertEvent, AlertKind, EpisodeState, Priority};
use meterflow_model::analytics::{DistrictUsage, Resolution, TakenBack, UsageSketch};
use meterflow_model::billing::{BillLine, TierCharge};
use meterflow_model::time::day_of;
use meterflow_model::{Outputs, ReadException, SealedBatch};

use super::write_order::write_time;
use super::{
    Core, TenantDayRow, UnitFuture, bigint, cql_date, cql_limit, drain, prepare_statement, unsigned,
};
use crate::error::StoreError;

/// The prepared statements of the output tables.
pub(super) struct OutputStatements {
    insert_bill: PreparedStatement,
    select_bill: PreparedStatement,
    insert_alert: PreparedStatement,
    insert_alert_day: PreparedStatement,
    select_alert_days: PreparedStatement,
    select_alerts: PreparedStatement,
    insert_district_hour: PreparedStatement,
    insert_district_hour_share: PreparedStatement,
    insert_district_hour_day: PreparedStatement,
    select_district_hour_days: PreparedStatement,
    select_district_hours: PreparedStatement,
    select_district_hour_shares: PreparedStatement,
}

/// The columns of an hour, as both `district_hourly` and `district_hourly_shares`
/// list them after their keys.
const HOUR_COLUMNS: &str = "usage_l, meters, p50_l, p90_l, p99_l, sketch_zeros, sketch_bins, \
     night_hour_l, night_flow_lph, inflow_l, inflow_night_hour_l, inflow_night_flow_lph";

impl OutputStatements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> Result<Self, StoreError> {
        let prepare = |cql: String| prepare_statement(session, cql);
        Ok(Self {
            insert_bill: prepare(format!(
                "INSERT INTO {ks}.bills (tenant, period, meter, currency, usage_l, tiers, \
                 fixed_cents, amount_cents, is_estimated, is_final) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            select_bill: prepare(format!(
                "SELECT currency, usage_l, tiers, fixed_cents, amount_cents, is_estimated, \
                 is_final FROM {ks}.bills WHERE tenant = ? AND period = ? AND meter = ?"
            ))
            .await?,
            insert_alert: prepare(format!(
                "INSERT INTO {ks}.alerts (tenant, day, opened_at, meter, kind, priority, state, \
                 event_at, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 USING TTL ? AND TIMESTAMP ?"
            ))
            .await?,
            insert_alert_day: prepare(format!(
                "INSERT INTO {ks}.alert_days (tenant, day) VALUES (?, ?) USING TTL ?"
            ))
            .await?,
            select_alert_days: prepare(format!("SELECT day FROM {ks}.alert_days WHERE tenant = ?"))
                .await?,
            select_alerts: prepare(format!(
                "SELECT opened_at, meter, kind, priority, state, event_at, detail, \
                 WRITETIME(detail) AS written FROM {ks}.alerts WHERE tenant = ? AND day = ? LIMIT ?"
            ))
            .await?,
            insert_district_hour: prepare(format!(
                "INSERT INTO {ks}.district_hourly (tenant, district, day, hour, {HOUR_COLUMNS}) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
            ))
            .await?,
            insert_district_hour_share: prepare(format!(
                "INSERT INTO {ks}.district_hourly_shares (tenant, district, day, hour, \
                 contributor, {HOUR_COLUMNS}) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
            ))
            .await?,
            insert_district_hour_day: prepare(format!(
                "INSERT INTO {ks}.district_hourly_days (tenant, district, day) VALUES (?, ?, ?) \
                 USING TTL ?"
            ))
            .await?,
            select_district_hour_days: prepare(format!(
                "SELECT day FROM {ks}.district_hourly_days \
                 WHERE tenant = ? AND district = ? AND day >= ? AND day <= ?"
            ))
            .await?,
            select_district_hours: prepare(format!(
                "SELECT hour, {HOUR_COLUMNS} FROM {ks}.district_hourly \
                 WHERE tenant = ? AND district = ? AND day = ? AND hour >= ? AND hour < ?"
            ))
            .await?,
            select_district_hour_shares: prepare(format!(
                "SELECT hour, {HOUR_COLUMNS} FROM {ks}.district_hourly_shares \
                 WHERE tenant = ? AND district = ? AND day = ? AND hour >= ? AND hour < ?"
            ))
            .await?,
        })
    }
}

/// A tier as stored in `bills.tiers` (a CQL tuple, so positional): usage_l,
/// price_per_m3, amount_cents.
type TierColumns = (i64, i64, i64);

/// A `bills` row as bound to `insert_bill` (borrowing the line; what comes back is
/// [`BillColumns`]). Fields match bind markers by name, as in every row struct of the
/// store (see `ReadingRow`).
#[derive(SerializeRow)]
struct BillRow<'a> {
    tenant: &'a str,
    period: &'a str,
    meter: &'a str,
    currency: &'a str,
    usage_l: i64,
    tiers: Vec<TierColumns>,
    fixed_cents: i64,
    amount_cents: i64,
    is_estimated: bool,
    is_final: bool,
    /// The `USING TIMESTAMP ?` marker: the version of the meter's state the bill
    /// was derived with (`write_order`); unset where the call has no state.
    #[scylla(rename = "[timestamp]")]
    write_timestamp: MaybeUnset<i64>,
}

/// What `select_bill` returns.
#[derive(DeserializeRow)]
struct BillColumns {
    currency: String,
    usage_l: i64,
    /// An empty frozen list may come back as `null`.
    #[scylla(default_when_null)]
    tiers: Vec<TierColumns>,
    fixed_cents: i64,
    amount_cents: i64,
    is_estimated: bool,
    is_final: bool,
}

/// An `alerts` row as bound to `insert_alert` (borrowing the event; what comes back
/// is [`AlertColumns`]). Text columns hold the model's names (`AlertKind::name`, …).
#[derive(SerializeRow)]
struct AlertRow<'a> {
    tenant: &'a str,
    day: CqlDate,
    opened_at: CqlTimestamp,
    meter: &'a str,
    kind: &'static str,
    priority: &'static str,
    state: &'static str,
    event_at: CqlTimestamp,
    detail: &'a str,
    /// The `USING TTL ?` marker, named `[ttl]` by the cluster.
    #[scylla(rename = "[ttl]")]
    ttl: i32,
    /// The `AND TIMESTAMP ?` marker (µs, [`episode_write_timestamp`]), named
    /// `[timestamp]` by the cluster.
    #[scylla(rename = "[timestamp]")]
    write_timestamp: i64,
}

/// What `select_alerts` returns.
#[derive(Clone, DeserializeRow)]
struct AlertColumns {
    opened_at: CqlTimestamp,
    meter: String,
    kind: String,
    priority: String,
    state: String,
    event_at: CqlTimestamp,
    detail: String,
    /// The row's write time: its event's revision (every column of a row is
    /// written at once).
    written: Option<i64>,
}

/// A sketch bin as stored in `district_hourly.sketch_bins` (a CQL tuple): bucket
/// index, count.
type BinColumns = (i32, i64);

/// A `district_hourly_days` row as bound to `insert_district_hour_day`.
#[derive(SerializeRow)]
struct DistrictDayRow<'a> {
    tenant: &'a str,
    district: &'a str,
    day: CqlDate,
    #[scylla(rename = "[ttl]")]
    ttl: i32,
}

/// A `district_hourly` row as bound to `insert_district_hour`.
#[derive(SerializeRow)]
struct DistrictHourRow<'a> {
    tenant: &'a str,
    district: &'a str,
    day: CqlDate,
    #[scylla(flatten)]
    columns: DistrictHourColumns,
    #[scylla(rename = "[ttl]")]
    ttl: i32,
}

/// A `district_hourly_shares` row as bound to `insert_district_hour_share`: an
/// hour row and whose share it is.
#[derive(SerializeRow)]
struct DistrictHourShareRow<'a> {
    #[scylla(flatten)]
    hour: DistrictHourRow<'a>,
    contributor: &'a str,
}

/// An hour's own columns: written inside a [`DistrictHourRow`] and returned by
/// `select_district_hours`. [`DistrictHourColumns::of`] and
/// [`DistrictHourColumns::decode`] hold their encoding.
#[derive(Clone, SerializeRow, DeserializeRow)]
struct DistrictHourColumns {
    hour: CqlTimestamp,
    usage_l: i64,
    meters: i64,
    p50_l: Option<i64>,
    p90_l: Option<i64>,
    p99_l: Option<i64>,
    sketch_zeros: i64,
    /// An empty frozen list may come back as `null`.
    #[scylla(default_when_null)]
    sketch_bins: Vec<BinColumns>,
    /// The nights' hours 02:00 and 03:00; `null` reads as neither known.
    #[scylla(default_when_null)]
    night_hour_l: (Option<i64>, Option<i64>),
    night_flow_lph: Option<i64>,
    /// The bulk meters' inflow; `null` until one reported in the window.
    inflow_l: Option<i64>,
    /// The inflow's night hours, as `night_hour_l`.
    #[scylla(default_when_null)]
    inflow_night_hour_l: (Option<i64>, Option<i64>),
    inflow_night_flow_lph: Option<i64>,
}

/// An episode within its `(tenant, day)` partition: opened_at, meter, kind.
type EpisodeKey<'a> = (i64, &'a str, AlertKind);

/// What one `write_outputs` sends, per partition.
pub(super) struct OutputsPlan<'a> {
    /// `(tenant, period)` → meter → its last bill line in the call.
    bills: BTreeMap<(&'a str, &'a str), BTreeMap<&'a str, &'a BillLine>>,
    /// `(tenant, day)` → episode → its latest event in the call.
    alerts: BTreeMap<(&'a str, i64), BTreeMap<EpisodeKey<'a>, &'a AlertEvent>>,
    /// `(tenant, district, day)` → hour start → its last row in the call.
    hours: BTreeMap<(&'a str, &'a str, i64), BTreeMap<i64, &'a DistrictUsage>>,
    /// Validation exceptions, in call order (`exceptions.rs`).
    exceptions: &'a [ReadException],
    /// `(tenant, meter)` → the write time of its rows, from the meter's state in the
    /// batches committed with these outputs (`write_order`).
    write_times: HashMap<(&'a str, &'a str), MaybeUnset<i64>>,
}

impl OutputsPlan<'_> {
    pub(super) fn is_empty(&self) -> bool {
        self.bills.is_empty()
            && self.alerts.is_empty()
            && self.hours.is_empty()
            && self.exceptions.is_empty()
    }
}

/// Groups what `outputs` holds for the durable tables per partition; a bill is
/// written at the version of its meter's state in `batches` (the group it was
/// derived with), the latest batch winning.
pub(super) fn plan<'a>(outputs: &'a Outputs, batches: &'a [SealedBatch]) -> OutputsPlan<'a> {
    // Only bills use them: no map (and no clock read per meter) for outputs without.
    let with_bills = if outputs.bills.is_empty() {
        &[][..]
    } else {
        batches
    };
    let write_times = with_bills
        .iter()
        .flat_map(|batch| &batch.meters)
        .map(|meter| {
            (
                (meter.key.tenant.as_str(), meter.key.meter.as_str()),
                write_time(&meter.state),
            )
        })
        .collect();
    let mut bills: BTreeMap<_, BTreeMap<_, _>> = BTreeMap::new();
    for bill in &outputs.bills {
        bills
            .entry((bill.tenant.as_str(), bill.period.as_str()))
            .or_default()
            .insert(bill.meter.as_str(), bill);
    }
    let mut alerts: BTreeMap<_, BTreeMap<_, &AlertEvent>> = BTreeMap::new();
    for event in &outputs.alerts {
        let partition = alerts
            .entry((event.tenant.as_str(), day_of(event.opened_at)))
            .or_default();
        match partition.entry((event.opened_at, event.meter.as_str(), event.kind)) {
            Entry::Vacant(slot) => {
                slot.insert(event);
            }
            Entry::Occupied(mut slot) => {
                if event.revision >= slot.get().revision {
                    slot.insert(event);
                }
            }
        }
    }
    let mut hours: BTreeMap<_, BTreeMap<_, _>> = BTreeMap::new();
    for row in &outputs.districts {
        if row.resolution != Resolution::Hour {
            continue;
        }
        hours
            .entry((
                row.tenant.as_str(),
                row.district.as_str(),
                day_of(row.start_ms),
            ))
            .or_default()
            .insert(row.start_ms, row);
    }
    OutputsPlan {
        bills,
        alerts,
        hours,
        exceptions: &outputs.exceptions,
        write_times,
    }
}

/// The write timestamp of an alert row: the event's revision, so that the row keeps
/// the meter's latest word on the episode whatever order the writes land in
/// (revisions before version 6 were `at` in µs plus the step, and new ones stay
/// above them). Clamped away from `i64::MIN`, which CQL refuses as a timestamp.
fn episode_write_timestamp(event: &AlertEvent) -> i64 {
    event.revision.max(i64::MIN + 1)
}

fn bill_row(bill: &BillLine, write_timestamp: MaybeUnset<i64>) -> BillRow<'_> {
    BillRow {
        tenant: &bill.tenant,
        period: &bill.period,
        meter: &bill.meter,
        currency: &bill.currency,
        usage_l: bigint(bill.usage_l),
        tiers: bill
            .tiers
            .iter()
            .map(|t| {
                (
                    bigint(t.usage_l),
                    bigint(t.price_per_m3),
                    bigint(t.amount_cents),
                )
            })
            .collect(),
        fixed_cents: bigint(bill.fixed_cents),
        amount_cents: bigint(bill.amount_cents),
        is_estimated: bill.estimated,
        is_final: bill.final_,
        write_timestamp,
    }
}

fn decode_bill(tenant: &str, period: &str, meter: &str, columns: BillColumns) -> BillLine {
    let BillColumns {
        currency,
        usage_l,
        tiers,
        fixed_cents,
        amount_cents,
        is_estimated,
        is_final,
    } = columns;
    BillLine {
        tenant: tenant.to_owned(),
        meter: meter.to_owned(),
        period: period.to_owned(),
        currency,
        usage_l: unsigned(usage_l),
        tiers: tiers
            .into_iter()
            .map(|(usage_l, price_per_m3, amount_cents)| TierCharge {
                usage_l: unsigned(usage_l),
                price_per_m3: unsigned(price_per_m3),
                amount_cents: unsigned(amount_cents),
            })
            .collect(),
        fixed_cents: unsigned(fixed_cents),
        amount_cents: unsigned(amount_cents),
        estimated: is_estimated,
        final_: is_final,
    }
}

fn alert_row(event: &AlertEvent, day: CqlDate, ttl: i32) -> AlertRow<'_> {
    AlertRow {
        tenant: &event.tenant,
        day,
        opened_at: CqlTimestamp(event.opened_at),
        meter: &event.meter,
        kind: event.kind.name(),
        priority: event.priority.name(),
        state: event.state.name(),
        event_at: CqlTimestamp(event.at),
        detail: &event.detail,
        ttl,
        write_timestamp: episode_write_timestamp(event),
    }
}

fn decode_alert(tenant: &str, columns: AlertColumns) -> Result<AlertEvent, StoreError> {
    let AlertColumns {
        opened_at,
        meter,
        kind,
        priority,
        state,
        event_at,
        detail,
        written,
    } = columns;
    let unknown = |what: &str, value: &str| {
        StoreError::Corrupt(format!(
            "alert episode of meter {meter} opened at {}: unknown {what} {value:?} (written by a newer meterflow?)",
            opened_at.0
        ))
    };
    let kind = AlertKind::ALL
        .into_iter()
        .find(|k| k.name() == kind)
        .ok_or_else(|| unknown("kind", &kind))?;
    let priority = Priority::ALL
        .into_iter()
        .find(|p| p.name() == priority)
        .ok_or_else(|| unknown("priority", &priority))?;
    let state = EpisodeState::ALL
        .into_iter()
        .find(|s| s.name() == state)
        .ok_or_else(|| unknown("state", &state))?;
    Ok(AlertEvent {
        tenant: tenant.to_owned(),
        meter,
        kind,
        priority,
        state,
        opened_at: opened_at.0,
        at: event_at.0,
        detail,
        revision: written.unwrap_or_else(|| AlertEvent::first_revision(event_at.0, state)),
    })
}

impl DistrictHourColumns {
    fn of(row: &DistrictUsage) -> Self {
        let sketch = &row.meter_hour_sketch;
        Self {
            hour: CqlTimestamp(row.start_ms),
            usage_l: bigint(row.usage_l),
            meters: bigint(row.meters),
            p50_l: row.p50_l.map(bigint),
            p90_l: row.p90_l.map(bigint),
            p99_l: row.p99_l.map(bigint),
            sketch_zeros: bigint(sketch.zeros),
            sketch_bins: sketch
                .bins
                .iter()
                .map(|&(bucket, count)| (i32::from(bucket), bigint(count)))
                .collect(),
            night_hour_l: night_columns(row.night_hour_l),
            night_flow_lph: row.night_flow_lph.map(bigint),
            inflow_l: row.inflow_l.map(bigint),
            inflow_night_hour_l: night_columns(row.inflow_night_hour_l),
            inflow_night_flow_lph: row.inflow_night_flow_lph.map(bigint),
        }
    }

    fn decode(self, tenant: &str, district: &str) -> Result<DistrictUsage, StoreError> {
        let Self {
            hour,
            usage_l,
            meters,
            p50_l,
            p90_l,
            p99_l,
            sketch_zeros,
            sketch_bins,
            night_hour_l,
            night_flow_lph,
            inflow_l,
            inflow_night_hour_l,
            inflow_night_flow_lph,
        } = self;
        let bins = sketch_bins
            .into_iter()
            .map(|(bucket, count)| {
                u16::try_from(bucket)
                    .map(|bucket| (bucket, unsigned(count)))
                    .map_err(|_| {
                        StoreError::Corrupt(format!(
                            "district_hourly row of {tenant}/{district} at {}: sketch bucket {bucket} is not a u16",
                            hour.0
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DistrictUsage {
            tenant: tenant.to_owned(),
            district: district.to_owned(),
            resolution: Resolution::Hour,
            start_ms: hour.0,
            usage_l: unsigned(usage_l),
            meters: unsigned(meters),
            meter_hour_sketch: UsageSketch {
                zeros: unsigned(sketch_zeros),
                bins,
            },
            p50_l: p50_l.map(unsigned),
            p90_l: p90_l.map(unsigned),
            p99_l: p99_l.map(unsigned),
            night_hour_l: night_hours(night_hour_l),
            night_flow_lph: night_flow_lph.map(unsigned),
            inflow_l: inflow_l.map(unsigned),
            inflow_night_hour_l: night_hours(inflow_night_hour_l),
            inflow_night_flow_lph: inflow_night_flow_lph.map(unsigned),
            taken: TakenBack::default(),
        })
    }
}

/// The two night hours as their tuple column.
fn night_columns(hours: [Option<u64>; 2]) -> (Option<i64>, Option<i64>) {
    (hours[0].map(bigint), hours[1].map(bigint))
}

/// A night-hours tuple column back into the two hours.
fn night_hours((two, three): (Option<i64>, Option<i64>)) -> [Option<u64>; 2] {
    [two.map(unsigned), three.map(unsigned)]
}

impl Core {
    pub(super) async fn write_outputs(&self, plan: &OutputsPlan<'_>) -> Result<(), StoreError> {
        let mut units: FuturesUnordered<UnitFuture<'_>> = FuturesUnordered::new();
        for lines in plan.bills.values() {
            units.push(Box::pin(self.write_bills(lines, &plan.write_times)));
        }
        for ((tenant, day), episodes) in &plan.alerts {
            units.push(Box::pin(self.write_alerts(tenant, *day, episodes)));
        }
        for ((tenant, district, day), hours) in &plan.hours {
            units.push(Box::pin(
                self.write_district_hours(tenant, district, *day, hours),
            ));
        }
        if !plan.exceptions.is_empty() {
            units.push(Box::pin(self.write_exceptions(plan.exceptions)));
        }
        while let Some(result) = units.next().await {
            // Dropping the remaining units cancels their pending statements.
            result?;
        }
        Ok(())
    }

    /// One `(tenant, period)` partition of bills.
    async fn write_bills(
        &self,
        lines: &BTreeMap<&str, &BillLine>,
        write_times: &HashMap<(&str, &str), MaybeUnset<i64>>,
    ) -> Result<(), StoreError> {
        let rows: Vec<BillRow<'_>> = lines
            .values()
            .map(|bill| {
                let written = write_times
                    .get(&(bill.tenant.as_str(), bill.meter.as_str()))
                    .copied()
                    .unwrap_or(MaybeUnset::Unset);
                bill_row(bill, written)
            })
            .collect();
        let statements: FuturesUnordered<UnitFuture<'_>> = FuturesUnordered::new();
        self.push_batches(
            &statements,
            "writing bills failed",
            &self.statements.outputs.insert_bill,
            &rows,
        );
        drain(statements).await
    }

    /// One `(tenant, day)` partition of alert episodes, and its `alert_days` entry.
    async fn write_alerts(
        &self,
        tenant: &str,
        day: i64,
        episodes: &BTreeMap<EpisodeKey<'_>, &AlertEvent>,
    ) -> Result<(), StoreError> {
        let ttl = self.config.alerts_ttl_secs();
        let date = cql_date(day)?;
        let rows: Vec<AlertRow<'_>> = episodes
            .values()
            .map(|event| alert_row(event, date, ttl))
            .collect();
        let statements: FuturesUnordered<UnitFuture<'_>> = FuturesUnordered::new();
        statements.push(Box::pin(self.execute(
            "writing alert_days failed",
            &self.statements.outputs.insert_alert_day,
            TenantDayRow {
                tenant,
                day: date,
                ttl,
            },
        )));
        self.push_batches(
            &statements,
            "writing alerts failed",
            &self.statements.outputs.insert_alert,
            &rows,
        );
        drain(statements).await
    }

    /// One `(tenant, district, day)` partition of hourly rows — a contributor's
    /// shares in `district_hourly_shares` when the store has one — and its
    /// `district_hourly_days` entry.
    async fn write_district_hours(
        &self,
        tenant: &str,
        district: &str,
        day: i64,
        hours: &BTreeMap<i64, &DistrictUsage>,
    ) -> Result<(), StoreError> {
        let ttl = self.config.district_hourly_ttl_secs();
        let date = cql_date(day)?;
        let rows = hours.values().map(|row| DistrictHourRow {
            tenant,
            district,
            day: date,
            columns: DistrictHourColumns::of(row),
            ttl,
        });
        // One of the two is empty.
        let (rows, shares): (Vec<_>, Vec<_>) = match &self.contributor {
            None => (rows.collect(), Vec::new()),
            Some(contributor) => (
                Vec::new(),
                rows.map(|hour| DistrictHourShareRow { hour, contributor })
                    .collect(),
            ),
        };
        let statements: FuturesUnordered<UnitFuture<'_>> = FuturesUnordered::new();
        statements.push(Box::pin(self.execute(
            "writing district_hourly_days failed",
            &self.statements.outputs.insert_district_hour_day,
            DistrictDayRow {
                tenant,
                district,
                day: date,
                ttl,
            },
        )));
        self.push_batches(
            &statements,
            "writing district_hourly failed",
            &self.statements.outputs.insert_district_hour,
            &rows,
        );
        self.push_batches(
            &statements,
            "writing district_hourly_shares failed",
            &self.statements.outputs.insert_district_hour_share,
            &shares,
        );
        drain(statements).await
    }

    pub(super) async fn bill(
        &self,
        tenant: &str,
        period: &str,
        meter: &str,
    ) -> Result<Option<BillLine>, StoreError> {
        let rows: Vec<BillColumns> = self
            .select_all(
                "reading bills failed",
                &self.statements.outputs.select_bill,
                (tenant, period, meter),
                1,
            )
            .await?;
        Ok(rows
            .into_iter()
            .next()
            .map(|columns| decode_bill(tenant, period, meter, columns)))
    }

    pub(super) async fn alerts(
        &self,
        tenant: &str,
        open_only: bool,
        limit: usize,
    ) -> Result<Vec<AlertEvent>, StoreError> {
        if tenant.is_empty() {
            // `alert_days` is keyed by the tenant alone, and CQL refuses an empty
            // partition key; no tenant id is empty, so there is nothing to find.
            return Ok(Vec::new());
        }
        // Newest day first (the index is clustered by day descending).
        let days: Vec<(CqlDate,)> = self
            .select_all(
                "reading alert_days failed",
                &self.statements.outputs.select_alert_days,
                (tenant,),
                usize::MAX,
            )
            .await?;
        let closed = [EpisodeState::Cleared.name(), EpisodeState::Withdrawn.name()];
        let mut out = Vec::new();
        for (date,) in days {
            let remaining = limit - out.len();
            // With `open_only`, the rows the server returns include closed ones, so
            // LIMIT cannot bound them; paging stops once `remaining` are kept.
            let server_limit = if open_only { usize::MAX } else { remaining };
            let rows: Vec<AlertColumns> = self
                .select_matching(
                    "reading alerts failed",
                    &self.statements.outputs.select_alerts,
                    (tenant, date, cql_limit(server_limit)),
                    remaining,
                    |row: &AlertColumns| !open_only || !closed.contains(&row.state.as_str()),
                )
                .await?;
            for columns in rows {
                out.push(decode_alert(tenant, columns)?);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub(super) async fn district_hourly(
        &self,
        tenant: &str,
        district: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<DistrictUsage>, StoreError> {
        let days = self
            .indexed_days(
                "reading district_hourly_days failed",
                &self.statements.outputs.select_district_hour_days,
                (tenant, district),
                from_ms,
                to_ms,
            )
            .await?;
        // Per hour, its row and its shares merged.
        let mut hours: BTreeMap<i64, DistrictUsage> = BTreeMap::new();
        for (date,) in days {
            let key = (
                tenant,
                district,
                date,
                CqlTimestamp(from_ms),
                CqlTimestamp(to_ms),
            );
            let tables = [
                (
                    "reading district_hourly failed",
                    &self.statements.outputs.select_district_hours,
                ),
                (
                    "reading district_hourly_shares failed",
                    &self.statements.outputs.select_district_hour_shares,
                ),
            ];
            for (what, statement) in tables {
                let rows: Vec<DistrictHourColumns> =
                    self.select_all(what, statement, key, usize::MAX).await?;
                for columns in rows {
                    let row = columns.decode(tenant, district)?;
                    match hours.entry(row.start_ms) {
                        Entry::Vacant(vacant) => {
                            vacant.insert(row);
                        }
                        Entry::Occupied(mut merged) => merged.get_mut().merge(&row),
                    }
                }
            }
        }
        Ok(hours.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(meter: &str, state: EpisodeState, opened_at: i64, at: i64) -> AlertEvent {
        AlertEvent {
            tenant: "t".into(),
            meter: meter.into(),
            kind: AlertKind::NoCommunication,
            priority: Priority::Low,
            state,
            opened_at,
            at,
            detail: format!("{state:?} at {at}"),
            revision: AlertEvent::first_revision(at, state),
        }
    }

    #[test]
    fn plan_keeps_hour_rows_only_and_the_later_row_per_key() {
        let mut first = DistrictUsage::new("t", "north", Resolution::Hour, 3_600_000);
        first.usage_l = 1;
        let mut second = first.clone();
        second.usage_l = 2;
        let bill = |amount_cents| BillLine {
            tenant: "t".into(),
            meter: "m".into(),
            period: "2025-11".into(),
            currency: "EUR".into(),
            usage_l: 0,
            tiers: vec![],
            fixed_cents: 0,
            amount_cents,
            estimated: false,
            final_: false,
        };
        let outputs = Outputs {
            districts: vec![
                first,
                DistrictUsage::new("t", "north", Resolution::Minute, 0),
                DistrictUsage::new("t", "north", Resolution::Day, 0),
                second,
            ],
            bills: vec![bill(1), bill(2)],
            ..Outputs::default()
        };
        let plan = plan(&outputs, &[]);
        assert_eq!(plan.hours.len(), 1);
        assert_eq!(plan.hours[&("t", "north", 0)][&3_600_000].usage_l, 2);
        assert_eq!(plan.bills[&("t", "2025-11")]["m"].amount_cents, 2);
        assert!(plan.alerts.is_empty());

        let cache_only = Outputs {
            districts: vec![DistrictUsage::new("t", "north", Resolution::Minute, 0)],
            ..Outputs::default()
        };
        assert!(super::plan(&cache_only, &[]).is_empty());
    }

    #[test]
    fn plan_keeps_the_latest_event_of_each_episode_by_revision() {
        let day = meterflow_model::time::DAY_MS;
        let outputs = Outputs {
            alerts: vec![
                event("m", EpisodeState::Cleared, 10, 30),
                event("m", EpisodeState::Updated, 10, 20),
                event("m", EpisodeState::Opened, day + 1, day + 1),
            ],
            ..Outputs::default()
        };
        let plan = plan(&outputs, &[]);
        assert_eq!(plan.alerts.len(), 2, "two UTC days of opened_at");
        let first_day = &plan.alerts[&("t", 0)];
        assert_eq!(first_day.len(), 1);
        assert_eq!(
            first_day[&(10, "m", AlertKind::NoCommunication)].state,
            EpisodeState::Cleared
        );
    }

    #[test]
    fn write_timestamps_are_revisions() {
        let opened = event("m", EpisodeState::Opened, 0, 5);
        let updated = event("m", EpisodeState::Updated, 0, 5);
        let cleared = event("m", EpisodeState::Cleared, 0, 5);
        let later = event("m", EpisodeState::Opened, 0, 6);
        let ts = |e: &AlertEvent| episode_write_timestamp(e);
        assert!(ts(&opened) < ts(&updated) && ts(&updated) < ts(&cleared));
        assert!(ts(&cleared) < ts(&later));
        assert_eq!(ts(&cleared), 5_002);
        let withdrawn_earlier = AlertEvent {
            revision: 6_001,
            ..event("m", EpisodeState::Withdrawn, 0, 1)
        };
        assert_eq!(ts(&withdrawn_earlier), 6_001);
        assert_eq!(
            ts(&event("m", EpisodeState::Opened, 0, i64::MIN)),
            i64::MIN + 1
        );
        assert_eq!(
            ts(&event("m", EpisodeState::Cleared, 0, i64::MAX)),
            i64::MAX
        );
    }

    #[test]
    fn names_match_the_model_serde_names() {
        #[derive(serde::Serialize)]
        struct Names {
            priority: Priority,
            state: EpisodeState,
        }
        for priority in Priority::ALL {
            for state in EpisodeState::ALL {
                let text = toml::to_string(&Names { priority, state }).unwrap();
                assert_eq!(
                    text,
                    format!(
                        "priority = \"{}\"\nstate = \"{}\"\n",
                        priority.name(),
                        state.name()
                    )
                );
            }
        }
    }

    #[test]
    fn rows_round_trip_through_their_column_types() {
        let bill = BillLine {
            tenant: "t".into(),
            meter: "m".into(),
            period: "2025-11".into(),
            currency: "EUR".into(),
            usage_l: u64::MAX,
            tiers: vec![TierCharge {
                usage_l: 10_000,
                price_per_m3: 150,
                amount_cents: 1_500,
            }],
            fixed_cents: 800,
            amount_cents: 2_300,
            estimated: true,
            final_: false,
        };
        let r = bill_row(&bill, MaybeUnset::Unset);
        let columns = BillColumns {
            currency: r.currency.to_owned(),
            usage_l: r.usage_l,
            tiers: r.tiers.clone(),
            fixed_cents: r.fixed_cents,
            amount_cents: r.amount_cents,
            is_estimated: r.is_estimated,
            is_final: r.is_final,
        };
        assert_eq!(decode_bill("t", "2025-11", "m", columns), bill);

        let alert = event("m", EpisodeState::Updated, 7, 9);
        let r = alert_row(&alert, CqlDate(0), 1);
        let columns = AlertColumns {
            opened_at: r.opened_at,
            meter: r.meter.to_owned(),
            kind: r.kind.to_owned(),
            priority: r.priority.to_owned(),
            state: r.state.to_owned(),
            event_at: r.event_at,
            detail: r.detail.to_owned(),
            written: Some(episode_write_timestamp(&alert)),
        };
        assert_eq!(decode_alert("t", columns.clone()).unwrap(), alert);
        let revised = AlertColumns {
            written: Some(alert.revision + 5),
            ..columns.clone()
        };
        assert_eq!(
            decode_alert("t", revised).unwrap().revision,
            alert.revision + 5,
            "the revision is the row's write time"
        );
        let bad = AlertColumns {
            kind: "flood".into(),
            ..columns
        };
        assert!(matches!(
            decode_alert("t", bad),
            Err(StoreError::Corrupt(_))
        ));

        let mut hour = DistrictUsage::new("t", "north", Resolution::Hour, -3_600_000);
        hour.usage_l = 42;
        hour.meters = 3;
        for v in [0, 5, 70, 70] {
            hour.meter_hour_sketch.add(v);
        }
        hour.refresh_derived();
        hour.night_hour_l = [Some(4), None];
        hour.inflow_l = Some(50);
        hour.inflow_night_hour_l = [None, Some(9)];
        hour.inflow_night_flow_lph = Some(9);
        let columns = DistrictHourColumns::of(&hour);
        assert_eq!(columns.clone().decode("t", "north").unwrap(), hour);
        let bad = DistrictHourColumns {
            sketch_bins: vec![(70_000, 1)],
            ..columns
        };
        assert!(matches!(
            bad.decode("t", "north"),
            Err(StoreError::Corrupt(_))
        ));
    }
}
