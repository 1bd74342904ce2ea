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
        for (mine, theirs) in self.night_hour_l.iter_mut().zip(other.night_hour_l) {
            *mine = match (*mine, theirs) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            };
        }
        self.refresh_derived();
    }

    /// Recomputes the percentiles and the night flow from the mergeable fields.
    pub fn refresh_derived(&mut self) {
        self.p50_l = self.meter_hour_sketch.quantile(0.50);
        self.p90_l = self.meter_hour_sketch.quantile(0.90);
        self.p99_l = self.meter_hour_sketch.quantile(0.99);
        self.night_flow_lph = self.night_hour_l.iter().flatten().copied().min();
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
}

impl TopConsumers {
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

    /// Merges another partial of the same tenant and day: the top of the union.
    pub fn merge(&mut self, other: &TopConsumers) {
        self.limit = self.limit.max(other.limit);
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
}

impl crate::codec::binary::Record for DistrictUsage {}

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
