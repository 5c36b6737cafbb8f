//! Audio and vision over HTTP, and the rest of Files: the official `openai`
//! client (tests/py/media_client.py) against the gateway in front of the
//! real daemon on the fixtures (SmolLM2 with the vision or the audio
//! projector, on both engines; the OuteTTS fixture with its vocoder), bad
//! media requests refused before any job exists, and listing and deleting
//! files with the raw client.
//!
//! Needs the model (scripts/fetch-model.sh), the fixtures
//! (scripts/fixtures.sh), the release `nrvnad` and the Python environment
//! (scripts/pyenv.sh); a missing piece fails with the command that makes it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

/// `nrvnad MODEL WS ARGS..`, ready; generation kept short for the
/// random-weight fixtures.
fn daemon(model: &Path, ws: &Path, args: &[&str]) -> Proc {
    start_daemon_with(model, ws, args, &[("NRVNA_PREDICT", "12")])
}

/// Runs a scenario of media_client.py; panics with its output when it fails.
fn py(base: &str, ws: &Path, model: &str, scenario: &str) {
    let t0 = Instant::now();
    let out = Command::new(python())
        .args(["media_client.py", scenario])
        .current_dir(repo_root().join("crates/nrvna-api/tests/py"))
        .env("NRVNA_API_BASE", format!("{base}/v1"))
        .env("NRVNA_API_KEY", KEY)
        .env("NRVNA_MODEL", model)
        .env("NRVNA_WS", ws)
        .env("NRVNA_PICTURE", fixture("picture.png"))
        .output()
        .expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "media_client.py {scenario} failed ({:?})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{scenario} passed in {:.1}s: {}",
        t0.elapsed().as_secs_f64(),
        stdout.trim()
    );
}

#[test]
fn images_in_chat_and_transcriptions_through_the_official_client_on_both_engines() {
    let model = model();
    let vision = fixture("mmproj-vision-fixture.gguf");
    let audio = fixture("mmproj-audio-fixture.gguf");
    for engine in [None, Some("per-job")] {
        let engine_args: Vec<&str> = engine.map(|e| vec!["--engine", e]).unwrap_or_default();
        for (projector, scenario) in [(&vision, "vision"), (&audio, "stt")] {
            let dir = tempfile::tempdir().expect("temp dir");
            let ws = dir.path().join("ws");
            let mut args = vec!["--mmproj", projector.to_str().unwrap()];
            args.extend(&engine_args);
            let _d = daemon(&model, &ws, &args);
            let (_api, base) = start_api(&ws);
            eprint!("engine {}: ", engine.unwrap_or("batched"));
            py(&base, &ws, MODEL_ID, scenario);
        }
    }
}

#[test]
fn speech_through_the_official_client_is_the_jobs_wav() {
    let tts = fixture("tts/OuteTTS-0.2-fixture.gguf");
    let vocoder = fixture("tts/WavTokenizer-fixture.gguf");
    let dir = tempfile::tempdir().expect("temp dir");
    let ws = dir.path().join("ws");
    let _d = daemon(&tts, &ws, &["--vocoder", vocoder.to_str().unwrap()]);
    let (_api, base) = start_api(&ws);
    py(&base, &ws, "OuteTTS-0.2-fixture", "tts");
}

/// A multipart/form-data body of text fields and one file.
fn multipart(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> (String, Vec<u8>) {
    let boundary = "nrvna-test-boundary-7f3a";
    let mut b = Vec::new();
    for (k, v) in fields {
        b.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").bytes());
    }
    if let Some((name, bytes)) = file {
        b.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .bytes(),
        );
        b.extend_from_slice(bytes);
        b.extend(b"\r\n");
    }
    b.extend(format!("--{boundary}--\r\n").bytes());
    (format!("Content-Type: multipart/form-data; boundary={boundary}"), b)
}

fn post_multipart(base: &str, path: &str, fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> Reply {
    let (ct, body) = multipart(fields, file);
    raw(
        base,
        &request(base, "POST", path, Some(KEY), &[&ct], Some(&body)),
        Duration::from_secs(30),
    )
    .expect("a reply")
}

fn delete(base: &str, path: &str) -> Reply {
    raw(
        base,
        &request(base, "DELETE", path, Some(KEY), &[], None),
        Duration::from_secs(30),
    )
    .expect("a reply")
}

fn jobs_in(ws: &Path) -> usize {
    ["input/writing", "input/ready", "processing", "output", "failed"]
        .iter()
        .map(|d| std::fs::read_dir(ws.join(d)).map(|r| r.count()).unwrap_or(0))
        .sum()
}

fn expect_400(r: &Reply, param: &str, says: &str) {
    assert_eq!(r.status, 400, "{}", r.text());
    let e = &r.json()["error"];
    assert_eq!(e["param"], param, "{e}");
    assert!(e["message"].as_str().unwrap_or("").contains(says), "{e}");
}

#[test]
fn bad_media_requests_are_400s_that_name_the_field_and_publish_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ws = dir.path().join("ws");
    let (_api, base) = start_api(&ws);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let chat = |url: String| {
        json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": {"url": url}}]}]})
    };
    let at = "messages[0].content[1].image_url";
    for (url, says) in [
        ("data:image/png;base64,%%%".to_owned(), "does not decode"),
        ("https://example.com/cat.png".to_owned(), "not fetched"),
        (
            format!("data:image/png;base64,{}", b64(b"GIF? no, plain text")),
            "is not png, jpg",
        ),
        ("ftp://example.com/cat.png".to_owned(), "not a data URI"),
        ("file-00001796485792931905_11540_000004".to_owned(), "no file with id"),
    ] {
        expect_400(&post_json(&base, "/v1/chat/completions", &chat(url)), at, says);
    }
    // Vision uploads must be images; a batch file is no image.
    let r = post_multipart(&base, "/v1/files", &[("purpose", "vision")], Some(("cat.png", b"meow")));
    expect_400(&r, "file", "a vision file must be an image");
    let batch_file = upload(&base, "b.jsonl", b"{}\n");
    let r = post_json(&base, "/v1/chat/completions", &chat(batch_file));
    expect_400(&r, at, "was not uploaded with purpose \"vision\"");

    let wav = {
        let mut w = b"RIFF\x24\0\0\0WAVEfmt ".to_vec();
        w.extend([16, 0, 0, 0, 1, 0, 1, 0, 0x80, 0x3e, 0, 0, 0, 0x7d, 0, 0, 2, 0, 16, 0]);
        w.extend(b"data\0\0\0\0");
        w
    };
    let t = "/v1/audio/transcriptions";
    let r = post_multipart(
        &base,
        t,
        &[("model", "m"), ("response_format", "vtt")],
        Some(("a.wav", &wav)),
    );
    expect_400(&r, "response_format", "json or text");
    let r = post_multipart(&base, t, &[("model", "m")], Some(("notes.txt", b"just some text")));
    expect_400(&r, "file", "\"notes.txt\" is not wav, mp3 or flac");
    let r = post_multipart(&base, t, &[("model", "m")], None);
    expect_400(&r, "file", "file is missing");
    let r = post_multipart(
        &base,
        t,
        &[("model", "m"), ("language", "en; drop")],
        Some(("a.wav", &wav)),
    );
    expect_400(&r, "language", "language code");

    let s = "/v1/audio/speech";
    let speech = |extra: Value| {
        let mut b = json!({"model": "m", "input": "Hello", "voice": "alloy"});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        post_json(&base, s, &b)
    };
    expect_400(
        &speech(json!({"response_format": "mp3"})),
        "response_format",
        "WAV only",
    );
    expect_400(&speech(json!({"speed": 2.0})), "speed", "speed 1.0 only");
    expect_400(&speech(json!({"input": ""})), "input", "empty");
    expect_400(&speech(json!({"voice": null})), "voice", "daemon's voice");
    // Speech takes JSON only.
    let req = request(
        &base,
        "POST",
        s,
        Some(KEY),
        &["Content-Type: text/plain"],
        Some(br#"{"model":"m","input":"Hi","voice":"alloy"}"#),
    );
    let r = raw(&base, &req, Duration::from_secs(30)).unwrap();
    assert_eq!(r.status, 415, "{}", r.text());

    assert_eq!(jobs_in(&ws), 0, "a refused request published a job");
}

fn upload(base: &str, name: &str, body: &[u8]) -> String {
    let r = post_multipart(base, "/v1/files", &[("purpose", "batch")], Some((name, body)));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

fn ids(r: &Reply) -> Vec<String> {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn files_are_listed_in_order_by_page_and_deleted_record_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ws = dir.path().join("ws");
    let (_api, base) = start_api(&ws);
    let line = |i: usize| {
        format!(
            "{{\"custom_id\":\"r{i}\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\
             \"body\":{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi {i}\"}}]}}}}\n"
        )
    };
    let uploaded: Vec<String> = (0..3)
        .map(|i| upload(&base, &format!("f{i}.jsonl"), line(i).as_bytes()))
        .collect();

    let newest_first: Vec<String> = uploaded.iter().rev().cloned().collect();
    assert_eq!(ids(&get(&base, "/v1/files")), newest_first);
    assert_eq!(ids(&get(&base, "/v1/files?order=asc")), uploaded);
    let page = get(&base, "/v1/files?limit=2");
    assert_eq!(ids(&page), newest_first[..2]);
    let p = page.json();
    assert_eq!(
        (p["object"].as_str(), p["has_more"].as_bool()),
        (Some("list"), Some(true))
    );
    assert_eq!(p["last_id"], newest_first[1]);
    let rest = get(&base, &format!("/v1/files?limit=2&after={}", newest_first[1]));
    assert_eq!(ids(&rest), newest_first[2..]);
    assert_eq!(rest.json()["has_more"], false);
    assert_eq!(
        ids(&get(&base, &format!("/v1/files?order=asc&after={}", uploaded[0]))),
        uploaded[1..]
    );
    assert_eq!(ids(&get(&base, "/v1/files?purpose=batch")).len(), 3);
    assert!(ids(&get(&base, "/v1/files?purpose=vision")).is_empty());
    for q in ["limit=0", "limit=10001", "order=up", "after=nope"] {
        assert_eq!(get(&base, &format!("/v1/files?{q}")).status, 400, "{q}");
    }

    // Deleted: gone from the list, its record and data gone from the disk.
    let gone = &uploaded[1];
    let r = delete(&base, &format!("/v1/files/{gone}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"id": gone, "object": "file", "deleted": true}));
    assert!(!ws.join(format!("api/files/{gone}.json")).exists());
    assert!(!ws.join(format!("api/files/{gone}.data")).exists());
    assert_eq!(get(&base, &format!("/v1/files/{gone}")).status, 404);
    assert_eq!(get(&base, &format!("/v1/files/{gone}/content")).status, 404);
    assert_eq!(delete(&base, &format!("/v1/files/{gone}")).status, 404);
    assert_eq!(
        ids(&get(&base, "/v1/files?order=asc")),
        [uploaded[0].clone(), uploaded[2].clone()]
    );
    // A record whose data a crash left behind alone: the data is an orphan
    // nobody lists; a record without data is still deleted.
    std::fs::remove_file(ws.join(format!("api/files/{}.data", uploaded[2]))).unwrap();
    assert_eq!(delete(&base, &format!("/v1/files/{}", uploaded[2])).status, 200);

    // A batch's output and error files cannot be deleted.
    let r = delete(&base, "/v1/files/file-batch_1700000000000_1_000001-output");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("cannot be deleted"), "{}", r.text());

    // The input of a batch still publishing its lines (held back by a queue
    // limit of 1, no daemon) is in use until the batch is cancelled.
    std::fs::write(ws.join(".nrvna-limits.json"), "{\"max_queued\": 1}\n").unwrap();
    let input = upload(
        &base,
        "three.jsonl",
        format!("{}{}{}", line(1), line(2), line(3)).as_bytes(),
    );
    let b = post_json(
        &base,
        "/v1/batches",
        &json!({"input_file_id": input, "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
    );
    assert_eq!(b.status, 200, "{}", b.text());
    let batch = b.json()["id"].as_str().unwrap().to_owned();
    assert!(
        wait_for(Duration::from_secs(30), || jobs_in(&ws) == 1),
        "the batch did not publish its first line"
    );
    let r = delete(&base, &format!("/v1/files/{input}"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "file_in_use", "{}", r.text());
    assert!(r.text().contains(&batch), "{}", r.text());
    assert!(ws.join(format!("api/files/{input}.json")).exists());
    assert_eq!(
        post_json(&base, &format!("/v1/batches/{batch}/cancel"), &json!({})).status,
        200
    );
    assert!(
        wait_for(Duration::from_secs(30), || get(&base, &format!("/v1/batches/{batch}"))
            .json()["status"]
            == "cancelled"),
        "the batch was not cancelled"
    );
    assert_eq!(delete(&base, &format!("/v1/files/{input}")).status, 200);
}
