//! The names of the files in a job directory (`docs/FORMAT.md`,
//! `docs/CONTRACT-EXTENSIONS.md`), each spelled here once, and the result
//! artifacts as an [`Artifact`]. The lifecycle files at the workspace root
//! are in `workspace`; the claim of a shared workspace is in `members`.

/// The prompt, UTF-8 (the only file a job must have).
pub const PROMPT_FILE: &str = "prompt.txt";
/// The job type (`text`, `embed`, ...); absent means `text`.
pub const TYPE_FILE: &str = "type.txt";
/// Generation parameters (`Params`).
pub const PARAMS_FILE: &str = "params.json";
/// A JSON schema the output must match.
pub const SCHEMA_FILE: &str = "schema.json";
/// A GBNF grammar the output must match.
pub const GRAMMAR_FILE: &str = "grammar.gbnf";
/// The job's metadata (`Meta`), rewritten at finish.
pub const META_FILE: &str = "meta.json";
/// `{"custom_id": "...", "line": N}`: the batch-file request a job answers.
pub const BATCH_FILE: &str = "batch.json";
/// Why a job failed, one line.
pub const ERROR_FILE: &str = "error.txt";
/// A failed job's output so far.
pub const RESPONSE_FILE: &str = "response.txt";
/// The generated text so far, appended in whole UTF-8 characters.
pub const PARTIAL_FILE: &str = "partial.txt";
/// `{"tokens":N,"tokens_per_s":F,"updated_at":"ISO"}`, atomically replaced.
pub const PROGRESS_FILE: &str = "progress.json";
/// An empty file in `processing/<id>/`: a user asks the daemon to stop the job.
pub const CANCEL_FILE: &str = "cancel";

/// A done job's result file, one per job type's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Artifact {
    /// `result.txt`: generated text.
    Result,
    /// `transcript.txt`: speech to text.
    Transcript,
    /// `audio.wav`: text to speech.
    Audio,
    /// `embedding.json`: an embedding vector.
    Embedding,
}

impl Artifact {
    /// All artifacts in the contract's priority order: the primary artifact
    /// of a job is the first one present.
    pub const ALL: [Artifact; 4] = [
        Artifact::Result,
        Artifact::Transcript,
        Artifact::Audio,
        Artifact::Embedding,
    ];

    /// The artifact's file name in the job directory.
    pub const fn file_name(self) -> &'static str {
        match self {
            Artifact::Result => "result.txt",
            Artifact::Transcript => "transcript.txt",
            Artifact::Audio => "audio.wav",
            Artifact::Embedding => "embedding.json",
        }
    }

    /// Its kind (`artifact_kind` in `flw --json`; the contract's words,
    /// which are also the C++ `flw`'s).
    pub const fn kind(self) -> &'static str {
        match self {
            Artifact::Result => "result",
            Artifact::Transcript => "transcript",
            Artifact::Audio => "audio",
            Artifact::Embedding => "embedding",
        }
    }

    /// The artifact a file name names; `None` for any other file.
    pub fn from_file_name(name: &str) -> Option<Artifact> {
        Artifact::ALL.into_iter().find(|a| a.file_name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_priority_is_result_transcript_audio_embedding() {
        let names = Artifact::ALL.map(Artifact::file_name);
        assert_eq!(names, ["result.txt", "transcript.txt", "audio.wav", "embedding.json"]);
        let kinds = Artifact::ALL.map(Artifact::kind);
        assert_eq!(kinds, ["result", "transcript", "audio", "embedding"]);
    }

    #[test]
    fn file_names_parse_back_and_others_are_none() {
        for a in Artifact::ALL {
            assert_eq!(Artifact::from_file_name(a.file_name()), Some(a));
        }
        assert_eq!(Artifact::from_file_name("error.txt"), None);
        assert_eq!(Artifact::from_file_name("result"), None);
    }

    #[test]
    fn job_file_names_match_the_contract() {
        let names = [
            PROMPT_FILE,
            TYPE_FILE,
            PARAMS_FILE,
            SCHEMA_FILE,
            GRAMMAR_FILE,
            META_FILE,
            BATCH_FILE,
            ERROR_FILE,
            RESPONSE_FILE,
            PARTIAL_FILE,
            PROGRESS_FILE,
            CANCEL_FILE,
        ];
        assert_eq!(
            names,
            [
                "prompt.txt",
                "type.txt",
                "params.json",
                "schema.json",
                "grammar.gbnf",
                "meta.json",
                "batch.json",
                "error.txt",
                "response.txt",
                "partial.txt",
                "progress.json",
                "cancel"
            ]
        );
    }
}
