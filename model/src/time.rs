//! Calendar arithmetic on epoch milliseconds, without a clock: days and hours in UTC,
//! used for storage partition keys and daily usage. (Tenant time zones come with
//! billing; until then a "day" is a UTC day.)

/// Milliseconds in one day.
pub const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 (UTC) of an epoch-millisecond timestamp.
pub fn day_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(DAY_MS)
}

/// `yyyy-mm-dd` of a day number, for keys and logs (proleptic Gregorian).
pub fn day_string(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Howard Hinnant's `civil_from_days`: day number → (year, month, day).
pub fn civil_from_days(day: i64) -> (i64, u32, u32) {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_days() {
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(day_string(day_of(1_763_800_000_000)), "2025-11-22");
        assert_eq!(day_of(-1), -1);
        assert_eq!(civil_from_days(day_of(951_782_400_000)), (2000, 2, 29));
    }
}
