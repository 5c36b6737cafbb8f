//! OpenAI Batch API input files (JSONL) as jobs, for every submitter
//! (`wrk --batch`, the gateway's `/v1/batches`).
//!
//! Every line is checked before anything is written (a bad line refuses the
//! whole file, naming the line), then every job is staged, and only then
//! published, so a batch lands whole or not at all. Each job carries the
//! line's `custom_id` and line number in its own `batch.json` (which a C++
//! daemon leaves alone; it drops unknown meta.json keys at finish), the
//! same as `custom_id`/`batch_line` meta.json extras, and the batch's tag.

use std::collections::hash_map::{Entry, HashMap};
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
    for (line, sub) in parse_lines(bytes, defaults, tag, max_prompt_bytes, |_| Ok(())) {
        subs.push(sub.map_err(|e| BatchError::Line {
            line,
            reason: e.message,
        })?);
    }
    if subs.is_empty() {
        return Err(BatchError::Empty);
    }
    Ok(subs)
}

/// Why one line of a batch file cannot run: what a submitter that runs
/// the rest of the file (the gateway) reports for it in the batch's error
/// file. `code` is one of [`LINE_CODES`] or a code of the submitter's own
/// `check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    /// The line's `custom_id`, when it has a readable one.
    pub custom_id: Option<String>,
    pub code: &'static str,
    pub message: String,
}

/// The codes of [`LineError`]s found by [`parse_lines`] itself.
pub const LINE_CODES: [&str; 6] = [
    "invalid_json",
    "invalid_custom_id",
    "duplicate_custom_id",
    "invalid_method",
    "invalid_url",
    "invalid_body",
];

/// A line's JSON object, handed to the submitter's own check before the
/// line becomes a job (the gateway checks `url` against the batch's
/// endpoint and `body.model` against the served models): `Err((code,
/// message))` refuses the line.
pub type LineCheck<'a> = dyn FnMut(&Map<String, Value>) -> Result<(), (&'static str, String)> + 'a;

/// Every request of a batch file, each with its line number (from 1; blank
/// lines are skipped) and its submission or why it cannot run, one line at
/// a time: a bad line does not stop the others. A `custom_id` seen before
/// refuses the later line.
pub fn parse_lines<'a>(
    bytes: &'a [u8],
    defaults: &'a Defaults,
    tag: &'a str,
    max_prompt_bytes: u64,
    mut check: impl FnMut(&Map<String, Value>) -> Result<(), (&'static str, String)> + 'a,
) -> impl Iterator<Item = (usize, Result<Submission, LineError>)> + 'a {
    let mut seen: HashMap<String, usize> = HashMap::new();
    request_lines(bytes).map(move |(line, raw)| {
        let sub = parse_line(raw, line, defaults, tag, max_prompt_bytes, &mut check).and_then(|sub| {
            let custom_id = sub.batch.as_ref().map(|b| b.custom_id.clone()).unwrap_or_default();
            match seen.entry(custom_id) {
                Entry::Occupied(first) => Err(LineError {
                    message: format!(
                        "custom_id {:?} is already used on line {}; custom_ids must be unique",
                        first.key(),
                        first.get()
                    ),
                    custom_id: Some(first.key().clone()),
                    code: "duplicate_custom_id",
                }),
                Entry::Vacant(v) => {
                    v.insert(line);
                    Ok(sub)
                }
            }
        });
        (line, sub)
    })
}

/// The lines of a batch file that hold a request, each with its line
/// number (from 1): blank lines are skipped, a trailing CR dropped.
pub fn request_lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    bytes.split(|&b| b == b'\n').enumerate().filter_map(|(i, raw)| {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        (!raw.iter().all(u8::is_ascii_whitespace)).then_some((i + 1, raw))
    })
}

/// The id of the job that answers line `line` of the batch whose id is
/// `batch` (`<batch>_<line:06>`): the same for every publisher, so a
/// second one finds the job instead of publishing it again. `None` when
/// the id would be longer than the grammar allows.
pub fn line_job_id(batch: &JobId, line: usize) -> Option<JobId> {
    JobId::parse(&format!("{batch}_{line:06}")).ok()
}

/// The batch id and line of a job named by [`line_job_id`] for a batch
/// whose id is a generated one (three parts, so a line job has four);
/// `None` for any other name.
pub fn split_line_job_id(name: &str) -> Option<(&str, usize)> {
    if name.bytes().filter(|&b| b == b'_').count() != 3 {
        return None;
    }
    let (batch, line) = name.rsplit_once('_')?;
    Some((batch, line.parse().ok()?))
}

/// An exclusive `flock` on a batch's lock file: one publisher per batch
/// across processes. The kernel drops it when the holder dies (even by
/// SIGKILL), so another process can take over.
#[derive(Debug)]
pub struct BatchLock {
    _file: File,
}

impl BatchLock {
    /// Takes the lock without waiting; `Ok(None)` when another holds it.
    pub fn try_acquire(path: &Path) -> std::io::Result<Option<BatchLock>> {
        Ok(crate::fsio::lock_file(path, false)?.map(|f| BatchLock { _file: f }))
    }
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
    check: &mut LineCheck<'_>,
) -> Result<Submission, LineError> {
    let err = |custom_id: Option<&String>, code, message: String| LineError {
        custom_id: custom_id.cloned(),
        code,
        message,
    };
    let text = std::str::from_utf8(raw).map_err(|_| err(None, "invalid_json", "is not valid UTF-8".into()))?;
    let v: Value =
        serde_json::from_str(text).map_err(|e| err(None, "invalid_json", format!("is not valid JSON: {e}")))?;
    let Value::Object(req) = v else {
        return Err(err(
            None,
            "invalid_json",
            "is not a JSON object; each line must be {\"custom_id\", \"method\", \"url\", \"body\"}".into(),
        ));
    };
    let bad_id = |m: &str| err(None, "invalid_custom_id", m.into());
    let custom_id = match req.get("custom_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => return Err(bad_id("custom_id is empty")),
        Some(_) => return Err(bad_id("custom_id must be a string")),
        None => return Err(bad_id("custom_id is missing")),
    };
    let id = Some(&custom_id);
    match req.get("method").and_then(Value::as_str) {
        Some("POST") => {}
        Some(m) => {
            return Err(err(
                id,
                "invalid_method",
                format!("method is {m:?}; only \"POST\" is supported"),
            ))
        }
        None => {
            return Err(err(
                id,
                "invalid_method",
                "method is missing (it must be \"POST\")".into(),
            ))
        }
    }
    let url = req
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| err(id, "invalid_url", "url is missing or not a string".into()))?;
    if url != CHAT_URL && url != EMBED_URL {
        return Err(err(
            id,
            "invalid_url",
            format!("url {url:?} is not supported; use {CHAT_URL:?} or {EMBED_URL:?}"),
        ));
    }
    let body = match req.get("body") {
        Some(Value::Object(b)) => b,
        Some(_) => return Err(err(id, "invalid_body", "body must be a JSON object".into())),
        None => return Err(err(id, "invalid_body", "body is missing".into())),
    };
    check(&req).map_err(|(code, message)| err(id, code, message))?;
    let bad_body = |m: String| err(id, "invalid_body", m);
    let mut sub = if url == CHAT_URL {
        openai::chat_submission(body, &defaults.params).map_err(|e| bad_body(format!("body: {e}")))?
    } else {
        embed_request(body, defaults).map_err(bad_body)?
    };
    sub.tags = std::iter::once(tag.to_owned())
        .chain(defaults.tags.iter().cloned())
        .collect();
    sub.parent = defaults.parent.clone();
    sub.extra_meta
        .insert("custom_id".into(), Value::String(custom_id.clone()));
    sub.extra_meta.insert("batch_line".into(), line.into());
    sub.batch = Some(BatchRequest {
        custom_id: custom_id.clone(),
        line: line as u64,
    });
    sub.validate(max_prompt_bytes).map_err(|e| bad_body(e.to_string()))?;
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
    fn one_bad_line_leaves_the_others_and_says_why_with_a_code() {
        let file = [
            r#"{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{"input":"x"}}"#,
            "not json",
            "",
            r#"{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{"input":"y"}}"#,
            r#"{"custom_id":"c","method":"GET","url":"/v1/embeddings","body":{"input":"x"}}"#,
            r#"{"custom_id":"d","method":"POST","url":"/v1/embeddings","body":{"input":"x","model":"other"}}"#,
            r#"{"custom_id":"e","method":"POST","url":"/v1/chat/completions","body":{"messages":[]}}"#,
            r#"{"custom_id":"f","method":"POST","url":"/v1/embeddings","body":{"input":"z"}}"#,
        ]
        .join("\n");
        let d = Defaults::default();
        let check = |req: &Map<String, Value>| match req["body"].get("model") {
            Some(m) if m != "served" => Err(("model_not_found", format!("{m} is not served"))),
            _ => Ok(()),
        };
        let got: Vec<_> = parse_lines(file.as_bytes(), &d, "t", DEFAULT_MAX_PROMPT_BYTES, check)
            .map(|(line, r)| (line, r.map(|s| s.prompt).map_err(|e| (e.custom_id, e.code))))
            .collect();
        let id = |s: &str| Some(s.to_owned());
        assert_eq!(
            got,
            [
                (1, Ok("x".to_owned())),
                (2, Err((None, "invalid_json"))),
                (4, Err((id("a"), "duplicate_custom_id"))),
                (5, Err((id("c"), "invalid_method"))),
                (6, Err((id("d"), "model_not_found"))),
                (7, Err((id("e"), "invalid_body"))),
                (8, Ok("z".to_owned())),
            ]
        );
    }

    #[test]
    fn line_job_ids_are_deterministic_and_name_their_batch() {
        let b = JobId::parse("01764164852123456_4242_000001").unwrap();
        let id = line_job_id(&b, 7).unwrap();
        assert_eq!(id.as_str(), "01764164852123456_4242_000001_000007");
        assert_eq!(split_line_job_id(id.as_str()), Some((b.as_str(), 7)));
        assert_eq!(
            split_line_job_id("01764164852123456_4242_000001_1234567"),
            Some((b.as_str(), 1234567))
        );
        // An ordinary job is no batch line.
        assert_eq!(split_line_job_id(b.as_str()), None);
        assert!(line_job_id(&JobId::parse(&"9".repeat(125)).unwrap(), 1).is_none());
    }

    #[test]
    fn a_batch_lock_is_held_by_one_until_dropped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("b.lock");
        let a = BatchLock::try_acquire(&p).unwrap().expect("free");
        assert!(BatchLock::try_acquire(&p).unwrap().is_none());
        drop(a);
        assert!(BatchLock::try_acquire(&p).unwrap().is_some());
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
