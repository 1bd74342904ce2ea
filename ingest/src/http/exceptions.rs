//! The validation-exceptions work queue (revenue protection) and field work orders:
//!
//! - `GET /api/v1/tenants/{t}/exceptions?state=open&limit=N` — suspect reads and
//!   where their cases stand, in (meter, ts) order;
//! - `POST /api/v1/tenants/{t}/meters/{m}/exceptions/{ts}` — decide one: `accept` as
//!   actual, `confirm_exchange`, or `reject`, with who and why;
//! - `POST /api/v1/tenants/{t}/meters/{m}/exchanges` — record a meter exchange as a
//!   field work order records it (time, the old register's final read, the new
//!   one's initial read).
//!
//! A decision or an exchange is an order about the meter's register: it goes through
//! the meter's shard, in order with its data, and VEE re-runs its pass with it, so
//! the stored readings and the bill follow. In embedded mode the answer comes once
//! that is durable (200, with the exception as it now stands), or says why VEE cannot
//! follow it (409: the read is settled, or the meter has no such read). Where this
//! process runs a distributed endpoint, the order is appended to the uplink log,
//! keyed by the meter, and the answer (202) means "in the log", as a PUBACK does
//! there: the meter's processor applies it (or logs why it cannot); the exception's
//! state shows the outcome. A processor-only replica takes no orders (503).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use meterflow_model::exception::ExceptionRef;
use meterflow_model::{
    Decision, ExceptionState, MeterKey, MeterSize, OrderAction, ReadException, RegisterOrder,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use utoipa::{IntoParams, ToSchema};

use super::openapi::{BadRequest, NotFound, Unauthorized, Unavailable};
use super::{ApiError, ApiResult, AppState, TenantPath, authorize, blocking, meter_id};
use crate::endpoint::handoff::{Handoff, Inbound};
use crate::endpoint::outbox::Completion;

/// Most exceptions one list call returns.
const MAX_EXCEPTIONS: usize = 1_000;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ExceptionQuery {
    /// `open` (default), `resolved`, `accepted`, `rejected`, `exchange_confirmed`, or
    /// `all`.
    #[param(inline)]
    state: Option<ExceptionStates>,
    /// Most exceptions returned (default 100, at most 1000).
    limit: Option<usize>,
}

/// Which exceptions the list serves: those in one state, or all.
#[derive(Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum ExceptionStates {
    Open,
    Resolved,
    Accepted,
    Rejected,
    ExchangeConfirmed,
    All,
}

/// The tenant's validation exceptions in (meter, ts) order.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/exceptions",
    tag = "exceptions",
    params(TenantPath, ExceptionQuery),
    security((), ("api_token" = [])),
    responses(
        (status = 200, description = "Exceptions", body = Vec<ReadException>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn list_exceptions(
    State(state): State<AppState>,
    Path(path): Path<TenantPath>,
    Query(q): Query<ExceptionQuery>,
    headers: HeaderMap,
) -> ApiResult<Vec<ReadException>> {
    let tenant = authorize(&state, &path.tenant, &headers)?.to_string();
    let wanted = match q.state.unwrap_or(ExceptionStates::Open) {
        ExceptionStates::Open => Some(ExceptionState::Open),
        ExceptionStates::Resolved => Some(ExceptionState::Resolved),
        ExceptionStates::Accepted => Some(ExceptionState::Accepted),
        ExceptionStates::Rejected => Some(ExceptionState::Rejected),
        ExceptionStates::ExchangeConfirmed => Some(ExceptionState::ExchangeConfirmed),
        ExceptionStates::All => None,
    };
    let limit = q.limit.unwrap_or(100).min(MAX_EXCEPTIONS);
    let store = state.store.clone();
    let exceptions = blocking(move || {
        store
            .exceptions(&tenant, wanted, limit)
            .map_err(|e| e.to_string())
    })
    .await?;
    Ok(Json(exceptions))
}

/// `{tenant}`, `{meter}` and `{ts}` of one exception.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct ExceptionPath {
    /// The tenant's id.
    tenant: String,
    /// The meter's id.
    meter: String,
    /// The read's timestamp, epoch ms.
    ts: i64,
}

/// What an operator decides about an exception.
#[derive(Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum DecisionAction {
    /// The read is actual: billed with its growth, however implausible (not for a
    /// regression).
    Accept,
    /// The read is the initial read of a new register (a meter exchange).
    ConfirmExchange,
    /// The read is not a true register value: it stays excluded.
    Reject,
}

/// A decision on an exception.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DecisionBody {
    action: DecisionAction,
    /// Who decides (an operator's name or id).
    by: String,
    /// Why.
    #[serde(default)]
    why: String,
}

/// Decides one exception; the readings and the bill follow before it answers.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/meters/{meter}/exceptions/{ts}",
    tag = "exceptions",
    params(ExceptionPath),
    request_body = DecisionBody,
    security((), ("api_token" = [])),
    responses(
        (status = 200, description = "The exception as it now stands", body = ReadException),
        (status = 202, description = "In the log (distributed mode): the exception as stored before the decision; the meter's processor applies it", body = ReadException),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, description = "VEE cannot follow the decision (the read is settled, or no longer suspect)", body = super::openapi::ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn decide_exception(
    State(state): State<AppState>,
    Path(path): Path<ExceptionPath>,
    headers: HeaderMap,
    Json(body): Json<DecisionBody>,
) -> Result<(StatusCode, Json<ReadException>), ApiError> {
    let tenant = authorize(&state, &path.tenant, &headers)?;
    let meter = meter_id(&path.meter)?;
    let store = state.store.clone();
    let (t, m, ts) = (tenant.to_string(), meter.to_string(), path.ts);
    let stored = blocking(move || store.exception(&t, &m, ts).map_err(|e| e.to_string()))
        .await?
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("meter {meter} has no exception at {}", path.ts),
            )
        })?;
    let action = match body.action {
        DecisionAction::Accept => OrderAction::Accept,
        DecisionAction::ConfirmExchange => OrderAction::ConfirmExchange,
        DecisionAction::Reject => OrderAction::Reject,
    };
    let order = RegisterOrder {
        ts: path.ts,
        action,
        decision: decision(body.by, body.why)?,
        exception: Some(ExceptionRef {
            reg: stored.reg,
            received_at: stored.received_at,
            reason: stored.reason,
        }),
    };
    // Refused here too, not only by the meter's shard: an endpoint of the
    // distributed mode would otherwise answer 202 for an order no processor follows.
    if let Some(why) = order.contradiction() {
        return Err(ApiError(StatusCode::CONFLICT, why.into()));
    }
    let key = MeterKey { tenant, meter };
    if place(&state, &key, order).await? == Placed::InTheLog {
        return Ok((StatusCode::ACCEPTED, Json(stored)));
    }
    let store = state.store.clone();
    let exception = blocking(move || {
        store
            .exception(key.tenant.as_str(), key.meter.as_str(), path.ts)
            .map_err(|e| e.to_string())
    })
    .await?;
    Ok((StatusCode::OK, Json(exception.unwrap_or(stored))))
}

/// `{tenant}` and `{meter}` of a meter's work orders.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct MeterPath {
    /// The tenant's id.
    tenant: String,
    /// The meter's id.
    meter: String,
}

/// A meter exchange as a field work order records it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ExchangeBody {
    /// When the old meter was removed and the new one fitted, epoch ms.
    at: i64,
    /// The old register's final read, litres (billed up to `at`), if read.
    final_read_l: Option<u64>,
    /// The new register's initial read, litres: it bills from there.
    initial_read_l: u64,
    /// The new meter's size (`dn15` … `dn150`), when it differs from the old one's:
    /// from `at` on it decides the register's digits, the flow the meter can
    /// plausibly measure and the fixed charge (prorated by day in the exchange's
    /// period). Omitted: the size stays as it was.
    #[serde(default)]
    size: Option<MeterSize>,
    /// Who records it.
    by: String,
    /// Why, or the work order's reference.
    #[serde(default)]
    why: String,
}

/// The exchange as recorded.
#[derive(Serialize, ToSchema)]
pub(super) struct ExchangeRecorded {
    tenant: String,
    meter: String,
    at: i64,
    final_read_l: Option<u64>,
    initial_read_l: u64,
    /// The new meter's size, if the order gave one.
    size: Option<MeterSize>,
    decision: Decision,
}

/// Records a meter exchange; the meter's reads from `at` on bill from the new
/// register's initial read (reads already stored are re-decided before it answers).
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant}/meters/{meter}/exchanges",
    tag = "exceptions",
    params(MeterPath),
    request_body = ExchangeBody,
    security((), ("api_token" = [])),
    responses(
        (status = 200, description = "Recorded and applied", body = ExchangeRecorded),
        (status = 202, description = "In the log (distributed mode): the meter's processor applies it", body = ExchangeRecorded),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, description = "The exchange is before the meter's settled point", body = super::openapi::ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn record_exchange(
    State(state): State<AppState>,
    Path(path): Path<MeterPath>,
    headers: HeaderMap,
    Json(body): Json<ExchangeBody>,
) -> Result<(StatusCode, Json<ExchangeRecorded>), ApiError> {
    let tenant = authorize(&state, &path.tenant, &headers)?;
    let meter = meter_id(&path.meter)?;
    let decision = decision(body.by, body.why)?;
    let order = RegisterOrder {
        ts: body.at,
        action: OrderAction::Exchange {
            final_reg: body.final_read_l,
            initial_reg: body.initial_read_l,
            size: body.size,
        },
        decision: decision.clone(),
        exception: None,
    };
    let key = MeterKey {
        tenant: tenant.clone(),
        meter: meter.clone(),
    };
    let status = match place(&state, &key, order).await? {
        Placed::Applied => StatusCode::OK,
        Placed::InTheLog => StatusCode::ACCEPTED,
    };
    let recorded = ExchangeRecorded {
        tenant: tenant.to_string(),
        meter: meter.to_string(),
        at: body.at,
        final_read_l: body.final_read_l,
        initial_read_l: body.initial_read_l,
        size: body.size,
        decision,
    };
    Ok((status, Json(recorded)))
}

fn decision(by: String, why: String) -> Result<Decision, ApiError> {
    let decision = Decision {
        by,
        why,
        at_ms: crate::clock::now_ms(),
    };
    match decision.problem() {
        Some(problem) => Err(ApiError(StatusCode::BAD_REQUEST, problem)),
        None => Ok(decision),
    }
}

/// How far an order got when [`place`] answered.
#[derive(Debug, PartialEq, Eq)]
enum Placed {
    /// Applied and durable (embedded mode).
    Applied,
    /// In the uplink log; the meter's processor applies it.
    InTheLog,
}

/// Hands `order` to the meter's shard (or the log) and waits until it is durable
/// there, or refused.
async fn place(state: &AppState, key: &MeterKey, order: RegisterOrder) -> Result<Placed, ApiError> {
    let Some(handoff) = &state.orders else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this process takes no orders (processor mode): send them to an endpoint or an embedded replica".into(),
        ));
    };
    let placed = match handoff.as_ref() {
        Handoff::Shards(_) => Placed::Applied,
        #[cfg(feature = "kafka")]
        Handoff::Log(_) => Placed::InTheLog,
    };
    let (answer, answered) = oneshot::channel();
    let inbound = Inbound {
        identity: key.clone(),
        topic: Default::default(),
        payload: Default::default(),
        refused: None,
        received_at: crate::clock::now_ms(),
        received: std::time::Instant::now(),
        completion: Completion::for_request(answer),
        order: Some(Box::new(order)),
    };
    let stopped = || {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the pipeline stopped before the order was durable; send it again".into(),
        )
    };
    handoff.send(inbound).await.map_err(|_| stopped())?;
    match answered.await {
        Ok(Ok(())) => Ok(placed),
        Ok(Err(why)) => Err(ApiError(StatusCode::CONFLICT, why)),
        Err(_) => Err(stopped()),
    }
}
