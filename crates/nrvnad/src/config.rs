//! One configuration, built once from the flags and the environment (clap
//! parsed both) and passed down: nothing below reads a variable again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use nrvna_engine::{EngineConfig, Sampling};

use crate::cli::{EngineKind, ServeArgs};
use crate::models::{ModelSpec, Registry};

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
    /// Every servable model (`model` above is the default one's path).
    pub registry: Registry,
    /// `--max-loaded` (default: every model).
    pub max_loaded: usize,
    /// `--memory-budget` in bytes.
    pub memory_budget: Option<u64>,
    /// `--idle-unload`.
    pub idle_unload: Option<Duration>,
    /// `--max-wait`.
    pub max_wait: Duration,
    /// Whether --default-model named the default model.
    pub default_named: bool,
    /// Webhook delivery, when NRVNA_WEBHOOK_SECRET is set.
    pub webhooks: Option<nrvna_hooks::Config>,
}

impl Config {
    pub fn from_args(a: &ServeArgs) -> Result<Config> {
        // Positionals: MODEL... WS (the workspace last); with --models DIR
        // the models may all come from DIR.
        let mut pos: Vec<String> = a.model.iter().cloned().collect();
        pos.extend(a.workspace.iter().map(|p| p.to_string_lossy().into_owned()));
        pos.extend(a.more.iter().cloned());
        let Some(workspace) = pos.pop().map(PathBuf::from) else {
            bail!("usage: nrvnad MODEL WORKSPACE [--workers N] [--drain], or nrvnad --models DIR WORKSPACE; see nrvnad --help");
        };
        if pos.is_empty() && a.models.is_none() {
            bail!(
                "no model for workspace {}: usage: nrvnad MODEL WORKSPACE, or nrvnad --models DIR WORKSPACE; see nrvnad --help",
                workspace.display()
            );
        }
        let mut paths = Vec::new();
        for m in &pos {
            paths.push(if a.engine == EngineKind::Echo {
                PathBuf::from(m)
            } else {
                resolve_model(m, &a.models_dir)?
            });
        }
        if let Some(dir) = &a.models {
            let found = crate::models::models_in(dir)?;
            if found.is_empty() && paths.is_empty() {
                bail!(
                    "--models {}: no .gguf model there; put models in it or name a MODEL",
                    dir.display()
                );
            }
            for p in found {
                if !paths.iter().any(|q| same_file(q, &p)) {
                    paths.push(p);
                }
            }
        }
        if paths.len() > 1 && (a.mmproj.is_some() || a.vocoder.is_some()) {
            bail!(
                "--mmproj and --vocoder are for a single model; with several, put each companion beside its model \
                 (a projector named like mmproj-<stem>.gguf, a WavTokenizer vocoder beside an OuteTTS model)"
            );
        }
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
            kv_streams: a.kv_layout == crate::cli::KvLayout::Auto,
            flash_attn_streams: a.flash_attn.engine(),
            unified_slots: 0,
        };
        let sizing = crate::models::Sizing {
            engine: a.engine,
            max_ctx: a.max_ctx,
            workers: a.workers,
        };
        let mut models = Vec::new();
        for p in &paths {
            let mmproj = match (&a.mmproj, a.engine) {
                (Some(m), _) => Some(m.clone()),
                (None, EngineKind::Echo) => None,
                (None, _) => find_mmproj(p),
            };
            let vocoder = match (&a.vocoder, a.engine) {
                (Some(v), _) => Some(v.clone()),
                (None, EngineKind::Echo) => None,
                (None, _) => find_vocoder(p),
            };
            models.push(ModelSpec::describe(p, mmproj, vocoder, sizing)?);
        }
        let mut registry = Registry { models, default: 0 };
        if let Some(name) = &a.default_model {
            registry.default = registry.find(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "--default-model {name:?} names none of the served models: {}",
                    registry.listing()
                )
            })?;
        }
        for (i, m) in registry.models.iter().enumerate() {
            if let Some(j) = registry.models[..i]
                .iter()
                .position(|o| m.aliases.iter().any(|n| crate::models::names_match(&o.aliases, n)))
            {
                bail!(
                    "models {} and {} share a name ({:?}): a job could not pick one; serve only one of them",
                    registry.models[j].path.display(),
                    m.path.display(),
                    m.id
                );
            }
        }
        let default = &registry.models[registry.default];
        let (model, mmproj, vocoder) = (default.path.clone(), default.mmproj.clone(), default.vocoder.clone());
        Ok(Config {
            mmproj,
            vocoder,
            max_loaded: a.max_loaded.map_or(registry.models.len(), |n| n as usize).max(1),
            memory_budget: a.memory_budget,
            idle_unload: a.idle_unload,
            max_wait: a.max_wait,
            default_named: a.default_model.is_some(),
            registry,
            speaker: a.speaker.clone(),
            model,
            workspace,
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

/// Whether two paths name the same file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
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
    crate::models::gguf_files(dir, wanted).ok()?.into_iter().next()
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
