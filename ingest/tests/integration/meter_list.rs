//! The meter list (`GET …/meters`) and a meter's alert history (`GET …/alerts?meter=`)
//! as an integrator or the dashboard calls them, against a real meterflow (embedded
//! store, in-process cache) fed over MQTT: paging by `next` covers every matching
//! meter exactly once at every page size, search, district and silence filters select
//! exactly their meters and combine, bad parameters are JSON 400s, a meter's view
//! keeps its configured district after a restart, and `meter=` selects exactly that
//! meter's episodes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use meterflow_model::{DeviceFlag, Reading, Uplink};

use crate::openapi::{TOKEN, now_ms};
use crate::utils::{Answer, api_get, restart_configured, start_configured};
use crate::utils::{Meterflow, send_and_wait_for_ack};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;

/// One meter of the fixture: its id, its configured district (`None`: unassigned) and
/// how long before the test's start its newest reading was taken.
struct FixtureMeter {
    id: &'static str,
    district: Option<&'static str>,
    newest_age_ms: i64,
}

const fn meter(
    id: &'static str,
    district: Option<&'static str>,
    newest_age_ms: i64,
) -> FixtureMeter {
    FixtureMeter {
        id,
        district,
        newest_age_ms,
    }
}

/// Fifteen meters in three districts (and unassigned ones), some quiet for 3 h, one
/// for 26 h, the rest reporting a minute ago.
const FLEET: [FixtureMeter; 15] = [
    meter("n01", Some("north"), 3 * HOUR_MS),
    meter("n02", Some("north"), 3 * HOUR_MS),
    meter("n03", Some("north"), MINUTE_MS),
    meter("n04", Some("north"), MINUTE_MS),
    meter("n05", Some("north"), MINUTE_MS),
    meter("n06", Some("north"), MINUTE_MS),
    meter("s01", Some("south"), 26 * HOUR_MS),
    meter("s02", Some("south"), MINUTE_MS),
    meter("s03", Some("south"), MINUTE_MS),
    meter("s04", Some("south"), MINUTE_MS),
    meter("d01", None, MINUTE_MS),
    meter("d02", None, MINUTE_MS),
    meter("d03", None, 3 * HOUR_MS),
    meter("pump-01", Some("south"), MINUTE_MS),
    meter("pump-02", None, 3 * HOUR_MS),
];

/// The tenant `acme` with its token and the fleet's districts.
fn fleet_config() -> String {
    let mut toml = format!("[[tenants]]\nid = \"acme\"\napi_token = \"{TOKEN}\"\n\n");
    toml.push_str("[processors.tenants.acme.districts]\n");
    for m in FLEET.iter().filter(|m| m.district.is_some()) {
        toml.push_str(&format!("{} = \"{}\"\n", m.id, m.district.unwrap()));
    }
    toml
}

/// Three readings 10 minutes apart, the newest at `newest_ts`, no flow.
fn readings_ending(newest_ts: i64, reg0: u64) -> Vec<Reading> {
    (0..3)
        .map(|i| Reading {
            ts: newest_ts - (2 - i) * 10 * MINUTE_MS,
            reg: reg0 + 5 * i as u64,
            rev: 0,
            flow: 0,
            temp: Some(120),
        })
        .collect()
}

/// Starts meterflow with the fleet's config and has every meter send one uplink (its
/// battery and signal set), waiting for each ack (the ack means stored and cached).
async fn start_fleet(dir: &std::path::Path) -> (Meterflow, i64) {
    let service = start_configured(dir, &fleet_config(), &[]);
    let start = now_ms();
    let sends: Vec<_> = FLEET
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut uplink = Uplink::new(1, readings_ending(start - m.newest_age_ms, 1_000));
            uplink.battery = Some(80 + i as u8);
            uplink.rssi = Some(-90 - i as i16);
            let mqtt = service.mqtt;
            tokio::spawn(async move {
                send_and_wait_for_ack(mqtt, "acme", m.id, &[uplink]).await;
            })
        })
        .collect();
    for send in sends {
        send.await.unwrap();
    }
    // An ack means durable in the store; the meter list is the hot cache, applied
    // just after: wait until it holds the whole fleet.
    let deadline = Instant::now() + Duration::from_secs(15);
    while page_through(&service, "", 1_000).len() < FLEET.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (service, start)
}

fn get(service: &Meterflow, path: &str) -> Answer {
    let auth = format!("Bearer {TOKEN}");
    api_get(service, path, &[("Authorization", &auth)])
}

/// Every meter id the list gives for `filters`, following `next` with pages of
/// `limit`; checks each page's shape on the way.
fn page_through(service: &Meterflow, filters: &str, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..=FLEET.len() {
        let mut path = format!("/api/v1/tenants/acme/meters?limit={limit}{filters}");
        if let Some(after) = &after {
            path.push_str(&format!("&after={after}"));
        }
        let answer = get(service, &path);
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        let page = answer.json();
        let page_ids: Vec<String> = page["meters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["meter"].as_str().unwrap().to_string())
            .collect();
        assert!(page_ids.len() <= limit, "{path}: {page_ids:?}");
        ids.extend(page_ids.iter().cloned());
        match page["next"].as_str() {
            Some(next) => {
                // A page with a successor is full and hands over its last id.
                assert_eq!(page_ids.len(), limit, "{path}");
                assert_eq!(Some(next), page_ids.last().map(String::as_str), "{path}");
                after = Some(next.to_string());
            }
            None => {
                assert!(page["next"].is_null(), "{path}: {page}");
                return ids;
            }
        }
    }
    panic!("more pages than meters for {filters:?} at limit {limit}: {ids:?}");
}

fn sorted(ids: impl IntoIterator<Item = &'static str>) -> Vec<String> {
    let set: BTreeSet<String> = ids.into_iter().map(str::to_string).collect();
    set.into_iter().collect()
}

fn fleet_where(keep: impl Fn(&FixtureMeter) -> bool) -> Vec<String> {
    sorted(FLEET.iter().filter(|m| keep(m)).map(|m| m.id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_by_next_lists_every_matching_meter_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (service, _) = start_fleet(dir.path()).await;
    let everyone = fleet_where(|_| true);
    let north = fleet_where(|m| m.district == Some("north"));
    let quiet = fleet_where(|m| m.newest_age_ms >= HOUR_MS);
    let cases = [
        ("", &everyone),
        ("&district=north", &north),
        ("&silent_for_s=3600", &quiet),
    ];
    for (filters, expected) in cases {
        // Every page size from one meter a page to more than there are.
        for limit in 1..=FLEET.len() + 1 {
            let listed = page_through(&service, filters, limit);
            assert_eq!(&listed, expected, "{filters:?} at limit {limit}");
        }
    }
    // One page holds the same as the pages together.
    assert_eq!(page_through(&service, "", 1_000), everyone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_district_and_silence_select_exactly_their_meters() {
    let dir = tempfile::tempdir().unwrap();
    let (service, start) = start_fleet(dir.path()).await;
    let list = |filters: &str| page_through(&service, filters, 1_000);

    // Search: a substring of the id, case-sensitive; empty means no filter.
    assert_eq!(list("&q=pump"), sorted(["pump-01", "pump-02"]));
    assert_eq!(list("&q=0"), fleet_where(|m| m.id.contains('0')));
    assert_eq!(list("&q=N0"), Vec::<String>::new());
    assert_eq!(list("&q="), fleet_where(|_| true));

    // Districts as configured; unassigned meters are in `default`.
    for district in ["north", "south"] {
        assert_eq!(
            list(&format!("&district={district}")),
            fleet_where(|m| m.district == Some(district)),
            "{district}"
        );
    }
    assert_eq!(
        list("&district=default"),
        fleet_where(|m| m.district.is_none())
    );
    assert_eq!(list("&district=nowhere"), Vec::<String>::new());

    // Silence by each reading's own time against the service clock: with the newest
    // readings 1 min, 3 h and 26 h old, thresholds between them split the fleet.
    for (silent_for_s, older_than_ms) in [
        (1_800, HOUR_MS),
        (3 * 3_600 + 600, 26 * HOUR_MS),
        (86_400, 26 * HOUR_MS),
        (2 * 86_400, i64::MAX),
    ] {
        assert_eq!(
            list(&format!("&silent_for_s={silent_for_s}")),
            fleet_where(|m| m.newest_age_ms >= older_than_ms),
            "silent_for_s={silent_for_s}"
        );
    }
    // Seconds since the newest reading of the quietest meter, less a minute of slack:
    // that meter alone.
    let s01_age_s = (now_ms() - (start - 26 * HOUR_MS)) / 1_000;
    assert_eq!(
        list(&format!("&silent_for_s={}", s01_age_s - 60)),
        sorted(["s01"])
    );
    assert_eq!(
        list(&format!("&silent_for_s={}", s01_age_s + 60)),
        Vec::<String>::new()
    );

    // Filters combine.
    assert_eq!(
        list("&district=north&silent_for_s=3600"),
        sorted(["n01", "n02"])
    );
    assert_eq!(list("&q=pump&district=south"), sorted(["pump-01"]));
    assert_eq!(
        list("&q=pump&silent_for_s=3600&district=default"),
        sorted(["pump-02"])
    );

    // Each listed view is the meter's own view, as `GET …/meters/{m}` shows it.
    let page = get(&service, "/api/v1/tenants/acme/meters?limit=1000").json();
    for view in page["meters"].as_array().unwrap() {
        let id = view["meter"].as_str().unwrap();
        let (i, m) = FLEET.iter().enumerate().find(|(_, m)| m.id == id).unwrap();
        assert_eq!(view["district"], m.district.unwrap_or("default"), "{view}");
        assert_eq!(view["battery"], 80 + i as u64, "{view}");
        assert_eq!(view["rssi"], -90 - i as i64, "{view}");
        assert_eq!(view["last_ts"], start - m.newest_age_ms, "{view}");
        let single = get(&service, &format!("/api/v1/tenants/acme/meters/{id}"));
        assert_eq!(&single.json(), view);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_list_parameters_are_json_400s_and_big_pages_are_clamped() {
    let dir = tempfile::tempdir().unwrap();
    let (service, _) = start_fleet(dir.path()).await;
    let meters = "/api/v1/tenants/acme/meters";
    for query in [
        "limit=0",
        "limit=-1",
        "limit=abc",
        "limit=18446744073709551616",
        "silent_for_s=-5",
        "silent_for_s=1.5",
    ] {
        let answer = get(&service, &format!("{meters}?{query}"));
        assert_eq!(answer.status, 400, "{query}: {}", answer.body);
        assert_eq!(answer.media_type(), "application/json", "{query}");
        let error = answer.json()["error"].as_str().unwrap().to_string();
        let name = query.split('=').next().unwrap();
        assert!(error.contains(name), "{query}: {error}");
    }
    // Above the largest page (1000) a page is served at that size: here, everyone.
    let page = get(&service, &format!("{meters}?limit=1000000")).json();
    assert_eq!(page["meters"].as_array().unwrap().len(), FLEET.len());
    assert!(page["next"].is_null());
    // A silence longer than time itself: nobody has been quiet that long.
    let page = get(&service, &format!("{meters}?silent_for_s={}", u64::MAX)).json();
    assert_eq!(page["meters"], serde_json::json!([]));
    // `after` past the last id: an empty last page.
    let page = get(&service, &format!("{meters}?after=zzz")).json();
    assert_eq!(page, serde_json::json!({"meters": [], "next": null}));

    // Authorization and unknown tenants, in the JSON error shape.
    let anonymous = api_get(&service, meters, &[]);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert!(
        anonymous.json()["error"]
            .as_str()
            .unwrap()
            .contains("Bearer")
    );
    let unknown = get(&service, "/api/v1/tenants/nobody/meters");
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(unknown.json()["error"].as_str().unwrap().contains("nobody"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_rebuilt_after_a_restart_keeps_its_configured_district() {
    let dir = tempfile::tempdir().unwrap();
    let (service, start) = start_fleet(dir.path()).await;
    let before: Vec<serde_json::Value> = ["n03", "s02", "d01"]
        .iter()
        .map(|m| get(&service, &format!("/api/v1/tenants/acme/meters/{m}")).json())
        .collect();
    let service = restart_configured(service, dir.path());
    // Nothing reported since the restart: the views come from the stored state.
    for (view, district) in before.iter().zip(["north", "south", "default"]) {
        let meter = view["meter"].as_str().unwrap();
        let after = get(&service, &format!("/api/v1/tenants/acme/meters/{meter}")).json();
        assert_eq!(after["district"], district, "{after}");
        for field in ["last_ts", "last_seq", "reg", "quality"] {
            assert_eq!(after[field], view[field], "{field} of {meter}");
        }
        assert_eq!(after["last_ts"], start - MINUTE_MS);
    }
}

/// One uplink of three readings ending at `newest_ts`, carrying `flags`.
fn flagged(seq: u64, newest_ts: i64, flags: &[DeviceFlag]) -> Uplink {
    let mut uplink = Uplink::new(seq, readings_ending(newest_ts, 1_000 + 15 * seq));
    for flag in flags {
        uplink.flags.insert(*flag);
    }
    uplink
}

/// `(meter, kind, opened_at, state)` of each episode in an alerts answer, in order.
fn episodes(answer: &Answer) -> Vec<(String, String, i64, String)> {
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let text = |name: &str| e[name].as_str().unwrap().to_string();
            (
                text("meter"),
                text("kind"),
                e["opened_at"].as_i64().unwrap(),
                text("state"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meter_filter_gives_exactly_that_meters_alert_history() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_configured(
        dir.path(),
        &format!("[[tenants]]\nid = \"acme\"\napi_token = \"{TOKEN}\"\n"),
        &[],
    );
    let t0 = now_ms() - 2 * HOUR_MS;
    // a1: tamper and magnetic raised, then lowered, then tamper again (3 episodes,
    // one open); b2: tamper (open); c3: never flagged.
    let a1 = [
        flagged(1, t0, &[DeviceFlag::Tamper, DeviceFlag::Magnetic]),
        flagged(2, t0 + 30 * MINUTE_MS, &[]),
        flagged(3, t0 + HOUR_MS, &[DeviceFlag::Tamper]),
    ];
    // One at a time: a batch's alerting reads the flags of its newest message only.
    for uplink in &a1 {
        send_and_wait_for_ack(service.mqtt, "acme", "a1", std::slice::from_ref(uplink)).await;
    }
    let b2 = [flagged(1, t0 + 10 * MINUTE_MS, &[DeviceFlag::Tamper])];
    send_and_wait_for_ack(service.mqtt, "acme", "b2", &b2).await;
    let c3 = [flagged(1, t0, &[])];
    send_and_wait_for_ack(service.mqtt, "acme", "c3", &c3).await;

    let alerts = "/api/v1/tenants/acme/alerts";
    let deadline = Instant::now() + Duration::from_secs(15);
    let everything = loop {
        let all = episodes(&get(&service, &format!("{alerts}?state=all")));
        if all.len() >= 4 || Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(everything.len(), 4, "{everything:?}");

    // For each meter and state, the filter gives what filtering the tenant's list gives.
    for meter in ["a1", "b2", "c3"] {
        for state in ["all", "open"] {
            let whole = episodes(&get(&service, &format!("{alerts}?state={state}")));
            let expected: Vec<_> = whole.into_iter().filter(|e| e.0 == meter).collect();
            let filtered = episodes(&get(
                &service,
                &format!("{alerts}?state={state}&meter={meter}"),
            ));
            assert_eq!(filtered, expected, "{meter} {state}");
        }
    }
    let a1_all = episodes(&get(&service, &format!("{alerts}?state=all&meter=a1")));
    let kinds: Vec<(&str, &str)> = a1_all
        .iter()
        .map(|e| (e.1.as_str(), e.3.as_str()))
        .collect();
    // Newest opened first: the second tamper (open), then the first two (cleared).
    assert_eq!(kinds.len(), 3, "{a1_all:?}");
    assert_eq!(kinds[0], ("tamper", "opened"), "{a1_all:?}");
    assert!(
        kinds[1..].iter().all(|(_, s)| *s == "cleared"),
        "{a1_all:?}"
    );
    assert_eq!(
        episodes(&get(&service, &format!("{alerts}?state=open&meter=a1"))).len(),
        1
    );
    // limit applies after the filter: the meter's newest.
    let newest = episodes(&get(
        &service,
        &format!("{alerts}?state=all&meter=a1&limit=2"),
    ));
    assert_eq!(newest, a1_all[..2].to_vec());
    // An empty meter= is no filter, like the list's empty filters.
    assert_eq!(
        episodes(&get(&service, &format!("{alerts}?state=all&meter="))).len(),
        4
    );
    // A malformed id is a 400 in the JSON error shape; a well-formed stranger, nothing.
    let bad = get(&service, &format!("{alerts}?state=all&meter=a1%2Fb2"));
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.json()["error"].as_str().unwrap().contains("meter id"));
    assert!(episodes(&get(&service, &format!("{alerts}?meter=zz9"))).is_empty());
}
