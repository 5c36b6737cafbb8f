//! Running jobs seen from outside: `flw -f` follows the text as it is
//! generated, `flw --cancel` stops a running job, and a job's `--timeout`
//! fails it.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use common::*;

#[test]
fn flw_follow_started_before_the_daemon_prints_the_result() {
    let ws = TestWs::new();
    let id = ws.submit(&[], "Describe the sea in a few sentences.");
    let follower = clean_command(flw_bin())
        .arg(ws.path())
        .args(["-f", &id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning flw -f");
    let mut d = ws.drain(&[], &[("NRVNA_PREDICT", "48")]);
    assert_eq!(d.code(), 0);
    let r = finish(follower, JOB, "flw -f");
    r.expect_code(0, "flw -f of a job that ends done");
    assert_eq!(
        r.stdout,
        ws.read(DONE, &id, "result.txt"),
        "flw -f prints exactly result.txt"
    );
}

#[test]
fn flw_cancel_stops_a_running_job_and_keeps_its_partial_output() {
    cancel_a_running_job("batched");
}

#[test]
fn flw_cancel_stops_a_running_job_on_the_per_job_engine_too() {
    cancel_a_running_job("per-job");
}

fn cancel_a_running_job(engine: &str) {
    let ws = TestWs::new();
    let id = ws.submit(&[], LONG_PROMPT);
    let mut d = ws.daemon(&["--engine", engine], &LONG_ENV);
    d.wait_ready();
    assert!(
        wait_for(JOB, || ws.job(PROCESSING, &id).join("partial.txt").exists()),
        "the job never started generating"
    );
    ws.flw(&[&id], JOB).expect_code(2, "flw WS ID of a running job");

    let asked = SystemTime::now();
    let r = ws.flw(&["--cancel", &id, "--timeout", "60"], Duration::from_secs(90));
    r.expect_code(0, "flw --cancel");
    assert_eq!(r.stdout.trim(), "cancelled");
    // The daemon's reaction, from its own clock: completed_at is stamped
    // when the worker gives up the job (before the files are written, so
    // a slow disk does not count). flw's wall time is only reported.
    let completed = parse_iso8601(ws.meta(FAILED, &id)["completed_at"].as_str().expect("completed_at"));
    let reaction = completed.duration_since(asked).unwrap_or_default();
    eprintln!(
        "{engine}: the daemon stopped the job {reaction:?} after flw --cancel started; flw took {:?}",
        r.elapsed
    );
    assert!(
        reaction < Duration::from_secs(2),
        "{engine}: the daemon took {reaction:?} to stop a cancelled job"
    );
    assert_eq!(ws.states_of(&id), [FAILED]);
    let err = ws.read(FAILED, &id, "error.txt");
    assert!(err.contains("cancelled"), "{err:?}");
    let m = ws.meta(FAILED, &id);
    assert_eq!(m["cancelled"], true, "{m}");
    assert_eq!(m["status"], "failed", "{m}");
    assert!(
        ws.job(FAILED, &id).join("response.txt").is_file(),
        "the partial output is kept in response.txt"
    );
    for scratch in ["cancel", "partial.txt", "progress.json"] {
        assert!(!ws.job(FAILED, &id).join(scratch).exists(), "{scratch} left in failed/");
    }
    ws.flw(&[&id], JOB).expect_code(1, "flw WS ID of a cancelled job");

    // The daemon goes on.
    let next = ws.submit(&["--max-tokens", "4"], "Say hi.");
    assert_eq!(ws.wait_finished(&next, JOB), DONE);
    d.signal(libc::SIGTERM);
    d.wait_exit(STARTUP);
    assert_eq!(d.code(), 0);
}

#[test]
fn a_job_timeout_fails_the_job_with_timed_out() {
    let ws = TestWs::new();
    let id = ws.submit(&["--timeout", "1"], LONG_PROMPT);
    let mut d = ws.daemon(&[], &LONG_ENV);
    d.wait_ready();
    let t0 = Instant::now();
    assert_eq!(ws.wait_finished(&id, JOB), FAILED);
    eprintln!(
        "a job with --timeout 1 failed {:?} after the daemon was ready",
        t0.elapsed()
    );
    let err = ws.read(FAILED, &id, "error.txt");
    assert!(err.contains("timed out after 1 s"), "{err:?}");
    let m = ws.meta(FAILED, &id);
    assert_eq!(m["status"], "failed", "{m}");
    assert!(m.get("cancelled").is_none(), "a timeout is not a cancel: {m}");
    assert_eq!(m["params"]["timeout_s"].as_f64(), Some(1.0), "{m}");
    assert!(ws.job(FAILED, &id).join("response.txt").is_file());
    let shown = ws.flw(&[&id], JOB);
    shown.expect_code(1, "flw WS ID of a timed-out job");
    assert!(
        shown.stderr.contains("timed out") || shown.stdout.contains("timed out"),
        "flw shows why: {shown:?}"
    );
    d.signal(libc::SIGTERM);
    d.wait_exit(STARTUP);
    assert_eq!(d.code(), 0);
}
