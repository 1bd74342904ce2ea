//! The sweep plot, drawn with plotters' SVG backend: two panels over the offered
//! open-loop rate (log axis) — achieved throughput (with the `y = x` line a service
//! that keeps up sits on) and ack p99 (log axis, with the 1 s sustainability limit) —
//! one line per system. Filled markers are sustainable steps, hollow ones are not.
//!
//! Pure: data in, SVG text out.

use plotters::coord::Shift;
use plotters::prelude::*;

/// One system's sweep.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) color: RGBColor,
    pub(crate) points: Vec<Point>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Point {
    pub(crate) offered: f64,
    pub(crate) achieved: f64,
    pub(crate) p99_ms: f64,
    pub(crate) sustainable: bool,
}

/// The sustainability limit on ack p99, drawn on the latency panel.
const P99_LIMIT_MS: f64 = 1_000.0;
const SIZE: (u32, u32) = (960, 470);
const GREY: RGBColor = RGBColor(0x99, 0x99, 0x99);
const LIMIT_RED: RGBColor = RGBColor(0xcc, 0x00, 0x00);

/// The ranges both panels share or each needs, from every point.
struct Ranges {
    offered: (f64, f64),
    achieved_max: f64,
    p99: (f64, f64),
}

impl Ranges {
    fn of(series: &[Series]) -> Ranges {
        let points = series.iter().flat_map(|s| &s.points);
        let (mut x_min, mut x_max, mut y_max, mut p_min, mut p_max) =
            (f64::MAX, 0.0f64, 0.0f64, f64::MAX, 0.0f64);
        for p in points.filter(|p| p.offered > 0.0) {
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
            (p_min, p_max) = (1.0, P99_LIMIT_MS);
        }
        Ranges {
            offered: (x_min / 1.2, x_max * 1.2),
            achieved_max: y_max * 1.05,
            // Keep the limit in view, with room on both sides.
            p99: (
                (p_min.min(P99_LIMIT_MS) / 2.0).max(0.01),
                p_max.max(P99_LIMIT_MS) * 2.0,
            ),
        }
    }
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

fn milliseconds(value: f64) -> String {
    if value >= 1_000.0 {
        format!("{} s", short_number(value / 1_000.0))
    } else {
        format!("{} ms", short_number(value))
    }
}

/// Renders the two-panel plot as SVG text.
pub(crate) fn plot(title: &str, subtitle: &str, series: &[Series]) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        // Drawing into a String cannot fail for I/O; a plotting error leaves the
        // plot incomplete, never the run: the figures are in the JSON lines.
        if let Err(e) = draw(&root, title, subtitle, series) {
            eprintln!("plot {title:?}: {e}");
        }
        let _ = root.present();
    }
    svg
}

type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

fn draw(
    root: &DrawingArea<SVGBackend, Shift>,
    title: &str,
    subtitle: &str,
    series: &[Series],
) -> DrawResult {
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let (header, body) = root.split_vertically(20);
    header.draw(&Text::new(
        subtitle.to_string(),
        (10, 2),
        ("sans-serif", 12)
            .into_font()
            .color(&RGBColor(0x55, 0x55, 0x55)),
    ))?;
    let (body, footer) = body.split_vertically(body.dim_in_pixel().1.saturating_sub(24));
    footer.draw(&Text::new(
        "filled: sustainable step · hollow: not".to_string(),
        (10, 4),
        ("sans-serif", 12).into_font(),
    ))?;
    let panels = body.split_evenly((1, 2));
    let ranges = Ranges::of(series);
    throughput_panel(&panels[0], &ranges, series)?;
    latency_panel(&panels[1], &ranges, series)
}

fn throughput_panel(
    area: &DrawingArea<SVGBackend, Shift>,
    ranges: &Ranges,
    series: &[Series],
) -> DrawResult {
    let (x0, x1) = ranges.offered;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((x0..x1).log_scale(), 0.0..ranges.achieved_max)?;
    chart
        .configure_mesh()
        .x_desc("offered rate (msgs/s, log)")
        .y_desc("achieved msgs/s")
        .x_label_formatter(&|v| short_number(*v))
        .y_label_formatter(&|v| short_number(*v))
        .draw()?;
    // y = x: where a service that keeps up sits.
    let hi = x1.min(ranges.achieved_max);
    let diagonal = (0..=48).map(|i| {
        let v = (x0.ln() + (hi.ln() - x0.ln()) * f64::from(i) / 48.0).exp();
        (v, v)
    });
    chart.draw_series(DashedLineSeries::new(diagonal, 4, 4, GREY.into()))?;
    draw_systems(&mut chart, series, |p| p.achieved, true)
}

fn latency_panel(
    area: &DrawingArea<SVGBackend, Shift>,
    ranges: &Ranges,
    series: &[Series],
) -> DrawResult {
    let (x0, x1) = ranges.offered;
    let (p0, p1) = ranges.p99;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((x0..x1).log_scale(), (p0..p1).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered rate (msgs/s, log)")
        .y_desc("ack p99 (log)")
        .x_label_formatter(&|v| short_number(*v))
        .y_label_formatter(&|v| milliseconds(*v))
        .draw()?;
    chart
        .draw_series(DashedLineSeries::new(
            [(x0, P99_LIMIT_MS), (x1, P99_LIMIT_MS)],
            6,
            3,
            LIMIT_RED.into(),
        ))?
        .label("sustainable limit")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], LIMIT_RED));
    draw_systems(&mut chart, series, |p| p.p99_ms, false)?;
    Ok(())
}

/// Each system's line and step markers on `chart`; the legend goes on the panel
/// that asks for it.
fn draw_systems<'a, 'b: 'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, Y>>,
    series: &[Series],
    value: impl Fn(&Point) -> f64,
    legend: bool,
) -> DrawResult
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for s in series {
        let mut points: Vec<Point> = s.points.clone();
        points.sort_by(|a, b| a.offered.total_cmp(&b.offered));
        let line: Vec<(f64, f64)> = points.iter().map(|p| (p.offered, value(p))).collect();
        let color = s.color;
        let drawn = chart.draw_series(LineSeries::new(line, color.stroke_width(2)))?;
        if legend {
            drawn.label(s.name.as_str()).legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3))
            });
        }
        chart.draw_series(points.iter().map(|p| {
            let style = if p.sustainable {
                color.filled()
            } else {
                color.stroke_width(2)
            };
            Circle::new((p.offered, value(p)), 4, style)
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(GREY)
        .draw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_numbers() {
        assert_eq!(short_number(12_500.0), "12.5k");
        assert_eq!(short_number(20_000.0), "20k");
        assert_eq!(short_number(2_000_000.0), "2M");
        assert_eq!(short_number(0.5), "0.5");
        assert_eq!(short_number(50.0), "50");
        assert_eq!(milliseconds(2_000.0), "2 s");
        assert_eq!(milliseconds(0.5), "0.5 ms");
    }

    fn point(offered: f64, achieved: f64, p99_ms: f64, sustainable: bool) -> Point {
        Point {
            offered,
            achieved,
            p99_ms,
            sustainable,
        }
    }

    #[test]
    fn plot_is_well_formed_and_marks_each_step() {
        let blue = RGBColor(0x1f, 0x77, 0xb4);
        let series = vec![
            Series {
                name: "meterflow".into(),
                color: blue,
                points: vec![
                    point(1000.0, 1000.0, 20.0, true),
                    point(1500.0, 1200.0, 3000.0, false),
                ],
            },
            Series {
                name: "mosquitto <peer>".into(),
                color: RGBColor(0xff, 0x7f, 0x0e),
                points: vec![point(1000.0, 1000.0, 2.0, true)],
            },
        ];
        let svg = plot("single & more", "shared machine", &series);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        // 3 steps × 2 panels, each a marker.
        assert_eq!(svg.matches("<circle").count(), 6, "{svg}");
        // meterflow's unsustainable step is hollow in both panels.
        assert_eq!(
            svg.matches(r##"<circle cx"##).count(),
            6,
            "markers are circles"
        );
        assert!(svg.contains("single &amp; more"));
        assert!(svg.contains("mosquitto &lt;peer&gt;"));
        assert!(svg.contains("sustainable limit"));
        assert!(!svg.contains("NaN"));
        // Empty input still renders.
        assert!(plot("empty", "", &[]).contains("</svg>"));
    }
}
