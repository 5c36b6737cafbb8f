//! The Pool: one mutex-protected queue of job ids and a condition variable.
//! The Scanner submits ids with their model and priority; `Worker-0..N-1`
//! take them: the jobs of the model [`modelsched::choose`] picks, higher
//! priorities first and in submission order within one priority. An id
//! already queued or in progress is never queued twice.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nrvna_core::JobId;

use crate::modelsched::{self, Backlog};

pub use nrvna_core::params::Priority;

/// The queue a priority goes to: high first.
fn fifo(p: Priority) -> usize {
    match p {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

/// Where a job goes: one of the served models (by index), or nowhere (a
/// job naming a model this daemon does not serve, failed by the worker
/// that takes it, whichever model is active).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    Model(usize),
    Unserved,
}

/// What a worker gets from the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Job(JobId, Route),
    Quit,
}

/// One model's queued jobs: one FIFO per priority, highest first, each id
/// with the time it was queued and its arrival number.
type Fifos = [VecDeque<(JobId, Instant, u64)>; 3];

struct Queue {
    /// Per model (by index), and the unserved jobs last.
    jobs: Vec<Fifos>,
    /// Queued or being processed, with where and at which priority.
    pending: HashMap<JobId, (Route, Priority)>,
    busy: usize,
    /// Being processed, per priority queue.
    busy_by: [usize; 3],
    /// Being processed, per model.
    busy_model: Vec<usize>,
    /// The model whose jobs are handed out, and since when.
    active: Option<(usize, Instant)>,
    /// Per model: loaded or loading (told by the loader).
    loaded: Vec<bool>,
    /// Times the active model changed.
    switches: u64,
    /// Arrivals so far (the next job's arrival number).
    arrivals: u64,
    closed: bool,
}

impl Queue {
    fn slot(&self, r: Route) -> usize {
        match r {
            Route::Model(i) => i,
            Route::Unserved => self.jobs.len() - 1,
        }
    }

    fn models(&self) -> usize {
        self.jobs.len() - 1
    }

    /// The scheduler's view of model `i`'s queued jobs.
    fn backlog(&self, i: usize, now: Instant) -> Option<Backlog> {
        let f = &self.jobs[i];
        let queued: usize = f.iter().map(VecDeque::len).sum();
        if queued == 0 {
            return None;
        }
        let (oldest, first) = f.iter().filter_map(|q| q.front().map(|(_, t, n)| (*t, *n))).min()?;
        Some(Backlog {
            queued,
            oldest: now.saturating_duration_since(oldest),
            first,
            best: f.iter().position(|q| !q.is_empty())? as u8,
        })
    }
}

/// The job queue shared by the Scanner and the workers, partitioned by
/// (model, priority). This mutex is the daemon's only lock around job
/// scheduling; which model's jobs are handed out is [`modelsched::choose`]'s
/// decision, taken under it.
pub struct Pool {
    queue: Mutex<Queue>,
    cv: Condvar,
    /// `--max-wait`.
    max_wait: Duration,
}

impl Default for Pool {
    fn default() -> Pool {
        Pool::new()
    }
}

impl Pool {
    /// A pool for one model.
    pub fn new() -> Pool {
        Pool::for_models(1, Duration::from_secs(30))
    }

    /// A pool for `models` served models, switching between them by
    /// [`modelsched::choose`] with `max_wait`.
    pub fn for_models(models: usize, max_wait: Duration) -> Pool {
        let models = models.max(1);
        Pool {
            queue: Mutex::new(Queue {
                jobs: (0..=models).map(|_| Fifos::default()).collect(),
                pending: HashMap::new(),
                busy: 0,
                busy_by: [0; 3],
                busy_model: vec![0; models + 1],
                active: None,
                loaded: vec![false; models],
                switches: 0,
                arrivals: 0,
                closed: false,
            }),
            cv: Condvar::new(),
            max_wait,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A worker that panicked never leaves the queue half-updated.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an id for the first model unless it is already pending.
    pub fn submit(&self, id: JobId, prio: Priority) -> bool {
        self.submit_to(id, Route::Model(0), prio)
    }

    /// Queues an id for `route` unless it is already pending; returns
    /// whether it was queued.
    pub fn submit_to(&self, id: JobId, route: Route, prio: Priority) -> bool {
        let mut q = self.lock();
        if q.closed || q.pending.contains_key(&id) {
            return false;
        }
        let slot = q.slot(route).min(q.jobs.len() - 1);
        q.pending.insert(id.clone(), (route, prio));
        let n = q.arrivals;
        q.arrivals += 1;
        q.jobs[slot][fifo(prio)].push_back((id, Instant::now(), n));
        drop(q);
        // Every worker looks: the new job may change the model to run.
        self.cv.notify_all();
        true
    }

    /// Queues every id of one scan at once (so that the scheduler sees the
    /// whole backlog before a worker picks a model); returns how many were
    /// queued.
    pub fn submit_all(&self, jobs: Vec<(JobId, Route, Priority)>) -> usize {
        let mut q = self.lock();
        if q.closed {
            return 0;
        }
        let now = Instant::now();
        let mut n = 0;
        for (id, route, prio) in jobs {
            if q.pending.contains_key(&id) {
                continue;
            }
            let slot = q.slot(route).min(q.jobs.len() - 1);
            q.pending.insert(id.clone(), (route, prio));
            let a = q.arrivals;
            q.arrivals += 1;
            q.jobs[slot][fifo(prio)].push_back((id, now, a));
            n += 1;
        }
        drop(q);
        if n > 0 {
            self.cv.notify_all();
        }
        n
    }

    /// Whether `id` is queued or in progress (the Scanner skips reading it).
    pub fn is_pending(&self, id: &JobId) -> bool {
        self.lock().pending.contains_key(id)
    }

    /// The loader tells which models are loaded (or loading).
    pub fn set_loaded(&self, model: usize, loaded: bool) {
        let mut q = self.lock();
        if let Some(l) = q.loaded.get_mut(model) {
            *l = loaded;
        }
    }

    /// Blocks until a job is available or the pool closes. Unserved jobs
    /// go first; then the jobs of the model [`modelsched::choose`] picks.
    pub fn next(&self) -> Message {
        let mut q = self.lock();
        loop {
            if q.closed {
                return Message::Quit;
            }
            let unserved = q.models();
            if let Some(p) = (0..3).find(|&p| !q.jobs[unserved][p].is_empty()) {
                if let Some((id, _, _)) = q.jobs[unserved][p].pop_front() {
                    q.busy += 1;
                    q.busy_by[p] += 1;
                    q.busy_model[unserved] += 1;
                    return Message::Job(id, Route::Unserved);
                }
            }
            let now = Instant::now();
            let backlog: Vec<Option<Backlog>> = (0..q.models()).map(|i| q.backlog(i, now)).collect();
            let view = modelsched::View {
                current: q.active.map(|(m, _)| m),
                active_for: q
                    .active
                    .map_or(Duration::ZERO, |(_, t)| now.saturating_duration_since(t)),
                backlog: &backlog,
                loaded: &q.loaded,
                max_wait: self.max_wait,
            };
            if let Some(m) = modelsched::choose(&view) {
                if q.active.map(|(a, _)| a) != Some(m) {
                    if let Some((a, _)) = q.active {
                        tracing::debug!("switching from model {a} to model {m}");
                    }
                    q.active = Some((m, now));
                    q.switches += 1;
                }
                if let Some((p, (id, _, _))) = q.jobs[m]
                    .iter_mut()
                    .enumerate()
                    .find_map(|(p, f)| f.pop_front().map(|j| (p, j)))
                {
                    q.busy += 1;
                    q.busy_by[p] += 1;
                    q.busy_model[m] += 1;
                    return Message::Job(id, Route::Model(m));
                }
            }
            q = self.cv.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn release(&self, id: &JobId, forget: bool) {
        let mut q = self.lock();
        let entry = if forget {
            q.pending.remove(id)
        } else {
            q.pending.get(id).copied()
        };
        if let Some((r, p)) = entry {
            q.busy_by[fifo(p)] = q.busy_by[fifo(p)].saturating_sub(1);
            let s = q.slot(r);
            q.busy_model[s] = q.busy_model[s].saturating_sub(1);
        }
        q.busy = q.busy.saturating_sub(1);
        drop(q);
        self.cv.notify_all();
    }

    /// A worker finished with `id` (whatever the outcome).
    pub fn done(&self, id: &JobId) {
        self.release(id, true);
    }

    /// A worker gave up on `id` for good (a duplicate of a finished job): it
    /// stays pending, so the Scanner never offers it again in this run.
    pub fn park(&self, id: &JobId) {
        self.release(id, false);
    }

    /// Nothing queued and nothing in progress.
    pub fn idle(&self) -> bool {
        let q = self.lock();
        q.jobs.iter().flatten().all(VecDeque::is_empty) && q.busy == 0
    }

    /// (queued, in progress)
    pub fn counts(&self) -> (usize, usize) {
        let q = self.lock();
        (q.jobs.iter().flatten().map(VecDeque::len).sum(), q.busy)
    }

    /// Per model: (queued, in progress).
    pub fn by_model(&self) -> Vec<(usize, usize)> {
        let q = self.lock();
        (0..q.models())
            .map(|i| (q.jobs[i].iter().map(VecDeque::len).sum(), q.busy_model[i]))
            .collect()
    }

    /// Times the active model changed since the start.
    pub fn switches(&self) -> u64 {
        self.lock().switches
    }

    /// (priority, queued, in progress) for each priority, highest first.
    pub fn by_priority(&self) -> [(Priority, usize, usize); 3] {
        let q = self.lock();
        [Priority::High, Priority::Normal, Priority::Low]
            .map(|p| (p, q.jobs.iter().map(|f| f[fifo(p)].len()).sum(), q.busy_by[fifo(p)]))
    }

    /// Wakes every worker with Quit; queued ids are dropped (they are still
    /// in `input/ready/` and will be found by the next daemon).
    pub fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        for fifo in q.jobs.iter_mut().flatten() {
            fifo.clear();
        }
        drop(q);
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn id(s: &str) -> JobId {
        JobId::parse(s).unwrap()
    }

    #[test]
    fn never_queues_a_pending_id_twice() {
        let p = Pool::new();
        assert!(p.submit(id("1"), Priority::Normal));
        assert!(!p.submit(id("1"), Priority::High), "queued twice");
        assert!(p.is_pending(&id("1")));
        assert_eq!(p.next(), Message::Job(id("1"), Route::Model(0)));
        assert!(!p.submit(id("1"), Priority::Normal), "queued while in progress");
        p.done(&id("1"));
        assert!(!p.is_pending(&id("1")));
        assert!(
            p.submit(id("1"), Priority::Normal),
            "a finished id may come back (e.g. recovered)"
        );
    }

    #[test]
    fn close_wakes_blocked_workers() {
        let p = Arc::new(Pool::new());
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || p.next())
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        p.close();
        for w in workers {
            assert_eq!(w.join().unwrap(), Message::Quit);
        }
    }

    #[test]
    fn fifo_order_and_idle_accounting() {
        let p = Pool::new();
        for s in ["3", "1", "2"] {
            p.submit(id(s), Priority::Normal);
        }
        assert!(!p.idle());
        let order: Vec<_> = (0..3)
            .map(|_| match p.next() {
                Message::Job(j, _) => j,
                Message::Quit => panic!(),
            })
            .collect();
        assert_eq!(order, [id("3"), id("1"), id("2")]);
        assert!(!p.idle(), "jobs in progress");
        for j in &order {
            p.done(j);
        }
        assert!(p.idle());
    }

    #[test]
    fn higher_priorities_first_and_fifo_within_one() {
        let p = Pool::new();
        p.submit(id("1"), Priority::Low);
        p.submit(id("2"), Priority::Normal);
        p.submit(id("3"), Priority::Low);
        p.submit(id("4"), Priority::High);
        p.submit(id("5"), Priority::Normal);
        assert_eq!(p.counts(), (5, 0));
        assert_eq!(
            p.by_priority(),
            [(Priority::High, 1, 0), (Priority::Normal, 2, 0), (Priority::Low, 2, 0)]
        );
        let order: Vec<_> = (0..5)
            .map(|_| match p.next() {
                Message::Job(j, _) => j,
                Message::Quit => panic!(),
            })
            .collect();
        assert_eq!(order, [id("4"), id("2"), id("5"), id("1"), id("3")]);
        assert_eq!(
            p.by_priority(),
            [(Priority::High, 0, 1), (Priority::Normal, 0, 2), (Priority::Low, 0, 2)]
        );
        p.done(&id("4"));
        p.park(&id("1"));
        assert_eq!(
            p.by_priority(),
            [(Priority::High, 0, 0), (Priority::Normal, 0, 2), (Priority::Low, 0, 1)]
        );
        assert_eq!(Priority::parse("high"), Some(Priority::High));
        assert_eq!(Priority::parse("urgent"), None);
    }
}
