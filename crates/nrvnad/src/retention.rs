//! The Retention thread: every `--retain-interval`, one prune round of the
//! `--retain-*` policy (`nrvna_core::retention`), under the workspace's
//! prune lock so that, with `--shared`, one member prunes at a time (the
//! others skip the round). Also the trash recovery at start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nrvna_core::retention::{self, Policy, PruneLock, Round};
use nrvna_core::{State, Workspace};

/// Jobs removed per step; shutdown is checked between steps.
const CHUNK: usize = 256;

/// The thread's handles.
pub struct Retention {
    /// The workspace it prunes.
    pub ws: Workspace,
    /// What it removes.
    pub policy: Policy,
    /// Time between rounds.
    pub interval: Duration,
}

impl Retention {
    /// Prunes every interval until `stop` is set (and `wake` is sent to or
    /// dropped).
    pub fn run(self, stop: Arc<AtomicBool>, wake: Receiver<()>) {
        tracing::info!(
            "retention: {} (every {})",
            self.policy.describe(),
            retention::format_duration(self.interval)
        );
        while !stop.load(Ordering::SeqCst) {
            self.round(&stop);
            match wake.recv_timeout(self.interval) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    /// One round, skipped while another pruner holds the lock.
    fn round(&self, stop: &AtomicBool) {
        let lock = match PruneLock::acquire(&self.ws, false) {
            Ok(Some(l)) => l,
            Ok(None) => {
                tracing::debug!("retention: another pruner holds the workspace's prune lock; skipping this round");
                return;
            }
            Err(e) => {
                tracing::warn!(
                    "retention: cannot take {}: {e}; no job is removed until it can",
                    self.ws.file(retention::PRUNE_LOCK_FILE).display()
                );
                return;
            }
        };
        let t0 = Instant::now();
        let r = retention::prune(
            &self.ws,
            &self.policy,
            SystemTime::now(),
            Round {
                states: &[State::Done, State::Failed],
                dry_run: false,
                chunk: CHUNK,
                stop: &|| stop.load(Ordering::SeqCst),
                on_selected: &mut |n, seen| {
                    if n > 0 {
                        tracing::info!("retention: removing {n} of {seen} finished jobs");
                    }
                },
                on_removed: &mut |_| {},
            },
        );
        drop(lock);
        match r {
            Ok(p) => {
                if p.trash_emptied > 0 {
                    tracing::info!(
                        "retention: deleted {} entries an interrupted round left in the trash",
                        p.trash_emptied
                    );
                }
                if p.removed.is_empty() {
                    if !p.kept.is_empty() {
                        tracing::debug!("retention: nothing removed; {:?} kept though due", p.kept);
                    }
                    return;
                }
                let secs = t0.elapsed().as_secs_f64();
                let failed = p.removed.iter().filter(|j| j.state == State::Failed).count();
                let mut kept: Vec<String> = p.kept.iter().map(|(why, n)| format!("{n} {why}")).collect();
                kept.sort();
                tracing::info!(
                    "retention: removed {} of {} finished jobs ({} done, {failed} failed) in {secs:.2} s ({:.0} jobs/s){}",
                    p.removed.len(),
                    p.seen,
                    p.removed.len() - failed,
                    p.removed.len() as f64 / secs.max(1e-6),
                    if kept.is_empty() {
                        String::new()
                    } else {
                        format!("; kept though due: {}", kept.join(", "))
                    }
                );
            }
            Err(e) => tracing::warn!("retention: this round stopped: {e}; the next round tries again"),
        }
    }
}

/// At start: deletes what a crashed pruner left in the trash (when no
/// other pruner holds the lock; else that pruner will).
pub fn recover_trash(ws: &Workspace) {
    if !ws.file(retention::TRASH_DIR).is_dir() {
        return;
    }
    let Ok(Some(_lock)) = PruneLock::acquire(ws, false) else {
        return;
    };
    match retention::empty_trash(ws) {
        Ok(0) => {}
        Ok(n) => tracing::info!("recovery: deleted {n} removed jobs an interrupted prune left in the trash"),
        Err(e) => tracing::warn!("recovery: emptying {}: {e}", ws.file(retention::TRASH_DIR).display()),
    }
}
