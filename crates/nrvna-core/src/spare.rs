//! Spare files: the daemon keeps the inodes it would free and writes its
//! next files into them.
//!
//! Every finished job used to free one inode (the meta.json that its
//! rewrite replaced) and every streamed job two more (partial.txt and
//! progress.json). On ext4 without a journal a freed inode is not reused for
//! a minute or more (up to six while its inode-table block is dirty), and
//! every new file scans past each recently freed inode near it
//! (`find_inode_bit`, `recently_deleted`): in a 10,000-job queue run that
//! scan was three quarters of the daemon's CPU. With spares the daemon frees
//! nothing per job:
//!
//! - a file it replaces (meta.json) is swapped with the new one in one
//!   `renameat2(RENAME_EXCHANGE)`, atomic for readers as a rename over it
//!   is, and the old inode moves into `WS/.nrvna-spare/`;
//! - a scratch file it removes at finish (partial.txt, progress.json, the
//!   claim record) moves there too;
//! - a file it writes (`NAME.tmp`) is a spare moved back out, truncated,
//!   when one has rested [`REST`]; otherwise a new file.
//!
//! Only plain regular files of the daemon's own user with one link are
//! kept; anything else is removed as before. A spare rests before reuse so
//! that a reader still holding the old file open (a reader opens, reads and
//! closes a small file in microseconds) never sees another job's bytes. The
//! directory holds at most [`CAP`] spares; past that, files are freed.
//! Its contents are scratch: a daemon adopts what it finds there at start,
//! and removing the directory while no daemon runs loses nothing.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::fs::{renameat_with, RenameFlags, CWD};
use rustix::io::Errno;

/// The spare directory, at the workspace root.
pub const SPARE_DIR: &str = ".nrvna-spare";
/// The most spares kept; past that a retired file is freed.
pub const CAP: usize = 8192;
/// How long a spare rests before it is written again.
pub const REST: Duration = Duration::from_secs(2);

/// A directory of spare files and the names this process may take from it.
#[derive(Debug)]
pub struct Spares {
    dir: PathBuf,
    /// Oldest first, with the instant each was kept (`None`: adopted at
    /// start, rested already).
    names: Mutex<VecDeque<(Option<Instant>, OsString)>>,
    tag: String,
    next: AtomicU64,
    euid: u32,
    /// The permission bits a new file gets (0o644 less the umask).
    mode: u32,
    rest: Duration,
}

impl Spares {
    /// Opens (creating) the spare directory of the workspace at `ws_root`
    /// (`WS/.nrvna-spare/`), adopting what is there. Only the daemon keeps
    /// spares; it hands them to its workspace's `FileIo`.
    pub fn open_in(ws_root: &Path) -> io::Result<Spares> {
        Spares::open(ws_root.join(SPARE_DIR), REST)
    }

    /// Opens (creating) a spare directory and adopts its files, all usable
    /// at once (they rested while nobody ran).
    pub fn open(dir: PathBuf, rest: Duration) -> io::Result<Spares> {
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !fs::symlink_metadata(&dir)?.file_type().is_dir() {
                    return Err(io::Error::other(format!(
                        "{} is not a directory; remove it so the daemon can keep spare files there",
                        dir.display()
                    )));
                }
            }
            Err(e) => return Err(e),
        }
        let mut names = VecDeque::new();
        for e in fs::read_dir(&dir)? {
            let e = e?;
            if names.len() >= CAP {
                break;
            }
            names.push_back((None, e.file_name()));
        }
        let tag = format!(
            "{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        );
        Ok(Spares {
            dir,
            names: Mutex::new(names),
            tag,
            next: AtomicU64::new(0),
            euid: rustix::process::geteuid().as_raw(),
            mode: 0o644 & !umask(),
            rest,
        })
    }

    /// Spares held now (rested or not).
    pub fn len(&self) -> usize {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no spare is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The spare directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn pop_rested(&self) -> Option<OsString> {
        let mut q = self.names.lock().unwrap_or_else(|e| e.into_inner());
        match q.front() {
            Some((since, _)) if since.is_none_or(|t| t.elapsed() >= self.rest) => q.pop_front().map(|(_, n)| n),
            _ => None,
        }
    }

    fn push_front(&self, name: OsString) {
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_front((None, name));
    }

    /// Moves a rested spare to `dir/name` and opens it for writing,
    /// truncated; `None` when no spare has rested (or the one tried was not
    /// fit: then it is removed). Never replaces anything at `dir/name`.
    pub fn take(&self, dir: &Path, name: &str) -> Option<File> {
        let dst = dir.join(name);
        while let Some(spare) = self.pop_rested() {
            let src = self.dir.join(&spare);
            match renameat_with(CWD, &src, CWD, &dst, RenameFlags::NOREPLACE) {
                Ok(()) => {}
                // Taken by another daemon on this workspace, or removed.
                Err(Errno::NOENT) => continue,
                // Something sits under the name (a leftover): the caller
                // clears it; the spare stays for the next file.
                Err(_) => {
                    self.push_front(spare);
                    return None;
                }
            }
            match self.open_fit(&dst) {
                Some(f) => return Some(f),
                None => {
                    let _ = crate::fsio::clear_entry(dir, name);
                }
            }
        }
        None
    }

    /// Opens a taken spare: a regular file of ours with one link, never
    /// following or blocking; truncated, with a new file's permissions.
    fn open_fit(&self, path: &Path) -> Option<File> {
        let f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .ok()?;
        let m = f.metadata().ok()?;
        if !m.file_type().is_file() || m.nlink() != 1 || m.uid() != self.euid {
            return None;
        }
        if m.mode() & 0o7777 != self.mode {
            f.set_permissions(fs::Permissions::from_mode(self.mode)).ok()?;
        }
        Some(f)
    }

    /// Keeps `dir/name` as a spare when it is a plain regular file of ours
    /// with one link and the directory has room; returns whether it did.
    /// Otherwise the entry is left where it is.
    pub fn keep(&self, dir: &Path, name: &str) -> bool {
        let p = dir.join(name);
        fs::symlink_metadata(&p).is_ok_and(|m| self.keep_file(&p, &m))
    }

    /// Removes `dir/name` like [`crate::fsio::clear_entry`] (nothing there
    /// is fine), unless it can be kept as a spare; one lookup either way.
    pub fn retire(&self, dir: &Path, name: &str) -> io::Result<()> {
        let p = dir.join(name);
        match fs::symlink_metadata(&p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Ok(m) if self.keep_file(&p, &m) => Ok(()),
            _ => crate::fsio::clear_entry(dir, name),
        }
    }

    /// [`Spares::keep`] for an entry already looked up (`m`, not followed).
    fn keep_file(&self, p: &Path, m: &fs::Metadata) -> bool {
        if !m.file_type().is_file() || m.nlink() != 1 || m.uid() != self.euid || self.len() >= CAP {
            return false;
        }
        let spare = OsString::from(format!("{}-{}", self.tag, self.next.fetch_add(1, Ordering::Relaxed)));
        if fs::rename(p, self.dir.join(&spare)).is_err() {
            return false;
        }
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((Some(Instant::now()), spare));
        true
    }

    /// Replaces `dir/dst` by `dir/tmp` in one atomic exchange and keeps the
    /// old file as a spare (or removes whatever it was). Falls back to a
    /// plain rename where nothing was there or the filesystem cannot
    /// exchange. Returns `Err` only when `tmp` could not take `dst`'s place.
    pub fn exchange(&self, dir: &Path, tmp: &str, dst: &str) -> io::Result<()> {
        let (t, d) = (dir.join(tmp), dir.join(dst));
        match renameat_with(CWD, &t, CWD, &d, RenameFlags::EXCHANGE) {
            Ok(()) => {
                // `tmp` now names the old file (or whatever was planted).
                if !self.keep(dir, tmp) {
                    let _ = crate::fsio::clear_entry(dir, tmp);
                }
                Ok(())
            }
            // NOENT: nothing to replace; or a filesystem that cannot
            // exchange: the caller renames.
            Err(e) => Err(e.into()),
        }
    }
}

/// The process's umask, read without changing it (Linux 4.7+); 0o022 when
/// it cannot be read.
fn umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn spares(root: &Path, rest: Duration) -> Spares {
        Spares::open(root.join(SPARE_DIR), rest).unwrap()
    }

    fn ino(p: &Path) -> u64 {
        fs::symlink_metadata(p).unwrap().ino()
    }

    #[test]
    fn an_exchanged_file_is_kept_and_written_again_once_rested() {
        let d = tempfile::tempdir().unwrap();
        let s = spares(d.path(), Duration::ZERO);
        fs::write(d.path().join("meta.json"), b"old, longer than the new one").unwrap();
        let old = ino(&d.path().join("meta.json"));
        fs::write(d.path().join("meta.json.tmp"), b"new").unwrap();
        s.exchange(d.path(), "meta.json.tmp", "meta.json").unwrap();
        assert_eq!(fs::read(d.path().join("meta.json")).unwrap(), b"new");
        assert!(!d.path().join("meta.json.tmp").exists());
        assert_eq!(s.len(), 1);
        assert_eq!(fs::read_dir(s.dir()).unwrap().count(), 1);
        // The next file written is that inode, truncated.
        let mut f = s.take(d.path(), "result.txt.tmp").unwrap();
        f.write_all(b"r").unwrap();
        drop(f);
        assert_eq!(ino(&d.path().join("result.txt.tmp")), old);
        assert_eq!(fs::read(d.path().join("result.txt.tmp")).unwrap(), b"r");
        assert!(s.is_empty());
        assert_eq!(fs::read_dir(s.dir()).unwrap().count(), 0);
    }

    #[test]
    fn a_spare_rests_before_it_is_written_again() {
        let d = tempfile::tempdir().unwrap();
        let s = spares(d.path(), Duration::from_secs(3600));
        fs::write(d.path().join("partial.txt"), b"x").unwrap();
        assert!(s.keep(d.path(), "partial.txt"));
        assert!(s.take(d.path(), "a.tmp").is_none());
        assert!(!d.path().join("a.tmp").exists());
        // Another process (the next daemon) adopts it as rested.
        let again = spares(d.path(), Duration::from_secs(3600));
        assert_eq!(again.len(), 1);
        assert!(again.take(d.path(), "a.tmp").is_some());
        // The first one's name is gone: it skips it.
        assert!(s.take(d.path(), "b.tmp").is_none());
    }

    #[test]
    fn only_plain_files_of_ours_with_one_link_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let s = spares(p, Duration::ZERO);
        fs::create_dir(p.join("dir")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", p.join("link")).unwrap();
        fs::write(p.join("linked"), b"x").unwrap();
        fs::hard_link(p.join("linked"), p.join("other")).unwrap();
        crate::fsio::mkfifo(&p.join("fifo"));
        for n in ["dir", "link", "linked", "fifo", "missing"] {
            assert!(!s.keep(p, n), "{n} was kept");
        }
        assert!(s.is_empty());
        // A directory planted under the replaced name is exchanged out and
        // removed, as a rename over it would have refused to.
        fs::create_dir_all(p.join("meta.json/deep")).unwrap();
        fs::write(p.join("meta.json.tmp"), b"m").unwrap();
        s.exchange(p, "meta.json.tmp", "meta.json").unwrap();
        assert_eq!(fs::read(p.join("meta.json")).unwrap(), b"m");
        assert!(!p.join("meta.json.tmp").exists());
        assert!(s.is_empty());
    }

    #[test]
    fn a_spare_never_replaces_what_sits_under_the_name() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let s = spares(p, Duration::ZERO);
        fs::write(p.join("a"), b"spare").unwrap();
        assert!(s.keep(p, "a"));
        fs::write(p.join("x.tmp"), b"leftover").unwrap();
        assert!(s.take(p, "x.tmp").is_none());
        assert_eq!(fs::read(p.join("x.tmp")).unwrap(), b"leftover");
        assert_eq!(s.len(), 1, "the spare stays for the next file");
        fs::remove_file(p.join("x.tmp")).unwrap();
        assert!(s.take(p, "x.tmp").is_some());
    }

    #[test]
    fn exchange_with_nothing_there_says_so() {
        let d = tempfile::tempdir().unwrap();
        let s = spares(d.path(), Duration::ZERO);
        fs::write(d.path().join("n.tmp"), b"n").unwrap();
        let e = s.exchange(d.path(), "n.tmp", "n").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(d.path().join("n.tmp").exists());
    }
}
