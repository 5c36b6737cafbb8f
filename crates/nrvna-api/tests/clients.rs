//! Real clients that nobody here wrote, against the real gateway and a real
//! daemon on the real model: the official `openai` and `mcp` Python
//! packages (from PyPI, in the tests' Python environment) run the scenarios
//! in tests/py/ against `nrvna-api` in front of `nrvnad` on a fresh
//! workspace.
//!
//! Needs the model (scripts/fetch-model.sh), the release `nrvnad` binary
//! (built by `cargo test --release --workspace`) and the Python environment
//! (scripts/pyenv.sh); scripts/test.sh provides all three, and a missing
//! piece fails the test with the command that provides it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "test-key-0123456789";
const MODEL_ID: &str = "SmolLM2-135M-Instruct.Q4_1";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn model() -> PathBuf {
    let p = repo_root().join(format!("models/{MODEL_ID}.gguf"));
    assert!(
        p.is_file(),
        "model missing: run scripts/fetch-model.sh (expected {})",
        p.display()
    );
    p
}

fn api_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nrvna-api"))
}

fn nrvnad_bin() -> PathBuf {
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
/// (scripts/test.sh runs that first); this test installs nothing.
fn python() -> PathBuf {
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
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clean(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("NRVNA_") {
            cmd.env_remove(&k);
        }
    }
    cmd
}

fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn start_daemon(ws: &Path) -> Proc {
    let child = clean(&mut Command::new(nrvnad_bin()))
        .arg(model())
        .arg(ws)
        .args(["--workers", "4"])
        .env("NRVNA_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning nrvnad");
    let p = Proc { child };
    assert!(
        wait_for(Duration::from_secs(60), || ws.join(".nrvnad.ready").exists()),
        "nrvnad did not become ready within 60 s"
    );
    p
}

/// Starts the gateway; returns it and its base URL (printed on stdout).
fn start_api(ws: &Path) -> (Proc, String) {
    let mut child = clean(&mut Command::new(api_bin()))
        .arg(ws)
        .args(["--listen", "127.0.0.1:0", "--max-body", "2097152"])
        .env("NRVNA_API_KEY", KEY)
        .env("NRVNA_LOG_LEVEL", "info")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning nrvna-api");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("reading the address nrvna-api prints");
    let url = line.trim().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "nrvna-api printed {url:?}");
    (Proc { child }, url)
}

/// Runs a Python scenario; panics with its output when it fails.
fn py(python: &Path, base: &str, ws: &Path, args: &[&str]) -> String {
    let t0 = Instant::now();
    let out = Command::new(python)
        .args(args)
        .current_dir(repo_root().join("crates/nrvna-api/tests/py"))
        .env("NRVNA_API_BASE", format!("{base}/v1"))
        .env("NRVNA_API_KEY", KEY)
        .env("NRVNA_MODEL", MODEL_ID)
        .env("NRVNA_WS", ws)
        .env("NRVNA_LOG_LEVEL", "warn")
        .output()
        .expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python {args:?} failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    eprintln!(
        "{args:?} passed in {:.1}s: {}",
        t0.elapsed().as_secs_f64(),
        stdout.trim()
    );
    stdout
}

#[test]
fn official_openai_and_mcp_clients_against_a_real_daemon() {
    let python = python();
    let dir = tempfile::tempdir().expect("temp dir");
    let ws = dir.path().join("ws");
    let _daemon = start_daemon(&ws);
    let (api, base) = start_api(&ws);

    for scenario in [
        "chat",
        "stream",
        "disconnect",
        "embeddings",
        "schema",
        "bad",
        "concurrent",
        "batch",
        "batch-cancel",
    ] {
        py(&python, &base, &ws, &["openai_client.py", scenario]);
    }

    // The gateway killed (SIGKILL) in the middle of a batch, then started
    // again: the batch completes and reports every request.
    let batch = py(&python, &base, &ws, &["openai_client.py", "batch-start"]);
    let batch = batch.trim().to_owned();
    let unfinished = ["input/ready", "processing"]
        .iter()
        .map(|d| std::fs::read_dir(ws.join(d)).map(|r| r.count()).unwrap_or(0))
        .sum::<usize>();
    assert!(
        unfinished > 0,
        "the batch finished before the gateway was killed; give it more requests"
    );
    drop(api);
    let (_api, base) = start_api(&ws);
    py(&python, &base, &ws, &["openai_client.py", "batch-finish", &batch]);

    py(
        &python,
        &base,
        &ws,
        &[
            "mcp_client.py",
            "http",
            &format!("{base}/mcp"),
            KEY,
            ws.to_str().unwrap(),
        ],
    );
    let bin = api_bin();
    py(
        &python,
        &base,
        &ws,
        &["mcp_client.py", "stdio", bin.to_str().unwrap(), ws.to_str().unwrap()],
    );
}
