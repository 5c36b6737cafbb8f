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

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Runs a Python scenario; panics with its output when it fails.
fn py(python: &Path, base: &str, ws: &Path, args: &[&str]) -> String {
    run_py(
        Command::new(python)
            .args(args)
            .env("NRVNA_API_BASE", format!("{base}/v1"))
            .env("NRVNA_API_KEY", KEY)
            .env("NRVNA_MODEL", MODEL_ID)
            .env("NRVNA_WS", ws)
            .env("NRVNA_LOG_LEVEL", "warn"),
        &format!("python {args:?}"),
    )
}

#[test]
fn official_openai_and_mcp_clients_against_a_real_daemon() {
    let python = python();
    let dir = tempfile::tempdir().expect("temp dir");
    let ws = dir.path().join("ws");
    let _daemon = start_daemon(&ws, 4);
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
