//! Aggregates with several writers. In distributed mode each processor counts only
//! the meters it owns, so a district window, a day's top list and a tenant's
//! summary are each the merge of every processor's *share* (DESIGN §9). A cache
//! with a contributor ([`RedisCache::with_contributor`]) writes them in two rounds:
//!
//! 1. [`PUT_SHARES`]: per target key, the contributor's share (JSON) in its field of
//!    `{target}:shares`, the hash's version `#v` raised by one, and every share back
//!    — atomically, so a reply holds exactly the shares written up to its version.
//! 2. The merge of those shares ([`DistrictUsage::merge`], [`TopConsumers::merge`],
//!    the summaries of the newest day added up) is written to the target key as
//!    before, inside [`GATED`], which writes only when no total of that or a higher
//!    version was written (`#w`). The writer that read last writes last whatever
//!    order the writes land in, so every target ends as the merge of every share.
//!
//! A contributor is one run of a processor: a restarted one starts a share of its
//! own beside the one it left, which keeps what that run counted (each meter's
//! persisted analytics state keeps a row from being counted by both).
//!
//! [`RedisCache::with_contributor`]: super::RedisCache::with_contributor
//! [`PUT_SHARES`]: super::scripts::PUT_SHARES
//! [`GATED`]: super::scripts::GATED

use std::collections::BTreeMap;

use meterflow_model::analytics::{DistrictUsage, TopConsumers};
use meterflow_model::{Outputs, TenantSummary};
use serde::de::DeserializeOwned;
use tracing::warn;

use super::RedisConfig;
use super::apply::{district_ttl, ttl};
use super::keys::{KeySpace, day_label_stamp, ids_are_valid};

/// The field of a shares hash holding its version. It and `#w` (the version of the
/// total last written) start with `#`, which no contributor id does.
const VERSION_FIELD: &str = "#v";

/// A merged aggregate and the version of the shares it was merged from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Gated<T> {
    pub(crate) total: T,
    pub(crate) version: i64,
}

/// The totals one apply writes in round two.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) districts: Vec<Gated<DistrictUsage>>,
    pub(crate) top: Vec<Gated<TopConsumers>>,
    pub(crate) summaries: Vec<Gated<TenantSummary>>,
}

/// One contributor's share of one target.
enum Share<'a> {
    District(&'a DistrictUsage),
    Top(&'a TopConsumers),
    Summary(&'a TenantSummary),
}

impl Share<'_> {
    fn json(&self) -> String {
        match self {
            Share::District(row) => serde_json::to_string(row),
            Share::Top(list) => serde_json::to_string(list),
            Share::Summary(summary) => serde_json::to_string(summary),
        }
        .expect("aggregates serialize to JSON")
    }
}

/// One [`PUT_SHARES`](super::scripts::PUT_SHARES) call of round one: targets of one
/// tenant (one slot).
pub(crate) struct ShareCall<'a> {
    pub(crate) keys: Vec<String>,
    pub(crate) args: Vec<String>,
    shares: Vec<Share<'a>>,
}

/// Targets per [`PUT_SHARES`](super::scripts::PUT_SHARES) call: each costs the
/// script a few commands and a share read back, so a call stays within a few
/// milliseconds of Redis time however many districts a tenant flushes at once.
pub(crate) const SHARES_PER_CALL: usize = 500;

/// The aggregates of `outputs` as round-one calls, per tenant (one slot) one per
/// [`SHARES_PER_CALL`] targets; a target given twice is shared once, as its later
/// row. Rows whose names are not ids are left out here, as the apply plan leaves
/// them out.
pub(crate) fn share_calls<'a>(
    keys: &KeySpace,
    config: &RedisConfig,
    contributor: &str,
    outputs: &'a Outputs,
) -> Vec<ShareCall<'a>> {
    // Per tenant, per shares key: TTL and share.
    let mut targets: BTreeMap<&str, BTreeMap<String, (i64, Share<'a>)>> = BTreeMap::new();
    for row in &outputs.districts {
        if ids_are_valid(&[&row.tenant, &row.district]) {
            let key = keys.district(&row.tenant, &row.district, row.resolution, row.start_ms);
            let ttl = district_ttl(config, row.resolution);
            let tenant = targets.entry(&row.tenant).or_default();
            tenant.insert(KeySpace::shares(&key), (ttl, Share::District(row)));
        }
    }
    for list in &outputs.top {
        if let Some(stamp) = day_label_stamp(&list.day).filter(|_| ids_are_valid(&[&list.tenant])) {
            let key = keys.top(&list.tenant, &stamp);
            let ttl = ttl(config.top_ttl_secs);
            let tenant = targets.entry(&list.tenant).or_default();
            tenant.insert(KeySpace::shares(&key), (ttl, Share::Top(list)));
        }
    }
    for summary in &outputs.summaries {
        if ids_are_valid(&[&summary.tenant]) {
            let key = keys.summary(&summary.tenant);
            let ttl = ttl(config.summary_ttl_secs);
            let tenant = targets.entry(&summary.tenant).or_default();
            tenant.insert(KeySpace::shares(&key), (ttl, Share::Summary(summary)));
        }
    }
    let mut calls = Vec::new();
    for targets in targets.into_values() {
        let mut targets = targets.into_iter().peekable();
        while targets.peek().is_some() {
            let mut call = ShareCall {
                keys: Vec::new(),
                args: vec![contributor.to_owned()],
                shares: Vec::new(),
            };
            for (key, (ttl, share)) in targets.by_ref().take(SHARES_PER_CALL) {
                call.args.extend([ttl.to_string(), share.json()]);
                call.keys.push(key);
                call.shares.push(share);
            }
            calls.push(call);
        }
    }
    calls
}

/// The totals of round one's replies: per call, one reply per key, the shares hash
/// as `HGETALL` gives it.
pub(crate) fn totals(calls: &[ShareCall<'_>], replies: Vec<Vec<Vec<String>>>) -> Totals {
    let mut totals = Totals::default();
    for (call, replies) in calls.iter().zip(replies) {
        for ((share, key), reply) in call.shares.iter().zip(&call.keys).zip(replies) {
            match share {
                Share::District(row) => {
                    let (version, shares) = parse_shares(key, reply);
                    let total = district_total(row, &shares);
                    totals.districts.push(Gated { total, version });
                }
                Share::Top(list) => {
                    let (version, shares) = parse_shares(key, reply);
                    let total = top_total(list, &shares);
                    totals.top.push(Gated { total, version });
                }
                Share::Summary(summary) => {
                    let (version, shares) = parse_shares(key, reply);
                    let total = summary_total(summary, &shares);
                    totals.summaries.push(Gated { total, version });
                }
            }
        }
    }
    totals
}

/// The version and the shares of a shares hash's `HGETALL`; a share that is not
/// JSON of `T` (written by another version of meterflow, or by hand) is left out
/// and logged.
fn parse_shares<T: DeserializeOwned>(key: &str, reply: Vec<String>) -> (i64, Vec<T>) {
    let mut version = 0;
    let mut shares = Vec::with_capacity(reply.len() / 2);
    let mut fields = reply.into_iter();
    while let (Some(field), Some(value)) = (fields.next(), fields.next()) {
        if field == VERSION_FIELD {
            version = value.parse().unwrap_or(0);
        } else if !field.starts_with('#') {
            match serde_json::from_str(&value) {
                Ok(share) => shares.push(share),
                Err(error) => {
                    warn!(key, contributor = field, %error, "a share that is not an aggregate of this kind is left out of the total");
                }
            }
        }
    }
    (version, shares)
}

/// Every share of `row`'s window merged.
fn district_total(row: &DistrictUsage, shares: &[DistrictUsage]) -> DistrictUsage {
    let mut total = DistrictUsage::new(&row.tenant, &row.district, row.resolution, row.start_ms);
    for share in shares.iter().filter(|share| share.same_window(row)) {
        total.merge(share);
    }
    total
}

/// Every share of `list`'s day merged: the top of their union.
fn top_total(list: &TopConsumers, shares: &[TopConsumers]) -> TopConsumers {
    let mut total = TopConsumers {
        entries: Vec::new(),
        changed: Vec::new(),
        ..list.clone()
    };
    let same_day = |share: &&TopConsumers| share.day == list.day && share.tenant == list.tenant;
    for share in shares.iter().filter(same_day) {
        total.merge(share);
    }
    total
}

/// The shares of the newest day among `shares` added up (a contributor still on
/// yesterday has counted nothing of today yet); `alerts_open` is the alert
/// script's, not a share's.
fn summary_total(summary: &TenantSummary, shares: &[TenantSummary]) -> TenantSummary {
    let newest = shares
        .iter()
        .filter(|share| share.tenant == summary.tenant)
        .map(|share| share.day.as_str())
        .max()
        .unwrap_or(&summary.day);
    let mut total = TenantSummary {
        tenant: summary.tenant.clone(),
        day: newest.to_owned(),
        ..TenantSummary::default()
    };
    for share in shares
        .iter()
        .filter(|s| s.tenant == summary.tenant && s.day == newest)
    {
        total.usage_today_l = total.usage_today_l.saturating_add(share.usage_today_l);
        total.meters_reporting = total
            .meters_reporting
            .saturating_add(share.meters_reporting);
        total.updated_at = total.updated_at.max(share.updated_at);
    }
    total
}

#[cfg(test)]
mod tests {
    use meterflow_model::analytics::Resolution;

    use super::*;

    fn row(usage_l: u64, meters: u64, night: [Option<u64>; 2]) -> DistrictUsage {
        DistrictUsage {
            usage_l,
            meters,
            night_hour_l: night,
            ..DistrictUsage::new("acme", "north", Resolution::Day, 1_000)
        }
    }

    fn reply(version: i64, shares: &[(&str, String)]) -> Vec<String> {
        let mut reply = vec![VERSION_FIELD.to_owned(), version.to_string()];
        reply.extend(["#w".to_owned(), "3".to_owned()]);
        for (contributor, json) in shares {
            reply.extend([(*contributor).to_owned(), json.clone()]);
        }
        reply
    }

    /// Round one's calls of contributor `p1` for `outputs`, keys prefixed `mf`.
    fn calls_of(outputs: &Outputs) -> Vec<ShareCall<'_>> {
        share_calls(&KeySpace::new("mf"), &RedisConfig::default(), "p1", outputs)
    }

    #[test]
    fn a_windows_total_merges_every_contributors_share() {
        let outputs = Outputs {
            districts: vec![row(10, 1, [Some(4), None])],
            ..Outputs::default()
        };
        let calls = calls_of(&outputs);
        assert_eq!(calls.len(), 1);
        assert_eq!(
            calls[0].keys,
            vec!["mf:{acme}:district:north:day:19700101:shares"]
        );
        assert_eq!(calls[0].args[0], "p1");
        let mine = serde_json::to_string(&outputs.districts[0]).unwrap();
        let theirs = serde_json::to_string(&row(25, 2, [Some(1), Some(7)])).unwrap();
        let garbage = "not json".to_owned();
        let replies = vec![vec![reply(
            7,
            &[("p1", mine), ("p2", theirs), ("p3", garbage)],
        )]];
        let totals = totals(&calls, replies);
        let total = &totals.districts[0];
        assert_eq!(total.version, 7);
        assert_eq!(
            (total.total.usage_l, total.total.meters),
            (35, 3),
            "the unreadable share is left out"
        );
        assert_eq!(total.total.night_hour_l, [Some(5), Some(7)]);
        assert_eq!(
            total.total.night_flow_lph,
            Some(5),
            "derived from the merge"
        );
    }

    #[test]
    fn a_tenants_shares_are_sent_in_calls_of_bounded_size() {
        let rows = (0..SHARES_PER_CALL + 1)
            .map(|d| DistrictUsage::new("acme", &format!("d{d}"), Resolution::Hour, 0));
        let outputs = Outputs {
            districts: rows
                .chain([DistrictUsage::new("other", "x", Resolution::Hour, 0)])
                .collect(),
            ..Outputs::default()
        };
        let calls = calls_of(&outputs);
        let sizes: Vec<usize> = calls.iter().map(|c| c.keys.len()).collect();
        assert_eq!(sizes, [SHARES_PER_CALL, 1, 1]);
        assert!(calls.iter().all(|c| c.args.len() == 1 + 2 * c.keys.len()));
    }

    #[test]
    fn top_lists_and_summaries_merge_by_day() {
        let list = |offers: &[(&str, u64)]| {
            let mut list = TopConsumers {
                tenant: "acme".into(),
                day: "2026-12-05".into(),
                day_start_ms: 0,
                limit: 2,
                changed: Vec::new(),
                entries: Vec::new(),
            };
            offers.iter().for_each(|(meter, l)| list.offer(meter, *l));
            list
        };
        // A meter that moved between processors is in both lists: its larger
        // (later) day total counts.
        let top = top_total(
            &list(&[]),
            &[
                list(&[("m1", 50), ("m2", 40)]),
                list(&[("m1", 70), ("m3", 10)]),
            ],
        );
        assert_eq!(top.entries, list(&[("m1", 70), ("m2", 40)]).entries);
        let summary = |day: &str, usage_today_l, updated_at| TenantSummary {
            tenant: "acme".into(),
            day: day.into(),
            usage_today_l,
            meters_reporting: 1,
            alerts_open: 9,
            updated_at,
        };
        let total = summary_total(
            &summary("2026-12-05", 5, 1),
            &[
                summary("2026-12-05", 5, 1),
                summary("2026-12-04", 900, 3),
                summary("2026-12-05", 7, 2),
            ],
        );
        assert_eq!(
            total,
            TenantSummary {
                usage_today_l: 12,
                meters_reporting: 2,
                alerts_open: 0,
                ..summary("2026-12-05", 12, 2)
            }
        );
    }
}
