//! One configuration, built once from the flags and the environment (clap
//! parsed both) and passed down: nothing below reads a variable again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use nrvna_engine::{EngineConfig, Sampling};

use crate::cli::{EngineKind, ServeArgs};

/// Everything a serving daemon needs to know, validated.
#[derive(Clone, Debug)]
pub struct Config {
    pub model: PathBuf,
    pub workspace: PathBuf,
    pub workers: u32,
    pub drain: bool,
    pub engine: EngineKind,
    pub engine_cfg: EngineConfig,
    pub stop_grace: Duration,
    pub max_recovery_attempts: u64,
    pub min_free_bytes: u64,
    pub scan_interval: Duration,
}

impl Config {
    pub fn from_args(a: &ServeArgs) -> Result<Config> {
        let (Some(model), Some(workspace)) = (a.model.as_deref(), a.workspace.as_ref()) else {
            bail!("usage: nrvnad MODEL WORKSPACE [--workers N] [--drain]; see nrvnad --help");
        };
        let model = if a.engine == EngineKind::Echo {
            PathBuf::from(model)
        } else {
            resolve_model(model, &a.models_dir)?
        };
        nrvna_core::config::install(nrvna_core::config::Settings {
            fsync: a.fsync,
            max_prompt_bytes: a.max_prompt_size,
            ..nrvna_core::config::Settings::default()
        })
        .map_err(anyhow::Error::msg)?;
        let engine_cfg = EngineConfig {
            max_ctx: a.max_ctx,
            predict: a.predict,
            threads: a.threads.unwrap_or_else(nrvna_engine::config::available_cores),
            gpu_layers: a.gpu_layers,
            n_batch: a.batch,
            sampling: Sampling {
                temp: a.temp,
                top_k: a.top_k,
                top_p: a.top_p,
                min_p: a.min_p,
                repeat_penalty: a.repeat_penalty,
                repeat_last_n: a.repeat_last_n,
                seed: a.seed,
            },
            prefix_reuse_min: a.prefix_reuse_min,
            chat_template_file: a.chat_template_file.clone(),
            flash_attn: a.flash_attn.engine(),
            test_decode_fault: a.test_decode_fault,
        };
        Ok(Config {
            model,
            workspace: workspace.clone(),
            workers: a.workers,
            drain: a.drain,
            engine: a.engine,
            engine_cfg,
            stop_grace: Duration::from_secs_f64(a.stop_grace),
            max_recovery_attempts: a.max_recovery_attempts,
            min_free_bytes: (a.min_free_mb * 1024.0 * 1024.0) as u64,
            scan_interval: Duration::from_millis(a.scan_interval_ms),
        })
    }
}

/// Resolves MODEL: a path, or a name under `dir`.
pub fn resolve_model(model: &str, dir: &Path) -> Result<PathBuf> {
    let p = Path::new(model);
    if p.is_file() {
        return Ok(p.to_owned());
    }
    for cand in [dir.join(model), dir.join(format!("{model}.gguf"))] {
        if cand.is_file() {
            return Ok(cand);
        }
    }
    bail!(
        "model {model:?} not found: it is not a file, and {} holds neither {model} nor {model}.gguf; \
         fetch the default model with scripts/fetch-model.sh, or pass the path of a .gguf file",
        dir.display()
    )
}
