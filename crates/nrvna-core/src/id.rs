//! Job ids: the only names that may ever be joined into a workspace path.
//!
//! A [`JobId`] can only be built through the contract's grammar, so a path
//! component such as `..`, `a/b` or a name with spaces can never reach a join.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The longest id the contract allows.
pub const MAX_ID_LEN: usize = 128;

/// A validated job id: digits and single underscores, 1 to 128 characters,
/// no leading, trailing or doubled underscore.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(String);

/// Why a string is not a job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("job id is empty")]
    Empty,
    #[error("job id is longer than {MAX_ID_LEN} characters")]
    TooLong,
    #[error("job id may contain only digits and single underscores")]
    BadChar,
    #[error("job id may not start or end with an underscore, nor contain two in a row")]
    BadUnderscore,
}

impl JobId {
    /// Parses `s` against the id grammar.
    pub fn parse(s: &str) -> Result<JobId, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong);
        }
        if !s.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
            return Err(IdError::BadChar);
        }
        if s.starts_with('_') || s.ends_with('_') || s.contains("__") {
            return Err(IdError::BadUnderscore);
        }
        Ok(JobId(s.to_owned()))
    }

    /// Parses a directory entry name; `None` for anything that is not a
    /// valid id (including non-UTF-8 names).
    pub fn from_os(name: &std::ffi::OsStr) -> Option<JobId> {
        name.to_str().and_then(|s| JobId::parse(s).ok())
    }

    /// A fresh id in the C++ tools' format: 20-digit microsecond timestamp,
    /// the pid, and a 6-digit per-process counter. Ids sort by submission time.
    pub fn generate() -> JobId {
        static COUNTER: AtomicU32 = AtomicU32::new(1);
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) % 1_000_000;
        JobId(format!("{micros:020}_{}_{n:06}", std::process::id()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for JobId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobId::parse(s)
    }
}

impl AsRef<std::path::Path> for JobId {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_contract_examples() {
        for ok in ["1", "01764164852123456_4242_000001", "1_2_3", &"9".repeat(128)] {
            assert!(JobId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_path_tricks_and_bad_underscores() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a",
            "1/2",
            "1 2",
            "1\n2",
            "_1",
            "1_",
            "1__2",
            "１",
            &"9".repeat(129),
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn generated_ids_are_valid_and_sorted() {
        let a = JobId::generate();
        let b = JobId::generate();
        assert!(JobId::parse(a.as_str()).is_ok());
        assert!(a < b, "{a} should sort before {b}");
        assert_eq!(a.as_str().split('_').next().unwrap().len(), 20);
    }

    proptest! {
        #[test]
        fn parse_never_accepts_a_path_separator_or_dot(s in "\\PC{0,140}") {
            if let Ok(id) = JobId::parse(&s) {
                prop_assert!(!id.as_str().contains('/') && !id.as_str().contains('.'));
                prop_assert!(id.as_str().len() <= MAX_ID_LEN);
                prop_assert_eq!(id.as_str(), s.as_str());
            }
        }

        #[test]
        fn valid_grammar_round_trips(parts in proptest::collection::vec("[0-9]{1,8}", 1..6)) {
            let s = parts.join("_");
            prop_assume!(s.len() <= MAX_ID_LEN);
            let id = JobId::parse(&s).unwrap();
            prop_assert_eq!(id.as_str(), s.as_str());
        }
    }
}
