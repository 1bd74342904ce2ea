//! The API's OpenAPI 3.1 document, generated from the code with utoipa and served at
//! `GET /api/v1/openapi.json`: each handler's `#[utoipa::path]` (its path, parameters
//! from the very structs the handler extracts, responses), the served types'
//! `ToSchema` derives (in `meterflow-model` behind its `openapi` feature, and in
//! [`super`]), and what this module adds — the document's info, the bearer security
//! scheme, the one error body and the error responses every operation shares.
//!
//! Invariant: the router's paths are the document's paths plus the dashboard's static
//! assets. The API's routes are registered through utoipa-axum's `routes!`, which takes
//! each path from its handler's `#[utoipa::path]`, so a route and its documentation
//! share one path string; a unit test here compares the paths axum routes with the
//! document's, so a route added any other way fails it; the integration test `openapi`
//! asks a running meterflow every documented operation and checks each answer
//! (status, media type, body) against the document.

use std::sync::OnceLock;

use serde::Serialize;
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToResponse, ToSchema};

/// The name operations give the bearer scheme in their `security`.
pub(super) const BEARER: &str = "api_token";

/// The document's skeleton; the paths come from the routes (`super::api`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "meterflow API",
        description = "The tenant API of meterflow: water meters' latest state, readings, \
alert episodes, district usage, top consumers and bills, for integrators and dashboards.

- **Authorization**: a tenant with an `api_token` is asked with `Authorization: Bearer \
<api_token>` (security scheme `api_token`); a tenant without one needs nothing (allowed \
only while the HTTP API listens on loopback). A tenant sees only its own data.
- **Errors**: every 4xx and 5xx answer is JSON `{\"error\": \"...\"}` saying what to do \
(schema `ErrorBody`) — besides the responses each operation lists, a wrong method is a 405 \
and a request body over 64 KiB a 413, on every path.
- **Units**: instants are epoch milliseconds (UTC); volumes litres (`_l`), flow litres per \
hour, temperature 0.1 °C, money minor units (`_cents`). Tenant and meter ids match \
`[A-Za-z0-9_-]{1,64}`.
- **CSV**: readings and bills also answer `text/csv` (RFC 4180, CRLF) to `Accept: text/csv` \
or `?format=csv`; an `Accept` allowing neither JSON nor CSV is a 406.
- **Paging**: the meter list is in meter-id order; pass a page's `next` as `after` for the \
next page, until `next` is null.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&BearerToken),
    components(
        schemas(ErrorBody),
        responses(BadRequest, Unauthorized, NotFound, NotAcceptable, Unavailable)
    ),
    tags(
        (name = "meters", description = "The meter list, one meter's latest state and its readings"),
        (name = "alerts", description = "Alert episodes (leak, burst, backflow, no communication, ...)"),
        (name = "usage", description = "Tenant summary, districts, district usage and top consumers"),
        (name = "billing", description = "Running bills per meter and billing period"),
        (name = "exceptions", description = "Validation exceptions (suspect reads kept out of the bills), their decisions, and recorded meter exchanges"),
        (name = "dead letters", description = "Uplinks meterflow refused, with the reason"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
pub(super) struct ApiDoc;

/// Adds the bearer scheme the tenant operations name in their `security`.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut Document) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "The tenant's `api_token` from meterflow's configuration ([[tenants]] \
                 api_token). Tenants without one are served without it.",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER, SecurityScheme::Http(scheme));
    }
}

/// The body of every 4xx and 5xx answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong and what to do about it.
    pub(crate) error: String,
}

/// A parameter is malformed or out of range; `error` names it and what to send.
#[derive(ToResponse)]
#[allow(dead_code)] // Documentation only: the answers are `ApiError`s.
pub(super) struct BadRequest(ErrorBody);

/// The tenant has an `api_token` and the request did not carry it as
/// `Authorization: Bearer <api_token>`.
#[derive(ToResponse)]
#[allow(dead_code)]
pub(super) struct Unauthorized(ErrorBody);

/// No such tenant, meter, bill or path; `error` says which.
#[derive(ToResponse)]
#[allow(dead_code)]
pub(super) struct NotFound(ErrorBody);

/// The `Accept` header allows neither `application/json` nor `text/csv`.
#[derive(ToResponse)]
#[allow(dead_code)]
pub(super) struct NotAcceptable(ErrorBody);

/// The store or the hot cache did not answer; retry shortly.
#[derive(ToResponse)]
#[allow(dead_code)]
pub(super) struct Unavailable(ErrorBody);

/// The document as served, rendered once.
pub(super) fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        super::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document is plain data and serializes")
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The paths `router` routes. axum has no listing API, so this reads its `Debug`
    /// form, which prints the path router's `Node { paths: {RouteId(n): "/path", …} }`;
    /// callers check known paths are found, so a changed format fails loudly.
    fn routed_paths<S>(router: &axum::Router<S>) -> BTreeSet<String> {
        let debug = format!("{router:?}");
        // Only the path router: the fallback router holds axum's internal catch-alls.
        let routes = debug
            .split("fallback_router")
            .next()
            .expect("split yields a first part");
        routes
            .split("RouteId(")
            .skip(1)
            .filter_map(|part| {
                let quoted = part.split_once("): \"")?.1;
                Some(quoted.split_once('"')?.0.to_string())
            })
            .filter(|path| path.starts_with('/'))
            .collect()
    }

    fn documented_paths() -> BTreeSet<String> {
        super::super::openapi()
            .paths
            .paths
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn every_route_is_documented_and_every_documented_path_routed() {
        let routed = routed_paths(&super::super::routes());
        let dashboard = routed_paths(&crate::dashboard::routes::<()>());
        assert!(
            routed.contains("/healthz") && dashboard.contains("/"),
            "axum's Debug output changed: routes found {routed:?}, dashboard {dashboard:?}"
        );
        let documented = documented_paths();
        let undocumented: Vec<_> = routed
            .difference(&documented)
            .filter(|p| !dashboard.contains(*p))
            .collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from the OpenAPI document (register them with routes!() and a \
             #[utoipa::path]): {undocumented:?}"
        );
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            unrouted.is_empty(),
            "documented but not routed: {unrouted:?}"
        );
        assert!(
            documented.is_disjoint(&dashboard),
            "the dashboard's assets are not API paths"
        );
    }

    #[test]
    fn tenant_operations_name_their_auth_and_errors() {
        let doc = super::super::openapi();
        for (path, item) in &doc.paths.paths {
            let operation = item
                .get
                .as_ref()
                .or(item.post.as_ref())
                .expect("every path is a GET or a POST");
            let codes: Vec<&str> = operation
                .responses
                .responses
                .keys()
                .map(String::as_str)
                .collect();
            assert!(codes.contains(&"200"), "{path}: {codes:?}");
            if !path.starts_with("/api/v1/tenants/") {
                continue;
            }
            for code in ["401", "404"] {
                assert!(codes.contains(&code), "{path} lacks {code}: {codes:?}");
            }
            let security = operation.security.as_ref().expect("security");
            let text = serde_json::to_string(security).unwrap();
            assert!(text.contains(BEARER), "{path}: {text}");
            // Optional: a tenant without a token is served without one.
            assert!(text.contains("{}"), "{path}: {text}");
        }
    }

    #[test]
    fn the_documented_bounds_are_the_codes_bounds() {
        let doc = super::super::openapi();
        let description = |path: &str| {
            let op = doc.paths.paths[path].get.clone().unwrap();
            serde_json::to_string(&(op.description, op.parameters)).unwrap()
        };
        let alerts = description("/api/v1/tenants/{tenant}/alerts");
        assert!(
            alerts.contains(&super::super::MAX_ALERTS.to_string()),
            "{alerts}"
        );
        let meters = description("/api/v1/tenants/{tenant}/meters");
        assert!(
            meters.contains(&super::super::MAX_METERS_PAGE.to_string()),
            "{meters}"
        );
    }

    #[test]
    fn the_served_document_is_openapi_3_1() {
        let doc: serde_json::Value = serde_json::from_str(document_json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            doc["components"]["securitySchemes"][BEARER]["scheme"],
            "bearer"
        );
    }
}
