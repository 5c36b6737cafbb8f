//! The Processor: claims a job by renaming it into `processing/` (only one
//! rename wins, so duplicate submissions are harmless), then takes it
//! through its steps: [`spec::JobSpec::read`] (typed errors),
//! [`plan::plan`] (pure), the run on the worker's Runner, and
//! [`finish::Finisher::finish`] (one place for every outcome). A bad job
//! fails with a one-line `error.txt`; an engine fault leaves the job
//! recoverable and tells the server to stop.

pub mod finish;
pub mod plan;
pub mod spec;

use std::fs;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use nrvna_core::files::{Artifact, GRAMMAR_FILE, META_FILE, PARTIAL_FILE, PROGRESS_FILE};
use nrvna_core::fsio::read_optional;
use nrvna_core::meta::MAX_META_BYTES;
use nrvna_core::time::iso8601_utc;
use nrvna_core::{JobId, JobType, Meta, Moved, State, Workspace};
use nrvna_engine::media::with_markers;
use nrvna_engine::sampling::fresh_seed;
use nrvna_engine::template::strip_think;
use nrvna_engine::tts::SpeechRequest;
use nrvna_engine::{MediaInput, Output, Request, RunError, Runner, TextRequest};

/// The task of a speech-to-text job with an empty prompt (the C++ daemon's).
const STT_DEFAULT_PROMPT: &str = "Transcribe the audio.";
use serde_json::{json, Value};

use crate::engine::Inference;
use crate::membership::Membership;
use crate::metrics::{JobMetrics, Reason};
use crate::observer::{JobObserver, StopKind};
use crate::space::SpaceGate;
use finish::{Claimed, Ending, Failure, Finisher};
use plan::{Constraint, Plan};
use spec::JobSpec;

/// How processing one id ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Done,
    Failed(String),
    /// Another worker (or daemon) claimed it first.
    Lost,
    /// A job with this id already exists in a later state; nothing was touched.
    Duplicate,
    /// Left in `processing/` (shutdown, or the workspace refused the
    /// finish): recovered by the next start.
    Interrupted(String),
    /// Put back into `input/ready/` because the disk is full: it runs again
    /// once there is space, without a restart.
    Requeued(String),
    /// The engine failed: the job stays in `processing/` (recoverable) and
    /// the daemon must stop claiming.
    Fault(String),
    /// A shared member lost its claim (its lease expired and another member
    /// took the job back): nothing was published.
    Fenced(String),
}

impl Outcome {
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed(_))
    }
}

/// One worker's processor, with the handles it uses.
pub struct Processor {
    ws: Workspace,
    /// The model of the job in hand (none between jobs, so that an idle
    /// model can be unloaded).
    inference: Option<Arc<Inference>>,
    /// A runner on that model.
    runner: Option<Box<dyn Runner>>,
    shutdown: Arc<AtomicBool>,
    space: Arc<SpaceGate>,
    /// This daemon's membership of a shared workspace (`--shared`).
    membership: Option<Arc<Membership>>,
    /// Where finished jobs are counted (`--metrics`).
    metrics: Arc<JobMetrics>,
}

/// Forgets a shared member's claim however processing ends (panics included).
struct Hold<'a>(&'a Membership, &'a JobId);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

impl Processor {
    pub fn new(ws: Workspace, shutdown: Arc<AtomicBool>, space: Arc<SpaceGate>) -> Processor {
        Processor {
            ws,
            inference: None,
            runner: None,
            shutdown,
            space,
            membership: None,
            metrics: Arc::default(),
        }
    }

    /// Counts this processor's jobs into `metrics`.
    pub fn measured(mut self, metrics: Arc<JobMetrics>) -> Processor {
        self.metrics = metrics;
        self
    }

    /// Makes this processor a shared member's: every claim is recorded, and
    /// checked before anything is published.
    pub fn shared(mut self, membership: Option<Arc<Membership>>) -> Processor {
        self.membership = membership;
        self
    }

    /// Claims and processes one job on `model`; when the job cannot have
    /// its model (`Err`: not served here, or it failed to load), it is
    /// claimed and failed with that reason.
    pub fn process(&mut self, id: &JobId, model: Result<&Arc<Inference>, String>) -> Outcome {
        let refused = match model {
            Ok(inf) => {
                self.runner = Some(inf.runner());
                self.inference = Some(inf.clone());
                None
            }
            Err(why) => Some(why),
        };
        let outcome = self.process_on(id, refused);
        self.runner = None;
        self.inference = None;
        outcome
    }

    fn process_on(&mut self, id: &JobId, refused: Option<String>) -> Outcome {
        if let Some(o) = self.claim(id) {
            return o;
        }
        let membership = self.membership.clone();
        let _hold = membership.as_deref().map(|m| Hold(m, id));
        let claimed = Instant::now();
        let claimed_at = iso8601_utc(SystemTime::now());
        crate::logging::job_line(format_args!("claimed {id}"));
        let dir = self.ws.job_dir(State::Processing, id);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) => {
                let what = if m.file_type().is_symlink() {
                    "a symlink"
                } else {
                    "not a directory"
                };
                return self.fail_non_directory(id, &dir, what, claimed, claimed_at);
            }
            Err(e) => return Outcome::Interrupted(e.to_string()),
        }
        let claim = match &membership {
            None => Ok(None),
            Some(m) => m.claim(self.ws.io(), id, &dir).map(Some),
        };
        let mut job = Claimed {
            id,
            dir: &dir,
            claimed,
            claimed_at,
            meta: Meta::new(),
            used: None,
            claim: claim.as_ref().ok().cloned().flatten(),
        };
        if let Err(e) = claim {
            let f = Failure::new(format!(
                "could not record this member's claim ({}): {e}",
                nrvna_core::members::CLAIM_FILE
            ));
            return self.finisher().finish(job, Ending::Failed(f));
        }
        if let Err(e) = finish::clear_daemon_files(&dir) {
            job.meta = read_optional(&dir.join(META_FILE), MAX_META_BYTES)
                .ok()
                .flatten()
                .and_then(|b| Meta::parse(&b).ok())
                .unwrap_or_default();
            let f = Failure::new(format!(
                "the job holds files under the daemon's names that cannot be removed: {e}"
            ));
            return self.finisher().finish(job, Ending::Failed(f));
        }
        let spec = match JobSpec::read(self.ws.io(), self.ws.settings(), &dir) {
            Ok(s) => s,
            Err(f) => {
                job.meta = *f.meta;
                return self
                    .finisher()
                    .finish(job, Ending::Failed(Failure::of(Reason::BadInput, f.error.to_string())));
            }
        };
        job.meta = spec.meta.clone();
        self.count_wait(&spec.meta);
        let (Some(inf), None) = (self.inference.clone(), refused.as_ref()) else {
            let why = refused.unwrap_or_else(|| "no model to run it on".into());
            let why = match &spec.params.model {
                Some(m) => format!("the job asks for model {m:?}: {why}"),
                None => why,
            };
            return self
                .finisher()
                .finish(job, Ending::Failed(Failure::of(Reason::BadInput, why)));
        };
        let (plan, used) = plan::plan(&spec, &inf.cfg, fresh_seed());
        job.used = Some(used);
        let req = match self.request(&dir, &spec, plan) {
            Ok(r) => r,
            Err(f) => return self.finisher().finish(job, Ending::Failed(f)),
        };
        let obs = Arc::new(
            JobObserver::new(
                dir.clone(),
                self.ws.io().clone(),
                self.shutdown.clone(),
                spec.params.timeout_s,
            )
            .with_fence(job.claim.clone()),
        );
        if obs.cancel_requested() {
            let f = Failure {
                reason: "cancelled by user".into(),
                partial: Some(String::new()),
                cancelled: true,
                class: Reason::Cancelled,
            };
            return self.finisher().finish(job, Ending::Failed(f));
        }
        let Some(runner) = self.runner.as_mut() else {
            return Outcome::Interrupted("no runner".into());
        };
        let ending = match runner.run(req, obs.clone()) {
            Ok(out) => done(&spec, out),
            Err(RunError::Stopped { reason, partial, .. }) => match obs.stop_kind() {
                Some(StopKind::Fenced) => {
                    return finish::fenced(self.membership.as_deref(), id, &reason);
                }
                Some(StopKind::Shutdown) | None if job.claim.is_some() => {
                    return self.hand_back(id, &dir, job.claim.as_ref().expect("a claim"), &reason);
                }
                Some(StopKind::Shutdown) | None => {
                    tracing::info!("{id} interrupted by shutdown ({reason}); it stays in processing/ and is recovered at the next start");
                    return Outcome::Interrupted(reason);
                }
                Some(kind) => Ending::Failed(Failure {
                    reason,
                    partial: Some(partial),
                    cancelled: kind == StopKind::Cancelled,
                    class: match kind {
                        StopKind::Cancelled => Reason::Cancelled,
                        StopKind::TimedOut => Reason::Timeout,
                        _ => Reason::Other,
                    },
                }),
            },
            Err(RunError::Rejected(r)) => Ending::Failed(Failure::of(Reason::Engine, r)),
            Err(RunError::Fault(r)) => {
                tracing::error!("engine fault while running {id}: {r}; the job stays in processing/ (recoverable)");
                return Outcome::Fault(r);
            }
        };
        self.finisher().finish(job, ending)
    }

    fn finisher(&self) -> Finisher<'_> {
        Finisher {
            ws: &self.ws,
            model: self.inference.as_deref().map_or("", Inference::model_name),
            engine: self.inference.as_deref().map_or("", |i| i.kind.name()),
            space: &self.space,
            membership: self.membership.as_deref(),
            metrics: &self.metrics,
        }
    }

    /// Records how long the job waited: its meta.json `submitted_at` to now
    /// (just claimed). A job without a readable time is not counted.
    fn count_wait(&self, meta: &Meta) {
        let Some(at) = meta
            .submitted_at
            .as_deref()
            .and_then(nrvna_core::time::parse_iso8601_micros)
        else {
            return;
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        self.metrics.queue_wait.observe((now - at).max(0) as f64 / 1e6);
    }

    /// A shared member that stops hands an interrupted job straight back to
    /// `input/ready/` (no lease to wait out, no attempt counted): its
    /// partial output and claim are removed first, if the claim still holds.
    fn hand_back(&self, id: &JobId, dir: &Path, claim: &nrvna_core::members::Claim, reason: &str) -> Outcome {
        if !Membership::still_holds(dir, claim) {
            return finish::fenced(self.membership.as_deref(), id, reason);
        }
        for f in [PARTIAL_FILE, PROGRESS_FILE, nrvna_core::members::CLAIM_FILE] {
            let _ = self.ws.io().retire(dir, f);
        }
        match self.ws.transition(id, State::Processing, State::Ready) {
            Ok(Moved::Yes) => {
                tracing::info!(
                    "{id} interrupted by shutdown ({reason}); handed back to input/ready/ for another member"
                );
                Outcome::Requeued(reason.to_owned())
            }
            other => {
                tracing::warn!("{id} interrupted by shutdown; handing it back failed ({other:?}); other members recover it after the lease");
                Outcome::Interrupted(reason.to_owned())
            }
        }
    }

    /// The claim: one rename from `input/ready/` to `processing/`. `Some`
    /// when there is nothing (more) to do with this id.
    fn claim(&self, id: &JobId) -> Option<Outcome> {
        for later in [State::Processing, State::Done, State::Failed] {
            if fs::symlink_metadata(self.ws.job_dir(later, id)).is_ok() {
                // Moved on since it was listed (claimed elsewhere, or
                // cancelled while queued): a lost race, not a duplicate.
                if fs::symlink_metadata(self.ws.job_dir(State::Ready, id)).is_err() {
                    return Some(Outcome::Lost);
                }
                tracing::error!(
                    "job {id} in input/ready/ has the id of a job already in {}/; leaving both alone (remove one of them)",
                    later.dir()
                );
                return Some(Outcome::Duplicate);
            }
        }
        match self.ws.transition(id, State::Ready, State::Processing) {
            Ok(Moved::Yes) => None,
            Ok(Moved::SourceGone) => {
                // Another worker or member renamed it first.
                if let Some(m) = &self.membership {
                    m.lost_races.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Some(Outcome::Lost)
            }
            Ok(Moved::DestinationExists) => {
                tracing::error!("job {id} is both in input/ready/ and processing/; leaving both alone");
                Some(Outcome::Duplicate)
            }
            Err(e) => {
                tracing::error!("claiming job {id}: {e}; it stays in input/ready/");
                Some(Outcome::Interrupted(e.to_string()))
            }
        }
    }

    /// Turns a plan into an engine request: the prompt rendered with the
    /// chat template, the grammar derived and checked.
    fn request(&self, dir: &Path, spec: &JobSpec, plan: Plan) -> Result<Request, Failure> {
        let Some(inf) = self.inference.as_deref() else {
            return Err(Failure::new("no model to run it on".to_owned()));
        };
        match plan {
            Plan::Embed if !spec.images.is_empty() => Ok(Request::EmbedMedia {
                text: spec.prompt.clone(),
                media: spec.images.clone(),
            }),
            Plan::Embed => Ok(Request::Embed(spec.prompt.clone())),
            Plan::Speech { temp, top_k, seed } => Ok(Request::Speech(SpeechRequest {
                text: spec.prompt.clone(),
                temp,
                top_k,
                seed,
            })),
            Plan::Text {
                system,
                sampling,
                max_tokens,
                stop,
                constraint,
            } => {
                let grammar = match constraint {
                    Constraint::None => None,
                    Constraint::Gbnf(g) => Some(g),
                    Constraint::Schema(s) => {
                        // Only schema.json (an older submitter): derive the
                        // grammar, and keep it as the job's effective one.
                        let g = inf
                            .schema_to_grammar(&s)
                            .map_err(|e| Failure::of(Reason::BadInput, e))?;
                        self.ws
                            .io()
                            .write_atomic(dir, GRAMMAR_FILE, g.as_bytes())
                            .map_err(|e| Failure::new(format!("writing the derived grammar.gbnf: {e}")))?;
                        Some(g)
                    }
                };
                if let Some(g) = &grammar {
                    inf.check_grammar(g).map_err(|e| Failure::of(Reason::BadInput, e))?;
                }
                let media = match spec.job_type {
                    JobType::Vision => Some(MediaInput {
                        files: spec.images.clone(),
                        audio: false,
                    }),
                    JobType::Stt => Some(MediaInput {
                        files: spec.audio.clone(),
                        audio: true,
                    }),
                    _ => None,
                };
                // A media job's message holds one marker per file, where the
                // projector's chunks go (in front unless the prompt places them).
                let user = match &media {
                    Some(m) => {
                        let task = if m.audio && spec.prompt.trim().is_empty() {
                            STT_DEFAULT_PROMPT
                        } else {
                            spec.prompt.as_str()
                        };
                        with_markers(task, m.files.len())
                    }
                    None => spec.prompt.clone(),
                };
                let prompt = inf.render(system.as_deref(), &user).map_err(|e| {
                    Failure::of(
                        Reason::BadInput,
                        format!("{e}; set NRVNA_CHAT_TEMPLATE_FILE to a working template"),
                    )
                })?;
                Ok(Request::Text(TextRequest {
                    prompt,
                    sampling,
                    max_tokens,
                    stop,
                    grammar,
                    media,
                }))
            }
        }
    }

    /// A claimed entry that is a symlink or a file: replace it with a real
    /// directory holding error.txt, then fail it. Never follows the link.
    fn fail_non_directory(&self, id: &JobId, dir: &Path, what: &str, claimed: Instant, claimed_at: String) -> Outcome {
        let removed = fs::remove_file(dir);
        if let Err(e) = removed.and_then(|_| fs::create_dir(dir)) {
            tracing::error!("job {id} is {what} and could not be replaced: {e}");
            return Outcome::Interrupted(e.to_string());
        }
        let mut meta = Meta::new();
        meta.mode = Some(JobType::Text);
        let job = Claimed {
            id,
            dir,
            claimed,
            claimed_at,
            meta,
            used: None,
            claim: None,
        };
        let f = Failure::new(format!(
            "the job entry was {what}, not a job directory; its contents were not read"
        ));
        self.finisher().finish(job, Ending::Failed(f))
    }
}

/// The artifact of a finished run, or the failure when structured output
/// does not hold.
fn done(spec: &JobSpec, out: Output) -> Ending {
    match spec.job_type {
        JobType::Embed => {
            let v = out.embedding.clone().unwrap_or_default();
            Ending::Done {
                artifact: Artifact::Embedding,
                bytes: format!("{}\n", json!({ "dim": v.len(), "vector": v })).into_bytes(),
                out,
            }
        }
        JobType::Tts => match out.audio.as_deref().map(nrvna_engine::tts::audio::wav_bytes) {
            Some(Ok(bytes)) => Ending::Done {
                artifact: Artifact::Audio,
                bytes,
                out,
            },
            Some(Err(e)) => Ending::Failed(Failure::new(e.to_string())),
            None => Ending::Failed(Failure::new("the engine returned no audio for a tts job")),
        },
        _ => {
            let text = strip_think(&out.text);
            // Output cut by max_tokens cannot be whole JSON: the job is done
            // with finish_reason "length" and the cut text, as OpenAI
            // answers such a request.
            let cut = out.finish == Some(nrvna_engine::Finish::Length);
            if let Some(schema) = spec.schema.as_ref().filter(|_| !cut) {
                if let Err(why) = check_json_output(&text, schema) {
                    return Ending::Failed(Failure {
                        reason: why,
                        partial: Some(out.text.clone()),
                        cancelled: false,
                        class: Reason::Schema,
                    });
                }
            }
            Ending::Done {
                artifact: if spec.job_type == JobType::Stt {
                    Artifact::Transcript
                } else {
                    Artifact::Result
                },
                bytes: text.into_bytes(),
                out,
            }
        }
    }
}

/// Checks structured output: it must parse as JSON and satisfy the schema.
fn check_json_output(text: &str, schema: &Value) -> Result<(), String> {
    let v: Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("the output is not valid JSON ({e}); the raw output is in response.txt"))?;
    nrvna_schema::check::validate_instance(schema, &v)
        .map_err(|e| format!("the output does not match schema.json: {e}; the raw output is in response.txt"))
}
