//! Batches under pressure, without a daemon (jobs that must finish are
//! finished by the test, as a daemon would: result.txt, meta.json, one
//! rename into output/): two gateways on one workspace and a gateway
//! killed while publishing publish every line once; jobs that others tag
//! with a batch's id are not the batch's; a 50,000-line batch is created
//! and cancelled at once, and its unpublished lines stay unpublished; a
//! batch is read from the index among 100,000 jobs; lines that cannot run
//! go to the error file with their line numbers and codes.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const CHAT: &str = "/v1/chat/completions";
const STATE_DIRS: [&str; 5] = ["input/writing", "input/ready", "processing", "output", "failed"];

/// One chat request line of a batch file.
fn chat_line(custom_id: &str, model: Option<&str>) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": format!("say {custom_id}")}], "max_tokens": 4});
    if let Some(m) = model {
        body["model"] = json!(m);
    }
    json!({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body})
}

/// Stores an uploaded batch file the way `POST /v1/files` does (the data,
/// then its record), without sending megabytes through HTTP; returns its id.
fn put_file(ws: &Path, lines: &[Value]) -> String {
    let mut data = String::new();
    for l in lines {
        data.push_str(&l.to_string());
        data.push('\n');
    }
    let id = format!("file-{}", nrvna_core::JobId::generate());
    let dir = ws.join("api/files");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{id}.data")), &data).unwrap();
    let rec = json!({"id": id, "object": "file", "bytes": data.len(), "created_at": 1,
        "filename": "in.jsonl", "purpose": "batch", "status": "processed"});
    std::fs::write(dir.join(format!("{id}.json")), rec.to_string()).unwrap();
    id
}

fn numbered(n: usize) -> Vec<Value> {
    (0..n).map(|i| chat_line(&format!("req-{i}"), None)).collect()
}

fn create_batch(base: &str, file: &str) -> Reply {
    post_json(
        base,
        "/v1/batches",
        &json!({"input_file_id": file, "endpoint": CHAT, "completion_window": "24h"}),
    )
}

fn created(base: &str, file: &str) -> String {
    let r = create_batch(base, file);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

/// Every job directory in the workspace with its state directory and the
/// custom_id of its batch.json (or meta.json), if any.
fn jobs_by_custom_id(ws: &Path) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for d in STATE_DIRS {
        let Ok(rd) = std::fs::read_dir(ws.join(d)) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let cid = std::fs::read(p.join("batch.json"))
                .or_else(|_| std::fs::read(p.join("meta.json")))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v["custom_id"].as_str().map(str::to_owned));
            if let Some(c) = cid {
                m.entry(c)
                    .or_default()
                    .push(format!("{d}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    m
}

/// Names in a state directory that start with `prefix`.
fn named(ws: &Path, dir: &str, prefix: &str) -> Vec<String> {
    std::fs::read_dir(ws.join(dir))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn count(ws: &Path, dir: &str) -> usize {
    named(ws, dir, "").len()
}

fn batch_json(ws: &Path, id: &str) -> Value {
    serde_json::from_slice(&std::fs::read(ws.join(format!("api/batches/{id}.json"))).unwrap()).unwrap()
}

/// Finishes a queued job as a daemon would: its result and a done
/// meta.json, then one rename into output/.
fn finish(ws: &Path, id: &str, text: &str) {
    let dir = ws.join("input/ready").join(id);
    std::fs::write(dir.join("result.txt"), text).unwrap();
    let mut meta: Value = serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    meta["status"] = json!("done");
    meta["completed_at"] = json!("2026-01-01T00:00:00.000000Z");
    std::fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
    std::fs::rename(&dir, ws.join("output").join(id)).unwrap();
}

/// Fails a queued job as a daemon would.
fn fail(ws: &Path, id: &str, why: &str) {
    let dir = ws.join("input/ready").join(id);
    std::fs::write(dir.join("error.txt"), why).unwrap();
    let mut meta: Value = serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    meta["status"] = json!("failed");
    std::fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
    std::fs::rename(&dir, ws.join("failed").join(id)).unwrap();
}

fn kill9(p: &mut Proc) {
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}

fn status(base: &str, id: &str) -> Value {
    let r = get(base, &format!("/v1/batches/{id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn wait_status(base: &str, id: &str, want: &str, within: Duration) -> Value {
    let mut last = Value::Null;
    let ok = wait_for(within, || {
        last = status(base, id);
        last["status"] == want
    });
    assert!(ok, "batch {id} is not {want} within {within:?}: {last}");
    last
}

fn assert_each_once(ws: &Path, n: usize) {
    let jobs = jobs_by_custom_id(ws);
    let twice: Vec<_> = jobs.iter().filter(|(_, v)| v.len() > 1).take(5).collect();
    assert!(twice.is_empty(), "custom_ids published more than once: {twice:?}");
    assert_eq!(jobs.len(), n, "{} of {n} custom_ids published", jobs.len());
}

fn content(base: &str, file: &str) -> Vec<Value> {
    let r = get(base, &format!("/v1/files/{file}/content"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A gateway on WS and a batch of `n` lines created through it, once all
/// its lines are queued (no daemon runs them).
fn published_batch(ws: &Path, n: usize) -> (Proc, String, String) {
    let (api, base) = start_api(ws);
    let file = put_file(ws, &numbered(n));
    let id = created(&base, &file);
    assert!(
        wait_for(Duration::from_secs(30), || count(ws, "input/ready") == n),
        "{} of {n} lines queued after 30 s",
        count(ws, "input/ready")
    );
    (api, base, id)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn two_gateways_and_a_killed_one_publish_every_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    let (mut a, base_a) = start_api(&ws);
    let (_b, base_b) = start_api(&ws);
    let file = put_file(&ws, &numbered(5000));
    let id = {
        // The create call may take long on a gateway that publishes inside
        // it; the test goes on from another thread meanwhile.
        let (base, file) = (base_a.clone(), file.clone());
        let t = std::thread::spawn(move || create_batch(&base, &file));
        assert!(
            wait_for(Duration::from_secs(60), || std::fs::read_dir(ws.join("api/batches"))
                .is_ok_and(|rd| rd
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".json")))),
            "no batch record within 60 s"
        );
        assert!(
            wait_for(Duration::from_secs(120), || count(&ws, "input/ready") >= 500),
            "gateway A published fewer than 500 lines in 120 s"
        );
        // A third gateway starts while A publishes (it recovers at start),
        // then A dies in the middle.
        let (_c, _) = start_api(&ws);
        kill9(&mut a);
        drop(t);
        let rd = std::fs::read_dir(ws.join("api/batches")).unwrap();
        rd.flatten()
            .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".json").map(str::to_owned))
            .next()
            .unwrap()
    };
    // B (and C while it lived) finish publishing.
    assert!(
        wait_for(Duration::from_secs(300), || count(&ws, "input/ready") >= 5000
            && batch_json(&ws, &id)["published"] == true),
        "the batch was not published whole within 300 s: {} queued, record {}",
        count(&ws, "input/ready"),
        batch_json(&ws, &id)
    );
    assert_each_once(&ws, 5000);
    assert_eq!(status(&base_b, &id)["request_counts"]["total"], 5000);

    // A gateway SIGKILLed while publishing and started again.
    let ws2 = dir.path().join("ws2");
    let (mut d, base_d) = start_api(&ws2);
    let file = put_file(&ws2, &numbered(5000));
    let base = base_d.clone();
    let t = std::thread::spawn(move || create_batch(&base, &file));
    assert!(
        wait_for(Duration::from_secs(120), || count(&ws2, "input/ready") >= 500),
        "fewer than 500 lines published in 120 s"
    );
    kill9(&mut d);
    drop(t);
    let published = count(&ws2, "input/ready");
    assert!(published < 5000, "the whole batch was published before the kill");
    let (_e, _) = start_api(&ws2);
    assert!(
        wait_for(Duration::from_secs(300), || count(&ws2, "input/ready") >= 5000
            && std::fs::read_dir(ws2.join("api/batches"))
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .all(|e| serde_json::from_slice::<Value>(
                    &std::fs::read(e.path()).unwrap()
                )
                .unwrap()["published"]
                    == true)),
        "the restarted gateway did not publish the rest within 300 s ({} queued)",
        count(&ws2, "input/ready")
    );
    assert_each_once(&ws2, 5000);
    assert_eq!(count(&ws2, "input/writing"), 0, "a stale staging directory is left");
}

#[test]
fn jobs_others_tag_with_a_batch_id_are_not_the_batchs() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    let (_api, base, id) = published_batch(&ws, 3);
    let mine: Vec<String> = named(&ws, "input/ready", "");
    // Three jobs that someone else tagged with the batch's id (`wrk --tag`,
    // MCP submit), and already done.
    let core = nrvna_core::Workspace::open(&ws).unwrap();
    for i in 0..3 {
        let mut s = nrvna_core::Submission::text(format!("stranger {i}"));
        s.tags = vec![id.clone()];
        let j = s.publish(&core).unwrap();
        finish(&ws, j.as_str(), "not yours");
    }
    let b = wait_status(&base, &id, "in_progress", Duration::from_secs(10));
    assert_eq!(
        b["request_counts"],
        json!({"total": 3, "completed": 0, "failed": 0}),
        "{b}"
    );
    for j in &mine {
        finish(&ws, j, "mine");
    }
    let b = wait_status(&base, &id, "completed", Duration::from_secs(10));
    assert_eq!(
        b["request_counts"],
        json!({"total": 3, "completed": 3, "failed": 0}),
        "{b}"
    );
    let out = content(&base, b["output_file_id"].as_str().unwrap());
    let ids: Vec<_> = out.iter().map(|o| o["custom_id"].clone()).collect();
    assert_eq!(ids, [json!("req-0"), json!("req-1"), json!("req-2")]);
}

#[test]
fn a_50000_line_batch_is_created_and_cancelled_at_once_and_stays_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    let (api, base) = start_api(&ws);
    let big = put_file(&ws, &numbered(50_000));
    let small = put_file(&ws, &numbered(2));
    let mut creations = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        let id = created(&base, &big);
        creations.push(t0.elapsed());
        ids.push(id);
    }
    eprintln!("POST /v1/batches, 50,000 lines: {creations:?}");
    // Other batches' calls answer while the big ones validate and publish.
    let t0 = Instant::now();
    let other = created(&base, &small);
    let other_create = t0.elapsed();
    let t0 = Instant::now();
    status(&base, &other);
    let other_get = t0.elapsed();
    let t0 = Instant::now();
    let r = post_json(&base, &format!("/v1/batches/{other}/cancel"), &json!({}));
    let other_cancel = t0.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    eprintln!("meanwhile another batch: create {other_create:?}, get {other_get:?}, cancel {other_cancel:?}");
    assert!(
        median(creations.clone()) < Duration::from_millis(200),
        "creating a 50,000-line batch took {creations:?}"
    );
    for t in [other_create, other_get, other_cancel] {
        assert!(t < Duration::from_millis(500), "another batch's call took {t:?}");
    }
    // Let the first one publish a while, then cancel them all.
    let id = ids[0].clone();
    let prefix = format!("{}_", id.trim_start_matches("batch_"));
    assert!(
        wait_for(Duration::from_secs(60), || named(&ws, "input/ready", &prefix).len()
            >= 200),
        "the batch published fewer than 200 lines in 60 s"
    );
    let mut cancels = Vec::new();
    for b in &ids {
        let t0 = Instant::now();
        let r = post_json(&base, &format!("/v1/batches/{b}/cancel"), &json!({}));
        cancels.push(t0.elapsed());
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            ["cancelling", "cancelled"].contains(&r.json()["status"].as_str().unwrap()),
            "{}",
            r.text()
        );
    }
    eprintln!("POST /v1/batches/ID/cancel, 50,000 lines: {cancels:?}");
    assert!(
        cancels.iter().all(|t| *t < Duration::from_secs(1)),
        "cancel took {cancels:?}"
    );
    let b = wait_status(&base, &id, "cancelled", Duration::from_secs(60));
    let queued = |ws: &Path| named(ws, "input/ready", &prefix).len() + named(ws, "processing", &prefix).len();
    let published = |ws: &Path| STATE_DIRS.iter().map(|d| named(ws, d, &prefix).len()).sum::<usize>();
    assert_eq!(queued(&ws), 0, "jobs of the cancelled batch are still queued");
    let n = published(&ws);
    eprintln!("published before the cancel took hold: {n} of 50000");
    assert!(n < 50_000, "every line was published");
    assert_eq!(b["request_counts"]["failed"], 50_000, "{b}");
    // Nothing more is published: after a pause, and after a restart.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(published(&ws), n);
    drop(api);
    let (_api, base) = start_api(&ws);
    wait_status(&base, &id, "cancelled", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(published(&ws), n, "lines were published after the restart");
    let errors = content(&base, &format!("file-{id}-errors"));
    assert_eq!(errors.len(), 50_000);
    assert!(
        errors.iter().all(|e| e["error"]["code"] == "batch_cancelled"),
        "{}",
        errors[0]
    );
}

#[test]
fn one_batch_is_read_from_the_index_among_100000_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    let (_api, base, id) = published_batch(&ws, 10);
    let mut mine = named(&ws, "input/ready", "");
    mine.sort();
    for j in &mine[..6] {
        finish(&ws, j, "ok");
    }
    for j in &mine[6..8] {
        fail(&ws, j, "out of memory");
    }
    // 100,000 finished jobs of others, made directly.
    for i in 0..100_000u32 {
        let d = ws.join(format!(
            "output/1764164852123456_{}_{:06}",
            7 + i / 1_000_000,
            i % 1_000_000
        ));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("result.txt"), "x").unwrap();
        std::fs::write(d.join("meta.json"), r#"{"status":"done","tags":["x"]}"#).unwrap();
    }
    let mut gets = Vec::new();
    let mut b = Value::Null;
    for _ in 0..20 {
        let t0 = Instant::now();
        b = status(&base, &id);
        gets.push(t0.elapsed());
    }
    let t0 = Instant::now();
    let r = get(&base, "/v1/batches?limit=100");
    let list = t0.elapsed();
    assert_eq!(r.status, 200);
    eprintln!(
        "GET /v1/batches/ID among 100,000 jobs: median {:?} of {gets:?}; GET /v1/batches?limit=100: {list:?}",
        median(gets.clone())
    );
    assert_eq!(
        b["request_counts"],
        json!({"total": 10, "completed": 6, "failed": 2}),
        "{b}"
    );
    assert_eq!(b["status"], "in_progress");
    assert!(median(gets.clone()) < Duration::from_millis(10), "{gets:?}");
    for j in &mine[8..] {
        finish(&ws, j, "ok");
    }
    let b = wait_status(&base, &id, "completed", Duration::from_secs(10));
    assert_eq!(
        b["request_counts"],
        json!({"total": 10, "completed": 8, "failed": 2}),
        "{b}"
    );
}

#[test]
fn lines_with_a_wrong_url_or_an_unserved_model_go_to_the_error_file() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    let (_api, base) = start_api(&ws);
    // A shared member serves one model.
    let core = nrvna_core::Workspace::open(&ws).unwrap();
    nrvna_core::members::write_member(
        &core,
        &nrvna_core::members::MemberRecord {
            member: "m-1-1".into(),
            host: "h".into(),
            model: "/m/served-model.gguf".into(),
            lease_ttl_s: 3600.0,
            beat: 1,
            beat_at: nrvna_core::time::iso8601_utc(std::time::SystemTime::now()),
            ..Default::default()
        },
    )
    .unwrap();
    let mut wrong_url = chat_line("wrong-url", None);
    wrong_url["url"] = json!("/v1/embeddings");
    wrong_url["body"] = json!({"input": "x"});
    let lines = [
        chat_line("ok-1", Some("served-model")),
        wrong_url,
        chat_line("unknown-model", Some("gpt-4")),
        chat_line("ok-2", None),
    ];
    let file = put_file(&ws, &lines);
    let id = created(&base, &file);
    assert!(
        wait_for(Duration::from_secs(30), || status(&base, &id)["status"]
            == "in_progress"
            && batch_json(&ws, &id)["published"] == true),
        "the batch was not published: {}",
        status(&base, &id)
    );
    let queued = jobs_by_custom_id(&ws);
    let mut names: Vec<_> = queued.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["ok-1", "ok-2"], "{queued:?}");
    for j in named(&ws, "input/ready", "") {
        finish(&ws, &j, "fine");
    }
    let b = wait_status(&base, &id, "completed", Duration::from_secs(10));
    assert_eq!(
        b["request_counts"],
        json!({"total": 4, "completed": 2, "failed": 2}),
        "{b}"
    );
    let errors = content(&base, b["error_file_id"].as_str().unwrap());
    let got: Vec<_> = errors
        .iter()
        .map(|e| {
            (
                e["custom_id"].clone(),
                e["error"]["line"].clone(),
                e["error"]["code"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (json!("wrong-url"), json!(2), json!("url_mismatch")),
            (json!("unknown-model"), json!(3), json!("model_not_found")),
        ]
    );
    let out = content(&base, b["output_file_id"].as_str().unwrap());
    let ids: Vec<_> = out.iter().map(|o| o["custom_id"].clone()).collect();
    assert_eq!(ids, [json!("ok-1"), json!("ok-2")]);
}

#[test]
fn a_batch_counts_its_lines_against_the_queue_limit_and_waits_for_room() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    let (_api, base) = start_api(&ws);
    // What `nrvnad --max-queued 10` records. No daemon: only this test
    // takes jobs out of the queue.
    std::fs::write(ws.join(".nrvna-limits.json"), b"{\"max_queued\": 10}\n").unwrap();
    let file = put_file(&ws, &numbered(25));
    let id = created(&base, &file);
    assert!(
        wait_for(Duration::from_secs(30), || count(&ws, "input/ready") == 10),
        "the queue did not fill to its limit"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(count(&ws, "input/ready"), 10, "never past the limit");
    assert_eq!(status(&base, &id)["status"], "in_progress");
    // A worker claims 6 of them: the batch refills the room, no more.
    let mut taken = 0;
    for e in std::fs::read_dir(ws.join("input/ready")).unwrap().take(6) {
        let name = e.unwrap().file_name();
        std::fs::rename(ws.join("input/ready").join(&name), ws.join("processing").join(&name)).unwrap();
        taken += 1;
    }
    assert_eq!(taken, 6);
    assert!(
        wait_for(Duration::from_secs(30), || count(&ws, "input/ready") == 10),
        "the batch did not use the room"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(count(&ws, "input/ready"), 10);
    assert_eq!(count(&ws, "input/ready") + count(&ws, "processing"), 16);
    // A synchronous request meanwhile is refused at once, not queued.
    let r = post_json(&base, "/v1/embeddings", &json!({"model": "m", "input": "x"}));
    assert_eq!(r.status, 429, "{}", r.text());
}

/// `POST /v1/files` as a client sends it: multipart, `purpose=batch`, and
/// the given `expires_after[...]` fields.
fn upload(base: &str, data: &str, expires: &[(&str, &str)]) -> Reply {
    let b = "----nrvna-test-boundary";
    let mut body = String::new();
    let mut field = |name: &str, extra: &str, value: &str| {
        body.push_str(&format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"{name}\"{extra}\r\n\r\n{value}\r\n"
        ));
    };
    field("purpose", "", "batch");
    for (k, v) in expires {
        field(&format!("expires_after[{k}]"), "", v);
    }
    field(
        "file",
        "; filename=\"in.jsonl\"\r\nContent-Type: application/jsonl",
        data,
    );
    body.push_str(&format!("--{b}--\r\n"));
    let ct = format!("Content-Type: multipart/form-data; boundary={b}");
    let req = request(base, "POST", "/v1/files", Some(KEY), &[&ct], Some(body.as_bytes()));
    raw(base, &req, Duration::from_secs(60)).expect("a reply")
}

#[test]
fn uploads_expire_after_30_days_or_as_asked_and_an_expired_one_is_gone() {
    let ws = tempfile::tempdir().unwrap();
    let (_api, base) = start_api(ws.path());
    let data = format!("{}\n", chat_line("a", None));

    let r = upload(&base, &data, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let f = r.json();
    assert_eq!(
        f["expires_at"].as_i64().unwrap() - f["created_at"].as_i64().unwrap(),
        30 * 86_400
    );

    let r = upload(&base, &data, &[("anchor", "created_at"), ("seconds", "3600")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let f = r.json();
    let id = f["id"].as_str().unwrap().to_owned();
    assert_eq!(
        f["expires_at"].as_i64().unwrap() - f["created_at"].as_i64().unwrap(),
        3600
    );
    assert_eq!(
        get(&base, &format!("/v1/files/{id}")).json()["expires_at"],
        f["expires_at"]
    );

    for bad in [
        vec![("anchor", "created_at"), ("seconds", "60")],
        vec![("anchor", "created_at"), ("seconds", "2592001")],
        vec![("anchor", "last_active_at"), ("seconds", "3600")],
    ] {
        let r = upload(&base, &data, &bad);
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
        assert!(
            r.json()["error"]["param"]
                .as_str()
                .unwrap()
                .starts_with("expires_after."),
            "{}",
            r.text()
        );
    }

    // The hour passes (the record says so): the file is gone for readers
    // at once, a batch cannot use it, and the gateway deletes it.
    let rec_path = ws.path().join(format!("api/files/{id}.json"));
    let mut rec: Value = serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
    rec["expires_at"] = json!(rec["created_at"].as_i64().unwrap() - 1);
    std::fs::write(&rec_path, rec.to_string()).unwrap();
    assert_eq!(get(&base, &format!("/v1/files/{id}")).status, 404);
    assert_eq!(get(&base, &format!("/v1/files/{id}/content")).status, 404);
    assert_eq!(create_batch(&base, &id).status, 404);
    assert!(
        wait_for(Duration::from_secs(60), || !rec_path.exists()
            && !ws.path().join(format!("api/files/{id}.data")).exists()),
        "the expired upload was not deleted"
    );
    // Records of earlier gateways (no expires_at) never expire.
    let old = put_file(ws.path(), &[chat_line("b", None)]);
    assert_eq!(get(&base, &format!("/v1/files/{old}")).status, 200);
}

#[test]
fn a_batch_past_its_completion_window_expires_keeping_its_completed_work() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    let (_api, base) = start_api(&ws);
    let file = put_file(&ws, &numbered(5));
    let r = post_json(
        &base,
        "/v1/batches",
        &json!({"input_file_id": file, "endpoint": CHAT, "completion_window": "4s"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let b = r.json();
    let id = b["id"].as_str().unwrap().to_owned();
    assert_eq!(b["expires_at"].as_i64().unwrap(), b["created_at"].as_i64().unwrap() + 4);
    assert!(
        wait_for(Duration::from_secs(30), || count(&ws, "input/ready") == 5),
        "lines not queued"
    );
    // One request completes in time; the other four are still queued when
    // the window passes.
    let j = id.strip_prefix("batch_").unwrap();
    finish(&ws, &format!("{j}_000001"), "done in time");
    let b = wait_status(&base, &id, "expired", Duration::from_secs(30));
    assert!(b["expired_at"].as_i64().unwrap() >= b["expires_at"].as_i64().unwrap());
    assert_eq!(
        b["request_counts"],
        json!({"total": 5, "completed": 1, "failed": 4}),
        "{b}"
    );
    assert_eq!(count(&ws, "input/ready"), 0, "unfinished requests are cancelled");
    let out = content(&base, b["output_file_id"].as_str().expect("an output file"));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["custom_id"], "req-0");
    let errs = content(&base, b["error_file_id"].as_str().expect("an error file"));
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert!(errs.iter().all(|e| e["error"]["code"] == "batch_expired"), "{errs:?}");
    assert_eq!(batch_json(&ws, &id)["expired_at"], b["expired_at"]);
}

#[test]
fn a_batchs_output_expires_after_what_it_asked_from_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    let (_api, base) = start_api(&ws);
    let file = put_file(&ws, &numbered(2));
    let ask = |after: Value| {
        post_json(
            &base,
            "/v1/batches",
            &json!({"input_file_id": file, "endpoint": CHAT, "completion_window": "24h", "output_expires_after": after}),
        )
    };
    let r = ask(json!({"anchor": "created_at", "seconds": 10}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "output_expires_after");
    let r = ask(json!({"anchor": "created_at", "seconds": 3600}));
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let j = id.strip_prefix("batch_").unwrap().to_owned();
    // The refused request queued nothing: only this batch's two lines.
    assert!(wait_for(Duration::from_secs(30), || count(&ws, "input/ready") == 2));
    finish(&ws, &format!("{j}_000001"), "one");
    finish(&ws, &format!("{j}_000002"), "two");
    let b = wait_status(&base, &id, "completed", Duration::from_secs(30));
    let out_id = b["output_file_id"].as_str().unwrap().to_owned();
    let rec = batch_json(&ws, &id);
    assert_eq!(
        rec["output_expires_at"].as_i64().unwrap(),
        rec["completed_at"].as_i64().unwrap() + 3600
    );
    let f = get(&base, &format!("/v1/files/{out_id}")).json();
    assert_eq!(f["expires_at"], rec["output_expires_at"]);
    assert_eq!(content(&base, &out_id).len(), 2);
    // The hour passes (the record says so): the output file is gone.
    let mut rec = rec;
    rec["output_expires_at"] = json!(rec["completed_at"].as_i64().unwrap() - 1);
    std::fs::write(ws.join(format!("api/batches/{id}.json")), rec.to_string()).unwrap();
    assert_eq!(get(&base, &format!("/v1/files/{out_id}/content")).status, 404);
    assert_eq!(get(&base, &format!("/v1/files/{out_id}")).status, 404);
}
