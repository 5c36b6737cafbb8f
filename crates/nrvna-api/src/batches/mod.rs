//! OpenAI Files and Batches, durable in the workspace.
//!
//! `WS/api/files/<file-id>.data` holds an uploaded file and `<file-id>.json`
//! its record (written last: the record's presence means the file is whole).
//! `WS/api/batches/<batch-id>.json` holds what a batch was asked to do and
//! how far it got; `POST /v1/batches` only writes it. Validating the input
//! file, publishing its lines (line n of batch `batch_<J>` is job
//! `<J>_<n:06>`), sweeping a cancelled batch and recording its end happen
//! in the background ([`start`]), under a per-batch flock, in whichever
//! gateway on the workspace takes it first, and resume after a restart.
//! A batch's counts come from an in-memory index of finished lines; its
//! output and error files are made from its jobs when they are read.

mod events;
mod http;
mod index;
mod legacy;
mod record;
mod work;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nrvna_core::fsio::read_limited;
use nrvna_core::{JobView, Meta, Workspace};
use serde_json::{Map, Value};

pub(crate) use http::multipart_error;
pub use http::{cancel, content, create, delete_file, file, get, list, list_files, upload};
pub use record::{BatchRecord, BatchStatus};

use crate::App;
use index::LineIndex;
use record::{upload_job_id, Dirs};

/// How often the background work looks at unfinished batches when nothing
/// wakes it.
const TICK: Duration = Duration::from_millis(250);

/// How often the index of finished lines is rebuilt from the directories
/// although the watch keeps it current (a safety net), and without a watch.
const REBUILD_WATCHED: Duration = Duration::from_secs(30);
const REBUILD_UNWATCHED: Duration = Duration::from_secs(2);

/// The gateway's records of files and batches, and its batch work.
pub struct Store {
    ws: Workspace,
    dirs: Dirs,
    /// Finished lines of every batch.
    index: LineIndex,
    /// The stop flags of the publishers running in this gateway.
    stops: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Batches with a step running in this gateway.
    busy: Mutex<HashSet<String>>,
    /// Wakes the background work (a batch was created or cancelled).
    wake: Mutex<Option<mpsc::Sender<()>>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    pub fn open(ws: &Workspace) -> std::io::Result<Store> {
        let api = ws.root().join("api");
        let dirs = Dirs {
            files: api.join("files"),
            batches: api.join("batches"),
        };
        for d in [&api, &dirs.files, &dirs.batches] {
            std::fs::create_dir_all(d)?;
        }
        Ok(Store {
            ws: ws.clone(),
            index: LineIndex::new(ws),
            dirs,
            stops: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            wake: Mutex::new(None),
        })
    }

    /// An upload's record, unless it is missing or expired (`expires_at`
    /// passed; records without one, from earlier gateways, never expire).
    fn upload(&self, id: &str) -> Option<Value> {
        upload_job_id(id)?;
        let b = read_limited(&self.dirs.files.join(format!("{id}.json")), 16 << 20).ok()?;
        let v: Value = serde_json::from_slice(&b).ok()?;
        (!expired(&v, crate::jobs::now_unix())).then_some(v)
    }

    /// Deletes the uploads whose `expires_at` passed: the record first (the
    /// file is gone for readers from then on), then the data. Returns how
    /// many.
    fn sweep_expired_uploads(&self) -> usize {
        let now = crate::jobs::now_unix();
        let Ok(rd) = std::fs::read_dir(&self.dirs.files) else {
            return 0;
        };
        let mut n = 0;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else { continue };
            let Ok(b) = read_limited(&e.path(), 16 << 20) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<Value>(&b) else {
                continue;
            };
            if upload_job_id(id).is_none() || !expired(&v, now) {
                continue;
            }
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    let _ = std::fs::remove_file(self.dirs.input(id));
                    tracing::info!("file {id} expired (expires_at {}); deleted", v["expires_at"]);
                    n += 1;
                }
                Err(err) => tracing::warn!("deleting expired file {id}: {err}"),
            }
        }
        n
    }

    /// Wakes the background work now.
    fn poke(&self) {
        if let Some(tx) = locked(&self.wake).as_ref() {
            let _ = tx.send(());
        }
    }

    /// Stops this gateway's publisher of a batch before its next line.
    fn stop(&self, id: &str) {
        if let Some(flag) = locked(&self.stops).get(id) {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Whether a file record's `expires_at` (unix seconds) has passed.
fn expired(rec: &Value, now: i64) -> bool {
    rec.get("expires_at").and_then(Value::as_i64).is_some_and(|t| t <= now)
}

/// Starts the background work on batches: resumes every unfinished batch
/// of the workspace (also those another gateway left when it died) and
/// takes on new ones. Called once, by `run`.
pub fn start(app: Arc<App>) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel();
    *locked(&app.store.wake) = Some(tx);
    std::thread::Builder::new()
        .name("batches".into())
        .spawn(move || supervise(app, rx))?;
    Ok(())
}

/// What a batch needs next.
enum Step {
    Publish,
    Sweep,
    Expire,
    Finalize,
    Legacy,
}

fn supervise(app: Arc<App>, wake: mpsc::Receiver<()>) {
    let store = &app.store;
    // Batches that need nothing more (finished ones, an earlier gateway's
    // published ones).
    let mut settled: HashSet<String> = HashSet::new();
    let mut rebuilt = Instant::now();
    loop {
        let every = if store.index.watched() {
            REBUILD_WATCHED
        } else {
            REBUILD_UNWATCHED
        };
        if rebuilt.elapsed() >= every {
            store.index.rebuild();
            store.sweep_expired_uploads();
            rebuilt = Instant::now();
        } else {
            store.index.refresh();
        }
        let ids = match store.dirs.ids() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!("listing the batch records in api/batches: {e}");
                Vec::new()
            }
        };
        for id in ids {
            if settled.contains(&id) {
                continue;
            }
            let Some(rec) = store.dirs.read(&id) else { continue };
            let window_passed =
                !rec.finished() && rec.by_line() && rec.expires_at().is_some_and(|t| t <= crate::jobs::now_unix());
            if locked(&store.busy).contains(&id) {
                if window_passed {
                    // Its publisher stops before the next line; then it expires.
                    store.stop(&id);
                }
                continue;
            }
            let step = if rec.finished() {
                None
            } else if !rec.by_line() {
                (!rec.published && rec.cancelling_at.is_none()).then_some(Step::Legacy)
            } else if store.dirs.cancel(&id).exists() {
                Some(Step::Sweep)
            } else if window_passed {
                Some(Step::Expire)
            } else if !rec.published {
                Some(Step::Publish)
            } else {
                let (done, failed) = rec.job_id().map_or((0, 0), |j| store.index.counts(j.as_str()));
                if done + failed + rec.rejected < rec.total {
                    continue;
                }
                Some(Step::Finalize)
            };
            match step {
                Some(step) => run_step(&app, id, step),
                None => {
                    if let Some(hooks) = &app.cfg.webhooks {
                        events::announce(&store.ws, &rec, hooks);
                    }
                    settled.insert(id);
                }
            }
        }
        match wake.recv_timeout(TICK) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Marks a batch busy in this gateway while a step runs on it.
struct Busy {
    app: Arc<App>,
    id: String,
}

impl Drop for Busy {
    fn drop(&mut self) {
        locked(&self.app.store.stops).remove(&self.id);
        locked(&self.app.store.busy).remove(&self.id);
    }
}

fn run_step(app: &Arc<App>, id: String, step: Step) {
    locked(&app.store.busy).insert(id.clone());
    let stop = Arc::new(AtomicBool::new(false));
    if matches!(step, Step::Publish) {
        locked(&app.store.stops).insert(id.clone(), stop.clone());
    }
    let busy = Busy { app: app.clone(), id };
    let spawned = std::thread::Builder::new().name("batch".into()).spawn(move || {
        let (s, id) = (&busy.app.store, busy.id.as_str());
        let done = match step {
            Step::Publish => work::publish(&s.ws, &s.dirs, id, &stop, &mut *model_check(busy.app.clone())),
            Step::Sweep => work::sweep(&s.ws, &s.dirs, id),
            Step::Expire => work::expire(&s.ws, &s.dirs, id),
            Step::Finalize => work::finalize(&s.ws, &s.dirs, id, &s.index),
            Step::Legacy => legacy::recover(&s.ws, &s.dirs, id),
        };
        if let Err(e) = done {
            tracing::warn!("{e}; trying again in 5 s");
            std::thread::sleep(Duration::from_secs(5));
        }
        drop(busy);
    });
    if let Err(e) = spawned {
        tracing::warn!("starting a thread for a batch: {e}; trying again later");
    }
}

/// Every job with a tag and its meta.json, in batch-file order. A job that
/// moves between listing and reading (claimed, finished, cancelled) is
/// looked up again rather than dropped.
pub fn tagged_jobs(ws: &Workspace, tag: &str) -> Vec<(JobView, Meta)> {
    let mut rows = Vec::new();
    for mut job in ws.all_jobs() {
        let meta = job.meta_following(ws).ok().flatten();
        if let Some(m) = meta.filter(|m| m.tags.iter().any(|t| t == tag)) {
            rows.push((job, m));
        }
    }
    let line = |m: &Meta| m.extra("batch_line").and_then(Value::as_u64).unwrap_or(u64::MAX);
    rows.sort_by(|(a, am), (b, bm)| line(am).cmp(&line(bm)).then_with(|| a.id.cmp(&b.id)));
    rows
}

/// A batch line's `body.model` must be served, by the rule of synchronous
/// requests (`check_model`); each distinct model is checked once.
fn model_check(app: Arc<App>) -> Box<work::ModelCheck> {
    let mut seen: HashMap<String, Result<(), (&'static str, String)>> = HashMap::new();
    Box::new(move |m: &Value| {
        seen.entry(m.to_string())
            .or_insert_with(|| {
                let body = Map::from_iter([("model".to_owned(), m.clone())]);
                crate::openai::check_model(&app, &body).map(|_| ()).map_err(|e| {
                    let code = if e.code == Some("model_not_found") {
                        "model_not_found"
                    } else {
                        "invalid_body"
                    };
                    (code, format!("body: {}", e.message))
                })
            })
            .clone()
    })
}
