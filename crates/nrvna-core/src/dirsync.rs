//! Group commit for directory fsyncs: threads that need the same directory
//! fsynced after their own renames share one fsync, as long as that fsync
//! started after each of their renames. Nobody returns before an fsync
//! that covers its change has completed, so durability is unchanged; only
//! the count of fsyncs (and of device flushes) goes down when jobs move
//! close together. Whether to fsync at all is the caller's setting
//! (`FileIo::fsync`): this always does.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// One directory's group commit. Generations count the fsyncs started;
/// at most one runs at a time.
#[derive(Debug, Default)]
pub struct DirSync {
    state: Mutex<Gens>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct Gens {
    /// fsyncs started so far.
    started: u64,
    /// The last fsync that completed (generations complete in order).
    done: u64,
    /// Whether an fsync is running now.
    running: bool,
    /// The error of the last completed fsync, as (raw os error, message).
    error: Option<(Option<i32>, String)>,
}

impl DirSync {
    fn lock(&self) -> MutexGuard<'_, Gens> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every change made in `dir` before this call durable: waits
    /// for an fsync of `dir` that started after the call (running it
    /// itself when none is running).
    pub fn sync(&self, dir: &Path) -> io::Result<()> {
        let mut g = self.lock();
        // An fsync running now may have started before our change: only
        // the next generation is sure to cover it.
        let need = g.started + 1;
        loop {
            if g.done >= need {
                return match &g.error {
                    None => Ok(()),
                    Some((Some(code), _)) => Err(io::Error::from_raw_os_error(*code)),
                    Some((None, msg)) => Err(io::Error::other(msg.clone())),
                };
            }
            if !g.running {
                g.running = true;
                g.started += 1;
                let generation = g.started;
                drop(g);
                let r = File::open(dir).and_then(|f| f.sync_all());
                let mut g = self.lock();
                g.running = false;
                g.done = generation;
                g.error = r.as_ref().err().map(|e| (e.raw_os_error(), e.to_string()));
                drop(g);
                self.cv.notify_all();
                return r;
            }
            g = self.cv.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_callers_all_return_after_a_covering_fsync() {
        let d = tempfile::tempdir().unwrap();
        let s = Arc::new(DirSync::default());
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (s, p) = (s.clone(), d.path().to_owned());
                std::thread::spawn(move || {
                    for j in 0..50 {
                        std::fs::create_dir(p.join(format!("{i}_{j}"))).unwrap();
                        s.sync(&p).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let g = s.lock();
        assert!(!g.running);
        assert_eq!(g.started, g.done);
        assert!(g.started <= 400, "{} fsyncs for 400 changes", g.started);
    }

    #[test]
    fn an_error_reaches_the_callers_it_covers() {
        let d = tempfile::tempdir().unwrap();
        let s = DirSync::default();
        let e = s.sync(&d.path().join("gone")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        s.sync(d.path()).unwrap();
    }
}
