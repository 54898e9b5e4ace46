//! Progress of the verbs that wait (image capture, `failgrp resync`, `pv replace`,
//! `scrub --wait`), in bytes.
//!
//! - On a terminal (stdout and stderr both TTYs): an indicatif bar on stderr, made at the first
//!   tick that knows the total, so it never shows "0/0".
//! - With `--json`: a line `{"progress":{"op":OP,"done_bytes":N,"total_bytes":M}}` on stdout at
//!   the first tick, then at most one a second; the command's result document follows them.
//! - Otherwise (output to a file or a pipe): nothing.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Shortest time between two `--json` progress lines.
pub const JSON_INTERVAL: Duration = Duration::from_secs(1);

const BAR_TEMPLATE: &str =
    "{prefix} [{wide_bar}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta} left)";

enum Mode {
    Json { last: Option<Instant> },
    Bar(Option<indicatif::ProgressBar>),
    Hidden,
}

/// The progress report of one waiting command.
pub struct Progress {
    op: &'static str,
    unit: u64,
    mode: Mode,
}

impl Progress {
    /// Progress of `op` (e.g. "capture"); each tick's counts are in units of `unit` bytes.
    pub fn new(op: &'static str, json: bool, unit: u64) -> Self {
        let mode = if json {
            Mode::Json { last: None }
        } else if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
            Mode::Bar(None)
        } else {
            Mode::Hidden
        };
        Progress { op, unit, mode }
    }

    /// One tick: `done` of `total` units. Ticks without a total yet (0) show nothing.
    pub fn tick(&mut self, out: &mut dyn Write, done: u64, total: u64) {
        if total == 0 {
            return;
        }
        let done = done.min(total).saturating_mul(self.unit);
        let total = total.saturating_mul(self.unit);
        match &mut self.mode {
            Mode::Hidden => {}
            Mode::Json { last } => {
                let now = Instant::now();
                if last.is_some_and(|t| now.duration_since(t) < JSON_INTERVAL) {
                    return;
                }
                *last = Some(now);
                let line = serde_json::json!({
                    "progress": { "op": self.op, "done_bytes": done, "total_bytes": total }
                });
                // Progress is best effort: a reader that went away loses nothing here, and the
                // command's final write reports a closed stdout.
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            Mode::Bar(bar) => {
                let b = bar.get_or_insert_with(|| {
                    let b = indicatif::ProgressBar::with_draw_target(
                        Some(total),
                        indicatif::ProgressDrawTarget::stderr(),
                    );
                    b.set_style(
                        indicatif::ProgressStyle::with_template(BAR_TEMPLATE)
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                            .progress_chars("=> "),
                    );
                    b.set_prefix(self.op);
                    b
                });
                b.set_length(total);
                b.set_position(done);
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Mode::Bar(Some(b)) = &self.mode {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(out: &[u8]) -> Vec<serde_json::Value> {
        std::str::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn json_lines_are_in_bytes_and_at_most_one_a_second() {
        let mut p = Progress::new("capture", true, 4096);
        let mut out = Vec::new();
        p.tick(&mut out, 0, 0); // no total yet: nothing
        for i in 1..=100 {
            p.tick(&mut out, i, 100);
        }
        let l = lines(&out);
        assert_eq!(l.len(), 1, "{l:?}");
        assert_eq!(l[0]["progress"]["op"], "capture");
        assert_eq!(l[0]["progress"]["done_bytes"], 4096);
        assert_eq!(l[0]["progress"]["total_bytes"], 409_600);
        assert!(indicatif::ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
    }
}
