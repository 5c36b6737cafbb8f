//! The one-line progress indicator of long waits (`-w`, `-W`, `-f` while
//! queued): redrawn in place on stderr when stderr is a terminal, silent
//! otherwise, so pipes and logs stay clean.

use std::io::{IsTerminal, Write};

/// A line on stderr that is redrawn in place and erased when done.
pub struct Ticker {
    on: bool,
    last: String,
}

impl Ticker {
    /// Shows progress only when stderr is a terminal.
    pub fn new() -> Ticker {
        Ticker {
            on: std::io::stderr().is_terminal(),
            last: String::new(),
        }
    }

    /// Redraws the line when the message changed.
    pub fn show(&mut self, msg: &str) {
        if !self.on || msg == self.last {
            return;
        }
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r{msg}\x1b[K");
        let _ = e.flush();
        self.last = msg.to_owned();
    }

    /// Erases the line (before other output, and at the end).
    pub fn clear(&mut self) {
        if self.on && !self.last.is_empty() {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            self.last.clear();
        }
    }
}

impl Default for Ticker {
    fn default() -> Self {
        Ticker::new()
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.clear();
    }
}
