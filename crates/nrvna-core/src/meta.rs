//! `meta.json`: the job's metadata, shared with the C++ tools.
//!
//! The keys the contract names are typed fields, checked on parse (a key of
//! the wrong type makes the whole file invalid); every other key (this
//! implementation's extras, another implementation's) is kept as it was, in
//! its order, so that a rewrite never loses what another tool wrote.

use serde_json::{Map, Value};

use crate::id::JobId;
use crate::state::JobType;

/// The largest `meta.json` a reader accepts.
pub const MAX_META_BYTES: u64 = 1 << 20;

/// The keys the contract names (the typed fields of [`Meta`]).
pub const CONTRACT_KEYS: [&str; 10] = [
    "submitted_at",
    "mode",
    "parent",
    "tags",
    "output_format",
    "recovery_attempts",
    "completed_at",
    "duration_s",
    "artifacts",
    "status",
];

/// How a finished job ended (`status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Done,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Failed => "failed",
        }
    }
}

/// A parsed, validated `meta.json`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Meta {
    /// ISO-8601 UTC, set by the submitter.
    pub submitted_at: Option<String>,
    pub mode: Option<JobType>,
    pub parent: Option<JobId>,
    /// Absent and empty are the same.
    pub tags: Vec<String>,
    /// `json_schema` or `gbnf`.
    pub output_format: Option<String>,
    /// Written only when above zero.
    pub recovery_attempts: u64,
    pub completed_at: Option<String>,
    pub duration_s: Option<f64>,
    pub artifacts: Option<Vec<String>>,
    pub status: Option<Status>,
    /// Every other key, as it was.
    extra: Map<String, Value>,
}

/// Why a `meta.json` is invalid.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("is not a JSON object")]
    NotObject,
    #[error("key `{key}` {problem}")]
    BadKey { key: &'static str, problem: &'static str },
}

/// Checks one tag: 1-64 characters of `[A-Za-z0-9_-]`.
pub fn valid_tag(t: &str) -> bool {
    (1..=64).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn bad(key: &'static str, problem: &'static str) -> MetaError {
    MetaError::BadKey { key, problem }
}

impl Meta {
    pub fn new() -> Meta {
        Meta::default()
    }

    /// Parses and validates the contract's keys. Other keys are kept as they are.
    pub fn parse(bytes: &[u8]) -> Result<Meta, MetaError> {
        let v: Value = serde_json::from_slice(bytes)?;
        let Value::Object(map) = v else {
            return Err(MetaError::NotObject);
        };
        Meta::from_map(map)
    }

    /// Builds a Meta from a JSON object, checking the contract's keys.
    pub fn from_map(mut m: Map<String, Value>) -> Result<Meta, MetaError> {
        validate(&m)?;
        let string = |v: Value| v.as_str().map(str::to_owned);
        let strings = |v: Value| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect::<Vec<_>>()
            })
        };
        let mut take = |k: &str| m.remove(k);
        Ok(Meta {
            submitted_at: take("submitted_at").and_then(string),
            mode: take("mode").and_then(|v| v.as_str().and_then(JobType::parse)),
            parent: take("parent").and_then(|v| v.as_str().and_then(|s| JobId::parse(s).ok())),
            tags: take("tags").and_then(strings).unwrap_or_default(),
            output_format: take("output_format").and_then(string),
            recovery_attempts: take("recovery_attempts").and_then(|v| v.as_u64()).unwrap_or(0),
            completed_at: take("completed_at").and_then(string),
            duration_s: take("duration_s").and_then(|v| v.as_f64()),
            artifacts: take("artifacts").and_then(strings),
            status: take("status").and_then(|v| match v.as_str() {
                Some("done") => Some(Status::Done),
                Some("failed") => Some(Status::Failed),
                _ => None,
            }),
            extra: m,
        })
    }

    /// The whole object: the contract's keys first, then every other key.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.to_owned(), v);
            }
        };
        put("submitted_at", self.submitted_at.clone().map(Value::from));
        put("mode", self.mode.map(|t| t.as_str().into()));
        put("parent", self.parent.as_ref().map(|p| p.as_str().into()));
        put("tags", (!self.tags.is_empty()).then(|| self.tags.clone().into()));
        put("output_format", self.output_format.clone().map(Value::from));
        put(
            "recovery_attempts",
            (self.recovery_attempts > 0).then(|| self.recovery_attempts.into()),
        );
        put("completed_at", self.completed_at.clone().map(Value::from));
        put("duration_s", self.duration_s.map(two_decimals));
        put("artifacts", self.artifacts.clone().map(Value::from));
        put("status", self.status.map(|s| s.as_str().into()));
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        m
    }

    /// Pretty JSON with a trailing newline, as written to disk.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(&self.to_map()).unwrap_or_else(|_| b"{}".to_vec());
        v.push(b'\n');
        v
    }

    /// A key outside the contract (an extra).
    pub fn extra(&self, key: &str) -> Option<&Value> {
        self.extra.get(key)
    }

    pub fn extra_str(&self, key: &str) -> Option<&str> {
        self.extra.get(key).and_then(Value::as_str)
    }

    /// Sets a key outside the contract. The contract's keys are fields.
    pub fn set_extra(&mut self, key: &str, v: impl Into<Value>) {
        assert!(
            !CONTRACT_KEYS.contains(&key),
            "meta.json key {key:?} is a field of Meta, not an extra"
        );
        self.extra.insert(key.to_owned(), v.into());
    }

    pub fn remove_extra(&mut self, key: &str) -> Option<Value> {
        self.extra.remove(key)
    }

    /// Every key outside the contract.
    pub fn extras(&self) -> &Map<String, Value> {
        &self.extra
    }
}

fn validate(m: &Map<String, Value>) -> Result<(), MetaError> {
    for key in ["submitted_at", "completed_at"] {
        if let Some(v) = m.get(key) {
            if !v.is_string() {
                return Err(bad(
                    if key == "submitted_at" {
                        "submitted_at"
                    } else {
                        "completed_at"
                    },
                    "must be a string",
                ));
            }
        }
    }
    if let Some(v) = m.get("mode") {
        match v.as_str() {
            Some(s) if JobType::parse(s).is_some() => {}
            Some(_) => return Err(bad("mode", "must be one of text, embed, vision, stt, tts")),
            None => return Err(bad("mode", "must be a string")),
        }
    }
    if let Some(v) = m.get("parent") {
        match v.as_str() {
            Some(s) if JobId::parse(s).is_ok() => {}
            _ => return Err(bad("parent", "must be a valid job id string")),
        }
    }
    if let Some(v) = m.get("tags") {
        let ok = v
            .as_array()
            .is_some_and(|a| a.iter().all(|t| t.as_str().is_some_and(valid_tag)));
        if !ok {
            return Err(bad(
                "tags",
                "must be an array of 1-64 character tags from [A-Za-z0-9_-]",
            ));
        }
    }
    if let Some(v) = m.get("output_format") {
        if !matches!(v.as_str(), Some("json_schema" | "gbnf")) {
            return Err(bad("output_format", "must be \"json_schema\" or \"gbnf\""));
        }
    }
    if let Some(v) = m.get("recovery_attempts") {
        if v.as_u64().is_none() {
            return Err(bad("recovery_attempts", "must be a non-negative integer"));
        }
    }
    if let Some(v) = m.get("duration_s") {
        if !v.is_number() {
            return Err(bad("duration_s", "must be a number"));
        }
    }
    if let Some(v) = m.get("artifacts") {
        if !v.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
            return Err(bad("artifacts", "must be an array of file names"));
        }
    }
    if let Some(v) = m.get("status") {
        if !matches!(v.as_str(), Some("done" | "failed")) {
            return Err(bad("status", "must be \"done\" or \"failed\""));
        }
    }
    Ok(())
}

/// Rounds seconds to the contract's two decimals.
pub fn two_decimals(secs: f64) -> Value {
    let r = (secs * 100.0).round() / 100.0;
    serde_json::Number::from_f64(r)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_keeps_unknown_keys() {
        let src = br#"{"submitted_at":"2026-01-01T00:00:00.000000Z","mode":"text","tags":["a-b","c_1"],
            "parent":"1_2_3","recovery_attempts":2,"x_cpp_extra":{"k":[1,2]}}"#;
        let m = Meta::parse(src).unwrap();
        assert_eq!(m.mode, Some(JobType::Text));
        assert_eq!(m.tags, ["a-b", "c_1"]);
        assert_eq!(m.parent.as_ref().unwrap().as_str(), "1_2_3");
        assert_eq!(m.recovery_attempts, 2);
        let again = Meta::parse(&m.to_bytes()).unwrap();
        assert_eq!(again, m);
        assert_eq!(again.extra("x_cpp_extra").unwrap()["k"][1], 2);
        let keys: Vec<String> = again.to_map().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "submitted_at",
                "mode",
                "parent",
                "tags",
                "recovery_attempts",
                "x_cpp_extra"
            ]
        );
    }

    #[test]
    #[should_panic(expected = "is a field of Meta")]
    fn a_contract_key_is_never_set_as_an_extra() {
        Meta::new().set_extra("status", "done");
    }

    #[test]
    fn wrong_types_are_rejected() {
        for bad in [
            &br#"[]"#[..],
            br#"{"mode":"image"}"#,
            br#"{"mode":3}"#,
            br#"{"tags":"a"}"#,
            br#"{"tags":["has space"]}"#,
            br#"{"parent":"../x"}"#,
            br#"{"recovery_attempts":-1}"#,
            br#"{"recovery_attempts":"1"}"#,
            br#"{"status":"ok"}"#,
            br#"{"output_format":"xml"}"#,
            br#"{"submitted_at":1}"#,
            br#"{"duration_s":"1.0"}"#,
            b"{\"mode\":\"te\xffxt\"}",
            b"not json",
        ] {
            assert!(Meta::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn deeply_nested_arrays_are_an_error_not_a_stack_overflow() {
        let mut s = String::from("{\"x\":");
        s.push_str(&"[".repeat(100_000));
        s.push_str(&"]".repeat(100_000));
        s.push('}');
        assert!(Meta::parse(s.as_bytes()).is_err());
    }

    #[test]
    fn two_decimals_rounds() {
        assert_eq!(two_decimals(1.23456), serde_json::json!(1.23));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Meta::parse(&bytes);
        }

        #[test]
        fn any_valid_meta_round_trips(tags in proptest::collection::vec("[A-Za-z0-9_-]{1,64}", 0..4), n in 0u64..10) {
            let mut m = Meta::new();
            m.tags = tags.clone();
            m.recovery_attempts = n;
            let back = Meta::parse(&m.to_bytes()).unwrap();
            prop_assert_eq!(back.tags, tags);
            prop_assert_eq!(back.recovery_attempts, n);
        }
    }
}
