//! Jobs end to end with the real model: a `wrk` job and a hand-made one are
//! processed into output/ with a complete meta.json, bad jobs fail with a
//! one-line error.txt without stopping the daemon, both engines work, and
//! per-job parameters are honoured and recorded.

mod common;

use std::fs;

use common::*;
use serde_json::{json, Value};

#[test]
fn wrk_job_drained_into_output_with_complete_meta_and_flw_prints_it() {
    let ws = TestWs::new();
    let id = ws.submit(&[], "Say hello in one short sentence.");
    assert_eq!(ws.states_of(&id), [READY]);

    let mut d = ws.drain(&[], &[]);
    assert_eq!(d.code(), 0, "a drain without failures exits 0");

    assert_eq!(ws.states_of(&id), [DONE]);
    let result = ws.read(DONE, &id, "result.txt");
    assert!(!result.trim().is_empty(), "result.txt is empty");
    let m = ws.meta(DONE, &id);
    assert_eq!(m["status"], "done");
    assert_eq!(m["mode"], "text");
    assert_eq!(m["artifacts"], json!(["result.txt"]));
    assert!(
        m["completed_at"].as_str().is_some_and(|s| s.ends_with('Z')),
        "completed_at: {}",
        m["completed_at"]
    );
    assert!(m["submitted_at"].as_str().is_some(), "submitted_at kept");
    assert!(
        m["claimed_at"].as_str().is_some_and(|s| s.ends_with('Z')),
        "claimed_at: {m}"
    );
    assert!(
        matches!(m["finish_reason"].as_str(), Some("stop" | "length")),
        "finish_reason: {m}"
    );
    assert_eq!(m["engine"], "batched", "the default engine");
    let at = |k: &str| parse_iso8601(m[k].as_str().unwrap_or_else(|| panic!("{k}: {m}")));
    let (submitted, claimed, completed) = (at("submitted_at"), at("claimed_at"), at("completed_at"));
    assert!(
        submitted <= claimed && claimed <= completed,
        "timestamps out of order: {m}"
    );
    let age = std::time::SystemTime::now()
        .duration_since(completed)
        .expect("completed_at in the future");
    assert!(
        age < std::time::Duration::from_secs(600),
        "completed_at is {age:?} old: {m}"
    );
    assert!(m["duration_s"].as_f64().is_some_and(|s| s >= 0.0));
    assert_eq!(m["model"], "SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(m["prompt_tokens"].as_u64().is_some_and(|n| n > 0));
    let generated = m["generated_tokens"].as_u64().expect("generated_tokens");
    assert!((1..=8).contains(&generated), "NRVNA_PREDICT=8 but {generated} tokens");
    for scratch in ["partial.txt", "progress.json", "result.txt.tmp", "meta.json.tmp"] {
        assert!(!ws.job(DONE, &id).join(scratch).exists(), "{scratch} left in output/");
    }
    assert!(
        !ws.path().join(".nrvnad.pid").exists() && !ws.path().join(".nrvnad.info").exists(),
        "lifecycle files removed at a clean exit"
    );

    let shown = ws.flw(&[&id], JOB);
    shown.expect_code(0, "flw WS ID of a done job");
    assert_eq!(shown.stdout.trim_end(), result.trim_end());

    let counts = ws.flw(&["--json"], JOB);
    counts.expect_code(0, "flw WS --json");
    let c: Value = serde_json::from_str(counts.stdout.trim()).expect("flw --json is JSON");
    assert_eq!(
        (&c["done"], &c["failed"], &c["queued"], &c["running"]),
        (&json!(1), &json!(0), &json!(0), &json!(0)),
        "{c}"
    );
    assert_eq!(c["daemon"], "not_running");
}

#[test]
fn hand_made_job_with_only_prompt_txt_is_processed_like_a_wrk_job() {
    let ws = TestWs::new();
    ws.create_dirs();
    // Made in place before any daemon runs...
    let early = "20250101000000000000_1_000001";
    ws.make_job(READY, early, &[("prompt.txt", b"Name a colour.")]);
    let mut d = ws.daemon(&[], &[]);
    d.wait_ready();
    assert_eq!(ws.wait_finished(early, JOB), DONE);
    // ...and staged then published with one rename while it runs.
    let late = "20250101000000000000_1_000002";
    ws.publish_job(late, &[("prompt.txt", b"Name a fruit.")]);
    assert_eq!(ws.wait_finished(late, JOB), DONE);

    for id in [early, late] {
        assert!(!ws.read(DONE, id, "result.txt").trim().is_empty());
        let m = ws.meta(DONE, id);
        assert_eq!(m["status"], "done", "{m}");
        assert_eq!(m["mode"], "text", "a job without meta.json is a text job");
        assert_eq!(m["artifacts"], json!(["result.txt"]));
        assert!(m["completed_at"].is_string() && m["duration_s"].is_number());
        assert!(m["generated_tokens"].as_u64().is_some_and(|n| n >= 1));
        ws.flw(&[id], JOB).expect_code(0, "flw on a hand-made job");
    }
    d.signal(libc::SIGTERM);
    d.wait_exit(JOB);
    assert_eq!(d.code(), 0);
}

/// One bad job: its id, its files, and what error.txt must say.
struct Bad {
    id: &'static str,
    what: &'static str,
    needles: &'static [&'static str],
}

#[test]
fn bad_jobs_fail_with_a_one_line_reason_and_the_daemon_goes_on() {
    let ws = TestWs::new();
    ws.create_dirs();
    let bad = [
        Bad {
            id: "1_1",
            what: "missing prompt.txt",
            needles: &["prompt.txt", "missing"],
        },
        Bad {
            id: "1_2",
            what: "empty prompt",
            needles: &["prompt.txt", "empty"],
        },
        Bad {
            id: "1_3",
            what: "prompt over NRVNA_MAX_PROMPT_SIZE",
            needles: &["prompt.txt", "NRVNA_MAX_PROMPT_SIZE"],
        },
        Bad {
            id: "1_4",
            what: "non-UTF-8 prompt",
            needles: &["prompt.txt", "UTF-8"],
        },
        Bad {
            id: "1_5",
            what: "prompt.txt is a symlink",
            needles: &["prompt.txt", "symlink"],
        },
        Bad {
            id: "1_6",
            what: "prompt.txt is a FIFO",
            needles: &["prompt.txt", "FIFO"],
        },
        Bad {
            id: "1_7",
            what: "unknown type.txt",
            needles: &["type.txt", "image", "unknown job type"],
        },
        Bad {
            id: "1_8",
            what: "meta.json with a wrong-typed key",
            needles: &["meta.json", "tags"],
        },
        Bad {
            id: "1_9",
            what: "meta.json that is not JSON",
            needles: &["meta.json", "not valid JSON"],
        },
        Bad {
            id: "1_10",
            what: "params.json out of range",
            needles: &["params.json", "temp"],
        },
        Bad {
            id: "1_11",
            what: "params.json that is not JSON",
            needles: &["params.json", "not valid JSON"],
        },
    ];
    let p = |id| ws.job(READY, id);
    ws.make_job(READY, "1_1", &[("meta.json", b"{\"mode\":\"text\"}")]);
    ws.make_job(READY, "1_2", &[("prompt.txt", b"")]);
    ws.make_job(READY, "1_3", &[("prompt.txt", "x".repeat(300).as_bytes())]);
    ws.make_job(READY, "1_4", &[("prompt.txt", b"hello \xff\xfe world")]);
    ws.make_job(READY, "1_5", &[]);
    std::os::unix::fs::symlink("/etc/passwd", p("1_5").join("prompt.txt")).unwrap();
    ws.make_job(READY, "1_6", &[]);
    mkfifo(&p("1_6").join("prompt.txt"));
    ws.make_job(READY, "1_7", &[("prompt.txt", b"Say hi."), ("type.txt", b"image\n")]);
    ws.make_job(
        READY,
        "1_8",
        &[("prompt.txt", b"Say hi."), ("meta.json", br#"{"tags":"x"}"#)],
    );
    ws.make_job(READY, "1_9", &[("prompt.txt", b"Say hi."), ("meta.json", b"not json")]);
    ws.make_job(
        READY,
        "1_10",
        &[("prompt.txt", b"Say hi."), ("params.json", br#"{"temp":-1}"#)],
    );
    ws.make_job(READY, "1_11", &[("prompt.txt", b"Say hi."), ("params.json", b"{temp")]);
    // Not jobs: left alone, never processed, never stop the daemon.
    for name in ["not-an-id", "not an id"] {
        ws.make_job(READY, name, &[("prompt.txt", b"I am not a job.")]);
    }

    let mut d = ws.daemon(&[], &[("NRVNA_MAX_PROMPT_SIZE", "200")]);
    d.wait_ready();
    for b in &bad {
        let st = ws.wait_finished(b.id, JOB);
        assert_eq!(st, FAILED, "{} ({}) must fail", b.what, b.id);
    }
    // The daemon goes on: a good job submitted after the bad ones is done.
    let good = ws.submit(&[], "Say hello.");
    assert_eq!(ws.wait_finished(&good, JOB), DONE, "the good job after the bad ones");
    assert!(!ws.read(DONE, &good, "result.txt").trim().is_empty());
    assert!(d.exited().is_none(), "the daemon is still running");

    for b in &bad {
        assert_eq!(ws.states_of(b.id), [FAILED], "{}", b.what);
        let err = ws.read(FAILED, b.id, "error.txt");
        assert!(
            err.ends_with('\n') && err.trim_end().lines().count() == 1,
            "{}: error.txt must be one line: {err:?}",
            b.what
        );
        for n in b.needles {
            assert!(err.contains(n), "{}: error.txt should mention {n:?}: {err:?}", b.what);
        }
        let m = ws.meta(FAILED, b.id);
        assert_eq!(m["status"], "failed", "{}: {m}", b.what);
        assert!(m["completed_at"].is_string(), "{}: {m}", b.what);
        assert_eq!(m["artifacts"][0], "error.txt", "{}: {m}", b.what);
    }
    // The symlink was not followed: no file the daemon wrote holds /etc/passwd.
    let dir = ws.job(FAILED, "1_5");
    for e in fs::read_dir(&dir).unwrap().flatten() {
        if e.file_type().unwrap().is_symlink() {
            continue;
        }
        let text = fs::read(e.path()).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&text).contains("root:"),
            "{} holds /etc/passwd",
            e.path().display()
        );
    }
    // The unreadable meta.json is kept for a person to look at.
    assert_eq!(
        fs::read(ws.job(FAILED, "1_9").join("meta.json.invalid")).unwrap(),
        b"not json"
    );

    d.signal(libc::SIGTERM);
    d.wait_exit(JOB);
    assert_eq!(d.code(), 0, "a clean shutdown exits 0");
    for name in ["not-an-id", "not an id"] {
        assert!(
            ws.job(READY, name).join("prompt.txt").is_file(),
            "{name:?} in input/ready/ must be left alone"
        );
    }
    assert_eq!(d.log_count("not a valid job id"), 2, "each non-id is reported once");

    // A drain with non-ids in input/ready/ still finishes, and leaves them.
    let mut d2 = ws.drain(&[], &[]);
    assert_eq!(d2.code(), 0, "no job failed in this run");
    assert_eq!(
        ws.names_in(READY),
        ["not an id", "not-an-id"],
        "only the non-ids are left in input/ready/"
    );
}

#[test]
fn prompt_too_long_for_the_context_fails_naming_the_context() {
    let ws = TestWs::new();
    let long = "Tell me about rivers, mountains and the sea. ".repeat(40);
    let id = ws.submit(&[], &long);
    let short = ws.submit(&[], "Hi");
    let mut d = ws.drain(&[], &[("NRVNA_MAX_CTX", "128")]);
    assert_eq!(d.code(), 1, "a drain that saw a job fail exits 1");
    assert_eq!(ws.states_of(&id), [FAILED]);
    let err = ws.read(FAILED, &id, "error.txt");
    assert!(
        err.contains("context") && err.contains("NRVNA_MAX_CTX"),
        "error.txt should name the context and its setting: {err:?}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert_eq!(ws.meta(FAILED, &id)["status"], "failed");
    assert_eq!(ws.states_of(&short), [DONE], "a short prompt still fits");
}

#[test]
fn per_job_engine_processes_jobs_and_agrees_with_batched_at_temp_0() {
    let prompts = [
        "What is the capital of France?",
        "Name three colours.",
        "Count from one to five.",
    ];
    let per_job = TestWs::new();
    let batched = TestWs::new();
    let ids_p: Vec<String> = prompts.iter().map(|p| per_job.submit(&[], p)).collect();
    let ids_b: Vec<String> = prompts.iter().map(|p| batched.submit(&[], p)).collect();

    let mut d = per_job.drain(&["--engine", "per-job"], &[("NRVNA_PREDICT", "12")]);
    assert_eq!(d.code(), 0);
    let mut d = batched.drain(&["--engine", "batched"], &[("NRVNA_PREDICT", "12")]);
    assert_eq!(d.code(), 0);

    let mut same = 0;
    for (i, (a, b)) in ids_p.iter().zip(&ids_b).enumerate() {
        let ra = per_job.read(DONE, a, "result.txt");
        let rb = batched.read(DONE, b, "result.txt");
        assert!(!ra.trim().is_empty(), "per-job result {i} is empty");
        assert!(!rb.trim().is_empty(), "batched result {i} is empty");
        // docs/CONTRACT-EXTENSIONS.md: engine is batched, perjob or echo.
        assert_eq!(per_job.meta(DONE, a)["engine"], "perjob");
        assert_eq!(batched.meta(DONE, b)["engine"], "batched");
        if ra == rb {
            same += 1;
        } else {
            eprintln!("prompt {i}: the engines differ at temp 0:\n  per-job: {ra:?}\n  batched: {rb:?}");
        }
    }
    eprintln!(
        "per-job vs batched at NRVNA_TEMP=0: {same} of {} results identical",
        prompts.len()
    );
}

#[test]
fn job_params_are_honoured_and_recorded_in_meta() {
    let ws = TestWs::new();
    let id = ws.submit(
        &["--temp", "0", "--seed", "42", "--max-tokens", "5", "--stop", "\n"],
        "Write a poem about the sea.",
    );
    let params: Value = serde_json::from_str(&ws.read(READY, &id, "params.json")).unwrap();
    assert_eq!(
        params,
        json!({"temp": 0.0, "seed": 42, "max_tokens": 5, "stop": ["\n"]}),
        "params.json as wrk wrote it"
    );
    // The daemon's defaults differ; the job's parameters must win.
    let mut d = ws.drain(&[], &[("NRVNA_PREDICT", "64"), ("NRVNA_TEMP", "0.9")]);
    assert_eq!(d.code(), 0);
    let m = ws.meta(DONE, &id);
    let p = &m["params"];
    assert_eq!(p["temp"].as_f64(), Some(0.0), "{p}");
    assert_eq!(p["seed"], 42, "{p}");
    assert_eq!(p["max_tokens"], 5, "{p}");
    assert_eq!(p["stop"], json!(["\n"]), "{p}");
    let n = m["generated_tokens"].as_u64().expect("generated_tokens");
    assert!((1..=5).contains(&n), "max_tokens 5 but {n} generated");
    let result = ws.read(DONE, &id, "result.txt");
    assert!(!result.contains('\n'), "the stop string ends the text: {result:?}");
}
