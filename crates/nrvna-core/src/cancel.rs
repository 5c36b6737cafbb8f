//! Asking for a job to stop, without waiting: a queued job gets its reason
//! (error.txt, a cancelled meta.json) while still in input/ready/, then
//! moves to failed/ in one rename, so a reader sees it queued or failed
//! with its reason, never in between (that rename races a worker's claim;
//! exactly one wins, and a daemon that wins clears error.txt at claim); a
//! running one gets the `cancel` file the daemon watches. `flw --cancel` does the same and then waits; `nrvna-api`
//! cancels the job of a client that went away and does not wait.

use std::io;
use std::time::SystemTime;

use crate::files::{ERROR_FILE, META_FILE};
use crate::id::JobId;
use crate::job::JobView;
use crate::live::request_cancel;
use crate::meta::Status;
use crate::state::State;
use crate::time::iso8601_utc;
use crate::workspace::{Moved, Workspace};

/// error.txt of a job cancelled before a worker claimed it (the text
/// `flw --cancel` writes too).
pub const CANCELLED_BEFORE_START: &str = "cancelled by user before it started";

/// What a cancel request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// It was queued and is now failed (cancelled).
    Dequeued,
    /// It is running: the daemon was asked to stop it.
    Requested,
    /// It had already finished (or is still being staged); nothing to do.
    NotRunning(Option<State>),
}

/// Cancels a job without waiting for the daemon.
pub fn cancel_job(ws: &Workspace, id: &JobId) -> io::Result<Cancelled> {
    for _ in 0..3 {
        match ws.locate(id) {
            Some(State::Ready) => match cancel_queued(ws, id, CANCELLED_BEFORE_START)? {
                Moved::Yes => return Ok(Cancelled::Dequeued),
                // Claimed in the meantime: cancel it as a running job.
                Moved::SourceGone => continue,
                Moved::DestinationExists => {
                    return Err(io::Error::other(format!(
                        "cannot cancel job {id}: {} already exists",
                        ws.job_dir(State::Failed, id).display()
                    )))
                }
            },
            Some(State::Processing) => match request_cancel(ws.io(), &ws.job_dir(State::Processing, id)) {
                Ok(()) => return Ok(Cancelled::Requested),
                // It finished in the meantime.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            },
            other => return Ok(Cancelled::NotRunning(other)),
        }
    }
    Ok(Cancelled::NotRunning(ws.locate(id)))
}

/// Cancels a queued job: error.txt and meta.json are written while it is
/// still in input/ready/, then one rename makes it failed. `SourceGone`: a
/// worker claimed it first (what was written travels with it, and the
/// daemon clears it at claim).
pub fn cancel_queued(ws: &Workspace, id: &JobId, reason: &str) -> io::Result<Moved> {
    let dir = ws.job_dir(State::Ready, id);
    let job = JobView {
        id: id.clone(),
        state: State::Ready,
        dir: dir.clone(),
    };
    // An invalid meta.json is replaced rather than left unfinished.
    let mut meta = job.meta().ok().flatten().unwrap_or_default();
    meta.status = Some(Status::Failed);
    meta.set_extra("cancelled", true);
    meta.completed_at = Some(iso8601_utc(SystemTime::now()));
    meta.duration_s = Some(0.0);
    meta.artifacts = Some(vec![ERROR_FILE.into()]);
    let io = ws.io();
    let written = io
        .write_atomic(&dir, ERROR_FILE, format!("{reason}\n").as_bytes())
        .and_then(|()| io.write_atomic(&dir, META_FILE, &meta.to_bytes()))
        .and_then(|()| io.sync_dir(&dir));
    match written {
        Ok(()) => ws.transition(id, State::Ready, State::Failed),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Moved::SourceGone),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::cancel_requested;
    use crate::Submission;

    #[test]
    fn a_queued_job_fails_at_once_and_a_running_one_gets_the_cancel_file() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        let queued = Submission::text("a").publish(&ws).unwrap();
        assert_eq!(cancel_job(&ws, &queued).unwrap(), Cancelled::Dequeued);
        let job = ws.job(&queued).unwrap();
        assert_eq!(job.state, State::Failed);
        assert_eq!(job.error().as_deref(), Some(CANCELLED_BEFORE_START));
        assert_eq!(job.meta().unwrap().unwrap().extra("cancelled"), Some(&true.into()));

        let running = Submission::text("b").publish(&ws).unwrap();
        assert_eq!(
            ws.transition(&running, State::Ready, State::Processing).unwrap(),
            Moved::Yes
        );
        assert_eq!(cancel_job(&ws, &running).unwrap(), Cancelled::Requested);
        assert!(cancel_requested(&ws.job_dir(State::Processing, &running)));

        assert_eq!(
            cancel_job(&ws, &queued).unwrap(),
            Cancelled::NotRunning(Some(State::Failed))
        );
    }
}
