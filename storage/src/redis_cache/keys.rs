//! Key names of the Redis contract (see `docs/redis-keys.md`), the time stamps inside
//! them, and the read windows both caches share.
//!
//! Every key is `{prefix}:{<tenant>}:…`. The braces are a Redis Cluster hash tag:
//! only `<tenant>` is hashed, so all keys of a tenant live in one slot and a Lua
//! script (or a dashboard's pipeline) may touch several of them. Tenant, meter and
//! district ids are `[A-Za-z0-9_-]{1,64}` ([`is_valid_id`]), so they never contain
//! `{`, `}` or `:` — callers check ids with [`is_valid_id`] before building keys.
//!
//! Stamps, all derived from a window's `start_ms` (epoch ms):
//! - minute windows: `yyyymmddHHMM`, the UTC minute (minute windows are UTC minutes);
//! - hour windows: `yyyymmddHH`, the UTC hour containing the start. Local hours are
//!   60 minutes apart, so distinct local hours have distinct UTC hours even for
//!   half-hour offsets (India's local 10:00 starts at 04:30 UTC: stamp `…04`);
//! - day windows: `yyyymmdd`, the tenant's *local* date (see [`day_stamp`]). A UTC
//!   date would collide: London's local 31 March starts at 23:00 UTC on 30 March,
//!   the same UTC date as local 30 March.
//!
//! Every district hash also holds `start_ms`, the exact window start, and the series
//! and index keys (`series:district:{d}:{min|hour|day}`, `districts`, `meters…`)
//! carry no stamp: their scores are epoch ms or, for the lexicographic meter indexes,
//! all 0.

use meterflow_model::analytics::Resolution;
use meterflow_model::ids::is_valid_id;
use meterflow_model::time::{DAY_MS, civil_from_days};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

/// Added to a local day's first instant before taking its UTC date, so that the
/// result is the *local* date. Local midnight is at `-offset` UTC, so the shifted
/// instant lands on the local date whenever `offset ∈ (shift − 24 h, shift]`:
/// 13 h 45 min covers every UTC offset from −10:15 (Hawaii is −10:00) to +13:45
/// (New Zealand's summer +13:00, Chatham's +13:45). Only the few Pacific islands at
/// −11:00 and +14:00, which have no daylight saving, get a label one day off — still
/// one key per day, never a collision.
pub const DAY_STAMP_SHIFT_MS: i64 = 13 * HOUR_MS + 45 * MINUTE_MS;

/// The longest range one `district_usage` read covers, by resolution; a longer
/// request is cut to its newest part (`[to − span, to)`). Minutes: one day = 1,440
/// keys in one pipeline, what a "last 24 h" chart needs. Hours: 35 days = 840 keys,
/// the hour TTL. Days: 400 days, the day TTL.
pub const fn max_read_span_ms(resolution: Resolution) -> i64 {
    match resolution {
        Resolution::Minute => DAY_MS,
        Resolution::Hour => 35 * DAY_MS,
        Resolution::Day => 400 * DAY_MS,
    }
}

/// The start of the range a read of `[from_ms, to_ms)` really covers.
pub fn clamp_read_from(resolution: Resolution, from_ms: i64, to_ms: i64) -> i64 {
    from_ms.max(to_ms.saturating_sub(max_read_span_ms(resolution)))
}

/// Whether a window start is inside a read's (clamped) range.
pub fn in_read_range(resolution: Resolution, start_ms: i64, from_ms: i64, to_ms: i64) -> bool {
    clamp_read_from(resolution, from_ms, to_ms) <= start_ms && start_ms < to_ms
}

/// (year, month, day, hour, minute) in UTC of an epoch-ms instant.
fn utc_parts(ms: i64) -> (i64, u32, u32, i64, i64) {
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
    let in_day = ms.rem_euclid(DAY_MS);
    (y, m, d, in_day / HOUR_MS, in_day % HOUR_MS / MINUTE_MS)
}

/// `yyyymmddHHMM`, the UTC minute of `start_ms`.
pub fn minute_stamp(start_ms: i64) -> String {
    let (y, m, d, hh, mm) = utc_parts(start_ms);
    format!("{y:04}{m:02}{d:02}{hh:02}{mm:02}")
}

/// `yyyymmddHH`, the UTC hour containing `start_ms`.
pub fn hour_stamp(start_ms: i64) -> String {
    let (y, m, d, hh, _) = utc_parts(start_ms);
    format!("{y:04}{m:02}{d:02}{hh:02}")
}

/// The day number (days since 1970-01-01) whose date labels the local day starting
/// at `start_ms`: see [`DAY_STAMP_SHIFT_MS`].
fn day_number(start_ms: i64) -> i64 {
    start_ms
        .saturating_add(DAY_STAMP_SHIFT_MS)
        .div_euclid(DAY_MS)
}

fn date_stamp(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}{m:02}{d:02}")
}

/// `yyyymmdd`, the local date of the local day starting at `start_ms`.
pub fn day_stamp(start_ms: i64) -> String {
    date_stamp(day_number(start_ms))
}

/// The stamp of a window of `resolution` starting at `start_ms`.
pub fn window_stamp(resolution: Resolution, start_ms: i64) -> String {
    match resolution {
        Resolution::Minute => minute_stamp(start_ms),
        Resolution::Hour => hour_stamp(start_ms),
        Resolution::Day => day_stamp(start_ms),
    }
}

/// `yyyymmdd` of a `yyyy-mm-dd` day label (a top-consumers day), or `None` when the
/// label is not of that shape.
pub fn day_label_stamp(day: &str) -> Option<String> {
    let b = day.as_bytes();
    let shaped = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    shaped.then(|| [&day[0..4], &day[5..7], &day[8..10]].concat())
}

/// The stamps of every key that can hold a window of `resolution` starting in
/// `[clamp_read_from(from_ms), to_ms)`, oldest first. Keys found must still be
/// filtered by their `start_ms` field (an hour key's UTC hour may begin before
/// `from_ms`).
pub fn read_stamps(resolution: Resolution, from_ms: i64, to_ms: i64) -> Vec<String> {
    let from_ms = clamp_read_from(resolution, from_ms, to_ms);
    if from_ms >= to_ms {
        return Vec::new();
    }
    match resolution {
        Resolution::Minute | Resolution::Hour => {
            let width = if resolution == Resolution::Minute {
                MINUTE_MS
            } else {
                HOUR_MS
            };
            // Minute windows start on whole UTC minutes: the first at or after `from`.
            // Hour keys: from the UTC hour containing `from` (a window there may start
            // later in that hour). A floor below `i64::MIN` starts one width later.
            let quotient = from_ms.div_euclid(width);
            let floor = quotient.checked_mul(width);
            let first = match floor {
                Some(floor) if floor == from_ms || resolution == Resolution::Hour => Some(floor),
                _ => quotient.checked_add(1).and_then(|q| q.checked_mul(width)),
            };
            let mut stamps = Vec::new();
            let mut at = first;
            while let Some(t) = at.filter(|t| *t < to_ms) {
                stamps.push(window_stamp(resolution, t));
                at = t.checked_add(width);
            }
            stamps
        }
        Resolution::Day => (day_number(from_ms)..=day_number(to_ms - 1))
            .map(date_stamp)
            .collect(),
    }
}

/// The key names of one deployment (one [`key_prefix`](super::RedisConfig::key_prefix)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpace {
    prefix: String,
}

impl KeySpace {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// `{prefix}:{<tenant>}`, the start of every key of a tenant.
    fn tenant(&self, tenant: &str) -> String {
        format!("{}:{{{tenant}}}", self.prefix)
    }

    /// `{target}:shares` HASH: the contributors' shares of an aggregate with
    /// several writers (`shares.rs`), beside its target key.
    pub fn shares(target: &str) -> String {
        format!("{target}:shares")
    }

    /// `mf:{t}:meter:{m}` HASH.
    pub fn meter(&self, tenant: &str, meter: &str) -> String {
        format!("{}:meter:{meter}", self.tenant(tenant))
    }

    /// `mf:{t}:district:{d}:min:{yyyymmddHHMM}`, `…:hour:{yyyymmddHH}` or
    /// `…:day:{yyyymmdd}` HASH.
    pub fn district(
        &self,
        tenant: &str,
        district: &str,
        resolution: Resolution,
        start_ms: i64,
    ) -> String {
        self.district_stamped(
            tenant,
            district,
            resolution,
            &window_stamp(resolution, start_ms),
        )
    }

    pub(crate) fn district_stamped(
        &self,
        tenant: &str,
        district: &str,
        resolution: Resolution,
        stamp: &str,
    ) -> String {
        format!(
            "{}:district:{district}:{}:{stamp}",
            self.tenant(tenant),
            width_segment(resolution)
        )
    }

    /// `mf:{t}:series:district:{d}:{min|hour|day}` ZSET: one member per window,
    /// scored by its start (see `codec::series_member`).
    pub fn series(&self, tenant: &str, district: &str, resolution: Resolution) -> String {
        format!(
            "{}:series:district:{district}:{}",
            self.tenant(tenant),
            width_segment(resolution)
        )
    }

    /// `mf:{t}:districts` ZSET: district id → start of its newest window, epoch ms.
    pub fn districts(&self, tenant: &str) -> String {
        format!("{}:districts", self.tenant(tenant))
    }

    /// `mf:{t}:meters` ZSET, every score 0: meter ids, paged with `ZRANGEBYLEX`.
    pub fn meters(&self, tenant: &str) -> String {
        format!("{}:meters", self.tenant(tenant))
    }

    /// `mf:{t}:meters:by_district` ZSET, every score 0: `{district}:{meter}`
    /// ([`district_member`]), a district's meters paged with `ZRANGEBYLEX`.
    pub fn meters_by_district(&self, tenant: &str) -> String {
        format!("{}:meters:by_district", self.tenant(tenant))
    }

    /// `mf:{t}:meters:last_ts` ZSET: meter id → `last_ts` (`-inf` without a reading).
    pub fn meters_last_ts(&self, tenant: &str) -> String {
        format!("{}:meters:last_ts", self.tenant(tenant))
    }

    /// `mf:{t}:meters:seen` ZSET: meter id → when its view was last written, epoch ms
    /// of the Redis server's clock (what the index is trimmed by).
    pub fn meters_seen(&self, tenant: &str) -> String {
        format!("{}:meters:seen", self.tenant(tenant))
    }

    /// `mf:{t}:meters:district` HASH: meter id → its district (which
    /// `meters:by_district` member to remove when it moves or is trimmed).
    pub fn meters_district(&self, tenant: &str) -> String {
        format!("{}:meters:district", self.tenant(tenant))
    }

    /// `mf:{t}:top:{yyyymmdd}` ZSET, from its `yyyymmdd` stamp.
    pub fn top(&self, tenant: &str, stamp: &str) -> String {
        format!("{}:top:{stamp}", self.tenant(tenant))
    }

    /// `mf:{t}:alerts` STREAM.
    pub fn alerts(&self, tenant: &str) -> String {
        format!("{}:alerts", self.tenant(tenant))
    }

    /// `mf:{t}:alerts:open` HASH.
    pub fn alerts_open(&self, tenant: &str) -> String {
        format!("{}:alerts:open", self.tenant(tenant))
    }

    /// `mf:{t}:summary` HASH.
    pub fn summary(&self, tenant: &str) -> String {
        format!("{}:summary", self.tenant(tenant))
    }
}

/// The key segment of a resolution: `min`, `hour` or `day`.
fn width_segment(resolution: Resolution) -> &'static str {
    match resolution {
        Resolution::Minute => "min",
        Resolution::Hour => "hour",
        Resolution::Day => "day",
    }
}

/// A member of `meters:by_district`: `{district}:{meter}`. Ids never contain `:`, so
/// the district's members are exactly the range [`district_lex_range`] gives, in
/// meter-id order.
pub fn district_member(district: &str, meter: &str) -> String {
    format!("{district}:{meter}")
}

/// The `ZRANGEBYLEX` bounds of a district's members in `meters:by_district`:
/// `[{d}:` to `({d};` (`;` is the byte after `:`).
pub fn district_lex_range(district: &str) -> (String, String) {
    (format!("[{district}:"), format!("({district};"))
}

/// Whether every id is well formed, i.e. safe inside a key.
pub fn ids_are_valid(ids: &[&str]) -> bool {
    ids.iter().all(|id| is_valid_id(id.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2025-01-15T00:00Z.
    const MIDNIGHT: i64 = 1_736_899_200_000;

    #[test]
    fn stamps_are_utc_for_minutes_and_hours() {
        assert_eq!(
            minute_stamp(MIDNIGHT + 3 * HOUR_MS + 7 * MINUTE_MS),
            "202501150307"
        );
        assert_eq!(
            hour_stamp(MIDNIGHT + 23 * HOUR_MS + 30 * MINUTE_MS),
            "2025011523"
        );
        assert_eq!(minute_stamp(-MINUTE_MS), "196912312359");
    }

    #[test]
    fn day_stamps_are_local_dates_across_offsets_and_dst() {
        // Local midnight of 2025-01-15 at UTC offsets from −10:00 to +13:45.
        for offset_min in [-600, -300, -60, 0, 60, 330, 345, 600, 720, 780, 825] {
            let start = MIDNIGHT - offset_min * MINUTE_MS;
            assert_eq!(day_stamp(start), "20250115", "offset {offset_min} min");
        }
        // London, spring 2025: 30 March starts at 00:00 UTC (GMT), 31 March at
        // 23:00 UTC on the 30th (BST). Distinct, correct stamps.
        let march_30 = 1_743_292_800_000;
        assert_eq!(day_stamp(march_30), "20250330");
        assert_eq!(day_stamp(march_30 + 23 * HOUR_MS), "20250331");
        // Auckland: 28 September 2025 starts at 12:00 UTC on the 27th (NZST, +12),
        // 29 September at 11:00 UTC on the 28th (NZDT, +13).
        let sept_28_utc = 1_758_974_400_000;
        assert_eq!(day_stamp(sept_28_utc), "20250928");
        assert_eq!(day_stamp(sept_28_utc + 23 * HOUR_MS), "20250929");
    }

    #[test]
    fn day_labels_become_stamps_and_garbage_does_not() {
        assert_eq!(day_label_stamp("2025-01-15").as_deref(), Some("20250115"));
        for bad in [
            "2025-1-15",
            "20250115",
            "2025/01/15",
            "2025-01-1x",
            "",
            "2025-01-150",
        ] {
            assert_eq!(day_label_stamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn keys_are_prefixed_and_hash_tagged() {
        let keys = KeySpace::new("mf");
        assert_eq!(keys.meter("acme", "M-1"), "mf:{acme}:meter:M-1");
        assert_eq!(
            keys.district("acme", "north", Resolution::Minute, MIDNIGHT),
            "mf:{acme}:district:north:min:202501150000"
        );
        assert_eq!(
            keys.district("acme", "north", Resolution::Hour, MIDNIGHT),
            "mf:{acme}:district:north:hour:2025011500"
        );
        assert_eq!(
            keys.district("acme", "north", Resolution::Day, MIDNIGHT),
            "mf:{acme}:district:north:day:20250115"
        );
        assert_eq!(keys.top("acme", "20250115"), "mf:{acme}:top:20250115");
        assert_eq!(keys.alerts("acme"), "mf:{acme}:alerts");
        assert_eq!(keys.alerts_open("acme"), "mf:{acme}:alerts:open");
        assert_eq!(keys.summary("acme"), "mf:{acme}:summary");
        assert_eq!(
            keys.series("acme", "north", Resolution::Hour),
            "mf:{acme}:series:district:north:hour"
        );
        assert_eq!(keys.districts("acme"), "mf:{acme}:districts");
        assert_eq!(keys.meters("acme"), "mf:{acme}:meters");
        assert_eq!(
            keys.meters_by_district("acme"),
            "mf:{acme}:meters:by_district"
        );
        assert_eq!(keys.meters_last_ts("acme"), "mf:{acme}:meters:last_ts");
        assert_eq!(keys.meters_seen("acme"), "mf:{acme}:meters:seen");
        assert_eq!(keys.meters_district("acme"), "mf:{acme}:meters:district");
    }

    /// A district's range holds its members and nothing of a district whose id
    /// extends it (`north` vs `north2`, `north-x`), in byte order as Redis compares.
    #[test]
    fn district_ranges_hold_exactly_their_members() {
        let (lo, hi) = district_lex_range("north");
        let (lo, hi) = (&lo[1..], &hi[1..]);
        for (district, meter, inside) in [
            ("north", "m1", true),
            ("north", "zzz", true),
            ("north", "-", true),
            ("north2", "m1", false),
            ("north-x", "m1", false),
            ("nort", "hm1", false),
            ("south", "m1", false),
        ] {
            let member = district_member(district, meter);
            let within = lo <= member.as_str() && member.as_str() < hi;
            assert_eq!(within, inside, "{member}");
        }
    }

    #[test]
    fn read_stamps_cover_the_clamped_range() {
        let minutes = read_stamps(Resolution::Minute, MIDNIGHT + 1, MIDNIGHT + 3 * MINUTE_MS);
        assert_eq!(minutes, ["202501150001", "202501150002"]);
        // A week of minutes is cut to the newest day.
        let week = read_stamps(Resolution::Minute, MIDNIGHT - 7 * DAY_MS, MIDNIGHT);
        assert_eq!(week.len(), 1_440);
        assert_eq!(week[0], "202501140000");
        assert_eq!(week[1_439], "202501142359");
        // Hours start at the UTC hour containing `from` (a half-hour zone's hour
        // starting at 00:30 is under `…00`).
        let hours = read_stamps(
            Resolution::Hour,
            MIDNIGHT + 30 * MINUTE_MS,
            MIDNIGHT + 2 * HOUR_MS,
        );
        assert_eq!(hours, ["2025011500", "2025011501"]);
        assert_eq!(
            read_stamps(Resolution::Hour, 0, MIDNIGHT).len() as i64,
            35 * 24
        );
        // Local days starting in [15th 00:00 UTC, 17th 00:00 UTC) are dated 15th to
        // 17th (London's summer 17th starts at 23:00 UTC on the 16th).
        let days = read_stamps(Resolution::Day, MIDNIGHT, MIDNIGHT + 2 * DAY_MS);
        assert_eq!(days, ["20250115", "20250116", "20250117"]);
        assert!(read_stamps(Resolution::Day, MIDNIGHT, MIDNIGHT).is_empty());
        assert!(read_stamps(Resolution::Minute, MIDNIGHT, MIDNIGHT - 1).is_empty());
    }

    #[test]
    fn extreme_ranges_stay_bounded_and_do_not_overflow() {
        for resolution in [Resolution::Minute, Resolution::Hour, Resolution::Day] {
            for (from, to) in [
                (i64::MIN, i64::MAX),
                (i64::MAX - 1, i64::MAX),
                (i64::MIN, i64::MIN + 1),
            ] {
                let stamps = read_stamps(resolution, from, to);
                assert!(stamps.len() <= 1 + (max_read_span_ms(resolution) / MINUTE_MS) as usize);
            }
        }
        assert!(in_read_range(
            Resolution::Minute,
            MIDNIGHT,
            MIDNIGHT,
            MIDNIGHT + 1
        ));
        assert!(!in_read_range(
            Resolution::Minute,
            MIDNIGHT - 2 * DAY_MS,
            0,
            MIDNIGHT
        ));
    }
}
