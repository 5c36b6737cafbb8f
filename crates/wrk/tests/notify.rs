//! `wrk --notify [URL]`: the job's meta.json asks for job events (a URL,
//! or `true` for the workspace's endpoints); a bad URL publishes nothing.

use std::path::Path;
use std::process::{Command, Output};

use nrvna_core::{JobId, Meta, State, Workspace};
use serde_json::Value;

fn wrk(ws: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wrk"))
        .arg(ws)
        .args(args)
        .env_remove("NRVNA_LOG_LEVEL")
        .output()
        .expect("running wrk")
}

fn notify_of(ws: &Path, out: &Output) -> Option<Value> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = JobId::parse(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let w = Workspace::open(ws).unwrap();
    let meta = std::fs::read(w.job_dir(State::Ready, &id).join("meta.json")).unwrap();
    Meta::parse(&meta).unwrap().extra("notify").cloned()
}

#[test]
fn notify_records_the_url_or_the_workspace_and_refuses_a_bad_url() {
    let d = tempfile::tempdir().unwrap();
    let ws = d.path().join("ws");
    let out = wrk(&ws, &["--notify=http://127.0.0.1:9000/hook", "hello"]);
    assert_eq!(notify_of(&ws, &out), Some(Value::from("http://127.0.0.1:9000/hook")));
    let out = wrk(&ws, &["hello", "--notify", "http://h/x"]);
    assert_eq!(notify_of(&ws, &out), Some(Value::from("http://h/x")));
    let out = wrk(&ws, &["--notify", "--", "hello"]);
    assert_eq!(notify_of(&ws, &out), Some(Value::Bool(true)));
    let out = wrk(&ws, &["hello"]);
    assert_eq!(notify_of(&ws, &out), None);
    let queued = std::fs::read_dir(ws.join("input/ready")).unwrap().count();
    for bad in ["ftp://h/x", "https://h/x", "hello"] {
        let out = wrk(&ws, &["--notify", bad, "world"]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--notify") && err.contains("nothing was submitted"),
            "{bad}: {err}"
        );
    }
    assert_eq!(std::fs::read_dir(ws.join("input/ready")).unwrap().count(), queued);
}
