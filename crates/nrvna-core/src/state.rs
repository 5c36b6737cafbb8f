//! Job states and the one mapping from a state to its directory.
//!
//! No other code spells a state directory: everything asks [`State::dir`].

use std::fmt;

/// Where a job directory lives. The directory is the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// `input/writing/`: being staged by a submitter, invisible to daemons.
    Writing,
    /// `input/ready/`: published and waiting for a worker.
    Ready,
    /// `processing/`: claimed by a worker.
    Processing,
    /// `output/`: finished with its artifact.
    Done,
    /// `failed/`: finished with `error.txt`.
    Failed,
}

impl State {
    /// The states a published job can be in, in lifecycle order.
    pub const PUBLISHED: [State; 4] = [State::Ready, State::Processing, State::Done, State::Failed];

    /// The directory of this state, relative to the workspace root.
    pub fn dir(self) -> &'static str {
        match self {
            State::Writing => "input/writing",
            State::Ready => "input/ready",
            State::Processing => "processing",
            State::Done => "output",
            State::Failed => "failed",
        }
    }

    /// The word users see (`flw`, NDJSON `status`).
    pub fn label(self) -> &'static str {
        match self {
            State::Writing => "writing",
            State::Ready => "queued",
            State::Processing => "running",
            State::Done => "done",
            State::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, State::Done | State::Failed)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The kind of work a job asks for (`type.txt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobType {
    Text,
    Embed,
    Vision,
    Stt,
    Tts,
}

impl JobType {
    pub fn parse(s: &str) -> Option<JobType> {
        Some(match s {
            "text" => JobType::Text,
            "embed" => JobType::Embed,
            "vision" => JobType::Vision,
            "stt" => JobType::Stt,
            "tts" => JobType::Tts,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobType::Text => "text",
            JobType::Embed => "embed",
            JobType::Vision => "vision",
            JobType::Stt => "stt",
            JobType::Tts => "tts",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dirs_match_the_contract() {
        let dirs: Vec<_> = [
            State::Writing,
            State::Ready,
            State::Processing,
            State::Done,
            State::Failed,
        ]
        .iter()
        .map(|s| s.dir())
        .collect();
        assert_eq!(dirs, ["input/writing", "input/ready", "processing", "output", "failed"]);
    }

    #[test]
    fn job_types_round_trip_and_unknown_is_none() {
        for t in ["text", "embed", "vision", "stt", "tts"] {
            assert_eq!(JobType::parse(t).unwrap().as_str(), t);
        }
        assert_eq!(JobType::parse("Text"), None);
        assert_eq!(JobType::parse("image"), None);
    }
}
