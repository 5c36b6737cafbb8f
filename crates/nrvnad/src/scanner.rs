//! The Scanner thread: finds jobs in `input/ready/` and submits their ids to
//! the Pool, with each job's priority. It wakes on filesystem events
//! (inotify arrivals) and rescans every scan interval anyway, for
//! filesystems that send none.

use std::collections::HashSet;
use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use nrvna_core::fsio::read_optional;
use nrvna_core::params::{Params, MAX_PARAMS_BYTES};
use nrvna_core::wait::DirWaker;
use nrvna_core::{JobId, State, Workspace};

use crate::pool::{Pool, Priority};
use crate::server::Event;

/// The Scanner and the handles it uses.
pub struct Scanner {
    pub ws: Workspace,
    pub pool: Arc<Pool>,
    pub shutdown: Arc<AtomicBool>,
    /// Told after every pass (the drain's idle check counts them).
    pub events: Sender<Event>,
    /// Names already reported as not being job ids.
    reported: HashSet<OsString>,
}

impl Scanner {
    pub fn new(ws: Workspace, pool: Arc<Pool>, shutdown: Arc<AtomicBool>, events: Sender<Event>) -> Scanner {
        Scanner {
            ws,
            pool,
            shutdown,
            events,
            reported: HashSet::new(),
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
        let mut queued = 0;
        for id in ids {
            if self.pool.is_pending(&id) {
                continue;
            }
            let prio = self.priority(&id);
            if self.pool.submit(id, prio) {
                queued += 1;
            }
        }
        if queued > 0 {
            tracing::debug!("queued {queued} new jobs");
        }
    }

    /// The job's priority from `params.json`; anything unreadable is normal
    /// (the processor reports a bad params.json when it reads the job).
    fn priority(&self, id: &JobId) -> Priority {
        let path = self.ws.job_dir(State::Ready, id).join("params.json");
        let Ok(Some(bytes)) = read_optional(&path, MAX_PARAMS_BYTES) else {
            return Priority::Normal;
        };
        Params::parse_lenient(&bytes)
            .ok()
            .and_then(|(p, _)| p.priority)
            .unwrap_or_default()
    }
}
