//! The Pool: one mutex-protected queue of job ids and a condition variable.
//! The Scanner submits ids; `Worker-0..N-1` take them, higher priorities
//! first and in submission order within one priority. An id already queued
//! or in progress is never queued twice.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};

use nrvna_core::JobId;

pub use nrvna_core::params::Priority;

/// The queue a priority goes to: high first.
fn fifo(p: Priority) -> usize {
    match p {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

/// What a worker gets from the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Job(JobId),
    Quit,
}

#[derive(Default)]
struct Queue {
    /// One FIFO per priority, highest first.
    jobs: [VecDeque<JobId>; 3],
    /// Queued or being processed, with the priority it was queued at.
    pending: HashMap<JobId, Priority>,
    busy: usize,
    /// Being processed, per priority queue.
    busy_by: [usize; 3],
    closed: bool,
}

/// The job queue shared by the Scanner and the workers. This mutex is the
/// daemon's only lock around job scheduling.
#[derive(Default)]
pub struct Pool {
    queue: Mutex<Queue>,
    cv: Condvar,
}

impl Pool {
    pub fn new() -> Pool {
        Pool::default()
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A worker that panicked never leaves the queue half-updated.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an id unless it is already pending; returns whether it was queued.
    pub fn submit(&self, id: JobId, prio: Priority) -> bool {
        let mut q = self.lock();
        if q.closed || q.pending.contains_key(&id) {
            return false;
        }
        q.pending.insert(id.clone(), prio);
        q.jobs[fifo(prio)].push_back(id);
        drop(q);
        self.cv.notify_one();
        true
    }

    /// Whether `id` is queued or in progress (the Scanner skips reading it).
    pub fn is_pending(&self, id: &JobId) -> bool {
        self.lock().pending.contains_key(id)
    }

    /// Blocks until a job is available or the pool closes.
    pub fn next(&self) -> Message {
        let mut q = self.lock();
        loop {
            if q.closed {
                return Message::Quit;
            }
            if let Some((i, id)) = q
                .jobs
                .iter_mut()
                .enumerate()
                .find_map(|(i, fifo)| fifo.pop_front().map(|id| (i, id)))
            {
                q.busy += 1;
                q.busy_by[i] += 1;
                return Message::Job(id);
            }
            q = self.cv.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A worker finished with `id` (whatever the outcome).
    pub fn done(&self, id: &JobId) {
        let mut q = self.lock();
        if let Some(p) = q.pending.remove(id) {
            q.busy_by[fifo(p)] = q.busy_by[fifo(p)].saturating_sub(1);
        }
        q.busy = q.busy.saturating_sub(1);
        drop(q);
        self.cv.notify_all();
    }

    /// A worker gave up on `id` for good (a duplicate of a finished job): it
    /// stays pending, so the Scanner never offers it again in this run.
    pub fn park(&self, id: &JobId) {
        let mut q = self.lock();
        if let Some(p) = q.pending.get(id).copied() {
            q.busy_by[fifo(p)] = q.busy_by[fifo(p)].saturating_sub(1);
        }
        q.busy = q.busy.saturating_sub(1);
        drop(q);
        self.cv.notify_all();
    }

    /// Nothing queued and nothing in progress.
    pub fn idle(&self) -> bool {
        let q = self.lock();
        q.jobs.iter().all(VecDeque::is_empty) && q.busy == 0
    }

    /// (queued, in progress)
    pub fn counts(&self) -> (usize, usize) {
        let q = self.lock();
        (q.jobs.iter().map(VecDeque::len).sum(), q.busy)
    }

    /// (priority, queued, in progress) for each priority, highest first.
    pub fn by_priority(&self) -> [(Priority, usize, usize); 3] {
        let q = self.lock();
        [Priority::High, Priority::Normal, Priority::Low].map(|p| (p, q.jobs[fifo(p)].len(), q.busy_by[fifo(p)]))
    }

    /// Wakes every worker with Quit; queued ids are dropped (they are still
    /// in `input/ready/` and will be found by the next daemon).
    pub fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        for fifo in &mut q.jobs {
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
        assert_eq!(p.next(), Message::Job(id("1")));
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
                Message::Job(j) => j,
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
                Message::Job(j) => j,
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
