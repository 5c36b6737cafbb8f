//! Waking on filesystem events: an inotify watch on a few directories, read
//! with `poll(2)` on the waiting thread itself, with a slow poll as the
//! fallback for filesystems that send no events (NFS, some FUSE mounts).
//!
//! No helper thread: `flw -w` on a job that is already done used to spend
//! 4 to 14 ms starting and stopping the `notify` crate's event thread (its
//! thread, memory arena and a round trip per watched directory), more than
//! the rest of the command. The kernel filters the events here: only the
//! kinds asked for in the watch mask arrive, never the access and open
//! events that listing a watched directory raises.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::fs::inotify::{self, CreateFlags, WatchFlags};

/// Blocks until something changes in the watched directories, a
/// [`Poker`] pokes, or the poll interval passes, whichever comes first.
pub struct DirWaker {
    /// The inotify descriptor; `None`: polling only.
    inotify: Option<OwnedFd>,
    /// An eventfd that [`Poker`]s write to.
    poke: Option<Arc<OwnedFd>>,
    poll: Duration,
}

/// Wakes a [`DirWaker`]'s waiter by hand (e.g. at shutdown), from any thread.
#[derive(Clone)]
pub struct Poker(Option<Arc<OwnedFd>>);

impl Poker {
    pub fn poke(&self) {
        if let Some(fd) = &self.0 {
            // A full counter (never, in practice) still leaves it readable.
            let _ = rustix::io::write(fd.as_fd(), &1u64.to_ne_bytes());
        }
    }
}

/// Entry changes that wake a waiter: arrivals, writes and attribute
/// changes of entries, and the directory itself going away.
const ARRIVALS: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::MODIFY)
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVE_SELF);
/// Departures, which wake every waiter but the Scanner.
const DEPARTURES: WatchFlags = WatchFlags::DELETE.union(WatchFlags::MOVED_FROM);

impl DirWaker {
    /// Watches `dirs` (non-recursively). When watching is impossible the
    /// waker still works, by polling every `poll`.
    pub fn new(dirs: &[&Path], poll: Duration) -> DirWaker {
        DirWaker::watching_for(dirs, poll, ARRIVALS.union(DEPARTURES))
    }

    /// Like [`DirWaker::new`], but wakes only when an entry arrives (is
    /// created or moved in), not when one leaves. The Scanner uses this: a
    /// claim moves a job out of `input/ready/`, and rescanning a backlog of
    /// thousands for every claim would make draining it quadratic.
    pub fn arrivals(dirs: &[&Path], poll: Duration) -> DirWaker {
        DirWaker::watching_for(dirs, poll, ARRIVALS)
    }

    /// A waker without filesystem events: wakes every `poll` (or when
    /// poked). For network filesystems, where events miss other hosts' writes.
    pub fn polling(poll: Duration) -> DirWaker {
        DirWaker::with(None, poll)
    }

    fn watching_for(dirs: &[&Path], poll: Duration, mask: WatchFlags) -> DirWaker {
        DirWaker::with(watch(dirs, mask), poll)
    }

    fn with(inotify: Option<OwnedFd>, poll: Duration) -> DirWaker {
        DirWaker {
            inotify,
            poke: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
                .ok()
                .map(Arc::new),
            poll,
        }
    }

    /// A handle that wakes the waiter by hand (e.g. at shutdown).
    pub fn poker(&self) -> Poker {
        Poker(self.poke.clone())
    }

    /// Whether events are arriving (false: polling only).
    pub fn watching(&self) -> bool {
        self.inotify.is_some()
    }

    /// Waits for an event, a poke, the poll interval, or `deadline`.
    /// Drains what has arrived so that one burst wakes the caller once.
    pub fn wait(&self, deadline: Option<Instant>) {
        let mut t = self.poll;
        if let Some(d) = deadline {
            t = t.min(d.saturating_duration_since(Instant::now()));
        }
        // poll(2) counts whole milliseconds: round up so that a wait never
        // ends before `t`.
        let t = Duration::from_millis(u64::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX));
        let timeout = Timespec {
            tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(t.subsec_nanos()),
        };
        let fds: Vec<&OwnedFd> = [self.inotify.as_ref(), self.poke.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        let mut pfds: Vec<PollFd<'_>> = fds.iter().map(|fd| PollFd::new(*fd, PollFlags::IN)).collect();
        match poll(&mut pfds, Some(&timeout)) {
            // Timed out, or a signal interrupted: the caller looks again.
            Ok(0) | Err(_) => {}
            Ok(_) => {
                let ready: Vec<bool> = pfds.iter().map(|p| !p.revents().is_empty()).collect();
                for (fd, _) in fds.iter().zip(ready).filter(|(_, r)| *r) {
                    drain(fd);
                }
            }
        }
    }
}

/// An inotify descriptor watching every directory of `dirs` with `mask`;
/// `None` when any of them cannot be watched.
fn watch(dirs: &[&Path], mask: WatchFlags) -> Option<OwnedFd> {
    let fd = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC).ok()?;
    for d in dirs {
        inotify::add_watch(&fd, *d, mask).ok()?;
    }
    Some(fd)
}

/// Reads a non-blocking descriptor until it has nothing more.
fn drain(fd: &OwnedFd) {
    // Room for many inotify events (16 bytes each plus the name).
    let mut buf = [0u8; 4096];
    while matches!(rustix::io::read(fd, &mut buf), Ok(n) if n > 0) {}
}

/// Like [`wait_for`], but first looks every [`EARLY_NAP`] for up to `early`
/// before it sets up the watch. For waits that are usually short, such as
/// `wrk WS PROMPT | flw WS -w` on a small job: closing an inotify
/// descriptor that held watches waits for a kernel grace period (SRCU, in
/// fsnotify's mark reaper), which took 5 to 25 ms in about half of the
/// closes here, longer than the rest of such a wait. A job that finishes
/// within `early` is seen about as soon and never pays it; one look is a
/// few `stat`s.
pub fn wait_for_polling_first<T>(
    dirs: &[&Path],
    poll: Duration,
    deadline: Option<Instant>,
    early: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let until = Instant::now() + early;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return None;
        }
        if now >= until {
            return wait_for(dirs, poll, deadline, check);
        }
        let mut nap = EARLY_NAP.min(until - now);
        if let Some(d) = deadline {
            nap = nap.min(d - now);
        }
        std::thread::sleep(nap);
    }
}

/// The interval of [`wait_for_polling_first`]'s early looks.
const EARLY_NAP: Duration = Duration::from_millis(2);

/// Polls `check` until it returns `Some`, waking on events in `dirs` (and
/// every `poll` where no event comes). Returns `None` at the deadline.
pub fn wait_for<T>(
    dirs: &[&Path],
    poll: Duration,
    deadline: Option<Instant>,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    // Watch first, then check: an event between the two is not lost.
    let waker = DirWaker::new(dirs, poll);
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

    const POLL: Duration = Duration::from_millis(crate::config::DEFAULT_WAIT_POLL_MS);

    /// Runs `act` on another thread 50 ms from now and checks that it wakes
    /// `waker` long before its poll interval.
    fn wakes_on(waker: &DirWaker, act: impl FnOnce() + Send + 'static) {
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            act();
        });
        let start = Instant::now();
        waker.wait(None);
        assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
        t.join().unwrap();
    }

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
    fn a_poke_from_another_thread_wakes_the_waiter_and_is_consumed() {
        let d = tempfile::tempdir().unwrap();
        for waker in [
            DirWaker::new(&[d.path()], Duration::from_secs(10)),
            DirWaker::polling(Duration::from_secs(10)),
        ] {
            let poker = waker.poker();
            wakes_on(&waker, move || poker.poke());
            // The poke was read: the next wait runs to its deadline.
            let start = Instant::now();
            waker.wait(Some(Instant::now() + Duration::from_millis(200)));
            assert!(
                start.elapsed() >= Duration::from_millis(150),
                "woke after {:?}",
                start.elapsed()
            );
        }
    }

    #[test]
    fn a_missing_directory_falls_back_to_polling_at_the_interval() {
        let d = tempfile::tempdir().unwrap();
        let waker = DirWaker::new(&[d.path(), &d.path().join("missing")], Duration::from_millis(100));
        assert!(!waker.watching());
        let start = Instant::now();
        waker.wait(None);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(90) && took < Duration::from_secs(5),
            "took {took:?}"
        );
    }

    #[test]
    fn a_file_written_in_a_watched_directory_wakes_a_waiter() {
        // flw -f watches the job directory for partial.txt growing.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("partial.txt");
        std::fs::write(&p, "a").unwrap();
        let waker = DirWaker::new(&[d.path()], Duration::from_secs(10));
        wakes_on(&waker, move || {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(p)
                .unwrap()
                .write_all(b"b")
                .unwrap();
        });
    }

    #[test]
    fn polling_first_sees_early_and_late_changes_and_honours_the_deadline() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        let looks = std::cell::Cell::new(0u32);
        // A change within the early phase is seen within a few ms of it.
        let q = p.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            std::fs::create_dir(q).unwrap();
            Instant::now()
        });
        let seen = wait_for_polling_first(&[d.path()], POLL, None, Duration::from_millis(500), || {
            looks.set(looks.get() + 1);
            p.exists().then(Instant::now)
        })
        .unwrap();
        let made = t.join().unwrap();
        assert!(seen.saturating_duration_since(made) < Duration::from_millis(200));
        assert!(looks.get() >= 3, "looked {} times", looks.get());
        // After the early phase, wait_for's watch (or its slow poll) sees it.
        std::fs::remove_dir(&p).unwrap();
        let q = p.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            std::fs::create_dir(q).unwrap();
        });
        let start = Instant::now();
        let r = wait_for_polling_first(
            &[d.path()],
            POLL,
            Some(start + Duration::from_secs(8)),
            Duration::from_millis(20),
            || p.exists().then_some(()),
        );
        assert_eq!(r, Some(()));
        assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
        t.join().unwrap();
        // Nothing changes: None at the deadline, inside the early phase too.
        let start = Instant::now();
        let r: Option<()> = wait_for_polling_first(
            &[d.path()],
            POLL,
            Some(start + Duration::from_millis(50)),
            Duration::from_secs(1),
            || None,
        );
        assert_eq!(r, None);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(50) && took < Duration::from_millis(900),
            "took {took:?}"
        );
    }

    #[test]
    fn wakes_on_a_new_entry_long_before_the_poll_interval() {
        let d = tempfile::tempdir().unwrap();
        let waker = DirWaker::new(&[d.path()], Duration::from_secs(10));
        assert!(waker.watching());
        let p = d.path().join("x");
        wakes_on(&waker, move || std::fs::create_dir(p).unwrap());
    }
}
