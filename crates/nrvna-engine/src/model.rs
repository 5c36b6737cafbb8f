//! The loaded model: one `LlamaModel` shared by every worker, the process-wide
//! llama.cpp backend, and prompt rendering with the model's chat template.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::template::ChatTemplate;

static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

/// The process-wide llama.cpp backend (initialised once; llama.cpp's logs
/// are routed into `tracing`).
pub fn backend() -> Result<&'static LlamaBackend, String> {
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| format!("initialising llama.cpp: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A loaded GGUF model and what the engines need to know about it.
pub struct Model {
    pub llama: LlamaModel,
    pub path: PathBuf,
    pub template: ChatTemplate,
    /// Training context length (an upper bound for NRVNA_MAX_CTX).
    pub n_ctx_train: u32,
    /// The multimodal projector, when one was given or found.
    pub projector: Option<crate::media::Projector>,
    /// The vocoder and the model's OuteTTS tokens, for speech jobs.
    pub speech: Option<crate::tts::Speech>,
}

// SAFETY: llama.cpp models are read-only after loading and documented as
// shareable between contexts on different threads. Context creation, the one
// operation that touches the model mutably, is serialised by CONTEXT_LOCK.
unsafe impl Sync for Model {}
unsafe impl Send for Model {}

/// Serialises `new_context` calls (llama.cpp may adjust model fields there).
pub(crate) static CONTEXT_LOCK: Mutex<()> = Mutex::new(());

impl Model {
    /// Loads a GGUF file. Errors say which file and what to do.
    pub fn load(path: &Path, gpu_layers: u32, template_file: Option<&Path>) -> Result<Model, String> {
        let backend = backend()?;
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("model file {}: {e}; pass the path of a .gguf file", path.display()))?;
        if !meta.is_file() {
            return Err(format!(
                "model {} is not a regular file; pass the path of a .gguf file",
                path.display()
            ));
        }
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
        let llama = LlamaModel::load_from_file(backend, path, &params).map_err(|e| {
            format!("llama.cpp could not load {} as a GGUF model ({e}); check that the file is complete (its sha256) and is a GGUF model", path.display())
        })?;
        let raw = llama.meta_val_str("tokenizer.chat_template").ok();
        let template = ChatTemplate::new(raw, template_file, &llama)?;
        let n_ctx_train = llama.n_ctx_train();
        Ok(Model {
            llama,
            path: path.to_owned(),
            template,
            n_ctx_train,
            projector: None,
            speech: None,
        })
    }

    /// Loads the multimodal projector (`mmproj*.gguf`) for this model.
    pub fn attach_projector(&mut self, path: &Path, threads: u32, use_gpu: bool) -> Result<(), String> {
        self.projector = Some(crate::media::Projector::load(path, &self.llama, threads, use_gpu)?);
        Ok(())
    }

    /// Loads the vocoder for speech jobs and reads this model's OuteTTS
    /// tokens; `speaker`: an OuteTTS speaker profile (JSON) to speak with.
    pub fn attach_vocoder(&mut self, vocoder: &Path, speaker: Option<&Path>) -> Result<(), String> {
        self.speech = Some(crate::tts::Speech::load(
            &self.llama,
            &self.file_name(),
            vocoder,
            speaker,
        )?);
        Ok(())
    }

    /// The projector, or the job's failure that says which flag to give.
    pub fn projector(&self, what: &str) -> Result<&crate::media::Projector, crate::RunError> {
        self.projector.as_ref().ok_or_else(|| {
            crate::RunError::Rejected(format!(
                "{what} needs a multimodal projector, and this daemon has none; start nrvnad with --mmproj FILE (the mmproj*.gguf made for {}), or put it beside the model",
                self.file_name()
            ))
        })
    }

    /// Loads only the vocabulary of a GGUF file (no weights): enough to
    /// parse grammars against it.
    pub fn load_vocab(path: &Path) -> Result<LlamaModel, String> {
        let params = LlamaModelParams::default().with_vocab_only(true);
        LlamaModel::load_from_file(backend()?, path, &params)
            .map_err(|e| format!("llama.cpp could not load the vocabulary of {}: {e}", path.display()))
    }

    /// The model's file name (recorded in meta.json).
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Renders a user prompt (and optional system prompt) into model text.
    pub fn render(&self, system: Option<&str>, user: &str) -> Result<String, String> {
        self.template.render(system, user)
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

/// Checks that `path` is a regular file before llama.cpp opens it; the
/// errors name `what` and the file, and add `hint` when it cannot be read.
pub(crate) fn check_file(path: &Path, what: &str, hint: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{what} {}: {e}; {hint}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{what} {} is not a regular file", path.display()));
    }
    Ok(())
}

/// Whether this CPU has AMX tiles (the `amx_tile` flag of /proc/cpuinfo).
pub fn cpu_has_amx() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("flags"))
                .is_some_and(|l| l.split_whitespace().any(|f| f == "amx_tile"))
        })
        .unwrap_or(false)
}

/// Runs `f` with llama.cpp's log lines of warning level and above captured
/// (on this thread) instead of logged, and returns them with the result.
/// Used to report llama.cpp's own reason for rejecting a grammar.
pub fn with_captured_llama_errors<T>(f: impl FnOnce() -> T) -> Result<(T, Vec<String>), String> {
    let capture = capture::Capture::default();
    let lines = capture.lines.clone();
    let out = tracing::subscriber::with_default(capture, f);
    let lines = lines.lock().map(|l| l.clone()).unwrap_or_default();
    Ok((out, lines))
}

mod capture {
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};
    use tracing::{span, Event, Level, Metadata, Subscriber};

    /// A minimal subscriber that keeps the messages of WARN and ERROR events.
    #[derive(Default)]
    pub struct Capture {
        pub lines: Arc<Mutex<Vec<String>>>,
    }

    struct Msg(String);
    impl Visit for Msg {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "message" {
                self.0 = value.trim().to_owned();
            }
        }
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" && self.0.is_empty() {
                self.0 = format!("{value:?}").trim().to_owned();
            }
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, m: &Metadata<'_>) -> bool {
            *m.level() <= Level::WARN
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, e: &Event<'_>) {
            let mut m = Msg(String::new());
            e.record(&mut m);
            if !m.0.is_empty() {
                if let Ok(mut l) = self.lines.lock() {
                    l.push(m.0);
                }
            }
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }
}
