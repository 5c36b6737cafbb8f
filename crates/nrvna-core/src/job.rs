//! Reading a job as a user sees it: state, meta.json, its primary artifact,
//! its error, and a one-line JSON summary (the NDJSON rows of `flw --json`).

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::fsio::{read_optional, ReadError};
use crate::id::JobId;
use crate::meta::{Meta, MAX_META_BYTES};
use crate::state::{artifact_kind, State, ARTIFACTS};
use crate::workspace::Workspace;

/// The largest error.txt shown to a user.
const MAX_ERROR_BYTES: u64 = 64 * 1024;

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
    /// meta.json, if present and valid.
    pub fn meta(&self) -> Result<Option<Meta>, String> {
        match read_optional(&self.dir.join("meta.json"), MAX_META_BYTES) {
            Ok(Some(b)) => Meta::parse(&b).map(Some).map_err(|e| format!("meta.json {e}")),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("meta.json {e}")),
        }
    }

    /// The primary artifact's file name: the first present of the contract's list.
    pub fn primary_artifact(&self) -> Option<&'static str> {
        ARTIFACTS
            .into_iter()
            .find(|name| std::fs::symlink_metadata(self.dir.join(name)).is_ok_and(|m| m.file_type().is_file()))
    }

    /// error.txt, trimmed, if present.
    pub fn error(&self) -> Option<String> {
        match read_optional(&self.dir.join("error.txt"), MAX_ERROR_BYTES) {
            Ok(Some(b)) => Some(String::from_utf8_lossy(&b).trim_end().to_owned()),
            Ok(None) => None,
            Err(ReadError::TooLarge { .. }) => Some("(error.txt is too large to show)".into()),
            Err(e) => Some(format!("(error.txt unreadable: {e})")),
        }
    }

    /// One JSON object describing the job (an NDJSON row).
    pub fn summary(&self) -> Value {
        let mut v = json!({ "id": self.id.as_str(), "status": self.state.label() });
        let o = v.as_object_mut().expect("object");
        match self.meta() {
            Ok(Some(m)) => {
                for k in [
                    "mode",
                    "tags",
                    "parent",
                    "submitted_at",
                    "completed_at",
                    "duration_s",
                    "custom_id",
                    "model",
                    "prompt_tokens",
                    "generated_tokens",
                    "recovery_attempts",
                    "cancelled",
                ] {
                    if let Some(x) = m.get(k) {
                        o.insert(k.into(), x.clone());
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                o.insert("meta_error".into(), e.into());
            }
        }
        if self.state == State::Done {
            if let Some(a) = self.primary_artifact() {
                o.insert("artifact".into(), a.into());
                o.insert("artifact_kind".into(), artifact_kind(a).into());
            }
        }
        if self.state == State::Failed {
            if let Some(e) = self.error() {
                o.insert("error".into(), e.into());
            }
        }
        v
    }
}
