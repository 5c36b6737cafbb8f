//! The models one daemon serves: a [`Registry`] of servable models (each
//! known by its file name, stem and GGUF `general.name`, read from the
//! header without loading weights), each with its projector and vocoder
//! and an estimate of the memory it takes loaded; and the [`loader`] that
//! loads them on demand within `--max-loaded` / `--memory-budget`.

pub mod gguf;
pub mod loader;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::cli::EngineKind;

/// One servable model.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// The GGUF file.
    pub path: PathBuf,
    /// Its id: the file name without `.gguf` (logs, `/v1/models`, status).
    pub id: String,
    /// Every name a job's `model` may use for it: file name, stem, and
    /// the GGUF `general.name` when the header has one.
    pub aliases: Vec<String>,
    /// The multimodal projector loaded with it.
    pub mmproj: Option<PathBuf>,
    /// The vocoder loaded with it (OuteTTS models).
    pub vocoder: Option<PathBuf>,
    /// Estimated bytes loaded: the files' sizes plus the KV cache (see
    /// [`estimate`]).
    pub bytes: u64,
}

/// Every servable model, and which one takes jobs that name none.
#[derive(Clone, Debug)]
pub struct Registry {
    pub models: Vec<ModelSpec>,
    pub default: usize,
}

/// Whether `wanted` names one of `names` (compared without regard to ASCII
/// case, with or without a `.gguf` ending).
pub fn names_match(names: &[String], wanted: &str) -> bool {
    let norm = |s: &str| {
        let s = s.trim();
        let cut = s.len().saturating_sub(5);
        let s = match (s.get(..cut), s.get(cut..)) {
            (Some(stem), Some(ext)) if !stem.is_empty() && ext.eq_ignore_ascii_case(".gguf") => stem,
            _ => s,
        };
        s.to_ascii_lowercase()
    };
    let w = norm(wanted);
    names.iter().any(|s| norm(s) == w)
}

/// Whether a file in a models directory is a companion (a projector or a
/// vocoder) rather than a model of its own.
pub fn is_companion(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("mmproj") || n.contains("vocoder") || n.contains("wavtokenizer")
}

/// The `.gguf` files in `dir` (links to files count, as in the C++
/// daemon) whose lower-cased name `wanted` accepts, sorted by path.
pub fn gguf_files(dir: &Path, wanted: impl Fn(&str) -> bool) -> std::io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
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
    Ok(found)
}

/// The `.gguf` models in `dir` (companions left out), sorted by name.
pub fn models_in(dir: &Path) -> Result<Vec<PathBuf>> {
    gguf_files(dir, |n| !is_companion(n))
        .map_err(|e| anyhow::anyhow!("reading the models directory {} (--models): {e}", dir.display()))
}

/// What the memory estimate needs from the settings.
#[derive(Clone, Copy, Debug)]
pub struct Sizing {
    pub engine: EngineKind,
    /// `--max-ctx`.
    pub max_ctx: u32,
    pub workers: u32,
}

/// A model's estimated footprint: the sizes of its files (weights,
/// projector, vocoder) plus its KV cache, `kv_bytes_per_token *
/// n_ctx_total`, where `n_ctx_total` is `min(--max-ctx, training context)`
/// for the batched engine (one shared context) and that times the workers
/// for the per-job engine (a context each, at most).
pub fn estimate(files: &[&Path], header: Option<&gguf::Header>, s: Sizing) -> u64 {
    let size: u64 = files
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let kv = header
        .and_then(|h| {
            let per = h.kv_bytes_per_token()?;
            let ctx = u64::from(s.max_ctx).min(h.context_length().unwrap_or(u64::from(s.max_ctx)));
            let contexts = match s.engine {
                EngineKind::PerJob if s.workers == crate::cli::AUTO_WORKERS => u64::from(crate::cli::DEFAULT_WORKERS),
                EngineKind::PerJob => u64::from(s.workers),
                _ => 1,
            };
            Some(per * ctx * contexts)
        })
        .unwrap_or(0);
    size + kv
}

impl ModelSpec {
    /// Describes the model at `path` (its header read, when it is a GGUF
    /// file; the echo engine accepts any name).
    pub fn describe(path: &Path, mmproj: Option<PathBuf>, vocoder: Option<PathBuf>, s: Sizing) -> Result<ModelSpec> {
        let header = match gguf::Header::read(path) {
            Ok(h) => Some(h),
            Err(e) if s.engine != EngineKind::Echo => {
                bail!(
                    "reading the GGUF header of {}: {e}; pass a .gguf model file",
                    path.display()
                )
            }
            Err(_) => None,
        };
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let id = file.strip_suffix(".gguf").unwrap_or(&file).to_owned();
        let mut aliases = vec![file.clone()];
        if id != file {
            aliases.push(id.clone());
        }
        if let Some(n) = header.as_ref().and_then(|h| h.name()) {
            if !names_match(&aliases, n) {
                aliases.push(n.to_owned());
            }
        }
        let mut files = vec![path];
        files.extend(mmproj.as_deref());
        files.extend(vocoder.as_deref());
        let bytes = estimate(&files, header.as_ref(), s);
        Ok(ModelSpec {
            path: path.to_owned(),
            id,
            aliases,
            mmproj,
            vocoder,
            bytes,
        })
    }
}

impl Registry {
    /// The index of the model `wanted` names.
    pub fn find(&self, wanted: &str) -> Option<usize> {
        self.models.iter().position(|m| names_match(&m.aliases, wanted))
    }

    /// Every name of every model (a shared member's `serves`).
    pub fn all_names(&self) -> Vec<String> {
        self.models.iter().flat_map(|m| m.aliases.iter().cloned()).collect()
    }

    /// The models' ids, as a list for people ("a, b, c").
    pub fn listing(&self) -> String {
        self.models.iter().map(|m| m.id.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// The largest estimate.
    pub fn largest(&self) -> u64 {
        self.models.iter().map(|m| m.bytes).max().unwrap_or(0)
    }
}

/// A size for people: `1.5 GiB`, `240 MiB`.
pub fn human_bytes(b: u64) -> String {
    let mib = b as f64 / (1024.0 * 1024.0);
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_is_named_by_file_name_stem_or_own_name_in_any_case() {
        let names = vec![
            "SmolLM2-135M-Instruct.Q4_1.gguf".to_owned(),
            "SmolLM2-135M-Instruct.Q4_1".to_owned(),
            "SmolLM2 135M Instruct".to_owned(),
        ];
        for w in [
            "SmolLM2-135M-Instruct.Q4_1",
            "smollm2-135m-instruct.q4_1.GGUF",
            "SmolLM2 135M Instruct",
        ] {
            assert!(names_match(&names, w), "{w}");
        }
        for w in ["gemma-3-270m", "SmolLM2", ".gguf", "", "é.ggu"] {
            assert!(!names_match(&names, w), "{w}");
        }
    }

    #[test]
    fn a_models_directory_lists_models_not_their_companions() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "b.gguf",
            "a.GGUF",
            "mmproj-b.gguf",
            "OuteTTS.gguf",
            "WavTokenizer-75.gguf",
            "b.vocoder.gguf",
            "notes.txt",
        ] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        std::fs::create_dir(d.path().join("sub.gguf")).unwrap();
        let names: Vec<String> = models_in(d.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["OuteTTS.gguf", "a.GGUF", "b.gguf"]);
        assert!(models_in(&d.path().join("missing")).is_err());
    }

    #[test]
    fn the_echo_engine_describes_any_name_and_registry_finds_by_alias() {
        let s = Sizing {
            engine: EngineKind::Echo,
            max_ctx: 512,
            workers: 2,
        };
        let r = Registry {
            models: vec![
                ModelSpec::describe(Path::new("/nowhere/a.gguf"), None, None, s).unwrap(),
                ModelSpec::describe(Path::new("/nowhere/b.gguf"), None, None, s).unwrap(),
            ],
            default: 0,
        };
        assert_eq!(r.find("B"), Some(1));
        assert_eq!(r.find("a.gguf"), Some(0));
        assert_eq!(r.find("c"), None);
        assert_eq!(r.listing(), "a, b");
        let real = ModelSpec::describe(
            Path::new("/nowhere/a.gguf"),
            None,
            None,
            Sizing {
                engine: EngineKind::Batched,
                ..s
            },
        );
        assert!(real.is_err(), "a missing model file is an error for a real engine");
    }
}
