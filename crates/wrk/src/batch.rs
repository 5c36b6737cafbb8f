//! `wrk --batch FILE.jsonl`: the OpenAI Batch API input format.
//!
//! Every line is checked before anything is written (a bad line refuses the
//! whole file, naming the line), then every job is staged, and only then
//! published, so a batch lands whole or not at all. Each job carries the
//! line's `custom_id` and line number in its own `batch.json` (which a C++
//! daemon leaves alone; it drops unknown meta.json keys at finish), the
//! same as `custom_id`/`batch_line` meta.json extras, and a fresh
//! `batch_...` tag, which is what `wrk` prints and `flw --export` reads.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use nrvna_core::openai;
use nrvna_core::{JobId, Params, State, Submission, Workspace};
use serde_json::{Map, Value};

use crate::constraint::check_schema;

/// The largest batch file accepted (OpenAI's own limit is 200 MB).
pub const MAX_BATCH_BYTES: u64 = 256 * 1024 * 1024;

const CHAT_URL: &str = "/v1/chat/completions";
const EMBED_URL: &str = "/v1/embeddings";

/// What every job of the batch shares: the command line's flags.
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    pub params: Params,
    pub tags: Vec<String>,
    pub parent: Option<JobId>,
}

/// A fresh tag naming one batch, e.g. `batch_01764164852123456_4242_000001`.
pub fn new_batch_tag() -> String {
    format!("batch_{}", JobId::generate())
}

/// Reads a batch file with a size cap; refuses directories and FIFOs.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let shown = path.display();
    let f = File::open(path).with_context(|| format!("opening batch file {shown}"))?;
    let md = f.metadata().with_context(|| format!("reading batch file {shown}"))?;
    if !md.is_file() {
        bail!("batch file {shown} is not a regular file");
    }
    let mut buf = Vec::new();
    f.take(MAX_BATCH_BYTES + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading batch file {shown}"))?;
    if buf.len() as u64 > MAX_BATCH_BYTES {
        bail!("batch file {shown} is larger than the limit of {MAX_BATCH_BYTES} bytes; split it");
    }
    Ok(buf)
}

/// Parses and checks a whole batch file into one submission per request.
/// `tag` is added to every job. Any bad line refuses the whole file.
pub fn parse(bytes: &[u8], defaults: &Defaults, tag: &str) -> Result<Vec<Submission>> {
    let mut subs = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let sub = parse_line(raw, line_no, defaults, tag).with_context(|| format!("line {line_no}"))?;
        let custom_id = sub.extra_meta["custom_id"].as_str().unwrap_or_default();
        if let Some(first) = seen.insert(custom_id.to_owned(), line_no) {
            bail!("line {line_no}: custom_id {custom_id:?} is already used on line {first}; custom_ids must be unique");
        }
        subs.push(sub);
    }
    if subs.is_empty() {
        bail!("the batch file has no requests");
    }
    Ok(subs)
}

/// Stages every job, then publishes them all. On a failure nothing stays
/// staged, and jobs already published are withdrawn when no worker has
/// claimed them yet.
pub fn publish_all(ws: &Workspace, subs: &[Submission]) -> Result<Vec<JobId>> {
    let mut staged = Vec::with_capacity(subs.len());
    for (n, s) in subs.iter().enumerate() {
        let line = s.extra_meta.get("batch_line").cloned().unwrap_or(Value::Null);
        staged.push(
            s.stage(ws)
                .with_context(|| format!("staging request {} (line {line})", n + 1))?,
        );
    }
    let mut published = Vec::with_capacity(staged.len());
    for st in staged.drain(..) {
        match st.publish(ws) {
            Ok(id) => published.push(id),
            Err(e) => {
                let kept = withdraw(ws, &published);
                let note = if kept.is_empty() {
                    "nothing was published".to_string()
                } else {
                    format!(
                        "{} job(s) were already claimed by a worker and stay published: {}",
                        kept.len(),
                        kept.iter().map(JobId::as_str).collect::<Vec<_>>().join(", ")
                    )
                };
                return Err(anyhow::Error::new(e).context(format!("publishing the batch failed; {note}")));
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
            Ok(nrvna_core::Moved::Yes) => {
                let _ = std::fs::remove_dir_all(ws.job_dir(State::Writing, id));
            }
            _ => kept.push(id.clone()),
        }
    }
    kept
}

fn parse_line(raw: &[u8], line_no: usize, defaults: &Defaults, tag: &str) -> Result<Submission> {
    let text = std::str::from_utf8(raw).map_err(|_| anyhow!("is not valid UTF-8"))?;
    let v: Value = serde_json::from_str(text).map_err(|e| anyhow!("is not valid JSON: {e}"))?;
    let Value::Object(req) = v else {
        bail!("is not a JSON object; each line must be {{\"custom_id\", \"method\", \"url\", \"body\"}}");
    };
    let custom_id = match req.get("custom_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => bail!("custom_id is empty"),
        Some(_) => bail!("custom_id must be a string"),
        None => bail!("custom_id is missing"),
    };
    match req.get("method").and_then(Value::as_str) {
        Some("POST") => {}
        Some(m) => bail!("method is {m:?}; only \"POST\" is supported"),
        None => bail!("method is missing (it must be \"POST\")"),
    }
    let url = req
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("url is missing or not a string"))?;
    let body = match req.get("body") {
        Some(Value::Object(b)) => b,
        Some(_) => bail!("body must be a JSON object"),
        None => bail!("body is missing"),
    };
    let mut sub = match url {
        CHAT_URL => chat_request(body, defaults)?,
        EMBED_URL => embed_request(body, defaults)?,
        other => bail!("url {other:?} is not supported; use {CHAT_URL:?} or {EMBED_URL:?}"),
    };
    sub.tags = std::iter::once(tag.to_owned())
        .chain(defaults.tags.iter().cloned())
        .collect();
    sub.parent = defaults.parent.clone();
    sub.extra_meta
        .insert("custom_id".into(), Value::String(custom_id.clone()));
    sub.extra_meta.insert("batch_line".into(), line_no.into());
    sub.batch = Some(nrvna_core::BatchRequest {
        custom_id,
        line: line_no as u64,
    });
    sub.validate()?;
    Ok(sub)
}

/// `/v1/chat/completions`: mapped by `nrvna_core::openai` (the mapping
/// `nrvna-api` uses too), with the schema checked here.
fn chat_request(body: &Map<String, Value>, defaults: &Defaults) -> Result<Submission> {
    // The grammar comes back with the check: every submitter writes grammar.gbnf.
    let check = |v: &Value| check_schema(v).map_err(|e| format!("{e:#}"));
    openai::chat_submission(body, &defaults.params, &check).map_err(|e| anyhow!("body: {e}"))
}

/// `/v1/embeddings`: `body.input` is the one text to embed.
fn embed_request(body: &Map<String, Value>, defaults: &Defaults) -> Result<Submission> {
    let mut inputs = openai::embedding_inputs(body).map_err(|e| anyhow!("body: {e}"))?;
    if inputs.len() != 1 {
        bail!("body.input must be one string; put each text to embed on its own line");
    }
    Ok(openai::embedding_submission(inputs.remove(0), &defaults.params))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nrvna_core::{JobType, OutputFormat};

    fn one(line: &str) -> Result<Submission> {
        parse(line.as_bytes(), &Defaults::default(), "batch_1").map(|mut v| v.remove(0))
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
            let e = parse(file.as_bytes(), &Defaults::default(), "t").unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.starts_with("line 3: ") && msg.contains(want), "{msg}");
        }
        assert!(parse(b"\n \n", &Defaults::default(), "t").is_err());
    }
}
