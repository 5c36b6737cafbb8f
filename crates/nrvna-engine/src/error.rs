//! The engine's errors. [`EngineError`]: loading the model and what goes
//! with it, creating contexts, starting the engines; each names what
//! failed, the file where there is one, and what to do. [`RunError`]: why
//! one job produced no output. At the bottom of the crate: every layer
//! returns them.

use std::path::PathBuf;

use llama_cpp_2::mtmd::MtmdInitError;
use llama_cpp_2::LlamaContextLoadError;
use llama_cpp_2::LlamaModelLoadError;

/// Loading, context creation or engine start failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("initialising llama.cpp: {reason}")]
    Backend { reason: String },
    /// `what` (model, projector, vocoder) cannot be read.
    #[error("{what} {}: {source}; {hint}", path.display())]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("{what} {} is not a regular file; {hint}", path.display())]
    NotAFile {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("llama.cpp could not load {} as a GGUF model ({source}); check that the file is complete (its sha256) and is a GGUF model", path.display())]
    ModelLoad { path: PathBuf, source: LlamaModelLoadError },
    #[error("llama.cpp could not load the vocabulary of {}: {source}", path.display())]
    VocabLoad { path: PathBuf, source: LlamaModelLoadError },
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("projector path {} is not UTF-8", path.display())]
    ProjectorPath { path: PathBuf },
    #[error("llama.cpp could not load {} as a projector for this model ({source}); check that it is the mmproj file made for the model (the llama.cpp log above says why)", path.display())]
    ProjectorLoad { path: PathBuf, source: MtmdInitError },
    #[error("llama.cpp could not load the vocoder {} ({source}); it must be a WavTokenizer decoder GGUF such as WavTokenizer-Large-75", path.display())]
    VocoderLoad { path: PathBuf, source: LlamaModelLoadError },
    #[error("{} is a {arch:?} model, not a WavTokenizer decoder (architecture \"wavtokenizer-dec\"); give --vocoder a WavTokenizer GGUF such as WavTokenizer-Large-75", path.display())]
    NotAVocoder { path: PathBuf, arch: String },
    #[error("vocoder {} declares no codebook (wavtokenizer-dec.vocab_size)", path.display())]
    NoCodebook { path: PathBuf },
    #[error("vocoder {}: the vocoder gives {n_out} values per code; a WavTokenizer decoder gives n_fft + 2 (1282 for WavTokenizer-Large-75)", path.display())]
    VocoderWidth { path: PathBuf, n_out: usize },
    /// The model lacks OuteTTS's special tokens.
    #[error("{model} is not an OuteTTS model: its vocabulary lacks {missing}; text-to-speech needs nrvnad started with an OuteTTS GGUF (0.2 or 0.3) as MODEL")]
    NotOuteTts { model: String, missing: String },
    #[error("{model} has no audio-code tokens <|0|>.. or duration tokens <|t_0.00|>..: it is not an OuteTTS model")]
    NoAudioTokens { model: String },
    #[error("{model} has no {token} token")]
    MissingToken { model: String, token: &'static str },
    #[error("speaker profile {}: {source}", path.display())]
    SpeakerFile { path: PathBuf, source: std::io::Error },
    #[error("speaker profile {}: {source}", path.display())]
    Speaker { path: PathBuf, source: SpeakerError },
    #[error("the voice ({voice}) uses audio code {max_code} but the vocoder's codebook has {n_codes}; use a speaker profile made for this vocoder")]
    VoiceCodebook { voice: String, max_code: u32, n_codes: u32 },
    /// `what`: "a llama.cpp context"; `hint` follows the reason.
    #[error("creating {what}: {source}{hint}")]
    Context {
        what: String,
        source: LlamaContextLoadError,
        hint: &'static str,
    },
    #[error("starting the engine thread: {source}")]
    EngineThread { source: std::io::Error },
    #[error("the engine thread died while starting")]
    EngineThreadDied,
}

impl EngineError {
    /// The error of a failed `LlamaBackend::init` (kept by the backend's
    /// `OnceLock`, so it is rebuilt from the stored one).
    pub(crate) fn backend(e: &llama_cpp_2::LlamaCppError) -> EngineError {
        EngineError::Backend { reason: e.to_string() }
    }
}

/// A chat template that does not compile or render.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("chat template file {} (NRVNA_CHAT_TEMPLATE_FILE): {source}; point it at a readable Jinja file or unset it", path.display())]
    File { path: PathBuf, source: std::io::Error },
    #[error("the chat template from {origin} does not compile: {source}")]
    Compile { origin: String, source: minijinja::Error },
    #[error("rendering the chat template ({origin}) failed: {source}")]
    Render { origin: String, source: minijinja::Error },
}

/// An OuteTTS speaker profile that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error(
        "not an OuteTTS speaker profile ({source}); expected {{\"words\": [{{\"word\", \"duration\", \"codes\"}}]}}"
    )]
    Json { source: serde_json::Error },
    #[error("the speaker profile has no words, or a word without codes")]
    Empty,
}

/// Why a request did not produce an output.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The job itself is at fault (prompt too long, bad grammar, ...).
    #[error("{0}")]
    Rejected(String),
    /// The observer asked to stop (cancel, timeout); `partial` is the text so far.
    #[error("{reason}")]
    Stopped {
        reason: String,
        partial: String,
        generated_tokens: u32,
    },
    /// The engine itself failed (its thread is gone, a decode failed for a
    /// reason no single job's input explains, memory ran out). Not the
    /// job's fault: the daemon stops claiming and leaves the job recoverable.
    #[error("engine fault: {0}")]
    Fault(String),
}

impl RunError {
    /// Classifies a failed decode. `sole`: the batch held only this job's
    /// tokens, so an invalid-input error (-1) is the job's own.
    pub fn from_decode(e: llama_cpp_2::DecodeError, sole: bool, what: &str) -> RunError {
        match e {
            llama_cpp_2::DecodeError::NTokensZero if sole => {
                RunError::Rejected(format!("llama.cpp refused this job's input while {what} ({e})"))
            }
            _ => RunError::Fault(format!("llama.cpp decode failed while {what}: {e}")),
        }
    }
}

/// A context that cannot be created while running a job (memory, the
/// backend) is the engine's fault, not the job's.
impl From<EngineError> for RunError {
    fn from(e: EngineError) -> RunError {
        RunError::Fault(e.to_string())
    }
}
