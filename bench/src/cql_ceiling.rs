//! `meterflow-bench cql-ceiling`: what the CQL server on this machine takes of
//! meterflow's documented `readings` rows with no meterflow in the path — a bare
//! insert loop through the same driver (scylla-rust-driver), against the table the
//! ScyllaDB store creates, so the `cassandra` scenario's readings/s can be read as a
//! fraction of the server's own ceiling.
//!
//! Rows are the `cassandra` scenario's: [`METERS`] meters of fifteen-minute reads, every
//! column filled as the store fills it, with its TTL. Three write shapes, each its own
//! tenant (so no shape overwrites another's rows), each for `rows` rows or `max_secs`,
//! whichever comes first, with `concurrency` requests in flight:
//! - `row` — one `INSERT` per row;
//! - `batch24` — one unlogged batch per message: 24 rows of one meter and day, one
//!   partition (the store's shape for a 24-reading uplink);
//! - `batch96` — one unlogged batch per meter-day: 96 rows, one partition (a larger
//!   unit, as a store grouping a whole day's reads would send).
//!
//! Reported per shape: rows/s, and CPU µs per row of this client and of the server
//! process (`scripts/cassandra`'s pid file), from `/proc`. One JSON line per run goes
//! to `bench/results/cql-ceiling.jsonl`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use meterflow_storage::scylla::{ScyllaConfig, ScyllaStore};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlDate, CqlTimestamp};
use serde::Serialize;

use crate::procfs;
use crate::record;

/// Meters of the `cassandra` scenario.
const METERS: usize = 1_000;
/// Fifteen-minute reads.
const READ_INTERVAL_MS: i64 = 15 * 60 * 1_000;
const DAY_MS: i64 = 86_400_000;
/// 2026-01-01T00:00:00Z: reads start at a UTC midnight, so 24- and 96-read units never
/// straddle a day (one partition each).
const START_MS: i64 = 1_767_225_600_000;
/// The store's default readings TTL (400 days), in seconds.
const TTL_S: i32 = 400 * 86_400;
/// Keyspace the ceiling writes into (created as the store creates its own).
const KEYSPACE: &str = "meterflow_ceiling";

/// What `cql-ceiling` is asked to do.
pub(crate) struct CeilingSettings {
    pub node: String,
    pub rows: usize,
    pub concurrency: usize,
    pub max_secs: f64,
}

/// One write shape's figures.
#[derive(Debug, Serialize)]
struct ShapeResult {
    shape: &'static str,
    rows_per_request: usize,
    rows: usize,
    failed_requests: usize,
    seconds: f64,
    rows_per_s: f64,
    client_cpu_us_per_row: f64,
    server_cpu_us_per_row: Option<f64>,
}

/// One JSON line of `cql-ceiling.jsonl`.
#[derive(Debug, Serialize)]
struct CeilingRecord {
    at: String,
    node: String,
    concurrency: usize,
    load_before: String,
    load_after: String,
    shapes: Vec<ShapeResult>,
}

/// One `readings` row, bound in the store's column order, TTL last.
type Row<'a> = (
    &'a str,
    &'a str,
    CqlDate,
    CqlTimestamp,
    i64,
    i64,
    i64,
    Option<i16>,
    Option<i64>,
    i8,
    i64,
    CqlTimestamp,
    i32,
);

/// Runs the three shapes against `settings.node` and records them under `results`.
pub(crate) fn run(settings: &CeilingSettings, results: &Path) -> anyhow::Result<()> {
    // The store creates the keyspace and tables exactly as it documents them.
    drop(
        ScyllaStore::open(&[&settings.node], KEYSPACE, ScyllaConfig::default())
            .context("creating the readings table through the ScyllaDB store")?,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let server = procfs::script_server_pid("cassandra", "MF_CASSANDRA_PORT", 9042);
    let load_before = record::loadavg();
    let shapes = runtime.block_on(async {
        let session = SessionBuilder::new()
            .known_node(&settings.node)
            .build()
            .await
            .context("connecting")?;
        let insert = session
            .prepare(format!(
                "INSERT INTO {KEYSPACE}.readings (tenant, meter, day, ts, reg, rev, flow, temp, \
                 interval_l, quality, seq, received_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
            ))
            .await?;
        let mut shapes = Vec::new();
        for (shape, rows_per_request) in [("row", 1), ("batch24", 24), ("batch96", 96)] {
            let result =
                measure(&session, &insert, shape, rows_per_request, settings, server).await;
            println!(
                "{shape:>8}: {:>9.0} rows/s  client {:>6.2} µs/row  server {} µs/row  ({} rows, {} failed requests, {:.1} s)",
                result.rows_per_s,
                result.client_cpu_us_per_row,
                result
                    .server_cpu_us_per_row
                    .map_or("?".to_string(), |us| format!("{us:.2}")),
                result.rows,
                result.failed_requests,
                result.seconds
            );
            shapes.push(result);
        }
        anyhow::Ok(shapes)
    })?;
    record::append(
        results,
        "cql-ceiling",
        &CeilingRecord {
            at: record::now_rfc3339(),
            node: settings.node.clone(),
            concurrency: settings.concurrency,
            load_before,
            load_after: record::loadavg(),
            shapes,
        },
    )
}

/// Writes one shape's rows and times it.
async fn measure(
    session: &Session,
    insert: &PreparedStatement,
    shape: &'static str,
    rows_per_request: usize,
    settings: &CeilingSettings,
    server: Option<u32>,
) -> ShapeResult {
    let tenant = format!("ceiling_{shape}");
    let meters: Vec<String> = (0..METERS).map(|m| format!("m{m:06}")).collect();
    let mut batch = Batch::new(BatchType::Unlogged);
    for _ in 0..rows_per_request {
        batch.append_statement(insert.clone());
    }
    let requests = settings.rows.div_ceil(rows_per_request);
    let deadline = Duration::from_secs_f64(settings.max_secs);
    let client_before = procfs::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let server_before = server.and_then(procfs::cpu_seconds);
    let started = Instant::now();
    let (mut sent, mut written, mut failed) = (0, 0, 0);
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < settings.concurrency
            && sent < requests
            && started.elapsed() < deadline
        {
            let rows = unit(&tenant, &meters, sent, rows_per_request);
            let batch = &batch;
            in_flight.push(async move {
                let n = rows.len();
                let outcome = if n == 1 {
                    session.execute_unpaged(insert, &rows[0]).await.map(drop)
                } else {
                    session.batch(batch, &rows).await.map(drop)
                };
                (n, outcome.is_ok())
            });
            sent += 1;
        }
        match in_flight.next().await {
            Some((n, true)) => written += n,
            Some((_, false)) => failed += 1,
            None => break,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let per_row = |cpu_s: f64| cpu_s * 1e6 / written.max(1) as f64;
    let client = procfs::cpu_seconds(std::process::id()).unwrap_or(0.0) - client_before;
    let server_cpu = server
        .and_then(procfs::cpu_seconds)
        .zip(server_before)
        .map(|(after, before)| per_row(after - before));
    ShapeResult {
        shape,
        rows_per_request,
        rows: written,
        failed_requests: failed,
        seconds,
        rows_per_s: written as f64 / seconds.max(1e-9),
        client_cpu_us_per_row: per_row(client),
        server_cpu_us_per_row: server_cpu,
    }
}

/// The `index`-th request's rows: meters take turns, each request carries the next
/// `rows_per_request` reads of its meter.
fn unit<'a>(
    tenant: &'a str,
    meters: &'a [String],
    index: usize,
    rows_per_request: usize,
) -> Vec<Row<'a>> {
    let meter = &meters[index % meters.len()];
    let first_read = (index / meters.len()) * rows_per_request;
    (first_read..first_read + rows_per_request)
        .map(|read| {
            let ts = START_MS + read as i64 * READ_INTERVAL_MS;
            (
                tenant,
                meter.as_str(),
                CqlDate((1u32 << 31) + (ts / DAY_MS) as u32),
                CqlTimestamp(ts),
                1_000 + read as i64 * 7,
                0,
                420,
                Some(125),
                Some(7),
                0,
                read as i64 / 24,
                CqlTimestamp(ts + 1_000),
                TTL_S,
            )
        })
        .collect()
}
