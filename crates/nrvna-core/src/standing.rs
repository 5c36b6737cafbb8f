//! Where a queued job stands: how many jobs a daemon hands out before it
//! (priority first, then ids in order, as the Scanner does), how fast the
//! workspace has been finishing jobs lately, and from both an estimate of
//! when the job will be done. Read from the workspace alone, by any reader
//! (`flw`, the gateway), with no daemon's help.
//!
//! The estimate treats the queue as first in, first out at the recent
//! completion rate `r`: a job with `k` jobs ahead of it and `R` running
//! finishes after about `k + R + 1` more completions, `(k + R + 1) / r`
//! seconds. A job finishes when its directory lands in `output/` or
//! `failed/`; its directory's modification time is when the daemon wrote
//! its last file (meta.json), just before that rename, so a listing with
//! one `stat` per finished job gives the recent rate without reading any
//! job's files.

use std::fs;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::files::PARAMS_FILE;
use crate::fsio::read_optional;
use crate::id::JobId;
use crate::job::JobView;
use crate::params::{Params, Priority, MAX_PARAMS_BYTES};
use crate::state::State;
use crate::workspace::Workspace;

/// How far back the completion rate looks.
pub const RATE_WINDOW: Duration = Duration::from_secs(300);

/// The most finished jobs whose meta.json is read for the token rate.
const MAX_TOKEN_READS: usize = 2000;

/// A queued job's place in line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// Jobs a daemon hands out before this one (0: it is next).
    pub ahead: usize,
    pub priority: Priority,
}

impl Place {
    /// 1 for the next job to be claimed.
    pub fn position(&self) -> usize {
        self.ahead + 1
    }
}

/// A queued job's priority, as a daemon reads it (anything unreadable is
/// normal priority).
pub fn queued_priority(ws: &Workspace, id: &JobId) -> Priority {
    let path = ws.job_dir(State::Ready, id).join(PARAMS_FILE);
    match read_optional(&path, MAX_PARAMS_BYTES) {
        Ok(Some(bytes)) => Params::parse_lenient(&bytes)
            .ok()
            .and_then(|(p, _)| p.priority)
            .unwrap_or_default(),
        _ => Priority::Normal,
    }
}

/// The place of queued job `id`; `None` when it is not queued.
pub fn place(ws: &Workspace, id: &JobId) -> Option<Place> {
    let queued = ws.list(State::Ready).ok()?;
    if !queued.contains(id) {
        return None;
    }
    let mine = queued_priority(ws, id);
    let ahead = queued
        .iter()
        .filter(|other| *other != id)
        .filter(|other| {
            let p = queued_priority(ws, other);
            p > mine || (p == mine && *other < id)
        })
        .count();
    Some(Place { ahead, priority: mine })
}

/// How fast the workspace finished jobs over the last [`RATE_WINDOW`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Jobs that landed in `output/` or `failed/` within the window.
    pub jobs: usize,
    /// Tokens those jobs generated (from their meta.json).
    pub tokens: u64,
    /// The span the rate is over: the window, or less when the first of
    /// those jobs finished later than its start (a daemon that just began).
    pub span: Duration,
}

impl Rate {
    /// Jobs per second; `None` when nothing finished in the window.
    pub fn jobs_per_s(&self) -> Option<f64> {
        (self.jobs > 0 && !self.span.is_zero()).then(|| self.jobs as f64 / self.span.as_secs_f64())
    }

    pub fn tokens_per_s(&self) -> Option<f64> {
        (self.jobs > 0 && !self.span.is_zero()).then(|| self.tokens as f64 / self.span.as_secs_f64())
    }

    /// Seconds until `after` more jobs have finished at this rate.
    pub fn eta_s(&self, after: usize) -> Option<f64> {
        self.jobs_per_s().map(|r| after as f64 / r)
    }
}

/// The completion rate over the last [`RATE_WINDOW`] before `now`.
pub fn recent_rate(ws: &Workspace, now: SystemTime) -> Rate {
    let since = now.checked_sub(RATE_WINDOW).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut finished: Vec<(SystemTime, JobId, State)> = Vec::new();
    for s in [State::Done, State::Failed] {
        let Ok(rd) = fs::read_dir(ws.dir(s)) else { continue };
        for e in rd.flatten() {
            let Some(id) = JobId::from_os(&e.file_name()) else {
                continue;
            };
            let Ok(t) = e.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            if t >= since && t <= now {
                finished.push((t, id, s));
            }
        }
    }
    let Some(first) = finished.iter().map(|(t, _, _)| *t).min() else {
        return Rate {
            jobs: 0,
            tokens: 0,
            span: RATE_WINDOW,
        };
    };
    // A rate over less than a few seconds says little; a daemon that just
    // started is measured from its first finish, but over at least 10 s.
    let span = now
        .duration_since(first)
        .unwrap_or_default()
        .max(Duration::from_secs(10))
        .min(RATE_WINDOW);
    finished.sort_by_key(|f| std::cmp::Reverse(f.0));
    let tokens = finished
        .iter()
        .take(MAX_TOKEN_READS)
        .filter_map(|(_, id, s)| {
            let job = JobView {
                id: id.clone(),
                state: *s,
                dir: ws.job_dir(*s, id),
            };
            let m = job.meta().ok().flatten()?;
            m.extra("generated_tokens").and_then(Value::as_u64)
        })
        .sum();
    Rate {
        jobs: finished.len(),
        tokens,
        span,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::submit::Submission;

    fn submit(ws: &Workspace, priority: Option<Priority>) -> JobId {
        let mut s = Submission::text("hi");
        s.params.priority = priority;
        s.publish(ws).unwrap()
    }

    #[test]
    fn the_place_counts_higher_priorities_first_then_older_ids() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        let low = submit(&ws, Some(Priority::Low));
        let a = submit(&ws, None);
        let b = submit(&ws, None);
        let high = submit(&ws, Some(Priority::High));
        let place = |id: &JobId| place(&ws, id).unwrap();
        assert_eq!(place(&high).ahead, 0, "a high job goes first, whenever it came");
        assert_eq!((place(&a).ahead, place(&b).ahead), (1, 2));
        assert_eq!(place(&low).ahead, 3);
        assert_eq!(place(&low).position(), 4);
        assert_eq!(place(&low).priority, Priority::Low);
        // Claimed: no longer in line.
        ws.transition(&high, State::Ready, State::Processing).unwrap();
        assert_eq!(super::place(&ws, &high), None);
        assert_eq!(place(&a).ahead, 0);
    }

    #[test]
    fn the_rate_counts_recent_finishes_and_their_tokens() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        let now = SystemTime::now();
        assert_eq!(recent_rate(&ws, now).jobs_per_s(), None, "nothing finished: no rate");
        for (i, age) in [5u64, 20, 59, 400].into_iter().enumerate() {
            let id = submit(&ws, None);
            ws.transition(&id, State::Ready, State::Processing).unwrap();
            let mut m = crate::meta::Meta::new();
            m.set_extra("generated_tokens", 10 * (i as u64 + 1));
            let dir = ws.job_dir(State::Processing, &id);
            fs::write(dir.join("meta.json"), m.to_bytes()).unwrap();
            let to = if i == 1 { State::Failed } else { State::Done };
            ws.transition(&id, State::Processing, to).unwrap();
            let when = now - Duration::from_secs(age);
            fs::File::open(ws.job_dir(to, &id)).unwrap().set_modified(when).unwrap();
        }
        let r = recent_rate(&ws, now);
        // The one 400 s ago is outside the 300 s window.
        assert_eq!(r.jobs, 3);
        assert_eq!(r.tokens, 10 + 20 + 30);
        assert_eq!(r.span, Duration::from_secs(59));
        let per_s = r.jobs_per_s().unwrap();
        assert!((per_s - 3.0 / 59.0).abs() < 1e-9, "{per_s}");
        assert!((r.eta_s(6).unwrap() - 118.0).abs() < 1e-6);
    }
}
