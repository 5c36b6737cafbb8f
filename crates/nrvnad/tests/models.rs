//! One daemon, many models (issue #25), on real models: SmolLM2-135M,
//! Gemma 3 270M and the OuteTTS fixture pair (a tts model and its
//! vocoder). A mixed queue with one model loaded at a time runs every job
//! with few loads and no more memory than the largest model alone; a
//! `high` job for an unloaded model switches soon; a job naming a model no
//! one serves fails at once; a SIGKILL in the middle of a switch loses
//! nothing. The echo engine covers the CLI forms.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::*;

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1";
const GEMMA: &str = "gemma-3-270m-q4_k_m";
const TTS: &str = "OuteTTS-0.3-fixture";

/// The daemon settings of these tests: short jobs, flash attention off (no
/// measurement at each load), 4 workers.
const ENV: [(&str, &str); 2] = [("NRVNA_PREDICT", "16"), ("NRVNA_FLASH_ATTN", "off")];

fn gemma() -> PathBuf {
    let p = repo_root().join(format!("models/{GEMMA}.gguf"));
    assert!(
        p.is_file(),
        "Gemma missing: run scripts/fetch-model.sh gemma (expected {})",
        p.display()
    );
    p
}

fn tts_pair() -> (PathBuf, PathBuf) {
    let dir = repo_root().join("models/fixtures/tts");
    let (m, v) = (dir.join(format!("{TTS}.gguf")), dir.join("WavTokenizer-fixture.gguf"));
    assert!(
        m.is_file() && v.is_file(),
        "tts fixtures missing: run scripts/fixtures.sh (expected {} and {})",
        m.display(),
        v.display()
    );
    (m, v)
}

/// A models directory (links) holding `which` of smol, gemma and tts.
fn models_dir(ws: &TestWs, which: &[&str]) -> PathBuf {
    let dir = ws.tmp().join(format!("models-{}", which.join("-")));
    std::fs::create_dir_all(&dir).unwrap();
    let (tts, vocoder) = tts_pair();
    let mut files = Vec::new();
    for w in which {
        match *w {
            "smol" => files.push(model()),
            "gemma" => files.push(gemma()),
            "tts" => files.extend([tts.clone(), vocoder.clone()]),
            other => panic!("{other}"),
        }
    }
    for f in files {
        std::os::unix::fs::symlink(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    dir
}

fn models_arg(dir: &Path) -> std::ffi::OsString {
    format!("--models={}", dir.display()).into()
}

/// The daemon's `.nrvnad.info`.
fn info(ws: &TestWs) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(ws.path().join(".nrvnad.info")).unwrap_or_default())
        .unwrap_or(serde_json::Value::Null)
}

/// Loads per model id, from the daemon's info.
fn loads(ws: &TestWs) -> BTreeMap<String, u64> {
    info(ws)["models"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    (
                        m["id"].as_str().unwrap_or("").to_owned(),
                        m["loads"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The process's peak resident memory (VmHWM), in bytes.
fn vm_hwm(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

fn now_iso() -> String {
    nrvna_core::time::iso8601_utc(SystemTime::now())
}

/// Publishes a text job for `model` at `prio` without wrk (fast for many).
fn publish(ws: &TestWs, id: &str, model: &str, prio: &str) {
    let meta = format!("{{\"submitted_at\":\"{}\",\"mode\":\"text\"}}", now_iso());
    let params = format!("{{\"priority\":\"{prio}\",\"model\":\"{model}\"}}");
    ws.publish_job(
        id,
        &[
            ("prompt.txt", format!("Count to three, job {id}.").as_bytes()),
            ("meta.json", meta.as_bytes()),
            ("params.json", params.as_bytes()),
        ],
    );
}

/// Submits one job of each model in turn, `per` rounds (A, B, C, A, B, C
/// ...); returns (id, model) in submission order.
fn submit_interleaved(ws: &TestWs, per: usize, kinds: &[&str]) -> Vec<(String, &'static str)> {
    let mut ids = Vec::new();
    for i in 0..per {
        for k in kinds {
            let (id, m) = match *k {
                "smol" => (ws.submit(&["--model", SMOL], &format!("Name a colour ({i}).")), SMOL),
                "gemma" => (ws.submit(&["--model", GEMMA], &format!("Name a fruit ({i}).")), GEMMA),
                "tts" => (
                    ws.submit(&["--tts", "--model", TTS], &format!("Hello number {i}.")),
                    TTS,
                ),
                other => panic!("{other}"),
            };
            ids.push((id, m));
        }
    }
    ids
}

/// A daemon serving the models in `dir`, SmolLM2 by default, one loaded at
/// a time, 2 workers, plus `args`.
fn one_loaded(ws: &TestWs, dir: &Path, args: &[&str]) -> Daemon {
    let base = ["--workers", "2", "--max-loaded", "1", "--default-model", SMOL];
    Daemon::spawn_model(ws, &models_arg(dir), &[&base[..], args].concat(), &ENV)
}

/// The peak RSS of a daemon serving `model` alone after one job of it.
fn footprint_alone(model: &Path, tts: bool) -> u64 {
    let ws = TestWs::new();
    let mut d = Daemon::spawn_model(&ws, model.as_os_str(), &["--workers", "4"], &ENV);
    d.wait_ready();
    let id = if tts {
        ws.submit(&["--tts"], "Hello number 1.")
    } else {
        ws.submit(&[], "Name a colour (1).")
    };
    assert_eq!(ws.wait_finished(&id, JOB), DONE, "{}", d.log_text());
    let hwm = vm_hwm(d.pid());
    d.signal(libc::SIGTERM);
    d.wait_exit(JOB);
    hwm
}

#[test]
fn a_mixed_queue_with_one_model_loaded_runs_every_job_with_few_loads_and_bounded_memory() {
    let (tts, _) = tts_pair();
    let alone = [
        (SMOL, footprint_alone(&model(), false)),
        (GEMMA, footprint_alone(&gemma(), false)),
        (TTS, footprint_alone(&tts, true)),
    ];
    let largest = alone.iter().map(|(_, b)| *b).max().unwrap();

    let ws = TestWs::new();
    ws.create_dirs();
    let dir = models_dir(&ws, &["smol", "gemma", "tts"]);
    let jobs = submit_interleaved(&ws, 20, &["smol", "gemma", "tts"]);
    let t0 = Instant::now();
    let mut d = Daemon::spawn_model(
        &ws,
        &models_arg(&dir),
        &["--workers", "4", "--max-loaded", "1", "--default-model", SMOL],
        &ENV,
    );
    d.wait_ready();
    // flw and nrvnad status show each model, loaded or not, with its backlog.
    let flw = ws.flw(&[], STARTUP);
    for m in [SMOL, GEMMA, TTS] {
        assert!(flw.stdout.contains(&format!("model {m}")), "{}", flw.stdout);
    }
    assert!(flw.stdout.contains("queued"), "{}", flw.stdout);
    let st = ws.ctl("status", &[]);
    assert!(st.stdout.contains(&format!("model {GEMMA}: ")), "{}", st.stdout);
    let ok = wait_for(Duration::from_secs(900), || {
        ws.names_in(DONE).len() + ws.names_in(FAILED).len() == jobs.len()
    });
    assert!(ok, "not every job finished: {}", d.log_text());
    let wall = t0.elapsed();
    assert!(ws.names_in(FAILED).is_empty(), "jobs failed: {:?}", ws.names_in(FAILED));
    for (id, m) in &jobs {
        let meta = ws.meta(DONE, id);
        assert_eq!(meta["model"], format!("{m}.gguf"), "{id}");
        if *m == TTS {
            assert!(ws.job(DONE, id).join("audio.wav").is_file(), "{id}");
        }
    }
    // The info is rewritten at each load; give the last write a moment.
    let mut l = BTreeMap::new();
    wait_for(Duration::from_secs(5), || {
        l = loads(&ws);
        l.len() == 3
    });
    let hwm = vm_hwm(d.pid());
    d.signal(libc::SIGTERM);
    d.wait_exit(JOB);
    eprintln!(
        "60 jobs interleaved over 3 models with --max-loaded 1: {:.1} s, loads {l:?}; peak RSS {} MiB, alone {:?} MiB",
        wall.as_secs_f64(),
        hwm >> 20,
        alone.iter().map(|(m, b)| (*m, b >> 20)).collect::<Vec<_>>()
    );
    for m in [SMOL, GEMMA, TTS] {
        let n = l.get(m).copied().unwrap_or(0);
        assert!((1..=2).contains(&n), "model {m} loaded {n} times: {l:?}");
    }
    assert!(
        hwm as f64 <= largest as f64 * 1.15,
        "peak RSS {} MiB is more than the largest model alone ({} MiB) + 15%",
        hwm >> 20,
        largest >> 20
    );
}

#[test]
fn every_job_type_runs_on_its_model_with_the_per_job_engine_too() {
    let ws = TestWs::new();
    ws.create_dirs();
    let dir = models_dir(&ws, &["smol", "gemma", "tts"]);
    // The vision projector fixture fits SmolLM2: named as the rule finds it.
    let proj = repo_root().join("models/fixtures/mmproj-vision-fixture.gguf");
    assert!(proj.is_file(), "projector fixture missing: run scripts/fixtures.sh");
    std::os::unix::fs::symlink(&proj, dir.join(format!("mmproj-{SMOL}.gguf"))).unwrap();
    let picture = repo_root().join("models/fixtures/picture.png");
    let pic = picture.to_str().unwrap();
    let jobs = [
        (ws.submit(&["--model", SMOL], "Name a colour."), SMOL, "result.txt"),
        (ws.submit(&["--tts", "--model", TTS], "Hello there."), TTS, "audio.wav"),
        (
            ws.submit(&["--model", GEMMA, "--embed"], "a fruit"),
            GEMMA,
            "embedding.json",
        ),
        (
            ws.submit(&["--model", SMOL, "-i", pic], "Describe."),
            SMOL,
            "result.txt",
        ),
        (ws.submit(&["--model", GEMMA], "Name a fruit."), GEMMA, "result.txt"),
        (
            ws.submit(&["--model", SMOL, "--embed"], "a colour"),
            SMOL,
            "embedding.json",
        ),
    ];
    let mut d = one_loaded(&ws, &dir, &["--engine", "per-job", "--drain"]);
    d.wait_exit(Duration::from_secs(600));
    assert_eq!(d.code(), 0, "{}", d.log_text());
    for (id, m, file) in &jobs {
        assert_eq!(ws.meta(DONE, id)["model"], format!("{m}.gguf"), "{id}");
        assert!(ws.job(DONE, id).join(file).is_file(), "{id}: no {file}");
    }
    assert!(d.log_text().contains("loaded projector"), "{}", d.log_text());
}

#[test]
fn a_high_job_for_an_unloaded_model_starts_within_max_wait_behind_200_low_jobs() {
    let ws = TestWs::new();
    ws.create_dirs();
    let dir = models_dir(&ws, &["smol", "gemma"]);
    for i in 0..200 {
        publish(&ws, &format!("1{i:07}"), SMOL, "low");
    }
    let max_wait = 5.0;
    let mut d = one_loaded(&ws, &dir, &["--max-wait", "5s"]);
    d.wait_ready();
    assert!(
        wait_for(JOB, || ws.names_in(DONE).len() >= 2),
        "the low jobs do not run: {}",
        d.log_text()
    );
    let id = "20000000";
    publish(&ws, id, GEMMA, "high");
    assert!(
        wait_for(JOB, || ws.is_in(DONE, id) || ws.is_in(FAILED, id)),
        "the high job never finished: {}",
        d.log_text()
    );
    let m = ws.meta(DONE, id);
    let t = |k: &str| nrvna_core::time::parse_iso8601_micros(m[k].as_str().unwrap()).unwrap();
    let waited = (t("claimed_at") - t("submitted_at")) as f64 / 1e6;
    let low_left = ws.names_in(READY).len();
    eprintln!(
        "the high job for {GEMMA} started {waited:.2} s after submission, {low_left} low {SMOL} jobs still queued"
    );
    assert!(
        low_left > 100,
        "the backlog drained before the high job; make it longer"
    );
    assert!(waited <= max_wait + 1.0, "waited {waited:.2} s: {}", d.log_text());
    assert_eq!(m["model"], format!("{GEMMA}.gguf"));
    d.signal(libc::SIGTERM);
    d.wait_exit(JOB);
}

#[test]
fn sigkill_in_the_middle_of_a_switch_loses_nothing_and_reruns_only_recovered_jobs() {
    let ws = TestWs::new();
    ws.create_dirs();
    let dir = models_dir(&ws, &["smol", "gemma"]);
    let jobs = submit_interleaved(&ws, 12, &["smol", "gemma"]);
    let mut d = one_loaded(&ws, &dir, &[]);
    d.wait_ready();
    assert!(
        wait_for(JOB, || d.log_count("unloaded to make room") >= 1),
        "no switch: {}",
        d.log_text()
    );
    d.signal(libc::SIGKILL);
    d.wait_exit(JOB);
    let running: BTreeSet<String> = ws.names_in(PROCESSING).into_iter().collect();
    let finished: BTreeMap<String, serde_json::Value> = ws
        .names_in(DONE)
        .into_iter()
        .map(|id| (id.clone(), ws.meta(DONE, &id)))
        .collect();
    eprintln!(
        "killed mid-switch: {} done, {} running, {} queued",
        finished.len(),
        running.len(),
        ws.names_in(READY).len()
    );
    assert!(finished.len() < jobs.len(), "everything ran before the kill");

    let mut d = one_loaded(&ws, &dir, &["--drain"]);
    d.wait_exit(Duration::from_secs(600));
    assert_eq!(d.code(), 0, "{}", d.log_text());
    assert!(ws.names_in(FAILED).is_empty());
    for (id, m) in &jobs {
        assert_eq!(ws.states_of(id), [DONE], "{id}");
        let meta = ws.meta(DONE, id);
        assert_eq!(meta["model"], format!("{m}.gguf"), "{id}");
        match finished.get(id) {
            // Finished before the kill: not run again.
            Some(before) => assert_eq!(&meta, before, "{id} ran twice"),
            None if meta["recovery_attempts"].as_u64().unwrap_or(0) > 0 => {
                assert!(
                    running.contains(id),
                    "{id} was recovered but was not running at the kill"
                );
            }
            None => {}
        }
    }
}

#[test]
fn a_job_naming_a_model_no_one_serves_fails_at_once_with_the_served_names() {
    let ws = TestWs::new();
    ws.create_dirs();
    let names = ws.tmp().join("fake");
    std::fs::create_dir_all(&names).unwrap();
    for n in ["alpha.gguf", "beta.gguf", "mmproj-beta.gguf"] {
        std::fs::write(names.join(n), b"not a model").unwrap();
    }
    let nope = ws.submit(&["--model", "gamma"], "x");
    let beta = ws.submit(&["--model", "BETA.gguf"], "for beta");
    let plain = ws.submit(&[], "for the default");
    // The positional form: MODEL... WS.
    let mut cmd = clean_command(nrvnad_bin());
    cmd.args(["--engine", "echo", "--drain"])
        .arg(names.join("alpha.gguf"))
        .arg(names.join("beta.gguf"))
        .arg(ws.path())
        .env("NRVNA_LOG_LEVEL", "info");
    let r = run(&mut cmd, JOB);
    assert_eq!(r.code, Some(1), "one job failed: {}", r.stderr);
    assert!(ws.is_in(DONE, &beta) && ws.is_in(DONE, &plain), "{}", r.stderr);
    let e = ws.read(FAILED, &nope, "error.txt");
    assert!(
        e.contains("\"gamma\"") && e.contains("alpha, beta"),
        "error.txt names the model and the served ones: {e}"
    );
    assert!(
        r.stderr.contains("default alpha (the first"),
        "the default is said: {}",
        r.stderr
    );

    // --models DIR: companions are not models; an unknown one fails at
    // once even while the queue is busy.
    let ws = TestWs::new();
    ws.create_dirs();
    for i in 0..50 {
        publish(&ws, &format!("1{i:07}"), "alpha", "normal");
    }
    let mut d = Daemon::spawn_model(
        &ws,
        &models_arg(&names),
        &["--engine", "echo", "--workers", "1", "--default-model", "beta"],
        &[],
    );
    d.wait_ready();
    let t0 = Instant::now();
    let nope = ws.submit(&["--model", "mmproj-beta"], "x");
    assert_eq!(ws.wait_finished(&nope, JOB), FAILED);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let e = ws.read(FAILED, &nope, "error.txt");
    assert!(e.contains("serves: alpha, beta ("), "a companion is not served: {e}");
    let served: Vec<String> = info(&ws)["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(served, ["alpha", "beta"]);
    d.signal(libc::SIGTERM);
    d.wait_exit(JOB);
}

#[test]
fn shared_members_advertise_every_model_and_leave_the_others_jobs() {
    let ws = TestWs::new();
    ws.create_dirs();
    let ab = ws.tmp().join("ab");
    std::fs::create_dir_all(&ab).unwrap();
    for n in ["alpha.gguf", "beta.gguf"] {
        std::fs::write(ab.join(n), b"not a model").unwrap();
    }
    let env = [("NRVNA_LOG_LEVEL", "info")];
    let mut m1 = Daemon::spawn_model(&ws, &models_arg(&ab), &["--engine", "echo", "--shared"], &env);
    let jobs: Vec<String> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|m| ws.submit(&["--model", m], &format!("for {m}")))
        .collect();
    assert!(wait_for(JOB, || ws.is_in(DONE, &jobs[0]) && ws.is_in(DONE, &jobs[1])));
    // No member serves gamma yet: it waits (another member may come).
    assert!(ws.is_in(READY, &jobs[2]));
    let records = member_records(ws.path());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["models"].as_array().map(Vec::len), Some(2), "{}", records[0]);
    let serves = records[0]["serves"].to_string();
    assert!(serves.contains("alpha") && serves.contains("beta.gguf"), "{serves}");
    let mut m2 = Daemon::spawn_model(
        &ws,
        std::ffi::OsStr::new("gamma.gguf"),
        &["--engine", "echo", "--shared"],
        &env,
    );
    assert_eq!(ws.wait_finished(&jobs[2], JOB), DONE, "{}", m2.log_text());
    for m in [&mut m1, &mut m2] {
        m.signal(libc::SIGTERM);
        m.wait_exit(JOB);
    }
}

#[test]
fn idle_unload_unloads_a_model_no_job_used_and_it_loads_again_on_demand() {
    let ws = TestWs::new();
    ws.create_dirs();
    let dir = ws.tmp().join("ab");
    std::fs::create_dir_all(&dir).unwrap();
    for n in ["alpha.gguf", "beta.gguf"] {
        std::fs::write(dir.join(n), b"not a model").unwrap();
    }
    let mut d = Daemon::spawn_model(
        &ws,
        &models_arg(&dir),
        &["--engine", "echo", "--idle-unload", "1s", "--scan-interval-ms", "100"],
        &[("NRVNA_LOG_LEVEL", "info")],
    );
    d.wait_ready();
    let loaded = |ws: &TestWs| -> Vec<bool> {
        info(ws)["models"]
            .as_array()
            .map(|a| a.iter().map(|m| m["loaded"] == true).collect())
            .unwrap_or_default()
    };
    let id = ws.submit(&["--model", "beta"], "x");
    assert_eq!(ws.wait_finished(&id, JOB), DONE);
    assert!(
        wait_for(Duration::from_secs(10), || loaded(&ws) == [false, false]),
        "{:?}: {}",
        loaded(&ws),
        d.log_text()
    );
    assert_eq!(d.log_count("after --idle-unload"), 2, "{}", d.log_text());
    let id = ws.submit(&["--model", "beta"], "again");
    assert_eq!(ws.wait_finished(&id, JOB), DONE);
    assert_eq!(loads(&ws)["beta"], 2);
    d.signal(libc::SIGTERM);
    d.wait_exit(JOB);
}

#[test]
fn bad_model_sets_are_refused_at_start_with_the_reason() {
    let ws = TestWs::new();
    let dir = ws.tmp().join("dup");
    std::fs::create_dir_all(dir.join("other")).unwrap();
    std::fs::write(dir.join("a.gguf"), b"x").unwrap();
    std::fs::write(dir.join("other/a.gguf"), b"x").unwrap();
    let mut cmd = clean_command(nrvnad_bin());
    cmd.args(["--engine", "echo"])
        .arg(models_arg(&dir))
        .arg(dir.join("other/a.gguf"))
        .arg(ws.path());
    let r = run(&mut cmd, JOB);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("share a name"), "{}", r.stderr);
    let mut cmd = clean_command(nrvnad_bin());
    cmd.args(["--engine", "echo", "--default-model", "zzz"])
        .arg(models_arg(&dir))
        .arg(ws.path());
    let r = run(&mut cmd, JOB);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("--default-model \"zzz\"") && r.stderr.contains(": a"),
        "{}",
        r.stderr
    );
}

/// Runs `nrvnad ARGS... --drain` over a workspace to the end; returns its
/// wall time and the number of model loads it logged.
fn drain_time(ws: &TestWs, first: &std::ffi::OsStr, args: &[&str]) -> (Duration, usize) {
    let t0 = Instant::now();
    let mut d = Daemon::spawn_model(ws, first, &[args, &["--drain"]].concat(), &ENV);
    d.wait_exit(Duration::from_secs(3600));
    let took = t0.elapsed();
    assert_eq!(d.code(), 0, "{}", d.log_text());
    (took, d.log_count(" loaded in "))
}

/// The figure, by hand (minutes long; scripts/test.sh skips it):
/// 300 jobs, 100 per model (SmolLM2 and Gemma text, OuteTTS speech),
/// submitted interleaved, served (a) by one daemon with --max-loaded 1,
/// (b) by each model's own daemon, one after another, (c) by one daemon
/// with --max-loaded 1 and --max-wait 0, which switches to the model of
/// the oldest job whenever another model's job is older: arrival order
/// with one model slot, as a one-slot router serves it.
#[test]
#[ignore = "a benchmark: cargo test --release -p nrvnad --test models -- --ignored --nocapture three_hundred"]
fn three_hundred_jobs_interleaved_against_separate_daemons_and_arrival_order() {
    const PER: usize = 100;
    let args = ["--workers", "4", "--max-loaded", "1", "--default-model", SMOL];
    let interleaved = {
        let ws = TestWs::new();
        let dir = models_dir(&ws, &["smol", "gemma", "tts"]);
        submit_interleaved(&ws, PER, &["smol", "gemma", "tts"]);
        let t = drain_time(&ws, &models_arg(&dir), &args);
        assert_eq!(ws.names_in(DONE).len(), 3 * PER);
        t
    };
    let (tts, _) = tts_pair();
    let mut separate = Duration::ZERO;
    for (m, kind) in [(model(), "smol"), (gemma(), "gemma"), (tts, "tts")] {
        let ws = TestWs::new();
        submit_interleaved(&ws, PER, &[kind]);
        separate += drain_time(&ws, m.as_os_str(), &["--workers", "4"]).0;
        assert_eq!(ws.names_in(DONE).len(), PER);
    }
    let arrival = {
        let ws = TestWs::new();
        let dir = models_dir(&ws, &["smol", "gemma", "tts"]);
        submit_interleaved(&ws, PER, &["smol", "gemma", "tts"]);
        let t = drain_time(&ws, &models_arg(&dir), &[&args[..], &["--max-wait", "0"]].concat());
        assert_eq!(ws.names_in(DONE).len(), 3 * PER);
        t
    };
    let ((interleaved, loads), (arrival, arrival_loads)) = (interleaved, arrival);
    let s = |d: Duration| d.as_secs_f64();
    eprintln!(
        "300 jobs: interleaved, one daemon, --max-loaded 1: {:.1} s ({loads} loads); each model in its own daemon, one after another: {:.1} s; \
         arrival order with one model slot (--max-wait 0): {:.1} s ({arrival_loads} loads); interleaved / separate = {:.2}, arrival / interleaved = {:.2}",
        s(interleaved),
        s(separate),
        s(arrival),
        s(interleaved) / s(separate),
        s(arrival) / s(interleaved)
    );
    assert!(s(interleaved) <= s(separate) * 1.15);
    assert!(s(arrival) >= s(interleaved) * 2.0);
}
