//! The overview's charts: the gateway samples, every [`TICK`], the jobs
//! finished and the tokens generated over the last [`WINDOW`] and the mean
//! queue wait of the jobs that started in it, and keeps the last
//! [`POINTS`] samples. Starts and finishes are recorded by the job index as
//! it sees jobs move (no directory walk); time to drain comes from
//! `nrvna_core::standing::recent_rate` (what `flw` shows), taken every
//! [`RATE_EVERY`] ticks on a blocking thread.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use nrvna_core::Workspace;
use serde_json::{json, Value};

/// How often a sample is taken.
pub const TICK: Duration = Duration::from_secs(2);
/// The span each sample covers.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Samples kept (10 minutes).
pub const POINTS: usize = 300;
/// recent_rate is taken every this many ticks.
const RATE_EVERY: u32 = 5;

/// Starts and finishes seen lately.
#[derive(Default)]
pub struct Activity {
    events: Mutex<Events>,
}

#[derive(Default)]
struct Events {
    /// (when, tokens generated)
    finished: VecDeque<(Instant, u64)>,
    /// (when, seconds the job waited in the queue)
    started: VecDeque<(Instant, f64)>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Activity {
    pub fn finished(&self, tokens: u64) {
        locked(&self.events).finished.push_back((Instant::now(), tokens));
    }

    pub fn started(&self, waited_s: f64) {
        locked(&self.events)
            .started
            .push_back((Instant::now(), waited_s.max(0.0)));
    }

    /// (jobs per minute, tokens per second, mean queue wait) over the
    /// last [`WINDOW`], dropping what is older.
    fn over_window(&self, now: Instant) -> (f64, f64, Option<f64>) {
        let mut e = locked(&self.events);
        let since = now.checked_sub(WINDOW).unwrap_or(now);
        while e.finished.front().is_some_and(|(t, _)| *t < since) {
            e.finished.pop_front();
        }
        while e.started.front().is_some_and(|(t, _)| *t < since) {
            e.started.pop_front();
        }
        let span = WINDOW.as_secs_f64();
        let tokens: u64 = e.finished.iter().map(|(_, n)| n).sum();
        let wait =
            (!e.started.is_empty()).then(|| e.started.iter().map(|(_, w)| w).sum::<f64>() / e.started.len() as f64);
        (e.finished.len() as f64 * 60.0 / span, tokens as f64 / span, wait)
    }
}

/// One sample.
#[derive(Clone, Copy)]
struct Point {
    at: f64,
    jobs_per_min: f64,
    tokens_per_s: f64,
    wait_s: Option<f64>,
}

/// The samples, and the latest completion rate.
#[derive(Default)]
pub struct Sampler {
    points: Mutex<VecDeque<Point>>,
    /// Jobs per second from recent_rate, when anything finished lately.
    rate: Mutex<Option<f64>>,
}

impl Sampler {
    /// Takes samples until the gateway stops (the task holds the sampler).
    pub fn spawn(self: &Arc<Self>, ws: Workspace, activity: Arc<Activity>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            let mut n = 0u32;
            loop {
                tick.tick().await;
                me.sample(&activity, Instant::now(), unix_now());
                if n.is_multiple_of(RATE_EVERY) {
                    let ws = ws.clone();
                    let rate = tokio::task::spawn_blocking(move || {
                        nrvna_core::standing::recent_rate(&ws, SystemTime::now()).jobs_per_s()
                    })
                    .await
                    .unwrap_or(None);
                    *locked(&me.rate) = rate;
                }
                n = n.wrapping_add(1);
            }
        });
    }

    fn sample(&self, activity: &Activity, now: Instant, at: f64) {
        let (jobs_per_min, tokens_per_s, wait_s) = activity.over_window(now);
        let mut p = locked(&self.points);
        p.push_back(Point {
            at,
            jobs_per_min,
            tokens_per_s,
            wait_s,
        });
        while p.len() > POINTS {
            p.pop_front();
        }
    }

    /// Seconds until `left` jobs are done at the recent rate; 0 for none
    /// left, `None` when nothing finished lately.
    pub fn drain_s(&self, left: usize) -> Option<f64> {
        if left == 0 {
            return Some(0.0);
        }
        locked(&self.rate).map(|r| left as f64 / r)
    }

    /// The series as JSON: `{"at": [...], "jobs_per_min": [...], ...}`.
    pub fn series(&self) -> Value {
        let p = locked(&self.points);
        let round = |x: f64| (x * 100.0).round() / 100.0;
        json!({
            "tick_s": TICK.as_secs(),
            "at": p.iter().map(|x| x.at.round()).collect::<Vec<_>>(),
            "jobs_per_min": p.iter().map(|x| round(x.jobs_per_min)).collect::<Vec<_>>(),
            "tokens_per_s": p.iter().map(|x| round(x.tokens_per_s)).collect::<Vec<_>>(),
            "wait_s": p.iter().map(|x| x.wait_s.map(round)).collect::<Vec<_>>(),
        })
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_cover_the_window_and_keep_the_last_points() {
        let a = Activity::default();
        let s = Sampler::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            a.finished(10);
        }
        a.started(2.0);
        a.started(4.0);
        s.sample(&a, t0, 1.0);
        let v = s.series();
        assert_eq!(v["jobs_per_min"][0], 3.0);
        assert_eq!(v["tokens_per_s"][0], 0.5);
        assert_eq!(v["wait_s"][0], 3.0);
        // A window later, everything has aged out.
        s.sample(&a, t0 + WINDOW + Duration::from_secs(1), 2.0);
        assert_eq!(s.series()["jobs_per_min"][1], 0.0);
        assert!(s.series()["wait_s"][1].is_null());
        for i in 0..POINTS + 5 {
            s.sample(&a, t0, i as f64);
        }
        assert_eq!(s.series()["at"].as_array().unwrap().len(), POINTS);
        assert_eq!(s.drain_s(0), Some(0.0));
        assert_eq!(s.drain_s(5), None, "no rate yet");
    }
}
