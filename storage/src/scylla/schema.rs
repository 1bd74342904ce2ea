//! The CQL schema of the ScyllaDB backend and its versioned migrations.
//!
//! Tables (DESIGN §5; `meter_hourly` arrives as a later migration):
//!
//! | table | primary key | holds | since |
//! |---|---|---|---|
//! | `readings` | `((tenant, meter, day), ts)` | reg, rev, flow, temp, interval_l, quality, seq, received_at | 1 |
//! | `reading_days` | `((tenant, meter), day)` | which days of a meter have readings | 1 |
//! | `meter_state` | `((tenant, meter))` | state (record blob), last_seq, last_ts | 1 |
//! | `dead_letters` | `((tenant, day), received_at, id)` newest first | topic, payload, reason, correlation_id | 1 |
//! | `dead_letter_days` | `((tenant), day)` newest first | which days of a tenant have dead letters | 1 |
//! | `bills` | `((tenant, period), meter)` | currency, usage_l, tiers, fixed_cents, amount_cents, is_estimated, is_final | 2 |
//! | `alerts` | `((tenant, day), opened_at, meter, kind)` newest first | priority, state, event_at, detail: the episode's latest event | 2 |
//! | `alert_days` | `((tenant), day)` newest first | which days of a tenant have alert episodes | 2 |
//! | `district_hourly` | `((tenant, district, day), hour)` | usage_l, meters, p50_l, p90_l, p99_l, sketch_zeros, sketch_bins, night_hour_l, night_flow_lph (2); inflow_l, inflow_night_hour_l, inflow_night_flow_lph (3) | 2 |
//! | `district_hourly_days` | `((tenant, district), day)` | which days of a district have hourly rows | 2 |
//! | `district_hourly_shares` | `((tenant, district, day), hour, contributor)` | the columns of `district_hourly`: one processor's share of the hour (distributed mode) | 5 |
//! | `schema_migrations` | `(version)` | name, applied_at | — |
//! | `schema_lease` | `(id)` | holder, taken_at: who migrates now (one row, TTL) | — |
//!
//! Column encodings:
//! - `day` is a CQL `date`: the UTC day of `ts` (readings) or `received_at` (dead
//!   letters), as [`meterflow_model::time::day_of`] computes it.
//! - Timestamps are CQL `timestamp` (epoch ms, the model's unit).
//! - Unsigned model integers (`reg`, `rev`, `interval_l`, `seq`, dead-letter `id`) are
//!   `bigint` holding the same 64 bits: exact for every value; values ≥ 2^63, which no
//!   meter produces, would merely look negative in cqlsh. `flow` (u32) is a `bigint`,
//!   `temp` a `smallint` (0.1 °C), `quality` a `tinyint` ([`meterflow_model::Quality::code`]: 0 actual, 1 estimated,
//!   2 suspect, 3 recorded).
//! - `meter_state.state` is [`meterflow_model::codec::binary::encode_record`] of the
//!   `MeterState`: versioned by its own first byte; `last_seq`/`last_ts` repeat what
//!   an operator wants to query without decoding it. A meter's `readings`,
//!   `meter_state` and `bills` rows are written `USING TIMESTAMP` its state's
//!   `version` (µs scale; `write_order`), so the write of the state further along
//!   the meter's input wins.
//! - `reason` is the dead-letter code ([`meterflow_model::Reject::code`]).
//! - `bills`: `period` is the bill's `yyyy-mm`; money is minor units and volumes
//!   litres, as `bigint` (same 64 bits as the model's u64); `tiers` is a frozen list of
//!   `(usage_l, price_per_m3, amount_cents)` tuples in tier order (frozen: rewriting
//!   it replaces one cell, without the range tombstone a non-frozen collection leaves).
//!   No TTL: bills are records.
//! - `alerts`: `day` is the UTC day of `opened_at`; `kind`, `priority` and `state` are
//!   the model's snake_case names (`no_communication`, `critical`, `cleared`);
//!   `event_at` is the latest event's `at`. Each row is written `USING TIMESTAMP`
//!   `at` × 1000 + lifecycle step (opened 0, updated 1, cleared 2) in µs, so the
//!   cluster itself keeps the latest event of an episode whatever order events arrive
//!   in. TTL `alerts_ttl_days` (default 400), restarted by every event.
//! - `district_hourly`: `day` is the UTC day of `hour`, the hour's start (a local hour
//!   of the tenant; persisted rows are `Resolution::Hour` only); `sketch_zeros` and
//!   `sketch_bins` (`(bucket, count)`, frozen) are the mergeable
//!   `meter_hour_sketch`; `night_hour_l` is a tuple of the two night hours (null
//!   components until known) and, with `night_flow_lph`, a day-row field that hour
//!   rows carry as null. `inflow_l` is the bulk meters' inflow (null until one
//!   reported in the hour); `inflow_night_hour_l` and `inflow_night_flow_lph` are
//!   the inflow's night hours and minimum night flow, day-row fields like the
//!   customers' ones. TTL `district_hourly_ttl_days` (default 400).
//! - `district_hourly_shares`: in distributed mode each processor counts the meters
//!   it owns, so it writes its *share* of an hour here under its `contributor` (one
//!   run of one processor) instead of `district_hourly`; an hour's figures are the
//!   merge of its `district_hourly` row and its shares — litres and meters added,
//!   sketch bins added, percentiles and night flows from the merged values — which
//!   is what the store's reads return. Same encodings and TTL as `district_hourly`.
//!
//! The `*_days` tables are indexes the read paths need: readings are partitioned by
//! day, dead letters and alerts by tenant-day, district hours by district-day, so
//! "readings of a meter between two instants", "newest dead letters (alerts) of a
//! tenant" and "a district's hours between two instants" must know which day
//! partitions exist. They are written with the rows they index (same TTL) and cost
//! one small upsert per partition per write. Without them a read would probe every
//! day of a range (up to the whole TTL), most of them empty.
//!
//! Portability: the DDL uses only what both ScyllaDB and Apache Cassandra 4/5 accept
//! (`NetworkTopologyStrategy` with a `replication_factor` or a datacenter key, TWCS
//! with string-valued options, `default_time_to_live`, `IF NOT EXISTS`), and is tested
//! against Cassandra 5.0 (`scripts/cassandra`).
//!
//! Migrations: each has a version, a name, a list of statements that are each
//! idempotent (`IF NOT EXISTS`) and columns it adds to existing tables
//! ([`AddedColumn`]: `ALTER TABLE … ADD`, which has no `IF NOT EXISTS` in ScyllaDB or
//! Cassandra before 4.1, so [`migrate`] runs it only when `system_schema.columns`
//! lacks the column). [`migrate`] runs the versions not yet recorded in
//! `schema_migrations`, in order, and records each after its statements succeeded: a
//! migration interrupted halfway is simply run again. One process migrates at a time:
//! a replica that finds versions missing takes the keyspace's lease first
//! ([`migration_lease`](super::migration_lease), a lightweight transaction on
//! `schema_lease`), so replicas starting together against a new keyspace wait for
//! each other instead of racing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use ::scylla::client::session::Session;
use ::scylla::value::CqlTimestamp;

use super::config::{Consistency, ScyllaConfig};
use super::errors;
use super::migration_lease::{self, Lease};
use crate::error::StoreError;

/// Longest keyspace name Cassandra accepts (ScyllaDB allows the same).
const MAX_KEYSPACE_LEN: usize = 48;

/// TWCS windows over a TTL: TWCS wants the live data spread over roughly 20–50
/// windows (fewer: huge SSTables; more: too many SSTables per read).
const TWCS_WINDOWS_PER_TTL: u32 = 30;

/// Whether `name` is a keyspace name used unquoted: lowercase letters, digits and `_`,
/// starting with a letter, at most 48 characters. (Unquoted CQL identifiers fold to
/// lowercase, so mixed case would name a different keyspace than it seems to.)
pub fn is_valid_keyspace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_KEYSPACE_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The TWCS window, in days, for a TTL: the TTL split into ~30 windows, at least one day.
pub fn twcs_window_days(ttl_days: u32) -> u32 {
    ttl_days.div_ceil(TWCS_WINDOWS_PER_TTL).max(1)
}

/// One schema change.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    statements: fn(&str, &ScyllaConfig) -> Vec<String>,
    /// Columns added to tables of earlier migrations, after `statements`.
    pub added_columns: &'static [AddedColumn],
}

impl Migration {
    /// The statements of this migration for `keyspace` and `config`, without its
    /// added columns.
    pub fn statements(&self, keyspace: &str, config: &ScyllaConfig) -> Vec<String> {
        (self.statements)(keyspace, config)
    }
}

/// A column a migration adds to an existing table. Guarded by [`column_exists`]
/// instead of `IF NOT EXISTS` (see the module doc), so running it again is a no-op.
#[derive(Clone, Copy, Debug)]
pub struct AddedColumn {
    pub table: &'static str,
    pub column: &'static str,
    pub cql_type: &'static str,
}

impl AddedColumn {
    /// The `ALTER TABLE … ADD` that adds the column.
    pub fn statement(&self, keyspace: &str) -> String {
        format!(
            "ALTER TABLE {keyspace}.{} ADD {} {}",
            self.table, self.column, self.cql_type
        )
    }
}

fn no_statements(_: &str, _: &ScyllaConfig) -> Vec<String> {
    Vec::new()
}

/// Every migration, in version order. Never edit one that has shipped: add another.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "readings, reading_days, meter_state, dead_letters, dead_letter_days",
        statements: initial_tables,
        added_columns: &[],
    },
    Migration {
        version: 2,
        name: "bills, alerts, alert_days, district_hourly, district_hourly_days",
        statements: output_tables,
        added_columns: &[],
    },
    Migration {
        version: 3,
        name: "district_hourly: inflow_l, inflow_night_hour_l, inflow_night_flow_lph",
        statements: no_statements,
        added_columns: &[
            AddedColumn {
                table: "district_hourly",
                column: "inflow_l",
                cql_type: "bigint",
            },
            AddedColumn {
                table: "district_hourly",
                column: "inflow_night_hour_l",
                cql_type: "frozen<tuple<bigint, bigint>>",
            },
            AddedColumn {
                table: "district_hourly",
                column: "inflow_night_flow_lph",
                cql_type: "bigint",
            },
        ],
    },
    Migration {
        version: 4,
        name: "exceptions",
        statements: exception_tables,
        added_columns: &[],
    },
    Migration {
        version: 5,
        name: "district_hourly_shares",
        statements: district_share_tables,
        added_columns: &[],
    },
];

/// Migration 5: the processors' shares of district hours (distributed mode).
fn district_share_tables(ks: &str, config: &ScyllaConfig) -> Vec<String> {
    let district_ttl = config.district_hourly_ttl_secs();
    vec![format!(
        "CREATE TABLE IF NOT EXISTS {ks}.district_hourly_shares (\
         tenant text, district text, day date, hour timestamp, contributor text, \
         usage_l bigint, meters bigint, p50_l bigint, p90_l bigint, p99_l bigint, \
         sketch_zeros bigint, sketch_bins frozen<list<frozen<tuple<int, bigint>>>>, \
         night_hour_l frozen<tuple<bigint, bigint>>, night_flow_lph bigint, \
         inflow_l bigint, inflow_night_hour_l frozen<tuple<bigint, bigint>>, \
         inflow_night_flow_lph bigint, \
         PRIMARY KEY ((tenant, district, day), hour, contributor)) \
         WITH CLUSTERING ORDER BY (hour ASC, contributor ASC) \
         AND default_time_to_live = {district_ttl}"
    )]
}

fn exception_tables(ks: &str, _: &ScyllaConfig) -> Vec<String> {
    vec![super::exceptions::table(ks)]
}

fn initial_tables(ks: &str, config: &ScyllaConfig) -> Vec<String> {
    let readings_ttl = config.readings_ttl_secs();
    let dead_letters_ttl = config.dead_letters_ttl_secs();
    let window = twcs_window_days(config.readings_ttl_days);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.readings (\
             tenant text, meter text, day date, ts timestamp, \
             reg bigint, rev bigint, flow bigint, temp smallint, interval_l bigint, \
             quality tinyint, seq bigint, received_at timestamp, \
             PRIMARY KEY ((tenant, meter, day), ts)) \
             WITH CLUSTERING ORDER BY (ts ASC) \
             AND compaction = {{'class': 'TimeWindowCompactionStrategy', \
             'compaction_window_unit': 'DAYS', 'compaction_window_size': '{window}'}} \
             AND default_time_to_live = {readings_ttl}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.reading_days (\
             tenant text, meter text, day date, \
             PRIMARY KEY ((tenant, meter), day)) \
             WITH CLUSTERING ORDER BY (day ASC) \
             AND default_time_to_live = {readings_ttl}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.meter_state (\
             tenant text, meter text, state blob, last_seq bigint, last_ts timestamp, \
             PRIMARY KEY ((tenant, meter)))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.dead_letters (\
             tenant text, day date, received_at timestamp, id bigint, \
             topic text, payload blob, reason text, correlation_id text, \
             PRIMARY KEY ((tenant, day), received_at, id)) \
             WITH CLUSTERING ORDER BY (received_at DESC, id DESC) \
             AND default_time_to_live = {dead_letters_ttl}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.dead_letter_days (\
             tenant text, day date, \
             PRIMARY KEY ((tenant), day)) \
             WITH CLUSTERING ORDER BY (day DESC) \
             AND default_time_to_live = {dead_letters_ttl}"
        ),
    ]
}

/// Migration 2: what processors derive (`ReadingStore::write_outputs`). Default
/// compaction (size-tiered): these tables are small and their rows are rewritten
/// while a period, episode or hour is open, which TWCS handles badly.
fn output_tables(ks: &str, config: &ScyllaConfig) -> Vec<String> {
    let alerts_ttl = config.alerts_ttl_secs();
    let district_ttl = config.district_hourly_ttl_secs();
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.bills (\
             tenant text, period text, meter text, currency text, usage_l bigint, \
             tiers frozen<list<frozen<tuple<bigint, bigint, bigint>>>>, \
             fixed_cents bigint, amount_cents bigint, is_estimated boolean, is_final boolean, \
             PRIMARY KEY ((tenant, period), meter)) \
             WITH CLUSTERING ORDER BY (meter ASC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.alerts (\
             tenant text, day date, opened_at timestamp, meter text, kind text, \
             priority text, state text, event_at timestamp, detail text, \
             PRIMARY KEY ((tenant, day), opened_at, meter, kind)) \
             WITH CLUSTERING ORDER BY (opened_at DESC, meter DESC, kind DESC) \
             AND default_time_to_live = {alerts_ttl}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.alert_days (\
             tenant text, day date, \
             PRIMARY KEY ((tenant), day)) \
             WITH CLUSTERING ORDER BY (day DESC) \
             AND default_time_to_live = {alerts_ttl}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.district_hourly (\
             tenant text, district text, day date, hour timestamp, \
             usage_l bigint, meters bigint, p50_l bigint, p90_l bigint, p99_l bigint, \
             sketch_zeros bigint, sketch_bins frozen<list<frozen<tuple<int, bigint>>>>, \
             night_hour_l frozen<tuple<bigint, bigint>>, night_flow_lph bigint, \
             PRIMARY KEY ((tenant, district, day), hour)) \
             WITH CLUSTERING ORDER BY (hour ASC) \
             AND default_time_to_live = {district_ttl}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.district_hourly_days (\
             tenant text, district text, day date, \
             PRIMARY KEY ((tenant, district), day)) \
             WITH CLUSTERING ORDER BY (day ASC) \
             AND default_time_to_live = {district_ttl}"
        ),
    ]
}

/// `CREATE KEYSPACE IF NOT EXISTS` with the configured replication.
pub fn keyspace_statement(keyspace: &str, config: &ScyllaConfig) -> String {
    keyspace_statement_with_rf(keyspace, config, usize::from(config.replication_factor))
}

/// `CREATE KEYSPACE IF NOT EXISTS` with replication factor `rf`.
fn keyspace_statement_with_rf(keyspace: &str, config: &ScyllaConfig, rf: usize) -> String {
    let replication = match &config.local_datacenter {
        Some(dc) => format!("'{dc}': {rf}"),
        None => format!("'replication_factor': {rf}"),
    };
    format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
         {{'class': 'NetworkTopologyStrategy', {replication}}}"
    )
}

fn migrations_table_statement(keyspace: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations (\
         version int PRIMARY KEY, name text, applied_at timestamp)"
    )
}

/// The whole schema as it stands after every migration, for documentation and for
/// operators who create it by hand.
pub fn full_schema(keyspace: &str, config: &ScyllaConfig) -> Vec<String> {
    let mut all = vec![
        keyspace_statement(keyspace, config),
        migrations_table_statement(keyspace),
        migration_lease::table_statement(keyspace),
    ];
    for migration in MIGRATIONS {
        all.extend(migration.statements(keyspace, config));
        all.extend(
            migration
                .added_columns
                .iter()
                .map(|c| c.statement(keyspace)),
        );
    }
    all
}

/// Whether `system_schema.columns` lists `column` of `keyspace`.
async fn column_exists(
    session: &Session,
    keyspace: &str,
    column: &AddedColumn,
) -> Result<bool, StoreError> {
    let result = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
            (keyspace, column.table, column.column),
        )
        .await
        .map_err(|e| errors::execution("reading system_schema.columns failed", &e))?;
    let rows = result
        .into_rows_result()
        .map_err(|e| errors::type_check("system_schema.columns returned no rows", &e))?;
    Ok(rows.rows_num() > 0)
}

async fn run_ddl(session: &Session, statement: &str) -> Result<(), StoreError> {
    session
        .query_unpaged(statement, ())
        .await
        .map(|_| ())
        .map_err(|e| errors::execution("schema change failed", &e))
}

/// Nodes the driver sees in each datacenter (`system.local` + `system.peers`, up or
/// down). A node whose datacenter is unknown counts under `""`.
fn nodes_per_datacenter(session: &Session) -> BTreeMap<String, usize> {
    let mut nodes = BTreeMap::new();
    for node in session.get_cluster_state().get_nodes_info() {
        *nodes
            .entry(node.datacenter.clone().unwrap_or_default())
            .or_insert(0) += 1;
    }
    nodes
}

/// The replication of `keyspace` as `system_schema.keyspaces` holds it, if it exists.
async fn existing_replication(
    session: &Session,
    keyspace: &str,
) -> Result<Option<HashMap<String, String>>, StoreError> {
    let result = session
        .query_unpaged(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await
        .map_err(|e| errors::execution("reading the keyspace's replication failed", &e))?;
    let rows = result
        .into_rows_result()
        .map_err(|e| errors::type_check("system_schema.keyspaces returned no rows", &e))?;
    let row = rows
        .maybe_first_row::<(HashMap<String, String>,)>()
        .map_err(|e| errors::type_check("unreadable system_schema.keyspaces row", &e))?;
    Ok(row.map(|(replication,)| replication))
}

/// Replicas per datacenter of a keyspace's `replication` map (`class` plus one entry
/// per datacenter for NetworkTopologyStrategy; `replication_factor` for
/// SimpleStrategy, which spreads its replicas over the whole cluster: `None` key).
fn parse_replication(replication: &HashMap<String, String>) -> BTreeMap<Option<String>, usize> {
    let simple = replication
        .get("class")
        .is_some_and(|class| class.ends_with("SimpleStrategy"));
    replication
        .iter()
        .filter(|(key, _)| key.as_str() != "class")
        .filter_map(|(key, value)| {
            let rf = value.parse::<usize>().ok()?;
            let dc = if simple && key == "replication_factor" {
                None
            } else {
                Some(key.clone())
            };
            Some((dc, rf))
        })
        .collect()
}

/// Why `consistency` can never be met with `groups` of `(datacenter, replication
/// factor, nodes)` (a `None` datacenter is the whole cluster), or `None` if it can.
/// At most `min(rf, nodes)` replicas of a row exist in a group.
pub(crate) fn unmet_consistency(
    consistency: Consistency,
    groups: &[(Option<&str>, usize, usize)],
) -> Option<String> {
    let rf_total: usize = groups.iter().map(|g| g.1).sum();
    let replicas_total: usize = groups.iter().map(|g| g.1.min(g.2)).sum();
    let name = consistency_name(consistency);
    let need_total = |need: usize| {
        (replicas_total < need).then(|| {
            format!(
                "{name} needs {need} replica(s) but at most {replicas_total} exist \
                 (replication factor {rf_total} over {} node(s))",
                groups.iter().map(|g| g.2).sum::<usize>()
            )
        })
    };
    match consistency {
        Consistency::One | Consistency::LocalOne => need_total(1),
        Consistency::Two => need_total(2),
        Consistency::Three => need_total(3),
        Consistency::Quorum => need_total(rf_total / 2 + 1),
        Consistency::All => need_total(rf_total),
        // Without a preferred datacenter any of them may coordinate: each must do.
        Consistency::LocalQuorum | Consistency::EachQuorum => {
            groups.iter().find_map(|&(dc, rf, nodes)| {
                let need = rf / 2 + 1;
                (rf.min(nodes) < need).then(|| {
                    let place = dc.map_or("the cluster".to_owned(), |dc| {
                        format!("datacenter {dc:?}")
                    });
                    format!(
                        "{name} needs {need} of the {rf} replicas but {place} has only {nodes} node(s)"
                    )
                })
            })
        }
    }
}

fn consistency_name(consistency: Consistency) -> &'static str {
    match consistency {
        Consistency::One => "ONE",
        Consistency::Two => "TWO",
        Consistency::Three => "THREE",
        Consistency::Quorum => "QUORUM",
        Consistency::All => "ALL",
        Consistency::LocalQuorum => "LOCAL_QUORUM",
        Consistency::EachQuorum => "EACH_QUORUM",
        Consistency::LocalOne => "LOCAL_ONE",
    }
}

/// Creates the keyspace with a replication factor the cluster can hold: the
/// configured one capped by the nodes of the (smallest, or the configured local)
/// datacenter, logged at INFO when lowered. An existing keyspace is checked instead:
/// if the configured consistency can never be met with its replication and the
/// nodes the driver sees, this is a [`StoreError::Config`] naming what to change
/// (retrying would only loop on a node that answers).
async fn ensure_keyspace(
    session: &Session,
    keyspace: &str,
    config: &ScyllaConfig,
) -> Result<(), StoreError> {
    let nodes = nodes_per_datacenter(session);
    let seen = || {
        nodes
            .iter()
            .map(|(dc, n)| format!("{dc:?}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let consistency = consistency_name(config.consistency);
    if let Some(replication) = existing_replication(session, keyspace).await? {
        let replicas = parse_replication(&replication);
        let total_nodes: usize = nodes.values().sum();
        let groups: Vec<(Option<&str>, usize, usize)> = replicas
            .iter()
            .filter(|(dc, _)| match (&config.local_datacenter, dc) {
                // Only the local datacenter matters to LOCAL_* levels when it is set.
                (Some(local), Some(dc)) if config.consistency.is_local() => dc == local,
                _ => true,
            })
            .map(|(dc, &rf)| {
                let n = match dc {
                    Some(dc) => nodes.get(dc).copied().unwrap_or(0),
                    None => total_nodes,
                };
                (dc.as_deref(), rf, n)
            })
            .collect();
        if let Some(why) = unmet_consistency(config.consistency, &groups) {
            let fix: Vec<String> = groups
                .iter()
                .map(|&(dc, rf, n)| {
                    format!(
                        "'{}': {}",
                        dc.unwrap_or("replication_factor"),
                        rf.min(n).max(1)
                    )
                })
                .collect();
            return Err(StoreError::Config(format!(
                "keyspace {keyspace} already exists with replication {replication:?}, and with the \
                 nodes the cluster has ({}) consistency {consistency} can never be met: {why}. \
                 Lower the keyspace's replication with `ALTER KEYSPACE {keyspace} WITH replication = \
                 {{'class': 'NetworkTopologyStrategy', {}}}` (store.scylla.replication_factor only \
                 applies when meterflow creates the keyspace), add nodes, or lower \
                 store.scylla.consistency",
                seen(),
                fix.join(", ")
            )));
        }
        for &(dc, rf, n) in &groups {
            if rf > n {
                tracing::warn!(
                    keyspace,
                    datacenter = dc.unwrap_or("(whole cluster)"),
                    replication_factor = rf,
                    nodes = n,
                    "the keyspace's replication factor is above the number of nodes: rows have fewer copies than configured (ALTER KEYSPACE to match, or add nodes)"
                );
            }
        }
        return Ok(());
    }

    let wanted = usize::from(config.replication_factor);
    let (dcs, capacity): (Vec<&str>, usize) = match &config.local_datacenter {
        Some(dc) => match nodes.get(dc) {
            Some(&n) => (vec![dc.as_str()], n),
            None => {
                return Err(StoreError::Config(format!(
                    "store.scylla.local_datacenter is {dc:?}, but the cluster's datacenters \
                     are {{{}}}: set it to one of them (or unset it)",
                    seen()
                )));
            }
        },
        None => (
            nodes.keys().map(String::as_str).collect(),
            nodes.values().copied().min().unwrap_or(0),
        ),
    };
    if capacity == 0 {
        return Err(StoreError::Unavailable(
            "the driver sees no node of the cluster yet".to_owned(),
        ));
    }
    let rf = wanted.min(capacity);
    let groups: Vec<(Option<&str>, usize, usize)> = dcs
        .iter()
        .map(|&dc| (Some(dc), rf, nodes.get(dc).copied().unwrap_or(0)))
        .collect();
    if let Some(why) = unmet_consistency(config.consistency, &groups) {
        return Err(StoreError::Config(format!(
            "cannot create keyspace {keyspace}: with replication factor {rf} on the nodes the \
             cluster has ({}), consistency {consistency} can never be met: {why}. Lower \
             store.scylla.consistency (e.g. LOCAL_QUORUM) or add nodes",
            seen()
        )));
    }
    if rf < wanted {
        tracing::info!(
            keyspace,
            configured = wanted,
            replication_factor = rf,
            nodes = capacity,
            "creating the keyspace with replication factor {rf} instead of store.scylla.replication_factor = {wanted}: \
             the cluster has only {capacity} node(s) per datacenter; a (LOCAL_)QUORUM of RF {rf} is {} node(s) \
             (no redundancy below RF 3: after adding nodes, ALTER KEYSPACE and repair)",
            rf / 2 + 1
        );
    }
    run_ddl(session, &keyspace_statement_with_rf(keyspace, config, rf)).await
}

/// Creates the keyspace if missing (see [`ensure_keyspace`]) and applies every
/// migration not yet recorded. Returns the versions applied by this call (empty when
/// the schema was current).
pub(crate) async fn migrate(
    session: &Session,
    keyspace: &str,
    config: &ScyllaConfig,
) -> Result<Vec<i32>, StoreError> {
    ensure_keyspace(session, keyspace, config).await?;
    run_ddl(session, &migrations_table_statement(keyspace)).await?;
    let current = applied_versions(session, keyspace).await?;
    if MIGRATIONS.iter().all(|m| current.contains(&m.version)) {
        return Ok(Vec::new());
    }
    run_ddl(session, &migration_lease::table_statement(keyspace)).await?;
    let lease = Lease::take(session, keyspace).await?;
    let applied = apply_missing(session, keyspace, config).await;
    lease.release(session).await;
    applied
}

/// Applies the migrations not yet recorded (holding the lease).
async fn apply_missing(
    session: &Session,
    keyspace: &str,
    config: &ScyllaConfig,
) -> Result<Vec<i32>, StoreError> {
    let applied = applied_versions(session, keyspace).await?;

    let record = session
        .prepare(format!(
            "INSERT INTO {keyspace}.schema_migrations (version, name, applied_at) VALUES (?, ?, ?)"
        ))
        .await
        .map_err(|e| errors::prepare_error("preparing the migrations insert failed", &e))?;
    let mut newly_applied = Vec::new();
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        tracing::info!(
            keyspace,
            version = migration.version,
            name = migration.name,
            "applying schema migration"
        );
        for statement in migration.statements(keyspace, config) {
            run_ddl(session, &statement).await?;
        }
        for column in migration.added_columns {
            if !column_exists(session, keyspace, column).await? {
                run_ddl(session, &column.statement(keyspace)).await?;
            }
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        session
            .execute_unpaged(
                &record,
                (migration.version, migration.name, CqlTimestamp(now_ms)),
            )
            .await
            .map_err(|e| errors::execution("recording a schema migration failed", &e))?;
        newly_applied.push(migration.version);
    }
    Ok(newly_applied)
}

/// Versions recorded in `schema_migrations`.
pub(crate) async fn applied_versions(
    session: &Session,
    keyspace: &str,
) -> Result<BTreeSet<i32>, StoreError> {
    let statement = format!("SELECT version FROM {keyspace}.schema_migrations");
    let result = session
        .query_unpaged(statement.as_str(), ())
        .await
        .map_err(|e| errors::execution("reading schema_migrations failed", &e))?;
    let rows = result
        .into_rows_result()
        .map_err(|e| errors::type_check("schema_migrations returned no rows result", &e))?;
    let mut versions = BTreeSet::new();
    for row in rows
        .rows::<(i32,)>()
        .map_err(|e| errors::type_check("schema_migrations has unexpected columns", &e))?
    {
        let (version,) =
            row.map_err(|e| errors::type_check("unreadable schema_migrations row", &e))?;
        versions.insert(version);
    }
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_names() {
        for good in ["meterflow", "mf_test_1", "a"] {
            assert!(is_valid_keyspace(good), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "Meterflow",
            "mf-test",
            "mf.test",
            &"a".repeat(49),
        ] {
            assert!(!is_valid_keyspace(bad), "{bad}");
        }
    }

    #[test]
    fn twcs_windows() {
        assert_eq!(twcs_window_days(1), 1);
        assert_eq!(twcs_window_days(30), 1);
        assert_eq!(twcs_window_days(31), 2);
        assert_eq!(twcs_window_days(400), 14);
    }

    #[test]
    fn replication_follows_the_config() {
        let mut config = ScyllaConfig::default();
        assert!(keyspace_statement("ks", &config).contains("'replication_factor': 3"));
        config.local_datacenter = Some("dc1".into());
        config.replication_factor = 2;
        assert!(keyspace_statement("ks", &config).contains("'dc1': 2"));
    }

    #[test]
    fn consistency_levels_against_replicas_and_nodes() {
        let one_node = [(Some("dc1"), 1, 1)];
        for level in [
            Consistency::One,
            Consistency::LocalOne,
            Consistency::Quorum,
            Consistency::LocalQuorum,
            Consistency::EachQuorum,
            Consistency::All,
        ] {
            assert_eq!(unmet_consistency(level, &one_node), None, "{level:?}");
        }
        assert!(unmet_consistency(Consistency::Two, &one_node).is_some());
        let rf3_one_node = [(Some("dc1"), 3, 1)];
        assert!(unmet_consistency(Consistency::One, &rf3_one_node).is_none());
        let why = unmet_consistency(Consistency::LocalQuorum, &rf3_one_node).unwrap();
        assert!(why.contains("needs 2 of the 3"), "{why}");
        assert!(unmet_consistency(Consistency::Quorum, &rf3_one_node).is_some());
        let rf3_two_nodes = [(Some("dc1"), 3, 2)];
        assert!(unmet_consistency(Consistency::LocalQuorum, &rf3_two_nodes).is_none());
        assert!(unmet_consistency(Consistency::All, &rf3_two_nodes).is_some());
        let simple = parse_replication(&HashMap::from([
            (
                "class".to_owned(),
                "org.apache.cassandra.locator.SimpleStrategy".to_owned(),
            ),
            ("replication_factor".to_owned(), "2".to_owned()),
        ]));
        assert_eq!(simple, BTreeMap::from([(None, 2)]));
    }

    #[test]
    fn migrations_are_ordered_and_idempotent_ddl() {
        let config = ScyllaConfig::default();
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(versions, sorted, "versions ascend and are unique");
        for statement in full_schema("ks", &config) {
            // Added columns are guarded by `column_exists` instead.
            assert!(
                statement.contains("IF NOT EXISTS") || statement.starts_with("ALTER TABLE ks."),
                "{statement}"
            );
        }
        let added: Vec<String> = MIGRATIONS[2]
            .added_columns
            .iter()
            .map(|c| c.statement("ks"))
            .collect();
        assert_eq!(
            added[1],
            "ALTER TABLE ks.district_hourly ADD inflow_night_hour_l frozen<tuple<bigint, bigint>>"
        );
        let readings = &MIGRATIONS[0].statements("ks", &config)[0];
        assert!(readings.contains("TimeWindowCompactionStrategy"));
        assert!(readings.contains("'compaction_window_size': '14'"));
        assert!(readings.contains("default_time_to_live = 34560000"));
    }

    #[test]
    fn output_tables_keep_bills_forever_and_the_rest_for_their_ttl() {
        let config = ScyllaConfig {
            alerts_ttl_days: 10,
            district_hourly_ttl_days: 20,
            ..ScyllaConfig::default()
        };
        let statements = MIGRATIONS[1].statements("ks", &config);
        let table = |name: &str| {
            statements
                .iter()
                .find(|s| s.contains(&format!("ks.{name} (")))
                .unwrap_or_else(|| panic!("no {name} table"))
        };
        assert!(!table("bills").contains("time_to_live"));
        assert!(table("alerts").contains("opened_at DESC, meter DESC, kind DESC"));
        for name in ["alerts", "alert_days"] {
            assert!(
                table(name).contains("default_time_to_live = 864000"),
                "{name}"
            );
        }
        for name in ["district_hourly", "district_hourly_days"] {
            assert!(
                table(name).contains("default_time_to_live = 1728000"),
                "{name}"
            );
        }
    }
}
