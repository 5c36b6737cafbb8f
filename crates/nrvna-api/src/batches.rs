//! OpenAI Files and Batches, durable in the workspace.
//!
//! `WS/api/files/<file-id>.data` holds an uploaded file and `<file-id>.json`
//! its record (written last: the record's presence means the file is whole).
//! `WS/api/batches/<batch-id>.json` holds what a batch was asked to do; its
//! jobs are ordinary jobs tagged with the batch id (as `wrk --batch` tags
//! them), so its state (counts, status, timestamps) is read from the
//! workspace every time and survives a restart of every process. Output and
//! error files are made from the jobs when they are read. Every file here is
//! written NAME.tmp + fsync + rename, and the directory fsynced.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Multipart, Path as AxPath, Query, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use nrvna_core::batch::{self, MAX_BATCH_BYTES};
use nrvna_core::cancel::cancel_job;
use nrvna_core::files::Artifact;
use nrvna_core::fsio::{read_limited, ReadError};
use nrvna_core::{JobId, JobView, Meta, Params, Priority, State, Workspace};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::jobs::{now_unix, Finished};
use crate::openai::json_body;
use crate::App;

const ENDPOINTS: [&str; 2] = ["/v1/chat/completions", "/v1/embeddings"];

/// What a batch was asked to do: `WS/api/batches/<batch-id>.json`. Its
/// fields in the order they are written (the order of the batch object
/// the gateway answers with); keys it does not know are kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub id: String,
    #[serde(default = "batch_object")]
    pub object: String,
    pub endpoint: String,
    pub input_file_id: String,
    #[serde(default = "default_window")]
    pub completion_window: String,
    pub created_at: i64,
    /// An object, or null.
    #[serde(default)]
    pub metadata: Value,
    /// How many requests the input file holds.
    pub total: u64,
    /// Whether every request is a job (false while publishing, and after a
    /// gateway died publishing, until `Store::recover`).
    #[serde(default)]
    pub published: bool,
    /// When a cancel was asked for (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelling_at: Option<i64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn batch_object() -> String {
    "batch".into()
}

fn default_window() -> String {
    "24h".into()
}

/// A batch's status, OpenAI's words. The gateway derives it from the jobs
/// each time it is asked; it never stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

/// Where the gateway keeps its own records inside a workspace.
pub struct Store {
    ws: Workspace,
    files: PathBuf,
    batches: PathBuf,
    /// One writer of batch records at a time (create, cancel, recovery).
    lock: tokio::sync::Mutex<()>,
}

impl Store {
    pub fn open(ws: &Workspace) -> std::io::Result<Store> {
        let api = ws.root().join("api");
        let files = api.join("files");
        let batches = api.join("batches");
        for d in [&api, &files, &batches] {
            std::fs::create_dir_all(d)?;
        }
        Ok(Store {
            ws: ws.clone(),
            files,
            batches,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    fn read_json(dir: &Path, name: &str) -> Option<Value> {
        let b = read_limited(&dir.join(name), 16 << 20).ok()?;
        serde_json::from_slice(&b).ok()
    }

    fn write_json(&self, dir: &Path, name: &str, v: &impl Serialize) -> Result<(), ApiError> {
        let io = self.ws.io();
        let mut b = serde_json::to_vec(v).unwrap_or_default();
        b.push(b'\n');
        io.write_atomic(dir, name, &b)
            .and_then(|()| io.sync_dir(dir))
            .map_err(|e| ApiError::internal(format!("writing {}: {e}", dir.join(name).display())))
    }

    fn write_batch(&self, rec: &BatchRecord) -> Result<(), ApiError> {
        self.write_json(&self.batches, &format!("{}.json", rec.id), rec)
    }

    /// A batch's record; `None` when there is none, or when it is
    /// unreadable or malformed (then with a warning naming the file).
    fn batch(&self, id: &str) -> Option<BatchRecord> {
        batch_job_id(id)?;
        let path = self.batches.join(format!("{id}.json"));
        let bytes = match read_limited(&path, 16 << 20) {
            Ok(b) => b,
            Err(ReadError::Missing) => return None,
            Err(e) => {
                tracing::warn!("skipping batch record {}: {e}", path.display());
                return None;
            }
        };
        match serde_json::from_slice::<BatchRecord>(&bytes) {
            Ok(rec) if rec.id == id => Some(rec),
            Ok(rec) => {
                tracing::warn!("skipping batch record {}: it names batch {:?}", path.display(), rec.id);
                None
            }
            Err(e) => {
                tracing::warn!("skipping batch record {}: {e}", path.display());
                None
            }
        }
    }

    fn upload(&self, id: &str) -> Option<Value> {
        upload_job_id(id)?;
        Store::read_json(&self.files, &format!("{id}.json"))
    }

    /// Publishes what a batch whose gateway died while publishing has not
    /// yet published (the lines whose custom_id has no job), then marks it
    /// published. Run once at start.
    pub async fn recover(&self) -> anyhow::Result<()> {
        let _w = self.lock.lock().await;
        for entry in std::fs::read_dir(&self.batches)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else { continue };
            let Some(mut rec) = self.batch(id) else { continue };
            if rec.published {
                continue;
            }
            let input = rec.input_file_id.clone();
            let Ok(bytes) = read_limited(&self.files.join(format!("{input}.data")), MAX_BATCH_BYTES) else {
                tracing::warn!("batch {id}: its input file {input} is gone; it cannot be completed");
                continue;
            };
            let subs = batch::parse(&bytes, &batch_defaults(), id, self.ws.settings().max_prompt_bytes)?;
            let have: std::collections::HashSet<String> = tagged_jobs(&self.ws, id)
                .iter()
                .filter_map(|(_, m)| m.extra_str("custom_id").map(str::to_owned))
                .collect();
            let missing: Vec<_> = subs
                .into_iter()
                .filter(|s| !have.contains(s.extra_meta["custom_id"].as_str().unwrap_or_default()))
                .collect();
            let ws = self.ws.clone();
            let n = missing.len();
            tokio::task::spawn_blocking(move || batch::publish_all(&ws, &missing)).await??;
            rec.published = true;
            self.write_batch(&rec).map_err(|e| anyhow::anyhow!(e.message))?;
            tracing::info!("batch {id}: published the {n} request(s) left unpublished by an earlier gateway");
        }
        Ok(())
    }
}

/// Batch jobs yield to interactive ones.
fn batch_defaults() -> batch::Defaults {
    batch::Defaults {
        params: Params {
            priority: Some(Priority::Low),
            ..Params::default()
        },
        ..Default::default()
    }
}

/// `file-<job id>` for uploads.
fn upload_job_id(id: &str) -> Option<JobId> {
    JobId::parse(id.strip_prefix("file-")?).ok()
}

/// `batch_<job id>`, which is also the tag of its jobs.
fn batch_job_id(id: &str) -> Option<JobId> {
    JobId::parse(id.strip_prefix("batch_")?).ok()
}

/// `file-batch_<job id>-output` / `-errors`: made from a batch's jobs.
fn result_file(id: &str) -> Option<(String, bool)> {
    let rest = id.strip_prefix("file-")?;
    let (batch, errors) = match rest.strip_suffix("-output") {
        Some(b) => (b, false),
        None => (rest.strip_suffix("-errors")?, true),
    };
    batch_job_id(batch)?;
    Some((batch.to_owned(), errors))
}

/// Every job with a tag and its meta.json, in batch-file order. A job that
/// moves between listing and reading (claimed, finished, cancelled) is
/// looked up again rather than dropped.
pub fn tagged_jobs(ws: &Workspace, tag: &str) -> Vec<(JobView, Meta)> {
    let mut rows = Vec::new();
    for mut job in ws.all_jobs() {
        // A job that moves while it is read (a cancel, a finish) is followed.
        let meta = job.meta_following(ws).ok().flatten();
        if let Some(m) = meta.filter(|m| m.tags.iter().any(|t| t == tag)) {
            rows.push((job, m));
        }
    }
    let line = |m: &Meta| m.extra("batch_line").and_then(Value::as_u64).unwrap_or(u64::MAX);
    rows.sort_by(|(a, am), (b, bm)| line(am).cmp(&line(bm)).then_with(|| a.id.cmp(&b.id)));
    rows
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::not_found(format!("no {what} with id {id:?} in this workspace"))
}

/// `POST /v1/files` (multipart: `file`, `purpose=batch`).
pub async fn upload(
    AxState(app): AxState<Arc<App>>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let mut form = form.map_err(|e| {
        ApiError::invalid(format!(
            "{}; upload the file as multipart/form-data with the fields `file` and `purpose=batch`",
            e.body_text()
        ))
    })?;
    let (mut purpose, mut file) = (None, None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e)),
        };
        match field.name() {
            Some("purpose") => purpose = Some(field.text().await.map_err(multipart_error)?),
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").to_owned();
                file = Some((name, field.bytes().await.map_err(multipart_error)?));
            }
            _ => {}
        }
    }
    match purpose.as_deref() {
        Some("batch") => {}
        Some(p) => {
            return Err(
                ApiError::invalid(format!("purpose {p:?} is not supported; only \"batch\" files are kept"))
                    .param("purpose"),
            )
        }
        None => return Err(ApiError::invalid("purpose is missing (it must be \"batch\")").param("purpose")),
    }
    let Some((filename, bytes)) = file else {
        return Err(ApiError::invalid("file is missing; send it as the multipart field `file`").param("file"));
    };
    let id = format!("file-{}", JobId::generate());
    let rec = json!({
        "id": id, "object": "file", "bytes": bytes.len(), "created_at": now_unix(),
        "filename": filename, "purpose": "batch", "status": "processed",
    });
    let dir = app.store.files.clone();
    let (rec2, id2, app2) = (rec.clone(), id.clone(), app.clone());
    tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
        app2.store
            .ws
            .io()
            .write_atomic(&dir, &format!("{id2}.data"), &bytes)
            .map_err(|e| ApiError::internal(format!("storing the upload in {}: {e}", dir.display())))?;
        app2.store.write_json(&dir, &format!("{id2}.json"), &rec2)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    tracing::info!("stored file {id} ({filename})");
    Ok(Json(rec))
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    let mut a = ApiError::invalid(format!("reading the multipart upload failed: {}", e.body_text()));
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        a.status = status;
        a.code = Some("request_too_large");
    }
    a
}

/// `GET /v1/files/{id}`.
pub async fn file(AxState(app): AxState<Arc<App>>, AxPath(id): AxPath<String>) -> Result<Json<Value>, ApiError> {
    if let Some(rec) = app.store.upload(&id) {
        return Ok(Json(rec));
    }
    let Some((batch, errors)) = result_file(&id) else {
        return Err(not_found("file", &id));
    };
    let (_, body) = result_lines(&app, &batch, errors).await?;
    let created = app.store.batch(&batch).map_or(0, |b| b.created_at);
    Ok(Json(json!({
        "id": id, "object": "file", "bytes": body.len(), "created_at": created,
        "filename": format!("{batch}_{}.jsonl", if errors { "errors" } else { "output" }),
        "purpose": "batch_output", "status": "processed",
    })))
}

/// `GET /v1/files/{id}/content`.
pub async fn content(AxState(app): AxState<Arc<App>>, AxPath(id): AxPath<String>) -> Result<Response, ApiError> {
    let body = if app.store.upload(&id).is_some() {
        let path = app.store.files.join(format!("{id}.data"));
        tokio::task::spawn_blocking(move || read_limited(&path, MAX_BATCH_BYTES))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(format!("reading file {id}: {e}")))?
    } else if let Some((batch, errors)) = result_file(&id) {
        result_lines(&app, &batch, errors).await?.1
    } else {
        return Err(not_found("file", &id));
    };
    Ok(([(header::CONTENT_TYPE, "application/jsonl")], body).into_response())
}

/// The output (done jobs) or error (failed jobs) JSONL of a batch, in the
/// order of its input file.
async fn result_lines(app: &App, batch: &str, errors: bool) -> Result<(usize, Vec<u8>), ApiError> {
    if app.store.batch(batch).is_none() {
        return Err(not_found("batch", batch));
    }
    let ws = app.jobs.ws.clone();
    let tag = batch.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut n = 0;
        for (job, meta) in tagged_jobs(&ws, &tag) {
            let custom_id = meta.extra("custom_id").cloned().unwrap_or(Value::Null);
            let line = match (job.state, errors) {
                (State::Done, false) => match Finished::read(&job).and_then(|f| response_body(&job.id, &f)) {
                    Ok(body) => json!({
                        "id": format!("batch_req_{}", job.id), "custom_id": custom_id,
                        "response": {"status_code": 200, "request_id": job.id.as_str(), "body": body},
                        "error": null,
                    }),
                    Err(e) => error_line(&job, custom_id, "unreadable_result", &e.message),
                },
                (State::Failed, true) => {
                    let cancelled = meta.extra("cancelled").and_then(Value::as_bool) == Some(true);
                    let why = job.error().unwrap_or_else(|| "the job failed".into());
                    error_line(
                        &job,
                        custom_id,
                        if cancelled { "batch_cancelled" } else { "job_failed" },
                        &why,
                    )
                }
                _ => continue,
            };
            n += 1;
            out.extend_from_slice(line.to_string().as_bytes());
            out.push(b'\n');
        }
        (n, out)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))
}

fn error_line(job: &JobView, custom_id: Value, code: &str, message: &str) -> Value {
    json!({
        "id": format!("batch_req_{}", job.id), "custom_id": custom_id,
        "response": null, "error": {"code": code, "message": message},
    })
}

/// The response body a done job would have had as a synchronous request.
fn response_body(id: &JobId, fin: &Finished) -> Result<Value, ApiError> {
    let model = fin.meta.extra_str("model").unwrap_or("unknown");
    let (p, c) = (fin.tokens("prompt_tokens"), fin.tokens("generated_tokens"));
    let created = [&fin.meta.completed_at, &fin.meta.submitted_at]
        .into_iter()
        .find_map(|t| t.as_deref().and_then(nrvna_core::time::unix_seconds))
        .unwrap_or(0);
    match &fin.artifact {
        Some((Artifact::Embedding, b)) => {
            let v: Value = serde_json::from_slice(b).map_err(|e| {
                ApiError::internal(format!("{} is not valid JSON: {e}", Artifact::Embedding.file_name()))
            })?;
            Ok(json!({
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": v.get("vector").cloned().unwrap_or(Value::Null)}],
                "model": model,
                "usage": {"prompt_tokens": p, "total_tokens": p},
            }))
        }
        _ => {
            let text = fin
                .text()
                .ok_or_else(|| ApiError::internal(format!("job {id} has no text result")))?;
            Ok(json!({
                "id": format!("chatcmpl-{id}"), "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                    "logprobs": null, "finish_reason": fin.meta.extra_str("finish_reason").unwrap_or("stop")}],
                "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
            }))
        }
    }
}

/// A batch record with its state read from the workspace.
async fn describe(app: &App, rec: BatchRecord) -> Result<Value, ApiError> {
    let id = rec.id.clone();
    let ws = app.jobs.ws.clone();
    let tag = id.clone();
    let jobs = tokio::task::spawn_blocking(move || tagged_jobs(&ws, &tag))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let total = rec.total;
    let (mut done, mut failed, mut last_completed) = (0u64, 0u64, 0i64);
    for (job, meta) in &jobs {
        match job.state {
            State::Done => done += 1,
            State::Failed => failed += 1,
            _ => continue,
        }
        if let Some(t) = meta.completed_at.as_deref().and_then(nrvna_core::time::unix_seconds) {
            last_completed = last_completed.max(t);
        }
    }
    let finished = done + failed;
    let (published, created_at) = (rec.published, rec.created_at);
    let status = if !published {
        BatchStatus::Validating
    } else if rec.cancelling_at.is_some() {
        if finished >= jobs.len() as u64 {
            BatchStatus::Cancelled
        } else {
            BatchStatus::Cancelling
        }
    } else if finished >= total {
        BatchStatus::Completed
    } else {
        BatchStatus::InProgress
    };
    let over = matches!(status, BatchStatus::Completed | BatchStatus::Cancelled);
    let mut o = match serde_json::to_value(rec) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(ApiError::internal(format!("batch {id}: its record is no JSON object"))),
        Err(e) => return Err(ApiError::internal(format!("batch {id}: {e}"))),
    };
    o.remove("published");
    o.remove("total");
    o.insert("status".into(), json!(status));
    o.insert(
        "request_counts".into(),
        json!({"total": total, "completed": done, "failed": failed}),
    );
    o.insert(
        "in_progress_at".into(),
        if published { created_at.into() } else { Value::Null },
    );
    let end = if over {
        json!(last_completed.max(created_at))
    } else {
        Value::Null
    };
    o.insert(
        "finalizing_at".into(),
        if status == BatchStatus::Completed {
            end.clone()
        } else {
            Value::Null
        },
    );
    o.insert(
        "completed_at".into(),
        if status == BatchStatus::Completed {
            end.clone()
        } else {
            Value::Null
        },
    );
    o.insert(
        "cancelled_at".into(),
        if status == BatchStatus::Cancelled {
            end
        } else {
            Value::Null
        },
    );
    let out = (over && done > 0).then(|| format!("file-{id}-output"));
    let err = (over && failed > 0).then(|| format!("file-{id}-errors"));
    o.insert("output_file_id".into(), json!(out));
    o.insert("error_file_id".into(), json!(err));
    for k in ["errors", "expires_at", "expired_at", "failed_at"] {
        o.entry(k).or_insert(Value::Null);
    }
    Ok(Value::Object(o))
}

/// `POST /v1/batches`.
pub async fn create(
    AxState(app): AxState<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = json_body(body)?;
    let input = match body.get("input_file_id") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(ApiError::invalid("input_file_id is missing or not a string").param("input_file_id")),
    };
    let input_file_id = input.clone();
    let endpoint = match body.get("endpoint").and_then(Value::as_str) {
        Some(e) if ENDPOINTS.contains(&e) => e.to_owned(),
        _ => {
            return Err(
                ApiError::invalid(format!("endpoint must be one of {}", ENDPOINTS.join(", "))).param("endpoint"),
            )
        }
    };
    let window = match body.get("completion_window") {
        None | Some(Value::Null) => "24h".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::invalid("completion_window must be a string").param("completion_window")),
    };
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => Value::Null,
        Some(m @ Value::Object(_)) => m.clone(),
        Some(_) => return Err(ApiError::invalid("metadata must be an object").param("metadata")),
    };
    if app.store.upload(&input).is_none() {
        return Err(not_found("file", &input).param("input_file_id"));
    }
    let id = format!("batch_{}", JobId::generate());
    let path = app.store.files.join(format!("{input}.data"));
    let tag = id.clone();
    let max_prompt = app.jobs.ws.settings().max_prompt_bytes;
    let subs = tokio::task::spawn_blocking(move || {
        let bytes =
            read_limited(&path, MAX_BATCH_BYTES).map_err(|e| ApiError::internal(format!("reading {input}: {e}")))?;
        batch::parse(&bytes, &batch_defaults(), &tag, max_prompt).map_err(|e| {
            ApiError::invalid(format!("the input file is not a valid batch file: {e}")).param("input_file_id")
        })
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let mut rec = BatchRecord {
        id: id.clone(),
        object: batch_object(),
        endpoint,
        input_file_id: input_file_id.clone(),
        completion_window: window,
        created_at: now_unix(),
        metadata,
        total: subs.len() as u64,
        published: false,
        cancelling_at: None,
        extra: Map::new(),
    };
    let name = format!("{id}.json");
    {
        let _w = app.store.lock.lock().await;
        // The record first: a gateway killed while publishing finds it at
        // its next start and publishes the rest (Store::recover).
        app.store.write_batch(&rec)?;
        let ws = app.jobs.ws.clone();
        let published = tokio::task::spawn_blocking(move || batch::publish_all(&ws, &subs))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        if let Err(e) = published {
            let _ = std::fs::remove_file(app.store.batches.join(&name));
            return Err(ApiError::internal(format!("publishing batch {id}: {e:#}")));
        }
        rec.published = true;
        app.store.write_batch(&rec)?;
    }
    tracing::info!("batch {id}: published {} request(s)", rec.total);
    Ok(Json(describe(&app, rec).await?))
}

/// `GET /v1/batches/{id}`.
pub async fn get(AxState(app): AxState<Arc<App>>, AxPath(id): AxPath<String>) -> Result<Json<Value>, ApiError> {
    let rec = app.store.batch(&id).ok_or_else(|| not_found("batch", &id))?;
    Ok(Json(describe(&app, rec).await?))
}

#[derive(Deserialize)]
pub struct Page {
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /v1/batches?limit=N&after=ID`: newest first.
pub async fn list(
    AxState(app): AxState<Arc<App>>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(page) = page.map_err(|e| ApiError::invalid(format!("bad query: {}", e.body_text())))?;
    let limit = page.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit must be from 1 to 100").param("limit"));
    }
    let mut ids: Vec<String> = std::fs::read_dir(&app.store.batches)
        .map_err(|e| ApiError::internal(format!("listing {}: {e}", app.store.batches.display())))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_owned))
        .filter(|id| batch_job_id(id).is_some())
        .collect();
    // Newest first: ids sort by submission time.
    ids.sort_by_key(|id| std::cmp::Reverse(batch_job_id(id)));
    if let Some(after) = &page.after {
        let a = batch_job_id(after).ok_or_else(|| ApiError::invalid("after is not a batch id").param("after"))?;
        ids.retain(|id| batch_job_id(id).is_some_and(|b| b < a));
    }
    let has_more = ids.len() > limit;
    ids.truncate(limit);
    let mut data = Vec::new();
    for id in &ids {
        if let Some(rec) = app.store.batch(id) {
            data.push(describe(&app, rec).await?);
        }
    }
    Ok(Json(json!({
        "object": "list", "data": data, "first_id": ids.first(), "last_id": ids.last(), "has_more": has_more,
    })))
}

/// `POST /v1/batches/{id}/cancel`: queued jobs fail at once, running ones
/// are asked to stop; the batch is `cancelling` until none runs.
pub async fn cancel(AxState(app): AxState<Arc<App>>, AxPath(id): AxPath<String>) -> Result<Json<Value>, ApiError> {
    let _w = app.store.lock.lock().await;
    let mut rec = app.store.batch(&id).ok_or_else(|| not_found("batch", &id))?;
    if rec.cancelling_at.is_none() {
        rec.cancelling_at = Some(now_unix());
        app.store.write_batch(&rec)?;
    }
    let ws = app.jobs.ws.clone();
    let tag = id.clone();
    tokio::task::spawn_blocking(move || {
        for (job, _) in tagged_jobs(&ws, &tag) {
            if !job.state.is_terminal() {
                if let Err(e) = cancel_job(&ws, &job.id) {
                    tracing::warn!("batch {tag}: cancelling job {}: {e}", job.id);
                }
            }
        }
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    drop(_w);
    Ok(Json(describe(&app, rec).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_left_half_published_is_completed_once_at_start() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        let store = Store::open(&ws).unwrap();
        let line = |c: &str| {
            format!(
                r#"{{"custom_id":"{c}","method":"POST","url":"/v1/chat/completions","body":{{"messages":[{{"role":"user","content":"hi {c}"}}]}}}}"#
            )
        };
        let input = format!("{}\n{}\n{}\n", line("a"), line("b"), line("c"));
        std::fs::write(store.files.join("file-1_1_000001.data"), &input).unwrap();
        let id = "batch_1_1_000002";
        let rec = json!({
            "id": id, "object": "batch", "endpoint": "/v1/chat/completions", "input_file_id": "file-1_1_000001",
            "completion_window": "24h", "created_at": 1, "metadata": null, "total": 3, "published": false,
        });
        store.write_json(&store.batches, &format!("{id}.json"), &rec).unwrap();
        // The killed gateway had published the first request only.
        let subs = batch::parse(input.as_bytes(), &batch_defaults(), id, ws.settings().max_prompt_bytes).unwrap();
        batch::publish_all(&ws, &subs[..1]).unwrap();

        store.recover().await.unwrap();
        store.recover().await.unwrap();
        let jobs = tagged_jobs(&ws, id);
        let ids: Vec<_> = jobs
            .iter()
            .map(|(_, m)| m.extra_str("custom_id").unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert!(store.batch(id).unwrap().published);
        // Written back as it was, but published.
        let mut want = rec.to_string().into_bytes();
        want.push(b'\n');
        let want = String::from_utf8(want)
            .unwrap()
            .replace(r#""published":false"#, r#""published":true"#);
        assert_eq!(
            std::fs::read_to_string(store.batches.join(format!("{id}.json"))).unwrap(),
            want
        );
        let p = std::fs::read_to_string(jobs[1].0.dir.join("params.json")).unwrap();
        assert!(p.contains(r#""priority": "low""#), "{p}");
    }

    #[test]
    fn ids_are_checked_before_any_path_is_made() {
        assert!(upload_job_id("file-../../etc").is_none());
        assert!(batch_job_id("batch_1_2_000003").is_some());
        assert_eq!(
            result_file("file-batch_1_2_000003-errors"),
            Some(("batch_1_2_000003".into(), true))
        );
        assert!(result_file("file-batch_../x-output").is_none());
    }
}
