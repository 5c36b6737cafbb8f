//! What the engines need of a loaded model: the weights, and the projector
//! and speech pipeline where the daemon loaded them. [`crate::Model`]
//! composes these; the per-job and batched engines see them through this
//! trait, so that they sit below the model that owns them. Its provided
//! methods hand the parts to the runners that need them (embed, media,
//! tts), turning a missing part into the job's failure.

use std::sync::Arc;

use llama_cpp_2::mtmd::MtmdInputChunks;

use crate::error::RunError;
use crate::job::{Media, MediaInput, Observer, Output, SpeechRequest, TextRequest};
use crate::llama::Weights;
use crate::plan::config::EngineConfig;
use crate::run::embed::embed_media;
use crate::run::media::{job_kind, plan_media, Projector};
use crate::run::tts::{speak, Speech};

/// The parts of a loaded model that runners use.
pub trait ModelParts: Send + Sync {
    fn weights(&self) -> &Weights;
    /// The multimodal projector, when one was loaded.
    fn projector(&self) -> Option<&Projector>;
    /// The vocoder and the model's OuteTTS tokens, when loaded.
    fn speech(&self) -> Option<&Speech>;

    /// The projector, or the job's failure that says which flag to give.
    fn require_projector(&self, what: &str) -> Result<&Projector, RunError> {
        self.projector().ok_or_else(|| {
            RunError::Rejected(format!(
                "{what} needs a multimodal projector, and this daemon has none; start nrvnad with --mmproj FILE (the mmproj*.gguf made for {}), or put it beside the model",
                self.weights().file_name()
            ))
        })
    }

    /// An embedding of text with images (see [`embed_media`]).
    fn embed_media(&self, threads: u32, text: &str, media: &[Media]) -> Result<Output, RunError> {
        let proj = self.require_projector("an embedding with images")?;
        embed_media(self.weights(), proj, threads, text, media)
    }

    /// A media job's prompt (see [`plan_media`]).
    fn plan_media(
        &self,
        limit: u32,
        req: &TextRequest,
        media: &MediaInput,
    ) -> Result<(MtmdInputChunks, u32, u32), RunError> {
        plan_media(self.require_projector(job_kind(media))?, limit, req, media)
    }

    /// A text-to-speech job (see [`speak`]).
    fn speak(
        &self,
        cfg: &EngineConfig,
        threads: u32,
        req: SpeechRequest,
        obs: Arc<dyn Observer>,
    ) -> Result<Output, RunError> {
        speak(self.weights(), self.require_speech()?, cfg, threads, req, obs)
    }

    /// The speech pipeline, or the job's failure that says which flag to give.
    fn require_speech(&self) -> Result<&Speech, RunError> {
        self.speech().ok_or_else(|| {
            RunError::Rejected(format!(
                "a text-to-speech job needs a vocoder, and this daemon has none; start nrvnad with --vocoder FILE (a WavTokenizer GGUF such as WavTokenizer-Large-75) and an OuteTTS model, or put the vocoder beside {}",
                self.weights().file_name()
            ))
        })
    }
}
