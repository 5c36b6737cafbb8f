//! `flw WS ID`: one job as its state says. Done prints the primary artifact
//! to stdout exactly as stored (audio: its bytes, or its path on a terminal), failed prints error.txt
//! on stderr, queued/running print the state on stderr; `--json` prints
//! the job's one-line summary instead.

use std::io::{self, IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use std::time::SystemTime;

use nrvna_core::files::{Artifact, ERROR_FILE};
use nrvna_core::standing::{self, Estimate};
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
    let standing = job
        .as_ref()
        .filter(|j| j.state == State::Ready)
        .and_then(|_| Standing::of(ws, id));
    if json {
        let line = match &job {
            Some(j) => {
                let mut v = j.summary();
                if let Some(st) = &standing {
                    v["position"] = json!(st.0.place.position());
                    v["eta_s"] = json!(st.0.eta_s.map(|e| (e * 10.0).round() / 10.0));
                }
                v
            }
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
        State::Ready => {
            match &standing {
                Some(st) => eprintln!("queued: {}", st.describe()),
                None => eprintln!("queued"),
            }
            Ok(Outcome::Pending)
        }
        State::Processing => {
            eprintln!("{}", job.state.label());
            Ok(Outcome::Pending)
        }
    }
}

/// A queued job's place in line and when it should be done.
struct Standing(Estimate);

impl Standing {
    fn of(ws: &Workspace, id: &JobId) -> Option<Standing> {
        standing::estimate(ws, id, SystemTime::now()).map(Standing)
    }

    /// "position 3 (2 ahead, priority normal); done in about 40 s at 18.0 jobs/min".
    fn describe(&self) -> String {
        let Estimate { place: p, eta_s, rate } = &self.0;
        let line = format!(
            "position {} ({} ahead, priority {})",
            p.position(),
            p.ahead,
            p.priority.as_str()
        );
        match (eta_s, rate.jobs_per_s()) {
            (Some(eta), Some(r)) => format!(
                "{line}; done in about {} at {:.1} jobs/min (the last {} min)",
                human_secs(*eta),
                r * 60.0,
                standing::RATE_WINDOW.as_secs() / 60
            ),
            _ => format!(
                "{line}; no estimate: no job finished in the last {} min",
                standing::RATE_WINDOW.as_secs() / 60
            ),
        }
    }
}

/// `45 s`, `12 min`, `3.5 h`.
pub fn human_secs(s: f64) -> String {
    if s < 90.0 {
        format!("{s:.0} s")
    } else if s < 90.0 * 60.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
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
