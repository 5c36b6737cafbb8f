//! The Files and Batches endpoints. Creating and cancelling a batch write
//! a record or a marker and return; the background work does the rest.
//! Reads answer from the record and the index of finished lines.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Multipart, Path as AxPath, Query, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use nrvna_core::batch::MAX_BATCH_BYTES;
use nrvna_core::files::{Artifact, BATCH_FILE};
use nrvna_core::fsio::read_limited;
use nrvna_core::media::MediaKind;
use nrvna_core::{BatchRequest, JobId, JobView, Meta, State};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::legacy;
use super::record::{
    batch_job_id, batch_object, result_file, upload_job_id, write_bytes, write_json, write_record, BatchRecord,
    BatchStatus, BY_LINE, OUTPUT_EXPIRES_AFTER, OUTPUT_EXPIRES_AT,
};
use super::work::{error_line, line_of, read_rejected};
use crate::error::ApiError;
use crate::jobs::{now_unix, Finished};
use crate::openai::json_body;
use crate::App;

const ENDPOINTS: [&str; 2] = ["/v1/chat/completions", "/v1/embeddings"];

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::not_found(format!("no {what} with id {id:?} in this workspace"))
}

fn joined(e: tokio::task::JoinError) -> ApiError {
    ApiError::internal(format!("a background task of the request failed: {e}"))
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(joined)
}

/// An image upload: within the workspace's image limit, in a format the
/// daemon decodes.
fn check_image(name: &str, bytes: &[u8], limits: &nrvna_core::config::Settings) -> Result<(), ApiError> {
    let kind = MediaKind::Image;
    let limit = kind.max_bytes(limits);
    if bytes.len() as u64 > limit {
        return Err(ApiError::invalid(format!(
            "file {name:?} is {} bytes, over this workspace's limit of {limit} bytes for images ({})",
            bytes.len(),
            kind.limit_var()
        ))
        .param("file"));
    }
    if kind.sniff(bytes).is_none() {
        return Err(ApiError::invalid(format!(
            "file {name:?} is not {} (its first bytes are no known format); a vision file must be an image",
            kind.formats()
        ))
        .param("file"));
    }
    Ok(())
}

impl super::Store {
    /// The bytes of an uploaded `vision` file (at most `limit`), for an
    /// image part naming it.
    pub fn vision_file(&self, id: &str, limit: u64) -> Result<Vec<u8>, String> {
        match self.upload(id) {
            Some(rec) if rec.get("purpose").and_then(Value::as_str) == Some("vision") => {
                read_limited(&self.dirs.input(id), limit).map_err(|e| format!("reading file {id}: {e}"))
            }
            Some(_) => Err(format!("file {id} was not uploaded with purpose \"vision\"")),
            None => Err(format!("no file with id {id:?} in this workspace")),
        }
    }
}

/// `POST /v1/files` (multipart: `file`, `purpose` `batch` or `vision`).
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
    let (mut anchor, mut seconds) = (None, None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e)),
        };
        match field.name() {
            Some("purpose") => purpose = Some(field.text().await.map_err(multipart_error)?),
            Some("expires_after[anchor]") => anchor = Some(field.text().await.map_err(multipart_error)?),
            Some("expires_after[seconds]") => seconds = Some(field.text().await.map_err(multipart_error)?),
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").to_owned();
                file = Some((name, field.bytes().await.map_err(multipart_error)?));
            }
            _ => {}
        }
    }
    let purpose = match purpose.as_deref() {
        Some(p @ ("batch" | "vision")) => p.to_owned(),
        Some(p) => {
            return Err(ApiError::invalid(format!(
                "purpose {p:?} is not supported; files are kept for \"batch\" and \"vision\""
            ))
            .param("purpose"))
        }
        None => return Err(ApiError::invalid("purpose is missing (\"batch\" or \"vision\")").param("purpose")),
    };
    let Some((filename, bytes)) = file else {
        return Err(ApiError::invalid("file is missing; send it as the multipart field `file`").param("file"));
    };
    if purpose == "vision" {
        // Checked as an image part would be, so that a chat naming it fails only if it is gone.
        check_image(&filename, &bytes, app.jobs.ws.settings())?;
    }
    let created_at = now_unix();
    let expires_at = file_lifetime(&purpose, anchor.as_deref(), seconds.as_deref())?.map(|s| created_at + s);
    let id = format!("file-{}", JobId::generate());
    let rec = json!({
        "id": id, "object": "file", "bytes": bytes.len(), "created_at": created_at,
        "expires_at": expires_at, "filename": filename, "purpose": purpose, "status": "processed",
    });
    let (rec2, id2, app2) = (rec.clone(), id.clone(), app.clone());
    blocking(move || {
        let s = &app2.store;
        write_bytes(&s.ws, &s.dirs.files, &format!("{id2}.data"), &bytes)
            .and_then(|()| write_json(&s.ws, &s.dirs.files, &format!("{id2}.json"), &rec2))
            .map_err(|e| ApiError::internal(format!("storing the upload: {e}")))
    })
    .await??;
    tracing::info!("stored file {id} ({filename})");
    Ok(Json(rec))
}

/// The shortest and longest lifetime an upload may ask for (OpenAI's range).
const FILE_LIFETIME_S: std::ops::RangeInclusive<i64> = 3600..=2_592_000;
/// The lifetime of a `purpose=batch` upload that names none (OpenAI's default).
const BATCH_FILE_LIFETIME_S: i64 = 2_592_000;

/// Seconds an upload is kept: the form's `expires_after[anchor]` (only
/// `created_at`) and `expires_after[seconds]` (3600 to 2592000), else 30
/// days for a `batch` file and for ever (`None`) for a `vision` one.
fn file_lifetime(purpose: &str, anchor: Option<&str>, seconds: Option<&str>) -> Result<Option<i64>, ApiError> {
    match anchor {
        None if seconds.is_none() => return Ok((purpose == "batch").then_some(BATCH_FILE_LIFETIME_S)),
        Some("created_at") => {}
        Some(a) => {
            return Err(ApiError::invalid(format!(
                "expires_after.anchor {a:?} is not supported; it must be \"created_at\""
            ))
            .param("expires_after.anchor"))
        }
        None => {
            return Err(
                ApiError::invalid("expires_after.anchor is missing (it must be \"created_at\")")
                    .param("expires_after.anchor"),
            )
        }
    }
    match seconds.map(|s| s.trim().parse::<i64>()) {
        Some(Ok(n)) if FILE_LIFETIME_S.contains(&n) => Ok(Some(n)),
        _ => Err(ApiError::invalid(format!(
            "expires_after.seconds must be a whole number of seconds from {} to {} (1 hour to 30 days)",
            FILE_LIFETIME_S.start(),
            FILE_LIFETIME_S.end()
        ))
        .param("expires_after.seconds")),
    }
}

pub(crate) fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    let mut a = ApiError::invalid(format!("reading the multipart upload failed: {}", e.body_text()));
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        a.status = status;
        a.code = Some("request_too_large");
    }
    a
}

#[derive(Deserialize)]
pub struct FilePage {
    purpose: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
    order: Option<String>,
}

/// The most files one page lists (OpenAI's limit), and the default.
const MAX_FILE_PAGE: usize = 10_000;

/// `GET /v1/files?purpose=&limit=&after=&order=`: the uploaded files,
/// newest first unless `order=asc`. Batch output and error files are not
/// listed (they are made from a batch's jobs; its object names them).
pub async fn list_files(
    AxState(app): AxState<Arc<App>>,
    page: Result<Query<FilePage>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(page) = page.map_err(|e| ApiError::invalid(format!("bad query: {}", e.body_text())))?;
    let limit = page.limit.unwrap_or(MAX_FILE_PAGE);
    if !(1..=MAX_FILE_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be from 1 to {MAX_FILE_PAGE}")).param("limit"));
    }
    let desc = match page.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(o) => return Err(ApiError::invalid(format!("order {o:?} is not asc or desc")).param("order")),
    };
    let after = match &page.after {
        None => None,
        Some(a) => Some(upload_job_id(a).ok_or_else(|| ApiError::invalid("after is not a file id").param("after"))?),
    };
    let app2 = app.clone();
    let mut ids = blocking(move || -> std::io::Result<Vec<JobId>> {
        Ok(std::fs::read_dir(&app2.store.dirs.files)?
            .filter_map(|e| e.ok())
            .filter_map(|e| upload_job_id(e.file_name().to_str()?.strip_suffix(".json")?))
            .collect())
    })
    .await?
    .map_err(|e| ApiError::internal(format!("listing the uploaded files in api/files: {e}")))?;
    // Ids sort by upload time.
    ids.sort();
    if desc {
        ids.reverse();
    }
    if let Some(a) = &after {
        ids.retain(|id| if desc { id < a } else { id > a });
    }
    let mut data = Vec::new();
    let mut has_more = false;
    for id in ids {
        let Some(rec) = app.store.upload(&format!("file-{id}")) else {
            continue; // deleted meanwhile
        };
        if page
            .purpose
            .as_deref()
            .is_some_and(|p| rec.get("purpose").and_then(Value::as_str) != Some(p))
        {
            continue;
        }
        if data.len() == limit {
            has_more = true;
            break;
        }
        data.push(rec);
    }
    let first = data.first().and_then(|r| r.get("id")).cloned();
    let last = data.last().and_then(|r| r.get("id")).cloned();
    Ok(Json(json!({
        "object": "list", "data": data, "first_id": first, "last_id": last, "has_more": has_more,
    })))
}

/// `DELETE /v1/files/{id}`: an uploaded file, its record first (the file
/// is gone for every reader from then on), then its data. A batch's output
/// and error files are made from its jobs and cannot be deleted; an input
/// file cannot be deleted while a batch has not yet published its lines
/// (it reads the file until then): cancel the batch or wait.
pub async fn delete_file(AxState(app): AxState<Arc<App>>, AxPath(id): AxPath<String>) -> Result<Json<Value>, ApiError> {
    if result_file(&id).is_some() {
        return Err(ApiError::invalid(format!(
            "file {id} is a batch's output or error file, made from the batch's jobs when read; it cannot be deleted"
        )));
    }
    if app.store.upload(&id).is_none() {
        return Err(not_found("file", &id));
    }
    let app2 = app.clone();
    let id2 = id.clone();
    blocking(move || -> Result<(), ApiError> {
        let s = &app2.store;
        let ids = s
            .dirs
            .ids()
            .map_err(|e| ApiError::internal(format!("listing the batch records in api/batches: {e}")))?;
        for b in ids {
            if let Some(rec) = s
                .dirs
                .read(&b)
                .filter(|r| r.input_file_id == id2 && !r.published && !r.finished())
            {
                return Err(ApiError::invalid(format!(
                    "file {id2} is the input of batch {}, which is still reading it; delete it once the batch \
                     is in_progress, or cancel the batch first",
                    rec.id
                ))
                .code("file_in_use"));
            }
        }
        let gone = |r: std::io::Result<()>| match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        gone(std::fs::remove_file(s.dirs.files.join(format!("{id2}.json"))))
            .and_then(|()| s.ws.io().sync_dir(&s.dirs.files))
            .and_then(|()| gone(std::fs::remove_file(s.dirs.input(&id2))))
            .map_err(|e| ApiError::internal(format!("deleting file {id2}: {e}")))
    })
    .await??;
    tracing::info!("deleted file {id}");
    Ok(Json(json!({"id": id, "object": "file", "deleted": true})))
}

/// `GET /v1/files/{id}`.
pub async fn file(AxState(app): AxState<Arc<App>>, AxPath(id): AxPath<String>) -> Result<Json<Value>, ApiError> {
    if let Some(rec) = app.store.upload(&id) {
        return Ok(Json(rec));
    }
    let Some((batch, errors)) = result_file(&id) else {
        return Err(not_found("file", &id));
    };
    let (rec, body) = result_lines(&app, &batch, errors).await?;
    Ok(Json(json!({
        "id": id, "object": "file", "bytes": body.len(), "created_at": rec.created_at,
        "filename": format!("{batch}_{}.jsonl", if errors { "errors" } else { "output" }),
        "purpose": "batch_output", "status": "processed", "expires_at": rec.extra.get(OUTPUT_EXPIRES_AT),
    })))
}

/// `GET /v1/files/{id}/content`.
pub async fn content(AxState(app): AxState<Arc<App>>, AxPath(id): AxPath<String>) -> Result<Response, ApiError> {
    let mut kind = "application/jsonl";
    let body = if let Some(rec) = app.store.upload(&id) {
        if rec.get("purpose").and_then(Value::as_str) == Some("vision") {
            kind = "application/octet-stream";
        }
        let path = app.store.dirs.input(&id);
        blocking(move || read_limited(&path, MAX_BATCH_BYTES))
            .await?
            .map_err(|e| ApiError::internal(format!("reading file {id}: {e}")))?
    } else if let Some((batch, errors)) = result_file(&id) {
        result_lines(&app, &batch, errors).await?.1
    } else {
        return Err(not_found("file", &id));
    };
    Ok(([(header::CONTENT_TYPE, kind)], body).into_response())
}

/// A job's custom_id: its batch.json, else its meta.json (older jobs).
fn custom_id(job: &JobView, meta: &Meta) -> Value {
    read_limited(&job.dir.join(BATCH_FILE), 1 << 20)
        .ok()
        .and_then(|b| BatchRequest::parse(&b).ok())
        .map(|b| Value::String(b.custom_id))
        .or_else(|| meta.extra("custom_id").cloned())
        .unwrap_or(Value::Null)
}

/// The output-file line of a done job (or the error line of one whose
/// result cannot be read).
fn output_line(job: &JobView, line: usize) -> Value {
    let meta = job.meta().ok().flatten().unwrap_or_default();
    let cid = custom_id(job, &meta);
    match Finished::read(job).and_then(|f| response_body(&job.id, &f)) {
        Ok(body) => json!({
            "id": format!("batch_req_{}", job.id), "custom_id": cid,
            "response": {"status_code": 200, "request_id": job.id.as_str(), "body": body},
            "error": null,
        }),
        Err(e) => error_line(job.id.as_str(), line, cid.as_str(), "unreadable_result", &e.message),
    }
}

/// The error-file line of a failed job (`batch_expired` for a job the
/// expiry of its batch cancelled).
fn failed_line(job: &JobView, line: usize, expired: bool) -> Value {
    let meta = job.meta().ok().flatten().unwrap_or_default();
    let cancelled = meta.extra("cancelled").and_then(Value::as_bool) == Some(true);
    let why = job.error().unwrap_or_else(|| "the job failed".into());
    let code = match (cancelled, expired) {
        (true, true) => "batch_expired",
        (true, false) => "batch_cancelled",
        _ => "job_failed",
    };
    error_line(job.id.as_str(), line, custom_id(job, &meta).as_str(), code, &why)
}

/// The output (done jobs) or error (lines that could not run, failed jobs)
/// JSONL of a batch, in the order of its input file.
async fn result_lines(app: &Arc<App>, batch: &str, errors: bool) -> Result<(BatchRecord, Vec<u8>), ApiError> {
    let rec = app.store.dirs.read(batch).ok_or_else(|| not_found("batch", batch))?;
    if rec.output_expired(now_unix()) {
        let kind = if errors { "errors" } else { "output" };
        return Err(ApiError::not_found(format!(
            "the {kind} file of batch {batch} expired (output_expires_after)"
        )));
    }
    let app = app.clone();
    blocking(move || {
        let rows = if rec.by_line() {
            by_line_rows(&app, &rec, errors)
        } else {
            legacy_rows(&app, &rec, errors)
        };
        let mut out = Vec::new();
        for r in rows {
            out.extend_from_slice(r.to_string().as_bytes());
            out.push(b'\n');
        }
        (rec, out)
    })
    .await
}

fn by_line_rows(app: &App, rec: &BatchRecord, errors: bool) -> Vec<Value> {
    let s = &app.store;
    let Some(j) = rec.job_id() else { return Vec::new() };
    let lines = s.index.lines(j.as_str());
    let (st, set) = if errors {
        (State::Failed, &lines.failed)
    } else {
        (State::Done, &lines.done)
    };
    let mut rows: Vec<(usize, Value)> = set
        .iter()
        .filter_map(|&line| {
            let id = JobId::parse(&format!("{j}_{line:06}")).ok()?;
            let job = JobView {
                dir: s.ws.job_dir(st, &id),
                id,
                state: st,
            };
            job.dir.is_dir().then(|| {
                (
                    line,
                    if errors {
                        failed_line(&job, line, rec.expired_at.is_some())
                    } else {
                        output_line(&job, line)
                    },
                )
            })
        })
        .collect();
    if errors {
        rows.extend(read_rejected(&s.dirs, &rec.id).into_iter().map(|v| (line_of(&v), v)));
    }
    rows.sort_by_key(|(line, _)| *line);
    rows.into_iter().map(|(_, v)| v).collect()
}

fn legacy_rows(app: &App, rec: &BatchRecord, errors: bool) -> Vec<Value> {
    let mut rows = Vec::new();
    for (job, meta) in super::tagged_jobs(&app.store.ws, &rec.id) {
        let line = meta.extra("batch_line").and_then(Value::as_u64).unwrap_or(0) as usize;
        match (job.state, errors) {
            (State::Done, false) => rows.push(output_line(&job, line)),
            (State::Failed, true) => rows.push(failed_line(&job, line, false)),
            _ => {}
        }
    }
    rows
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

/// Where a batch stands: its status, counts and the times of its steps.
struct Standing {
    status: BatchStatus,
    done: u64,
    failed: u64,
    in_progress_at: Option<i64>,
    cancelling_at: Option<i64>,
    /// When it completed or was cancelled.
    end: Option<i64>,
}

fn by_line_standing(app: &App, rec: &BatchRecord) -> Standing {
    let s = &app.store;
    let (done, failed) = rec.job_id().map_or((0, 0), |j| s.index.counts(j.as_str()));
    let (done, failed) = (done.min(rec.total), (failed + rec.rejected).min(rec.total));
    let cancelling_at = rec.cancelling_at.or_else(|| s.dirs.cancel_asked(&rec.id));
    let status = if rec.failed_at.is_some() {
        BatchStatus::Failed
    } else if rec.cancelled_at.is_some() {
        BatchStatus::Cancelled
    } else if rec.expired_at.is_some() {
        BatchStatus::Expired
    } else if cancelling_at.is_some() {
        BatchStatus::Cancelling
    } else if rec.in_progress_at.is_none() {
        BatchStatus::Validating
    } else if rec.completed_at.is_some() {
        BatchStatus::Completed
    } else if rec.published && done + failed >= rec.total {
        BatchStatus::Finalizing
    } else {
        BatchStatus::InProgress
    };
    Standing {
        status,
        done,
        failed,
        in_progress_at: rec.in_progress_at,
        cancelling_at,
        end: rec.completed_at.or(rec.cancelled_at).or(rec.expired_at),
    }
}

fn legacy_standing(app: &App, rec: &BatchRecord) -> Standing {
    let c = legacy::counts(&app.store.ws, &rec.id);
    let finished = c.done + c.failed;
    let status = if !rec.published {
        BatchStatus::Validating
    } else if rec.cancelling_at.is_some() {
        if finished >= c.jobs {
            BatchStatus::Cancelled
        } else {
            BatchStatus::Cancelling
        }
    } else if finished >= rec.total {
        BatchStatus::Completed
    } else {
        BatchStatus::InProgress
    };
    Standing {
        status,
        done: c.done,
        failed: c.failed,
        in_progress_at: rec.published.then_some(rec.created_at),
        cancelling_at: rec.cancelling_at,
        end: Some(c.last_completed.max(rec.created_at)),
    }
}

/// A batch record as OpenAI's batch object.
async fn describe(app: &Arc<App>, rec: BatchRecord) -> Result<Value, ApiError> {
    let (rec, st) = if rec.by_line() {
        let st = by_line_standing(app, &rec);
        (rec, st)
    } else {
        let app = app.clone();
        blocking(move || {
            let st = legacy_standing(&app, &rec);
            (rec, st)
        })
        .await?
    };
    let id = rec.id.clone();
    let (total, errors, failed_at) = (rec.total, rec.errors.clone(), rec.failed_at);
    let (expires_at, expired_at) = (rec.expires_at(), rec.expired_at);
    let mut o = match serde_json::to_value(rec) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(ApiError::internal(format!("batch {id}: its record is no JSON object"))),
        Err(e) => return Err(ApiError::internal(format!("batch {id}: {e}"))),
    };
    for k in ["published", "total", "jobs", "rejected"] {
        o.remove(k);
    }
    let at = |cond: bool, t: Option<i64>| if cond { json!(t) } else { Value::Null };
    let s = st.status;
    let over = matches!(
        s,
        BatchStatus::Completed | BatchStatus::Cancelled | BatchStatus::Expired
    );
    let fields = [
        ("status", json!(s)),
        (
            "request_counts",
            json!({"total": total, "completed": st.done, "failed": st.failed}),
        ),
        ("errors", errors),
        ("in_progress_at", json!(st.in_progress_at)),
        ("finalizing_at", at(s == BatchStatus::Completed, st.end)),
        ("completed_at", at(s == BatchStatus::Completed, st.end)),
        ("cancelling_at", json!(st.cancelling_at)),
        ("cancelled_at", at(s == BatchStatus::Cancelled, st.end)),
        ("failed_at", json!(failed_at)),
        (
            "output_file_id",
            json!((over && st.done > 0).then(|| format!("file-{id}-output"))),
        ),
        (
            "error_file_id",
            json!((over && st.failed > 0).then(|| format!("file-{id}-errors"))),
        ),
        ("expires_at", json!(expires_at)),
        ("expired_at", json!(expired_at)),
    ];
    for (k, v) in fields {
        o.insert(k.into(), v);
    }
    // Recorded when the batch ends (events::usage); null until then.
    o.entry("usage").or_insert(Value::Null);
    Ok(Value::Object(o))
}

/// `POST /v1/batches`: checks the request and that the input file exists,
/// records the batch (`validating`) and returns; the background work
/// validates the file and publishes its lines.
pub async fn create(
    AxState(app): AxState<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = json_body(body)?;
    let input = match body.get("input_file_id") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(ApiError::invalid("input_file_id is missing or not a string").param("input_file_id")),
    };
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
    let output_after = match body.get("output_expires_after") {
        None | Some(Value::Null) => None,
        Some(v) => file_lifetime(
            "batch_output",
            Some(v.get("anchor").and_then(Value::as_str).unwrap_or("")),
            v.get("seconds").map(|s| s.to_string()).as_deref(),
        )
        .map_err(|e| e.param("output_expires_after"))?,
    };
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => Value::Null,
        Some(m @ Value::Object(_)) => m.clone(),
        Some(_) => return Err(ApiError::invalid("metadata must be an object").param("metadata")),
    };
    if app.store.upload(&input).is_none() {
        return Err(not_found("file", &input).param("input_file_id"));
    }
    let rec = BatchRecord {
        id: format!("batch_{}", JobId::generate()),
        object: batch_object(),
        endpoint,
        input_file_id: input,
        completion_window: window,
        created_at: now_unix(),
        metadata,
        total: 0,
        published: false,
        cancelling_at: None,
        jobs: Some(BY_LINE.into()),
        in_progress_at: None,
        rejected: 0,
        completed_at: None,
        cancelled_at: None,
        failed_at: None,
        expired_at: None,
        errors: Value::Null,
        extra: output_after
            .map(|s| Map::from_iter([(OUTPUT_EXPIRES_AFTER.to_owned(), json!(s))]))
            .unwrap_or_default(),
    };
    let (app2, rec2) = (app.clone(), rec.clone());
    blocking(move || write_record(&app2.store.ws, &app2.store.dirs, &rec2))
        .await?
        .map_err(|e| ApiError::internal(format!("recording batch: {e}")))?;
    app.store.poke();
    tracing::info!("batch {}: created from file {}", rec.id, rec.input_file_id);
    Ok(Json(describe(&app, rec).await?))
}

/// `GET /v1/batches/{id}`.
pub async fn get(AxState(app): AxState<Arc<App>>, AxPath(id): AxPath<String>) -> Result<Json<Value>, ApiError> {
    let rec = app.store.dirs.read(&id).ok_or_else(|| not_found("batch", &id))?;
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
    let mut ids = app
        .store
        .dirs
        .ids()
        .map_err(|e| ApiError::internal(format!("listing the batch records in api/batches: {e}")))?;
    if let Some(after) = &page.after {
        let a = batch_job_id(after).ok_or_else(|| ApiError::invalid("after is not a batch id").param("after"))?;
        ids.retain(|id| batch_job_id(id).is_some_and(|b| b < a));
    }
    let has_more = ids.len() > limit;
    ids.truncate(limit);
    let mut data = Vec::new();
    for id in &ids {
        if let Some(rec) = app.store.dirs.read(id) {
            data.push(describe(&app, rec).await?);
        }
    }
    Ok(Json(json!({
        "object": "list", "data": data, "first_id": ids.first(), "last_id": ids.last(), "has_more": has_more,
    })))
}

/// `POST /v1/batches/{id}/cancel`: records the cancel and stops this
/// gateway's publisher of the batch at once; the background work cancels
/// its queued and running jobs (queued ones fail at once, running ones are
/// asked to stop). The batch is `cancelling` until none runs, and no line
/// unpublished by then is ever published.
pub async fn cancel(AxState(app): AxState<Arc<App>>, AxPath(id): AxPath<String>) -> Result<Json<Value>, ApiError> {
    let mut rec = app.store.dirs.read(&id).ok_or_else(|| not_found("batch", &id))?;
    if rec.by_line() {
        if !rec.finished() && app.store.dirs.cancel_asked(&id).is_none() {
            let app2 = app.clone();
            let name = format!("{id}.cancel");
            blocking(move || {
                let s = &app2.store;
                write_bytes(&s.ws, &s.dirs.batches, &name, format!("{}\n", now_unix()).as_bytes())
            })
            .await?
            .map_err(|e| ApiError::internal(format!("cancelling batch {id}: {e}")))?;
        }
        app.store.stop(&id);
        app.store.poke();
    } else if rec.cancelling_at.is_none() {
        rec.cancelling_at = Some(now_unix());
        let (app2, rec2) = (app.clone(), rec.clone());
        blocking(move || {
            let s = &app2.store;
            write_record(&s.ws, &s.dirs, &rec2)?;
            legacy::sweep(&s.ws, &rec2.id);
            Ok::<(), String>(())
        })
        .await?
        .map_err(|e| ApiError::internal(format!("cancelling batch {id}: {e}")))?;
    }
    tracing::info!("batch {id}: cancel asked for");
    Ok(Json(describe(&app, rec).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_lives_30_days_or_what_expires_after_asks_within_openais_range() {
        assert_eq!(file_lifetime("batch", None, None).unwrap(), Some(2_592_000));
        assert_eq!(file_lifetime("vision", None, None).unwrap(), None, "kept until deleted");
        assert_eq!(
            file_lifetime("vision", Some("created_at"), Some("3600")).unwrap(),
            Some(3600)
        );
        assert_eq!(
            file_lifetime("batch", Some("created_at"), Some("2592000")).unwrap(),
            Some(2_592_000)
        );
        for (a, s) in [
            (Some("created_at"), Some("3599")),
            (Some("created_at"), Some("2592001")),
            (Some("created_at"), Some("1h")),
            (Some("created_at"), None),
            (Some("last_active_at"), Some("3600")),
            (None, Some("3600")),
        ] {
            let e = file_lifetime("batch", a, s).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{a:?} {s:?}");
        }
    }
}
