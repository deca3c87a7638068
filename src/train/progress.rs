//! The epoch's progress bar on stderr, drawn by `indicatif`: steps, ETA, images/s and the running
//! loss and accuracy, redrawn in place on a terminal. Where stderr is not a terminal (logs,
//! pipes) the bar draws nothing, and the training loop's one line per epoch is the record.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar of one epoch.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for `total` steps labelled `label`; `quiet` draws nothing.
    pub fn new(label: String, total: usize, quiet: bool) -> Self {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(total as u64), target)
            .with_style(style())
            .with_prefix(label);
        bar.enable_steady_tick(Duration::from_millis(500));
        Progress { bar }
    }

    /// Reports `done` steps, `images` images so far and the running loss and accuracy; the bar
    /// finishes (and stays on screen) at the last step.
    pub fn update(&mut self, done: usize, images: usize, loss: f64, acc: f64) {
        let seconds = self.bar.elapsed().as_secs_f64().max(1e-9);
        let rate = images as f64 / seconds;
        self.bar.set_position(done as u64);
        self.bar.set_message(format!(
            "loss {loss:.4} acc {:5.1}% {rate:7.1} img/s",
            100.0 * acc
        ));
        if self.bar.length().is_some_and(|total| done as u64 >= total) {
            self.bar.finish();
        }
    }
}

impl Drop for Progress {
    /// An epoch that ends early (an error, a stop) leaves its bar where it got to.
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.abandon();
        }
    }
}

const TEMPLATE: &str = "{prefix} [{bar:24}] {pos:>5}/{len} {msg} ETA {eta_precise}";

fn style() -> ProgressStyle {
    ProgressStyle::with_template(TEMPLATE)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#>-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_parses_and_a_quiet_bar_counts_without_drawing() {
        assert!(ProgressStyle::with_template(TEMPLATE).is_ok());
        let mut progress = Progress::new("epoch 1/1".into(), 4, true);
        progress.update(2, 16, 2.3, 0.125);
        assert_eq!(progress.bar.position(), 2);
        assert!(progress.bar.message().starts_with("loss 2.3000 acc  12.5%"));
        progress.update(4, 32, 2.2, 0.25);
        assert!(progress.bar.is_finished());
    }
}
