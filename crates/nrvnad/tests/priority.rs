//! Priorities (issue #13): the Scanner hands the Pool higher priorities
//! first, so an interactive job does not wait behind a backlog of batch
//! jobs. Measured with the engine test double (queue mechanics only).

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::*;

fn now_iso() -> String {
    nrvna_core::time::iso8601_utc(SystemTime::now())
}

fn publish(ws: &TestWs, id: &str, prio: &str) {
    let meta = format!("{{\"submitted_at\":\"{}\",\"mode\":\"text\"}}", now_iso());
    let params = format!("{{\"priority\":\"{prio}\"}}");
    ws.publish_job(
        id,
        &[
            ("prompt.txt", id.as_bytes()),
            ("meta.json", meta.as_bytes()),
            ("params.json", params.as_bytes()),
        ],
    );
}

/// Microseconds from submission to claim of a finished job.
fn claim_latency_ms(ws: &TestWs, id: &str) -> f64 {
    let m = ws.meta(DONE, id);
    let t = |k: &str| {
        nrvna_core::time::parse_iso8601_micros(m[k].as_str().unwrap_or_else(|| panic!("{k} in {m}")))
            .expect("timestamp")
    };
    (t("claimed_at") - t("submitted_at")) as f64 / 1000.0
}

#[test]
fn a_high_priority_job_is_claimed_ahead_of_a_low_backlog() {
    let ws = TestWs::new();
    ws.create_dirs();
    let mut d = ws.daemon(&["--engine", "echo", "--workers", "1"], &[("NRVNA_LOG_LEVEL", "warn")]);
    d.wait_ready();
    // Idle queue: the baseline.
    let mut idle = Vec::new();
    for i in 0..5 {
        let id = format!("1000000{i}");
        publish(&ws, &id, "high");
        assert_eq!(ws.wait_finished(&id, JOB), DONE);
        idle.push(claim_latency_ms(&ws, &id));
    }
    d.signal(libc::SIGTERM);
    d.wait_exit(JOB);

    // 2,000 low jobs queued before the daemon starts, then high ones arrive.
    for i in 0..2000 {
        publish(&ws, &format!("2{i:07}"), "low");
    }
    let mut d = ws.daemon(&["--engine", "echo", "--workers", "1"], &[("NRVNA_LOG_LEVEL", "warn")]);
    d.wait_ready();
    let mut busy = Vec::new();
    for i in 0..5 {
        let id = format!("3000000{i}");
        publish(&ws, &id, "high");
        assert_eq!(ws.wait_finished(&id, JOB), DONE);
        busy.push(claim_latency_ms(&ws, &id));
        let low_left = ws.names_in(READY).len();
        eprintln!(
            "high job {id}: claimed after {:.2} ms with {low_left} low jobs still queued",
            busy[i]
        );
        assert!(
            low_left > 100,
            "the backlog drained before the measurement; make it longer"
        );
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (idle_med, busy_med) = (med(&mut idle), med(&mut busy));
    eprintln!("claim latency, median of 5: idle queue {idle_med:.2} ms, behind 2,000 low jobs {busy_med:.2} ms");
    // Without priorities the high job waits for the backlog (seconds).
    assert!(
        busy_med < idle_med + 50.0,
        "idle {idle_med:.2} ms vs behind the backlog {busy_med:.2} ms"
    );
    let t0 = Instant::now();
    assert!(
        wait_for(Duration::from_secs(120), || ws.names_in(READY).is_empty()),
        "the low jobs never drained"
    );
    eprintln!("the rest of the backlog drained in {:.1} s", t0.elapsed().as_secs_f64());
    d.signal(libc::SIGTERM);
    d.wait_exit(JOB);
}

#[test]
fn max_queued_is_recorded_for_submitters_removed_with_0_and_kept_without_the_flag() {
    let ws = TestWs::new();
    ws.create_dirs();
    let limits = ws.path().join(".nrvna-limits.json");
    let run = |args: &[&str]| {
        let mut d = ws.daemon(
            &[&["--engine", "echo", "--workers", "1"], args].concat(),
            &[("NRVNA_LOG_LEVEL", "warn")],
        );
        d.wait_ready();
        d.signal(libc::SIGTERM);
        d.wait_exit(JOB);
    };
    run(&["--max-queued", "7"]);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&limits).unwrap()).unwrap();
    assert_eq!(v, serde_json::json!({"max_queued": 7}));
    run(&[]);
    assert!(limits.exists(), "kept while daemons run without the flag");
    run(&["--max-queued", "0"]);
    assert!(!limits.exists(), "0 removes the limit");
}
