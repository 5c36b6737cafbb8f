//! Logs on stderr as `[YYYY-MM-DD HH:MM:SS.mmm] [LEVEL] [ThreadName] message`
//! (UTC), at the level given by `--log-level`/`NRVNA_LOG_LEVEL`. llama.cpp's
//! own logs arrive through `tracing` (target `llama-cpp-2`) and stay quiet
//! unless the level is debug or trace. While `--drain` shows a progress
//! bar on a terminal, log lines are printed above it, and per-job lines
//! drop to debug so that the bar stays readable.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use indicatif::ProgressBar;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
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
        let now = nrvna_core::time::log_timestamp(std::time::SystemTime::now());
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

/// The tracing filter for a log level.
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

/// The drain's progress bar, when one is shown.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);
/// Per-job lines are debug while a bar is shown.
static QUIET_JOBS: AtomicBool = AtomicBool::new(false);

/// Shows `bar` under the log lines until [`clear_bar`].
pub fn set_bar(bar: ProgressBar) {
    QUIET_JOBS.store(true, Ordering::SeqCst);
    *BAR.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
}

/// Removes the progress bar.
pub fn clear_bar() {
    if let Some(b) = BAR.lock().unwrap_or_else(|e| e.into_inner()).take() {
        b.finish_and_clear();
    }
    QUIET_JOBS.store(false, Ordering::SeqCst);
}

/// A per-job log line ("claimed", "done"): info, or debug under a bar.
pub fn job_line(args: fmt::Arguments<'_>) {
    if QUIET_JOBS.load(Ordering::Relaxed) {
        tracing::debug!("{args}");
    } else {
        tracing::info!("{args}");
    }
}

/// stderr, with the progress bar (if any) lifted while a line is written.
struct Stderr;

/// One formatted log line, written whole when dropped.
struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let bar = BAR.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let write = || {
            let _ = std::io::stderr().lock().write_all(&self.0);
        };
        match bar {
            Some(b) => b.suspend(write),
            None => write(),
        }
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(160))
    }
}

/// Installs the logger (idempotent).
pub fn init(level: &str) {
    let _ = tracing_subscriber::fmt()
        .with_writer(Stderr)
        .with_ansi(false)
        .with_env_filter(filter_for(level))
        .event_format(LineFormat)
        .try_init();
}
