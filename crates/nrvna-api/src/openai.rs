//! The synchronous OpenAI endpoints: chat completions (images in a message
//! make a vision job) and completions (whole or streamed as server-sent
//! events from the job's partial.txt),
//! embeddings, and the model list. A request is a job: published with high
//! priority, waited for, answered from result.txt / embedding.json and
//! meta.json, and cancelled when the client goes away first.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use nrvna_core::files::{Artifact, PARTIAL_FILE};
use nrvna_core::fsio::read_limited;
use nrvna_core::openai::{self, RequestError};
use nrvna_core::{JobId, Params, Priority, State, Submission};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::jobs::{now_unix, CancelGuard, Finished};
use crate::App;

/// Parses a request body into a JSON object, with OpenAI's errors for a
/// body that is too large, not JSON, or not an object.
pub fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "the request body is larger than this server's limit (nrvna-api --max-body / NRVNA_API_MAX_BODY)",
            )
            .code("request_too_large")
        } else {
            ApiError::invalid(format!("reading the request body failed: {e}"))
        }
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid("the request body must be a JSON object")),
        Err(e) => Err(ApiError::invalid(format!(
            "we could not parse the JSON body of your request: {e}; send a JSON object with Content-Type: application/json"
        ))),
    }
}

/// The models served on the workspace: the exclusive daemon's, from
/// `.nrvnad.info` (every model of its `models` list when it serves
/// several), and those of shared members with a live heartbeat (`nrvnad
/// --shared`, each member's every model), each as the GGUF file's name
/// without `.gguf`.
pub fn served_models(app: &App) -> Vec<String> {
    let mut v = daemon_models(app);
    for m in member_models(app) {
        if !v.contains(&m) {
            v.push(m);
        }
    }
    v
}

/// The exclusive daemon's models: its `models` list, else its `model`.
fn daemon_models(app: &App) -> Vec<String> {
    let Some(info) = nrvna_core::lifecycle::read_info(&app.jobs.ws) else {
        return Vec::new();
    };
    let listed: Vec<String> = info
        .get("models")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| m.get("path").and_then(Value::as_str))
                .map(model_id)
                .collect()
        })
        .unwrap_or_default();
    if !listed.is_empty() {
        return listed;
    }
    info.get("model")
        .and_then(Value::as_str)
        .map(model_id)
        .into_iter()
        .collect()
}

fn member_models(app: &App) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for m in nrvna_core::members::list_members(&app.jobs.ws)
        .iter()
        .filter(|m| m.looks_alive())
    {
        for id in m.models().iter().map(|p| model_id(p)) {
            if !v.contains(&id) {
                v.push(id);
            }
        }
    }
    v
}

/// The model a job names in params.json (`model`) for a request's model:
/// on a shared workspace, the members that serve it pick it up; a daemon
/// serving several models runs it on that one. `None` elsewhere (the
/// daemon's one model runs it).
pub fn route(app: &App, model: &str) -> Option<String> {
    let id = model_id(model);
    let daemon = daemon_models(app);
    (member_models(app).contains(&id) || (daemon.len() > 1 && daemon.contains(&id))).then_some(id)
}

fn model_id(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.strip_suffix(".gguf").unwrap_or(name).to_owned()
}

/// The request's `model`: it must name the served model (by id, file name
/// or path). With no daemon running, any name is accepted: the job waits
/// in the queue for one.
pub fn check_model(app: &App, body: &Map<String, Value>) -> Result<String, ApiError> {
    let model = match body.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None => {
            return Err(ApiError::invalid("model is missing; GET /v1/models lists the served ones").param("model"))
        }
        Some(_) => return Err(ApiError::invalid("model must be a string").param("model")),
    };
    let served = served_models(app);
    if served.is_empty() || served.iter().any(|m| *m == model_id(&model)) {
        Ok(model)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "the model `{model}` does not exist here; this workspace serves: {}",
                served.join(", ")
            ),
        )
        .param("model")
        .code("model_not_found"))
    }
}

/// `GET /v1/models`.
pub async fn models(AxState(app): AxState<Arc<App>>) -> Json<Value> {
    let created = nrvna_core::lifecycle::read_info(&app.jobs.ws)
        .and_then(|i| {
            i.get("started_at")
                .and_then(Value::as_str)
                .and_then(nrvna_core::time::unix_seconds)
        })
        .unwrap_or(0);
    let data: Vec<Value> = served_models(&app)
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": created, "owned_by": "nrvna"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// Params every synchronous request starts from: high priority.
pub(crate) fn sync_defaults() -> Params {
    Params {
        priority: Some(Priority::High),
        ..Params::default()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

struct StreamOpts {
    on: bool,
    include_usage: bool,
}

fn stream_opts(body: &Map<String, Value>) -> Result<StreamOpts, ApiError> {
    let on = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("stream must be a boolean").param("stream")),
    };
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(StreamOpts { on, include_usage })
}

/// `POST /v1/chat/completions`.
pub async fn chat(AxState(app): AxState<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let mut body = json_body(body)?;
    let model = check_model(&app, &body)?;
    let stream = stream_opts(&body)?;
    inline_uploaded_images(&app, &mut body)?;
    let mut sub = openai::chat_submission_within(&body, &sync_defaults(), app.jobs.ws.settings())?;
    sub.params.model = route(&app, &model);
    complete(app, sub, model, Kind::Chat, stream).await
}

/// Image parts whose url names a file uploaded with purpose `vision`
/// (`file-...`) get that file inline as a data URI, so that they map onto
/// the job as any image does (and are checked the same way).
fn inline_uploaded_images(app: &App, body: &mut Map<String, Value>) -> Result<(), ApiError> {
    let Some(Value::Array(messages)) = body.get_mut("messages") else {
        return Ok(());
    };
    for (i, m) in messages.iter_mut().enumerate() {
        let Some(Value::Array(parts)) = m.get_mut("content") else {
            continue;
        };
        for (j, part) in parts.iter_mut().enumerate() {
            if part.get("type").and_then(Value::as_str) != Some("image_url") {
                continue;
            }
            let slot = match part.get_mut("image_url") {
                Some(Value::Object(o)) => o.get_mut("url"),
                other => other,
            };
            let Some(url) = slot.filter(|u| u.as_str().is_some_and(|u| u.starts_with("file-"))) else {
                continue;
            };
            let id = url.as_str().unwrap_or_default().to_owned();
            let bytes = app
                .store
                .vision_file(&id, app.jobs.ws.settings().max_image_bytes)
                .map_err(|e| ApiError::invalid(e).param(format!("messages[{i}].content[{j}].image_url")))?;
            *url = Value::String(format!(
                "data:image;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            ));
        }
    }
    Ok(())
}

/// `POST /v1/completions`.
pub async fn completions(
    AxState(app): AxState<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    let model = check_model(&app, &body)?;
    let stream = stream_opts(&body)?;
    let mut sub = openai::completion_submission(&body, &sync_defaults())?;
    sub.params.model = route(&app, &model);
    complete(app, sub, model, Kind::Completion, stream).await
}

async fn complete(
    app: Arc<App>,
    sub: Submission,
    model: String,
    kind: Kind,
    stream: StreamOpts,
) -> Result<Response, ApiError> {
    let stops = sub.params.stop.clone().unwrap_or_default();
    let (mut ids, guard) = app.jobs.publish(vec![sub]).await?;
    let id = ids.remove(0);
    let deadline = Instant::now() + app.cfg.timeout;
    if stream.on {
        return Ok(stream_job(
            app,
            id,
            guard,
            model,
            kind,
            stops,
            stream.include_usage,
            deadline,
        ));
    }
    let fin = finish(&app, &id, guard, deadline).await?;
    let Some(text) = fin.text() else {
        return Err(if fin.artifact.is_some() {
            ApiError::internal(format!("job {id} produced no text"))
        } else {
            fin.failure(&id)
        });
    };
    let created = now_unix();
    let (prompt, completion) = (fin.tokens("prompt_tokens"), fin.tokens("generated_tokens"));
    let finish_reason = fin.meta.extra_str("finish_reason").unwrap_or("stop").to_owned();
    let choice = match kind {
        Kind::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null},
            "logprobs": null,
            "finish_reason": finish_reason,
        }),
        Kind::Completion => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason}),
    };
    Ok(Json(json!({
        "id": response_id(kind, &id),
        "object": if kind == Kind::Chat { "chat.completion" } else { "text_completion" },
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        "system_fingerprint": null,
    }))
    .into_response())
}

/// Publishes one job (high priority is the caller's) and waits for it
/// under the gateway's timeout; the job is cancelled if the client goes
/// away first (the request's future dropped) or the time runs out.
pub(crate) async fn run_one(app: &App, sub: Submission) -> Result<(JobId, Finished), ApiError> {
    let (mut ids, guard) = app.jobs.publish(vec![sub]).await?;
    let id = ids.remove(0);
    let fin = finish(app, &id, guard, Instant::now() + app.cfg.timeout).await?;
    Ok((id, fin))
}

/// Waits for a published job and reads what it left; at the deadline the
/// guard, dropped, cancels it.
async fn finish(app: &App, id: &JobId, guard: CancelGuard, deadline: Instant) -> Result<Finished, ApiError> {
    let Some(job) = app.jobs.wait(id, deadline).await? else {
        return Err(timeout_error(app, id));
    };
    guard.disarm();
    Finished::read(&job)
}

fn response_id(kind: Kind, id: &JobId) -> String {
    match kind {
        Kind::Chat => format!("chatcmpl-{id}"),
        Kind::Completion => format!("cmpl-{id}"),
    }
}

fn timeout_error(app: &App, id: &JobId) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
        format!(
            "job {id} did not finish within {:.0}s, so it was cancelled; is a daemon serving this gateway's \
             workspace? (start one with: nrvnad MODEL WS; `flw WS` shows the queue)",
            app.cfg.timeout.as_secs_f64(),
        ),
    )
    .code("timeout")
}

/// How often a streaming request looks at partial.txt (the daemon appends
/// to it at least every 100 ms).
const STREAM_POLL: Duration = Duration::from_millis(40);

#[allow(clippy::too_many_arguments)]
fn stream_job(
    app: Arc<App>,
    id: JobId,
    guard: CancelGuard,
    model: String,
    kind: Kind,
    stops: Vec<String>,
    include_usage: bool,
    deadline: Instant,
) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(64);
    let out = Chunks {
        tx,
        kind,
        rid: response_id(kind, &id),
        created: now_unix(),
        model,
    };
    // Text that may still be cut by a stop string is held back until the
    // job ends, so the deltas always add up to result.txt.
    let holdback = stops.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
    tokio::spawn(async move {
        let guard = guard;
        if kind == Kind::Chat && !out.send(out.chunk(Some(""), None, true)).await {
            return;
        }
        let mut sent = String::new();
        loop {
            let Some(job) = app.jobs.ws.job(&id) else {
                let e = ApiError::internal(format!("job {id} disappeared from the workspace"));
                out.error(&e).await;
                return;
            };
            if job.state == State::Processing {
                if !out.partial(&job, &mut sent, holdback).await {
                    return;
                }
            } else if job.state.is_terminal() {
                guard.disarm();
                out.finish(&job, &id, &sent, include_usage).await;
                return;
            }
            if Instant::now() >= deadline {
                out.error(&timeout_error(&app, &id)).await;
                return; // the guard cancels the job
            }
            tokio::select! {
                _ = out.tx.closed() => return, // the client went away: the guard cancels the job
                _ = app.jobs.changed(STREAM_POLL) => {}
            }
        }
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<Event, Infallible>(e), rx))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// The events of one streamed response, in OpenAI's chunk format, sent
/// to the client's connection.
struct Chunks {
    tx: mpsc::Sender<Event>,
    kind: Kind,
    rid: String,
    created: i64,
    model: String,
}

impl Chunks {
    /// Sends an event; false when the client is gone.
    async fn send(&self, e: Event) -> bool {
        self.tx.send(e).await.is_ok()
    }

    /// Sends an error object (the stream ends after it).
    async fn error(&self, e: &ApiError) {
        let _ = self.send(Event::default().data(e.body().to_string())).await;
    }

    fn object(&self) -> &'static str {
        match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        }
    }

    /// One chunk: a text delta, a finish reason, and (chat) the role.
    fn chunk(&self, delta: Option<&str>, finish: Option<&str>, role: bool) -> Event {
        let choice = match self.kind {
            Kind::Chat => {
                let mut d = Map::new();
                if role {
                    d.insert("role".into(), "assistant".into());
                }
                if let Some(t) = delta {
                    d.insert("content".into(), t.into());
                }
                json!({"index": 0, "delta": d, "logprobs": null, "finish_reason": finish})
            }
            Kind::Completion => {
                json!({"index": 0, "text": delta.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        Event::default().data(
            json!({"id": self.rid, "object": self.object(), "created": self.created, "model": self.model,
                "choices": [choice]})
            .to_string(),
        )
    }

    /// Sends what partial.txt holds beyond `sent` (less the hold-back);
    /// false when the client is gone.
    async fn partial(&self, job: &nrvna_core::JobView, sent: &mut String, holdback: usize) -> bool {
        let Ok(b) = read_limited(&job.dir.join(PARTIAL_FILE), crate::jobs::MAX_ARTIFACT_BYTES) else {
            return true;
        };
        let Some(delta) = next_delta(&b, sent, holdback) else {
            return true;
        };
        let delta = delta.to_owned();
        if !self.send(self.chunk(Some(&delta), None, false)).await {
            return false;
        }
        sent.push_str(&delta);
        true
    }

    /// The end of a finished job's stream: the rest of its text, the finish
    /// reason, the usage when asked for, and `[DONE]`; or its error.
    async fn finish(&self, job: &nrvna_core::JobView, id: &JobId, sent: &str, include_usage: bool) {
        let fin = match Finished::read(job) {
            Ok(f) => f,
            Err(e) => return self.error(&e).await,
        };
        let Some(text) = fin.text() else {
            return self.error(&fin.failure(id)).await;
        };
        match text.strip_prefix(sent) {
            Some(rest) if !rest.is_empty() => {
                if !self.send(self.chunk(Some(rest), None, false)).await {
                    return;
                }
            }
            Some(_) => {}
            None => tracing::warn!(
                "job {id}: result.txt does not begin with the partial output already streamed; \
                 the streamed text differs from the result"
            ),
        }
        let finish = fin.meta.extra_str("finish_reason").unwrap_or("stop").to_owned();
        if !self.send(self.chunk(None, Some(&finish), false)).await {
            return;
        }
        if include_usage {
            let (p, c) = (fin.tokens("prompt_tokens"), fin.tokens("generated_tokens"));
            let usage = json!({"id": self.rid, "object": self.object(), "created": self.created,
                "model": fin.meta.extra_str("model").unwrap_or(""), "choices": [],
                "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}});
            if !self.send(Event::default().data(usage.to_string())).await {
                return;
            }
        }
        let _ = self.send(Event::default().data("[DONE]")).await;
    }
}

/// The text of `partial` (the bytes of partial.txt) not yet sent, less the
/// last `holdback` bytes (which a stop string may still cut) and any
/// incomplete character; `None` when there is nothing new to send.
fn next_delta<'a>(partial: &'a [u8], sent: &str, holdback: usize) -> Option<&'a str> {
    let valid = match std::str::from_utf8(partial) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&partial[..e.valid_up_to()]).unwrap_or_default(),
    };
    let mut upto = valid.len().saturating_sub(holdback);
    while !valid.is_char_boundary(upto) {
        upto -= 1;
    }
    (upto > sent.len() && valid.starts_with(sent)).then(|| &valid[sent.len()..upto])
}

/// `POST /v1/embeddings`: one embedding job per input, answered together.
pub async fn embeddings(
    AxState(app): AxState<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    let model = check_model(&app, &body)?;
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "float" => false,
        Some(Value::String(s)) if s == "base64" => true,
        Some(_) => {
            return Err(ApiError::invalid("encoding_format must be \"float\" or \"base64\"").param("encoding_format"))
        }
    };
    let inputs = openai::embedding_inputs(&body)?;
    let defaults = Params {
        model: route(&app, &model),
        ..sync_defaults()
    };
    let subs: Vec<Submission> = inputs
        .into_iter()
        .map(|t| openai::embedding_submission(t, &defaults))
        .collect();
    for (i, s) in subs.iter().enumerate() {
        s.validate(app.jobs.ws.settings().max_prompt_bytes).map_err(|e| {
            ApiError::from(RequestError {
                param: Some("input".into()),
                message: format!("input[{i}]: {e}"),
            })
        })?;
    }
    let (ids, guard) = app.jobs.publish(subs).await?;
    let deadline = Instant::now() + app.cfg.timeout;
    let mut data = Vec::with_capacity(ids.len());
    let mut prompt_tokens = 0;
    for (i, id) in ids.iter().enumerate() {
        let Some(job) = app.jobs.wait(id, deadline).await? else {
            return Err(timeout_error(&app, id));
        };
        let fin = Finished::read(&job)?;
        let embedding = Artifact::Embedding.file_name();
        let Some((Artifact::Embedding, bytes)) = &fin.artifact else {
            return Err(if fin.artifact.is_some() {
                ApiError::internal(format!("job {id} produced no {embedding}"))
            } else {
                fin.failure(id)
            });
        };
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::internal(format!("job {id}: {embedding} is not valid JSON: {e}")))?;
        let vector: Vec<f32> = v
            .get("vector")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_f64).map(|f| f as f32).collect())
            .ok_or_else(|| ApiError::internal(format!("job {id}: embedding.json has no \"vector\" array")))?;
        prompt_tokens += fin.tokens("prompt_tokens");
        let embedding = if base64 {
            let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            json!(vector)
        };
        data.push(json!({"object": "embedding", "index": i, "embedding": embedding}));
    }
    guard.disarm();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_hold_back_what_a_stop_string_may_cut_and_half_characters() {
        assert_eq!(next_delta(b"Hello wor", "", 0), Some("Hello wor"));
        assert_eq!(next_delta(b"Hello wor", "Hello", 0), Some(" wor"));
        // With stop "END", the last two bytes might begin it.
        assert_eq!(next_delta(b"Hello EN", "", 2), Some("Hello "));
        assert_eq!(next_delta(b"Hello EN", "Hello ", 2), None);
        // "é" is two bytes; the first one alone is not sent.
        assert_eq!(next_delta(&"café".as_bytes()[..4], "", 0), Some("caf"));
        assert_eq!(next_delta("café!".as_bytes(), "caf", 1), Some("é"));
        // A partial.txt that does not continue what was sent sends nothing.
        assert_eq!(next_delta(b"other text", "Hello", 0), None);
    }

    /// A gateway on a fresh workspace under `dir`.
    fn app_in(dir: &std::path::Path) -> Arc<App> {
        use clap::Parser;
        let ws = dir.join("ws");
        let cfg = crate::config::Args::try_parse_from(["nrvna-api", ws.to_str().unwrap()])
            .unwrap()
            .into_config()
            .unwrap();
        App::open(cfg).unwrap()
    }

    #[test]
    fn a_shared_members_model_is_served_and_routes_its_jobs() {
        let d = tempfile::tempdir().unwrap();
        let app = app_in(d.path());
        assert!(served_models(&app).is_empty());
        assert_eq!(route(&app, "gemma-3-270m"), None);
        let rec = |id: &str, model: &str, beat_at: String| nrvna_core::members::MemberRecord {
            member: id.into(),
            host: "h".into(),
            model: model.into(),
            lease_ttl_s: 30.0,
            beat: 1,
            beat_at,
            ..Default::default()
        };
        let now = nrvna_core::time::iso8601_utc(std::time::SystemTime::now());
        nrvna_core::members::write_member(&app.jobs.ws, &rec("a-1-1", "/m/gemma-3-270m.gguf", now.clone())).unwrap();
        nrvna_core::members::write_member(&app.jobs.ws, &rec("b-1-1", "/m/SmolLM2.gguf", now)).unwrap();
        // A member whose heartbeat is long past its lease serves nothing.
        nrvna_core::members::write_member(
            &app.jobs.ws,
            &rec("c-1-1", "/m/old.gguf", "2020-01-01T00:00:00.000000Z".into()),
        )
        .unwrap();
        assert_eq!(served_models(&app), ["gemma-3-270m", "SmolLM2"]);
        assert_eq!(route(&app, "gemma-3-270m.gguf").as_deref(), Some("gemma-3-270m"));
        assert_eq!(route(&app, "old"), None);
        let body = serde_json::json!({"model": "gpt-4"});
        let e = check_model(&app, body.as_object().unwrap()).unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn a_daemon_serving_several_models_lists_and_routes_them_all() {
        let d = tempfile::tempdir().unwrap();
        let app = app_in(d.path());
        let info = serde_json::json!({"pid": 1, "model": "/m/a.gguf", "models": [
            {"id": "a", "path": "/m/a.gguf", "loaded": true},
            {"id": "b", "path": "/m/b.gguf", "loaded": false},
        ]});
        std::fs::write(app.jobs.ws.file(nrvna_core::workspace::INFO_FILE), format!("{info}\n")).unwrap();
        assert_eq!(served_models(&app), ["a", "b"]);
        assert_eq!(route(&app, "b.gguf").as_deref(), Some("b"));
        assert_eq!(route(&app, "c"), None);
        // One model: jobs name none, as before.
        std::fs::write(
            app.jobs.ws.file(nrvna_core::workspace::INFO_FILE),
            "{\"pid\":1,\"model\":\"/m/a.gguf\"}\n",
        )
        .unwrap();
        assert_eq!(served_models(&app), ["a"]);
        assert_eq!(route(&app, "a"), None);
    }

    #[test]
    fn model_ids_are_file_names_without_gguf() {
        assert_eq!(
            model_id("/m/SmolLM2-135M-Instruct.Q4_1.gguf"),
            "SmolLM2-135M-Instruct.Q4_1"
        );
        assert_eq!(model_id("SmolLM2-135M-Instruct.Q4_1"), "SmolLM2-135M-Instruct.Q4_1");
    }

    #[test]
    fn bodies_must_be_json_objects() {
        assert!(json_body(Ok(Bytes::from_static(br#"{"a":1}"#))).is_ok());
        for bad in [&b"[1]"[..], b"{", b"", b"null"] {
            let e = json_body(Ok(Bytes::copy_from_slice(bad))).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.body()["error"]["type"], "invalid_request_error");
        }
    }
}
