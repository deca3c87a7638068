//! A progress bar on stderr: redrawn in place on a terminal, a few plain lines otherwise (logs and
//! pipes get no control characters).

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// The bar of one epoch.
pub struct Progress {
    label: String,
    total: usize,
    start: Instant,
    terminal: bool,
    quiet: bool,
    last_quarter: usize,
}

impl Progress {
    /// A bar for `total` steps; `quiet` prints nothing.
    pub fn new(label: String, total: usize, quiet: bool) -> Self {
        Progress {
            label,
            total: total.max(1),
            start: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            quiet,
            last_quarter: 0,
        }
    }

    /// Reports `done` steps, `images` images so far and the running loss and accuracy.
    pub fn update(&mut self, done: usize, images: usize, loss: f64, acc: f64) {
        if self.quiet {
            return;
        }
        let elapsed = self.start.elapsed().as_secs_f64();
        let rate = images as f64 / elapsed.max(1e-9);
        let eta = elapsed / done.max(1) as f64 * (self.total - done.min(self.total)) as f64;
        let text = format!(
            "{} {:>5}/{} loss {loss:.4} acc {:5.1}% {rate:7.1} img/s ETA {}",
            self.label,
            done,
            self.total,
            acc * 100.0,
            format_seconds(eta)
        );
        let mut stderr = std::io::stderr().lock();
        if self.terminal {
            let width = 24;
            let filled = width * done / self.total;
            let bar: String = "#".repeat(filled) + &"-".repeat(width - filled);
            let _ = write!(stderr, "\r\x1b[2K[{bar}] {text}");
            if done >= self.total {
                let _ = writeln!(stderr);
            }
        } else {
            let quarter = 4 * done / self.total;
            if quarter > self.last_quarter {
                self.last_quarter = quarter;
                let _ = writeln!(stderr, "{text}");
            }
        }
        let _ = stderr.flush();
    }
}

/// `h:mm:ss` or `m:ss`.
pub fn format_seconds(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}
