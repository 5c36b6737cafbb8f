//! Settings are values: two daemons with different settings run in one
//! process at the same time, each under its own (nothing process-wide).

use std::process::ExitCode;

use clap::Parser;
use nrvna_core::{State, Submission, Workspace};
use nrvnad::cli::Cli;
use nrvnad::config::Config;

/// A draining echo daemon on `ws` with extra flags.
fn config(ws: &std::path::Path, extra: &[&str]) -> Config {
    let mut args = vec!["nrvnad", "model.gguf"];
    let ws = ws.to_str().unwrap();
    args.push(ws);
    args.extend(["--engine", "echo", "--drain", "--workers", "1", "--stop-grace", "5"]);
    args.extend(extra);
    let cli = Cli::try_parse_from(&args).unwrap();
    Config::from_args(&cli.serve).unwrap()
}

#[test]
fn two_daemons_with_different_settings_in_one_process() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The same 24-byte prompt in both workspaces.
    let prompt = "a prompt of twenty-four!";
    let publish = |root: &std::path::Path| {
        let ws = Workspace::create(root).unwrap();
        Submission::text(prompt).publish(&ws).unwrap()
    };
    let (ja, jb) = (publish(a.path()), publish(b.path()));
    // Daemon A takes prompts up to 8 bytes and does not fsync; B keeps the
    // defaults. Both run at once in this process.
    let ca = config(a.path(), &["--max-prompt-size", "8", "--fsync", "0"]);
    let cb = config(b.path(), &[]);
    assert!(!ca.settings.fsync && cb.settings.fsync);
    let ta = std::thread::spawn(move || nrvnad::server::serve(ca).unwrap());
    let tb = std::thread::spawn(move || nrvnad::server::serve(cb).unwrap());
    let (ea, eb) = (ta.join().unwrap(), tb.join().unwrap());
    // A failed the job for its own limit (a drain with a failure exits 1);
    // B ran it.
    assert_eq!(ea, ExitCode::from(1));
    assert_eq!(eb, ExitCode::SUCCESS);
    let wa = Workspace::open(a.path()).unwrap();
    let wb = Workspace::open(b.path()).unwrap();
    assert_eq!(wa.locate(&ja), Some(State::Failed));
    let err = std::fs::read_to_string(wa.job_dir(State::Failed, &ja).join("error.txt")).unwrap();
    assert!(err.contains("prompt.txt") && err.contains("8 bytes"), "{err}");
    assert_eq!(wb.locate(&jb), Some(State::Done));
    let out = std::fs::read_to_string(wb.job_dir(State::Done, &jb).join("result.txt")).unwrap();
    assert!(out.contains(prompt), "{out}");
}
