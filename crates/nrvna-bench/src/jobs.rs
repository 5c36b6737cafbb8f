//! Reading what a run produced: each submitted job's state, meta.json,
//! result.txt or error.txt, and the totals the scenarios report.

use std::path::Path;

use nrvna_core::files::{Artifact, ERROR_FILE, META_FILE};
use nrvna_core::{JobId, State, Workspace};
use serde_json::{json, Value};

/// One submitted job after a run.
#[derive(Clone, Debug)]
pub struct JobResult {
    pub id: String,
    /// `done`, `failed`, `queued`, `running` or `missing`.
    pub state: &'static str,
    /// meta.json (Null when absent or unreadable).
    pub meta: Value,
    pub result: Option<String>,
    pub error: Option<String>,
}

impl JobResult {
    pub fn done(&self) -> bool {
        self.state == "done"
    }

    /// A numeric meta.json key, 0 when absent.
    pub fn num(&self, key: &str) -> u64 {
        self.meta.get(key).and_then(Value::as_u64).unwrap_or(0)
    }

    pub fn text(&self, key: &str) -> Option<&str> {
        self.meta.get(key).and_then(Value::as_str)
    }
}

/// Looks up each id in `ws`.
pub fn collect(ws: &Path, ids: &[String]) -> Vec<JobResult> {
    let w = Workspace::open(ws).ok();
    ids.iter()
        .map(|id| {
            let mut r = JobResult {
                id: id.clone(),
                state: "missing",
                meta: Value::Null,
                result: None,
                error: None,
            };
            let (Some(w), Ok(jid)) = (&w, JobId::parse(id)) else {
                return r;
            };
            let Some(state) = w.locate(&jid) else {
                return r;
            };
            r.state = state.label();
            let dir = w.job_dir(state, &jid);
            r.meta = std::fs::read(dir.join(META_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            if state == State::Done {
                r.result = std::fs::read_to_string(dir.join(Artifact::Result.file_name())).ok();
            }
            if state == State::Failed {
                r.error = Some(
                    std::fs::read_to_string(dir.join(ERROR_FILE))
                        .map(|s| s.trim().to_owned())
                        .unwrap_or_else(|e| format!("(no error.txt: {e})")),
                );
            }
            r
        })
        .collect()
}

/// Totals over a run's jobs.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub done: usize,
    pub failed: usize,
    /// Neither done nor failed after the run (queued, running, missing).
    pub unfinished: usize,
    pub generated_tokens: u64,
    pub prompt_tokens: u64,
    pub reused_prompt_tokens: u64,
    /// `ID: reason` of each job that did not finish done.
    pub problems: Vec<String>,
}

pub fn totals(jobs: &[JobResult]) -> Totals {
    let mut t = Totals::default();
    for j in jobs {
        match j.state {
            "done" => t.done += 1,
            "failed" => t.failed += 1,
            _ => t.unfinished += 1,
        }
        t.generated_tokens += j.num("generated_tokens");
        t.prompt_tokens += j.num("prompt_tokens");
        t.reused_prompt_tokens += j.num("reused_prompt_tokens");
        if !j.done() {
            let why = j.error.clone().unwrap_or_else(|| j.state.to_owned());
            t.problems.push(format!("job {} {}: {why}", j.id, j.state));
        }
    }
    t
}

impl Totals {
    pub fn to_json(&self) -> Value {
        json!({
            "done": self.done,
            "failed": self.failed,
            "unfinished": self.unfinished,
            "generated_tokens": self.generated_tokens,
            "prompt_tokens": self.prompt_tokens,
            "reused_prompt_tokens": self.reused_prompt_tokens,
            "job_problems": self.problems,
        })
    }
}
