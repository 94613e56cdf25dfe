//! `--plot FILE.svg`: latency percentiles (top) and latency over time (bottom).
//!
//! The top chart is the usual HDR percentile spectrum: the x axis counts "nines" (90 %, 99 %,
//! 99.9 %, …) so the tail gets as much room as the median, the y axis is logarithmic. The bottom
//! chart shows, per second of the run, the p50, p99 and max round trip of the messages that
//! completed in that second (warm-up included, so a slow start is visible), and flash p99 when
//! there is flash traffic.

use std::path::Path;

use anyhow::{Result, anyhow};
use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::driver::Point;

/// One curve of the percentile chart.
#[derive(Debug)]
pub struct Curve<'a> {
    /// Legend.
    pub label: String,
    /// Samples in microseconds.
    pub hist: &'a Histogram<u64>,
}

/// Colours for successive curves.
const PALETTE: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

/// Points of a percentile spectrum: (nines, milliseconds).
pub fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    // Beyond log10(count) nines there is no more information than the max.
    let top = (h.len() as f64).log10().clamp(1.0, 6.0);
    let steps = 120;
    let mut out: Vec<(f64, f64)> = (0..=steps)
        .map(|k| {
            let x = top * f64::from(k) / f64::from(steps);
            let q = 1.0 - 10f64.powf(-x);
            (x, h.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect();
    out.push((top, h.max() as f64 / 1000.0));
    out
}

/// The label of an x position on the nines axis.
pub fn nines_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let s = format!("{p:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

/// Writes the SVG.
pub fn write(path: &Path, title: &str, curves: &[Curve<'_>], series: &[Point]) -> Result<()> {
    draw(path, title, curves, series).map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

fn draw(
    path: &Path,
    title: &str,
    curves: &[Curve<'_>],
    series: &[Point],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1200, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (top, bottom) = root.split_vertically(480);

    // Percentile spectrum.
    let spectra: Vec<(String, Vec<(f64, f64)>)> = curves
        .iter()
        .map(|c| (c.label.clone(), spectrum(c.hist)))
        .filter(|(_, s)| !s.is_empty())
        .collect();
    // Whole nines, so the axis reads 0 %, 90 %, 99 %, 99.9 %, …
    let xmax = spectra
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.0))
        .fold(1.0, f64::max)
        .ceil();
    let (ymin, ymax) = bounds(spectra.iter().flat_map(|(_, s)| s.iter().map(|p| p.1)));
    let mut chart = ChartBuilder::on(&top)
        .caption("latency by percentile", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, (ymin..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(xmax as usize + 1)
        .x_label_formatter(&|x| nines_label(*x))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()?;
    draw_lines(&mut chart, spectra)?;

    // Latency over time.
    let tmax = series.iter().map(|p| p.t_s).fold(1.0, f64::max);
    let has_flash = series.iter().any(|p| p.flash_round_trip.count > 0);
    type Pick = fn(&Point) -> (u64, u64);
    let mut lines: Vec<(&str, Pick)> = vec![
        ("round trip p50", |p| (p.round_trip.count, p.round_trip.p50)),
        ("round trip p99", |p| (p.round_trip.count, p.round_trip.p99)),
        ("round trip max", |p| (p.round_trip.count, p.round_trip.max)),
    ];
    if has_flash {
        lines.push(("flash round trip p99", |p| {
            (p.flash_round_trip.count, p.flash_round_trip.p99)
        }));
    }
    let lines: Vec<(&str, Vec<(f64, f64)>)> = lines
        .into_iter()
        .map(|(label, pick)| {
            let pts = series
                .iter()
                .filter_map(|p| {
                    let (n, us) = pick(p);
                    (n > 0).then_some((p.t_s, us as f64 / 1000.0))
                })
                .collect();
            (label, pts)
        })
        .collect();
    let (ymin, ymax) = bounds(lines.iter().flat_map(|(_, s)| s.iter().map(|p| p.1)));
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "latency over time (per second of completion)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..tmax, (ymin..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("latency (ms)")
        .y_label_formatter(&|y| format!("{y}"))
        .draw()?;
    draw_lines(&mut chart, lines)?;
    root.present()?;
    Ok(())
}

/// A log-scale y range covering `values` (milliseconds), never empty.
/// Draws `lines` in palette order with a legend in the upper left.
fn draw_lines<'a, 'b: 'a, L: Into<String>>(
    chart: &mut ChartContext<
        'a,
        SVGBackend<'b>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, LogCoord<f64>>,
    >,
    lines: Vec<(L, Vec<(f64, f64)>)>,
) -> Result<(), Box<dyn std::error::Error>> {
    for (i, (label, points)) in lines.into_iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi <= 0.0 {
        return (0.01, 10.0);
    }
    ((lo / 1.5).max(0.001), (hi * 1.5).max(lo * 2.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{self, Summary};

    #[test]
    fn nines_read_as_percentiles() {
        assert_eq!(nines_label(0.0), "0%");
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(2.0), "99%");
        assert_eq!(nines_label(3.0), "99.9%");
    }

    #[test]
    fn spectrum_rises_to_the_max() {
        let mut h = stats::histogram();
        for v in 1..=1000 {
            stats::record(&mut h, v * 10);
        }
        let s = spectrum(&h);
        assert!(s.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!((s.last().unwrap().1 - 10.0).abs() < 0.011);
        assert!(spectrum(&stats::histogram()).is_empty());
    }

    #[test]
    fn writes_an_svg() {
        let mut h = stats::histogram();
        for v in 1..=500 {
            stats::record(&mut h, v * 7);
        }
        let series: Vec<Point> = (0..5)
            .map(|t| Point {
                t_s: f64::from(t),
                round_trip: Summary::of(&h),
                ..Point::default()
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        write(
            &path,
            "test",
            &[Curve {
                label: "round trip".into(),
                hist: &h,
            }],
            &series,
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        assert!(svg.contains("round trip") && svg.contains("99%"));
    }
}
