//! The Scanner thread: finds jobs in `input/ready/` and submits their ids to
//! the Pool in id (= submission) order. It wakes on filesystem events
//! (inotify) and rescans every second anyway, for filesystems that send none.

use std::collections::HashSet;
use std::ffi::OsString;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nrvna_core::wait::DirWaker;
use nrvna_core::State;

use crate::server::Shared;

/// How often the Scanner rescans without an event.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// Runs until shutdown. `waker` is created by the caller so that its poker
/// can interrupt the wait at shutdown.
pub fn run(shared: Arc<Shared>, waker: DirWaker) {
    if !waker.watching() {
        tracing::warn!(
            "no filesystem events for {}; scanning every second",
            shared.ws.dir(State::Ready).display()
        );
    }
    let mut reported: HashSet<OsString> = HashSet::new();
    while !shared.shutdown.load(Ordering::SeqCst) {
        scan_once(&shared, &mut reported);
        shared.scans.fetch_add(1, Ordering::SeqCst);
        waker.wait(None);
    }
    tracing::debug!("scanner stopped");
}

/// One pass over `input/ready/`: every valid id goes to the Pool (which
/// ignores ids already pending). Names that are not ids are logged once.
pub fn scan_once(shared: &Shared, reported: &mut HashSet<OsString>) {
    let mut ids = Vec::new();
    let res = shared.ws.scan(
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
        tracing::error!("scanning {}: {e}; will retry", shared.ws.dir(State::Ready).display());
        return;
    }
    ids.sort();
    let mut queued = 0;
    for id in ids {
        if shared.pool.submit(id) {
            queued += 1;
        }
    }
    if queued > 0 {
        tracing::debug!("queued {queued} new jobs");
    }
}
