//! Model values to and from what the Redis contract stores: hash fields, stream
//! entries, the JSON of `alerts:open` and sorted-set scores. Pure functions; every
//! parse of Redis data returns an error naming the key and field instead of
//! panicking (the data may have been written by another version, or by hand).

use std::collections::HashMap;
use std::str::FromStr;

use meterflow_model::alert::{AlertEvent, AlertKind, EpisodeState, Priority};
use meterflow_model::analytics::{DistrictUsage, Resolution, TopEntry, UsageSketch};
use meterflow_model::{MeterKey, MeterSize, MeterView, Quality, TenantSummary};

use super::fields::{self, alert, district, summary};
use crate::CacheError;

/// A hash's fields: values to set, and names of unknown ones to delete (a value
/// that became unknown must not linger from an older write).
pub(crate) type FieldUpdate = (Vec<(&'static str, String)>, Vec<&'static str>);

fn split_optional(
    mut set: Vec<(&'static str, String)>,
    optional: impl IntoIterator<Item = (&'static str, Option<String>)>,
) -> FieldUpdate {
    let mut unset = Vec::new();
    for (name, value) in optional {
        match value {
            Some(value) => set.push((name, value)),
            None => unset.push(name),
        }
    }
    (set, unset)
}

/// The hash fields of a meter view. The reading fields mirror the newest reading, so
/// an unknown one is deleted; battery and signal are what the meter *last reported*,
/// so a view without them (its batch's newest message carried none) leaves the
/// stored values in place instead.
pub(crate) fn view_fields(view: &MeterView) -> FieldUpdate {
    let (mut set, unset) = split_optional(
        vec![
            (fields::TODAY_L, view.today_l.to_string()),
            (fields::QUALITY, view.quality.as_str().to_owned()),
            (fields::DISTRICT, view.district.clone()),
        ],
        [
            (fields::LAST_SEQ, view.last_seq.map(|v| v.to_string())),
            (fields::LAST_TS, view.last_ts.map(|v| v.to_string())),
            (fields::REG, view.reg.map(|v| v.to_string())),
            (fields::REV, view.rev.map(|v| v.to_string())),
            (fields::FLOW, view.flow.map(|v| v.to_string())),
            (fields::TEMP, view.temp.map(|v| v.to_string())),
        ],
    );
    set.extend(
        [
            (fields::BATTERY, view.battery.map(|v| v.to_string())),
            (fields::RSSI, view.rssi.map(|v| v.to_string())),
            (fields::SIZE, view.size.map(|v| v.name().to_owned())),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|value| (name, value))),
    );
    (set, unset)
}

/// District of a meter hash written before the field existed: the model's name for
/// "unassigned". The next view of the meter writes the real one.
const UNKNOWN_DISTRICT: &str = "default";

pub(crate) fn parse_field<T: FromStr>(
    key: &str,
    hash: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, CacheError> {
    hash.get(name)
        .map(|raw| {
            raw.parse::<T>().map_err(|_| {
                CacheError(format!(
                    "{key}: field {name} holds {raw:?}, not a number in range"
                ))
            })
        })
        .transpose()
}

fn require_field<T: FromStr>(
    key: &str,
    hash: &HashMap<String, String>,
    name: &str,
) -> Result<T, CacheError> {
    parse_field(key, hash, name)?
        .ok_or_else(|| CacheError(format!("{key}: field {name} is missing")))
}

pub(crate) fn parse_quality(raw: &str) -> Option<Quality> {
    Quality::ALL.into_iter().find(|q| q.as_str() == raw)
}

fn parse_size(raw: &str) -> Option<MeterSize> {
    MeterSize::ALL.into_iter().find(|s| s.name() == raw)
}

/// A meter's hash back into a view; `None` for a missing (or expired) key, and for
/// a hash that so far holds only bill or alert fields (no view applied yet).
pub(crate) fn parse_view(
    key: &str,
    meter: &MeterKey,
    hash: &HashMap<String, String>,
) -> Result<Option<MeterView>, CacheError> {
    if !hash.contains_key(fields::TODAY_L) && !hash.contains_key(fields::QUALITY) {
        return Ok(None);
    }
    let today_l = require_field(key, hash, fields::TODAY_L)?;
    let quality = match hash.get(fields::QUALITY) {
        Some(raw) => parse_quality(raw).ok_or_else(|| {
            CacheError(format!(
                "{key}: unknown quality {raw:?} (written by a newer meterflow?)"
            ))
        })?,
        None => {
            return Err(CacheError(format!(
                "{key}: field {} is missing",
                fields::QUALITY
            )));
        }
    };
    Ok(Some(MeterView {
        tenant: meter.tenant.as_str().to_owned(),
        meter: meter.meter.as_str().to_owned(),
        last_seq: parse_field(key, hash, fields::LAST_SEQ)?,
        last_ts: parse_field(key, hash, fields::LAST_TS)?,
        reg: parse_field(key, hash, fields::REG)?,
        rev: parse_field(key, hash, fields::REV)?,
        flow: parse_field(key, hash, fields::FLOW)?,
        temp: parse_field(key, hash, fields::TEMP)?,
        today_l,
        quality,
        district: hash
            .get(fields::DISTRICT)
            .map_or(UNKNOWN_DISTRICT, String::as_str)
            .to_owned(),
        size: hash
            .get(fields::SIZE)
            .map(|raw| {
                parse_size(raw).ok_or_else(|| {
                    CacheError(format!(
                        "{key}: unknown size {raw:?} (written by a newer meterflow?)"
                    ))
                })
            })
            .transpose()?,
        battery: parse_field(key, hash, fields::BATTERY)?,
        rssi: parse_field(key, hash, fields::RSSI)?,
        version: parse_field(key, hash, fields::VERSION)?.unwrap_or(0),
    }))
}

/// A summary's figures: every field but `alerts_open`, which the alert script
/// counts.
pub(crate) fn summary_figures(s: &TenantSummary) -> FieldUpdate {
    let figures = vec![
        (summary::DAY, s.day.clone()),
        (summary::USAGE_TODAY_L, s.usage_today_l.to_string()),
        (summary::METERS_REPORTING, s.meters_reporting.to_string()),
        (summary::UPDATED_AT, s.updated_at.to_string()),
    ];
    (figures, Vec::new())
}

/// The hash fields of a district row. The sketch behind the percentiles is not a
/// field: it only serves merging (the sink's rollup, and `shares.rs`, which keeps
/// it in each share's JSON).
pub(crate) fn district_fields(row: &DistrictUsage) -> FieldUpdate {
    split_optional(
        vec![
            (district::START_MS, row.start_ms.to_string()),
            (district::USAGE_L, row.usage_l.to_string()),
            (district::METERS, row.meters.to_string()),
        ],
        [
            (district::P50_L, row.p50_l.map(|v| v.to_string())),
            (district::P90_L, row.p90_l.map(|v| v.to_string())),
            (district::P99_L, row.p99_l.map(|v| v.to_string())),
            (
                district::NIGHT_02_L,
                row.night_hour_l[0].map(|v| v.to_string()),
            ),
            (
                district::NIGHT_03_L,
                row.night_hour_l[1].map(|v| v.to_string()),
            ),
            (
                district::NIGHT_FLOW_LPH,
                row.night_flow_lph.map(|v| v.to_string()),
            ),
            (district::INFLOW_L, row.inflow_l.map(|v| v.to_string())),
            (
                district::INFLOW_NIGHT_02_L,
                row.inflow_night_hour_l[0].map(|v| v.to_string()),
            ),
            (
                district::INFLOW_NIGHT_03_L,
                row.inflow_night_hour_l[1].map(|v| v.to_string()),
            ),
            (
                district::INFLOW_NIGHT_FLOW_LPH,
                row.inflow_night_flow_lph.map(|v| v.to_string()),
            ),
        ],
    )
}

/// The member of a district row in its series ZSET (`mf:{t}:series:district:{d}:{res}`),
/// fields joined by `:`, an unknown value as an empty field:
/// - minute: `{start_ms}:{usage_l}:{meters}`
/// - hour: `{start_ms}:{usage_l}:{meters}:{p50_l}:{p90_l}:{p99_l}`
/// - day: `{start_ms}:{usage_l}:{meters}:{night_flow_lph}`
///
/// The start leads so that members of different windows never collide and a member
/// is self-describing without its score.
pub(crate) fn series_member(row: &DistrictUsage) -> String {
    let known = |value: Option<u64>| value.map_or_else(String::new, |v| v.to_string());
    let mut member = format!("{}:{}:{}", row.start_ms, row.usage_l, row.meters);
    match row.resolution {
        Resolution::Minute => {}
        Resolution::Hour => {
            for value in [row.p50_l, row.p90_l, row.p99_l] {
                member.push(':');
                member.push_str(&known(value));
            }
        }
        Resolution::Day => {
            member.push(':');
            member.push_str(&known(row.night_flow_lph));
        }
    }
    member
}

/// What the caches return for a district row: everything but the merge-only sketch.
pub(crate) fn cached_row(row: &DistrictUsage) -> DistrictUsage {
    DistrictUsage {
        meter_hour_sketch: UsageSketch::default(),
        ..row.clone()
    }
}

/// A district hash back into a row; `None` for a missing key.
pub(crate) fn parse_district(
    key: &str,
    tenant: &str,
    district_id: &str,
    resolution: Resolution,
    hash: &HashMap<String, String>,
) -> Result<Option<DistrictUsage>, CacheError> {
    if hash.is_empty() {
        return Ok(None);
    }
    let mut row = DistrictUsage::new(
        tenant,
        district_id,
        resolution,
        require_field(key, hash, district::START_MS)?,
    );
    row.usage_l = require_field(key, hash, district::USAGE_L)?;
    row.meters = require_field(key, hash, district::METERS)?;
    row.p50_l = parse_field(key, hash, district::P50_L)?;
    row.p90_l = parse_field(key, hash, district::P90_L)?;
    row.p99_l = parse_field(key, hash, district::P99_L)?;
    row.night_hour_l = [
        parse_field(key, hash, district::NIGHT_02_L)?,
        parse_field(key, hash, district::NIGHT_03_L)?,
    ];
    row.night_flow_lph = parse_field(key, hash, district::NIGHT_FLOW_LPH)?;
    row.inflow_l = parse_field(key, hash, district::INFLOW_L)?;
    row.inflow_night_hour_l = [
        parse_field(key, hash, district::INFLOW_NIGHT_02_L)?,
        parse_field(key, hash, district::INFLOW_NIGHT_03_L)?,
    ];
    row.inflow_night_flow_lph = parse_field(key, hash, district::INFLOW_NIGHT_FLOW_LPH)?;
    Ok(Some(row))
}

fn parse_kind(raw: &str) -> Option<AlertKind> {
    AlertKind::ALL.into_iter().find(|k| k.name() == raw)
}

fn parse_priority(raw: &str) -> Option<Priority> {
    Priority::ALL.into_iter().find(|p| p.name() == raw)
}

fn parse_state(raw: &str) -> Option<EpisodeState> {
    EpisodeState::ALL.into_iter().find(|s| s.name() == raw)
}

/// The field of an open episode in `alerts:open`: `{meter}:{kind}`.
pub(crate) fn open_field(event: &AlertEvent) -> String {
    format!("{}:{}", event.meter, event.kind.name())
}

/// The fields of an alert event's stream entry.
pub(crate) fn alert_entry(event: &AlertEvent) -> [(&'static str, String); 8] {
    [
        (alert::METER, event.meter.clone()),
        (alert::KIND, event.kind.name().to_owned()),
        (alert::PRIORITY, event.priority.name().to_owned()),
        (alert::STATE, event.state.name().to_owned()),
        (alert::OPENED_AT, event.opened_at.to_string()),
        (alert::AT, event.at.to_string()),
        (alert::DETAIL, event.detail.clone()),
        (alert::REVISION, event.revision.to_string()),
    ]
}

/// The JSON of an event in `alerts:open`: `AlertEvent` as serde writes it (the field
/// names of `fields::alert`).
pub(crate) fn alert_json(event: &AlertEvent) -> String {
    serde_json::to_string(event).expect("an alert event is plain data")
}

/// Reads one alert event from named text and integer values (a stream entry or a
/// JSON object), for `tenant`; `what` names the source in errors.
fn alert_from(
    what: &str,
    tenant: &str,
    text: impl Fn(&str) -> Option<String>,
    int: impl Fn(&str) -> Option<i64>,
) -> Result<AlertEvent, CacheError> {
    let missing = |name: &str| CacheError(format!("{what}: {name} is missing or malformed"));
    let named = |name: &'static str| text(name).ok_or_else(|| missing(name));
    let kind_raw = named(alert::KIND)?;
    let kind = parse_kind(&kind_raw)
        .ok_or_else(|| CacheError(format!("{what}: unknown alert kind {kind_raw:?}")))?;
    let priority_raw = named(alert::PRIORITY)?;
    let state_raw = named(alert::STATE)?;
    let state = parse_state(&state_raw)
        .ok_or_else(|| CacheError(format!("{what}: unknown state {state_raw:?}")))?;
    let at = int(alert::AT).ok_or_else(|| missing(alert::AT))?;
    Ok(AlertEvent {
        tenant: tenant.to_owned(),
        meter: named(alert::METER)?,
        kind,
        priority: parse_priority(&priority_raw)
            .ok_or_else(|| CacheError(format!("{what}: unknown priority {priority_raw:?}")))?,
        state,
        opened_at: int(alert::OPENED_AT).ok_or_else(|| missing(alert::OPENED_AT))?,
        at,
        detail: named(alert::DETAIL)?,
        // Entries written before revisions have none: their order was this.
        revision: int(alert::REVISION).unwrap_or_else(|| AlertEvent::first_revision(at, state)),
    })
}

/// An `alerts:open` value back into its event.
pub(crate) fn parse_alert_json(
    key: &str,
    field: &str,
    tenant: &str,
    text: &str,
) -> Result<AlertEvent, CacheError> {
    let event: AlertEvent = serde_json::from_str(text).map_err(|e| {
        CacheError(format!(
            "{key} field {field}: not an alert event's JSON: {e}"
        ))
    })?;
    // The key's tenant is the one that counts (as for stream entries).
    Ok(AlertEvent {
        tenant: tenant.to_owned(),
        ..event
    })
}

/// A stream entry (`XRANGE` pairs) back into its event.
pub(crate) fn parse_alert_entry(
    key: &str,
    id: &str,
    tenant: &str,
    pairs: &[String],
) -> Result<AlertEvent, CacheError> {
    let what = format!("{key} entry {id}");
    if !pairs.len().is_multiple_of(2) {
        return Err(CacheError(format!(
            "{what}: odd number of field names and values"
        )));
    }
    let entry: HashMap<&str, &str> = pairs
        .chunks_exact(2)
        .map(|pair| (pair[0].as_str(), pair[1].as_str()))
        .collect();
    alert_from(
        &what,
        tenant,
        |name| entry.get(name).map(|v| (*v).to_owned()),
        |name| entry.get(name).and_then(|v| v.parse().ok()),
    )
}

/// Open episodes, highest priority first; then newest `opened_at` first, then by
/// meter and kind, so the order is total.
pub(crate) fn sort_open_alerts(alerts: &mut [AlertEvent]) {
    alerts.sort_by(|a, b| {
        (a.priority, std::cmp::Reverse(a.opened_at), &a.meter, a.kind).cmp(&(
            b.priority,
            std::cmp::Reverse(b.opened_at),
            &b.meter,
            b.kind,
        ))
    });
}

/// Top entries, largest first, ties by meter id (the order of `TopConsumers`).
pub(crate) fn sort_top(entries: &mut [TopEntry]) {
    entries.sort_by(|a, b| {
        b.usage_l
            .cmp(&a.usage_l)
            .then_with(|| a.meter.cmp(&b.meter))
    });
}

/// Largest litres a sorted-set score (an IEEE double) holds exactly: 2^53.
const MAX_EXACT_SCORE: f64 = 9_007_199_254_740_992.0;

/// A `ZADD` score for litres. Daily litres of one meter are far below 2^53, where a
/// double stops being exact; above it the score is rounded, never wrapped.
pub(crate) fn litres_score(litres: u64) -> f64 {
    litres as f64
}

/// A sorted-set score back into litres.
pub(crate) fn score_litres(key: &str, member: &str, score: f64) -> Result<u64, CacheError> {
    if (0.0..=MAX_EXACT_SCORE).contains(&score) && score.fract() == 0.0 {
        Ok(score as u64)
    } else {
        Err(CacheError(format!(
            "{key}: member {member} has score {score}, not a whole number of litres"
        )))
    }
}

/// The summary hash back into a summary; `None` for a missing key.
pub(crate) fn parse_summary(
    key: &str,
    tenant: &str,
    hash: &HashMap<String, String>,
) -> Result<Option<TenantSummary>, CacheError> {
    if hash.is_empty() {
        return Ok(None);
    }
    Ok(Some(TenantSummary {
        tenant: tenant.to_owned(),
        day: hash
            .get(summary::DAY)
            .cloned()
            .ok_or_else(|| CacheError(format!("{key}: field {} is missing", summary::DAY)))?,
        usage_today_l: require_field(key, hash, summary::USAGE_TODAY_L)?,
        meters_reporting: require_field(key, hash, summary::METERS_REPORTING)?,
        alerts_open: parse_field(key, hash, summary::ALERTS_OPEN)?.unwrap_or(0),
        updated_at: require_field(key, hash, summary::UPDATED_AT)?,
    }))
}

#[cfg(test)]
mod tests {
    use meterflow_model::analytics::NIGHT_HOURS;
    use meterflow_model::{MeterId, TenantId};

    use super::*;

    fn hash_of(update: FieldUpdate) -> HashMap<String, String> {
        update
            .0
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }

    fn view() -> MeterView {
        MeterView {
            tenant: "acme".into(),
            meter: "M-1".into(),
            last_seq: Some(7),
            last_ts: Some(1_763_800_000_000),
            reg: Some(123_456),
            rev: Some(0),
            flow: Some(40),
            temp: None,
            today_l: 310,
            quality: Quality::Estimated,
            district: "default".into(),
            size: None,
            battery: None,
            rssi: None,
            version: 0,
        }
    }

    fn meter_key() -> MeterKey {
        MeterKey::new(
            TenantId::try_from("acme").unwrap(),
            MeterId::try_from("M-1").unwrap(),
        )
    }

    fn event(meter: &str, kind: AlertKind, state: EpisodeState) -> AlertEvent {
        AlertEvent {
            tenant: "acme".into(),
            meter: meter.into(),
            kind,
            priority: kind.priority(),
            state,
            opened_at: 1_700_000_000_000,
            at: 1_700_000_060_000,
            detail: "no zero-flow hour for 26 h, \"really\"".into(),
            revision: 1_700_000_060_000_007,
        }
    }

    #[test]
    fn view_fields_round_trip_and_absent_ones_are_deleted() {
        let v = view();
        let update = view_fields(&v);
        assert_eq!(update.1, vec![fields::TEMP]);
        let key = meter_key();
        assert_eq!(parse_view("k", &key, &hash_of(update)).unwrap(), Some(v));
        let full = MeterView {
            temp: Some(-15),
            district: "north-2".into(),
            battery: Some(87),
            rssi: Some(-97),
            ..view()
        };
        let update = view_fields(&full);
        assert!(update.1.is_empty());
        let hash = hash_of(update);
        assert_eq!(hash[fields::DISTRICT], "north-2");
        assert_eq!(hash[fields::BATTERY], "87");
        assert_eq!(hash[fields::RSSI], "-97");
        assert_eq!(parse_view("k", &key, &hash).unwrap(), Some(full));
        assert_eq!(parse_view("k", &key, &HashMap::new()).unwrap(), None);
        // A hash holding only bill or alert fields has no view yet.
        let extras: HashMap<String, String> =
            [(fields::ALERTS_OPEN.to_owned(), "1".to_owned())].into();
        assert_eq!(parse_view("k", &key, &extras).unwrap(), None);
    }

    /// Battery and signal are the last *reported* values: a view without them neither
    /// sets nor deletes them, so the hash keeps what an earlier view wrote.
    #[test]
    fn a_view_without_battery_or_signal_keeps_the_stored_ones() {
        let reported = MeterView {
            battery: Some(55),
            rssi: Some(-101),
            size: Some(MeterSize::Dn40),
            ..view()
        };
        let mut hash = hash_of(view_fields(&reported));
        let (set, unset) = view_fields(&view());
        for name in [fields::BATTERY, fields::RSSI, fields::SIZE] {
            assert!(!unset.contains(&name), "{name} must not be deleted");
            assert!(
                set.iter().all(|(n, _)| *n != name),
                "{name} must not be set"
            );
        }
        // As Redis would apply it: HSET the set, HDEL the unset.
        hash.extend(set.into_iter().map(|(k, v)| (k.to_owned(), v)));
        for name in unset {
            hash.remove(name);
        }
        let back = parse_view("k", &meter_key(), &hash).unwrap().unwrap();
        assert_eq!((back.battery, back.rssi), (Some(55), Some(-101)));
        assert_eq!(back.size, Some(MeterSize::Dn40), "{hash:?}");
        let mut unknown = hash.clone();
        unknown.insert(fields::SIZE.into(), "dn17".into());
        let error = parse_view("k", &meter_key(), &unknown).unwrap_err();
        assert!(error.0.contains("unknown size"), "{error:?}");
        assert_eq!(back.temp, None);
        // A hash from before the district field existed reads as unassigned.
        hash.remove(fields::DISTRICT);
        let old = parse_view("k", &meter_key(), &hash).unwrap().unwrap();
        assert_eq!(old.district, "default");
        hash.insert(fields::BATTERY.into(), "300".into());
        assert!(parse_view("k", &meter_key(), &hash).is_err());
    }

    #[test]
    fn series_members_carry_the_start_and_mark_unknowns_empty() {
        let mut minute = DistrictUsage::new("acme", "north", Resolution::Minute, 1_736_899_800_000);
        minute.usage_l = 12;
        minute.meters = 2;
        assert_eq!(series_member(&minute), "1736899800000:12:2");
        let mut hour = DistrictUsage::new("acme", "north", Resolution::Hour, -3_600_000);
        hour.usage_l = 40;
        hour.meters = 2;
        assert_eq!(series_member(&hour), "-3600000:40:2:::");
        hour.meter_hour_sketch.add(10);
        hour.meter_hour_sketch.add(30);
        hour.refresh_derived();
        assert_eq!(series_member(&hour), "-3600000:40:2:10:30:30");
        let mut day = DistrictUsage::new("acme", "north", Resolution::Day, 1_736_899_200_000);
        day.usage_l = 1_850;
        assert_eq!(series_member(&day), "1736899200000:1850:0:");
        day.night_hour_l = [Some(6), Some(4)];
        day.refresh_derived();
        assert_eq!(series_member(&day), "1736899200000:1850:0:4");
    }

    #[test]
    fn garbage_fields_are_errors_not_panics() {
        let key = meter_key();
        let mut hash: HashMap<String, String> = [
            (fields::TODAY_L.to_owned(), "1".to_owned()),
            (fields::QUALITY.to_owned(), "actual".to_owned()),
        ]
        .into();
        assert!(parse_view("k", &key, &hash).unwrap().is_some());
        hash.insert(fields::REG.into(), "-1".into());
        assert!(parse_view("k", &key, &hash).is_err());
        hash.remove(fields::REG);
        hash.insert(fields::QUALITY.into(), "great".into());
        assert!(parse_view("k", &key, &hash).is_err());
        hash.remove(fields::QUALITY);
        assert!(parse_view("k", &key, &hash).is_err());

        let row: HashMap<String, String> = [(district::USAGE_L.to_owned(), "x".to_owned())].into();
        assert!(parse_district("k", "acme", "d", Resolution::Hour, &row).is_err());
        let summary_hash: HashMap<String, String> =
            [(summary::DAY.to_owned(), "2025-01-15".to_owned())].into();
        assert!(parse_summary("k", "acme", &summary_hash).is_err());
        assert!(score_litres("k", "m", 1.5).is_err());
        assert!(score_litres("k", "m", -1.0).is_err());
        assert!(score_litres("k", "m", f64::NAN).is_err());
        assert_eq!(
            score_litres("k", "m", litres_score(123_456)).unwrap(),
            123_456
        );
    }

    #[test]
    fn district_rows_round_trip_without_their_sketch() {
        assert_eq!(NIGHT_HOURS, [2, 3], "night field names follow NIGHT_HOURS");
        let mut row = DistrictUsage::new("acme", "north", Resolution::Day, 1_736_899_200_000);
        row.usage_l = 213;
        row.meters = 2;
        row.meter_hour_sketch.add(10);
        row.night_hour_l = [Some(6), None];
        row.inflow_l = Some(260);
        row.inflow_night_hour_l = [None, Some(11)];
        row.refresh_derived();
        let update = district_fields(&row);
        assert!(update.1.contains(&district::NIGHT_03_L));
        assert!(update.1.contains(&district::INFLOW_NIGHT_02_L));
        let back = parse_district("k", "acme", "north", Resolution::Day, &hash_of(update))
            .unwrap()
            .unwrap();
        assert_eq!(back, cached_row(&row));
        assert_eq!(back.p50_l, Some(10));
        assert_eq!(back.night_flow_lph, Some(6));
        assert_eq!(back.inflow_l, Some(260));
        assert_eq!(back.inflow_night_flow_lph, Some(11));
        assert_eq!(
            parse_district("k", "acme", "north", Resolution::Day, &HashMap::new()).unwrap(),
            None
        );
    }

    #[test]
    fn alert_events_round_trip_through_json_and_stream_entries() {
        for kind in AlertKind::ALL {
            for state in EpisodeState::ALL {
                let e = event("M-1", kind, state);
                let json = alert_json(&e);
                assert_eq!(parse_alert_json("k", "f", "acme", &json).unwrap(), e);
                let pairs: Vec<String> = alert_entry(&e)
                    .into_iter()
                    .flat_map(|(k, v)| [k.to_owned(), v])
                    .collect();
                assert_eq!(parse_alert_entry("k", "1-0", "acme", &pairs).unwrap(), e);
            }
        }
        let e = event("M-1", AlertKind::NoCommunication, EpisodeState::Opened);
        assert_eq!(open_field(&e), "M-1:no_communication");
        assert_eq!(
            alert_json(&e),
            "{\"tenant\":\"acme\",\"meter\":\"M-1\",\"kind\":\"no_communication\",\
             \"priority\":\"low\",\"state\":\"opened\",\"opened_at\":1700000000000,\
             \"at\":1700000060000,\"detail\":\"no zero-flow hour for 26 h, \\\"really\\\"\",\
             \"revision\":1700000060000007}"
        );
        assert!(parse_alert_json("k", "f", "acme", "{\"kind\":\"meteor\"}").is_err());
        assert!(parse_alert_json("k", "f", "acme", "not json").is_err());
        assert!(parse_alert_entry("k", "1-0", "acme", &["meter".into()]).is_err());
    }

    #[test]
    fn open_alerts_sort_by_priority_then_newest() {
        let mut low = event("a", AlertKind::LowBattery, EpisodeState::Opened);
        low.opened_at = 5;
        let mut old_leak = event("b", AlertKind::Leak, EpisodeState::Opened);
        old_leak.opened_at = 1;
        let mut new_leak = event("c", AlertKind::Leak, EpisodeState::Updated);
        new_leak.opened_at = 2;
        let burst = event("d", AlertKind::Burst, EpisodeState::Opened);
        let mut alerts = vec![
            low.clone(),
            old_leak.clone(),
            burst.clone(),
            new_leak.clone(),
        ];
        sort_open_alerts(&mut alerts);
        assert_eq!(alerts, vec![burst, new_leak, old_leak, low]);
    }
}
