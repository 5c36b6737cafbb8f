//! Finishing a job, for every outcome, in one place: the artifact (or
//! error.txt and response.txt), meta.json, the scratch files removed, the
//! directory fsynced, then the one rename into `output/` or `failed/`.
//! Also the list of names the daemon owns in a job directory, cleared at
//! claim so that nothing planted under them is ever opened.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Instant, SystemTime};

use nrvna_core::files::{Artifact, CANCEL_FILE, ERROR_FILE, META_FILE, PARTIAL_FILE, PROGRESS_FILE, RESPONSE_FILE};
use nrvna_core::fsio::clear_entry;
use nrvna_core::members::{self, Claim};
use nrvna_core::meta::{two_decimals, Status};
use nrvna_core::time::iso8601_utc;
use nrvna_core::{JobId, Meta, Moved, State, Workspace};
use nrvna_engine::Output;
use serde_json::Value;

use super::Outcome;
use crate::membership::Membership;
use crate::metrics::{JobMetrics, Reason};
use crate::space::SpaceGate;

/// Files the daemon creates while a job runs; gone once it finishes.
pub const SCRATCH: [&str; 3] = [PARTIAL_FILE, PROGRESS_FILE, CANCEL_FILE];

/// Every name the daemon writes in a job directory (besides meta.json,
/// which it rewrites and whose reader never follows or blocks).
pub const DAEMON_FILES: [&str; 8] = [
    Artifact::ALL[0].file_name(),
    Artifact::ALL[1].file_name(),
    Artifact::ALL[2].file_name(),
    Artifact::ALL[3].file_name(),
    ERROR_FILE,
    RESPONSE_FILE,
    PARTIAL_FILE,
    PROGRESS_FILE,
];

const CANCEL_TMP: &str = "cancel.tmp";

/// Removes, at claim, whatever a job holds under the daemon's own names
/// (and any `NAME.tmp`), whatever it is: a FIFO, a symlink, a directory.
pub fn clear_daemon_files(dir: &Path) -> io::Result<()> {
    // One listing finds them all (a fresh job holds none): cheaper than a
    // lookup per name.
    for e in fs::read_dir(dir)? {
        let e = e?;
        if let Some(name) = e.file_name().to_str() {
            // `cancel.tmp` is a canceller's write in flight (the `cancel`
            // file it becomes is honoured, not cleared).
            let ours = DAEMON_FILES.contains(&name) || (name.ends_with(".tmp") && name != CANCEL_TMP);
            if ours {
                clear_entry(dir, name)?;
            }
        }
    }
    Ok(())
}

/// Why a job failed, with its partial output.
#[derive(Debug)]
pub struct Failure {
    pub reason: String,
    pub partial: Option<String>,
    pub cancelled: bool,
    /// Its class, for the metrics.
    pub class: Reason,
}

impl Failure {
    pub fn new(reason: impl Into<String>) -> Failure {
        Failure::of(Reason::Other, reason)
    }

    /// A failure of a known class.
    pub fn of(class: Reason, reason: impl Into<String>) -> Failure {
        Failure {
            reason: reason.into(),
            partial: None,
            cancelled: false,
            class,
        }
    }
}

/// How a job ends.
pub enum Ending {
    Done {
        artifact: Artifact,
        bytes: Vec<u8>,
        out: Output,
    },
    Failed(Failure),
}

/// A claimed job on its way out.
pub struct Claimed<'a> {
    pub id: &'a JobId,
    pub dir: &'a Path,
    pub claimed: Instant,
    pub claimed_at: String,
    pub meta: Meta,
    /// The parameters used (meta.json `params`), once planned.
    pub used: Option<Value>,
    /// A shared member's claim on the job (checked before publishing).
    pub claim: Option<Claim>,
}

/// What finishing needs from the daemon.
pub struct Finisher<'a> {
    pub ws: &'a Workspace,
    pub model: &'a str,
    pub engine: &'a str,
    pub space: &'a SpaceGate,
    pub membership: Option<&'a Membership>,
    /// Run time, tokens and failures of finished jobs.
    pub metrics: &'a JobMetrics,
}

/// A file to write into the job: name and bytes.
type JobFile = (&'static str, Vec<u8>);

/// ENOSPC or EDQUOT: the disk (or quota) is full.
fn out_of_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// A shared member's job that another member took back: counted, logged,
/// and nothing published.
pub fn fenced(membership: Option<&Membership>, id: &JobId, why: &str) -> Outcome {
    if let Some(m) = membership {
        m.fenced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    tracing::warn!(
        "fenced {id}: {why} (this member's lease expired and another member took the job back); nothing published, the job runs again elsewhere"
    );
    Outcome::Fenced(why.to_owned())
}

/// Keeps error.txt to one line.
pub fn one_line(s: &str) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.is_empty() {
        "failed (no reason given)".into()
    } else {
        s
    }
}

/// Records how the job ended in its meta.json and says what to write and
/// where the job goes: (files, final state, failure reason).
fn record_ending(meta: &mut Meta, ending: Ending) -> (Vec<JobFile>, State, Option<String>) {
    match ending {
        Ending::Done { artifact, bytes, out } => {
            meta.status = Some(Status::Done);
            meta.remove_extra("cancelled");
            meta.artifacts = Some(vec![artifact.file_name().to_owned()]);
            meta.set_extra("prompt_tokens", out.prompt_tokens);
            meta.set_extra("generated_tokens", out.generated_tokens);
            meta.set_extra("reused_prompt_tokens", out.reused_tokens);
            meta.set_extra("generation_s", two_decimals(out.gen_secs));
            if out.gen_secs > 0.0 && out.generated_tokens > 0 {
                meta.set_extra(
                    "tokens_per_s",
                    two_decimals(f64::from(out.generated_tokens) / out.gen_secs),
                );
            }
            if let Some(f) = out.finish {
                meta.set_extra("finish_reason", f.as_str());
            }
            (vec![(artifact.file_name(), bytes)], State::Done, None)
        }
        Ending::Failed(f) => {
            let reason = one_line(&f.reason);
            meta.status = Some(Status::Failed);
            let mut artifacts = vec![ERROR_FILE];
            let mut files = Vec::new();
            if let Some(p) = f.partial {
                artifacts.push(RESPONSE_FILE);
                files.push((RESPONSE_FILE, p.into_bytes()));
            }
            files.push((ERROR_FILE, format!("{reason}\n").into_bytes()));
            meta.artifacts = Some(artifacts.into_iter().map(str::to_owned).collect());
            if f.cancelled {
                meta.set_extra("cancelled", true);
            } else {
                meta.remove_extra("cancelled");
            }
            (files, State::Failed, Some(reason))
        }
    }
}

impl Finisher<'_> {
    /// Writes the job's files and moves it to its final state.
    pub fn finish(&self, job: Claimed<'_>, ending: Ending) -> Outcome {
        let Claimed {
            id,
            dir,
            claimed,
            claimed_at,
            mut meta,
            used,
            claim,
        } = job;
        // Fencing: a shared member publishes only while its claim holds.
        let holds = || claim.as_ref().is_none_or(|c| Membership::still_holds(dir, c));
        if !holds() {
            return self.fenced(id, "its claim was replaced before the result was written");
        }
        self.stamp(&mut meta, claim.as_ref(), &claimed_at, claimed, used.as_ref());
        let counted = match &ending {
            Ending::Done { out, .. } => Ok((out.prompt_tokens, out.generated_tokens)),
            Ending::Failed(f) => Err(f.class),
        };
        let (files, to, reason) = record_ending(&mut meta, ending);
        let written = self.write(dir, &files, &meta);
        if let Err(e) = written {
            let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
            if out_of_space(&e) {
                if !holds() {
                    return self.fenced(id, "its claim was replaced while the result was written");
                }
                return self.requeue(id, dir, format!("no space left on device writing {}", names.join(", ")));
            }
            if to == State::Done {
                let f = Failure::new(format!("could not write {}: {e}", names.join(", ")));
                let job = Claimed {
                    id,
                    dir,
                    claimed,
                    claimed_at,
                    meta,
                    used,
                    claim,
                };
                return self.finish(job, Ending::Failed(f));
            }
            tracing::error!("writing error.txt and meta.json of {id}: {e}; moving it to failed/ anyway");
        }
        self.space.wrote_fine();
        if !holds() {
            return self.fenced(id, "its claim was replaced while the result was written");
        }
        if claim.is_some() {
            let _ = self.ws.io().retire(dir, members::CLAIM_FILE);
        }
        let outcome = self.publish(id, to, reason, claimed);
        self.count(&outcome, counted, claimed);
        outcome
    }

    /// Records a published job in the metrics (`counted`: its prompt and
    /// generated tokens, or its failure class).
    fn count(&self, outcome: &Outcome, counted: Result<(u32, u32), Reason>, claimed: std::time::Instant) {
        let m = self.metrics;
        let state = match (outcome, counted) {
            (Outcome::Done, Ok((prompt, generated))) => {
                m.prompt_tokens.inc_by(u64::from(prompt));
                m.generated_tokens.inc_by(u64::from(generated));
                "done"
            }
            (Outcome::Failed(_), Err(class)) => {
                m.failed(class);
                "failed"
            }
            // A done job whose artifact could not be written fails as "other".
            (Outcome::Failed(_), Ok(_)) => {
                m.failed(Reason::Other);
                "failed"
            }
            _ => return,
        };
        m.finished.get_or_create(&[("state", state)]).inc();
        m.run_time.observe(claimed.elapsed().as_secs_f64());
    }

    /// The meta.json keys every finished job gets: who ran it, when, how
    /// long, on what, with which parameters.
    fn stamp(
        &self,
        meta: &mut Meta,
        claim: Option<&Claim>,
        claimed_at: &str,
        claimed: std::time::Instant,
        used: Option<&serde_json::Value>,
    ) {
        if let Some(c) = claim {
            meta.set_extra("member", c.member.as_str());
            meta.set_extra("host", members::host_name());
        }
        meta.set_extra("claimed_at", claimed_at);
        meta.completed_at = Some(iso8601_utc(SystemTime::now()));
        meta.duration_s = Some(claimed.elapsed().as_secs_f64());
        // A job refused before it had a model records none.
        if !self.model.is_empty() {
            meta.set_extra("model", self.model);
            meta.set_extra("engine", self.engine);
        }
        if let Some(u) = used {
            meta.set_extra("params", u.clone());
        }
    }

    /// Writes the job's files and its meta.json, retires the scratch files,
    /// and fsyncs the directory. write_atomic replaces whatever was planted
    /// under these names during the run (a directory included) without
    /// following it, and meta.json is replaced in one rename, never removed
    /// first.
    fn write(&self, dir: &Path, files: &[JobFile], meta: &Meta) -> io::Result<()> {
        let io = self.ws.io();
        for (name, bytes) in files {
            io.write_atomic(dir, name, bytes)?;
        }
        io.write_atomic(dir, META_FILE, &meta.to_bytes())?;
        for scratch in SCRATCH {
            io.retire(dir, scratch)?;
        }
        io.sync_dir(dir)
    }

    /// Moves the written job into its final state (`reason`: why it failed).
    fn publish(&self, id: &JobId, to: State, reason: Option<String>, claimed: std::time::Instant) -> Outcome {
        match self.move_to(id, to) {
            Ok(Moved::Yes) => match reason {
                None => {
                    crate::logging::job_line(format_args!("done {id} in {:.2} s", claimed.elapsed().as_secs_f64()));
                    Outcome::Done
                }
                Some(r) => {
                    tracing::warn!("failed {id}: {r}");
                    Outcome::Failed(r)
                }
            },
            Ok(other) => {
                let why = format!("finishing {id} into {}: {other:?}", to.dir());
                tracing::error!("{why}; it stays in processing/");
                Outcome::Interrupted(why)
            }
            Err(e) => {
                // The workspace, not the job, is at fault (output/ read-only,
                // say): keep the job recoverable rather than failing it.
                let why = format!(
                    "could not move finished job {id} into {}: {e}; it stays in processing/ and runs again at the next start (fix that directory)",
                    self.ws.dir(to).display()
                );
                tracing::error!("{why}");
                Outcome::Interrupted(why)
            }
        }
    }

    fn fenced(&self, id: &JobId, why: &str) -> Outcome {
        fenced(self.membership, id, why)
    }

    /// Puts a job back into `input/ready/` (the disk is full: neither its
    /// result nor its error could be written). Nothing half-written stays,
    /// and workers claim nothing until there is space again.
    fn requeue(&self, id: &JobId, dir: &Path, why: String) -> Outcome {
        for f in DAEMON_FILES {
            let _ = clear_entry(dir, f);
        }
        let _ = clear_entry(dir, members::CLAIM_FILE);
        self.space.disk_full();
        match self.ws.transition(id, State::Processing, State::Ready) {
            Ok(Moved::Yes) => {
                tracing::warn!("{id}: {why}; put back in input/ready/ to run again when there is space");
                Outcome::Requeued(why)
            }
            other => {
                tracing::error!("{id}: {why}; putting it back failed ({other:?}); it stays in processing/");
                Outcome::Interrupted(why)
            }
        }
    }

    /// The finishing rename; a state directory removed while the daemon
    /// runs is created again first.
    fn move_to(&self, id: &JobId, to: State) -> io::Result<Moved> {
        if !self.ws.dir(to).is_dir() {
            tracing::warn!("{} is missing; creating it again", self.ws.dir(to).display());
            fs::create_dir_all(self.ws.dir(to))?;
        }
        self.ws.transition(id, State::Processing, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_clears_whatever_sits_under_the_daemons_names() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::write(p.join("prompt.txt"), "keep me").unwrap();
        let fifo = p.join(PARTIAL_FILE);
        let (cwd, mode) = (rustix::fs::CWD, rustix::fs::Mode::from_raw_mode(0o644));
        rustix::fs::mknodat(cwd, &fifo, rustix::fs::FileType::Fifo, mode, 0).unwrap();
        fs::create_dir_all(p.join("result.txt/inner")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", p.join("error.txt")).unwrap();
        fs::write(p.join("meta.json.tmp"), "half").unwrap();
        // A cancel request, and one being written: the canceller's, kept.
        fs::write(p.join(CANCEL_FILE), "").unwrap();
        fs::write(p.join(CANCEL_TMP), "").unwrap();
        clear_daemon_files(p).unwrap();
        let mut left: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["cancel", "cancel.tmp", "prompt.txt"]);
    }

    #[test]
    fn error_txt_is_one_line() {
        assert_eq!(one_line("a\n b\tc "), "a b c");
        assert_eq!(one_line("  \n"), "failed (no reason given)");
    }
}
