//! Which lines of which batch have finished, kept in memory so that a
//! batch is described without reading any job: built from the names in
//! output/ and failed/ (a name `<J>_<line>` is line `line` of batch
//! `batch_<J>`), kept current by an inotify watch on those two directories,
//! and rebuilt when the watch overflows and now and then as a safety net.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use notify::{RecursiveMode, Watcher};
use nrvna_core::batch::split_line_job_id;
use nrvna_core::{State, Workspace};

/// The finished lines of one batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lines {
    pub done: HashSet<usize>,
    pub failed: HashSet<usize>,
}

type Map = HashMap<String, Lines>;

/// The finished lines of every batch, by the batch's job id `J`.
pub struct LineIndex {
    ws: Workspace,
    map: Arc<Mutex<Map>>,
    /// Set when events were lost: the next [`LineIndex::refresh`] rebuilds.
    stale: Arc<AtomicBool>,
    _watcher: Option<notify::RecommendedWatcher>,
}

fn lock(m: &Mutex<Map>) -> MutexGuard<'_, Map> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds or removes one entry of output/ or failed/ as it is now on disk.
fn apply(map: &Mutex<Map>, path: &Path, done: bool) {
    let Some((j, line)) = path.file_name().and_then(|n| n.to_str()).and_then(split_line_job_id) else {
        return;
    };
    let here = std::fs::symlink_metadata(path).is_ok();
    let mut m = lock(map);
    if here {
        let lines = m.entry(j.to_owned()).or_default();
        if done { &mut lines.done } else { &mut lines.failed }.insert(line);
    } else if let Some(lines) = m.get_mut(j) {
        if done { &mut lines.done } else { &mut lines.failed }.remove(&line);
    }
}

impl LineIndex {
    /// Watches output/ and failed/, then lists them (in this order, so
    /// that nothing finishing in between is missed).
    pub fn new(ws: &Workspace) -> LineIndex {
        let map = Arc::new(Mutex::new(Map::new()));
        let stale = Arc::new(AtomicBool::new(true));
        let (done_dir, failed_dir) = (ws.dir(State::Done), ws.dir(State::Failed));
        let (m, s) = (map.clone(), stale.clone());
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(e) if e.need_rescan() => s.store(true, Ordering::Relaxed),
            Ok(e) if matches!(e.kind, notify::EventKind::Access(_)) => {}
            Ok(e) => {
                for p in &e.paths {
                    match p.parent() {
                        Some(d) if d == done_dir => apply(&m, p, true),
                        Some(d) if d == failed_dir => apply(&m, p, false),
                        _ => {}
                    }
                }
            }
            Err(_) => s.store(true, Ordering::Relaxed),
        })
        .ok()
        .and_then(|mut w| {
            for st in [State::Done, State::Failed] {
                if let Err(e) = w.watch(&ws.dir(st), RecursiveMode::NonRecursive) {
                    tracing::warn!(
                        "cannot watch {} for finished batch jobs: {e}; batch counts are refreshed every few seconds",
                        st.dir()
                    );
                    return None;
                }
            }
            Some(w)
        });
        let index = LineIndex {
            ws: ws.clone(),
            map,
            stale,
            _watcher: watcher,
        };
        index.refresh();
        index
    }

    /// Whether it is kept current by the watch (else it must be rebuilt
    /// often).
    pub fn watched(&self) -> bool {
        self._watcher.is_some()
    }

    /// Rebuilds from the directories when events were lost.
    pub fn refresh(&self) {
        if self.stale.swap(false, Ordering::Relaxed) {
            self.rebuild();
        }
    }

    /// Lists output/ and failed/ (names only) and replaces the index.
    pub fn rebuild(&self) {
        let mut fresh = Map::new();
        for (st, done) in [(State::Done, true), (State::Failed, false)] {
            let scanned = self.ws.scan(
                st,
                |id| {
                    if let Some((j, line)) = split_line_job_id(id.as_str()) {
                        let lines = fresh.entry(j.to_owned()).or_default();
                        if done { &mut lines.done } else { &mut lines.failed }.insert(line);
                    }
                },
                |_| {},
            );
            if let Err(e) = scanned {
                tracing::warn!("listing {} for batch counts: {e}", st.dir());
                self.stale.store(true, Ordering::Relaxed);
            }
        }
        *lock(&self.map) = fresh;
    }

    /// How many lines of batch `j` are done and failed.
    pub fn counts(&self, j: &str) -> (u64, u64) {
        lock(&self.map)
            .get(j)
            .map_or((0, 0), |l| (l.done.len() as u64, l.failed.len() as u64))
    }

    /// The finished lines of batch `j`.
    pub fn lines(&self, j: &str) -> Lines {
        lock(&self.map).get(j).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_lines_are_counted_by_name_and_followed_as_they_move() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        let mk = |st: State, name: &str| std::fs::create_dir(ws.dir(st).join(name)).unwrap();
        mk(State::Done, "1_2_3_000001");
        mk(State::Failed, "1_2_3_000002");
        // Not a batch line: an ordinary job, another batch's line.
        mk(State::Done, "1_2_3");
        mk(State::Done, "1_2_4_000001");
        let index = LineIndex::new(&ws);
        assert_eq!(index.counts("1_2_3"), (1, 1));
        assert_eq!(index.counts("1_2_4"), (1, 0));
        // Events: one more done; the failed one removed.
        mk(State::Done, "1_2_3_000007");
        std::fs::remove_dir(ws.dir(State::Failed).join("1_2_3_000002")).unwrap();
        let followed = (0..250).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            index.counts("1_2_3") == (2, 0)
        });
        assert!(followed || !index.watched(), "{:?}", index.lines("1_2_3"));
        index.rebuild();
        let l = index.lines("1_2_3");
        assert_eq!(l.done, HashSet::from([1, 7]));
        assert!(l.failed.is_empty());
    }
}
