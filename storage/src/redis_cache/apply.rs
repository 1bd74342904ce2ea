//! Turns one [`Outputs`] into the pipelines `RedisCache::apply` sends: pure (no
//! connection), so what is written for what is testable without a server.
//!
//! [`Grouping`] decides how many: one pipeline for everything on a single Redis; one
//! per tenant on a Redis Cluster, where a pipeline is sent to one node and every
//! key of a tenant — `{prefix}:{<tenant>}:…`, the tenant as hash tag — is in one
//! slot (redis-rs refuses a pipeline that spans slots before sending it). A
//! tenant's commands keep their order in its pipeline; different tenants share no
//! key, so no order between them matters.
//!
//! Per part of the outputs, in this order:
//! - `meters`: per tenant, per chunk of up to [`VIEWS_PER_CALL`] views, one
//!   [`APPLY_VIEWS`] call (each view's fields and version, unless its hash holds a
//!   greater version), then one [`INDEX_METERS`] call that puts them into the meter
//!   index and trims it;
//! - `bills`: per tenant one [`SET_BILLS`] script call with, per meter, the line of
//!   the latest period in the outputs;
//! - `districts`: per row `HSET`, `HDEL` of absent optional fields, `EXPIRE` with the
//!   TTL of its resolution; then per (tenant, district, resolution) one
//!   [`PUT_SERIES`] call with the rows' points in order;
//! - `top`: per list one [`REPLACE_TOP`] call (the ZSET becomes exactly the list);
//! - `alerts` and `summaries`: per tenant having either, one [`APPLY_ALERTS`] call
//!   (the alert stream, alerts:open, per-meter and summary counts, the summary's
//!   fields).
//!
//! Bills and alert steps carry the version of their meter's view in the same
//! outputs ([`Versions`]), so the scripts skip those of a meter whose hash holds a
//! greater one (`scripts.rs`, "version").
//!
//! A cache with a contributor writes merged totals instead of the outputs' own
//! district rows, top lists and summaries (`shares.rs`): each in one [`GATED`] call
//! (a row's hash and its series point; a list; a summary's figures, before the
//! tenant's [`APPLY_ALERTS`] call, which then only counts its open alerts), and
//! the [`PUT_SERIES`] calls carry no points, only trimming the series.
//!
//! Rows whose tenant, meter or district is not an id (`[A-Za-z0-9_-]{1,64}`) are
//! skipped and counted: such a name could break out of its key (`:`, `{`, `}`) or,
//! for a view's district, out of its `{district}:{meter}` index member.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meterflow_model::alert::{AlertEvent, AlertKind};
use meterflow_model::analytics::{DistrictUsage, Resolution, TopConsumers};
use meterflow_model::billing::BillLine;
use meterflow_model::{MeterView, Outputs, TenantSummary};
use redis::Pipeline;

use super::RedisConfig;
use super::codec::{self, FieldUpdate};
use super::keys::{KeySpace, day_label_stamp, ids_are_valid};
use super::scripts::{
    APPLY_ALERTS, APPLY_VIEWS, ENTRY_FIELDS, GATED, INDEX_METERS, PUT_SERIES, REPLACE_TOP,
    SET_BILLS,
};
use super::shares::{Gated, Totals};

/// Views per [`APPLY_VIEWS`] and per [`INDEX_METERS`] call. Each view costs either
/// script about five commands, so a call stays near a millisecond of Redis time: a
/// group of 64k meters (the sink's largest) is written in 64 pairs of short scripts
/// instead of one that stalls every other client for a tenth of a second.
pub(crate) const VIEWS_PER_CALL: usize = 1_000;

/// Stale meters one [`INDEX_METERS`] call removes from the index at most. Meters go
/// stale one by one as they stop reporting, far fewer than views arrive; when a
/// whole fleet leaves at once, the index sheds it over successive applies (each
/// with a bounded script) — or expires whole when nothing of the tenant is written.
pub(crate) const METER_TRIM_PER_CALL: usize = 1_000;

/// How an apply's commands are grouped into pipelines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grouping {
    /// All in one pipeline: a single Redis holds every key (one round trip).
    One,
    /// One pipeline per tenant: on a Redis Cluster a pipeline must stay within one
    /// slot, and a tenant's keys share one (sent concurrently: one round trip too).
    PerTenant,
}

/// The pipelines for one apply.
pub(crate) struct ApplyPlan {
    /// By tenant under [`Grouping::PerTenant`]; one, under `""`, under
    /// [`Grouping::One`].
    pub(crate) pipes: BTreeMap<String, Pipeline>,
    grouping: Grouping,
    /// Commands (or script calls) queued; 0 means nothing to send.
    pub(crate) commands: usize,
    /// Rows left out because a name is not an id, with one example for the log.
    pub(crate) skipped: usize,
    pub(crate) first_skipped: Option<String>,
}

impl ApplyPlan {
    fn skip(&mut self, what: impl FnOnce() -> String) {
        self.skipped += 1;
        if self.first_skipped.is_none() {
            self.first_skipped = Some(what());
        }
    }

    /// The pipeline of `tenant`'s commands.
    fn pipe(&mut self, tenant: &str) -> &mut Pipeline {
        let group = match self.grouping {
            Grouping::One => "",
            Grouping::PerTenant => tenant,
        };
        // Not `entry`: that would allocate the name for every command.
        if !self.pipes.contains_key(group) {
            self.pipes.insert(group.to_owned(), redis::pipe());
        }
        self.pipes
            .get_mut(group)
            .expect("the group's pipeline was just ensured")
    }

    fn hash(&mut self, tenant: &str, key: &str, fields: FieldUpdate, ttl: i64) {
        let pipe = self.pipe(tenant);
        for words in hash_words(key, fields, ttl) {
            pipe.cmd(&words[0]).arg(&words[1..]).ignore();
        }
        self.commands += 1;
    }

    /// `commands` (each a command's words, its key second) as one [`GATED`] call:
    /// run unless `shares` records a total of `version` or later.
    fn gated(&mut self, tenant: &str, shares: String, version: i64, commands: Vec<Vec<String>>) {
        let mut keys = vec![shares];
        for command in &commands {
            if !keys.contains(&command[1]) {
                keys.push(command[1].clone());
            }
        }
        let mut args = vec![version.to_string()];
        for command in commands {
            args.push(command.len().to_string());
            args.extend(command);
        }
        self.eval(tenant, GATED, &keys, &args);
    }

    fn eval(&mut self, tenant: &str, script: &str, keys: &[String], args: &[String]) {
        self.pipe(tenant)
            .cmd("EVAL")
            .arg(script)
            .arg(keys.len())
            .arg(keys)
            .arg(args)
            .ignore();
        self.commands += 1;
    }
}

/// The commands that write a hash as [`ApplyPlan::hash`] does, as words.
fn hash_words(key: &str, (set, unset): FieldUpdate, ttl: i64) -> Vec<Vec<String>> {
    let mut commands = Vec::with_capacity(3);
    let mut hset = vec!["HSET".to_owned(), key.to_owned()];
    for (field, value) in set {
        hset.extend([field.to_owned(), value]);
    }
    commands.push(hset);
    if !unset.is_empty() {
        let mut hdel = vec!["HDEL".to_owned(), key.to_owned()];
        hdel.extend(unset.iter().map(|field| (*field).to_owned()));
        commands.push(hdel);
    }
    commands.push(vec!["EXPIRE".to_owned(), key.to_owned(), ttl.to_string()]);
    commands
}

/// A TTL as `EXPIRE` takes it; `RedisConfig::validate` keeps every TTL below
/// `i64::MAX`.
pub(crate) fn ttl(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// The plan of `outputs`; with `totals` (a cache with a contributor, `shares.rs`)
/// the district rows, top lists and summaries written are those merged totals,
/// each gated by its version, instead of `outputs`' own.
pub(crate) fn plan(
    keys: &KeySpace,
    config: &RedisConfig,
    grouping: Grouping,
    outputs: &Outputs,
    totals: Option<&Totals>,
) -> ApplyPlan {
    let mut plan = ApplyPlan {
        pipes: BTreeMap::new(),
        grouping,
        commands: 0,
        skipped: 0,
        first_skipped: None,
    };
    let versions = Versions::of(outputs);
    meters(&mut plan, keys, config, outputs);
    bills(&mut plan, keys, config, &outputs.bills, &versions);
    let aggregates = match totals {
        None => Aggregates {
            districts: as_given(&outputs.districts),
            top: as_given(&outputs.top),
            summaries: as_given(&outputs.summaries),
        },
        Some(totals) => Aggregates {
            districts: as_gated(&totals.districts),
            top: as_gated(&totals.top),
            summaries: as_gated(&totals.summaries),
        },
    };
    districts(&mut plan, keys, config, &aggregates.districts);
    tops(&mut plan, keys, config, &aggregates.top);
    alerts_and_summaries(
        &mut plan,
        keys,
        config,
        &outputs.alerts,
        &aggregates.summaries,
        &versions,
    );
    plan
}

/// An aggregate and, when it is a merged total, the version it is gated by.
type Aggregate<'a, T> = (&'a T, Option<i64>);

/// The district rows, top lists and summaries an apply writes.
struct Aggregates<'a> {
    districts: Vec<Aggregate<'a, DistrictUsage>>,
    top: Vec<Aggregate<'a, TopConsumers>>,
    summaries: Vec<Aggregate<'a, TenantSummary>>,
}

/// Aggregates written as the outputs give them.
fn as_given<T>(rows: &[T]) -> Vec<Aggregate<'_, T>> {
    rows.iter().map(|row| (row, None)).collect()
}

/// Merged totals, each gated by the version it was merged at.
fn as_gated<T>(totals: &[Gated<T>]) -> Vec<Aggregate<'_, T>> {
    totals.iter().map(|g| (&g.total, Some(g.version))).collect()
}

/// Per (tenant, meter), the version of its last view in one outputs: what its bill
/// and alert steps are gated with.
struct Versions<'a>(HashMap<(&'a str, &'a str), i64>);

impl<'a> Versions<'a> {
    fn of(outputs: &'a Outputs) -> Self {
        // Only bills and alert steps are gated with them.
        let views = if outputs.bills.is_empty() && outputs.alerts.is_empty() {
            &[][..]
        } else {
            &outputs.meters[..]
        };
        Versions(
            views
                .iter()
                .map(|view| ((view.tenant.as_str(), view.meter.as_str()), view.version))
                .collect(),
        )
    }

    /// The meter's version as a script argument (empty: unknown).
    fn arg(&self, tenant: &str, meter: &str) -> String {
        self.0
            .get(&(tenant, meter))
            .map_or_else(String::new, i64::to_string)
    }
}

fn meters(plan: &mut ApplyPlan, keys: &KeySpace, config: &RedisConfig, outputs: &Outputs) {
    // Per tenant, its views in output order: a later view of the same meter wins, in
    // the hash and the index.
    let mut views: BTreeMap<&str, Vec<&MeterView>> = BTreeMap::new();
    for view in &outputs.meters {
        if ids_are_valid(&[&view.tenant, &view.meter, &view.district]) {
            views.entry(&view.tenant).or_default().push(view);
        } else {
            plan.skip(|| {
                format!(
                    "meter view {}/{} (district {:?})",
                    view.tenant, view.meter, view.district
                )
            });
        }
    }
    let ttl_secs = ttl(config.meter_ttl_secs);
    for (tenant, views) in views {
        let index_keys = [
            keys.meters(tenant),
            keys.meters_by_district(tenant),
            keys.meters_last_ts(tenant),
            keys.meters_seen(tenant),
            keys.meters_district(tenant),
        ];
        for chunk in views.chunks(VIEWS_PER_CALL) {
            let meter_keys: Vec<String> = chunk
                .iter()
                .map(|view| keys.meter(tenant, &view.meter))
                .collect();
            let mut args = vec![ttl_secs.to_string()];
            for view in chunk {
                let (set, unset) = codec::view_fields(view);
                args.extend([
                    view.version.to_string(),
                    set.len().to_string(),
                    unset.len().to_string(),
                ]);
                for (field, value) in set {
                    args.extend([field.to_owned(), value]);
                }
                args.extend(unset.iter().map(|field| (*field).to_owned()));
            }
            plan.eval(tenant, APPLY_VIEWS, &meter_keys, &args);

            let mut script_keys = Vec::with_capacity(index_keys.len() + chunk.len());
            script_keys.extend_from_slice(&index_keys);
            script_keys.extend(meter_keys);
            let mut args = Vec::with_capacity(3 + 4 * chunk.len());
            args.extend([
                ttl_secs.to_string(),
                ttl_secs.saturating_mul(1_000).to_string(),
                METER_TRIM_PER_CALL.to_string(),
            ]);
            for view in chunk {
                args.extend([
                    view.meter.clone(),
                    view.district.clone(),
                    view.last_ts.map_or_else(String::new, |ts| ts.to_string()),
                    view.version.to_string(),
                ]);
            }
            plan.eval(tenant, INDEX_METERS, &script_keys, &args);
        }
    }
}

/// Per tenant, per meter: the bill line of the latest period (the last such line
/// when the outputs repeat it).
fn current_bills(
    plan: &mut ApplyPlan,
    bills: &[BillLine],
) -> BTreeMap<String, BTreeMap<String, BillLine>> {
    let mut current: BTreeMap<String, BTreeMap<String, BillLine>> = BTreeMap::new();
    for line in bills {
        if !ids_are_valid(&[&line.tenant, &line.meter]) {
            plan.skip(|| format!("bill {}/{}", line.tenant, line.meter));
            continue;
        }
        let meters = current.entry(line.tenant.clone()).or_default();
        match meters.get(&line.meter) {
            Some(kept) if kept.period > line.period => {}
            _ => {
                meters.insert(line.meter.clone(), line.clone());
            }
        }
    }
    current
}

fn bills(
    plan: &mut ApplyPlan,
    keys: &KeySpace,
    config: &RedisConfig,
    bills: &[BillLine],
    versions: &Versions,
) {
    for (tenant, meters) in current_bills(plan, bills) {
        let mut meter_keys = Vec::with_capacity(meters.len());
        let mut args = Vec::with_capacity(1 + 4 * meters.len());
        args.push(ttl(config.meter_ttl_secs).to_string());
        for (meter, line) in &meters {
            meter_keys.push(keys.meter(&tenant, meter));
            args.extend([
                line.period.clone(),
                line.usage_l.to_string(),
                line.amount_cents.to_string(),
                versions.arg(&tenant, meter),
            ]);
        }
        plan.eval(&tenant, SET_BILLS, &meter_keys, &args);
    }
}

pub(crate) fn district_ttl(config: &RedisConfig, resolution: Resolution) -> i64 {
    ttl(match resolution {
        Resolution::Minute => config.district_minute_ttl_secs,
        Resolution::Hour => config.district_hour_ttl_secs,
        Resolution::Day => config.district_day_ttl_secs,
    })
}

/// Per row its hash and its series point; then per series one [`PUT_SERIES`] call
/// with the points of ungated rows, which also trims the series and keeps the
/// district index. A gated row (a merged total) writes its hash and its point in
/// its [`GATED`] call.
fn districts(
    plan: &mut ApplyPlan,
    keys: &KeySpace,
    config: &RedisConfig,
    rows: &[Aggregate<DistrictUsage>],
) {
    // Per series, its (start_ms, member) pairs in output order.
    let mut series: BTreeMap<(&str, &str, Resolution), Vec<String>> = BTreeMap::new();
    for &(row, version) in rows {
        if !ids_are_valid(&[&row.tenant, &row.district]) {
            plan.skip(|| format!("district row {}/{}", row.tenant, row.district));
            continue;
        }
        let key = keys.district(&row.tenant, &row.district, row.resolution, row.start_ms);
        let fields = codec::district_fields(row);
        let ttl = district_ttl(config, row.resolution);
        let points = series
            .entry((&row.tenant, &row.district, row.resolution))
            .or_default();
        let (start, member) = (row.start_ms.to_string(), codec::series_member(row));
        let Some(version) = version else {
            plan.hash(&row.tenant, &key, fields, ttl);
            points.extend([start, member]);
            continue;
        };
        let series_key = keys.series(&row.tenant, &row.district, row.resolution);
        let mut commands = hash_words(&key, fields, ttl);
        commands.push(vec![
            "ZREMRANGEBYSCORE".to_owned(),
            series_key.clone(),
            start.clone(),
            start.clone(),
        ]);
        commands.push(vec!["ZADD".to_owned(), series_key, start, member]);
        plan.gated(&row.tenant, KeySpace::shares(&key), version, commands);
    }
    // The district index lives as long as the longest series (days).
    let districts_ttl = district_ttl(config, Resolution::Day);
    for ((tenant, district, resolution), points) in series {
        let series_ttl = district_ttl(config, resolution);
        let mut args = Vec::with_capacity(5 + points.len());
        args.extend([
            series_ttl.to_string(),
            series_ttl.saturating_mul(1_000).to_string(),
            district.to_owned(),
            districts_ttl.to_string(),
            districts_ttl.saturating_mul(1_000).to_string(),
        ]);
        args.extend(points);
        plan.eval(
            tenant,
            PUT_SERIES,
            &[
                keys.series(tenant, district, resolution),
                keys.districts(tenant),
            ],
            &args,
        );
    }
}

/// Per list one [`REPLACE_TOP`] call; a gated list (a merged total) does the same
/// in its [`GATED`] call.
fn tops(
    plan: &mut ApplyPlan,
    keys: &KeySpace,
    config: &RedisConfig,
    lists: &[Aggregate<TopConsumers>],
) {
    for &(list, version) in lists {
        let stamp = day_label_stamp(&list.day);
        let Some(stamp) = stamp.filter(|_| ids_are_valid(&[&list.tenant])) else {
            plan.skip(|| format!("top list {}/{}", list.tenant, list.day));
            continue;
        };
        let key = keys.top(&list.tenant, &stamp);
        let ttl = ttl(config.top_ttl_secs).to_string();
        let mut scored = Vec::with_capacity(2 * list.entries.len());
        for entry in &list.entries {
            scored.push(codec::litres_score(entry.usage_l).to_string());
            scored.push(entry.meter.clone());
        }
        let Some(version) = version else {
            let args: Vec<String> = [ttl].into_iter().chain(scored).collect();
            plan.eval(&list.tenant, REPLACE_TOP, &[key], &args);
            continue;
        };
        let mut commands = vec![vec!["DEL".to_owned(), key.clone()]];
        if !scored.is_empty() {
            commands.push([vec!["ZADD".to_owned(), key.clone()], scored].concat());
            commands.push(vec!["EXPIRE".to_owned(), key.clone(), ttl]);
        }
        plan.gated(&list.tenant, KeySpace::shares(&key), version, commands);
    }
}

/// Per tenant with alert steps or a summary one [`APPLY_ALERTS`] call. A gated
/// summary (a merged total) writes its figures in a [`GATED`] call before it, and
/// the alert script only counts the open alerts into it.
fn alerts_and_summaries(
    plan: &mut ApplyPlan,
    keys: &KeySpace,
    config: &RedisConfig,
    alerts: &[AlertEvent],
    summaries: &[Aggregate<TenantSummary>],
    versions: &Versions,
) {
    let mut events: BTreeMap<&str, Vec<&AlertEvent>> = BTreeMap::new();
    for event in alerts {
        if ids_are_valid(&[&event.tenant, &event.meter]) {
            events.entry(&event.tenant).or_default().push(event);
        } else {
            plan.skip(|| format!("alert {}/{}", event.tenant, event.meter));
        }
    }
    let mut latest: BTreeMap<&str, Aggregate<TenantSummary>> = BTreeMap::new();
    for &(summary, version) in summaries {
        if ids_are_valid(&[&summary.tenant]) {
            latest.insert(&summary.tenant, (summary, version));
        } else {
            plan.skip(|| format!("summary {}", summary.tenant));
        }
    }

    let tenants: BTreeSet<&str> = events.keys().chain(latest.keys()).copied().collect();
    for tenant in tenants {
        let steps = events.get(tenant).map_or(&[][..], Vec::as_slice);
        let summary = latest.get(tenant);
        let meters: BTreeSet<&str> = steps.iter().map(|e| e.meter.as_str()).collect();
        let positions: HashMap<&str, usize> = meters
            .iter()
            .enumerate()
            .map(|(i, m)| (*m, i + 1))
            .collect();

        let mut script_keys = vec![
            keys.alerts_open(tenant),
            keys.summary(tenant),
            keys.alerts(tenant),
        ];
        script_keys.extend(meters.iter().map(|m| keys.meter(tenant, m)));
        let mut args = vec![
            ttl(config.alerts_ttl_secs).to_string(),
            ttl(config.meter_ttl_secs).to_string(),
            ttl(config.summary_ttl_secs).to_string(),
        ];
        if let Some((s, Some(version))) = summary {
            let key = keys.summary(tenant);
            let ttl = ttl(config.summary_ttl_secs);
            let commands = hash_words(&key, codec::summary_figures(s), ttl);
            plan.gated(tenant, KeySpace::shares(&key), *version, commands);
        }
        match summary {
            Some((s, None)) => args.extend([
                "1".to_owned(),
                s.day.clone(),
                s.usage_today_l.to_string(),
                s.meters_reporting.to_string(),
                s.updated_at.to_string(),
            ]),
            Some((_, Some(_))) | None => args.extend(["0", "", "", "", ""].map(String::from)),
        }
        args.push(config.alerts_stream_maxlen.to_string());
        args.push(steps.len().to_string());
        for event in steps {
            args.push(codec::open_field(event));
            args.push(event.opened_at.to_string());
            args.push(if event.state.is_open() {
                codec::alert_json(event)
            } else {
                String::new()
            });
            args.push(positions[event.meter.as_str()].to_string());
            let entry: [_; ENTRY_FIELDS] = codec::alert_entry(event);
            for (name, value) in entry {
                args.extend([name.to_owned(), value]);
            }
        }
        args.extend(meters.iter().map(|m| (*m).to_owned()));
        args.extend(meters.iter().map(|m| versions.arg(tenant, m)));
        args.extend(AlertKind::ALL.iter().map(|k| k.name().to_owned()));
        plan.eval(tenant, APPLY_ALERTS, &script_keys, &args);
    }
}

#[cfg(test)]
mod tests {
    use meterflow_model::analytics::TopEntry;
    use meterflow_model::{MeterView, Quality, TopConsumers};

    use super::*;

    fn line(meter: &str, period: &str, usage_l: u64) -> BillLine {
        BillLine {
            tenant: "acme".into(),
            meter: meter.into(),
            period: period.into(),
            currency: "EUR".into(),
            usage_l,
            tiers: Vec::new(),
            fixed_cents: 800,
            amount_cents: 800 + usage_l,
            estimated: false,
            final_: false,
        }
    }

    #[test]
    fn the_latest_period_of_each_meter_is_its_current_bill() {
        let mut plan = plan(
            &KeySpace::new("mf"),
            &RedisConfig::default(),
            Grouping::One,
            &Outputs::default(),
            None,
        );
        assert_eq!(plan.commands, 0);
        let current = current_bills(
            &mut plan,
            &[
                line("m1", "2025-02", 5),
                line("m1", "2025-01", 9),
                line("m2", "2025-01", 1),
                line("m2", "2025-01", 2),
                line("bad:id", "2025-01", 2),
            ],
        );
        assert_eq!(current["acme"]["m1"].usage_l, 5);
        assert_eq!(current["acme"]["m2"].usage_l, 2);
        assert_eq!(current["acme"].len(), 2);
        assert_eq!(plan.skipped, 1);
    }

    #[test]
    fn every_part_of_the_outputs_is_planned_and_bad_names_are_skipped() {
        let view = view_in("acme", "m1", "default");
        let outputs = Outputs {
            meters: vec![
                view.clone(),
                MeterView {
                    tenant: "a{b}".into(),
                    ..view
                },
            ],
            bills: vec![line("m1", "2025-01", 1)],
            alerts: Vec::new(),
            exceptions: Vec::new(),
            districts: vec![
                DistrictUsage::new("acme", "north", Resolution::Minute, 0),
                DistrictUsage::new("acme", "no:rth", Resolution::Minute, 0),
            ],
            top: vec![
                TopConsumers {
                    tenant: "acme".into(),
                    day: "2025-01-15".into(),
                    day_start_ms: 0,
                    limit: 1,
                    changed: Vec::new(),
                    entries: vec![TopEntry {
                        meter: "m1".into(),
                        usage_l: 3,
                    }],
                },
                TopConsumers {
                    tenant: "acme".into(),
                    day: "15/01/2025".into(),
                    day_start_ms: 0,
                    limit: 1,
                    changed: Vec::new(),
                    entries: Vec::new(),
                },
            ],
            summaries: vec![TenantSummary {
                tenant: "acme".into(),
                ..TenantSummary::default()
            }],
        };
        let plan = plan(
            &KeySpace::new("mf"),
            &RedisConfig::default(),
            Grouping::One,
            &outputs,
            None,
        );
        // view, index script, bills script, district row, series script, top script,
        // alerts/summary script.
        assert_eq!(plan.commands, 7);
        assert_eq!(plan.skipped, 3);
        assert!(plan.first_skipped.unwrap().contains("a{b}"));
    }

    fn view_in(tenant: &str, meter: &str, district: &str) -> MeterView {
        MeterView {
            tenant: tenant.into(),
            meter: meter.into(),
            last_seq: None,
            last_ts: None,
            reg: None,
            rev: None,
            flow: None,
            temp: None,
            today_l: 0,
            quality: Quality::Actual,
            district: district.into(),
            size: None,
            battery: None,
            rssi: None,
            version: 0,
        }
    }

    /// A view whose district is not an id is skipped whole (its hash and its index
    /// entry): the district is part of an index member. Index calls go per tenant,
    /// in chunks; series calls per (tenant, district, resolution).
    #[test]
    fn views_are_indexed_in_chunks_per_tenant_and_rows_per_series() {
        let mut meters: Vec<_> = (0..VIEWS_PER_CALL + 1)
            .map(|i| view_in("acme", &format!("m{i}"), "north"))
            .collect();
        meters.push(view_in("other", "m1", "north"));
        meters.push(view_in("acme", "m1", "no:rth"));
        meters.push(view_in("acme", "m1", ""));
        let districts = vec![
            DistrictUsage::new("acme", "north", Resolution::Minute, 0),
            DistrictUsage::new("acme", "north", Resolution::Minute, 60_000),
            DistrictUsage::new("acme", "north", Resolution::Hour, 0),
            DistrictUsage::new("acme", "south", Resolution::Minute, 0),
        ];
        let plan = plan(
            &KeySpace::new("mf"),
            &RedisConfig::default(),
            Grouping::One,
            &Outputs {
                meters,
                districts,
                ..Outputs::default()
            },
            None,
        );
        // acme's views and index in two pairs of calls, other's in one pair; four
        // row hashes and three series.
        assert_eq!(plan.commands, 2 * 3 + 4 + 3);
        assert_eq!(plan.skipped, 2);
    }

    /// Every part of the outputs for three tenants: one pipeline with everything, or
    /// one per tenant in which every key (and script key) is that tenant's — so on a
    /// cluster each pipeline stays in one slot.
    #[test]
    fn per_tenant_grouping_gives_each_tenant_its_own_pipeline_of_its_own_keys() {
        let tenants = ["acme", "other", "third"];
        let mut outputs = Outputs::default();
        for tenant in tenants {
            outputs.meters.push(view_in(tenant, "m1", "north"));
            outputs.bills.push(BillLine {
                tenant: tenant.into(),
                ..line("m1", "2025-01", 1)
            });
            outputs
                .districts
                .push(DistrictUsage::new(tenant, "north", Resolution::Minute, 0));
            outputs.top.push(TopConsumers {
                tenant: tenant.into(),
                day: "2025-01-15".into(),
                day_start_ms: 0,
                limit: 1,
                changed: Vec::new(),
                entries: Vec::new(),
            });
            outputs.summaries.push(TenantSummary {
                tenant: tenant.into(),
                ..TenantSummary::default()
            });
        }
        let planned = |grouping| {
            plan(
                &KeySpace::new("mf"),
                &RedisConfig::default(),
                grouping,
                &outputs,
                None,
            )
        };
        let one = planned(Grouping::One);
        assert_eq!(one.pipes.keys().collect::<Vec<_>>(), [""]);
        let per_tenant = planned(Grouping::PerTenant);
        assert_eq!(per_tenant.pipes.keys().collect::<Vec<_>>(), tenants);
        assert_eq!(per_tenant.commands, one.commands);
        let commands_of = |pipe: &Pipeline| pipe.cmd_iter().count();
        assert_eq!(
            per_tenant.pipes.values().map(commands_of).sum::<usize>(),
            commands_of(&one.pipes[""])
        );
        for (tenant, pipe) in &per_tenant.pipes {
            let own = format!("mf:{{{tenant}}}:");
            let mut keys = 0;
            for cmd in pipe.cmd_iter() {
                for arg in cmd.args_iter() {
                    if let redis::Arg::Simple(bytes) = arg
                        && bytes.starts_with(b"mf:{")
                    {
                        keys += 1;
                        assert!(bytes.starts_with(own.as_bytes()), "{tenant}: {bytes:?}");
                    }
                }
            }
            assert!(keys >= 10, "{tenant}: only {keys} keys");
        }
    }
}
