//! `flw WS ID`: one job as its state says. Done prints the primary artifact
//! to stdout exactly as stored (audio: its bytes, or its path on a terminal), failed prints error.txt
//! on stderr, queued/running print the state on stderr; `--json` prints
//! the job's one-line summary instead.

use std::io::{self, IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use nrvna_core::files::{Artifact, ERROR_FILE};
use nrvna_core::{JobId, JobView, State, Workspace};
use serde_json::json;

use crate::Outcome;

/// What a state means as an outcome.
pub fn outcome_of(state: Option<State>) -> Outcome {
    match state {
        Some(State::Done) => Outcome::Done,
        Some(State::Failed) | None => Outcome::Failed,
        Some(State::Writing | State::Ready | State::Processing) => Outcome::Pending,
    }
}

/// Prints one job (see the module docs) and returns its outcome.
pub fn show(ws: &Workspace, id: &JobId, json: bool) -> Result<Outcome> {
    let job = ws.job(id);
    if json {
        let line = match &job {
            Some(j) => j.summary(),
            None => json!({"id": id.as_str(), "status": "missing"}),
        };
        let mut out = io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        if job.is_none() {
            eprintln_missing(ws, id);
        }
        return Ok(outcome_of(job.map(|j| j.state)));
    }
    let Some(job) = job else {
        eprintln_missing(ws, id);
        return Ok(Outcome::Failed);
    };
    match job.state {
        State::Done => {
            print_artifact(&job)?;
            Ok(Outcome::Done)
        }
        State::Failed => {
            print_error(&job);
            Ok(Outcome::Failed)
        }
        State::Writing => {
            eprintln!("staging");
            Ok(Outcome::Pending)
        }
        State::Ready | State::Processing => {
            eprintln!("{}", job.state.label());
            Ok(Outcome::Pending)
        }
    }
}

/// The message for an id that no state directory holds.
pub fn eprintln_missing(ws: &Workspace, id: &JobId) {
    eprintln!(
        "flw: job {id} not found in {} (it is not queued, running, done or failed)",
        ws.root().display()
    );
}

/// error.txt of a failed job on stderr.
pub fn print_error(job: &JobView) {
    match job.error() {
        Some(e) => eprintln!("{e}"),
        None => eprintln!("flw: job {} failed (it has no {ERROR_FILE})", job.id),
    }
}

/// A done job's primary artifact on stdout: text and embedding JSON as
/// stored (no newline added); audio.wav's bytes when stdout is a pipe or a
/// file (`flw WS ID > out.wav`, `| aplay`), its path on a terminal.
pub fn print_artifact(job: &JobView) -> Result<()> {
    let Some(artifact) = job.primary_artifact() else {
        bail!(
            "job {} is done but holds no artifact (none of {}); look inside {}",
            job.id,
            Artifact::ALL.map(Artifact::file_name).join(", "),
            job.dir.display()
        );
    };
    let name = artifact.file_name();
    let path = job.dir.join(name);
    let mut out = io::stdout().lock();
    if artifact == Artifact::Audio && io::stdout().is_terminal() {
        writeln!(out, "{}", path.display())?;
    } else {
        copy_file(&path, &mut out).with_context(|| format!("reading {name} of job {}", job.id))?;
    }
    out.flush()?;
    Ok(())
}

/// Copies a regular file to `out` without following a symlink.
pub fn copy_file(path: &Path, out: &mut impl Write) -> io::Result<u64> {
    let mut f = nrvna_core::fsio::open_regular(path)?;
    io::copy(&mut f, out)
}
