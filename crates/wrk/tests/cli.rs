//! Spawns the real `wrk` binary on a fresh temporary workspace per test:
//! what it prints, what it publishes, and that every refusal exits 1 with
//! nothing left in input/ready/ or input/writing/.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nrvna_core::JobType;
use nrvna_core::{JobId, Meta};
use serde_json::{json, Value};

struct Ws {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn ws() -> Ws {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ws");
    Ws { _dir: dir, root }
}

/// Runs wrk with `args` after the workspace, feeding `stdin` when given
/// (otherwise stdin is /dev/null, which is not a terminal).
fn wrk(ws: &Path, args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wrk"));
    cmd.arg(ws).args(args).env("NRVNA_FSYNC", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn wrk");
    if let Some(bytes) = stdin {
        let mut si = child.stdin.take().unwrap();
        // The child may refuse before reading; a broken pipe here is fine.
        let _ = si.write_all(bytes);
    }
    child.wait_with_output().unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Asserts a successful submission and returns the job's directory.
fn published(ws: &Path, out: &Output) -> PathBuf {
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.ends_with('\n') && stdout.lines().count() == 1, "{stdout:?}");
    let id = JobId::parse(stdout.trim_end()).expect("stdout is a job id");
    let dir = ws.join("input/ready").join(id.as_str());
    assert!(dir.is_dir(), "{} is not queued", id);
    assert!(entries(&ws.join("input/writing")).is_empty());
    dir
}

fn assert_refused(ws: &Path, out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    assert!(stderr.starts_with("wrk: "), "{stderr}");
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "stderr {stderr:?} should mention {needle:?}"
    );
    assert!(entries(&ws.join("input/ready")).is_empty(), "something was published");
    assert!(entries(&ws.join("input/writing")).is_empty(), "staging left behind");
}

fn meta(dir: &Path) -> Meta {
    Meta::parse(&fs::read(dir.join("meta.json")).unwrap()).unwrap()
}

fn read(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name)).unwrap()
}

#[test]
fn prints_a_valid_id_and_queues_prompt_and_meta() {
    let w = ws();
    let out = wrk(&w.root, &["hello", "big  world"], None, &[]);
    let dir = published(&w.root, &out);
    assert_eq!(read(&dir, "prompt.txt"), "hello big  world");
    let m = meta(&dir);
    assert_eq!(m.mode, Some(JobType::Text));
    assert!(m.submitted_at.as_deref().unwrap().ends_with('Z'));
    assert!(!dir.join("params.json").exists(), "no flags, no params.json");
    assert!(out.stderr.is_empty());
}

#[test]
fn reads_stdin_with_dash_or_without_words_and_strips_one_newline() {
    let w = ws();
    for (args, input, want) in [
        (&["-"][..], &b"from dash\n"[..], "from dash"),
        (&[][..], b"piped\r\n", "piped"),
        (&[][..], b"two\n\n", "two\n"),
        (&["-"][..], b"no newline", "no newline"),
    ] {
        let out = wrk(&w.root, args, Some(input), &[]);
        let dir = published(&w.root, &out);
        assert_eq!(read(&dir, "prompt.txt"), want);
        fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn tags_parent_and_sampling_flags_land_in_meta_and_params() {
    let w = ws();
    let out = wrk(
        &w.root,
        &[
            "--tag",
            "a",
            "--tag",
            "b-2",
            "--parent",
            "17_3_000001",
            "--system",
            "Be terse.",
            "--temp",
            "0.25",
            "--top-k",
            "40",
            "--top-p",
            "0.9",
            "--min-p",
            "0.05",
            "--repeat-penalty",
            "1.1",
            "--seed",
            "42",
            "--max-tokens",
            "64",
            "--stop",
            "END",
            "--stop",
            "\n\n",
            "--timeout",
            "30",
            "--priority",
            "high",
            "write",
            "it",
        ],
        None,
        &[],
    );
    let dir = published(&w.root, &out);
    let m = meta(&dir);
    assert_eq!(m.tags, ["a", "b-2"]);
    assert_eq!(m.parent.as_ref().unwrap().as_str(), "17_3_000001");
    let p: Value = serde_json::from_str(&read(&dir, "params.json")).unwrap();
    assert_eq!(
        p,
        json!({
            "system": "Be terse.", "temp": 0.25, "top_k": 40, "top_p": 0.9,
            "min_p": 0.05, "repeat_penalty": 1.1, "seed": 42, "max_tokens": 64,
            "stop": ["END", "\n\n"], "timeout_s": 30.0, "priority": "high"
        })
    );
}

#[test]
fn embed_schema_and_grammar_jobs() {
    let w = ws();
    let dir = published(&w.root, &wrk(&w.root, &["--embed", "some text"], None, &[]));
    assert_eq!(read(&dir, "type.txt").trim(), "embed");
    assert_eq!(meta(&dir).mode, Some(JobType::Embed));

    let files = tempfile::tempdir().unwrap();
    let schema = files.path().join("s.json");
    let schema_text = r#"{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}"#;
    fs::write(&schema, schema_text).unwrap();
    let out = wrk(
        &w.root,
        &["--json-schema", schema.to_str().unwrap(), "a person"],
        None,
        &[],
    );
    let dir = published(&w.root, &out);
    assert_eq!(read(&dir, "schema.json"), schema_text);
    assert_eq!(meta(&dir).output_format.as_deref(), Some("json_schema"));
    assert_eq!(
        read(&dir, "grammar.gbnf"),
        nrvna_schema::json_schema_to_gbnf(&serde_json::from_str(schema_text).unwrap()).unwrap(),
        "the effective grammar beside the schema"
    );

    let grammar = files.path().join("g.gbnf");
    fs::write(&grammar, "root ::= \"yes\" | \"no\"\n").unwrap();
    let out = wrk(
        &w.root,
        &["--grammar", grammar.to_str().unwrap(), "yes or no?"],
        None,
        &[],
    );
    let dir = published(&w.root, &out);
    assert_eq!(read(&dir, "grammar.gbnf"), "root ::= \"yes\" | \"no\"\n");
    assert_eq!(meta(&dir).output_format.as_deref(), Some("gbnf"));
}

/// Regression (issue 9): `wrk --json-schema` wrote schema.json without
/// grammar.gbnf, and the C++ daemon fails every such job. The grammar is
/// written beside the schema; a schema no grammar can express is refused
/// with the place and the reason, and nothing is published.
#[test]
fn json_schema_jobs_carry_their_grammar_or_are_refused_with_the_reason() {
    let w = ws();
    let files = tempfile::tempdir().unwrap();
    let schema = files.path().join("s.json");
    fs::write(
        &schema,
        r##"{"type":"object","properties":{"when":{"type":"string","format":"date"},"n":{"type":"integer","minimum":1,"maximum":9},"tags":{"type":"array","items":{"$ref":"#/$defs/tag"},"maxItems":3}},"required":["when"],"$defs":{"tag":{"enum":["a","b"]}}}"##,
    )
    .unwrap();
    let dir = published(
        &w.root,
        &wrk(&w.root, &["--json-schema", schema.to_str().unwrap(), "x"], None, &[]),
    );
    let g = read(&dir, "grammar.gbnf");
    assert!(g.starts_with("root ::= "), "{g}");
    assert!(g.contains("\"\\\"when\\\"\""), "the property is in the grammar: {g}");

    let w = ws();
    for (body, needle) in [
        (r#"{"type":"number","maximum":2.5}"#, "whole number"),
        (r#"{"type":"string","pattern":"[a-z]+"}"#, "anchored"),
        (
            r#"{"type":"array","items":{"type":"string"},"uniqueItems":true}"#,
            "uniqueItems",
        ),
        (
            r#"{"type":"object","properties":{"a":{"not":{"type":"null"}}}}"#,
            "#/properties/a",
        ),
    ] {
        fs::write(&schema, body).unwrap();
        let out = wrk(&w.root, &["--json-schema", schema.to_str().unwrap(), "x"], None, &[]);
        assert_refused(&w.root, &out, needle);
        assert_refused(&w.root, &out, "grammar");
    }
}

/// Regression (issue 9): a whitespace-only prompt is a valid text prompt
/// (the contract; the C++ wrk accepts it); it is published as given.
#[test]
fn a_whitespace_only_prompt_is_published_verbatim() {
    let w = ws();
    let dir = published(&w.root, &wrk(&w.root, &["   "], None, &[]));
    assert_eq!(read(&dir, "prompt.txt"), "   ");
    let dir = published(&w.root, &wrk(&w.root, &["-"], Some(b" \t \n"), &[]));
    assert_eq!(read(&dir, "prompt.txt"), " \t ");
}

/// Regression (issue 9): `wrk -v` was refused; the C++ tools print their
/// version with -v and --version.
#[test]
fn dash_v_prints_the_version() {
    for flag in ["-v", "--version", "-V"] {
        let out = Command::new(env!("CARGO_BIN_EXE_wrk")).arg(flag).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim_end(),
            concat!("wrk ", env!("CARGO_PKG_VERSION"))
        );
    }
}

/// Arguments, stdin, environment, and a word the error message must contain.
type Case<'a> = (Vec<&'a str>, Option<&'a [u8]>, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn every_refusal_exits_1_and_publishes_nothing() {
    let files = tempfile::tempdir().unwrap();
    let f = |name: &str, body: &[u8]| {
        let p = files.path().join(name);
        fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let good_schema = f("good.json", br#"{"type":"object"}"#);
    let not_json = f("bad.json", b"{type: object}");
    let not_schema = f("notschema.json", br#"{"type":"objekt"}"#);
    let empty = f("empty.json", b"");
    let big = f("big.gbnf", &vec![b'a'; 256 * 1024 + 1]);
    let link = files.path().join("link.json");
    std::os::unix::fs::symlink(&good_schema, &link).unwrap();
    let link = link.to_str().unwrap().to_owned();
    let grammar = f("g.gbnf", b"root ::= \"x\"");
    let bad_batch = f(
        "bad.jsonl",
        concat!(
            r#"{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{"input":"x"}}"#,
            "\n",
            r#"{"custom_id":"b","method":"POST","url":"/v1/chat/completions","body":{"messages":[]}}"#,
            "\n"
        )
        .as_bytes(),
    );

    let long_tag = "t".repeat(65);
    let cases: Vec<Case> = vec![
        (vec![""], None, vec![], "empty"),
        (vec![], Some(b""), vec![], "empty"),
        (vec!["-"], Some(b"\n"), vec![], "empty"),
        (vec!["--tag", "no spaces", "x"], None, vec![], "tag"),
        (vec!["--tag", &long_tag, "x"], None, vec![], "tag"),
        (vec!["--parent", "../etc", "x"], None, vec![], "parent"),
        (vec!["--parent", "1__2", "x"], None, vec![], "parent"),
        (vec!["--priority", "urgent", "x"], None, vec![], "priority"),
        (
            vec!["0123456789A"],
            None,
            vec![("NRVNA_MAX_PROMPT_SIZE", "10")],
            "limit",
        ),
        (
            vec!["-"],
            Some(b"0123456789A\n"),
            vec![("NRVNA_MAX_PROMPT_SIZE", "10")],
            "limit",
        ),
        (vec!["-"], Some(b"bad \xff utf8"), vec![], "UTF-8"),
        (vec!["-"], Some(b"a\0b"), vec![], "NUL"),
        (vec!["--json-schema", &not_json, "x"], None, vec![], "not valid JSON"),
        (vec!["--json-schema", &not_schema, "x"], None, vec![], "JSON Schema"),
        (vec!["--json-schema", &empty, "x"], None, vec![], "empty"),
        (vec!["--json-schema", &link, "x"], None, vec![], "symlink"),
        (
            vec!["--json-schema", "/no/such/file.json", "x"],
            None,
            vec![],
            "no such file",
        ),
        (vec!["--grammar", &big, "x"], None, vec![], "limit"),
        (
            vec!["--json-schema", &good_schema, "--grammar", &grammar, "x"],
            None,
            vec![],
            "cannot be used",
        ),
        (
            vec!["--embed", "--json-schema", &good_schema, "x"],
            None,
            vec![],
            "cannot be used",
        ),
        (vec!["--temp", "-1", "x"], None, vec![], "temp"),
        (vec!["--top-p", "0", "x"], None, vec![], "top_p"),
        (vec!["--max-tokens", "0", "x"], None, vec![], "max_tokens"),
        (vec!["--timeout", "0", "x"], None, vec![], "timeout"),
        (vec!["--batch", &bad_batch], None, vec![], "line 2"),
        (vec!["--batch", "/no/such.jsonl"], None, vec![], "batch file"),
    ];
    for (args, stdin, env, needle) in cases {
        let w = ws();
        let out = wrk(&w.root, &args, stdin, &env);
        assert_refused(&w.root, &out, needle);
    }
}

#[test]
fn batch_publishes_every_line_with_custom_ids_and_prints_the_tag() {
    let w = ws();
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("in.jsonl");
    let lines = [
        json!({"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions",
               "body": {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                                   {"role": "user", "content": "Hi"}],
                        "max_tokens": 10, "temperature": 0.0}}),
        json!({"custom_id": "req-2", "method": "POST", "url": "/v1/embeddings",
               "body": {"model": "m", "input": "embed me"}}),
        json!({"custom_id": "req-3", "method": "POST", "url": "/v1/chat/completions",
               "body": {"messages": [{"role": "user", "content": "Name?"}],
                        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "p", "schema": {"type": "object"}}}}}),
    ];
    let text = format!("{}\n\n{}\r\n{}\n", lines[0], lines[1], lines[2]);
    fs::write(&path, text).unwrap();
    let out = wrk(
        &w.root,
        &["--batch", path.to_str().unwrap(), "--tag", "mine"],
        None,
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let tag = stdout.trim_end();
    assert!(tag.starts_with("batch_") && stdout.lines().count() == 1, "{stdout:?}");

    let ready = w.root.join("input/ready");
    let mut ids = entries(&ready);
    ids.sort();
    assert_eq!(ids.len(), 3);
    let mut seen = Vec::new();
    for id in &ids {
        let dir = ready.join(id);
        let m = meta(&dir);
        assert_eq!(m.tags, [tag, "mine"]);
        let cid = m.extra_str("custom_id").unwrap().to_owned();
        let line = m.extra("batch_line").unwrap().as_u64().unwrap();
        let b: Value = serde_json::from_str(&read(&dir, "batch.json")).unwrap();
        assert_eq!(
            b,
            json!({"custom_id": cid, "line": line}),
            "batch.json, which a C++ daemon leaves alone"
        );
        match cid.as_str() {
            "req-1" => {
                assert_eq!(line, 1);
                assert_eq!(read(&dir, "prompt.txt"), "Hi");
                let p: Value = serde_json::from_str(&read(&dir, "params.json")).unwrap();
                // Batch jobs are low priority unless --priority says otherwise.
                assert_eq!(
                    p,
                    json!({"system": "Be brief.", "temp": 0.0, "max_tokens": 10, "priority": "low"})
                );
            }
            "req-2" => {
                assert_eq!(line, 3);
                assert_eq!(m.mode, Some(JobType::Embed));
                assert_eq!(read(&dir, "prompt.txt"), "embed me");
            }
            "req-3" => {
                assert_eq!(line, 4);
                assert_eq!(m.output_format.as_deref(), Some("json_schema"));
                let s: Value = serde_json::from_str(&read(&dir, "schema.json")).unwrap();
                assert_eq!(s, json!({"type": "object"}));
                assert!(read(&dir, "grammar.gbnf").starts_with("root ::= "));
            }
            other => panic!("unexpected custom_id {other}"),
        }
        seen.push(cid);
    }
    seen.sort();
    assert_eq!(seen, ["req-1", "req-2", "req-3"]);
    assert!(entries(&w.root.join("input/writing")).is_empty());
}

#[test]
fn batch_with_a_duplicate_custom_id_publishes_nothing() {
    let w = ws();
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("dup.jsonl");
    let line = json!({"custom_id": "same", "method": "POST", "url": "/v1/embeddings",
                      "body": {"input": "x"}});
    fs::write(&path, format!("{line}\n{line}\n")).unwrap();
    let out = wrk(&w.root, &["--batch", path.to_str().unwrap()], None, &[]);
    assert_refused(&w.root, &out, "line 2: custom_id \"same\" is already used on line 1");
}

#[test]
fn broken_stdout_pipe_still_exits_0() {
    let w = ws();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wrk"))
        .arg(&w.root)
        .arg("hi")
        .env("NRVNA_FSYNC", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A 2x2 24-bit BMP.
fn tiny_bmp() -> Vec<u8> {
    let mut b = b"BM".to_vec();
    b.extend_from_slice(&70u32.to_le_bytes());
    b.extend_from_slice(&[
        0, 0, 0, 0, 54, 0, 0, 0, 40, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 1, 0, 24, 0,
    ]);
    b.extend_from_slice(&[0u8; 24]);
    b.extend_from_slice(&[255u8; 16]);
    b
}

#[test]
fn image_jobs_copy_each_file_as_the_contract_names_it() {
    let w = ws();
    let d = tempfile::tempdir().unwrap();
    let bmp = d.path().join("shot.BMP");
    let png = d.path().join("photo.png");
    let noext = d.path().join("noext");
    fs::write(&bmp, tiny_bmp()).unwrap();
    fs::write(&png, b"\x89PNG\r\n\x1a\n(the daemon decodes it)").unwrap();
    fs::write(&noext, tiny_bmp()).unwrap();
    let (b, p, n) = (bmp.to_str().unwrap(), png.to_str().unwrap(), noext.to_str().unwrap());

    let out = wrk(&w.root, &["What is this?", "-i", b, "--image", p, "-i", n], None, &[]);
    let dir = published(&w.root, &out);
    assert_eq!(read(&dir, "type.txt").trim(), "vision");
    assert_eq!(meta(&dir).mode, Some(JobType::Vision));
    assert_eq!(read(&dir, "prompt.txt"), "What is this?");
    let mut names = entries(&dir.join("images"));
    names.sort();
    assert_eq!(names, ["image_000000.BMP", "image_000001.png", "image_000002.bmp"]);
    assert_eq!(fs::read(dir.join("images/image_000000.BMP")).unwrap(), tiny_bmp());

    // No prompt: the task spelled out, as the C++ daemon needs one.
    let out = wrk(&w.root, &["-i", b], None, &[]);
    let dir = published(&w.root, &out);
    assert_eq!(read(&dir, "prompt.txt"), "Describe the image.");

    // Embedding of text and image together.
    let w = ws();
    let out = wrk(&w.root, &["--embed", "-i", b, "caption"], None, &[]);
    let dir = published(&w.root, &out);
    assert_eq!(read(&dir, "type.txt").trim(), "embed");
    assert!(dir.join("images/image_000000.BMP").is_file());
}

#[test]
fn speech_jobs_carry_their_audio_and_tts_its_text() {
    let w = ws();
    let d = tempfile::tempdir().unwrap();
    let wav = d.path().join("memo.wav");
    fs::write(&wav, b"RIFF\x24\0\0\0WAVEfmt ").unwrap();
    let out = wrk(&w.root, &["--audio", wav.to_str().unwrap(), "--stt"], None, &[]);
    let dir = published(&w.root, &out);
    assert_eq!(read(&dir, "type.txt").trim(), "stt");
    assert!(dir.join("audio/audio_000000.wav").is_file());
    assert_eq!(read(&dir, "prompt.txt"), "");

    let out = wrk(&w.root, &["--tts", "Hello there"], None, &[]);
    let dir = published(&w.root, &out);
    assert_eq!(read(&dir, "type.txt").trim(), "tts");
    assert_eq!(read(&dir, "prompt.txt"), "Hello there");
    // Blank text to speak, and --tts with --stt, are refused before publishing.
    let w = ws();
    let out = wrk(&w.root, &["--tts", "   "], None, &[]);
    assert_refused(&w.root, &out, "needs text to speak");
    let out = wrk(&w.root, &["--tts", "--stt", "hi"], None, &[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(entries(&w.root.join("input/ready")).is_empty());

    // --audio without --stt, --stt without --audio: usage errors (exit 2 from clap).
    let w = ws();
    let out = wrk(&w.root, &["--audio", wav.to_str().unwrap(), "x"], None, &[]);
    assert_ne!(out.status.code(), Some(0));
    let out = wrk(&w.root, &["--stt", "x"], None, &[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(entries(&w.root.join("input/ready")).is_empty());
}

#[test]
fn bad_media_files_are_refused_and_nothing_is_published() {
    let w = ws();
    let d = tempfile::tempdir().unwrap();
    let empty = d.path().join("empty.png");
    let text = d.path().join("notes.png");
    let big = d.path().join("big.bmp");
    let missing = d.path().join("missing.png");
    let good = d.path().join("good.bmp");
    fs::write(&empty, b"").unwrap();
    fs::write(&text, b"just some text").unwrap();
    let mut b = tiny_bmp();
    b.resize(5000, 0);
    fs::write(&big, b).unwrap();
    fs::write(&good, tiny_bmp()).unwrap();
    let link = d.path().join("link.bmp");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let dangling = d.path().join("dangling.bmp");
    std::os::unix::fs::symlink(d.path().join("nowhere"), &dangling).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let env = [("NRVNA_MAX_IMAGE_SIZE", "4096")];
    for (file, needle) in [
        (s(&empty), "is empty"),
        (s(&text), "is not png, jpg, gif, webp or bmp"),
        (s(&big), "over the limit of 4096 bytes (raise NRVNA_MAX_IMAGE_SIZE"),
        (s(&missing), "No such file"),
        (s(&dangling), "No such file"),
        (s(d.path()), "not a regular file"),
    ] {
        // A good file first: one bad file refuses the whole job.
        let out = wrk(&w.root, &["x", "-i", &s(&good), "-i", &file], None, &env);
        assert_refused(&w.root, &out, needle);
    }
    // A link on the command line is the user's own: followed, its bytes copied.
    let out = wrk(&w.root, &["x", "-i", &s(&link)], None, &env);
    let dir = published(&w.root, &out);
    let copy = dir.join("images/image_000000.bmp");
    assert!(fs::symlink_metadata(&copy).unwrap().file_type().is_file());
}

#[test]
fn at_the_queue_limit_concurrent_submitters_never_queue_more_than_it() {
    let ws = ws();
    fs::create_dir_all(&ws.root).unwrap();
    // What `nrvnad --max-queued 25` records.
    fs::write(ws.root.join(".nrvna-limits.json"), b"{\"max_queued\": 25}\n").unwrap();
    let root = ws.root.clone();
    let outs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let root = &root;
                s.spawn(move || {
                    (0..10)
                        .map(|i| wrk(root, &[&format!("job {t}-{i}")], None, &[]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let ok = outs.iter().filter(|o| o.status.code() == Some(0)).count();
    assert_eq!(ok, 25, "exactly the limit got in");
    for o in outs.iter().filter(|o| o.status.code() != Some(0)) {
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(o.stdout.is_empty());
        assert!(e.contains("limit of 25") && e.contains("--max-queued"), "{e}");
    }
    assert_eq!(entries(&ws.root.join("input/ready")).len(), 25);
    assert!(entries(&ws.root.join("input/writing")).is_empty());

    // A batch counts its lines: two lines do not fit in a full queue, and
    // neither is published.
    let file = ws.root.join("b.jsonl");
    let line = |c: &str| {
        format!(
            r#"{{"custom_id":"{c}","method":"POST","url":"/v1/chat/completions","body":{{"messages":[{{"role":"user","content":"x"}}]}}}}"#
        )
    };
    fs::write(&file, format!("{}\n{}\n", line("a"), line("b"))).unwrap();
    let o = wrk(&ws.root, &["--batch", file.to_str().unwrap()], None, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("2 more would pass"),
        "{:?}",
        o
    );
    assert_eq!(entries(&ws.root.join("input/ready")).len(), 25);
    // Once jobs leave the queue there is room again.
    for id in entries(&ws.root.join("input/ready")).iter().take(2) {
        fs::rename(
            ws.root.join("input/ready").join(id),
            ws.root.join("processing").join(id),
        )
        .unwrap();
    }
    let o = wrk(&ws.root, &["--batch", file.to_str().unwrap()], None, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(entries(&ws.root.join("input/ready")).len(), 25);
}
