//! Reading meterflow's `/metrics`: a parser for the Prometheus text exposition format
//! (version 0.0.4) and the few queries the harness needs — a counter's total, a
//! gauge's sum or maximum over its label sets, and quantiles of a histogram's change
//! between two scrapes.
//!
//! Quantiles follow PromQL's `histogram_quantile`: find the bucket the rank falls in
//! and interpolate linearly inside it. They are only as fine as meterflow's buckets
//! (1 ms … 10 s, roughly ×2.5 apart), which is why the harness reports them as the
//! *service-side* view next to the simulator's exact HDR percentiles.

use std::fmt;

/// One sample line: `name{label="value",…} value [timestamp]`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) value: f64,
}

/// A parse failure, with the offending line number (1-based).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PromError {
    pub(crate) line: usize,
    pub(crate) reason: &'static str,
}

impl fmt::Display for PromError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "metrics line {}: {} (is the address a Prometheus endpoint?)",
            self.line, self.reason
        )
    }
}

impl std::error::Error for PromError {}

/// Every sample of one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Scrape {
    pub(crate) samples: Vec<Sample>,
}

/// A cumulative histogram: `(upper bound, observations ≤ bound)`, ascending, ending
/// with `+Inf`.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Histogram {
    pub(crate) buckets: Vec<(f64, f64)>,
    pub(crate) sum: f64,
    pub(crate) count: f64,
}

impl Scrape {
    pub(crate) fn parse(text: &str) -> Result<Scrape, PromError> {
        let mut samples = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(parse_line(line).map_err(|reason| PromError {
                line: index + 1,
                reason,
            })?);
        }
        Ok(Scrape { samples })
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
    }

    /// Sum over every sample of `name` carrying all of `labels` (0 when none).
    pub(crate) fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The histogram `name` (its `_bucket`, `_sum` and `_count` series), `None` when
    /// the scrape has no buckets for it (metrics-exporter-prometheus omits a
    /// histogram until its first observation).
    pub(crate) fn histogram(&self, name: &str) -> Option<Histogram> {
        let bucket_name = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = self
            .matching(&bucket_name, &[])
            .filter_map(|s| {
                let le = s.labels.iter().find(|(k, _)| k == "le")?;
                Some((parse_value(&le.1)?, s.value))
            })
            .collect();
        if buckets.is_empty() {
            return None;
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let count = self.sum(&format!("{name}_count"), &[]);
        if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
            // The exporter may leave out +Inf; `_count` is the same number.
            buckets.push((f64::INFINITY, count));
        }
        Some(Histogram {
            buckets,
            sum: self.sum(&format!("{name}_sum"), &[]),
            count,
        })
    }
}

impl Histogram {
    /// What was observed between `before` and `self` (a later scrape of the same
    /// histogram). A missing `before` (no observation yet) counts as empty.
    pub(crate) fn since(&self, before: Option<&Histogram>) -> Histogram {
        let Some(before) = before else {
            return self.clone();
        };
        let earlier = |le: f64| {
            before
                .buckets
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, c)| *c)
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, c)| (le, (c - earlier(le)).max(0.0)))
                .collect(),
            sum: self.sum - before.sum,
            count: (self.count - before.count).max(0.0),
        }
    }

    /// The `q` quantile (0..=1) with linear interpolation inside the bucket, as
    /// PromQL's `histogram_quantile`; `None` with no observations. A rank in the
    /// `+Inf` bucket reports the highest finite bound.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let mut lower_bound = 0.0;
        let mut lower_count = 0.0;
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le == f64::INFINITY {
                    return Some(lower_bound);
                }
                let in_bucket = count - lower_count;
                if in_bucket <= 0.0 {
                    return Some(le);
                }
                return Some(lower_bound + (le - lower_bound) * (rank - lower_count) / in_bucket);
            }
            lower_bound = le;
            lower_count = count;
        }
        Some(lower_bound)
    }

    /// Mean observation, `None` with none.
    pub(crate) fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("no metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, remaining) = parse_labels(after_brace)?;
        labels = parsed;
        rest = remaining;
    }
    let value = rest.split_ascii_whitespace().next().ok_or("no value")?;
    let value = parse_value(value).ok_or("value is not a number")?;
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A sample's label pairs, in exposition order.
type Labels = Vec<(String, String)>;

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the `}`.
fn parse_labels(mut text: &str) -> Result<(Labels, &str), &'static str> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([' ', ',']);
        if let Some(rest) = text.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = text.find('=').ok_or("label without '='")?;
        let key = text[..eq].trim().to_owned();
        let mut chars = text[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err("label value not quoted");
        }
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => return Err("dangling escape"),
                },
                '"' => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                other => value.push(other),
            }
        }
        let end = end.ok_or("unterminated label value")?;
        labels.push((key, value));
        text = &text[end..];
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP meterflow_messages_total Uplink messages by outcome.
# TYPE meterflow_messages_total counter
meterflow_messages_total{outcome="duplicate"} 3
meterflow_messages_total{outcome="stored"} 120000
meterflow_broker_skipped_total 0

meterflow_shard_queue_depth{shard="1"} 17
meterflow_shard_queue_depth{shard="0"} 250
odd_labels{path="a\"b\\c",empty=""} 1.5e3 1700000000000
meterflow_publish_to_durable_seconds_bucket{le="0.01"} 10
meterflow_publish_to_durable_seconds_bucket{le="0.025"} 60
meterflow_publish_to_durable_seconds_bucket{le="0.05"} 90
meterflow_publish_to_durable_seconds_bucket{le="0.1"} 100
meterflow_publish_to_durable_seconds_bucket{le="+Inf"} 100
meterflow_publish_to_durable_seconds_sum 2.5
meterflow_publish_to_durable_seconds_count 100
"#;

    #[test]
    fn parses_counters_gauges_and_labels() {
        let scrape = Scrape::parse(TEXT).unwrap();
        assert_eq!(
            scrape.sum("meterflow_messages_total", &[("outcome", "stored")]),
            120_000.0
        );
        assert_eq!(scrape.sum("meterflow_messages_total", &[]), 120_003.0);
        assert_eq!(scrape.sum("meterflow_broker_skipped_total", &[]), 0.0);
        assert_eq!(scrape.sum("meterflow_shard_queue_depth", &[]), 267.0);
        assert_eq!(
            scrape.sum("meterflow_shard_queue_depth", &[("shard", "0")]),
            250.0
        );
        assert_eq!(scrape.sum("absent", &[]), 0.0);
        let odd = scrape
            .samples
            .iter()
            .find(|s| s.name == "odd_labels")
            .unwrap();
        assert_eq!(
            odd.labels,
            vec![
                ("path".to_owned(), "a\"b\\c".to_owned()),
                ("empty".to_owned(), String::new())
            ]
        );
        assert_eq!(odd.value, 1500.0);
    }

    #[test]
    fn rejects_garbage_with_the_line_number() {
        let error = Scrape::parse("ok 1\n<html>\n").unwrap_err();
        assert_eq!(error.line, 2);
        assert!(Scrape::parse("x{a=\"b} 1").is_err());
        assert!(Scrape::parse("x{a=b} 1").is_err());
        assert!(Scrape::parse("x one").is_err());
    }

    #[test]
    fn histogram_quantiles_interpolate_like_promql() {
        let scrape = Scrape::parse(TEXT).unwrap();
        let h = scrape
            .histogram("meterflow_publish_to_durable_seconds")
            .unwrap();
        assert_eq!(h.count, 100.0);
        // Rank 50 falls in (0.01, 0.025] holding 50 observations from 10 to 60.
        let p50 = h.quantile(0.5).unwrap();
        assert!((p50 - (0.01 + 0.015 * 40.0 / 50.0)).abs() < 1e-12, "{p50}");
        // Rank 99 in (0.05, 0.1] holding 10 from 90 to 100.
        let p99 = h.quantile(0.99).unwrap();
        assert!((p99 - (0.05 + 0.05 * 9.0 / 10.0)).abs() < 1e-12, "{p99}");
        assert_eq!(h.mean(), Some(0.025));
        assert!(scrape.histogram("absent").is_none());
    }

    #[test]
    fn histogram_difference_and_overflow_bucket() {
        let before = Histogram {
            buckets: vec![(0.1, 5.0), (1.0, 5.0), (f64::INFINITY, 5.0)],
            sum: 0.2,
            count: 5.0,
        };
        let after = Histogram {
            buckets: vec![(0.1, 5.0), (1.0, 8.0), (f64::INFINITY, 15.0)],
            sum: 20.0,
            count: 15.0,
        };
        let delta = after.since(Some(&before));
        assert_eq!(
            delta.buckets,
            vec![(0.1, 0.0), (1.0, 3.0), (f64::INFINITY, 10.0)]
        );
        assert_eq!(delta.count, 10.0);
        // Rank 9 of 10 is past every finite bound: the highest finite bound.
        assert_eq!(delta.quantile(0.9), Some(1.0));
        assert_eq!(after.since(None), after);
        let empty = before.since(Some(&before));
        assert_eq!(empty.quantile(0.5), None);
        assert_eq!(empty.mean(), None);
    }
}
