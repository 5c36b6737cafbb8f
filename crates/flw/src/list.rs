//! `flw WS --tag T` / `flw WS --children ID`: the jobs in a scope, ordered
//! by id, as NDJSON (`--json`, one summary per line) or as a table.
//! Exits 1 when one of them failed, so `&&` chains stop on failures.

use std::io::{self, Write};

use anyhow::Result;
use nrvna_core::live::Progress;
use nrvna_core::{JobView, State, Workspace};

use crate::scope::{Scope, ScopeCache};
use crate::Outcome;

pub fn list(ws: &Workspace, scope: &Scope, json: bool) -> Result<Outcome> {
    let jobs = ScopeCache::default().jobs(ws, scope);
    let mut out = io::BufWriter::new(io::stdout().lock());
    if json {
        for j in &jobs {
            writeln!(out, "{}", j.summary())?;
        }
    } else if !jobs.is_empty() {
        let w = jobs.iter().map(|j| j.id.as_str().len()).max().unwrap_or(2);
        writeln!(out, "{:<w$}  {:<8}  {:>9}  DETAIL", "ID", "STATUS", "DURATION")?;
        for j in &jobs {
            let (duration, detail) = row(j);
            let line = format!(
                "{:<w$}  {:<8}  {:>9}  {detail}",
                j.id.as_str(),
                j.state.label(),
                duration
            );
            writeln!(out, "{}", line.trim_end())?;
        }
    }
    out.flush()?;
    if jobs.is_empty() {
        eprintln!("flw: no jobs {}", scope.describe());
    }
    Ok(if jobs.iter().any(|j| j.state == State::Failed) {
        Outcome::Failed
    } else {
        Outcome::Done
    })
}

/// A job's duration (when finished) and one line of detail for tables.
pub fn row(j: &JobView) -> (String, String) {
    let meta = j.meta().ok().flatten();
    let duration = meta
        .as_ref()
        .and_then(|m| m.duration_s())
        .filter(|_| j.state.is_terminal())
        .map(|d| format!("{d:.2}s"))
        .unwrap_or_default();
    let detail = match j.state {
        State::Processing => Progress::read(&j.dir)
            .map(|p| format!("{} tokens, {:.1} tok/s", p.tokens, p.tokens_per_s))
            .unwrap_or_default(),
        State::Failed => j
            .error()
            .and_then(|e| e.lines().next().map(|l| truncate(l, 80)))
            .unwrap_or_default(),
        State::Done => j.primary_artifact().unwrap_or("(no artifact)").to_owned(),
        State::Ready | State::Writing => String::new(),
    };
    let detail = match meta.as_ref().and_then(|m| m.str("custom_id")) {
        Some(c) if !detail.is_empty() => format!("{c}: {detail}"),
        Some(c) => c.to_owned(),
        None => detail,
    };
    (duration, detail)
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(max - 1).collect();
    t.push('…');
    t
}
