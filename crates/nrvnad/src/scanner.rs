//! The Scanner thread: finds jobs in `input/ready/` and submits their ids to
//! the Pool, with each job's priority and model (the one it names, or the
//! default; a model no one serves routes it to be failed at once). It wakes on filesystem events
//! (inotify arrivals) and rescans every scan interval anyway, for
//! filesystems that send none.

use std::collections::HashSet;
use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use nrvna_core::files::PARAMS_FILE;
use nrvna_core::fsio::read_optional;
use nrvna_core::params::{Params, MAX_PARAMS_BYTES};
use nrvna_core::wait::DirWaker;
use nrvna_core::{JobId, State, Workspace};

use crate::events::Event;
use crate::models::Registry;
use crate::pool::{Pool, Priority, Route};

/// The Scanner and the handles it uses.
pub struct Scanner {
    pub ws: Workspace,
    pub pool: Arc<Pool>,
    pub shutdown: Arc<AtomicBool>,
    /// Told after every pass (the drain's idle check counts them).
    pub events: Sender<Event>,
    /// Names already reported as not being job ids.
    reported: HashSet<OsString>,
    /// The models this daemon serves; `None` serves every job on model 0.
    registry: Option<Arc<Registry>>,
    /// A shared member: a job naming a model this member does not serve is
    /// left for a member that serves it (not failed).
    shared: bool,
    /// Jobs already reported as wanting another model.
    elsewhere: HashSet<JobId>,
    /// Shared members: a seed that spreads this member's claim order (see
    /// [`spread`]) so that members drain a backlog from different places
    /// instead of racing for the same job.
    spread: Option<u64>,
}

/// Ids per window of [`spread`].
pub const SPREAD_WINDOW: usize = 64;

/// Reorders sorted ids within consecutive windows of [`SPREAD_WINDOW`] by
/// a hash of (seed, id): each member takes a different job first, while the
/// queue stays first-in first-out to within a window.
pub fn spread(ids: &mut [JobId], seed: u64) {
    use std::hash::{Hash, Hasher};
    let key = |id: &JobId| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        seed.hash(&mut h);
        id.as_str().hash(&mut h);
        h.finish()
    };
    for w in ids.chunks_mut(SPREAD_WINDOW) {
        w.sort_by_cached_key(key);
    }
}

impl Scanner {
    pub fn new(ws: Workspace, pool: Arc<Pool>, shutdown: Arc<AtomicBool>, events: Sender<Event>) -> Scanner {
        Scanner {
            ws,
            pool,
            shutdown,
            events,
            reported: HashSet::new(),
            registry: None,
            shared: false,
            elsewhere: HashSet::new(),
            spread: None,
        }
    }

    /// Spread this scanner's order with `seed` (shared members).
    pub fn spreading(mut self, seed: Option<u64>) -> Scanner {
        self.spread = seed;
        self
    }

    /// Route jobs to the models of `registry`; `shared`: leave a job
    /// naming another model for another member instead of failing it.
    pub fn serving(mut self, registry: Arc<Registry>, shared: bool) -> Scanner {
        self.registry = Some(registry);
        self.shared = shared;
        self
    }

    /// Where a job naming `model` goes; `None`: leave it for another member.
    fn route(&self, model: Option<&str>) -> Option<Route> {
        let Some(r) = &self.registry else {
            return Some(Route::Model(0));
        };
        match model.map(|m| r.find(m)) {
            None => Some(Route::Model(r.default)),
            Some(Some(i)) => Some(Route::Model(i)),
            Some(None) if self.shared => None,
            Some(None) => Some(Route::Unserved),
        }
    }

    /// Runs until shutdown. `waker` is created by the caller so that its
    /// poker can interrupt the wait at shutdown.
    pub fn run(mut self, waker: DirWaker) {
        if !waker.watching() {
            tracing::warn!(
                "no filesystem events for {}; scanning at the scan interval only",
                self.ws.dir(State::Ready).display()
            );
        }
        while !self.shutdown.load(Ordering::SeqCst) {
            self.scan_once();
            let _ = self.events.send(Event::Scanned);
            waker.wait(None);
        }
        tracing::debug!("scanner stopped");
    }

    /// One pass over `input/ready/`: every valid id not yet pending goes to
    /// the Pool with its priority. Names that are not ids are logged once.
    pub fn scan_once(&mut self) {
        let mut ids = Vec::new();
        let reported = &mut self.reported;
        let res = self.ws.scan(
            State::Ready,
            |id| ids.push(id),
            |bad| {
                if reported.insert(bad.to_owned()) {
                    tracing::warn!(
                        "ignoring {:?} in input/ready/: not a valid job id (digits and single underscores); it is left alone",
                        bad
                    );
                }
            },
        );
        if let Err(e) = res {
            tracing::error!("scanning {}: {e}; will retry", self.ws.dir(State::Ready).display());
            return;
        }
        ids.sort();
        if let Some(seed) = self.spread {
            spread(&mut ids, seed);
        }
        let listed: HashSet<&JobId> = ids.iter().collect();
        self.elsewhere.retain(|i| listed.contains(i));
        let mut batch = Vec::new();
        for id in ids {
            if self.pool.is_pending(&id) || self.elsewhere.contains(&id) {
                continue;
            }
            let (prio, model) = self.params(&id);
            let Some(route) = self.route(model.as_deref()) else {
                tracing::info!(
                    "{id} asks for model {:?}; this member serves {}: left in input/ready/ for a member with that model",
                    model.as_deref().unwrap_or(""),
                    self.registry.as_ref().map(|r| r.listing()).unwrap_or_default()
                );
                self.elsewhere.insert(id);
                continue;
            };
            batch.push((id, route, prio));
        }
        let queued = self.pool.submit_all(batch);
        if queued > 0 {
            tracing::debug!("queued {queued} new jobs");
        }
    }

    /// The job's priority and model from `params.json`; anything unreadable
    /// is normal priority, any model (the processor reports a bad
    /// params.json when it reads the job).
    fn params(&self, id: &JobId) -> (Priority, Option<String>) {
        let path = self.ws.job_dir(State::Ready, id).join(PARAMS_FILE);
        let Ok(Some(bytes)) = read_optional(&path, MAX_PARAMS_BYTES) else {
            return (Priority::Normal, None);
        };
        match Params::parse_lenient(&bytes) {
            Ok((p, _)) => (p.priority.unwrap_or_default(), p.model),
            Err(_) => (Priority::Normal, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreading_keeps_windows_and_differs_between_members() {
        let ids: Vec<JobId> = (0..200)
            .map(|i| JobId::parse(&format!("{:020}_1_000001", 1_700_000_000_000_000u64 + i)).unwrap())
            .collect();
        let (mut a, mut b) = (ids.clone(), ids.clone());
        spread(&mut a, 1);
        spread(&mut b, 2);
        assert_ne!(a, b);
        assert_ne!(a[0], b[0], "two members start on different jobs");
        for (i, w) in a.chunks(SPREAD_WINDOW).enumerate() {
            let mut w = w.to_vec();
            w.sort();
            assert_eq!(w, ids[i * SPREAD_WINDOW..(i * SPREAD_WINDOW + w.len())], "window {i}");
        }
    }
}
