//! The workspace's job counts by state, kept current by inotify instead of
//! listed again for every question: one listing of each state directory
//! when the tally starts, then every entry moved or created in and moved
//! or deleted out. Metrics endpoints (the daemon's and the gateway's) read
//! it; a scrape of a workspace of 100,000 jobs costs a lock, not a walk.
//!
//! Counts are what `flw WS --json` counts (valid job ids per directory).
//! Entries are kept as sets of names, so an entry both listed and reported
//! by an event counts once; an event queue overflow relists everything.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

use crate::{JobId, State, Workspace};

/// The states a tally counts, in this order.
pub const COUNTED: [State; 4] = [State::Ready, State::Processing, State::Done, State::Failed];

/// The names of the [`COUNTED`] states, as `flw WS --json` spells them.
pub const NAMES: [&str; 4] = ["queued", "running", "done", "failed"];

/// Job counts by state: (state, count), in [`COUNTED`] order.
pub type Counts = [(State, usize); 4];

/// The names in each counted state directory.
#[derive(Default)]
struct Sets([HashSet<Box<[u8]>>; 4]);

/// A running tally of a workspace's jobs by state; stops when dropped.
pub struct Tally {
    sets: Arc<Mutex<Sets>>,
    stop: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

const MASK: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::ONLYDIR);

impl Tally {
    /// Watches the state directories of `ws`, then lists them once. Fails
    /// when inotify or a directory cannot be used (say which).
    pub fn start(ws: &Workspace) -> io::Result<Tally> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let mut wds = [-1i32; 4];
        for (i, s) in COUNTED.iter().enumerate() {
            let dir = ws.dir(*s);
            wds[i] = inotify::add_watch(&fd, &dir, MASK)
                .map_err(|e| io::Error::new(e.kind(), format!("watching {}: {e}", dir.display())))?;
        }
        let sets = Arc::new(Mutex::new(Sets::default()));
        relist(ws, &sets)?;
        let stop = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
        let (ws2, sets2, stop2) = (ws.clone(), sets.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("Tally".into())
            .spawn(move || follow(&ws2, fd, wds, &sets2, &stop2))?;
        Ok(Tally {
            sets,
            stop,
            thread: Some(thread),
        })
    }

    /// The counts now: queued, running, done, failed.
    pub fn counts(&self) -> Counts {
        let s = lock(&self.sets);
        [0, 1, 2, 3].map(|i| (COUNTED[i], s.0[i].len()))
    }

    /// The counts now under the names `flw WS --json` gives them (queued,
    /// running, done, failed), the `state` label of the metrics.
    pub fn named_counts(&self) -> [(&'static str, usize); 4] {
        let c = self.counts();
        [0, 1, 2, 3].map(|i| (NAMES[i], c[i].1))
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let _ = rustix::io::write(&*self.stop, &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(sets: &Mutex<Sets>) -> std::sync::MutexGuard<'_, Sets> {
    sets.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a directory entry's name is a job id (what `flw` counts).
fn counts_as_job(name: &[u8]) -> bool {
    JobId::from_os(OsStr::from_bytes(name)).is_some()
}

/// Lists every counted directory into fresh sets.
fn relist(ws: &Workspace, sets: &Mutex<Sets>) -> io::Result<()> {
    let mut fresh = Sets::default();
    for (i, s) in COUNTED.iter().enumerate() {
        ws.scan(
            *s,
            |id| {
                fresh.0[i].insert(id.as_str().as_bytes().into());
            },
            |_| {},
        )
        .map_err(|e| io::Error::new(e.kind(), format!("listing {}: {e}", ws.dir(*s).display())))?;
    }
    *lock(sets) = fresh;
    Ok(())
}

/// The tally's thread: applies inotify events until the stop eventfd fires.
fn follow(ws: &Workspace, fd: OwnedFd, wds: [i32; 4], sets: &Mutex<Sets>, stop: &OwnedFd) {
    let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 64 * 1024];
    loop {
        let mut pfds = [PollFd::new(&fd, PollFlags::IN), PollFd::new(stop, PollFlags::IN)];
        if poll(&mut pfds, None).is_err() {
            continue;
        }
        if !pfds[1].revents().is_empty() {
            return;
        }
        let mut reader = inotify::Reader::new(&fd, &mut buf);
        let mut overflow = false;
        let mut s = lock(sets);
        while let Ok(ev) = reader.next() {
            let flags = ev.events();
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                overflow = true;
                continue;
            }
            let Some(i) = wds.iter().position(|w| *w == ev.wd()) else {
                continue;
            };
            let Some(name) = ev.file_name().map(|n| n.to_bytes()) else {
                continue;
            };
            if !counts_as_job(name) {
                continue;
            }
            if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                s.0[i].insert(name.into());
            } else if flags.intersects(ReadFlags::DELETE | ReadFlags::MOVED_FROM) {
                s.0[i].remove(name);
            }
        }
        drop(s);
        // Events were lost: list again (a failed listing keeps the old
        // counts until the next overflow).
        if overflow {
            let _ = relist(ws, sets);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn settle(t: &Tally, want: [usize; 4]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = t.counts().map(|(_, n)| n);
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "counts {got:?}, want {want:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn counts_follow_renames_creates_and_removals_and_ignore_non_ids() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        for i in 0..3 {
            std::fs::create_dir(ws.dir(State::Done).join(format!("1{i}"))).unwrap();
        }
        std::fs::create_dir(ws.dir(State::Ready).join("5")).unwrap();
        let t = Tally::start(&ws).unwrap();
        assert_eq!(t.counts().map(|(_, n)| n), [1, 0, 3, 0], "the listing at start");
        let id = JobId::parse("5").unwrap();
        ws.transition(&id, State::Ready, State::Processing).unwrap();
        settle(&t, [0, 1, 3, 0]);
        ws.transition(&id, State::Processing, State::Failed).unwrap();
        settle(&t, [0, 0, 3, 1]);
        std::fs::create_dir(ws.dir(State::Ready).join(".tmp-x")).unwrap();
        std::fs::create_dir(ws.dir(State::Ready).join("not-an-id")).unwrap();
        std::fs::create_dir(ws.dir(State::Ready).join("6")).unwrap();
        std::fs::remove_dir(ws.dir(State::Done).join("10")).unwrap();
        settle(&t, [1, 0, 2, 1]);
        assert_eq!(ws.list(State::Ready).unwrap().len(), 1, "the same count as a listing");
        assert_eq!(
            t.named_counts(),
            [("queued", 1), ("running", 0), ("done", 2), ("failed", 1)]
        );
    }
}
