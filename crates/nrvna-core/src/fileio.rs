//! Durable, crash-consistent writes: write-then-rename and directory fsync,
//! with the two settings that shape them carried as a value: whether to
//! fsync at all, and where to keep spare files ([`crate::spare`]).
//!
//! Every file in a job is written as `NAME.tmp` and renamed to `NAME`, so a
//! reader never sees half a file (maildir's delivery discipline). A
//! [`crate::Workspace`] holds the `FileIo` its settings call for; code that
//! writes into a workspace takes it from there.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use crate::fsio::{clear_entry, create_new};
use crate::spare::Spares;

/// How files are written: fsync or not, and the spare pool (if any).
/// Cheap to clone; clones share the spares.
#[derive(Clone, Debug)]
pub struct FileIo {
    fsync: bool,
    spares: Option<Arc<Spares>>,
}

impl Default for FileIo {
    /// Durable (fsync on), no spares.
    fn default() -> FileIo {
        FileIo::new(true)
    }
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

impl FileIo {
    /// Writes that fsync (`fsync`: true) or not, without spares.
    pub fn new(fsync: bool) -> FileIo {
        FileIo { fsync, spares: None }
    }

    /// The same, writing into and retiring to `spares`.
    pub fn with_spares(self, spares: Arc<Spares>) -> FileIo {
        FileIo {
            spares: Some(spares),
            ..self
        }
    }

    /// The same writes (same spares), fsyncing or not.
    pub fn with_fsync(self, fsync: bool) -> FileIo {
        FileIo { fsync, ..self }
    }

    /// Whether writes and transitions fsync.
    pub fn fsync(&self) -> bool {
        self.fsync
    }

    /// The spare pool in use, if any.
    pub fn spares(&self) -> Option<&Spares> {
        self.spares.as_deref()
    }

    /// fsyncs a directory so that renames and creations inside it are durable.
    pub fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if !self.fsync {
            return Ok(());
        }
        File::open(dir)?.sync_all()
    }

    /// Writes `data` to `dir/name` atomically: `name.tmp` (create_new),
    /// fsync, rename to `name`. The directory is not fsynced here: callers
    /// fsync it once after writing all files, before the transition that
    /// publishes them.
    pub fn write_atomic(&self, dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
        self.replace_file(dir, name, data, true)
    }

    /// Like [`FileIo::write_atomic`] but without fsync: for files that are
    /// rewritten often and worthless after a crash (progress records).
    pub fn write_atomic_volatile(&self, dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
        self.replace_file(dir, name, data, false)
    }

    fn replace_file(&self, dir: &Path, name: &str, data: &[u8], durable: bool) -> io::Result<()> {
        let tmp_name = format!("{name}.tmp");
        let tmp = dir.join(&tmp_name);
        let dst = dir.join(name);
        // Created with O_EXCL first: a leftover from a crashed writer (or
        // anything planted under that name: a FIFO, a directory) is ours to
        // replace, but looking for one before every write costs a lookup per
        // file for a case that almost never happens.
        let spares = self.spares();
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
        if durable && self.fsync {
            f.sync_all()?;
        }
        drop(f);
        // With spares, the file replaced is exchanged out and kept, not
        // freed; where nothing was there (or the filesystem cannot
        // exchange), a rename.
        if let Some(s) = spares {
            if s.exchange(dir, &tmp_name, name).is_ok() {
                guard.armed = false;
                return Ok(());
            }
        }
        // rename(2) replaces a file or a symlink atomically; only a
        // directory planted under the name stops it, and is removed first.
        if let Err(e) = fs::rename(&tmp, &dst) {
            if !matches!(
                rustix::io::Errno::from_io_error(&e),
                Some(rustix::io::Errno::ISDIR | rustix::io::Errno::NOTEMPTY | rustix::io::Errno::EXIST)
            ) {
                return Err(e);
            }
            clear_entry(dir, name)?;
            fs::rename(&tmp, &dst)?;
        }
        guard.armed = false;
        Ok(())
    }

    /// Removes a file the writer is done with, like [`clear_entry`]; with
    /// spares a plain file of ours is kept as a spare instead of freed.
    pub fn retire(&self, dir: &Path, name: &str) -> io::Result<()> {
        match self.spares() {
            Some(s) => s.retire(dir, name),
            None => clear_entry(dir, name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsio::mkfifo;

    #[test]
    fn write_atomic_never_opens_what_was_planted_under_its_names() {
        let io = FileIo::default();
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        mkfifo(&p.join("a.txt.tmp"));
        fs::create_dir_all(p.join("b.txt.tmp/deep")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", p.join("c.txt")).unwrap();
        io.write_atomic(p, "a.txt", b"a").unwrap();
        io.write_atomic(p, "b.txt", b"b").unwrap();
        io.write_atomic(p, "c.txt", b"c").unwrap();
        assert_eq!(fs::read(p.join("a.txt")).unwrap(), b"a");
        assert_eq!(fs::read(p.join("b.txt")).unwrap(), b"b");
        assert!(fs::symlink_metadata(p.join("c.txt")).unwrap().file_type().is_file());
        // A FIFO planted under a name create_new would open: refused, not blocked on.
        mkfifo(&p.join("a.txt.tmp"));
        assert!(create_new(p, "a.txt.tmp").is_err());
        clear_entry(p, "a.txt.tmp").unwrap();
        assert!(create_new(p, "a.txt.tmp").is_ok());
    }

    #[test]
    fn write_atomic_leaves_no_tmp_and_replaces() {
        for io in [FileIo::new(true), FileIo::new(false)] {
            let d = tempfile::tempdir().unwrap();
            io.write_atomic(d.path(), "a.txt", b"one").unwrap();
            io.write_atomic(d.path(), "a.txt", b"two").unwrap();
            assert_eq!(fs::read(d.path().join("a.txt")).unwrap(), b"two");
            assert!(!d.path().join("a.txt.tmp").exists());
        }
    }

    #[test]
    fn two_writers_with_different_settings_live_in_one_process() {
        let d = tempfile::tempdir().unwrap();
        let spares = Arc::new(Spares::open(d.path().join("spare"), std::time::Duration::ZERO).unwrap());
        let with = FileIo::new(false).with_spares(spares.clone());
        let without = FileIo::new(true);
        let p = d.path();
        with.write_atomic(p, "a", b"1").unwrap();
        with.write_atomic(p, "a", b"2").unwrap();
        // The replaced file was kept as a spare, not freed.
        assert_eq!(spares.len(), 1);
        without.write_atomic(p, "b", b"1").unwrap();
        without.write_atomic(p, "b", b"2").unwrap();
        assert_eq!(spares.len(), 1);
        without.retire(p, "b").unwrap();
        assert_eq!(spares.len(), 1);
        with.retire(p, "a").unwrap();
        assert_eq!(spares.len(), 2);
        assert!(!with.fsync() && without.fsync());
    }
}
