//! The sweep plot as a hand-written SVG (no plotting dependency): two panels over
//! the offered open-loop rate (log axis) — achieved throughput (with the `y = x`
//! line a service that keeps up sits on) and ack p99 (log axis) — one polyline per
//! system. Filled markers are sustainable steps, hollow ones are not.
//!
//! Pure: data in, SVG text out; the axis helpers are unit-tested.

use std::fmt::Write as _;

/// One system's sweep.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Series {
    pub(crate) name: String,
    /// CSS colour of the line and markers.
    pub(crate) color: &'static str,
    pub(crate) points: Vec<Point>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Point {
    pub(crate) offered: f64,
    pub(crate) achieved: f64,
    pub(crate) p99_ms: f64,
    pub(crate) sustainable: bool,
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 450.0;
const PANEL_W: f64 = 390.0;
const PANEL_H: f64 = 300.0;
const TOP: f64 = 60.0;
const LEFT: [f64; 2] = [80.0, 560.0];

/// Round tick values covering `[min, max]` with steps of 1, 2 or 5 × 10^k, about
/// `target` of them.
pub(crate) fn nice_ticks(min: f64, max: f64, target: usize) -> Vec<f64> {
    if !(min.is_finite() && max.is_finite()) || max <= min {
        return vec![min];
    }
    let raw = (max - min) / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (min / step).floor() * step;
    let mut ticks = Vec::new();
    let mut value = first;
    while value <= max + step * 0.5 {
        ticks.push(value);
        value += step;
    }
    ticks
}

/// 1, 2, 5 × 10^k values spanning `[min, max]` (positive), for a log axis.
pub(crate) fn log_ticks(min: f64, max: f64) -> Vec<f64> {
    if min <= 0.0 || max <= min {
        return vec![min.max(f64::MIN_POSITIVE)];
    }
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(min.log10().floor());
    while decade <= max {
        for m in [1.0, 2.0, 5.0] {
            let value = m * decade;
            if value >= min * 0.999 && value <= max * 1.001 {
                ticks.push(value);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// `12500` → `12.5k`, `2000000` → `2M`, `0.5` → `0.5`.
pub(crate) fn short_number(value: f64) -> String {
    let (scaled, suffix) = if value.abs() >= 1e6 {
        (value / 1e6, "M")
    } else if value.abs() >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    // Whole numbers and three-digit ones need no decimal.
    let text = if scaled.fract().abs() < 1e-9 || scaled.abs() >= 100.0 {
        format!("{scaled:.0}")
    } else {
        format!("{scaled:.1}")
    };
    format!("{text}{suffix}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A mapping from data to pixels along one axis.
#[derive(Clone, Copy)]
struct Axis {
    min: f64,
    max: f64,
    log: bool,
    /// Pixel of `min` and of `max`.
    from: f64,
    to: f64,
}

impl Axis {
    fn px(&self, value: f64) -> f64 {
        let (v, lo, hi) = if self.log {
            (
                value.max(self.min).log10(),
                self.min.log10(),
                self.max.log10(),
            )
        } else {
            (value, self.min, self.max)
        };
        let f = if hi > lo { (v - lo) / (hi - lo) } else { 0.0 };
        self.from + f.clamp(-0.05, 1.05) * (self.to - self.from)
    }
}

/// Renders the two-panel plot.
pub(crate) fn plot(title: &str, subtitle: &str, series: &[Series]) -> String {
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x_min, mut x_max, mut y_max, mut p_min, mut p_max) =
        (f64::MAX, 0.0f64, 0.0f64, f64::MAX, 0.0f64);
    for p in points {
        x_min = x_min.min(p.offered);
        x_max = x_max.max(p.offered);
        y_max = y_max.max(p.achieved).max(p.offered);
        if p.p99_ms > 0.0 {
            p_min = p_min.min(p.p99_ms);
            p_max = p_max.max(p.p99_ms);
        }
    }
    if x_max <= 0.0 {
        (x_min, x_max, y_max) = (1.0, 10.0, 10.0);
    }
    if p_max <= 0.0 {
        (p_min, p_max) = (1.0, 1000.0);
    }
    // Round the log ranges out to whole 1-2-5 steps, and keep 1 s in view: it is
    // the sustainability threshold drawn on the latency panel.
    let x_axis = |left: f64| Axis {
        min: x_min / 1.2,
        max: x_max * 1.2,
        log: true,
        from: left,
        to: left + PANEL_W,
    };
    let y_ticks = nice_ticks(0.0, y_max * 1.05, 5);
    let y_axis = Axis {
        min: 0.0,
        max: *y_ticks.last().unwrap_or(&1.0),
        log: false,
        from: TOP + PANEL_H,
        to: TOP,
    };
    let p_axis = Axis {
        min: (p_min.min(1000.0) / 2.0).max(0.01),
        max: p_max.max(1000.0) * 2.0,
        log: true,
        from: TOP + PANEL_H,
        to: TOP,
    };

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" font-size="16" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="40" text-anchor="middle" fill="#555">{}</text>"##,
        WIDTH / 2.0,
        escape(subtitle)
    );

    for (panel, left) in LEFT.iter().enumerate() {
        let x = x_axis(*left);
        let y = if panel == 0 { y_axis } else { p_axis };
        // Frame and grid.
        let _ = writeln!(
            svg,
            r##"<rect x="{left}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#333"/>"##
        );
        for tick in log_ticks(x.min, x.max) {
            let px = x.px(tick);
            let _ = writeln!(
                svg,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + PANEL_H,
                TOP + PANEL_H + 16.0,
                short_number(tick)
            );
        }
        let y_ticks = if panel == 0 {
            nice_ticks(y.min, y.max, 5)
        } else {
            log_ticks(y.min, y.max)
        };
        for tick in y_ticks {
            let py = y.px(tick);
            let label = if panel == 0 {
                short_number(tick)
            } else if tick >= 1000.0 {
                format!("{} s", short_number(tick / 1000.0))
            } else {
                format!("{} ms", short_number(tick))
            };
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
                left + PANEL_W,
                left - 6.0,
                py + 4.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">offered rate (msgs/s, log)</text>"#,
            left + PANEL_W / 2.0,
            TOP + PANEL_H + 36.0
        );
        let (label, reference) = if panel == 0 {
            ("achieved msgs/s", None)
        } else {
            ("ack p99 (log)", Some(1000.0))
        };
        let _ = writeln!(
            svg,
            r#"<text transform="translate({:.1},{:.1}) rotate(-90)" text-anchor="middle">{label}</text>"#,
            left - 58.0,
            TOP + PANEL_H / 2.0
        );
        if panel == 0 {
            // y = x: where a service that keeps up sits. A curve on a log-x, linear-y
            // panel, so it is drawn as a polyline.
            let (lo, hi) = (x.min.ln(), x.max.min(y.max).ln());
            let points: Vec<String> = (0..=48)
                .map(|i| {
                    let v = (lo + (hi - lo) * f64::from(i) / 48.0).exp();
                    format!("{:.1},{:.1}", x.px(v), y.px(v))
                })
                .collect();
            let _ = writeln!(
                svg,
                r##"<polyline points="{}" fill="none" stroke="#999" stroke-dasharray="4 4"/>"##,
                points.join(" ")
            );
        }
        if let Some(limit) = reference {
            let py = y.px(limit);
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#c00" stroke-dasharray="6 3"/><text x="{:.1}" y="{:.1}" fill="#c00" text-anchor="end">sustainable limit</text>"##,
                left + PANEL_W,
                left + PANEL_W - 4.0,
                py - 4.0
            );
        }
        for s in series {
            let value = |p: &Point| if panel == 0 { p.achieved } else { p.p99_ms };
            let mut sorted: Vec<&Point> = s.points.iter().collect();
            sorted.sort_by(|a, b| a.offered.total_cmp(&b.offered));
            let path: Vec<String> = sorted
                .iter()
                .map(|p| format!("{:.1},{:.1}", x.px(p.offered), y.px(value(p))))
                .collect();
            if path.len() > 1 {
                let _ = writeln!(
                    svg,
                    r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
                    path.join(" "),
                    s.color
                );
            }
            for p in sorted {
                let fill = if p.sustainable { s.color } else { "white" };
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{fill}" stroke="{}" stroke-width="2"><title>{}: offered {:.0}/s, achieved {:.0}/s, p99 {:.1} ms{}</title></circle>"#,
                    x.px(p.offered),
                    y.px(value(p)),
                    s.color,
                    escape(&s.name),
                    p.offered,
                    p.achieved,
                    p.p99_ms,
                    if p.sustainable {
                        ""
                    } else {
                        " (not sustainable)"
                    }
                );
            }
        }
    }
    // Legend.
    for (i, s) in series.iter().enumerate() {
        let x = LEFT[0] + 10.0 + i as f64 * 180.0;
        let y = HEIGHT - 14.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{x}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{y}">{}</text>"#,
            y - 4.0,
            x + 24.0,
            y - 4.0,
            s.color,
            x + 30.0,
            escape(&s.name)
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" fill="#555">filled: sustainable step · hollow: not</text>"##,
        LEFT[1],
        HEIGHT - 14.0
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ticks_use_1_2_5_steps() {
        assert_eq!(
            nice_ticks(0.0, 10.0, 5),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        assert_eq!(
            nice_ticks(0.0, 45_000.0, 5),
            vec![0.0, 10_000.0, 20_000.0, 30_000.0, 40_000.0, 50_000.0]
        );
        assert_eq!(nice_ticks(5.0, 5.0, 5), vec![5.0]);
    }

    #[test]
    fn log_ticks_span_the_range() {
        assert_eq!(
            log_ticks(3.0, 600.0),
            vec![5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]
        );
        assert_eq!(log_ticks(1000.0, 1000.0), vec![1000.0]);
        assert_eq!(log_ticks(-1.0, 5.0).len(), 1);
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short_number(12_500.0), "12.5k");
        assert_eq!(short_number(20_000.0), "20k");
        assert_eq!(short_number(2_000_000.0), "2M");
        assert_eq!(short_number(0.5), "0.5");
        assert_eq!(short_number(50.0), "50");
    }

    #[test]
    fn plot_is_well_formed_and_marks_each_step() {
        let series = vec![
            Series {
                name: "meterflow".into(),
                color: "#1f77b4",
                points: vec![
                    Point {
                        offered: 1000.0,
                        achieved: 1000.0,
                        p99_ms: 20.0,
                        sustainable: true,
                    },
                    Point {
                        offered: 1500.0,
                        achieved: 1200.0,
                        p99_ms: 3000.0,
                        sustainable: false,
                    },
                ],
            },
            Series {
                name: "mosquitto <peer>".into(),
                color: "#ff7f0e",
                points: vec![Point {
                    offered: 1000.0,
                    achieved: 1000.0,
                    p99_ms: 2.0,
                    sustainable: true,
                }],
            },
        ];
        let svg = plot("single & more", "shared machine", &series);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        // 3 points × 2 panels.
        assert_eq!(svg.matches("<circle").count(), 6);
        assert_eq!(svg.matches("fill=\"white\" stroke=\"#1f77b4\"").count(), 2);
        // Only meterflow has a line (two points), in both panels, plus the y = x curve.
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("single &amp; more"));
        assert!(svg.contains("mosquitto &lt;peer&gt;"));
        assert!(!svg.contains("NaN"));
        // Empty input still renders.
        assert!(plot("empty", "", &[]).contains("</svg>"));
    }
}
