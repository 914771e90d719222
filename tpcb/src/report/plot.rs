//! The one line-plot renderer of every report: series of points in a
//! colour each, drawn as a line with markers, or as lone markers.
//!
//! Text goes into the SVG as `<text>` elements; plotters is built without
//! its `ttf` feature, so it sizes labels with an estimate and needs no
//! system font libraries.

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

/// Width and height of a plot, in SVG pixels.
const PLOT_SIZE: (u32, u32) = (800, 500);

/// A plot's frame.
pub(super) struct Plot<'a> {
    pub caption: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    /// Space for the y labels, in pixels.
    pub y_label_area: u32,
    pub x_axis: XAxis,
    /// Decimals of the y labels.
    pub y_decimals: usize,
}

/// How the x axis runs.
pub(super) enum XAxis {
    /// Whole numbers `lo..=hi` (replica counts), labelled at each one.
    Counts { lo: u32, hi: u32 },
    /// A log scale over `lo..hi`.
    Log { lo: f64, hi: f64 },
}

#[derive(Clone, Copy)]
pub(super) enum Marker {
    Circle,
    Triangle,
}

/// One series: drawn in `Palette99` colour `color`.
pub(super) struct Series {
    pub label: String,
    pub color: usize,
    pub points: Vec<(f64, f64)>,
    /// Line width; 0 draws only the markers.
    pub line: u32,
    pub marker: Marker,
    pub marker_size: u32,
    /// The legend shows the marker rather than a stroke of the line.
    pub legend_marker: bool,
}

/// Renders `series` into an SVG document; y runs from 0 to 15 % above the
/// highest point.
pub(super) fn render(plot: &Plot, series: &[Series]) -> Result<String, String> {
    match plot.x_axis {
        XAxis::Counts { lo, hi } => render_on(
            plot,
            (f64::from(lo) - 0.5)..(f64::from(hi) + 0.5),
            Some((hi - lo) as usize + 2),
            series,
        ),
        XAxis::Log { lo, hi } => render_on(plot, (lo..hi).log_scale(), None, series),
    }
}

fn render_on<X>(
    plot: &Plot,
    x: X,
    x_labels: Option<usize>,
    series: &[Series],
) -> Result<String, String>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    // The legend sits in the upper left corner: the top band of the plot
    // is kept free for it, so that no point hides behind it.
    let legend_px = 16.0 + 22.0 * series.len() as f64;
    let plot_px = f64::from(PLOT_SIZE.1) - 130.0;
    let free = (1.0 - legend_px / plot_px - 0.05).max(0.3);
    let y_top = if y_max > 0.0 { y_max / free } else { 1.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(plot.caption, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(plot.y_label_area)
            .build_cartesian_2d(x, 0.0..y_top)
            .map_err(|e| e.to_string())?;
        let y_decimals = plot.y_decimals;
        let y_fmt = move |y: &f64| format!("{y:.y_decimals$}");
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(plot.x_desc)
            .y_desc(plot.y_desc)
            .y_label_formatter(&y_fmt);
        // Whole-number axes label the whole numbers only.
        let whole = |x: &f64| {
            if x.fract() == 0.0 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        };
        if let Some(n) = x_labels {
            mesh.x_labels(n).x_label_formatter(&whole).disable_x_mesh();
        } else {
            mesh.x_label_formatter(&log_tick);
        }
        mesh.draw().map_err(|e| e.to_string())?;

        for s in series {
            let color = Palette99::pick(s.color).to_rgba();
            let marker = s.marker;
            let size = s.marker_size;
            let glyph = move |c: (f64, f64),
                              size: u32,
                              style: ShapeStyle|
                  -> DynElement<'static, SVGBackend, (f64, f64)> {
                match marker {
                    Marker::Circle => Circle::new(c, size, style).into_dyn(),
                    Marker::Triangle => TriangleMarker::new(c, size, style).into_dyn(),
                }
            };
            let legend_marker = s.legend_marker;
            let line_width = s.line;
            let anno = if line_width > 0 {
                chart
                    .draw_series(LineSeries::new(
                        s.points.clone(),
                        color.stroke_width(line_width),
                    ))
                    .map_err(|e| e.to_string())?
            } else {
                chart
                    .draw_series(s.points.iter().map(|&p| glyph(p, size, color.filled())))
                    .map_err(|e| e.to_string())?
            };
            anno.label(s.label.clone()).legend(move |(x, y)| {
                if legend_marker {
                    match marker {
                        Marker::Circle => Circle::new((x + 10, y), size, color.filled()).into_dyn(),
                        Marker::Triangle => {
                            TriangleMarker::new((x + 10, y), size, color.filled()).into_dyn()
                        }
                    }
                } else {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(line_width))
                        .into_dyn()
                }
            });
            if line_width > 0 {
                chart
                    .draw_series(s.points.iter().map(|&p| glyph(p, size, color.filled())))
                    .map_err(|e| e.to_string())?;
            }
        }
        if !series.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// A tick of a log axis: 1, 2 and 5 of each decade, short (`20k`, `1M`);
/// the ticks between are left unlabelled, so labels never crowd.
fn log_tick(x: &f64) -> String {
    if *x <= 0.0 {
        return String::new();
    }
    let decade = 10f64.powi(x.log10().floor() as i32);
    let lead = x / decade;
    if ![1.0, 2.0, 5.0].iter().any(|m| (lead - m).abs() < 1e-6) {
        return String::new();
    }
    match *x {
        x if x >= 1e6 => format!("{}M", x / 1e6),
        x if x >= 1e3 => format!("{}k", x / 1e3),
        x => format!("{x}"),
    }
}

#[cfg(test)]
mod log_tick_tests {
    use super::log_tick;

    #[test]
    fn only_one_two_and_five_of_each_decade_are_labelled() {
        let labels: Vec<String> = [10000.0, 20000.0, 30000.0, 50000.0, 90000.0, 1e5, 2e6, 7.0]
            .iter()
            .map(log_tick)
            .collect();
        assert_eq!(labels, ["10k", "20k", "", "50k", "", "100k", "2M", ""]);
    }
}
