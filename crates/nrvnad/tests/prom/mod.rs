//! A Prometheus exposition parsed by the official Python parser
//! (`prometheus_client.parser.text_string_to_metric_families`, pinned in
//! scripts/pyenv-requirements.txt), for the metrics tests of the daemon and
//! of the gateway (which includes this file by path).
#![allow(dead_code)] // each test file uses a different part

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

/// One sample: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// The parsed exposition: samples by sample name, and each family's type.
pub struct Scrape {
    pub samples: BTreeMap<String, Vec<Sample>>,
    pub types: BTreeMap<String, String>,
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples, types = {}, {}
for f in text_string_to_metric_families(sys.stdin.read()):
    types[f.name] = f.type
    for s in f.samples:
        samples.setdefault(s.name, []).append([s.labels, s.value])
print(json.dumps({"samples": samples, "types": types}))
"#;

/// Parses `text` with the parser of the Python at `py`; fails the test,
/// with the parser's complaint and the text, when it refuses it.
pub fn parse(py: &Path, text: &str) -> Scrape {
    let mut child = Command::new(py)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", py.display()));
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sample = |s: &Value| -> Sample {
        let labels = s[0]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        (labels, s[1].as_f64().unwrap_or(f64::NAN))
    };
    let samples = v["samples"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, list)| (name.clone(), list.as_array().unwrap().iter().map(sample).collect()))
        .collect();
    let types = v["types"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, t)| (k.clone(), t.as_str().unwrap_or_default().to_owned()))
        .collect();
    Scrape { samples, types }
}

impl Scrape {
    /// The samples `name` whose labels include `labels`.
    pub fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.samples
            .get(name)
            .unwrap_or_else(|| panic!("no sample {name}; have {:?}", self.samples.keys().collect::<Vec<_>>()))
            .iter()
            .filter(|(l, _)| labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, v)| *v)
            .collect()
    }

    /// The one sample `name` whose labels include `labels`.
    #[track_caller]
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.matching(name, labels);
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
        found[0]
    }

    /// The sum of every sample `name` (0 when there is none).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples.get(name).map_or(0.0, |v| v.iter().map(|(_, x)| x).sum())
    }

    pub fn family_type(&self, family: &str) -> &str {
        self.types.get(family).map(String::as_str).unwrap_or("(none)")
    }

    /// (queued, running, done, failed) of `nrvna_jobs`, as `flw WS --json`
    /// gives them.
    #[track_caller]
    pub fn jobs(&self) -> [u64; 4] {
        ["queued", "running", "done", "failed"].map(|s| self.value("nrvna_jobs", &[("state", s)]) as u64)
    }
}
