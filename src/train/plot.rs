//! `curves.png`: the loss (left panel) and accuracy (right panel) curves per epoch, train in
//! orange and test in blue (top-5 in light blue), on a grid of tenths. A dependency-free PNG
//! encoder (stored deflate blocks), so no font or system library is needed.

use std::path::Path;

use serde_json::Value;

use crate::error::Result;
use crate::files::write_atomic;

const WIDTH: usize = 800;
const HEIGHT: usize = 320;
const MARGIN: usize = 20;
const TRAIN: [u8; 3] = [230, 120, 20];
const TEST: [u8; 3] = [30, 90, 200];
const TOP5: [u8; 3] = [120, 180, 240];
const GRID: [u8; 3] = [225, 225, 225];
const AXIS: [u8; 3] = [60, 60, 60];

/// The curves to draw, one value per epoch.
#[derive(Clone, Debug, Default)]
pub struct Curves {
    pub train_loss: Vec<f64>,
    pub test_loss: Vec<f64>,
    pub train_acc: Vec<f64>,
    pub test_acc: Vec<f64>,
    pub test_acc5: Vec<f64>,
}

impl Curves {
    /// The curves of `metrics.jsonl`'s lines (a missing value is drawn at the top).
    pub fn of_metrics(lines: &[Value]) -> Curves {
        let series = |key: &str| -> Vec<f64> {
            lines
                .iter()
                .map(|line| line[key].as_f64().unwrap_or(f64::NAN))
                .collect()
        };
        Curves {
            train_loss: series("train_loss"),
            test_loss: series("test_loss"),
            train_acc: series("train_acc1"),
            test_acc: series("test_acc1"),
            test_acc5: series("test_acc5"),
        }
    }
}

struct Canvas {
    pixels: Vec<u8>,
}

impl Canvas {
    fn put(&mut self, x: i64, y: i64, colour: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < WIDTH && (y as usize) < HEIGHT {
            let at = 3 * (y as usize * WIDTH + x as usize);
            self.pixels[at..at + 3].copy_from_slice(&colour);
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), colour: [u8; 3]) {
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
            for (dx, dy) in [(0, 0), (1, 0), (0, 1)] {
                self.put(x.round() as i64 + dx, y.round() as i64 + dy, colour);
            }
        }
    }
}

/// One panel: `left..left+width`, values scaled to `[0, top]`.
fn panel(canvas: &mut Canvas, left: usize, width: usize, top: f64, series: &[(&[f64], [u8; 3])]) {
    let (x0, x1) = (left as f64, (left + width) as f64);
    let (y0, y1) = ((HEIGHT - MARGIN) as f64, MARGIN as f64);
    for tenth in 0..=10 {
        let y = y0 + (y1 - y0) * tenth as f64 / 10.0;
        canvas.line((x0, y), (x1, y), GRID);
    }
    canvas.line((x0, y0), (x1, y0), AXIS);
    canvas.line((x0, y0), (x0, y1), AXIS);
    let epochs = series.iter().map(|(s, _)| s.len()).max().unwrap_or(0);
    let span = (epochs.max(2) - 1) as f64;
    for (values, colour) in series {
        let point = |i: usize, v: f64| {
            let v = if v.is_finite() {
                v.clamp(0.0, top)
            } else {
                top
            };
            (x0 + (x1 - x0) * i as f64 / span, y0 + (y1 - y0) * v / top)
        };
        for i in 1..values.len() {
            canvas.line(point(i - 1, values[i - 1]), point(i, values[i]), *colour);
        }
        if values.len() == 1 {
            let (x, y) = point(0, values[0]);
            canvas.line((x - 2.0, y), (x + 2.0, y), *colour);
        }
    }
}

/// Draws `curves` into an RGB image and writes it to `path` atomically.
pub fn write_curves(path: &Path, curves: &Curves) -> Result<()> {
    let mut canvas = Canvas {
        pixels: vec![255; WIDTH * HEIGHT * 3],
    };
    let half = WIDTH / 2;
    let max_loss = curves
        .train_loss
        .iter()
        .chain(&curves.test_loss)
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-6)
        * 1.05;
    panel(
        &mut canvas,
        MARGIN,
        half - 2 * MARGIN,
        max_loss,
        &[(&curves.train_loss, TRAIN), (&curves.test_loss, TEST)],
    );
    panel(
        &mut canvas,
        half + MARGIN,
        half - 2 * MARGIN,
        1.0,
        &[
            (&curves.test_acc5, TOP5),
            (&curves.train_acc, TRAIN),
            (&curves.test_acc, TEST),
        ],
    );
    let bytes = encode_png(WIDTH, HEIGHT, &canvas.pixels);
    write_atomic(path, &bytes)
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend(kind);
    out.extend(data);
    let crc = crc32(&out[start..]);
    out.extend(crc.to_be_bytes());
}

/// An 8-bit RGB PNG with uncompressed (stored) deflate blocks.
pub fn encode_png(width: usize, height: usize, rgb: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(height * (3 * width + 1));
    for row in rgb.chunks_exact(3 * width) {
        raw.push(0);
        raw.extend(row);
    }
    let mut zlib = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        zlib.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        zlib.extend(len.to_le_bytes());
        zlib.extend((!len).to_le_bytes());
        zlib.extend(*block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    zlib.extend(((b << 16) | a).to_be_bytes());
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut header = Vec::new();
    header.extend((width as u32).to_be_bytes());
    header.extend((height as u32).to_be_bytes());
    header.extend([8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &header);
    chunk(&mut out, b"IDAT", &zlib);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_png_reference_value() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    }
}
