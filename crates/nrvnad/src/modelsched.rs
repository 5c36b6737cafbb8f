//! Which model's jobs the workers take next, when one daemon serves many
//! models: a pure function of the backlog per model, the loaded set and how
//! long the current model has been active, so that a mixed queue runs each
//! model's jobs in full batches instead of switching models per job.
//!
//! The rule ([`choose`]):
//! 1. While the current model has queued jobs, keep it, unless
//!    - another model has strictly higher-priority work (its best queued
//!      priority beats the current model's best): switch now; or
//!    - another model's oldest job has waited longer than `max_wait`
//!      *while the current model was active* (`min(age, active_for) >
//!      max_wait`): aging. Then the current model competes with those aged
//!      models by score, without the loaded bonus, and the best wins (so
//!      with `max_wait` 0 the model of the oldest job always runs: arrival
//!      order, as a one-slot router).
//! 2. Otherwise (no current model, or it has nothing queued) take the best
//!    scored model with queued jobs.
//!
//! Score, best first: the best queued priority, then already loaded (no
//! load needed), then the age of the oldest queued job (the earlier
//! arrival among jobs queued at one instant), then the number of queued
//! jobs; the lower index breaks a tie. Aging bounds every wait: a
//! job waits at most about `max_wait` per model ahead of it plus the loads.

use std::cmp::Ordering;
use std::time::Duration;

/// One model's queued jobs, as the scheduler sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backlog {
    /// Jobs queued (not yet handed to a worker).
    pub queued: usize,
    /// How long the oldest queued job has waited.
    pub oldest: Duration,
    /// The arrival number of the oldest queued job (smaller arrived
    /// first; breaks ties of `oldest` among jobs queued at one instant).
    pub first: u64,
    /// The best priority among the queued jobs: 0 high, 1 normal, 2 low.
    pub best: u8,
}

/// What [`choose`] decides from.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// The model whose jobs are handed out now.
    pub current: Option<usize>,
    /// How long `current` has been the active model.
    pub active_for: Duration,
    /// Per model (by index): its backlog, `None` when nothing is queued.
    pub backlog: &'a [Option<Backlog>],
    /// Per model: whether it is loaded (or loading).
    pub loaded: &'a [bool],
    /// `--max-wait`: how long another model's work may wait behind the
    /// current model before the daemon switches.
    pub max_wait: Duration,
}

/// Compares two models by score: `Greater` when `a` should run before `b`.
/// `loaded_first`: a loaded model beats an older backlog of equal priority.
fn score(v: &View, loaded_first: bool, a: usize, b: usize) -> Ordering {
    let (Some(x), Some(y)) = (v.backlog[a], v.backlog[b]) else {
        return v.backlog[a].is_some().cmp(&v.backlog[b].is_some());
    };
    let loaded = |i: usize| loaded_first && v.loaded.get(i).copied().unwrap_or(false);
    y.best
        .cmp(&x.best)
        .then(loaded(a).cmp(&loaded(b)))
        .then(x.oldest.cmp(&y.oldest))
        .then(y.first.cmp(&x.first))
        .then(x.queued.cmp(&y.queued))
        .then(b.cmp(&a))
}

/// The best scored model among `candidates`.
fn best(v: &View, loaded_first: bool, candidates: impl Iterator<Item = usize>) -> Option<usize> {
    candidates.max_by(|&a, &b| score(v, loaded_first, a, b))
}

/// The model to hand out jobs of next; `None` when nothing is queued.
pub fn choose(v: &View) -> Option<usize> {
    let queued = || (0..v.backlog.len()).filter(|&i| v.backlog[i].is_some());
    let cur = match v
        .current
        .and_then(|c| v.backlog.get(c).copied().flatten().map(|b| (c, b)))
    {
        Some(c) => c,
        None => return best(v, true, queued()),
    };
    let (c, mine) = cur;
    let others = || queued().filter(move |&i| i != c);
    let higher = others().filter(|&i| v.backlog[i].is_some_and(|b| b.best < mine.best));
    if let Some(m) = best(v, true, higher) {
        return Some(m);
    }
    let aged: Vec<usize> = others()
        .filter(|&i| v.backlog[i].is_some_and(|b| b.oldest.min(v.active_for) > v.max_wait))
        .collect();
    if aged.is_empty() {
        return Some(c);
    }
    best(v, false, aged.into_iter().chain(std::iter::once(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn b(queued: usize, oldest_s: u64, best: u8) -> Option<Backlog> {
        Some(Backlog {
            queued,
            oldest: S(oldest_s),
            first: 1000 - oldest_s,
            best,
        })
    }

    fn view<'a>(current: Option<usize>, active_s: u64, backlog: &'a [Option<Backlog>], loaded: &'a [bool]) -> View<'a> {
        View {
            current,
            active_for: S(active_s),
            backlog,
            loaded,
            max_wait: S(30),
        }
    }

    #[test]
    fn nothing_queued_chooses_nothing() {
        assert_eq!(choose(&view(Some(0), 5, &[None, None], &[true, false])), None);
        assert_eq!(choose(&view(None, 0, &[], &[])), None);
    }

    #[test]
    fn the_current_model_keeps_running_while_it_has_work() {
        // B's jobs are older and more numerous, but they have not waited
        // max_wait while A was active.
        let bl = [b(3, 10, 1), b(50, 25, 1)];
        assert_eq!(choose(&view(Some(0), 20, &bl, &[true, false])), Some(0));
    }

    #[test]
    fn aging_switches_once_another_model_waited_max_wait_under_the_current_one() {
        let bl = [b(100, 20, 1), b(1, 31, 1)];
        assert_eq!(choose(&view(Some(0), 31, &bl, &[true, false])), Some(1));
        // Old jobs, but the current model became active a moment ago: it
        // gets its max_wait first (no ping-pong between two old backlogs).
        assert_eq!(choose(&view(Some(0), 5, &bl, &[true, false])), Some(0));
        // When the current model holds the oldest job, it wins the contest.
        let bl = [b(100, 200, 1), b(1, 31, 1)];
        assert_eq!(choose(&view(Some(0), 40, &bl, &[true, false])), Some(0));
    }

    #[test]
    fn strictly_higher_priority_elsewhere_switches_at_once() {
        let bl = [b(200, 1, 2), b(1, 0, 0)];
        assert_eq!(choose(&view(Some(0), 1, &bl, &[true, false])), Some(1));
        // Equal priority does not.
        let bl = [b(200, 1, 0), b(1, 0, 0)];
        assert_eq!(choose(&view(Some(0), 1, &bl, &[true, false])), Some(0));
    }

    #[test]
    fn when_the_current_model_runs_dry_the_best_score_wins() {
        // Priority first.
        let bl = [None, b(5, 100, 1), b(1, 1, 0)];
        assert_eq!(choose(&view(Some(0), 9, &bl, &[true, false, false])), Some(2));
        // Then loaded.
        let bl = [None, b(5, 100, 1), b(1, 1, 1)];
        assert_eq!(choose(&view(Some(0), 9, &bl, &[true, false, true])), Some(2));
        // Then age, then backlog.
        assert_eq!(choose(&view(None, 0, &bl, &[false; 3])), Some(1));
        let bl = [None, b(5, 7, 1), b(9, 7, 1)];
        assert_eq!(choose(&view(None, 0, &bl, &[false; 3])), Some(2));
    }

    #[test]
    fn max_wait_zero_is_arrival_order() {
        let mut v = view(Some(0), 1, &[], &[true, false, false]);
        v.max_wait = Duration::ZERO;
        let bl = [b(3, 5, 1), b(3, 9, 1), b(3, 7, 1)];
        v.backlog = &bl;
        assert_eq!(choose(&v), Some(1), "the oldest job's model");
        let bl = [b(3, 9, 1), b(3, 5, 1), b(3, 7, 1)];
        v.backlog = &bl;
        assert_eq!(choose(&v), Some(0));
    }

    #[test]
    fn no_model_starves_under_a_steady_stream_of_the_current_one() {
        // Simulate: model 0 always has fresh work; model 1 has one job.
        // Model 1 must be chosen within max_wait of model 0's activity.
        let mut t = 0u64;
        let switched = loop {
            let bl = [b(10, 1, 1), b(1, t, 1)];
            if choose(&view(Some(0), t, &bl, &[true, false])) == Some(1) {
                break t;
            }
            t += 1;
            assert!(t < 100, "model 1 starved");
        };
        assert_eq!(switched, 31);
    }
}
