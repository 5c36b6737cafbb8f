//! Waking on filesystem events: an inotify watch (through `notify`) on a few
//! directories, with a slow poll as the fallback for filesystems that send
//! no events (NFS, some FUSE mounts).

use std::path::Path;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

/// Blocks until something changes in the watched directories or the poll
/// interval passes, whichever comes first.
pub struct DirWaker {
    rx: Receiver<()>,
    tx: std::sync::mpsc::Sender<()>,
    // Dropping the watcher stops the events; kept alive with the waker.
    _watcher: Option<notify::RecommendedWatcher>,
    poll: Duration,
}

impl DirWaker {
    /// Watches `dirs` (non-recursively). When watching is impossible the
    /// waker still works, by polling every `poll`.
    pub fn new(dirs: &[&Path], poll: Duration) -> DirWaker {
        DirWaker::watching_for(dirs, poll, false)
    }

    /// Like [`DirWaker::new`], but wakes only when an entry arrives (is
    /// created or moved in), not when one leaves. The Scanner uses this: a
    /// claim moves a job out of `input/ready/`, and rescanning a backlog of
    /// thousands for every claim would make draining it quadratic.
    pub fn arrivals(dirs: &[&Path], poll: Duration) -> DirWaker {
        DirWaker::watching_for(dirs, poll, true)
    }

    /// A waker without filesystem events: wakes every `poll` (or when
    /// poked). For network filesystems, where events miss other hosts' writes.
    pub fn polling(poll: Duration) -> DirWaker {
        let (tx, rx) = channel();
        DirWaker {
            rx,
            tx,
            _watcher: None,
            poll,
        }
    }

    fn watching_for(dirs: &[&Path], poll: Duration, arrivals_only: bool) -> DirWaker {
        use notify::event::{ModifyKind, RenameMode};
        use notify::EventKind;
        let (tx, rx) = channel();
        let poke = tx.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Opening or listing a watched directory raises access events;
            // waking on those would make a waiter that lists the directory
            // wake itself forever. Only changes to the entries matter.
            let wake = res.is_ok_and(|e| match e.kind {
                EventKind::Access(_) => false,
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => !arrivals_only,
                _ => true,
            });
            if wake {
                let _ = tx.send(());
            }
        })
        .ok()
        .and_then(|mut w| {
            for d in dirs {
                if w.watch(d, RecursiveMode::NonRecursive).is_err() {
                    return None;
                }
            }
            Some(w)
        });
        DirWaker {
            rx,
            tx: poke,
            _watcher: watcher,
            poll,
        }
    }

    /// A handle that wakes the waiter by hand (e.g. at shutdown).
    pub fn poker(&self) -> std::sync::mpsc::Sender<()> {
        self.tx.clone()
    }

    /// Whether events are arriving (false: polling only).
    pub fn watching(&self) -> bool {
        self._watcher.is_some()
    }

    /// Waits for an event, the poll interval, or `deadline`. Drains any
    /// backlog of events so that one burst wakes the caller once.
    pub fn wait(&self, deadline: Option<Instant>) {
        let mut t = self.poll;
        if let Some(d) = deadline {
            t = t.min(d.saturating_duration_since(Instant::now()));
        }
        match self.rx.recv_timeout(t) {
            Ok(()) => while self.rx.try_recv().is_ok() {},
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
        }
    }
}

/// Polls `check` until it returns `Some`, waking on events in `dirs`.
/// Returns `None` at the deadline.
pub fn wait_for<T>(dirs: &[&Path], deadline: Option<Instant>, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    // Watch first, then check: an event between the two is not lost.
    let waker = DirWaker::new(dirs, crate::config::settings().wait_poll);
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        waker.wait(deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_a_watched_directory_does_not_wake_the_waiter() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        let waker = DirWaker::new(&[d.path()], Duration::from_millis(300));
        // Regression: the Scanner woke itself forever on its own readdir.
        for _ in 0..3 {
            let _ = std::fs::read_dir(d.path()).unwrap().count();
        }
        let start = Instant::now();
        waker.wait(None);
        assert!(
            start.elapsed() >= Duration::from_millis(250),
            "woke after {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn an_arrivals_waker_ignores_entries_moving_out() {
        let d = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("1")).unwrap();
        let waker = DirWaker::arrivals(&[d.path()], Duration::from_millis(300));
        std::fs::rename(d.path().join("1"), other.path().join("1")).unwrap();
        let start = Instant::now();
        waker.wait(None);
        assert!(start.elapsed() >= Duration::from_millis(250), "a departure woke it");
        std::fs::rename(other.path().join("1"), d.path().join("1")).unwrap();
        let start = Instant::now();
        waker.wait(None);
        assert!(
            start.elapsed() < Duration::from_millis(250),
            "an arrival did not wake it"
        );
    }

    #[test]
    fn wakes_on_a_new_entry_long_before_the_poll_interval() {
        let d = tempfile::tempdir().unwrap();
        let waker = DirWaker::new(&[d.path()], Duration::from_secs(10));
        assert!(waker.watching());
        let p = d.path().join("x");
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::create_dir(p).unwrap();
        });
        let start = Instant::now();
        waker.wait(None);
        assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
        t.join().unwrap();
    }
}
