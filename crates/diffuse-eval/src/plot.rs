//! PNG line charts with `plotters` (bitmap backend; the Hack font from `epaint_default_fonts`
//! is embedded, so no system fonts are needed): loss curves, a metric against training steps,
//! and a metric against sampling steps per sampler (the DDIM paper's table as a picture);
//! [`plot_run`] draws a training run's metrics log.

use crate::{Error, Result};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Drawn thin and light (a raw per-step loss under its smoothed curve).
    pub faint: bool,
    /// Palette index (default: the series' position).
    pub color: Option<usize>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            faint: false,
            color: None,
        }
    }
}

/// What to draw.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Logarithmic x axis (sampling steps 1…1000).
    pub log_x: bool,
    pub log_y: bool,
    /// Clip the y range to this (e.g. to hide the first steps of a loss curve).
    pub y_range: Option<(f64, f64)>,
    /// Marks at the points.
    pub markers: bool,
    pub size: (u32, u32),
}

impl Default for Chart {
    fn default() -> Self {
        Chart {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            log_x: false,
            log_y: false,
            y_range: None,
            markers: false,
            size: (900, 520),
        }
    }
}

const FONT: &str = "diffuse-sans";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::HACK_REGULAR)
            .unwrap_or_else(|_| panic!("the embedded Hack font is a valid TTF"));
    });
}

fn draw_err(e: impl std::fmt::Display) -> Error {
    Error::Input(format!("plot: {e}"))
}

/// Data range of the series, padded; positive only on log axes.
fn range(values: impl Iterator<Item = f64>, log: bool, pad: bool) -> Result<(f64, f64)> {
    let v: Vec<f64> = values
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .collect();
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    if v.is_empty() {
        return Err(Error::Input("plot: no finite values to draw".into()));
    }
    Ok(match (log, pad) {
        (true, _) => (lo / 1.25, hi * 1.25),
        (false, false) if hi > lo => (lo, hi),
        (false, _) if hi > lo => (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)),
        (false, _) => (lo - 0.5 * lo.abs().max(1.0), hi + 0.5 * hi.abs().max(1.0)),
    })
}

/// Writes `chart` with `series` to `path` (PNG).
pub fn line_chart(path: &Path, chart: &Chart, series: &[Series]) -> Result<()> {
    if series.iter().all(|s| s.points.is_empty()) {
        return Err(Error::Input(format!(
            "plot {}: no points to draw",
            path.display()
        )));
    }
    register_font();
    let xs = || series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (x0, x1) = range(xs(), chart.log_x, false)?;
    let (y0, y1) = match chart.y_range {
        Some(r) => r,
        None => range(
            series.iter().flat_map(|s| s.points.iter().map(|p| p.1)),
            chart.log_y,
            true,
        )?,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(crate::io_err(dir))?;
    }
    let root = BitMapBackend::new(path, chart.size).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    // A log x axis is labelled at the data's own x values (sampling steps 1, 2, 4, 10, 50…).
    let mut ticks: Vec<f64> = xs().filter(|v| v.is_finite() && *v > 0.0).collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    let corner = legend_corner(series, (x0, x1), (y0, y1), chart.log_x, chart.log_y);
    match (chart.log_x, chart.log_y) {
        (false, false) => draw(&root, chart, series, corner, x0..x1, y0..y1),
        (true, false) => draw(
            &root,
            chart,
            series,
            corner,
            (x0..x1).log_scale().with_key_points(ticks),
            y0..y1,
        ),
        (false, true) => draw(&root, chart, series, corner, x0..x1, (y0..y1).log_scale()),
        (true, true) => draw(
            &root,
            chart,
            series,
            corner,
            (x0..x1).log_scale().with_key_points(ticks),
            (y0..y1).log_scale(),
        ),
    }?;
    root.present().map_err(draw_err)?;
    Ok(())
}

/// The corner of the plot with the fewest points, for the legend.
fn legend_corner(
    series: &[Series],
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
    log_x: bool,
    log_y: bool,
) -> SeriesLabelPosition {
    let unit = |v: f64, lo: f64, hi: f64, log: bool| {
        if log {
            (v.ln() - lo.ln()) / (hi.ln() - lo.ln())
        } else {
            (v - lo) / (hi - lo)
        }
    };
    let mut count = [0usize; 4]; // upper left, upper right, lower left, lower right
    for &(x, y) in series.iter().filter(|s| !s.faint).flat_map(|s| &s.points) {
        let (u, v) = (unit(x, x0, x1, log_x), unit(y, y0, y1, log_y));
        if !(u.is_finite() && v.is_finite()) {
            continue;
        }
        let i = match (v > 0.55, u < 0.45, v < 0.45, u > 0.55) {
            (true, true, _, _) => 0,
            (true, _, _, true) => 1,
            (_, true, true, _) => 2,
            (_, _, true, true) => 3,
            _ => continue,
        };
        count[i] += 1;
    }
    let best = (0..4)
        .min_by_key(|&i| (count[i], [1, 0, 3, 2][i]))
        .unwrap_or(1);
    [
        SeriesLabelPosition::UpperLeft,
        SeriesLabelPosition::UpperRight,
        SeriesLabelPosition::LowerLeft,
        SeriesLabelPosition::LowerRight,
    ][best]
        .clone()
}

/// Tick labels: integers as integers, large values without decimals, small ones to 3 digits.
fn tick_label(v: &f64) -> String {
    let a = v.abs();
    if a >= 1000.0 || (v.fract() == 0.0 && a >= 1.0) {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.01 || a == 0.0 {
        format!("{:.3}", v)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{v:.1e}")
    }
}

fn draw<X, Y>(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    chart: &Chart,
    series: &[Series],
    corner: SeriesLabelPosition,
    x: X,
    y: Y,
) -> Result<()>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut ctx = ChartBuilder::on(root)
        .caption(&chart.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(x, y)
        .map_err(draw_err)?;
    ctx.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(238, 238, 238))
        .x_label_formatter(&tick_label)
        .y_label_formatter(&tick_label)
        .draw()
        .map_err(draw_err)?;
    let mut legend = false;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(s.color.unwrap_or(i)).to_rgba();
        let (style, width) = if s.faint {
            (color.mix(0.45), 1)
        } else {
            (color, 2)
        };
        let line = ctx
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                style.stroke_width(width),
            ))
            .map_err(draw_err)?;
        if !s.name.is_empty() {
            legend = true;
            line.label(s.name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        }
        if chart.markers && !s.faint {
            ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(draw_err)?;
        }
    }
    if legend {
        ctx.configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .position(corner)
            .draw()
            .map_err(draw_err)?;
    }
    Ok(())
}

/// Exponential moving average (the smoothed loss curve), `alpha` the weight of a new value.
pub fn smooth(points: &[(f64, f64)], alpha: f64) -> Vec<(f64, f64)> {
    let mut s: Option<f64> = None;
    points
        .iter()
        .map(|&(x, y)| {
            let v = s.map_or(y, |s| (1.0 - alpha) * s + alpha * y);
            s = Some(v);
            (x, v)
        })
        .collect()
}

/// `loss.png` (per step, faint, and smoothed) and `eval-<metric>.png` for each `eval/*` value
/// in a training run's `metrics.jsonl`. Returns how many were written.
pub fn plot_run(run: &Path, out: &Path, title: &str) -> Result<usize> {
    let log = run.join("metrics.jsonl");
    let rows = read_jsonl(&log)?;
    if rows.is_empty() {
        return Err(Error::Input(format!(
            "{}: no metrics (is this a `diffuse train` output folder?)",
            log.display()
        )));
    }
    let loss: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r["skipped"] != true)
        .filter_map(|r| Some((r["step"].as_f64()?, r["loss"].as_f64()?)))
        .filter(|p| p.1.is_finite())
        .collect();
    // The y range leaves out the first 5% of steps, where the loss falls from far above.
    let tail = &loss[loss.len() / 20..];
    let hi = tail.iter().map(|p| p.1).fold(0f64, f64::max) * 1.1;
    let lo = tail.iter().map(|p| p.1).fold(f64::INFINITY, f64::min) * 0.9;
    let mut raw = Series::new("", loss.clone());
    raw.faint = true;
    raw.color = Some(1);
    let mut smoothed = Series::new("smoothed (EMA 0.03)", smooth(&loss, 0.03));
    smoothed.color = Some(1);
    line_chart(
        &out.join("loss.png"),
        &Chart {
            title: format!("{title}: training loss"),
            x_label: "step".into(),
            y_label: "loss".into(),
            y_range: (hi > lo).then_some((lo.max(0.0), hi)),
            ..Default::default()
        },
        &[raw, smoothed],
    )?;
    let mut written = 1;
    let mut keys: Vec<String> = Vec::new();
    for r in &rows {
        if let Some(o) = r.as_object() {
            for k in o.keys().filter(|k| k.starts_with("eval/")) {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
    }
    for k in keys {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| Some((r["step"].as_f64()?, r[k.as_str()].as_f64()?)))
            .collect();
        let name = &k["eval/".len()..];
        line_chart(
            &out.join(format!("eval-{}.png", name.replace('_', "-"))),
            &Chart {
                title: format!("{title}: {name} during training"),
                x_label: "step".into(),
                y_label: name.into(),
                markers: true,
                ..Default::default()
            },
            &[Series::new(name, pts)],
        )?;
        written += 1;
    }
    Ok(written)
}

/// The JSON objects of a JSON-lines file (none when it does not exist).
fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Value>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(path).map_err(crate::io_err(path))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|_| Error::File(format!("{}: line {} is not JSON", path.display(), i + 1)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_pixels(path: &Path) -> image::RgbImage {
        image::open(path).expect("a PNG").to_rgb8()
    }

    #[test]
    fn draws_lines_axes_and_text_into_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/chart.png");
        let series = vec![
            Series::new("ddim", vec![(10.0, 30.0), (20.0, 20.0), (50.0, 12.0)]),
            Series::new("euler", vec![(10.0, 40.0), (20.0, 25.0), (50.0, 15.0)]),
        ];
        let chart = Chart {
            title: "FID vs steps".into(),
            x_label: "steps".into(),
            y_label: "FID".into(),
            log_x: true,
            markers: true,
            ..Default::default()
        };
        line_chart(&path, &chart, &series).unwrap();
        let img = png_pixels(&path);
        assert_eq!(img.dimensions(), (900, 520));
        // Something other than white was drawn in each series colour.
        for i in 0..2 {
            let c = Palette99::pick(i).to_rgba();
            let hits = img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count();
            assert!(hits > 100, "series {i}: {hits} pixels");
        }
        // Text (the caption) is dark pixels in the top band.
        let dark = (0..900)
            .flat_map(|x| (0..30).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&v| v < 100))
            .count();
        assert!(dark > 50, "caption pixels: {dark}");
    }

    #[test]
    fn empty_or_non_finite_data_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        let e = line_chart(&path, &Chart::default(), &[Series::new("a", vec![])]).unwrap_err();
        assert!(e.to_string().contains("no points"), "{e}");
        let nan = Series::new("a", vec![(1.0, f64::NAN)]);
        assert!(line_chart(&path, &Chart::default(), &[nan]).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn tick_labels_are_compact() {
        assert_eq!(tick_label(&180000.0), "180000");
        assert_eq!(tick_label(&20.0), "20");
        assert_eq!(tick_label(&12.25), "12.2");
        assert_eq!(tick_label(&0.125), "0.125");
        assert_eq!(tick_label(&0.5), "0.5");
        assert_eq!(tick_label(&0.0), "0");
        assert_eq!(tick_label(&0.0012), "1.2e-3");
    }

    #[test]
    fn legend_goes_where_the_data_is_not() {
        // Falling curve: points upper left and lower right → legend upper right.
        let s = [Series::new("a", vec![(0.0, 10.0), (1.0, 5.0), (10.0, 0.0)])];
        let c = legend_corner(&s, (0.0, 10.0), (0.0, 10.0), false, false);
        assert!(matches!(c, SeriesLabelPosition::UpperRight));
        let s = [Series::new(
            "a",
            vec![(0.0, 10.0), (10.0, 10.0), (0.0, 0.0)],
        )];
        let c = legend_corner(&s, (0.0, 10.0), (0.0, 10.0), false, false);
        assert!(matches!(c, SeriesLabelPosition::LowerRight));
    }

    #[test]
    fn smoothing_follows_an_exponential_average() {
        let s = smooth(&[(0.0, 1.0), (1.0, 0.0), (2.0, 0.0)], 0.5);
        assert_eq!(s, vec![(0.0, 1.0), (1.0, 0.5), (2.0, 0.25)]);
    }
}
