//! The daemon's side of inference: which engine runs (batched, per-job, or
//! the echo test double), one Runner per worker, prompt rendering, and the
//! daemon's defaults for job parameters.

use std::sync::Arc;

use nrvna_engine::batched::BatchedEngine;
use nrvna_engine::perjob::PerJobRunner;
use nrvna_engine::{EngineConfig, Model, Observer, Output, Request, RunError, Runner};

use crate::cli::EngineKind;

/// The loaded inference back end.
pub struct Inference {
    pub kind: EngineKind,
    pub cfg: EngineConfig,
    pub model: Option<Arc<Model>>,
    batched: Option<BatchedEngine>,
    workers: u32,
}

impl Inference {
    /// Loads the model (not for Echo) and starts the engine.
    pub fn start(
        kind: EngineKind,
        model_path: &std::path::Path,
        cfg: EngineConfig,
        workers: u32,
    ) -> Result<Inference, String> {
        if kind == EngineKind::Echo {
            return Ok(Inference {
                kind,
                cfg,
                model: None,
                batched: None,
                workers,
            });
        }
        let model = Arc::new(Model::load(model_path, cfg.gpu_layers)?);
        tracing::info!(
            "loaded {} (training context {}, chat template from {})",
            model.file_name(),
            model.n_ctx_train,
            model.template.source
        );
        let batched = match kind {
            EngineKind::Batched => Some(BatchedEngine::start(model.clone(), cfg.clone(), workers)?),
            _ => None,
        };
        Ok(Inference {
            kind,
            cfg,
            model: Some(model),
            batched,
            workers,
        })
    }

    /// A Runner for one worker.
    pub fn runner(&self) -> Box<dyn Runner> {
        match (&self.batched, &self.model) {
            (Some(b), _) => Box::new(b.runner()),
            (None, Some(m)) => Box::new(PerJobRunner::new(m.clone(), self.cfg.clone(), self.workers)),
            (None, None) => Box::new(EchoRunner),
        }
    }

    /// Renders a prompt with the model's chat template.
    pub fn render(&self, system: Option<&str>, prompt: &str) -> Result<String, String> {
        match &self.model {
            Some(m) => m.render(system, prompt),
            None => Ok(match system {
                Some(s) => format!("{s}\n\n{prompt}"),
                None => prompt.to_owned(),
            }),
        }
    }

    /// Converts a JSON Schema into GBNF with llama.cpp's converter.
    pub fn schema_to_grammar(&self, schema: &str) -> Result<String, String> {
        nrvna_engine::sampling::schema_to_grammar(schema)
    }

    /// Checks a GBNF grammar; the error is llama.cpp's reason.
    pub fn check_grammar(&self, g: &str) -> Result<(), String> {
        match &self.model {
            Some(m) => nrvna_engine::sampling::check_grammar(&m.llama, g),
            None => Ok(()),
        }
    }

    pub fn model_name(&self) -> String {
        self.model
            .as_ref()
            .map(|m| m.file_name())
            .unwrap_or_else(|| "echo".into())
    }

    pub fn shutdown(&self) {
        if let Some(b) = &self.batched {
            b.shutdown();
        }
    }
}

/// The engine test double: answers with the prompt, embeds to a fixed
/// 8-dimensional vector. No model is loaded. Honors `should_stop`.
pub struct EchoRunner;

impl Runner for EchoRunner {
    fn run(&mut self, req: Request, obs: Arc<dyn Observer>) -> Result<Output, RunError> {
        if let Some(reason) = obs.should_stop() {
            return Err(RunError::Stopped {
                reason,
                partial: String::new(),
                generated_tokens: 0,
            });
        }
        match req {
            Request::Text(t) => {
                obs.on_text(&t.prompt, 1);
                Ok(Output {
                    generated_tokens: 1,
                    prompt_tokens: 1,
                    text: t.prompt,
                    finish: Some(nrvna_engine::Finish::Eog),
                    ..Output::default()
                })
            }
            Request::Embed(s) => {
                let mut v = [0f32; 8];
                for (i, b) in s.bytes().enumerate() {
                    v[i % 8] += f32::from(b);
                }
                v[0] += 1.0;
                Ok(Output {
                    embedding: Some(nrvna_engine::embed::normalize(&v).map_err(RunError::Engine)?),
                    prompt_tokens: 1,
                    ..Output::default()
                })
            }
        }
    }
}
