//! Hostile input (issue #5): job entries and job files that are symlinks,
//! FIFOs, directories or huge; meta.json that is huge, deeply nested, of the
//! wrong types or not UTF-8; ids that collide with finished jobs; names that
//! must never be joined into a path; a read-only or missing output/; and a
//! full disk. The daemon must stay up, fail the bad job with one line (or
//! keep it recoverable), and go on with the next good job.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Asserts `id` failed with a one-line error.txt that contains `needle`.
#[track_caller]
fn assert_failed_with(ws: &TestWs, id: &str, needle: &str) {
    assert_eq!(
        ws.wait_finished(id, JOB),
        FAILED,
        "job {id} should have failed ({needle})"
    );
    let e = ws.read(FAILED, id, "error.txt");
    assert_eq!(
        e.trim_end().lines().count(),
        1,
        "error.txt of {id} is not one line: {e:?}"
    );
    assert!(
        e.to_lowercase().contains(&needle.to_lowercase()),
        "error.txt of {id} is {e:?}, expected {needle:?}"
    );
    assert_eq!(ws.meta(FAILED, id)["status"], "failed");
}

#[test]
fn hostile_job_entries_and_files_fail_cleanly_and_the_daemon_goes_on() {
    let ws = TestWs::new();
    ws.create_dirs();
    let outside = ws.tmp().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("prompt.txt"), "secret outside the workspace").unwrap();
    let huge = ws.tmp().join("huge");
    fs::File::create(&huge).unwrap().set_len(100 << 20).unwrap(); // sparse 100 MB
    let fifo = ws.tmp().join("fifo");
    mkfifo(&fifo);

    let mut cases: Vec<(&str, &str)> = Vec::new();
    // A job directory that is a symlink to a directory outside, and a plain file.
    symlink(&outside, ws.job(READY, "101")).unwrap();
    cases.push(("101", "symlink"));
    fs::write(ws.job(READY, "102"), "I am a file").unwrap();
    cases.push(("102", "not a directory"));
    // prompt.txt as a symlink (to /etc/passwd, a FIFO, a huge file), a FIFO, a directory.
    for (id, target) in [
        ("103", Path::new("/etc/passwd")),
        ("104", fifo.as_path()),
        ("105", huge.as_path()),
    ] {
        let d = ws.make_job(WRITING, id, &[]);
        symlink(target, d.join("prompt.txt")).unwrap();
        fs::rename(&d, ws.job(READY, id)).unwrap();
        cases.push((id, "symlink"));
    }
    let d = ws.make_job(WRITING, "106", &[]);
    mkfifo(&d.join("prompt.txt"));
    fs::rename(&d, ws.job(READY, "106")).unwrap();
    cases.push(("106", "not a regular file"));
    let d = ws.make_job(WRITING, "107", &[]);
    fs::create_dir(d.join("prompt.txt")).unwrap();
    fs::rename(&d, ws.job(READY, "107")).unwrap();
    cases.push(("107", "not a regular file"));
    // meta.json, params.json, schema.json as symlinks, FIFOs and directories.
    for (i, file) in ["meta.json", "params.json", "schema.json"].iter().enumerate() {
        let base = 110 + i * 3;
        let ids = [(base).to_string(), (base + 1).to_string(), (base + 2).to_string()];
        let d = ws.make_job(WRITING, &ids[0], &[("prompt.txt", b"hi")]);
        symlink("/etc/passwd", d.join(file)).unwrap();
        fs::rename(&d, ws.job(READY, &ids[0])).unwrap();
        let d = ws.make_job(WRITING, &ids[1], &[("prompt.txt", b"hi")]);
        mkfifo(&d.join(file));
        fs::rename(&d, ws.job(READY, &ids[1])).unwrap();
        let d = ws.make_job(WRITING, &ids[2], &[("prompt.txt", b"hi")]);
        fs::create_dir(d.join(file)).unwrap();
        fs::rename(&d, ws.job(READY, &ids[2])).unwrap();
    }
    for id in ["110", "113", "116"] {
        cases.push((Box::leak(id.to_owned().into_boxed_str()), "symlink"));
    }
    for id in ["111", "112", "114", "115", "117", "118"] {
        cases.push((Box::leak(id.to_owned().into_boxed_str()), "not a regular file"));
    }
    // meta.json: 100 MB, deeply nested, wrong types, invalid UTF-8.
    let d = ws.make_job(WRITING, "120", &[("prompt.txt", b"hi")]);
    fs::File::create(d.join("meta.json"))
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    fs::rename(&d, ws.job(READY, "120")).unwrap();
    cases.push(("120", "larger than"));
    let nested = format!("{{\"x\":{}{}}}", "[".repeat(50_000), "]".repeat(50_000));
    ws.publish_job("121", &[("prompt.txt", b"hi"), ("meta.json", nested.as_bytes())]);
    cases.push(("121", "meta.json"));
    ws.publish_job(
        "122",
        &[("prompt.txt", b"hi"), ("meta.json", br#"{"tags":7,"mode":"text"}"#)],
    );
    cases.push(("122", "tags"));
    ws.publish_job(
        "123",
        &[("prompt.txt", b"hi"), ("meta.json", b"{\"mode\":\"te\xffxt\"}")],
    );
    cases.push(("123", "meta.json"));
    // Prompts of invalid UTF-8 and of NUL bytes.
    ws.publish_job("124", &[("prompt.txt", b"caf\xe9 \xff")]);
    cases.push(("124", "utf-8"));
    ws.publish_job("125", &[("prompt.txt", &[0u8; 64])]);
    cases.push(("125", "nul"));

    // Names that are not ids: never joined into a path, never fatal.
    let long = "1".repeat(129);
    let weird = ["...", "..1", "with space", "new\nline", long.as_str(), "1__2", "_1"];
    for w in weird {
        fs::create_dir(ws.dir(READY).join(w)).unwrap();
        fs::write(ws.dir(READY).join(w).join("prompt.txt"), "hi").unwrap();
    }

    let mut d = ws.daemon(&["--workers", "2"], &[]);
    d.wait_ready();
    for (id, needle) in &cases {
        assert_failed_with(&ws, id, needle);
    }
    // The symlinked job directory's target outside the workspace is untouched.
    assert_eq!(
        fs::read_to_string(outside.join("prompt.txt")).unwrap(),
        "secret outside the workspace"
    );
    assert!(
        !outside.join("error.txt").exists(),
        "the daemon wrote through a symlinked job directory"
    );
    // A failed job whose meta.json was invalid keeps the original aside.
    assert!(ws.job(FAILED, "122").join("meta.json.invalid").exists());
    // The daemon is still up and processes the next good job.
    assert!(d.exited().is_none(), "the daemon died: {}", d.log_text());
    let good = ws.submit(&[], "Say hello.");
    assert_eq!(ws.wait_finished(&good, JOB), DONE);
    for w in weird {
        assert!(
            ws.dir(READY).join(w).is_dir(),
            "{w:?} should be left alone in input/ready/"
        );
    }
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(JOB).code(), Some(0));
}

#[test]
fn an_id_that_already_finished_is_never_overwritten() {
    let ws = TestWs::new();
    ws.create_dirs();
    ws.make_job(
        DONE,
        "200",
        &[("prompt.txt", b"old"), ("result.txt", b"the original result")],
    );
    ws.make_job(
        FAILED,
        "201",
        &[("prompt.txt", b"old"), ("error.txt", b"the original error\n")],
    );
    ws.publish_job("200", &[("prompt.txt", b"Say one word.")]);
    ws.publish_job("201", &[("prompt.txt", b"Say one word.")]);
    let good = ws.submit(&[], "Say hello.");
    let mut d = ws.drain(&[], &[]);
    assert!(d.code() == 0 || d.code() == 1);
    assert!(ws.is_in(DONE, &good));
    assert_eq!(ws.read(DONE, "200", "result.txt"), "the original result");
    assert_eq!(ws.read(FAILED, "201", "error.txt"), "the original error\n");
    // The duplicates are left where they were, for a person to sort out.
    assert!(ws.is_in(READY, "200") && ws.is_in(READY, "201"));
    assert!(d.log_text().contains("already in output/"), "{}", d.log_text());
}

/// Mounts a tmpfs with `opts` on `dir`; fails the test with the reason
/// when it cannot (these tests are `#[ignore]`d: they need root, which CI has).
fn mount_tmpfs(opts: &str, dir: &Path) {
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
        .arg(dir)
        .status();
    assert!(
        st.is_ok_and(|s| s.success()),
        "cannot mount a tmpfs on {} (this test needs root: run it as root with --include-ignored)",
        dir.display()
    );
}

#[test]
#[ignore = "needs root: mounts a read-only tmpfs on output/ (CI runs it)"]
fn a_read_only_output_dir_keeps_the_job_recoverable() {
    let ws = TestWs::new();
    ws.create_dirs();
    let out = ws.dir(DONE);
    mount_tmpfs("ro,size=1m", &out);
    let id = ws.submit(&[], "Say hello.");
    let mut d = ws.daemon(&[], &[]);
    d.wait_ready();
    assert!(
        wait_for(JOB, || d.log_text().contains("stays in processing/")),
        "no clear error about output/: {}",
        d.log_text()
    );
    assert!(
        ws.is_in(PROCESSING, &id),
        "the job must stay recoverable in processing/"
    );
    assert!(
        d.log_text().contains(&out.display().to_string()),
        "the error should name output/"
    );
    d.signal(libc::SIGTERM);
    d.wait_exit(JOB);
    assert!(Command::new("umount").arg(&out).status().unwrap().success());
    // Once output/ works again, the next start finishes it.
    let mut d = ws.drain(&[], &[]);
    assert_eq!(d.code(), 0);
    assert!(ws.is_in(DONE, &id));
    assert_eq!(ws.meta(DONE, &id)["recovery_attempts"], 1);
}

#[test]
fn a_missing_output_dir_is_recreated() {
    let ws = TestWs::new();
    ws.create_dirs();
    let mut d = ws.daemon(&[], &[]);
    d.wait_ready();
    fs::remove_dir_all(ws.dir(DONE)).unwrap();
    let id = ws.submit(&[], "Say hello.");
    assert_eq!(ws.wait_finished(&id, JOB), DONE);
    d.signal(libc::SIGTERM);
    d.wait_exit(JOB);
}

#[test]
#[ignore = "needs root: mounts a 2 MB tmpfs as the workspace (CI runs it)"]
fn a_full_disk_backs_off_instead_of_rerunning_and_jobs_run_once_space_is_freed() {
    let ws = TestWs::new();
    let root = ws.path().to_owned();
    fs::create_dir_all(&root).unwrap();
    mount_tmpfs("size=2m", &root);
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(root.clone());
    ws.create_dirs();
    let ids: Vec<String> = (0..4)
        .map(|i| ws.submit(&[], &format!("Write a sentence about the number {i}.")))
        .collect();
    // Start the daemon, then fill the disk to the last byte while the jobs run.
    let mut d = ws.daemon(
        &["--workers", "2"],
        &[("NRVNA_PREDICT", "48"), ("NRVNA_MIN_FREE_MB", "0.25")],
    );
    d.wait_ready();
    // Fill only once a job runs: filled before the first claim, the daemon
    // (rightly) claims nothing, and no job meets the full disk mid-run.
    let claims = |d: &Daemon| d.log_text().matches("] claimed ").count();
    assert!(
        wait_for(JOB, || claims(&d) >= 1),
        "no job was claimed: {}",
        d.log_text()
    );
    let filler = root.join("filler");
    {
        use std::io::Write;
        let mut f = fs::File::create(&filler).unwrap();
        let block = vec![b'x'; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let small = [b'x'; 512];
        while f.write_all(&small).is_ok() {}
        let _ = f.sync_all();
    }
    // Jobs run, cannot write their result, and go back to input/ready/.
    assert!(
        wait_for(JOB, || d.log_text().contains("no space left on device")),
        "no 'no space left on device' in the log: {}",
        d.log_text()
    );
    for s in [DONE, FAILED] {
        for id in ws.names_in(s) {
            let dir = ws.job(s, &id);
            for f in fs::read_dir(&dir).unwrap().flatten() {
                assert!(
                    !f.file_name().to_string_lossy().ends_with(".tmp"),
                    "temp file in {}",
                    dir.display()
                );
            }
            if s == DONE {
                assert!(
                    !ws.read(DONE, &id, "result.txt").is_empty(),
                    "half-written result in output/"
                );
                assert_eq!(ws.meta(DONE, &id)["status"], "done");
            } else {
                let e = ws.read(FAILED, &id, "error.txt");
                assert!(e.contains("no space left on device"), "failed for another reason: {e}");
            }
        }
    }
    // While the disk stays full, nothing is claimed (and regenerated) again.
    let before = claims(&d);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        claims(&d),
        before,
        "jobs were claimed again on a full disk: {}",
        d.log_text()
    );
    assert!(
        d.log_text().contains("claiming nothing until there is space"),
        "{}",
        d.log_text()
    );
    // Free the space: the remaining jobs finish without a restart.
    fs::remove_file(&filler).unwrap();
    for id in &ids {
        assert_eq!(
            ws.wait_finished(id, Duration::from_secs(120)),
            DONE,
            "{id} after space was freed"
        );
    }
    assert!(d.exited().is_none(), "the daemon restarted or died");
    d.signal(libc::SIGTERM);
    d.wait_exit(JOB);
}

#[test]
fn stop_never_signals_a_process_that_does_not_hold_the_lock() {
    let ws = TestWs::new();
    ws.create_dirs();
    // Someone (this test) holds the lock, and the pid file names an innocent process.
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(ws.path().join(".nrvnad.lock"))
        .unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let mut innocent = Command::new("sleep").arg("30").spawn().unwrap();
    fs::write(ws.path().join(".nrvnad.pid"), format!("{}\n", innocent.id())).unwrap();
    let r = ws.ctl("stop", &["--timeout", "1"]);
    r.expect_code(1, "stop with a stale pid file");
    assert!(r.stderr.contains("refusing to signal"), "{}", r.stderr);
    assert!(
        innocent.try_wait().unwrap().is_none(),
        "the innocent process was signalled"
    );
    // Our own pid is a live process holding the lock, but not an nrvnad.
    fs::write(ws.path().join(".nrvnad.pid"), format!("{}\n", std::process::id())).unwrap();
    ws.ctl("stop", &["--timeout", "1"])
        .expect_code(1, "stop with a pid that is not nrvnad");
    let _ = innocent.kill();
    let _ = innocent.wait();
}
