//! Answer formats of the endpoints that speak both JSON and CSV (readings, bills):
//! content negotiation (`?format=json|csv` or `Accept` by q-values; neither acceptable
//! is a 406) and CSV rendering (RFC 4180 quoting, CRLF line ends).

use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use meterflow_model::billing::BillLine;
use serde::{Deserialize, Serialize};

use super::{ApiError, ReadingOut};

/// How an endpoint that speaks both answers; also its `?format=` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum Format {
    Json,
    Csv,
}

/// The answer's format: `?format=json|csv` wins (browsers cannot set `Accept`), else
/// the `Accept` header by its q-values, the most specific matching range deciding;
/// JSON on a tie, with no `Accept` or with `*/*`. Neither acceptable is a 406.
pub(super) fn negotiate(format: Option<Format>, headers: &HeaderMap) -> Result<Format, ApiError> {
    if let Some(format) = format {
        return Ok(format);
    }
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let accept = accept.join(",");
    if accept.trim().is_empty() {
        return Ok(Format::Json);
    }
    let json = accept_q(&accept, "application", "json");
    let csv = accept_q(&accept, "text", "csv");
    match (json, csv) {
        (0, 0) => Err(ApiError(
            StatusCode::NOT_ACCEPTABLE,
            format!(
                "Accept {accept:?} allows neither application/json nor text/csv; ask for one of them (or add ?format=csv)"
            ),
        )),
        (j, c) if c > j => Ok(Format::Csv),
        _ => Ok(Format::Json),
    }
}

/// The q-value (in thousandths) `accept` gives `kind/sub`: that of the most specific
/// matching media range (`kind/sub` over `kind/*` over `*/*`); 0 when none matches.
fn accept_q(accept: &str, kind: &str, sub: &str) -> u16 {
    let mut best: Option<(u8, u16)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let Some((t, s)) = media.split_once('/') else {
            continue;
        };
        let specificity = match (t, s) {
            _ if t == kind && s == sub => 2,
            _ if t == kind && s == "*" => 1,
            ("*", "*") => 0,
            _ => continue,
        };
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse::<f32>().ok())
            .map_or(1000, |q| (q.clamp(0.0, 1.0) * 1000.0).round() as u16);
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, q));
        }
    }
    best.map_or(0, |(_, q)| q)
}

/// One CSV field, quoted as RFC 4180 says: in double quotes (inner ones doubled) when
/// it holds a comma, a double quote, CR or LF; as it is otherwise.
fn csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// One CSV record, CRLF-terminated.
fn csv_row<S: AsRef<str>>(out: &mut String, fields: &[S]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, field.as_ref());
    }
    out.push_str("\r\n");
}

/// A CSV answer, offered as a download named `filename`.
pub(super) fn csv_response(body: String, filename: &str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
            (header::VARY, "Accept".to_string()),
        ],
        body,
    )
        .into_response()
}

/// A JSON answer of an endpoint that also speaks CSV.
pub(super) fn json_response<T: Serialize>(value: &T) -> Response {
    ([(header::VARY, "Accept")], Json(value)).into_response()
}

/// An epoch-millisecond instant as ISO 8601 UTC, `yyyy-mm-ddThh:mm:ss.sssZ`.
fn iso_utc(ts_ms: i64) -> String {
    let day = meterflow_model::time::day_string(meterflow_model::time::day_of(ts_ms));
    let ms = ts_ms.rem_euclid(meterflow_model::time::DAY_MS);
    let (h, m, s, milli) = (
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1_000 % 60,
        ms % 1_000,
    );
    format!("{day}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// The CSV columns of readings: the JSON fields, with `ts` also as ISO 8601 UTC.
const READING_COLUMNS: [&str; 10] = [
    "ts",
    "ts_iso",
    "reg",
    "rev",
    "flow",
    "temp",
    "quality",
    "interval_l",
    "seq",
    "received_at",
];

pub(super) fn readings_csv(rows: &[ReadingOut]) -> String {
    let mut out = String::with_capacity(64 * (rows.len() + 1));
    csv_row(&mut out, &READING_COLUMNS);
    let opt = |v: Option<String>| v.unwrap_or_default();
    for r in rows {
        csv_row(
            &mut out,
            &[
                r.ts.to_string(),
                iso_utc(r.ts),
                r.reg.to_string(),
                r.rev.to_string(),
                r.flow.to_string(),
                opt(r.temp.map(|t| t.to_string())),
                r.quality.as_str().to_string(),
                opt(r.interval_l.map(|l| l.to_string())),
                r.seq.to_string(),
                r.received_at.to_string(),
            ],
        );
    }
    out
}

/// The CSV columns of a bill: one `tier` row per tier (`tier` numbered from 1), then
/// one `total` row with the bill's usage, fixed charge, amount, estimated and final.
const BILL_COLUMNS: [&str; 12] = [
    "tenant",
    "meter",
    "period",
    "currency",
    "row",
    "tier",
    "usage_l",
    "price_per_m3",
    "fixed_cents",
    "amount_cents",
    "estimated",
    "final",
];

pub(super) fn bill_csv(bill: &BillLine) -> String {
    let mut out = String::new();
    csv_row(&mut out, &BILL_COLUMNS);
    let ids = [
        bill.tenant.as_str(),
        bill.meter.as_str(),
        bill.period.as_str(),
        bill.currency.as_str(),
    ];
    for (i, tier) in bill.tiers.iter().enumerate() {
        let mut row: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        row.extend([
            "tier".to_string(),
            (i + 1).to_string(),
            tier.usage_l.to_string(),
            tier.price_per_m3.to_string(),
            String::new(),
            tier.amount_cents.to_string(),
            String::new(),
            String::new(),
        ]);
        csv_row(&mut out, &row);
    }
    let mut total: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    total.extend([
        "total".to_string(),
        String::new(),
        bill.usage_l.to_string(),
        String::new(),
        bill.fixed_cents.to_string(),
        bill.amount_cents.to_string(),
        bill.estimated.to_string(),
        bill.final_.to_string(),
    ]);
    csv_row(&mut out, &total);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_as_rfc_4180_says() {
        let mut out = String::new();
        csv_row(
            &mut out,
            &["plain", "a,b", "say \"hi\"", "two\nlines", "cr\r", ""],
        );
        assert_eq!(
            out,
            "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\"cr\r\",\r\n"
        );
    }

    #[test]
    fn instants_are_iso_8601_utc() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_utc(1_790_812_800_000), "2026-10-01T00:00:00.000Z");
        assert_eq!(iso_utc(1_790_812_800_000 - 1), "2026-09-30T23:59:59.999Z");
        assert_eq!(iso_utc(-1), "1969-12-31T23:59:59.999Z");
    }

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, value.parse().unwrap());
        headers
    }

    #[test]
    fn the_format_follows_accept_and_the_query() {
        let json = |h: &HeaderMap, f| negotiate(f, h).ok() == Some(Format::Json);
        let csv = |h: &HeaderMap, f| negotiate(f, h).ok() == Some(Format::Csv);
        assert!(json(&HeaderMap::new(), None));
        assert!(json(&accept("*/*"), None));
        assert!(json(&accept("application/json"), None));
        assert!(csv(&accept("text/csv"), None));
        assert!(csv(&accept("text/*"), None));
        assert!(csv(&accept("application/json;q=0.5, text/csv"), None));
        assert!(json(&accept("text/csv;q=0.5, application/json"), None));
        assert!(csv(&accept("*/*;q=0.1, text/csv"), None));
        // A browser's Accept: JSON through */*; ?format=csv overrides it.
        let browser = accept("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8");
        assert!(json(&browser, None));
        assert!(csv(&browser, Some(Format::Csv)));
        assert!(json(&accept("text/csv"), Some(Format::Json)));
        for refused in ["application/xml", "text/html", "*/*;q=0, application/xml"] {
            let err = negotiate(None, &accept(refused)).err().unwrap();
            assert_eq!(err.0, StatusCode::NOT_ACCEPTABLE, "{refused}");
        }
        // A specific q=0 refuses what a wildcard would allow.
        assert!(csv(&accept("application/json;q=0, */*"), None));
    }

    #[test]
    fn a_bill_is_one_row_per_tier_and_a_total() {
        let bill = BillLine {
            tenant: "acme".into(),
            meter: "m1".into(),
            period: "2026-10".into(),
            currency: "EUR".into(),
            usage_l: 11_160,
            tiers: vec![
                meterflow_model::billing::TierCharge {
                    usage_l: 10_000,
                    price_per_m3: 150,
                    amount_cents: 1_500,
                },
                meterflow_model::billing::TierCharge {
                    usage_l: 1_160,
                    price_per_m3: 250,
                    amount_cents: 290,
                },
            ],
            fixed_cents: 800,
            amount_cents: 2_590,
            estimated: false,
            final_: true,
        };
        assert_eq!(
            bill_csv(&bill),
            "tenant,meter,period,currency,row,tier,usage_l,price_per_m3,fixed_cents,amount_cents,estimated,final\r\n\
             acme,m1,2026-10,EUR,tier,1,10000,150,,1500,,\r\n\
             acme,m1,2026-10,EUR,tier,2,1160,250,,290,,\r\n\
             acme,m1,2026-10,EUR,total,,11160,,800,2590,false,true\r\n"
        );
    }
}
