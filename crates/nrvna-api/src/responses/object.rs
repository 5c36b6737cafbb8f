//! A response's status and its Response object, derived from its record
//! and its job's durable state only: the job's directory is the status
//! (ready -> queued, processing -> in_progress, output -> completed or
//! incomplete, failed -> failed or cancelled), its files the output.

use nrvna_core::cancel::CANCELLED_BEFORE_START;
use nrvna_core::files::{PARTIAL_FILE, RESPONSE_FILE};
use nrvna_core::fsio::read_optional;
use nrvna_core::{JobId, State, Workspace};
use serde_json::{json, Value};

use super::record::Record;
use crate::jobs::{Finished, MAX_ARTIFACT_BYTES};

/// A response's status, as OpenAI names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Queued,
    InProgress,
    Completed,
    Incomplete,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete => "incomplete",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Nothing more will happen to it.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Queued | Status::InProgress)
    }
}

/// The status of a response whose job is in `state` (`None`: the job is
/// gone); a done job's `finish_reason` and a failed job's `cancelled` mark
/// decide between the two endings of each.
pub fn status_of(state: Option<State>, finish_reason: Option<&str>, cancelled: bool) -> Status {
    match state {
        Some(State::Writing | State::Ready) => Status::Queued,
        Some(State::Processing) => Status::InProgress,
        Some(State::Done) if finish_reason == Some("length") => Status::Incomplete,
        Some(State::Done) => Status::Completed,
        Some(State::Failed) if cancelled => Status::Cancelled,
        Some(State::Failed) | None => Status::Failed,
    }
}

/// What the job's durable state says about its response, read once.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub status: Status,
    /// The output text (result.txt) of a completed or incomplete response.
    pub text: Option<String>,
    /// The text produced so far: partial.txt of a running job, response.txt
    /// (what it had produced) of a failed one.
    pub partial: Option<Vec<u8>>,
    /// (input tokens, output tokens) of a finished job.
    pub usage: Option<(u64, u64)>,
    /// A failed response's error message.
    pub error: Option<String>,
    pub completed_at: Option<i64>,
    /// It ended without ever running (cancelled while queued).
    pub never_ran: bool,
}

impl Outcome {
    /// An outcome of `status` with nothing else known yet.
    pub fn bare(status: Status) -> Outcome {
        Outcome {
            status,
            text: None,
            partial: None,
            usage: None,
            error: None,
            completed_at: None,
            never_ran: false,
        }
    }

    /// Reads job `id` of the workspace.
    pub fn read(ws: &Workspace, id: &JobId) -> Outcome {
        let Some(job) = ws.job(id) else {
            let mut o = Outcome::bare(Status::Failed);
            o.error = Some(format!(
                "job {id} of this response is not in the workspace (removed, or never published)"
            ));
            return o;
        };
        match job.state {
            State::Writing | State::Ready => Outcome::bare(Status::Queued),
            State::Processing => {
                let mut o = Outcome::bare(Status::InProgress);
                o.partial = read_optional(&job.dir.join(PARTIAL_FILE), MAX_ARTIFACT_BYTES)
                    .ok()
                    .flatten();
                o
            }
            State::Done | State::Failed => {
                let fin = match Finished::read(&job) {
                    Ok(f) => f,
                    Err(e) => {
                        let mut o = Outcome::bare(Status::Failed);
                        o.error = Some(e.message);
                        return o;
                    }
                };
                let cancelled = fin.meta.extra("cancelled").and_then(Value::as_bool) == Some(true);
                let mut o = Outcome::bare(status_of(
                    Some(job.state),
                    fin.meta.extra_str("finish_reason"),
                    cancelled,
                ));
                o.completed_at = fin
                    .meta
                    .completed_at
                    .as_deref()
                    .and_then(nrvna_core::time::unix_seconds);
                if job.state == State::Done {
                    o.usage = Some((fin.tokens("prompt_tokens"), fin.tokens("generated_tokens")));
                    o.text = fin.text();
                    if o.text.is_none() {
                        o.status = Status::Failed;
                        o.error = Some(format!("job {id} produced no text"));
                    }
                } else {
                    let why = fin.error.unwrap_or_default();
                    o.never_ran = why.trim() == CANCELLED_BEFORE_START;
                    o.partial = read_optional(&job.dir.join(RESPONSE_FILE), MAX_ARTIFACT_BYTES)
                        .ok()
                        .flatten();
                    o.error = Some(why.trim().to_owned());
                }
                o
            }
        }
    }
}

/// The id of the one output message of response job `job`.
pub fn message_id(rec: &Record) -> String {
    format!("msg_{}", rec.id.strip_prefix(super::record::PREFIX).unwrap_or(&rec.id))
}

/// The output message item with `text`.
pub fn message(rec: &Record, status: &str, text: &str) -> Value {
    json!({
        "id": message_id(rec),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [output_text(text)],
    })
}

/// An output_text content part.
pub fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// The Response object of `rec` in the state `out` describes.
pub fn object(rec: &Record, out: &Outcome) -> Value {
    let mut output = Vec::new();
    if let (Status::Completed | Status::Incomplete, Some(text)) = (out.status, &out.text) {
        let status = if out.status == Status::Completed {
            "completed"
        } else {
            "incomplete"
        };
        output.push(message(rec, status, text));
    }
    let error = match out.status {
        Status::Failed => json!({
            "code": "server_error",
            "message": out.error.clone().unwrap_or_else(|| "the job failed".into()),
        }),
        _ => Value::Null,
    };
    let incomplete = match out.status {
        Status::Incomplete => json!({"reason": "max_output_tokens"}),
        _ => Value::Null,
    };
    let usage = match out.usage {
        Some((i, o)) => json!({
            "input_tokens": i,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": o,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": i + o,
        }),
        None => Value::Null,
    };
    json!({
        "id": rec.id,
        "object": "response",
        "created_at": rec.created_at,
        "status": out.status.as_str(),
        "background": rec.background,
        "completed_at": if out.status == Status::Completed { json!(out.completed_at) } else { Value::Null },
        "error": error,
        "incomplete_details": incomplete,
        "instructions": rec.instructions,
        "max_output_tokens": rec.max_output_tokens,
        "metadata": if rec.metadata.is_null() { json!({}) } else { rec.metadata.clone() },
        "model": rec.model,
        "output": output,
        "parallel_tool_calls": false,
        "previous_response_id": rec.previous_response_id,
        "store": rec.store,
        "temperature": rec.temperature,
        "text": rec.text,
        "tool_choice": "none",
        "tools": [],
        "top_p": rec.top_p,
        "truncation": "disabled",
        "usage": usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_jobs_directory_and_ending() {
        use Status::*;
        for (state, finish, cancelled, want) in [
            (Some(State::Writing), None, false, Queued),
            (Some(State::Ready), None, false, Queued),
            (Some(State::Processing), None, false, InProgress),
            (Some(State::Done), Some("stop"), false, Completed),
            (Some(State::Done), None, false, Completed),
            (Some(State::Done), Some("length"), false, Incomplete),
            (Some(State::Failed), None, false, Failed),
            (Some(State::Failed), None, true, Cancelled),
            (None, None, false, Failed),
        ] {
            assert_eq!(
                status_of(state, finish, cancelled),
                want,
                "{state:?} {finish:?} {cancelled}"
            );
        }
        assert!(!Queued.is_terminal() && !InProgress.is_terminal());
        assert!(Completed.is_terminal() && Incomplete.is_terminal() && Failed.is_terminal() && Cancelled.is_terminal());
    }

    fn rec() -> Record {
        serde_json::from_value(json!({"id": "resp_1_2_3", "created_at": 7, "model": "m", "input": []})).unwrap()
    }

    #[test]
    fn objects_carry_output_usage_and_the_reason_of_each_ending() {
        let mut done = Outcome::bare(Status::Completed);
        done.text = Some("Hi there".into());
        done.usage = Some((5, 2));
        done.completed_at = Some(9);
        let o = object(&rec(), &done);
        assert_eq!(o["status"], "completed");
        assert_eq!(o["output"][0]["id"], "msg_1_2_3");
        assert_eq!(o["output"][0]["content"][0]["text"], "Hi there");
        assert_eq!(o["usage"]["total_tokens"], 7);
        assert_eq!(o["completed_at"], 9);
        assert_eq!(o["error"], Value::Null);

        let mut cut = done.clone();
        cut.status = Status::Incomplete;
        let o = object(&rec(), &cut);
        assert_eq!(o["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(o["output"][0]["status"], "incomplete");
        assert_eq!(o["completed_at"], Value::Null);

        let mut failed = Outcome::bare(Status::Failed);
        failed.error = Some("model crashed".into());
        let o = object(&rec(), &failed);
        assert_eq!(o["error"]["message"], "model crashed");
        assert_eq!(o["output"], json!([]));

        let o = object(&rec(), &Outcome::bare(Status::Cancelled));
        assert_eq!((o["status"].as_str(), &o["error"]), (Some("cancelled"), &Value::Null));
        assert_eq!(object(&rec(), &Outcome::bare(Status::Queued))["usage"], Value::Null);
    }
}
