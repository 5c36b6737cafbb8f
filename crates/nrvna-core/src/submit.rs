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

use crate::files::{BATCH_FILE, GRAMMAR_FILE, META_FILE, PARAMS_FILE, PROMPT_FILE, SCHEMA_FILE, TYPE_FILE};
use crate::id::JobId;
use crate::meta::{valid_tag, Meta};
use crate::params::Params;
use crate::state::{JobType, State};
use crate::time::iso8601_utc;
use crate::workspace::{Moved, Workspace};

/// The structured-output constraint of a job.
#[derive(Clone, Debug, PartialEq)]
pub enum OutputFormat {
    /// A JSON Schema, kept as `schema.json`, and the GBNF grammar derived
    /// from it, kept as `grammar.gbnf` (the contract's effective grammar:
    /// a C++ daemon fails a structured job without it).
    JsonSchema { schema: String, grammar: String },
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
    /// The batch-file request this job answers (`batch.json`).
    pub batch: Option<BatchRequest>,
    /// Images or audio, copied into `images/` and `audio/` in this order.
    pub media: Vec<crate::media::MediaFile>,
}

/// The request of an OpenAI batch file that a job answers, kept in the
/// job's own `batch.json` (`{"custom_id": "...", "line": N}`). A file of
/// its own, because the C++ daemon rewrites meta.json at finish and drops
/// the keys it does not know; it leaves other files alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRequest {
    pub custom_id: String,
    /// The line of the batch file (from 1).
    pub line: u64,
}

impl BatchRequest {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(&serde_json::json!({"custom_id": self.custom_id, "line": self.line}))
            .unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parses `batch.json`; the error says what is wrong with it.
    pub fn parse(bytes: &[u8]) -> Result<BatchRequest, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("is not valid JSON: {e}"))?;
        let custom_id = v
            .get("custom_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or("has no \"custom_id\" string")?;
        let line = v.get("line").and_then(Value::as_u64).ok_or("has no \"line\" number")?;
        Ok(BatchRequest {
            custom_id: custom_id.to_owned(),
            line,
        })
    }
}

/// Why a submission was refused. Nothing is published when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the prompt is empty; give the prompt as arguments, or pipe it on stdin")]
    EmptyPrompt,
    #[error("a text-to-speech job needs text to speak, and this one is blank; give the text as arguments, or pipe it on stdin")]
    BlankSpeech,
    #[error("the prompt is {size} bytes, over the limit of {limit} bytes (raise NRVNA_MAX_PROMPT_SIZE to allow it)")]
    PromptTooLarge { size: usize, limit: u64 },
    #[error("the prompt contains a NUL byte, which the model cannot take")]
    PromptNul,
    #[error("tag {0:?} is invalid: tags are 1-64 characters from [A-Za-z0-9_-]")]
    BadTag(String),
    #[error("invalid parameters: {0}")]
    Params(String),
    /// params.json (the system prompt, mostly) would be larger than every
    /// reader accepts.
    #[error("the system prompt and parameters take {size} bytes in params.json, over the limit of {limit} bytes that every daemon reads; shorten the system prompt, or move the long text into the prompt")]
    ParamsTooLarge { size: usize, limit: u64 },
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
            batch: None,
            media: Vec::new(),
        }
    }

    /// Checks everything that can be checked before touching the disk,
    /// with prompts up to `max_prompt_bytes` (the workspace's setting).
    pub fn validate(&self, max_prompt_bytes: u64) -> Result<(), SubmitError> {
        // A media job may have no prompt (the model describes the image,
        // transcribes the audio).
        if self.prompt.is_empty() && self.media.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if self.job_type == JobType::Tts && self.prompt.trim().is_empty() {
            return Err(SubmitError::BlankSpeech);
        }
        let limit = max_prompt_bytes;
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
        let size = self.params.to_bytes().len();
        if size as u64 > crate::params::MAX_PARAMS_BYTES {
            return Err(SubmitError::ParamsTooLarge {
                size,
                limit: crate::params::MAX_PARAMS_BYTES,
            });
        }
        Ok(())
    }

    /// The meta.json written at submit time.
    pub fn meta(&self) -> Meta {
        let mut m = Meta::new();
        m.submitted_at = Some(iso8601_utc(SystemTime::now()));
        m.mode = Some(self.job_type);
        m.parent = self.parent.clone();
        m.tags = self.tags.clone();
        m.output_format = self.output.as_ref().map(|o| {
            match o {
                OutputFormat::JsonSchema { .. } => "json_schema",
                OutputFormat::Gbnf(_) => "gbnf",
            }
            .to_owned()
        });
        for (k, v) in &self.extra_meta {
            m.set_extra(k, v.clone());
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
        self.validate(ws.settings().max_prompt_bytes)?;
        let (id, dir) = stage_dir(ws)?;
        self.write_staged(ws, Staged { id, dir, armed: true })
    }

    /// Stages the job under a id the submitter chose (a batch line's
    /// deterministic id), so that a second publisher finds it instead of
    /// publishing it again. A stale `input/writing/<id>` (left by a
    /// publisher that died while staging it) is removed first; the caller
    /// makes sure that no one else stages this id at the same time (the
    /// gateway holds the batch's lock) and that it is not published yet.
    pub fn stage_as(&self, ws: &Workspace, id: &JobId) -> Result<Staged, SubmitError> {
        self.validate(ws.settings().max_prompt_bytes)?;
        let dir = ws.job_dir(State::Writing, id);
        let io_err = |source| SubmitError::Io {
            path: dir.clone(),
            source,
        };
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        fs::create_dir(&dir).map_err(io_err)?;
        let staged = Staged {
            id: id.clone(),
            dir: dir.clone(),
            armed: true,
        };
        self.write_staged(ws, staged)
    }

    /// Writes the job's files into its fresh staging directory.
    fn write_staged(&self, ws: &Workspace, staged: Staged) -> Result<Staged, SubmitError> {
        let io = ws.io();
        let written = (|| -> io::Result<()> {
            let dir = &staged.dir;
            io.write_atomic(dir, PROMPT_FILE, self.prompt.as_bytes())?;
            if self.job_type != JobType::Text {
                io.write_atomic(dir, TYPE_FILE, format!("{}\n", self.job_type.as_str()).as_bytes())?;
            }
            if !self.params.is_empty() {
                io.write_atomic(dir, PARAMS_FILE, &self.params.to_bytes())?;
            }
            match &self.output {
                Some(OutputFormat::JsonSchema { schema, grammar }) => {
                    io.write_atomic(dir, SCHEMA_FILE, schema.as_bytes())?;
                    io.write_atomic(dir, GRAMMAR_FILE, grammar.as_bytes())?;
                }
                Some(OutputFormat::Gbnf(g)) => io.write_atomic(dir, GRAMMAR_FILE, g.as_bytes())?,
                None => {}
            }
            if let Some(b) = &self.batch {
                io.write_atomic(dir, BATCH_FILE, &b.to_bytes())?;
            }
            let mut counts = [0usize; 2];
            for m in &self.media {
                let sub = dir.join(m.kind.dir());
                if !sub.is_dir() {
                    fs::create_dir(&sub)?;
                }
                let n = &mut counts[m.kind as usize];
                io.write_atomic(&sub, &crate::media::file_name(m.kind, *n, &m.ext), &m.bytes)?;
                *n += 1;
            }
            for (k, n) in [crate::media::MediaKind::Image, crate::media::MediaKind::Audio]
                .into_iter()
                .zip(counts)
            {
                if n > 0 {
                    io.sync_dir(&dir.join(k.dir()))?;
                }
            }
            io.write_atomic(dir, META_FILE, &self.meta().to_bytes())?;
            io.sync_dir(dir)?;
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
    fn a_system_prompt_that_params_json_cannot_hold_is_refused_before_staging() {
        let mut s = Submission::text("hi");
        s.params.system = Some("s".repeat(60 * 1024));
        s.validate(1 << 20).expect("60 KiB fits params.json");
        s.params.system = Some("s".repeat(100 * 1024));
        let e = s.validate(1 << 20).unwrap_err();
        assert!(matches!(e, SubmitError::ParamsTooLarge { limit: 65536, .. }), "{e}");
        assert!(e.to_string().contains("shorten the system prompt"), "{e}");
    }

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
        assert_eq!(m.mode, Some(JobType::Text));
        assert_eq!(m.tags, ["t1"]);
        assert!(m.submitted_at.unwrap().ends_with('Z'));
        assert!(!dir.join("type.txt").exists(), "text is the default type");
        assert_eq!(ws.list(State::Writing).unwrap().len(), 0);
    }

    #[test]
    fn a_schema_job_carries_its_grammar_and_a_batch_job_its_batch_json() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        let mut s = Submission::text("   ");
        s.output = Some(OutputFormat::JsonSchema {
            schema: "{}".into(),
            grammar: "root ::= \"x\"\n".into(),
        });
        s.batch = Some(BatchRequest {
            custom_id: "req \"1\"".into(),
            line: 7,
        });
        let id = s.publish(&ws).expect("a whitespace-only prompt is a valid text prompt");
        let dir = ws.job_dir(State::Ready, &id);
        assert_eq!(fs::read_to_string(dir.join("prompt.txt")).unwrap(), "   ");
        assert_eq!(fs::read_to_string(dir.join("schema.json")).unwrap(), "{}");
        assert_eq!(
            fs::read_to_string(dir.join("grammar.gbnf")).unwrap(),
            "root ::= \"x\"\n"
        );
        let b = BatchRequest::parse(&fs::read(dir.join(BATCH_FILE)).unwrap()).unwrap();
        assert_eq!(b, s.batch.clone().unwrap());
        assert!(BatchRequest::parse(b"{\"line\": 1}").unwrap_err().contains("custom_id"));
        assert!(BatchRequest::parse(b"[").unwrap_err().contains("JSON"));
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
    fn a_job_staged_under_a_chosen_id_replaces_a_stale_staging_dir() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        let id = JobId::parse("1_2_3_000004").unwrap();
        // A publisher died while staging it: half a job is left.
        let stale = ws.job_dir(State::Writing, &id);
        fs::create_dir(&stale).unwrap();
        fs::write(stale.join("prompt.txt"), "half").unwrap();
        fs::write(stale.join("junk"), "x").unwrap();
        let got = Submission::text("whole")
            .stage_as(&ws, &id)
            .unwrap()
            .publish(&ws)
            .unwrap();
        assert_eq!(got, id);
        let dir = ws.job_dir(State::Ready, &id);
        assert_eq!(fs::read_to_string(dir.join("prompt.txt")).unwrap(), "whole");
        assert!(!dir.join("junk").exists());
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
