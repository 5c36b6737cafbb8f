//! The daemon's lifecycle files: `.nrvnad.lock` (flock), `.nrvnad.pid`,
//! `.nrvnad.ready` and `.nrvnad.info`, and reading a daemon's status from them.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use crate::fsio::write_atomic;
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

fn flock(f: &File, op: libc::c_int) -> io::Result<bool> {
    loop {
        if unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

impl DaemonLock {
    /// Takes the workspace lock, retrying for `patience` (a status probe may
    /// hold a shared lock for an instant). `Ok(None)` when another daemon holds it.
    pub fn acquire(ws: &Workspace, patience: Duration) -> io::Result<Option<DaemonLock>> {
        let f = open_lock_file(ws)?;
        let deadline = Instant::now() + patience;
        loop {
            if flock(&f, libc::LOCK_EX)? {
                return Ok(Some(DaemonLock { _file: f }));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes `.nrvnad.pid` (right after locking, as the contract says).
    pub fn write_pid(&self, ws: &Workspace) -> io::Result<()> {
        write_atomic(ws.root(), PID_FILE, format!("{}\n", std::process::id()).as_bytes())
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
    match flock(&f, libc::LOCK_SH) {
        Ok(true) => {
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
            false
        }
        Ok(false) => true,
        Err(_) => false,
    }
}

/// The pid in `.nrvnad.pid`, if readable.
pub fn read_pid(ws: &Workspace) -> Option<u32> {
    fs::read_to_string(ws.file(PID_FILE)).ok()?.trim().parse().ok()
}

/// The daemon's status from the lock and the ready file.
pub fn daemon_status(ws: &Workspace) -> DaemonStatus {
    if !lock_held(ws) {
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
        assert_eq!(
            daemon_status(&ws),
            DaemonStatus::Starting {
                pid: Some(std::process::id())
            }
        );
        assert!(DaemonLock::acquire(&ws, Duration::from_millis(50)).unwrap().is_none());
        fs::write(ws.file(READY_FILE), "x").unwrap();
        assert!(matches!(daemon_status(&ws), DaemonStatus::Ready { .. }));
        lock.clear_files(&ws);
        drop(lock);
        assert_eq!(daemon_status(&ws), DaemonStatus::NotRunning);
    }
}
