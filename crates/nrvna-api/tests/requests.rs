//! Requests as OpenAI answers them (issue 22): limits and ranges are 400s
//! before anything is published, a client that leaves takes its jobs with
//! it from the first one published, and structured output cut by
//! `max_tokens` is a 200 with `finish_reason: "length"` (real daemon, real
//! model).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Every job directory in a state directory of the workspace.
fn jobs_in(ws: &Path, dir: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(ws.join(dir))
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "Say hi."}]});
    for (k, v) in extra.as_object().expect("an object") {
        body[k] = v.clone();
    }
    body
}

/// The error object of a 400, checked to name `param` and say `says`.
fn refused(r: &Reply, param: &str, says: &str) -> Value {
    assert_eq!(r.status, 400, "{}", r.text());
    let e = r.json()["error"].clone();
    assert_eq!(e["type"], "invalid_request_error", "{e}");
    assert_eq!(e["param"], param, "{e}");
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(msg.contains(says), "{param}: {msg:?} should say {says:?}");
    e
}

#[test]
fn out_of_range_and_oversized_requests_are_400s_and_publish_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    let (_api, base) = start_api(&ws);

    // OpenAI's sampling ranges.
    refused(
        &post_json(&base, "/v1/chat/completions", &chat(json!({"temperature": 3}))),
        "temperature",
        "from 0 to 2",
    );
    refused(
        &post_json(&base, "/v1/chat/completions", &chat(json!({"presence_penalty": 5}))),
        "presence_penalty",
        "from -2 to 2",
    );
    refused(
        &post_json(
            &base,
            "/v1/completions",
            &json!({"model": MODEL_ID, "prompt": "x", "frequency_penalty": -2.5}),
        ),
        "frequency_penalty",
        "from -2 to 2",
    );

    // A system message params.json cannot hold: 400, not a 500 later.
    let big = chat(json!({"messages": [
        {"role": "system", "content": "s".repeat(100 * 1024)},
        {"role": "user", "content": "hi"},
    ]}));
    let e = refused(&post_json(&base, "/v1/chat/completions", &big), "messages", "65536");
    assert_eq!(e["code"], "string_above_max_length");

    // A schema no value satisfies: 400 at once.
    for schema in [
        json!({"type": "string", "const": 5}),
        json!({"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}),
    ] {
        let rf = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}});
        refused(
            &post_json(&base, "/v1/chat/completions", &chat(json!({"response_format": rf}))),
            "response_format",
            "allows no value",
        );
    }

    // OpenAI's limit of 2,048 embedding inputs.
    let inputs = vec!["x"; 2049];
    refused(
        &post_json(&base, "/v1/embeddings", &json!({"model": MODEL_ID, "input": inputs})),
        "input",
        "2048",
    );

    for d in ["input/writing", "input/ready", "processing", "output", "failed"] {
        assert!(jobs_in(&ws, d).is_empty(), "{d} holds {:?}", jobs_in(&ws, d));
    }
}

#[test]
fn a_client_that_leaves_while_its_jobs_are_published_takes_them_all_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    // No daemon: every job this request publishes stays queued until cancelled.
    let (_api, base) = start_api(&ws);
    let body = json!({"model": MODEL_ID, "input": vec!["some text to embed"; 2048]}).to_string();
    let req = request(
        &base,
        "POST",
        "/v1/embeddings",
        Some(KEY),
        &["Content-Type: application/json"],
        Some(body.as_bytes()),
    );
    let mut s = TcpStream::connect(authority(&base)).unwrap();
    s.write_all(&req).unwrap();
    // Leave as soon as the first job is out, while the gateway is still
    // publishing (the jobs are staged first, which takes a while on a
    // loaded disk; publishing 2,048 takes longer than noticing the first).
    assert!(
        wait_for(Duration::from_secs(180), || !jobs_in(&ws, "input/ready").is_empty()),
        "the gateway published nothing within 180 s"
    );
    drop(s);
    // Everything published is cancelled; nothing more is published, and
    // nothing stays staged.
    let settled = wait_for(Duration::from_secs(30), || {
        jobs_in(&ws, "input/ready").is_empty() && jobs_in(&ws, "input/writing").is_empty()
    });
    let failed = jobs_in(&ws, "failed");
    assert!(
        settled,
        "{} job(s) still queued and {} staged after the client left ({} cancelled)",
        jobs_in(&ws, "input/ready").len(),
        jobs_in(&ws, "input/writing").len(),
        failed.len()
    );
    assert!(!failed.is_empty());
    assert!(
        failed.len() < 2048,
        "all 2048 jobs were published before the client's leaving was noticed"
    );
    for d in &failed {
        let meta: Value = serde_json::from_slice(&std::fs::read(d.join("meta.json")).unwrap()).unwrap();
        assert_eq!(meta["cancelled"], true, "{}: {meta}", d.display());
    }
    // Published later by nobody: the count holds.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(jobs_in(&ws, "failed").len(), failed.len());
    assert!(jobs_in(&ws, "input/ready").is_empty());
}

#[test]
fn structured_output_cut_by_max_tokens_is_a_200_with_finish_reason_length() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    let _daemon = start_daemon(&ws, 2);
    let (_api, base) = start_api(&ws);

    let r = post_json(
        &base,
        "/v1/chat/completions",
        &chat(json!({
            "messages": [{"role": "user", "content": "Describe a cat as a JSON object with many fields."}],
            "response_format": {"type": "json_object"}, "max_tokens": 5, "temperature": 0,
        })),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 5, "{v}");
    let text = choice["message"]["content"].as_str().unwrap();
    assert!(
        text.trim_start().starts_with('{'),
        "the cut output follows the grammar: {text:?}"
    );

    // Within max_tokens the same request is whole, valid JSON.
    let r = post_json(
        &base,
        "/v1/chat/completions",
        &chat(json!({
            "messages": [{"role": "user", "content": "Give a JSON object with a name."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema":
                {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}}, "required": ["name"],
                 "additionalProperties": false}}},
            "max_tokens": 64, "temperature": 0,
        })),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let obj: Value = serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(obj["name"].is_string(), "{obj}");

    // OpenAI's penalties reach the job and are recorded as used.
    let r = post_json(
        &base,
        "/v1/chat/completions",
        &chat(json!({"max_tokens": 8, "presence_penalty": 1.5, "frequency_penalty": -0.5})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("chatcmpl-")
        .to_owned();
    let meta: Value =
        serde_json::from_slice(&std::fs::read(ws.join("output").join(&id).join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["params"]["presence_penalty"], 1.5, "{meta}");
    assert_eq!(meta["params"]["frequency_penalty"], -0.5, "{meta}");
}

#[test]
fn past_the_queue_limit_a_request_is_a_429_with_retry_after_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    let (_api, base) = start_api(&ws);
    // What `nrvnad --max-queued 2` records.
    std::fs::write(ws.join(".nrvna-limits.json"), b"{\"max_queued\": 2}\n").unwrap();
    let r = post_json(
        &base,
        "/v1/embeddings",
        &json!({"model": MODEL_ID, "input": ["a", "b", "c"]}),
    );
    assert_eq!(r.status, 429, "{}", r.text());
    let e = r.json()["error"].clone();
    assert_eq!(e["code"], "rate_limit_exceeded", "{e}");
    assert!(e["message"].as_str().unwrap().contains("limit of 2"), "{e}");
    let wait: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=3600).contains(&wait), "{wait}");
    assert!(jobs_in(&ws, "input/ready").is_empty());
    assert!(jobs_in(&ws, "input/writing").is_empty());
}
