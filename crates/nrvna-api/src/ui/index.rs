//! The dashboard's job index: every published job's state and the few
//! fields the Jobs page filters on, in memory, so that a page view never
//! walks the workspace. One listing of the state directories at start, a
//! background thread that reads each job's small files (queued and running
//! first, then newest first), then inotify on the state directories: each
//! event names a job, which is looked up again (`Workspace::locate`), so
//! events that arrive out of order still end in the right state. An event
//! queue overflow relists. (`nrvna_core::tally` keeps only counts, for the
//! metrics; this keeps per-job fields, which the tally does not need.)
//!
//! Memory: an entry is its id, a state byte and, once read, its details
//! (a [`PROMPT_PREFIX`]-byte prompt prefix, type, priority, tags, model,
//! parent), a few hundred bytes in all; the gateway on 100,000 jobs was
//! measured at 71 MB resident against 9 MB on an empty workspace (this
//! index, the metrics tally's names and the allocator's slack together).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use notify::{RecursiveMode, Watcher};
use nrvna_core::files::{META_FILE, PARAMS_FILE, PROMPT_FILE, TYPE_FILE};
use nrvna_core::fsio::read_optional;
use nrvna_core::{JobId, JobType, Meta, Params, Priority, State, Workspace};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::sampler::Activity;

/// How much of a prompt the index keeps, for the list and its search.
pub const PROMPT_PREFIX: usize = 96;

/// The most rows one page of the list holds.
pub const MAX_PAGE: usize = 200;

/// What the list shows and filters on, read once per job.
#[derive(Clone, Debug)]
pub struct Details {
    pub job_type: JobType,
    pub priority: Priority,
    pub tags: Box<[Box<str>]>,
    pub model: Option<Box<str>>,
    pub parent: Option<JobId>,
    /// The prompt's first [`PROMPT_PREFIX`] bytes (whole characters).
    pub prompt: Box<str>,
}

struct Entry {
    state: State,
    details: Option<Box<Details>>,
}

#[derive(Default)]
struct Jobs(BTreeMap<JobId, Entry>);

/// What the index shares with its watcher and its reader thread.
struct Shared {
    ws: Workspace,
    jobs: RwLock<Jobs>,
    /// Starts and finishes, for the charts.
    activity: Arc<Activity>,
    /// Bumped on every change; the live feeds wait on it.
    version: watch::Sender<u64>,
    /// Ids whose details the reader thread should read.
    to_read: mpsc::Sender<Vec<JobId>>,
}

/// The index; stops watching when dropped.
pub struct Index {
    shared: Arc<Shared>,
    _watcher: Option<notify::RecommendedWatcher>,
}

/// The Jobs page's filters.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub state: Option<State>,
    pub tag: Option<String>,
    pub job_type: Option<JobType>,
    pub model: Option<String>,
    /// Searched in the prompt prefix, ASCII case ignored.
    pub text: Option<String>,
}

impl Filter {
    fn needs_details(&self) -> bool {
        self.tag.is_some() || self.job_type.is_some() || self.model.is_some() || self.text.is_some()
    }

    fn matches(&self, e: &Entry) -> bool {
        if self.state.is_some_and(|s| s != e.state) {
            return false;
        }
        if !self.needs_details() {
            return true;
        }
        let Some(d) = &e.details else { return false };
        self.tag.as_deref().is_none_or(|t| d.tags.iter().any(|x| &**x == t))
            && self.job_type.is_none_or(|t| t == d.job_type)
            && self.model.as_deref().is_none_or(|m| d.model.as_deref() == Some(m))
            && self.text.as_deref().is_none_or(|q| contains_ignore_case(&d.prompt, q))
    }
}

fn contains_ignore_case(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// One page of the list, newest first.
pub struct Page {
    pub rows: Vec<Value>,
    /// Jobs matching the filter.
    pub matched: usize,
    /// Jobs in the index, and how many of them have their details read
    /// (filters other than the state see only those).
    pub total: usize,
    pub read: usize,
}

/// Counts for the overview.
pub struct Counts {
    /// queued, running, done, failed
    pub states: [usize; 4],
    /// Queued jobs by priority: high, normal, low.
    pub queued_by_priority: [usize; 3],
}

impl Index {
    /// Watches the state directories of `ws`, lists them, and starts the
    /// thread that reads the jobs' details.
    pub fn start(ws: &Workspace, activity: Arc<Activity>) -> std::io::Result<Index> {
        let (tx, rx) = mpsc::channel::<Vec<JobId>>();
        let shared = Arc::new(Shared {
            ws: ws.clone(),
            jobs: RwLock::new(Jobs::default()),
            activity,
            version: watch::Sender::new(0),
            to_read: tx,
        });
        let s2 = shared.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if ev.need_rescan() => s2.relist(),
            Ok(ev) if !matches!(ev.kind, notify::EventKind::Access(_)) => {
                for p in &ev.paths {
                    if let Some(id) = p.file_name().and_then(JobId::from_os) {
                        s2.refresh(&id);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("watching the workspace for the dashboard: {e}; listing it again");
                s2.relist();
            }
        })
        .ok()
        .and_then(|mut w| {
            for s in State::PUBLISHED {
                if let Err(e) = w.watch(&ws.dir(s), RecursiveMode::NonRecursive) {
                    tracing::warn!(
                        "cannot watch {} for the dashboard: {e}; its job list follows only new listings",
                        ws.dir(s).display()
                    );
                    return None;
                }
            }
            Some(w)
        });
        shared.relist();
        let s3 = shared.clone();
        std::thread::Builder::new()
            .name("UiIndex".into())
            .spawn(move || reader(&s3, rx))?;
        Ok(Index {
            shared,
            _watcher: watcher,
        })
    }

    /// A receiver that changes whenever the index does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.version.subscribe()
    }

    /// Looks a job up again now (after the gateway itself moved it).
    pub fn refresh(&self, id: &JobId) {
        self.shared.refresh(id);
    }

    pub fn counts(&self) -> Counts {
        let jobs = self.shared.read();
        let mut c = Counts {
            states: [0; 4],
            queued_by_priority: [0; 3],
        };
        for e in jobs.0.values() {
            let i = state_index(e.state);
            c.states[i] += 1;
            if e.state == State::Ready {
                let p = e.details.as_ref().map_or(Priority::Normal, |d| d.priority);
                c.queued_by_priority[match p {
                    Priority::High => 0,
                    Priority::Normal => 1,
                    Priority::Low => 2,
                }] += 1;
            }
        }
        c
    }

    /// One page of the jobs matching `f`, newest first. Rows whose details
    /// were not read yet are read now (at most a page of them).
    pub fn page(&self, f: &Filter, offset: usize, limit: usize) -> Page {
        let limit = limit.clamp(1, MAX_PAGE);
        let (picked, matched, total, read) = {
            let jobs = self.shared.read();
            let mut matched = 0;
            let mut read = 0;
            let mut picked: Vec<(JobId, State, Option<Details>)> = Vec::new();
            for (id, e) in jobs.0.iter().rev() {
                read += usize::from(e.details.is_some());
                if f.matches(e) {
                    if matched >= offset && picked.len() < limit {
                        picked.push((id.clone(), e.state, e.details.as_deref().cloned()));
                    }
                    matched += 1;
                }
            }
            (picked, matched, jobs.0.len(), read)
        };
        let rows = picked
            .into_iter()
            .map(|(id, state, d)| {
                let d = d.or_else(|| self.shared.read_details_now(&id, state));
                row(&id, state, d.as_ref())
            })
            .collect();
        Page {
            rows,
            matched,
            total,
            read,
        }
    }

    /// The ids of the jobs with `tag`, oldest first.
    pub fn tagged(&self, tag: &str) -> Vec<JobId> {
        let jobs = self.shared.read();
        jobs.0
            .iter()
            .filter(|(_, e)| e.details.as_ref().is_some_and(|d| d.tags.iter().any(|t| &**t == tag)))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The children of a job (jobs naming it as their parent).
    pub fn children(&self, parent: &JobId) -> Vec<Value> {
        let jobs = self.shared.read();
        jobs.0
            .iter()
            .filter(|(_, e)| e.details.as_ref().is_some_and(|d| d.parent.as_ref() == Some(parent)))
            .take(MAX_PAGE)
            .map(|(id, e)| json!({"id": id.as_str(), "state": e.state.label()}))
            .collect()
    }

    /// The `wrk --batch` batches: tags `batch_*`, with their jobs by state
    /// (queued, running, done, failed), newest tag first.
    pub fn batch_tags(&self) -> Vec<(String, [usize; 4])> {
        let jobs = self.shared.read();
        let mut by: BTreeMap<&str, [usize; 4]> = BTreeMap::new();
        for e in jobs.0.values() {
            let Some(d) = &e.details else { continue };
            for t in d.tags.iter().filter(|t| t.starts_with("batch_")) {
                by.entry(t).or_default()[state_index(e.state)] += 1;
            }
        }
        by.into_iter().rev().map(|(t, c)| (t.to_owned(), c)).collect()
    }
}

/// The position of a published state in the counts (queued, running,
/// done, failed).
fn state_index(s: State) -> usize {
    match s {
        State::Ready | State::Writing => 0,
        State::Processing => 1,
        State::Done => 2,
        State::Failed => 3,
    }
}

/// A list row as JSON.
fn row(id: &JobId, state: State, d: Option<&Details>) -> Value {
    let mut v = json!({"id": id.as_str(), "state": state.label(), "submitted": submitted_unix(id)});
    if let Some(d) = d {
        v["type"] = d.job_type.as_str().into();
        v["priority"] = d.priority.as_str().into();
        v["tags"] = d.tags.iter().map(|t| Value::from(&**t)).collect();
        v["model"] = d.model.as_deref().into();
        v["prompt"] = (&*d.prompt).into();
    }
    v
}

/// When a job was submitted, from its id (the C++ tools' format starts
/// with 20 digits of microseconds), in seconds since the epoch.
pub fn submitted_unix(id: &JobId) -> Option<f64> {
    let head = id.as_str().split('_').next()?;
    (head.len() == 20)
        .then(|| head.parse::<u64>().ok())
        .flatten()
        .map(|us| us as f64 / 1e6)
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, Jobs> {
        self.jobs.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Jobs> {
        self.jobs.write().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Lists every state directory and merges: jobs gone are dropped, the
    /// others keep their details; the reader thread gets the rest.
    fn relist(&self) {
        let mut fresh: BTreeMap<JobId, State> = BTreeMap::new();
        for s in State::PUBLISHED {
            match self.ws.list(s) {
                // A job moving between two listings: the later state wins.
                Ok(ids) => fresh.extend(ids.into_iter().map(|id| (id, s))),
                Err(e) => tracing::warn!("listing {} for the dashboard: {e}", self.ws.dir(s).display()),
            }
        }
        let mut unread: Vec<JobId> = Vec::new();
        {
            let mut jobs = self.write();
            let mut old = std::mem::take(&mut jobs.0);
            for (id, state) in fresh {
                let details = old.remove(&id).and_then(|e| e.details);
                if details.is_none() {
                    unread.push(id.clone());
                }
                jobs.0.insert(id, Entry { state, details });
            }
            // Queued and running first (the overview's priorities), then newest first.
            unread.sort_by_key(|id| {
                let live = jobs.0.get(id).is_some_and(|e| !e.state.is_terminal());
                (!live, std::cmp::Reverse(id.clone()))
            });
        }
        self.bump();
        for chunk in unread.chunks(1024) {
            let _ = self.to_read.send(chunk.to_vec());
        }
    }

    /// Looks one job up again after an event named it.
    fn refresh(&self, id: &JobId) {
        let now = self.ws.locate(id).filter(|s| *s != State::Writing);
        let before = self.read().0.get(id).map(|e| e.state);
        if now == before {
            return;
        }
        match now {
            None => {
                self.write().0.remove(id);
            }
            Some(state) => {
                let new = before.is_none();
                if state == State::Processing {
                    if let Some(t) = submitted_unix(id) {
                        self.activity.started(now_unix() - t);
                    }
                }
                let mut finished_meta = None;
                if state.is_terminal() && !before.is_some_and(State::is_terminal) {
                    let m = read_meta(&self.ws.job_dir(state, id));
                    let tokens = m
                        .as_ref()
                        .and_then(|m| m.extra("generated_tokens"))
                        .and_then(Value::as_u64);
                    self.activity.finished(tokens.unwrap_or(0));
                    finished_meta = m;
                }
                let details = if new { self.load(id, state) } else { None };
                let mut jobs = self.write();
                let e = jobs.0.entry(id.clone()).or_insert(Entry { state, details: None });
                e.state = state;
                if details.is_some() {
                    e.details = details.map(Box::new);
                }
                // The model a job ran on is known once it finished.
                if let (Some(d), Some(m)) = (e.details.as_mut(), finished_meta) {
                    if let Some(model) = m.extra_str("model") {
                        d.model = Some(model.into());
                    }
                }
            }
        }
        self.bump();
    }

    /// Reads a job's details now and keeps them.
    fn read_details_now(&self, id: &JobId, state: State) -> Option<Details> {
        let d = self.load(id, state)?;
        if let Some(e) = self.write().0.get_mut(id) {
            e.details.get_or_insert_with(|| Box::new(d.clone()));
        }
        Some(d)
    }

    /// Reads a job's details from its directory (following it once if it
    /// moved meanwhile).
    fn load(&self, id: &JobId, state: State) -> Option<Details> {
        read_details(&self.ws.job_dir(state, id)).or_else(|| {
            let s = self.ws.locate(id)?;
            read_details(&self.ws.job_dir(s, id))
        })
    }
}

/// The reader thread: reads the details of the jobs it is handed.
fn reader(shared: &Shared, rx: mpsc::Receiver<Vec<JobId>>) {
    let t0 = Instant::now();
    let mut n = 0usize;
    while let Ok(ids) = rx.recv() {
        let mut read = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(state) = shared
                .read()
                .0
                .get(&id)
                .filter(|e| e.details.is_none())
                .map(|e| e.state)
            else {
                continue;
            };
            if let Some(d) = shared.load(&id, state) {
                read.push((id, d));
            }
        }
        n += read.len();
        {
            let mut jobs = shared.write();
            for (id, d) in read {
                if let Some(e) = jobs.0.get_mut(&id) {
                    e.details.get_or_insert_with(|| Box::new(d));
                }
            }
        }
        shared.bump();
        tracing::trace!("dashboard index: {n} jobs read in {:.1}s", t0.elapsed().as_secs_f64());
    }
}

fn read_meta(dir: &Path) -> Option<Meta> {
    read_optional(&dir.join(META_FILE), nrvna_core::meta::MAX_META_BYTES)
        .ok()
        .flatten()
        .and_then(|b| Meta::parse(&b).ok())
}

/// type.txt (absent or unknown: text).
pub fn read_type(dir: &Path) -> JobType {
    read_optional(&dir.join(TYPE_FILE), 64)
        .ok()
        .flatten()
        .and_then(|b| JobType::parse(String::from_utf8_lossy(&b).trim()))
        .unwrap_or(JobType::Text)
}

/// params.json, leniently (absent or unreadable: the defaults).
pub fn read_params(dir: &Path) -> Params {
    read_optional(&dir.join(PARAMS_FILE), 1 << 20)
        .ok()
        .flatten()
        .and_then(|b| Params::parse_lenient(&b).ok())
        .map(|(p, _)| p)
        .unwrap_or_default()
}

/// A job's details from its files; `None` when its prompt is gone (the
/// job moved or was removed).
pub fn read_details(dir: &Path) -> Option<Details> {
    let prompt = read_prefix(&dir.join(PROMPT_FILE), PROMPT_PREFIX)?.into_boxed_str();
    let job_type = read_type(dir);
    let params = read_params(dir);
    let meta = read_meta(dir).unwrap_or_default();
    let model = meta
        .extra_str("model")
        .map(str::to_owned)
        .or(params.model.clone())
        .map(String::into_boxed_str);
    Some(Details {
        job_type,
        priority: params.priority.unwrap_or_default(),
        tags: meta.tags.iter().map(|t| t.clone().into_boxed_str()).collect(),
        model,
        parent: meta.parent.clone(),
        prompt,
    })
}

/// The first `limit` bytes of a text file, cut at a character boundary
/// (invalid UTF-8 replaced); `None` when it cannot be opened.
pub fn read_prefix(path: &Path, limit: usize) -> Option<String> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(limit.min(64 * 1024));
    std::fs::File::open(path)
        .ok()?
        .take(limit as u64)
        .read_to_end(&mut buf)
        .ok()?;
    let cut = match std::str::from_utf8(&buf) {
        Ok(_) => buf.len(),
        // A character cut by the limit is dropped; other bad bytes are replaced.
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => buf.len(),
    };
    Some(String::from_utf8_lossy(&buf[..cut]).into_owned())
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn job(ws: &Workspace, s: State, id: &str, prompt: &str, meta: &str) {
        let dir = ws.job_dir(s, &JobId::parse(id).unwrap());
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(PROMPT_FILE), prompt).unwrap();
        std::fs::write(dir.join(META_FILE), meta).unwrap();
    }

    fn settle(cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "the index did not follow");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn filters_pages_newest_first_and_follows_moves() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        job(
            &ws,
            State::Done,
            "1",
            "Hello WORLD",
            r#"{"tags":["batch_7"],"model":"m1"}"#,
        );
        job(&ws, State::Failed, "2", "bye", "{}");
        job(&ws, State::Ready, "3", &"é".repeat(100), r#"{"parent":"1"}"#);
        let ix = Index::start(&ws, Arc::new(Activity::default())).unwrap();
        settle(|| ix.page(&Filter::default(), 0, 10).read == 3);
        let all = ix.page(&Filter::default(), 0, 2);
        assert_eq!((all.matched, all.total), (3, 3));
        let ids: Vec<_> = all.rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["3", "2"], "newest first, one page");
        assert!(all.rows[0]["prompt"].as_str().unwrap().len() <= PROMPT_PREFIX);
        let f = |text: &str| Filter {
            text: Some(text.into()),
            ..Filter::default()
        };
        assert_eq!(ix.page(&f("world"), 0, 10).matched, 1, "case ignored");
        let tagged = Filter {
            tag: Some("batch_7".into()),
            model: Some("m1".into()),
            ..Filter::default()
        };
        assert_eq!(ix.page(&tagged, 0, 10).rows[0]["id"], "1");
        assert_eq!(ix.children(&JobId::parse("1").unwrap())[0]["id"], "3");
        assert_eq!(ix.batch_tags(), [("batch_7".to_owned(), [0, 0, 1, 0])]);
        let c = ix.counts();
        assert_eq!((c.states, c.queued_by_priority), ([1, 0, 1, 1], [0, 1, 0]));

        let id3 = JobId::parse("3").unwrap();
        ws.transition(&id3, State::Ready, State::Processing).unwrap();
        settle(|| ix.counts().states == [0, 1, 1, 1]);
        job(&ws, State::Ready, "4", "new one", "{}");
        std::fs::remove_dir_all(ws.job_dir(State::Done, &JobId::parse("1").unwrap())).unwrap();
        settle(|| ix.counts().states == [1, 1, 0, 1]);
        let running = Filter {
            state: Some(State::Processing),
            ..Filter::default()
        };
        assert_eq!(ix.page(&running, 0, 10).rows[0]["id"], "3");
    }
}
