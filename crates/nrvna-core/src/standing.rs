//! Where a queued job stands: how many jobs a daemon hands out before it
//! (priority first, then ids in order, as the Scanner does), how fast the
//! workspace has been finishing jobs lately, and from both an estimate of
//! when the job will be done. Read from the workspace alone, by any reader
//! (`flw`, the gateway), with no daemon's help.
//!
//! The estimate treats the queue as first in, first out at the recent
//! completion rate `r` (finishes per second of working time: the gaps
//! between finishes, an idle gap counted as 30 s at most): a job with `k` jobs ahead of it and `R` running
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

/// A queued job's place and when it should be done.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub place: Place,
    /// Seconds until done at the recent rate; `None` with no recent rate.
    pub eta_s: Option<f64>,
    pub rate: Rate,
}

/// The estimate for queued job `id` at `now`: done after the jobs ahead of
/// it, those running, and itself have finished at the recent rate;
/// `None` when the job is not queued.
pub fn estimate(ws: &Workspace, id: &JobId, now: SystemTime) -> Option<Estimate> {
    let place = place(ws, id)?;
    let running = ws.list(State::Processing).map(|v| v.len()).unwrap_or(0);
    let rate = recent_rate(ws, now);
    Some(Estimate {
        place,
        eta_s: rate.eta_s(place.ahead + running + 1),
        rate,
    })
}

/// How fast the workspace finished jobs over the last [`RATE_WINDOW`],
/// while it was working: `jobs` finished (and `tokens` generated) in
/// `span`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// The finishes the rate counts.
    pub jobs: usize,
    /// Tokens those jobs generated (from their meta.json).
    pub tokens: u64,
    /// The time they took: the gaps between finishes in the window, each
    /// idle gap counted as [`IDLE_GAP`] at most.
    pub span: Duration,
}

/// The longest gap between two finishes counted as working time; a longer
/// one is mostly an idle queue.
pub const IDLE_GAP: Duration = Duration::from_secs(30);

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
    finished.sort_by_key(|f| f.0);
    // While the workspace was busy: the gaps between finishes, a long one
    // (idle, nothing queued) counted as IDLE_GAP at most. Jobs finish in
    // bursts (a batch of them in one decode step), so over less than a
    // second this says little; then, and for one finish, the finishes are
    // counted over the time since the first of them (at least 10 s).
    let busy: Duration = finished
        .windows(2)
        .map(|w| w[1].0.duration_since(w[0].0).unwrap_or_default().min(IDLE_GAP))
        .sum();
    let (counted, span) = if finished.len() >= 2 && busy >= Duration::from_secs(1) {
        // The first finish opens the span; the others are counted in it.
        (&finished[1..], busy)
    } else {
        let since = now.duration_since(first).unwrap_or_default();
        (&finished[..], since.max(Duration::from_secs(10)).min(RATE_WINDOW))
    };
    let tokens = counted
        .iter()
        .rev()
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
        jobs: counted.len(),
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
        // The one 400 s ago is outside the 300 s window. Finishes 59, 20
        // and 5 s ago: two more finishes after the first, over 30 s (the
        // 39 s gap, as idle as not) + 15 s of work.
        assert_eq!(r.jobs, 2);
        assert_eq!(r.tokens, 10 + 20);
        assert_eq!(r.span, Duration::from_secs(45));
        let per_s = r.jobs_per_s().unwrap();
        assert!((per_s - 2.0 / 45.0).abs() < 1e-9, "{per_s}");
        assert!((r.eta_s(6).unwrap() - 135.0).abs() < 1e-6);
        assert!((r.tokens_per_s().unwrap() - 30.0 / 45.0).abs() < 1e-9);
    }

    #[test]
    fn one_burst_of_finishes_is_counted_over_at_least_10_s() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        let now = SystemTime::now();
        for ms in [3000u64, 2900, 2800] {
            let id = submit(&ws, None);
            ws.transition(&id, State::Ready, State::Done).unwrap();
            let when = now - Duration::from_millis(ms);
            fs::File::open(ws.job_dir(State::Done, &id))
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
        // 0.2 s apart: all three over the 10 s floor.
        let r = recent_rate(&ws, now);
        assert_eq!((r.jobs, r.span), (3, Duration::from_secs(10)));
    }
}
