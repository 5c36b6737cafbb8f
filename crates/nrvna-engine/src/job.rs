//! What a worker and an engine say to each other: the [`Request`] a
//! worker hands to a [`Runner`], the [`Output`] or [`RunError`] it gets
//! back, and the [`Observer`] that watches the job meanwhile. Plain data,
//! so every runner can take it and the daemon can build it.

use std::sync::Arc;

pub use crate::error::RunError;
use crate::plan::sampling::Sampling;
use std::sync::atomic::{AtomicU64, Ordering};

/// One media file of a job, read into memory by the daemon.
#[derive(Clone)]
pub struct Media {
    /// The file's name in the job (`images/image_000000.png`), for errors.
    pub name: String,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Media {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Media({}, {} bytes)", self.name, self.bytes.len())
    }
}

/// A speech request: the text, and how to pick among the model's choices.
#[derive(Clone, Debug)]
pub struct SpeechRequest {
    pub text: String,
    /// 0: always the most likely choice.
    pub temp: f32,
    pub top_k: u32,
    pub seed: u32,
}

/// What a worker asks the engine to do.
#[derive(Clone, Debug)]
pub enum Request {
    Text(TextRequest),
    /// Embed this text (mean-pooled for decoder models), L2-normalised.
    Embed(String),
    /// Embed this text together with images (through the projector).
    EmbedMedia {
        text: String,
        media: Vec<Media>,
    },
    /// Voice this text (the model is OuteTTS; the vocoder makes the sound).
    Speech(SpeechRequest),
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
    pub files: Vec<Media>,
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
    /// Speech: mono samples at [`crate::run::tts::audio::SAMPLE_RATE`].
    pub audio: Option<Vec<f32>>,
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
    /// Prompt tokens whose KV was reused from another sequence.
    pub reused_tokens: u32,
    /// Seconds from the first prefill decode to the last token.
    pub gen_secs: f64,
    pub finish: Option<Finish>,
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

/// The batched engine's running figures, written by its thread after every
/// decode and read by whoever reports them (the daemon's metrics): plain
/// atomics, no lock on the decode path.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Decode calls so far.
    pub decodes: AtomicU64,
    /// Sequences in those decodes, summed (divided by `decodes`: the mean
    /// batch size).
    pub sequences: AtomicU64,
    /// Tokens in those decodes, summed.
    pub tokens: AtomicU64,
    /// Sequences in the last decode.
    pub last_sequences: AtomicU64,
    /// KV cells in use after the last decode (active sequences and the
    /// prefix cache).
    pub kv_cells_used: AtomicU64,
    /// KV cells of the shared context.
    pub kv_cells: AtomicU64,
}

impl EngineStats {
    /// Records one decode of `sequences` sequences and `tokens` tokens.
    pub fn decoded(&self, sequences: usize, tokens: usize) {
        self.decodes.fetch_add(1, Ordering::Relaxed);
        self.sequences.fetch_add(sequences as u64, Ordering::Relaxed);
        self.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        self.last_sequences.store(sequences as u64, Ordering::Relaxed);
    }
}
