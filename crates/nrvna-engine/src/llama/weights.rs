//! The text model's weights: one `LlamaModel` loaded from a GGUF file and
//! shared by every worker, with the tokenization and context-size rules
//! that every runner applies the same way.

use std::path::{Path, PathBuf};

use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::error::EngineError;
use crate::llama::{backend, check_file, cpu_has_amx};

/// A loaded GGUF model.
pub struct Weights {
    pub llama: LlamaModel,
    pub path: PathBuf,
    /// Training context length (an upper bound for NRVNA_MAX_CTX).
    pub n_ctx_train: u32,
}

impl Weights {
    /// Loads a GGUF file with `gpu_layers` layers on the GPU. Errors say
    /// which file and what to do.
    pub fn load(path: &Path, gpu_layers: u32) -> Result<Weights, EngineError> {
        let backend = backend()?;
        check_file(path, "model", "pass the path of a .gguf file")?;
        // On a CPU with AMX, ggml repacks nearly every quantised weight
        // (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_XS) into its own buffer;
        // read through a mapping, each repacked tensor's file pages would
        // stay resident beside the copy. There, and only with no layer on
        // a GPU, the weights are read instead of mapped. Elsewhere the
        // mapping is cheaper: rows of the token-embedding table that no
        // prompt uses are never read (SmolLM2: 26 MB less than reading).
        let mmap = gpu_layers > 0 || !cpu_has_amx();
        let params = LlamaModelParams::default()
            .with_n_gpu_layers(gpu_layers)
            .with_use_mmap(mmap);
        let llama = LlamaModel::load_from_file(backend, path, &params).map_err(|source| EngineError::ModelLoad {
            path: path.to_owned(),
            source,
        })?;
        let n_ctx_train = llama.n_ctx_train();
        Ok(Weights {
            llama,
            path: path.to_owned(),
            n_ctx_train,
        })
    }

    /// Loads only the vocabulary of a GGUF file (no weights): enough to
    /// parse grammars against it.
    pub fn load_vocab(path: &Path) -> Result<LlamaModel, EngineError> {
        let params = LlamaModelParams::default().with_vocab_only(true);
        LlamaModel::load_from_file(backend()?, path, &params).map_err(|source| EngineError::VocabLoad {
            path: path.to_owned(),
            source,
        })
    }

    /// The model's file name (recorded in meta.json).
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Tokenizes rendered text, adding BOS when the model wants it and the
    /// template did not already put it there.
    pub fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        let vocab = self.llama.vocab();
        let mut toks = vocab.tokenize(text.as_bytes(), false, true);
        if vocab.should_add_bos() && toks.first() != Some(&vocab.bos()) {
            toks.insert(0, vocab.bos());
        }
        toks
    }

    /// Tokenizes plain text for embedding (special tokens added as the model wants).
    pub fn tokenize_plain(&self, text: &str) -> Vec<LlamaToken> {
        self.llama.vocab().tokenize(text.as_bytes(), true, false)
    }

    /// The context size to use, capped by the model's training context.
    pub fn cap_ctx(&self, wanted: u32) -> u32 {
        if self.n_ctx_train > 0 {
            wanted.min(self.n_ctx_train)
        } else {
            wanted
        }
    }
}
