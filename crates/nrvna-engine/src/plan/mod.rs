//! The planning layer: what a job's prompt becomes before anything is
//! decoded. The chat template renders it, `prompt` checks that it fits the
//! context, `sampling` builds the sampler it is generated with, and
//! `config` holds the engine settings these follow.

pub mod config;
pub mod prompt;
pub mod sampling;
pub mod template;
