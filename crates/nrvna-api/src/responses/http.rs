//! The `/v1/responses` handlers: create (sync, streamed, background),
//! retrieve (JSON, or the event stream from `starting_after`), cancel,
//! delete and input_items.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use nrvna_core::cancel::{cancel_job, Cancelled};
use nrvna_core::{JobId, Params, Priority, Submission};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::events::events;
use super::object::{object, Outcome, Status};
use super::record::{response_id, Record, Records};
use super::request::{chat_message, parse};
use crate::error::ApiError;
use crate::jobs::{now_unix, CancelGuard};
use crate::openai::{check_model, json_body, route, sync_defaults};
use crate::App;

/// How often a stream looks at partial.txt when no change was signalled.
const STREAM_POLL: Duration = Duration::from_millis(40);

/// How long a cancel waits for a running job to stop before answering.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// The deepest chain of previous responses followed.
const MAX_CHAIN: usize = 1000;

fn records(app: &App) -> Records {
    Records::new(&app.jobs.ws)
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "no response with id {id:?} in this workspace (never created, deleted, or created with store=false)"
    ))
}

/// Response `id`'s record, or 404.
fn record(app: &App, id: &str) -> Result<Record, ApiError> {
    records(app)
        .read(id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| not_found(id))
}

/// Removes a store=false response's record when its answer is done (or
/// its client left).
struct Forget(Option<(Records, String)>);

impl Drop for Forget {
    fn drop(&mut self) {
        if let Some((recs, id)) = self.0.take() {
            if let Err(e) = recs.remove(&id) {
                tracing::warn!("response {id} was not to be stored, but removing its record failed: {e}");
            }
        }
    }
}

/// `POST /v1/responses`.
pub async fn create(
    AxState(app): AxState<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    let model = check_model(&app, &body)?;
    let job = JobId::generate();
    let id = response_id(&job);
    let req = parse(&body, &id, model.clone(), now_unix())?;
    let (mut messages, parent) = conversation(&app, req.rec.previous_response_id.as_deref())?;
    if let Some(i) = &req.rec.instructions {
        messages.insert(0, (None, json!({"role": "system", "content": i})));
    }
    for (i, item) in req.rec.input.iter().enumerate() {
        messages.push((Some(format!("input[{i}]")), item.clone()));
    }
    let mut sub = submission(&app, &req.chat, messages, req.rec.background)?;
    sub.params.model = route(&app, &model);
    sub.parent = parent;
    sub.extra_meta.insert("response_id".into(), json!(id));
    sub.extra_meta.insert("background".into(), json!(req.rec.background));
    sub.validate(app.jobs.ws.settings().max_prompt_bytes)?;

    // The record first: a published job always has its response.
    let recs = records(&app);
    recs.write(&req.rec).map_err(ApiError::internal)?;
    let published = app.jobs.publish_as(vec![(sub, Some(job.clone()))]).await;
    let guard = match published {
        Ok((_, guard)) => guard,
        Err(e) => {
            let _ = recs.remove(&id);
            return Err(e);
        }
    };
    let forget = Forget((!req.rec.store).then(|| (recs, id.clone())));
    if req.rec.background {
        // The job outlives this request: nothing cancels it but a cancel.
        guard.disarm();
        if req.stream {
            return Ok(stream(app, req.rec, -1, None, forget, None));
        }
        return Ok(Json(object(&req.rec, &Outcome::bare(Status::Queued))).into_response());
    }
    let deadline = Instant::now() + app.cfg.timeout;
    if req.stream {
        return Ok(stream(app, req.rec, -1, Some(guard), forget, Some(deadline)));
    }
    if app.jobs.wait(&job, deadline).await?.is_none() {
        return Err(timeout(&app, &job)); // the guard, dropped, cancels the job
    }
    guard.disarm();
    let out = read(&app, &job).await;
    let answer = object(&req.rec, &out);
    drop(forget);
    Ok(Json(answer).into_response())
}

/// The chat messages of the earlier responses of the chain ending at
/// `prev` (oldest first: each one's input, then its output), labelled for
/// errors, and the job of `prev` (the new job's parent).
#[allow(clippy::type_complexity)]
fn conversation(app: &App, prev: Option<&str>) -> Result<(Vec<(Option<String>, Value)>, Option<JobId>), ApiError> {
    let Some(first) = prev else {
        return Ok((Vec::new(), None));
    };
    let missing = |id: &str| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("previous response with id {id:?} not found (never created, deleted, or not stored)"),
        )
        .param("previous_response_id")
        .code("previous_response_not_found")
    };
    let mut turns = Vec::new();
    let mut next = Some(first.to_owned());
    while let Some(id) = next {
        if turns.len() >= MAX_CHAIN {
            return Err(ApiError::invalid(format!(
                "the chain of previous responses is longer than {MAX_CHAIN}; start a new conversation"
            ))
            .param("previous_response_id"));
        }
        let rec = records(app)
            .read(&id)
            .map_err(ApiError::internal)?
            .ok_or_else(|| missing(&id))?;
        let job = rec.job().ok_or_else(|| missing(&id))?;
        let out = Outcome::read(&app.jobs.ws, &job);
        let Some(text) = out.text.clone() else {
            return Err(ApiError::invalid(format!(
                "previous response {id} is {}: continue from a response that has completed",
                out.status.as_str()
            ))
            .param("previous_response_id"));
        };
        next = rec.previous_response_id.clone();
        turns.push((rec, text));
    }
    let parent = turns.first().and_then(|(r, _)| r.job());
    let mut messages = Vec::new();
    for (rec, text) in turns.into_iter().rev() {
        for (i, item) in rec.input.iter().enumerate() {
            messages.push((
                Some(format!("input[{i}] of previous response {}", rec.id)),
                item.clone(),
            ));
        }
        messages.push((None, json!({"role": "assistant", "content": text})));
    }
    Ok((messages, parent))
}

/// The job for the conversation `messages`: the chat mapping of nrvna-core
/// with its errors naming the response's fields.
fn submission(
    app: &App,
    chat: &Map<String, Value>,
    messages: Vec<(Option<String>, Value)>,
    background: bool,
) -> Result<Submission, ApiError> {
    let limit = app.jobs.ws.settings().max_image_bytes;
    let mut inline = |file: &str| -> Result<String, String> {
        let bytes = app.store.vision_file(file, limit)?;
        Ok(format!(
            "data:image;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ))
    };
    let mut labels = Vec::with_capacity(messages.len());
    let mut list = Vec::with_capacity(messages.len());
    for (label, m) in messages {
        let msg = if m.get("type").is_some() {
            let at = label.clone().unwrap_or_default();
            chat_message(&m, &mut inline).map_err(|e| ApiError::invalid(format!("{at}: {e}")).param(at))?
        } else {
            m
        };
        labels.push(label.unwrap_or_else(|| "instructions".into()));
        list.push(msg);
    }
    let mut body = chat.clone();
    body.insert("messages".into(), Value::Array(list));
    let defaults = if background {
        Params {
            priority: Some(Priority::Normal),
            ..Params::default()
        }
    } else {
        sync_defaults()
    };
    nrvna_core::openai::chat_submission_within(&body, &defaults, app.jobs.ws.settings())
        .map_err(|e| rename_fields(ApiError::from(e), &labels))
}

/// A chat-mapping error in the response's terms: `messages[k]` is the
/// input item it came from, `response_format` is `text.format`,
/// `max_tokens` is `max_output_tokens`.
fn rename_fields(mut e: ApiError, labels: &[String]) -> ApiError {
    e.message = responses_terms(&e.message, labels);
    e.param = e.param.as_deref().map(|p| responses_terms(p, labels));
    e
}

fn responses_terms(s: &str, labels: &[String]) -> String {
    let mut s = s
        .replace("response_format", "text.format")
        .replace("max_tokens", "max_output_tokens");
    for (k, label) in labels.iter().enumerate().rev() {
        s = s.replace(&format!("messages[{k}]"), label);
    }
    s.replace("messages", "input")
}

fn timeout(app: &App, id: &JobId) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
        format!(
            "response {} did not finish within {:.0}s, so it was cancelled; is a daemon serving this gateway's \
             workspace? (start one with: nrvnad MODEL WS); for long work use background=true",
            response_id(id),
            app.cfg.timeout.as_secs_f64(),
        ),
    )
    .code("timeout")
}

/// The job's outcome, read on a blocking thread.
async fn read(app: &Arc<App>, job: &JobId) -> Outcome {
    let (ws, job) = (app.jobs.ws.clone(), job.clone());
    match tokio::task::spawn_blocking(move || Outcome::read(&ws, &job)).await {
        Ok(o) => o,
        Err(e) => {
            let mut o = Outcome::bare(Status::Failed);
            o.error = Some(format!("reading the job failed: {e}"));
            o
        }
    }
}

/// Streams the response's events after `after` until its last one; with a
/// guard (a synchronous request) the job is cancelled if the client leaves
/// or the deadline passes first.
fn stream(
    app: Arc<App>,
    rec: Record,
    after: i64,
    guard: Option<CancelGuard>,
    forget: Forget,
    deadline: Option<Instant>,
) -> Response {
    let (tx, rx) = mpsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        let (guard, _forget) = (guard, forget);
        let Some(job) = rec.job() else { return };
        let mut sent = after;
        loop {
            let out = read(&app, &job).await;
            for e in events(&rec, &out)
                .into_iter()
                .skip(usize::try_from(sent + 1).unwrap_or(0))
            {
                let ev = SseEvent::default().event(e.kind).data(e.data.to_string());
                if tx.send(ev).await.is_err() {
                    return; // the client went away (a guard cancels the job)
                }
                sent += 1;
            }
            if out.status.is_terminal() {
                if let Some(g) = guard {
                    g.disarm();
                }
                return;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let e = timeout(&app, &job);
                let data = json!({"type": "error", "code": "timeout", "message": e.body()["error"]["message"],
                    "param": null, "sequence_number": sent + 1});
                let _ = tx.send(SseEvent::default().event("error").data(data.to_string())).await;
                return;
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = app.jobs.changed(STREAM_POLL) => {}
            }
        }
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<SseEvent, Infallible>(e), rx))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[derive(Deserialize)]
pub struct RetrieveQuery {
    stream: Option<String>,
    starting_after: Option<String>,
}

/// `GET /v1/responses/{id}` (`?stream=true&starting_after=N`: the event
/// stream from event N+1).
pub async fn retrieve(
    AxState(app): AxState<Arc<App>>,
    Path(id): Path<String>,
    Query(q): Query<RetrieveQuery>,
) -> Result<Response, ApiError> {
    let rec = record(&app, &id)?;
    let streamed = match q.stream.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::invalid("stream must be true or false").param("stream")),
    };
    let after = match q.starting_after.as_deref() {
        None => -1,
        Some(s) => s.parse::<i64>().ok().filter(|&n| n >= -1).ok_or_else(|| {
            ApiError::invalid("starting_after must be a sequence number (0 or more)").param("starting_after")
        })?,
    };
    if streamed {
        return Ok(stream(app, rec, after, None, Forget(None), None));
    }
    let job = rec.job().ok_or_else(|| not_found(&id))?;
    let out = read(&app, &job).await;
    Ok(Json(object(&rec, &out)).into_response())
}

/// `POST /v1/responses/{id}/cancel`: background responses only; a queued
/// or running one is cancelled, a finished one answered as it is.
pub async fn cancel(AxState(app): AxState<Arc<App>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let rec = record(&app, &id)?;
    if !rec.background {
        return Err(ApiError::invalid(format!(
            "only background responses can be cancelled; {id} was created with background=false"
        ))
        .code("invalid_request"));
    }
    let job = rec.job().ok_or_else(|| not_found(&id))?;
    stop(&app, &job).await?;
    let _ = app.jobs.wait(&job, Instant::now() + CANCEL_WAIT).await;
    let out = read(&app, &job).await;
    Ok(Json(object(&rec, &out)).into_response())
}

/// Cancels the job unless it has finished.
async fn stop(app: &Arc<App>, job: &JobId) -> Result<(), ApiError> {
    let (ws, j) = (app.jobs.ws.clone(), job.clone());
    match tokio::task::spawn_blocking(move || cancel_job(&ws, &j)).await {
        Ok(Ok(Cancelled::Dequeued | Cancelled::Requested | Cancelled::NotRunning(_))) => Ok(()),
        Ok(Err(e)) => Err(ApiError::internal(format!("cancelling job {job}: {e}"))),
        Err(e) => Err(ApiError::internal(format!("cancelling job {job}: {e}"))),
    }
}

/// `DELETE /v1/responses/{id}`: an unfinished response is cancelled, and
/// its record removed; the job stays in the queue's history (flw, nrvnad's
/// retention) but no longer answers as a response.
pub async fn delete(AxState(app): AxState<Arc<App>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let rec = record(&app, &id)?;
    if let Some(job) = rec.job() {
        stop(&app, &job).await?;
    }
    records(&app).remove(&id).map_err(ApiError::internal)?;
    Ok(Json(json!({"id": id, "object": "response", "deleted": true})).into_response())
}

#[derive(Deserialize)]
pub struct ItemsQuery {
    limit: Option<String>,
    order: Option<String>,
    after: Option<String>,
}

/// `GET /v1/responses/{id}/input_items` (`limit` 1-100, default 20;
/// `order` asc or desc, default desc; `after` an item id).
pub async fn input_items(
    AxState(app): AxState<Arc<App>>,
    Path(id): Path<String>,
    Query(q): Query<ItemsQuery>,
) -> Result<Response, ApiError> {
    let rec = record(&app, &id)?;
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::invalid("limit must be an integer from 1 to 100").param("limit"))?,
    };
    let mut items = rec.input;
    match q.order.as_deref() {
        None | Some("desc") => items.reverse(),
        Some("asc") => {}
        Some(_) => return Err(ApiError::invalid("order must be asc or desc").param("order")),
    }
    if let Some(after) = q.after.as_deref() {
        let Some(at) = items
            .iter()
            .position(|i| i.get("id").and_then(Value::as_str) == Some(after))
        else {
            return Err(ApiError::invalid(format!("after: no input item {after:?} in response {id}")).param("after"));
        };
        items.drain(..=at);
    }
    let has_more = items.len() > limit;
    items.truncate(limit);
    let first = items.first().and_then(|i| i.get("id")).cloned().unwrap_or(Value::Null);
    let last = items.last().and_then(|i| i.get("id")).cloned().unwrap_or(Value::Null);
    Ok(
        Json(json!({"object": "list", "data": items, "first_id": first, "last_id": last, "has_more": has_more}))
            .into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_errors_are_told_in_the_responses_terms() {
        let labels = vec!["instructions".to_owned(), "input[0]".to_owned()];
        let e = ApiError::invalid("messages[1].content[0].image_url: the image is empty")
            .param("messages[1].content[0].image_url");
        let e = rename_fields(e, &labels);
        assert_eq!(e.param.as_deref(), Some("input[0].content[0].image_url"));
        assert_eq!(e.message, "input[0].content[0].image_url: the image is empty");
        let e = rename_fields(
            ApiError::invalid("response_format.json_schema.schema bad").param("response_format"),
            &labels,
        );
        assert_eq!(e.param.as_deref(), Some("text.format"));
    }
}
