//! Running jobs seen from outside: `flw -f` follows the text as it is
//! generated, `flw --cancel` stops a running job, and a job's `--timeout`
//! fails it.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

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
    let ws = TestWs::new();
    let id = ws.submit(&[], LONG_PROMPT);
    let mut d = ws.daemon(&[], &LONG_ENV);
    d.wait_ready();
    assert!(
        wait_for(JOB, || ws.job(PROCESSING, &id).join("partial.txt").exists()),
        "the job never started generating"
    );
    ws.flw(&[&id], JOB).expect_code(2, "flw WS ID of a running job");

    let t0 = Instant::now();
    let r = ws.flw(&["--cancel", &id], Duration::from_secs(30));
    let took = t0.elapsed();
    r.expect_code(0, "flw --cancel");
    assert_eq!(r.stdout.trim(), "cancelled");
    assert!(took < Duration::from_secs(3), "cancelling a running job took {took:?}");
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
