//! Tenant-local calendar arithmetic on epoch milliseconds: local hours, days and
//! months (billing periods) in the tenant's IANA time zone, DST included.
//!
//! Time zones come from jiff's bundled copy of the IANA database (jiff is built
//! without reading the host's `/usr/share/zoneinfo`), so a bill never depends on the
//! machine it was computed on and processors stay free of I/O.
//!
//! Hot paths ask for the hour, day or month of every reading. Each [`LocalCalendar`]
//! caches the span it answered last — the UTC-offset span between two transitions,
//! the current local day, the current month — so a lookup is two comparisons unless
//! a reading crosses into another span.

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

pub(crate) const MINUTE_MS: i64 = 60_000;
pub(crate) const HOUR_MS: i64 = 60 * MINUTE_MS;

/// Jiff's timestamp range is years -9999..=9999; meter timestamps are checked far
/// inside it at ingest, this only keeps a wild value from panicking.
const MIN_TS_MS: i64 = -377_705_116_800_000;
const MAX_TS_MS: i64 = 253_402_207_199_999;

fn timestamp(ts_ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ts_ms.clamp(MIN_TS_MS, MAX_TS_MS))
        .expect("clamped into jiff's range")
}

/// A local calendar span `[start_ms, end_ms)` with its civil date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalSpan {
    pub start_ms: i64,
    pub end_ms: i64,
    pub year: i16,
    pub month: u8,
    /// 1 for months.
    pub day: u8,
}

impl LocalSpan {
    fn contains(&self, ts_ms: i64) -> bool {
        self.start_ms <= ts_ms && ts_ms < self.end_ms
    }

    /// `yyyy-mm`.
    pub fn month_label(&self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }

    /// `yyyy-mm-dd`.
    pub fn day_label(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

#[derive(Clone, Copy)]
struct OffsetSpan {
    from_ms: i64,
    until_ms: i64,
    offset_ms: i64,
}

/// Local time of one tenant, with per-span caches (see the module doc).
#[derive(Clone)]
pub struct LocalCalendar {
    zone: TimeZone,
    offset: Option<OffsetSpan>,
    day: Option<LocalSpan>,
    month: Option<LocalSpan>,
}

impl LocalCalendar {
    pub fn new(zone: TimeZone) -> Self {
        Self {
            zone,
            offset: None,
            day: None,
            month: None,
        }
    }

    /// Resolves an IANA name (`Europe/Paris`, `UTC`) against the bundled database.
    pub fn for_zone_name(name: &str) -> Result<Self, String> {
        TimeZone::get(name).map(Self::new).map_err(|e| {
            format!("unknown time zone {name:?} ({e}); use an IANA name such as \"Europe/Paris\"")
        })
    }

    /// UTC offset in effect at `ts_ms`, milliseconds.
    pub fn offset_ms(&mut self, ts_ms: i64) -> i64 {
        if let Some(span) = self.offset
            && span.from_ms <= ts_ms
            && ts_ms < span.until_ms
        {
            return span.offset_ms;
        }
        let at = timestamp(ts_ms);
        let offset_ms = i64::from(self.zone.to_offset(at).seconds()) * 1_000;
        // Transitions strictly before `ts + 1 ms` (so at or before `ts`), and after it.
        let from_ms = self
            .zone
            .preceding(timestamp(ts_ms.saturating_add(1)))
            .next()
            .map_or(i64::MIN, |t| t.timestamp().as_millisecond());
        let until_ms = self
            .zone
            .following(at)
            .next()
            .map_or(i64::MAX, |t| t.timestamp().as_millisecond());
        self.offset = Some(OffsetSpan {
            from_ms,
            until_ms,
            offset_ms,
        });
        offset_ms
    }

    /// Start of the local hour containing `ts_ms`, epoch ms.
    pub fn hour_start(&mut self, ts_ms: i64) -> i64 {
        let offset = self.offset_ms(ts_ms);
        (ts_ms + offset).div_euclid(HOUR_MS) * HOUR_MS - offset
    }

    /// Local hour of day (0..=23) of `ts_ms`.
    pub fn hour_of_day(&mut self, ts_ms: i64) -> u8 {
        let offset = self.offset_ms(ts_ms);
        ((ts_ms + offset).rem_euclid(24 * HOUR_MS) / HOUR_MS) as u8
    }

    /// The local day of the month (1..=31) of `ts_ms`: its local date's day, from the
    /// UTC offset alone (cached per offset span), without building the day's span.
    pub fn day_of_month(&mut self, ts_ms: i64) -> u8 {
        let local_ms = ts_ms.saturating_add(self.offset_ms(ts_ms));
        day_of_month_of(local_ms.div_euclid(24 * HOUR_MS))
    }

    /// The local calendar day containing `ts_ms`.
    pub fn day(&mut self, ts_ms: i64) -> LocalSpan {
        if let Some(day) = self.day
            && day.contains(ts_ms)
        {
            return day;
        }
        let date = timestamp(ts_ms).to_zoned(self.zone.clone()).date();
        let next = date.tomorrow().unwrap_or(date);
        let day = self.span(date, next);
        self.day = Some(day);
        day
    }

    /// The local calendar month containing `ts_ms`: a billing period.
    pub fn month(&mut self, ts_ms: i64) -> LocalSpan {
        if let Some(month) = self.month
            && month.contains(ts_ms)
        {
            return month;
        }
        let date = timestamp(ts_ms).to_zoned(self.zone.clone()).date();
        let first = date.first_of_month();
        let next = date.last_of_month().tomorrow().unwrap_or(first);
        let month = self.span(first, next);
        self.month = Some(month);
        month
    }

    /// `[start of first, start of next)` — local midnights (or the first instant of
    /// the day where midnight falls in a DST gap).
    fn span(&self, first: Date, next: Date) -> LocalSpan {
        let start = |d: Date| {
            d.to_zoned(self.zone.clone())
                .map_or(i64::MAX, |z| z.timestamp().as_millisecond())
        };
        LocalSpan {
            start_ms: start(first),
            end_ms: start(next),
            year: first.year(),
            month: first.month() as u8,
            day: first.day() as u8,
        }
    }
}

/// The day of the month of the civil date `days` days after 1970-01-01 (proleptic
/// Gregorian; H. Hinnant's `civil_from_days`).
fn day_of_month_of(days: i64) -> u8 {
    let z = days + 719_468;
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The day of the month from the offset is the local date's day, in zones with
        /// DST (both hemispheres), half-hour offsets and none, across years.
        #[test]
        fn the_day_of_the_month_is_the_local_dates(
            ts in -2_208_988_800_000i64..4_102_444_800_000,
            zone in proptest::sample::select(vec![
                "UTC", "Europe/Paris", "America/Chicago", "Australia/Sydney",
                "Asia/Kolkata", "Pacific/Chatham", "America/St_Johns",
            ]),
        ) {
            let mut calendar = LocalCalendar::for_zone_name(zone).unwrap();
            let expected = calendar.day(ts).day;
            prop_assert_eq!(calendar.day_of_month(ts), expected);
        }
    }

    /// 2025-03-30 is the spring-forward day in Europe/Paris: 23 hours long.
    #[test]
    fn local_days_follow_dst() {
        let mut paris = LocalCalendar::for_zone_name("Europe/Paris").unwrap();
        // 2025-03-30T12:00:00Z
        let day = paris.day(1_743_336_000_000);
        assert_eq!(day.day_label(), "2025-03-30");
        assert_eq!(day.end_ms - day.start_ms, 23 * HOUR_MS);
        // Local midnight is 23:00Z the day before (UTC+1 in winter).
        assert_eq!(day.start_ms, 1_743_289_200_000);
        let month = paris.month(1_743_336_000_000);
        assert_eq!(month.month_label(), "2025-03");
        // 2025-03-01T00:00+01:00 = 2025-02-28T23:00Z; 2025-04-01T00:00+02:00 = 2025-03-31T22:00Z.
        assert_eq!(month.start_ms, 1_740_783_600_000);
        assert_eq!(month.end_ms, 1_743_458_400_000);
    }

    #[test]
    fn hours_and_offsets() {
        let mut kolkata = LocalCalendar::for_zone_name("Asia/Kolkata").unwrap();
        // 2025-01-01T00:00:00Z is 05:30 local: the local hour began at 00:30Z - 1 h.
        let ts = 1_735_689_600_000;
        assert_eq!(kolkata.offset_ms(ts), 19_800_000);
        assert_eq!(kolkata.hour_start(ts), ts - 30 * MINUTE_MS);
        assert_eq!(kolkata.hour_of_day(ts), 5);
        assert!(LocalCalendar::for_zone_name("Mars/Olympus").is_err());
    }
}
