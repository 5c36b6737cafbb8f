//! The four scenarios of issue #3, one module each, and what they share:
//! the run context and a daemon run from spawn to exit.

pub mod latency;
pub mod peer;
pub mod prefix;
pub mod probe;
pub mod queue;
pub mod rounds;
pub mod scale;
pub mod shape;
pub mod w16;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::daemon::{kib_to_mb, Daemon};
use crate::jobs::{collect, totals, JobResult, Totals};
use crate::report::opt;
use crate::stats::{parse_iso8601_micros, ratio};
use crate::tools::{wrk, Bins, Env, TempWs};

/// What every scenario needs.
pub struct Ctx {
    pub bins: Bins,
    /// Absolute path of the GGUF model.
    pub model: PathBuf,
    pub quick: bool,
    /// Rounds of the W16 and Gemma scenarios (see [`rounds`]).
    pub rounds: usize,
    /// The --out directory.
    pub out: PathBuf,
    /// Where the daemons' logs go.
    pub logs: PathBuf,
    /// The engine-bound probe's best figures (once the probe has run).
    pub probe: Option<probe::Best>,
}

impl Ctx {
    /// Fails with the fetch command when the model is missing.
    pub fn require_model(&self) -> Result<()> {
        if !self.model.is_file() {
            bail!(
                "model {} not found; fetch it with: scripts/fetch-model.sh",
                self.model.display()
            );
        }
        Ok(())
    }
}

/// Arguments from string-like items.
pub fn args<I, S>(items: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    items.into_iter().map(Into::into).collect()
}

/// Runs a daemon (normally with `--drain`) from spawn to exit: times the
/// model load from `.nrvnad.ready`, then waits for the exit, killing it
/// after `deadline`.
pub fn run_to_exit(
    ctx: &Ctx,
    label: &str,
    argv: &[OsString],
    env: &Env,
    ws: &Path,
    deadline: Duration,
) -> Result<Daemon> {
    let mut d = Daemon::spawn(&ctx.bins, label, argv, env, ws, &ctx.logs)?;
    d.wait_ready(deadline);
    d.wait_exit(deadline);
    Ok(d)
}

/// A queue pre-filled with `wrk`, then drained by one daemon run.
pub struct Drained {
    pub label: String,
    /// The daemon's record (None when the jobs could not even be submitted).
    pub daemon: Option<Value>,
    pub ok: bool,
    pub wall: Option<f64>,
    pub load: Option<f64>,
    pub rss_kib: Option<i64>,
    /// Average cores busy with other processes during the run.
    pub others_cores: Option<f64>,
    /// From spawn until the last job's meta.json `completed_at`.
    pub last_done: Option<f64>,
    pub jobs: Vec<JobResult>,
    pub totals: Totals,
    /// Why the run could not happen (submission or spawn failed).
    pub error: Option<String>,
}

impl Drained {
    /// The daemon exited 0 and all `n` jobs are done.
    pub fn complete(&self, n: usize) -> bool {
        self.ok && self.totals.done == n && self.wall.is_some()
    }

    /// Wall minus model load.
    pub fn processing(&self) -> Option<f64> {
        Some(self.wall? - self.load?)
    }

    /// Generated tokens per second of wall minus load.
    pub fn tok_s(&self) -> Option<f64> {
        ratio(Some(self.totals.generated_tokens as f64), self.processing())
    }

    /// Generated tokens per second of wall.
    pub fn tok_s_wall(&self) -> Option<f64> {
        ratio(Some(self.totals.generated_tokens as f64), self.wall)
    }

    pub fn peak_rss_mb(&self) -> Option<f64> {
        self.rss_kib.map(kib_to_mb)
    }

    /// Everything that went wrong, one line each, and a short status word
    /// for the table ("ok", "daemon failed, 3 of 16 done", ...).
    pub fn problems(&self, n: usize) -> (Vec<String>, String) {
        let mut lines = Vec::new();
        let mut words = Vec::new();
        if let Some(e) = &self.error {
            lines.push(format!("{}: {e}", self.label));
            words.push("error".to_owned());
        }
        if let Some(p) = self.daemon.as_ref().and_then(|d| d["problem"].as_str()) {
            lines.push(p.to_owned());
            words.push("daemon failed".to_owned());
        }
        for p in &self.totals.problems {
            lines.push(format!("{}: {p}", self.label));
        }
        if self.error.is_none() && self.totals.done < n {
            words.push(format!("{} of {n} done", self.totals.done));
        }
        let word = if words.is_empty() {
            "ok".to_owned()
        } else {
            words.join(", ")
        };
        (lines, word)
    }

    /// The run's figures as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "daemon": self.daemon,
            "error": self.error,
            "wall_s": self.wall,
            "load_s": self.load,
            "processing_s": self.processing(),
            "last_job_done_s": self.last_done,
            "jobs_per_s": ratio(Some(self.totals.done as f64), self.wall),
            "generated_tokens_per_s": self.tok_s(),
            "generated_tokens_per_s_wall": self.tok_s_wall(),
            "peak_rss_mb": self.peak_rss_mb(),
            "others_cores": self.others_cores,
            "jobs": self.totals.to_json(),
        })
    }
}

/// Publishes `prompts` with `wrk` into a fresh workspace, then runs
/// `nrvnad MODEL WS --drain DAEMON_ARGS...` with `env` until it exits.
pub fn submit_and_drain(
    ctx: &Ctx,
    label: &str,
    prompts: &[String],
    daemon_args: &[&str],
    env: &Env,
    deadline: Duration,
) -> Drained {
    submit_and_drain_model(ctx, &ctx.model, label, prompts, daemon_args, env, deadline)
}

/// [`submit_and_drain`] with another model than the run's.
pub fn submit_and_drain_model(
    ctx: &Ctx,
    model: &Path,
    label: &str,
    prompts: &[String],
    daemon_args: &[&str],
    env: &Env,
    deadline: Duration,
) -> Drained {
    let mut d = Drained {
        label: label.to_owned(),
        daemon: None,
        ok: false,
        wall: None,
        load: None,
        rss_kib: None,
        others_cores: None,
        last_done: None,
        jobs: Vec::new(),
        totals: Totals::default(),
        error: None,
    };
    let r = (|| -> Result<()> {
        let ws = TempWs::new(label)?;
        let mut ids = Vec::new();
        for p in prompts {
            ids.push(wrk(&ctx.bins, ws.path(), &[p.as_str()], &Env::new())?);
        }
        let mut argv = args([model.as_os_str(), ws.path().as_os_str()]);
        argv.push("--drain".into());
        argv.extend(args(daemon_args.iter().copied()));
        let daemon = run_to_exit(ctx, label, &argv, env, ws.path(), deadline)?;
        let exit = daemon.exit().cloned();
        d.ok = daemon.ok();
        d.wall = exit.as_ref().map(|e| e.wall.as_secs_f64());
        d.load = daemon.load().map(|l| l.as_secs_f64());
        d.rss_kib = exit.as_ref().map(|e| e.maxrss_kib);
        d.others_cores = exit.as_ref().and_then(|e| e.others_cores());
        d.daemon = Some(daemon.record());
        d.jobs = collect(ws.path(), &ids);
        d.totals = totals(&d.jobs);
        let spawn_us = daemon
            .spawned_at
            .duration_since(UNIX_EPOCH)
            .map(|t| t.as_micros() as i64)
            .unwrap_or(0);
        d.last_done = d
            .jobs
            .iter()
            .filter_map(|j| j.text("completed_at").and_then(parse_iso8601_micros))
            .max()
            .map(|t| (t - spawn_us) as f64 / 1e6);
        Ok(())
    })();
    if let Err(e) = r {
        d.error = Some(format!("{e:#}"));
    }
    eprintln!(
        "{label}: wall {} s, load {} s, other load {} cores, {} done, {} failed{}",
        opt(d.wall, 2),
        opt(d.load, 2),
        opt(d.others_cores, 2),
        d.totals.done,
        d.totals.failed,
        d.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
    );
    d
}
