//! The utility dashboard: one page at `/` for a water utility's control room — the
//! tenant's usage today, meters reporting and open alerts, district usage over time,
//! the district's water balance (bulk meters' inflow, consumption, non-revenue water,
//! the inflow's minimum night flow; only for districts fed by bulk meters),
//! the day's top consumers, open alerts by priority, silent meters (no reading for a
//! chosen span), a meter search, and a drill-down into one meter (latest reading,
//! district, battery and signal, quality, today's and the period's usage, the bill so
//! far, recent readings, its alert history).
//!
//! The page is static: `index.html`, `app.js` and `style.css` in this folder are
//! compiled into the binary, so the dashboard works offline, needs no build step and
//! is always the version of the API it talks to. The browser polls the tenant API
//! (`/api/v1/tenants/{t}/…`, see [`crate::http`]) every few seconds; the page holds no
//! data of its own, and a tenant's bearer token stays in the browser (localStorage)
//! and is sent by the page as `Authorization: Bearer …`, so the static files need no
//! authorization.
//!
//! What the page promises (tested in a real browser by `dashboard-test/`):
//! - it opens on the district with the most litres in the chart's window, unless the
//!   user chose one (kept in the address, `#district=…`, and in localStorage);
//! - the district chart draws what the rows say: a window without a row breaks the
//!   line, it is never interpolated across;
//! - time labels sit on round times (5, 10, 15, 30 min, 1–24 h by span) and value
//!   labels on round numbers with their unit; times are shown in one zone, the
//!   summary's `time_zone` when the API gives one, else `?tz=<IANA zone>` in the
//!   address, else the browser's;
//! - low battery (≤ 10 %) and weak signal (≤ -110 dBm) are marked in words, not only
//!   by colour;
//! - a meter's alert history is filtered to that meter by the page as well as by the
//!   API's `meter=` parameter.
//!
//! Invariants: the assets use no CDN, framework or inline script, and are served with
//! a Content-Security-Policy that only allows this origin; the whole UI stays under
//! [`UI_BUDGET_BYTES`] (checked by a test). Routes: `/`, `/dashboard/app.js`,
//! `/dashboard/style.css`.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

/// Size budget of the three assets together: small enough to load instantly over a
/// utility's VPN (one round trip's worth at a few Mbit/s, uncompressed) and to read
/// in one sitting; raised from 40 KiB when silent meters, search and alert history
/// came (the page is ~51 KiB then).
pub const UI_BUDGET_BYTES: usize = 64 * 1024;

/// Only this origin: scripts, styles and API calls; no framing (clickjacking); the
/// empty `data:` favicon. Style attributes are set through the CSSOM (`el.style`),
/// which the policy allows.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes, to merge into the service's router. Generic over the
/// router's state because the pages need none.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset(STYLE_CSS, "text/css; charset=utf-8") }),
        )
}

/// One asset with its type and the security headers. `no-cache` makes the browser
/// revalidate, so an upgraded binary's page is picked up on reload.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_ui_fits_its_budget() {
        let size = INDEX_HTML.len() + APP_JS.len() + STYLE_CSS.len();
        assert!(
            size <= UI_BUDGET_BYTES,
            "dashboard is {size} bytes, over {UI_BUDGET_BYTES}"
        );
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(INDEX_HTML.contains(r#"src="/dashboard/app.js""#));
        assert!(INDEX_HTML.contains(r#"href="/dashboard/style.css""#));
        // No CDN or remote asset (the SVG namespace URI is a name, not a fetch).
        for text in [INDEX_HTML, APP_JS, STYLE_CSS] {
            let remote = text.replace("http://www.w3.org/2000/svg", "");
            assert!(!remote.contains("http://") && !remote.contains("https://"));
            assert!(!remote.contains("//cdn"), "no CDN");
        }
        // The CSP forbids inline script: the page must have none.
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert!(!INDEX_HTML.contains(" onclick="));
    }

    /// GETs `path` from the routes served on a loopback port; returns the raw response.
    async fn get(path: &str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, routes::<()>()).await.unwrap();
        });
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        server.abort();
        response
    }

    #[tokio::test]
    async fn serves_the_assets_with_types_and_security_headers() {
        for (path, content_type, marker) in [
            ("/", "text/html", "<title>meterflow"),
            ("/dashboard/app.js", "text/javascript", "POLL_MS"),
            ("/dashboard/style.css", "text/css", ":root"),
        ] {
            let response = get(path).await.to_ascii_lowercase();
            assert!(response.starts_with("http/1.1 200"), "{path}: {response}");
            assert!(
                response.contains(&format!("content-type: {content_type}")),
                "{path}"
            );
            assert!(response.contains("content-security-policy: default-src 'self'"));
            assert!(response.contains("x-content-type-options: nosniff"));
            assert!(response.contains(&marker.to_ascii_lowercase()), "{path}");
        }
        assert!(get("/dashboard/nope.js").await.starts_with("HTTP/1.1 404"));
    }
}
