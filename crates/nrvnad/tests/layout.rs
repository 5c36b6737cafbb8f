//! The batched engine's KV layouts and `--workers auto` (issue #27), on the
//! real model: a backlog of short jobs runs with a KV stream per job (a
//! shared prefix still reused, copied across streams), a long job switches
//! the context back to one shared stream, `--kv-layout unified` never
//! switches, and jobs behind a long shared instruction run together in the
//! shared stream, attached to one copy of it. (`--workers auto`, measured
//! at start, is tested alone in tests/busy_cpus.rs: a measurement needs the
//! CPUs to itself.)

mod common;

use common::*;
use serde_json::Value;

#[test]
fn short_jobs_get_a_stream_each_and_a_long_one_switches_back_to_the_shared_stream() {
    let ws = TestWs::new();
    let topics = ["the sea", "a forest", "the moon", "a city", "winter", "music"];
    let short: Vec<String> = topics
        .iter()
        .map(|t| {
            ws.submit(
                &["--temp", "0", "--max-tokens", "24"],
                &format!("Write one sentence about {t}."),
            )
        })
        .collect();
    // 600 tokens to generate do not fit a stream of 512 cells (2048 / 5,
    // rounded up to llama.cpp's 256-cell pages).
    let long = ws.submit(&["--temp", "0", "--max-tokens", "600"], "Say hello.");
    let mut d = ws.drain(&["--workers", "4", "--max-ctx", "2048", "--log-level", "debug"], &[]);
    let log = d.log_text();
    assert_eq!(d.code(), 0, "{log}");
    assert!(
        log.contains("jobs within 512 cells (prompt and max tokens) get a KV stream each"),
        "{log}"
    );
    let streams = log
        .find("KV layout: Streams")
        .unwrap_or_else(|| panic!("no switch to streams: {log}"));
    let unified = log
        .find("KV layout: Unified")
        .unwrap_or_else(|| panic!("no switch back: {log}"));
    assert!(
        streams < unified,
        "streams first, then the long job's shared stream: {log}"
    );

    let mut reused = 0;
    for id in &short {
        let meta: Value = ws.meta(DONE, id);
        let text = ws.read(DONE, id, "result.txt");
        assert!(!text.trim().is_empty(), "{id}: empty result");
        let n = meta["generated_tokens"].as_u64().unwrap_or(0);
        assert!((1..=24).contains(&n), "{id}: {meta}");
        reused += meta["reused_prompt_tokens"].as_u64().unwrap_or(0);
    }
    // The chat template's preamble is shared: jobs after the first copy it
    // from another job's stream instead of decoding it again.
    assert!(reused > 0, "no prompt tokens were reused across streams");
    assert!(!ws.read(DONE, &long, "result.txt").trim().is_empty());
}

#[test]
fn the_unified_layout_never_switches() {
    let ws = TestWs::new();
    for t in ["rain", "snow", "wind"] {
        ws.submit(&["--temp", "0", "--max-tokens", "8"], &format!("One word about {t}."));
    }
    let mut d = ws.drain(
        &["--workers", "3", "--kv-layout", "unified", "--log-level", "debug"],
        &[],
    );
    let log = d.log_text();
    assert_eq!(d.code(), 0, "{log}");
    assert!(!log.contains("KV stream each") && !log.contains("KV layout:"), "{log}");
    assert_eq!(ws.names_in(DONE).len(), 3);
}

#[test]
fn jobs_behind_a_long_shared_instruction_run_together_and_compute_it_once() {
    let ws = TestWs::new();
    // About 400 tokens that every job shares, then its own question: too
    // long for a 256-cell stream, so they run in the shared stream, where
    // an attached prefix shares its cells.
    let rules = [
        "Prefer short sentences and concrete words over abstract ones.",
        "Open with the most interesting fact, not with a definition.",
        "Use the active voice unless the actor is unknown or unimportant.",
        "Name one specific example, place, or number in every answer.",
    ];
    let guide: String = (0..24)
        .map(|i| format!("Rule {}. {}\n", i + 1, rules[i % rules.len()]))
        .collect();
    let topics = [
        "the sea", "a forest", "the moon", "a city", "winter", "music", "rain", "bridges",
    ];
    let ids: Vec<String> = topics
        .iter()
        .map(|t| {
            ws.submit(
                &["--temp", "0", "--max-tokens", "8"],
                &format!("House style guide.\n{guide}\nWrite one sentence about {t}."),
            )
        })
        .collect();
    // 8 jobs of about 420 cells in 2048: counted once per job, the shared
    // instruction would let only 4 run at a time.
    let mut d = ws.drain(&["--workers", "8", "--max-ctx", "2048", "--log-level", "debug"], &[]);
    let log = d.log_text();
    assert_eq!(d.code(), 0, "{log}");
    assert!(log.contains("KV layout: Unified"), "{log}");
    let mut prompt = 0;
    let mut attached = 0;
    for id in &ids {
        let meta: Value = ws.meta(DONE, id);
        assert!(!ws.read(DONE, id, "result.txt").trim().is_empty(), "{id}: empty result");
        let n = meta["prompt_tokens"].as_u64().unwrap_or(0);
        let reused = meta["reused_prompt_tokens"].as_u64().unwrap_or(0);
        assert!(
            n > 300,
            "{id}: a {n}-token prompt is shorter than the test means: {meta}"
        );
        prompt = n;
        attached += usize::from(reused + 30 > n);
    }
    assert!(
        attached >= ids.len() - 1,
        "only {attached} of {} jobs attached to the shared instruction",
        ids.len()
    );
    // The engine's tally at stop: how many sequences each step decoded.
    let line = log
        .lines()
        .find(|l| l.contains("calls stepping"))
        .unwrap_or_else(|| panic!("no tally line: {log}"));
    let avg: f64 = line
        .split(" calls stepping ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no average in {line:?}"));
    assert!(
        avg >= 5.5,
        "{prompt}-token prompts sharing their instruction stepped {avg} at a time, not about 8: {line}"
    );
}
