//! The Processor: claims a job by renaming it into `processing/` (only one
//! rename wins, so duplicate submissions are harmless), reads and checks it,
//! runs it on the worker's Runner, and finishes it into `output/` or
//! `failed/`. A bad job fails with a one-line `error.txt`; it never stops
//! the daemon.

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use nrvna_core::fsio::{iso8601_utc, read_limited, read_optional, sync_dir, write_atomic, ReadError};
use nrvna_core::meta::{two_decimals, Meta, MAX_META_BYTES};
use nrvna_core::params::{Params, MAX_PARAMS_BYTES};
use nrvna_core::submit::max_prompt_bytes;
use nrvna_core::{JobId, JobType, Moved, State};
use nrvna_engine::sampling::{fresh_seed, Sampling};
use nrvna_engine::template::strip_think;
use nrvna_engine::{Output, Request, RunError, Runner, TextRequest};
use serde_json::{json, Value};

use crate::observer::{JobObserver, StopKind};
use crate::server::Shared;
use nrvna_core::live::{CANCEL_FILE, PARTIAL_FILE, PROGRESS_FILE};

/// Largest schema.json / grammar.gbnf the daemon reads.
const MAX_CONSTRAINT_BYTES: u64 = 256 * 1024;
/// Largest type.txt.
const MAX_TYPE_BYTES: u64 = 64;

/// How processing one id ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Done,
    Failed(String),
    /// Another worker (or daemon) claimed it first.
    Lost,
    /// A job with this id already exists in a later state; nothing was touched.
    Duplicate,
    /// Left in `processing/` (shutdown, or the workspace refused the finish):
    /// recovered by the next start.
    LeftInProcessing(String),
    /// Put back into `input/ready/` because the disk is full: it runs again
    /// once there is space, without a restart.
    Requeued(String),
}

impl Outcome {
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed(_))
    }
}

/// What a job asks for, read from its directory.
struct Spec {
    job_type: JobType,
    prompt: String,
    params: Params,
    meta: Meta,
    grammar: Option<String>,
    schema: Option<Value>,
}

/// A job that failed before or during its run.
struct Failure {
    reason: String,
    partial: Option<String>,
    cancelled: bool,
}

impl Failure {
    fn new(reason: impl Into<String>) -> Failure {
        Failure {
            reason: reason.into(),
            partial: None,
            cancelled: false,
        }
    }
}

/// One worker's processor.
pub struct Processor {
    shared: Arc<Shared>,
    runner: Box<dyn Runner>,
    /// When the current job was claimed (ISO-8601), recorded in meta.json.
    claimed_at: String,
}

impl Processor {
    pub fn new(shared: Arc<Shared>, runner: Box<dyn Runner>) -> Processor {
        Processor {
            shared,
            runner,
            claimed_at: String::new(),
        }
    }

    /// Claims and processes one job.
    pub fn process(&mut self, id: &JobId) -> Outcome {
        let ws = &self.shared.ws;
        for later in [State::Processing, State::Done, State::Failed] {
            if fs::symlink_metadata(ws.job_dir(later, id)).is_ok() {
                tracing::error!(
                    "job {id} in input/ready/ has the id of a job already in {}/; leaving both alone (remove one of them)",
                    later.dir()
                );
                return Outcome::Duplicate;
            }
        }
        match ws.transition(id, State::Ready, State::Processing) {
            Ok(Moved::Yes) => {}
            Ok(Moved::SourceGone) => return Outcome::Lost,
            Ok(Moved::DestinationExists) => {
                tracing::error!("job {id} is both in input/ready/ and processing/; leaving both alone");
                return Outcome::Duplicate;
            }
            Err(e) => {
                tracing::error!("claiming job {id}: {e}; it stays in input/ready/");
                return Outcome::LeftInProcessing(e.to_string());
            }
        }
        let claimed = Instant::now();
        self.claimed_at = iso8601_utc(SystemTime::now());
        tracing::info!("claimed {id}");
        let dir = ws.job_dir(State::Processing, id);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) => {
                let what = if m.file_type().is_symlink() {
                    "a symlink"
                } else {
                    "not a directory"
                };
                return self.fail_non_directory(id, &dir, what, claimed);
            }
            Err(e) => return Outcome::LeftInProcessing(e.to_string()),
        }
        let spec = match read_spec(&dir) {
            Ok(s) => s,
            Err((f, meta)) => return self.fail(id, &dir, meta, f, claimed, None),
        };
        let meta = spec.meta.clone();
        let (req, used) = match self.build_request(&dir, &spec) {
            Ok(r) => r,
            Err(f) => return self.fail(id, &dir, meta, f, claimed, None),
        };
        let obs = Arc::new(JobObserver::new(
            dir.clone(),
            self.shared.clone(),
            spec.params.timeout_s,
        ));
        if obs.cancel_requested() {
            let f = Failure {
                reason: "cancelled by user".into(),
                partial: Some(String::new()),
                cancelled: true,
            };
            return self.fail(id, &dir, meta, f, claimed, Some(&used));
        }
        // No final flush of partial.txt/progress.json: result.txt (or
        // response.txt) follows at once, and each file is a new inode.
        let result = self.runner.run(req, obs.clone());
        match result {
            Ok(out) => self.finish_done(id, &dir, spec, out, &used, claimed),
            Err(RunError::Stopped { reason, partial, .. }) => match obs.stop_kind() {
                Some(StopKind::Shutdown) | None => {
                    tracing::info!("{id} interrupted by shutdown ({reason}); it stays in processing/ and is recovered at the next start");
                    Outcome::LeftInProcessing(reason)
                }
                Some(kind) => {
                    let f = Failure {
                        reason,
                        partial: Some(partial),
                        cancelled: kind == StopKind::Cancelled,
                    };
                    self.fail(id, &dir, meta, f, claimed, Some(&used))
                }
            },
            Err(RunError::Rejected(r)) | Err(RunError::Engine(r)) => {
                self.fail(id, &dir, meta, Failure::new(r), claimed, Some(&used))
            }
        }
    }

    /// Turns a job spec into an engine request; returns the parameters used.
    fn build_request(&self, dir: &Path, spec: &Spec) -> Result<(Request, Value), Failure> {
        let inf = &self.shared.inference;
        match spec.job_type {
            JobType::Embed => Ok((Request::Embed(spec.prompt.clone()), json!({}))),
            JobType::Text => {
                let p = &spec.params;
                let d = &inf.cfg;
                let sampling = Sampling {
                    temp: p.temp.unwrap_or(d.sampling.temp),
                    top_k: p.top_k.unwrap_or(d.sampling.top_k),
                    top_p: p.top_p.unwrap_or(d.sampling.top_p),
                    min_p: p.min_p.unwrap_or(d.sampling.min_p),
                    repeat_penalty: p.repeat_penalty.unwrap_or(d.sampling.repeat_penalty),
                    repeat_last_n: d.sampling.repeat_last_n,
                    seed: Some(p.seed.or(d.sampling.seed).unwrap_or_else(fresh_seed)),
                };
                let max_tokens = p.max_tokens.unwrap_or(d.predict);
                let stop = p.stop.clone().unwrap_or_default();
                let grammar = match (&spec.schema, &spec.grammar) {
                    (Some(schema), _) => {
                        let g = inf.schema_to_grammar(&schema.to_string()).map_err(Failure::new)?;
                        write_atomic(dir, "grammar.gbnf", g.as_bytes())
                            .map_err(|e| Failure::new(format!("writing grammar.gbnf: {e}")))?;
                        Some(g)
                    }
                    (None, Some(g)) => Some(g.clone()),
                    (None, None) => None,
                };
                if let Some(g) = &grammar {
                    inf.check_grammar(g).map_err(Failure::new)?;
                }
                let prompt = inf
                    .render(p.system.as_deref(), &spec.prompt)
                    .map_err(|e| Failure::new(format!("{e}; set NRVNA_CHAT_TEMPLATE_FILE to a working template")))?;
                let mut used = json!({
                    "temp": f32_json(sampling.temp),
                    "top_k": sampling.top_k,
                    "top_p": f32_json(sampling.top_p),
                    "min_p": f32_json(sampling.min_p),
                    "repeat_penalty": f32_json(sampling.repeat_penalty),
                    "repeat_last_n": sampling.repeat_last_n,
                    "seed": sampling.seed,
                    "max_tokens": max_tokens,
                    "stop": stop,
                    "system": p.system.is_some(),
                });
                if let Some(t) = p.timeout_s {
                    used["timeout_s"] = json!(t);
                }
                Ok((
                    Request::Text(TextRequest {
                        prompt,
                        sampling,
                        max_tokens,
                        stop,
                        grammar,
                    }),
                    used,
                ))
            }
            other => Err(Failure::new(format!(
                "job type {} is not supported by this daemon (it runs text and embed jobs)",
                other.as_str()
            ))),
        }
    }

    fn finish_done(&self, id: &JobId, dir: &Path, spec: Spec, out: Output, used: &Value, claimed: Instant) -> Outcome {
        let (artifact, bytes) = match spec.job_type {
            JobType::Embed => {
                let v = out.embedding.clone().unwrap_or_default();
                (
                    "embedding.json",
                    format!("{}\n", json!({ "dim": v.len(), "vector": v })).into_bytes(),
                )
            }
            _ => {
                let text = strip_think(&out.text);
                if let Some(schema) = &spec.schema {
                    if let Err(why) = check_json_output(&text, schema) {
                        let f = Failure {
                            reason: why,
                            partial: Some(out.text.clone()),
                            cancelled: false,
                        };
                        return self.fail(id, dir, spec.meta, f, claimed, Some(used));
                    }
                }
                ("result.txt", text.into_bytes())
            }
        };
        let mut meta = spec.meta;
        self.stamp(&mut meta, claimed, "done", Some(used));
        meta.set("artifacts", vec![artifact]);
        meta.set("prompt_tokens", out.prompt_tokens);
        meta.set("generated_tokens", out.generated_tokens);
        meta.set("reused_prompt_tokens", out.reused_tokens);
        meta.set("generation_s", two_decimals(out.gen_secs));
        if out.gen_secs > 0.0 && out.generated_tokens > 0 {
            meta.set(
                "tokens_per_s",
                two_decimals(f64::from(out.generated_tokens) / out.gen_secs),
            );
        }
        if let Some(f) = out.finish {
            meta.set("finish_reason", f.as_str());
        }
        let written = (|| -> std::io::Result<()> {
            clear_the_way(dir, &[artifact, "meta.json"])?;
            write_atomic(dir, artifact, &bytes)?;
            write_atomic(dir, "meta.json", &meta.to_bytes())?;
            for scratch in [PARTIAL_FILE, PROGRESS_FILE] {
                let _ = fs::remove_file(dir.join(scratch));
            }
            sync_dir(dir)
        })();
        if let Err(e) = written {
            if out_of_space(&e) {
                return self.requeue(id, dir, format!("no space left on device writing {artifact}"));
            }
            let f = Failure::new(format!("could not write {artifact}: {e}"));
            return self.fail(id, dir, meta, f, claimed, Some(used));
        }
        match self.finish_into(id, State::Done) {
            Ok(Moved::Yes) => {
                tracing::info!(
                    "done {id} in {:.2} s ({} prompt + {} generated tokens)",
                    claimed.elapsed().as_secs_f64(),
                    out.prompt_tokens,
                    out.generated_tokens
                );
                Outcome::Done
            }
            Ok(other) => {
                let why = format!("finishing {id} into output/: {other:?}");
                tracing::error!("{why}; it stays in processing/");
                Outcome::LeftInProcessing(why)
            }
            Err(e) => {
                // The workspace, not the job, is at fault (output/ read-only,
                // say): keep the job recoverable rather than failing it.
                let why = format!(
                    "could not move finished job {id} into {}: {e}; it stays in processing/ and runs again at the next start (fix that directory)",
                    self.shared.ws.dir(State::Done).display()
                );
                tracing::error!("{why}");
                Outcome::LeftInProcessing(why)
            }
        }
    }

    /// Puts a job back into `input/ready/` (the disk is full: neither its
    /// result nor its error could be written). Nothing half-written stays.
    fn requeue(&self, id: &JobId, dir: &Path, why: String) -> Outcome {
        for f in [
            PARTIAL_FILE,
            PROGRESS_FILE,
            "result.txt",
            "embedding.json",
            "response.txt",
            "error.txt",
        ] {
            let _ = fs::remove_file(dir.join(f));
        }
        match self.shared.ws.transition(id, State::Processing, State::Ready) {
            Ok(Moved::Yes) => {
                tracing::warn!("{id}: {why}; put back in input/ready/ to run again when there is space");
                // Do not spin on a full disk.
                std::thread::sleep(std::time::Duration::from_secs(1));
                Outcome::Requeued(why)
            }
            other => {
                tracing::error!("{id}: {why}; putting it back failed ({other:?}); it stays in processing/");
                Outcome::LeftInProcessing(why)
            }
        }
    }

    /// The finishing rename; a state directory removed while the daemon
    /// runs is created again first.
    fn finish_into(&self, id: &JobId, to: State) -> std::io::Result<Moved> {
        let ws = &self.shared.ws;
        if !ws.dir(to).is_dir() {
            tracing::warn!("{} is missing; creating it again", ws.dir(to).display());
            fs::create_dir_all(ws.dir(to))?;
        }
        ws.transition(id, State::Processing, to)
    }

    /// Sets the finish keys of meta.json.
    fn stamp(&self, meta: &mut Meta, claimed: Instant, status: &str, used: Option<&Value>) {
        meta.set("claimed_at", self.claimed_at.clone());
        meta.set("completed_at", iso8601_utc(SystemTime::now()));
        meta.set("duration_s", two_decimals(claimed.elapsed().as_secs_f64()));
        meta.set("status", status);
        meta.set("model", self.shared.inference.model_name());
        meta.set("engine", format!("{:?}", self.shared.inference.kind).to_lowercase());
        if let Some(u) = used {
            meta.set("params", u.clone());
        }
    }

    /// Finishes a job as failed: error.txt (one line), response.txt when
    /// there is partial output, meta.json, then the rename into failed/.
    fn fail(
        &self,
        id: &JobId,
        dir: &Path,
        mut meta: Meta,
        f: Failure,
        claimed: Instant,
        used: Option<&Value>,
    ) -> Outcome {
        let reason = one_line(&f.reason);
        tracing::warn!("failed {id}: {reason}");
        self.stamp(&mut meta, claimed, "failed", used);
        let mut artifacts = vec!["error.txt"];
        if f.partial.is_some() {
            artifacts.push("response.txt");
        }
        meta.set("artifacts", artifacts);
        if f.cancelled {
            meta.set("cancelled", true);
        }
        let written = (|| -> std::io::Result<()> {
            clear_the_way(dir, &["response.txt", "error.txt", "meta.json"])?;
            if let Some(p) = &f.partial {
                write_atomic(dir, "response.txt", p.as_bytes())?;
            }
            write_atomic(dir, "error.txt", format!("{reason}\n").as_bytes())?;
            write_atomic(dir, "meta.json", &meta.to_bytes())?;
            for scratch in [PARTIAL_FILE, PROGRESS_FILE, CANCEL_FILE] {
                let _ = fs::remove_file(dir.join(scratch));
            }
            sync_dir(dir)
        })();
        if let Err(e) = written {
            if out_of_space(&e) {
                return self.requeue(id, dir, format!("no space left on device writing error.txt ({reason})"));
            }
            tracing::error!("writing error.txt and meta.json of {id}: {e}; moving it to failed/ anyway");
        }
        self.shared.failures.fetch_add(1, Ordering::SeqCst);
        match self.finish_into(id, State::Failed) {
            Ok(Moved::Yes) => Outcome::Failed(reason),
            Ok(other) => {
                tracing::error!("finishing {id} into failed/: {other:?}; it stays in processing/");
                Outcome::LeftInProcessing(reason)
            }
            Err(e) => {
                tracing::error!(
                    "finishing {id} into failed/: {e}; it stays in processing/ and is recovered at the next start"
                );
                Outcome::LeftInProcessing(reason)
            }
        }
    }

    /// A claimed entry that is a symlink or a file: replace it with a real
    /// directory holding error.txt, then fail it. Never follows the link.
    fn fail_non_directory(&self, id: &JobId, dir: &Path, what: &str, claimed: Instant) -> Outcome {
        let removed = fs::remove_file(dir);
        if let Err(e) = removed.and_then(|_| fs::create_dir(dir)) {
            tracing::error!("job {id} is {what} and could not be replaced: {e}");
            return Outcome::LeftInProcessing(e.to_string());
        }
        let mut meta = Meta::new();
        meta.set("mode", "text");
        let f = Failure::new(format!(
            "the job entry was {what}, not a job directory; its contents were not read"
        ));
        self.fail(id, dir, meta, f, claimed, None)
    }
}

/// Moves aside anything that is not a regular file where the daemon must
/// write one (a hostile job may hold a directory named meta.json).
fn clear_the_way(dir: &Path, names: &[&str]) -> std::io::Result<()> {
    for name in names {
        let p = dir.join(name);
        if fs::symlink_metadata(&p).is_ok_and(|m| !m.file_type().is_file() && !m.file_type().is_symlink()) {
            let aside = dir.join(format!("{name}.invalid"));
            let _ = fs::remove_dir_all(&aside).or_else(|_| fs::remove_file(&aside));
            fs::rename(&p, &aside)?;
        }
    }
    Ok(())
}

/// ENOSPC or EDQUOT: the disk (or quota) is full.
fn out_of_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// An f32 as the JSON number a person typed (0.8, not 0.800000011920929).
fn f32_json(x: f32) -> Value {
    format!("{x}").parse::<f64>().map(Value::from).unwrap_or(Value::Null)
}

/// Keeps error.txt to one line.
fn one_line(s: &str) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.is_empty() {
        "failed (no reason given)".into()
    } else {
        s
    }
}

fn read_err(file: &str, e: ReadError) -> String {
    match e {
        ReadError::TooLarge { limit } if file == "prompt.txt" => {
            format!("prompt.txt is larger than the limit of {limit} bytes (NRVNA_MAX_PROMPT_SIZE)")
        }
        e => format!("{file} {e}"),
    }
}

/// Reads and checks everything the job directory holds. On error, returns
/// the failure and the best meta.json to finish it with.
fn read_spec(dir: &Path) -> Result<Spec, (Failure, Meta)> {
    let fresh = || {
        let mut m = Meta::new();
        m.set("mode", "text");
        m
    };
    let meta = match read_optional(&dir.join("meta.json"), MAX_META_BYTES) {
        Ok(Some(b)) => match Meta::parse(&b) {
            Ok(m) => m,
            Err(e) => {
                let _ = write_atomic(dir, "meta.json.invalid", &b);
                return Err((
                    Failure::new(format!("meta.json {e} (the original is kept as meta.json.invalid)")),
                    fresh(),
                ));
            }
        },
        Ok(None) => fresh(),
        Err(e) => return Err((Failure::new(read_err("meta.json", e)), fresh())),
    };
    let bail = |f: String| Err((Failure::new(f), meta.clone()));
    let job_type = match read_optional(&dir.join("type.txt"), MAX_TYPE_BYTES) {
        Ok(Some(b)) => {
            let s = String::from_utf8_lossy(&b);
            match JobType::parse(s.trim()) {
                Some(t) => t,
                None => {
                    return bail(format!(
                        "type.txt says {:?}: unknown job type (expected text, embed, vision, stt or tts)",
                        s.trim()
                    ))
                }
            }
        }
        Ok(None) => meta.mode().unwrap_or(JobType::Text),
        Err(ReadError::TooLarge { .. }) => return bail("type.txt is not a job type (over 64 bytes)".into()),
        Err(e) => return bail(read_err("type.txt", e)),
    };
    let params = match read_optional(&dir.join("params.json"), MAX_PARAMS_BYTES) {
        Ok(Some(b)) => match Params::parse_lenient(&b) {
            Ok((p, unknown)) => {
                if !unknown.is_empty() {
                    tracing::warn!(
                        "{}: params.json has unknown keys {unknown:?}; ignoring them",
                        dir.display()
                    );
                }
                p
            }
            Err(e) => return bail(format!("params.json {e}")),
        },
        Ok(None) => Params::default(),
        Err(e) => return bail(read_err("params.json", e)),
    };
    let prompt = match read_limited(&dir.join("prompt.txt"), max_prompt_bytes()) {
        Ok(b) => match String::from_utf8(b) {
            Ok(s) => s,
            Err(e) => {
                return bail(format!(
                    "prompt.txt is not valid UTF-8 (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ))
            }
        },
        Err(e) => return bail(read_err("prompt.txt", e)),
    };
    if prompt.trim().is_empty() {
        return bail("prompt.txt is empty".into());
    }
    if prompt.contains('\0') {
        return bail("prompt.txt contains NUL bytes".into());
    }
    let grammar = match read_optional(&dir.join("grammar.gbnf"), MAX_CONSTRAINT_BYTES) {
        Ok(Some(b)) => match String::from_utf8(b) {
            Ok(s) => Some(s),
            Err(_) => return bail("grammar.gbnf is not valid UTF-8".into()),
        },
        Ok(None) => None,
        Err(e) => return bail(read_err("grammar.gbnf", e)),
    };
    let schema = match read_optional(&dir.join("schema.json"), MAX_CONSTRAINT_BYTES) {
        Ok(Some(b)) => match serde_json::from_slice::<Value>(&b) {
            Ok(v @ (Value::Object(_) | Value::Bool(_))) => Some(v),
            Ok(_) => return bail("schema.json is not a JSON Schema (an object or a boolean)".into()),
            Err(e) => return bail(format!("schema.json is not valid JSON: {e}")),
        },
        Ok(None) => None,
        Err(e) => return bail(read_err("schema.json", e)),
    };
    if job_type == JobType::Embed && (grammar.is_some() || schema.is_some()) {
        return bail("embed jobs take no grammar.gbnf or schema.json".into());
    }
    Ok(Spec {
        job_type,
        prompt,
        params,
        meta,
        grammar,
        schema,
    })
}

/// Checks structured output: it must parse as JSON and satisfy the schema.
fn check_json_output(text: &str, schema: &Value) -> Result<(), String> {
    let v: Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("the output is not valid JSON ({e}); the raw output is in response.txt"))?;
    crate::schema::validate(schema, &v)
        .map_err(|e| format!("the output does not match schema.json: {e}; the raw output is in response.txt"))
}
