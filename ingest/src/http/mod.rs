//! The HTTP side: health, readiness, Prometheus metrics and the tenant API (axum).
//!
//! - `GET /healthz` — the process is up;
//! - `GET /readyz` — the endpoint takes a new MQTT session (a CONNECT/CONNACK round
//!   trip), the store is open and its writes succeed;
//! - `GET /metrics` — Prometheus text;
//! - `GET /api/v1/tenants/{t}/meters/{m}` — latest state of a meter;
//! - `GET /api/v1/tenants/{t}/meters/{m}/readings?from=MS&to=MS&limit=N`;
//! - `GET /api/v1/tenants/{t}/dead-letters?limit=N` — newest first;
//! - `GET /api/v1/tenants/{t}/summary` — usage today, meters reporting, alerts open;
//! - `GET /api/v1/tenants/{t}/districts` — the tenant's district names;
//! - `GET /api/v1/tenants/{t}/districts/{d}/usage?from=MS&to=MS&resolution=hour|minute`
//!   — hourly rows from the store, minute rows from the hot cache;
//! - `GET /api/v1/tenants/{t}/top?day=yyyy-mm-dd&limit=N` — top consumers of a day;
//! - `GET /api/v1/tenants/{t}/alerts?state=open|all&limit=N`;
//! - `GET /api/v1/tenants/{t}/bills/{yyyy-mm}/{meter}` — usage, tiers, amount.
//!
//! Readings and bills also answer CSV (RFC 4180) to `Accept: text/csv` or
//! `?format=csv`; an `Accept` that allows neither JSON nor CSV is a 406.
//!
//! The utility dashboard is served at `/` (see [`crate::dashboard`]).
//!
//! A tenant with an `api_token` must be asked with `Authorization: Bearer <token>`; a
//! tenant sees only its own data. Errors are JSON `{"error": "..."}` saying what to do:
//! every 4xx and 5xx, axum's own rejections (a bad query parameter, an unknown path, a
//! wrong method) included. Store calls are blocking, so they run on tokio's blocking pool.
//!
//! - [`server`]: the server with socket limits (`[http]`), [`serve`];
//! - `format`: JSON or CSV answers (content negotiation, CSV rendering).

mod format;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use meterflow_model::{
    DeadLetter, MeterId, MeterKey, MeterPage, MeterQuery, MeterView, StoredReading,
};
use meterflow_storage::{HotCache, ReadingStore};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use server::{ServeLimits, serve};

use crate::tenants::{Tenants, constant_time_eq};
use format::{Format, bill_csv, csv_response, json_response, negotiate, readings_csv};
use meterflow_model::TenantSummary;
use meterflow_model::alert::AlertEvent;
use meterflow_model::analytics::{DistrictUsage, Resolution, TopEntry};
use meterflow_model::processing::{DEFAULT_DISTRICT, ProcessorsConfig};

/// Most alerts one call returns.
const MAX_ALERTS: usize = 1_000;
/// Largest page of the meter list.
const MAX_METERS_PAGE: usize = 1_000;
/// Widest window of minute rows one call returns (a day), so a dashboard cannot
/// make the cache enumerate months of minutes.
const MAX_MINUTE_WINDOW_MS: i64 = 86_400_000;

/// Most readings one API call returns: a month of 15-minute reads is ~3,000.
const MAX_READINGS_PER_CALL: usize = 10_000;
/// Dead letters returned when the caller does not say.
const DEFAULT_DEAD_LETTERS: usize = 100;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn ReadingStore>,
    pub cache: Arc<dyn HotCache>,
    pub tenants: Arc<Tenants>,
    pub prometheus: PrometheusHandle,
    pub store_healthy: Arc<AtomicBool>,
    /// How `/readyz` checks that the endpoint takes new sessions.
    pub mqtt_probe: MqttProbe,
    /// Tariffs, districts and time zones, for the tenant endpoints.
    pub processing: Arc<ProcessorsConfig>,
}

/// The endpoint's readiness probe target.
#[derive(Clone)]
pub struct MqttProbe {
    pub addr: SocketAddr,
    /// The probe's per-process password (never logged).
    pub secret: String,
}

/// How long `/readyz` waits for the endpoint's CONNACK.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/tenants/{tenant}/meters", get(meters))
        .route("/api/v1/tenants/{tenant}/meters/{meter}", get(meter))
        .route(
            "/api/v1/tenants/{tenant}/meters/{meter}/readings",
            get(readings),
        )
        .route("/api/v1/tenants/{tenant}/dead-letters", get(dead_letters))
        .route("/api/v1/tenants/{tenant}/summary", get(summary))
        .route("/api/v1/tenants/{tenant}/districts", get(districts))
        .route(
            "/api/v1/tenants/{tenant}/districts/{district}/usage",
            get(district_usage),
        )
        .route("/api/v1/tenants/{tenant}/top", get(top))
        .route("/api/v1/tenants/{tenant}/alerts", get(alerts))
        .route("/api/v1/tenants/{tenant}/bills/{period}/{meter}", get(bill))
        .with_state(state)
        .merge(crate::dashboard::routes())
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(middleware::from_fn(json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// Largest request body taken: the API is GET-only, so this is only room for clients
/// that send a small body anyway. Larger ones are answered 413 before any handler runs.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most bytes of a plain-text error body carried into the JSON message.
const MAX_ERROR_TEXT: usize = 4 * 1024;

/// Gives every 4xx/5xx the API's JSON shape: a response that is not JSON already
/// (axum's rejections of a bad query or path, an unknown route, a wrong method) has
/// its text carried into an [`ApiError`]. Also refuses bodies over [`MAX_BODY_BYTES`].
async fn json_errors(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request bodies are limited to {MAX_BODY_BYTES} bytes (the API is GET-only)"),
        )
        .into_response();
    }
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match status {
        _ if !text.is_empty() => text,
        StatusCode::NOT_FOUND => {
            format!("no such path {path:?}; the API is under /api/v1/tenants/{{tenant}}/…")
        }
        StatusCode::METHOD_NOT_ALLOWED => format!("{path} takes GET"),
        other => other.canonical_reason().unwrap_or("error").to_string(),
    };
    let mut out = ApiError(status, message).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

/// An API error: a status and a message that says what to do.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

async fn readyz(State(state): State<AppState>) -> Response {
    let probe = &state.mqtt_probe;
    let mqtt = crate::endpoint::probe::probe(probe.addr, &probe.secret, PROBE_TIMEOUT).await;
    let mqtt_sessions = mqtt.is_ok();
    let store_open = state.store.is_ready();
    let store_writing = state.store_healthy.load(Ordering::Relaxed);
    let body = json!({
        "mqtt_sessions": mqtt_sessions,
        "mqtt_error": mqtt.err(),
        "store_open": store_open,
        "store_writes_ok": store_writing,
    });
    let status = if mqtt_sessions && store_open && store_writing {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    // The process metrics are read from /proc now, at the scrape.
    let mut text = state.prometheus.render();
    text.push_str(&crate::metrics::process::render());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Checks the tenant exists and the caller may see it; returns its validated id.
fn authorize(
    state: &AppState,
    tenant: &str,
    headers: &HeaderMap,
) -> Result<meterflow_model::TenantId, ApiError> {
    let Some(t) = state.tenants.get(tenant.as_bytes()) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no tenant {tenant:?} is configured"),
        ));
    };
    if let Some(expected) = &t.api_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                format!("tenant {tenant:?} needs 'Authorization: Bearer <api_token>'"),
            ));
        }
    }
    Ok(t.id.clone())
}

fn meter_key(
    state: &AppState,
    tenant: &str,
    meter: &str,
    headers: &HeaderMap,
) -> Result<MeterKey, ApiError> {
    let tenant = authorize(state, tenant, headers)?;
    let meter = MeterId::try_from(meter).map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{meter:?} is not a meter id ([A-Za-z0-9_-]{{1,64}})"),
        )
    })?;
    Ok(MeterKey::new(tenant, meter))
}

/// Runs a blocking store call off the async workers.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e))
}

#[derive(Deserialize)]
struct MeterListQuery {
    /// Only meters whose id contains this text.
    q: Option<String>,
    district: Option<String>,
    /// Only meters without a reading in the last `silent_for_s` seconds.
    silent_for_s: Option<u64>,
    /// The previous page's `next`.
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET …/meters`: the tenant's meters the cache knows, in id order, a page at a time.
async fn meters(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    Query(q): Query<MeterListQuery>,
    headers: HeaderMap,
) -> ApiResult<MeterPage> {
    let tenant = authorize(&state, &tenant, &headers)?.to_string();
    let silent_for_ms = q
        .silent_for_s
        .map(|s| i64::try_from(s.saturating_mul(1_000)).unwrap_or(i64::MAX));
    let query = MeterQuery {
        search: q.q.filter(|s| !s.is_empty()),
        district: q.district.filter(|s| !s.is_empty()),
        silent_before_ms: silent_for_ms.map(|ms| crate::clock::now_ms().saturating_sub(ms)),
        after: q.after.filter(|s| !s.is_empty()),
        limit: q.limit.unwrap_or(100).clamp(1, MAX_METERS_PAGE),
    };
    let cache = state.cache.clone();
    Ok(Json(
        blocking(move || cache.meters(&tenant, &query).map_err(|e| e.to_string())).await?,
    ))
}

async fn meter(
    State(state): State<AppState>,
    Path((tenant, meter)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<MeterView> {
    let key = meter_key(&state, &tenant, &meter, &headers)?;
    let (cache, store) = (state.cache.clone(), state.store.clone());
    let view = blocking(move || {
        if let Ok(Some(view)) = cache.meter(&key) {
            return Ok(Some(view));
        }
        let persisted = store.meter_state(&key).map_err(|e| e.to_string())?;
        // The district is the cache's to know; a view rebuilt after a restart,
        // before the meter reports, says `default` until then.
        Ok(persisted.map(|s| MeterView::of_state(&key, &s, DEFAULT_DISTRICT)))
    })
    .await?;
    view.map(Json).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("meter {tenant}/{meter} has sent nothing yet"),
        )
    })
}

#[derive(Deserialize)]
struct RangeQuery {
    from: Option<i64>,
    to: Option<i64>,
    limit: Option<usize>,
    format: Option<String>,
}

#[derive(Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

#[derive(Serialize)]
struct ReadingOut {
    ts: i64,
    reg: u64,
    rev: u64,
    flow: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temp: Option<i16>,
    quality: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval_l: Option<u64>,
    seq: u64,
    received_at: i64,
}

impl From<StoredReading> for ReadingOut {
    fn from(r: StoredReading) -> Self {
        ReadingOut {
            ts: r.reading.ts,
            reg: r.reading.reg,
            rev: r.reading.rev,
            flow: r.reading.flow,
            temp: r.reading.temp,
            quality: r.quality.as_str(),
            interval_l: r.interval_l,
            seq: r.seq,
            received_at: r.received_at,
        }
    }
}

async fn readings(
    State(state): State<AppState>,
    Path((tenant, meter)): Path<(String, String)>,
    Query(q): Query<RangeQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = meter_key(&state, &tenant, &meter, &headers)?;
    let format = negotiate(q.format.as_deref(), &headers)?;
    let filename = format!("{}-{}-readings.csv", key.tenant, key.meter);
    let (from, to) = (q.from.unwrap_or(i64::MIN), q.to.unwrap_or(i64::MAX));
    if from >= to {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("from ({from}) must be before to ({to})"),
        ));
    }
    let limit = q
        .limit
        .unwrap_or(MAX_READINGS_PER_CALL)
        .min(MAX_READINGS_PER_CALL);
    let store = state.store.clone();
    let rows = blocking(move || {
        store
            .readings(&key, from, to, limit)
            .map_err(|e| e.to_string())
    })
    .await?;
    let rows: Vec<ReadingOut> = rows.into_iter().map(ReadingOut::from).collect();
    Ok(match format {
        Format::Json => json_response(&rows),
        Format::Csv => csv_response(readings_csv(&rows), &filename),
    })
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

#[derive(Serialize)]
struct DeadLetterOut {
    reason: &'static str,
    topic: String,
    correlation_id: String,
    received_at: i64,
    /// The (capped) payload, as text where it is UTF-8, else hex.
    payload: String,
}

impl From<DeadLetter> for DeadLetterOut {
    fn from(d: DeadLetter) -> Self {
        let payload = match String::from_utf8(d.payload) {
            Ok(text) => text,
            Err(e) => format!("hex:{}", hex::encode(e.into_bytes())),
        };
        DeadLetterOut {
            reason: d.reason.code(),
            topic: d.topic,
            correlation_id: d.correlation_id,
            received_at: d.received_at,
            payload,
        }
    }
}

async fn dead_letters(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    Query(q): Query<LimitQuery>,
    headers: HeaderMap,
) -> ApiResult<Vec<DeadLetterOut>> {
    let tenant = authorize(&state, &tenant, &headers)?;
    let limit = q
        .limit
        .unwrap_or(DEFAULT_DEAD_LETTERS)
        .min(MAX_READINGS_PER_CALL);
    let store = state.store.clone();
    let rows = blocking(move || {
        store
            .dead_letters(tenant.as_str(), limit)
            .map_err(|e| e.to_string())
    })
    .await?;
    Ok(Json(rows.into_iter().map(DeadLetterOut::from).collect()))
}

async fn summary(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> ApiResult<TenantSummary> {
    let tenant = authorize(&state, &tenant, &headers)?;
    let cache = state.cache.clone();
    let id = tenant.to_string();
    let found = blocking(move || cache.summary(&id).map_err(|e| e.to_string())).await?;
    Ok(Json(summary_of_today(
        found,
        &tenant,
        &local_today(&state, &tenant),
        crate::clock::now_ms(),
    )))
}

/// The summary for the tenant's `today`: the stored one when it is today's, else
/// (nothing reported since midnight, or nothing ever) today with no usage and no
/// meters reporting, and the stored count of open alerts. The stored summary is only
/// rewritten when readings arrive, so after midnight it still holds yesterday's.
fn summary_of_today(
    found: Option<TenantSummary>,
    tenant: &meterflow_model::TenantId,
    today: &str,
    now_ms: i64,
) -> TenantSummary {
    match found {
        Some(summary) if summary.day == today => summary,
        other => TenantSummary {
            tenant: tenant.to_string(),
            day: today.to_string(),
            alerts_open: other.map_or(0, |s| s.alerts_open),
            updated_at: now_ms,
            ..TenantSummary::default()
        },
    }
}

async fn districts(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Vec<String>> {
    let tenant = authorize(&state, &tenant, &headers)?;
    let settings = state
        .processing
        .tenants
        .get(&tenant)
        .unwrap_or(&state.processing.defaults);
    let mut names: Vec<String> = settings.districts.values().cloned().collect();
    names.push(DEFAULT_DISTRICT.to_string());
    names.sort();
    names.dedup();
    Ok(Json(names))
}

#[derive(Deserialize)]
struct UsageQuery {
    from: Option<i64>,
    to: Option<i64>,
    resolution: Option<String>,
}

async fn district_usage(
    State(state): State<AppState>,
    Path((tenant, district)): Path<(String, String)>,
    Query(q): Query<UsageQuery>,
    headers: HeaderMap,
) -> ApiResult<Vec<DistrictUsage>> {
    let tenant = authorize(&state, &tenant, &headers)?.to_string();
    let now = crate::clock::now_ms();
    let to = q.to.unwrap_or(now);
    let resolution = match q.resolution.as_deref().unwrap_or("hour") {
        "hour" => Resolution::Hour,
        "minute" => Resolution::Minute,
        other => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("resolution {other:?}: use hour or minute"),
            ));
        }
    };
    let from = q.from.unwrap_or(match resolution {
        Resolution::Minute => to - 3_600_000,
        _ => to - 86_400_000,
    });
    if from >= to {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("from ({from}) must be before to ({to})"),
        ));
    }
    if resolution == Resolution::Minute && to - from > MAX_MINUTE_WINDOW_MS {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "minute rows are served for at most one day; use resolution=hour".into(),
        ));
    }
    let (store, cache) = (state.store.clone(), state.cache.clone());
    let rows = blocking(move || match resolution {
        Resolution::Minute => cache
            .district_usage(&tenant, &district, resolution, from, to)
            .map_err(|e| e.to_string()),
        _ => store
            .district_hourly(&tenant, &district, from, to)
            .map_err(|e| e.to_string()),
    })
    .await?;
    Ok(Json(rows))
}

#[derive(Deserialize)]
struct TopQuery {
    day: Option<String>,
    limit: Option<usize>,
}

async fn top(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    Query(q): Query<TopQuery>,
    headers: HeaderMap,
) -> ApiResult<Vec<TopEntry>> {
    let tenant = authorize(&state, &tenant, &headers)?;
    let day = match q.day {
        Some(day) => day,
        None => local_today(&state, &tenant),
    };
    let limit = q.limit.unwrap_or(10).min(100);
    let cache = state.cache.clone();
    let id = tenant.to_string();
    Ok(Json(
        blocking(move || {
            cache
                .top_consumers(&id, &day, limit)
                .map_err(|e| e.to_string())
        })
        .await?,
    ))
}

/// Today in the tenant's time zone, `yyyy-mm-dd`.
fn local_today(state: &AppState, tenant: &meterflow_model::TenantId) -> String {
    let settings = state
        .processing
        .tenants
        .get(tenant)
        .unwrap_or(&state.processing.defaults);
    meterflow_processors::calendar::LocalCalendar::for_zone_name(&settings.tariff.time_zone)
        .map(|mut calendar| calendar.day(crate::clock::now_ms()).day_label())
        .unwrap_or_else(|_| {
            meterflow_model::time::day_string(meterflow_model::time::day_of(crate::clock::now_ms()))
        })
}

#[derive(Deserialize)]
struct AlertQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn alerts(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    Query(q): Query<AlertQuery>,
    headers: HeaderMap,
) -> ApiResult<Vec<AlertEvent>> {
    let tenant = authorize(&state, &tenant, &headers)?.to_string();
    let open_only = match q.state.as_deref().unwrap_or("open") {
        "open" => true,
        "all" => false,
        other => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("state {other:?}: use open or all"),
            ));
        }
    };
    let limit = q.limit.unwrap_or(100).min(MAX_ALERTS);
    let store = state.store.clone();
    Ok(Json(
        blocking(move || {
            store
                .alerts(&tenant, open_only, limit)
                .map_err(|e| e.to_string())
        })
        .await?,
    ))
}

async fn bill(
    State(state): State<AppState>,
    Path((tenant, period, meter)): Path<(String, String, String)>,
    Query(q): Query<FormatQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = meter_key(&state, &tenant, &meter, &headers)?;
    let format = negotiate(q.format.as_deref(), &headers)?;
    let valid_period = period.len() == 7
        && period.as_bytes()[4] == b'-'
        && period
            .bytes()
            .enumerate()
            .all(|(i, b)| i == 4 || b.is_ascii_digit());
    if !valid_period {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("period {period:?}: use yyyy-mm"),
        ));
    }
    let store = state.store.clone();
    let (t, p, m) = (
        key.tenant.to_string(),
        period.clone(),
        key.meter.to_string(),
    );
    let found = blocking(move || store.bill(&t, &p, &m).map_err(|e| e.to_string())).await?;
    let Some(bill) = found else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no bill for {tenant}/{meter} in {period} yet"),
        ));
    };
    Ok(match format {
        Format::Json => json_response(&bill),
        Format::Csv => csv_response(
            bill_csv(&bill),
            &format!("{}-{}-{period}-bill.csv", key.tenant, key.meter),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_of_the_tenants_today() {
        let tenant = meterflow_model::TenantId::try_from("acme").unwrap();
        let stored = TenantSummary {
            tenant: "acme".into(),
            day: "2025-01-15".into(),
            usage_today_l: 110,
            meters_reporting: 3,
            alerts_open: 2,
            updated_at: 5,
        };
        let now = 1_736_985_600_000;
        assert_eq!(
            summary_of_today(Some(stored.clone()), &tenant, "2025-01-15", now),
            stored
        );
        // After midnight, before anything reported: today, nothing used yet.
        let empty_today = TenantSummary {
            tenant: "acme".into(),
            day: "2025-01-16".into(),
            usage_today_l: 0,
            meters_reporting: 0,
            alerts_open: 2,
            updated_at: now,
        };
        assert_eq!(
            summary_of_today(Some(stored), &tenant, "2025-01-16", now),
            empty_today
        );
        assert_eq!(
            summary_of_today(None, &tenant, "2025-01-16", now),
            TenantSummary {
                alerts_open: 0,
                ..empty_today
            }
        );
    }
}
