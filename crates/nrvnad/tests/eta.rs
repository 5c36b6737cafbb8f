//! The ETA `flw WS ID --json` prints for a queued job, checked against
//! when the job really finished (issue 23): the real daemon on the real
//! model, a backlog of 200 jobs submitted one after another behind a
//! warm-up that gives the workspace a recent completion rate. Prints the
//! median absolute error.
//!
//! Needs the model of `scripts/fetch-model.sh`.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use serde_json::Value;

const BACKLOG: usize = 200;
const WARMUP: usize = 24;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn etas_printed_at_submit_time_match_the_actual_finish_times() {
    let ws = TestWs::new();
    ws.create_dirs();
    let mut d = ws.daemon(&["--workers", "4"], &[("NRVNA_LOG_LEVEL", "warn")]);
    d.wait_ready();
    // Jobs long enough that the backlog outgrows its submission: with 8
    // tokens the daemon ran them about as fast as `wrk` and `flw` could
    // submit and look (in one CI run only 13 of 200 were still queued).
    let flags = ["--max-tokens", "32", "--temp", "0"];
    let prompt = |i: usize| format!("Write a long story about the number {i}.");
    // Warm-up: finished jobs give the workspace a completion rate.
    let warm: Vec<String> = (0..WARMUP).map(|i| ws.submit(&flags, &prompt(i))).collect();
    for id in &warm {
        assert_eq!(ws.wait_finished(id, Duration::from_secs(300)), "output");
    }

    let r = ws.flw(&["--json"], Duration::from_secs(30));
    eprintln!("after warm-up: {}", r.stdout.trim());
    let t0 = SystemTime::now();
    let mut predicted = Vec::new();
    for i in 0..BACKLOG {
        let id = ws.submit(&flags, &prompt(1000 + i));
        let asked = SystemTime::now();
        let r = ws.flw(&[&id, "--json"], Duration::from_secs(30));
        let v: Value = serde_json::from_str(r.stdout.trim()).expect("flw --json prints one object");
        // A job claimed before flw looked has nothing to predict.
        if v["status"] == "queued" {
            let eta = v["eta_s"]
                .as_f64()
                .unwrap_or_else(|| panic!("no ETA for queued job {id}: {v}"));
            assert!(v["position"].as_u64().is_some_and(|p| p >= 1), "{v}");
            predicted.push((id, asked + Duration::from_secs_f64(eta), asked));
        }
    }
    assert!(
        predicted.len() >= BACKLOG / 2,
        "only {} of {BACKLOG} jobs were still queued when flw looked",
        predicted.len()
    );

    let r = ws.flw(&["--json"], Duration::from_secs(30));
    eprintln!(
        "after submitting ({:.1} s): {}",
        t0.elapsed().unwrap().as_secs_f64(),
        r.stdout.trim()
    );
    let mut abs = Vec::new();
    let mut rel = Vec::new();
    let mut signed = Vec::new();
    for (id, when, asked) in &predicted {
        assert_eq!(ws.wait_finished(id, Duration::from_secs(600)), "output", "{id}");
        let done = parse_iso8601(ws.meta("output", id)["completed_at"].as_str().expect("completed_at"));
        // Positive: finished later than predicted.
        let diff = match done.duration_since(*when) {
            Ok(late) => late.as_secs_f64(),
            Err(early) => -early.duration().as_secs_f64(),
        };
        signed.push(diff);
        let err = diff.abs();
        let waited = done.duration_since(*asked).unwrap_or_default().as_secs_f64().max(0.5);
        abs.push(err);
        rel.push(err / waited);
    }
    let (m_abs, m_rel) = (median(abs.clone()), median(rel));
    let waits: Vec<f64> = predicted
        .iter()
        .map(|(id, _, asked)| {
            let done = parse_iso8601(ws.meta("output", id)["completed_at"].as_str().unwrap());
            done.duration_since(*asked).unwrap_or_default().as_secs_f64()
        })
        .collect();
    eprintln!(
        "ETA check: {} queued jobs of {BACKLOG}; median wait {:.1} s; median error {:+.2} s (late +); median absolute error {:.2} s ({:.0}% of the wait); worst {:.1} s",
        predicted.len(),
        median(waits),
        median(signed),
        m_abs,
        m_rel * 100.0,
        abs.iter().cloned().fold(0.0, f64::max)
    );
    // A first-in-first-out estimate from a steady rate: the median error
    // stays well under the wait itself.
    assert!(m_rel < 0.5, "median relative ETA error {:.0}%", m_rel * 100.0);
    d.signal(libc::SIGTERM);
    d.wait_exit(Duration::from_secs(60));
}
