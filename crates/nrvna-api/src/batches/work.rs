//! What happens to a batch after `POST /v1/batches` answered, on blocking
//! threads: validate its input file, publish its lines, sweep it when it is
//! cancelled, record its end. Each step holds the batch's flock
//! (`<id>.lock`), re-reads the record under it and is idempotent: a line's
//! job has a fixed id (`<J>_<line:06>`) and is skipped when it exists, so a
//! second gateway, or this one after a crash, never publishes a line twice.
//! A step that finds the lock held leaves the batch to its holder.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use nrvna_core::batch::{self, line_job_id, parse_lines, request_lines, split_line_job_id, BatchLock, LineError};
use nrvna_core::cancel::{cancel_job, Cancelled};
use nrvna_core::fsio::read_limited;
use nrvna_core::limits;
use nrvna_core::{JobId, Params, Priority, State, Workspace};
use serde_json::{json, Map, Value};

use super::events::usage;
use super::index::LineIndex;
use super::record::{write_bytes, write_record, BatchRecord, Dirs, MAX_REQUESTS};
use crate::jobs::now_unix;

/// Checks a line's `body.model`: `Err((code, message))` refuses the line.
pub type ModelCheck = dyn FnMut(&Value) -> Result<(), (&'static str, String)> + Send;

/// Batch jobs yield to interactive ones.
pub fn batch_defaults() -> batch::Defaults {
    batch::Defaults {
        params: Params {
            priority: Some(Priority::Low),
            ..Params::default()
        },
        ..Default::default()
    }
}

/// A line of a batch's error file.
pub fn error_line(job: &str, line: usize, custom_id: Option<&str>, code: &str, message: &str) -> Value {
    json!({
        "id": format!("batch_req_{job}"), "custom_id": custom_id, "response": null,
        "error": {"code": code, "message": message, "line": line},
    })
}

fn rejected_line(j: &JobId, line: usize, e: &LineError) -> Value {
    let job = format!("{j}_{line:06}");
    error_line(
        &job,
        line,
        e.custom_id.as_deref(),
        e.code,
        &format!("line {line}: {}", e.message),
    )
}

/// The error-file lines of the lines that never became jobs.
pub fn read_rejected(dirs: &Dirs, id: &str) -> Vec<Value> {
    let Ok(b) = read_limited(&dirs.rejected(id), batch::MAX_BATCH_BYTES) else {
        return Vec::new();
    };
    b.split(|&c| c == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

pub fn line_of(v: &Value) -> usize {
    v["error"]["line"].as_u64().unwrap_or(0) as usize
}

fn write_rejected(ws: &Workspace, dirs: &Dirs, id: &str, lines: &[Value]) -> Result<(), String> {
    let mut b = Vec::new();
    for l in lines {
        b.extend_from_slice(l.to_string().as_bytes());
        b.push(b'\n');
    }
    write_bytes(ws, &dirs.batches, &format!("{id}.errors.jsonl"), &b)
}

fn take_lock(dirs: &Dirs, id: &str) -> Result<Option<BatchLock>, String> {
    BatchLock::try_acquire(&dirs.lock(id)).map_err(|e| format!("batch {id}: taking {id}.lock: {e}"))
}

/// The input file as a whole cannot be used: the batch fails.
fn fail(ws: &Workspace, dirs: &Dirs, mut rec: BatchRecord, code: &str, message: String) -> Result<(), String> {
    tracing::warn!("batch {}: failed: {message}", rec.id);
    rec.failed_at = Some(now_unix());
    rec.errors = json!({"object": "list", "data": [
        {"code": code, "message": message, "param": "input_file_id", "line": null},
    ]});
    write_record(ws, dirs, &rec)
}

/// Validates the batch's input file (once) and publishes every line not
/// yet published, stopping at once when `stop` is set or the batch's
/// `.cancel` file appears (another gateway's cancel).
pub fn publish(
    ws: &Workspace,
    dirs: &Dirs,
    id: &str,
    stop: &AtomicBool,
    model_ok: &mut ModelCheck,
) -> Result<(), String> {
    let Some(_lock) = take_lock(dirs, id)? else {
        return Ok(());
    };
    let Some(mut rec) = dirs.read(id) else { return Ok(()) };
    let cancelled = || stop.load(Ordering::Relaxed) || dirs.cancel(id).exists();
    if !rec.by_line() || rec.finished() || rec.published || cancelled() {
        return Ok(());
    }
    let j = rec.job_id().ok_or_else(|| format!("{id} is not a batch id"))?;
    let input = rec.input_file_id.clone();
    let bytes = match read_limited(&dirs.input(&input), batch::MAX_BATCH_BYTES) {
        Ok(b) => b,
        Err(e) => {
            let msg = format!("the input file {input} cannot be read: {e}; upload it again and create a new batch");
            return fail(ws, dirs, rec, "invalid_file", msg);
        }
    };
    let defaults = batch_defaults();
    let max_prompt = ws.settings().max_prompt_bytes;
    let endpoint = rec.endpoint.clone();
    let url_ok = |req: &Map<String, Value>| match req.get("url").and_then(Value::as_str) {
        Some(u) if u != endpoint => Err((
            "url_mismatch",
            format!("url {u:?} differs from the batch's endpoint {endpoint:?}; a batch runs one endpoint"),
        )),
        _ => Ok(()),
    };
    if rec.in_progress_at.is_none() {
        let (mut requests, mut objects, mut rejected) = (0u64, 0u64, Vec::new());
        let check = |req: &Map<String, Value>| {
            url_ok(req)?;
            match req.get("body").and_then(|b| b.get("model")) {
                Some(m) => model_ok(m),
                None => Ok(()),
            }
        };
        for (line, sub) in parse_lines(&bytes, &defaults, id, max_prompt, check) {
            requests += 1;
            match sub {
                Ok(_) => objects += 1,
                Err(e) => {
                    objects += u64::from(e.code != "invalid_json");
                    rejected.push(rejected_line(&j, line, &e));
                }
            }
        }
        if requests == 0 {
            return fail(
                ws,
                dirs,
                rec,
                "empty_file",
                format!("the input file {input} holds no requests"),
            );
        }
        if requests > MAX_REQUESTS {
            let msg = format!("the input file {input} holds {requests} requests, over the limit of {MAX_REQUESTS}; split it into several batches");
            return fail(ws, dirs, rec, "too_many_requests", msg);
        }
        if objects == 0 {
            let msg = format!(
                "no line of the input file {input} is a JSON object; a batch file is JSONL, one request object a line"
            );
            return fail(ws, dirs, rec, "invalid_file", msg);
        }
        write_rejected(ws, dirs, id, &rejected)?;
        rec.total = requests;
        rec.rejected = rejected.len() as u64;
        rec.in_progress_at = Some(now_unix());
        write_record(ws, dirs, &rec)?;
        tracing::info!(
            "batch {id}: {requests} request(s), {} refused; publishing",
            rejected.len()
        );
    }
    let mut rejected = read_rejected(dirs, id);
    let skip: HashSet<usize> = rejected.iter().map(line_of).collect();
    let before = rejected.len();
    let mut published = 0usize;
    // Room in the workspace's queue limit, taken a few lines at a time; a
    // full queue makes the batch wait (its lines count), not fail.
    let (mut admitted, mut room) = (None, 0u64);
    let mut told = false;
    for (line, sub) in parse_lines(&bytes, &defaults, id, max_prompt, url_ok) {
        if cancelled() {
            tracing::info!("batch {id}: cancelled; stopped publishing after {published} job(s)");
            return Ok(());
        }
        if skip.contains(&line) {
            continue;
        }
        let job = line_job_id(&j, line).ok_or_else(|| format!("batch {id}: line {line} has no valid job id"))?;
        if ws.locate(&job).is_some_and(|s| s != State::Writing) {
            continue;
        }
        match sub {
            Ok(s) => {
                while room == 0 {
                    drop(admitted.take());
                    let (a, n) =
                        limits::admit_some(ws, ADMIT_CHUNK).map_err(|e| format!("batch {id}: line {line}: {e}"))?;
                    (admitted, room) = (Some(a), n);
                    if room > 0 {
                        told = false;
                        break;
                    }
                    drop(admitted.take());
                    if !told {
                        tracing::info!("batch {id}: the workspace's queue is at its limit; waiting for room");
                        told = true;
                    }
                    if cancelled() {
                        tracing::info!("batch {id}: cancelled; stopped publishing after {published} job(s)");
                        return Ok(());
                    }
                    std::thread::sleep(FULL_QUEUE_RETRY);
                }
                room -= 1;
                s.stage_as(ws, &job)
                    .and_then(|st| st.publish(ws))
                    .map_err(|e| format!("batch {id}: publishing line {line} as job {job}: {e}"))?;
                published += 1;
            }
            // Not refused when validated (it cannot happen but by a changed
            // input file): refused now.
            Err(e) => rejected.push(rejected_line(&j, line, &e)),
        }
    }
    if rejected.len() > before {
        rejected.sort_by_key(line_of);
        write_rejected(ws, dirs, id, &rejected)?;
        rec.rejected = rejected.len() as u64;
    }
    rec.published = true;
    write_record(ws, dirs, &rec)?;
    tracing::info!("batch {id}: published ({published} job(s) by this gateway)");
    Ok(())
}

/// Lines published per admission into a limited queue (the submitters'
/// lock is held while they are).
const ADMIT_CHUNK: u64 = 64;

/// How often a batch waiting for room in a full queue looks again.
const FULL_QUEUE_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Records the token usage of a batch's finished jobs in its record (the
/// batch object's `usage`), when it ends.
fn record_usage(ws: &Workspace, rec: &mut BatchRecord) {
    let Some(j) = rec.job_id() else { return };
    let jobs: Vec<(JobId, State)> = [State::Done, State::Failed]
        .into_iter()
        .flat_map(|st| lines_in(ws, st, j.as_str()).into_iter().map(move |(id, _)| (id, st)))
        .collect();
    rec.extra.insert("usage".into(), usage(ws, &jobs));
}

/// The names in a state directory that are lines of batch `j`.
fn lines_in(ws: &Workspace, st: State, j: &str) -> Vec<(JobId, usize)> {
    let mut v = Vec::new();
    let _ = ws.scan(
        st,
        |id| {
            if let Some((_, line)) = split_line_job_id(id.as_str()).filter(|(b, _)| *b == j) {
                v.push((id.clone(), line));
            }
        },
        |_| {},
    );
    v
}

/// Cancels every queued or running job of a cancelled batch (after its
/// publisher stopped: it holds the lock until then). When none runs any
/// more, the lines never published become `batch_cancelled` lines of the
/// error file and the batch is cancelled.
pub fn sweep(ws: &Workspace, dirs: &Dirs, id: &str) -> Result<(), String> {
    let Some(asked) = dirs.cancel_asked(id) else {
        return Ok(());
    };
    let Some(_lock) = take_lock(dirs, id)? else {
        return Ok(());
    };
    let Some(mut rec) = dirs.read(id) else { return Ok(()) };
    if !rec.by_line() || rec.finished() {
        return Ok(());
    }
    if rec.cancelling_at.is_none() {
        rec.cancelling_at = Some(asked);
        write_record(ws, dirs, &rec)?;
    }
    let msg = "the batch was cancelled before this request was published";
    let Some(mut rec) = wind_down(ws, dirs, rec, "batch_cancelled", msg)? else {
        return Ok(());
    };
    rec.cancelled_at = Some(now_unix());
    rec.start_output_window(now_unix());
    record_usage(ws, &mut rec);
    write_record(ws, dirs, &rec)?;
    tracing::info!("batch {id}: cancelled");
    Ok(())
}

/// Ends a batch whose completion window passed before it finished: its
/// queued and running jobs are cancelled (the publisher was stopped first),
/// and once none runs, each request that never ran is a `batch_expired`
/// line of the error file and the batch is `expired`; completed work stays
/// in the output file.
pub fn expire(ws: &Workspace, dirs: &Dirs, id: &str) -> Result<(), String> {
    let Some(_lock) = take_lock(dirs, id)? else {
        return Ok(());
    };
    let Some(rec) = dirs.read(id) else { return Ok(()) };
    if !rec.by_line() || rec.finished() || rec.expires_at().is_none_or(|t| t > now_unix()) {
        return Ok(());
    }
    let msg = "the batch's completion window passed before this request ran";
    let Some(mut rec) = wind_down(ws, dirs, rec, "batch_expired", msg)? else {
        return Ok(());
    };
    rec.expired_at = Some(now_unix());
    rec.start_output_window(now_unix());
    record_usage(ws, &mut rec);
    write_record(ws, dirs, &rec)?;
    tracing::info!("batch {id}: expired (completion window {})", rec.completion_window);
    Ok(())
}

/// Cancels the batch's queued and running jobs; once none runs, writes a
/// `code` line into the error file for every request never published and
/// returns the record with its counts (for the caller to end); `None`
/// while jobs still run. Hold the batch's lock.
fn wind_down(
    ws: &Workspace,
    dirs: &Dirs,
    mut rec: BatchRecord,
    code: &str,
    msg: &str,
) -> Result<Option<BatchRecord>, String> {
    let id = rec.id.clone();
    let j = rec.job_id().ok_or_else(|| format!("{id} is not a batch id"))?;
    // Staged by a publisher that died: never published now.
    for (job, _) in lines_in(ws, State::Writing, j.as_str()) {
        let _ = std::fs::remove_dir_all(ws.job_dir(State::Writing, &job));
    }
    let mut running = 0;
    for st in [State::Ready, State::Processing] {
        for (job, _) in lines_in(ws, st, j.as_str()) {
            match cancel_job(ws, &job) {
                Ok(Cancelled::Dequeued | Cancelled::NotRunning(_)) => {}
                Ok(Cancelled::Requested) => running += 1,
                Err(e) => {
                    tracing::warn!("batch {id}: cancelling job {job}: {e}");
                    running += 1;
                }
            }
        }
    }
    if running > 0 {
        return Ok(None);
    }
    let mut have: HashSet<usize> = HashSet::new();
    for st in State::PUBLISHED {
        have.extend(lines_in(ws, st, j.as_str()).into_iter().map(|(_, l)| l));
    }
    let mut rejected = read_rejected(dirs, &id);
    let refused: HashSet<usize> = rejected.iter().map(line_of).collect();
    let bytes = read_limited(&dirs.input(&rec.input_file_id), batch::MAX_BATCH_BYTES).unwrap_or_default();
    let mut requests = 0u64;
    for (line, raw) in request_lines(&bytes) {
        requests += 1;
        if refused.contains(&line) || have.contains(&line) {
            continue;
        }
        let custom_id = serde_json::from_slice::<Value>(raw)
            .ok()
            .and_then(|v| v.get("custom_id").and_then(Value::as_str).map(str::to_owned));
        let job = format!("{j}_{line:06}");
        rejected.push(error_line(&job, line, custom_id.as_deref(), code, msg));
    }
    rejected.sort_by_key(line_of);
    write_rejected(ws, dirs, &id, &rejected)?;
    if rec.in_progress_at.is_none() {
        rec.total = requests;
    }
    rec.rejected = rejected.len() as u64;
    Ok(Some(rec))
}

/// Records the end of a batch whose every line has finished.
pub fn finalize(ws: &Workspace, dirs: &Dirs, id: &str, index: &LineIndex) -> Result<(), String> {
    let Some(_lock) = take_lock(dirs, id)? else {
        return Ok(());
    };
    let Some(mut rec) = dirs.read(id) else { return Ok(()) };
    let Some(j) = rec.job_id() else { return Ok(()) };
    let (done, failed) = index.counts(j.as_str());
    if !rec.by_line() || rec.finished() || !rec.published || done + failed + rec.rejected < rec.total {
        return Ok(());
    }
    rec.completed_at = Some(now_unix());
    rec.start_output_window(now_unix());
    record_usage(ws, &mut rec);
    write_record(ws, dirs, &rec)?;
    tracing::info!("batch {id}: completed ({done} done, {} failed)", failed + rec.rejected);
    Ok(())
}
