//! Engine settings. The daemon builds them once from its flags and
//! environment (see nrvnad's `cli`); nothing here reads a variable.

use std::path::PathBuf;

use crate::plan::sampling::Sampling;

/// Settings shared by both engines.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Context size: per job for the per-job engine, total KV cells shared by
    /// all sequences for the batched engine. Capped by the model.
    pub max_ctx: u32,
    /// Default `max_tokens`.
    pub predict: u32,
    /// llama.cpp threads for the whole process.
    pub threads: u32,
    pub gpu_layers: u32,
    /// Tokens per decode call (prompt chunk size).
    pub n_batch: u32,
    pub sampling: Sampling,
    /// Minimum shared prompt prefix, in tokens, worth reusing (0 disables reuse).
    pub prefix_reuse_min: u32,
    /// A Jinja chat template that replaces the model's.
    pub chat_template_file: Option<PathBuf>,
    /// Flash attention: `Auto` lets llama.cpp decide per context; the
    /// daemon resolves it to `On` or `Off` by a measurement at start
    /// ([`crate::run::probe::choose_flash_attn`]).
    pub flash_attn: FlashAttn,
    /// Milliseconds of a tts job's audio silenced at the start (the
    /// vocoder's onset artefact).
    pub tts_mute_ms: u32,
    /// Test hook: report the N-th decode call (from 1) as failed.
    pub test_decode_fault: Option<u64>,
    /// Flash attention in the batched engine's streams layout (measured
    /// apart: the kernels differ in what pays off there).
    pub flash_attn_streams: FlashAttn,
    /// The batched engine: run short jobs (prompt plus most tokens to
    /// generate within a stream's cells) in KV streams of their own while
    /// a backlog of them waits, instead of one stream shared by all.
    pub kv_streams: bool,
    /// The batched engine: the most jobs decoded together in the one
    /// shared KV stream (attention there costs every job the cells of all
    /// of them); 0 for all slots.
    pub unified_slots: u32,
}

/// Whether llama.cpp's flash-attention kernel is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashAttn {
    Auto,
    On,
    Off,
}

impl FlashAttn {
    /// llama.cpp's `llama_flash_attn_type` (-1 auto, 0 disabled, 1 enabled).
    pub fn policy(self) -> i32 {
        match self {
            FlashAttn::Auto => -1,
            FlashAttn::Off => 0,
            FlashAttn::On => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FlashAttn::Auto => "auto",
            FlashAttn::On => "on",
            FlashAttn::Off => "off",
        }
    }
}

/// The number of cores this process may use.
pub fn available_cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}
