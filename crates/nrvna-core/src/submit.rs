//! Publishing a job: stage it in `input/writing/<id>`, write every file with
//! write-then-rename, fsync, and publish with one rename into `input/ready/`.
//!
//! A submitter killed at any point leaves at most a directory in
//! `input/writing/`, never a partial job in `input/ready/`.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use serde_json::Value;

use crate::fsio::{iso8601_utc, sync_dir, write_atomic};
use crate::id::JobId;
use crate::meta::{valid_tag, Meta};
use crate::params::Params;
use crate::state::{JobType, State};
use crate::workspace::{Moved, Workspace};

pub use crate::config::DEFAULT_MAX_PROMPT_BYTES;

/// The prompt size limit (`NRVNA_MAX_PROMPT_SIZE`, or the default).
pub fn max_prompt_bytes() -> u64 {
    crate::config::settings().max_prompt_bytes
}

/// The structured-output constraint of a job.
#[derive(Clone, Debug, PartialEq)]
pub enum OutputFormat {
    /// A JSON Schema (kept as `schema.json`; the daemon derives the grammar).
    JsonSchema(String),
    /// A GBNF grammar (kept as `grammar.gbnf`).
    Gbnf(String),
}

/// A job to publish.
#[derive(Clone, Debug)]
pub struct Submission {
    pub prompt: String,
    pub job_type: JobType,
    pub tags: Vec<String>,
    pub parent: Option<JobId>,
    pub params: Params,
    pub output: Option<OutputFormat>,
    /// Extra meta.json keys (e.g. `custom_id` from a batch file).
    pub extra_meta: serde_json::Map<String, Value>,
}

/// Why a submission was refused. Nothing is published when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the prompt is empty; give the prompt as arguments, or pipe it on stdin")]
    EmptyPrompt,
    #[error("the prompt is {size} bytes, over the limit of {limit} bytes (raise NRVNA_MAX_PROMPT_SIZE to allow it)")]
    PromptTooLarge { size: usize, limit: u64 },
    #[error("the prompt contains a NUL byte, which the model cannot take")]
    PromptNul,
    #[error("tag {0:?} is invalid: tags are 1-64 characters from [A-Za-z0-9_-]")]
    BadTag(String),
    #[error("invalid parameters: {0}")]
    Params(String),
    #[error("staging the job in {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl Submission {
    pub fn text(prompt: impl Into<String>) -> Submission {
        Submission {
            prompt: prompt.into(),
            job_type: JobType::Text,
            tags: Vec::new(),
            parent: None,
            params: Params::default(),
            output: None,
            extra_meta: serde_json::Map::new(),
        }
    }

    /// Checks everything that can be checked before touching the disk.
    pub fn validate(&self) -> Result<(), SubmitError> {
        if self.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        let limit = max_prompt_bytes();
        if self.prompt.len() as u64 > limit {
            return Err(SubmitError::PromptTooLarge {
                size: self.prompt.len(),
                limit,
            });
        }
        if self.prompt.contains('\0') {
            return Err(SubmitError::PromptNul);
        }
        if let Some(t) = self.tags.iter().find(|t| !valid_tag(t)) {
            return Err(SubmitError::BadTag(t.clone()));
        }
        self.params.validate().map_err(|e| SubmitError::Params(e.to_string()))?;
        Ok(())
    }

    /// The meta.json written at submit time.
    pub fn meta(&self) -> Meta {
        let mut m = Meta::new();
        for (k, v) in &self.extra_meta {
            m.set(k, v.clone());
        }
        m.set("submitted_at", iso8601_utc(SystemTime::now()));
        m.set("mode", self.job_type.as_str());
        if let Some(p) = &self.parent {
            m.set("parent", p.as_str());
        }
        if !self.tags.is_empty() {
            m.set("tags", self.tags.clone());
        }
        match &self.output {
            Some(OutputFormat::JsonSchema(_)) => m.set("output_format", "json_schema"),
            Some(OutputFormat::Gbnf(_)) => m.set("output_format", "gbnf"),
            None => {}
        }
        m
    }

    /// Validates, stages and publishes the job; returns its id.
    pub fn publish(&self, ws: &Workspace) -> Result<JobId, SubmitError> {
        self.stage(ws)?.publish(ws)
    }

    /// Validates the job and writes it into `input/writing/<id>` without
    /// publishing it. Lets a submitter stage many jobs before publishing
    /// any (a batch is all or nothing); a [`Staged`] dropped unpublished
    /// removes its directory.
    pub fn stage(&self, ws: &Workspace) -> Result<Staged, SubmitError> {
        self.validate()?;
        let (id, dir) = stage_dir(ws)?;
        let staged = Staged { id, dir, armed: true };
        let written = (|| -> io::Result<()> {
            let dir = &staged.dir;
            write_atomic(dir, "prompt.txt", self.prompt.as_bytes())?;
            if self.job_type != JobType::Text {
                write_atomic(dir, "type.txt", format!("{}\n", self.job_type.as_str()).as_bytes())?;
            }
            if !self.params.is_empty() {
                write_atomic(dir, "params.json", &self.params.to_bytes())?;
            }
            match &self.output {
                Some(OutputFormat::JsonSchema(s)) => write_atomic(dir, "schema.json", s.as_bytes())?,
                Some(OutputFormat::Gbnf(g)) => write_atomic(dir, "grammar.gbnf", g.as_bytes())?,
                None => {}
            }
            write_atomic(dir, "meta.json", &self.meta().to_bytes())?;
            sync_dir(dir)?;
            Ok(())
        })();
        match written {
            Ok(()) => Ok(staged),
            Err(source) => Err(SubmitError::Io {
                path: staged.dir.clone(),
                source,
            }),
        }
    }
}

/// A job written into `input/writing/<id>` but not yet published.
/// Dropping it unpublished removes the staging directory.
#[derive(Debug)]
pub struct Staged {
    id: JobId,
    dir: PathBuf,
    /// Remove the directory on drop (until published).
    armed: bool,
}

impl Staged {
    pub fn id(&self) -> &JobId {
        &self.id
    }

    /// Publishes the job with one rename into `input/ready/`.
    pub fn publish(mut self, ws: &Workspace) -> Result<JobId, SubmitError> {
        let source = match ws.transition(&self.id, State::Writing, State::Ready) {
            Ok(Moved::Yes) => {
                self.armed = false;
                return Ok(self.id.clone());
            }
            Ok(other) => io::Error::other(format!("publishing {} failed: {other:?}", self.id)),
            Err(e) => e,
        };
        Err(SubmitError::Io {
            path: self.dir.clone(),
            source,
        })
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Creates a fresh staging directory under `input/writing/`.
fn stage_dir(ws: &Workspace) -> Result<(JobId, PathBuf), SubmitError> {
    for _ in 0..1000 {
        let id = JobId::generate();
        let dir = ws.job_dir(State::Writing, &id);
        match fs::create_dir(&dir) {
            Ok(()) => return Ok((id, dir)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(SubmitError::Io { path: dir, source }),
        }
    }
    Err(SubmitError::Io {
        path: ws.dir(State::Writing),
        source: io::Error::other("could not find a free job id after 1000 tries"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_writes_prompt_and_meta_and_leaves_no_staging() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        let mut s = Submission::text("hello");
        s.tags = vec!["t1".into()];
        let id = s.publish(&ws).unwrap();
        let dir = ws.job_dir(State::Ready, &id);
        assert_eq!(fs::read_to_string(dir.join("prompt.txt")).unwrap(), "hello");
        let m = Meta::parse(&fs::read(dir.join("meta.json")).unwrap()).unwrap();
        assert_eq!(m.str("mode"), Some("text"));
        assert_eq!(m.tags(), ["t1"]);
        assert!(m.str("submitted_at").unwrap().ends_with('Z'));
        assert!(!dir.join("type.txt").exists(), "text is the default type");
        assert_eq!(ws.list(State::Writing).unwrap().len(), 0);
    }

    #[test]
    fn refused_submissions_publish_nothing() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        let mut bad_tag = Submission::text("x");
        bad_tag.tags = vec!["no spaces".into()];
        for s in [Submission::text(""), Submission::text("a\0b"), bad_tag] {
            assert!(s.publish(&ws).is_err());
        }
        assert!(ws.list(State::Ready).unwrap().is_empty());
        assert!(ws.list(State::Writing).unwrap().is_empty());
    }

    #[test]
    fn a_staged_job_dropped_unpublished_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        let staged = Submission::text("x").stage(&ws).unwrap();
        assert_eq!(ws.list(State::Writing).unwrap(), vec![staged.id().clone()]);
        drop(staged);
        assert!(ws.list(State::Writing).unwrap().is_empty());
        let id = Submission::text("y").stage(&ws).unwrap().publish(&ws).unwrap();
        assert_eq!(ws.list(State::Ready).unwrap(), vec![id]);
        assert!(ws.list(State::Writing).unwrap().is_empty());
    }
}
