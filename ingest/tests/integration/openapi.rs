//! The OpenAPI document against the running service: `GET /api/v1/openapi.json` is a
//! well-formed OpenAPI 3.1 document (required fields, every `$ref` resolves, path
//! templates and path parameters agree, operation ids unique, security and tags
//! declared), and every documented operation of a meterflow fed with real data
//! answers as documented — routed (never the router's fallback 404, never a 405), with
//! a documented status, a documented media type and, for JSON, a body that validates
//! against the documented schema (objects closed: a served field the schema lacks
//! fails). Without the token, for an unknown tenant, as CSV and with every documented
//! query parameter set, the answers are documented too; an undocumented path is the
//! fallback's 404. With the unit test beside the router (routed paths = documented
//! paths + the dashboard's assets), a route added without documentation fails CI.
//!
//! Also the helpers the API tests share: a GET as an integrator makes it, and a
//! meterflow started with a config file.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use meterflow_model::{DeviceFlag, Reading, Uplink};
use serde_json::Value;

use crate::utils::{Answer, api_get, send_and_wait_for_ack, start_configured, tool};

/// The API token of the tenant `acme` in the API tests.
pub(crate) const TOKEN: &str = "api-test-token-0123456789abcdef";

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ---------------------------------------------------------------------------------
// The document's structure.

/// The value a local `$ref` (`#/a/b`, JSON pointer) points at.
fn resolve<'d>(doc: &'d Value, reference: &str) -> Option<&'d Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

/// Every `$ref` in `value`, with where it was found.
fn refs(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "$ref" {
                    out.push((at.to_string(), child.as_str().unwrap_or("").to_string()));
                } else {
                    refs(child, &format!("{at}/{key}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                refs(child, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Follows `$ref`s until a value that is not one (null where one dangles: the
/// structural check reports those).
fn deref<'d>(doc: &'d Value, mut value: &'d Value) -> &'d Value {
    while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
        value = resolve(doc, reference).unwrap_or(&Value::Null);
    }
    value
}

/// `{name}` segments of a path template.
fn template_params(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(str::to_string)
        .collect()
}

/// Every problem with the document as OpenAPI 3.1 (empty when well-formed).
fn structural_problems(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |p: String| problems.push(p);
    if !doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1."))
    {
        problem(format!("openapi is {}, not 3.1.x", doc["openapi"]));
    }
    for field in ["title", "version"] {
        if doc["info"][field].as_str().is_none_or(str::is_empty) {
            problem(format!("info.{field} is missing"));
        }
    }
    let mut found = Vec::new();
    refs(doc, "#", &mut found);
    for (at, reference) in &found {
        if !reference.starts_with("#/") || resolve(doc, reference).is_none() {
            problem(format!("{at}: $ref {reference:?} does not resolve"));
        }
    }
    let schemes: BTreeSet<&str> = doc["components"]["securitySchemes"]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let tags: BTreeSet<&str> = doc["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    let Some(paths) = doc["paths"].as_object().filter(|p| !p.is_empty()) else {
        problem("no paths".into());
        return problems;
    };
    let mut operation_ids = BTreeSet::new();
    for (path, item) in paths {
        if !path.starts_with('/') {
            problem(format!("{path}: a path starts with /"));
        }
        let item = item.as_object().unwrap();
        for (method, operation) in item {
            let at = format!("{method} {path}");
            let methods = ["get", "put", "post", "delete", "options", "head", "patch"];
            if !methods.contains(&method.as_str()) {
                continue;
            }
            match operation["operationId"].as_str() {
                Some(id) if operation_ids.insert(id.to_string()) => {}
                other => problem(format!("{at}: operationId {other:?} missing or repeated")),
            }
            let mut declared = BTreeSet::new();
            let mut path_params = BTreeSet::new();
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let parameter = deref(doc, parameter);
                let (name, place) = (
                    parameter["name"].as_str().unwrap_or(""),
                    parameter["in"].as_str().unwrap_or(""),
                );
                if !declared.insert((name.to_string(), place.to_string())) {
                    problem(format!("{at}: parameter {name} in {place} twice"));
                }
                if !["path", "query", "header", "cookie"].contains(&place) {
                    problem(format!("{at}: parameter {name} in {place:?}"));
                }
                if parameter.get("schema").is_none() {
                    problem(format!("{at}: parameter {name} has no schema"));
                }
                if place == "path" {
                    path_params.insert(name.to_string());
                    if parameter["required"] != true {
                        problem(format!("{at}: path parameter {name} must be required"));
                    }
                }
            }
            if path_params != template_params(path) {
                problem(format!(
                    "{at}: path parameters {path_params:?} are not the template's {:?}",
                    template_params(path)
                ));
            }
            match operation["responses"].as_object() {
                Some(responses) if !responses.is_empty() => {
                    for (status, response) in responses {
                        let valid = status == "default"
                            || status.len() == 3 && status.chars().all(|c| c.is_ascii_digit());
                        if !valid {
                            problem(format!("{at}: response status {status:?}"));
                        }
                        if deref(doc, response)["description"].as_str().is_none() {
                            problem(format!("{at} {status}: a response needs a description"));
                        }
                    }
                }
                _ => problem(format!("{at}: no responses")),
            }
            for requirement in operation["security"].as_array().into_iter().flatten() {
                for name in requirement.as_object().unwrap().keys() {
                    if !schemes.contains(name.as_str()) {
                        problem(format!("{at}: security scheme {name} is not declared"));
                    }
                }
            }
            for tag in operation["tags"].as_array().into_iter().flatten() {
                if !tags.contains(tag.as_str().unwrap_or("")) {
                    problem(format!("{at}: tag {tag} is not declared"));
                }
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------------
// Answers against the document: JSON Schema (the subset utoipa writes), closed objects.

/// Whether `value` is of JSON Schema type `kind`.
fn is_type(value: &Value, kind: &str) -> bool {
    match kind {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        "string" => value.is_string(),
        _ => false,
    }
}

/// Checks `value` against `schema`, pushing each mismatch (with its JSON path).
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let target = resolve(doc, reference).unwrap_or(&Value::Null);
        return validate(doc, target, value, at, errors);
    }
    let matches = |s: &Value| {
        let mut e = Vec::new();
        validate(doc, s, value, at, &mut e);
        e.is_empty()
    };
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        // Object parts (serde's `flatten`) describe one object together: their fields
        // are checked as one; any other part on its own.
        let (mut properties, mut required) = (serde_json::Map::new(), Vec::new());
        for part in all.iter().map(|s| deref(doc, s)) {
            match part.get("properties").and_then(Value::as_object) {
                Some(fields) => {
                    properties.extend(fields.clone());
                    required.extend(part["required"].as_array().into_iter().flatten().cloned());
                }
                None => validate(doc, part, value, at, errors),
            }
        }
        if !properties.is_empty() {
            let merged = serde_json::json!({"properties": properties, "required": required});
            validate(doc, &merged, value, at, errors);
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        let n = one.iter().filter(|s| matches(s)).count();
        if n != 1 {
            errors.push(format!("{at}: {value} matches {n} of oneOf {one:?}"));
        }
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array)
        && !any.iter().any(matches)
    {
        errors.push(format!("{at}: {value} matches none of anyOf"));
    }
    match schema.get("type") {
        Some(Value::String(kind)) if !is_type(value, kind) => {
            return errors.push(format!("{at}: {value} is not {kind}"));
        }
        Some(Value::Array(kinds))
            if !kinds
                .iter()
                .any(|k| is_type(value, k.as_str().unwrap_or(""))) =>
        {
            return errors.push(format!("{at}: {value} is none of {kinds:?}"));
        }
        _ => {}
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {options:?}"));
    }
    if let Some(number) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && number < min
        {
            errors.push(format!("{at}: {value} < minimum {min}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && number > max
        {
            errors.push(format!("{at}: {value} > maximum {max}"));
        }
    }
    match value {
        Value::Object(fields)
            if schema.get("properties").is_some() || schema.get("required").is_some() =>
        {
            let properties = schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap_or("");
                if !fields.contains_key(name) {
                    errors.push(format!("{at}: required field {name} is missing"));
                }
            }
            for (name, field) in fields {
                match properties.get(name) {
                    Some(s) => validate(doc, s, field, &format!("{at}.{name}"), errors),
                    None if schema
                        .get("additionalProperties")
                        .is_some_and(|a| a != false) => {}
                    None => errors.push(format!("{at}: field {name} is served but not documented")),
                }
            }
        }
        Value::Array(items) => {
            let prefix = schema.get("prefixItems").and_then(Value::as_array);
            for (i, item) in items.iter().enumerate() {
                let at = format!("{at}[{i}]");
                match prefix.and_then(|p| p.get(i)) {
                    Some(s) => validate(doc, s, item, &at, errors),
                    None => {
                        if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
                            validate(doc, s, item, &at, errors);
                        }
                    }
                }
            }
            let len = items.len() as u64;
            if schema
                .get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| len < m)
                || schema
                    .get("maxItems")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| len > m)
            {
                errors.push(format!("{at}: {len} items is out of the documented bounds"));
            }
        }
        _ => {}
    }
}

/// Checks `answer` against the documented responses of `operation`: its status is
/// documented, and where that response has content, the media type is one of it and a
/// JSON body validates. Returns the problems found.
fn conformance(doc: &Value, operation: &Value, answer: &Answer, what: &str) -> Vec<String> {
    let status = answer.status.to_string();
    let Some(response) = operation["responses"].get(&status) else {
        return vec![format!(
            "{what}: status {status} is not documented ({}): {}",
            operation["responses"]
                .as_object()
                .map(|r| r.keys().cloned().collect::<Vec<_>>().join(","))
                .unwrap_or_default(),
            answer.body
        )];
    };
    let response = deref(doc, response);
    let Some(content) = response["content"].as_object() else {
        return Vec::new();
    };
    let Some(media) = content.get(answer.media_type()) else {
        return vec![format!(
            "{what}: {status} answered {:?}, documented {:?}",
            answer.media_type(),
            content.keys().collect::<Vec<_>>()
        )];
    };
    let mut errors = Vec::new();
    if answer.media_type() == "application/json" {
        let body: Value = match serde_json::from_str(&answer.body) {
            Ok(body) => body,
            Err(e) => return vec![format!("{what}: not JSON ({e}): {}", answer.body)],
        };
        validate(doc, &media["schema"], &body, "$", &mut errors);
    } else if let Some(kind) = media["schema"]["type"].as_str()
        && kind != "string"
    {
        errors.push(format!(
            "{what}: a {} body documented as {kind}",
            answer.media_type()
        ));
    }
    errors.into_iter().map(|e| format!("{what}: {e}")).collect()
}

#[test]
fn the_validator_catches_what_it_is_for() {
    let doc = serde_json::json!({"components": {"schemas": {
        "Thing": {"type": "object", "required": ["id"], "properties": {
            "id": {"type": "string"},
            "n": {"type": ["integer", "null"], "minimum": 0},
            "kind": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Kind"}]},
            "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]}
        }},
        "Kind": {"type": "string", "enum": ["a", "b"]}
    }}});
    let schema =
        serde_json::json!({"type": "array", "items": {"$ref": "#/components/schemas/Thing"}});
    let check = |value: Value| {
        let mut errors = Vec::new();
        validate(&doc, &schema, &value, "$", &mut errors);
        errors
    };
    let good =
        serde_json::json!([{"id": "x", "n": null, "kind": "a", "pair": [1, "y"]}, {"id": "z"}]);
    assert_eq!(check(good), Vec::<String>::new());
    for bad in [
        serde_json::json!([{"n": 1}]),
        serde_json::json!([{"id": 1}]),
        serde_json::json!([{"id": "x", "n": -1}]),
        serde_json::json!([{"id": "x", "n": 1.5}]),
        serde_json::json!([{"id": "x", "kind": "c"}]),
        serde_json::json!([{"id": "x", "pair": ["y", 1]}]),
        serde_json::json!([{"id": "x", "extra": true}]),
        serde_json::json!({"id": "x"}),
    ] {
        assert!(!check(bad.clone()).is_empty(), "{bad} passed");
    }
    // A flattened object (allOf of object parts): fields of either part pass, others
    // and a missing required one do not.
    let flattened = serde_json::json!({"allOf": [
        {"$ref": "#/components/schemas/Thing"},
        {"type": "object", "required": ["zone"], "properties": {"zone": {"type": "string"}}}
    ]});
    let check_flat = |value: Value| {
        let mut errors = Vec::new();
        validate(&doc, &flattened, &value, "$", &mut errors);
        errors
    };
    assert_eq!(
        check_flat(serde_json::json!({"id": "x", "zone": "UTC"})),
        Vec::<String>::new()
    );
    for bad in [
        serde_json::json!({"id": "x"}),
        serde_json::json!({"id": "x", "zone": "UTC", "extra": 1}),
        serde_json::json!({"id": "x", "zone": 3}),
    ] {
        assert!(!check_flat(bad.clone()).is_empty(), "{bad} passed");
    }
    let mut broken = doc.clone();
    broken["openapi"] = "3.1.0".into();
    broken["info"] = serde_json::json!({"title": "t", "version": "1"});
    broken["paths"] = serde_json::json!({"/a/{x}": {"get": {
        "operationId": "a",
        "parameters": [{"name": "y", "in": "path", "required": true, "schema": {"type": "string"}}],
        "responses": {"200": {"$ref": "#/components/responses/Missing"}}
    }}});
    let problems = structural_problems(&broken);
    assert!(
        problems.iter().any(|p| p.contains("does not resolve")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("template")),
        "{problems:?}"
    );
}

// ---------------------------------------------------------------------------------
// The running service.

/// `date -u` of an epoch-ms instant in `format`; the tenant's zone is UTC (the
/// default tariff's), so this gives its days and billing periods.
fn utc(ts_ms: i64, format: &str) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{}", ts_ms.div_euclid(1000)), format])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A payload meterflow refuses (`unknown_format`), published with `mosquitto_pub -q 1`
/// (which returns once it is durably dead-lettered).
fn publish_garbage(mqtt: SocketAddr, meter: &str) {
    let output = Command::new(tool("mosquitto_pub"))
        .args(["-h", &mqtt.ip().to_string(), "-p", &mqtt.port().to_string()])
        .args(["-i", &format!("acme.{meter}"), "-q", "1"])
        .args([
            "-t",
            &format!("meters/acme/{meter}/up"),
            "-m",
            "not an uplink",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A sample value for a documented parameter: the fed data's names where `known`
/// has one (every path parameter must), else a value its schema allows.
fn sample(doc: &Value, parameter: &Value, known: &BTreeMap<&str, String>) -> String {
    let name = parameter["name"].as_str().unwrap();
    if let Some(value) = known.get(name) {
        return value.clone();
    }
    assert!(
        parameter["in"] != "path",
        "no sample for path parameter {name}"
    );
    let schema = deref(doc, &parameter["schema"]);
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.as_str().unwrap().to_string();
    }
    let kinds = schema["type"].to_string();
    match name {
        "from" => (now_ms() - 86_400_000).to_string(),
        "to" => now_ms().to_string(),
        _ if kinds.contains("integer") => {
            schema["minimum"].as_i64().unwrap_or(1).max(1).to_string()
        }
        _ => "m1".to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_configured(
        dir.path(),
        &format!(
            "[[tenants]]\nid = \"acme\"\napi_token = \"{TOKEN}\"\n\n\
             [processors.tenants.acme.districts]\nm1 = \"north\"\n\n\
             [processors.tenants.acme.bulk_meters]\nb1 = \"north\"\n\n\
             [pipeline]\nsweep_interval_s = 1\n\n\
             [processors.analytics]\nflush_interval_ms = 1000\n"
        ),
        &[],
    );
    // Three hours of 10-minute reads for m1 (using water), a tamper flag on the last
    // message (an alert episode), battery and signal; a dead letter.
    let first = now_ms() - 3 * 3_600_000;
    let readings: Vec<Reading> = (0..18)
        .map(|i| Reading {
            ts: first + i * 600_000,
            reg: 50_000 + 20 * i as u64,
            rev: 0,
            flow: 120,
            temp: (i % 2 == 0).then_some(115),
        })
        .collect();
    let mut uplinks: Vec<Uplink> = readings
        .chunks(6)
        .enumerate()
        .map(|(i, chunk)| Uplink::new(i as u64 + 1, chunk.to_vec()))
        .collect();
    let last = uplinks.last_mut().unwrap();
    last.flags.insert(DeviceFlag::Tamper);
    last.battery = Some(64);
    last.rssi = Some(-101);
    send_and_wait_for_ack(service.mqtt, "acme", "m1", &uplinks).await;
    // The north's bulk meter: its inflow, the water balance's figures.
    let inflow: Vec<Reading> = readings
        .iter()
        .map(|r| Reading {
            reg: 2 * r.reg,
            ..*r
        })
        .collect();
    send_and_wait_for_ack(service.mqtt, "acme", "b1", &[Uplink::new(1, inflow)]).await;
    publish_garbage(service.mqtt, "m2");
    let newest_ts = readings.last().unwrap().ts;

    let answer = api_get(&service, "/api/v1/openapi.json", &[]);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.media_type(), "application/json");
    let doc = answer.json();
    let problems = structural_problems(&doc);
    assert!(
        problems.is_empty(),
        "the document is not well-formed:\n{}",
        problems.join("\n")
    );

    // An interval belongs to the day of its last millisecond.
    let known: BTreeMap<&str, String> = [
        ("tenant", "acme".to_string()),
        ("meter", "m1".to_string()),
        ("district", "north".to_string()),
        ("period", utc(newest_ts, "+%Y-%m")),
        ("day", utc(newest_ts - 1, "+%Y-%m-%d")),
    ]
    .into();
    let auth = format!("Bearer {TOKEN}");
    let authorized = [("Authorization", auth.as_str())];
    // Data derived from the readings (district rows, top lists) lands within a flush
    // (a second here) of the ack; each operation is retried until it has some, briefly.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut problems = Vec::new();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        // Operators' orders (POST) are checked by their own tests (`exceptions.rs`).
        let operation = &item["get"];
        if !operation.is_object() {
            assert!(item["post"].is_object(), "{path}: neither GET nor POST");
            continue;
        }
        let parameters: Vec<&Value> = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| deref(&doc, p))
            .collect();
        let mut url = path.clone();
        for p in parameters.iter().filter(|p| p["in"] == "path") {
            let name = p["name"].as_str().unwrap();
            url = url.replace(&format!("{{{name}}}"), &sample(&doc, p, &known));
        }
        let tenant_scoped = path.starts_with("/api/v1/tenants/");

        // As documented, with the token: routed, documented, and (for most) data.
        let answer = loop {
            let answer = api_get(&service, &url, &authorized);
            let empty = answer.body == "[]"
                || answer.status == 404
                || answer.body.contains("\"windows\":[]");
            if !empty || Instant::now() > deadline {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert!(
            answer.status != 405 && !answer.body.contains("no such path"),
            "{url} is documented but not routed: {} {}",
            answer.status,
            answer.body
        );
        problems.extend(conformance(&doc, operation, &answer, &format!("GET {url}")));
        let mut has_data =
            answer.status == 200 && answer.body != "[]" && !answer.body.contains("\"windows\":[]");
        checked += 1;

        // Every documented query parameter set (to the fed data's names where they
        // apply, e.g. `day`): served.
        let query: Vec<String> = parameters
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| {
                format!(
                    "{}={}",
                    p["name"].as_str().unwrap(),
                    sample(&doc, p, &known)
                )
            })
            .collect();
        if !query.is_empty() {
            let full = format!("{url}?{}", query.join("&"));
            let answer = api_get(&service, &full, &authorized);
            assert_eq!(answer.status, 200, "GET {full}: {}", answer.body);
            has_data |= answer.body != "[]" && !answer.body.contains("\"windows\":[]");
            problems.extend(conformance(
                &doc,
                operation,
                &answer,
                &format!("GET {full}"),
            ));
        }
        if [
            "/api/v1/tenants/{tenant}/meters",
            "/api/v1/tenants/{tenant}/meters/{meter}",
            "/api/v1/tenants/{tenant}/meters/{meter}/readings",
            "/api/v1/tenants/{tenant}/dead-letters",
            "/api/v1/tenants/{tenant}/alerts",
            "/api/v1/tenants/{tenant}/bills/{period}/{meter}",
            "/api/v1/tenants/{tenant}/top",
            "/api/v1/tenants/{tenant}/districts/{district}/usage",
            "/api/v1/tenants/{tenant}/districts/{district}/balance",
        ]
        .contains(&path.as_str())
        {
            assert!(
                has_data,
                "GET {url}: no data to check the schema on: {}",
                answer.body
            );
        }

        // CSV where it is documented.
        let csv_documented = operation["responses"]["200"]["content"]
            .get("text/csv")
            .is_some();
        if csv_documented {
            let headers = [authorized[0], ("Accept", "text/csv")];
            let answer = api_get(&service, &url, &headers);
            assert_eq!(
                (answer.status, answer.media_type()),
                (200, "text/csv"),
                "GET {url} as CSV: {}",
                answer.body
            );
            problems.extend(conformance(
                &doc,
                operation,
                &answer,
                &format!("GET {url} (CSV)"),
            ));
        }

        if tenant_scoped {
            // Without the token, and for a tenant nobody configured: documented errors.
            let anonymous = api_get(&service, &url, &[]);
            assert_eq!(anonymous.status, 401, "GET {url} without the token");
            problems.extend(conformance(
                &doc,
                operation,
                &anonymous,
                &format!("GET {url} (no token)"),
            ));
            let stranger = url.replacen("/acme", "/nobody", 1);
            let answer = api_get(&service, &stranger, &authorized);
            assert_eq!(answer.status, 404, "GET {stranger}");
            problems.extend(conformance(
                &doc,
                operation,
                &answer,
                &format!("GET {stranger}"),
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "answers the document does not describe:\n{}",
        problems.join("\n")
    );
    assert!(checked >= 14, "only {checked} operations documented");

    // What the document does not describe is not routed: the fallback's 404.
    for path in [
        "/api/v1/tenants/acme/nothing",
        "/api/v1/nothing",
        "/api/v2/openapi.json",
    ] {
        let answer = api_get(&service, path, &authorized);
        assert_eq!(answer.status, 404, "{path}");
        assert!(
            answer.json()["error"]
                .as_str()
                .unwrap()
                .contains("no such path"),
            "{path}"
        );
    }
}
