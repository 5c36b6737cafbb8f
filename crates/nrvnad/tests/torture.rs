//! Torture: SIGKILL the daemon at seeded random moments while several `wrk`
//! processes keep submitting, restart it each time, drain, and check that no
//! job was lost, duplicated into two states, or published half-written. Also
//! SIGKILL `wrk` mid-submit and check that nothing partial reaches
//! `input/ready/`. Runs on the real model with jobs of a few tokens.
//!
//! `NRVNA_TORTURE_SEED` picks the seed (default 7); `NRVNA_TORTURE_KILLS`
//! the number of daemon kills (default 24).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Rng;

const STATES: [&str; 4] = ["input/ready", "processing", "output", "failed"];

fn bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_nrvnad")).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release --workspace` (scripts/test.sh does)",
        p.display()
    );
    p
}

fn model() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "model missing: run scripts/fetch-model.sh");
    p
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn daemon(ws: &Path, drain: bool, log: &Path) -> Child {
    let mut c = Command::new(bin("nrvnad"));
    c.arg(model()).arg(ws).args(["--workers", "3"]);
    if drain {
        c.arg("--drain");
    }
    c.env("NRVNA_MAX_CTX", "512")
        .env("NRVNA_PREDICT", "3")
        .env("NRVNA_TEMP", "0")
        .env("NRVNA_THREADS", "1")
        .env("NRVNA_LOG_LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
        .spawn()
        .expect("spawning nrvnad")
}

/// Ids per state directory. States are listed from the last to the first,
/// so a job moving forward during the listing is missed, never seen twice;
/// a backward move (recovery) only happens while `allow_recovery` is true.
fn snapshot(ws: &Path) -> BTreeMap<String, Vec<&'static str>> {
    let mut seen: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for s in STATES.iter().rev() {
        if let Ok(rd) = fs::read_dir(ws.join(s)) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') {
                    seen.entry(name).or_default().push(s);
                }
            }
        }
    }
    seen
}

fn duplicates(snap: &BTreeMap<String, Vec<&'static str>>) -> Vec<String> {
    snap.iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, v)| format!("{k} in {v:?}"))
        .collect()
}

#[test]
fn sigkill_the_daemon_at_random_moments_while_submitting() {
    let seed = env_u64("NRVNA_TORTURE_SEED", 7);
    let kills = env_u64("NRVNA_TORTURE_KILLS", 24);
    let mut rng = Rng(seed.max(1) * 0x9E37_79B9_7F4A_7C15);
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let log = tmp.path().join("nrvnad.log");
    let wrk = bin("wrk");
    fs::create_dir_all(&ws).unwrap();

    // Submitters: three threads, each running wrk processes back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let printed = Arc::new(Mutex::new(Vec::<String>::new()));
    let submitters: Vec<_> = (0..3)
        .map(|t| {
            let (stop, printed, wrk, ws) = (stop.clone(), printed.clone(), wrk.clone(), ws.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let out = Command::new(&wrk)
                        .arg(&ws)
                        .arg(format!("Say the number {t}{n}."))
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "wrk failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    printed
                        .lock()
                        .unwrap()
                        .push(String::from_utf8(out.stdout).unwrap().trim().to_owned());
                    n += 1;
                    std::thread::sleep(Duration::from_millis(30));
                }
            })
        })
        .collect();

    // Sampler: look for an id in two states while the daemon runs.
    let sampler_dups = Arc::new(Mutex::new(Vec::<String>::new()));
    let sampler = {
        let (stop, ws, dups) = (stop.clone(), ws.clone(), sampler_dups.clone());
        std::thread::spawn(move || {
            let mut samples = 0u64;
            while !stop.load(Ordering::SeqCst) {
                for d in duplicates(&snapshot(&ws)) {
                    // Recovery moves processing/ -> input/ready/ (backwards) at start-up;
                    // that pair can be seen mid-listing without being a real duplicate.
                    if !(d.contains("\"processing\"") && d.contains("\"input/ready\"")) {
                        dups.lock().unwrap().push(d);
                    }
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            samples
        })
    };

    let start = Instant::now();
    let mut static_dups = Vec::new();
    for _ in 0..kills {
        let mut d = daemon(&ws, false, &log);
        std::thread::sleep(Duration::from_millis(rng.range(40, 700)));
        let _ = common::send_signal(d.id(), libc::SIGKILL);
        d.wait().unwrap();
        // The daemon is dead: the only moves now are wrk's publishes.
        static_dups.extend(duplicates(&snapshot(&ws)));
    }
    stop.store(true, Ordering::SeqCst);
    for s in submitters {
        s.join().unwrap();
    }
    let samples = sampler.join().unwrap();

    let status = daemon(&ws, true, &log).wait().unwrap();
    let printed: BTreeSet<String> = printed.lock().unwrap().iter().cloned().collect();
    let log_text = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.code() == Some(0) || status.code() == Some(1),
        "final drain exited {status:?}; log:\n{log_text}"
    );

    // Every printed id is in exactly one terminal state, complete.
    let snap = snapshot(&ws);
    let ceiling = 3;
    let (mut done, mut failed, mut recovered_jobs, mut recoveries, mut at_ceiling) = (0, 0, 0, 0, 0);
    for id in &printed {
        let states = snap.get(id).cloned().unwrap_or_default();
        assert_eq!(
            states.len(),
            1,
            "job {id} is in {states:?}, expected exactly one terminal state"
        );
        let dir = ws.join(states[0]).join(id);
        let meta: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("meta.json")).unwrap()).unwrap();
        let attempts = meta["recovery_attempts"].as_u64().unwrap_or(0);
        assert!(
            attempts <= ceiling,
            "{id}: recovery_attempts {attempts} exceeds the ceiling"
        );
        if attempts > 0 {
            recovered_jobs += 1;
            recoveries += attempts;
        }
        match states[0] {
            "output" => {
                done += 1;
                assert_eq!(meta["status"], "done", "{id}");
                let r = fs::read_to_string(dir.join("result.txt")).expect("result.txt");
                assert!(
                    meta["generated_tokens"].as_u64().is_some(),
                    "{id}: meta without generated_tokens"
                );
                let _ = r;
            }
            "failed" => {
                failed += 1;
                assert_eq!(meta["status"], "failed", "{id}");
                let e = fs::read_to_string(dir.join("error.txt")).expect("error.txt");
                assert!(
                    e.contains("NRVNA_MAX_RECOVERY_ATTEMPTS"),
                    "{id} failed for another reason: {e}"
                );
                at_ceiling += 1;
            }
            other => panic!("job {id} ended in {other}/ after the drain"),
        }
    }
    // No job that wrk did not print, and no temp file in a terminal state.
    for (id, states) in &snap {
        assert!(printed.contains(id), "{id} exists in {states:?} but no wrk printed it");
    }
    for s in ["output", "failed"] {
        for e in fs::read_dir(ws.join(s)).unwrap().flatten() {
            for f in fs::read_dir(e.path()).unwrap().flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                assert!(
                    !name.ends_with(".tmp"),
                    "temp file {} visible in {s}/",
                    f.path().display()
                );
            }
        }
    }
    let sampled = sampler_dups.lock().unwrap().clone();
    assert!(
        static_dups.is_empty(),
        "ids in two states while the daemon was down: {static_dups:?}"
    );
    assert!(sampled.is_empty(), "ids in two states while running: {sampled:?}");
    eprintln!(
        "torture summary (seed {seed}): {} jobs, {kills} kills, {done} done, {failed} failed at the ceiling ({at_ceiling}), \
         {recovered_jobs} jobs recovered ({recoveries} recoveries = jobs that ran more than once), {samples} state samples, \
         0 duplicates, {:.1} s",
        printed.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(
        printed.len() >= 20,
        "too few jobs submitted ({}) for the test to mean much",
        printed.len()
    );
}

#[test]
fn sigkill_wrk_mid_submit_never_publishes_a_partial_job() {
    let seed = env_u64("NRVNA_TORTURE_SEED", 7);
    let mut rng = Rng(seed.max(1) * 0xD1B5_4A32_D192_ED03);
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let wrk = bin("wrk");
    // A large prompt makes the write window wide enough to land kills in it.
    let prompt = "lorem ipsum dolor sit amet ".repeat(30_000);
    let (mut killed, mut completed) = (0, 0);
    let mut printed = Vec::new();
    for _ in 0..150 {
        let mut c = Command::new(&wrk)
            .arg(&ws)
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = c.stdin.take().unwrap();
        let p = prompt.clone();
        let feeder = std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(p.as_bytes());
        });
        std::thread::sleep(Duration::from_micros(rng.range(0, 8000)));
        let _ = common::send_signal(c.id(), libc::SIGKILL);
        let out = c.wait_with_output().unwrap();
        let _ = feeder.join();
        if out.status.success() {
            completed += 1;
            printed.push(String::from_utf8(out.stdout).unwrap().trim().to_owned());
        } else {
            killed += 1;
        }
        // Whatever is in input/ready/ is complete.
        if let Ok(rd) = fs::read_dir(ws.join("input/ready")) {
            for e in rd.flatten() {
                let dir = e.path();
                let got = fs::read_to_string(dir.join("prompt.txt")).expect("published job without prompt.txt");
                assert_eq!(
                    got.len(),
                    prompt.len(),
                    "half-written prompt.txt published in {}",
                    dir.display()
                );
                let m = fs::read(dir.join("meta.json")).expect("published job without meta.json");
                serde_json::from_slice::<serde_json::Value>(&m).expect("published meta.json is not valid JSON");
                for f in fs::read_dir(&dir).unwrap().flatten() {
                    assert!(
                        !f.file_name().to_string_lossy().ends_with(".tmp"),
                        "temp file in {}",
                        dir.display()
                    );
                }
            }
        }
    }
    let ready: BTreeSet<String> = fs::read_dir(ws.join("input/ready"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for id in &printed {
        assert!(ready.contains(id), "wrk printed {id} but it is not in input/ready/");
    }
    let staging = fs::read_dir(ws.join("input/writing")).map(|rd| rd.count()).unwrap_or(0);
    eprintln!(
        "wrk kills: {killed} killed, {completed} completed, {staging} staging leftovers, 0 partial jobs published"
    );
    assert!(
        killed >= 20,
        "only {killed} of 150 wrk runs were killed mid-way; the test did not exercise kills"
    );
}
