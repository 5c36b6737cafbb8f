//! File primitives that never follow a symlink or block on a FIFO:
//! creating a file only where nothing is, removing whatever a name holds,
//! and size-limited reads of regular files. The durable writes built on
//! them (write-then-rename, directory fsync) are [`crate::fileio`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Removes whatever is at `dir/name` without following it: a file, a
/// symlink, a FIFO or a whole directory. For names the caller owns in a job
/// directory (a job may arrive holding anything under them).
pub fn clear_entry(dir: &Path, name: &str) -> io::Result<()> {
    let p = dir.join(name);
    let removed = match fs::symlink_metadata(&p) {
        Ok(m) if m.file_type().is_dir() => fs::remove_dir_all(&p),
        Ok(_) => fs::remove_file(&p),
        Err(e) => Err(e),
    };
    match removed {
        // Gone already, or renamed away by its writer between the look and
        // the removal: either way nothing is left under the name.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Creates `dir/name` for writing, never opening anything already there
/// (O_CREAT|O_EXCL|O_NOFOLLOW|O_NONBLOCK): a FIFO, symlink or file planted
/// under that name makes this fail instead of blocking or following it.
pub fn create_new(dir: &Path, name: &str) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(dir.join(name))
}

/// Why a job file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("is missing")]
    Missing,
    #[error("is a symlink; job files must be regular files inside the job directory")]
    Symlink,
    #[error("is not a regular file (a directory, FIFO or device)")]
    NotRegular,
    #[error("is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Io(io::Error),
}

impl From<ReadError> for io::Error {
    fn from(e: ReadError) -> io::Error {
        match e {
            ReadError::Io(e) => e,
            ReadError::Missing => io::Error::new(io::ErrorKind::NotFound, "is missing"),
            other => io::Error::other(other.to_string()),
        }
    }
}

/// Opens a regular file for reading without following a symlink
/// (O_NOFOLLOW) and without blocking on a FIFO (O_NONBLOCK). Every reader of
/// job files goes through here.
pub fn open_regular(path: &Path) -> Result<File, ReadError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(ReadError::Symlink),
        Err(e) => return Err(ReadError::Io(e)),
    };
    if !f.metadata().map_err(ReadError::Io)?.file_type().is_file() {
        return Err(ReadError::NotRegular);
    }
    Ok(f)
}

/// Reads a regular file through [`open_regular`], refusing anything over
/// `limit` bytes.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let mut f = open_regular(path)?;
    let len = f.metadata().map_err(ReadError::Io)?.len();
    if len > limit {
        return Err(ReadError::TooLarge { limit });
    }
    let mut buf = Vec::with_capacity(len as usize);
    // Read at most limit+1 so a file that grows under us is still caught.
    (&mut f).take(limit + 1).read_to_end(&mut buf).map_err(ReadError::Io)?;
    if buf.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(buf)
}

/// Like [`read_limited`], but a missing file is `Ok(None)`.
pub fn read_optional(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, ReadError> {
    match read_limited(path, limit) {
        Ok(b) => Ok(Some(b)),
        Err(ReadError::Missing) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes a FIFO at `p`, for tests of what a planted FIFO does.
/// Opens (creating it) the lock file at `path` and takes an exclusive
/// `flock` on it, waiting for it when `wait`; `Ok(None)` when another open
/// file holds it and `wait` is false. The lock lasts as long as the file
/// (the kernel drops it when the process dies).
pub fn lock_file(path: &Path, wait: bool) -> io::Result<Option<File>> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let op = if wait {
        rustix::fs::FlockOperation::LockExclusive
    } else {
        rustix::fs::FlockOperation::NonBlockingLockExclusive
    };
    Ok(flock(&f, op)?.then_some(f))
}

/// `flock(2)` on an open file, retried when a signal interrupts it;
/// `Ok(false)` when a non-blocking lock is held by another open file.
pub fn flock(f: &File, op: rustix::fs::FlockOperation) -> io::Result<bool> {
    loop {
        match rustix::fs::flock(f, op) {
            Ok(()) => return Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
pub(crate) fn mkfifo(p: &Path) {
    use rustix::fs::{mknodat, FileType, Mode, CWD};
    mknodat(CWD, p, FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_limited_refuses_symlinks_fifos_dirs_and_big_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::write(p.join("ok"), b"hello").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", p.join("link")).unwrap();
        fs::create_dir(p.join("dir")).unwrap();
        mkfifo(&p.join("fifo"));
        assert_eq!(read_limited(&p.join("ok"), 5).unwrap(), b"hello");
        assert!(matches!(
            read_limited(&p.join("ok"), 4),
            Err(ReadError::TooLarge { .. })
        ));
        assert!(matches!(read_limited(&p.join("link"), 100), Err(ReadError::Symlink)));
        assert!(matches!(read_limited(&p.join("fifo"), 100), Err(ReadError::NotRegular)));
        assert!(matches!(read_limited(&p.join("dir"), 100), Err(ReadError::NotRegular)));
        assert!(matches!(read_limited(&p.join("none"), 100), Err(ReadError::Missing)));
    }
}
