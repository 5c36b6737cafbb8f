//! The gateway's HTTP front against the real binary, with a raw client:
//! who may drive it (Host, Origin, Content-Type, CORS, the key), how long a
//! client may take (header and body timeouts), what a client that leaves
//! leaves behind (half-close, disconnect), MCP sessions, the start-up
//! checks (key, writable workspace), and error bodies that name no path.
//! No daemon: jobs stay queued, which is what these tests need.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const SHORT: Duration = Duration::from_secs(10);

fn chat_body() -> Vec<u8> {
    json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        .to_string()
        .into_bytes()
}

/// A gateway with no key (so loopback only) and the given extra arguments.
fn start_without_key(ws: &Path, extra: &[&str]) -> (Proc, String) {
    let mut cmd = api_command(ws, extra);
    cmd.env_remove("NRVNA_API_KEY");
    start(cmd)
}

fn send(base: &str, req: &[u8]) -> Reply {
    raw(base, req, SHORT).expect("a reply")
}

/// The error object of a reply, checked to be OpenAI's shape.
fn error_of(r: &Reply) -> Value {
    let v = r.json();
    let e = v["error"].clone();
    assert!(
        e["message"].is_string() && e["type"].is_string(),
        "not an OpenAI error: {v}"
    );
    e
}

fn no_cors(r: &Reply) {
    assert!(
        !r.headers.iter().any(|(k, _)| k.starts_with("access-control-")),
        "CORS granted: {:?}",
        r.headers
    );
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"http-test","version":"1"}}}"#;

fn mcp_initialize(base: &str, key: Option<&str>, extra: &[&str]) -> Reply {
    let mut headers = vec![
        "Content-Type: application/json",
        "Accept: application/json, text/event-stream",
    ];
    headers.extend_from_slice(extra);
    send(
        base,
        &request(base, "POST", "/mcp", key, &headers, Some(INIT.as_bytes())),
    )
}

#[test]
fn without_a_key_a_web_page_cannot_drive_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let (_api, base) = start_without_key(&dir.path().join("ws"), &[]);
    let port = authority(&base).rsplit(':').next().unwrap().to_owned();
    let get_models = |headers: &[&str]| send(&base, &request(&base, "GET", "/v1/models", None, headers, None));

    // Loopback names and addresses, with any port.
    for host in [
        format!("Host: localhost:{port}"),
        "Host: 127.0.0.1".into(),
        "Host: 127.1.2.3:9".into(),
        format!("Host: [::1]:{port}"),
    ] {
        assert_eq!(get_models(&[&host]).status, 200, "{host}");
    }
    // A DNS-rebound name, on every route.
    let evil = "Host: attacker.example:8080";
    for (method, path, body) in [
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", Some(chat_body())),
        ("GET", "/v1/batches", None),
    ] {
        let r = send(
            &base,
            &request(
                &base,
                method,
                path,
                None,
                &[evil, "Content-Type: application/json"],
                body.as_deref(),
            ),
        );
        assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
        let e = error_of(&r);
        assert_eq!(e["code"], "forbidden_host");
        assert!(e["message"].as_str().unwrap().contains("NRVNA_API_KEY"), "{e}");
    }
    let r = mcp_initialize(&base, None, &[evil]);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(error_of(&r)["code"], "forbidden_host");

    // A page's cross-site fetch or form, and an upload from one.
    for h in [
        "Origin: http://attacker.example",
        "Origin: null",
        "Sec-Fetch-Site: cross-site",
    ] {
        let r = get_models(&[h]);
        assert_eq!(r.status, 403, "{h}: {}", r.text());
        assert_eq!(error_of(&r)["code"], "cross_origin");
        no_cors(&r);
    }
    let form = b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--b--\r\n";
    let r = send(
        &base,
        &request(
            &base,
            "POST",
            "/v1/files",
            None,
            &[
                "Origin: http://attacker.example",
                "Content-Type: multipart/form-data; boundary=b",
            ],
            Some(form),
        ),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    // A loopback page (the user's own tool) may.
    assert_eq!(get_models(&[&format!("Origin: http://localhost:{port}")]).status, 200);

    // No CORS: a preflight is refused, on /v1 and /mcp.
    for path in ["/v1/chat/completions", "/mcp"] {
        let r = send(
            &base,
            &request(
                &base,
                "OPTIONS",
                path,
                None,
                &[
                    &format!("Origin: http://localhost:{port}"),
                    "Access-Control-Request-Method: POST",
                ],
                None,
            ),
        );
        assert_eq!(r.status, 403, "OPTIONS {path}: {}", r.text());
        no_cors(&r);
    }
}

#[test]
fn json_endpoints_need_application_json() {
    let dir = tempfile::tempdir().unwrap();
    let (_api, base) = start_api(&dir.path().join("ws"));
    // What a web form or a no-preflight fetch can send.
    for ct in [
        None,
        Some("Content-Type: text/plain"),
        Some("Content-Type: application/x-www-form-urlencoded"),
        Some("Content-Type: multipart/form-data; boundary=x"),
    ] {
        for path in [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/batches",
        ] {
            let headers: Vec<&str> = ct.into_iter().collect();
            let r = send(&base, &request(&base, "POST", path, Some(KEY), &headers, Some(b"{}")));
            assert_eq!(r.status, 415, "{path} {ct:?}: {}", r.text());
            let e = error_of(&r);
            assert!(e["message"].as_str().unwrap().contains("application/json"), "{e}");
        }
    }
    // Parameters are fine: this one gets past the check to the body's own
    // validation (no messages: 400).
    let r = send(
        &base,
        &request(
            &base,
            "POST",
            "/v1/chat/completions",
            Some(KEY),
            &["Content-Type: Application/JSON; charset=utf-8"],
            Some(b"{}"),
        ),
    );
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    let (_api, base) = start_api(&dir.path().join("ws"));
    for auth in [
        format!("Authorization: bearer {KEY}"),
        format!("Authorization: BEARER {KEY}"),
        format!("Authorization: Bearer   {KEY}"),
    ] {
        let r = send(&base, &request(&base, "GET", "/v1/models", None, &[&auth], None));
        assert_eq!(r.status, 200, "{auth}: {}", r.text());
    }
    let r = send(
        &base,
        &request(&base, "GET", "/v1/models", None, &["Authorization: Basic abc"], None),
    );
    assert_eq!(r.status, 401);
}

/// Runs the gateway to its exit; returns the exit code and stderr, or
/// panics when it is still running (it started) after 10 s.
fn run_to_exit(mut cmd: Command) -> (Option<i32>, String) {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running nrvna-api");
    let mut p = Proc { child };
    let exited = wait_for(SHORT, || p.child.try_wait().ok().flatten().is_some());
    assert!(exited, "nrvna-api started (still running after {SHORT:?})");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut p.child.stderr.take().unwrap(), &mut err).unwrap();
    (p.child.try_wait().unwrap().and_then(|s| s.code()), err)
}

#[test]
fn a_key_no_client_can_send_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for key in ["", " ", "\t ", "ключ", "two words"] {
        let mut cmd = api_command(&dir.path().join("ws"), &[]);
        cmd.env("NRVNA_API_KEY", key);
        let (code, err) = run_to_exit(cmd);
        assert_eq!(code, Some(1), "key {key:?} started the gateway: {err}");
        assert!(
            err.contains("API key") && err.contains("visible ASCII"),
            "{key:?}: {err}"
        );
    }
}

#[test]
fn a_workspace_it_cannot_write_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    // A workspace made by an earlier run, then made read-only.
    let (api, _) = start_api(&ws);
    drop(api);
    let chmod = |mode: &str| {
        let ok = Command::new("chmod")
            .args(["-R", mode])
            .arg(&ws)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chmod -R {mode}");
    };
    chmod("555");
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // root writes through chmod: run as nobody then (setpriv, util-linux).
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(api_bin());
        c
    } else {
        Command::new(api_bin())
    };
    clean(&mut cmd).arg(&ws).args(["--listen", "127.0.0.1:0"]);
    let (code, err) = run_to_exit(cmd);
    chmod("755");
    assert_eq!(code, Some(1), "the gateway started on a read-only workspace: {err}");
    assert!(
        err.contains("cannot write in the workspace's input/writing/") && err.contains("write access"),
        "{err}"
    );
}

/// The jobs in failed/ that meta.json marks cancelled.
fn cancelled_jobs(ws: &Path) -> usize {
    std::fs::read_dir(ws.join("failed"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read(e.path().join("meta.json"))
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                        .is_some_and(|m| m["cancelled"] == true)
                })
                .count()
        })
        .unwrap_or(0)
}

fn queued_jobs(ws: &Path) -> usize {
    std::fs::read_dir(ws.join("input/ready"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn chat_request(base: &str) -> Vec<u8> {
    request(
        base,
        "POST",
        "/v1/chat/completions",
        Some(KEY),
        &["Content-Type: application/json"],
        Some(&chat_body()),
    )
}

#[test]
fn a_client_that_half_closes_or_disconnects_while_its_job_waits_has_it_cancelled() {
    // The socket stays open (half-closed) until the end, or is closed.
    let half_close = |s: &mut Option<TcpStream>| s.as_ref().unwrap().shutdown(Shutdown::Write).unwrap();
    let disconnect = |s: &mut Option<TcpStream>| drop(s.take());
    for (how, leave) in [
        ("half-closed", &half_close as &dyn Fn(&mut Option<TcpStream>)),
        ("disconnected", &disconnect),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        let (_api, base) = start_api(&ws);
        let mut s = TcpStream::connect(authority(&base)).unwrap();
        s.write_all(&chat_request(&base)).unwrap();
        assert!(
            wait_for(SHORT, || queued_jobs(&ws) == 1),
            "the chat's job was not published"
        );
        let mut s = Some(s);
        leave(&mut s);
        assert!(
            wait_for(SHORT, || cancelled_jobs(&ws) == 1 && queued_jobs(&ws) == 0),
            "the {how} client's job was not cancelled"
        );
        drop(s);
    }
}

/// The prompts of the queued jobs.
fn queued_prompts(ws: &Path) -> Vec<String> {
    std::fs::read_dir(ws.join("input/ready"))
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::read_to_string(e.path().join("prompt.txt")).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_client_that_half_closes_right_after_its_request_leaves_nothing_queued() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    let (_api, base) = start_api(&ws);
    let mut s = send_half_closed(&base, &chat_request(&base));
    // The gateway treats it as gone: no reply, the connection closed.
    s.set_read_timeout(Some(SHORT)).unwrap();
    let r = read_reply(&mut s);
    assert!(r.is_none(), "a half-closed client got a reply: {r:?}");
    // A second client's request, sent after that, is published after
    // whatever the first one had begun to publish; once it is queued, it
    // must be the only job queued (the first one's cancelled, or never
    // published).
    let body = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "second-client"}]}).to_string();
    let mut second = TcpStream::connect(authority(&base)).unwrap();
    second
        .write_all(&request(
            &base,
            "POST",
            "/v1/chat/completions",
            Some(KEY),
            &["Content-Type: application/json"],
            Some(body.as_bytes()),
        ))
        .unwrap();
    assert!(
        wait_for(SHORT, || {
            let p = queued_prompts(&ws);
            p.len() == 1 && p[0].contains("second-client")
        }),
        "the half-closed client's job is still queued beside the second one ({} queued, {} cancelled)",
        queued_jobs(&ws),
        cancelled_jobs(&ws)
    );
}

#[test]
fn a_body_that_never_ends_gets_408_and_blocks_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_api, base) = start(api_command(&dir.path().join("ws"), &["--body-timeout", "1"]));
    // A chunked body that never ends, and one that never starts.
    let mut never_ends = TcpStream::connect(authority(&base)).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{{\"mod\r\n",
        authority(&base)
    );
    never_ends.write_all(head.as_bytes()).unwrap();
    let mut never_starts = TcpStream::connect(authority(&base)).unwrap();
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        authority(&base)
    );
    never_starts.write_all(head.as_bytes()).unwrap();
    // Others are served meanwhile.
    assert_eq!(get(&base, "/v1/models").status, 200);
    for mut s in [never_ends, never_starts] {
        s.set_read_timeout(Some(SHORT)).unwrap();
        let t0 = Instant::now();
        let r = read_reply(&mut s).expect("a 408 before the connection closes");
        assert_eq!(r.status, 408, "{}", r.text());
        assert_eq!(error_of(&r)["code"], "request_timeout");
        assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    }
}

#[test]
fn headers_that_never_end_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (_api, base) = start(api_command(&dir.path().join("ws"), &["--header-timeout", "1"]));
    let mut s = TcpStream::connect(authority(&base)).unwrap();
    s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n").unwrap();
    s.set_read_timeout(Some(SHORT)).unwrap();
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut buf);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the connection stayed open {:?}",
        t0.elapsed()
    );
    assert_eq!(get(&base, "/v1/models").status, 200);
}

#[test]
fn mcp_sessions_expire_when_idle_and_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let (_api, base) = start(api_command(
        &dir.path().join("ws"),
        &["--mcp-session-idle", "1", "--mcp-max-sessions", "3"],
    ));
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = mcp_initialize(&base, Some(KEY), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        ids.push(r.header("mcp-session-id").expect("a session id").to_owned());
    }
    let r = mcp_initialize(&base, Some(KEY), &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    let e = error_of(&r);
    assert_eq!(e["code"], "too_many_sessions");
    assert!(e["message"].as_str().unwrap().contains("--mcp-max-sessions"), "{e}");
    // Idle for a second, they close; a new client gets in again, and an
    // old id is unknown.
    assert!(
        wait_for(SHORT, || mcp_initialize(&base, Some(KEY), &[]).status == 200),
        "the idle sessions did not expire"
    );
    let ping = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
    let sid = format!("Mcp-Session-Id: {}", ids[0]);
    let r = send(
        &base,
        &request(
            &base,
            "POST",
            "/mcp",
            Some(KEY),
            &[
                "Content-Type: application/json",
                "Accept: application/json, text/event-stream",
                &sid,
            ],
            Some(ping.as_bytes()),
        ),
    );
    assert_eq!(r.status, 404, "{}", r.text());
}

/// Every absolute form of the workspace's path.
fn absolute_forms(ws: &Path) -> Vec<String> {
    let mut v = vec![ws.to_string_lossy().into_owned()];
    if let Ok(c) = ws.canonicalize() {
        v.push(c.to_string_lossy().into_owned());
    }
    v
}

#[test]
fn error_bodies_name_no_workspace_path() {
    let dir = tempfile::tempdir().unwrap();
    let ws: PathBuf = dir.path().join("ws");
    let (_api, base) = start(api_command(&ws, &["--timeout", "1"]));
    let forms = absolute_forms(&ws);
    let clean_body = |r: &Reply| {
        let t = r.text();
        for f in &forms {
            assert!(!t.contains(f.as_str()), "the body names {f}: {t}");
        }
    };

    // 504: no daemon serves the workspace.
    let r = post_json(
        &base,
        "/v1/chat/completions",
        &serde_json::from_slice(&chat_body()).unwrap(),
    );
    assert_eq!(r.status, 504, "{}", r.text());
    clean_body(&r);
    let msg = error_of(&r)["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("nrvnad MODEL WS"), "{msg}");

    // 500: publishing fails, input/writing/ having become a file.
    let writing = ws.join("input/writing");
    std::fs::remove_dir(&writing).unwrap();
    std::fs::write(&writing, b"").unwrap();
    let r = post_json(
        &base,
        "/v1/chat/completions",
        &serde_json::from_slice(&chat_body()).unwrap(),
    );
    assert_eq!(r.status, 500, "{}", r.text());
    clean_body(&r);
    assert!(
        error_of(&r)["message"].as_str().unwrap().contains("WS/input/writing"),
        "{}",
        r.text()
    );
}

#[test]
fn slow_bodies_beyond_the_open_files_limit_block_no_one_for_long() {
    // The issue's case: 140 never-ending bodies against `ulimit -n 128`.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=128:128", "--"]).arg(api_bin());
    clean(&mut cmd)
        .arg(dir.path().join("ws"))
        .args(["--listen", "127.0.0.1:0", "--body-timeout", "2"])
        .env("NRVNA_API_KEY", KEY)
        .stdout(Stdio::piped());
    let (_api, base) = start(cmd);
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{{\r\n",
        authority(&base)
    );
    let slow: Vec<TcpStream> = (0..140)
        .map(|_| {
            let mut s = TcpStream::connect(authority(&base)).unwrap();
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    let t0 = Instant::now();
    let r = raw(
        &base,
        &request(&base, "GET", "/v1/models", Some(KEY), &[], None),
        Duration::from_secs(20),
    )
    .expect("/v1/models answered");
    assert_eq!(r.status, 200);
    assert!(t0.elapsed() < Duration::from_secs(15), "took {:?}", t0.elapsed());
    drop(slow);
}
