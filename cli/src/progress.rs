//! How `xlac train` reports its steps: on a terminal, a progress bar
//! (indicatif) with the step, loss, learning rate, examples per second and
//! the time left; elsewhere (a log file, CI) a line every ten steps and at
//! the last, so the output stays readable. [`Counter`] reports other long
//! work (`xlac plan`'s search) the same way.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::Instant;

/// The report of one run's steps, `first..=steps`.
pub struct StepProgress {
    bar: Option<ProgressBar>,
    first: u64,
    steps: u64,
    start: Instant,
}

/// What one step reported, as shown.
pub struct Shown {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub examples_per_s: f64,
}

impl StepProgress {
    /// A bar when `terminal`, starting at step `first` (after a resume) of `steps`.
    pub fn new(first: u64, steps: u64, terminal: bool) -> StepProgress {
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{bar:24.cyan/blue} {pos}/{len} {msg} [{elapsed} < {eta}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("█▉▊▋▌▍▎▏ "));
            bar.set_position(first - 1);
            bar.reset_eta();
            bar
        });
        StepProgress { bar, first, steps, start: Instant::now() }
    }

    /// Shows a finished step.
    pub fn step(&self, s: &Shown) {
        let msg = message(s);
        match &self.bar {
            Some(bar) => {
                bar.set_message(msg);
                bar.set_position(s.step);
            }
            None if s.step == self.steps || s.step % 10 == 1 => {
                let done = (s.step - self.first + 1) as f64;
                let left = self.start.elapsed().as_secs_f64() / done * (self.steps - s.step) as f64;
                eprintln!("step {}/{} {msg}, {left:.0} s left", s.step, self.steps);
            }
            None => {}
        }
    }

    /// Prints `line` (an evaluation) above the bar, or as a line.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Leaves the finished bar on the screen.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// A count of finished items out of a known total: a bar on a terminal,
/// elsewhere a line every ten items and at the last.
pub struct Counter {
    bar: Option<ProgressBar>,
    total: u64,
    what: &'static str,
}

impl Counter {
    /// A counter of `total` items, each one of `what` (e.g. "configurations built").
    pub fn new(total: u64, what: &'static str, terminal: bool) -> Counter {
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{bar:24.cyan/blue} {pos}/{len} {msg} [{elapsed} < {eta}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("█▉▊▋▌▍▎▏ "));
            bar.set_message(what);
            bar
        });
        Counter { bar, total, what }
    }

    /// Shows that `done` items are finished.
    pub fn set(&self, done: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None if done == self.total || done.is_multiple_of(10) => eprintln!("{done}/{} {}", self.total, self.what),
            None => {}
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `loss 0.123456 lr 1.000e-3 grad_norm 0.5000 12.3 examples/s`.
fn message(s: &Shown) -> String {
    format!("loss {:.6} lr {:.3e} grad_norm {:.4} {:.1} examples/s", s.loss, s.lr, s.grad_norm, s.examples_per_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_shows_its_loss_rate_norm_and_speed() {
        let s = Shown { step: 3, loss: 0.25, lr: 1e-3, grad_norm: 0.5, examples_per_s: 12.34 };
        assert_eq!(message(&s), "loss 0.250000 lr 1.000e-3 grad_norm 0.5000 12.3 examples/s");
    }
}
