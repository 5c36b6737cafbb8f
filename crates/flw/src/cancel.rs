//! `flw WS --cancel ID`: stop a job that has not finished.
//!
//! A queued job gets its reason (error.txt) and a `cancelled` meta.json
//! while still in input/ready/, then moves to failed/ in one rename, so
//! readers see it queued or failed with its reason, never in between; that
//! rename races a worker's claim, and exactly one of the two wins (a daemon
//! that wins clears error.txt at claim). A running one gets a `cancel` file in its directory; the
//! daemon stops it, keeps the partial output, and moves it to failed/ with
//! `cancelled: true`, which we wait for.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nrvna_core::files::ERROR_FILE;
use nrvna_core::lifecycle::{daemon_status, DaemonStatus};
use nrvna_core::live::request_cancel;
use nrvna_core::wait::wait_for;
use nrvna_core::{JobId, JobView, Moved, State, Workspace};

use crate::show::eprintln_missing;
use crate::wait::state_dirs;
use crate::Outcome;

/// How long to wait for the daemon to stop a running job, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

pub use nrvna_core::cancel::CANCELLED_BEFORE_START;

/// error.txt of a running job that a restarting daemon put back in the
/// queue before it saw the cancel request.
const CANCELLED_IN_QUEUE: &str = "cancelled by user (it was back in the queue after a daemon restart)";

pub fn cancel(ws: &Workspace, id: &JobId, timeout: Option<Duration>) -> Result<Outcome> {
    match ws.locate(id) {
        None => {
            eprintln_missing(ws, id);
            return Ok(Outcome::Failed);
        }
        Some(s) if s.is_terminal() => {
            eprintln!("job {id} already finished ({}); nothing to cancel", s.label());
            return Ok(Outcome::Done);
        }
        Some(State::Writing) => {
            bail!("job {id} is still being written by its submitter; try again in a moment")
        }
        Some(State::Ready) => match cancel_queued(ws, id, CANCELLED_BEFORE_START)? {
            Moved::Yes => return print_cancelled(),
            // A worker claimed it first: cancel it as a running job.
            Moved::SourceGone => {}
            Moved::DestinationExists => bail!(
                "cannot cancel job {id}: {} already exists; remove the stale copy first",
                ws.job_dir(State::Failed, id).display()
            ),
        },
        Some(_) => {}
    }
    cancel_running(ws, id, timeout.unwrap_or(DEFAULT_TIMEOUT))
}

/// A queued job, cancelled in one step for readers (see nrvna_core::cancel).
fn cancel_queued(ws: &Workspace, id: &JobId, reason: &str) -> Result<Moved> {
    nrvna_core::cancel::cancel_queued(ws, id, reason).with_context(|| {
        format!(
            "cancelling queued job {id} in {}",
            ws.job_dir(State::Ready, id).display()
        )
    })
}

fn print_cancelled() -> Result<Outcome> {
    let mut out = io::stdout().lock();
    writeln!(out, "cancelled")?;
    out.flush()?;
    Ok(Outcome::Done)
}

/// Asks the daemon to stop a running job and waits until it has.
fn cancel_running(ws: &Workspace, id: &JobId, timeout: Duration) -> Result<Outcome> {
    let dir = ws.job_dir(State::Processing, id);
    if let Err(e) = request_cancel(ws.io(), &dir) {
        // The job left processing/ in the meantime; see below where it went.
        if e.kind() != io::ErrorKind::NotFound {
            return Err(e).with_context(|| format!("writing the cancel request into {}", dir.display()));
        }
    }
    let dirs = state_dirs(ws);
    let dirs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
    let deadline = Instant::now() + timeout;
    let end = wait_for(&dirs, ws.settings().wait_poll, Some(deadline), || match ws.locate(id) {
        Some(s) if s.is_terminal() => Some(Some(s)),
        None => Some(None),
        // Recovered to the queue by a restarting daemon: cancel it there.
        Some(State::Ready) => match cancel_queued(ws, id, CANCELLED_IN_QUEUE) {
            Ok(Moved::Yes) => Some(Some(State::Failed)),
            _ => None,
        },
        Some(_) => None,
    });
    match end {
        None => {
            let hint = match daemon_status(ws) {
                DaemonStatus::NotRunning => format!(
                    "no daemon runs on {}; the job stops when one starts (nrvnad MODEL {})",
                    ws.root().display(),
                    ws.root().display()
                ),
                _ => format!(
                    "the daemon has not stopped it yet; check again with: flw {} {id}",
                    ws.root().display()
                ),
            };
            eprintln!(
                "flw: asked to cancel job {id}, but it is still running after {:.0}s: {hint}",
                timeout.as_secs_f64()
            );
            Ok(Outcome::Pending)
        }
        Some(None) => {
            eprintln_missing(ws, id);
            Ok(Outcome::Failed)
        }
        Some(Some(state)) => {
            let job = JobView {
                id: id.clone(),
                state,
                dir: ws.job_dir(state, id),
            };
            let cancelled = job
                .meta()
                .ok()
                .flatten()
                .and_then(|m| m.extra("cancelled").and_then(|v| v.as_bool()))
                .unwrap_or(false);
            if state == State::Failed && cancelled {
                return print_cancelled();
            }
            match state {
                State::Done => {
                    eprintln!("job {id} finished (done) before the cancel took effect; nothing was cancelled")
                }
                _ => eprintln!(
                    "job {id} failed before the cancel took effect: {}",
                    job.error().unwrap_or_else(|| format!("(no {ERROR_FILE})"))
                ),
            }
            Ok(Outcome::Done)
        }
    }
}
