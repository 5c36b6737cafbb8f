//! The gateway's side of the workspace: publish jobs (on a blocking thread,
//! as `wrk` does), wait for them to finish (woken by one inotify watch on
//! the state directories, shared by every waiting request), read what they
//! produced, and cancel the jobs of a client that went away.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use nrvna_core::cancel::{cancel_job, Cancelled};
use nrvna_core::files::{Artifact, ERROR_FILE};
use nrvna_core::fsio::read_limited;
use nrvna_core::limits;
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

    /// Publishes the jobs of one request, staged first (invisible), then
    /// one rename each. The guard exists before the first job is
    /// published: a client that goes away while they are published (the
    /// request's future dropped) stops the rest and cancels those already
    /// out. Publishing stops at the first failure, and the guard (dropped
    /// with the error) cancels what went out before it.
    pub async fn publish(&self, subs: Vec<Submission>) -> Result<(Vec<JobId>, CancelGuard), ApiError> {
        self.publish_as(subs.into_iter().map(|s| (s, None)).collect()).await
    }

    /// [`Jobs::publish`], each job under the id given (one the caller made
    /// with `JobId::generate` and named in its own record first) or a new one.
    pub async fn publish_as(
        &self,
        subs: Vec<(Submission, Option<JobId>)>,
    ) -> Result<(Vec<JobId>, CancelGuard), ApiError> {
        for (s, _) in &subs {
            s.validate(self.ws.settings().max_prompt_bytes)?;
        }
        let guard = CancelGuard {
            ws: self.ws.clone(),
            out: Arc::new(Published::default()),
        };
        let (ws, out) = (self.ws.clone(), guard.out.clone());
        let ids = tokio::task::spawn_blocking(move || -> Result<Vec<JobId>, ApiError> {
            // Within the workspace's queue limit (429 past it), held while publishing.
            let _admitted = limits::admit(&ws, subs.len() as u64).map_err(|e| {
                let mut a = ApiError::from(e);
                if a.retry_after.is_some() {
                    a.retry_after = Some(retry_after(&ws));
                }
                a
            })?;
            let staged = subs
                .iter()
                .map(|(s, id)| id.as_ref().map_or_else(|| s.stage(&ws), |id| s.stage_as(&ws, id)))
                .collect::<Result<Vec<_>, _>>()?;
            for st in staged {
                let mut ids = out.ids.lock().unwrap_or_else(|p| p.into_inner());
                if out.abandoned.load(Ordering::Acquire) {
                    // The rest stay staged and are removed as they drop.
                    break;
                }
                ids.push(st.publish(&ws)?);
            }
            Ok(out.ids.lock().unwrap_or_else(|p| p.into_inner()).clone())
        })
        .await
        .map_err(|e| ApiError::internal(format!("publishing jobs: {e}")))??;
        Ok((ids, guard))
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
}

/// When a full queue should have room again: the time the recent
/// completion rate takes to finish one job (at least 1 s; 10 s when
/// nothing finished lately).
fn retry_after(ws: &Workspace) -> u64 {
    nrvna_core::standing::recent_rate(ws, std::time::SystemTime::now())
        .eta_s(1)
        .map_or(10, |s| s.ceil().clamp(1.0, 3600.0) as u64)
}

/// The jobs a request has published so far, and whether its client left.
#[derive(Default)]
struct Published {
    /// Held while one job is published, so that a guard dropping meanwhile
    /// sees that job too.
    ids: Mutex<Vec<JobId>>,
    abandoned: AtomicBool,
}

/// Cancels a request's jobs unless disarmed: held by the request from
/// before its first job is published until it has its answer, so that a
/// client that disconnects (the request's future is dropped) or times out
/// leaves nothing running and nothing more is published.
pub struct CancelGuard {
    ws: Workspace,
    out: Arc<Published>,
}

impl CancelGuard {
    /// The jobs finished: nothing to cancel.
    pub fn disarm(self) {
        self.out.ids.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.out.abandoned.store(true, Ordering::Release);
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        // Stops a publisher still going; it finishes the job in hand first.
        self.out.abandoned.store(true, Ordering::Release);
        let ws = self.ws.clone();
        let out = self.out.clone();
        let work = move || {
            // Waits for a job being published, then takes every id out.
            let ids = std::mem::take(&mut *out.ids.lock().unwrap_or_else(|p| p.into_inner()));
            let mut cancelled = Vec::new();
            for id in ids {
                match cancel_job(&ws, &id) {
                    Ok(Cancelled::NotRunning(_)) => {}
                    Ok(_) => cancelled.push(id),
                    Err(e) => tracing::warn!("client went away, but cancelling job {id} failed: {e}"),
                }
            }
            match cancelled.as_slice() {
                [] => {}
                [one] => tracing::info!("client went away: cancelled job {one}"),
                [first, .., last] => tracing::info!(
                    "client went away: cancelled {} jobs ({first} .. {last})",
                    cancelled.len()
                ),
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
