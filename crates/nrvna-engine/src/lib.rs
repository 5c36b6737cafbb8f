//! nrvna's inference engines on llama.cpp (`llama-cpp-2`).
//!
//! Workers hand a [`Request`] to a [`Runner`] and get an [`Output`] back.
//! Two runners exist: [`perjob::PerJobRunner`] (a fresh context for every job,
//! the C++ design) and [`batched::BatchedRunner`] (one context shared by all
//! claimed jobs, continuous batching, the default).

pub mod batched;
pub mod config;
pub mod embed;
pub mod media;
pub mod model;
pub mod perjob;
pub mod probe;
pub mod sampling;
pub mod sched;
pub mod template;
pub mod text;
pub mod tts;

use std::sync::Arc;

pub use config::{EngineConfig, FlashAttn};
pub use model::Model;
pub use sampling::Sampling;

/// What a worker asks the engine to do.
#[derive(Clone, Debug)]
pub enum Request {
    Text(TextRequest),
    /// Embed this text (mean-pooled for decoder models), L2-normalised.
    Embed(String),
    /// Embed this text together with images (through the projector).
    EmbedMedia {
        text: String,
        media: Vec<media::Media>,
    },
    /// Voice this text (the model is OuteTTS; the vocoder makes the sound).
    Speech(tts::SpeechRequest),
}

/// A text generation request; the prompt is already rendered with the chat template.
#[derive(Clone, Debug)]
pub struct TextRequest {
    pub prompt: String,
    pub sampling: Sampling,
    pub max_tokens: u32,
    pub stop: Vec<String>,
    /// A GBNF grammar constraining the output.
    pub grammar: Option<String>,
    /// Images or audio for the projector; the prompt holds their markers.
    pub media: Option<MediaInput>,
}

/// A vision or speech job's media.
#[derive(Clone, Debug)]
pub struct MediaInput {
    pub files: Vec<media::Media>,
    /// Audio (speech to text) rather than images.
    pub audio: bool,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The model produced an end-of-generation token.
    Eog,
    /// `max_tokens` or the context was reached.
    Length,
    /// A stop string appeared.
    StopString,
}

impl Finish {
    /// The OpenAI `finish_reason` for this ending.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Eog | Finish::StopString => "stop",
            Finish::Length => "length",
        }
    }
}

/// The result of a request.
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// Generated text (raw: think blocks not stripped yet).
    pub text: String,
    pub embedding: Option<Vec<f32>>,
    /// Speech: mono samples at [`tts::audio::SAMPLE_RATE`].
    pub audio: Option<Vec<f32>>,
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
    /// Prompt tokens whose KV was reused from another sequence.
    pub reused_tokens: u32,
    /// Seconds from the first prefill decode to the last token.
    pub gen_secs: f64,
    pub finish: Option<Finish>,
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

/// Receives a job's progress and may stop it.
///
/// `on_text` and `should_stop` are called from the thread that decodes (the
/// batched engine's own thread), between tokens: they must be cheap and do
/// no I/O. `poll` is called from the worker's thread that waits for the job,
/// at least every [`POLL_INTERVAL`] while it runs: slow work (writing partial
/// output, looking for a cancel request) belongs there.
pub trait Observer: Send + Sync {
    /// New generated text (whole UTF-8 characters); `tokens` is the total so far.
    fn on_text(&self, _text: &str, _tokens: u32) {}
    /// Checked between tokens; `Some(reason)` stops the job.
    fn should_stop(&self) -> Option<String> {
        None
    }
    /// Periodic work on the waiting worker's thread.
    fn poll(&self) {}
}

/// How often a waiting worker calls [`Observer::poll`].
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// An observer that watches nothing.
pub struct NoObserver;
impl Observer for NoObserver {}

/// One worker's handle on an engine.
pub trait Runner: Send {
    fn run(&mut self, req: Request, obs: Arc<dyn Observer>) -> Result<Output, RunError>;
}
