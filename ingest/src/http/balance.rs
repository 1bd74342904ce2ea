//! `GET /api/v1/tenants/{t}/districts/{d}/balance` — a district's water balance, what
//! leakage engineers look at first (DESIGN §4): per window, the inflow its bulk
//! meters measured (`bulk_meters` of the tenant), the consumption its customer meters
//! measured, their difference — non-revenue water (NRW: leaks, theft, meter error) —
//! and, for days, the inflow's minimum night flow with its trend over the days served.
//!
//! The windows are the district usage rows of the same range and resolution, read
//! where `…/usage` reads them (hours from the store, days from the hot cache); this
//! module only derives the balance from them ([`DistrictBalance::of`], pure).
//!
//! - `nrw_l` = `inflow_l` − `consumption_l`. It may be negative: customers' meters
//!   registered more than the bulk meters (meter error, a feed without a bulk meter,
//!   reads not yet in). Null without inflow.
//! - `nrw_pct` = `nrw_l` / `inflow_l` × 100, rounded to 0.01; null when the inflow
//!   is null or 0.
//! - `night_flow_trend_lph_per_day`: the least-squares slope of the days' inflow
//!   minimum night flow against the day (local days, counted by their starts), L/h per
//!   day, rounded to 0.01; null for hours and with fewer than 2 days that have one. A
//!   rising trend is a leak growing.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use meterflow_model::analytics::{DistrictUsage, Resolution};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::openapi::{BadRequest, NotFound, Unauthorized, Unavailable};
use super::{ApiResult, AppState, DistrictPath, authorize, district_rows, usage_range};

/// Milliseconds of a day, for counting days between day windows (a DST day is an
/// hour off; the count is rounded).
const DAY_MS: f64 = 86_400_000.0;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct BalanceQuery {
    /// Windows starting at or after this instant, epoch ms (default: `to` less 31
    /// days for days, a day for hours).
    from: Option<i64>,
    /// Windows starting before this instant, epoch ms (default: now).
    to: Option<i64>,
    /// `day` (default; the tenant's local days, from the hot cache, with the inflow's
    /// minimum night flow and its trend) or `hour` (from the store).
    #[param(inline)]
    resolution: Option<BalanceResolution>,
}

/// The windows a water balance is served in.
#[derive(Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum BalanceResolution {
    Day,
    Hour,
}

/// A district's water balance over a range of windows.
#[derive(Debug, PartialEq, Serialize, ToSchema)]
pub(super) struct DistrictBalance {
    tenant: String,
    district: String,
    resolution: Resolution,
    /// Days: least-squares slope of the inflow's minimum night flow over the days
    /// served, L/h per day (rounded to 0.01); null for hours and with fewer than 2
    /// days that have a night flow. Rising means a growing leak.
    night_flow_trend_lph_per_day: Option<f64>,
    /// Ascending by `start`; windows without any reading ending in them have none.
    windows: Vec<BalanceWindow>,
}

/// The balance of one window.
#[derive(Debug, PartialEq, Serialize, ToSchema)]
pub(super) struct BalanceWindow {
    /// Window start, epoch ms.
    start: i64,
    /// Litres the bulk (inflow) meters measured; null until one reported in the window.
    inflow_l: Option<u64>,
    /// Litres the customer meters used (the district usage's `usage_l`).
    consumption_l: u64,
    /// Non-revenue water, litres: `inflow_l` − `consumption_l`. Negative when the
    /// customers' meters registered more than the inflow (meter error, an unmetered
    /// feed, reads still to come). Null without inflow.
    nrw_l: Option<i64>,
    /// `nrw_l` as a percentage of `inflow_l`, rounded to 0.01; null when the inflow
    /// is null or 0.
    nrw_pct: Option<f64>,
    /// Days: the inflow's minimum night flow, L/h (the lower of its 02:00 and 03:00
    /// hours); null for hours and until a bulk meter reported in the night.
    night_flow_lph: Option<u64>,
}

impl BalanceWindow {
    fn of(row: &DistrictUsage) -> Self {
        let nrw = row
            .inflow_l
            .map(|inflow| i128::from(inflow) - i128::from(row.usage_l));
        let nrw_pct = match (nrw, row.inflow_l) {
            (Some(nrw), Some(inflow)) if inflow > 0 => {
                Some(hundredths(nrw as f64 * 100.0 / inflow as f64))
            }
            _ => None,
        };
        // Saturates beyond i64 (no meter measures that much).
        let nrw_l =
            nrw.map(|nrw| i64::try_from(nrw).unwrap_or(if nrw < 0 { i64::MIN } else { i64::MAX }));
        Self {
            start: row.start_ms,
            inflow_l: row.inflow_l,
            consumption_l: row.usage_l,
            nrw_l,
            nrw_pct,
            night_flow_lph: row.inflow_night_flow_lph,
        }
    }
}

impl DistrictBalance {
    /// The balance of a district's `rows` (ascending, of `resolution`).
    fn of(
        tenant: String,
        district: String,
        resolution: Resolution,
        rows: &[DistrictUsage],
    ) -> Self {
        let windows: Vec<BalanceWindow> = rows.iter().map(BalanceWindow::of).collect();
        let night_flow_trend_lph_per_day = match resolution {
            Resolution::Day => night_flow_trend(&windows),
            Resolution::Minute | Resolution::Hour => None,
        };
        Self {
            tenant,
            district,
            resolution,
            night_flow_trend_lph_per_day,
            windows,
        }
    }
}

/// The least-squares slope of the windows' night flow against their day, L/h per
/// day; `None` under two days with a night flow.
fn night_flow_trend(windows: &[BalanceWindow]) -> Option<f64> {
    let first = windows.first()?.start;
    let points: Vec<(f64, f64)> = windows
        .iter()
        .filter_map(|w| {
            let day = ((w.start - first) as f64 / DAY_MS).round();
            w.night_flow_lph.map(|lph| (day, lph as f64))
        })
        .collect();
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let covariance: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let variance: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    // Days are distinct windows, so two points have a positive variance.
    (variance > 0.0).then(|| hundredths(covariance / variance))
}

/// `value` rounded to two decimals.
fn hundredths(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// A district's water balance per local day (default) or hour: the inflow of its
/// bulk meters, its customers' consumption, non-revenue water (litres and % of the
/// inflow) and, for days, the inflow's minimum night flow and its trend.
///
/// `nrw_l` may be negative (customers' meters registered more than the inflow).
/// Windows without a reading ending in them have none.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant}/districts/{district}/balance",
    tag = "usage",
    params(DistrictPath, BalanceQuery),
    security((), ("api_token" = [])),
    responses(
        (status = 200, description = "The balance, windows ascending by `start`", body = DistrictBalance),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn get_district_balance(
    State(state): State<AppState>,
    Path(path): Path<DistrictPath>,
    Query(q): Query<BalanceQuery>,
    headers: HeaderMap,
) -> ApiResult<DistrictBalance> {
    let tenant = authorize(&state, &path.tenant, &headers)?.to_string();
    let resolution = match q.resolution.unwrap_or(BalanceResolution::Day) {
        BalanceResolution::Day => Resolution::Day,
        BalanceResolution::Hour => Resolution::Hour,
    };
    let (from, to) = usage_range(resolution, q.from, q.to)?;
    let district = path.district;
    let rows = district_rows(
        &state,
        tenant.clone(),
        district.clone(),
        resolution,
        from,
        to,
    )
    .await?;
    Ok(Json(DistrictBalance::of(
        tenant, district, resolution, &rows,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2025-01-15T00:00Z.
    const MIDNIGHT: i64 = 1_736_899_200_000;
    const DAY: i64 = 86_400_000;

    fn day(start_ms: i64, usage_l: u64, inflow_l: Option<u64>, mnf: Option<u64>) -> DistrictUsage {
        DistrictUsage {
            usage_l,
            inflow_l,
            inflow_night_flow_lph: mnf,
            ..DistrictUsage::new("acme", "north", Resolution::Day, start_ms)
        }
    }

    fn balance(rows: &[DistrictUsage]) -> DistrictBalance {
        DistrictBalance::of("acme".into(), "north".into(), Resolution::Day, rows)
    }

    #[test]
    fn nrw_is_inflow_less_consumption_in_litres_and_percent() {
        let got = balance(&[
            day(MIDNIGHT, 7_200, Some(10_080), Some(150)),
            day(MIDNIGHT + DAY, 900, Some(800), None),
            day(MIDNIGHT + 2 * DAY, 50, None, None),
            day(MIDNIGHT + 3 * DAY, 0, Some(0), Some(0)),
        ]);
        let figures: Vec<_> = got
            .windows
            .iter()
            .map(|w| {
                (
                    w.inflow_l,
                    w.consumption_l,
                    w.nrw_l,
                    w.nrw_pct,
                    w.night_flow_lph,
                )
            })
            .collect();
        assert_eq!(
            figures,
            [
                (Some(10_080), 7_200, Some(2_880), Some(28.57), Some(150)),
                // Customers registered more than the inflow: negative NRW.
                (Some(800), 900, Some(-100), Some(-12.5), None),
                (None, 50, None, None, None),
                (Some(0), 0, Some(0), None, Some(0)),
            ]
        );
    }

    #[test]
    fn the_night_flow_trend_is_the_least_squares_slope_over_days() {
        // 100, (none), 130, 150 L/h on days 0, 1, 2, 3: slope over (0,100), (2,130),
        // (3,150) = 16.43 L/h per day.
        let got = balance(&[
            day(MIDNIGHT, 0, Some(1), Some(100)),
            day(MIDNIGHT + DAY, 0, Some(1), None),
            day(MIDNIGHT + 2 * DAY, 0, Some(1), Some(130)),
            // A DST day starts an hour off: still day 3.
            day(MIDNIGHT + 3 * DAY - 3_600_000, 0, Some(1), Some(150)),
        ]);
        assert_eq!(got.night_flow_trend_lph_per_day, Some(16.43));
        let one = balance(&[day(MIDNIGHT, 0, Some(1), Some(100))]);
        assert_eq!(one.night_flow_trend_lph_per_day, None);
        assert_eq!(balance(&[]).night_flow_trend_lph_per_day, None);
        let hours = DistrictBalance::of(
            "acme".into(),
            "north".into(),
            Resolution::Hour,
            &[
                day(MIDNIGHT, 0, Some(1), Some(100)),
                day(MIDNIGHT + DAY, 0, Some(1), Some(100)),
            ],
        );
        assert_eq!(hours.night_flow_trend_lph_per_day, None);
    }

    #[test]
    fn extreme_litres_do_not_overflow() {
        let got = balance(&[
            day(MIDNIGHT, u64::MAX, Some(0), None),
            day(MIDNIGHT + DAY, 0, Some(u64::MAX), None),
        ]);
        assert_eq!(got.windows[0].nrw_l, Some(i64::MIN));
        assert_eq!(got.windows[1].nrw_l, Some(i64::MAX));
        assert_eq!(got.windows[1].nrw_pct, Some(100.0));
    }
}
