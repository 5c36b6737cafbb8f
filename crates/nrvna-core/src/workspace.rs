//! A workspace on disk: its directories, listing jobs, finding a job's state,
//! and the transitions, each one `renameat2(RENAME_NOREPLACE)` of a job
//! directory followed by an fsync of both parent directories (group
//! committed: threads moving jobs through the same directory at the same
//! time share one fsync that started after all their renames).

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Settings;
use crate::dirsync::DirSync;
use crate::fileio::FileIo;
use crate::id::JobId;
use crate::state::State;

/// The contract's lifecycle files at the workspace root.
pub const LOCK_FILE: &str = ".nrvnad.lock";
pub const PID_FILE: &str = ".nrvnad.pid";
pub const READY_FILE: &str = ".nrvnad.ready";
pub const INFO_FILE: &str = ".nrvnad.info";

/// Errors about the workspace itself (not one job).
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{path} is not an nrvna workspace (no input/ready/ inside); create it by submitting a job with: wrk {path} PROMPT")]
    NotAWorkspace { path: String },
    #[error("creating workspace directory {path}: {source}")]
    Create { path: String, source: io::Error },
}

/// A workspace root with the settings it is used under (defaults unless
/// [`Workspace::with_settings`] says otherwise). Cheap to clone; clones
/// share the group commit of the state directories' fsyncs and the spares.
#[derive(Clone, Debug)]
pub struct Workspace {
    root: PathBuf,
    /// One per state directory, indexed by `State as usize`.
    syncs: Arc<[DirSync; 5]>,
    settings: Arc<Settings>,
    io: FileIo,
}

/// How a transition ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Moved {
    /// The rename happened.
    Yes,
    /// The source was gone: someone else moved it first (a lost claim race).
    SourceGone,
    /// The destination already exists; nothing was overwritten.
    DestinationExists,
}

impl Workspace {
    /// Opens an existing workspace.
    pub fn open(root: impl Into<PathBuf>) -> Result<Workspace, WorkspaceError> {
        let ws = Workspace::at(root.into());
        if !ws.dir(State::Ready).is_dir() {
            return Err(WorkspaceError::NotAWorkspace {
                path: ws.root.display().to_string(),
            });
        }
        Ok(ws)
    }

    /// Opens a workspace, creating any missing state directory.
    pub fn create(root: impl Into<PathBuf>) -> Result<Workspace, WorkspaceError> {
        let ws = Workspace::at(root.into());
        for s in [
            State::Writing,
            State::Ready,
            State::Processing,
            State::Done,
            State::Failed,
        ] {
            let d = ws.dir(s);
            fs::create_dir_all(&d).map_err(|source| WorkspaceError::Create {
                path: d.display().to_string(),
                source,
            })?;
        }
        Ok(ws)
    }

    fn at(root: PathBuf) -> Workspace {
        Workspace {
            root,
            syncs: Arc::default(),
            settings: Arc::default(),
            io: FileIo::default(),
        }
    }

    /// The same workspace used under `settings` (fsync, size limits, the
    /// waiters' poll). Keeps any spares already attached.
    pub fn with_settings(self, settings: Settings) -> Workspace {
        let io = self.io.clone().with_fsync(settings.fsync);
        Workspace {
            settings: Arc::new(settings),
            io,
            ..self
        }
    }

    /// The same workspace writing through `io` (the daemon's, with spares).
    pub fn with_io(self, io: FileIo) -> Workspace {
        Workspace { io, ..self }
    }

    /// The settings this workspace is used under.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// How files are written here (fsync, spares).
    pub fn io(&self) -> &FileIo {
        &self.io
    }

    /// fsyncs a state directory so that the renames made in it so far are
    /// durable, sharing the fsync with other threads of this process that
    /// need the same (see [`DirSync`]). Nothing when fsync is off.
    pub fn sync_state_dir(&self, s: State) -> io::Result<()> {
        if !self.io.fsync() {
            return Ok(());
        }
        self.syncs[s as usize].sync(&self.dir(s))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a state.
    pub fn dir(&self, s: State) -> PathBuf {
        self.root.join(s.dir())
    }

    /// The directory a job has (or would have) in a state.
    pub fn job_dir(&self, s: State, id: &JobId) -> PathBuf {
        self.dir(s).join(id.as_str())
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Ids in a state directory, sorted (= submission order). Entries whose
    /// names are not valid ids are skipped and never joined into a path.
    pub fn list(&self, s: State) -> io::Result<Vec<JobId>> {
        let mut v = Vec::new();
        self.scan(s, |id| v.push(id), |_| {})?;
        v.sort();
        Ok(v)
    }

    /// Walks a state directory, handing valid ids to `ok` and the raw names
    /// of everything else to `invalid` (for logging only).
    pub fn scan(
        &self,
        s: State,
        mut ok: impl FnMut(JobId),
        mut invalid: impl FnMut(&std::ffi::OsStr),
    ) -> io::Result<()> {
        for e in fs::read_dir(self.dir(s))? {
            let e = e?;
            let name = e.file_name();
            match JobId::from_os(&name) {
                Some(id) => ok(id),
                // Temp files of our own making are not worth a warning.
                None if name.as_bytes().starts_with(b".") => {}
                None => invalid(&name),
            }
        }
        Ok(())
    }

    /// The state a job is in, or `None` when no state directory holds it.
    /// Checks in lifecycle order so that a job moving forward during the
    /// look-up is still found.
    pub fn locate(&self, id: &JobId) -> Option<State> {
        for _ in 0..2 {
            for s in State::PUBLISHED {
                if fs::symlink_metadata(self.job_dir(s, id)).is_ok() {
                    return Some(s);
                }
            }
        }
        if fs::symlink_metadata(self.job_dir(State::Writing, id)).is_ok() {
            return Some(State::Writing);
        }
        None
    }

    /// Moves a job from one state to another with a single rename that never
    /// replaces an existing directory, then fsyncs both parent directories.
    pub fn transition(&self, id: &JobId, from: State, to: State) -> io::Result<Moved> {
        let src = self.job_dir(from, id);
        let dst = self.job_dir(to, id);
        match rename_noreplace(&src, &dst) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Either the job is gone or the destination directory is.
                if !self.dir(to).is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("state directory {} is missing", self.dir(to).display()),
                    ));
                }
                return Ok(Moved::SourceGone);
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) || e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                return Ok(Moved::DestinationExists)
            }
            Err(e) => return Err(e),
        }
        self.sync_state_dir(to)?;
        self.sync_state_dir(from)?;
        Ok(Moved::Yes)
    }
}

/// `rename(2)` that fails with EEXIST instead of replacing the destination
/// (an empty directory would otherwise be replaced silently).
pub fn rename_noreplace(src: &Path, dst: &Path) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, src, CWD, dst, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // Filesystems without RENAME_NOREPLACE: check, then plain rename.
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {
            if fs::symlink_metadata(dst).is_ok() {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            fs::rename(src, dst)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_lists_and_transitions() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path().join("ws")).unwrap();
        let id = JobId::parse("1_2_3").unwrap();
        fs::create_dir(ws.job_dir(State::Ready, &id)).unwrap();
        fs::create_dir(ws.dir(State::Ready).join("not an id")).unwrap();
        assert_eq!(ws.list(State::Ready).unwrap(), vec![id.clone()]);
        assert_eq!(ws.locate(&id), Some(State::Ready));
        assert_eq!(ws.transition(&id, State::Ready, State::Processing).unwrap(), Moved::Yes);
        assert_eq!(
            ws.transition(&id, State::Ready, State::Processing).unwrap(),
            Moved::SourceGone
        );
        assert_eq!(ws.locate(&id), Some(State::Processing));
    }

    #[test]
    fn finishing_never_replaces_an_existing_job_even_an_empty_one() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        let id = JobId::parse("7").unwrap();
        fs::create_dir(ws.job_dir(State::Processing, &id)).unwrap();
        fs::create_dir(ws.job_dir(State::Done, &id)).unwrap();
        assert_eq!(
            ws.transition(&id, State::Processing, State::Done).unwrap(),
            Moved::DestinationExists
        );
        assert!(ws.job_dir(State::Processing, &id).is_dir());
    }

    #[test]
    fn open_refuses_a_directory_that_is_not_a_workspace() {
        let d = tempfile::tempdir().unwrap();
        let e = Workspace::open(d.path()).unwrap_err();
        assert!(e.to_string().contains("wrk"), "{e}");
    }
}
