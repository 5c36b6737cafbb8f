//! Backpressure: a workspace's limit on queued jobs.
//!
//! `nrvnad --max-queued N` records the limit in `WS/.nrvna-limits.json`
//! (`{"max_queued": N}`), where every submitter reads it, and where it
//! stays while no daemon runs. A submitter takes an [`Admission`] before it
//! publishes: with a limit, that is an exclusive `flock` on
//! `WS/.nrvna-queue.lock` held while it counts `input/ready/` and publishes,
//! so that submitters running at once never queue more than the limit
//! together (daemons claiming jobs only lower the count, and need no lock).
//! Without a limit, admission takes no lock and costs nothing.

use std::fs::{self, File};
use std::io;

use serde_json::{json, Value};

use crate::fsio::{lock_file, read_optional};
use crate::state::State;
use crate::workspace::Workspace;

/// Where the limit is recorded.
pub const LIMITS_FILE: &str = ".nrvna-limits.json";
/// What submitters lock while they count and publish.
pub const QUEUE_LOCK_FILE: &str = ".nrvna-queue.lock";

/// The workspace's limit on queued jobs, if one is recorded (an unreadable
/// record is no limit, with the reason).
pub fn max_queued(ws: &Workspace) -> Result<Option<u64>, String> {
    let bytes = match read_optional(&ws.file(LIMITS_FILE), 64 * 1024) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("{LIMITS_FILE}: {e}")),
    };
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("{LIMITS_FILE} is not valid JSON: {e}"))?;
    match v.get("max_queued") {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n
            .as_u64()
            .filter(|&n| n > 0)
            .map(Some)
            .ok_or_else(|| format!("{LIMITS_FILE}: max_queued must be a positive integer")),
    }
}

/// Records the limit (`None` removes it).
pub fn set_max_queued(ws: &Workspace, limit: Option<u64>) -> io::Result<()> {
    match limit {
        Some(n) => {
            let mut b = json!({ "max_queued": n }).to_string().into_bytes();
            b.push(b'\n');
            ws.io().write_atomic(ws.root(), LIMITS_FILE, &b)?;
        }
        None => match fs::remove_file(ws.file(LIMITS_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        },
    }
    ws.io().sync_dir(ws.root())
}

/// Why jobs were not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(
        "the queue is full: {queued} job(s) queued, and {adding} more would pass the workspace's limit of {limit} \
         (set by nrvnad --max-queued); nothing was published: submit again once the queue has drained \
         (flw WS shows it), or raise the limit"
    )]
    Full { queued: u64, adding: u64, limit: u64 },
    #[error("checking the workspace's queue limit: {0}")]
    Io(#[from] io::Error),
    #[error("the workspace's queue limit is unreadable ({0}); nothing was published: fix the file, or set the limit again with nrvnad --max-queued N (0 removes it)")]
    Record(String),
}

/// Leave to publish: holds the queue lock (when there is a limit) until
/// it drops, so publish before dropping it.
#[derive(Debug)]
pub struct Admission {
    _lock: Option<File>,
}

/// Admits `adding` jobs: always when the workspace has no limit, else
/// when the jobs queued now plus these stay within it.
pub fn admit(ws: &Workspace, adding: u64) -> Result<Admission, AdmitError> {
    let limit = match max_queued(ws).map_err(AdmitError::Record)? {
        Some(l) => l,
        None => return Ok(Admission { _lock: None }),
    };
    let f = lock_file(&ws.file(QUEUE_LOCK_FILE), true)?;
    let mut queued = 0u64;
    ws.scan(State::Ready, |_| queued += 1, |_| {})?;
    if queued + adding > limit {
        return Err(AdmitError::Full { queued, adding, limit });
    }
    Ok(Admission { _lock: f })
}

/// Admits as many of `want` jobs as fit now (all without a limit; 0 when
/// the queue is full): for a publisher that waits for room, such as a
/// gateway's batch, instead of being refused.
pub fn admit_some(ws: &Workspace, want: u64) -> Result<(Admission, u64), AdmitError> {
    match admit(ws, want) {
        Ok(a) => Ok((a, want)),
        Err(AdmitError::Full { queued, limit, .. }) => {
            // Counted again under the lock: the room may have changed.
            let granted = limit.saturating_sub(queued).min(want);
            match admit(ws, granted) {
                Ok(a) => Ok((a, granted)),
                Err(AdmitError::Full { .. }) => Ok((Admission { _lock: None }, 0)),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::submit::Submission;

    #[test]
    fn the_limit_is_recorded_read_and_enforced() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        assert_eq!(max_queued(&ws).unwrap(), None);
        admit(&ws, 1_000_000).expect("no limit: anything goes");
        set_max_queued(&ws, Some(3)).unwrap();
        assert_eq!(max_queued(&ws).unwrap(), Some(3));
        for _ in 0..2 {
            let _a = admit(&ws, 1).unwrap();
            Submission::text("x").publish(&ws).unwrap();
        }
        let e = admit(&ws, 2).unwrap_err();
        assert!(
            matches!(
                e,
                AdmitError::Full {
                    queued: 2,
                    adding: 2,
                    limit: 3
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("--max-queued"), "{e}");
        drop(admit(&ws, 1).expect("one more fits"));
        let (a, n) = admit_some(&ws, 5).unwrap();
        assert_eq!(n, 1, "room for one of five");
        drop(a);
        Submission::text("x").publish(&ws).unwrap();
        assert_eq!(admit_some(&ws, 5).unwrap().1, 0, "full");
        set_max_queued(&ws, None).unwrap();
        assert_eq!(max_queued(&ws).unwrap(), None);
        fs::write(ws.file(LIMITS_FILE), br#"{"max_queued": -1}"#).unwrap();
        assert!(max_queued(&ws).is_err());
    }
}
