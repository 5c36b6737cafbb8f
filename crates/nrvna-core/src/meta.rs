//! `meta.json`: the job's metadata, shared with the C++ tools.
//!
//! Kept as a JSON object so that keys written by other implementations
//! survive our rewrites; the keys the contract names are type-checked on
//! parse, and a key of the wrong type makes the whole file invalid.

use serde_json::{Map, Value};

use crate::id::JobId;
use crate::state::JobType;

/// The largest `meta.json` a reader accepts.
pub const MAX_META_BYTES: u64 = 1 << 20;

/// A parsed, validated `meta.json`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Meta(Map<String, Value>);

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
        Meta(Map::new())
    }

    /// Parses and validates the known keys. Unknown keys are kept as they are.
    pub fn parse(bytes: &[u8]) -> Result<Meta, MetaError> {
        let v: Value = serde_json::from_slice(bytes)?;
        let Value::Object(map) = v else {
            return Err(MetaError::NotObject);
        };
        let m = Meta(map);
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), MetaError> {
        let m = &self.0;
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

    /// Pretty JSON with a trailing newline, as written to disk.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(&self.0).unwrap_or_else(|_| b"{}".to_vec());
        v.push(b'\n');
        v
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    pub fn set(&mut self, key: &str, v: impl Into<Value>) {
        self.0.insert(key.to_owned(), v.into());
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.0.remove(key)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    pub fn mode(&self) -> Option<JobType> {
        self.str("mode").and_then(JobType::parse)
    }

    pub fn parent(&self) -> Option<JobId> {
        self.str("parent").and_then(|s| JobId::parse(s).ok())
    }

    pub fn tags(&self) -> Vec<String> {
        self.0
            .get("tags")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }

    pub fn recovery_attempts(&self) -> u64 {
        self.0.get("recovery_attempts").and_then(Value::as_u64).unwrap_or(0)
    }

    pub fn duration_s(&self) -> Option<f64> {
        self.0.get("duration_s").and_then(Value::as_f64)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
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
        assert_eq!(m.mode(), Some(JobType::Text));
        assert_eq!(m.tags(), ["a-b", "c_1"]);
        assert_eq!(m.parent().unwrap().as_str(), "1_2_3");
        assert_eq!(m.recovery_attempts(), 2);
        let again = Meta::parse(&m.to_bytes()).unwrap();
        assert_eq!(again, m);
        assert_eq!(again.get("x_cpp_extra").unwrap()["k"][1], 2);
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
            m.set("tags", tags.clone());
            m.set("recovery_attempts", n);
            let back = Meta::parse(&m.to_bytes()).unwrap();
            prop_assert_eq!(back.tags(), tags);
            prop_assert_eq!(back.recovery_attempts(), n);
        }
    }
}
