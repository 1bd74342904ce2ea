//! Analytics vocabulary: district usage rows (per minute, hour and local day), top
//! consumers of a day, the mergeable sketch behind hourly-usage percentiles, and the
//! small per-meter state analytics keeps in `meter_state`. The rules live in
//! `meterflow-processors` (`analytics`).
//!
//! Every aggregate here is a *partial* that merges: a shard computes rows over its own
//! meters, and rows of the same (tenant, district, window) from different shards merge
//! into the district's row. Merging is associative and commutative (sums, integer
//! bucket counts, a top-N under a total order), so the order shards report in never
//! changes the result. Meters are partitioned by shard, so counts of meters add up.

use serde::{Deserialize, Serialize};

use crate::codec::binary::RecordError;

/// Relative accuracy of [`UsageSketch`] quantiles: bucket `i` holds values in
/// `(γ^(i-1), γ^i]` with γ = 1.02, so any value is within ±1 % of its bucket's
/// representative — finer than the litre resolution of household meters at the
/// volumes where percentiles matter.
pub const SKETCH_GAMMA: f64 = 1.02;

/// A log-bucketed quantile sketch in the style of DDSketch (Masson et al., VLDB
/// 2019) over non-negative integers: exact integer counts per logarithmic bucket,
/// stored sparsely. Merging adds counts, so it is exactly associative and
/// commutative, unlike sketches that carry floating-point sums.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageSketch {
    /// Values equal to zero (no bucket: log is undefined there).
    pub zeros: u64,
    /// `(bucket index, count)`, ascending by index, no zero counts.
    pub bins: Vec<(u16, u64)>,
}

impl UsageSketch {
    fn bucket_of(value: u64) -> u16 {
        // ln(u64::MAX) / ln(1.02) ≈ 2241, so every value has a u16 index.
        ((value as f64).ln() / SKETCH_GAMMA.ln()).ceil().max(0.0) as u16
    }

    /// The value a bucket stands for: the midpoint (in relative terms) of its range.
    fn representative(index: u16) -> u64 {
        (2.0 * SKETCH_GAMMA.powi(i32::from(index)) / (SKETCH_GAMMA + 1.0)).round() as u64
    }

    pub fn add(&mut self, value: u64) {
        if value == 0 {
            self.zeros += 1;
            return;
        }
        let index = Self::bucket_of(value);
        match self.bins.binary_search_by_key(&index, |(i, _)| *i) {
            Ok(at) => self.bins[at].1 += 1,
            Err(at) => self.bins.insert(at, (index, 1)),
        }
    }

    /// Takes one `value` out, if the sketch holds one in its bucket: the
    /// counterpart of [`add`](Self::add), for a meter's hour that a correction
    /// changed. Returns whether it did.
    pub fn remove(&mut self, value: u64) -> bool {
        if value == 0 {
            let held = self.zeros > 0;
            self.zeros -= u64::from(held);
            return held;
        }
        let index = Self::bucket_of(value);
        let Ok(at) = self.bins.binary_search_by_key(&index, |(i, _)| *i) else {
            return false;
        };
        self.bins[at].1 -= 1;
        if self.bins[at].1 == 0 {
            self.bins.remove(at);
        }
        true
    }

    /// Takes out every value `other` holds (bucket counts, saturating).
    pub fn subtract(&mut self, other: &UsageSketch) {
        self.zeros = self.zeros.saturating_sub(other.zeros);
        for (index, count) in &other.bins {
            if let Ok(at) = self.bins.binary_search_by_key(index, |(i, _)| *i) {
                self.bins[at].1 = self.bins[at].1.saturating_sub(*count);
            }
        }
        self.bins.retain(|(_, count)| *count > 0);
    }

    pub fn count(&self) -> u64 {
        self.zeros + self.bins.iter().map(|(_, c)| c).sum::<u64>()
    }

    pub fn merge(&mut self, other: &UsageSketch) {
        self.zeros += other.zeros;
        let mut merged = Vec::with_capacity(self.bins.len() + other.bins.len());
        let (mut a, mut b) = (self.bins.iter().peekable(), other.bins.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    let bin = (x.0, x.1 + y.1);
                    a.next();
                    b.next();
                    bin
                }
                (Some(x), Some(y)) if x.0 < y.0 => *a.next().expect("peeked"),
                (Some(_), Some(_)) | (None, Some(_)) => *b.next().expect("peeked"),
                (Some(_), None) => *a.next().expect("peeked"),
                (None, None) => break,
            };
            merged.push(next);
        }
        self.bins = merged;
    }

    /// The `q`-quantile (0.0..=1.0) within the sketch's relative accuracy, by
    /// nearest rank (the smallest value with at least `q` of the values at or below
    /// it); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        if rank <= self.zeros {
            return Some(0);
        }
        let mut seen = self.zeros;
        for (index, c) in &self.bins {
            seen += c;
            if rank <= seen {
                return Some(Self::representative(*index));
            }
        }
        self.bins.last().map(|(i, _)| Self::representative(*i))
    }
}

/// Width of a district usage window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Minute,
    /// A local hour of the tenant's time zone.
    Hour,
    /// A local calendar day of the tenant's time zone.
    Day,
}

/// Local hours of the minimum night flow window: 02:00–04:00, when almost nobody
/// uses water, so what still flows is mostly leakage.
pub const NIGHT_HOURS: [u8; 2] = [2, 3];

/// Usage of one district in one window (partial over a shard's meters, or merged).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DistrictUsage {
    pub tenant: String,
    pub district: String,
    pub resolution: Resolution,
    /// Window start, epoch ms.
    pub start_ms: i64,
    /// Litres used in the window: intervals of non-suspect reads ending in it.
    pub usage_l: u64,
    /// Meters with a non-suspect read ending in the window.
    pub meters: u64,
    /// Hour rows: per-meter usage of the hour (one value per meter that finished
    /// the hour). Empty for other resolutions.
    pub meter_hour_sketch: UsageSketch,
    /// Percentiles of per-meter hourly usage, litres, from the sketch (hour rows).
    pub p50_l: Option<u64>,
    pub p90_l: Option<u64>,
    pub p99_l: Option<u64>,
    /// Day rows: district usage in each [`NIGHT_HOURS`] hour, litres; `None` until
    /// a read ends in that hour.
    pub night_hour_l: [Option<u64>; 2],
    /// Day rows: minimum night flow, L/h — the lower of the night hours' usage.
    pub night_flow_lph: Option<u64>,
    /// Litres the district's bulk (inflow) meters measured in the window; `None`
    /// until a bulk meter's read ends in it. Never part of `usage_l`.
    pub inflow_l: Option<u64>,
    /// Day rows: inflow in each [`NIGHT_HOURS`] hour, litres; `None` until a bulk
    /// meter's read ends in that hour.
    pub inflow_night_hour_l: [Option<u64>; 2],
    /// Day rows: minimum night flow of the inflow, L/h — the lower of the night
    /// hours' inflow.
    pub inflow_night_flow_lph: Option<u64>,
    /// What a partial takes back beyond what it holds: a correction that a process
    /// makes to a window an earlier process counted the row in (before a restart).
    /// Merges add it; a total [`settle_taken`](Self::settle_taken)s it against what
    /// the partials hold, the earlier process's published row among them. Empty in
    /// every total; never stored or shown.
    #[serde(skip)]
    pub taken: TakenBack,
}

/// What a partial takes back beyond what it holds (see [`DistrictUsage::taken`]):
/// litres, meters reporting, and hour values out of the sketch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TakenBack {
    pub usage_l: u64,
    pub inflow_l: u64,
    pub night_hour_l: [u64; 2],
    pub inflow_night_hour_l: [u64; 2],
    pub meters: u64,
    pub sketch: UsageSketch,
}

/// `held` litres of a partial changed by `delta`: what it holds now, what it takes
/// back beyond that in `taken` (so that `held − taken` moves by exactly `delta`).
pub fn add_signed(held: u64, taken: &mut u64, delta: i64) -> u64 {
    let net = i128::from(held) - i128::from(*taken) + i128::from(delta);
    let clamp = |v: i128| u64::try_from(v).unwrap_or(u64::MAX);
    *taken = clamp((-net).max(0));
    clamp(net.max(0))
}

impl DistrictUsage {
    pub fn new(tenant: &str, district: &str, resolution: Resolution, start_ms: i64) -> Self {
        Self {
            tenant: tenant.to_string(),
            district: district.to_string(),
            resolution,
            start_ms,
            usage_l: 0,
            meters: 0,
            meter_hour_sketch: UsageSketch::default(),
            p50_l: None,
            p90_l: None,
            p99_l: None,
            night_hour_l: [None; 2],
            night_flow_lph: None,
            inflow_l: None,
            inflow_night_hour_l: [None; 2],
            inflow_night_flow_lph: None,
            taken: TakenBack::default(),
        }
    }

    /// Whether `other` describes the same district and window.
    pub fn same_window(&self, other: &DistrictUsage) -> bool {
        self.tenant == other.tenant
            && self.district == other.district
            && self.resolution == other.resolution
            && self.start_ms == other.start_ms
    }

    /// Adds a partial of the same window computed over other meters.
    pub fn merge(&mut self, other: &DistrictUsage) {
        debug_assert!(self.same_window(other));
        self.usage_l += other.usage_l;
        self.meters += other.meters;
        self.meter_hour_sketch.merge(&other.meter_hour_sketch);
        self.inflow_l = add_known(self.inflow_l, other.inflow_l);
        let night = self.night_hour_l.iter_mut().zip(other.night_hour_l);
        let inflow_night = self
            .inflow_night_hour_l
            .iter_mut()
            .zip(other.inflow_night_hour_l);
        for (mine, theirs) in night.chain(inflow_night) {
            *mine = add_known(*mine, theirs);
        }
        let (taken, theirs) = (&mut self.taken, &other.taken);
        taken.usage_l += theirs.usage_l;
        taken.inflow_l += theirs.inflow_l;
        taken.meters += theirs.meters;
        taken.sketch.merge(&theirs.sketch);
        for slot in 0..NIGHT_HOURS.len() {
            taken.night_hour_l[slot] += theirs.night_hour_l[slot];
            taken.inflow_night_hour_l[slot] += theirs.inflow_night_hour_l[slot];
        }
        self.refresh_derived();
    }

    /// Takes what the partials took back ([`taken`](Self::taken)) from what they
    /// hold: for a total over every partial of the window, the earlier processes'
    /// published row among them.
    pub fn settle_taken(&mut self) {
        let taken = std::mem::take(&mut self.taken);
        let less = |held: Option<u64>, taken: u64| held.map(|l| l.saturating_sub(taken));
        self.usage_l = self.usage_l.saturating_sub(taken.usage_l);
        self.meters = self.meters.saturating_sub(taken.meters);
        self.meter_hour_sketch.subtract(&taken.sketch);
        self.inflow_l = less(self.inflow_l, taken.inflow_l);
        for slot in 0..NIGHT_HOURS.len() {
            self.night_hour_l[slot] = less(self.night_hour_l[slot], taken.night_hour_l[slot]);
            self.inflow_night_hour_l[slot] = less(
                self.inflow_night_hour_l[slot],
                taken.inflow_night_hour_l[slot],
            );
        }
        self.refresh_derived();
    }

    /// Recomputes the percentiles and the night flow from the mergeable fields.
    pub fn refresh_derived(&mut self) {
        self.p50_l = self.meter_hour_sketch.quantile(0.50);
        self.p90_l = self.meter_hour_sketch.quantile(0.90);
        self.p99_l = self.meter_hour_sketch.quantile(0.99);
        self.night_flow_lph = self.night_hour_l.iter().flatten().copied().min();
        self.inflow_night_flow_lph = self.inflow_night_hour_l.iter().flatten().copied().min();
    }
}

/// The sum of two partial figures, unknown only when both are (saturating: no input
/// makes it panic).
pub fn add_known(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.saturating_add(b)),
        (a, b) => a.or(b),
    }
}

/// One meter in a top-consumers list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TopEntry {
    pub meter: String,
    pub usage_l: u64,
}

/// The biggest consumers of one tenant on one local day, largest first (ties by
/// meter id), at most `limit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopConsumers {
    pub tenant: String,
    /// Local calendar day, `yyyy-mm-dd`.
    pub day: String,
    /// Start of that day, epoch ms.
    pub day_start_ms: i64,
    pub limit: usize,
    pub entries: Vec<TopEntry>,
    /// Changes this process made to the day totals of meters whose totals it does
    /// not know (a late read moving litres of a past day): the rollup adds them to
    /// what an earlier run published of those meters. Never stored or shown.
    #[serde(skip)]
    pub changed: Vec<(String, i64)>,
}

impl TopConsumers {
    /// An empty list of `tenant`'s day.
    pub fn new(tenant: &str, day: String, day_start_ms: i64, limit: usize) -> Self {
        TopConsumers {
            tenant: tenant.to_string(),
            day,
            day_start_ms,
            limit,
            entries: Vec::new(),
            changed: Vec::new(),
        }
    }

    /// Notes that a meter's day total, not known here, changed by `delta`.
    pub fn change_unknown(&mut self, meter: &str, delta: i64) {
        match self.changed.iter_mut().find(|(m, _)| m == meter) {
            Some((_, sum)) => *sum = sum.saturating_add(delta),
            None => self.changed.push((meter.to_string(), delta)),
        }
    }

    /// Merges what an earlier run published of the day under this run's lists (its
    /// partials merged into `self`, with their changes): a meter this run lists
    /// with its whole day total (a meter's running day total is kept in its state)
    /// replaces the earlier figure; a meter whose total this run does not know gets
    /// its changes added to the earlier figure (and keeps this run's figure if that
    /// is greater); a meter only this run changed enters with what it added.
    pub fn merge_earlier(&mut self, earlier: Option<&TopConsumers>) {
        let earlier_usage = |meter: &str| {
            earlier
                .into_iter()
                .flat_map(|e| &e.entries)
                .find(|e| e.meter == meter)
                .map(|e| e.usage_l)
        };
        for (meter, delta) in &self.changed {
            let before = earlier_usage(meter);
            let total = before.unwrap_or(0).saturating_add_signed(*delta);
            match self.entries.iter_mut().find(|e| e.meter == *meter) {
                Some(mine) => mine.usage_l = mine.usage_l.max(total),
                None if total > 0 || before.is_some() => self.entries.push(TopEntry {
                    meter: meter.clone(),
                    usage_l: total,
                }),
                None => {}
            }
        }
        if let Some(earlier) = earlier {
            self.limit = self.limit.max(earlier.limit);
            for entry in &earlier.entries {
                if !self.entries.iter().any(|e| e.meter == entry.meter) {
                    self.entries.push(entry.clone());
                }
            }
        }
        self.sort_and_truncate();
    }

    /// Offers a meter's (growing) usage of the day. Exact for values that only grow:
    /// a meter pushed out can only come back by growing, and then it is offered again.
    pub fn offer(&mut self, meter: &str, usage_l: u64) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.meter == meter) {
            entry.usage_l = entry.usage_l.max(usage_l);
        } else if self.entries.len() < self.limit
            || self.entries.last().is_some_and(|l| usage_l > l.usage_l)
        {
            self.entries.push(TopEntry {
                meter: meter.to_string(),
                usage_l,
            });
        } else {
            return;
        }
        self.sort_and_truncate();
    }

    /// A listed meter's usage of the day changed by `delta` (a late read moved litres
    /// into or out of the day): its entry follows, and the list is re-ordered. False
    /// when the meter is not listed (its day total is not known here).
    pub fn correct(&mut self, meter: &str, delta: i64) -> bool {
        let Some(entry) = self.entries.iter_mut().find(|e| e.meter == meter) else {
            return false;
        };
        entry.usage_l = entry.usage_l.saturating_add_signed(delta);
        // A figure of what this run changed, not the meter's total: its changes too.
        if let Some((_, sum)) = self.changed.iter_mut().find(|(m, _)| m == meter) {
            *sum = sum.saturating_add(delta);
        }
        self.sort_and_truncate();
        true
    }

    /// Merges another partial of the same tenant and day (another shard's): the top
    /// of the union, and both one's changes.
    pub fn merge(&mut self, other: &TopConsumers) {
        self.limit = self.limit.max(other.limit);
        for (meter, delta) in &other.changed {
            self.change_unknown(meter, *delta);
        }
        for entry in &other.entries {
            match self.entries.iter_mut().find(|e| e.meter == entry.meter) {
                Some(mine) => mine.usage_l = mine.usage_l.max(entry.usage_l),
                None => self.entries.push(entry.clone()),
            }
        }
        self.sort_and_truncate();
    }

    fn sort_and_truncate(&mut self) {
        self.entries.sort_unstable_by(|a, b| {
            b.usage_l
                .cmp(&a.usage_l)
                .then_with(|| a.meter.cmp(&b.meter))
        });
        self.entries.truncate(self.limit);
    }
}

/// Per-meter analytics state: where the meter was last counted and its running
/// hour and day totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterAnalyticsState {
    /// Newest reading folded in; older ones (late, corrections) are not re-counted.
    pub last_ts: Option<i64>,
    /// Minute window the meter was last counted in as reporting.
    pub minute_start: i64,
    /// Local hour the running `hour_l` belongs to.
    pub hour_start: i64,
    /// Litres of the meter in `hour_start`'s hour so far.
    pub hour_l: u64,
    /// Local day the running `day_l` belongs to.
    pub day_start: i64,
    /// Litres of the meter on `day_start`'s day so far.
    pub day_l: u64,
    /// What the meter's counted rows add to each open window. Not persisted:
    /// rebuilt from the meter's rows when a shard hydrates it.
    #[serde(skip)]
    pub ledger: WindowLedger,
}

impl MeterAnalyticsState {
    /// A copy without the ledger: what is persisted.
    pub fn persisted(&self) -> MeterAnalyticsState {
        MeterAnalyticsState {
            ledger: WindowLedger::default(),
            ..*self
        }
    }
}

/// A meter's part of the district windows it was counted in by this process, so
/// that a row VEE re-decides later (a late read, a read turned suspect) can be
/// taken out of every figure it went into — litres, meters reporting, the hour's
/// sketch — and its replacement put in. Windows that began before `since` may
/// hold rows an earlier process counted; the ledger knows nothing of those.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowLedger {
    /// Windows starting at or after this are whole in the ledger: on hydration,
    /// VEE's settled point (the rows after it rebuild the ledger); for a state
    /// that was not hydrated, its `last_ts` at its first batch (`i64::MIN` for a
    /// meter that had counted nothing).
    pub since: Option<i64>,
    /// Per resolution (minute, hour, day), ascending by start: rows mostly come in
    /// time order, so an entry is mostly the last one or a new last one.
    lists: [Vec<LedgerEntry>; 3],
}

/// The meter's counted rows ending in one window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    pub start_ms: i64,
    /// Rows that count (not suspect, with an interval).
    pub rows: u32,
    pub litres: u64,
    /// Hour windows: the value this meter put in the hour's sketch, if any.
    pub sketched: Option<u64>,
}

impl WindowLedger {
    fn slot(resolution: Resolution) -> usize {
        match resolution {
            Resolution::Minute => 0,
            Resolution::Hour => 1,
            Resolution::Day => 2,
        }
    }

    /// The windows of one resolution, ascending by start.
    pub fn list(&self, resolution: Resolution) -> &[LedgerEntry] {
        &self.lists[Self::slot(resolution)]
    }

    pub fn list_mut(&mut self, resolution: Resolution) -> &mut Vec<LedgerEntry> {
        &mut self.lists[Self::slot(resolution)]
    }

    /// The entry of a window, made empty when there is none.
    pub fn entry(&mut self, resolution: Resolution, start_ms: i64) -> &mut LedgerEntry {
        let list = self.list_mut(resolution);
        let at = match list.last() {
            Some(last) if last.start_ms == start_ms => list.len() - 1,
            Some(last) if last.start_ms > start_ms => {
                match list.binary_search_by_key(&start_ms, |e| e.start_ms) {
                    Ok(at) => at,
                    Err(at) => {
                        list.insert(at, LedgerEntry::empty(start_ms));
                        at
                    }
                }
            }
            _ => {
                list.push(LedgerEntry::empty(start_ms));
                list.len() - 1
            }
        };
        &mut list[at]
    }

    /// One more counted row of `litres` ending in a window: whether it is the
    /// meter's first there.
    pub fn count(&mut self, resolution: Resolution, start_ms: i64, litres: u64) -> bool {
        let entry = self.entry(resolution, start_ms);
        entry.rows += 1;
        entry.litres += litres;
        entry.rows == 1
    }

    /// The newest hour the meter reports in.
    pub fn newest_reporting_hour(&self) -> Option<i64> {
        self.list(Resolution::Hour)
            .iter()
            .rev()
            .find(|e| e.rows > 0)
            .map(|e| e.start_ms)
    }

    /// Whether a list is at its capacity: the next new window would grow it, so
    /// it is time to drop what can change no more (pruning only then keeps its
    /// cost off most batches and the lists within twice what they must hold).
    pub fn is_full(&self) -> bool {
        self.lists.iter().any(|list| list.len() == list.capacity())
    }

    pub fn get(&self, resolution: Resolution, start_ms: i64) -> Option<&LedgerEntry> {
        let list = self.list(resolution);
        list.binary_search_by_key(&start_ms, |e| e.start_ms)
            .ok()
            .map(|at| &list[at])
    }
}

impl LedgerEntry {
    /// An hour's value for its sketch when the meter's newest reporting hour is
    /// `newest`: its litres once the meter reports in a later hour.
    pub fn sketch_value(&self, newest: Option<i64>) -> Option<u64> {
        let finished = newest.is_some_and(|n| self.start_ms < n);
        (self.rows > 0 && finished).then_some(self.litres)
    }

    fn empty(start_ms: i64) -> Self {
        Self {
            start_ms,
            rows: 0,
            litres: 0,
            sketched: None,
        }
    }
}

/// Reads district rows of record versions 1 to 3, which had no inflow.
impl crate::codec::binary::Record for DistrictUsage {
    fn decode_v1(body: &[u8]) -> Result<Self, RecordError> {
        crate::codec::binary::decode_body::<DistrictUsageV3>(body).map(DistrictUsageV3::upgrade)
    }

    fn decode_v2(body: &[u8]) -> Result<Self, RecordError> {
        Self::decode_v1(body)
    }

    fn decode_v3(body: &[u8]) -> Result<Self, RecordError> {
        Self::decode_v1(body)
    }
}

/// [`DistrictUsage`] as record versions 1 to 3 laid it out (bincode is positional):
/// without the inflow fields, which an upgraded row has unknown.
#[derive(Deserialize)]
struct DistrictUsageV3 {
    tenant: String,
    district: String,
    resolution: Resolution,
    start_ms: i64,
    usage_l: u64,
    meters: u64,
    meter_hour_sketch: UsageSketch,
    p50_l: Option<u64>,
    p90_l: Option<u64>,
    p99_l: Option<u64>,
    night_hour_l: [Option<u64>; 2],
    night_flow_lph: Option<u64>,
}

impl DistrictUsageV3 {
    fn upgrade(self) -> DistrictUsage {
        DistrictUsage {
            usage_l: self.usage_l,
            meters: self.meters,
            meter_hour_sketch: self.meter_hour_sketch,
            p50_l: self.p50_l,
            p90_l: self.p90_l,
            p99_l: self.p99_l,
            night_hour_l: self.night_hour_l,
            night_flow_lph: self.night_flow_lph,
            ..DistrictUsage::new(&self.tenant, &self.district, self.resolution, self.start_ms)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sketch_quantiles_are_within_one_percent() {
        let mut sketch = UsageSketch::default();
        (0..=1_000u64).for_each(|v| sketch.add(v * 10));
        for (q, exact) in [(0.5, 5_000.0), (0.9, 9_000.0), (0.99, 9_900.0)] {
            let got = sketch.quantile(q).unwrap() as f64;
            assert!(
                (got - exact).abs() <= exact * 0.011,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(sketch.quantile(0.0), Some(0));
    }

    fn day_row() -> DistrictUsage {
        let mut row = DistrictUsage::new("acme", "north", Resolution::Day, 1_736_899_200_000);
        row.usage_l = 1_850;
        row.meters = 2;
        row.meter_hour_sketch.add(40);
        row.night_hour_l = [Some(6), Some(4)];
        row.refresh_derived();
        row
    }

    /// A district row written before inflow existed (versions 1 to 3, its fields as
    /// a tuple: bincode's layout is positional) reads back with no inflow.
    #[test]
    fn district_rows_of_versions_1_to_3_read_without_inflow() {
        use crate::codec::binary::{decode_record, encode_record, encode_record_as};
        let row = day_row();
        let old = (
            &row.tenant,
            &row.district,
            row.resolution,
            row.start_ms,
            row.usage_l,
            row.meters,
            &row.meter_hour_sketch,
            row.p50_l,
            row.p90_l,
            row.p99_l,
            row.night_hour_l,
            row.night_flow_lph,
        );
        for version in 1..=3 {
            let back: DistrictUsage = decode_record(&encode_record_as(version, &old)).unwrap();
            assert_eq!(back, row, "version {version}");
        }
        let mut current = row.clone();
        current.inflow_l = Some(2_000);
        current.inflow_night_hour_l = [Some(130), Some(125)];
        current.refresh_derived();
        let back: DistrictUsage = decode_record(&encode_record(&current)).unwrap();
        assert_eq!(back, current);
        assert_eq!(back.inflow_night_flow_lph, Some(125));
    }

    #[test]
    fn merging_adds_inflow_and_unknown_stays_unknown() {
        let mut a = day_row();
        let mut b = day_row();
        a.merge(&b);
        assert_eq!((a.inflow_l, a.inflow_night_flow_lph), (None, None));
        b.inflow_l = Some(500);
        b.inflow_night_hour_l = [Some(20), None];
        a.merge(&b);
        assert_eq!(a.inflow_l, Some(500));
        assert_eq!(a.inflow_night_hour_l, [Some(20), None]);
        assert_eq!(a.inflow_night_flow_lph, Some(20));
        b.inflow_night_hour_l = [Some(1), Some(7)];
        a.merge(&b);
        assert_eq!(a.inflow_l, Some(1_000));
        assert_eq!(a.inflow_night_hour_l, [Some(21), Some(7)]);
        assert_eq!(a.inflow_night_flow_lph, Some(7));
        assert_eq!(a.usage_l, 4 * 1_850);
    }

    #[test]
    fn merging_sketches_adds_counts() {
        let (mut a, mut b, mut both) = (
            UsageSketch::default(),
            UsageSketch::default(),
            UsageSketch::default(),
        );
        for v in [0, 3, 40, 500] {
            a.add(v);
            both.add(v);
        }
        for v in [0, 40, 7_000] {
            b.add(v);
            both.add(v);
        }
        a.merge(&b);
        assert_eq!(a, both);
    }
}
