//! The dashboard's data endpoints (`/ui/api/...`), JSON for the pages'
//! scripts: the job list (from the index), one job with its files, the
//! job's images and audio with their content types, cancel, resubmit and
//! submit (published through `Jobs::publish`, the API's own path, within
//! the queue limit), and batches with their downloads.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Path as AxPath, Query, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use nrvna_core::cancel::{cancel_job, Cancelled};
use nrvna_core::files::{Artifact, GRAMMAR_FILE, PARAMS_FILE, PROMPT_FILE, SCHEMA_FILE, TYPE_FILE};
use nrvna_core::fsio::read_optional;
use nrvna_core::media::{read_job_media, sniff_image, MediaFile, MediaKind};
use nrvna_core::submit::OutputFormat;
use nrvna_core::{JobId, JobType, JobView, Params, Priority, State, Submission};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::index::{read_params, read_prefix, read_type, submitted_unix, Filter, MAX_PAGE};
use crate::error::ApiError;
use crate::App;

/// The most of a prompt, result or partial output a job page shows.
pub const MAX_SHOWN: u64 = 256 * 1024;

/// The most embedding values sent for the sparkline.
const SPARK_POINTS: usize = 96;

fn blocking_err(e: tokio::task::JoinError) -> ApiError {
    ApiError::internal(format!("dashboard worker thread: {e}"))
}

fn job_id(id: &str) -> Result<JobId, ApiError> {
    JobId::parse(id).map_err(|e| ApiError::not_found(format!("no job {id:?}: {e}")))
}

fn find(app: &App, id: &JobId) -> Result<JobView, ApiError> {
    app.jobs.ws.job(id).ok_or_else(|| {
        ApiError::not_found(format!(
            "no job {id} in the workspace (removed by retention, or never published)"
        ))
    })
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    state: Option<String>,
    tag: Option<String>,
    #[serde(rename = "type")]
    job_type: Option<String>,
    model: Option<String>,
    q: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// `GET /ui/api/jobs?state=&tag=&type=&model=&q=&offset=&limit=`.
pub async fn jobs(
    AxState(app): AxState<Arc<App>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::invalid(format!("bad query: {}", e.body_text())))?;
    let state =
        match nonempty(q.state).as_deref() {
            None => None,
            Some(w) => Some(State::PUBLISHED.into_iter().find(|s| s.label() == w).ok_or_else(|| {
                ApiError::invalid(format!("state {w:?} is not one of queued, running, done, failed"))
            })?),
        };
    let job_type = match nonempty(q.job_type).as_deref() {
        None => None,
        Some(t) => Some(
            JobType::parse(t)
                .ok_or_else(|| ApiError::invalid(format!("type {t:?} is not one of text, embed, vision, stt, tts")))?,
        ),
    };
    let f = Filter {
        state,
        tag: nonempty(q.tag),
        job_type,
        model: nonempty(q.model),
        text: nonempty(q.q),
    };
    let (offset, limit) = (q.offset.unwrap_or(0), q.limit.unwrap_or(50).min(MAX_PAGE));
    let ui = app.ui.clone();
    let page = tokio::task::spawn_blocking(move || ui.index.page(&f, offset, limit))
        .await
        .map_err(blocking_err)?;
    Ok(Json(json!({
        "rows": page.rows, "matched": page.matched, "total": page.total, "read": page.read,
        "offset": offset, "limit": limit,
    })))
}

/// `GET /ui/api/job/{id}`: everything the job page shows.
pub async fn job(AxState(app): AxState<Arc<App>>, AxPath(id): AxPath<String>) -> Result<Json<Value>, ApiError> {
    let id = job_id(&id)?;
    let app2 = app.clone();
    let v = tokio::task::spawn_blocking(move || describe(&app2, &id))
        .await
        .map_err(blocking_err)??;
    Ok(Json(v))
}

fn text_file(dir: &Path, name: &str) -> Option<String> {
    read_prefix(&dir.join(name), MAX_SHOWN as usize)
}

fn describe(app: &App, id: &JobId) -> Result<Value, ApiError> {
    let mut job = find(app, id)?;
    let meta = job.meta_following(&app.jobs.ws).ok().flatten();
    let dir = job.dir.clone();
    let params = read_params(&dir);
    let job_type = read_type(&dir);
    let mut params_map = params.to_map();
    params_map.remove("system");
    let mut v = json!({
        "id": id.as_str(),
        "state": job.state.label(),
        "type": job_type.as_str(),
        "submitted": submitted_unix(id),
        "prompt": text_file(&dir, PROMPT_FILE),
        "system": params.system,
        "params": params_map,
        "schema": text_file(&dir, SCHEMA_FILE),
        "meta": meta.as_ref().map(|m| Value::Object(m.to_map())),
        "children": app.ui.index.children(id),
    });
    if let Some(p) = meta.as_ref().and_then(|m| m.parent.as_ref()) {
        v["parent"] = p.as_str().into();
    }
    v["images"] = list_dir(&dir.join(MediaKind::Image.dir())).into();
    match job.state {
        State::Done => match job.primary_artifact() {
            Some(a @ (Artifact::Result | Artifact::Transcript)) => {
                v["artifact"] = a.kind().into();
                v["result"] = text_file(&dir, a.file_name()).into();
            }
            Some(Artifact::Audio) => v["artifact"] = "audio".into(),
            Some(Artifact::Embedding) => {
                v["artifact"] = "embedding".into();
                let e: Option<Vec<f64>> = read_optional(&dir.join(Artifact::Embedding.file_name()), 64 << 20)
                    .ok()
                    .flatten()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .and_then(|e| embedding_values(&e));
                if let Some(e) = e {
                    v["embedding"] = json!({"dimension": e.len(), "sample": sparkline(&e)});
                }
            }
            None => {}
        },
        State::Failed => {
            v["error"] = job.error().into();
            v["partial"] = text_file(&dir, nrvna_core::files::RESPONSE_FILE).into();
        }
        State::Processing => {
            v["partial"] = text_file(&dir, nrvna_core::files::PARTIAL_FILE).into();
            if let Some(p) = nrvna_core::live::Progress::read(&dir) {
                v["progress"] = json!({"tokens": p.tokens, "tokens_per_s": p.tokens_per_s});
            }
        }
        State::Ready => {
            if let Some(p) = nrvna_core::standing::place(&app.jobs.ws, id) {
                v["position"] = p.position().into();
            }
        }
        State::Writing => {}
    }
    Ok(v)
}

/// An embedding file's numbers: nrvnad's `{"dim": N, "vector": [...]}`,
/// or (other writers) a flat array, the first of an array of arrays, or
/// `{"embedding": [...]}`.
fn embedding_values(e: &Value) -> Option<Vec<f64>> {
    let arr = match e {
        Value::Array(a) if a.first().is_some_and(Value::is_array) => a.first()?.as_array()?,
        Value::Array(a) => a,
        Value::Object(o) => o.get("vector").or_else(|| o.get("embedding"))?.as_array()?,
        _ => return None,
    };
    arr.iter().map(Value::as_f64).collect()
}

/// At most [`SPARK_POINTS`] values: the mean of each run.
fn sparkline(e: &[f64]) -> Vec<f64> {
    if e.len() <= SPARK_POINTS {
        return e.to_vec();
    }
    let per = e.len().div_ceil(SPARK_POINTS);
    e.chunks(per).map(|c| c.iter().sum::<f64>() / c.len() as f64).collect()
}

/// The regular files' names in a job's media directory, sorted.
fn list_dir(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

/// `GET /ui/api/job/{id}/image/{name}`: one of the job's images, with
/// the content type of its bytes (refused when they are no image).
pub async fn image(
    AxState(app): AxState<Arc<App>>,
    AxPath((id, name)): AxPath<(String, String)>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let job = find(&app, &id)?;
    let dir = job.dir.join(MediaKind::Image.dir());
    // Only a name the directory lists is joined: never a path from the URL.
    if !list_dir(&dir).contains(&name) {
        return Err(ApiError::not_found(format!("job {id} has no image {name:?}")));
    }
    let max = app.jobs.ws.settings().max_image_bytes;
    let bytes = read_optional(&dir.join(&name), max)
        .map_err(|e| ApiError::internal(format!("job {id}: reading images/{name}: {e}")))?
        .ok_or_else(|| ApiError::not_found(format!("job {id} has no image {name:?}")))?;
    let ct = match sniff_image(&bytes) {
        Some("png") => "image/png",
        Some("jpg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("bmp") => "image/bmp",
        _ => {
            return Err(ApiError::invalid(format!(
                "job {id}: images/{name} is not an image it can show"
            )))
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, ct),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        bytes,
    )
        .into_response())
}

/// `GET /ui/api/job/{id}/audio`: a tts job's `audio.wav`, as audio/wav.
pub async fn audio(AxState(app): AxState<Arc<App>>, AxPath(id): AxPath<String>) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let job = find(&app, &id)?;
    let name = Artifact::Audio.file_name();
    let bytes = read_optional(&job.dir.join(name), crate::jobs::MAX_ARTIFACT_BYTES)
        .map_err(|e| ApiError::internal(format!("job {id}: reading {name}: {e}")))?
        .ok_or_else(|| ApiError::not_found(format!("job {id} has no {name} (not a finished tts job)")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "audio/wav"),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        bytes,
    )
        .into_response())
}

/// `POST /ui/api/job/{id}/cancel`.
pub async fn cancel(AxState(app): AxState<Arc<App>>, AxPath(id): AxPath<String>) -> Result<Json<Value>, ApiError> {
    let id = job_id(&id)?;
    find(&app, &id)?;
    let (ws, id2) = (app.jobs.ws.clone(), id.clone());
    let done = tokio::task::spawn_blocking(move || cancel_job(&ws, &id2))
        .await
        .map_err(blocking_err)?
        .map_err(|e| ApiError::internal(format!("cancelling job {id}: {e}")))?;
    app.ui.index.refresh(&id);
    let word = match done {
        Cancelled::Dequeued => "dequeued",
        Cancelled::Requested => "requested",
        Cancelled::NotRunning(_) => "not_running",
    };
    tracing::info!("dashboard: cancel of job {id}: {word}");
    Ok(Json(json!({"id": id.as_str(), "cancel": word})))
}

/// `POST /ui/api/job/{id}/resubmit`: the same prompt, type, parameters,
/// schema, tags and media as a new job.
pub async fn resubmit(AxState(app): AxState<Arc<App>>, AxPath(id): AxPath<String>) -> Result<Json<Value>, ApiError> {
    let id = job_id(&id)?;
    let job = find(&app, &id)?;
    let settings = app.jobs.ws.settings().clone();
    let id2 = id.clone();
    let sub = tokio::task::spawn_blocking(move || -> Result<Submission, ApiError> {
        let dir = &job.dir;
        let read = |name: &str, limit: u64| {
            read_optional(&dir.join(name), limit)
                .map_err(|e| ApiError::internal(format!("job {id2}: reading {name}: {e}")))
        };
        let prompt = read(PROMPT_FILE, settings.max_prompt_bytes)?
            .ok_or_else(|| ApiError::not_found(format!("job {id2} has no {PROMPT_FILE} (it moved; try again)")))?;
        let mut sub = Submission::text(String::from_utf8_lossy(&prompt).into_owned());
        if let Some(t) = read(TYPE_FILE, 64)? {
            sub.job_type = JobType::parse(String::from_utf8_lossy(&t).trim()).unwrap_or(JobType::Text);
        }
        if let Some(p) = read(PARAMS_FILE, 1 << 20)? {
            sub.params = Params::parse_lenient(&p)
                .map_err(|e| ApiError::invalid(format!("job {id2}: {PARAMS_FILE}: {e}")))?
                .0;
        }
        match (read(SCHEMA_FILE, 1 << 20)?, read(GRAMMAR_FILE, 1 << 20)?) {
            (Some(s), Some(g)) => {
                sub.output = Some(OutputFormat::JsonSchema {
                    schema: String::from_utf8_lossy(&s).into_owned(),
                    grammar: String::from_utf8_lossy(&g).into_owned(),
                })
            }
            (None, Some(g)) => sub.output = Some(OutputFormat::Gbnf(String::from_utf8_lossy(&g).into_owned())),
            _ => {}
        }
        if let Ok(Some(m)) = job.meta() {
            sub.tags = m.tags;
        }
        for kind in [MediaKind::Image, MediaKind::Audio] {
            let files = read_job_media(dir, kind, &settings)
                .map_err(|e| ApiError::internal(format!("job {id2}: reading its {}: {e}", kind.dir())))?;
            for (name, bytes) in files {
                let ext = name.rsplit_once('.').map(|(_, e)| e.to_owned()).unwrap_or_default();
                sub.media.push(MediaFile { kind, ext, bytes });
            }
        }
        sub.extra_meta.insert("resubmitted_from".into(), id2.as_str().into());
        Ok(sub)
    })
    .await
    .map_err(blocking_err)??;
    let new = publish(&app, sub).await?;
    tracing::info!("dashboard: job {id} resubmitted as {new}");
    Ok(Json(json!({"id": new.as_str(), "from": id.as_str()})))
}

async fn publish(app: &Arc<App>, sub: Submission) -> Result<JobId, ApiError> {
    let (mut ids, guard) = app.jobs.publish(vec![sub]).await?;
    // The job outlives the request: the page that asked follows it.
    guard.disarm();
    let id = ids.remove(0);
    app.ui.index.refresh(&id);
    Ok(id)
}

/// The Submit form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitForm {
    prompt: String,
    #[serde(default)]
    system: Option<String>,
    #[serde(default, rename = "type")]
    job_type: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    schema: Option<String>,
}

/// `POST /ui/api/submit` (JSON): publishes one job; answers its id.
pub async fn submit(
    AxState(app): AxState<Arc<App>>,
    body: Result<Json<SubmitForm>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(f) = body.map_err(|e| ApiError::invalid(format!("bad submit form: {}", e.body_text())))?;
    if f.prompt.trim().is_empty() {
        return Err(ApiError::invalid("the prompt is empty; write what the model should answer").param("prompt"));
    }
    let mut sub = Submission::text(f.prompt);
    if let Some(t) = nonempty(f.job_type) {
        sub.job_type = JobType::parse(&t)
            .filter(|t| matches!(t, JobType::Text | JobType::Embed))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "type {t:?}: the form submits text or embed jobs (vision, stt and tts take media: use the API)"
                ))
                .param("type")
            })?;
    }
    sub.params.system = nonempty(f.system);
    if let Some(p) = nonempty(f.priority) {
        sub.params.priority = Some(Priority::parse(&p).ok_or_else(|| {
            ApiError::invalid(format!("priority {p:?} is not high, normal or low")).param("priority")
        })?);
    }
    sub.params.max_tokens = f.max_tokens.filter(|n| *n > 0);
    sub.params.temp = f.temperature;
    if let Some(m) = nonempty(f.model) {
        let mut body = Map::new();
        body.insert("model".into(), m.clone().into());
        crate::openai::check_model(&app, &body)?;
        sub.params.model = crate::openai::route(&app, &m);
    }
    sub.params
        .validate()
        .map_err(|e| ApiError::invalid(format!("parameters: {e}")))?;
    if let Some(s) = nonempty(f.schema) {
        if sub.job_type == JobType::Embed {
            return Err(ApiError::invalid("a schema applies to text jobs, not embeddings").param("schema"));
        }
        let schema: Value = serde_json::from_str(&s)
            .map_err(|e| ApiError::invalid(format!("schema is not JSON: {e}")).param("schema"))?;
        let grammar = nrvna_schema::check::check_schema(&schema)
            .map_err(|e| ApiError::invalid(format!("schema {e}")).param("schema"))?;
        sub.output = Some(OutputFormat::JsonSchema {
            schema: format!("{schema:#}\n"),
            grammar,
        });
    }
    let id = publish(&app, sub).await?;
    tracing::info!("dashboard: submitted job {id}");
    Ok(Json(json!({"id": id.as_str()})))
}

/// `GET /ui/api/batches`: the gateway's batches (as `GET /v1/batches`
/// describes them) and the `wrk --batch` tags with their counts.
pub async fn batches(AxState(app): AxState<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let uri: axum::http::Uri = "/?limit=100".parse().expect("a valid URI");
    let gateway = crate::batches::list(AxState(app.clone()), Query::try_from_uri(&uri)).await?;
    let tags: Vec<Value> = app
        .ui
        .index
        .batch_tags()
        .into_iter()
        .map(|(tag, c)| json!({"tag": tag, "queued": c[0], "running": c[1], "done": c[2], "failed": c[3]}))
        .collect();
    Ok(Json(json!({"gateway": gateway.0["data"], "tags": tags})))
}

/// `GET /ui/api/files/{id}`: a gateway batch's output or error file (the
/// content of `GET /v1/files/{id}/content`), as a download.
pub async fn file(AxState(app): AxState<Arc<App>>, AxPath(id): AxPath<String>) -> Result<Response, ApiError> {
    let mut r = crate::batches::content(AxState(app), AxPath(id.clone())).await?;
    if let Ok(v) = format!("attachment; filename=\"{id}.jsonl\"").parse() {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

#[derive(Deserialize)]
pub struct TagQuery {
    /// `output` (done jobs) or `errors` (failed jobs).
    part: Option<String>,
}

/// `GET /ui/api/tag/{tag}?part=output|errors`: a `wrk --batch` batch's done
/// (or failed) jobs as JSON lines, each `flw --json`'s object.
pub async fn tag_file(
    AxState(app): AxState<Arc<App>>,
    AxPath(tag): AxPath<String>,
    q: Result<Query<TagQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let part = q.ok().and_then(|Query(q)| q.part).unwrap_or_default();
    let want = match part.as_str() {
        "output" => State::Done,
        "errors" => State::Failed,
        other => return Err(ApiError::invalid(format!("part {other:?} is not output or errors"))),
    };
    if !nrvna_core::meta::valid_tag(&tag) {
        return Err(ApiError::invalid(format!("{tag:?} is not a tag")));
    }
    let ids = app.ui.index.tagged(&tag);
    let ws = app.jobs.ws.clone();
    let body = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        for id in ids {
            if let Some(j) = ws.job(&id).filter(|j| j.state == want) {
                out.push_str(&j.summary().to_string());
                out.push('\n');
            }
        }
        out
    })
    .await
    .map_err(blocking_err)?;
    let disposition = format!("attachment; filename=\"{tag}-{part}.jsonl\"");
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/jsonl".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_keeps_at_most_its_points_and_the_shape() {
        let e: Vec<f64> = (0..1000).map(f64::from).collect();
        let s = sparkline(&e);
        assert!(s.len() <= SPARK_POINTS && s.len() > SPARK_POINTS / 2);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(sparkline(&[1.0, 2.0]), [1.0, 2.0]);
        assert_eq!(embedding_values(&json!([[0.5, 1]])), Some(vec![0.5, 1.0]));
        assert_eq!(embedding_values(&json!({"embedding": [2]})), Some(vec![2.0]));
        assert_eq!(
            embedding_values(&json!({"dim": 2, "vector": [0.25, -1]})),
            Some(vec![0.25, -1.0])
        );
    }
}
