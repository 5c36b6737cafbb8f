//! A running job's window to the outside: its partial output (`partial.txt`,
//! appended), a progress record (`progress.json`), and the reasons to stop
//! it early (a `cancel` file from `flw --cancel`, its timeout, shutdown).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nrvna_core::fsio::iso8601_utc;
use nrvna_core::live::{cancel_requested, Progress as ProgressRecord, PARTIAL_FILE};
use nrvna_engine::Observer;

use crate::server::Shared;

/// Partial output is flushed when this many tokens are pending...
pub const FLUSH_TOKENS: u32 = 16;
/// ...or when this much time has passed since the last flush.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Why a job was stopped before it finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopKind {
    Cancelled,
    TimedOut,
    Shutdown,
}

struct Progress {
    buf: String,
    tokens: u32,
    unflushed: u32,
    last_flush: Instant,
    last_cancel_check: Instant,
    file: Option<File>,
}

/// Observer of one job, handed to the engine.
pub struct JobObserver {
    dir: PathBuf,
    shared: Arc<Shared>,
    started: Instant,
    timeout: Option<Duration>,
    stop: AtomicU8,
    progress: Mutex<Progress>,
}

impl JobObserver {
    pub fn new(dir: PathBuf, shared: Arc<Shared>, timeout_s: Option<f64>) -> JobObserver {
        let now = Instant::now();
        JobObserver {
            dir,
            shared,
            started: now,
            timeout: timeout_s.map(Duration::from_secs_f64),
            stop: AtomicU8::new(0),
            progress: Mutex::new(Progress {
                buf: String::new(),
                tokens: 0,
                unflushed: 0,
                last_flush: now,
                last_cancel_check: now,
                file: None,
            }),
        }
    }

    /// Why the job was stopped, if it was.
    pub fn stop_kind(&self) -> Option<StopKind> {
        match self.stop.load(Ordering::SeqCst) {
            1 => Some(StopKind::Cancelled),
            2 => Some(StopKind::TimedOut),
            3 => Some(StopKind::Shutdown),
            _ => None,
        }
    }

    pub fn timeout_secs(&self) -> f64 {
        self.timeout.map(|t| t.as_secs_f64()).unwrap_or(0.0)
    }

    /// Whether a cancel was requested (checked once more at claim time).
    pub fn cancel_requested(&self) -> bool {
        cancel_requested(&self.dir)
    }

    fn flush_locked(&self, p: &mut Progress) {
        p.unflushed = 0;
        p.last_flush = Instant::now();
        if !p.buf.is_empty() {
            if p.file.is_none() {
                p.file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(self.dir.join(PARTIAL_FILE))
                    .ok();
            }
            if let Some(f) = p.file.as_mut() {
                if f.write_all(p.buf.as_bytes()).is_ok() {
                    p.buf.clear();
                }
            }
        }
        let secs = self.started.elapsed().as_secs_f64();
        let tps = if secs > 0.0 { f64::from(p.tokens) / secs } else { 0.0 };
        let rec = ProgressRecord {
            tokens: u64::from(p.tokens),
            tokens_per_s: (tps * 10.0).round() / 10.0,
            updated_at: iso8601_utc(SystemTime::now()),
        };
        let _ = rec.write(&self.dir);
    }
}

impl Observer for JobObserver {
    fn on_text(&self, text: &str, tokens: u32) {
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        p.buf.push_str(text);
        p.tokens = tokens;
        p.unflushed += 1;
        if p.unflushed >= FLUSH_TOKENS || p.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.flush_locked(&mut p);
        }
    }

    fn should_stop(&self) -> Option<String> {
        if self.shared.shutdown.load(Ordering::SeqCst) {
            self.stop.store(3, Ordering::SeqCst);
            return Some("the daemon is shutting down".into());
        }
        if let Some(t) = self.timeout {
            if self.started.elapsed() >= t {
                self.stop.store(2, Ordering::SeqCst);
                return Some(format!("timed out after {} s", fmt_secs(t.as_secs_f64())));
            }
        }
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        if p.last_cancel_check.elapsed() >= FLUSH_INTERVAL {
            p.last_cancel_check = Instant::now();
            drop(p);
            if self.cancel_requested() {
                self.stop.store(1, Ordering::SeqCst);
                return Some("cancelled by user".into());
            }
        }
        None
    }
}

/// Seconds without a useless fraction: 5 -> "5", 2.5 -> "2.5".
pub fn fmt_secs(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}
