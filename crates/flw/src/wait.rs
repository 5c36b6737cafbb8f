//! `-w` (wait for one job) and `-W` (a barrier over a scope of jobs).
//!
//! Both wake on inotify events in the state directories through core's
//! `wait_for` (a slow poll covers filesystems without events), never on a
//! fixed polling loop.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Result;
use nrvna_core::live::Progress;
use nrvna_core::wait::{wait_for, wait_for_polling_first};
use nrvna_core::{JobId, State, Workspace};

use crate::scope::{Scope, ScopeCache};
use crate::show::{eprintln_missing, show};
use crate::ticker::Ticker;
use crate::Outcome;

/// The directories whose entries change on every transition.
pub fn state_dirs(ws: &Workspace) -> Vec<std::path::PathBuf> {
    [State::Ready, State::Processing, State::Done, State::Failed]
        .map(|s| ws.dir(s))
        .to_vec()
}

/// How long `-w` looks every few milliseconds before it watches with inotify.
const EARLY: Duration = Duration::from_millis(250);

fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + t)
}

/// Waits for one job to finish, then prints it as `flw WS ID` does.
/// A job that no state directory holds (not even input/writing/) is
/// missing at once: waiting for it would never end.
pub fn wait_one(ws: &Workspace, id: &JobId, timeout: Option<Duration>, json: bool) -> Result<Outcome> {
    let dirs = state_dirs(ws);
    let dirs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
    let mut ticker = Ticker::new();
    // Most waits piped from wrk are for short jobs: see
    // wait_for_polling_first for why the first quarter second polls.
    let found = wait_for_polling_first(&dirs, ws.settings().wait_poll, deadline(timeout), EARLY, || {
        match ws.locate(id) {
            None => Some(None),
            Some(s) if s.is_terminal() => Some(Some(s)),
            Some(s) => {
                let detail = match s {
                    State::Processing => Progress::read(&ws.job_dir(s, id))
                        .map(|p| format!(" ({} tokens, {:.1} tok/s)", p.tokens, p.tokens_per_s))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                ticker.show(&format!("waiting for {id}: {}{detail}", s.label()));
                None
            }
        }
    });
    ticker.clear();
    match found {
        Some(None) => {
            eprintln_missing(ws, id);
            Ok(Outcome::Failed)
        }
        Some(Some(_)) => show(ws, id, json),
        None => {
            let state = ws.locate(id).map_or("missing", |s| s.label());
            eprintln!(
                "flw: timed out waiting for job {id}; it is still {state} (wait longer with --timeout, or check the daemon with: flw {})",
                ws.root().display()
            );
            Ok(Outcome::Pending)
        }
    }
}

/// Counts of the jobs in a scope.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub queued: usize,
    pub running: usize,
    pub done: usize,
    pub failed: usize,
}

/// Waits until no job in scope is queued or running. Done when none of
/// them failed, failed otherwise. Waiting on the whole workspace prints
/// the final counts on stdout as the C++ flw does (`idle (N done, M
/// failed)`, or with `json` the counts object); a --tag/--children wait
/// prints nothing there.
pub fn wait_all(ws: &Workspace, scope: &Scope, timeout: Option<Duration>, json: bool) -> Result<Outcome> {
    let dirs = state_dirs(ws);
    let dirs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
    let mut ticker = Ticker::new();
    let mut cache = ScopeCache::default();
    let mut last = Counts::default();
    let finished = wait_for(&dirs, ws.settings().wait_poll, deadline(timeout), || {
        let mut c = Counts::default();
        for j in cache.jobs(ws, scope) {
            match j.state {
                State::Ready | State::Writing => c.queued += 1,
                State::Processing => c.running += 1,
                State::Done => c.done += 1,
                State::Failed => c.failed += 1,
            }
        }
        last = c;
        if c.queued + c.running == 0 {
            return Some(c);
        }
        ticker.show(&format!(
            "waiting: {} queued, {} running, {} done, {} failed",
            c.queued, c.running, c.done, c.failed
        ));
        None
    });
    ticker.clear();
    if let (Some(c), true) = (finished, scope.is_all()) {
        let line = if json {
            serde_json::json!({ "queued": c.queued, "running": c.running, "done": c.done, "failed": c.failed })
                .to_string()
        } else {
            format!("idle ({} done, {} failed)", c.done, c.failed)
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    match finished {
        Some(c) if c.failed > 0 => {
            let hint = if scope.is_all() {
                format!("see: flw {}", ws.root().display())
            } else {
                format!("list them with: flw {} {}", ws.root().display(), scope_flags(scope))
            };
            eprintln!(
                "flw: {} of {} jobs {} failed ({hint})",
                c.failed,
                c.done + c.failed,
                scope.describe(),
            );
            Ok(Outcome::Failed)
        }
        Some(c) => {
            if c.done == 0 {
                eprintln!("flw: no jobs {}", scope.describe());
            }
            Ok(Outcome::Done)
        }
        None => {
            eprintln!(
                "flw: timed out; jobs {} still unfinished: {} queued, {} running",
                scope.describe(),
                last.queued,
                last.running
            );
            Ok(Outcome::Pending)
        }
    }
}

/// The command-line flags that select a scope again (for hints).
fn scope_flags(scope: &Scope) -> String {
    let mut s = String::new();
    if let Some(t) = &scope.tag {
        s.push_str(&format!("--tag {t} "));
    }
    if let Some(p) = &scope.parent {
        s.push_str(&format!("--children {p} "));
    }
    s.trim_end().to_owned()
}
