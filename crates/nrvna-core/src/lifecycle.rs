//! The daemon's lifecycle files: `.nrvnad.lock` (flock, holding the pid),
//! `.nrvnad.pid`, `.nrvnad.ready` and `.nrvnad.info`, and reading a daemon's
//! status from them. Older C++ daemons take no flock and leave only
//! `.nrvnad.pid`, so a live nrvnad named there counts as an owner too.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use crate::fsio::flock;
use crate::workspace::{Workspace, INFO_FILE, LOCK_FILE, PID_FILE, READY_FILE};

/// The exclusive lock on a workspace; released when dropped (or when the
/// process dies, which is why the file's presence says nothing about liveness).
#[derive(Debug)]
pub struct DaemonLock {
    _file: File,
}

/// What the lifecycle files say about a workspace's daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaemonStatus {
    /// Nobody holds the lock.
    NotRunning,
    /// The lock is held but the model is not loaded yet.
    Starting { pid: Option<u32> },
    /// The lock is held and `.nrvnad.ready` exists.
    Ready { pid: Option<u32> },
}

fn open_lock_file(ws: &Workspace) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(ws.file(LOCK_FILE))
}

impl DaemonLock {
    /// Takes the workspace lock, retrying for `patience` (a status probe may
    /// hold a shared lock for an instant). `Ok(None)` when another daemon holds it.
    pub fn acquire(ws: &Workspace, patience: Duration) -> io::Result<Option<DaemonLock>> {
        DaemonLock::take(ws, patience, rustix::fs::FlockOperation::NonBlockingLockExclusive)
    }

    fn take(ws: &Workspace, patience: Duration, op: rustix::fs::FlockOperation) -> io::Result<Option<DaemonLock>> {
        let f = open_lock_file(ws)?;
        let deadline = Instant::now() + patience;
        loop {
            if flock(&f, op)? {
                return Ok(Some(DaemonLock { _file: f }));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A shared member's hold: a shared flock, which every member can take
    /// at once and which keeps an exclusive daemon out (and is refused
    /// while one holds the lock). `Ok(None)` when an exclusive daemon does.
    pub fn acquire_shared(ws: &Workspace, patience: Duration) -> io::Result<Option<DaemonLock>> {
        DaemonLock::take(ws, patience, rustix::fs::FlockOperation::NonBlockingLockShared)
    }

    /// Writes the pid into the locked file itself (the C++ `nrvnad stop`
    /// reads it there) and into `.nrvnad.pid`, right after locking.
    pub fn write_pid(&self, ws: &Workspace) -> io::Result<()> {
        let pid = format!("{}\n", std::process::id());
        // In place: the lock belongs to this inode, so it cannot be replaced.
        self._file.set_len(0)?;
        self._file.write_all_at(pid.as_bytes(), 0)?;
        ws.io().write_atomic(ws.root(), PID_FILE, pid.as_bytes())
    }

    /// Writes `.nrvnad.info` as one line of compact JSON (C++ readers find
    /// keys by the literal `"key":"`).
    pub fn write_info(&self, ws: &Workspace, info: &serde_json::Value) -> io::Result<()> {
        let mut line = serde_json::to_vec(info).map_err(io::Error::other)?;
        line.push(b'\n');
        ws.io().write_atomic(ws.root(), INFO_FILE, &line)
    }

    /// Removes the files that describe a live daemon (on clean exit).
    pub fn clear_files(&self, ws: &Workspace) {
        for f in [READY_FILE, INFO_FILE, PID_FILE] {
            let _ = fs::remove_file(ws.file(f));
        }
    }
}

/// Whether some process holds the workspace lock, probed with a shared,
/// non-blocking flock that is released at once.
pub fn lock_held(ws: &Workspace) -> bool {
    let Ok(f) = OpenOptions::new().read(true).open(ws.file(LOCK_FILE)) else {
        return false;
    };
    match flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(true) => {
            let _ = rustix::fs::flock(&f, rustix::fs::FlockOperation::Unlock);
            false
        }
        Ok(false) => true,
        Err(_) => false,
    }
}

fn pid_in(ws: &Workspace, file: &str) -> Option<u32> {
    let b = crate::fsio::read_limited(&ws.file(file), 64).ok()?;
    String::from_utf8(b).ok()?.trim().parse().ok().filter(|&p| p > 0)
}

/// The daemon's pid: from `.nrvnad.lock`, where the lock holder of either
/// implementation writes it, else from `.nrvnad.pid`.
pub fn read_pid(ws: &Workspace) -> Option<u32> {
    pid_in(ws, LOCK_FILE).or_else(|| pid_in(ws, PID_FILE))
}

/// Whether `pid` is a running (not zombie) process called `nrvnad`
/// (either implementation).
pub fn is_nrvnad(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "PID (COMM) STATE ...": the name may hold spaces and parentheses.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let state = stat[close + 1..].split_whitespace().next().unwrap_or("");
    &stat[open + 1..close] == "nrvnad" && !matches!(state, "Z" | "X" | "x")
}

/// A live daemon that owns the workspace without the flock: the pid in
/// `.nrvnad.pid` is a running nrvnad other than this process (an older C++
/// daemon takes no flock). A stale pid file (process gone, or the pid reused
/// by another program) names nobody.
pub fn unlocked_owner(ws: &Workspace) -> Option<u32> {
    let pid = pid_in(ws, PID_FILE)?;
    (pid != std::process::id() && is_nrvnad(pid)).then_some(pid)
}

/// The daemon's status from the lock (or a live C++ daemon's pid file) and
/// the ready file.
pub fn daemon_status(ws: &Workspace) -> DaemonStatus {
    if !lock_held(ws) && unlocked_owner(ws).is_none() {
        return DaemonStatus::NotRunning;
    }
    let pid = read_pid(ws);
    if ws.file(READY_FILE).exists() {
        DaemonStatus::Ready { pid }
    } else {
        DaemonStatus::Starting { pid }
    }
}

/// `.nrvnad.info` as JSON, if present and valid.
pub fn read_info(ws: &Workspace) -> Option<serde_json::Value> {
    let b = crate::fsio::read_limited(&ws.file(INFO_FILE), 1 << 20).ok()?;
    serde_json::from_slice(&b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_and_probe_does_not_steal_it() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        assert_eq!(daemon_status(&ws), DaemonStatus::NotRunning);
        let lock = DaemonLock::acquire(&ws, Duration::ZERO).unwrap().expect("free lock");
        lock.write_pid(&ws).unwrap();
        assert!(lock_held(&ws));
        let pid = format!("{}\n", std::process::id());
        assert_eq!(
            fs::read_to_string(ws.file(LOCK_FILE)).unwrap(),
            pid,
            "the lock file holds the pid"
        );
        assert_eq!(fs::read_to_string(ws.file(PID_FILE)).unwrap(), pid);
        assert_eq!(
            daemon_status(&ws),
            DaemonStatus::Starting {
                pid: Some(std::process::id())
            }
        );
        assert!(DaemonLock::acquire(&ws, Duration::from_millis(50)).unwrap().is_none());
        fs::write(ws.file(READY_FILE), "x").unwrap();
        assert!(matches!(daemon_status(&ws), DaemonStatus::Ready { .. }));
        lock.write_info(
            &ws,
            &serde_json::json!({"pid": 1, "model": "/m/a b.gguf", "workers": 2}),
        )
        .unwrap();
        let info = fs::read_to_string(ws.file(INFO_FILE)).unwrap();
        assert_eq!(info.lines().count(), 1, "one line: {info:?}");
        assert!(
            info.contains("\"model\":\"/m/a b.gguf\"") && info.contains("\"pid\":1"),
            "{info}"
        );
        assert!(!info.contains(": ") && !info.contains(", "), "compact: {info}");
        lock.clear_files(&ws);
        drop(lock);
        assert_eq!(daemon_status(&ws), DaemonStatus::NotRunning);
    }

    #[test]
    fn a_pid_file_naming_a_live_process_that_is_not_nrvnad_is_stale() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        // pid 1 lives but is no nrvnad; this process is excluded by name.
        fs::write(ws.file(PID_FILE), "1\n").unwrap();
        assert_eq!(unlocked_owner(&ws), None);
        assert_eq!(daemon_status(&ws), DaemonStatus::NotRunning);
        fs::write(ws.file(PID_FILE), format!("{}\n", std::process::id())).unwrap();
        assert_eq!(unlocked_owner(&ws), None);
    }
}
