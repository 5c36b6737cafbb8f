//! `params.json`: optional per-job generation controls.
//!
//! An nrvna extension of the contract (the C++ tools ignore the file).
//! `wrk` writes it and refuses unknown keys; the daemon ignores unknown keys
//! with a warning, so newer submitters still work with older daemons.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The largest `params.json` a reader accepts.
pub const MAX_PARAMS_BYTES: u64 = 64 * 1024;

/// Per-job overrides of the daemon's defaults. `None` means "use the default".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temp: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f32>,
    /// Subtracted from a token's logit once per time it occurred in the
    /// penalty window (OpenAI's `frequency_penalty`, -2 to 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// Subtracted from the logit of every token that occurred in the
    /// penalty window (OpenAI's `presence_penalty`, -2 to 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    /// Queue priority; absent means normal. Daemons that do not know it
    /// ignore it (the C++ daemon never reads params.json).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// The model the job needs: only a daemon serving that model (by file
    /// name, file stem, or the model's own name) claims it; absent means
    /// any daemon. Daemons that do not know the key ignore it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// A job's queue priority: a daemon hands higher priorities to its workers
/// first, and ids in order within one priority.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }

    /// Parses `high`, `normal` or `low`.
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "low" => Some(Priority::Low),
            "normal" => Some(Priority::Normal),
            "high" => Some(Priority::High),
            _ => None,
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Priority, String> {
        Priority::parse(s).ok_or_else(|| format!("priority {s:?} is not one of high, normal, low"))
    }
}

/// The keys `params.json` may hold.
pub const KNOWN_KEYS: [&str; 14] = [
    "system",
    "temp",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "max_tokens",
    "stop",
    "timeout_s",
    "priority",
    "model",
];

#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("is not a JSON object")]
    NotObject,
    #[error("has unknown key `{0}` (known: system, temp, top_k, top_p, min_p, repeat_penalty, frequency_penalty, presence_penalty, seed, max_tokens, stop, timeout_s, priority, model)")]
    UnknownKey(String),
    #[error("{0}")]
    Range(String),
}

impl Params {
    pub fn is_empty(&self) -> bool {
        *self == Params::default()
    }

    /// Strict parse (for submitters): unknown keys are an error.
    pub fn parse_strict(bytes: &[u8]) -> Result<Params, ParamsError> {
        let (p, unknown) = Params::parse_lenient(bytes)?;
        match unknown.into_iter().next() {
            Some(k) => Err(ParamsError::UnknownKey(k)),
            None => Ok(p),
        }
    }

    /// Lenient parse (for the daemon): unknown keys are returned, not fatal.
    pub fn parse_lenient(bytes: &[u8]) -> Result<(Params, Vec<String>), ParamsError> {
        let v: Value = serde_json::from_slice(bytes)?;
        let Value::Object(mut map) = v else {
            return Err(ParamsError::NotObject);
        };
        let unknown: Vec<String> = map
            .keys()
            .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in &unknown {
            map.remove(k);
        }
        let p: Params = serde_json::from_value(Value::Object(map))?;
        p.validate()?;
        Ok((p, unknown))
    }

    /// Range checks, with messages that name the flag's meaning.
    pub fn validate(&self) -> Result<(), ParamsError> {
        let err = |m: &str| Err(ParamsError::Range(m.to_owned()));
        if self.temp.is_some_and(|t| !(t.is_finite() && t >= 0.0)) {
            return err("temp must be a finite number >= 0 (0 means greedy)");
        }
        if self.top_k.is_some_and(|k| k < 0) {
            return err("top_k must be >= 0 (0 disables it)");
        }
        if self.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            return err("top_p must be in (0, 1]");
        }
        if self.min_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
            return err("min_p must be in [0, 1]");
        }
        if self.repeat_penalty.is_some_and(|p| !(p.is_finite() && p > 0.0)) {
            return err("repeat_penalty must be a finite number > 0 (1 disables it)");
        }
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if v.is_some_and(|p| !(-2.0..=2.0).contains(&p)) {
                return Err(ParamsError::Range(format!(
                    "{name} must be a number from -2 to 2 (0 disables it)"
                )));
            }
        }
        if self.max_tokens == Some(0) {
            return err("max_tokens must be at least 1");
        }
        if let Some(stop) = &self.stop {
            if stop.len() > 16 || stop.iter().any(|s| s.is_empty() || s.len() > 256) {
                return err("stop takes at most 16 strings of 1 to 256 bytes");
            }
        }
        if self.timeout_s.is_some_and(|t| !(t.is_finite() && t > 0.0)) {
            return err("timeout must be a number of seconds > 0");
        }
        if let Some(m) = &self.model {
            if m.trim().is_empty() || m.len() > 256 || m.chars().any(char::is_control) || m.trim() != m {
                return err("model must be a name of 1 to 256 bytes without control characters or surrounding spaces");
            }
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_else(|_| b"{}".to_vec());
        v.push(b'\n');
        v
    }

    /// The values as a JSON object (for recording in meta.json).
    pub fn to_map(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strict_refuses_unknown_lenient_reports_it() {
        let src = br#"{"temp":0.5,"frobnicate":1}"#;
        assert!(matches!(Params::parse_strict(src), Err(ParamsError::UnknownKey(k)) if k == "frobnicate"));
        let (p, unknown) = Params::parse_lenient(src).unwrap();
        assert_eq!(p.temp, Some(0.5));
        assert_eq!(unknown, ["frobnicate"]);
    }

    #[test]
    fn ranges_and_types_are_checked() {
        for bad in [
            &br#"{"temp":-1}"#[..],
            br#"{"top_p":0}"#,
            br#"{"max_tokens":0}"#,
            br#"{"seed":-3}"#,
            br#"{"stop":[""]}"#,
            br#"{"temp":"hot"}"#,
            br#"{"timeout_s":0}"#,
            br#"{"priority":"urgent"}"#,
            br#"[1]"#,
        ] {
            assert!(Params::parse_lenient(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn round_trip() {
        let p = Params {
            temp: Some(0.0),
            seed: Some(7),
            stop: Some(vec!["\n\n".into()]),
            ..Default::default()
        };
        assert_eq!(Params::parse_strict(&p.to_bytes()).unwrap(), p);
        assert!(Params::default().is_empty());
    }

    #[test]
    fn priority_is_a_lowercase_word_and_orders_high_first() {
        let p = Params::parse_strict(br#"{"priority":"high"}"#).unwrap();
        assert_eq!(p.priority, Some(Priority::High));
        assert!(String::from_utf8(p.to_bytes())
            .unwrap()
            .contains(r#""priority": "high""#));
        assert!(Priority::High > Priority::Normal && Priority::Normal > Priority::Low);
        assert_eq!("low".parse::<Priority>(), Ok(Priority::Low));
        assert!("HIGH".parse::<Priority>().is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = Params::parse_lenient(s.as_bytes());
        }
    }
}
