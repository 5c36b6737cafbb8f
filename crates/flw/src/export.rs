//! `flw WS --export TAG`: the OpenAI Batch API output format (JSONL) for
//! the jobs of a `wrk --batch` tag, in the order of the batch file. Each
//! job's request (`custom_id`, line) comes from its `batch.json`, which a
//! C++ daemon leaves alone, or else from the meta.json extras that older
//! submissions carry. Done jobs become chat.completion or embedding-list
//! responses, failed jobs error lines; unfinished jobs are skipped with a
//! note on stderr (exit 2) so a rerun later completes it. A job whose
//! request is unknown cannot be attributed: it is named on stderr, no line
//! is printed for it, and the export exits 1.

use std::io::{self, Write};

use anyhow::{bail, Result};
use nrvna_core::files::{Artifact, BATCH_FILE, META_FILE};
use nrvna_core::fsio::read_limited;
use nrvna_core::meta::valid_tag;
use nrvna_core::{BatchRequest, JobView, Meta, State, Workspace};
use serde_json::{json, Value};

use crate::scope::{Scope, ScopeCache};
use crate::Outcome;

/// The largest artifact put into an export line.
const MAX_ARTIFACT_BYTES: u64 = 256 * 1024 * 1024;

pub fn export(ws: &Workspace, tag: &str, errors_only: bool) -> Result<Outcome> {
    if !valid_tag(tag) {
        bail!("--export {tag:?} is not a tag: tags are 1-64 characters from [A-Za-z0-9_-]");
    }
    let scope = Scope::tagged(tag);
    let jobs = ScopeCache::default().jobs(ws, &scope);
    if jobs.is_empty() {
        bail!(
            "no jobs with tag {tag} in {} (wrk --batch prints the tag to export)",
            ws.root().display()
        );
    }
    let mut rows: Vec<(JobView, Meta, Result<BatchRequest, String>)> = jobs
        .into_iter()
        .map(|j| {
            let m = j.meta().ok().flatten().unwrap_or_default();
            let req = request_of(&j, &m);
            (j, m, req)
        })
        .collect();
    rows.sort_by(|(a, _, ar), (b, _, br)| {
        let line = |r: &Result<BatchRequest, String>| r.as_ref().map_or(u64::MAX, |r| r.line);
        line(ar).cmp(&line(br)).then_with(|| a.id.cmp(&b.id))
    });

    let mut out = io::BufWriter::new(io::stdout().lock());
    let (mut pending, mut failed, mut unattributed) = (0usize, 0usize, 0usize);
    for (job, meta, req) in &rows {
        let custom_id = match req {
            Ok(r) => Value::String(r.custom_id.clone()),
            Err(why) => {
                unattributed += 1;
                eprintln!(
                    "flw: cannot attribute job {} of tag {tag} to a request of the batch file: {why}; it is left out",
                    job.id
                );
                continue;
            }
        };
        let line = match job.state {
            State::Ready | State::Processing | State::Writing => {
                pending += 1;
                eprintln!(
                    "flw: skipping job {} (custom_id {custom_id}): still {}",
                    job.id,
                    job.state.label()
                );
                continue;
            }
            State::Done => match done_body(job, meta) {
                Ok(body) if !errors_only => json!({
                    "id": format!("batch_req_{}", job.id),
                    "custom_id": custom_id,
                    "response": {"status_code": 200, "request_id": job.id.as_str(), "body": body},
                    "error": null,
                }),
                Ok(_) => continue,
                Err(message) => {
                    failed += 1;
                    error_line(job, custom_id, "unreadable_result", &message)
                }
            },
            State::Failed => {
                failed += 1;
                let message = job.error().unwrap_or_else(|| "the job failed".into());
                error_line(job, custom_id, "job_failed", &message)
            }
        };
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(if unattributed > 0 {
        eprintln!(
            "flw: {unattributed} job(s) with tag {tag} have no custom_id, so the export is incomplete; were they submitted by wrk --batch?"
        );
        Outcome::Failed
    } else if pending > 0 {
        eprintln!(
            "flw: {pending} job(s) with tag {tag} have not finished; export again later (flw {} -W --tag {tag} waits for them)",
            ws.root().display()
        );
        Outcome::Pending
    } else if failed > 0 {
        Outcome::Failed
    } else {
        Outcome::Done
    })
}

/// The batch-file request a job answers: its batch.json, or else the
/// `custom_id`/`batch_line` extras of its meta.json (jobs submitted before
/// batch.json, finished by a daemon that keeps unknown keys).
fn request_of(job: &JobView, meta: &Meta) -> Result<BatchRequest, String> {
    match job.batch_request() {
        Ok(Some(r)) => return Ok(r),
        Ok(None) => {}
        Err(e) => return Err(e),
    }
    match (meta.extra_str("custom_id"), meta.extra("batch_line").and_then(Value::as_u64)) {
        (Some(c), line) if !c.is_empty() => Ok(BatchRequest {
            custom_id: c.to_owned(),
            line: line.unwrap_or(u64::MAX),
        }),
        _ => Err(format!(
            "it has no {BATCH_FILE} and its {META_FILE} has no custom_id (a C++ daemon drops unknown {META_FILE} keys at finish)"
        )),
    }
}

fn error_line(job: &JobView, custom_id: Value, code: &str, message: &str) -> Value {
    json!({
        "id": format!("batch_req_{}", job.id),
        "custom_id": custom_id,
        "response": null,
        "error": {"code": code, "message": message},
    })
}

/// The response body of a done job: a chat.completion, or an embedding list.
fn done_body(job: &JobView, meta: &Meta) -> Result<Value, String> {
    let model = meta.extra_str("model").unwrap_or("unknown");
    let tokens = |k: &str| meta.extra(k).and_then(Value::as_u64).unwrap_or(0);
    let prompt_tokens = tokens("prompt_tokens");
    let artifact = job
        .primary_artifact()
        .ok_or_else(|| "the job is done but holds no artifact".to_string())?;
    let name = artifact.file_name();
    let bytes = read_limited(&job.dir.join(name), MAX_ARTIFACT_BYTES).map_err(|e| format!("{name} {e}"))?;
    match artifact {
        Artifact::Embedding => {
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("{name} is not valid JSON: {e}"))?;
            let vector = v
                .get("vector")
                .filter(|x| x.is_array())
                .ok_or_else(|| format!("{name} has no \"vector\" array"))?;
            Ok(json!({
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": vector}],
                "model": model,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            }))
        }
        Artifact::Result | Artifact::Transcript => {
            let completion = tokens("generated_tokens");
            let created = [&meta.completed_at, &meta.submitted_at]
                .into_iter()
                .find_map(|t| t.as_deref().and_then(nrvna_core::time::unix_seconds))
                .unwrap_or(0);
            Ok(json!({
                "id": format!("chatcmpl-{}", job.id),
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": String::from_utf8_lossy(&bytes)},
                    "finish_reason": meta.extra_str("finish_reason").unwrap_or("stop"),
                }],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion,
                    "total_tokens": prompt_tokens + completion,
                },
            }))
        }
        Artifact::Audio => Err(format!("{name} has no OpenAI Batch response format")),
    }
}
