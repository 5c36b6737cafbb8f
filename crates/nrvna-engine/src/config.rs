//! Engine settings from the environment (`NRVNA_*`), with the documented defaults.

use crate::sampling::Sampling;

/// Settings shared by both engines.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Context size: per job for the per-job engine, total KV cells shared by
    /// all sequences for the batched engine. Capped by the model.
    pub max_ctx: u32,
    /// Default `max_tokens` (`NRVNA_PREDICT`).
    pub predict: u32,
    /// llama.cpp threads for the whole process (`NRVNA_THREADS`, default: cores).
    pub threads: u32,
    pub gpu_layers: u32,
    /// Tokens per decode call (prompt chunk size).
    pub n_batch: u32,
    pub sampling: Sampling,
    /// Minimum shared prompt prefix, in tokens, worth reusing (0 disables reuse).
    pub prefix_reuse_min: u32,
}

fn env<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}={v:?} is not a valid value; unset it or fix it")),
        _ => Ok(None),
    }
}

/// The number of cores this process may use.
pub fn available_cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

impl EngineConfig {
    /// Reads `NRVNA_*` variables. A malformed value is an error, not a silent default.
    pub fn from_env() -> Result<EngineConfig, String> {
        let sampling = Sampling {
            temp: env("NRVNA_TEMP")?.unwrap_or(0.8),
            top_k: env("NRVNA_TOP_K")?.unwrap_or(40),
            top_p: env("NRVNA_TOP_P")?.unwrap_or(0.9),
            min_p: env("NRVNA_MIN_P")?.unwrap_or(0.05),
            repeat_penalty: env("NRVNA_REPEAT_PENALTY")?.unwrap_or(1.1),
            repeat_last_n: env("NRVNA_REPEAT_LAST_N")?.unwrap_or(64),
            seed: env("NRVNA_SEED")?,
        };
        let cfg = EngineConfig {
            max_ctx: env("NRVNA_MAX_CTX")?.unwrap_or(8192),
            predict: env("NRVNA_PREDICT")?.unwrap_or(2048),
            threads: env("NRVNA_THREADS")?.unwrap_or_else(available_cores).max(1),
            gpu_layers: env("NRVNA_GPU_LAYERS")?.unwrap_or(0),
            n_batch: env("NRVNA_BATCH")?.unwrap_or(512).max(16),
            sampling,
            prefix_reuse_min: env("NRVNA_PREFIX_REUSE_MIN")?.unwrap_or(16),
        };
        if cfg.max_ctx < 64 {
            return Err(format!("NRVNA_MAX_CTX={} is too small; use at least 64", cfg.max_ctx));
        }
        Ok(cfg)
    }
}
