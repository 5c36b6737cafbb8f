//! Free-space back-off: workers claim nothing while the workspace's
//! filesystem is nearly full. A job whose result hit a full disk is put
//! back in `input/ready/`; without this gate it would be claimed and
//! regenerated in a loop until space appeared.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a blocked worker looks at the free space again.
const RECHECK: Duration = Duration::from_millis(500);
/// How often the wait is logged.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The workspace filesystem's free space, shared by the workers.
pub struct SpaceGate {
    path: PathBuf,
    min_free: u64,
    /// Free bytes needed before claiming: `min_free`, raised after a job
    /// met a full disk so that it waits for space to really come back.
    required: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

/// Bytes available to this (unprivileged) process on `path`'s filesystem.
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

impl SpaceGate {
    pub fn new(path: PathBuf, min_free: u64) -> SpaceGate {
        SpaceGate {
            path,
            min_free,
            required: AtomicU64::new(min_free),
            last_log: Mutex::new(None),
        }
    }

    /// Whether there is room to claim a job now. An unreadable statvfs
    /// counts as room (the writes will tell).
    pub fn has_room(&self) -> bool {
        match free_bytes(&self.path) {
            Ok(free) => free >= self.required.load(Ordering::SeqCst),
            Err(_) => true,
        }
    }

    /// Blocks while the filesystem has too little free space, logging once
    /// a minute. Returns false when `shutdown` was set meanwhile.
    pub fn wait_for_room(&self, shutdown: &AtomicBool) -> bool {
        loop {
            if shutdown.load(Ordering::SeqCst) {
                return false;
            }
            if self.has_room() {
                return true;
            }
            {
                let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
                if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    *last = Some(Instant::now());
                    tracing::warn!(
                        "{} has {} bytes free, under the {} needed (NRVNA_MIN_FREE_MB); claiming nothing until there is space",
                        self.path.display(),
                        free_bytes(&self.path).unwrap_or(0),
                        self.required.load(Ordering::SeqCst)
                    );
                }
            }
            std::thread::sleep(RECHECK);
        }
    }

    /// A write failed for lack of space: require more than is free now.
    pub fn disk_full(&self) {
        let free = free_bytes(&self.path).unwrap_or(0);
        self.required
            .fetch_max(free.saturating_add(self.min_free.max(1 << 20)), Ordering::SeqCst);
    }

    /// A job finished normally: back to the configured threshold.
    pub fn wrote_fine(&self) {
        self.required.store(self.min_free, Ordering::SeqCst);
        *self.last_log.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_raises_the_bar_until_a_normal_finish() {
        let d = tempfile::tempdir().unwrap();
        let g = SpaceGate::new(d.path().to_owned(), 0);
        assert!(g.has_room());
        g.disk_full();
        assert!(!g.has_room(), "must wait for more space than there is now");
        let stop = AtomicBool::new(true);
        assert!(!g.wait_for_room(&stop), "shutdown ends the wait");
        g.wrote_fine();
        assert!(g.has_room());
        let huge = SpaceGate::new(d.path().to_owned(), u64::MAX);
        assert!(!huge.has_room());
    }
}
