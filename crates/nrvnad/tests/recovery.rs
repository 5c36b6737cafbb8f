//! Crash safety: a job running when the daemon is SIGKILLed is recovered
//! by the next start, the recovery ceiling fails a job that keeps killing
//! daemons, and duplicate submissions of a claimed id never run twice.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use common::*;

#[test]
fn job_running_at_sigkill_is_recovered_at_the_next_start() {
    let ws = TestWs::new();
    let id = ws.submit(&[], LONG_PROMPT);
    let mut d = ws.daemon(&[], &LONG_ENV);
    d.wait_ready();
    assert!(
        wait_for(JOB, || ws.job(PROCESSING, &id).join("partial.txt").exists()),
        "the job never started generating"
    );
    d.signal(libc::SIGKILL);
    d.wait_exit(STARTUP);
    assert_eq!(ws.states_of(&id), [PROCESSING], "killed mid-job");
    assert!(
        ws.path().join(".nrvnad.pid").exists(),
        "a killed daemon cannot clean up"
    );
    ws.ctl("status", &[])
        .expect_code(1, "status after SIGKILL: the lock died with the process");

    let mut d = ws.drain(&[], &[]);
    assert_eq!(d.code(), 0);
    assert_eq!(ws.states_of(&id), [DONE]);
    let m = ws.meta(DONE, &id);
    assert_eq!(m["recovery_attempts"], 1, "{m}");
    assert_eq!(m["status"], "done");
    assert!(!ws.read(DONE, &id, "result.txt").trim().is_empty());
    assert!(
        !ws.job(DONE, &id).join("partial.txt").exists(),
        "the killed run's partial.txt is not carried into output/"
    );
    assert!(d.log_text().contains(&format!("recovered {id} (attempt 1)")));
}

const STUCK: &str = "20250101000000000000_7_000001";

fn make_stuck_job(ws: &TestWs) {
    ws.create_dirs();
    ws.make_job(
        PROCESSING,
        STUCK,
        &[
            ("prompt.txt", b"Say hello."),
            ("meta.json", br#"{"mode":"text","recovery_attempts":3}"#),
        ],
    );
}

#[test]
fn recovery_fails_a_job_at_the_attempt_ceiling() {
    let ws = TestWs::new();
    make_stuck_job(&ws);
    let mut d = ws.drain(&[], &[]);
    assert_eq!(
        d.code(),
        1,
        "--drain exits 1 when a job failed during the run, the recovery ceiling included"
    );
    assert_eq!(ws.states_of(STUCK), [FAILED]);
    let err = ws.read(FAILED, STUCK, "error.txt");
    assert!(
        err.contains("abandoned") && err.contains("NRVNA_MAX_RECOVERY_ATTEMPTS=3"),
        "error.txt should say the job hit the recovery ceiling: {err:?}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    let m = ws.meta(FAILED, STUCK);
    assert_eq!(m["status"], "failed", "{m}");
    assert!(m["completed_at"].is_string(), "{m}");
    assert_eq!(d.log_count(&format!("claimed {STUCK}")), 0, "never run again");
}

#[test]
fn a_raised_recovery_ceiling_requeues_and_runs_the_job() {
    let ws = TestWs::new();
    make_stuck_job(&ws);
    let mut d = ws.drain(&[], &[("NRVNA_MAX_RECOVERY_ATTEMPTS", "5")]);
    assert_eq!(d.code(), 0);
    assert_eq!(ws.states_of(STUCK), [DONE]);
    let m = ws.meta(DONE, STUCK);
    assert_eq!(m["recovery_attempts"], 4, "{m}");
    assert!(!ws.read(DONE, STUCK, "result.txt").trim().is_empty());
}

#[test]
fn duplicate_submissions_of_claimed_ids_never_run_twice() {
    const N: usize = 20;
    let ws = TestWs::new();
    let ids: Vec<String> = (0..N)
        .map(|i| ws.submit(&[], &format!("Say the number {i}.")))
        .collect();
    let mut d = ws.daemon(&["--workers", "4"], &[("NRVNA_LOG_LEVEL", "info")]);

    // While it runs: for every id that is claimed (in processing/ or
    // output/), publish another job with the same id into input/ready/.
    // Snapshot each finished job as soon as it is in output/.
    let mut duplicated = BTreeSet::new();
    let mut finished: BTreeMap<String, (String, String)> = BTreeMap::new();
    let raced = wait_for(JOB, || {
        for id in &ids {
            if !duplicated.contains(id) && (ws.is_in(PROCESSING, id) || ws.is_in(DONE, id)) {
                ws.make_job(READY, id, &[("prompt.txt", b"I am a duplicate.")]);
                duplicated.insert(id.clone());
            }
            if !finished.contains_key(id) && ws.is_in(DONE, id) {
                let dir = ws.job(DONE, id);
                if let (Ok(r), Ok(m)) = (
                    fs::read_to_string(dir.join("result.txt")),
                    fs::read_to_string(dir.join("meta.json")),
                ) {
                    finished.insert(id.clone(), (r, m));
                }
            }
        }
        finished.len() == N
    });
    assert!(raced, "only {} of {N} jobs finished", finished.len());
    assert_eq!(duplicated.len(), N, "every id got a duplicate");

    // Every duplicate is looked at (and refused) before we stop.
    let refused = |id: &str| {
        let log = d.log_text();
        log.lines().any(|l| {
            l.contains(&format!("job {id} in input/ready/ has the id of a job already in"))
                || l.contains(&format!("job {id} is both in input/ready/ and processing/"))
        })
    };
    let all_refused = wait_for(JOB, || ids.iter().all(|id| refused(id)));
    assert!(
        all_refused,
        "not refused: {:?}",
        ids.iter().filter(|id| !refused(id)).collect::<Vec<_>>()
    );
    d.signal(libc::SIGTERM);
    d.wait_exit(STARTUP);
    assert_eq!(d.code(), 0);

    for id in &ids {
        let terminal: Vec<_> = [DONE, FAILED].into_iter().filter(|s| ws.is_in(s, id)).collect();
        assert_eq!(terminal, [DONE], "{id} must end in output/ only");
        assert!(!ws.is_in(PROCESSING, id), "{id} left in processing/");
        let (r, m) = &finished[id];
        assert_eq!(&ws.read(DONE, id, "result.txt"), r, "{id}: result.txt overwritten");
        assert_eq!(&ws.read(DONE, id, "meta.json"), m, "{id}: meta.json overwritten");
        assert_eq!(
            ws.read(READY, id, "prompt.txt"),
            "I am a duplicate.",
            "{id}: the duplicate is left alone in input/ready/"
        );
        assert_eq!(d.log_count(&format!("claimed {id}")), 1, "{id} claimed more than once");
    }
}

#[test]
fn a_job_cancelled_while_no_daemon_ran_fails_at_recovery() {
    let ws = TestWs::new();
    ws.create_dirs();
    ws.make_job(
        PROCESSING,
        STUCK,
        &[("prompt.txt", b"Say hello."), ("partial.txt", b"Hel"), ("cancel", b"")],
    );
    let d = ws.drain(&[], &[]);
    assert_eq!(ws.states_of(STUCK), [FAILED]);
    assert!(ws.read(FAILED, STUCK, "error.txt").contains("cancelled"));
    let m = ws.meta(FAILED, STUCK);
    assert_eq!(m["cancelled"], true, "{m}");
    assert_eq!(m["status"], "failed", "{m}");
    assert!(
        !ws.job(FAILED, STUCK).join("partial.txt").exists(),
        "scratch files removed"
    );
    assert_eq!(
        d.log_count(&format!("claimed {STUCK}")),
        0,
        "a cancelled job is not run"
    );
}

/// Regression: recovery replaced an invalid meta.json with a fresh one
/// (losing custom_id, submitted_at, tags...), so the job then ran as if it
/// had none, while the same job in input/ready/ fails and keeps the
/// original bytes as meta.json.invalid.
#[test]
fn recovery_keeps_an_invalid_meta_json_and_the_job_fails_like_a_queued_one() {
    let ws = TestWs::new();
    ws.create_dirs();
    let meta = br#"{"tags":"x","custom_id":"req-1"}"#;
    ws.make_job(PROCESSING, STUCK, &[("prompt.txt", b"Say hello."), ("meta.json", meta)]);
    let mut d = ws.drain(&[], &[]);
    assert_eq!(ws.states_of(STUCK), [FAILED]);
    assert_eq!(d.code(), 1, "a job failed during the drain");
    let err = ws.read(FAILED, STUCK, "error.txt");
    assert!(err.contains("meta.json") && err.contains("tags"), "{err:?}");
    assert_eq!(
        fs::read(ws.job(FAILED, STUCK).join("meta.json.invalid")).expect("meta.json.invalid"),
        meta,
        "the original meta.json is kept"
    );
}

/// Regression (found by the torture test): a daemon killed while writing
/// result.txt.tmp left it in the job, and recovery at the attempt ceiling
/// moved it into failed/ with the job.
#[test]
fn recovery_removes_temp_files_a_killed_daemon_left_behind() {
    let ws = TestWs::new();
    ws.create_dirs();
    let files: [(&str, &[u8]); 3] = [
        ("prompt.txt", b"Say hi."),
        ("meta.json", br#"{"mode":"text","recovery_attempts":3}"#),
        ("result.txt.tmp", b"half a resu"),
    ];
    ws.make_job(PROCESSING, "42", &files);
    let mut d = ws.drain(&[], &[]);
    assert_eq!(d.code(), 1, "the job fails at the ceiling");
    assert!(ws.is_in(FAILED, "42"));
    for f in fs::read_dir(ws.job(FAILED, "42")).unwrap().flatten() {
        assert!(
            !f.file_name().to_string_lossy().ends_with(".tmp"),
            "{} left in failed/",
            f.path().display()
        );
    }
}
