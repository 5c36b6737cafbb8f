//! The dashboard's live feeds, as server-sent events (the pages hold an
//! `EventSource`; no polling loop runs in a page): the overview (counts,
//! daemon and members, chart series, time to drain), sent when the index
//! changes and at least every [`OVERVIEW_EVERY`]; and one job's stream:
//! the text of `partial.txt` as it grows, its progress, and its end.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as AxPath, State as AxState};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::Stream;
use nrvna_core::files::PARTIAL_FILE;
use nrvna_core::lifecycle::{daemon_status, read_info, DaemonStatus};
use nrvna_core::members::list_members;
use nrvna_core::{JobId, State};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::App;

/// The longest the overview goes without an update (heartbeat ages move).
const OVERVIEW_EVERY: Duration = Duration::from_secs(2);
/// The least time between two overview updates.
const OVERVIEW_MIN: Duration = Duration::from_millis(250);
/// How often a job's stream looks at its files.
const JOB_POLL: Duration = Duration::from_millis(200);
/// The most text one stream event carries.
const CHUNK: usize = 64 * 1024;

/// The overview as JSON (also `GET /ui/api/overview`).
pub fn overview(app: &App) -> Value {
    let ws = &app.jobs.ws;
    let c = app.ui.index.counts();
    let [queued, running, done, failed] = c.states;
    let [high, normal, low] = c.queued_by_priority;
    let members: Vec<Value> = list_members(ws)
        .iter()
        .map(|m| {
            json!({
                "member": m.member, "host": m.host, "pid": m.pid, "state": m.state().as_str(),
                "model": m.model, "workers": m.workers, "engine": m.engine,
                "heartbeat_age_s": m.heartbeat_age_s().map(|a| (a * 10.0).round() / 10.0),
                "running": m.running.len(),
            })
        })
        .collect();
    let daemon = match daemon_status(ws) {
        DaemonStatus::NotRunning => json!({"status": "not_running"}),
        DaemonStatus::Starting { pid } => json!({"status": "starting", "pid": pid}),
        DaemonStatus::Ready { pid } => {
            let info = read_info(ws).unwrap_or(Value::Null);
            json!({
                "status": "ready", "pid": pid, "host": nrvna_core::members::host_name(),
                "model": info.get("model_name").or(info.get("model")),
                "engine": info.get("engine"), "workers": info.get("workers"),
                "started_at": info.get("started_at"), "running": running,
            })
        }
    };
    json!({
        "counts": {"queued": queued, "running": running, "done": done, "failed": failed},
        "queued_by_priority": {"high": high, "normal": normal, "low": low},
        "daemon": daemon,
        "members": members,
        "series": app.ui.sampler.series(),
        "drain_s": app.ui.sampler.drain_s(queued + running).map(f64::round),
    })
}

/// `GET /ui/api/overview`.
pub async fn overview_once(AxState(app): AxState<Arc<App>>) -> axum::Json<Value> {
    let v = tokio::task::spawn_blocking(move || overview(&app))
        .await
        .unwrap_or(Value::Null);
    axum::Json(v)
}

/// `GET /ui/api/events`: `overview` events.
pub async fn events(AxState(app): AxState<Arc<App>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut changed = app.ui.index.subscribe();
    let stream = async_stream(move |tx| async move {
        loop {
            let a = app.clone();
            let v = tokio::task::spawn_blocking(move || overview(&a))
                .await
                .unwrap_or(Value::Null);
            if tx
                .send(Event::default().event("overview").data(v.to_string()))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(OVERVIEW_MIN).await;
            let _ = tokio::time::timeout(OVERVIEW_EVERY, changed.changed()).await;
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `GET /ui/api/job/{id}/events`: `text` events with what `partial.txt`
/// gained, `progress` events, `state` when the job moves, and `end` (with
/// its final state) once it is done or failed; the page then loads it
/// again and closes the stream.
pub async fn job_events(
    AxState(app): AxState<Arc<App>>,
    AxPath(id): AxPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = JobId::parse(&id).map_err(|e| ApiError::not_found(format!("no job {id:?}: {e}")))?;
    if app.jobs.ws.locate(&id).is_none() {
        return Err(ApiError::not_found(format!("no job {id} in the workspace")));
    }
    let stream = async_stream(move |tx| async move {
        let mut sent = 0usize;
        let mut last_state: Option<State> = None;
        let mut last_tokens = None;
        loop {
            let (ws, id2) = (app.jobs.ws.clone(), id.clone());
            let look = tokio::task::spawn_blocking(move || look(&ws, &id2, sent)).await;
            let Ok(look) = look else { return };
            let mut out = Vec::new();
            if look.state != last_state {
                last_state = look.state;
                out.push(
                    Event::default()
                        .event("state")
                        .data(look.state.map_or("gone", State::label)),
                );
            }
            if let Some((text, n)) = look.text {
                sent += n;
                out.push(Event::default().event("text").data(json!({"text": text}).to_string()));
            }
            if look.tokens.is_some() && look.tokens != last_tokens {
                last_tokens = look.tokens;
                out.push(
                    Event::default()
                        .event("progress")
                        .data(json!({"tokens": look.tokens}).to_string()),
                );
            }
            let end = look.state.is_none_or(State::is_terminal);
            if end {
                out.push(
                    Event::default()
                        .event("end")
                        .data(look.state.map_or("gone", State::label)),
                );
            }
            for e in out {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
            if end {
                // The page closes the stream when it reads `end`; a
                // stream the server closed would be reopened by the browser.
                tokio::time::sleep(Duration::from_secs(300)).await;
                return;
            }
            tokio::time::sleep(JOB_POLL).await;
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// What a job's stream sees at one look.
struct Look {
    state: Option<State>,
    /// New text of partial.txt from byte `from`, and how many bytes it took.
    text: Option<(String, usize)>,
    tokens: Option<u64>,
}

fn look(ws: &nrvna_core::Workspace, id: &JobId, from: usize) -> Look {
    let state = ws.locate(id).filter(|s| *s != State::Writing);
    let mut l = Look {
        state,
        text: None,
        tokens: None,
    };
    if state == Some(State::Processing) {
        let dir = ws.job_dir(State::Processing, id);
        l.text = read_from(&dir.join(PARTIAL_FILE), from);
        l.tokens = nrvna_core::live::Progress::read(&dir).map(|p| p.tokens);
    }
    l
}

/// Whole characters of a file from byte `from` (at most [`CHUNK`] bytes).
fn read_from(path: &std::path::Path, from: usize) -> Option<(String, usize)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::Start(from as u64)).ok()?;
    let mut buf = Vec::new();
    f.take(CHUNK as u64).read_to_end(&mut buf).ok()?;
    let n = match std::str::from_utf8(&buf) {
        Ok(_) => buf.len(),
        Err(e) => e.valid_up_to(),
    };
    (n > 0).then(|| (String::from_utf8_lossy(&buf[..n]).into_owned(), n))
}

/// A stream fed by a task through a channel; the task ends when the
/// client goes away (its sends fail).
fn async_stream<F, Fut>(body: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(16);
    tokio::spawn(body(tx));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_whole_characters_from_an_offset() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(PARTIAL_FILE);
        std::fs::write(&p, "ab\u{e9}").unwrap();
        assert_eq!(read_from(&p, 0), Some(("ab\u{e9}".into(), 4)));
        assert_eq!(read_from(&p, 4), None);
        // Half a character at the end waits for the rest.
        std::fs::write(&p, b"ab\xc3").unwrap();
        assert_eq!(read_from(&p, 0), Some(("ab".into(), 2)));
    }
}
