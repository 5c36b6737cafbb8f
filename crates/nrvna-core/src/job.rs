//! Reading a job as a user sees it: state, meta.json, its primary artifact,
//! its error and partial output, its batch request, and the one-line JSON
//! object of `flw --json` (the contract's fields, then nrvna's extras).

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::files::{Artifact, BATCH_FILE, ERROR_FILE, META_FILE, RESPONSE_FILE};
use crate::fsio::{read_optional, ReadError};
use crate::id::JobId;
use crate::meta::{Meta, MAX_META_BYTES};
use crate::state::State;
use crate::submit::BatchRequest;
use crate::workspace::Workspace;

/// The largest error.txt shown to a user.
const MAX_ERROR_BYTES: u64 = 64 * 1024;

/// The largest artifact or response.txt put inline into `flw --json`.
const MAX_TEXT_BYTES: u64 = 256 * 1024 * 1024;

/// A job found in a workspace at one moment.
#[derive(Clone, Debug)]
pub struct JobView {
    pub id: JobId,
    pub state: State,
    pub dir: PathBuf,
}

impl Workspace {
    /// Finds a job; `None` when it is missing.
    pub fn job(&self, id: &JobId) -> Option<JobView> {
        let state = self.locate(id)?;
        Some(JobView {
            id: id.clone(),
            state,
            dir: self.job_dir(state, id),
        })
    }

    /// Every published job, sorted by id.
    pub fn all_jobs(&self) -> Vec<JobView> {
        let mut v = Vec::new();
        for s in State::PUBLISHED {
            for id in self.list(s).unwrap_or_default() {
                v.push(JobView {
                    dir: self.job_dir(s, &id),
                    id,
                    state: s,
                });
            }
        }
        v.sort_by(|a, b| a.id.cmp(&b.id));
        // A job moving between two listings shows up twice: keep the later state.
        v.dedup_by(|later, earlier| {
            if later.id == earlier.id {
                if lifecycle_rank(later.state) > lifecycle_rank(earlier.state) {
                    std::mem::swap(later, earlier);
                }
                true
            } else {
                false
            }
        });
        v
    }
}

fn lifecycle_rank(s: State) -> u8 {
    match s {
        State::Writing => 0,
        State::Ready => 1,
        State::Processing => 2,
        State::Done | State::Failed => 3,
    }
}

impl JobView {
    /// meta.json of a job that may move while it is read (a claim, a
    /// finish, a cancel): when the read fails because the job is no longer
    /// where it was listed, the job is looked up again (at most three
    /// times), and this view follows it.
    pub fn meta_following(&mut self, ws: &Workspace) -> Result<Option<Meta>, String> {
        let mut last = self.meta();
        for _ in 0..3 {
            if matches!(last, Ok(Some(_))) || self.dir.exists() {
                break;
            }
            match ws.job(&self.id) {
                Some(moved) if moved.state != self.state => *self = moved,
                _ => break,
            }
            last = self.meta();
        }
        last
    }

    /// meta.json, if present and valid.
    pub fn meta(&self) -> Result<Option<Meta>, String> {
        match read_optional(&self.dir.join(META_FILE), MAX_META_BYTES) {
            Ok(Some(b)) => Meta::parse(&b).map(Some).map_err(|e| format!("{META_FILE} {e}")),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("{META_FILE} {e}")),
        }
    }

    /// The primary artifact: the first present of the contract's list.
    pub fn primary_artifact(&self) -> Option<Artifact> {
        Artifact::ALL
            .into_iter()
            .find(|a| std::fs::symlink_metadata(self.dir.join(a.file_name())).is_ok_and(|m| m.file_type().is_file()))
    }

    /// error.txt, trimmed, if present.
    pub fn error(&self) -> Option<String> {
        match read_optional(&self.dir.join(ERROR_FILE), MAX_ERROR_BYTES) {
            Ok(Some(b)) => Some(String::from_utf8_lossy(&b).trim_end().to_owned()),
            Ok(None) => None,
            Err(ReadError::TooLarge { .. }) => Some(format!("({ERROR_FILE} is too large to show)")),
            Err(e) => Some(format!("({ERROR_FILE} unreadable: {e})")),
        }
    }

    /// response.txt of a failed job (its partial output), if present.
    pub fn partial(&self) -> Option<String> {
        match read_optional(&self.dir.join(RESPONSE_FILE), MAX_TEXT_BYTES) {
            Ok(Some(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
            Ok(None) => None,
            Err(e) => Some(format!("({RESPONSE_FILE} unreadable: {e})")),
        }
    }

    /// batch.json: the batch-file request this job answers. `Ok(None)`
    /// when the job has none.
    pub fn batch_request(&self) -> Result<Option<BatchRequest>, String> {
        match read_optional(&self.dir.join(BATCH_FILE), MAX_META_BYTES) {
            Ok(Some(b)) => BatchRequest::parse(&b)
                .map(Some)
                .map_err(|e| format!("{BATCH_FILE} {e}")),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("{BATCH_FILE} {e}")),
        }
    }

    /// The job as one JSON object: the contract's `flw WS ID --json` (and
    /// NDJSON row), plus nrvna's extras (model, token counts, ...).
    pub fn summary(&self) -> Value {
        let mut v = json!({ "id": self.id.as_str(), "status": self.state.label() });
        let o = v.as_object_mut().expect("object");
        match self.meta() {
            Ok(Some(m)) => {
                let m = m.to_map();
                for k in CONTRACT_META_KEYS.iter().chain(EXTRA_META_KEYS) {
                    match m.get(*k) {
                        // A C++ daemon writes -1 for "no duration"; its flw leaves it out.
                        Some(x) if *k == "duration_s" && x.as_f64().is_some_and(|d| d < 0.0) => {}
                        Some(x) => {
                            o.insert((*k).into(), x.clone());
                        }
                        None => {}
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                o.insert("meta_error".into(), e.into());
            }
        }
        // A batch job finished by a C++ daemon lost the meta.json extra.
        if !o.contains_key("custom_id") {
            if let Ok(Some(b)) = self.batch_request() {
                o.insert("custom_id".into(), b.custom_id.into());
            }
        }
        match self.state {
            State::Done => {
                if let Some(a) = self.primary_artifact() {
                    self.add_artifact(o, a);
                }
            }
            State::Failed => {
                if let Some(e) = self.error() {
                    o.insert("error".into(), e.into());
                }
                if let Some(p) = self.partial() {
                    o.insert("partial".into(), p.into());
                }
            }
            _ => {}
        }
        v
    }

    /// `artifact_kind`, `artifact_path` and the artifact's content inline.
    fn add_artifact(&self, o: &mut serde_json::Map<String, Value>, artifact: Artifact) {
        let name = artifact.file_name();
        let path = self.dir.join(name);
        let abs = std::path::absolute(&path).unwrap_or(path.clone());
        o.insert("artifact".into(), name.into());
        o.insert("artifact_kind".into(), artifact.kind().into());
        o.insert("artifact_path".into(), abs.display().to_string().into());
        if artifact == Artifact::Audio {
            o.insert("audio_path".into(), abs.display().to_string().into());
            return;
        }
        let bytes = match read_optional(&path, MAX_TEXT_BYTES) {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                o.insert("artifact_error".into(), format!("{name} {e}").into());
                return;
            }
        };
        match artifact {
            Artifact::Embedding => match serde_json::from_slice::<Value>(&bytes) {
                Ok(e) => {
                    o.insert("embedding".into(), e);
                }
                Err(e) => {
                    o.insert("artifact_error".into(), format!("{name} is not valid JSON: {e}").into());
                }
            },
            _ => {
                o.insert(
                    artifact.kind().into(),
                    String::from_utf8_lossy(&bytes).into_owned().into(),
                );
            }
        }
    }
}

/// The meta.json keys the contract puts into `flw --json`.
const CONTRACT_META_KEYS: &[&str] = &[
    "mode",
    "submitted_at",
    "completed_at",
    "duration_s",
    "parent",
    "output_format",
    "tags",
    "artifacts",
];

/// nrvna's extra meta.json keys shown by `flw --json` (other readers skip them).
const EXTRA_META_KEYS: &[&str] = &[
    "custom_id",
    "model",
    "prompt_tokens",
    "generated_tokens",
    "finish_reason",
    "recovery_attempts",
    "cancelled",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_following_finds_a_job_that_moved_after_it_was_listed() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        let id = JobId::parse("5").unwrap();
        let ready = ws.job_dir(State::Ready, &id);
        std::fs::create_dir(&ready).unwrap();
        std::fs::write(ready.join("meta.json"), br#"{"tags":["t"]}"#).unwrap();
        let mut listed = ws.all_jobs().remove(0);
        assert_eq!(listed.state, State::Ready);
        // Cancelled (or claimed) between the listing and the read.
        ws.transition(&id, State::Ready, State::Failed).unwrap();
        assert!(matches!(listed.meta(), Ok(None)), "the stale view reads nothing");
        let m = listed.meta_following(&ws).unwrap().expect("followed the job");
        assert_eq!(m.tags, ["t"]);
        assert_eq!(listed.state, State::Failed);
    }
}
