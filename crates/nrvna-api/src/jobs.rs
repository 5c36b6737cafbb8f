//! The gateway's side of the workspace: publish jobs (on a blocking thread,
//! as `wrk` does), wait for them to finish (woken by one inotify watch on
//! the state directories, shared by every waiting request), read what they
//! produced, and cancel the jobs of a client that went away.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use nrvna_core::cancel::{cancel_job, Cancelled};
use nrvna_core::files::{Artifact, ERROR_FILE};
use nrvna_core::fsio::read_limited;
use nrvna_core::{JobId, JobView, Meta, State, Submission, Workspace};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::ApiError;

/// The largest artifact read into a response.
pub const MAX_ARTIFACT_BYTES: u64 = 64 * 1024 * 1024;

/// How often a waiter looks again when no event came (a filesystem without
/// inotify, or an event lost).
const POLL: Duration = Duration::from_millis(250);

pub struct Jobs {
    pub ws: Workspace,
    changed: Arc<Notify>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Jobs {
    pub fn new(ws: Workspace) -> Jobs {
        let changed = Arc::new(Notify::new());
        let poke = changed.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                poke.notify_waiters();
            }
        })
        .ok()
        .and_then(|mut w| {
            for s in [State::Processing, State::Done, State::Failed] {
                if let Err(e) = w.watch(&ws.dir(s), RecursiveMode::NonRecursive) {
                    tracing::warn!("cannot watch {}: {e}; waiting by polling", ws.dir(s).display());
                    return None;
                }
            }
            Some(w)
        });
        Jobs {
            ws,
            changed,
            _watcher: watcher,
        }
    }

    /// Publishes the jobs, all or none (staged first, then published).
    pub async fn publish(&self, subs: Vec<Submission>) -> Result<Vec<JobId>, ApiError> {
        for s in &subs {
            s.validate(self.ws.settings().max_prompt_bytes)?;
        }
        let ws = self.ws.clone();
        tokio::task::spawn_blocking(move || nrvna_core::batch::publish_all(&ws, &subs))
            .await
            .map_err(|e| ApiError::internal(format!("publishing jobs: {e}")))?
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    /// Waits until the job is done or failed; `None` at the deadline.
    /// A job that vanished (someone removed it) is an error.
    pub async fn wait(&self, id: &JobId, deadline: Instant) -> Result<Option<JobView>, ApiError> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.ws.job(id) {
                Some(j) if j.state.is_terminal() => return Ok(Some(j)),
                Some(_) => {}
                None => return Err(ApiError::internal(format!("job {id} disappeared from the workspace"))),
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let _ = tokio::time::timeout(POLL.min(deadline - now), notified).await;
        }
    }

    /// Waits for the next change in the state directories (or the poll
    /// interval, or `max`).
    pub async fn changed(&self, max: Duration) {
        let _ = tokio::time::timeout(POLL.min(max), self.changed.notified()).await;
    }

    /// A guard that cancels the jobs unless disarmed: held by a request
    /// while it waits, so that a client that disconnects (the request's
    /// future is dropped) or times out does not leave its jobs running.
    pub fn guard(&self, ids: Vec<JobId>) -> CancelGuard {
        CancelGuard {
            ws: self.ws.clone(),
            ids,
        }
    }
}

pub struct CancelGuard {
    ws: Workspace,
    ids: Vec<JobId>,
}

impl CancelGuard {
    /// The jobs finished: nothing to cancel.
    pub fn disarm(mut self) {
        self.ids.clear();
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let ws = self.ws.clone();
        let ids = std::mem::take(&mut self.ids);
        let work = move || {
            for id in ids {
                match cancel_job(&ws, &id) {
                    Ok(Cancelled::NotRunning(_)) => {}
                    Ok(how) => tracing::info!("client went away: cancelled job {id} ({how:?})"),
                    Err(e) => tracing::warn!("client went away, but cancelling job {id} failed: {e}"),
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(work);
            }
            Err(_) => work(),
        }
    }
}

/// What a finished job gives a response.
pub struct Finished {
    pub meta: Meta,
    /// The primary artifact and its bytes (done jobs).
    pub artifact: Option<(Artifact, Vec<u8>)>,
    /// error.txt (failed jobs).
    pub error: Option<String>,
}

impl Finished {
    pub fn read(job: &JobView) -> Result<Finished, ApiError> {
        let meta = job
            .meta()
            .map_err(|e| ApiError::internal(format!("job {}: {e}", job.id)))?
            .unwrap_or_default();
        match job.state {
            State::Done => {
                let artifact = job
                    .primary_artifact()
                    .ok_or_else(|| ApiError::internal(format!("job {} is done but holds no artifact", job.id)))?;
                let name = artifact.file_name();
                let bytes = read_limited(&job.dir.join(name), MAX_ARTIFACT_BYTES)
                    .map_err(|e| ApiError::internal(format!("job {}: reading {name}: {e}", job.id)))?;
                Ok(Finished {
                    meta,
                    artifact: Some((artifact, bytes)),
                    error: None,
                })
            }
            _ => Ok(Finished {
                meta,
                artifact: None,
                error: Some(
                    job.error()
                        .unwrap_or_else(|| format!("the job failed (no {ERROR_FILE})")),
                ),
            }),
        }
    }

    pub fn tokens(&self, key: &str) -> u64 {
        self.meta.extra(key).and_then(Value::as_u64).unwrap_or(0)
    }

    pub fn text(&self) -> Option<String> {
        match &self.artifact {
            Some((Artifact::Result | Artifact::Transcript, b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// The job's failure as an API error (500, or 408/499-like cancel).
    pub fn failure(&self, id: &JobId) -> ApiError {
        let why = self.error.clone().unwrap_or_default();
        if self.meta.extra("cancelled").and_then(Value::as_bool) == Some(true) {
            ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "invalid_request_error",
                format!("job {id} was cancelled: {why}"),
            )
            .code("cancelled")
        } else {
            ApiError::internal(format!("job {id} failed: {why}")).code("job_failed")
        }
    }
}

/// Seconds since the epoch now.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
