//! `/v1/responses` end to end: the official `openai` Python client
//! (tests/py/responses_client.py) against the real gateway and a real
//! daemon on the real model (sync, streamed, background, polling, cancel,
//! previous_response_id chains, incomplete, json_schema, input_items,
//! delete, images on the vision fixture, and a stream resumed after the
//! gateway was killed), plus the bad requests that need no daemon.
//!
//! Needs the model (scripts/fetch-model.sh), the release `nrvnad` binary,
//! the fixtures (scripts/fixtures.sh) and the Python environment
//! (scripts/pyenv.sh); scripts/test.sh provides them all.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Runs a scenario of responses_client.py; panics with its output when it
/// fails; returns its stdout.
fn py(base: &str, ws: &Path, args: &[&str]) -> String {
    run_py(
        Command::new(python())
            .arg("responses_client.py")
            .args(args)
            .env("NRVNA_API_BASE", format!("{base}/v1"))
            .env("NRVNA_API_KEY", KEY)
            .env("NRVNA_MODEL", MODEL_ID)
            .env("NRVNA_WS", ws)
            .env("NRVNA_PICTURE", fixture("picture.png")),
        &format!("responses_client.py {args:?}"),
    )
}

#[test]
fn the_official_client_creates_streams_polls_chains_cancels_and_resumes_responses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ws = dir.path().join("ws");
    let (api, base) = start_api(&ws);
    // No daemon yet: a background response waits queued and is cancelled.
    // Another waits for the daemon started after it, and completes.
    let waiting = py(&base, &ws, &["cancel-queued"]);

    let _daemon = start_daemon(&ws, 2);
    py(&base, &ws, &["wait", waiting.trim()]);
    for scenario in [
        "sync",
        "stream",
        "background",
        "chain",
        "incomplete",
        "schema",
        "items",
        "bad",
    ] {
        py(&base, &ws, &[scenario]);
    }

    // A long background stream read for a few deltas, the gateway killed
    // (SIGKILL) while its job runs, a new gateway started: the stream
    // resumes after the last event seen and the deltas join to the result.
    let seen = dir.path().join("seen.json");
    let id = py(&base, &ws, &["resume-start", seen.to_str().unwrap()]);
    let job = id.trim().strip_prefix("resp_").expect("a response id").to_owned();
    assert!(
        ws.join("processing").join(&job).is_dir(),
        "the response's job is no longer running when the gateway is killed; make it longer"
    );
    drop(api);
    let (_api, base) = start_api(&ws);
    py(&base, &ws, &["resume-finish", seen.to_str().unwrap()]);
}

#[test]
fn image_inputs_make_vision_jobs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ws = dir.path().join("ws");
    let vision = fixture("mmproj-vision-fixture.gguf");
    let _d = start_daemon_with(
        &model(),
        &ws,
        &["--mmproj", vision.to_str().unwrap()],
        &[("NRVNA_PREDICT", "12")],
    );
    let (_api, base) = start_api(&ws);
    py(&base, &ws, &["image"]);
}

fn send(base: &str, method: &str, path: &str) -> Reply {
    raw(
        base,
        &request(base, method, path, Some(KEY), &[], None),
        Duration::from_secs(30),
    )
    .expect("a reply")
}

fn expect_400(r: &Reply, param: &str) {
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], param, "{}", r.text());
}

#[test]
fn records_come_before_jobs_and_bad_requests_publish_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ws = dir.path().join("ws");
    let (_api, base) = start_api(&ws);
    let m = MODEL_ID;
    for (body, param) in [
        (json!({"model": m}), "input"),
        (
            json!({"model": m, "input": "x", "background": true, "store": false}),
            "store",
        ),
        (
            json!({"model": m, "input": [{"role": "user", "content": [{"type": "input_file"}]}]}),
            "input[0].content[0]",
        ),
        (
            json!({"model": m, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]}),
            "input[0].content[0].image_url",
        ),
        (
            json!({"model": m, "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-123"}]}]}),
            "input[0]",
        ),
        (
            json!({"model": m, "input": [{"role": "assistant", "content": "x"}]}),
            "input",
        ),
        (json!({"model": m, "input": "x", "temperature": 9}), "temperature"),
        (
            json!({"model": m, "input": "x", "text": {"format": {"type": "json_schema", "schema": {"type": "nonsense"}}}}),
            "text.format",
        ),
    ] {
        expect_400(&post_json(&base, "/v1/responses", &body), param);
    }
    let r = post_json(
        &base,
        "/v1/responses",
        &json!({"model": m, "input": "x", "previous_response_id": "resp_1_2_3"}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "previous_response_not_found");
    // Not JSON: 415 before anything is read.
    let req = request(
        &base,
        "POST",
        "/v1/responses",
        Some(KEY),
        &["Content-Type: text/plain"],
        Some(b"{}"),
    );
    assert_eq!(raw(&base, &req, Duration::from_secs(30)).unwrap().status, 415);
    assert_eq!(jobs_in(&ws), 0, "a bad request published a job");
    for path in [
        "/v1/responses/resp_1_2_3",
        "/v1/responses/resp_..%2Fx",
        "/v1/responses/chatcmpl-1",
    ] {
        assert_eq!(get(&base, path).status, 404, "{path}");
    }
    assert_eq!(send(&base, "POST", "/v1/responses/resp_1_2_3/cancel").status, 404);
    assert_eq!(send(&base, "DELETE", "/v1/responses/resp_1_2_3").status, 404);

    // A background response: its record names the request, its job the response.
    let r = post_json(
        &base,
        "/v1/responses",
        &json!({"model": m, "input": "queued", "background": true, "metadata": {"who": "test"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (v["status"].as_str(), &v["metadata"]),
        (Some("queued"), &json!({"who": "test"}))
    );
    let job = id.strip_prefix("resp_").unwrap();
    let rec: Value =
        serde_json::from_slice(&std::fs::read(ws.join(format!("api/responses/{id}.json"))).unwrap()).unwrap();
    assert_eq!(rec["input"][0]["content"][0]["text"], "queued");
    assert_eq!(rec["background"], true);
    let meta: Value =
        serde_json::from_slice(&std::fs::read(ws.join(format!("input/ready/{job}/meta.json"))).unwrap()).unwrap();
    assert_eq!((&meta["response_id"], &meta["background"]), (&json!(id), &json!(true)));
    for q in [
        "stream=maybe",
        "stream=true&starting_after=x",
        "stream=true&starting_after=-5",
    ] {
        assert_eq!(get(&base, &format!("/v1/responses/{id}?{q}")).status, 400, "{q}");
    }
    for q in ["limit=0", "limit=101", "order=up", "after=msg_nope"] {
        assert_eq!(
            get(&base, &format!("/v1/responses/{id}/input_items?{q}")).status,
            400,
            "{q}"
        );
    }
    // Deleting a queued response cancels its job and forgets the record.
    let d = send(&base, "DELETE", &format!("/v1/responses/{id}"));
    assert_eq!(d.json(), json!({"id": id, "object": "response", "deleted": true}));
    assert!(
        ws.join("failed").join(job).is_dir(),
        "the deleted response's job was not cancelled"
    );
    assert!(!ws.join(format!("api/responses/{id}.json")).exists());
    assert_eq!(get(&base, &format!("/v1/responses/{id}")).status, 404);
}
