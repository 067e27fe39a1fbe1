//! Progress of a long read: a bar with records/s and ETA on a terminal, a plain line every
//! few seconds otherwise (cron, CI logs).

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const PLAIN_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum Progress {
    Bar(ProgressBar),
    Plain {
        label: String,
        total: u64,
        done: u64,
        started: Instant,
        printed: Instant,
    },
}

impl Progress {
    /// Shows the progress of `label` over `total` records on stderr.
    pub fn new(label: &str, total: u64) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:40}] {human_pos}/{human_len} records, {per_sec}, ETA {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.to_owned());
            Self::Bar(bar)
        } else {
            let now = Instant::now();
            Self::Plain {
                label: label.to_owned(),
                total,
                done: 0,
                started: now,
                printed: now,
            }
        }
    }

    pub fn advance(&mut self, n: u64) {
        match self {
            Self::Bar(bar) => bar.inc(n),
            Self::Plain { done, printed, .. } => {
                *done += n;
                if printed.elapsed() >= PLAIN_EVERY {
                    *printed = Instant::now();
                    self.print();
                }
            }
        }
    }

    fn print(&self) {
        if let Self::Plain {
            label,
            total,
            done,
            started,
            ..
        } = self
        {
            let secs = started.elapsed().as_secs_f64().max(0.001);
            let rate = *done as f64 / secs;
            let eta = if rate > 0.0 {
                format!("{:.0} s", total.saturating_sub(*done) as f64 / rate)
            } else {
                "unknown".to_owned()
            };
            eprintln!("{label}: {done}/{total} records, {rate:.0} records/s, ETA {eta}");
        }
    }

    pub fn finish(&self) {
        match self {
            Self::Bar(bar) => bar.finish(),
            Self::Plain { .. } => self.print(),
        }
    }
}
