//! A running job's window to the outside: its partial output (`partial.txt`,
//! appended), a progress record (`progress.json`), and the reasons to stop
//! it early (a `cancel` file from `flw --cancel`, its timeout, shutdown).
//!
//! The engine calls `on_text` and `should_stop` between tokens: they only
//! touch memory. Every file operation happens in `poll`, on the worker's
//! thread that waits for the job, so a slow or hostile job directory can
//! never stall the engine that serves every other job.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nrvna_core::files::PARTIAL_FILE;
use nrvna_core::fsio::create_new;
use nrvna_core::live::{cancel_requested, Progress as ProgressRecord};
use nrvna_core::members::Claim;
use nrvna_core::time::iso8601_utc;
use nrvna_core::FileIo;
use nrvna_engine::Observer;

use crate::membership::Membership;

/// Partial output is written at least this often while a job generates.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Why a job was stopped before it finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopKind {
    Cancelled,
    TimedOut,
    Shutdown,
    /// A shared member lost the job: its claim was replaced (the lease
    /// expired while this member was paused, and another member took it).
    Fenced,
}

impl StopKind {
    fn code(self) -> u8 {
        match self {
            StopKind::Cancelled => 1,
            StopKind::TimedOut => 2,
            StopKind::Shutdown => 3,
            StopKind::Fenced => 4,
        }
    }
}

/// Text generated since the last flush.
#[derive(Default)]
struct Pending {
    text: String,
    tokens: u32,
}

/// What only the polling thread touches.
struct Files {
    partial: Option<File>,
    /// partial.txt could not be created (something else holds the name):
    /// no partial output for this job, and no retrying every poll.
    partial_refused: bool,
    last_flush: Instant,
    last_cancel_check: Instant,
    last_fence_check: Instant,
    written_tokens: u32,
}

/// Observer of one job, handed to the engine.
pub struct JobObserver {
    dir: PathBuf,
    io: FileIo,
    shutdown: Arc<AtomicBool>,
    started: Instant,
    timeout: Option<Duration>,
    stop: AtomicU8,
    pending: Mutex<Pending>,
    files: Mutex<Files>,
    /// A shared member's claim on the job, checked while it runs.
    fence: Option<Claim>,
}

/// How often a shared member checks, while a job runs, that it still holds it.
pub const FENCE_INTERVAL: Duration = Duration::from_millis(500);

impl JobObserver {
    pub fn new(dir: PathBuf, io: FileIo, shutdown: Arc<AtomicBool>, timeout_s: Option<f64>) -> JobObserver {
        let now = Instant::now();
        JobObserver {
            dir,
            io,
            shutdown,
            started: now,
            timeout: timeout_s.map(Duration::from_secs_f64),
            stop: AtomicU8::new(0),
            pending: Mutex::new(Pending::default()),
            files: Mutex::new(Files {
                partial: None,
                partial_refused: false,
                last_flush: now,
                last_cancel_check: now,
                last_fence_check: now,
                written_tokens: 0,
            }),
            fence: None,
        }
    }

    /// Checks, while the job runs, that `claim` still holds (shared members).
    pub fn with_fence(mut self, claim: Option<Claim>) -> JobObserver {
        self.fence = claim;
        self
    }

    /// Why the job was stopped, if it was.
    pub fn stop_kind(&self) -> Option<StopKind> {
        match self.stop.load(Ordering::SeqCst) {
            1 => Some(StopKind::Cancelled),
            2 => Some(StopKind::TimedOut),
            3 => Some(StopKind::Shutdown),
            4 => Some(StopKind::Fenced),
            _ => None,
        }
    }

    fn request_stop(&self, kind: StopKind) {
        let _ = self
            .stop
            .compare_exchange(0, kind.code(), Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Whether a cancel was requested (checked once more at claim time).
    pub fn cancel_requested(&self) -> bool {
        cancel_requested(&self.dir)
    }

    /// Appends pending text to partial.txt and replaces progress.json.
    fn flush(&self, f: &mut Files) {
        f.last_flush = Instant::now();
        let Pending { text, tokens } = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *p)
        };
        let tokens = tokens.max(f.written_tokens);
        if !text.is_empty() && !f.partial_refused {
            if f.partial.is_none() {
                match create_new(&self.dir, PARTIAL_FILE) {
                    Ok(file) => f.partial = Some(file),
                    Err(e) => {
                        tracing::warn!(
                            "{}: cannot create {PARTIAL_FILE} ({e}); this job's partial output is not shown",
                            self.dir.display()
                        );
                        f.partial_refused = true;
                    }
                }
            }
            if let Some(file) = f.partial.as_mut() {
                if let Err(e) = file.write_all(text.as_bytes()) {
                    tracing::warn!("{}: writing {PARTIAL_FILE}: {e}", self.dir.display());
                    f.partial = None;
                    f.partial_refused = true;
                }
            }
        }
        if tokens == f.written_tokens && text.is_empty() {
            return;
        }
        f.written_tokens = tokens;
        let secs = self.started.elapsed().as_secs_f64();
        let tps = if secs > 0.0 { f64::from(tokens) / secs } else { 0.0 };
        let rec = ProgressRecord {
            tokens: u64::from(tokens),
            tokens_per_s: (tps * 10.0).round() / 10.0,
            updated_at: iso8601_utc(SystemTime::now()),
        };
        let _ = rec.write(&self.io, &self.dir);
    }
}

impl Observer for JobObserver {
    fn on_text(&self, text: &str, tokens: u32) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.text.push_str(text);
        p.tokens = tokens;
    }

    fn should_stop(&self) -> Option<String> {
        if self.shutdown.load(Ordering::SeqCst) {
            self.request_stop(StopKind::Shutdown);
        }
        if let Some(t) = self.timeout {
            if self.started.elapsed() >= t {
                self.request_stop(StopKind::TimedOut);
            }
        }
        match self.stop_kind()? {
            StopKind::Shutdown => Some("the daemon is shutting down".into()),
            StopKind::TimedOut => Some(format!(
                "timed out after {} s",
                fmt_secs(self.timeout.map(|t| t.as_secs_f64()).unwrap_or(0.0))
            )),
            StopKind::Cancelled => Some("cancelled by user".into()),
            StopKind::Fenced => Some("claimed by another member after this member's lease expired".into()),
        }
    }

    fn poll(&self) {
        let Ok(mut f) = self.files.try_lock() else {
            return; // another poll is under way
        };
        if f.last_cancel_check.elapsed() >= FLUSH_INTERVAL {
            f.last_cancel_check = Instant::now();
            if self.cancel_requested() {
                self.request_stop(StopKind::Cancelled);
            }
        }
        if let Some(claim) = &self.fence {
            if f.last_fence_check.elapsed() >= FENCE_INTERVAL {
                f.last_fence_check = Instant::now();
                if !Membership::still_holds(&self.dir, claim) {
                    self.request_stop(StopKind::Fenced);
                    return; // the directory is another member's now
                }
            }
        }
        if self.stop_kind() == Some(StopKind::Fenced) {
            return;
        }
        if f.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.flush(&mut f);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(p: &std::path::Path) {
        use rustix::fs::{mknodat, FileType, Mode, CWD};
        mknodat(CWD, p, FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
    }

    #[test]
    fn a_fifo_named_partial_txt_never_blocks_and_text_is_dropped_not_hung() {
        let d = tempfile::tempdir().unwrap();
        mkfifo(&d.path().join(PARTIAL_FILE));
        let obs = JobObserver::new(
            d.path().to_owned(),
            FileIo::default(),
            Arc::new(AtomicBool::new(false)),
            None,
        );
        obs.on_text("hello", 1);
        let mut f = obs.files.lock().unwrap();
        obs.flush(&mut f); // would block forever if it opened the FIFO
        assert!(f.partial_refused);
        assert!(ProgressRecord::read(d.path()).is_some(), "progress still written");
    }

    #[test]
    fn text_is_appended_and_stop_reasons_are_sticky() {
        let d = tempfile::tempdir().unwrap();
        let shutdown = Arc::new(AtomicBool::new(false));
        let obs = JobObserver::new(d.path().to_owned(), FileIo::default(), shutdown.clone(), None);
        obs.on_text("a", 1);
        obs.flush(&mut obs.files.lock().unwrap());
        obs.on_text("b", 2);
        obs.flush(&mut obs.files.lock().unwrap());
        assert_eq!(std::fs::read_to_string(d.path().join(PARTIAL_FILE)).unwrap(), "ab");
        assert_eq!(obs.should_stop(), None);
        nrvna_core::live::request_cancel(&FileIo::default(), d.path()).unwrap();
        obs.files.lock().unwrap().last_cancel_check -= FLUSH_INTERVAL;
        obs.poll();
        assert_eq!(obs.should_stop().as_deref(), Some("cancelled by user"));
        shutdown.store(true, Ordering::SeqCst);
        assert_eq!(obs.stop_kind(), Some(StopKind::Cancelled), "the first reason stays");
    }
}
