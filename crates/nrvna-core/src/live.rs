//! What a running job shows while it runs: `partial.txt` (the text generated
//! so far, append-only), `progress.json` (token count and speed, replaced
//! atomically) and the `cancel` request file. The daemon writes the first
//! two and watches for the third; `flw` reads them and asks for cancels.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fileio::FileIo;
use crate::files::{CANCEL_FILE, PROGRESS_FILE};
use crate::fsio::read_limited;

/// The largest `progress.json` a reader accepts.
const MAX_PROGRESS_BYTES: u64 = 64 * 1024;

/// A running job's progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Tokens generated so far.
    #[serde(default)]
    pub tokens: u64,
    /// Generation speed so far.
    #[serde(default)]
    pub tokens_per_s: f64,
    /// When this was written (ISO-8601 UTC).
    #[serde(default)]
    pub updated_at: String,
}

impl Progress {
    /// Reads `progress.json` from a job directory; `None` when it is absent
    /// or unreadable (it is advisory, never worth an error).
    pub fn read(job_dir: &Path) -> Option<Progress> {
        let b = read_limited(&job_dir.join(PROGRESS_FILE), MAX_PROGRESS_BYTES).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Replaces `progress.json` in a job directory atomically (no fsync:
    /// it is rewritten every 100 ms and worthless after a crash).
    pub fn write(&self, io: &FileIo, job_dir: &Path) -> io::Result<()> {
        let mut b = serde_json::to_vec(self).map_err(io::Error::other)?;
        b.push(b'\n');
        io.write_atomic_volatile(job_dir, PROGRESS_FILE, &b)
    }
}

/// Asks the daemon to stop a running job: an empty `cancel` file, written
/// atomically into its `processing/<id>/` directory.
pub fn request_cancel(io: &FileIo, job_dir: &Path) -> io::Result<()> {
    io.write_atomic(job_dir, CANCEL_FILE, b"")
}

/// Whether someone asked to cancel the job in this directory.
pub fn cancel_requested(job_dir: &Path) -> bool {
    std::fs::symlink_metadata(job_dir.join(CANCEL_FILE)).is_ok_and(|m| m.file_type().is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips_and_tolerates_missing_keys() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Progress::read(d.path()), None);
        let p = Progress {
            tokens: 12,
            tokens_per_s: 3.5,
            updated_at: "2026-01-01T00:00:00.000000Z".into(),
        };
        p.write(&FileIo::default(), d.path()).unwrap();
        assert_eq!(Progress::read(d.path()), Some(p));
        std::fs::write(d.path().join(PROGRESS_FILE), br#"{"tokens":4}"#).unwrap();
        assert_eq!(Progress::read(d.path()).unwrap().tokens, 4);
        std::fs::write(d.path().join(PROGRESS_FILE), b"garbage").unwrap();
        assert_eq!(Progress::read(d.path()), None);
    }

    #[test]
    fn cancel_request_is_an_empty_file() {
        let d = tempfile::tempdir().unwrap();
        assert!(!cancel_requested(d.path()));
        request_cancel(&FileIo::default(), d.path()).unwrap();
        assert!(cancel_requested(d.path()));
        assert_eq!(std::fs::read(d.path().join(CANCEL_FILE)).unwrap(), b"");
    }
}
