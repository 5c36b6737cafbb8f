//! Reading a claimed job: everything its directory holds, checked, as a
//! typed [`JobSpec`], or a [`SpecError`] that says which file is wrong and
//! why (it becomes the job's one-line error.txt).

use std::path::Path;

use nrvna_core::files::{GRAMMAR_FILE, META_FILE, PARAMS_FILE, PROMPT_FILE, SCHEMA_FILE, TYPE_FILE};
use nrvna_core::fsio::{read_limited, read_optional, ReadError};
use nrvna_core::media::{read_job_media, MediaError, MediaKind};
use nrvna_core::meta::{Meta, MAX_META_BYTES};
use nrvna_core::params::{Params, MAX_PARAMS_BYTES};
use nrvna_core::{FileIo, JobType, Settings};
use nrvna_engine::media::Media;
use nrvna_schema::check::MAX_CONSTRAINT_BYTES;
use serde_json::Value;

/// Largest type.txt.
const MAX_TYPE_BYTES: u64 = 64;

/// What a job asks for, read from its directory.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub job_type: JobType,
    pub prompt: String,
    pub params: Params,
    pub meta: Meta,
    /// `grammar.gbnf`: the effective constraint when present.
    pub grammar: Option<String>,
    /// `schema.json`: the output is checked against it.
    pub schema: Option<Value>,
    /// `images/*`, in name order (vision jobs, embeddings with images).
    pub images: Vec<Media>,
    /// `audio/*`, in name order (speech-to-text jobs).
    pub audio: Vec<Media>,
}

/// Why a job cannot run, named by file.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("meta.json {0} (the original is kept as meta.json.invalid)")]
    InvalidMeta(String),
    #[error("{file} {source}")]
    Unreadable {
        file: &'static str,
        #[source]
        source: ReadError,
    },
    #[error("prompt.txt is larger than the limit of {limit} bytes (NRVNA_MAX_PROMPT_SIZE)")]
    PromptTooLarge { limit: u64 },
    #[error("type.txt says {0:?}: unknown job type (expected text, embed, vision, stt or tts)")]
    UnknownType(String),
    #[error("type.txt is not a job type (over 64 bytes)")]
    TypeTooLong,
    #[error("params.json {0}")]
    BadParams(String),
    #[error("{file} is not valid UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 { file: &'static str, offset: usize },
    #[error("prompt.txt is empty")]
    EmptyPrompt,
    #[error("prompt.txt contains NUL bytes")]
    NulInPrompt,
    #[error("schema.json {0}")]
    BadSchema(String),
    #[error("embed jobs take no grammar.gbnf or schema.json")]
    ConstraintOnEmbed,
    #[error("{0}")]
    Media(#[from] MediaError),
    #[error("a {kind} job needs at least one file in {dir}/ (wrk {flag} FILE)")]
    NoMedia {
        kind: &'static str,
        dir: &'static str,
        flag: &'static str,
    },
}

/// A job that could not be read, with the best meta.json to finish it with.
#[derive(Debug)]
pub struct SpecFailure {
    pub error: SpecError,
    pub meta: Box<Meta>,
}

fn unreadable(file: &'static str, source: ReadError) -> SpecError {
    match source {
        ReadError::TooLarge { limit } if file == PROMPT_FILE => SpecError::PromptTooLarge { limit },
        source => SpecError::Unreadable { file, source },
    }
}

fn utf8(file: &'static str, b: Vec<u8>) -> Result<String, SpecError> {
    String::from_utf8(b).map_err(|e| SpecError::NotUtf8 {
        file,
        offset: e.utf8_error().valid_up_to(),
    })
}

impl JobSpec {
    /// Reads and checks everything the job directory holds. A `meta.json`
    /// that fails validation is kept as `meta.json.invalid`.
    pub fn read(io: &FileIo, limits: &Settings, dir: &Path) -> Result<JobSpec, SpecFailure> {
        let fresh = || {
            let mut m = Meta::new();
            m.mode = Some(JobType::Text);
            m
        };
        let meta = match read_optional(&dir.join(META_FILE), MAX_META_BYTES) {
            Ok(Some(b)) => match Meta::parse(&b) {
                Ok(m) => m,
                Err(e) => {
                    let _ = io.write_atomic(dir, "meta.json.invalid", &b);
                    return Err(SpecFailure {
                        error: SpecError::InvalidMeta(e.to_string()),
                        meta: Box::new(fresh()),
                    });
                }
            },
            Ok(None) => fresh(),
            Err(e) => {
                return Err(SpecFailure {
                    error: unreadable(META_FILE, e),
                    meta: Box::new(fresh()),
                })
            }
        };
        match read_rest(dir, &meta, limits) {
            Ok(((job_type, prompt, params, grammar, schema), (images, audio))) => Ok(JobSpec {
                job_type,
                prompt,
                params,
                meta,
                grammar,
                schema,
                images,
                audio,
            }),
            Err(error) => Err(SpecFailure {
                error,
                meta: Box::new(meta),
            }),
        }
    }
}

type Rest = (JobType, String, Params, Option<String>, Option<Value>);
type MediaFiles = (Vec<Media>, Vec<Media>);

fn read_media(dir: &Path, kind: MediaKind, limits: &Settings) -> Result<Vec<Media>, SpecError> {
    Ok(read_job_media(dir, kind, limits)?
        .into_iter()
        .map(|(name, bytes)| Media { name, bytes })
        .collect())
}

fn read_rest(dir: &Path, meta: &Meta, limits: &Settings) -> Result<(Rest, MediaFiles), SpecError> {
    let job_type = match read_optional(&dir.join(TYPE_FILE), MAX_TYPE_BYTES) {
        Ok(Some(b)) => {
            let s = String::from_utf8_lossy(&b);
            JobType::parse(s.trim()).ok_or_else(|| SpecError::UnknownType(s.trim().to_owned()))?
        }
        Ok(None) => meta.mode.unwrap_or(JobType::Text),
        Err(ReadError::TooLarge { .. }) => return Err(SpecError::TypeTooLong),
        Err(e) => return Err(unreadable(TYPE_FILE, e)),
    };
    let params = match read_optional(&dir.join(PARAMS_FILE), MAX_PARAMS_BYTES) {
        Ok(Some(b)) => {
            let (p, unknown) = Params::parse_lenient(&b).map_err(|e| SpecError::BadParams(e.to_string()))?;
            if !unknown.is_empty() {
                tracing::warn!(
                    "{}: params.json has unknown keys {unknown:?}; ignoring them",
                    dir.display()
                );
            }
            p
        }
        Ok(None) => Params::default(),
        Err(e) => return Err(unreadable(PARAMS_FILE, e)),
    };
    let prompt =
        read_limited(&dir.join(PROMPT_FILE), limits.max_prompt_bytes).map_err(|e| unreadable(PROMPT_FILE, e))?;
    let prompt = utf8(PROMPT_FILE, prompt)?;
    // Only the job types that read media: the others never look at a
    // planted images/ or audio/ directory.
    let images = match job_type {
        JobType::Vision | JobType::Embed => read_media(dir, MediaKind::Image, limits)?,
        _ => Vec::new(),
    };
    let audio = match job_type {
        JobType::Stt => read_media(dir, MediaKind::Audio, limits)?,
        _ => Vec::new(),
    };
    if job_type == JobType::Vision && images.is_empty() {
        return Err(SpecError::NoMedia {
            kind: "vision",
            dir: "images",
            flag: "--image",
        });
    }
    if job_type == JobType::Stt && audio.is_empty() {
        return Err(SpecError::NoMedia {
            kind: "stt",
            dir: "audio",
            flag: "--audio",
        });
    }
    // Whitespace is a valid prompt (the C++ tools run it); nothing at all
    // is not, except beside media.
    if prompt.is_empty() && images.is_empty() && audio.is_empty() {
        return Err(SpecError::EmptyPrompt);
    }
    if prompt.contains('\0') {
        return Err(SpecError::NulInPrompt);
    }
    let grammar = match read_optional(&dir.join(GRAMMAR_FILE), MAX_CONSTRAINT_BYTES) {
        Ok(Some(b)) => Some(utf8(GRAMMAR_FILE, b)?),
        Ok(None) => None,
        Err(e) => return Err(unreadable(GRAMMAR_FILE, e)),
    };
    let schema = match read_optional(&dir.join(SCHEMA_FILE), MAX_CONSTRAINT_BYTES) {
        Ok(Some(b)) => match serde_json::from_slice::<Value>(&b) {
            Ok(v @ (Value::Object(_) | Value::Bool(_))) => Some(v),
            Ok(_) => {
                return Err(SpecError::BadSchema(
                    "is not a JSON Schema (an object or a boolean)".into(),
                ))
            }
            Err(e) => return Err(SpecError::BadSchema(format!("is not valid JSON: {e}"))),
        },
        Ok(None) => None,
        Err(e) => return Err(unreadable(SCHEMA_FILE, e)),
    };
    if job_type == JobType::Embed && (grammar.is_some() || schema.is_some()) {
        return Err(SpecError::ConstraintOnEmbed);
    }
    Ok(((job_type, prompt, params, grammar, schema), (images, audio)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn job(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (n, b) in files {
            fs::write(d.path().join(n), b).unwrap();
        }
        d
    }

    #[test]
    fn a_prompt_alone_is_a_text_job_and_whitespace_is_a_prompt() {
        let d = job(&[("prompt.txt", b"   ")]);
        let s = JobSpec::read(&FileIo::default(), &Settings::default(), d.path()).unwrap();
        assert_eq!(s.job_type, JobType::Text);
        assert_eq!(s.prompt, "   ");
        let d = job(&[("prompt.txt", b"")]);
        assert!(matches!(
            JobSpec::read(&FileIo::default(), &Settings::default(), d.path())
                .unwrap_err()
                .error,
            SpecError::EmptyPrompt
        ));
    }

    #[test]
    fn each_bad_file_is_named_in_the_error() {
        type Files<'a> = &'a [(&'a str, &'a [u8])];
        let cases: &[(Files, &str)] = &[
            (&[], "prompt.txt is missing"),
            (&[("prompt.txt", b"a\0b")], "NUL"),
            (&[("prompt.txt", b"\xff")], "prompt.txt is not valid UTF-8"),
            (&[("prompt.txt", b"x"), ("type.txt", b"video")], "unknown job type"),
            (&[("prompt.txt", b"x"), ("params.json", b"[1]")], "params.json"),
            (&[("prompt.txt", b"x"), ("schema.json", b"3")], "schema.json"),
            (
                &[
                    ("prompt.txt", b"x"),
                    ("type.txt", b"embed"),
                    ("grammar.gbnf", b"root ::= \"a\""),
                ],
                "embed jobs",
            ),
        ];
        for (files, needle) in cases {
            let d = job(files);
            let e = JobSpec::read(&FileIo::default(), &Settings::default(), d.path())
                .unwrap_err()
                .error
                .to_string();
            assert!(e.contains(needle), "{e:?} should contain {needle:?}");
        }
    }

    #[test]
    fn an_invalid_meta_json_is_kept_aside_and_replaced_by_a_fresh_one() {
        let d = job(&[("prompt.txt", b"x"), ("meta.json", b"{\"tags\":7}")]);
        let f = JobSpec::read(&FileIo::default(), &Settings::default(), d.path()).unwrap_err();
        assert!(matches!(f.error, SpecError::InvalidMeta(_)));
        assert_eq!(f.meta.mode, Some(JobType::Text));
        assert_eq!(fs::read(d.path().join("meta.json.invalid")).unwrap(), b"{\"tags\":7}");
    }
}
