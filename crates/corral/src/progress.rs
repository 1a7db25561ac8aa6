//! A transfer's progress on stderr, on one line rewritten in place
//! (`Transferring image: 12.00MiB/40.00MiB (30%) 5.00MiB/s`), when stderr is a terminal; nothing
//! otherwise, so that logs and pipes get no carriage returns.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::output::size;

/// How often the line is rewritten, at most.
const EVERY: Duration = Duration::from_millis(100);

pub struct Progress {
    label: String,
    tty: bool,
    started: Instant,
    last_shown: Option<Instant>,
    /// The length of the longest line written, to blank it out.
    width: usize,
}

impl Progress {
    pub fn new(label: &str) -> Progress {
        Progress {
            label: label.to_string(),
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last_shown: None,
            width: 0,
        }
    }

    /// `done` bytes of `total` (0: unknown) so far.
    pub fn update(&mut self, done: u64, total: u64) {
        if !self.tty {
            return;
        }
        let now = Instant::now();
        if done < total && self.last_shown.is_some_and(|t| now.duration_since(t) < EVERY) {
            return;
        }
        self.last_shown = Some(now);
        let secs = now.duration_since(self.started).as_secs_f64().max(0.001);
        let line = render(&self.label, done, total, secs);
        self.width = self.width.max(line.chars().count());
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r{line:<width$}", width = self.width);
        let _ = stderr.flush();
    }

    /// Blanks the line out (also done on drop).
    pub fn finish(&mut self) {
        if self.tty && self.width > 0 {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r{}\r", " ".repeat(self.width));
            let _ = stderr.flush();
            self.width = 0;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

fn render(label: &str, done: u64, total: u64, secs: f64) -> String {
    let bytes = |n: u64| size(i64::try_from(n).unwrap_or(i64::MAX));
    let rate = bytes((done as f64 / secs) as u64);
    match done.saturating_mul(100).checked_div(total) {
        None => format!("{label}: {} {rate}/s", bytes(done)),
        Some(percent) => format!("{label}: {}/{} ({percent}%) {rate}/s", bytes(done), bytes(total)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines() {
        assert_eq!(
            super::render("Transferring image", 3 << 20, 10 << 20, 2.0),
            "Transferring image: 3.00MiB/10.00MiB (30%) 1.50MiB/s"
        );
        assert_eq!(super::render("Exporting", 512, 0, 1.0), "Exporting: 512B 512B/s");
    }
}
