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
    /// The multimodal projector: --mmproj, or the one found beside the model.
    pub mmproj: Option<PathBuf>,
    /// The vocoder for tts jobs: --vocoder, or the one found beside the model.
    pub vocoder: Option<PathBuf>,
    /// --speaker: the voice of tts jobs.
    pub speaker: Option<PathBuf>,
    pub workspace: PathBuf,
    pub workers: u32,
    pub drain: bool,
    pub engine: EngineKind,
    pub engine_cfg: EngineConfig,
    pub stop_grace: Duration,
    pub max_recovery_attempts: u64,
    pub min_free_bytes: u64,
    pub scan_interval: Duration,
    /// `--shared`: one member of many, with this lease.
    pub shared: Option<Duration>,
    /// Scan without inotify.
    pub poll: bool,
    /// Recycle replaced and removed files (`nrvna_core::spare`).
    pub spares: bool,
    /// The workspace settings: fsync, size limits.
    pub settings: nrvna_core::Settings,
    /// `--max-queued`: `Some(0)` removes the workspace's limit, `None`
    /// leaves it as recorded.
    pub max_queued: Option<u64>,
    /// `--retain-*`: what the retention thread removes (keeps all by default).
    pub retention: nrvna_core::retention::Policy,
    /// `--retain-interval`: time between prune rounds.
    pub retain_interval: Duration,
    /// `--metrics`: where to answer `GET /metrics` (off when `None`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Webhook delivery, when NRVNA_WEBHOOK_SECRET is set.
    pub webhooks: Option<nrvna_hooks::Config>,
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
                // OpenAI's penalties come per job (params.json) only.
                frequency_penalty: 0.0,
                presence_penalty: 0.0,
                repeat_last_n: a.repeat_last_n,
                seed: a.seed,
            },
            prefix_reuse_min: a.prefix_reuse_min,
            chat_template_file: a.chat_template_file.clone(),
            flash_attn: a.flash_attn.engine(),
            tts_mute_ms: a.tts_mute_ms,
            test_decode_fault: a.test_decode_fault,
        };
        let mmproj = match (&a.mmproj, a.engine) {
            (Some(p), _) => Some(p.clone()),
            (None, EngineKind::Echo) => None,
            (None, _) => find_mmproj(&model),
        };
        let vocoder = match (&a.vocoder, a.engine) {
            (Some(p), _) => Some(p.clone()),
            (None, EngineKind::Echo) => None,
            (None, _) => find_vocoder(&model),
        };
        Ok(Config {
            mmproj,
            vocoder,
            speaker: a.speaker.clone(),
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
            shared: a.shared.then(|| Duration::from_secs_f64(a.lease_ttl)),
            poll: a.poll,
            spares: a.spares,
            settings: a.settings.settings(),
            max_queued: a.max_queued,
            retention: nrvna_core::retention::Policy {
                done: a.retain_done,
                failed: a.retain_failed,
                max_jobs: a.retain_max_jobs,
                max_bytes: a.retain_max_bytes,
            },
            retain_interval: a.retain_interval,
            metrics: a.metrics,
            webhooks: a.webhooks.config().map_err(anyhow::Error::msg)?,
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

/// The projector beside `model`, found as the C++ daemon finds it: a
/// `.gguf` file in the same directory whose lower-cased name holds `mmproj`
/// and the model's lower-cased stem; the first by name when several match.
pub fn find_mmproj(model: &Path) -> Option<PathBuf> {
    let stem = model.file_stem()?.to_string_lossy().to_lowercase();
    gguf_beside(model, |name| name.contains("mmproj") && name.contains(&stem))
}

/// The first by name of the `.gguf` files beside `model` whose lower-cased
/// name `wanted` accepts. A link to a file counts, as in the C++ daemon
/// (its is_regular_file follows links).
fn gguf_beside(model: &Path, wanted: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let dir = model
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            name.ends_with(".gguf") && wanted(&name)
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// The vocoder beside an OuteTTS `model`, found as the C++ daemon finds
/// it: only when the model's lower-cased stem holds "oute", a `.gguf` in
/// the same directory whose lower-cased name holds "vocoder" or
/// "wavtokenizer"; the first by name when several match.
pub fn find_vocoder(model: &Path) -> Option<PathBuf> {
    let stem = model.file_stem()?.to_string_lossy().to_lowercase();
    if !stem.contains("oute") {
        return None;
    }
    gguf_beside(model, |name| name.contains("vocoder") || name.contains("wavtokenizer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vocoder_beside_an_outetts_model_is_found_by_name() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "OuteTTS-0.2-500M-Q8_0.gguf",
            "WavTokenizer-Large-75-F16.gguf",
            "zz-vocoder.gguf",
            "SmolLM2.gguf",
            "wavtokenizer-notes.txt",
        ] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        let tts = d.path().join("OuteTTS-0.2-500M-Q8_0.gguf");
        assert_eq!(
            find_vocoder(&tts),
            Some(d.path().join("WavTokenizer-Large-75-F16.gguf"))
        );
        // Only an OuteTTS model looks for one.
        assert_eq!(find_vocoder(&d.path().join("SmolLM2.gguf")), None);
        std::fs::remove_file(d.path().join("WavTokenizer-Large-75-F16.gguf")).unwrap();
        assert_eq!(find_vocoder(&tts), Some(d.path().join("zz-vocoder.gguf")));
    }

    #[test]
    fn the_projector_beside_the_model_is_found_by_name() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("SmolVLM-256M.gguf");
        for n in [
            "SmolVLM-256M.gguf",
            "mmproj-other.gguf",
            "mmproj-smolvlm-256m-f16.gguf",
            "readme.txt",
        ] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        assert_eq!(find_mmproj(&model), Some(d.path().join("mmproj-smolvlm-256m-f16.gguf")));
        std::fs::remove_file(d.path().join("mmproj-smolvlm-256m-f16.gguf")).unwrap();
        assert_eq!(find_mmproj(&model), None);
    }
}
