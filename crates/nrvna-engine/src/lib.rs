//! nrvna's inference engines on llama.cpp (`llama-cpp-2`).
//!
//! Workers hand a [`Request`] to a [`Runner`] and get an [`Output`] back.
//! Two runners exist: [`perjob::PerJobRunner`] (a fresh context for every job,
//! the C++ design) and [`batched::BatchedRunner`] (one context shared by all
//! claimed jobs, continuous batching, the default).
//!
//! The modules form layers; each uses only those below it:
//!
//! - [`model`]: the loaded model ([`Model`]): weights, chat template,
//!   projector and speech joined in one value.
//! - [`run`]: the runners and what they share (per-job, batched, probe,
//!   embeddings, media, speech, generation bookkeeping, scheduling).
//! - [`job`]: requests, outputs and observers (plain data).
//! - [`plan`]: chat templates, prompt planning, sampling, settings.
//! - [`llama`] and [`error`]: llama.cpp plumbing, and the errors.

pub mod error;
pub mod job;
pub mod llama;
pub mod model;
pub mod plan;
pub mod run;

pub use error::{EngineError, RunError, TemplateError};
pub use job::{
    EngineStats, Finish, MediaInput, NoObserver, Observer, Output, Request, Runner, TextRequest, POLL_INTERVAL,
};
pub use model::Model;
pub use plan::config::{EngineConfig, FlashAttn};
pub use plan::sampling::Sampling;
pub use plan::{config, sampling, template};
pub use run::parts::ModelParts;
pub use run::{batched, cpu, embed, media, perjob, probe, sched, tts};
