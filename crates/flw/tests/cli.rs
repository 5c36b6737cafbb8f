//! Spawns the real `flw` binary on workspaces built by hand (there is no
//! daemon here): a test thread plays the daemon by renaming job directories
//! and writing files, and the tests wait on conditions with deadlines,
//! never on fixed sleeps (beyond the simulated daemon's own delays).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const READY: &str = "input/ready";
const WRITING: &str = "input/writing";
const RUNNING: &str = "processing";
const DONE: &str = "output";
const FAILED: &str = "failed";

struct Ws {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Ws {
    fn new() -> Ws {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        for d in [WRITING, READY, RUNNING, DONE, FAILED] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        Ws { _dir: dir, root }
    }

    /// Creates `<state>/<id>/` with a meta.json and the given files.
    fn job(&self, state: &str, id: &str, meta: Value, files: &[(&str, &[u8])]) -> PathBuf {
        let dir = self.root.join(state).join(id);
        fs::create_dir_all(&dir).unwrap();
        let mut m = json!({"submitted_at": "2026-01-01T00:00:00.000000Z", "mode": "text"});
        for (k, v) in meta.as_object().unwrap() {
            m[k] = v.clone();
        }
        fs::write(dir.join("meta.json"), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        fs::write(dir.join("prompt.txt"), "prompt").unwrap();
        for (name, body) in files {
            fs::write(dir.join(name), body).unwrap();
        }
        dir
    }

    /// Moves a job between state directories with one rename, as a daemon does.
    fn mv(&self, id: &str, from: &str, to: &str) {
        fs::rename(self.root.join(from).join(id), self.root.join(to).join(id)).unwrap();
    }

    fn dir(&self, state: &str, id: &str) -> PathBuf {
        self.root.join(state).join(id)
    }
}

fn cmd(ws: &Ws, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flw"));
    c.arg(&ws.root)
        .args(args)
        .env("NRVNA_FSYNC", "0")
        // The fallback poll would take a minute: a waiting flw that returns
        // in time was woken by a filesystem event.
        .env("NRVNA_WAIT_POLL_MS", "60000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn flw(ws: &Ws, args: &[&str]) -> Output {
    cmd(ws, args).stdin(Stdio::null()).output().unwrap()
}

fn flw_stdin(ws: &Ws, args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd(ws, args).stdin(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn spawn(ws: &Ws, args: &[&str]) -> Child {
    cmd(ws, args).stdin(Stdio::null()).spawn().unwrap()
}

/// Polls `cond` until it holds; panics at the deadline.
fn wait_for(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for a child to exit (with a deadline) and returns its output.
fn finish(mut child: Child, within: Duration) -> Output {
    wait_for(within, "flw to exit", || child.try_wait().unwrap().is_some());
    child.wait_with_output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ndjson(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

// ---- flw WS -----------------------------------------------------------

#[test]
fn status_counts_states_staging_and_shows_progress() {
    let ws = Ws::new();
    ws.job(READY, "1", json!({}), &[]);
    ws.job(READY, "2", json!({}), &[]);
    ws.job(
        RUNNING,
        "3",
        json!({}),
        &[(
            "progress.json",
            br#"{"tokens":45,"tokens_per_s":12.5,"updated_at":"2026-01-01T00:00:01.000000Z"}"#,
        )],
    );
    ws.job(DONE, "4", json!({"duration_s": 1.25}), &[("result.txt", b"ok")]);
    ws.job(FAILED, "5", json!({}), &[("error.txt", b"boom\n")]);
    fs::create_dir(ws.root.join(WRITING).join("6")).unwrap();
    fs::create_dir(ws.root.join(READY).join("not-a-job")).unwrap();

    let o = flw(&ws, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("daemon: not running"), "{text}");
    assert!(text.contains("2 queued, 1 running, 1 done, 1 failed"), "{text}");
    assert!(text.contains("staging: 1"), "{text}");
    assert!(text.contains("45 tokens, 12.5 tok/s"), "{text}");
    assert!(text.contains("1.25s"), "{text}");
    let recent: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "recent:")
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(recent, ["1", "2", "3", "4", "5"], "newest last");

    let o = flw(&ws, &["--json"]);
    assert_eq!(code(&o), 0);
    let mut v: Value = serde_json::from_str(stdout(&o).trim_end()).unwrap();
    // Two jobs finished just now: over the shortest span a rate is taken
    // on (10 s), 12 jobs/min, and the 3 queued or running drain in 15 s.
    let rate: Vec<Value> = ["jobs_per_min", "tokens_per_s", "drain_s"]
        .iter()
        .map(|k| v.as_object_mut().unwrap().remove(*k).unwrap())
        .collect();
    assert_eq!(rate, [json!(12.0), json!(0.0), json!(15.0)]);
    assert_eq!(
        v,
        json!({"queued": 2, "running": 1, "done": 1, "failed": 1, "staging": 1, "daemon": "not_running"})
    );
    assert!(
        text.contains("rate: 12.0 jobs/min, 0.0 tokens/s over the last 5 min; drains in about 15 s"),
        "{text}"
    );
}

#[test]
fn a_queued_job_shows_its_place_in_line_and_an_eta_from_the_recent_rate() {
    let ws = Ws::new();
    ws.job(READY, "10", json!({}), &[("params.json", br#"{"priority":"low"}"#)]);
    ws.job(READY, "11", json!({}), &[]);
    ws.job(READY, "12", json!({}), &[]);
    ws.job(READY, "13", json!({}), &[("params.json", br#"{"priority":"high"}"#)]);
    ws.job(RUNNING, "9", json!({}), &[]);
    let show = |id: &str| {
        let o = flw(&ws, &[id, "--json"]);
        assert_eq!(code(&o), 2);
        serde_json::from_str::<Value>(stdout(&o).trim_end()).unwrap()
    };
    // Nothing finished yet: a place, no estimate.
    let v = show("12");
    assert_eq!((v["position"].clone(), v["eta_s"].clone()), (json!(3), Value::Null));
    let o = flw(&ws, &["12"]);
    assert!(
        stderr(&o).starts_with("queued: position 3 (2 ahead, priority normal); no estimate"),
        "{}",
        stderr(&o)
    );
    // Six jobs finished over the last minute: 0.1 jobs/s.
    for (i, age) in [60u64, 50, 40, 30, 20, 10].into_iter().enumerate() {
        let dir = ws.job(
            DONE,
            &format!("{}", i + 1),
            json!({"generated_tokens": 30}),
            &[("result.txt", b"x")],
        );
        fs::File::open(&dir)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(age))
            .unwrap();
    }
    // 12 waits behind 13 (high) and 11 (older), and 9 runs: done after 4
    // more finishes, about 40 s.
    let v = show("12");
    assert_eq!(v["position"], 3);
    let eta = v["eta_s"].as_f64().unwrap();
    assert!((39.0..=41.0).contains(&eta), "{v}");
    assert_eq!(show("13")["position"], 1, "high goes first");
    assert_eq!(show("10")["position"], 4, "low goes last");
    let o = flw(&ws, &["12"]);
    assert!(
        stderr(&o).contains("done in about 40 s at 6.0 jobs/min"),
        "{}",
        stderr(&o)
    );
    let o = flw(&ws, &["--json"]);
    let v: Value = serde_json::from_str(stdout(&o).trim_end()).unwrap();
    assert_eq!(v["jobs_per_min"], 6.0, "{v}");
    assert_eq!(v["tokens_per_s"], 3.0, "{v}");
    assert_eq!(v["drain_s"], 50.0, "{v}");
}

#[test]
fn status_of_a_directory_that_is_not_a_workspace_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_flw"))
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).starts_with("flw: ") && stderr(&o).contains("wrk"),
        "{}",
        stderr(&o)
    );
}

// ---- flw WS ID --------------------------------------------------------

#[test]
fn show_prints_artifacts_and_exits_0_1_2() {
    let ws = Ws::new();
    ws.job(DONE, "1", json!({}), &[("result.txt", b"no newline added")]);
    ws.job(
        DONE,
        "2",
        json!({"mode": "embed"}),
        &[("embedding.json", br#"{"dim":2,"vector":[0.6,0.8]}"#)],
    );
    let audio = ws.job(DONE, "3", json!({"mode": "tts"}), &[("audio.wav", b"RIFF")]);
    ws.job(FAILED, "4", json!({}), &[("error.txt", b"model exploded\n")]);
    ws.job(READY, "5", json!({}), &[]);
    ws.job(RUNNING, "6", json!({}), &[]);

    let o = flw(&ws, &["1"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "no newline added"));
    let o = flw(&ws, &["2"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, r#"{"dim":2,"vector":[0.6,0.8]}"#));
    // Not a terminal: the WAV's bytes (`flw WS ID > out.wav`); the path
    // stays in --json's audio_path.
    let o = flw(&ws, &["3"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "RIFF"));
    assert!(audio.join("audio.wav").is_file());
    let o = flw(&ws, &["4"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (1, ""));
    assert!(stderr(&o).contains("model exploded"));
    let o = flw(&ws, &["5"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).starts_with("queued: position 1 (0 ahead"), "{}", stderr(&o));
    let o = flw(&ws, &["6"]);
    assert_eq!((code(&o), stderr(&o).trim_end()), (2, "running"));
    let o = flw(&ws, &["7"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
    let o = flw(&ws, &["../etc"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("not a job id"), "{}", stderr(&o));

    for (id, want_code, want_status) in [
        ("1", 0, "done"),
        ("4", 1, "failed"),
        ("5", 2, "queued"),
        ("6", 2, "running"),
        ("7", 1, "missing"),
    ] {
        let o = flw(&ws, &[id, "--json"]);
        assert_eq!(code(&o), want_code, "{id}");
        let rows = ndjson(&o);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["id"], id);
        assert_eq!(rows[0]["status"], want_status);
    }
}

#[test]
fn usage_errors_exit_1_not_2() {
    let ws = Ws::new();
    for args in [
        &["--bogus"][..],
        &["-w", "-W"],
        &["--errors"],
        &["--cancel"],
        &["-w", "--tag", "t"],
        &["--export", "a b"],
    ] {
        let o = flw(&ws, args);
        assert_eq!(code(&o), 1, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).starts_with("flw: "), "{}", stderr(&o));
    }
}

// ---- -w ---------------------------------------------------------------

#[test]
fn wait_returns_right_after_the_job_finishes() {
    let ws = Ws::new();
    ws.job(READY, "42", json!({}), &[]);
    let child = spawn(&ws, &["-w", "42"]);
    let root = ws.root.clone();
    let daemon = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        fs::rename(root.join(READY).join("42"), root.join(RUNNING).join("42")).unwrap();
        fs::write(root.join(RUNNING).join("42").join("result.txt"), "answer").unwrap();
        fs::rename(root.join(RUNNING).join("42"), root.join(DONE).join("42")).unwrap();
        Instant::now()
    });
    let mut child = child;
    wait_for(Duration::from_secs(20), "flw -w to exit", || {
        child.try_wait().unwrap().is_some()
    });
    let exited = Instant::now();
    let moved = daemon.join().unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "answer"), "{}", stderr(&o));
    let lag = exited.saturating_duration_since(moved);
    assert!(
        lag < Duration::from_millis(1000),
        "flw -w took {lag:?} to notice the move: it should wake on the event"
    );
}

#[test]
fn wait_reads_the_id_from_stdin() {
    let ws = Ws::new();
    ws.job(DONE, "7_1_000001", json!({}), &[("result.txt", b"piped")]);
    let o = flw_stdin(&ws, &["-w"], b"7_1_000001\n");
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "piped"), "{}", stderr(&o));
    ws.job(FAILED, "8", json!({}), &[("error.txt", b"nope")]);
    let o = flw_stdin(&ws, &["-w", "--json"], b"  8  ");
    assert_eq!(code(&o), 1);
    assert_eq!(ndjson(&o)[0]["status"], "failed");
    let o = flw_stdin(&ws, &["-w"], b"");
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("no job id on stdin"), "{}", stderr(&o));
}

#[test]
fn wait_for_a_missing_job_fails_at_once_and_a_timeout_exits_2() {
    let ws = Ws::new();
    let start = Instant::now();
    let o = flw(&ws, &["-w", "99"]);
    assert_eq!(code(&o), 1);
    assert!(start.elapsed() < Duration::from_secs(5));
    ws.job(READY, "100", json!({}), &[]);
    let o = flw(&ws, &["-w", "100", "--timeout", "0.3"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("timed out"), "{}", stderr(&o));
}

// ---- -W ---------------------------------------------------------------

#[test]
fn barrier_waits_for_the_tagged_jobs_only() {
    let ws = Ws::new();
    ws.job(READY, "1", json!({"tags": ["t"]}), &[]);
    ws.job(RUNNING, "2", json!({"tags": ["t", "x"]}), &[]);
    ws.job(DONE, "3", json!({"tags": ["t"]}), &[("result.txt", b"")]);
    ws.job(READY, "4", json!({"tags": ["other"]}), &[]); // never finishes
    ws.job(READY, "5", json!({}), &[]); // no tags at all

    let mut child = spawn(&ws, &["-W", "--tag", "t"]);
    let root = ws.root.clone();
    let daemon = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        let mv = |id: &str, from: &str, to: &str| fs::rename(root.join(from).join(id), root.join(to).join(id)).unwrap();
        mv("1", READY, RUNNING);
        fs::write(root.join(RUNNING).join("2").join("result.txt"), "ok").unwrap();
        mv("2", RUNNING, DONE);
        thread::sleep(Duration::from_millis(100));
        fs::write(root.join(RUNNING).join("1").join("error.txt"), "bad").unwrap();
        mv("1", RUNNING, FAILED);
        Instant::now()
    });
    thread::sleep(Duration::from_millis(100));
    assert!(
        child.try_wait().unwrap().is_none(),
        "-W returned while jobs were pending"
    );
    wait_for(Duration::from_secs(20), "flw -W to exit", || {
        child.try_wait().unwrap().is_some()
    });
    let exited = Instant::now();
    let last_move = daemon.join().unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 1, "one tagged job failed: {}", stderr(&o));
    assert!(exited.saturating_duration_since(last_move) < Duration::from_millis(1000));

    // All finished and none failed: 0. An empty scope is vacuously done.
    let ws = Ws::new();
    ws.job(DONE, "1", json!({"tags": ["t"]}), &[("result.txt", b"")]);
    ws.job(READY, "2", json!({"tags": ["u"]}), &[]);
    assert_eq!(code(&flw(&ws, &["-W", "--tag", "t"])), 0);
    assert_eq!(code(&flw(&ws, &["-W", "--tag", "none"])), 0);
    assert_eq!(code(&flw(&ws, &["-W", "--timeout", "0.2"])), 2);
}

#[test]
fn a_workspace_wide_barrier_prints_the_final_counts_as_the_cpp_flw() {
    let ws = Ws::new();
    ws.job(DONE, "1", json!({"tags": ["t"]}), &[("result.txt", b"")]);
    ws.job(DONE, "2", json!({}), &[("result.txt", b"")]);
    ws.job(FAILED, "3", json!({}), &[("error.txt", b"bad")]);
    let o = flw(&ws, &["-W"]);
    assert_eq!(code(&o), 1);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "idle (2 done, 1 failed)\n");
    let o = flw(&ws, &["-W", "--json"]);
    assert_eq!(code(&o), 1);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "{\"queued\":0,\"running\":0,\"done\":2,\"failed\":1}\n"
    );
    // A scoped barrier prints nothing on stdout (neither does the C++ flw).
    let o = flw(&ws, &["-W", "--tag", "t"]);
    assert_eq!(code(&o), 0);
    assert!(o.stdout.is_empty());
    // A timeout prints no counts either.
    ws.job(READY, "4", json!({}), &[]);
    let o = flw(&ws, &["-W", "--timeout", "0.2"]);
    assert_eq!(code(&o), 2);
    assert!(o.stdout.is_empty());
}

#[test]
fn barrier_over_children() {
    let ws = Ws::new();
    ws.job(DONE, "10", json!({}), &[("result.txt", b"")]);
    ws.job(DONE, "11", json!({"parent": "10"}), &[("result.txt", b"")]);
    ws.job(READY, "12", json!({"parent": "99"}), &[]);
    assert_eq!(code(&flw(&ws, &["-W", "--children", "10"])), 0);
    ws.job(READY, "13", json!({"parent": "10"}), &[]);
    assert_eq!(code(&flw(&ws, &["-W", "--children", "10", "--timeout", "0.2"])), 2);
}

// ---- --tag / --children -----------------------------------------------

#[test]
fn listing_is_ndjson_by_id_and_exits_1_on_a_failure() {
    let ws = Ws::new();
    // Created out of order, in different states.
    ws.job(FAILED, "30", json!({"tags": ["t"]}), &[("error.txt", b"bad")]);
    ws.job(
        DONE,
        "10",
        json!({"tags": ["t"], "parent": "1"}),
        &[("result.txt", b"x")],
    );
    ws.job(READY, "20", json!({"tags": ["t"], "parent": "1"}), &[]);
    ws.job(DONE, "5", json!({"tags": ["u"]}), &[("result.txt", b"x")]);
    ws.job(RUNNING, "25", json!({"parent": "1"}), &[]);

    let o = flw(&ws, &["--tag", "t", "--json"]);
    assert_eq!(code(&o), 1, "a selected job failed");
    let rows = ndjson(&o);
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["10", "20", "30"]);
    let statuses: Vec<&str> = rows.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["done", "queued", "failed"]);
    assert_eq!(rows[0]["artifact"], "result.txt");
    assert_eq!(rows[2]["error"], "bad");

    let o = flw(&ws, &["--children", "1", "--json"]);
    assert_eq!(code(&o), 0, "no selected job failed");
    let ids: Vec<String> = ndjson(&o)
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["10", "20", "25"]);

    let o = flw(&ws, &["--tag", "t", "-l"]);
    let table = stdout(&o);
    assert!(table.starts_with("ID "), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");

    let o = flw(&ws, &["--tag", "bad tag"]);
    assert_eq!(code(&o), 1);
}

/// Regression (issue 9): a plain `--tag`/`--children` listing printed a
/// table; the contract (and the C++ `flw`) print the ids, one per line,
/// which scripts pipe on, and exit 0.
#[test]
fn plain_listing_prints_the_ids_one_per_line_like_the_cpp_flw() {
    let ws = Ws::new();
    ws.job(FAILED, "30", json!({"tags": ["t"]}), &[("error.txt", b"bad")]);
    ws.job(
        DONE,
        "10",
        json!({"tags": ["t"], "parent": "1"}),
        &[("result.txt", b"x")],
    );
    ws.job(READY, "20", json!({"tags": ["t"], "parent": "1"}), &[]);
    ws.job(DONE, "5", json!({"tags": ["u"]}), &[("result.txt", b"x")]);

    let o = flw(&ws, &["--tag", "t"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "10\n20\n30\n"), "{}", stderr(&o));
    let o = flw(&ws, &["--children", "1"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "10\n20\n"));
    let o = flw(&ws, &["--tag", "none"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, ""));
    assert!(stderr(&o).contains("no jobs"), "{}", stderr(&o));
    // The table is for a person, and only for a scope.
    let o = flw(&ws, &["-l"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("--tag"), "{}", stderr(&o));
}

// ---- the contract's JSON object ----------------------------------------

/// meta.json as the C++ daemon (956064f) writes it at finish: nlohmann
/// `dump(2)`, keys sorted, only the keys it knows.
fn cpp_finished_meta(extra: &str) -> String {
    format!(
        "{{\n  \"artifacts\": [\n    \"result.txt\"\n  ],\n  \"completed_at\": \"2026-11-26T10:00:01.250000Z\",\n  \"duration_s\": 1.25,\n  \"mode\": \"text\",\n  \"output_format\": \"json_schema\",\n  \"status\": \"done\",\n  \"submitted_at\": \"2026-11-26T10:00:00.000000Z\",\n  \"tags\": [\n    \"t\"\n  ]{extra}\n}}\n"
    )
}

/// Regression (issue 9): `flw WS ID --json` lacked the contract's fields
/// (inline result, artifact_path, artifacts, output_format) and said
/// `artifact_kind: text` where the contract says `result`.
#[test]
fn json_of_a_done_job_is_the_contract_object_plus_our_extras() {
    let ws = Ws::new();
    let dir = ws.dir(DONE, "1");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("meta.json"), cpp_finished_meta(",\n  \"parent\": \"7\"")).unwrap();
    fs::write(dir.join("result.txt"), "{\"a\": 1}\n").unwrap();
    ws.job(
        DONE,
        "2",
        json!({"mode": "embed", "model": "m.gguf", "prompt_tokens": 3, "artifacts": ["embedding.json"]}),
        &[("embedding.json", b"{\n  \"dim\": 2,\n  \"vector\": [0.6, 0.8]\n}\n")],
    );
    ws.job(DONE, "3", json!({"mode": "stt"}), &[("transcript.txt", b"hello there")]);
    ws.job(DONE, "4", json!({"mode": "tts"}), &[("audio.wav", b"RIFF")]);

    let o = flw(&ws, &["1", "--json"]);
    assert_eq!(code(&o), 0);
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "one line: {out}");
    let r = &ndjson(&o)[0];
    let path = dir.join("result.txt");
    assert_eq!(
        *r,
        json!({
            "id": "1", "status": "done", "mode": "text",
            "submitted_at": "2026-11-26T10:00:00.000000Z", "completed_at": "2026-11-26T10:00:01.250000Z",
            "duration_s": 1.25, "parent": "7", "output_format": "json_schema", "tags": ["t"],
            "artifacts": ["result.txt"], "artifact": "result.txt", "artifact_kind": "result",
            "artifact_path": path.to_str().unwrap(), "result": "{\"a\": 1}\n",
        })
    );

    let r = &ndjson(&flw(&ws, &["2", "--json"]))[0];
    assert_eq!(r["artifact_kind"], "embedding");
    assert_eq!(r["embedding"], json!({"dim": 2, "vector": [0.6, 0.8]}));
    assert_eq!(
        (r["model"].as_str(), r["prompt_tokens"].as_u64()),
        (Some("m.gguf"), Some(3)),
        "extras stay"
    );
    let r = &ndjson(&flw(&ws, &["3", "--json"]))[0];
    assert_eq!(
        (r["artifact_kind"].as_str(), r["transcript"].as_str()),
        (Some("transcript"), Some("hello there"))
    );
    let r = &ndjson(&flw(&ws, &["4", "--json"]))[0];
    let audio = ws.dir(DONE, "4").join("audio.wav");
    assert_eq!(r["artifact_kind"], "audio");
    assert_eq!(r["audio_path"], audio.to_str().unwrap());
    assert_eq!(r["artifact_path"], audio.to_str().unwrap());

    // The same objects as NDJSON rows.
    let o = flw(&ws, &["--tag", "t", "--json"]);
    assert_eq!(ndjson(&o)[0]["result"], "{\"a\": 1}\n");
}

/// Regression (issue 9): a failed job's response.txt was not shown by
/// `flw --json`; the contract (and the C++ `flw`) name it `partial`.
#[test]
fn json_of_a_failed_job_shows_its_partial_output() {
    let ws = Ws::new();
    ws.job(
        FAILED,
        "1",
        json!({"tags": ["t"]}),
        &[("error.txt", b"timed out\n"), ("response.txt", b"Once upon a")],
    );
    ws.job(FAILED, "2", json!({"tags": ["t"]}), &[("error.txt", b"bad prompt\n")]);
    // A C++ daemon writes duration_s -1 for a job it failed without running; its flw leaves it out.
    ws.job(
        FAILED,
        "3",
        json!({"tags": ["t"], "duration_s": -1.0}),
        &[("error.txt", b"x")],
    );
    let o = flw(&ws, &["1", "--json"]);
    assert_eq!(code(&o), 1);
    let r = &ndjson(&o)[0];
    assert_eq!(
        (r["error"].as_str(), r["partial"].as_str()),
        (Some("timed out"), Some("Once upon a"))
    );
    let rows = ndjson(&flw(&ws, &["--tag", "t", "--json"]));
    assert_eq!(rows[0]["partial"], "Once upon a");
    assert!(
        rows[1].get("partial").is_none(),
        "no response.txt, no partial: {}",
        rows[1]
    );
    assert!(rows[2].get("duration_s").is_none(), "{}", rows[2]);
}

/// Regression (issue 9): `flw -v` was refused and `--wait-idle` (the C++
/// spelling of -W) was unknown.
#[test]
fn dash_v_prints_the_version_and_wait_idle_is_w() {
    let ws = Ws::new();
    for flag in ["-v", "--version", "-V"] {
        let o = flw(&ws, &[flag]);
        assert_eq!(code(&o), 0, "{flag}");
        assert_eq!(
            stdout(&o).trim_end(),
            concat!("flw ", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
    let o = Command::new(env!("CARGO_BIN_EXE_flw")).arg("-v").output().unwrap();
    assert_eq!(code(&o), 0, "no workspace needed for -v");
    ws.job(DONE, "1", json!({"tags": ["t"]}), &[("result.txt", b"x")]);
    let o = flw(&ws, &["--wait-idle", "--tag", "t", "--timeout", "5"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    ws.job(READY, "2", json!({"tags": ["t"]}), &[]);
    let o = flw(&ws, &["--wait-idle", "--tag", "t", "--timeout", "0.2"]);
    assert_eq!(code(&o), 2, "still queued: {}", stderr(&o));
}

// ---- --cancel ---------------------------------------------------------

#[test]
fn cancel_a_queued_job_fails_it_as_cancelled() {
    let ws = Ws::new();
    ws.job(READY, "5", json!({"tags": ["keep"]}), &[]);
    let o = flw(&ws, &["--cancel", "5"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "cancelled\n"), "{}", stderr(&o));
    let dir = ws.dir(FAILED, "5");
    assert!(!ws.dir(READY, "5").exists());
    assert_eq!(
        fs::read_to_string(dir.join("error.txt")).unwrap().trim_end(),
        "cancelled by user before it started"
    );
    let m: Value = serde_json::from_slice(&fs::read(dir.join("meta.json")).unwrap()).unwrap();
    assert_eq!(m["status"], "failed");
    assert_eq!(m["cancelled"], true);
    assert_eq!(m["duration_s"], 0.0);
    assert_eq!(m["tags"], json!(["keep"]), "submit-time keys are kept");
    assert!(m["completed_at"].as_str().unwrap().ends_with('Z'));
    let o = flw(&ws, &["5", "--json"]);
    assert_eq!(ndjson(&o)[0]["cancelled"], true);
}

#[test]
fn cancel_of_a_finished_job_changes_nothing() {
    let ws = Ws::new();
    let dir = ws.job(DONE, "6", json!({"status": "done"}), &[("result.txt", b"kept")]);
    let before = fs::read(dir.join("meta.json")).unwrap();
    let o = flw(&ws, &["--cancel", "6"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, ""));
    assert!(
        stderr(&o).contains("already finished (done); nothing to cancel"),
        "{}",
        stderr(&o)
    );
    assert_eq!(fs::read(dir.join("meta.json")).unwrap(), before);
    assert!(!dir.join("error.txt").exists() && !dir.join("cancel").exists());
    let o = flw(&ws, &["--cancel", "404"]);
    assert_eq!(code(&o), 1);
}

#[test]
fn cancel_a_running_job_asks_the_daemon_and_waits() {
    let ws = Ws::new();
    ws.job(RUNNING, "9", json!({}), &[("partial.txt", b"half an ans")]);
    let child = spawn(&ws, &["--cancel", "9", "--timeout", "20"]);
    // Play the daemon: see the cancel file, keep the partial output, fail the job.
    let cancel_file = ws.dir(RUNNING, "9").join("cancel");
    wait_for(Duration::from_secs(20), "the cancel request", || cancel_file.exists());
    assert_eq!(fs::read(&cancel_file).unwrap(), b"");
    let dir = ws.dir(RUNNING, "9");
    fs::write(dir.join("response.txt"), "half an ans").unwrap();
    fs::write(dir.join("error.txt"), "cancelled by user").unwrap();
    let meta = json!({"mode": "text", "status": "failed", "cancelled": true, "duration_s": 1.5});
    fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
    ws.mv("9", RUNNING, FAILED);
    let o = finish(child, Duration::from_secs(20));
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "cancelled\n"), "{}", stderr(&o));

    // A daemon that never answers: exit 2 at the timeout.
    ws.job(RUNNING, "10", json!({}), &[]);
    let o = flw(&ws, &["--cancel", "10", "--timeout", "0.3"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("no daemon"), "{}", stderr(&o));
}

// ---- -f ---------------------------------------------------------------

/// Collects a child's stdout on a thread, so tests can wait for what it printed.
fn collect_stdout(child: &mut Child) -> (Arc<Mutex<Vec<u8>>>, thread::JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let mut out = child.stdout.take().unwrap();
    let b = Arc::clone(&buf);
    let t = thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match out.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => b.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    });
    (buf, t)
}

fn append(path: &Path, s: &str) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    f.write_all(s.as_bytes()).unwrap();
}

#[test]
fn follow_streams_partial_text_then_completes_from_the_result() {
    let ws = Ws::new();
    ws.job(READY, "77", json!({}), &[]);
    let mut child = spawn(&ws, &["-f", "77"]);
    let (seen, reader) = collect_stdout(&mut child);
    let printed = |s: &str| {
        let want = s.as_bytes().to_vec();
        let seen = Arc::clone(&seen);
        move || *seen.lock().unwrap() == want
    };

    thread::sleep(Duration::from_millis(100)); // queued for a moment
    ws.mv("77", READY, RUNNING);
    let partial = ws.dir(RUNNING, "77").join("partial.txt");
    append(&partial, "Hello");
    wait_for(Duration::from_secs(20), "the first chunk", printed("Hello"));
    append(&partial, ", wörld");
    wait_for(Duration::from_secs(20), "the second chunk", printed("Hello, wörld"));
    // The daemon finishes: result.txt holds more than the last partial.
    fs::write(ws.dir(RUNNING, "77").join("result.txt"), "Hello, wörld! Bye.").unwrap();
    ws.mv("77", RUNNING, DONE);
    let o = finish(child, Duration::from_secs(20));
    reader.join().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        String::from_utf8(seen.lock().unwrap().clone()).unwrap(),
        "Hello, wörld! Bye."
    );
}

#[test]
fn follow_after_the_end_prints_the_result_or_the_partial_response() {
    let ws = Ws::new();
    ws.job(
        DONE,
        "1",
        json!({}),
        &[("result.txt", b"all of it"), ("partial.txt", b"all")],
    );
    let o = flw(&ws, &["-f", "1"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "all of it"));

    ws.job(
        FAILED,
        "2",
        json!({}),
        &[("response.txt", b"half"), ("error.txt", b"out of memory")],
    );
    let o = flw_stdin(&ws, &["-f"], b"2\n");
    assert_eq!((code(&o), stdout(&o).as_str()), (1, "half"));
    assert!(stderr(&o).contains("out of memory"));

    let o = flw(&ws, &["-f", "3"]);
    assert_eq!(code(&o), 1);
}

#[test]
fn follow_a_job_that_fails_midway_prints_the_rest_of_its_response() {
    let ws = Ws::new();
    ws.job(RUNNING, "8", json!({}), &[("partial.txt", b"part")]);
    let mut child = spawn(&ws, &["-f", "8"]);
    let (seen, reader) = collect_stdout(&mut child);
    wait_for(Duration::from_secs(20), "the partial text", || {
        *seen.lock().unwrap() == b"part"
    });
    let dir = ws.dir(RUNNING, "8");
    fs::write(dir.join("response.txt"), "partial answer").unwrap();
    fs::write(dir.join("error.txt"), "cancelled by user").unwrap();
    ws.mv("8", RUNNING, FAILED);
    let o = finish(child, Duration::from_secs(20));
    reader.join().unwrap();
    assert_eq!(code(&o), 1);
    assert_eq!(*seen.lock().unwrap(), b"partial answer");
    assert!(stderr(&o).contains("cancelled by user"));
}

// ---- --export ---------------------------------------------------------

#[test]
fn export_writes_openai_batch_output_in_batch_order() {
    let ws = Ws::new();
    let tag = "batch_1_2_3";
    ws.job(
        DONE,
        "100",
        json!({"tags": [tag], "custom_id": "c-2", "batch_line": 2, "model": "tiny.gguf",
               "prompt_tokens": 5, "generated_tokens": 3, "finish_reason": "length",
               "completed_at": "2026-01-01T00:00:10.500000Z"}),
        &[("result.txt", b"Paris")],
    );
    ws.job(
        FAILED,
        "200",
        json!({"tags": [tag], "custom_id": "c-1", "batch_line": 1}),
        &[("error.txt", b"prompt too long\n")],
    );
    ws.job(
        DONE,
        "300",
        json!({"tags": [tag], "custom_id": "c-3", "batch_line": 3, "mode": "embed",
               "model": "tiny.gguf", "prompt_tokens": 4}),
        &[("embedding.json", br#"{"dim":2,"vector":[0.6,0.8]}"#)],
    );
    ws.job(
        DONE,
        "400",
        json!({"tags": ["other"], "custom_id": "x"}),
        &[("result.txt", b"no")],
    );

    let o = flw(&ws, &["--export", tag]);
    assert_eq!(code(&o), 1, "a request failed: {}", stderr(&o));
    let rows = ndjson(&o);
    let order: Vec<&str> = rows.iter().map(|r| r["custom_id"].as_str().unwrap()).collect();
    assert_eq!(order, ["c-1", "c-2", "c-3"]);

    assert_eq!(
        rows[0],
        json!({"id": "batch_req_200", "custom_id": "c-1", "response": null,
               "error": {"code": "job_failed", "message": "prompt too long"}})
    );
    let chat = &rows[1];
    assert_eq!(chat["id"], "batch_req_100");
    assert_eq!(chat["error"], Value::Null);
    assert_eq!(chat["response"]["status_code"], 200);
    assert_eq!(chat["response"]["request_id"], "100");
    let body = &chat["response"]["body"];
    assert_eq!(body["id"], "chatcmpl-100");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["created"], 1_767_225_610);
    assert_eq!(body["model"], "tiny.gguf");
    assert_eq!(
        body["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "length"}])
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})
    );
    let emb = &rows[2]["response"]["body"];
    assert_eq!(
        *emb,
        json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8]}],
               "model": "tiny.gguf", "usage": {"prompt_tokens": 4, "total_tokens": 4}})
    );

    let o = flw(&ws, &["--export", tag, "--errors"]);
    let rows = ndjson(&o);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["custom_id"], "c-1");

    // An unfinished job is skipped with a note, and the export exits 2.
    ws.job(
        READY,
        "500",
        json!({"tags": [tag], "custom_id": "c-4", "batch_line": 4}),
        &[],
    );
    let o = flw(&ws, &["--export", tag]);
    assert_eq!(code(&o), 2);
    assert_eq!(ndjson(&o).len(), 3);
    assert!(stderr(&o).contains("c-4"), "{}", stderr(&o));

    let o = flw(&ws, &["--export", "batch_none"]);
    assert_eq!(code(&o), 1);
}

/// Regression (issue 9): a `wrk --batch` job finished by a C++ daemon lost
/// its `custom_id` (the daemon rewrites meta.json with the keys it knows),
/// and the export printed `"custom_id": null` and exited 0. The request
/// now lives in the job's own batch.json, which the C++ daemon leaves alone.
#[test]
fn export_attributes_jobs_finished_by_a_cpp_daemon_by_their_batch_json() {
    let ws = Ws::new();
    let tag = "batch_9_9_9";
    for (id, custom_id, line) in [("100", "second", 2), ("200", "first", 1)] {
        let dir = ws.dir(DONE, id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("meta.json"),
            cpp_finished_meta("").replace("\"t\"", &format!("\"{tag}\"")),
        )
        .unwrap();
        fs::write(dir.join("result.txt"), format!("answer {id}")).unwrap();
        fs::write(
            dir.join("batch.json"),
            format!("{{\"custom_id\":\"{custom_id}\",\"line\":{line}}}\n"),
        )
        .unwrap();
    }
    let o = flw(&ws, &["--export", tag]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let rows = ndjson(&o);
    let ids: Vec<&str> = rows.iter().map(|r| r["custom_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["first", "second"], "in the order of the batch file");
    assert_eq!(
        rows[0]["response"]["body"]["choices"][0]["message"]["content"],
        "answer 200"
    );
}

/// Regression (issue 9): a tagged job with no custom_id anywhere printed
/// `"custom_id": null` and exited 0; it cannot be attributed, so the
/// export says which job and exits 1.
#[test]
fn export_exits_1_naming_a_job_it_cannot_attribute() {
    let ws = Ws::new();
    let tag = "batch_8_8_8";
    ws.job(
        DONE,
        "100",
        json!({"tags": [tag], "custom_id": "ok", "batch_line": 1}),
        &[("result.txt", b"a")],
    );
    let lost = ws.dir(DONE, "200");
    fs::create_dir_all(&lost).unwrap();
    fs::write(
        lost.join("meta.json"),
        cpp_finished_meta("").replace("\"t\"", &format!("\"{tag}\"")),
    )
    .unwrap();
    fs::write(lost.join("result.txt"), "b").unwrap();
    let o = flw(&ws, &["--export", tag]);
    assert_eq!(code(&o), 1);
    let rows = ndjson(&o);
    assert_eq!(rows.len(), 1, "only the attributable line");
    assert_eq!(rows[0]["custom_id"], "ok");
    assert!(!stdout(&o).contains("null,\"response\""), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("200") && err.contains("custom_id"), "{err}");
    // A broken batch.json is named too.
    fs::write(lost.join("batch.json"), "{").unwrap();
    let o = flw(&ws, &["--export", tag]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("batch.json"), "{}", stderr(&o));
}

// ---- flw WS --prune ---------------------------------------------------

/// Sets a job directory's mtime (its finishing time) `age_s` seconds back.
fn age(ws: &Ws, state: &str, id: &str, age_s: u64) {
    fs::File::open(ws.dir(state, id))
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(age_s))
        .unwrap();
}

#[test]
fn prune_removes_old_finished_jobs_oldest_first_never_queued_running_or_pinned() {
    let ws = Ws::new();
    ws.job(DONE, "1", json!({}), &[("result.txt", b"a")]);
    ws.job(DONE, "2", json!({}), &[("result.txt", b"b")]);
    ws.job(DONE, "3", json!({"tags": ["keep"]}), &[("result.txt", b"c")]);
    ws.job(FAILED, "4", json!({}), &[("error.txt", b"d")]);
    ws.job(DONE, "5", json!({}), &[("result.txt", b"e")]);
    ws.job(READY, "6", json!({}), &[]);
    ws.job(RUNNING, "7", json!({}), &[]);
    for (state, id, days) in [
        (DONE, "1", 9),
        (DONE, "2", 8),
        (DONE, "3", 10),
        (FAILED, "4", 7),
        (DONE, "5", 1),
    ] {
        age(&ws, state, id, days * 86_400);
    }
    age(&ws, READY, "6", 30 * 86_400);
    age(&ws, RUNNING, "7", 30 * 86_400);

    // A dry run names what would go, and removes nothing.
    let o = flw(&ws, &["--prune", "--older-than", "2d", "--dry-run"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), "1\n2\n4\n");
    assert!(
        stderr(&o).contains("would remove 3 of 5 finished jobs") && stderr(&o).contains("1 pinned"),
        "{}",
        stderr(&o)
    );
    assert!(ws.dir(DONE, "1").is_dir());

    // --state failed: only failed jobs; --json: NDJSON.
    let o = flw(&ws, &["--prune", "--older-than", "2d", "--state", "failed", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = ndjson(&o);
    assert_eq!(
        (v.len(), v[0]["id"].as_str(), v[0]["state"].as_str()),
        (1, Some("4"), Some("failed"))
    );
    assert!(!ws.dir(FAILED, "4").exists() && ws.dir(DONE, "1").is_dir());

    let o = flw(&ws, &["--prune", "--older-than", "2d"]);
    assert_eq!(stdout(&o), "1\n2\n", "{}", stderr(&o));
    for (state, id) in [(DONE, "3"), (DONE, "5"), (READY, "6"), (RUNNING, "7")] {
        assert!(ws.dir(state, id).is_dir(), "{state}/{id} must stay");
    }
    // Nothing is left half-deleted: the trash is empty.
    assert_eq!(fs::read_dir(ws.root.join(".nrvna-trash")).unwrap().count(), 0);

    // --max-jobs keeps the newest N (a pinned job counts and stays).
    ws.job(DONE, "8", json!({}), &[("result.txt", b"f")]);
    let o = flw(&ws, &["--prune", "--max-jobs", "2"]);
    assert_eq!(stdout(&o), "5\n", "{}", stderr(&o));
}

#[test]
fn prune_without_a_policy_is_an_error_and_finishes_an_interrupted_prune() {
    let ws = Ws::new();
    let o = flw(&ws, &["--prune"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("--prune needs a policy"), "{}", stderr(&o));
    let o = flw(&ws, &["--older-than", "1d"]);
    assert_eq!(code(&o), 1, "--older-than without --prune is refused");
    // A crashed pruner left half a job in the trash: the next round deletes it.
    let left = ws.root.join(".nrvna-trash/9");
    fs::create_dir_all(&left).unwrap();
    fs::write(left.join("result.txt"), "x").unwrap();
    let o = flw(&ws, &["--prune", "--older-than", "7d"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!left.exists());
    assert!(
        stderr(&o).contains("deleted 1 entries an interrupted prune left"),
        "{}",
        stderr(&o)
    );
}
