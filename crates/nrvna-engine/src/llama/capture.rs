//! A minimal `tracing` subscriber that keeps the messages of WARN and
//! ERROR events: llama.cpp's log lines, which its log callback turns into
//! such events on the calling thread (see `with_captured_llama_errors`).

use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::{span, Event, Level, Metadata, Subscriber};

/// Keeps the messages of WARN and ERROR events.
#[derive(Default)]
pub struct Capture {
    pub lines: Arc<Mutex<Vec<String>>>,
}

struct Msg(String);
impl Visit for Msg {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.trim().to_owned();
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" && self.0.is_empty() {
            self.0 = format!("{value:?}").trim().to_owned();
        }
    }
}

impl Subscriber for Capture {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        *m.level() <= Level::WARN
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, e: &Event<'_>) {
        let mut m = Msg(String::new());
        e.record(&mut m);
        if !m.0.is_empty() {
            if let Ok(mut l) = self.lines.lock() {
                l.push(m.0);
            }
        }
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}
