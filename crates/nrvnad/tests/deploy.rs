//! The Kubernetes manifests in deploy/k8s: validated against the
//! Kubernetes API schema by `kubernetes-validate` (PyPI, from the tests'
//! Python environment made by scripts/pyenv.sh), and their nrvnad command lines
//! checked against nrvnad's own parser, so that a renamed flag fails here.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn manifests() -> Vec<PathBuf> {
    let dir = repo_root().join("deploy/k8s");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    assert!(v.len() >= 2, "manifests in {}: {v:?}", dir.display());
    v
}

/// `kubernetes-validate` from the tests' Python environment.
fn validator() -> PathBuf {
    let exe = test_pyenv("kubernetes_validate, yaml").join("bin/kubernetes-validate");
    assert!(exe.is_file(), "{} is missing: run scripts/pyenv.sh", exe.display());
    exe
}

#[test]
fn the_kubernetes_manifests_pass_the_api_schema_strictly() {
    let exe = validator();
    for m in manifests() {
        let r = run(Command::new(&exe).arg("--strict").arg(&m), Duration::from_secs(120));
        assert_eq!(
            r.code,
            Some(0),
            "{} fails the Kubernetes schema:\n{}{}",
            m.display(),
            r.stdout,
            r.stderr
        );
        assert!(r.stdout.contains("passed"), "{}", r.stdout);
    }
}

/// The `command` + `args` lists of every container, and every exec probe.
fn command_lines(doc: &serde_json::Value, out: &mut Vec<Vec<String>>) {
    match doc {
        serde_json::Value::Object(m) => {
            if let Some(cmd) = m.get("command").and_then(|c| c.as_array()) {
                let mut line: Vec<String> = cmd.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect();
                if let Some(args) = m.get("args").and_then(|a| a.as_array()) {
                    line.extend(args.iter().filter_map(|s| s.as_str().map(str::to_owned)));
                }
                out.push(line);
            }
            for v in m.values() {
                command_lines(v, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| command_lines(v, out)),
        _ => {}
    }
}

#[test]
fn the_manifests_command_lines_parse_with_this_nrvnad() {
    // YAML to JSON with the validator's own Python (PyYAML comes with it).
    let py = validator().with_file_name("python");
    let mut lines = Vec::new();
    for m in manifests() {
        let r = run(
            Command::new(&py)
                .args([
                    "-c",
                    "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
                ])
                .arg(&m),
            Duration::from_secs(60),
        );
        r.expect_code(0, "yaml to json");
        let docs: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
        command_lines(&docs, &mut lines);
    }
    let nrvnad: Vec<&Vec<String>> = lines
        .iter()
        .filter(|l| l.first().is_some_and(|c| c == "nrvnad"))
        .collect();
    assert!(nrvnad.len() >= 4, "daemon and probe command lines: {lines:?}");
    for l in nrvnad {
        // Parsed by nrvnad itself: every flag must exist. Serving lines are
        // checked with --help appended (parses, then prints help and exits 0
        // before anything runs); status probes run for real on an empty dir.
        let is_probe = l.get(1).is_some_and(|s| s == "status");
        let mut cmd = clean_command(nrvnad_bin());
        if is_probe {
            let tmp = tempfile::tempdir().unwrap();
            let args: Vec<String> = l[1..]
                .iter()
                .map(|a| {
                    if a == "/ws" {
                        tmp.path().display().to_string()
                    } else {
                        a.clone()
                    }
                })
                .collect();
            let r = run(cmd.args(&args), Duration::from_secs(30));
            assert_eq!(r.code, Some(1), "{l:?} on an empty workspace: {r:?}");
        } else {
            let r = run(
                cmd.args(&l[1..]).arg("--help").stdout(Stdio::piped()),
                Duration::from_secs(30),
            );
            assert_eq!(r.code, Some(0), "{l:?} does not parse: {}", r.stderr);
        }
    }
}
