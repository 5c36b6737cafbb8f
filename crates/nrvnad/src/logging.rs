//! Logs on stderr as `[YYYY-MM-DD HH:MM:SS.mmm] [LEVEL] [ThreadName] message`
//! (UTC), level from `NRVNA_LOG_LEVEL`. llama.cpp's own logs arrive through
//! `tracing` (target `llama-cpp-2`) and stay quiet unless the level is debug
//! or trace.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARN",
            Level::INFO => "INFO",
            Level::DEBUG => "DEBUG",
            Level::TRACE => "TRACE",
        };
        let now = nrvna_core::fsio::log_timestamp(std::time::SystemTime::now());
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("main");
        write!(w, "[{now}] [{level}] [{name}] ")?;
        if event.metadata().target() == "llama-cpp-2" {
            write!(w, "llama.cpp: ")?;
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// The tracing filter for a `NRVNA_LOG_LEVEL` value.
pub fn filter_for(level: &str) -> EnvFilter {
    let level = match level.trim().to_ascii_lowercase().as_str() {
        l @ ("error" | "warn" | "info" | "debug" | "trace") => l.to_owned(),
        _ => "info".to_owned(),
    };
    let llama = if matches!(level.as_str(), "debug" | "trace") {
        level.as_str()
    } else {
        "error"
    };
    // `llama-cpp-2` carries llama.cpp's lines; `llama_cpp_2` the bridge's own notes.
    EnvFilter::new(format!("{level},llama-cpp-2={llama},llama_cpp_2={llama}"))
}

/// Installs the logger (idempotent).
pub fn init() {
    let level = std::env::var("NRVNA_LOG_LEVEL").unwrap_or_default();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(filter_for(&level))
        .event_format(LineFormat)
        .try_init();
}
