//! Start-up recovery: jobs left in `processing/` by a daemon that died go
//! back to `input/ready/` with `recovery_attempts` + 1, or to `failed/` at
//! the ceiling; staging leftovers older than an hour are removed. A worker
//! that panicked on a job recovers that one job the same way.

use std::fs;
use std::time::{Duration, SystemTime};

use nrvna_core::fsio::{clear_entry, read_optional};
use nrvna_core::meta::{Meta, Status, MAX_META_BYTES};
use nrvna_core::time::iso8601_utc;
use nrvna_core::{JobId, Moved, State, Workspace};

use nrvna_core::files::{CANCEL_FILE, ERROR_FILE, META_FILE, PARTIAL_FILE, PROGRESS_FILE};
use nrvna_core::members::CLAIM_FILE;

/// Staging directories older than this are leftovers of a killed submitter.
pub const STAGING_MAX_AGE: Duration = Duration::from_secs(3600);

/// What recovery did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub requeued: usize,
    pub failed: usize,
    pub staging_removed: usize,
}

/// What happened to one recovered job.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovery {
    Requeued,
    Failed,
    Left,
}

/// Recovers every job in `processing/`. Only the lock holder may call this,
/// before any worker runs.
pub fn recover(ws: &Workspace, max: u64) -> Recovered {
    let mut r = Recovered::default();
    for id in ws.list(State::Processing).unwrap_or_default() {
        match recover_one(ws, &id, max) {
            Recovery::Requeued => r.requeued += 1,
            Recovery::Failed => r.failed += 1,
            Recovery::Left => {}
        }
    }
    r.staging_removed = clean_staging(ws, STAGING_MAX_AGE);
    r
}

/// Moves one abandoned job from `processing/` back to `input/ready/`
/// (counting the attempt in meta.json), or to `failed/` at the ceiling or
/// when it was cancelled.
pub fn recover_one(ws: &Workspace, id: &JobId, max: u64) -> Recovery {
    recover_guarded(ws, id, max, &|| true)
}

/// [`recover_one`], but only while `still` holds: it is asked before
/// anything is touched and again right before the rename (a shared
/// member checks that the job's claim has not changed). `Left` otherwise.
pub fn recover_guarded(ws: &Workspace, id: &JobId, max: u64, still: &dyn Fn() -> bool) -> Recovery {
    if !still() {
        return Recovery::Left;
    }
    let back = |why: &str| {
        if !still() {
            return Recovery::Left;
        }
        if let Err(e) = ws.transition(id, State::Processing, State::Ready) {
            tracing::error!("recovering {id} ({why}): {e}; left in processing/");
            return Recovery::Left;
        }
        Recovery::Requeued
    };
    let dir = ws.job_dir(State::Processing, id);
    if !fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_dir()) {
        // Not a directory: the processor fails it properly once it is ready again.
        return back("not a directory");
    }
    remove_temp_files(&dir);
    let meta = match read_optional(&dir.join(META_FILE), MAX_META_BYTES) {
        Ok(Some(b)) => Meta::parse(&b).map_err(|e| e.to_string()),
        Ok(None) => Ok(Meta::new()),
        Err(e) => Err(e.to_string()),
    };
    let mut meta = match meta {
        Ok(m) => m,
        // Not rewritten (that would lose it): the processor fails the
        // job at once and keeps the original as meta.json.invalid.
        Err(why) => {
            tracing::warn!("{id}: meta.json {why}; back to input/ready/ unchanged, where it fails");
            return back("invalid meta.json");
        }
    };
    let attempts = meta.recovery_attempts;
    let cancelled = dir.join(CANCEL_FILE).exists();
    let to = if attempts >= max || cancelled {
        let why = if cancelled {
            "cancelled by user".to_owned()
        } else {
            format!(
                "abandoned in processing/ {} times (the daemon died or faulted while running it); giving up after NRVNA_MAX_RECOVERY_ATTEMPTS={max}",
                attempts + 1
            )
        };
        meta.status = Some(Status::Failed);
        meta.completed_at = Some(iso8601_utc(SystemTime::now()));
        meta.artifacts = Some(vec![ERROR_FILE.into()]);
        if cancelled {
            meta.set_extra("cancelled", true);
        }
        let _ = clear_entry(&dir, ERROR_FILE);
        let _ = ws.io().write_atomic(&dir, ERROR_FILE, format!("{why}\n").as_bytes());
        tracing::warn!("{id}: {why}");
        State::Failed
    } else {
        meta.recovery_attempts = attempts + 1;
        State::Ready
    };
    if !still() {
        return Recovery::Left;
    }
    for scratch in [PARTIAL_FILE, PROGRESS_FILE] {
        let _ = clear_entry(&dir, scratch);
    }
    let _ = clear_entry(&dir, META_FILE);
    let _ = ws.io().write_atomic(&dir, META_FILE, &meta.to_bytes());
    if !still() {
        tracing::warn!("{id} was claimed again while being recovered; left to its new holder");
        return Recovery::Left;
    }
    let _ = clear_entry(&dir, CLAIM_FILE);
    let _ = ws.io().sync_dir(&dir);
    match ws.transition(id, State::Processing, to) {
        Ok(Moved::Yes) if to == State::Ready => {
            tracing::info!("recovered {id} (attempt {})", attempts + 1);
            Recovery::Requeued
        }
        Ok(Moved::Yes) => Recovery::Failed,
        Ok(other) => {
            tracing::error!("recovering {id}: {other:?}; left in processing/");
            Recovery::Left
        }
        Err(e) => {
            tracing::error!("recovering {id}: {e}; left in processing/");
            Recovery::Left
        }
    }
}

/// Removes `NAME.tmp` files that a daemon killed mid-write left in a job
/// directory, so that they never travel into `output/` or `failed/`.
fn remove_temp_files(dir: &std::path::Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let is_tmp = e.file_name().to_str().is_some_and(|n| n.ends_with(".tmp"));
        if is_tmp && e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Removes staging directories older than `age`; returns how many.
pub fn clean_staging(ws: &Workspace, age: Duration) -> usize {
    let Ok(entries) = fs::read_dir(ws.dir(State::Writing)) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|a| a >= age);
        if old {
            let p = e.path();
            let gone = if e.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            match gone {
                Ok(()) => {
                    tracing::info!("removed staging leftover {} (older than an hour)", p.display());
                    n += 1;
                }
                Err(err) => {
                    tracing::warn!("could not remove staging leftover {}: {err}", p.display())
                }
            }
        }
    }
    n
}
