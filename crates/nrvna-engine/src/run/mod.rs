//! The runners: what turns a [`crate::Request`] into an [`crate::Output`]
//! on llama.cpp. Each takes the parts of the loaded model it needs through
//! [`ModelParts`]; `generation`, `sched`, `embed` and `media` are shared
//! by the per-job and batched engines.

pub mod batched;
pub mod embed;
pub mod generation;
pub mod media;
pub mod parts;
pub mod perjob;
pub mod probe;
pub mod sched;
pub mod tts;

pub use parts::ModelParts;
