//! The HTTP side: health, readiness, Prometheus metrics and the tenant API (axum).
//!
//! - `GET /healthz` — the process is up;
//! - `GET /readyz` — the endpoint takes a new MQTT session (a CONNECT/CONNACK round
//!   trip), the store is open and its writes succeed;
//! - `GET /metrics` — Prometheus text;
//! - `GET /api/v1/openapi.json` — the OpenAPI 3.1 document of all of these ([`openapi`]);
//! - `GET /api/v1/tenants/{t}/meters?q=&district=&silent_for_s=&after=&limit=` — the
//!   meters the hot cache holds, in id order, a page at a time (`next` → `after`);
//! - `GET /api/v1/tenants/{t}/meters/{m}` — latest state of a meter;
//! - `GET /api/v1/tenants/{t}/meters/{m}/readings?from=MS&to=MS&limit=N`;
//! - `GET /api/v1/tenants/{t}/dead-letters?limit=N` — newest first;
//! - `GET /api/v1/tenants/{t}/summary` — usage today, meters reporting, alerts open;
//! - `GET /api/v1/tenants/{t}/districts` — the tenant's district names;
//! - `GET /api/v1/tenants/{t}/districts/{d}/usage?from=MS&to=MS&resolution=hour|minute`
//!   — hourly rows from the store, minute rows from the hot cache;
//! - `GET /api/v1/tenants/{t}/districts/{d}/balance?from=MS&to=MS&resolution=day|hour`
//!   — the water balance: inflow of bulk meters, customers' consumption, non-revenue
//!   water and the inflow's minimum night flow (see [`balance`]);
//! - `GET /api/v1/tenants/{t}/top?day=yyyy-mm-dd&limit=N` — top consumers of a day;
//! - `GET /api/v1/tenants/{t}/alerts?state=open|all&meter=M&limit=N` — newest first;
//!   `meter=` filters the tenant's newest [`MAX_ALERTS`] episodes to one meter;
//! - `GET /api/v1/tenants/{t}/bills/{yyyy-mm}/{meter}` — usage, tiers, amount;
//! - `GET /api/v1/tenants/{t}/exceptions?state=open`, `POST …/meters/{m}/exceptions/{ts}`
//!   and `POST …/meters/{m}/exchanges` — the validation-exceptions work queue and
//!   field work orders ([`exceptions`]).
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
//! - `format`: JSON or CSV answers (content negotiation, CSV rendering);
//! - [`openapi`]: the document's skeleton and shared responses. A route is added in
//!   `api()` with `routes!` and a `#[utoipa::path]` on its handler, or a test fails.

mod balance;
mod exceptions;
mod format;
pub mod openapi;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use meterflow_model::{
    DeadLetter, MeterId, MeterKey, MeterPage, MeterQuery, MeterView, Quality, StoredReading,
    TenantId, TenantProcessing,
};
use meterflow_storage::{HotCache, ReadingStore};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use server::{ServeLimits, serve};

use crate::tenants::{Tenants, constant_time_eq};
use format::{Format, bill_csv, csv_response, json_response, negotiate, readings_csv};
use meterflow_model::TenantSummary;
use meterflow_model::alert::AlertEvent;
use meterflow_model::analytics::{DistrictUsage, Resolution, TopEntry};
use meterflow_model::billing::BillLine;
use meterflow_model::processing::{DEFAULT_DISTRICT, ProcessorsConfig};
use openapi::{BadRequest, ErrorBody, NotAcceptable, NotFound, Unauthorized, Unavailable};

/// Most alert episodes one call returns, and how many of the tenant's newest episodes
/// a `meter=` filter looks through: a bound on what one request reads from the store.
/// On a large tenant that may be days of episodes, so a meter's older history is not
/// served by the list (the store has no per-meter index of episodes yet).
const MAX_ALERTS: usize = 1_000;
/// Largest page of the meter list (larger `limit`s are served this many, with `next`):
/// a page a dashboard renders at once; integrators follow `next`.
const MAX_METERS_PAGE: usize = 1_000;
/// Page size of the meter list when the caller does not say.
const DEFAULT_METERS_PAGE: usize = 100;
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
    /// The meter endpoint's readiness probe; `None` where this process runs no
    /// endpoint (`processor` mode).
    pub mqtt_probe: Option<MqttProbe>,
    /// Tariffs, districts and time zones, for the tenant endpoints.
    pub processing: Arc<ProcessorsConfig>,
    /// Where operators' orders go (decided exceptions, exchanges): this process's
    /// shards in embedded mode, the uplink log where this process runs an endpoint
    /// of the distributed mode; `None` in `processor` mode.
    pub orders: Option<Arc<crate::endpoint::handoff::Handoff>>,
}

impl AppState {
    /// The processing settings of `tenant`: its own, or the defaults.
    fn settings(&self, tenant: &TenantId) -> &TenantProcessing {
        self.processing
            .tenants
            .get(tenant)
            .unwrap_or(&self.processing.defaults)
    }
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
    routes().with_state(state)
}

/// Every route — the documented API, the dashboard's assets — with the JSON error
/// fallback and the layers; stateless until [`router`] gives it the state.
fn routes() -> Router<AppState> {
    let (api, _document) = api().split_for_parts();
    api.merge(crate::dashboard::routes())
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(middleware::from_fn(json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// The API's routes, each registered with its documentation: `routes!` takes the path
/// and method from the handler's `#[utoipa::path]`. A new route goes here.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(list_meters))
        .routes(routes!(get_meter))
        .routes(routes!(list_readings))
        .routes(routes!(list_dead_letters))
        .routes(routes!(get_summary))
        .routes(routes!(list_districts))
        .routes(routes!(get_district_usage))
        .routes(routes!(balance::get_district_balance))
        .routes(routes!(list_top_consumers))
        .routes(routes!(list_alerts))
        .routes(routes!(get_bill))
        .routes(routes!(exceptions::list_exceptions))
        .routes(routes!(exceptions::decide_exception))
        .routes(routes!(exceptions::record_exchange))
}

/// The OpenAPI document of the API (what `GET /api/v1/openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// Largest request body taken: the only bodies are operators' decisions and work
/// orders (a few hundred bytes). Larger ones are answered 413 before any handler runs.
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
            format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
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
            format!(
                "no such path {}; the API is under /api/v1/tenants/{{tenant}}/…",
                quoted(path.as_str())
            )
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("{} does not take this method", quoted(path.as_str()))
        }
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
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Always `ok`", body = String, content_type = "text/plain"))
)]
async fn healthz() -> &'static str {
    "ok"
}

/// What `/readyz` found.
#[derive(Serialize, ToSchema)]
struct Readiness {
    /// The endpoint took a new MQTT session (a CONNECT/CONNACK round trip).
    mqtt_sessions: bool,
    /// Why it did not, when it did not.
    mqtt_error: Option<String>,
    /// The store is open.
    store_open: bool,
    /// The store's latest writes succeeded.
    store_writes_ok: bool,
}

/// Ready: the endpoint takes a new MQTT session, the store is open and its writes
/// succeed.
///
/// `mqtt_sessions` is a real CONNECT/CONNACK round trip against the endpoint: it fails
/// at `mqtt.max_connections` or over `mqtt.connection_rate` too.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready; the fields say what is not", body = Readiness),
    )
)]
async fn readyz(State(state): State<AppState>) -> Response {
    let mqtt = match &state.mqtt_probe {
        Some(probe) => {
            crate::endpoint::probe::probe(probe.addr, &probe.secret, PROBE_TIMEOUT).await
        }
        None => Ok(()),
    };
    let body = Readiness {
        mqtt_sessions: mqtt.is_ok(),
        mqtt_error: mqtt.err(),
        store_open: state.store.is_ready(),
        store_writes_ok: state.store_healthy.load(Ordering::Relaxed),
    };
    let status = if body.mqtt_sessions && body.store_open && body.store_writes_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics (`meterflow_*`, listed in the operations guide).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((
        status = 200,
        description = "Prometheus text exposition format 0.0.4",
        body = String,
        content_type = "text/plain"
    ))
)]
async fn metrics(State(state): State<AppState>) -> Response {
    // The process metrics are read from /proc now, at the scrape.
    let mut text = state.prometheus.render();
    text.push_str(&crate::metrics::process::render());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// This document: the API in OpenAPI 3.1.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json"))
)]
async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document_json(),
    )
        .into_response()
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
            format!("no tenant {} is configured", quoted(tenant)),
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

/// A meter id from a URL, or a 400 saying what one looks like.
fn meter_id(raw: &str) -> Result<MeterId, ApiError> {
    MeterId::try_from(raw).map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{} is not a meter id ([A-Za-z0-9_-]{{1,64}})", quoted(raw)),
        )
    })
}

fn meter_key(
    state: &AppState,
    tenant: &str,
    meter: &str,
    headers: &HeaderMap,
) -> Result<MeterKey, ApiError> {
    let tenant = authorize(state, tenant, headers)?;
    Ok(MeterKey::new(tenant, meter_id(meter)?))
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

/// `{tenant}` of a tenant's path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct TenantPath {
    /// The tenant's id.
    tenant: String,
}

/// `{tenant}` and `{meter}` of a meter's path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct MeterPath {
    /// The tenant's id.
    tenant: String,
    /// The meter's id (`[A-Za-z0-9_-]{1,64}`).
    meter: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct MeterListQuery {
    /// Only meters whose id contains this text (case-sensitive).
    q: Option<String>,
    /// Only meters of this district (names: `GET …/districts`).
    district: Option<String>,
    /// Only silent meters: those whose newest reading (by its own timestamp) is more
    /// than this many seconds older than the service's clock.
    silent_for_s: Option<u64>,
    /// The previous page's `next`: the list goes on after this meter id.
    after: Option<String>,
    /// Meters per page, default 100. More than 1000 is served as 1000 (follow `next`);
    /// 0 is a 400.
    #[param(minimum = 1)]
    limit: Option<usize>,
}

/// The tenant's meters, in meter-id order, a page at a time.
///
/// Lists the meters the hot cache holds (with the in-process cache: those that
/// reported since meterflow started), each as `GET …/meters/{meter}` shows it.
/// Filters combine. Paging: when more meters match than `limit`, `next` is the last
/// id of this page; ask again with `after=<next>` until `next` is null. Paging by
/// `next` lists every matching meter exactly once (meters that appear meanwhile are
/// listed when their id sorts after the page being read).
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/meters",
    tag = "meters",
    params(TenantPath, MeterListQuery),
    security((), ("api_token" = [])),
    responses(
        (status = 200, description = "One page of meters", body = MeterPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
async fn list_meters(
    State(state): State<AppState>,
    Path(path): Path<TenantPath>,
    Query(q): Query<MeterListQuery>,
    headers: HeaderMap,
) -> ApiResult<MeterPage> {
    let tenant = authorize(&state, &path.tenant, &headers)?.to_string();
    let limit = match q.limit.unwrap_or(DEFAULT_METERS_PAGE) {
        0 => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("limit 0: a page holds 1 to {MAX_METERS_PAGE} meters"),
            ));
        }
        n => n.min(MAX_METERS_PAGE),
    };
    let silent_for_ms = q
        .silent_for_s
        .map(|s| i64::try_from(s.saturating_mul(1_000)).unwrap_or(i64::MAX));
    let query = MeterQuery {
        search: q.q.filter(|s| !s.is_empty()),
        district: q.district.filter(|s| !s.is_empty()),
        silent_before_ms: silent_for_ms.map(|ms| crate::clock::now_ms().saturating_sub(ms)),
        after: q.after.filter(|s| !s.is_empty()),
        limit,
    };
    let cache = state.cache.clone();
    Ok(Json(
        blocking(move || cache.meters(&tenant, &query).map_err(|e| e.to_string())).await?,
    ))
}

/// A meter's latest state: newest reading, today's usage, quality, district, battery
/// and signal.
///
/// From the hot cache; after a restart, before the meter reports again, rebuilt from
/// the stored state (battery and signal unknown until then).
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/meters/{meter}",
    tag = "meters",
    params(MeterPath),
    security((), ("api_token" = [])),
    responses(
        (status = 200, description = "The meter's latest state", body = MeterView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
async fn get_meter(
    State(state): State<AppState>,
    Path(path): Path<MeterPath>,
    headers: HeaderMap,
) -> ApiResult<MeterView> {
    let key = meter_key(&state, &path.tenant, &path.meter, &headers)?;
    let settings = state.settings(&key.tenant);
    let district = settings.district_of(&key.meter).to_owned();
    let size = settings.meter_size(&key.meter);
    let (cache, store) = (state.cache.clone(), state.store.clone());
    let view = blocking(move || {
        if let Ok(Some(view)) = cache.meter(&key) {
            return Ok(Some(view));
        }
        let persisted = store.meter_state(&key).map_err(|e| e.to_string())?;
        Ok(persisted.map(|s| MeterView::of_state(&key, &s, &district, size)))
    })
    .await?;
    view.map(Json).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("meter {}/{} has sent nothing yet", path.tenant, path.meter),
        )
    })
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RangeQuery {
    /// Readings with `ts` at or after this instant, epoch ms.
    from: Option<i64>,
    /// Readings with `ts` before this instant, epoch ms.
    to: Option<i64>,
    /// Most readings returned (default and at most 10000).
    limit: Option<usize>,
    /// `csv` or `json`: overrides `Accept` (for browsers).
    #[param(inline)]
    format: Option<Format>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct FormatQuery {
    /// `csv` or `json`: overrides `Accept` (for browsers).
    #[param(inline)]
    format: Option<Format>,
}

/// One stored reading as served.
#[derive(Serialize, ToSchema)]
#[schema(as = StoredReading)]
struct ReadingOut {
    /// When the meter took the reading, epoch ms.
    ts: i64,
    /// Forward register, litres.
    reg: u64,
    /// Reverse (backflow) register, litres.
    rev: u64,
    /// Max flow in the interval, L/h.
    flow: u32,
    /// Water temperature, 0.1 °C; absent when the meter did not send one.
    #[serde(skip_serializing_if = "Option::is_none")]
    temp: Option<i16>,
    quality: Quality,
    /// Litres since the previous reading; absent while unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    interval_l: Option<u64>,
    /// Seq of the message that carried it.
    seq: u64,
    /// When meterflow received it, epoch ms.
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
            quality: r.quality,
            interval_l: r.interval_l,
            seq: r.seq,
            received_at: r.received_at,
        }
    }
}

/// A meter's stored readings, ascending by `ts`; also CSV.
///
/// CSV columns: `ts,ts_iso,reg,rev,flow,temp,quality,interval_l,seq,received_at` —
/// the JSON fields plus `ts_iso` (`ts` as ISO 8601 UTC); an absent field is an empty
/// cell.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/meters/{meter}/readings",
    tag = "meters",
    params(MeterPath, RangeQuery),
    security((), ("api_token" = [])),
    responses(
        (
            status = 200,
            description = "The readings (`[]` for a meter without any)",
            content(
                (Vec<ReadingOut> = "application/json"),
                (String = "text/csv"),
            ),
            headers(("Content-Disposition" = String, description = "CSV only: `attachment; filename=\"{tenant}-{meter}-readings.csv\"`"))
        ),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 406, response = NotAcceptable),
        (status = 503, response = Unavailable),
    )
)]
async fn list_readings(
    State(state): State<AppState>,
    Path(path): Path<MeterPath>,
    Query(q): Query<RangeQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = meter_key(&state, &path.tenant, &path.meter, &headers)?;
    let format = negotiate(q.format, &headers)?;
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeadLetterQuery {
    /// Most dead letters returned (default 100, at most 10000).
    limit: Option<usize>,
}

/// A refused uplink as served.
#[derive(Serialize, ToSchema)]
#[schema(as = DeadLetter)]
struct DeadLetterOut {
    /// Why it was refused: a stable code (`malformed`, `clock_skew`, `bad_mac`, …;
    /// the README lists them).
    reason: &'static str,
    /// The MQTT topic it was published to.
    topic: String,
    /// `{tenant}/{meter}/{seq}` where known, `-` for unknown parts.
    correlation_id: String,
    /// When meterflow received it, epoch ms.
    received_at: i64,
    /// The (capped) payload, as text where it is UTF-8, else `hex:` and its hex.
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

/// The tenant's dead letters (refused uplinks), newest first.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/dead-letters",
    tag = "dead letters",
    params(TenantPath, DeadLetterQuery),
    security((), ("api_token" = [])),
    responses(
        (status = 200, description = "Newest first", body = Vec<DeadLetterOut>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
async fn list_dead_letters(
    State(state): State<AppState>,
    Path(path): Path<TenantPath>,
    Query(q): Query<DeadLetterQuery>,
    headers: HeaderMap,
) -> ApiResult<Vec<DeadLetterOut>> {
    let tenant = authorize(&state, &path.tenant, &headers)?;
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

/// The tenant's headline numbers for its local today (usage, meters reporting, alerts
/// open) and the time zone its days are counted in.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/summary",
    tag = "usage",
    params(TenantPath),
    security((), ("api_token" = [])),
    responses(
        (status = 200, description = "Today's summary (zeros before anything reported today)", body = SummaryOut),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
async fn get_summary(
    State(state): State<AppState>,
    Path(path): Path<TenantPath>,
    headers: HeaderMap,
) -> ApiResult<SummaryOut> {
    let tenant = authorize(&state, &path.tenant, &headers)?;
    let cache = state.cache.clone();
    let id = tenant.to_string();
    let found = blocking(move || cache.summary(&id).map_err(|e| e.to_string())).await?;
    Ok(Json(SummaryOut {
        summary: summary_of_today(
            found,
            &tenant,
            &local_today(&state, &tenant),
            crate::clock::now_ms(),
        ),
        time_zone: state.settings(&tenant).tariff.time_zone.clone(),
    }))
}

/// A tenant's summary as served: the figures and the zone of their day.
#[derive(Serialize, ToSchema)]
struct SummaryOut {
    #[serde(flatten)]
    summary: TenantSummary,
    /// The tenant's time zone (IANA name, its tariff's `time_zone`): `day` and every
    /// "today" are its local days.
    time_zone: String,
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

/// The tenant's district names (`default` holds meters without a district).
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/districts",
    tag = "usage",
    params(TenantPath),
    security((), ("api_token" = [])),
    responses(
        (status = 200, description = "District names, sorted", body = Vec<String>),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    )
)]
async fn list_districts(
    State(state): State<AppState>,
    Path(path): Path<TenantPath>,
    headers: HeaderMap,
) -> ApiResult<Vec<String>> {
    let tenant = authorize(&state, &path.tenant, &headers)?;
    let settings = state.settings(&tenant);
    let mut names: Vec<String> = settings
        .districts
        .values()
        .chain(settings.bulk_meters.values())
        .cloned()
        .collect();
    names.push(DEFAULT_DISTRICT.to_string());
    names.sort();
    names.dedup();
    Ok(Json(names))
}

/// `{tenant}` and `{district}` of a district's path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct DistrictPath {
    /// The tenant's id.
    tenant: String,
    /// A district name from `GET …/districts`.
    district: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct UsageQuery {
    /// Windows starting at or after this instant, epoch ms (default: `to` less a day
    /// for hours, an hour for minutes, 31 days for days).
    from: Option<i64>,
    /// Windows starting before this instant, epoch ms (default: now).
    to: Option<i64>,
    /// `hour` (default; from the store), `minute` (from the hot cache, at most a day
    /// per call) or `day` (the tenant's local days, from the hot cache: usage, meters
    /// reporting, the 02:00 and 03:00 hours and the minimum night flow).
    #[param(inline)]
    resolution: Option<UsageResolution>,
}

/// The windows district usage is served in.
#[derive(Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum UsageResolution {
    Hour,
    Minute,
    Day,
}

/// A district's usage per hour, minute or local day: litres, meters reporting,
/// percentiles of per-meter hourly usage (hours), night usage and minimum night flow
/// (days).
///
/// Windows without a reading ending in them have no row.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/districts/{district}/usage",
    tag = "usage",
    params(DistrictPath, UsageQuery),
    security((), ("api_token" = [])),
    responses(
        (status = 200, description = "Rows ascending by `start_ms`", body = Vec<DistrictUsage>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
async fn get_district_usage(
    State(state): State<AppState>,
    Path(path): Path<DistrictPath>,
    Query(q): Query<UsageQuery>,
    headers: HeaderMap,
) -> ApiResult<Vec<DistrictUsage>> {
    let tenant = authorize(&state, &path.tenant, &headers)?.to_string();
    let resolution = match q.resolution.unwrap_or(UsageResolution::Hour) {
        UsageResolution::Hour => Resolution::Hour,
        UsageResolution::Minute => Resolution::Minute,
        UsageResolution::Day => Resolution::Day,
    };
    let (from, to) = usage_range(resolution, q.from, q.to)?;
    let rows = district_rows(&state, tenant, path.district, resolution, from, to).await?;
    Ok(Json(rows))
}

/// The `[from, to)` of a district usage call: `to` defaults to now, `from` to `to`
/// less an hour of minutes, a day of hours or 31 days; 400 when the range is empty
/// or more than a day of minutes.
fn usage_range(
    resolution: Resolution,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<(i64, i64), ApiError> {
    let to = to.unwrap_or_else(crate::clock::now_ms);
    let from = from.unwrap_or(match resolution {
        Resolution::Minute => to.saturating_sub(3_600_000),
        Resolution::Hour => to.saturating_sub(86_400_000),
        Resolution::Day => to.saturating_sub(31 * 86_400_000),
    });
    if from >= to {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("from ({from}) must be before to ({to})"),
        ));
    }
    if resolution == Resolution::Minute && to.saturating_sub(from) > MAX_MINUTE_WINDOW_MS {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "minute rows are served for at most one day; use resolution=hour".into(),
        ));
    }
    Ok((from, to))
}

/// A district's rows of `[from, to)`: hours from the store, minutes and days from
/// the hot cache.
async fn district_rows(
    state: &AppState,
    tenant: String,
    district: String,
    resolution: Resolution,
    from: i64,
    to: i64,
) -> Result<Vec<DistrictUsage>, ApiError> {
    let (store, cache) = (state.store.clone(), state.cache.clone());
    blocking(move || match resolution {
        Resolution::Hour => store
            .district_hourly(&tenant, &district, from, to)
            .map_err(|e| e.to_string()),
        Resolution::Minute | Resolution::Day => cache
            .district_usage(&tenant, &district, resolution, from, to)
            .map_err(|e| e.to_string()),
    })
    .await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TopQuery {
    /// The tenant's local day, `yyyy-mm-dd` (default: today).
    day: Option<String>,
    /// Most entries (default 10, at most 100).
    limit: Option<usize>,
}

/// The biggest consumers of a local day, largest first.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/top",
    tag = "usage",
    params(TenantPath, TopQuery),
    security((), ("api_token" = [])),
    responses(
        (status = 200, description = "Largest first (ties by meter id)", body = Vec<TopEntry>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
async fn list_top_consumers(
    State(state): State<AppState>,
    Path(path): Path<TenantPath>,
    Query(q): Query<TopQuery>,
    headers: HeaderMap,
) -> ApiResult<Vec<TopEntry>> {
    let tenant = authorize(&state, &path.tenant, &headers)?;
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
fn local_today(state: &AppState, tenant: &TenantId) -> String {
    let settings = state.settings(tenant);
    meterflow_processors::calendar::LocalCalendar::for_zone_name(&settings.tariff.time_zone)
        .map(|mut calendar| calendar.day(crate::clock::now_ms()).day_label())
        .unwrap_or_else(|_| {
            meterflow_model::time::day_string(meterflow_model::time::day_of(crate::clock::now_ms()))
        })
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AlertQuery {
    /// `open` (default): episodes open now; `all`: cleared and withdrawn ones too.
    #[param(inline)]
    state: Option<AlertStates>,
    /// Only this meter's episodes, found among the tenant's newest 1000 (empty: every
    /// meter's).
    meter: Option<String>,
    /// Most episodes returned (default 100, at most 1000).
    limit: Option<usize>,
}

/// Which episodes the alert list serves.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum AlertStates {
    Open,
    All,
}

/// The tenant's alert episodes, newest `opened_at` first; one entry per episode, its
/// latest step.
///
/// `meter=` filters to one meter's episodes among the tenant's newest 1000 (open ones
/// with `state=open`): a meter's older history is not served by this call.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/alerts",
    tag = "alerts",
    params(TenantPath, AlertQuery),
    security((), ("api_token" = [])),
    responses(
        (status = 200, description = "Episodes, newest first", body = Vec<AlertEvent>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
async fn list_alerts(
    State(state): State<AppState>,
    Path(path): Path<TenantPath>,
    Query(q): Query<AlertQuery>,
    headers: HeaderMap,
) -> ApiResult<Vec<AlertEvent>> {
    let tenant = authorize(&state, &path.tenant, &headers)?.to_string();
    let open_only = q.state.unwrap_or(AlertStates::Open) == AlertStates::Open;
    let meter = q
        .meter
        .as_deref()
        .filter(|m| !m.is_empty())
        .map(meter_id)
        .transpose()?;
    let limit = q.limit.unwrap_or(100).min(MAX_ALERTS);
    // One meter's episodes are looked for among the tenant's newest MAX_ALERTS.
    let read = if meter.is_some() { MAX_ALERTS } else { limit };
    let store = state.store.clone();
    let mut episodes = blocking(move || {
        store
            .alerts(&tenant, open_only, read)
            .map_err(|e| e.to_string())
    })
    .await?;
    if let Some(meter) = meter {
        episodes.retain(|e| e.meter == meter.as_str());
        episodes.truncate(limit);
    }
    Ok(Json(episodes))
}

/// `{tenant}`, `{period}` and `{meter}` of a bill's path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct BillPath {
    /// The tenant's id.
    tenant: String,
    /// The billing period: a calendar month in the tenant's time zone, `yyyy-mm`.
    period: String,
    /// The meter's id.
    meter: String,
}

/// A meter's running bill for one period: usage, tier breakdown, fixed charge, amount;
/// also CSV.
///
/// CSV columns: `tenant,meter,period,currency,row,tier,usage_l,price_per_m3,fixed_cents,
/// amount_cents,estimated,final` — a `row=tier` line per tier, then a `row=total` line.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/bills/{period}/{meter}",
    tag = "billing",
    params(BillPath, FormatQuery),
    security((), ("api_token" = [])),
    responses(
        (
            status = 200,
            description = "The bill so far (`final` once the period closed)",
            content(
                (BillLine = "application/json"),
                (String = "text/csv"),
            ),
            headers(("Content-Disposition" = String, description = "CSV only: `attachment; filename=\"{tenant}-{meter}-{period}-bill.csv\"`"))
        ),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 406, response = NotAcceptable),
        (status = 503, response = Unavailable),
    )
)]
async fn get_bill(
    State(state): State<AppState>,
    Path(path): Path<BillPath>,
    Query(q): Query<FormatQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let BillPath {
        tenant,
        period,
        meter,
    } = path;
    let key = meter_key(&state, &tenant, &meter, &headers)?;
    let format = negotiate(q.format, &headers)?;
    if !is_billing_period(&period) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("period {}: use yyyy-mm, month 01 to 12", quoted(&period)),
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

/// Most characters of a caller's input an error message quotes back.
const QUOTED_CHARS: usize = 64;

/// What a caller sent (a path, an id), quoted and escaped for an error message, cut
/// to [`QUOTED_CHARS`] characters: enough to recognise it, and a long URL is not
/// echoed back whole.
fn quoted(raw: &str) -> String {
    match raw.char_indices().nth(QUOTED_CHARS) {
        Some((cut, _)) => format!("{:?}…", &raw[..cut]),
        None => format!("{raw:?}"),
    }
}

/// Whether `period` names a billing period as billing labels them: `yyyy-mm`, the
/// month 01 to 12.
fn is_billing_period(period: &str) -> bool {
    match period.as_bytes() {
        [year @ .., b'-', b'0', b'1'..=b'9'] | [year @ .., b'-', b'1', b'0'..=b'2'] => {
            year.len() == 4 && year.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_quoted_back_escaped_and_cut() {
        assert_eq!(quoted("m1"), "\"m1\"");
        assert_eq!(quoted("a\"\0b"), "\"a\\\"\\0b\"");
        let long = "é".repeat(QUOTED_CHARS + 1);
        assert_eq!(quoted(&long), format!("\"{}\"…", "é".repeat(QUOTED_CHARS)));
        let exact = "x".repeat(QUOTED_CHARS);
        assert_eq!(quoted(&exact), format!("\"{exact}\""));
    }

    #[test]
    fn a_billing_period_is_a_year_and_a_month_of_twelve() {
        for period in ["2026-01", "2026-09", "2026-10", "2026-12", "0999-07"] {
            assert!(is_billing_period(period), "{period}");
        }
        for period in [
            "2026-00",
            "2026-13",
            "2026-1",
            "2026-1a",
            "2026/01",
            "26-01",
            "2026-011",
            "",
            "２０２６-01",
            "2026-0１",
        ] {
            assert!(!is_billing_period(period), "{period}");
        }
    }

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
