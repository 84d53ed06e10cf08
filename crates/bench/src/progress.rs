//! Progress on stderr while the benchmark runs: a line per phase and a
//! counter. On a terminal the counter rewrites its line; in a CI log it
//! prints at every tenth of the way, so logs stay short.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Announces a phase.
pub fn phase(title: &str) {
    eprintln!("==> {title}");
}

/// Prints a warning that does not stop the run.
pub fn warn(message: &str) {
    eprintln!("warning: {message}");
}

/// A counter of `total` steps. Shareable between tasks.
pub struct Counter {
    label: String,
    total: usize,
    done: AtomicUsize,
    tty: bool,
}

impl Counter {
    pub fn new(label: impl Into<String>, total: usize) -> Self {
        let c = Self {
            label: label.into(),
            total,
            done: AtomicUsize::new(0),
            tty: std::io::stderr().is_terminal(),
        };
        c.show(0);
        c
    }

    /// One more step done.
    pub fn tick(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        self.show(done);
    }

    fn show(&self, done: usize) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r    {} {done}/{}", self.label, self.total);
            if done >= self.total {
                let _ = writeln!(err);
            }
            let _ = err.flush();
        } else {
            // Print at 0, at each tenth, and at the end.
            let step = (self.total / 10).max(1);
            if done == self.total || (done < self.total && done.is_multiple_of(step)) {
                let _ = writeln!(err, "    {} {done}/{}", self.label, self.total);
            }
        }
    }

    /// Ends the counter's line early (e.g. on an error).
    pub fn finish(&self) {
        let done = self.done.load(Ordering::Relaxed);
        if self.tty && done < self.total {
            eprintln!();
        }
    }
}
