//! `flw WS --tag T` / `flw WS --children ID`: the jobs in a scope, ordered
//! by id: their ids, one per line (what scripts pipe on, as with the C++
//! `flw`), NDJSON with `--json` (one `flw WS ID --json` object per line),
//! or a table for a person with `--long`. With `--json` it exits 1 when
//! one of them failed, so `&&` chains stop on failures; a plain listing
//! exits 0, like the C++ `flw`.

use std::io::{self, Write};

use anyhow::Result;
use nrvna_core::files::Artifact;
use nrvna_core::live::Progress;
use nrvna_core::{JobView, State, Workspace};

use crate::scope::{Scope, ScopeCache};
use crate::Outcome;

/// How `flw WS --tag T` prints its jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    Ids,
    Json,
    Table,
}

pub fn list(ws: &Workspace, scope: &Scope, how: Listing) -> Result<Outcome> {
    let jobs = ScopeCache::default().jobs(ws, scope);
    let mut out = io::BufWriter::new(io::stdout().lock());
    match how {
        Listing::Ids => {
            for j in &jobs {
                writeln!(out, "{}", j.id)?;
            }
        }
        Listing::Json => {
            for j in &jobs {
                writeln!(out, "{}", j.summary())?;
            }
        }
        Listing::Table if !jobs.is_empty() => {
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
        Listing::Table => {}
    }
    out.flush()?;
    if jobs.is_empty() {
        eprintln!("flw: no jobs {}", scope.describe());
    }
    Ok(
        if how == Listing::Json && jobs.iter().any(|j| j.state == State::Failed) {
            Outcome::Failed
        } else {
            Outcome::Done
        },
    )
}

/// A job's duration (when finished) and one line of detail for tables.
pub fn row(j: &JobView) -> (String, String) {
    let meta = j.meta().ok().flatten();
    let duration = meta
        .as_ref()
        .and_then(|m| m.duration_s)
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
        State::Done => j
            .primary_artifact()
            .map_or("(no artifact)", Artifact::file_name)
            .to_owned(),
        State::Ready | State::Writing => String::new(),
    };
    let detail = match meta.as_ref().and_then(|m| m.extra_str("custom_id")) {
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
