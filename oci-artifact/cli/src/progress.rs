//! How far blob transfers have come, on stderr: an `indicatif` bar per
//! blob (bytes, rate, time left) when stderr is a terminal that can draw
//! them, as docker and oras show; otherwise (CI logs, pipes) a plain line at
//! every tenth of blobs of 1 MiB and more.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Plain lines only for blobs at least this large.
const PLAIN_FROM: u64 = 1 << 20;

pub struct Progress {
    /// `Some` on a terminal.
    bars: Option<MultiProgress>,
}

impl Progress {
    pub fn new() -> Self {
        // indicatif draws nothing on a terminal it thinks dumb (`TERM` unset
        // or `dumb`): plain lines then, too.
        let target = ProgressDrawTarget::stderr();
        let bars = (std::io::stderr().is_terminal() && !target.is_hidden())
            .then(|| MultiProgress::with_draw_target(target));
        Self { bars }
    }

    /// A tracker for one blob: `verb` is `push` or `pull`.
    pub fn track(&self, verb: &'static str, digest: &str, total: u64) -> Tracker {
        let short = digest.trim_start_matches("sha256:");
        let short = short.get(..12).unwrap_or(short).to_string();
        match &self.bars {
            Some(multi) => {
                let bar = multi.add(ProgressBar::new(total));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix} {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(verb);
                bar.set_message(short);
                Tracker::Bar(bar)
            }
            None => Tracker::Plain {
                verb,
                short,
                done: 0,
                total,
                shown: 0,
            },
        }
    }
}

pub enum Tracker {
    Bar(ProgressBar),
    Plain {
        verb: &'static str,
        short: String,
        done: u64,
        total: u64,
        /// Tenths already printed.
        shown: u64,
    },
}

impl Tracker {
    /// `n` more bytes went through; the bar finishes at the total.
    pub fn advance(&mut self, n: u64) {
        match self {
            Tracker::Bar(bar) => {
                bar.inc(n);
                if bar.length().is_some_and(|total| bar.position() >= total) {
                    bar.finish();
                }
            }
            Tracker::Plain {
                verb,
                short,
                done,
                total,
                shown,
            } => {
                *done += n;
                if *total < PLAIN_FROM {
                    return;
                }
                let tenth = (*done * 10 / *total).min(10);
                if tenth > *shown {
                    *shown = tenth;
                    eprintln!(
                        "{verb} {short}: {:>3}% of {:.1} MiB",
                        tenth * 10,
                        *total as f64 / (1 << 20) as f64
                    );
                }
            }
        }
    }

    /// The blob needs no transfer: the registry has it already.
    pub fn finish(&mut self, note: &str) {
        if let Tracker::Bar(bar) = self {
            bar.finish_with_message(format!("{} {note}", bar.message()));
        }
    }
}
