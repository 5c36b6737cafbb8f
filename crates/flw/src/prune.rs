//! `flw WS --prune`: retention for people who run no daemon. The same
//! round as nrvnad's retention thread (`nrvna_core::retention::prune`),
//! under the same prune lock (it waits for a daemon's round to end).

use std::io::{self, Write};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};
use nrvna_core::retention::{self, Finished, Policy, PruneLock, Round};
use nrvna_core::{State, Workspace};
use serde_json::json;

use crate::{Args, Outcome};

/// What to prune.
#[derive(Debug)]
pub struct Request {
    pub policy: Policy,
    pub states: Vec<State>,
    pub dry_run: bool,
    pub json: bool,
}

impl Request {
    pub fn from_args(a: &Args) -> Result<Request> {
        let states = match a.state.as_deref() {
            Some("done") => vec![State::Done],
            Some("failed") => vec![State::Failed],
            _ => vec![State::Done, State::Failed],
        };
        let policy = Policy {
            done: a.older_than,
            failed: a.older_than,
            max_jobs: a.max_jobs,
            max_bytes: a.max_bytes,
        };
        if policy.keeps_all() {
            bail!("--prune needs a policy: --older-than D (e.g. 7d; 0s for every finished job), --max-jobs N or --max-bytes SIZE");
        }
        Ok(Request {
            policy,
            states,
            dry_run: a.dry_run,
            json: a.json,
        })
    }
}

/// Removes (or with --dry-run lists) what the policy selects.
pub fn prune(ws: &Workspace, req: &Request) -> Result<Outcome> {
    let lock_path = ws.file(retention::PRUNE_LOCK_FILE);
    let _lock = match PruneLock::acquire(ws, false).with_context(|| format!("locking {}", lock_path.display()))? {
        Some(l) => l,
        None => {
            eprintln!(
                "flw: another pruner (a daemon's retention round) holds {}; waiting for it",
                lock_path.display()
            );
            PruneLock::acquire(ws, true)
                .with_context(|| format!("locking {}", lock_path.display()))?
                .context("the prune lock was not granted")?
        }
    };
    let t0 = Instant::now();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut write_err: Option<io::Error> = None;
    let json = req.json;
    let mut print = |step: &[Finished]| {
        for j in step {
            if write_err.is_some() {
                return;
            }
            let r = if json {
                let line = json!({
                    "id": j.id.as_str(),
                    "state": j.state.label(),
                    "finished_at": nrvna_core::time::iso8601_utc(j.finished),
                });
                writeln!(out, "{line}")
            } else {
                writeln!(out, "{}", j.id)
            };
            if let Err(e) = r.and_then(|_| out.flush()) {
                write_err = Some(e);
            }
        }
    };
    let r = retention::prune(
        ws,
        &req.policy,
        SystemTime::now(),
        Round {
            states: &req.states,
            dry_run: req.dry_run,
            chunk: 256,
            stop: &|| false,
            on_selected: &mut |_, _| {},
            on_removed: &mut print,
        },
    )
    .with_context(|| format!("pruning {}", ws.root().display()))?;
    if let Some(e) = write_err {
        if e.kind() != io::ErrorKind::BrokenPipe {
            return Err(e).context("writing the removed ids");
        }
    }
    let mut kept: Vec<String> = r.kept.iter().map(|(why, n)| format!("{n} {why}")).collect();
    kept.sort();
    eprintln!(
        "flw: {} {} of {} finished jobs ({}) in {:.2} s{}{}",
        if req.dry_run { "would remove" } else { "removed" },
        r.removed.len(),
        r.seen,
        req.policy.describe(),
        t0.elapsed().as_secs_f64(),
        if kept.is_empty() {
            String::new()
        } else {
            format!("; kept though due: {}", kept.join(", "))
        },
        if r.trash_emptied > 0 {
            format!(
                "; deleted {} entries an interrupted prune left in the trash",
                r.trash_emptied
            )
        } else {
            String::new()
        }
    );
    Ok(Outcome::Done)
}
