//! A worker thread (`Worker-N`): takes ids from the Pool, waits for free
//! space, gets the job's model from the Loader (loading it if need be),
//! and hands the job to its Processor. A panic is caught here, at the
//! worker boundary: logged with the job's id, the job recovered like one a
//! dead daemon left behind, and the Pool's busy count restored by a guard.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use nrvna_core::{JobId, State, Workspace};

use crate::events::Event;
use crate::metrics::{JobMetrics, Reason};
use crate::models::loader::{Loader, Refused};
use crate::pool::{Message, Pool, Route};
use crate::processor::{Outcome, Processor};
use crate::recovery::{recover_one, Recovery};
use crate::space::SpaceGate;

/// A worker and the handles it uses.
pub struct Worker {
    pub pool: Arc<Pool>,
    pub processor: Processor,
    /// Where the job's model comes from.
    pub loader: Arc<Loader>,
    pub ws: Workspace,
    pub space: Arc<SpaceGate>,
    pub shutdown: Arc<AtomicBool>,
    pub events: Sender<Event>,
    pub max_recovery_attempts: u64,
    /// Where a recovery after a panic is counted.
    pub metrics: Arc<JobMetrics>,
}

/// Gives the id back to the Pool however the job ends (panics included):
/// the busy count must come back down or `--drain` never ends.
struct Busy<'a> {
    pool: &'a Pool,
    id: &'a JobId,
    park: bool,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if self.park {
            self.pool.park(self.id);
        } else {
            self.pool.done(self.id);
        }
    }
}

/// Tells the server that this worker is gone, however it ends.
struct Exit(Sender<Event>);

impl Drop for Exit {
    fn drop(&mut self) {
        let _ = self.0.send(Event::WorkerExited);
    }
}

impl Worker {
    pub fn run(mut self) {
        let _exit = Exit(self.events.clone());
        loop {
            let (id, route) = match self.pool.next() {
                Message::Quit => break,
                Message::Job(id, route) => (id, route),
            };
            let pool = self.pool.clone();
            let mut busy = Busy {
                pool: &pool,
                id: &id,
                park: false,
            };
            if self.shutdown.load(Ordering::SeqCst) || !self.space.wait_for_room(&self.shutdown) {
                break;
            }
            let loader = self.loader.clone();
            let held = match route {
                Route::Model(m) => match loader.acquire(m, &self.shutdown) {
                    Ok(u) => Ok(u),
                    Err(Refused::Stopping) => break,
                    Err(Refused::Failed(why)) => Err(why),
                },
                Route::Unserved => Err(format!(
                    "no such model here; this daemon serves: {} (name one of these, or start a daemon with that model)",
                    loader.registry().listing()
                )),
            };
            let model = held.as_ref().map(|u| u.inference()).map_err(Clone::clone);
            let outcome = match catch_unwind(AssertUnwindSafe(|| self.processor.process(&id, model))) {
                Ok(o) => o,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    tracing::error!("worker panicked on job {id}: {what}; recovering the job");
                    self.recover_after_panic(&id)
                }
            };
            drop(held);
            if outcome == Outcome::Duplicate {
                // Keep the id pending so the Scanner stops offering it.
                busy.park = true;
            }
            // The job's end is told before the pool counts this worker
            // free: a drain that sees the pool idle has counted it (a failure
            // sent after could be missed, and the drain exit 0).
            let fault = match outcome {
                Outcome::Fault(why) => {
                    let _ = self.events.send(Event::Fault(why));
                    true
                }
                o => {
                    let _ = self.events.send(Event::JobEnded { failed: o.is_failure() });
                    false
                }
            };
            drop(busy);
            if fault {
                break;
            }
            let _ = self.events.send(Event::Freed);
        }
    }

    /// After a panic: if the job is in `processing/`, it goes back to
    /// `input/ready/` (or to `failed/` at the recovery ceiling).
    fn recover_after_panic(&self, id: &JobId) -> Outcome {
        if self.ws.locate(id) != Some(State::Processing) {
            return Outcome::Interrupted("panic".into());
        }
        match recover_one(&self.ws, id, self.max_recovery_attempts) {
            Recovery::Failed => {
                self.metrics.failed(Reason::RecoveryCeiling);
                self.metrics.finished.get_or_create(&[("state", "failed")]).inc();
                Outcome::Failed("recovery ceiling reached after a worker panic".into())
            }
            Recovery::Requeued => {
                self.metrics.recovered.fetch_add(1, Ordering::Relaxed);
                Outcome::Requeued("worker panic".into())
            }
            Recovery::Left => Outcome::Interrupted("worker panic".into()),
        }
    }
}
