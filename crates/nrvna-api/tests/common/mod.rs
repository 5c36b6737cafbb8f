//! What the gateway's integration tests share: the binaries, the model,
//! the tests' Python environment, child processes killed on drop, and a
//! raw HTTP/1.1 client that sends exactly the bytes a test asks for
//! (headers a library would fix up, bodies that never end, half-closes).
#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KEY: &str = "test-key-0123456789";
pub const MODEL_ID: &str = "SmolLM2-135M-Instruct.Q4_1";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

pub fn model() -> PathBuf {
    let p = repo_root().join(format!("models/{MODEL_ID}.gguf"));
    assert!(
        p.is_file(),
        "model missing: run scripts/fetch-model.sh (expected {})",
        p.display()
    );
    p
}

/// A media fixture under models/fixtures (scripts/fixtures.sh makes them).
pub fn fixture(rel: &str) -> PathBuf {
    let p = repo_root().join("models/fixtures").join(rel);
    assert!(
        p.is_file(),
        "fixture missing: run scripts/fixtures.sh (expected {})",
        p.display()
    );
    p
}

/// Another release binary of the workspace (flw, wrk), beside nrvna-api.
pub fn tool(name: &str) -> PathBuf {
    let p = api_bin().with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --release --workspace`",
        p.display()
    );
    p
}

pub fn api_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nrvna-api"))
}

pub fn nrvnad_bin() -> PathBuf {
    let p = api_bin().with_file_name("nrvnad");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --release -p nrvnad` (or the whole suite with scripts/test.sh)",
        p.display()
    );
    p
}

/// The tests' Python environment, with the official `openai` and `mcp`
/// packages (pinned in scripts/pyenv-requirements.txt):
/// `$NRVNA_TEST_PYENV` (a relative path is from the repository root), else
/// `test-pyenv` in the target directory. scripts/pyenv.sh makes it
/// (scripts/test.sh runs that first); no test installs anything.
pub fn python() -> PathBuf {
    let venv = match std::env::var_os("NRVNA_TEST_PYENV") {
        Some(v) => repo_root().join(v),
        None => api_bin()
            .parent()
            .and_then(Path::parent)
            .expect("target directory")
            .join("test-pyenv"),
    };
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import openai, mcp"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the tests' Python environment {} is missing or cannot import openai and mcp: run scripts/pyenv.sh \
         (scripts/test.sh runs it before the tests; NRVNA_TEST_PYENV overrides the location)",
        venv.display()
    );
    py
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The command without any NRVNA_* variable of the test's environment.
pub fn clean(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("NRVNA_") {
            cmd.env_remove(&k);
        }
    }
    cmd
}

pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

pub fn start_daemon(ws: &Path, workers: u32) -> Proc {
    start_daemon_with(&model(), ws, &["--workers", &workers.to_string()], &[])
}

/// `nrvnad MODEL WS ARGS..` with the environment `env`, once it is ready.
pub fn start_daemon_with(model: &Path, ws: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let child = clean(&mut Command::new(nrvnad_bin()))
        .arg(model)
        .arg(ws)
        .args(args)
        .env("NRVNA_LOG_LEVEL", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning nrvnad");
    let mut p = Proc { child };
    let mut exited = None;
    let ready = wait_for(Duration::from_secs(120), || {
        exited = p.child.try_wait().ok().flatten();
        exited.is_some() || ws.join(".nrvnad.ready").exists()
    });
    assert!(
        exited.is_none(),
        "nrvnad {args:?} exited before it was ready ({exited:?}); its stderr is above"
    );
    assert!(ready, "nrvnad {args:?} did not become ready within 120 s");
    p
}

/// The gateway command on WS listening on a free loopback port, with the
/// test key and the given extra arguments; NRVNA_* of the test's own
/// environment removed.
pub fn api_command(ws: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(api_bin());
    clean(&mut cmd)
        .arg(ws)
        .args(["--listen", "127.0.0.1:0", "--max-body", "2097152"])
        .args(extra)
        .env("NRVNA_API_KEY", KEY)
        .env("NRVNA_LOG_LEVEL", "info")
        .stdout(Stdio::piped());
    cmd
}

/// Starts a gateway command; returns it and its base URL (printed on stdout).
pub fn start(mut cmd: Command) -> (Proc, String) {
    let mut child = cmd.spawn().expect("spawning nrvna-api");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("reading the address nrvna-api prints");
    let url = line.trim().to_owned();
    let p = Proc { child };
    assert!(url.starts_with("http://127.0.0.1:"), "nrvna-api printed {url:?}");
    (p, url)
}

/// Starts the gateway with the test key; returns it and its base URL.
pub fn start_api(ws: &Path) -> (Proc, String) {
    start(api_command(ws, &[]))
}

/// A response as the raw client read it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("status {}: body is not JSON ({e}): {}", self.status, self.text()))
    }
}

/// `host:port` of a base URL such as `http://127.0.0.1:8080`.
pub fn authority(base: &str) -> &str {
    base.trim_start_matches("http://").trim_end_matches('/')
}

/// Sends raw request bytes and reads the reply until the server closes
/// the connection (send `Connection: close`). `None` when the server
/// closed without a status line.
pub fn raw(base: &str, request: &[u8], timeout: Duration) -> Option<Reply> {
    let mut s = TcpStream::connect(authority(base)).expect("connecting to the gateway");
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(request).expect("sending the request");
    read_reply(&mut s)
}

/// Reads one whole reply (until the connection closes).
pub fn read_reply(s: &mut TcpStream) -> Option<Reply> {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_reply(&buf)
}

/// Sends the request, then half-closes (shuts down the sending side).
pub fn send_half_closed(base: &str, request: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(authority(base)).expect("connecting to the gateway");
    s.write_all(request).expect("sending the request");
    s.shutdown(Shutdown::Write).expect("half-closing");
    s
}

pub fn parse_reply(buf: &[u8]) -> Option<Reply> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { unchunk(rest) } else { rest.to_vec() };
    Some(Reply { status, headers, body })
}

fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { break };
        b = &b[eol + 2..];
        if size == 0 || b.len() < size {
            out.extend_from_slice(&b[..size.min(b.len())]);
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or_default();
    }
    out
}

/// A whole request: method, path, extra header lines, a JSON body when
/// given (with its length), the test key unless `key` is None, `Host` of
/// the base URL unless the headers name one, and `Connection: close`.
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    headers: &[&str],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|h| h.to_ascii_lowercase().starts_with("host:")) {
        r.push_str(&format!("Host: {}\r\n", authority(base)));
    }
    if let Some(k) = key {
        r.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    if let Some(b) = body {
        r.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    r.push_str("Connection: close\r\n\r\n");
    let mut bytes = r.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    bytes
}

/// POSTs JSON with the test key and `Content-Type: application/json`.
pub fn post_json(base: &str, path: &str, body: &serde_json::Value) -> Reply {
    let b = body.to_string();
    let req = request(
        base,
        "POST",
        path,
        Some(KEY),
        &["Content-Type: application/json"],
        Some(b.as_bytes()),
    );
    raw(base, &req, Duration::from_secs(120)).expect("a reply")
}

/// GETs with the test key.
pub fn get(base: &str, path: &str) -> Reply {
    raw(
        base,
        &request(base, "GET", path, Some(KEY), &[], None),
        Duration::from_secs(60),
    )
    .expect("a reply")
}

/// How many jobs the workspace holds, in every state.
pub fn jobs_in(ws: &Path) -> usize {
    ["input/writing", "input/ready", "processing", "output", "failed"]
        .iter()
        .map(|d| std::fs::read_dir(ws.join(d)).map(|r| r.count()).unwrap_or(0))
        .sum()
}

/// Runs a Python scenario from tests/py (`cmd` holds the interpreter, the
/// script and its arguments and environment); panics with its output when it
/// fails, naming it `what`; returns its stdout.
pub fn run_py(cmd: &mut Command, what: &str) -> String {
    let t0 = Instant::now();
    let out = cmd
        .current_dir(repo_root().join("crates/nrvna-api/tests/py"))
        .output()
        .expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    eprintln!(
        "{what} passed in {:.1}s: {}\n{stderr}",
        t0.elapsed().as_secs_f64(),
        stdout.trim()
    );
    stdout
}
