//! `curves.png`: a run's curves per epoch in three panels (loss, accuracy, learning rate) with
//! labelled axes, tick values, legends and the best test accuracy marked, titled with the run's
//! name. Drawn with `plotters` into memory in an embedded font (DejaVu Sans), so no system font
//! or library is needed, and encoded with the `png` crate.

use std::ops::Range;
use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::files::write_atomic;

const WIDTH: u32 = 1500;
const HEIGHT: u32 = 450;
const FONT: &str = "sans-serif";
const TRAIN: RGBColor = RGBColor(230, 120, 20);
const TEST: RGBColor = RGBColor(30, 90, 200);
const TOP5: RGBColor = RGBColor(120, 180, 240);
const BEST: RGBColor = RGBColor(200, 30, 30);
const LR: RGBColor = RGBColor(40, 140, 60);

/// The curves to draw, one value per epoch, and the run's name for the title.
#[derive(Clone, Debug, Default)]
pub struct Curves {
    pub title: String,
    pub train_loss: Vec<f64>,
    pub test_loss: Vec<f64>,
    pub train_acc: Vec<f64>,
    pub test_acc: Vec<f64>,
    pub test_acc5: Vec<f64>,
    pub lr: Vec<f64>,
}

impl Curves {
    /// The curves of the run `title` from its `metrics.jsonl` lines (a missing value is NaN and
    /// is left out of the drawing).
    pub fn of_metrics(title: &str, lines: &[Value]) -> Curves {
        let column = |key: &str| -> Vec<f64> {
            let value = |line: &Value| line[key].as_f64().unwrap_or(f64::NAN);
            lines.iter().map(value).collect()
        };
        Curves {
            title: title.to_string(),
            train_loss: column("train_loss"),
            test_loss: column("test_loss"),
            train_acc: column("train_acc1"),
            test_acc: column("test_acc1"),
            test_acc5: column("test_acc5"),
            lr: column("lr"),
        }
    }

    /// The epoch (1-based) and value of the best test top-1 accuracy, the first on a tie.
    fn best_test_acc(&self) -> Option<(usize, f64)> {
        let finite = self
            .test_acc
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite());
        finite.fold(None, |best, (i, &v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((i + 1, v)),
        })
    }
}

/// Draws `curves` and writes the PNG to `path` atomically.
pub fn write_curves(path: &Path, curves: &Curves) -> Result<()> {
    let png = render_png(curves).map_err(|detail| {
        Error::file(path, format!("cannot draw the training curves: {detail}"))
    })?;
    write_atomic(path, &png)
}

/// `curves` drawn as an RGB PNG image.
pub fn render_png(curves: &Curves) -> std::result::Result<Vec<u8>, String> {
    register_font()?;
    let mut rgb = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    draw(&mut rgb, curves).map_err(|DrawError(message)| message)?;
    encode_png(&rgb)
}

/// The title and the three panels, drawn into the RGB buffer `rgb`.
fn draw(rgb: &mut [u8], curves: &Curves) -> Drawn {
    let root = BitMapBackend::with_buffer(rgb, (WIDTH, HEIGHT)).into_drawing_area();
    let root = root.titled(&curves.title, (FONT, 24))?;
    let panels = root.split_evenly((1, 3));
    draw_loss(&panels[0], curves)?;
    draw_accuracy(&panels[1], curves)?;
    draw_learning_rate(&panels[2], curves)?;
    root.present()?;
    Ok(())
}

/// Registers the embedded DejaVu Sans as `sans-serif`, once per process.
fn register_font() -> std::result::Result<(), String> {
    static REGISTER: Once = Once::new();
    let mut result = Ok(());
    REGISTER.call_once(|| {
        result = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| "the embedded font does not load".to_string());
    });
    result
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type Chart<'c, 'a> =
    ChartContext<'c, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
type Drawn<T = ()> = std::result::Result<T, DrawError>;

/// Why plotters could not draw, as its message.
#[derive(Debug)]
struct DrawError(String);

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for DrawError {
    fn from(error: DrawingAreaErrorKind<E>) -> Self {
        DrawError(error.to_string())
    }
}

/// Train and test cross-entropy.
fn draw_loss(area: &Area<'_>, curves: &Curves) -> Drawn {
    let top = upper_bound(curves.train_loss.iter().chain(&curves.test_loss));
    let mut chart = panel(area, "loss", epochs(curves), 0.0..top)?;
    draw_mesh(&mut chart, "cross-entropy", &|v| format!("{v:.2}"))?;
    draw_line(&mut chart, &curves.train_loss, 1.0, TRAIN, "train")?;
    draw_line(&mut chart, &curves.test_loss, 1.0, TEST, "test")?;
    let series = [(&curves.train_loss, 1.0), (&curves.test_loss, 1.0)];
    draw_legend(
        &mut chart,
        emptiest_corner(&series, epochs(curves), 0.0..top),
    )
}

/// Train top-1, test top-1 and top-5 in percent, with the best test top-1 marked.
fn draw_accuracy(area: &Area<'_>, curves: &Curves) -> Drawn {
    let mut chart = panel(area, "accuracy", epochs(curves), 0.0..100.0)?;
    draw_mesh(&mut chart, "accuracy (%)", &|v| format!("{v:.0}"))?;
    draw_line(&mut chart, &curves.train_acc, 100.0, TRAIN, "train top-1")?;
    draw_line(&mut chart, &curves.test_acc, 100.0, TEST, "test top-1")?;
    draw_line(&mut chart, &curves.test_acc5, 100.0, TOP5, "test top-5")?;
    if let Some((epoch, acc)) = curves.best_test_acc() {
        let marker = Circle::new((epoch as f64, 100.0 * acc), 6, BEST.filled());
        chart
            .draw_series(std::iter::once(marker))?
            .label(format!(
                "best test top-1 {:.2}% (epoch {epoch})",
                100.0 * acc
            ))
            .legend(|(x, y)| Circle::new((x + 10, y), 5, BEST.filled()));
    }
    let series = [
        (&curves.train_acc, 100.0),
        (&curves.test_acc, 100.0),
        (&curves.test_acc5, 100.0),
    ];
    draw_legend(
        &mut chart,
        emptiest_corner(&series, epochs(curves), 0.0..100.0),
    )
}

/// The learning rate of each epoch's first step.
fn draw_learning_rate(area: &Area<'_>, curves: &Curves) -> Drawn {
    let top = upper_bound(curves.lr.iter());
    let mut chart = panel(area, "learning rate", epochs(curves), 0.0..top)?;
    let scientific = |v: &f64| match *v {
        0.0 => "0".to_string(),
        v => format!("{v:.1e}"),
    };
    draw_mesh(&mut chart, "learning rate", &scientific)?;
    draw_line(&mut chart, &curves.lr, 1.0, LR, "lr")
}

/// The grid, with whole epochs labelled on x and `y_format` on y.
fn draw_mesh(chart: &mut Chart<'_, '_>, y_desc: &str, y_format: &dyn Fn(&f64) -> String) -> Drawn {
    let whole_epochs = |x: &f64| {
        if x.fract() == 0.0 {
            format!("{x:.0}")
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .light_line_style(RGBColor(242, 242, 242))
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_label_formatter(&whole_epochs)
        .y_label_formatter(y_format)
        .label_style((FONT, 14))
        .draw()?;
    Ok(())
}

/// The corner of the panel whose quarter holds the fewest points of `series` (each scaled by its
/// factor), where the legend hides the least; upper right on a tie.
fn emptiest_corner(
    series: &[(&Vec<f64>, f64)],
    x: Range<f64>,
    y: Range<f64>,
) -> SeriesLabelPosition {
    let (x_mid, y_mid) = ((x.start + x.end) / 2.0, (y.start + y.end) / 2.0);
    let mut counts = [0usize; 4]; // upper right, upper left, lower right, lower left
    for (values, scale) in series {
        for (epoch, v) in (1..).zip(values.iter()).filter(|(_, v)| v.is_finite()) {
            let left = f64::from(epoch) < x_mid;
            let lower = scale * *v < y_mid;
            counts[usize::from(left) + 2 * usize::from(lower)] += 1;
        }
    }
    let corners = [
        SeriesLabelPosition::UpperRight,
        SeriesLabelPosition::UpperLeft,
        SeriesLabelPosition::LowerRight,
        SeriesLabelPosition::LowerLeft,
    ];
    let emptiest = (0..4).min_by_key(|&i| counts[i]).unwrap_or(0);
    corners[emptiest].clone()
}

/// One captioned panel with epochs on x and `y` on the vertical axis.
fn panel<'c, 'a>(
    area: &'c Area<'a>,
    caption: &str,
    epochs: Range<f64>,
    y: Range<f64>,
) -> Drawn<Chart<'c, 'a>> {
    let chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(epochs, y)?;
    Ok(chart)
}

/// A series of per-epoch values times `scale`, as a line with a dot at each epoch; non-finite
/// values are left out.
fn draw_line(
    chart: &mut Chart<'_, '_>,
    values: &[f64],
    scale: f64,
    colour: RGBColor,
    label: &str,
) -> Drawn {
    let points: Vec<(f64, f64)> = (1..)
        .zip(values)
        .filter(|(_, v)| v.is_finite())
        .map(|(epoch, v)| (f64::from(epoch), scale * v))
        .collect();
    let dots = points.iter().map(|&p| Circle::new(p, 3, colour.filled()));
    chart.draw_series(dots)?;
    chart
        .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    Ok(())
}

fn draw_legend<'c, 'a: 'c>(chart: &mut Chart<'c, 'a>, position: SeriesLabelPosition) -> Drawn {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// The x range: epochs 1..=n with half an epoch of room on either side.
fn epochs(curves: &Curves) -> Range<f64> {
    let n = curves.train_loss.len().max(1);
    0.5..n as f64 + 0.5
}

/// 5% above the largest finite value, and above 0 however small the values are.
fn upper_bound<'v>(values: impl Iterator<Item = &'v f64>) -> f64 {
    let largest = values
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    if largest > 0.0 { 1.05 * largest } else { 1.0 }
}

/// An 8-bit RGB PNG of the `WIDTH x HEIGHT` image `rgb`.
fn encode_png(rgb: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn lines(n: usize) -> Vec<Value> {
        (0..n)
            .map(|i| {
                let t = i as f64;
                let test_acc1 = [0.1, 0.3, 0.5, 0.45][i % 4];
                json!({
                    "epoch": i + 1, "train_loss": 2.3 - 0.2 * t, "test_loss": 2.2 - 0.15 * t,
                    "train_acc1": 0.1 + 0.08 * t, "test_acc1": test_acc1,
                    "test_acc5": 0.5 + 0.05 * t, "lr": 0.1 * 0.5f64.powi(i as i32),
                })
            })
            .collect()
    }

    #[test]
    fn curves_come_from_the_metrics_lines_and_mark_the_first_best_epoch() {
        let curves = Curves::of_metrics("run", &lines(4));
        assert_eq!(curves.lr, vec![0.1, 0.05, 0.025, 0.0125]);
        assert_eq!(curves.best_test_acc(), Some((3, 0.5)));
        let missing = Curves::of_metrics("run", &[json!({"epoch": 1})]);
        assert!(missing.train_loss[0].is_nan());
        assert_eq!(missing.best_test_acc(), None);
    }

    #[test]
    fn the_png_decodes_to_an_image_of_the_stated_size_with_the_curves_on_it() {
        let test_blue_pixels = |n: usize| {
            let png = render_png(&Curves::of_metrics("a run", &lines(n))).unwrap();
            let decoder = png::Decoder::new(std::io::Cursor::new(png));
            let mut reader = decoder.read_info().unwrap();
            let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
            let info = reader.next_frame(&mut pixels).unwrap();
            assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
            let dark = pixels
                .chunks_exact(3)
                .filter(|p| p.iter().all(|&c| c < 80))
                .count();
            assert!(
                dark > 1000,
                "axes, ticks and text are drawn: {dark} dark pixels"
            );
            pixels
                .chunks_exact(3)
                .filter(|p| *p == [30, 90, 200])
                .count()
        };
        // The legend's sample line, then a dot, then a line through four dots.
        let counts = [0, 1, 4].map(test_blue_pixels);
        assert!(
            0 < counts[0] && counts[0] < counts[1] && counts[1] < counts[2],
            "{counts:?}"
        );
    }
}
