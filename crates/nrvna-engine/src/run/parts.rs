//! What the runners need of a loaded model: the weights, and the projector
//! and speech pipeline where the daemon loaded them. [`crate::Model`]
//! composes these; the runners see them through this trait, so that they
//! sit below the model that owns them.

use crate::error::RunError;
use crate::llama::Weights;
use crate::run::media::Projector;
use crate::run::tts::Speech;

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
