//! `flw WS -f ID`: print a job's text as it is generated, from the start.
//!
//! While the job runs the daemon appends to `processing/<id>/partial.txt`;
//! we print what is new since our offset. When the job ends, the final
//! artifact (result.txt, or response.txt of a failed job) completes the
//! text if what we printed is a prefix of it. Works whether we start before
//! the job is claimed or after it finished. Wakes on inotify events in the
//! state directories and in the job's directory, with a slow poll behind.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nrvna_core::files::{Artifact, PARTIAL_FILE, RESPONSE_FILE};
use nrvna_core::fsio::{open_regular, read_optional, ReadError};
use nrvna_core::wait::DirWaker;
use nrvna_core::{JobId, State, Workspace};

use crate::show::{eprintln_missing, print_error, show};
use crate::ticker::Ticker;
use crate::wait::state_dirs;
use crate::Outcome;

/// The largest final artifact compared with the streamed text.
const MAX_FINAL_BYTES: u64 = 256 * 1024 * 1024;

pub fn follow(ws: &Workspace, id: &JobId, timeout: Option<Duration>) -> Result<Outcome> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut out = io::stdout().lock();
    let mut printed: Vec<u8> = Vec::new();
    let mut ticker = Ticker::new();
    // The waker watches the directories that matter in the current state;
    // it is rebuilt (before looking again) whenever the state changes.
    let mut watched: Option<Option<State>> = None;
    let mut waker = None;
    loop {
        let state = ws.locate(id);
        if watched != Some(state) {
            let mut dirs: Vec<PathBuf> = state_dirs(ws);
            if state == Some(State::Processing) {
                dirs.push(ws.job_dir(State::Processing, id));
            }
            let refs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
            // How often to look when no filesystem events arrive.
            waker = Some(DirWaker::new(&refs, ws.settings().wait_poll));
            watched = Some(state);
            // Look again now that the watch is up, so no change is lost.
            continue;
        }
        match state {
            None if printed.is_empty() => {
                ticker.clear();
                eprintln_missing(ws, id);
                return Ok(Outcome::Failed);
            }
            None => bail!(
                "job {id} disappeared from {} while it was followed",
                ws.root().display()
            ),
            Some(State::Writing | State::Ready) => {
                ticker.show(&format!("waiting for {id}: queued"));
            }
            Some(State::Processing) => {
                ticker.clear();
                let dir = ws.job_dir(State::Processing, id);
                let new = read_from(&dir.join(PARTIAL_FILE), printed.len() as u64)
                    .with_context(|| format!("reading {PARTIAL_FILE} of job {id}"))?;
                if !new.is_empty() {
                    out.write_all(&new)?;
                    out.flush()?;
                    printed.extend_from_slice(&new);
                }
            }
            Some(State::Done) => {
                ticker.clear();
                if printed.is_empty() {
                    drop(out);
                    return show(ws, id, false);
                }
                let dir = ws.job_dir(State::Done, id);
                finish(&mut out, &printed, &dir, Artifact::Result.file_name(), ws, id)?;
                return Ok(Outcome::Done);
            }
            Some(State::Failed) => {
                ticker.clear();
                let dir = ws.job_dir(State::Failed, id);
                finish(&mut out, &printed, &dir, RESPONSE_FILE, ws, id)?;
                drop(out);
                if let Some(job) = ws.job(id) {
                    print_error(&job);
                }
                return Ok(Outcome::Failed);
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            ticker.clear();
            let state = ws.locate(id).map_or("missing", |s| s.label());
            eprintln!("flw: timed out following job {id}; it is still {state}");
            return Ok(Outcome::Pending);
        }
        if let Some(w) = &waker {
            w.wait(deadline);
        }
    }
}

/// Prints the rest of the final artifact when what was printed is a prefix
/// of it; otherwise (the daemon rewrote the text) prints nothing more.
fn finish(
    out: &mut impl Write,
    printed: &[u8],
    dir: &std::path::Path,
    name: &str,
    ws: &Workspace,
    id: &JobId,
) -> Result<()> {
    let full = match read_optional(&dir.join(name), MAX_FINAL_BYTES) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(()),
        Err(ReadError::TooLarge { .. }) => return Ok(()),
        Err(e) => return Err(anyhow::anyhow!("{name} of job {id} {e}")),
    };
    if let Some(rest) = full.strip_prefix(printed) {
        out.write_all(rest)?;
        out.flush()?;
    } else {
        eprintln!(
            "flw: the final {name} of job {id} differs from the text streamed so far; print it whole with: flw {} {id}",
            ws.root().display()
        );
    }
    Ok(())
}

/// The bytes of a file from `offset` on; empty when it does not exist yet
/// (or vanished because the job just moved on).
fn read_from(path: &std::path::Path, offset: u64) -> io::Result<Vec<u8>> {
    let mut f = match open_regular(path) {
        Ok(f) => f,
        Err(ReadError::Missing) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}
