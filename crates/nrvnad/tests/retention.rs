//! Retention (issue #23): the daemon's --retain-* policy removes old
//! finished jobs, oldest first, never a pinned job (`wrk --keep`) nor a
//! line of an unfinished gateway batch, never a queued or running job, and
//! a SIGKILL in the middle of a round leaves only whole jobs and loses
//! none that the policy keeps. Queue mechanics only: the echo engine.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::*;

const ECHO: &str = "echo-model";
const DAY: u64 = 86_400;

fn echo(ws: &TestWs, args: &[&str]) -> Daemon {
    echo_logging(ws, args, "info")
}

fn echo_logging(ws: &TestWs, args: &[&str], level: &str) -> Daemon {
    // A killed daemon leaves its ready file: the next one's must be its own.
    let _ = fs::remove_file(ws.path().join(".nrvnad.ready"));
    let mut a = vec!["--engine", "echo", "--workers", "2"];
    a.extend_from_slice(args);
    let mut d = Daemon::spawn_model(
        ws,
        ECHO.as_ref(),
        &a,
        &[("NRVNA_FSYNC", "0"), ("NRVNA_LOG_LEVEL", level)],
    );
    d.wait_ready();
    d
}

/// The classes of the made jobs: which policy removes them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    /// 3 days old: removed by `--retain-* 2d` (phase A).
    Old,
    /// 1.5 days old: removed by `--retain-* 1d` (phase B).
    Older1d,
    /// 10 minutes old: kept by both.
    Recent,
}

struct Made {
    id: String,
    class: Class,
    /// Pinned (`keep`) or a line of an unfinished batch: never removed.
    protected: bool,
}

/// Makes one finished job fast: a directory with meta.json and its
/// artifact, its mtime set `class`'s age before `now`.
fn make_one(ws: &TestWs, now: SystemTime, id: &str, class: Class, failed: bool, tags: &[&str]) {
    let state = if failed { FAILED } else { DONE };
    let dir = ws.job(state, id);
    fs::create_dir(&dir).unwrap();
    let tags: Vec<String> = tags.iter().map(|t| format!("\"{t}\"")).collect();
    let meta = format!(
        "{{\"submitted_at\":\"2026-01-01T00:00:00.000000Z\",\"mode\":\"text\",\"tags\":[{}]}}",
        tags.join(",")
    );
    fs::write(dir.join("meta.json"), meta).unwrap();
    let (name, body): (&str, &[u8]) = if failed {
        ("error.txt", b"boom\n")
    } else {
        ("result.txt", b"hello\n")
    };
    fs::write(dir.join(name), body).unwrap();
    let age = match class {
        Class::Old => 3 * DAY,
        Class::Older1d => DAY + DAY / 2,
        Class::Recent => 600,
    };
    fs::File::open(&dir)
        .unwrap()
        .set_modified(now - Duration::from_secs(age))
        .unwrap();
}

/// Makes `n` finished jobs of every class, a few of them pinned, and the
/// lines of two gateway batches.
fn make_finished(ws: &TestWs, n: u32) -> Vec<Made> {
    let now = SystemTime::now();
    let mut made = Vec::with_capacity(n as usize + 8);
    let mut one = |id: String, class: Class, failed: bool, tags: &[&str], protected: bool| {
        make_one(ws, now, &id, class, failed, tags);
        made.push(Made { id, class, protected });
    };
    for i in 0..n {
        let class = match i % 10 {
            0..=2 => Class::Old,
            3..=6 => Class::Older1d,
            _ => Class::Recent,
        };
        let pinned = i % 997 == 1;
        one(
            format!("1{i:09}"),
            class,
            i % 7 == 0,
            if pinned { &["keep", "x"] } else { &["x"] },
            pinned,
        );
    }
    // Lines of gateway batches: 77 is still running, 78 is finished.
    let recs = ws.path().join("api/batches");
    fs::create_dir_all(&recs).unwrap();
    fs::write(
        recs.join("batch_77.json"),
        r#"{"id":"batch_77","total":4,"completed_at":null}"#,
    )
    .unwrap();
    fs::write(
        recs.join("batch_78.json"),
        r#"{"id":"batch_78","total":4,"completed_at":1767225600}"#,
    )
    .unwrap();
    for k in 1..=4 {
        one(format!("77_{k:06}"), Class::Old, false, &[], true);
        one(format!("78_{k:06}"), Class::Old, k == 4, &[], false);
    }
    made
}

/// Makes `n` more jobs that phase A removes (ids from `1{first:09}` on),
/// so that every kill finds a round with work left however fast this
/// machine removes.
fn make_more_old(ws: &TestWs, first: u32, n: u32) {
    let now = SystemTime::now();
    for i in first..first + n {
        make_one(ws, now, &format!("1{i:09}"), Class::Old, i % 7 == 0, &["x"]);
    }
}

/// Job ids in output/ and failed/ that this test made (not the stream's).
fn made_present(ws: &TestWs) -> BTreeSet<String> {
    [DONE, FAILED]
        .into_iter()
        .flat_map(|s| ws.names_in(s))
        .filter(|n| !n.starts_with('2'))
        .collect()
}

/// Every job directory in output/ and failed/ is whole: meta.json and its
/// artifact. Returns how many it checked.
fn assert_all_whole(ws: &TestWs) -> usize {
    let mut n = 0;
    for (state, artifact) in [(DONE, "result.txt"), (FAILED, "error.txt")] {
        for name in ws.names_in(state) {
            let d = ws.job(state, &name);
            assert!(
                d.join("meta.json").is_file() && d.join(artifact).is_file(),
                "half a job visible: {} holds {:?}",
                d.display(),
                fs::read_dir(&d).map(|r| r.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            );
            n += 1;
        }
    }
    n
}

fn trash_entries(ws: &TestWs) -> usize {
    fs::read_dir(ws.path().join(".nrvna-trash"))
        .map(|r| r.count())
        .unwrap_or(0)
}

/// A submitter publishing a job every 20 ms until stopped (the daemon runs
/// them while it prunes).
struct Stream {
    stop: Arc<AtomicBool>,
    ids: Arc<Mutex<Vec<String>>>,
    handle: std::thread::JoinHandle<()>,
}

fn stream(ws: &Path) -> Stream {
    let stop = Arc::new(AtomicBool::new(false));
    let ids = Arc::new(Mutex::new(Vec::new()));
    let (s, v, ws) = (stop.clone(), ids.clone(), ws.to_owned());
    let handle = std::thread::spawn(move || {
        let mut i = 0u32;
        while !s.load(Ordering::SeqCst) {
            let id = format!("2{i:09}");
            let w = ws.join(WRITING).join(&id);
            fs::create_dir(&w).unwrap();
            fs::write(w.join("prompt.txt"), format!("job {id}")).unwrap();
            fs::write(w.join("meta.json"), r#"{"mode":"text"}"#).unwrap();
            fs::rename(&w, ws.join(READY).join(&id)).unwrap();
            v.lock().unwrap().push(id);
            i += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    Stream { stop, ids, handle }
}

#[test]
fn a_hundred_thousand_finished_jobs_pruned_while_jobs_run_and_sigkills_lose_nothing_kept() {
    let ws = TestWs::new();
    ws.create_dirs();
    let t0 = Instant::now();
    let made = make_finished(&ws, 100_000);
    eprintln!(
        "made {} finished jobs in {:.1} s",
        made.len(),
        t0.elapsed().as_secs_f64()
    );
    let keep_after = |removed: &[Class]| -> BTreeSet<String> {
        made.iter()
            .filter(|m| m.protected || !removed.contains(&m.class))
            .map(|m| m.id.clone())
            .collect()
    };
    let kept_a = keep_after(&[Class::Old]);
    let kept_b = keep_after(&[Class::Old, Class::Older1d]);
    let jobs = stream(ws.path());

    // Phase A (--retain-* 2d): 20 SIGKILLs at random moments of the round.
    let policy_a = [
        "--retain-done",
        "2d",
        "--retain-failed",
        "2d",
        "--retain-interval",
        "1s",
    ];
    let mut rng = Rng(0x5eed_2323);
    let (mut mid_round, mut mid_delete) = (0, 0);
    // How fast a round removes depends on the machine: when fewer jobs
    // that phase A removes are left than a kill may take, more are made.
    let mut next_id = 100_000;
    for k in 0..20 {
        let mut before = made_present(&ws).len();
        if before - kept_a.len() < 10_000 {
            make_more_old(&ws, next_id, 10_000);
            next_id += 10_000;
            before += 10_000;
        }
        let d = echo(&ws, &policy_a);
        // Listing 100,000 jobs takes a while: kill once removing began.
        assert!(
            wait_for(STARTUP, || d.log_count("retention: removing") > 0),
            "kill {k}: the round removes nothing"
        );
        std::thread::sleep(Duration::from_millis(rng.range(0, 150)));
        d.signal(libc::SIGKILL);
        let mut d = d;
        d.wait_exit(JOB);
        let present = made_present(&ws);
        let lost: Vec<&String> = kept_a.difference(&present).take(5).collect();
        assert!(lost.is_empty(), "kill {k}: jobs the policy keeps are gone: {lost:?}");
        assert_all_whole(&ws);
        if present.len() < before && present.len() > kept_a.len() {
            mid_round += 1;
        }
        if trash_entries(&ws) > 0 {
            mid_delete += 1;
        }
    }
    eprintln!(
        "20 kills: {mid_round} landed while jobs were being removed, {mid_delete} left entries in the trash; {} of {} made jobs left",
        made_present(&ws).len(),
        made.len() + (next_id as usize - 100_000)
    );
    // A kill comes 0 to 150 ms after a round starts removing; a round that
    // finishes inside that window on a fast moment is a kill after the round,
    // which proves less but is no failure. Most must land inside.
    assert!(
        mid_round >= 10,
        "only {mid_round} of 20 kills landed in the middle of a round"
    );
    assert!(mid_delete > 0, "no kill left a job half deleted in the trash");

    // A restart empties the trash and finishes the round.
    let mut d = echo(&ws, &policy_a);
    assert!(
        wait_for(Duration::from_secs(180), || made_present(&ws) == kept_a
            && trash_entries(&ws) == 0),
        "phase A did not settle: {} made jobs present, {} expected, {} in the trash",
        made_present(&ws).len(),
        kept_a.len(),
        trash_entries(&ws)
    );
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(JOB).code(), Some(0));

    // Phase B (--retain-* 1d), uninterrupted: the prune rate.
    let policy_b = [
        "--retain-done",
        "1d",
        "--retain-failed",
        "1d",
        "--retain-interval",
        "1s",
    ];
    let mut d = echo(&ws, &policy_b);
    assert!(
        wait_for(Duration::from_secs(300), || d.log_count("retention: removed") > 0),
        "no retention round finished"
    );
    let line = d
        .log_text()
        .lines()
        .find(|l| l.contains("retention: removed"))
        .unwrap()
        .to_owned();
    eprintln!("phase B: {line}");
    assert_eq!(made_present(&ws), kept_b);
    assert_eq!(trash_entries(&ws), 0);
    let removed_b = kept_a.len() - kept_b.len();
    assert!(line.contains(&format!("removed {removed_b} of")), "{line}");
    assert!(line.contains("kept though due:") && line.contains("pinned") && line.contains("its batch is not finished"));

    // The stream's jobs: none was removed (queued, running, then recent).
    jobs.stop.store(true, Ordering::SeqCst);
    jobs.handle.join().unwrap();
    let ids = jobs.ids.lock().unwrap().clone();
    assert!(ids.len() > 50, "the stream published only {} jobs", ids.len());
    for id in &ids {
        assert_eq!(ws.wait_finished(id, JOB), DONE, "stream job {id}");
    }
    assert_all_whole(&ws);
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(JOB).code(), Some(0));
    let rate = line
        .split(" jobs/s)")
        .next()
        .and_then(|p| p.rsplit('(').next())
        .unwrap_or("?");
    eprintln!(
        "PRUNE RATE: {removed_b} jobs removed from 100,000 in one round at {rate} jobs/s while {} jobs ran (echo engine, NRVNA_FSYNC=0)",
        ids.len()
    );
}

#[test]
fn a_job_submitted_with_keep_outlives_the_policy_and_the_rest_go_oldest_first() {
    let ws = TestWs::new();
    ws.create_dirs();
    let mut d = echo(&ws, &["--retain-done", "1s", "--retain-interval", "200ms"]);
    let kept = ws.submit(&["--keep"], "keep me");
    let plain = ws.submit(&[], "let me go");
    assert_eq!(ws.wait_finished(&kept, JOB), DONE);
    // Published by wrk, so no state holds it only once it is removed.
    assert!(
        wait_for(JOB, || ws.states_of(&plain).is_empty()),
        "the unpinned job was not removed: {:?}",
        ws.states_of(&plain)
    );
    assert!(ws.meta(DONE, &kept)["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "keep"));
    // A later job goes too, in a round that found the pinned one due.
    let later = ws.submit(&[], "me too");
    assert!(wait_for(JOB, || ws.states_of(&later).is_empty()));
    assert!(d.log_count("kept though due: 1 pinned") > 0, "{}", d.log_text());
    assert!(ws.is_in(DONE, &kept));
    ws.flw(&[&plain], JOB).expect_code(1, "a removed job is unknown");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(JOB).code(), Some(0));
}

#[test]
fn without_a_retain_flag_nothing_is_removed_and_help_says_so() {
    let ws = TestWs::new();
    ws.create_dirs();
    let old = ws.make_job(DONE, "1", &[("meta.json", b"{}"), ("result.txt", b"x")]);
    fs::File::open(&old)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3650 * DAY))
        .unwrap();
    let mut d = echo(&ws, &[]);
    let id = ws.submit(&[], "hello");
    assert_eq!(ws.wait_finished(&id, JOB), DONE);
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(JOB).code(), Some(0));
    assert!(ws.is_in(DONE, "1"));
    assert_eq!(d.log_count("retention:"), 0);
    let help = run(clean_command(nrvnad_bin()).arg("--help"), STARTUP);
    let text = help.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        text.contains("Default (no --retain-* flag): keep every job forever"),
        "{text}"
    );
}

#[test]
fn a_round_is_skipped_while_another_pruner_holds_the_lock_and_the_trash_is_emptied_at_start() {
    let ws = TestWs::new();
    ws.create_dirs();
    let old = ws.make_job(DONE, "1", &[("meta.json", b"{}"), ("result.txt", b"x")]);
    fs::File::open(&old)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(2 * DAY))
        .unwrap();
    // What a pruner killed mid-delete left behind.
    let left = ws.path().join(".nrvna-trash/2");
    fs::create_dir_all(&left).unwrap();
    fs::write(left.join("result.txt"), "half").unwrap();
    // Another pruner (a shared member, flw --prune) holds the lock.
    let handle = nrvna_core::Workspace::open(ws.path()).unwrap();
    let held = nrvna_core::retention::PruneLock::acquire(&handle, false)
        .unwrap()
        .expect("the lock");
    let mut d = echo_logging(&ws, &["--retain-done", "1d", "--retain-interval", "100ms"], "debug");
    // Several rounds are skipped (jobs run meanwhile): nothing is removed.
    let id = ws.submit(&[], "hello");
    assert_eq!(ws.wait_finished(&id, JOB), DONE);
    assert!(wait_for(JOB, || d.log_count("skipping this round") >= 3));
    assert!(
        ws.is_in(DONE, "1") && left.is_dir(),
        "a round ran while another pruner held the lock"
    );
    drop(held);
    assert!(wait_for(JOB, || !ws.is_in(DONE, "1") && !left.exists()));
    assert!(ws.is_in(DONE, &id));
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(JOB).code(), Some(0));

    // A crash left the trash: the next start empties it, with no policy.
    fs::create_dir_all(&left).unwrap();
    fs::write(left.join("result.txt"), "half").unwrap();
    let mut d = echo(&ws, &[]);
    assert!(!left.exists(), "recovery at start empties the trash");
    assert_eq!(d.log_count("left in the trash"), 1);
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(JOB).code(), Some(0));
}
