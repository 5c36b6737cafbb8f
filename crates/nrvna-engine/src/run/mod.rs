//! The runners: what turns a [`crate::Request`] into an [`crate::Output`]
//! on llama.cpp. Each takes only the parts of the loaded model it needs
//! (weights, projector, speech); the per-job and batched engines reach
//! them through [`parts::ModelParts`]. `generation`, `sched`, `embed` and
//! `media` are shared by both engines.

pub mod batched;
pub mod cpu;
pub mod embed;
pub mod generation;
pub mod media;
pub mod parts;
pub mod perjob;
pub mod probe;
pub mod sched;
pub mod tts;
