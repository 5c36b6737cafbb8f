//! Webhooks end to end: `wrk --notify` jobs, background responses and
//! gateway batches delivered by `nrvnad` and `nrvna-api` to a receiver
//! (tests/py/webhook_receiver.py) that verifies every delivery with the
//! official `openai` client's `webhooks.unwrap` and PyPI's
//! `standardwebhooks`; a receiver down for 30 s, kill -9 of the delivering
//! daemon and gateway, and signatures that must be refused.
//!
//! Needs the model (scripts/fetch-model.sh), the release binaries (nrvnad,
//! wrk: `cargo build --release`) and the Python environment
//! (scripts/pyenv.sh); scripts/test.sh provides all three.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nrvna_core::webhook::{Entry, Secret};
use nrvna_core::{JobId, Submission, Workspace};
use serde_json::{json, Value};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_VAR: (&str, &str) = ("NRVNA_WEBHOOK_SECRET", SECRET);

/// The receiver, killed when dropped.
struct Receiver {
    _proc: Proc,
    port: u16,
}

fn receiver(python: &Path, log: &Path, port: u16, delay: f64) -> Receiver {
    let mut child = Command::new(python)
        .arg(repo_root().join("crates/nrvna-api/tests/py/webhook_receiver.py"))
        .args(["--secret", SECRET, "--log"])
        .arg(log)
        .args(["--port", &port.to_string(), "--delay", &delay.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting webhook_receiver.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("reading the receiver's port");
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("receiver printed {line:?}"));
    Receiver {
        _proc: Proc { child },
        port,
    }
}

/// Every line the receiver logged.
fn receipts(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The distinct webhook-ids both verifiers accepted.
fn accepted(log: &Path) -> HashSet<String> {
    receipts(log)
        .iter()
        .filter(|r| r["ok"] == true)
        .filter_map(|r| r["webhook_id"].as_str().map(str::to_owned))
        .collect()
}

fn wrk_bin() -> PathBuf {
    let p = nrvnad_bin().with_file_name("wrk");
    assert!(p.exists(), "{} is missing: cargo build --release -p wrk", p.display());
    p
}

/// `wrk WS ARGS..`: the job id it printed.
fn wrk(ws: &Path, args: &[&str]) -> String {
    let out = clean(&mut Command::new(wrk_bin()))
        .arg(ws)
        .args(args)
        .output()
        .expect("running wrk");
    assert!(
        out.status.success(),
        "wrk {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn shelf(ws: &Path, s: &str) -> Vec<Entry> {
    let dir = ws.join(".nrvna-webhooks").join(s);
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("evt_") && n.ends_with(".json") {
            if let Ok(b) = std::fs::read(e.path()) {
                v.push(serde_json::from_slice(&b).expect("an outbox entry"));
            }
        }
    }
    v
}

fn finished(ws: &Path) -> usize {
    ["output", "failed"]
        .iter()
        .map(|d| std::fs::read_dir(ws.join(d)).map_or(0, |r| r.count()))
        .sum()
}

/// Checks that every job got exactly one webhook-id and that each event
/// is in sent/; returns (receipts, duplicates, receipts beyond the
/// attempts recorded: a deliverer killed between sending and recording).
fn check_exactly_once_per_id(ws: &Path, log: &Path, jobs: &[String]) -> (usize, usize, usize) {
    let ok: Vec<Value> = receipts(log).into_iter().filter(|r| r["ok"] == true).collect();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    let mut id_of_job: HashMap<String, HashSet<String>> = HashMap::new();
    for r in &ok {
        let id = r["webhook_id"].as_str().unwrap().to_owned();
        assert_eq!(r["event_id"].as_str(), Some(id.as_str()), "body id = webhook-id: {r}");
        *per_id.entry(id.clone()).or_default() += 1;
        id_of_job
            .entry(r["data_id"].as_str().unwrap().to_owned())
            .or_default()
            .insert(id);
    }
    for j in jobs {
        let ids = id_of_job
            .get(j)
            .unwrap_or_else(|| panic!("job {j}: no webhook received (lost)"));
        assert_eq!(ids.len(), 1, "job {j}: several webhook-ids {ids:?}");
    }
    let sent: HashMap<String, Entry> = shelf(ws, "sent").into_iter().map(|e| (e.id.clone(), e)).collect();
    let mut unrecorded = 0;
    for (id, n) in &per_id {
        let e = sent.get(id).unwrap_or_else(|| panic!("{id} received but not in sent/"));
        unrecorded += n.saturating_sub(e.attempts.len());
    }
    (ok.len(), ok.len() - per_id.len(), unrecorded)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Seconds from each job's end (meta.json `completed_at`) to the receipt
/// of its webhook.
fn end_to_receipt(ws: &Path, log: &Path, jobs: &[String]) -> Vec<f64> {
    // The first receipt of each (a retry's duplicate comes later).
    let got: HashMap<String, f64> = receipts(log)
        .into_iter()
        .rev()
        .filter(|r| r["ok"] == true)
        .map(|r| {
            (
                r["data_id"].as_str().unwrap().to_owned(),
                r["received_at"].as_f64().unwrap(),
            )
        })
        .collect();
    jobs.iter()
        .filter_map(|j| {
            let meta: Value = ["output", "failed"]
                .iter()
                .find_map(|d| std::fs::read(ws.join(d).join(j).join("meta.json")).ok())
                .map(|b| serde_json::from_slice(&b).unwrap())?;
            let end = nrvna_core::time::parse_iso8601_micros(meta["completed_at"].as_str()?)? as f64 / 1e6;
            Some(got.get(j)? - end)
        })
        .collect()
}

#[test]
fn hundred_notify_jobs_on_the_real_model_survive_a_receiver_down_for_30s() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let (ws, log) = (dir.path().join("ws"), dir.path().join("receipts.jsonl"));
    let rcv = receiver(&python, &log, 0, 0.0);
    let port = rcv.port;
    let url = format!("--notify=http://127.0.0.1:{port}/hooks/jobs");
    let _d = start_daemon_with(
        &model(),
        &ws,
        &["--workers", "4", "--webhook-backoff-max", "4s"],
        &[SECRET_VAR],
    );
    let mut jobs = Vec::new();
    for i in 0..50 {
        jobs.push(wrk(&ws, &[&url, "--max-tokens", "4", &format!("count to {i}")]));
    }
    assert!(
        wait_for(Duration::from_secs(180), || accepted(&log).len() >= 50),
        "only {} of the first 50 delivered",
        accepted(&log).len()
    );
    let first: Vec<String> = jobs.clone();
    drop(rcv);
    let down = Instant::now();
    for i in 50..100 {
        jobs.push(wrk(&ws, &[&url, "--max-tokens", "4", &format!("count to {i}")]));
    }
    assert!(wait_for(Duration::from_secs(180), || finished(&ws) >= 100));
    // The outage lasts 30 s (the scenario, not a wait for a condition).
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
    // Every event is recorded and was tried (the last jobs may have ended
    // just now).
    assert!(wait_for(Duration::from_secs(30), || {
        let w = shelf(&ws, "outbox");
        w.len() + shelf(&ws, "sent").len() == 100 && w.iter().all(|e| !e.attempts.is_empty())
    }));
    let waiting = shelf(&ws, "outbox");
    assert!(!waiting.is_empty(), "nothing waited for the receiver while it was down");
    let odd: Vec<&Entry> = waiting
        .iter()
        .filter(|e| e.attempts.is_empty() || e.attempts.iter().any(|a| a.error.is_none()))
        .collect();
    assert!(odd.is_empty(), "entries waiting without a failed try each: {odd:#?}");
    let outage_s = down.elapsed().as_secs_f64();
    let _rcv = receiver(&python, &log, port, 0.0);
    let up = Instant::now();
    assert!(
        wait_for(Duration::from_secs(120), || accepted(&log).len() >= 100),
        "{} of 100 delivered after the receiver came back",
        accepted(&log).len()
    );
    let catch_up_s = up.elapsed().as_secs_f64();
    assert!(wait_for(Duration::from_secs(30), || shelf(&ws, "outbox").is_empty()));
    assert!(shelf(&ws, "dead").is_empty());
    let (n, dups, unrecorded) = check_exactly_once_per_id(&ws, &log, &jobs);
    // Nothing was killed here: every receipt is a recorded attempt.
    assert_eq!(unrecorded, 0);
    let sent = shelf(&ws, "sent");
    let failed_tries: usize = sent
        .iter()
        .map(|e| e.attempts.iter().filter(|a| a.error.is_some()).count())
        .sum();
    let retried = sent.iter().filter(|e| e.attempts.len() > 1).count();
    assert!(retried >= 1);
    assert!(receipts(&log)
        .iter()
        .all(|r| r["ok"] == true && r["type"] == "job.done"));
    let lat = end_to_receipt(&ws, &log, &first);
    assert_eq!(lat.len(), 50);
    eprintln!(
        "webhooks: 100 jobs, receiver down {outage_s:.1} s: {n} receipts, {dups} duplicates, \
         {retried} events retried ({failed_tries} failed tries), all delivered {catch_up_s:.1} s after it came back; \
         job end -> receipt while up: p50 {:.1} ms, max {:.1} ms (shared machine)",
        median(lat.clone()) * 1e3,
        lat.iter().cloned().fold(0.0, f64::max) * 1e3
    );
}

#[test]
fn kill_9_of_the_delivering_daemon_and_gateway_loses_no_event() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let (ws, log) = (dir.path().join("ws"), dir.path().join("receipts.jsonl"));
    let rcv = receiver(&python, &log, 0, 0.05);
    let hook = format!("http://127.0.0.1:{}/hooks", rcv.port);
    let daemon_args = ["--engine", "echo", "--webhook", &hook, "--webhook-backoff-max", "1s"];
    let mut d1 = start_daemon_with(&model(), &ws, &daemon_args, &[SECRET_VAR]);
    // The gateway waits for deliver.lock while the daemon delivers.
    let mut cmd = api_command(&ws, &["--webhook", &hook, "--webhook-backoff-max", "1s"]);
    cmd.env(SECRET_VAR.0, SECRET_VAR.1);
    let (mut gw, _base) = start(cmd);
    let mut jobs = Vec::new();
    for i in 0..30 {
        jobs.push(wrk(&ws, &["--notify", "--", &format!("job {i}")]));
    }
    assert!(wait_for(Duration::from_secs(60), || accepted(&log).len() >= 5));
    d1.child.kill().unwrap(); // SIGKILL
    d1.child.wait().unwrap();
    let at_kill = accepted(&log).len();
    // No daemon runs: the jobs it finished stay as they are (one it was
    // running waits for the next daemon), and only the gateway can deliver
    // their events now.
    let done = finished(&ws);
    assert!(
        done > at_kill,
        "the daemon had delivered all it finished; kill it sooner"
    );
    assert!(
        wait_for(Duration::from_secs(60), || accepted(&log).len() >= done),
        "the gateway did not take over: {} of {done} after the daemon's kill at {at_kill}",
        accepted(&log).len()
    );
    for i in 30..60 {
        jobs.push(wrk(&ws, &["--notify", "--", &format!("job {i}")]));
    }
    let _d2 = start_daemon_with(&model(), &ws, &daemon_args, &[SECRET_VAR]);
    assert!(wait_for(Duration::from_secs(60), || accepted(&log).len() >= 40));
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    let at_gw_kill = accepted(&log).len();
    assert!(
        wait_for(Duration::from_secs(90), || accepted(&log).len() >= 60),
        "{} of 60 after killing the gateway at {at_gw_kill}",
        accepted(&log).len()
    );
    assert!(wait_for(Duration::from_secs(30), || shelf(&ws, "outbox").is_empty()));
    let (n, dups, unrecorded) = check_exactly_once_per_id(&ws, &log, &jobs);
    // One delivery at a time: each kill can lose the record of at most the
    // one in flight, which its successor then sends again.
    assert!(unrecorded <= 2, "{unrecorded} receipts beyond the recorded attempts");
    eprintln!(
        "webhooks: kill -9 of the daemon (at {at_kill} receipts) and of the gateway (at {at_gw_kill}): \
         60 of 60 events delivered, {n} receipts, {dups} duplicates ({unrecorded} sent again after a kill)"
    );
}

/// A background response's job, published as the responses module does
/// (meta extras `response_id` = `resp_<job id>`, `background`).
fn publish_response(ws: &Workspace, prompt: &str, max_tokens: u32, stop: &[&str]) -> String {
    let id = JobId::generate();
    let mut s = Submission::text(prompt);
    s.params.max_tokens = Some(max_tokens);
    s.params.stop = (!stop.is_empty()).then(|| stop.iter().map(|s| s.to_string()).collect());
    s.extra_meta.insert("response_id".into(), json!(format!("resp_{id}")));
    s.extra_meta.insert("background".into(), json!(true));
    s.stage_as(ws, &id).unwrap().publish(ws).unwrap();
    id.to_string()
}

fn upload_batch(base: &str, n: usize) -> String {
    let b = "----webhooks-test";
    let mut lines = String::new();
    for i in 0..n {
        let body = json!({"messages": [{"role": "user", "content": format!("say {i}")}], "max_tokens": 4});
        lines.push_str(
            &json!({"custom_id": format!("r{i}"), "method": "POST", "url": "/v1/chat/completions", "body": body})
                .to_string(),
        );
        lines.push('\n');
    }
    let body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{b}\r\n\
         Content-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\r\n{lines}\r\n--{b}--\r\n"
    );
    let ct = format!("Content-Type: multipart/form-data; boundary={b}");
    let r = raw(
        base,
        &request(base, "POST", "/v1/files", Some(KEY), &[&ct], Some(body.as_bytes())),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let file = r.json()["id"].as_str().unwrap().to_owned();
    let r = post_json(
        base,
        "/v1/batches",
        &json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

#[test]
fn background_responses_and_gateway_batches_send_their_events() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let (ws_path, log) = (dir.path().join("ws"), dir.path().join("receipts.jsonl"));
    let rcv = receiver(&python, &log, 0, 0.0);
    let hook = format!("http://127.0.0.1:{}/hooks", rcv.port);
    let mut cmd = api_command(&ws_path, &["--webhook", &hook]);
    cmd.env(SECRET_VAR.0, SECRET_VAR.1);
    let (_gw, base) = start(cmd);
    let ws = Workspace::open(&ws_path).unwrap();
    // Before any daemon: a response cancelled while queued, a batch cancelled.
    let cancelled = publish_response(&ws, "never runs", 4, &[]);
    let c = nrvna_core::cancel::cancel_job(&ws, &JobId::parse(&cancelled).unwrap()).unwrap();
    assert_eq!(c, nrvna_core::cancel::Cancelled::Dequeued);
    let b_cancelled = upload_batch(&base, 2);
    let r = post_json(&base, &format!("/v1/batches/{b_cancelled}/cancel"), &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let _d = start_daemon_with(&model(), &ws_path, &["--workers", "2"], &[]);
    // Stops at the first blank or common letter (finish_reason stop):
    // completed; cut at its one token (finish_reason length): incomplete.
    let completed = publish_response(
        &ws,
        "Say hello to the world.",
        64,
        &[" ", "e", "a", "o", "i", ".", "\n"],
    );
    let incomplete = publish_response(&ws, "Tell me a long story.", 1, &[]);
    let b_done = upload_batch(&base, 3);
    let want: HashSet<(String, String)> = [
        ("response.cancelled", format!("resp_{cancelled}")),
        ("response.completed", format!("resp_{completed}")),
        ("response.incomplete", format!("resp_{incomplete}")),
        ("batch.cancelled", b_cancelled.clone()),
        ("batch.completed", b_done.clone()),
    ]
    .into_iter()
    .map(|(t, s)| (t.to_owned(), s))
    .collect();
    let got = || -> HashSet<(String, String)> {
        receipts(&log)
            .iter()
            .filter(|r| r["ok"] == true)
            .map(|r| {
                (
                    r["type"].as_str().unwrap().to_owned(),
                    r["data_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert!(
        wait_for(Duration::from_secs(120), || got() == want),
        "got {:?}, want {want:?}",
        got()
    );
    // The openai client parsed each into its typed event.
    for r in receipts(&log) {
        assert_eq!(r["openai_type"], r["type"], "{r}");
    }
    // Batch usage and request_counts as OpenAI reports them.
    let b = get(&base, &format!("/v1/batches/{b_done}")).json();
    assert_eq!(b["request_counts"], json!({"total": 3, "completed": 3, "failed": 0}));
    let u = &b["usage"];
    let (i, o) = (
        u["input_tokens"].as_u64().unwrap(),
        u["output_tokens"].as_u64().unwrap(),
    );
    assert!(i > 0 && o > 0, "{u}");
    assert_eq!(u["total_tokens"].as_u64(), Some(i + o));
    assert!(u["input_tokens_details"]["cached_tokens"].is_u64());
    assert_eq!(u["output_tokens_details"]["reasoning_tokens"], 0);
    let mut sum = (0, 0);
    for e in std::fs::read_dir(ws_path.join("output")).unwrap().flatten() {
        let m: Value = serde_json::from_slice(&std::fs::read(e.path().join("meta.json")).unwrap()).unwrap();
        if m["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == b_done.as_str()))
        {
            sum.0 += m["prompt_tokens"].as_u64().unwrap();
            sum.1 += m["generated_tokens"].as_u64().unwrap();
        }
    }
    assert_eq!((i, o), sum, "usage sums the batch's jobs");
    // The official client's Batch type takes the object as it is.
    let parsed = Command::new(&python)
        .args([
            "-c",
            "import sys; from openai.types import Batch; b = Batch.model_validate_json(sys.argv[1]); \
             print(b.usage.total_tokens, b.request_counts.completed)",
            &b.to_string(),
        ])
        .output()
        .unwrap();
    assert!(parsed.status.success(), "{}", String::from_utf8_lossy(&parsed.stderr));
    assert_eq!(String::from_utf8_lossy(&parsed.stdout).trim(), format!("{} 3", i + o));
    let bc = get(&base, &format!("/v1/batches/{b_cancelled}")).json();
    assert_eq!(bc["status"], "cancelled");
    assert!(bc["usage"].is_object(), "{bc}");
}

#[test]
fn the_receiver_refuses_bad_signatures_with_both_verifiers() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("receipts.jsonl");
    let rcv = receiver(&python, &log, 0, 0.0);
    let base = format!("http://127.0.0.1:{}", rcv.port);
    let body = r#"{"id":"evt_1","object":"event","created_at":1,"type":"batch.completed","data":{"id":"batch_x"}}"#;
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let good = Secret::parse(SECRET).unwrap().sign("evt_1", ts, body);
    let wrong = Secret::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        .unwrap()
        .sign("evt_1", ts, body);
    let post = |sig: Option<&str>, body: &str| {
        let mut h = vec![
            "Content-Type: application/json".to_owned(),
            "webhook-id: evt_1".to_owned(),
            format!("webhook-timestamp: {ts}"),
        ];
        if let Some(s) = sig {
            h.push(format!("webhook-signature: {s}"));
        }
        let h: Vec<&str> = h.iter().map(String::as_str).collect();
        raw(
            &base,
            &request(&base, "POST", "/hook", None, &h, Some(body.as_bytes())),
            Duration::from_secs(30),
        )
        .unwrap()
        .status
    };
    assert_eq!(post(Some(&good), body), 200);
    assert_eq!(post(Some(&wrong), body), 400, "wrong secret");
    assert_eq!(
        post(Some(&good), &body.replace("batch_x", "batch_y")),
        400,
        "tampered body"
    );
    assert_eq!(post(None, body), 400, "no signature");
    let r = receipts(&log);
    assert_eq!(r.len(), 4);
    assert!(r[0]["ok"] == true);
    for bad in &r[1..] {
        assert_ne!(bad["openai"], "ok", "{bad}");
        assert_ne!(bad["standardwebhooks"], "ok", "{bad}");
    }
}
