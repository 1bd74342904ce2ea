//! The Lua scripts `apply` sends, for the three writes a plain pipeline cannot make
//! both absolute and safe. Each touches keys of one tenant only, all declared in
//! `KEYS` and sharing the tenant's hash tag, so they run on Redis Cluster too.
//!
//! They are sent with `EVAL` inside the apply pipeline (still one round trip).
//! Redis caches a script's compiled form by its SHA1, so re-sending the ~1 KB text
//! costs little and, unlike `EVALSHA`, cannot fail with `NOSCRIPT` after a Redis
//! restart or failover. A script runs atomically: no reader sees half of it.

/// Replaces a day's top-consumers ZSET with exactly the list given (absolute
/// scores), atomically — `DEL` + `ZADD` in a bare pipeline could show a dashboard an
/// empty list in between, and `ZADD` alone would keep meters that left the top.
///
/// `KEYS[1]`: `mf:{t}:top:{yyyymmdd}`. `ARGV[1]`: TTL, seconds. `ARGV[2..]`:
/// score, member pairs. `ZADD` goes in chunks of 500 pairs because Lua's `unpack`
/// has a stack limit (~8,000 values).
pub(crate) const REPLACE_TOP: &str = r"
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 1000 do
  redis.call('ZADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if #ARGV > 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return 0
";

/// Sets a meter's bill fields unless the hash already holds a *later* period: a
/// late read that updates last month's bill, or the final bill of last month sent
/// after this month's first, must not replace the running bill of the current
/// period. Periods are `yyyy-mm`, so string order is time order.
///
/// `KEYS[i]`: meter hashes of one tenant. `ARGV[1]`: TTL, seconds. Then per key:
/// period, period_l, bill_cents.
pub(crate) const SET_BILLS: &str = r"
for i, key in ipairs(KEYS) do
  local at = 2 + (i - 1) * 3
  local stored = redis.call('HGET', key, 'period')
  if (not stored) or stored <= ARGV[at] then
    redis.call('HSET', key, 'period', ARGV[at], 'period_l', ARGV[at + 1], 'bill_cents', ARGV[at + 2])
    redis.call('EXPIRE', key, ARGV[1])
  end
end
return 0
";

/// Applies one tenant's alert episode steps to `alerts:open` (HSET while open, HDEL
/// on cleared, in event order), then writes the absolute counts that depend on it:
/// `alerts_open` of each meter whose alerts changed (HMGET of its possible
/// `{meter}:{kind}` fields) and of the summary (HLEN). Doing it in one script keeps
/// the counts equal to the open set at every instant, in the same round trip.
///
/// The summary's other fields are written when the apply carries a summary;
/// otherwise only an existing summary's `alerts_open` is refreshed (no half summary
/// is created). The open set's TTL is renewed whenever it is non-empty, so it lives
/// as long as the tenant sends alert steps or summaries.
///
/// `KEYS[1]` `alerts:open`, `KEYS[2]` `summary`, `KEYS[3..]` meter hashes.
/// `ARGV[1..3]`: TTLs of alerts, meters, summary. `ARGV[4]`: `1` when a summary
/// follows in `ARGV[5..8]` (day, usage_today_l, meters_reporting, updated_at), else
/// `0`. `ARGV[9]`: number of steps, then (field, JSON or empty for cleared) pairs;
/// then one meter id per meter key; then every alert kind name.
pub(crate) const APPLY_ALERTS: &str = r"
local open, summary = KEYS[1], KEYS[2]
local at = 10
for _ = 1, tonumber(ARGV[9]) do
  if ARGV[at + 1] == '' then
    redis.call('HDEL', open, ARGV[at])
  else
    redis.call('HSET', open, ARGV[at], ARGV[at + 1])
  end
  at = at + 2
end
local meters = #KEYS - 2
local kinds_from = at + meters
for i = 1, meters do
  local meter = ARGV[at + i - 1]
  local names = {}
  for k = kinds_from, #ARGV do
    names[#names + 1] = meter .. ':' .. ARGV[k]
  end
  local count = 0
  for _, value in ipairs(redis.call('HMGET', open, unpack(names))) do
    if value then count = count + 1 end
  end
  redis.call('HSET', KEYS[i + 2], 'alerts_open', count)
  redis.call('EXPIRE', KEYS[i + 2], ARGV[2])
end
local alerts_open = redis.call('HLEN', open)
if ARGV[4] == '1' then
  redis.call('HSET', summary, 'day', ARGV[5], 'usage_today_l', ARGV[6],
    'meters_reporting', ARGV[7], 'updated_at', ARGV[8], 'alerts_open', alerts_open)
  redis.call('EXPIRE', summary, ARGV[3])
elseif redis.call('EXISTS', summary) == 1 then
  redis.call('HSET', summary, 'alerts_open', alerts_open)
end
if alerts_open > 0 then
  redis.call('EXPIRE', open, ARGV[1])
end
return alerts_open
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_cache::fields::{self, summary};

    /// The scripts spell field names literally; they must be the contract's.
    #[test]
    fn scripts_use_the_contract_field_names() {
        for name in [fields::PERIOD, fields::PERIOD_L, fields::BILL_CENTS] {
            assert!(SET_BILLS.contains(&format!("'{name}'")), "{name}");
        }
        for name in [
            fields::ALERTS_OPEN,
            summary::DAY,
            summary::USAGE_TODAY_L,
            summary::METERS_REPORTING,
            summary::UPDATED_AT,
            summary::ALERTS_OPEN,
        ] {
            assert!(APPLY_ALERTS.contains(&format!("'{name}'")), "{name}");
        }
    }
}
