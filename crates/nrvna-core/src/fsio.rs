//! Crash-consistent file primitives: write-then-rename, directory fsync,
//! and reads that never follow a symlink or block on a FIFO.
//!
//! Every file in a job is written as `NAME.tmp` and renamed to `NAME`, so a
//! reader never sees half a file (maildir's delivery discipline).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Whether transitions fsync file contents and parent directories.
/// On by default; `NRVNA_FSYNC=0` turns it off (for measuring its cost, or
/// on scratch workspaces where durability does not matter).
pub fn fsync_enabled() -> bool {
    crate::config::settings().fsync
}

/// fsyncs a directory so that renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    if !fsync_enabled() {
        return Ok(());
    }
    File::open(dir)?.sync_all()
}

/// Removes the temp file unless disarmed: no `.tmp` debris after an error.
struct TmpGuard<'a> {
    path: &'a Path,
    armed: bool,
}

impl Drop for TmpGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(self.path);
        }
    }
}

/// Writes `data` to `dir/name` atomically: `name.tmp` (create_new), fsync,
/// rename to `name`. The directory is not fsynced here: callers fsync it once
/// after writing all files, before the transition that publishes them.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    replace_file(dir, name, data, true)
}

/// Like [`write_atomic`] but without fsync: for files that are rewritten
/// often and worthless after a crash (progress records).
pub fn write_atomic_volatile(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    replace_file(dir, name, data, false)
}

fn replace_file(dir: &Path, name: &str, data: &[u8], durable: bool) -> io::Result<()> {
    let tmp_name = format!("{name}.tmp");
    let tmp = dir.join(&tmp_name);
    let dst = dir.join(name);
    // Created with O_EXCL first: a leftover from a crashed writer (or
    // anything planted under that name: a FIFO, a directory) is ours to
    // replace, but looking for one before every write costs a lookup per
    // file for a case that almost never happens.
    let spares = crate::spare::global();
    let taken = spares.and_then(|s| s.take(dir, &tmp_name));
    let mut f = match taken {
        Some(f) => f,
        None => match create_new(dir, &tmp_name) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                clear_entry(dir, &tmp_name)?;
                create_new(dir, &tmp_name)?
            }
            other => other?,
        },
    };
    let mut guard = TmpGuard {
        path: &tmp,
        armed: true,
    };
    f.write_all(data)?;
    if durable && fsync_enabled() {
        f.sync_all()?;
    }
    drop(f);
    // With spares, the file replaced is exchanged out and kept, not freed;
    // where nothing was there (or the filesystem cannot exchange), a rename.
    if let Some(s) = spares {
        if s.exchange(dir, &tmp_name, name).is_ok() {
            guard.armed = false;
            return Ok(());
        }
    }
    // rename(2) replaces a file or a symlink atomically; only a directory
    // planted under the name stops it, and is removed first.
    if let Err(e) = fs::rename(&tmp, &dst) {
        if !matches!(
            e.raw_os_error(),
            Some(libc::EISDIR) | Some(libc::ENOTEMPTY) | Some(libc::EEXIST)
        ) {
            return Err(e);
        }
        clear_entry(dir, name)?;
        fs::rename(&tmp, &dst)?;
    }
    guard.armed = false;
    Ok(())
}

/// Removes a file the daemon is done with, like [`clear_entry`]; with
/// spares enabled ([`crate::spare::enable`]) a plain file of ours is kept as
/// a spare instead of freed.
pub fn retire(dir: &Path, name: &str) -> io::Result<()> {
    match crate::spare::global() {
        Some(s) => s.retire(dir, name),
        None => clear_entry(dir, name),
    }
}

/// Removes whatever is at `dir/name` without following it: a file, a
/// symlink, a FIFO or a whole directory. For names the caller owns in a job
/// directory (a job may arrive holding anything under them).
pub fn clear_entry(dir: &Path, name: &str) -> io::Result<()> {
    let p = dir.join(name);
    match fs::symlink_metadata(&p) {
        Ok(m) if m.file_type().is_dir() => fs::remove_dir_all(&p),
        Ok(_) => fs::remove_file(&p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
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

/// ISO-8601 UTC with microseconds and `Z`, e.g. `2026-11-26T16:54:26.123456Z`
/// (the contract's time format).
pub fn iso8601_utc(t: std::time::SystemTime) -> String {
    utc(t).strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in UTC, for log lines.
pub fn log_timestamp(t: std::time::SystemTime) -> String {
    utc(t).strftime("%Y-%m-%d %H:%M:%S.%3f").to_string()
}

/// Parses an ISO-8601 timestamp with an offset (the contract's `Z` form
/// included) into microseconds since the epoch.
pub fn parse_iso8601_micros(s: &str) -> Option<i64> {
    s.trim().parse::<jiff::Timestamp>().ok().map(|t| t.as_microsecond())
}

/// The instant as a jiff timestamp (formats in UTC).
fn utc(t: std::time::SystemTime) -> jiff::Timestamp {
    jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn iso8601_formats_known_instants() {
        let t = UNIX_EPOCH + Duration::from_micros(1_764_164_852_123_456);
        assert_eq!(iso8601_utc(t), "2025-11-26T13:47:32.123456Z");
        assert_eq!(iso8601_utc(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&iso8601_utc(leap)[..10], "2000-02-29");
        assert_eq!(log_timestamp(t), "2025-11-26 13:47:32.123");
        assert_eq!(
            parse_iso8601_micros("2025-11-26T13:47:32.123456Z"),
            Some(1_764_164_852_123_456)
        );
        assert_eq!(parse_iso8601_micros("yesterday"), None);
    }

    #[test]
    fn write_atomic_never_opens_what_was_planted_under_its_names() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let fifo = std::ffi::CString::new(p.join("a.txt.tmp").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        fs::create_dir_all(p.join("b.txt.tmp/deep")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", p.join("c.txt")).unwrap();
        write_atomic(p, "a.txt", b"a").unwrap();
        write_atomic(p, "b.txt", b"b").unwrap();
        write_atomic(p, "c.txt", b"c").unwrap();
        assert_eq!(fs::read(p.join("a.txt")).unwrap(), b"a");
        assert_eq!(fs::read(p.join("b.txt")).unwrap(), b"b");
        assert!(fs::symlink_metadata(p.join("c.txt")).unwrap().file_type().is_file());
        // A FIFO planted under a name create_new would open: refused, not blocked on.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        assert!(create_new(p, "a.txt.tmp").is_err());
        clear_entry(p, "a.txt.tmp").unwrap();
        assert!(create_new(p, "a.txt.tmp").is_ok());
    }

    #[test]
    fn write_atomic_leaves_no_tmp_and_replaces() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(d.path(), "a.txt", b"one").unwrap();
        write_atomic(d.path(), "a.txt", b"two").unwrap();
        assert_eq!(fs::read(d.path().join("a.txt")).unwrap(), b"two");
        assert!(!d.path().join("a.txt.tmp").exists());
    }

    #[test]
    fn read_limited_refuses_symlinks_fifos_dirs_and_big_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::write(p.join("ok"), b"hello").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", p.join("link")).unwrap();
        fs::create_dir(p.join("dir")).unwrap();
        let fifo = std::ffi::CString::new(p.join("fifo").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
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
