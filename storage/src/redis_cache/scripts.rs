//! The Lua scripts of the Redis cache: five `apply` sends, for the writes a plain
//! pipeline cannot make both absolute and safe, and one read ([`PAGE_METERS`]) that
//! filters the meter index on the server. Each touches keys of one tenant only, all
//! declared in `KEYS` and sharing the tenant's hash tag, so they run on Redis Cluster
//! too.
//!
//! They are sent with `EVAL` (inside the apply pipeline: still one round trip).
//! Redis caches a script's compiled form by its SHA1, so re-sending the ~1 KB text
//! costs little and, unlike `EVALSHA`, cannot fail with `NOSCRIPT` after a Redis
//! restart or failover, nor on a cluster node that has not run it yet (each node
//! has its own script cache; redis-rs routes an `EVAL` by its first key). A script
//! runs atomically: no reader sees half of it.
//!
//! The scripts that write a meter's hash, its index entries, its bill fields or its
//! alert steps first check the hash's `version` ([`APPLY_VIEWS`]): the cache keeps
//! what the meter's state of the greatest version made, so a stalled former owner's
//! late apply (distributed mode) replaces nothing newer.
//!
//! Needs Redis 6.2 or later (`ZADD … GT`); [`INDEX_METERS`] reads the server clock
//! (`TIME`) after writing, which Redis allows since scripts replicate their effects
//! (the default from 5.0, the only mode from 7.0).

/// The Lua function the version-gated scripts share: whether the meter hash `key`
/// holds a view of a greater version than `version` (a decimal string; empty or
/// `0`: unknown, never stale). Versions are µs-scale integers below 2^53, exact in
/// Lua's numbers.
macro_rules! stale_fn {
    () => {
        r"
local function stale(key, version)
  if version == '' or version == '0' then return false end
  local held = redis.call('HGET', key, 'version')
  return held ~= false and tonumber(held) > tonumber(version)
end
"
    };
}

/// Writes meter views, each unless its hash holds a view of a greater version: per
/// view `HSET` of its set fields and its `version`, `HDEL` of its absent ones,
/// `EXPIRE`. One call takes many views of one tenant, so the script text travels
/// once per chunk, not once per view.
///
/// `KEYS[i]`: the meter hash of view i. `ARGV[1]`: TTL, seconds. Then per view: its
/// version (`0`: unknown, written unconditionally and not recorded), the number n of
/// fields set, the number d of fields deleted, n (field, value) pairs, d fields.
pub(crate) const APPLY_VIEWS: &str = concat!(
    stale_fn!(),
    r"
local at, written = 2, 0
for _, key in ipairs(KEYS) do
  local version, n, d = ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local fields = at + 3
  at = fields + 2 * n + d
  if not stale(key, version) then
    redis.call('HSET', key, unpack(ARGV, fields, fields + 2 * n - 1))
    if version ~= '0' then
      redis.call('HSET', key, 'version', version)
    end
    if d > 0 then
      redis.call('HDEL', key, unpack(ARGV, fields + 2 * n, at - 1))
    end
    redis.call('EXPIRE', key, ARGV[1])
    written = written + 1
  end
end
return written
"
);

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
/// period. Periods are `yyyy-mm`, so string order is time order. Nor when the hash
/// holds a view of a greater version than the bill's meter state.
///
/// `KEYS[i]`: meter hashes of one tenant. `ARGV[1]`: TTL, seconds. Then per key:
/// period, period_l, bill_cents, version (empty: unknown).
pub(crate) const SET_BILLS: &str = concat!(
    stale_fn!(),
    r"
for i, key in ipairs(KEYS) do
  local at = 2 + (i - 1) * 4
  local stored = redis.call('HGET', key, 'period')
  if ((not stored) or stored <= ARGV[at]) and not stale(key, ARGV[at + 3]) then
    redis.call('HSET', key, 'period', ARGV[at], 'period_l', ARGV[at + 1], 'bill_cents', ARGV[at + 2])
    redis.call('EXPIRE', key, ARGV[1])
  end
end
return 0
"
);

/// Applies one tenant's alert episode steps: each is appended to the tenant's alert
/// stream (`XADD … MAXLEN ~`) and applied to `alerts:open` (HSET while open, HDEL on
/// cleared or withdrawn, in event order); then the script writes the absolute counts
/// that depend on it: `alerts_open` of each meter whose alerts changed (HMGET of its
/// possible `{meter}:{kind}` fields) and of the summary (HLEN). Doing it in one
/// script keeps the counts equal to the open set at every instant, in the same round
/// trip.
///
/// The summary's other fields are written when the apply carries a summary;
/// otherwise only an existing summary's `alerts_open` is refreshed (no half summary
/// is created). The open set's TTL is renewed whenever it is non-empty, so it lives
/// as long as the tenant sends alert steps or summaries; the stream's whenever a
/// step is appended.
///
/// `KEYS[1]` `alerts:open`, `KEYS[2]` `summary`, `KEYS[3]` the alert stream,
/// `KEYS[4..]` meter hashes. `ARGV[1..3]`: TTLs of alerts, meters, summary.
/// `ARGV[4]`: `1` when a summary follows in `ARGV[5..8]` (day, usage_today_l,
/// meters_reporting, updated_at), else `0`. `ARGV[9]`: the stream's approximate
/// maximum length. `ARGV[10]`: number of steps, then per step 20 values: field,
/// opened_at, JSON (empty when no longer open), position of the step's meter among
/// the meter keys, then the stream entry's [`ENTRY_FIELDS`] (name, value) pairs; then one meter id per meter key; then one version per meter key (empty:
/// unknown); then every alert kind name. The steps of a meter whose hash holds a
/// view of a greater version are skipped, in the open set and the stream (see the
/// module doc).
///
/// A field holds one episode per (meter, kind), and a step only touches its own:
/// a closing step deletes the field only while it holds the step's episode
/// (`opened_at`), and an open step does not replace a later-opened episode. So when
/// alerting folds a meter's window again and emits an earlier episode's steps
/// after a later one's (each is the latest word on its own episode), the field
/// ends holding the episode that is open.
pub(crate) const APPLY_ALERTS: &str = concat!(
    stale_fn!(),
    r"
local open, summary, stream = KEYS[1], KEYS[2], KEYS[3]
local meters = #KEYS - 3
local steps = tonumber(ARGV[10])
local versions_from = 11 + 20 * steps + meters
local at, appended = 11, 0
for _ = 1, steps do
  local field, opened, value = ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 2]
  local meter = tonumber(ARGV[at + 3])
  if not stale(KEYS[3 + meter], ARGV[versions_from + meter - 1]) then
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[9], '*', unpack(ARGV, at + 4, at + 19))
    appended = appended + 1
    local current = redis.call('HGET', open, field)
    local holds = current and cjson.decode(current)['opened_at']
    if value == '' then
      if holds == opened then
        redis.call('HDEL', open, field)
      end
    elseif (not holds) or holds <= opened then
      redis.call('HSET', open, field, value)
    end
  end
  at = at + 20
end
if appended > 0 then
  redis.call('EXPIRE', stream, ARGV[1])
end
local kinds_from = versions_from + meters
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
  redis.call('HSET', KEYS[i + 3], 'alerts_open', count)
  redis.call('EXPIRE', KEYS[i + 3], ARGV[2])
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
"
);

/// Stream entry fields of one alert step (`codec::alert_entry`): [`APPLY_ALERTS`]
/// takes 4 + 2 × this = 20 values per step.
pub(crate) const ENTRY_FIELDS: usize = 8;

/// Keeps a tenant's meter index in step with the meter views of one apply, then
/// trims meters whose view was not written for the meter TTL — the hashes that have
/// expired (or are about to) — so the index never outgrows the live meters.
///
/// Per view: the meter joins `meters` (lex), `meters:by_district` as
/// `{district}:{meter}` (leaving its old district's member when it moved: the old
/// district is in the `meters:district` hash), `meters:last_ts` scored by its newest
/// reading (`-inf` without one, so a silent-meter range from `-inf` finds it) and
/// `meters:seen` scored by the server clock now. Then at most `ARGV[3]` members of
/// `meters:seen` older than now − TTL leave all five keys (the rest at later
/// applies), and every key's TTL is renewed: an index lives as long as views arrive.
///
/// A view whose meter hash holds a greater version (skipped by [`APPLY_VIEWS`])
/// leaves the index alone.
///
/// `KEYS`: `meters`, `meters:by_district`, `meters:last_ts`, `meters:seen`,
/// `meters:district`, then the meter hash of each view. `ARGV[1]`: TTL, seconds;
/// `ARGV[2]`: the same in ms; `ARGV[3]`: trim limit; then per view: meter,
/// district, last_ts (empty: none), version (empty: unknown).
pub(crate) const INDEX_METERS: &str = concat!(
    stale_fn!(),
    r"
local all, by_district, last_ts, seen, district_of =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local now_ms = string.format('%.0f', now)
for i = 4, #ARGV, 4 do
  local meter, district, ts = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if not stale(KEYS[6 + (i - 4) / 4], ARGV[i + 3]) then
    local old = redis.call('HGET', district_of, meter)
    if old and old ~= district then
      redis.call('ZREM', by_district, old .. ':' .. meter)
    end
    redis.call('HSET', district_of, meter, district)
    redis.call('ZADD', by_district, 0, district .. ':' .. meter)
    redis.call('ZADD', all, 0, meter)
    if ts == '' then ts = '-inf' end
    redis.call('ZADD', last_ts, ts, meter)
    redis.call('ZADD', seen, now_ms, meter)
  end
end
local cutoff = string.format('%.0f', now - tonumber(ARGV[2]))
local expired = redis.call('ZRANGEBYSCORE', seen, '-inf', '(' .. cutoff, 'LIMIT', 0, ARGV[3])
for _, meter in ipairs(expired) do
  local district = redis.call('HGET', district_of, meter)
  if district then
    redis.call('ZREM', by_district, district .. ':' .. meter)
  end
  redis.call('HDEL', district_of, meter)
  redis.call('ZREM', all, meter)
  redis.call('ZREM', last_ts, meter)
  redis.call('ZREM', seen, meter)
end
for k = 1, 5 do
  redis.call('EXPIRE', KEYS[k], ARGV[1])
end
return #expired
"
);

/// Writes a district's points of one resolution into its series ZSET so that one
/// `ZRANGEBYSCORE` returns a chart: per point, `ZREMRANGEBYSCORE start start` then
/// `ZADD start member` — a rewritten window (late data) *replaces* its point, never
/// adds a second one (members differ when values do, so `ZADD` alone would keep
/// both). Then the series is cut to the span its window hashes live (windows
/// starting after newest − span are kept, by window time, so replays of old data
/// trim the same way) and its TTL renewed; the district's entry in `districts`
/// rises to the series' newest start (`GT`), entries older than the newest district
/// by the day span are dropped, and that key's TTL is renewed too.
///
/// `KEYS[1]`: the series, `KEYS[2]`: `districts`. `ARGV[1]`: series TTL, seconds;
/// `ARGV[2]`: series span, ms; `ARGV[3]`: the district id; `ARGV[4]`: `districts`
/// TTL, seconds; `ARGV[5]`: `districts` span, ms; then (start_ms, member) pairs in
/// write order (a later pair of the same window wins).
pub(crate) const PUT_SERIES: &str = r"
local series, districts = KEYS[1], KEYS[2]
for i = 6, #ARGV, 2 do
  redis.call('ZREMRANGEBYSCORE', series, ARGV[i], ARGV[i])
  redis.call('ZADD', series, ARGV[i], ARGV[i + 1])
end
local newest = redis.call('ZRANGE', series, -1, -1, 'WITHSCORES')[2]
if newest then
  local cutoff = tonumber(newest) - tonumber(ARGV[2])
  redis.call('ZREMRANGEBYSCORE', series, '-inf', string.format('%.0f', cutoff))
  redis.call('EXPIRE', series, ARGV[1])
  redis.call('ZADD', districts, 'GT', newest, ARGV[3])
  local top = redis.call('ZRANGE', districts, -1, -1, 'WITHSCORES')[2]
  local oldest = tonumber(top) - tonumber(ARGV[5])
  redis.call('ZREMRANGEBYSCORE', districts, '-inf', string.format('%.0f', oldest))
  redis.call('EXPIRE', districts, ARGV[4])
end
return 0
";

/// Walks a lexicographic meter index from a bound and returns the meters that pass
/// the filters, examining at most a budget of members so that one call holds Redis
/// for a bounded time; the caller continues from the returned cursor.
///
/// `KEYS[1]`: the index walked — `meters`, or `meters:by_district` for a district
/// filter; `KEYS[2]`: `meters:last_ts`. `ARGV[1]`, `ARGV[2]`: `ZRANGEBYLEX` min and
/// max; `ARGV[3]`: bytes to strip from each member to get the meter id (the
/// `{district}:` prefix); `ARGV[4]`: text the id must contain (empty: any);
/// `ARGV[5]`: only meters whose `last_ts` is below this (empty: any; no reading
/// counts as silent); `ARGV[6]`: matches wanted; `ARGV[7]`: budget of members.
///
/// Returns `{exhausted, cursor, id…}`, all strings: `exhausted` is `1` when the range
/// has no member past the cursor, else `0`; `cursor` is the last member examined (the next call's min is
/// `(` + cursor), empty when none was.
pub(crate) const PAGE_METERS: &str = r"
local index, last_ts = KEYS[1], KEYS[2]
local min, max, strip = ARGV[1], ARGV[2], tonumber(ARGV[3])
local search = ARGV[4]
local before = nil
if ARGV[5] ~= '' then before = tonumber(ARGV[5]) end
local wanted, budget = tonumber(ARGV[6]), tonumber(ARGV[7])
local found = {}
local examined = 0
local cursor = ''
local exhausted = 0
while #found < wanted and examined < budget do
  local asked = math.min(budget - examined, 1000)
  local members = redis.call('ZRANGEBYLEX', index, min, max, 'LIMIT', 0, asked)
  local stopped = false
  for _, member in ipairs(members) do
    examined = examined + 1
    cursor = member
    local id = string.sub(member, strip + 1)
    local pass = search == '' or string.find(id, search, 1, true) ~= nil
    if pass and before then
      local score = redis.call('ZSCORE', last_ts, id)
      pass = (not score) or tonumber(score) < before
    end
    if pass then
      found[#found + 1] = id
      if #found == wanted then
        stopped = true
        break
      end
    end
  end
  if not stopped and #members < asked then
    exhausted = 1
    break
  end
  min = '(' .. cursor
end
local reply = {tostring(exhausted), cursor}
for _, id in ipairs(found) do
  reply[#reply + 1] = id
end
return reply
";

/// Round one of a shared aggregate (`shares.rs`): per key of `KEYS` (a target's
/// `…:shares` hash), the contributor's share in its field, the version `#v` raised
/// by one and the TTL renewed; then the whole hash back. Atomic, so the shares a
/// reply holds are exactly those written up to its version.
///
/// `ARGV[1]`: the contributor; then per key: TTL, seconds, and the share (JSON).
/// Returns per key the hash as `HGETALL` gives it (`#v`, `#w` and one field per
/// contributor).
pub(crate) const PUT_SHARES: &str = r"
local replies = {}
for i, key in ipairs(KEYS) do
  redis.call('HSET', key, ARGV[1], ARGV[2 * i + 1])
  redis.call('HINCRBY', key, '#v', 1)
  redis.call('EXPIRE', key, ARGV[2 * i])
  replies[i] = redis.call('HGETALL', key)
end
return replies
";

/// Round two of a shared aggregate: runs the commands that write a target's total
/// unless a total of the same or a higher version was written (`#w` of its shares
/// hash), and records this one's. So the total read last is the one that stays,
/// whatever order the writes land in.
///
/// `KEYS[1]`: the shares hash; the other keys: those the commands write (all of one
/// tenant, one slot). `ARGV[1]`: the version the total was merged at; then per
/// command its number of words and the words (`HSET key field value…`).
/// Returns 1 when written, 0 when a newer total was there.
pub(crate) const GATED: &str = r"
local version = tonumber(ARGV[1])
local written = tonumber(redis.call('HGET', KEYS[1], '#w') or '0')
if written >= version then
  return 0
end
redis.call('HSET', KEYS[1], '#w', ARGV[1])
local at = 2
while at <= #ARGV do
  local words = tonumber(ARGV[at])
  redis.call(unpack(ARGV, at + 1, at + words))
  at = at + words + 1
end
return 1
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
