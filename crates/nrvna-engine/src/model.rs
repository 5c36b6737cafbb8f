//! The loaded model, the top of the crate: the text model's weights, its
//! chat template, and the multimodal projector and speech pipeline when
//! the daemon loads them, joined in one value that every worker shares.
//! The engines see it through [`ModelParts`].

use std::path::Path;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::error::{EngineError, TemplateError};
use crate::llama::Weights;
use crate::plan::template::ChatTemplate;
use crate::run::media::Projector;
use crate::run::parts::ModelParts;
use crate::run::tts::Speech;

/// A loaded GGUF model and what the engines need to know about it.
///
/// The projector and the speech pipeline are declared before the weights
/// so that they are dropped first: the projector's mtmd context points at
/// the text model.
pub struct Model {
    /// The multimodal projector, when one was given or found.
    pub projector: Option<Projector>,
    /// The vocoder and the model's OuteTTS tokens, for speech jobs.
    pub speech: Option<Speech>,
    pub template: ChatTemplate,
    pub weights: Weights,
}

impl Model {
    /// Loads a GGUF file and its chat template (`template_file` replaces
    /// the model's). Errors say which file and what to do.
    pub fn load(path: &Path, gpu_layers: u32, template_file: Option<&Path>) -> Result<Model, EngineError> {
        let weights = Weights::load(path, gpu_layers)?;
        let raw = weights.llama.meta_val_str("tokenizer.chat_template").ok();
        let template = ChatTemplate::new(raw, template_file, &weights.llama)?;
        Ok(Model {
            projector: None,
            speech: None,
            template,
            weights,
        })
    }

    /// Loads the multimodal projector (`mmproj*.gguf`) for this model.
    pub fn attach_projector(&mut self, path: &Path, threads: u32, use_gpu: bool) -> Result<(), EngineError> {
        self.projector = Some(Projector::load(path, &self.weights.llama, threads, use_gpu)?);
        Ok(())
    }

    /// Loads the vocoder for speech jobs and reads this model's OuteTTS
    /// tokens; `speaker`: an OuteTTS speaker profile (JSON) to speak with.
    pub fn attach_vocoder(&mut self, vocoder: &Path, speaker: Option<&Path>) -> Result<(), EngineError> {
        let name = self.file_name();
        self.speech = Some(Speech::load(&self.weights.llama, &name, vocoder, speaker)?);
        Ok(())
    }

    /// Loads only the vocabulary of a GGUF file (no weights): enough to
    /// parse grammars against it.
    pub fn load_vocab(path: &Path) -> Result<LlamaModel, EngineError> {
        Weights::load_vocab(path)
    }

    /// The llama.cpp model.
    pub fn llama(&self) -> &LlamaModel {
        &self.weights.llama
    }

    /// The model's file name (recorded in meta.json).
    pub fn file_name(&self) -> String {
        self.weights.file_name()
    }

    /// Training context length (an upper bound for NRVNA_MAX_CTX).
    pub fn n_ctx_train(&self) -> u32 {
        self.weights.n_ctx_train
    }

    /// Renders a user prompt (and optional system prompt) into model text.
    pub fn render(&self, system: Option<&str>, user: &str) -> Result<String, TemplateError> {
        self.template.render(system, user)
    }

    /// Tokenizes rendered text (see [`Weights::tokenize`]).
    pub fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        self.weights.tokenize(text)
    }

    /// The context size to use, capped by the model's training context.
    pub fn cap_ctx(&self, wanted: u32) -> u32 {
        self.weights.cap_ctx(wanted)
    }
}

impl ModelParts for Model {
    fn weights(&self) -> &Weights {
        &self.weights
    }
    fn projector(&self) -> Option<&Projector> {
        self.projector.as_ref()
    }
    fn speech(&self) -> Option<&Speech> {
        self.speech.as_ref()
    }
}
