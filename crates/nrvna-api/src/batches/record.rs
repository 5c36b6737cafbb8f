//! A batch's durable record, `WS/api/batches/<batch-id>.json`, and the
//! files beside it: `.lock` (the publisher's flock), `.cancel` (a cancel was
//! asked for; written by whoever got the request, so that the record has
//! one writer, the lock holder) and `.errors.jsonl` (the lines that cannot
//! run, as error-file lines). Also the ids the gateway hands out.

use std::path::{Path, PathBuf};

use nrvna_core::fsio::{read_limited, ReadError};
use nrvna_core::{JobId, Workspace};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The marker of records whose jobs are named by line (`<J>_<line:06>`).
/// Records without it were written by an earlier gateway: their jobs have
/// random ids and are found by the batch's tag.
pub const BY_LINE: &str = "by_line";

/// Record key: the seconds its output files live after it ends (the
/// request's `output_expires_after.seconds`).
pub const OUTPUT_EXPIRES_AFTER: &str = "output_expires_after_s";
/// Record key: when its output and error files expire (unix seconds); the
/// retention of nrvnad keeps its jobs until then.
pub const OUTPUT_EXPIRES_AT: &str = "output_expires_at";

/// The most requests one batch file may hold (OpenAI's limit).
pub const MAX_REQUESTS: u64 = 50_000;

/// What a batch was asked to do, and how far its publisher got. Its fields
/// in the order they are written (the order of the batch object the
/// gateway answers with); keys it does not know are kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub id: String,
    #[serde(default = "batch_object")]
    pub object: String,
    pub endpoint: String,
    pub input_file_id: String,
    #[serde(default = "default_window")]
    pub completion_window: String,
    pub created_at: i64,
    /// An object, or null.
    #[serde(default)]
    pub metadata: Value,
    /// How many requests the input file holds (0 until validated).
    pub total: u64,
    /// Whether every line is handled: a job, or a line of the error file.
    #[serde(default)]
    pub published: bool,
    /// When a cancel was asked for (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelling_at: Option<i64>,
    /// [`BY_LINE`], or absent (an earlier gateway's record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<String>,
    /// When the input file was validated and publishing began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress_at: Option<i64>,
    /// How many lines are in `.errors.jsonl` (they count as failed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rejected: u64,
    /// When every line had finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<i64>,
    /// When the last job of a cancelled batch stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<i64>,
    /// When the input file as a whole was found unusable; `errors` says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<i64>,
    /// When its completion window passed before it finished: unfinished
    /// lines were cancelled (`batch_expired` in the error file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub errors: Value,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

pub fn batch_object() -> String {
    "batch".into()
}

fn default_window() -> String {
    "24h".into()
}

impl BatchRecord {
    /// Whether its jobs are named by line (else: found by tag).
    pub fn by_line(&self) -> bool {
        self.jobs.as_deref() == Some(BY_LINE)
    }

    /// Nothing more will happen to it.
    pub fn finished(&self) -> bool {
        self.completed_at.is_some()
            || self.cancelled_at.is_some()
            || self.failed_at.is_some()
            || self.expired_at.is_some()
    }

    /// Starts the window of its output and error files at its end (`now`):
    /// `output_expires_at` = now + the `output_expires_after` seconds it was
    /// created with, if any.
    pub fn start_output_window(&mut self, now: i64) {
        if let Some(secs) = self.extra.get(OUTPUT_EXPIRES_AFTER).and_then(Value::as_i64) {
            self.extra
                .insert(OUTPUT_EXPIRES_AT.into(), Value::from(now.saturating_add(secs)));
        }
    }

    /// Whether its output and error files have expired.
    pub fn output_expired(&self, now: i64) -> bool {
        self.extra
            .get(OUTPUT_EXPIRES_AT)
            .and_then(Value::as_i64)
            .is_some_and(|t| t <= now)
    }

    /// When its completion window ends (`created_at` + `completion_window`,
    /// e.g. `24h`); `None` for a window that is no duration.
    pub fn expires_at(&self) -> Option<i64> {
        let w = nrvna_core::retention::parse_duration(&self.completion_window).ok()?;
        Some(self.created_at.saturating_add(w.as_secs().max(1) as i64))
    }

    /// The batch's id as a job id (`batch_<J>` -> J).
    pub fn job_id(&self) -> Option<JobId> {
        batch_job_id(&self.id)
    }
}

/// A batch's status, OpenAI's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

/// `file-<job id>` for uploads.
pub fn upload_job_id(id: &str) -> Option<JobId> {
    JobId::parse(id.strip_prefix("file-")?).ok()
}

/// `batch_<job id>`, which is also the tag of its jobs.
pub fn batch_job_id(id: &str) -> Option<JobId> {
    JobId::parse(id.strip_prefix("batch_")?).ok()
}

/// `file-batch_<job id>-output` / `-errors`: made from a batch's jobs.
pub fn result_file(id: &str) -> Option<(String, bool)> {
    let rest = id.strip_prefix("file-")?;
    let (batch, errors) = match rest.strip_suffix("-output") {
        Some(b) => (b, false),
        None => (rest.strip_suffix("-errors")?, true),
    };
    batch_job_id(batch)?;
    Some((batch.to_owned(), errors))
}

/// Where the gateway keeps its records: `WS/api/files` and `WS/api/batches`.
#[derive(Clone, Debug)]
pub struct Dirs {
    pub files: PathBuf,
    pub batches: PathBuf,
}

impl Dirs {
    pub fn record(&self, id: &str) -> PathBuf {
        self.batches.join(format!("{id}.json"))
    }

    pub fn lock(&self, id: &str) -> PathBuf {
        self.batches.join(format!("{id}.lock"))
    }

    pub fn cancel(&self, id: &str) -> PathBuf {
        self.batches.join(format!("{id}.cancel"))
    }

    pub fn rejected(&self, id: &str) -> PathBuf {
        self.batches.join(format!("{id}.errors.jsonl"))
    }

    pub fn input(&self, file_id: &str) -> PathBuf {
        self.files.join(format!("{file_id}.data"))
    }

    /// A batch's record; `None` when there is none, or when it is
    /// unreadable or malformed (then with a warning naming the file).
    pub fn read(&self, id: &str) -> Option<BatchRecord> {
        batch_job_id(id)?;
        let path = self.record(id);
        let bytes = match read_limited(&path, 16 << 20) {
            Ok(b) => b,
            Err(ReadError::Missing) => return None,
            Err(e) => {
                tracing::warn!("skipping batch record {}: {e}", path.display());
                return None;
            }
        };
        match serde_json::from_slice::<BatchRecord>(&bytes) {
            Ok(rec) if rec.id == id => Some(rec),
            Ok(rec) => {
                tracing::warn!("skipping batch record {}: it names batch {:?}", path.display(), rec.id);
                None
            }
            Err(e) => {
                tracing::warn!("skipping batch record {}: {e}", path.display());
                None
            }
        }
    }

    /// When a cancel of the batch was asked for, from its `.cancel` file.
    pub fn cancel_asked(&self, id: &str) -> Option<i64> {
        let b = read_limited(&self.cancel(id), 64).ok()?;
        Some(String::from_utf8_lossy(&b).trim().parse().unwrap_or(0))
    }

    /// The ids of every batch record, newest first.
    pub fn ids(&self) -> std::io::Result<Vec<String>> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.batches)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_owned))
            .filter(|id| batch_job_id(id).is_some())
            .collect();
        // Ids sort by submission time.
        ids.sort_by_key(|id| std::cmp::Reverse(batch_job_id(id)));
        Ok(ids)
    }
}

/// Writes NAME.tmp, fsyncs, renames, fsyncs the directory.
pub fn write_json(ws: &Workspace, dir: &Path, name: &str, v: &impl Serialize) -> Result<(), String> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    write_bytes(ws, dir, name, &b)
}

pub fn write_bytes(ws: &Workspace, dir: &Path, name: &str, b: &[u8]) -> Result<(), String> {
    let io = ws.io();
    io.write_atomic(dir, name, b)
        .and_then(|()| io.sync_dir(dir))
        .map_err(|e| format!("writing {name} in the gateway's records: {e}"))
}

/// Writes a batch's record.
pub fn write_record(ws: &Workspace, dirs: &Dirs, rec: &BatchRecord) -> Result<(), String> {
    write_json(ws, &dirs.batches, &format!("{}.json", rec.id), rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_any_path_is_made() {
        assert!(upload_job_id("file-../../etc").is_none());
        assert!(batch_job_id("batch_1_2_000003").is_some());
        assert_eq!(
            result_file("file-batch_1_2_000003-errors"),
            Some(("batch_1_2_000003".into(), true))
        );
        assert!(result_file("file-batch_../x-output").is_none());
    }
}
