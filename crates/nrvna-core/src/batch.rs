//! OpenAI Batch API input files (JSONL) as jobs, for every submitter
//! (`wrk --batch`, the gateway's `/v1/batches`).
//!
//! Every line is checked before anything is written (a bad line refuses the
//! whole file, naming the line), then every job is staged, and only then
//! published, so a batch lands whole or not at all. Each job carries the
//! line's `custom_id` and line number in its own `batch.json` (which a C++
//! daemon leaves alone; it drops unknown meta.json keys at finish), the
//! same as `custom_id`/`batch_line` meta.json extras, and the batch's tag.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::id::JobId;
use crate::openai;
use crate::params::Params;
use crate::state::State;
use crate::submit::{BatchRequest, Submission, SubmitError};
use crate::workspace::{Moved, Workspace};

/// The largest batch file accepted (OpenAI's own limit is 200 MB).
pub const MAX_BATCH_BYTES: u64 = 256 * 1024 * 1024;

/// The endpoints a batch line may name.
pub const CHAT_URL: &str = "/v1/chat/completions";
pub const EMBED_URL: &str = "/v1/embeddings";

/// What every job of the batch shares: the submitter's defaults.
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    pub params: Params,
    pub tags: Vec<String>,
    pub parent: Option<JobId>,
}

/// Why a batch file was refused, before anything was written.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// One line is not a request this queue can run.
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("the batch file has no requests")]
    Empty,
    #[error("batch file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// Why publishing a checked batch failed, and what was left published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("staging request {n} (line {line}); nothing was published: {source}")]
    Stage {
        n: usize,
        line: u64,
        #[source]
        source: SubmitError,
    },
    #[error("publishing the batch failed; {}: {source}", kept_note(kept))]
    Publish {
        /// Jobs a worker claimed before they could be withdrawn.
        kept: Vec<JobId>,
        #[source]
        source: SubmitError,
    },
}

fn kept_note(kept: &[JobId]) -> String {
    if kept.is_empty() {
        "nothing was published".to_string()
    } else {
        format!(
            "{} job(s) were already claimed by a worker and stay published: {}",
            kept.len(),
            kept.iter().map(JobId::as_str).collect::<Vec<_>>().join(", ")
        )
    }
}

/// A fresh tag naming one batch, e.g. `batch_01764164852123456_4242_000001`.
pub fn new_batch_tag() -> String {
    format!("batch_{}", JobId::generate())
}

/// Reads a batch file with a size cap; refuses directories and FIFOs.
pub fn read_file(path: &Path) -> Result<Vec<u8>, BatchError> {
    let err = |reason: String| BatchError::File {
        path: path.to_owned(),
        reason,
    };
    let f = File::open(path).map_err(|e| err(format!("opening it failed: {e}")))?;
    let md = f.metadata().map_err(|e| err(format!("reading it failed: {e}")))?;
    if !md.is_file() {
        return Err(err("is not a regular file".into()));
    }
    let mut buf = Vec::new();
    f.take(MAX_BATCH_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| err(format!("reading it failed: {e}")))?;
    if buf.len() as u64 > MAX_BATCH_BYTES {
        return Err(err(format!(
            "is larger than the limit of {MAX_BATCH_BYTES} bytes; split it"
        )));
    }
    Ok(buf)
}

/// Parses and checks a whole batch file into one submission per request,
/// with prompts up to `max_prompt_bytes`. `tag` is added to every job. Any
/// bad line refuses the whole file.
pub fn parse(
    bytes: &[u8],
    defaults: &Defaults,
    tag: &str,
    max_prompt_bytes: u64,
) -> Result<Vec<Submission>, BatchError> {
    let mut subs = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let sub = parse_line(raw, line, defaults, tag, max_prompt_bytes)
            .map_err(|reason| BatchError::Line { line, reason })?;
        let custom_id = sub.batch.as_ref().map(|b| b.custom_id.clone()).unwrap_or_default();
        if let Some(first) = seen.insert(custom_id.clone(), line) {
            return Err(BatchError::Line {
                line,
                reason: format!("custom_id {custom_id:?} is already used on line {first}; custom_ids must be unique"),
            });
        }
        subs.push(sub);
    }
    if subs.is_empty() {
        return Err(BatchError::Empty);
    }
    Ok(subs)
}

/// Stages every job, then publishes them all. On a failure nothing stays
/// staged, and jobs already published are withdrawn when no worker has
/// claimed them yet.
pub fn publish_all(ws: &Workspace, subs: &[Submission]) -> Result<Vec<JobId>, PublishError> {
    let mut staged = Vec::with_capacity(subs.len());
    for (n, s) in subs.iter().enumerate() {
        let line = s.batch.as_ref().map_or(0, |b| b.line);
        staged.push(
            s.stage(ws)
                .map_err(|source| PublishError::Stage { n: n + 1, line, source })?,
        );
    }
    let mut published = Vec::with_capacity(staged.len());
    for st in staged.drain(..) {
        match st.publish(ws) {
            Ok(id) => published.push(id),
            Err(source) => {
                let kept = withdraw(ws, &published);
                return Err(PublishError::Publish { kept, source });
            }
        }
    }
    Ok(published)
}

/// Takes published jobs back (ready -> writing, then removed). Returns the
/// ones a worker claimed first.
fn withdraw(ws: &Workspace, ids: &[JobId]) -> Vec<JobId> {
    let mut kept = Vec::new();
    for id in ids {
        match ws.transition(id, State::Ready, State::Writing) {
            Ok(Moved::Yes) => {
                let _ = std::fs::remove_dir_all(ws.job_dir(State::Writing, id));
            }
            _ => kept.push(id.clone()),
        }
    }
    kept
}

fn parse_line(
    raw: &[u8],
    line: usize,
    defaults: &Defaults,
    tag: &str,
    max_prompt_bytes: u64,
) -> Result<Submission, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "is not valid UTF-8".to_string())?;
    let v: Value = serde_json::from_str(text).map_err(|e| format!("is not valid JSON: {e}"))?;
    let Value::Object(req) = v else {
        return Err("is not a JSON object; each line must be {\"custom_id\", \"method\", \"url\", \"body\"}".into());
    };
    let custom_id = match req.get("custom_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => return Err("custom_id is empty".into()),
        Some(_) => return Err("custom_id must be a string".into()),
        None => return Err("custom_id is missing".into()),
    };
    match req.get("method").and_then(Value::as_str) {
        Some("POST") => {}
        Some(m) => return Err(format!("method is {m:?}; only \"POST\" is supported")),
        None => return Err("method is missing (it must be \"POST\")".into()),
    }
    let url = req
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| "url is missing or not a string".to_string())?;
    let body = match req.get("body") {
        Some(Value::Object(b)) => b,
        Some(_) => return Err("body must be a JSON object".into()),
        None => return Err("body is missing".into()),
    };
    let mut sub = match url {
        CHAT_URL => openai::chat_submission(body, &defaults.params).map_err(|e| format!("body: {e}"))?,
        EMBED_URL => embed_request(body, defaults)?,
        other => {
            return Err(format!(
                "url {other:?} is not supported; use {CHAT_URL:?} or {EMBED_URL:?}"
            ))
        }
    };
    sub.tags = std::iter::once(tag.to_owned())
        .chain(defaults.tags.iter().cloned())
        .collect();
    sub.parent = defaults.parent.clone();
    sub.extra_meta
        .insert("custom_id".into(), Value::String(custom_id.clone()));
    sub.extra_meta.insert("batch_line".into(), line.into());
    sub.batch = Some(BatchRequest {
        custom_id,
        line: line as u64,
    });
    sub.validate(max_prompt_bytes).map_err(|e| e.to_string())?;
    Ok(sub)
}

/// `/v1/embeddings`: `body.input` is the one text to embed.
fn embed_request(body: &Map<String, Value>, defaults: &Defaults) -> Result<Submission, String> {
    let mut inputs = openai::embedding_inputs(body).map_err(|e| format!("body: {e}"))?;
    if inputs.len() != 1 {
        return Err("body.input must be one string; put each text to embed on its own line".into());
    }
    Ok(openai::embedding_submission(inputs.remove(0), &defaults.params))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_MAX_PROMPT_BYTES;
    use crate::{JobType, OutputFormat};

    fn one(line: &str) -> Result<Submission, BatchError> {
        parse(
            line.as_bytes(),
            &Defaults::default(),
            "batch_1",
            DEFAULT_MAX_PROMPT_BYTES,
        )
        .map(|mut v| v.remove(0))
    }

    #[test]
    fn chat_history_is_rendered_before_the_last_user_message() {
        let s = one(
            r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":"Hi"},
            {"role":"assistant","content":"Hello!"},
            {"role":"user","content":[{"type":"text","text":"Name a colour."}]}],
            "max_completion_tokens":20,"temperature":0.2,"top_p":0.9,"seed":7,"stop":"END"}}"#
                .replace('\n', " ")
                .as_str(),
        )
        .unwrap();
        assert_eq!(s.prompt, "user: Hi\nassistant: Hello!\nName a colour.");
        assert_eq!(s.params.system.as_deref(), Some("Be brief."));
        assert_eq!(s.params.max_tokens, Some(20));
        assert_eq!(s.params.temp, Some(0.2));
        assert_eq!(s.params.seed, Some(7));
        assert_eq!(s.params.stop, Some(vec!["END".to_string()]));
        assert_eq!(s.extra_meta["custom_id"], "a");
        assert_eq!(s.extra_meta["batch_line"], 1);
        assert_eq!(s.tags, ["batch_1"]);
    }

    #[test]
    fn embeddings_and_response_format() {
        let e = one(r#"{"custom_id":"e","method":"POST","url":"/v1/embeddings","body":{"input":"text","model":"m"}}"#)
            .unwrap();
        assert_eq!(e.job_type, JobType::Embed);
        assert_eq!(e.prompt, "text");
        let j = one(r#"{"custom_id":"j","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"n","schema":{"type":"object"}}}}}"#).unwrap();
        assert!(matches!(j.output, Some(OutputFormat::JsonSchema { .. })));
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let good = r#"{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{"input":"x"}}"#;
        for (bad, want) in [
            (
                r#"{"custom_id":"b","method":"GET","url":"/v1/embeddings","body":{"input":"x"}}"#,
                "method",
            ),
            (
                r#"{"custom_id":"b","method":"POST","url":"/v1/images","body":{}}"#,
                "url",
            ),
            (
                r#"{"method":"POST","url":"/v1/embeddings","body":{"input":"x"}}"#,
                "custom_id is missing",
            ),
            (good, "already used on line 1"),
            (
                r#"{"custom_id":"b","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"assistant","content":"x"}]}}"#,
                "must be from the user",
            ),
            (
                r#"{"custom_id":"b","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"user","content":"x"}],"temperature":-1}}"#,
                "temp",
            ),
            (
                r#"{"custom_id":"b","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"schema":{"type":"nope"}}}}}"#,
                "JSON Schema",
            ),
            ("not json", "not valid JSON"),
        ] {
            let file = format!("{good}\n\n{bad}\n");
            let e = parse(file.as_bytes(), &Defaults::default(), "t", DEFAULT_MAX_PROMPT_BYTES).unwrap_err();
            assert!(matches!(e, BatchError::Line { line: 3, .. }), "{e:?}");
            let msg = e.to_string();
            assert!(msg.starts_with("line 3: ") && msg.contains(want), "{msg}");
        }
        assert!(matches!(
            parse(b"\n \n", &Defaults::default(), "t", DEFAULT_MAX_PROMPT_BYTES),
            Err(BatchError::Empty)
        ));
        // The workspace's prompt limit applies to every line.
        let big = r#"{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{"input":"xxxxxxxxxxxx"}}"#;
        let e = parse(big.as_bytes(), &Defaults::default(), "t", 4).unwrap_err();
        assert!(matches!(e, BatchError::Line { line: 1, .. }), "{e:?}");
    }
}
