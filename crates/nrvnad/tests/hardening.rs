//! Issue #8: the daemon never hangs and never fails work it did not run.
//! Files planted under the daemon's own names, engine faults, worker
//! panics, a stuck job at shutdown, a live older C++ daemon, queued
//! cancels seen by a reader, pickup that must come from inotify, and
//! configuration errors that name their variable.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const ECHO: [&str; 2] = ["--engine", "echo"];

#[test]
fn files_planted_under_the_daemons_names_never_hang_or_leak_and_jobs_run() {
    let ws = TestWs::new();
    ws.create_dirs();
    let victim = ws.tmp().join("victim.txt");
    fs::write(&victim, "untouched").unwrap();
    let names = [
        "partial.txt",
        "progress.json",
        "result.txt",
        "error.txt",
        "response.txt",
        "embedding.json",
        "meta.json.tmp",
        "result.txt.tmp",
        "progress.json.tmp",
    ];
    let mut ids = Vec::new();
    for (i, name) in names.iter().enumerate() {
        // Each name as a FIFO, a directory and a symlink to a file outside.
        for (k, kind) in ["fifo", "dir", "link"].iter().enumerate() {
            let id = format!("{}", 500 + i * 10 + k);
            let d = ws.make_job(WRITING, &id, &[("prompt.txt", b"Say hi.")]);
            let p = d.join(name);
            match *kind {
                "fifo" => mkfifo(&p),
                "dir" => fs::create_dir_all(p.join("inside")).unwrap(),
                _ => symlink(&victim, &p).unwrap(),
            }
            fs::rename(&d, ws.job(READY, &id)).unwrap();
            ids.push(id);
        }
    }
    // A huge partial.txt (sparse) must not be read or appended to either.
    let d = ws.make_job(WRITING, "900", &[("prompt.txt", b"Say hi.")]);
    fs::File::create(d.join("partial.txt"))
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    fs::rename(&d, ws.job(READY, "900")).unwrap();
    ids.push("900".into());

    let t0 = Instant::now();
    let mut d = ws.daemon(&["--drain", "--workers", "4"], &[("NRVNA_PREDICT", "16")]);
    d.wait_exit(JOB);
    assert_eq!(d.code(), 0, "every job should have run: {}", d.log_text());
    eprintln!(
        "{} hostile jobs drained in {:.1} s",
        ids.len(),
        t0.elapsed().as_secs_f64()
    );
    for id in &ids {
        assert!(ws.is_in(DONE, id), "{id} is in {:?}", ws.states_of(id));
        let r = ws.read(DONE, id, "result.txt");
        assert!(!r.is_empty(), "{id}: empty result");
        for f in fs::read_dir(ws.job(DONE, id)).unwrap().flatten() {
            let n = f.file_name().to_string_lossy().into_owned();
            assert!(!n.ends_with(".tmp"), "{id}: {n} left behind");
            assert!(f.file_type().unwrap().is_file(), "{id}: {n} is not a regular file");
        }
    }
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "untouched",
        "a symlink was followed"
    );
}

#[test]
fn an_engine_fault_stops_claiming_fails_nothing_and_exits_3() {
    let ws = TestWs::new();
    let ids: Vec<String> = (0..6).map(|i| ws.submit(&[], &format!("Count to {i}."))).collect();
    // The third decode call fails as if the backend broke.
    let mut d = ws.daemon(
        &["--drain", "--workers", "2"],
        &[("NRVNA_TEST_DECODE_FAULT", "3"), ("NRVNA_PREDICT", "32")],
    );
    d.wait_exit(JOB);
    assert_eq!(d.code(), 3, "an engine fault exits 3: {}", d.log_text());
    assert!(ws.names_in(FAILED).is_empty(), "jobs that never ran were failed");
    let claimed = ws.names_in(PROCESSING);
    assert!(!claimed.is_empty(), "the jobs in the faulted batch stay in processing/");
    assert!(claimed.len() <= 2, "claimed more than the workers: {claimed:?}");
    for id in &ids {
        assert_eq!(ws.states_of(id).len(), 1, "{id} is in {:?}", ws.states_of(id));
    }
    assert!(d.log_text().contains("engine fault"), "the log says why");
    // A restart recovers the claimed jobs and runs everything.
    let mut d = ws.drain(&["--workers", "2"], &[("NRVNA_PREDICT", "32")]);
    assert_eq!(d.code(), 0);
    for id in &ids {
        assert!(ws.is_in(DONE, id), "{id} after the restart: {:?}", ws.states_of(id));
    }
    for id in &claimed {
        assert_eq!(ws.meta(DONE, id)["recovery_attempts"], 1, "{id} counted its recovery");
    }
}

#[test]
fn an_echo_engine_fault_leaves_the_backlog_queued() {
    let ws = TestWs::new();
    let fault = ws.submit(&[], "nrvna-test:fault");
    let rest: Vec<String> = (0..5).map(|i| ws.submit(&[], &format!("job {i}"))).collect();
    let mut d = ws.daemon(&["--drain", "--workers", "1", "--engine", "echo"], &[]);
    d.wait_exit(JOB);
    assert_eq!(d.code(), 3, "{}", d.log_text());
    assert!(ws.is_in(PROCESSING, &fault), "the faulted job stays recoverable");
    for id in &rest {
        assert!(
            ws.is_in(READY, id),
            "{id} should still be queued: {:?}",
            ws.states_of(id)
        );
    }
    assert!(ws.names_in(FAILED).is_empty());
}

#[test]
fn a_worker_panic_is_caught_the_job_recovered_and_drain_ends() {
    let ws = TestWs::new();
    let bad = ws.submit(&[], "nrvna-test:panic");
    let good: Vec<String> = (0..3).map(|i| ws.submit(&[], &format!("fine {i}"))).collect();
    let mut d = ws.daemon(
        &["--drain", "--workers", "2", "--engine", "echo"],
        &[("NRVNA_MAX_RECOVERY_ATTEMPTS", "1")],
    );
    d.wait_exit(Duration::from_secs(30));
    assert_eq!(d.code(), 1, "drain ends, with a failure: {}", d.log_text());
    let log = d.log_text();
    assert!(log.contains(&format!("worker panicked on job {bad}")), "{log}");
    for id in &good {
        assert!(ws.is_in(DONE, id), "{id}: {:?}", ws.states_of(id));
    }
    assert!(ws.is_in(FAILED, &bad), "{:?}", ws.states_of(&bad));
    let e = ws.read(FAILED, &bad, "error.txt");
    assert!(e.contains("abandoned in processing/ 2 times"), "{e}");
}

#[test]
fn sigterm_with_a_stuck_job_exits_within_the_grace_period() {
    let ws = TestWs::new();
    let stuck = ws.submit(&[], "nrvna-test:hang");
    let mut d = ws.daemon(&["--engine", "echo", "--stop-grace", "2"], &[]);
    d.wait_ready();
    // Stuck for real: past the engine's first stop check, ignoring the rest.
    assert!(
        wait_for(JOB, || std::fs::read_to_string(
            ws.job(PROCESSING, &stuck).join("partial.txt")
        )
        .is_ok_and(|t| t.contains("hanging"))),
        "the job never started hanging"
    );
    let t0 = Instant::now();
    d.signal(libc::SIGTERM);
    d.wait_exit(Duration::from_secs(20));
    let took = t0.elapsed();
    eprintln!(
        "SIGTERM to exit with a stuck job: {:.2} s (--stop-grace 2)",
        took.as_secs_f64()
    );
    assert!(
        took >= Duration::from_secs(2),
        "it exited before the grace ended: {took:?}"
    );
    assert!(took < Duration::from_secs(6), "it took {took:?}");
    assert_eq!(d.code(), 1, "{}", d.log_text());
    assert!(ws.is_in(PROCESSING, &stuck), "the stuck job stays for recovery");
    assert!(!ws.path().join(".nrvnad.pid").exists(), "lifecycle files cleaned up");
    assert!(d.log_text().contains(&stuck), "the log names the job left behind");
}

/// A stand-in for an older C++ nrvnad: a process named `nrvnad` that holds
/// no lock, named by `.nrvnad.pid`.
struct FakeCppDaemon(std::process::Child);

impl FakeCppDaemon {
    fn start(ws: &TestWs) -> FakeCppDaemon {
        let exe = ws.tmp().join("bin").join("nrvnad");
        fs::create_dir_all(exe.parent().unwrap()).unwrap();
        fs::copy("/bin/sleep", &exe).unwrap();
        // A test thread forking right now may still hold the copy's write
        // descriptor until its child execs: exec then fails with ETXTBSY
        // for a moment.
        let mut tries = 0;
        let child = loop {
            match std::process::Command::new(&exe).arg("600").spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.unwrap(),
            }
        };
        fs::write(ws.path().join(".nrvnad.pid"), format!("{}\n", child.id())).unwrap();
        FakeCppDaemon(child)
    }
}

impl Drop for FakeCppDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_live_older_cpp_daemon_is_detected_and_its_job_is_not_recovered() {
    let ws = TestWs::new();
    ws.create_dirs();
    let mut fake = FakeCppDaemon::start(&ws);
    ws.make_job(PROCESSING, "777", &[("prompt.txt", b"being run by the C++ daemon")]);
    let mut d = ws.daemon(&ECHO, &[]);
    d.wait_exit(STARTUP);
    assert_eq!(d.code(), 1);
    let log = d.log_text();
    assert!(
        log.contains(&format!("pid {}", fake.0.id())) && log.contains("C++"),
        "{log}"
    );
    assert!(
        ws.is_in(PROCESSING, "777"),
        "its live job was taken: {:?}",
        ws.states_of("777")
    );
    // status sees it; --drain waits for it; stop stops it.
    ws.ctl("status", &[]).expect_code(2, "status of a starting C++ daemon");
    let mut waiting = ws.daemon(&["--drain", "--engine", "echo"], &[]);
    std::thread::sleep(Duration::from_millis(800));
    assert!(waiting.exited().is_none(), "--drain must wait for the C++ daemon");
    assert!(ws.is_in(PROCESSING, "777"));
    ws.ctl("stop", &["--timeout", "10"])
        .expect_code(0, "stop the C++ daemon");
    let _ = fake.0.wait();
    waiting.wait_exit(JOB);
    assert_eq!(waiting.code(), 0, "{}", waiting.log_text());
    assert!(ws.is_in(DONE, "777"), "recovered once its owner was gone");
}

#[test]
fn a_queued_cancel_is_never_seen_failed_without_its_reason() {
    use notify::{EventKind, RecursiveMode, Watcher};
    let ws = TestWs::new();
    ws.create_dirs();
    let ids: Vec<String> = (0..40).map(|i| ws.submit(&[], &format!("queued {i}"))).collect();
    let failed = ws.dir(FAILED);
    let (tx, rx) = std::sync::mpsc::channel();
    let seen = std::thread::spawn({
        let failed = failed.clone();
        move || {
            let mut bad = Vec::new();
            let mut checked = 0;
            let mut w = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
                let _ = tx.send(e);
            })
            .unwrap();
            w.watch(&failed, RecursiveMode::NonRecursive).unwrap();
            while let Ok(Ok(ev)) = rx.recv_timeout(Duration::from_secs(5)) {
                if matches!(ev.kind, EventKind::Create(_) | EventKind::Modify(_)) {
                    for p in ev.paths {
                        if p.parent() == Some(failed.as_path()) && p.is_dir() {
                            checked += 1;
                            if !p.join("error.txt").is_file() {
                                bad.push(p.display().to_string());
                            }
                        }
                    }
                }
            }
            (checked, bad)
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    for id in &ids {
        ws.flw(&["--cancel", id], JOB).expect_code(0, "flw --cancel");
    }
    let (checked, bad) = seen.join().unwrap();
    assert!(checked > 0, "the watcher saw no arrival in failed/");
    assert!(bad.is_empty(), "failed jobs without error.txt at arrival: {bad:?}");
    for id in &ids {
        assert_eq!(
            ws.read(FAILED, id, "error.txt").trim(),
            "cancelled by user before it started"
        );
        assert_eq!(ws.meta(FAILED, id)["cancelled"], true);
    }
}

#[test]
fn pickup_comes_from_filesystem_events_not_the_fallback_scan() {
    let ws = TestWs::new();
    // The fallback scan would take a minute: only inotify can be this fast.
    let mut d = ws.daemon(&["--engine", "echo"], &[("NRVNA_SCAN_INTERVAL_MS", "60000")]);
    d.wait_ready();
    for i in 0..5 {
        let t0 = Instant::now();
        let id = ws.submit(&[], &format!("quick {i}"));
        assert_eq!(ws.wait_finished(&id, Duration::from_secs(20)), DONE);
        assert!(t0.elapsed() < Duration::from_secs(20), "pickup waited for the scan");
    }
    d.signal(libc::SIGTERM);
    d.wait_exit(JOB);
    assert_eq!(d.code(), 0);
}

#[test]
fn a_bad_setting_names_its_variable_and_version_flags_work() {
    let ws = TestWs::new();
    for (var, val) in [("NRVNA_TEMP", "warm"), ("NRVNA_WORKERS", "0"), ("NRVNA_FSYNC", "maybe")] {
        let r = run(
            clean_command(nrvnad_bin()).arg(model()).arg(ws.path()).env(var, val),
            STARTUP,
        );
        assert_eq!(r.code, Some(2), "{var}={val}: {r:?}");
        assert!(
            r.stderr.contains(var),
            "{var}={val}: stderr does not name it: {}",
            r.stderr
        );
    }
    for flag in ["-v", "--version", "-V"] {
        let r = run(clean_command(nrvnad_bin()).arg(flag), STARTUP);
        r.expect_code(0, flag);
        assert!(r.stdout.contains(env!("CARGO_PKG_VERSION")), "{flag}: {}", r.stdout);
    }
    let help = run(clean_command(nrvnad_bin()).arg("--help"), STARTUP);
    for var in [
        "NRVNA_STOP_GRACE",
        "NRVNA_MIN_FREE_MB",
        "NRVNA_MAX_RECOVERY_ATTEMPTS",
        "NRVNA_TEMP",
    ] {
        assert!(help.stdout.contains(var), "--help does not show {var}");
    }
}

#[test]
fn the_lock_file_holds_the_pid_and_info_is_one_compact_line() {
    let ws = TestWs::new();
    let mut d = ws.daemon(&ECHO, &[]);
    d.wait_ready();
    let pid = d.pid().to_string();
    assert_eq!(fs::read_to_string(ws.path().join(".nrvnad.lock")).unwrap().trim(), pid);
    let info = fs::read_to_string(ws.path().join(".nrvnad.info")).unwrap();
    assert_eq!(info.lines().count(), 1, "{info:?}");
    let model = model().display().to_string();
    assert!(info.contains(&format!("\"model\":\"{model}\"")), "{info}");
    assert!(info.contains(&format!("\"pid\":{pid}")), "{info}");
    assert!(
        info.contains("\"workers\":4") && info.contains("\"started_at\":\""),
        "{info}"
    );
    d.signal(libc::SIGTERM);
    d.wait_exit(JOB);
}

/// Inode numbers of the files in a directory.
fn inodes(dir: &Path) -> std::collections::BTreeSet<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(dir)
        .map(|r| r.map(|e| e.unwrap().metadata().unwrap().ino()).collect())
        .unwrap_or_default()
}

#[test]
fn replaced_files_are_kept_as_spares_and_reused_without_mixing_jobs() {
    use std::os::unix::fs::MetadataExt;
    let ws = TestWs::new();
    let spare_dir = ws.path().join(".nrvna-spare");
    let first: Vec<String> = (0..6).map(|i| ws.submit(&[], &format!("first {i}"))).collect();
    assert_eq!(ws.drain(&ECHO, &[]).code(), 0);
    // Each finished job's submitted meta.json was exchanged out and kept.
    let kept = inodes(&spare_dir);
    assert_eq!(kept.len(), first.len(), "one spare per finished job");
    // The next start adopts them as rested and writes new files into them.
    let second: Vec<String> = (0..6).map(|i| ws.submit(&[], &format!("second {i}"))).collect();
    assert_eq!(ws.drain(&ECHO, &[]).code(), 0);
    let mut reused = 0;
    for (i, id) in second.iter().enumerate() {
        assert_eq!(ws.read(DONE, id, "result.txt"), format!("second {i}"));
        let meta = ws.meta(DONE, id);
        assert_eq!(meta["status"], "done", "{meta}");
        for f in ["result.txt", "meta.json"] {
            let m = fs::metadata(ws.job(DONE, id).join(f)).unwrap();
            assert_eq!(m.nlink(), 1);
            reused += usize::from(kept.contains(&m.ino()));
        }
    }
    // Every adopted spare was written again (the daemon's own files at
    // start take some, the jobs the rest), and the jobs got some of them.
    assert!(reused >= 1, "none of the second batch's files were spares");
    let left = inodes(&spare_dir);
    assert!(
        kept.is_disjoint(&left),
        "adopted spares left unused: {:?}",
        kept.intersection(&left)
    );
    // The first batch is untouched by the reuse of its old files.
    for (i, id) in first.iter().enumerate() {
        assert_eq!(ws.read(DONE, id, "result.txt"), format!("first {i}"));
        assert_eq!(ws.meta(DONE, id)["status"], "done");
    }
    assert!(!fs::read_dir(ws.job(DONE, &second[0])).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));

    // Off: nothing kept, no spare directory.
    let off = TestWs::new();
    let id = off.submit(&[], "no spares");
    assert_eq!(off.drain(&ECHO, &[("NRVNA_SPARES", "0")]).code(), 0);
    assert_eq!(off.read(DONE, &id, "result.txt"), "no spares");
    assert!(!off.path().join(".nrvna-spare").exists());
}
