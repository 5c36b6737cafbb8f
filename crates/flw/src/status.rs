//! `flw WS`: what a person wants at a glance. The daemon's state (from
//! its lifecycle files), job counts per state, staging leftovers, and the
//! most recent jobs. `--json` gives the counts as one JSON object.

use std::io::{self, Write};
use std::time::SystemTime;

use anyhow::Result;
use nrvna_core::lifecycle::{daemon_status, read_info, DaemonStatus};
use nrvna_core::members::list_members;
use nrvna_core::standing;
use nrvna_core::{State, Workspace};
use serde_json::{json, Value};

use crate::list::row;
use crate::show::human_secs;
use crate::Outcome;

/// How many of the newest jobs the status shows.
const RECENT: usize = 10;

pub fn status(ws: &Workspace, json: bool) -> Result<Outcome> {
    let count = |s: State| ws.list(s).map(|v| v.len()).unwrap_or(0);
    let (queued, running, done, failed) = (
        count(State::Ready),
        count(State::Processing),
        count(State::Done),
        count(State::Failed),
    );
    let staging = count(State::Writing);
    let daemon = daemon_status(ws);
    let members = if daemon == DaemonStatus::NotRunning {
        list_members(ws)
    } else {
        Vec::new()
    };
    let daemon_word = match daemon {
        DaemonStatus::Ready { .. } => "ready",
        DaemonStatus::Starting { .. } => "starting",
        DaemonStatus::NotRunning => "not_running",
    };
    let rate = standing::recent_rate(ws, SystemTime::now());
    let drain_s = if queued + running == 0 {
        Some(0.0)
    } else {
        rate.eta_s(queued + running)
    };
    let mut out = io::BufWriter::new(io::stdout().lock());
    if json {
        let round1 = |x: Option<f64>| x.map(|x| (x * 10.0).round() / 10.0);
        let mut v = json!({
            "queued": queued, "running": running, "done": done, "failed": failed,
            "staging": staging, "daemon": daemon_word,
            "jobs_per_min": round1(rate.jobs_per_s().map(|r| r * 60.0)),
            "tokens_per_s": round1(rate.tokens_per_s()),
            "drain_s": drain_s.map(f64::round),
        });
        if daemon != DaemonStatus::NotRunning {
            if let Some(models) = read_info(ws).and_then(|i| i.get("models").cloned()) {
                v["models"] = models;
            }
        }
        if !members.is_empty() {
            v["daemon"] = json!(if members.iter().any(|m| m.looks_alive()) {
                "shared"
            } else {
                "not_running"
            });
            v["members"] = members
                .iter()
                .map(|m| {
                    json!({
                        "member": m.member, "host": m.host, "pid": m.pid, "state": m.state(),
                        "model": m.model, "workers": m.workers,
                        "heartbeat_age_s": m.heartbeat_age_s().map(|a| (a * 10.0).round() / 10.0),
                        "running": m.running,
                    })
                })
                .collect();
        }
        writeln!(out, "{v}")?;
        out.flush()?;
        return Ok(Outcome::Done);
    }

    let mut line = match daemon {
        DaemonStatus::Ready { pid } => format!("daemon: ready{}", pid_part(pid)),
        DaemonStatus::Starting { pid } => {
            format!("daemon: starting (loading the model){}", pid_part(pid))
        }
        DaemonStatus::NotRunning => format!(
            "daemon: not running (start one with: nrvnad MODEL {})",
            ws.root().display()
        ),
    };
    if daemon != DaemonStatus::NotRunning {
        if let Some(info) = read_info(ws) {
            if let Some(m) = info.get("model").and_then(Value::as_str) {
                line.push_str(&format!(", model {m}"));
            }
            if let Some(w) = info.get("workers").and_then(Value::as_u64) {
                line.push_str(&format!(", {w} workers"));
            }
        }
    }
    if !members.is_empty() {
        let alive = members.iter().filter(|m| m.looks_alive()).count();
        line = format!(
            "daemon: shared workspace, {} members ({alive} with a live heartbeat)",
            members.len()
        );
    }
    writeln!(out, "{line}")?;
    if daemon != DaemonStatus::NotRunning {
        // A daemon serving several models: which are loaded, their memory
        // and backlog.
        let lines = read_info(ws)
            .map(|i| nrvna_core::members::model_lines(&i["models"]))
            .unwrap_or_default();
        if lines.len() > 1 {
            for l in lines {
                writeln!(out, "  model {l}")?;
            }
        }
    }
    for m in &members {
        writeln!(out, "  {}", m.summary())?;
    }
    writeln!(
        out,
        "jobs: {queued} queued, {running} running, {done} done, {failed} failed"
    )?;
    match rate.jobs_per_s() {
        Some(r) => writeln!(
            out,
            "rate: {:.1} jobs/min, {:.1} tokens/s over the last {} min{}",
            r * 60.0,
            rate.tokens_per_s().unwrap_or(0.0),
            standing::RATE_WINDOW.as_secs() / 60,
            match drain_s {
                Some(d) if queued + running > 0 => format!("; drains in about {}", human_secs(d)),
                _ => String::new(),
            }
        )?,
        None => writeln!(
            out,
            "rate: no job finished in the last {} min",
            standing::RATE_WINDOW.as_secs() / 60
        )?,
    }
    if staging > 0 {
        writeln!(
            out,
            "staging: {staging} in input/writing/ (submitters at work, or debris of killed ones)"
        )?;
    }
    let jobs = ws.all_jobs();
    let recent = &jobs[jobs.len().saturating_sub(RECENT)..];
    if !recent.is_empty() {
        writeln!(out, "recent:")?;
        let w = recent.iter().map(|j| j.id.as_str().len()).max().unwrap_or(2);
        for j in recent {
            let (duration, detail) = row(j);
            let line = format!(
                "  {:<w$}  {:<8}  {:>9}  {detail}",
                j.id.as_str(),
                j.state.label(),
                duration
            );
            writeln!(out, "{}", line.trim_end())?;
        }
    }
    out.flush()?;
    Ok(Outcome::Done)
}

fn pid_part(pid: Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}
